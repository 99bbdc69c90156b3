"""The safety layer on a running cluster: two HTTP ingress replicas and the gRPC gateway in front of the tiny model,
named keys from a key file, the quota ledger, the audit log, guard filters. Driven with the official openai client and
the generated gRPC stubs: scopes refused with 403 / PERMISSION_DENIED on both protocols; a tokens-per-minute quota
that holds in total across both ingress replicas and both protocols; a key rotated without a restart; a key's output
filter ending a gRPC stream with content_filter; the per-key metrics; `gptoss audit verify` on the log the cluster
wrote, and on copies with a line changed or removed."""

import hashlib
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import openai
import pytest
import yaml

from tests.cluster.conftest import free_port, model_entry, scrape, total

FULL, CHAT_ONLY, METERED = "sk-full-0123456789", "sk-chat-only-0123456789", "sk-metered-0123456789"
ROTATE_OLD, ROTATE_NEW = "sk-rotate-old-0123456789", "sk-rotate-new-0123456789"
FILTERED = "sk-filtered-0123456789"
QUOTA = 400  # tokens per minute of the metered key
GRACE = 4.0  # rotation grace period (s)


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _key(name: str, secret: str, **more) -> dict:
    return {"name": name, "secrets": [{"sha256": _sha(secret)}], **more}


def _keys(rotated: bool = False) -> dict:
    return {"keys": [
        _key("full", FULL),
        _key("chat-only", CHAT_ONLY, scopes={"routes": ["chat", "models"], "models": ["tiny"], "max_tokens": 8,
                                            "max_reasoning_effort": "low", "tools": []}),
        _key("metered", METERED, quotas={"tokens_per_min": QUOTA}),
        _key("rotating", ROTATE_NEW if rotated else ROTATE_OLD),
        _key("filtered", FILTERED, guards={"output": ["anything"]})]}


@pytest.fixture(scope="module")
def cluster(serve_app, tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    keys_file = root / "keys.yaml"
    keys_file.write_text(yaml.safe_dump(_keys()))
    port = free_port()
    base = serve_app({"models": [model_entry("tiny", tiny_model, engine={"kv_cache_memory": 32 << 20,
                                                                        "max_model_len": 1024, "max_num_seqs": 16})],
                      "ingress_replicas": 2,
                      "grpc": {"enabled": True, "port": port},
                      "auth": {"keys_file": str(keys_file), "reload_interval_s": 0.5, "rotation_grace_s": GRACE},
                      "audit": {"dir": str(root / "audit"), "flush_interval_s": 0.2},
                      "guards": {"every_tokens": 4,
                                 "filters": {"anything": {"type": "regex", "builtin": [],
                                                          "patterns": [{"name": "anything", "regex": r"\S"}]}}}},
                     "safety")
    from cluster.grpc import codegen

    stubs = codegen.stubs()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    _wait_grpc(stubs, channel)
    return {"base": base, "keys_file": keys_file, "audit": root / "audit", "stub": stubs.grpc.InferenceStub(channel),
            "pb": stubs.pb}


def _wait_grpc(stubs, channel, timeout: float = 60) -> None:
    stub, end = stubs.grpc.InferenceStub(channel), time.monotonic() + timeout
    while True:
        try:
            stub.ListModels(stubs.pb.ListModelsRequest(), metadata=_auth(FULL), timeout=5)
            return
        except grpc.RpcError:
            if time.monotonic() > end:
                raise
            time.sleep(0.3)


def _auth(key: str):
    return (("authorization", f"Bearer {key}"),)


def _client(cluster, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{cluster['base']}/v1", api_key=key, max_retries=0, timeout=120)


def _grpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


# -- scopes ---------------------------------------------------------------------------------------------------------


def test_scopes_are_refused_naming_what_is_not_allowed_on_both_protocols(cluster):
    client, stub, pb = _client(cluster, CHAT_ONLY), cluster["stub"], cluster["pb"]
    ok = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert ok.usage.completion_tokens <= 8  # no max_tokens sent: the key's bound applies
    refusals = {
        "completions route": lambda: client.completions.create(model="tiny", prompt="hi", max_tokens=2),
        "max_tokens": lambda: client.chat.completions.create(model="tiny", max_tokens=100,
                                                             messages=[{"role": "user", "content": "hi"}]),
        "reasoning_effort": lambda: client.chat.completions.create(model="tiny", max_tokens=2, reasoning_effort="high",
                                                                   messages=[{"role": "user", "content": "hi"}]),
    }
    for what, call in refusals.items():
        with pytest.raises(openai.PermissionDeniedError) as err:
            call()
        body = err.value.body
        assert body["code"] == "permission_denied" and "'chat-only'" in body["message"], what
    assert "completions route" in refusals and "its limit is 8" in _msg(refusals["max_tokens"])
    chat = pb.ChatRequest(model="tiny", messages=[pb.Message(role=pb.ROLE_USER, content="hi")],
                          sampling=pb.SamplingParams(max_tokens=100))
    err = _grpc_error(lambda: list(stub.Chat(chat, metadata=_auth(CHAT_ONLY), timeout=60)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "sampling.max_tokens 100" in err.details()
    generate = pb.GenerateRequest(model="tiny", prompt="hi", sampling=pb.SamplingParams(max_tokens=2))
    err = _grpc_error(lambda: list(stub.Generate(generate, metadata=_auth(CHAT_ONLY), timeout=60)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "completions route" in err.details()
    err = _grpc_error(lambda: stub.CountTokens(pb.TokenizeRequest(model="tiny", text="hi"), metadata=_auth(CHAT_ONLY),
                                               timeout=30))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "tokenize route" in err.details()
    assert stub.ListModels(pb.ListModelsRequest(), metadata=_auth(CHAT_ONLY), timeout=30).models


def _msg(call) -> str:
    try:
        call()
    except openai.APIStatusError as err:
        return err.body["message"]
    raise AssertionError("not refused")


# -- quota ----------------------------------------------------------------------------------------------------------


def test_a_tokens_per_minute_quota_holds_across_both_ingress_replicas_and_both_protocols(cluster):
    """Four HTTP and two gRPC clients send the metered key's requests at once until each was refused twice."""
    stub, pb = cluster["stub"], cluster["pb"]
    admitted, refused, lock = [], [], threading.Lock()

    def http_client():
        client = _client(cluster, METERED)
        while len([r for r in refused if r[0] == "http"]) < 8:
            try:
                done = client.completions.create(model="tiny", prompt="hi", max_tokens=20,
                                                 extra_body={"ignore_eos": True})
                with lock:
                    admitted.append(("http", done.usage.prompt_tokens + done.usage.completion_tokens))
            except openai.RateLimitError as err:
                with lock:
                    refused.append(("http", float(err.response.headers["retry-after-ms"]) / 1000,
                                    int(err.response.headers["retry-after"])))
                time.sleep(0.2)

    def grpc_client():
        req = pb.GenerateRequest(model="tiny", prompt="hi", sampling=pb.SamplingParams(max_tokens=20, ignore_eos=True))
        while len([r for r in refused if r[0] == "grpc"]) < 4:
            try:
                usage = list(stub.Generate(req, metadata=_auth(METERED), timeout=120))[-1].usage
                with lock:
                    admitted.append(("grpc", usage.prompt_tokens + usage.completion_tokens))
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
                hint = dict(err.trailing_metadata())["retry-after-ms"]
                with lock:
                    refused.append(("grpc", int(hint) / 1000, None))
                time.sleep(0.2)

    started = time.monotonic()
    threads = [threading.Thread(target=http_client) for _ in range(4)] + \
        [threading.Thread(target=grpc_client) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    elapsed = time.monotonic() - started
    used = sum(tokens for _, tokens in admitted)
    largest = max(tokens for _, tokens in admitted)
    # the ledger's bucket: QUOTA at the start, refilled at QUOTA per minute, and at most one request over
    assert used <= QUOTA + QUOTA * elapsed / 60 + largest, (used, elapsed, len(admitted))
    assert {p for p, _ in admitted} == {"http", "grpc"} and len(refused) >= 12
    assert all(0 < seconds <= 60 for _, seconds, _ in refused)
    assert all(header == max(1, -(-seconds // 1)) for _, seconds, header in refused if header is not None)


# -- rotation -------------------------------------------------------------------------------------------------------


def test_a_key_rotates_without_a_restart(cluster):
    stub, pb = cluster["stub"], cluster["pb"]
    count = pb.TokenizeRequest(model="tiny", text="hi")

    def works(key: str) -> tuple[bool, bool]:
        http = [_works_http(cluster, key) for _ in range(4)]  # the proxy spreads them over both ingress replicas
        try:
            stub.CountTokens(count, metadata=_auth(key), timeout=30)
            on_grpc = True
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            on_grpc = False
        assert len(set(http)) == 1, http  # every ingress replica agrees
        return http[0], on_grpc

    assert works(ROTATE_OLD) == (True, True) and works(ROTATE_NEW) == (False, False)
    cluster["keys_file"].write_text(yaml.safe_dump(_keys(rotated=True)))
    changed = time.monotonic()
    time.sleep(1.5)  # every front door re-reads the file every 0.5 s
    assert works(ROTATE_NEW) == (True, True)
    assert works(ROTATE_OLD) == (True, True)  # the old secret: valid for the grace period
    time.sleep(max(0.0, changed + GRACE + 1.5 - time.monotonic()))
    assert works(ROTATE_OLD) == (False, False) and works(ROTATE_NEW) == (True, True)


def _works_http(cluster, key: str) -> bool:
    try:
        _client(cluster, key).models.list()
        return True
    except openai.AuthenticationError:
        return False


# -- a key's output filter over gRPC ----------------------------------------------------------------------------------


def test_a_keys_output_filter_ends_a_grpc_chat_with_content_filter(cluster):
    stub, pb = cluster["stub"], cluster["pb"]
    chat = pb.ChatRequest(model="tiny", messages=[pb.Message(role=pb.ROLE_USER, content="hi")],
                          sampling=pb.SamplingParams(max_tokens=16, ignore_eos=True))
    messages = list(stub.Chat(chat, metadata=_auth(FILTERED), timeout=60))
    assert [m.finish_reason for m in messages if m.finish_reason] == [pb.FINISH_REASON_CONTENT_FILTER]
    assert messages[-1].usage.completion_tokens < 16
    unfiltered = list(stub.Chat(chat, metadata=_auth(FULL), timeout=60))  # the model's chain is empty
    assert unfiltered[-1].usage.completion_tokens == 16


# -- metrics and the audit log ---------------------------------------------------------------------------------------


def test_per_key_metrics_name_keys_never_secrets(cluster):
    import httpx

    time.sleep(1.0)  # a push interval or two
    text = httpx.get(f"{cluster['base']}/metrics", headers={"Authorization": f"Bearer {FULL}"}, timeout=10).text
    assert not any(secret in text for secret in (FULL, CHAT_ONLY, METERED, ROTATE_OLD, ROTATE_NEW, _sha(METERED)))
    samples = scrape(cluster["base"], FULL)
    assert total(samples, "gptoss_key_requests_total", key="metered") >= 12
    assert total(samples, "gptoss_key_refusals_total", key="metered", reason="quota") >= 12
    assert total(samples, "gptoss_key_refusals_total", key="chat-only", reason="scope") >= 3
    assert total(samples, "gptoss_key_completion_tokens_total", key="metered") > 0
    assert 0 <= total(samples, "gptoss_key_quota_available", key="metered", quota="tokens_per_min") <= 1
    assert total(samples, "gptoss_guard_checks_total", filter="anything", stage="output", outcome="block") >= 1


def test_gptoss_audit_verify_passes_on_the_clusters_log_and_fails_on_edited_copies(cluster, tmp_path):
    time.sleep(1.0)  # the front doors write every 0.2 s
    copy = tmp_path / "log"
    shutil.copytree(cluster["audit"], copy)
    chains = {json.loads(line)["chain"] for f in copy.glob("audit-*.jsonl") for line in f.read_text().splitlines()}
    assert sum(c.startswith("ingress") for c in chains) == 2 and sum(c.startswith("gateway") for c in chains) == 1
    records = [json.loads(line) for f in copy.glob("audit-*.jsonl") for line in f.read_text().splitlines()]
    metered = [r for r in records if r["key"] == "metered"]
    assert {r["protocol"] for r in metered} == {"http", "grpc"}
    assert {r["status"] for r in metered} == {200, 429} and all(r["client"] for r in metered)
    assert not any(FULL in line or METERED in line for f in copy.glob("*") for line in f.read_text().splitlines())
    assert _verify(copy).returncode == 0
    segment = max(copy.glob("audit-*.jsonl"), key=lambda f: len(f.read_text().splitlines()))
    lines = segment.read_text().splitlines()
    edited = json.loads(lines[1])
    edited["completion_tokens"] += 1
    segment.write_text("\n".join([lines[0], json.dumps(edited)] + lines[2:]) + "\n")
    changed = _verify(copy)
    assert changed.returncode == 1 and "edited" in changed.stdout
    segment.write_text("\n".join([lines[0]] + lines[2:]) + "\n")
    removed = _verify(copy)
    assert removed.returncode == 1 and "does not follow" in removed.stdout


def _verify(path: Path) -> subprocess.CompletedProcess:
    gptoss = Path(sys.executable).parent / "gptoss"
    return subprocess.run([str(gptoss), "audit", "verify", str(path)], capture_output=True, text=True, timeout=60)
