"""The image's install, without an image: the wheel built from this checkout, installed with `[cluster]` into a
fresh virtual environment (no editable install, no repository on the path), serves HTTP and gRPC.

This is what deploy/Dockerfile does (`pip install '.[cluster,kernels]'`); the gRPC stubs and .proto files must be in
the wheel (setup.py) and the gRPC packages in the `cluster` extra.
"""

import os
import subprocess
import sys
from pathlib import Path

import grpc
import openai
import pytest

from cluster.grpc import codegen
from tests.cluster.conftest import free_port
from tests.cluster.test_serve_cli import serve_config, start_serve, stop, wait_up

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def run(*args, **kwargs) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(args, capture_output=True, text=True, env=env, **kwargs)
    assert done.returncode == 0, f"{args}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv holding only the built wheel and its dependencies; returns its bin folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp / "dist"), str(ROOT))
    (wheel,) = (tmp / "dist").glob("gptoss_serve-*.whl")
    run(sys.executable, "-m", "venv", str(tmp / "venv"))
    pip = [str(tmp / "venv" / "bin" / "python"), "-m", "pip", "install", "-q"]
    run(*pip, "torch==2.13.0")  # first, pinned: the CPU wheel (as make install does)
    run(*pip, f"{wheel}[cluster]")
    return tmp / "venv" / "bin"


def test_the_wheel_carries_what_grpc_needs(installed):
    code = ("import cluster.grpc.codegen as c, pathlib; s = c.stubs(); "
            "print(s.service, pathlib.Path(c.__file__).parent / 'proto' / 'gptoss' / 'v1' / 'inference.proto')")
    service, proto = run(str(installed / "python"), "-c", code, cwd="/").split()
    assert service == "gptoss.v1.Inference" and Path(proto).is_file() and "site-packages" in proto


def test_the_installed_cluster_answers_http_and_grpc(installed, tmp_path, tiny_model):
    run(str(installed / "python"), "-m", "engine.text.vocab", "install")  # the tokenizer file (offline, cached)
    http_port, grpc_port = free_port(), free_port()
    config = serve_config(tiny_model, http_port, grpc={"enabled": True, "port": grpc_port})
    proc = start_serve(config, tmp_path, gptoss=str(installed / "gptoss"), cwd=tmp_path)
    base = f"http://127.0.0.1:{http_port}"
    try:
        wait_up(proc, tmp_path / "serve.log", base)
        chat = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=5)
        assert chat.usage.completion_tokens >= 1 and chat.choices[0].finish_reason in ("length", "stop")
        stubs = codegen.stubs()
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = stubs.grpc.InferenceStub(channel)
            request = stubs.pb.GenerateRequest(model="tiny", prompt="Hello",
                                               sampling=stubs.pb.SamplingParams(max_tokens=5))
            replies = list(stub.Generate(request, timeout=60))
        assert sum(len(r.token_ids) for r in replies) == 5 and replies[-1].usage.completion_tokens == 5
    finally:
        stop(proc)
    assert proc.returncode == 0
