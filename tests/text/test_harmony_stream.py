"""engine.text.harmony_stream: deltas against parse_completion and openai-harmony's StreamableParser; malformed input."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai_harmony import Message, Role, StreamableParser

from engine.text.harmony_stream import CHANNELS, MAX_HEADER_TOKENS, HarmonyStreamParser
from engine.text.tokenizer import Tokenizer, collect_deltas

fast = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SPECIALS = [Tokenizer.STARTOFTEXT, Tokenizer.ENDOFTEXT, Tokenizer.RETURN, Tokenizer.CONSTRAIN, Tokenizer.CHANNEL,
            Tokenizer.START, Tokenizer.END, Tokenizer.MESSAGE, Tokenizer.CALL, 200000, 201087]


def completion(tok, text: str) -> list[int]:
    return tok.encode(text, allow_special=True)


def feed_all(parser: HarmonyStreamParser, ids) -> list:
    return [d for t in ids for d in parser.feed(t)] + parser.finish()


def test_deltas_concatenate_to_parse_completion(tok):
    ids = completion(tok, "<|channel|>analysis<|message|>Think 🤔 about 東京.<|end|>"
                          "<|start|>assistant<|channel|>commentary<|message|>Let me answer.<|end|>"
                          "<|start|>assistant<|channel|>final<|message|>Tokyo — 東京 🗼<|return|>")
    deltas = feed_all(tok.stream_parser(), ids)
    assert len(deltas) > 6 and not any("\ufffd" in d.text for d in deltas)  # streamed, never half a character
    streamed, parse = collect_deltas(deltas), tok.parse_completion(ids)
    assert (streamed.analysis, streamed.commentary, streamed.final) == (parse.analysis, parse.commentary, parse.final)
    assert (parse.analysis, parse.commentary, parse.final) == ("Think 🤔 about 東京.", "Let me answer.",
                                                               "Tokyo — 東京 🗼")


def test_tool_call_streams_arguments_then_completes(tok):
    ids = completion(tok, "<|channel|>analysis<|message|>Call it.<|end|><|start|>assistant to=functions.get_weather"
                          '<|channel|>commentary <|constrain|>json<|message|>{"city": "Oslo"}<|call|>')
    parser = tok.stream_parser()
    deltas = feed_all(parser, ids)
    args = [d for d in deltas if d.recipient == "functions.get_weather"]
    [call] = parser.tool_calls
    assert (call.name, call.arguments_json) == ("get_weather", '{"city": "Oslo"}')
    assert "".join(d.text for d in args) == call.arguments_json
    assert {d.tool_call_id for d in args} == {call.id} and {d.channel for d in args} == {"commentary"}
    assert args[-1].completed_tool_call == call and all(d.completed_tool_call is None for d in args[:-1])
    assert parser.messages[-1].content_type == "<|constrain|>json" and parser.malformed_count == 0


def test_recipient_after_the_channel_is_also_a_tool_call(tok):
    parser = tok.stream_parser()
    feed_all(parser, completion(tok, "<|channel|>commentary to=functions.f json<|message|>{}<|call|>"))
    assert [(c.name, c.arguments_json) for c in parser.tool_calls] == [("f", "{}")]
    assert parser.messages[0].content_type == "json" and parser.malformed_count == 0


def test_two_tool_calls_get_distinct_ids(tok):
    one = "<|start|>assistant to=functions.f<|channel|>commentary<|message|>{}<|call|>"
    parser = tok.stream_parser()
    feed_all(parser, completion(tok, one.removeprefix("<|start|>assistant") + one))
    assert len({c.id for c in parser.tool_calls}) == 2


def test_text_without_a_header_streams_as_final_before_the_end(tok):
    ids = tok.encode("word " * (MAX_HEADER_TOKENS + 10))
    parser = tok.stream_parser()
    early = [d for t in ids for d in parser.feed(t)]
    assert early and {d.channel for d in early} == {"final"}  # released once the "header" is too long
    assert "".join(d.text for d in early + parser.finish()) == "word " * (MAX_HEADER_TOKENS + 10)
    assert parser.malformed_count == 1


def test_a_newline_ends_a_fake_header_at_once(tok):
    parser = tok.stream_parser()
    assert [d for t in tok.encode("Sure!") for d in parser.feed(t)] == []  # could still be a header
    deltas = [d for t in tok.encode("\nHere it is") for d in parser.feed(t)]
    assert "".join(d.text for d in deltas) == "Sure!\nHere it is" and parser.malformed_count == 1


def test_missing_start_and_unknown_channel_are_repaired(tok):
    parser = tok.stream_parser()
    deltas = feed_all(parser, completion(tok, "<|channel|>analysis<|message|>a<|end|><|channel|>final<|message|>b"
                                              "<|end|><|start|>assistant<|channel|>bogus<|message|>c<|return|>"))
    parse = collect_deltas(deltas)
    assert (parse.analysis, parse.final) == ("a", "bc") and parser.malformed_count == 2


def test_message_cut_by_a_new_header_is_closed(tok):
    parser = tok.stream_parser()
    deltas = feed_all(parser, completion(tok, "<|channel|>analysis<|message|>a<|start|>assistant<|channel|>final"
                                              "<|message|>b<|return|>"))
    assert [(m.channel, m.text) for m in parser.messages] == [("analysis", "a"), ("final", "b")]
    assert collect_deltas(deltas).final == "b" and parser.malformed_count == 1


def test_out_of_vocab_ids_are_ignored(tok):
    parser = tok.stream_parser()
    deltas = feed_all(parser, [-1, 10**9] + completion(tok, "<|channel|>final<|message|>ok"))
    assert collect_deltas(deltas).final == "ok" and parser.malformed_count == 2


def harmony_channel_text(tok, ids) -> dict:
    """openai-harmony's StreamableParser deltas, concatenated per (channel, recipient): the oracle."""
    parser, out = StreamableParser(tok.encoding, Role.ASSISTANT), {}
    for t in ids:
        parser.process(t)
        if parser.last_content_delta:
            key = (parser.current_channel, parser.current_recipient)
            out[key] = out.get(key, "") + parser.last_content_delta
    return out


messages = st.lists(st.tuples(st.sampled_from(["analysis", "commentary", "final", "functions.lookup"]),
                              st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)),
                    min_size=1, max_size=4)


@fast
@given(messages=messages)
def test_streamed_text_matches_harmony_streamable_parser(tok, messages):
    ids = []
    for target, text in messages:
        msg = Message.from_role_and_content(Role.ASSISTANT, text)
        msg = msg.with_channel(target) if target in CHANNELS else msg.with_channel("commentary").with_recipient(target)
        ids += tok.encoding.render(msg)
    ids = ids[2:]  # the prompt already holds `<|start|>assistant`
    ours = {}
    for delta in feed_all(tok.stream_parser(), ids):
        key = (delta.channel, delta.recipient)
        ours[key] = ours.get(key, "") + delta.text
    assert {k: v for k, v in ours.items() if v} == harmony_channel_text(tok, ids)


@fast
@given(ids=st.lists(st.one_of(st.sampled_from(SPECIALS), st.integers(0, 201087), st.integers(-5, 300000)),
                    max_size=60))
def test_random_ids_never_raise(tok, ids):
    parser = tok.stream_parser()
    deltas = feed_all(parser, ids) + parser.finish()
    assert all(d.channel in CHANNELS and isinstance(d.text, str) for d in deltas)
    assert all(c.id.startswith("call_") for c in parser.tool_calls)
    parse = tok.parse_completion(ids)
    assert parse.malformed == (parser.malformed_count > 0)
