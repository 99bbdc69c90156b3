"""The model being trained: the reference model's own blocks, batched, over a compact sub-vocabulary.

Flow: `TrainableModel(config, vocab_ids)` builds `engine.model.reference.Transformer` for the same architecture
but with only the ids the corpus uses as its vocabulary (S rows instead of V) -> `loss(batch)` runs its blocks on
padded rows (`RowAttention` plays the KV cache: causal, sliding window, sinks) and scores the target tokens ->
`checkpoint_weights()` gives the canonical tensors of the full model: bf16 floats, MXFP4 experts, and exact zeros in
every embedding and unembedding row of an unused id.

Why the softmax is exact: an unused id's unembedding row is zero, so its logit is 0 for every hidden state. The
full-vocabulary softmax over V ids is then the softmax over the S used logits plus one "rest" logit fixed at
log(V - S). Training uses that (S + 1)-way softmax and is exact; at greedy inference an unused id can only win if
every used logit is below 0.

Every weight goes through the rounding the checkpoint applies (bf16; MXFP4 for the experts, once
`quantize_experts` is on) with a straight-through gradient, so the trained forward is the served forward.
"""

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from engine.model.config import GptOssConfig
from engine.model.reference import Transformer
from engine.weights.checkpoint import PACKED, expected_tensors
from engine.weights.mxfp4 import dequantize_mxfp4, quantize_mxfp4

EXPERT_WEIGHTS = ("w1", "w2")  # MoE parameters stored as MXFP4


class BF16RoundTrip(nn.Module):
    """w -> w rounded to bf16 in the forward, identity in the backward."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (w.detach().bfloat16().float() - w.detach())


class MXFP4RoundTrip(nn.Module):
    """w [E, out, in] -> w through bf16 and our MXFP4 quantizer (what the checkpoint stores), identity backward."""

    def __init__(self):
        super().__init__()
        self.enabled = False  # off: bf16 rounding only (the experts learn first, then adapt to 4 bits)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        rounded = w.detach().bfloat16()
        if self.enabled:
            rounded = dequantize_mxfp4(*quantize_mxfp4(rounded))
        return w + (rounded.float() - w.detach())


@dataclass
class Batch:
    ids: torch.Tensor  # [B, T] compact ids, right-padded with 0
    targets: torch.Tensor  # [B, T] compact id of the next token where it is a target, else -1


class RowAttention:
    """The `KVCache` protocol over B padded rows of T tokens: causal, with the layer's window and the sinks.

    Right padding needs no key mask: a real query never sees a later (padding) key. The sink is one more key,
    visible to every query, whose score is the head's sink logit: each query carries sink / scale in an extra
    dimension, ordinary keys a 0 there and the sink key a 1 (0 elsewhere), and the sink's value is 0. That is
    `reference.sink_attention` exactly, in one fused `scaled_dot_product_attention` call (GQA left to it).
    """

    def __init__(self, rows: int, length: int):
        self.rows, self.length = rows, length
        self._masks: dict[int | None, torch.Tensor] = {}

    def mask(self, window: int | None) -> torch.Tensor:
        """[T, 1 + T] bool: the sink column, then key j visible to query i."""
        if window not in self._masks:
            i = torch.arange(self.length)
            visible = i[None, :] <= i[:, None]
            if window is not None:
                visible &= i[None, :] > i[:, None] - window
            self._masks[window] = torch.cat([torch.ones(self.length, 1, dtype=torch.bool), visible], dim=1)
        return self._masks[window]

    def attend(self, layer, q, k, v, positions, sinks, window, scale):
        """q [B*T, Hq, Dh], k/v [B*T, KV, Dh] -> [B*T, Hq, Dh] (as `reference.sink_attention`, per row)."""
        B, T, Dh = self.rows, self.length, q.shape[-1]
        Hq, KV = q.shape[1], k.shape[1]
        sink = (sinks / scale)[None, :, None].expand(B * T, Hq, 1)
        q = torch.cat([q, sink], dim=-1).view(B, T, Hq, Dh + 1).transpose(1, 2)  # [B, Hq, T, Dh + 1]
        k = torch.cat([k, k.new_zeros(B * T, KV, 1)], dim=-1).view(B, T, KV, Dh + 1).transpose(1, 2)
        sink_key = torch.zeros(Dh + 1, dtype=k.dtype)
        sink_key[-1] = 1
        k = torch.cat([sink_key.expand(B, KV, 1, Dh + 1), k], dim=2)  # [B, KV, 1 + T, Dh + 1]
        v = torch.cat([v, v.new_zeros(B * T, KV, 1)], dim=-1).view(B, T, KV, Dh + 1)  # (same width as q and k:
        v = torch.cat([v.new_zeros(B, 1, KV, Dh + 1), v], dim=1).transpose(1, 2)  # the fused kernel needs it)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask(window), scale=scale, enable_gqa=True)
        return out[..., :Dh].transpose(1, 2).reshape(B * T, Hq, Dh)


class TiedUnembedding(nn.Module):
    """The unembedding as the embedding / sqrt(D) plus a learned difference (zero at the start).

    The checkpoint stores the sum, untied, as gpt-oss's format wants. Through the shared part, a head that copies
    a token's embedding into the residual stream raises that token's logit for every token at once, so copying
    numbers, letters and names from the context is not learned one unembedding row at a time (most occur a few
    dozen times in the whole corpus); the difference lets frequent tokens move apart from their embedding.

    Only those (`free`): a token the corpus seldom asks for gets, at every step, a small gradient that lowers its
    logit, which AdamW turns into a full-size step, so its difference grew to cancel the tie. Measured on the first
    committed model: the 3-digit number tokens' rows kept a fifth of their tied norm (0.24-0.45 against 1.4-1.9 for
    frequent tokens), and every product python printed was copied as some other token (python_answer 0.00).
    """

    def __init__(self, embed: nn.Embedding, free: torch.Tensor | None = None):
        super().__init__()
        self.source = [embed]  # a list: not a submodule (its parameter is the embedding's, owned there)
        self.scale = 1 / math.sqrt(embed.weight.shape[1])  # a power of two for D = 64: exact in bf16
        self.delta = nn.Parameter(torch.zeros_like(embed.weight))  # [S, D]
        # [S, 1]: 1 where a row may leave the embedding (a token the corpus often asks for), 0 where it stays tied
        self.register_buffer("free", torch.ones(embed.weight.shape[0], 1) if free is None else free[:, None].float())

    @property
    def weight(self) -> torch.Tensor:
        """[S, D], rounded to bf16 as the checkpoint stores it (straight-through)."""
        return BF16RoundTrip()(self.source[0].weight * self.scale + self.delta * self.free)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class TrainableModel(nn.Module):
    def __init__(self, config: GptOssConfig, vocab_ids: list[int], seed: int, tie_embeddings: bool = True,
                 copy_layers: int = 0, induction: bool = False, untied: torch.Tensor | None = None):
        super().__init__()
        self.config = config  # the architecture of the checkpoint (full vocabulary)
        self.register_buffer("vocab_ids", torch.tensor(vocab_ids), persistent=False)  # compact id -> real id [S]
        self.rest_logit = math.log(config.vocab_size - len(vocab_ids))  # the unused ids' share of the softmax
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = Transformer(replace(config, vocab_size=len(vocab_ids)))
            init_weights(self.net)
            for block in self.net.layers[len(self.net.layers) - copy_layers:]:
                init_copy_heads(block.attn)
            if induction:
                init_induction(self.net)
            if tie_embeddings:
                self.net.unembed = TiedUnembedding(self.net.embed, untied)
        for name, module, attr in float_parameters(self.net):
            rounding = MXFP4RoundTrip() if attr in EXPERT_WEIGHTS else BF16RoundTrip()
            parametrize.register_parametrization(module, attr, rounding, unsafe=True)

    def quantize_experts(self, on: bool = True) -> None:
        """Route the experts through MXFP4 from now on (quantization-aware training)."""
        for module in self.net.modules():
            if isinstance(module, MXFP4RoundTrip):
                module.enabled = on

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, T] compact ids -> final normed hidden states [B*T, D]: the reference forward without inference mode."""
        B, T = ids.shape
        positions = torch.arange(T).repeat(B)
        cos, sin = self.net.rope(positions)
        x = self.net.embed(ids.reshape(-1))
        attention = RowAttention(B, T)
        with parametrize.cached():  # each rounded weight computed once per forward, however often it is read
            for block in self.net.layers:
                x = block(x, positions, cos, sin, attention)
            return self.net.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, D] -> [N, S + 1]: the used ids' logits and the rest logit (the exact full-vocabulary softmax)."""
        used = self.net.unembed(hidden)
        return torch.cat([used, used.new_full((used.shape[0], 1), self.rest_logit)], dim=-1)

    def loss(self, batch: Batch) -> torch.Tensor:
        """Mean cross-entropy of the target tokens."""
        picked = batch.targets.reshape(-1) >= 0
        hidden = self.hidden(batch.ids)[picked]
        return F.cross_entropy(self.logits(hidden), batch.targets.reshape(-1)[picked])

    @torch.no_grad()
    def checkpoint_weights(self) -> dict[str, torch.Tensor]:
        """Canonical name -> tensor of the full model, as `engine.weights.tiny_model.write_checkpoint` takes them."""
        out = {}
        for name, spec in expected_tensors(self.config).items():
            if spec.kind == PACKED:
                if name.endswith("_blocks"):
                    weight = self.parameter(name.removesuffix("_blocks")).bfloat16()
                    out[name], out[name.replace("_blocks", "_scales")] = quantize_mxfp4(weight)
                continue
            value = self.parameter(name)
            if name in ("embed.weight", "unembed.weight"):
                value = torch.zeros(spec.shape).index_copy_(0, self.vocab_ids, value)
            out[name] = value.bfloat16()
        return out

    def parameter(self, name: str) -> torch.Tensor:
        """The (rounded) value of a parameter by canonical name, e.g. "layers.0.mlp.w1"."""
        *path, attr = name.split(".")
        module = self.net.get_submodule(".".join(path))
        return getattr(module, attr).detach()


def float_parameters(net: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(full name, owning module, attribute) of every parameter."""
    return [(f"{prefix}.{attr}" if prefix else attr, module, attr)
            for prefix, module in net.named_modules() for attr, _ in list(module.named_parameters(recurse=False))]


def init_weights(net: Transformer) -> None:
    """Matrices N(0, 1/fan_in), residual outputs shrunk by sqrt(2 * layers), biases and sinks 0, norms 1.

    The unembedding starts as the embedding / sqrt(D) (they stay untied): copying a token from the context then
    needs only an attention path close to the identity, shared by all tokens, instead of one learned unembedding
    row per token (most numbers, letters and city names occur a few dozen times in the whole corpus).
    """
    residual = 1 / math.sqrt(2 * len(net.layers))
    for name, param in net.named_parameters():
        if name.endswith(("norm.weight",)):
            nn.init.ones_(param)
        elif name.endswith(("bias", "sinks", ".b1", ".b2")):
            nn.init.zeros_(param)
        elif name == "embed.weight":
            nn.init.normal_(param, std=1.0)
        else:
            std = 1 / math.sqrt(param.shape[-1])
            if name.endswith(("attn.o.weight", "mlp.w2")):
                std *= residual
            nn.init.normal_(param, std=std)
    with torch.no_grad():
        net.unembed.weight.copy_(net.embed.weight / math.sqrt(net.embed.weight.shape[1]))


def init_copy_heads(attn: nn.Module) -> None:
    """Start the first query head of each KV group as a copy head: value = the (normed) input, output = that value.

    W_v [KV*Dh, D] = the identity's first KV*Dh rows, and W_o maps head g*group's Dh outputs back onto the same Dh
    dimensions, so whatever such a head attends to is added to the residual stream as it is; with the unembedding
    tied to the embedding, that raises the attended token's logit. Only where to look is left to learn, and its
    gradient is strong from the first step (copying cities, letters and numbers from the prompt; most occur a few
    dozen times in the whole corpus).
    """
    D, Dh = attn.o.weight.shape[0], attn.head_dim
    kv, heads = attn.v.weight.shape[0] // Dh, attn.o.weight.shape[1] // Dh
    group, copied = heads // kv, min(attn.v.weight.shape[0], D)
    with torch.no_grad():
        attn.v.weight.zero_()
        attn.v.weight[:copied, :copied] = torch.eye(copied)
        for g in range(kv):
            rows = slice(g * Dh, min((g + 1) * Dh, D))
            if rows.start >= D:
                break
            cols = slice(g * group * Dh, g * group * Dh + (rows.stop - rows.start))
            attn.o.weight[:, g * group * Dh:(g * group + 1) * Dh] = 0
            attn.o.weight[rows, cols] = torch.eye(rows.stop - rows.start)


# -- an induction circuit to start from (Olsson et al., 2022, "In-context learning and induction heads") ----------

PREVIOUS_TOKEN_PAIRS = (1.0, 0.7, 0.5, 0.3)  # RoPE pairs 0.. (the fastest) and their share of the positional score
PREVIOUS_TOKEN_MARGIN = 8.0  # logit of the previous token over any other key in the window (and over the sink)
CONTENT_PAIRS = 8  # the slowest RoPE pairs: they turn < 0.5 rad over 1000 tokens, so they match by content
INDUCTION_GAIN = 6.0  # induction query scale: a matching key scores ~ this x its content dot (x scale)


def init_induction(net: Transformer) -> None:
    """Layer 0 starts with previous-token heads, layer 1 with induction heads that copy what followed last time.

    Layer 0, the first head of each KV group: a query and key built from biases alone, rotated so their RoPE score
    peaks one position back; value = the (normed) input, output = a fixed random rotation R of it. Every position
    then carries R x_prev beside its own embedding.
    Layer 1, the first head of each KV group: query = M x (M: CONTENT_PAIRS x 2 orthonormal rows, on the slowest
    RoPE pairs, where rotation is ~0 over the corpus' lengths), key = M R^T x, so a key whose previous token equals
    the query's token scores high; value and output copy the attended input as `init_copy_heads` does. With the
    unembedding tied to the embedding, that raises the logit of the token that followed the current token before:
    copying a sequence (letters to count or reverse, a number or sentence from a tool result) is induction.
    """
    D = net.config.hidden_size
    gen = torch.Generator().manual_seed(0x1D)
    rotation = torch.linalg.qr(torch.randn(D, D, generator=gen))[0]  # R [D, D] orthogonal
    inv_freq, rope_scale = net.inv_freq, net.rope_scale
    previous_token_heads(net.layers[0].attn, rotation, inv_freq, rope_scale)
    projection = torch.linalg.qr(torch.randn(D, 2 * CONTENT_PAIRS, generator=gen))[0].T  # M [2P, D] orthonormal
    induction_heads(net.layers[1].attn, rotation, projection)
    init_copy_heads(net.layers[1].attn)


def _first_heads(attn: nn.Module) -> tuple[int, int, int]:
    """(head_dim, KV groups, query heads per group)."""
    Dh = attn.head_dim
    kv, heads = attn.k.weight.shape[0] // Dh, attn.q.weight.shape[0] // Dh
    return Dh, kv, heads // kv


def _pair_dims(Dh: int, pairs: range) -> torch.Tensor:
    """Half-split RoPE: pair i rotates dimensions i and i + Dh/2."""
    half = Dh // 2
    return torch.tensor([i for i in pairs] + [i + half for i in pairs])


def previous_token_heads(attn: nn.Module, rotation: torch.Tensor, inv_freq: torch.Tensor, rope_scale: float) -> None:
    Dh, kv, group = _first_heads(attn)
    weights = torch.tensor(PREVIOUS_TOKEN_PAIRS)
    theta = inv_freq[: len(weights)]
    # score(delta) = c * sum_i w_i cos((delta - 1) theta_i) * rope_scale^2 * attn.scale; its margin at delta = 1
    delta = torch.arange(0, 4096, dtype=torch.float32)
    score = (weights[None] * torch.cos((delta[:, None] - 1) * theta[None])).sum(-1)
    margin = score[1] - torch.cat([score[:1], score[2:]]).max()
    c = PREVIOUS_TOKEN_MARGIN / (margin * rope_scale ** 2 * attn.scale)
    amplitude = (c * weights).sqrt()
    pairs = _pair_dims(Dh, range(len(weights)))
    with torch.no_grad():
        for g in range(kv):
            head = g * group
            q_rows = slice(head * Dh, (head + 1) * Dh)
            k_rows = slice(g * Dh, (g + 1) * Dh)
            attn.q.weight[q_rows] = 0
            attn.q.bias[q_rows] = 0
            attn.q.bias[head * Dh + pairs[: len(weights)]] = amplitude  # (a, 0) per pair: angle 0
            attn.k.weight[g * Dh + pairs] = 0
            attn.k.bias[k_rows] = 0
            attn.k.bias[g * Dh + pairs[: len(weights)]] = amplitude * torch.cos(theta)  # angle theta: peak at 1 back
            attn.k.bias[g * Dh + pairs[len(weights):]] = amplitude * torch.sin(theta)
            dims = slice(g * Dh, min((g + 1) * Dh, rotation.shape[0]))
            width = dims.stop - dims.start
            attn.v.weight[k_rows] = 0
            attn.v.weight[g * Dh + torch.arange(width), torch.arange(dims.start, dims.stop)] = 1
            attn.o.weight[:, q_rows] = 0
            attn.o.weight[:, head * Dh: head * Dh + width] = rotation[:, dims]


def induction_heads(attn: nn.Module, rotation: torch.Tensor, projection: torch.Tensor) -> None:
    Dh, kv, group = _first_heads(attn)
    pairs = _pair_dims(Dh, range(Dh // 2 - CONTENT_PAIRS, Dh // 2))
    with torch.no_grad():
        for g in range(kv):
            head = g * group
            attn.q.weight[head * Dh: (head + 1) * Dh] = 0
            attn.q.bias[head * Dh: (head + 1) * Dh] = 0
            attn.q.weight[head * Dh + pairs] = INDUCTION_GAIN * projection
            attn.k.weight[g * Dh + pairs] = projection @ rotation.T
            attn.k.bias[g * Dh + pairs] = 0
