"""The regex / PII filter: what its built-in patterns take and leave, exactly, and what it does on input and on
output through the real front door and engine (the official openai client)."""

import asyncio

import openai
import pytest

from cluster.guards import TextField
from cluster.guards.config import RegexFilterSpec
from cluster.guards.regex import RegexFilter, luhn
from engine.text.tokenizer import Tokenizer

PII = RegexFilter("pii", RegexFilterSpec())


@pytest.mark.parametrize("text,redacted", [
    ("write to jane.doe+news@mail.example.org today", "write to [REDACTED:email] today"),
    ("call +1 415-555-0123 or (030) 1234 5678", "call [REDACTED:phone] or [REDACTED:phone]"),
    ("card 4111 1111 1111 1111, exp 12/29", "card [REDACTED:card], exp 12/29"),
    ("card 4111-1111-1111-1112 fails Luhn", "card 4111-1111-1111-1112 fails Luhn"),
    ("amex 3782 822463 10005", "amex [REDACTED:card]"),
    ("on 2024-05-06 at 10:30, order 12345, v1.2.3, ip 10.0.0.1", "on 2024-05-06 at 10:30, order 12345, v1.2.3, "
                                                                  "ip 10.0.0.1"),
])
def test_builtin_patterns(text, redacted):
    assert PII.redact(text) == redacted


def test_luhn():
    assert luhn("4111111111111111") and luhn("79927398713") and not luhn("79927398710")


def test_input_redacts_or_blocks_by_pattern_and_output_blocks_on_new_text():
    spec = RegexFilterSpec(builtin=["email"], patterns=[{"name": "ticket", "regex": r"TCK-\d+", "action": "block"}])
    f = RegexFilter("f", spec)
    fields = [TextField("messages[0].content", "system", "be nice"),
              TextField("messages[1].content", "user", "I am a@b.io")]
    verdict = asyncio.run(f.check_input(fields))
    assert (verdict.action, verdict.texts) == ("redact", ["be nice", "I am [REDACTED:email]"])
    fields.append(TextField("messages[2].content", "user", "see TCK-42"))
    verdict = asyncio.run(f.check_input(fields))
    assert (verdict.action, verdict.param, verdict.reason) == ("block", "messages[2].content", "pattern 'ticket'")
    answer = "ok, mail x@y.com and then"
    assert asyncio.run(f.check_output(answer, len(answer), False)).action == "allow"  # checked before
    assert asyncio.run(f.check_output(answer, answer.index("x@") + 3, False)).action == "block"  # spans the border


# -- through the front door, the real engine ----------------------------------------------------------------------


def test_input_redaction_reaches_the_replica(front, tiny_model):
    _, client = front({"guards": {"filters": {"pii": {"type": "regex"}}, "models": {"tiny": {"input": ["pii"]}}}})
    prompt = "Mail alice@example.com or call +44 20 7946 0958 about card 4111 1111 1111 1111."

    async def go():
        return await client.completions.create(model="tiny", prompt=prompt, max_tokens=2, temperature=0)

    done = asyncio.run(go())
    tok = Tokenizer.load(tiny_model)
    redacted = "Mail [REDACTED:email] or call [REDACTED:phone] about card [REDACTED:card]."
    assert done.usage.prompt_tokens == len(tok.encode(redacted)) != len(tok.encode(prompt))


def test_input_block_is_a_400_naming_the_field_and_the_filter(front):
    _, client = front({"guards": {"filters": {"pii": {"type": "regex", "action": "block"}},
                                  "models": {"tiny": {"input": ["pii"]}}}})

    async def go():
        return await client.chat.completions.create(model="tiny", max_tokens=2, messages=[
            {"role": "system", "content": "be brief"}, {"role": "user", "content": "my card is 4111111111111111"}])

    with pytest.raises(openai.BadRequestError) as err:
        asyncio.run(go())
    body = err.value.body
    assert (body["code"], body["param"]) == ("content_filter", "messages[1].content")
    assert "'pii'" in body["message"] and "4111" not in body["message"]


def test_token_id_prompts_cannot_pass_an_input_filter(front):
    _, client = front({"guards": {"filters": {"pii": {"type": "regex"}}, "models": {"tiny": {"input": ["pii"]}}}})
    with pytest.raises(openai.BadRequestError) as err:
        asyncio.run(client.completions.create(model="tiny", prompt=[1, 2, 3], max_tokens=2))
    assert (err.value.body["param"], err.value.body["code"]) == ("prompt", "content_filter")
