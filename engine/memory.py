"""What one engine's memory goes to, reported at start-up (and kept on `EngineCore.memory`).

Flow: the ranks' `LoadReport`s (weights by category) + the KV cache the engine sized from them + an estimate of the
largest step's activations (from shapes: the token budget, the longest sequence the cache holds, the sampled rows)
-> `MemoryReport`, logged by the engine at INFO once the cache is allocated, with this process's RSS then and at its
peak. On CPU with one rank the weights are the memory map's pages (engine.weights.checkpoint): they count in the
RSS once read, so the first steps bring the RSS up to about weights + KV cache + activations.
"""

import resource
from dataclasses import dataclass

from engine.config import EngineConfig
from engine.model.config import GptOssConfig

GiB = float(1 << 30)
FP32 = 4


@dataclass
class MemoryReport:
    """Bytes by use, for one rank (the first; with several, each holds its shard)."""

    weights: dict[str, int]  # by category (experts, attention, vocab, replicated) and "total"
    kv_cache: int  # the KV cache tensors
    kv_tokens: int  # tokens one sequence can hold in that cache
    activations: int  # estimate of the largest step's transient tensors
    rss: int  # this process's resident set once the cache is allocated
    peak_rss: int  # this process's peak resident set so far

    def line(self) -> str:
        w = self.weights
        return (f"memory: weights {w['total'] / GiB:.2f} GiB (experts {w['experts'] / GiB:.2f}, attention "
                f"{w['attention'] / GiB:.2f}, vocab {w['vocab'] / GiB:.2f}), KV cache {self.kv_cache / GiB:.2f} GiB "
                f"({self.kv_tokens} tokens per sequence), activations up to ~{self.activations / GiB:.2f} GiB "
                f"(estimate); process RSS {self.rss / GiB:.2f} GiB, peak {self.peak_rss / GiB:.2f} GiB")


def activation_bytes(c: GptOssConfig, config: EngineConfig, max_seq_tokens: int, itemsize: int) -> int:
    """The largest step's transient tensors: per token the hidden state, its norms and residual (fp32 at most), q/k/v
    and the attention output, one expert's [n, 2I] and [n, I]; attention over the longest sequence (keys and values
    gathered, repeated per query head for a prefill chunk, and the [Q, N] mask: engine.kernels.attention's CPU path);
    the sampled rows' logits and the sampler's copies of them."""
    T, S = config.scheduler.max_num_batched_tokens, config.scheduler.max_num_seqs
    D, Dh, Hq, KV, I = c.hidden_size, c.head_dim, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size
    per_token = 6 * D * FP32 + (2 * Hq + 2 * KV) * Dh * itemsize + 3 * I * itemsize
    attention = 2 * Hq * max_seq_tokens * Dh * itemsize + min(T, max_seq_tokens) * max_seq_tokens * itemsize
    logits = 4 * min(S, T) * c.vocab_size * FP32
    return T * per_token + attention + logits


def rss_bytes() -> tuple[int, int]:
    """(current, peak) resident set of this process (Linux: /proc/self/statm; peak from getrusage, in KiB there)."""
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    rss = resident_pages * resource.getpagesize()
    return rss, max(rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # the kernel updates the
    #                                                                                   peak lazily
