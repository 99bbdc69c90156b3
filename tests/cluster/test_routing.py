"""Prefix-affinity routing with two replicas: requests sharing a prompt prefix land on one replica."""

import openai
import pytest

from tests.cluster.conftest import API_KEY, model_entry, scrape

SHARED = "You are a careful assistant. Answer briefly and cite nothing. " * 12  # several routing chunks


@pytest.fixture(scope="module")
def base(serve_app, tiny_model):
    return serve_app({"models": [model_entry("routed", tiny_model, num_replicas=2)],
                      "auth": {"api_keys": [API_KEY]}}, "routing")


def per_replica(samples: dict, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (n, labels), v in samples.items():
        labels = dict(labels)
        if n == name and labels.get("model_name") == "routed":
            out[labels["replica"]] = out.get(labels["replica"], 0) + v
    return out


def test_shared_prefix_goes_to_one_replica(base):
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=0, timeout=60)
    before = per_replica(scrape(base), "gptoss_prompt_tokens_total")
    for i in range(6):
        messages = [{"role": "system", "content": SHARED}, {"role": "user", "content": f"question {i}"}]
        out = client.chat.completions.create(model="routed", messages=messages, max_tokens=2)
        if i:
            assert out.usage.prompt_tokens_details.cached_tokens > 100, "the repeat missed the prefix cache"
    import time

    for _ in range(40):  # metrics arrive with the next push
        after = per_replica(scrape(base), "gptoss_prompt_tokens_total")
        grew = {r: after[r] - before.get(r, 0) for r in after if after[r] > before.get(r, 0)}
        if sum(grew.values()) >= 6 * 100:
            break
        time.sleep(0.25)
    assert len(after) == 2, after  # both replicas report
    assert len(grew) == 1, grew  # ...but only one served the shared prefix
