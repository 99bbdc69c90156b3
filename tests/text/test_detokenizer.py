"""engine.text.detokenizer: streamed deltas against Tokenizer.decode of all ids (the oracle), and stop-string rules."""

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.text.detokenizer import IncrementalDetokenizer

fast = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MULTIBYTE = "🦙🫠 𝔘𝔫𝔦 龘靐齉 ꙮ 👩🏽‍🚀 ﷽ ₿"


def stream(detok, ids, chunk=1):
    deltas = [detok.add(ids[i: i + chunk]) for i in range(0, len(ids), chunk)]
    return deltas + [detok.flush()]


def chunked(ids, cuts):
    """Splits ids at the (sorted, deduplicated) cut points."""
    bounds = [0] + sorted({c % (len(ids) + 1) for c in cuts}) + [len(ids)]
    return [ids[a:b] for a, b in itertools.pairwise(bounds)]


def test_multibyte_characters_split_across_tokens_never_make_replacement_chars(tok):
    ids = tok.encode(MULTIBYTE)
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # the premise: some tokens hold half a character
    deltas = stream(IncrementalDetokenizer(tok), ids)
    assert not any("\ufffd" in d for d in deltas)
    assert "".join(deltas) == MULTIBYTE


def test_text_property_and_a_truncated_character_at_the_end(tok):
    ids = tok.encode("ok 🦙")
    detok = IncrementalDetokenizer(tok)
    detok.add(ids[:-1])  # the llama's last byte(s) are missing
    assert detok.text == "ok "
    assert detok.flush() == "\ufffd" and detok.text == tok.decode(ids[:-1])


def test_stop_string_across_tokens_never_leaks(tok):
    text, stop = "The answer is 42.\nObservation: done", "\nObservation:"
    ids = tok.encode(text)
    assert not any(stop in tok.decode([i]) for i in ids)  # the premise: it spans several tokens
    detok = IncrementalDetokenizer(tok, stop=[stop])
    deltas = stream(detok, ids)
    assert "".join(deltas) == detok.text == "The answer is 42."
    assert detok.stopped_on == stop and detok.add(tok.encode(" more")) == "" and detok.flush() == ""


def test_held_text_that_does_not_become_a_stop_string_is_released(tok):
    detok = IncrementalDetokenizer(tok, stop=["STOPNOW"])
    deltas = stream(detok, tok.encode("wait STOP here, STOPN"))
    assert "".join(deltas) == "wait STOP here, STOPN" and detok.stopped_on is None
    assert deltas[-1].endswith("STOPN")  # held back until the end: it could still have become the stop string


def test_earliest_stop_string_wins(tok):
    detok = IncrementalDetokenizer(tok, stop=["world", "lo w"])
    assert detok.add(tok.encode("hello world")) + detok.flush() == "hel"
    assert detok.stopped_on == "lo w"


def test_special_tokens_skipped_or_kept(tok):
    ids = tok.encode("<|channel|>final<|message|>hi<|return|>", allow_special=True)
    assert "".join(stream(IncrementalDetokenizer(tok), ids)) == "finalhi"
    assert "".join(stream(IncrementalDetokenizer(tok, skip_special_tokens=False), ids)) == tok.decode(ids)


def test_stop_argument_forms(tok):
    with pytest.raises(ValueError, match="stop strings"):
        IncrementalDetokenizer(tok, stop=["ok", ""])
    for stop in (None, [], "zzz", ["zzz"]):
        detok = IncrementalDetokenizer(tok, stop=stop)
        assert detok.add(tok.encode("abc")) + detok.flush() == "abc" and detok.stopped_on is None


@fast
@given(ids=st.lists(st.integers(0, 201087), max_size=40), cuts=st.lists(st.integers(0, 40), max_size=8))
def test_deltas_concatenate_to_decode_of_all_ids(tok, ids, cuts):
    detok = IncrementalDetokenizer(tok, skip_special_tokens=False)
    deltas = [detok.add(chunk) for chunk in chunked(ids, cuts)] + [detok.flush()]
    assert "".join(deltas) == tok.decode(ids) == detok.text
    skipping = IncrementalDetokenizer(tok)
    text = "".join(skipping.add(chunk) for chunk in chunked(ids, cuts)) + skipping.flush()
    assert text == tok.decode([i for i in ids if not tok.is_special(i)])


@fast
@given(text=st.text("ab c\n🦙é", max_size=30), stops=st.lists(st.text("ab c🦙", min_size=1, max_size=4),
                                                               max_size=3), cuts=st.lists(st.integers(0, 40)))
def test_stop_strings_cut_before_a_completed_stop_and_never_leak(tok, text, stops, cuts):
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok, stop=stops)
    deltas = [detok.add(chunk) for chunk in chunked(ids, cuts)] + [detok.flush()]
    out = "".join(deltas)
    assert not any(stop in out for stop in stops)  # no delta sequence ever shows a whole stop string
    assert text.startswith(out)
    if detok.stopped_on is None:
        assert out == text
    else:
        assert text[len(out):].startswith(detok.stopped_on)


class CountingTokenizer:
    """The real tokenizer, recording how many ids each decode_bytes call is given."""

    def __init__(self, tok):
        self.tok, self.sizes = tok, []

    def decode_bytes(self, ids):
        self.sizes.append(len(ids))
        return self.tok.decode_bytes(ids)

    def is_special(self, token_id):
        return self.tok.is_special(token_id)


def test_each_add_decodes_only_the_new_ids(tok):
    counting = CountingTokenizer(tok)
    detok = IncrementalDetokenizer(counting, stop=["never appears"])
    ids = tok.encode(MULTIBYTE * 20)
    "".join(stream(detok, ids))
    assert detok.text == MULTIBYTE * 20
    assert len(counting.sizes) == len(ids) and max(counting.sizes) == 1
