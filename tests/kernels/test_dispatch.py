"""Backend selection: use_triton's rules and each public op's routing to kernel or ref."""

import pytest
import torch

import engine.kernels as kernels
from engine.kernels import attention, moe, moe_cpu, norm, rope, router

OPS = [(moe, "moe_mxfp4"), (attention, "paged_attention"), (attention, "write_kv"), (norm, "rms_norm"),
       (rope, "rope_and_write_kv"), (router, "router_topk")]
# off Triton: the CPU paths (the ref's math, batched; the MoE in its own module), else the ref
OFF_TRITON = {"paged_attention": (attention, "paged_attention_cpu"), "moe_mxfp4": (moe_cpu, "moe_mxfp4_cpu"),
              "write_kv": (attention, "write_kv_cpu"), "rms_norm": (norm, "rms_norm_cpu")}


def test_use_triton_on_cpu_needs_the_override(monkeypatch):
    monkeypatch.setenv("GPTOSS_FORCE_TRITON", "0")
    assert not kernels.use_triton("cpu")
    monkeypatch.setenv("GPTOSS_FORCE_TRITON", "1")
    assert kernels.use_triton(torch.device("cpu")) == kernels.HAS_TRITON


@pytest.mark.parametrize("module,name", OPS)
@pytest.mark.parametrize("force", ["0", "1"])
def test_ops_dispatch_on_device(module, name, force, monkeypatch):
    calls = []
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append("triton"))
    monkeypatch.setattr(*OFF_TRITON.get(name, (module, name + "_ref")), lambda *a, **k: calls.append("ref"))
    monkeypatch.setenv("GPTOSS_FORCE_TRITON", force)
    getattr(kernels, name)(torch.zeros(1), 2)
    assert calls == ["triton" if force == "1" and kernels.HAS_TRITON else "ref"]
    assert getattr(kernels, name).__name__ == name


def test_package_works_without_triton():
    """A CPU-only install (no triton) still imports every module and runs the refs."""
    import pathlib
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, engine.kernels as k\n"
        "assert not k.use_triton('cpu')\n"
        "out, res = k.rms_norm(torch.ones(2, 8), torch.ones(8), 1e-5)\n"
        "ids, w = k.router_topk(torch.randn(3, 8), 2)\n"
        "print('ok', tuple(out.shape), tuple(ids.shape))\n"
    )
    env = {"GPTOSS_FORCE_TRITON": "1", "PATH": ""}
    repo = pathlib.Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=repo,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok (2, 8) (3, 2)"
