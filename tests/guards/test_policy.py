"""The policy-model filter: verdicts parsed exactly, and the tiny model (served here, real engine) as the classifier:
its answers are no verdict, so the filter's on_error decides, on input and on output, and a timeout does the same."""

import asyncio
import json
import logging

import openai
import pytest

from cluster.guards.policy import parse_verdict

ALLOW, VIOLATION = ["0", "allow", "safe"], ["1", "violation", "unsafe"]


@pytest.mark.parametrize("text,verdict", [
    ("1", True), ("0", False), ("VIOLATION: the text asks for weapons", True), ("  Safe.", False),
    ('{"violation": 1, "policy_category": "H2"}', True), ('{"violation": false}', False),
    ("", None), ("maybe", None), ('{"label": 1}', None), ("The answer is 1", None),
])
def test_verdicts(text, verdict):
    assert parse_verdict(text, ALLOW, VIOLATION) is verdict


def policy(on_error: str, **more) -> dict:
    return {"type": "policy_model", "model": "tiny", "policy": "Flag any request about weapons.", "max_tokens": 8,
            "on_error": on_error, "timeout_s": 60, **more}


def audit_records(ingress) -> list[dict]:
    asyncio.run(ingress.door.close())
    path = ingress.config.audit.directory()
    return [json.loads(line) for f in sorted(path.glob("audit-*.jsonl")) for line in f.read_text().splitlines()]


def test_no_verdict_on_input_fails_open_when_configured(front, caplog):
    ingress, client = front({"guards": {"filters": {"policy": policy("allow")},
                                        "models": {"tiny": {"input": ["policy"]}}}})
    with caplog.at_level(logging.WARNING, logger="cluster.guards.chain"):
        done = asyncio.run(client.chat.completions.create(model="tiny", max_tokens=3,
                                                          messages=[{"role": "user", "content": "hello"}]))
    assert done.choices[0].finish_reason == "length"
    assert "answered no verdict" in caplog.text  # the classifier ran on the tiny model and answered garbage
    (record,) = audit_records(ingress)
    assert record["guards"] == ["policy:error-allow"] and record["status"] == 200


def test_no_verdict_on_input_fails_closed_when_configured(front):
    _, client = front({"guards": {"filters": {"policy": policy("block")},
                                  "models": {"tiny": {"input": ["policy"]}}}})
    with pytest.raises(openai.APIStatusError) as err:
        asyncio.run(client.chat.completions.create(model="tiny", max_tokens=3,
                                                   messages=[{"role": "user", "content": "hello"}]))
    assert err.value.status_code == 503 and err.value.body["code"] == "content_filter_unavailable"
    assert err.value.response.headers["retry-after"] == "1"


def test_no_verdict_on_output_ends_the_answer_with_content_filter(front):
    ingress, client = front({"guards": {"filters": {"policy": policy("block")}, "every_tokens": 4,
                                        "models": {"tiny": {"output": ["policy"]}}}})

    async def go():
        stream = await client.chat.completions.create(model="tiny", max_tokens=12, stream=True,
                                                      messages=[{"role": "user", "content": "hello"}],
                                                      extra_body={"ignore_eos": True})
        return [chunk async for chunk in stream]

    chunks = asyncio.run(go())
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["content_filter"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ""  # nothing unchecked went out
    (record,) = audit_records(ingress)
    assert (record["outcome"], record["guards"]) == ("content_filter", ["policy:error-block"])


def test_a_classifier_past_its_timeout_follows_on_error(front, caplog):
    ingress, client = front({"guards": {"filters": {"policy": policy("allow", timeout_s=0.001)},
                                        "models": {"tiny": {"input": ["policy"]}}}})
    engine = ingress.door.models["tiny"].server.engine

    async def go():
        done = await client.completions.create(model="tiny", prompt="hi", max_tokens=2)
        while engine.stats().num_running or engine.stats().num_waiting:  # a classifier request cancelled while the
            await asyncio.sleep(0.05)  # engine admitted it runs on there (engine/async_llm.py); let it end here
        return done

    with caplog.at_level(logging.WARNING, logger="cluster.guards.chain"):
        done = asyncio.run(go())
    assert done.choices[0].finish_reason == "length" and "timed out; on_error: allow" in caplog.text


def test_the_policy_is_read_from_its_file_when_it_changes(tmp_path):
    from cluster.guards.config import PolicyFilterSpec
    from cluster.guards.policy import PolicyFilter

    path = tmp_path / "policy.txt"
    path.write_text("first policy\n")
    asked = []

    async def classify(model, messages, max_tokens, effort):
        asked.append(messages[0]["content"])
        return "0"

    f = PolicyFilter("p", PolicyFilterSpec(model="tiny", policy_file=str(path)), classify)
    asyncio.run(f.check_output("text", 0, True))
    path.write_text("second policy\n")
    assert asyncio.run(f.check_output("text", 0, True)).action == "allow"
    assert asked == ["first policy", "second policy"]
