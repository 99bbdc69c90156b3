"""A request's chains, exactly: the model's filters then the key's, each filter reading what the one before left
(a redaction is what the classifier sees, and what the replica gets), and a raising filter turned into its
on_error verdict."""

import asyncio

import pytest

from cluster.errors import ApiError
from cluster.guards.chain import Guards
from cluster.guards.config import GuardChainSpec, GuardsConfig
from cluster.protocol import parse_chat


def guards(classify) -> Guards:
    config = GuardsConfig.model_validate({
        "filters": {"pii": {"type": "regex"}, "judge": {"type": "policy_model", "model": "m", "policy": "no cats",
                                                        "on_error": "block"}},
        "models": {"m": {"input": ["pii"], "output": ["pii"]}}})
    return Guards(config, classify)


def test_the_key_chain_follows_the_model_chain_and_sees_redacted_text():
    seen = []

    async def classify(model, messages, max_tokens, effort):
        seen.append(messages[1]["content"])
        return "0"

    g = guards(classify)
    inputs, outputs = g.chains("m", GuardChainSpec(input=["judge", "pii"], output=["judge"]))
    assert [f.name for f in inputs] == ["pii", "judge"] and [f.name for f in outputs] == ["pii", "judge"]
    req = parse_chat({"model": "m", "messages": [{"role": "user", "content": "mail bob@example.com"}]}, 0)
    notes = asyncio.run(g.check_input(req, inputs))
    assert notes == ["pii:redact", "judge:allow"]
    assert seen == ["[user]\nmail [REDACTED:email]"] and req.messages[0]["content"] == "mail [REDACTED:email]"


def test_a_failing_filter_is_its_on_error_verdict():
    async def classify(model, messages, max_tokens, effort):
        raise RuntimeError("the classifier's replica is gone")

    g = guards(classify)
    inputs, _ = g.chains("m", GuardChainSpec(input=["judge"]))
    req = parse_chat({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, 0)
    with pytest.raises(ApiError) as err:
        asyncio.run(g.check_input(req, inputs))
    assert (err.value.status, err.value.code) == (503, "content_filter_unavailable")
    assert "the classifier's replica is gone" in err.value.message
