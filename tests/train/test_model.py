"""The training twin is the reference model: same attention with sinks, same MoE, same logits once written."""

import math

import pytest
import torch

from engine.model.reference import DenseKVCache, Transformer, sink_attention
from engine.train.model import Batch, RowAttention, TrainableModel
from engine.weights.checkpoint import load_weights
from engine.weights.tiny_model import TinyModelSpec, write_checkpoint

SPEC = TinyModelSpec(layers=2, experts=4, experts_per_token=2, hidden=64, intermediate=64, heads=4, kv_heads=1,
                     head_dim=16, sliding_window=8)
VOCAB_IDS = [3, 10, 200, 1000, 5000, 199998, 200002, 200006, 200008]


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("heads,kv", [(4, 1), (4, 4), (6, 2)])
def test_row_attention_equals_sink_attention_per_row(window, heads, kv):
    gen = torch.Generator().manual_seed(0)
    B, T, Dh = 3, 11, 8
    q, k, v = (torch.randn(B * T, h, Dh, generator=gen) for h in (heads, kv, kv))
    sinks = torch.randn(heads, generator=gen)
    out = RowAttention(B, T).attend(0, q, k, v, None, sinks, window, 0.3)
    pos = torch.arange(T)
    rows = [slice(r * T, (r + 1) * T) for r in range(B)]
    ref = torch.cat([sink_attention(q[r], k[r], v[r], pos, pos, sinks, window, 0.3) for r in rows])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A twin with random weights (experts through MXFP4), written as a checkpoint."""
    model = TrainableModel(SPEC.config(), VOCAB_IDS, seed=1)
    model.quantize_experts()
    directory = write_checkpoint(tmp_path_factory.mktemp("twin"), model.config, model.checkpoint_weights())
    return model, directory


def test_written_checkpoint_gives_the_twins_logits(trained):
    model, directory = trained
    config, weights = load_weights(directory, torch.float32, torch.device("cpu"))
    engine_model = Transformer.from_weights(config, weights)
    ids = [VOCAB_IDS[i] for i in (6, 7, 1, 2, 3, 8, 4, 0, 5, 2, 1, 3, 4)]  # longer than the window
    full = engine_model.compute_logits(engine_model(torch.tensor(ids), torch.arange(len(ids)),
                                                    DenseKVCache(config.num_hidden_layers)))  # [T, V]
    compact = torch.tensor([VOCAB_IDS.index(i) for i in ids])
    with torch.no_grad():
        twin = model.logits(model.hidden(compact[None]))  # [T, S + 1]
    torch.testing.assert_close(full[:, VOCAB_IDS], twin[:, :-1], rtol=1e-4, atol=1e-4)
    unused = torch.ones(config.vocab_size, dtype=torch.bool)
    unused[VOCAB_IDS] = False
    assert (full[:, unused] == 0).all()  # exactly: their unembedding rows are zero
    # the (S + 1)-way softmax with the rest logit is the full-vocabulary softmax
    torch.testing.assert_close(torch.log_softmax(full, -1)[:, VOCAB_IDS], torch.log_softmax(twin, -1)[:, :-1],
                               rtol=1e-4, atol=1e-4)


def test_unused_rows_are_zero_and_experts_round_trip(trained):
    model, directory = trained
    _, weights = load_weights(directory, torch.float32, torch.device("cpu"))
    for name in ("embed.weight", "unembed.weight"):
        used = torch.zeros(model.config.vocab_size, dtype=torch.bool)
        used[VOCAB_IDS] = True
        assert (weights[name][~used] == 0).all() and (weights[name][used] != 0).any()
    # the experts the twin computes with are exactly the dequantized checkpoint
    torch.testing.assert_close(weights["layers.0.mlp.w1"], model.parameter("layers.0.mlp.w1"), rtol=0, atol=0)


def test_loss_is_the_cross_entropy_of_the_targets():
    model = TrainableModel(SPEC.config(), VOCAB_IDS, seed=2)
    ids = torch.tensor([[0, 1, 2, 3, 4], [5, 6, 7, 0, 0]])
    targets = torch.tensor([[-1, -1, 3, 4, -1], [-1, 7, -1, -1, -1]])  # a padded row: pads are never targets
    with torch.no_grad():
        logp = torch.log_softmax(model.logits(model.hidden(ids)), -1).view(2, 5, -1)
        expected = -(logp[0, 2, 3] + logp[0, 3, 4] + logp[1, 1, 7]) / 3
        loss = model.loss(Batch(ids, targets))
    torch.testing.assert_close(loss, expected)
    assert math.isclose(model.rest_logit, math.log(SPEC.vocab - len(VOCAB_IDS)))


def test_copy_heads_add_the_attended_input_as_it_is():
    """heads 4 / KV 2 of 32 over hidden 64: the copy heads' W_o W_v, summed, is the identity; the rest start random."""
    spec = TinyModelSpec(layers=2, experts=4, experts_per_token=2, hidden=64, intermediate=64, heads=4, kv_heads=2,
                         head_dim=32, sliding_window=8)
    model = TrainableModel(spec.config(), VOCAB_IDS, seed=2, copy_layers=1)
    first, last = (layer.attn for layer in model.net.layers)
    with torch.no_grad():
        v, o = last.v.weight, last.o.weight  # [KV*Dh, D], [D, Hq*Dh]
        ov = sum(o[:, g * 2 * 32:(g * 2 + 1) * 32] @ v[g * 32:(g + 1) * 32] for g in range(2))
        torch.testing.assert_close(ov, torch.eye(64), rtol=0, atol=0)
        assert (o[:, 32:64] != 0).any() and (first.v.weight != 0).sum() > 64


def test_induction_init_attends_one_back_then_to_what_followed_last_time():
    """Layer 0's first heads look exactly one token back; layer 1's, on a repeated random sequence, look mostly at
    the token after the current token's earlier occurrence (far above uniform attention)."""
    from engine.model.reference import rotate
    from engine.train.trainer import HARMONY_MODEL

    model = TrainableModel(HARMONY_MODEL.config(), list(range(1500)), seed=0, induction=True)
    half = 60
    seq = torch.randperm(1500, generator=torch.Generator().manual_seed(0))[:half]
    ids = torch.cat([seq, seq])
    T, pos, net = len(ids), torch.arange(len(ids)), model.net
    cos, sin = net.rope(pos)
    x = net.embed(ids)
    attention = RowAttention(1, T)
    targets = [(pos - 1).clamp(min=0), torch.where(pos >= half, pos - half + 1, pos)]
    with torch.no_grad():
        for layer, target in zip(net.layers[:2], targets):
            h, a = layer.attn_norm(x), layer.attn
            q, k = (rotate(p(h).view(T, -1, a.head_dim), cos, sin) for p in (a.q, a.k))
            for head in (0, 2):
                scores = (q[:, head] @ k[:, head // 2].T * a.scale).masked_fill(pos[None] > pos[:, None], -1e9)
                probs = torch.cat([torch.zeros(T, 1), scores], 1).softmax(-1)[:, 1:]  # the sink starts at 0
                on_target = probs[pos, target][half + 1:]
                assert on_target.mean() > (0.99 if layer is net.layers[0] else 0.2)
            x = layer(x, pos, cos, sin, attention)


def test_rows_kept_tied_are_the_embedding_over_sqrt_d():
    """A token the corpus rarely asks for keeps its unembedding = embedding / sqrt(D), so copying it from the
    context is not unlearned; the others train a difference."""
    untied = torch.tensor([i % 2 == 0 for i in range(len(VOCAB_IDS))])
    model = TrainableModel(SPEC.config(), VOCAB_IDS, seed=2, untied=untied)
    with torch.no_grad():
        model.net.unembed.parametrizations.delta.original.normal_()  # as if trained
        weights = model.checkpoint_weights()
    embed, unembed = (weights[n][VOCAB_IDS].float() for n in ("embed.weight", "unembed.weight"))
    torch.testing.assert_close(unembed[~untied], embed[~untied] / math.sqrt(SPEC.hidden), rtol=0, atol=0)
    assert (unembed[untied] != embed[untied] / math.sqrt(SPEC.hidden)).any(-1).all()
