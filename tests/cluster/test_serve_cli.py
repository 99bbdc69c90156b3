"""`gptoss serve` as a user runs it: a local Ray cluster in a process of its own, Ctrl-C (SIGINT to its process
group, as a terminal sends it) with streams in flight: every stream finishes with a finish_reason, new requests
get 503 with Retry-After, and the process exits 0 within the grace period, saying so."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.cluster.conftest import free_port

pytestmark = pytest.mark.slow
GRACE_S = 60


def start_serve(config: dict, tmp_path: Path, gptoss: str = "gptoss", cwd: Path | None = None) -> subprocess.Popen:
    """`gptoss serve --config FILE` in its own session (its own process group, like a terminal job)."""
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    exe = gptoss if os.path.isabs(gptoss) else str(Path(sys.executable).parent / gptoss)
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - the process writes it until it ends
    return subprocess.Popen([exe, "serve", "--config", str(path), "--num-cpus", "2"], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd or tmp_path)


def wait_up(proc: subprocess.Popen, log: Path, base: str, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, log.read_text()[-3000:]
        if "gptoss-serve is up" in log.read_text():
            if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                return
        time.sleep(1)
    raise TimeoutError(log.read_text()[-3000:])


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def serve_config(model: Path, port: int, **extra) -> dict:
    return {"http": {"port": port}, "models": [{
        "name": "tiny", "path": str(model), "dtype": "float32", "device": "cpu", "num_cpus": 1,
        "engine": {"kv_cache_memory": 32 << 20, "max_model_len": 1024, "max_num_seqs": 16},
        "graceful_shutdown_timeout_s": GRACE_S}], **extra}


async def _streams_then_sigint(base: str, pgid: int):
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)

    async def one(i):
        stream = await client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"Story {i}"}], max_tokens=300, stream=True,
            extra_body={"ignore_eos": True})
        finish, chunks = None, 0
        async for chunk in stream:
            chunks += 1
            finish = chunk.choices[0].finish_reason if chunk.choices else finish
        return finish, chunks

    tasks = [asyncio.create_task(one(i)) for i in range(8)]
    await asyncio.sleep(3)  # all 8 are streaming
    os.killpg(pgid, signal.SIGINT)
    await asyncio.sleep(2.5)  # the front door learns of the drain at its next push
    async with httpx.AsyncClient() as plain:
        late = await plain.post(f"{base}/v1/chat/completions", timeout=30,
                                json={"model": "tiny", "messages": [{"role": "user", "content": "x"}]})
    return await asyncio.gather(*tasks), late


def test_sigint_drains_streams_in_flight(tmp_path, tiny_model):
    port = free_port()
    proc = start_serve(serve_config(tiny_model, port), tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_up(proc, tmp_path / "serve.log", base)
        signalled = time.monotonic()
        streams, late = asyncio.run(_streams_then_sigint(base, proc.pid))
        assert [s[0] for s in streams] == ["length"] * 8, streams
        assert late.status_code == 503 and late.headers["retry-after"] == "1"
        assert late.json()["error"]["code"] == "server_shutting_down"
        assert proc.wait(GRACE_S + 30) == 0
        assert time.monotonic() - signalled < GRACE_S + 30
        log = (tmp_path / "serve.log").read_text()
        assert "drained: every request in flight finished" in log and "gptoss-serve stopped" in log
        assert "killed by `ray.kill`" not in log
    finally:
        stop(proc)
