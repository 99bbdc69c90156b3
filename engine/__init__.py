"""gptoss-serve's inference engine: checkpoint loading, the reference model, batching, sampling.

    from engine import LLM, AsyncLLM, EngineConfig, SamplingParams
"""

import os

# Some virtual machines advertise AMX tiles without the kernel enabling them, and oneDNN's bf16 matmuls then die
# with SIGILL. Capping oneDNN at AVX512-BF16 costs nothing that matters here (the GPU path does not use oneDNN);
# set ONEDNN_MAX_CPU_ISA yourself to override. oneDNN reads it at its first primitive, so this must run early.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")


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
