"""engine.text.tokenizer against openai-harmony: the same prompts as its own rendering, the same parse as its parser."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai_harmony import (
    Author,
    Conversation,
    DeveloperContent,
    Message,
    ReasoningEffort,
    Role,
    SystemContent,
    ToolDescription,
)

from engine.text.tokenizer import Tokenizer

WEATHER_PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Current weather",
                                                 "parameters": WEATHER_PARAMS}}
UNICODE = "Grüße, 世界! 👋🏽 naïve café — עברית, ﷺ, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢, e\u0301, tabs\tand\nnewlines, <|end|> as text"
fast = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def harmony_prompt(tok, messages):
    """openai-harmony's own rendering of `messages` for the assistant's next turn: the oracle."""
    return tok.encoding.render_conversation_for_completion(Conversation.from_messages(messages), Role.ASSISTANT)


def system(effort=ReasoningEffort.MEDIUM):
    return Message.from_role_and_content(Role.SYSTEM, SystemContent.new().with_reasoning_effort(effort))


def assistant_completion(tok, messages, last_stop=Tokenizer.RETURN):
    """Generated ids for assistant `messages`, as the model would write them after the prompt's `<|start|>assistant`."""
    ids = [t for m in messages for t in tok.encoding.render(m)]
    prefix = [Tokenizer.START] + tok.encode("assistant")
    assert ids[: len(prefix)] == prefix
    ids = ids[len(prefix):]
    if ids[-1] == Tokenizer.END:
        ids[-1] = last_stop
    return ids


# -- encode / decode / ids -----------------------------------------------------------------------------------------


def test_round_trip_unicode(tok):
    ids = tok.encode(UNICODE)
    assert tok.decode(ids) == UNICODE
    assert tok.decode_bytes(ids) == UNICODE.encode()
    assert not any(tok.is_special(i) for i in ids)  # "<|end|>" in user text stays text


@fast
@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_round_trip_any_text(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_special_ids_match_harmony(tok):
    names = {"<|startoftext|>": Tokenizer.STARTOFTEXT, "<|endoftext|>": Tokenizer.ENDOFTEXT,
             "<|return|>": Tokenizer.RETURN, "<|constrain|>": Tokenizer.CONSTRAIN, "<|channel|>": Tokenizer.CHANNEL,
             "<|start|>": Tokenizer.START, "<|end|>": Tokenizer.END, "<|message|>": Tokenizer.MESSAGE,
             "<|call|>": Tokenizer.CALL}
    for text, token_id in names.items():
        assert tok.encode(text, allow_special=True) == [token_id]
        assert tok.decode([token_id]) == text and tok.is_special(token_id)
    assert (Tokenizer.START, Tokenizer.END, Tokenizer.CALL) == (200006, 200007, 200012)
    assert sorted(tok.stop_token_ids) == sorted(tok.encoding.stop_tokens_for_assistant_actions()) == [200002, 200012]
    assert tok.eos_token_id == 200002 and tok.vocab_size == 201088
    assert tok.decode([tok.vocab_size - 1]) == "<|reserved_201087|>"


@fast
@given(ids=st.lists(st.integers(0, 201087), max_size=40))
def test_decode_bytes_equals_harmony_on_any_ids(tok, ids):
    """Tokens decode one at a time (cached); the concatenation must be what harmony makes of the whole sequence."""
    whole = tok.encoding.decode(ids, errors="surrogateescape").encode("utf-8", "surrogateescape")
    assert tok.decode_bytes(ids) == whole


def test_decode_rejects_ids_outside_the_vocab(tok):
    for bad in (-1, 201088):
        with pytest.raises(ValueError, match=str(bad)):
            tok.decode([1, bad])


def test_load_is_cached_per_process(tok):
    assert Tokenizer.load().encoding is Tokenizer.load().encoding


# -- render_chat vs harmony's rendering ----------------------------------------------------------------------------


def test_render_simple_chat_matches_harmony(tok):
    ids = tok.render_chat([{"role": "system", "content": "Answer in French."},
                           {"role": "user", "content": "Hello!"}], reasoning_effort="low")
    expected = harmony_prompt(tok, [
        system(ReasoningEffort.LOW),
        Message.from_role_and_content(Role.DEVELOPER, DeveloperContent.new().with_instructions("Answer in French.")),
        Message.from_role_and_content(Role.USER, "Hello!"),
    ])
    assert ids == expected
    assert ids[-2:] == [Tokenizer.START] + tok.encode("assistant")
    assert "Reasoning: low" in tok.decode(ids)


def test_render_without_instructions_has_no_developer_message(tok):
    ids = tok.render_chat([{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text",
                                                                                         "text": "there"}]}])
    assert ids == harmony_prompt(tok, [system(), Message.from_role_and_content(Role.USER, "Hi there")])


def test_render_tools_and_a_tool_round_trip_matches_harmony(tok):
    chat = [
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "reasoning": "Need the weather tool.",
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
    ]
    ids = tok.render_chat(chat, reasoning_effort="high", tools=[WEATHER_TOOL])
    developer = DeveloperContent.new().with_instructions("Use tools.").with_function_tools(
        [ToolDescription.new("get_weather", "Current weather", WEATHER_PARAMS)])
    expected = harmony_prompt(tok, [
        system(ReasoningEffort.HIGH),
        Message.from_role_and_content(Role.DEVELOPER, developer),
        Message.from_role_and_content(Role.USER, "Weather in Paris?"),
        Message.from_role_and_content(Role.ASSISTANT, "Need the weather tool.").with_channel("analysis"),
        Message.from_role_and_content(Role.ASSISTANT, '{"city": "Paris"}').with_channel("commentary")
        .with_recipient("functions.get_weather").with_content_type("<|constrain|>json"),
        Message.from_author_and_content(Author.new(Role.TOOL, "functions.get_weather"), '{"temp_c": 21}')
        .with_channel("commentary").with_recipient("assistant"),
    ])
    assert ids == expected
    text = tok.decode(ids)
    assert "type get_weather = (_: {\ncity: string,\n}) => any;" in text
    assert "Calls to these tools must go to the commentary channel: 'functions'." in text
    assert '<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>' in text
    assert "<|call|><|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>" in text


def test_earlier_reasoning_is_dropped_after_a_final_answer(tok):
    chat = [{"role": "user", "content": "1+1?"},
            {"role": "assistant", "reasoning": "trivial", "content": "2"},
            {"role": "user", "content": "and 2+2?"}]
    ids = tok.render_chat(chat)
    assert ids == harmony_prompt(tok, [
        system(), Message.from_role_and_content(Role.USER, "1+1?"),
        Message.from_role_and_content(Role.ASSISTANT, "2").with_channel("final"),
        Message.from_role_and_content(Role.USER, "and 2+2?")])
    assert "trivial" not in tok.decode(ids)


def test_a_later_system_message_becomes_a_developer_message(tok):
    ids = tok.render_chat([{"role": "user", "content": "a"}, {"role": "system", "content": "be terse"}])
    assert ids == harmony_prompt(tok, [system(), Message.from_role_and_content(Role.USER, "a"),
                                       Message.from_role_and_content(Role.DEVELOPER, "be terse")])


BAD_CHATS = [
    ([], {}, "messages must be a non-empty list"),
    ([{"role": "user", "content": "x"}, {"role": "robot", "content": "x"}], {}, "messages[1].role"),
    (["hello"], {}, "messages[0].role"),
    ([{"role": "user", "content": "x"}], {"reasoning_effort": "max"}, "reasoning_effort"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], {}, "messages[0].content[0]"),
    ([{"role": "user", "content": 5}], {}, "messages[0].content"),
    ([{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "nope", "content": "r"}], {},
     "messages[1].tool_call_id"),
    ([{"role": "assistant", "tool_calls": [{"id": "c", "function": {"arguments": "{}"}}]}], {},
     "messages[0].tool_calls[0].function.name"),
    ([{"role": "user", "content": "x"}], {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
     "tools[0].function.name"),
    ([{"role": "user", "content": "x"}], {"tools": [{"type": "retrieval"}]}, "tools[0]"),
    ([{"role": "user", "content": "x"}], {"tools": [{"type": "function", "function": {"name": "f",
                                                                                      "parameters": []}}]},
     "tools[0].function.parameters"),
    ([{"role": "user", "content": "x"}],
     {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"properties": [1]}}}]},
     "tools[0].function.parameters.properties"),
    ([{"role": "user", "content": "x"}],
     {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"required": "city"}}}]},
     "tools[0].function.parameters.required"),
    ([{"role": "user", "content": "x"}], {"tools": {"name": "f"}}, "tools must be a list"),
]


@pytest.mark.parametrize("messages,kwargs,field", BAD_CHATS)
def test_bad_input_names_the_field(tok, messages, kwargs, field):
    with pytest.raises(ValueError) as err:
        tok.render_chat(messages, **kwargs)
    assert field in str(err.value)


# -- parse_completion vs harmony's parser -------------------------------------------------------------------------


def test_parse_analysis_then_final(tok):
    ids = assistant_completion(tok, [
        Message.from_role_and_content(Role.ASSISTANT, "User greets; reply. 🤔").with_channel("analysis"),
        Message.from_role_and_content(Role.ASSISTANT, "Hello — 你好!").with_channel("final")])
    parse = tok.parse_completion(ids)
    assert (parse.analysis, parse.final, parse.commentary) == ("User greets; reply. 🤔", "Hello — 你好!", "")
    assert parse.tool_calls == [] and not parse.malformed
    oracle = tok.encoding.parse_messages_from_completion_tokens(ids, Role.ASSISTANT)
    assert [(m.channel, m.content[0].text) for m in oracle] == [("analysis", parse.analysis), ("final", parse.final)]


def test_parse_tool_call(tok):
    args = '{"city": "São Paulo"}'
    ids = assistant_completion(tok, [
        Message.from_role_and_content(Role.ASSISTANT, "Look it up.").with_channel("analysis"),
        Message.from_role_and_content(Role.ASSISTANT, "Checking the weather.").with_channel("commentary"),
        Message.from_role_and_content(Role.ASSISTANT, args).with_channel("commentary")
        .with_recipient("functions.get_weather").with_content_type("<|constrain|>json")])
    assert ids[-1] == Tokenizer.CALL
    parse = tok.parse_completion(ids)
    assert (parse.analysis, parse.commentary, parse.final) == ("Look it up.", "Checking the weather.", "")
    [call] = parse.tool_calls
    assert (call.name, json.loads(call.arguments_json)) == ("get_weather", {"city": "São Paulo"})
    assert call.id.startswith("call_") and len(call.id) == 29 and not parse.malformed


def test_parse_without_the_stop_token_and_truncated(tok):
    ids = tok.encode("<|channel|>final<|message|>cut short by max_to", allow_special=True)
    parse = tok.parse_completion(ids)
    assert parse.final == "cut short by max_to" and not parse.malformed


@pytest.mark.parametrize("text,final", [
    ("plain text without any header", "plain text without any header"),
    ("<|channel|>final<|message|>ok<|end|>stray<|start|>assistant<|channel|>final<|message|>!<|return|>",
     "okstray!"),
    ("<|return|><|message|><|endoftext|>", ""),
])
def test_parse_malformed_output_falls_back_to_final_text(tok, text, final):
    parse = tok.parse_completion(tok.encode(text, allow_special=True))
    assert parse.final == final and parse.malformed


channel_messages = st.lists(st.tuples(
    st.sampled_from(["analysis", "commentary", "final", "tool"]),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)), min_size=1, max_size=4)


def to_harmony(kind: str, text: str) -> Message:
    if kind == "tool":
        return Message.from_role_and_content(Role.ASSISTANT, text).with_channel("commentary") \
            .with_recipient("functions.lookup").with_content_type("<|constrain|>json")
    return Message.from_role_and_content(Role.ASSISTANT, text).with_channel(kind)


@fast
@given(messages=channel_messages)
def test_parse_agrees_with_harmony_on_rendered_messages(tok, messages):
    harmony_messages = [to_harmony(kind, text) for kind, text in messages]
    ids = assistant_completion(tok, harmony_messages)
    oracle = tok.encoding.parse_messages_from_completion_tokens(ids, Role.ASSISTANT)
    parser = tok.stream_parser()
    for t in ids:
        parser.feed(t)
    parser.finish()
    assert [(m.channel, m.recipient, m.text) for m in parser.messages] == [
        (m.channel, m.recipient, m.content[0].text) for m in oracle]
    parse = tok.parse_completion(ids)
    assert parse.analysis == "".join(text for kind, text in messages if kind == "analysis")
    assert parse.final == "".join(text for kind, text in messages if kind == "final")
    assert [c.arguments_json for c in parse.tool_calls] == [text for kind, text in messages if kind == "tool"]
    assert not parse.malformed
