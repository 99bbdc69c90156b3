"""gptoss-serve's inference engine: checkpoint loading, the reference model, batching, sampling.

    from engine import LLM, AsyncLLM, EngineConfig, SamplingParams
"""

import ctypes
import os
import platform
import sys


def _amx_usable() -> bool:
    """Whether this process may run AMX instructions: Linux on x86-64 grants the tile data state (arch_prctl
    ARCH_REQ_XCOMP_PERM for XTILEDATA), which it refuses where the CPU or the hypervisor has not enabled AMX."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(158, 0x1023, 18) == 0  # SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
    except (OSError, AttributeError):
        return False


# Some virtual machines advertise AMX tiles (cpuid) without the kernel enabling them, and oneDNN's bf16 matmuls then
# die with SIGILL: there oneDNN is capped at AVX512-BF16. Where the kernel grants AMX, oneDNN keeps it (the CPU path's
# bf16 GEMMs 1.7-3.7x faster at 16-64 rows: the unembedding, the prefill). Set ONEDNN_MAX_CPU_ISA yourself to
# override; oneDNN reads it at its first primitive, so this must run early. A process that imports engine passes
# the setting on to the processes it starts (bench/peer.py's vLLM among them).
AMX_USABLE = _amx_usable()
if not AMX_USABLE:
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")

# torch's OpenMP workers spin for a while after each parallel region (libgomp's default policy), so on a CPU replica
# the native kernels' own threads (engine.kernels.cpu_native) share the cores with a spinning worker after every torch
# op of a step. Passive workers sleep at once: on a 2-core VM the larger checkpoint's mixed workload ran 1.18-1.40x and
# its batch-1 decode 1.14-1.9x in an interleaved A/B (2026-12-02). libgomp reads the policy when torch loads, so this
# applies where engine is imported before torch (the CLI, the cluster's replicas, bench); set OMP_WAIT_POLICY yourself
# to override. OMP_PASSIVE_SET says whether this set it (bench/peer.py keeps it from vLLM's processes).
OMP_PASSIVE_SET = "torch" not in sys.modules and "OMP_WAIT_POLICY" not in os.environ
if OMP_PASSIVE_SET:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


_EXPORTS = {  # name -> module; imported lazily so `import engine.<module>` stays light (the CLI and tools need
    #            only parts of it, and engine.text.vocab must import without site-packages)
    "LLM": "engine.llm",
    "AsyncLLM": "engine.async_llm",
    "EngineConfig": "engine.config",
    "SamplingParams": "engine.sampling_params",
}


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    import importlib  # noqa: PLC0415

    return getattr(importlib.import_module(_EXPORTS[name]), name)


__all__ = list(_EXPORTS)
