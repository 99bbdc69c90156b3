"""gptoss-serve's inference engine: checkpoint loading, the reference model, batching, sampling.

    from engine import LLM, SamplingParams
"""

import os

# Some virtual machines advertise AMX tiles without the kernel enabling them, and oneDNN's bf16 matmuls then die
# with SIGILL. Capping oneDNN at AVX512-BF16 costs nothing that matters here (the GPU path does not use oneDNN);
# set ONEDNN_MAX_CPU_ISA yourself to override. oneDNN reads it at its first primitive, so this must run early.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")


def __getattr__(name):
    # Imported lazily so `import engine.<module>` stays light (the CLI and tools need only parts of it).
    if name == "LLM":
        from engine.llm import LLM

        return LLM
    if name == "SamplingParams":
        from engine.sampling_params import SamplingParams

        return SamplingParams
    raise AttributeError(name)


__all__ = ["LLM", "SamplingParams"]
