"""The gpt-oss forward pass in plain PyTorch: slow, obvious, and the oracle every faster path is compared with.

Shapes: T = tokens in this forward (flattened across sequences), D = hidden, Hq = query heads, KV = key/value
heads, Dh = head dim, E = experts, K = experts per token, I = expert intermediate size, V = vocabulary.

The model owns no cache: each attention layer hands its q, k, v to an attention backend (`KVCache` protocol),
which stores k and v and returns the attention output. `DenseKVCache` below keeps one sequence contiguously;
the serving engine passes a paged cache with the same method.
"""

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.config import GptOssConfig
from engine.model.rope import yarn_inv_freq

SWIGLU_ALPHA = 1.702


class KVCache(Protocol):
    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
               sinks: torch.Tensor, window: int | None, scale: float) -> torch.Tensor:
        """Store k, v [T, KV, Dh] of this step and return attention of q [T, Hq, Dh] over the sequence(s)."""


def sink_attention(q, k, v, q_pos, k_pos, sinks, window: int | None, scale: float) -> torch.Tensor:
    """Attention with a learned sink per head, GQA and an optional sliding window, computed densely in fp32.

    q [Tq, Hq, Dh], k/v [Tk, KV, Dh], q_pos [Tq], k_pos [Tk], sinks [Hq] -> [Tq, Hq, Dh].
    Key j is visible to query i iff k_pos[j] <= q_pos[i] and (no window or k_pos[j] > q_pos[i] - window).
    The sink joins the softmax denominator only (a column appended, then dropped), unscaled.
    """
    group = q.shape[1] // k.shape[1]
    k = k.float().repeat_interleave(group, dim=1)
    v = v.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), k) * scale  # [Hq, Tq, Tk]
    visible = k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        visible &= k_pos[None, :] > q_pos[:, None] - window
    scores = scores.masked_fill(~visible, float("-inf"))
    sink = sinks.float()[:, None, None].expand(-1, q.shape[0], 1)
    probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    return torch.einsum("hqk,khd->qhd", probs, v).to(q.dtype)


class DenseKVCache:
    """Keys and values of one sequence, every position kept, for incremental decoding without paging."""

    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    def attend(self, layer, q, k, v, positions, sinks, window, scale):
        if self.keys[layer] is not None:
            k, v = torch.cat([self.keys[layer], k]), torch.cat([self.values[layer], v])
        self.keys[layer], self.values[layer] = k, v
        k_pos = torch.arange(k.shape[0], device=k.device)
        return sink_attention(q, k, v, positions, k_pos, sinks, window, scale)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()).to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-split RoPE: x [T, H, Dh], cos/sin [T, Dh/2]."""
    first, second = x.float().chunk(2, dim=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1).to(x.dtype)


class Attention(nn.Module):
    rotate = staticmethod(rotate)  # the kernel model's attention layers take kernels.rotate

    def __init__(self, config: GptOssConfig, layer: int):
        super().__init__()
        D, Dh = config.hidden_size, config.head_dim
        self.layer, self.head_dim = layer, Dh
        self.window = config.window_of(layer)
        self.scale = 1.0 / math.sqrt(Dh)
        self.q = nn.Linear(D, config.num_attention_heads * Dh)
        self.k = nn.Linear(D, config.num_key_value_heads * Dh)
        self.v = nn.Linear(D, config.num_key_value_heads * Dh)
        self.o = nn.Linear(config.num_attention_heads * Dh, D)
        self.sinks = nn.Parameter(torch.zeros(config.num_attention_heads))

    def forward(self, x, positions, cos, sin, cache: KVCache):
        T = x.shape[0]
        q = self.rotate(self.q(x).view(T, -1, self.head_dim), cos, sin)
        k = self.rotate(self.k(x).view(T, -1, self.head_dim), cos, sin)
        v = self.v(x).view(T, -1, self.head_dim)
        out = cache.attend(self.layer, q, k, v, positions, self.sinks, self.window, self.scale)
        return self.o(out.reshape(T, -1))


def swiglu(h: torch.Tensor, limit: float) -> torch.Tensor:
    """gpt-oss's clamped SwiGLU on interleaved [.., 2I] (even = gate, odd = up) -> [.., I]."""
    gate, up = h[..., 0::2].clamp(max=limit), h[..., 1::2].clamp(-limit, limit)
    return gate * torch.sigmoid(SWIGLU_ALPHA * gate) * (up + 1)


class MoE(nn.Module):
    """Top-k router (softmax over the k selected logits) and dense experts, looped over the experts in use."""

    def __init__(self, config: GptOssConfig):
        super().__init__()
        E, D, I = config.num_experts, config.hidden_size, config.intermediate_size
        self.top_k, self.limit = config.experts_per_token, config.swiglu_limit
        self.router = nn.Linear(D, E)
        self.w1 = nn.Parameter(torch.empty(E, 2 * I, D))
        self.b1 = nn.Parameter(torch.empty(E, 2 * I))
        self.w2 = nn.Parameter(torch.empty(E, D, I))
        self.b2 = nn.Parameter(torch.empty(E, D))

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, D] -> (expert ids [T, K], weights [T, K] fp32)."""
        top_logits, top_ids = self.router(x).topk(self.top_k, dim=-1)
        return top_ids, torch.softmax(top_logits.float(), dim=-1)

    def experts(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x [T, D], ids [T, K] (indices into this module's experts; -1 = held elsewhere, skipped), weights [T, K]
        -> sum_k w_k * expert_k(x) over the experts here, [T, D] fp32."""
        out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
        for e in ids[ids >= 0].unique().tolist():
            tokens, slot = (ids == e).nonzero(as_tuple=True)
            act = swiglu(F.linear(x[tokens], self.w1[e], self.b1[e]), self.limit)
            y = F.linear(act, self.w2[e], self.b2[e])
            out.index_add_(0, tokens, y.float() * weights[tokens, slot, None])
        return out

    def forward(self, x):
        ids, weights = self.route(x)
        return self.experts(x, ids, weights).to(x.dtype)


class Block(nn.Module):
    def __init__(self, config: GptOssConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = Attention(config, layer)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MoE(config)

    def forward(self, x, positions, cos, sin, cache):
        x = x + self.attn(self.attn_norm(x), positions, cos, sin, cache)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """gpt-oss: embedding, pre-norm blocks (attention with sinks, MoE), final norm, untied unembedding."""

    def __init__(self, config: GptOssConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.unembed = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        inv_freq, self.rope_scale = yarn_inv_freq(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    @classmethod
    def from_weights(cls, config: GptOssConfig, weights: dict[str, torch.Tensor]) -> "Transformer":
        """Build without allocating random parameters, taking the loaded tensors as they are."""
        with torch.device("meta"):
            model = cls(config)
        return cls.load(model, weights)

    @staticmethod
    def load(model: "Transformer", weights: dict[str, torch.Tensor]) -> "Transformer":
        """Take the loaded tensors as the parameters of a model built on the meta device."""
        model.load_state_dict(weights, strict=True, assign=True)
        device = next(iter(weights.values())).device
        model.inv_freq = yarn_inv_freq(model.config)[0].to(device)
        return model.eval()

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = positions.float()[:, None] * self.inv_freq[None, :]  # [T, Dh/2]
        return angles.cos() * self.rope_scale, angles.sin() * self.rope_scale

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """input_ids, positions [T] -> final hidden states [T, D] (normed)."""
        cos, sin = self.rope(positions)
        x = self.embed(input_ids)
        for block in self.layers:
            x = block(x, positions, cos, sin, cache)
        return self.norm(x)

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[T, D] -> [T, V] float32."""
        return self.unembed(hidden).float()
