"""moe_mxfp4 against moe_mxfp4_ref, the ref against a per-token loop over dequantized experts, and the routing
metadata (tile -> expert) the Triton path builds."""

import pytest
import torch

from engine.kernels.launch import run
from engine.kernels.moe import moe_mxfp4, moe_mxfp4_ref, plan_moe_mxfp4, route, route_ref
from engine.weights.mxfp4 import dequantize_mxfp4

from ._util import DEVICE, DTYPES, assert_close, mxfp4_weights, triton_path


def _experts(E, H, I, seed=0):
    """Random MXFP4 experts; std 0.3 puts some gate/up values past the +-7 clamp."""
    g = torch.Generator().manual_seed(seed)
    w1_blocks, w1_scales = mxfp4_weights(E, 2 * I, H, std=0.3, generator=g)
    w2_blocks, w2_scales = mxfp4_weights(E, H, I, std=0.3, generator=g)
    b1, b2 = torch.randn(E, 2 * I, generator=g), torch.randn(E, H, generator=g)
    return w1_blocks, w1_scales, b1, w2_blocks, w2_scales, b2


def _routing(T, E, K, pattern, seed=0):
    """topk_ids [T, K] int32 (distinct experts per token) and softmaxed weights [T, K] for a named pattern."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)]).int()
    if pattern == "few-experts":  # experts 0 and 1 only: the others get no tokens
        ids = torch.stack([torch.randperm(2, generator=g)[:K] for _ in range(T)]).int()
    elif pattern == "skewed":  # every token's first choice is expert 0: several tiles for one expert
        ids[:, 0] = 0
        ids[:, 1:] = torch.where(ids[:, 1:] == 0, ids[:, :1].expand_as(ids[:, 1:]), ids[:, 1:])
    elif pattern == "other-rank":  # expert parallelism: ids of -1 belong to another rank
        ids[torch.rand(T, K, generator=g) < 0.4] = -1
        ids[0] = -1  # a token with nothing on this rank
    weights = torch.softmax(torch.randn(T, K, generator=g), -1)
    return ids, weights


CASES = {
    # name: (T, E, K, H, I, pattern)
    "one-token": (1, 4, 2, 64, 32, "random"),
    "odd-T": (7, 6, 2, 96, 64, "random"),
    "k4-few-experts": (5, 8, 2, 64, 96, "few-experts"),
    "skewed-multi-tile": (37, 4, 2, 64, 32, "skewed"),
    "other-rank": (9, 4, 4, 96, 32, "other-rank"),
    "k1": (3, 5, 1, 32, 32, "random"),
}


def _args(case, dtype, device=DEVICE):
    T, E, K, H, I, pattern = CASES[case]
    g = torch.Generator().manual_seed(T)
    x = torch.randn(T, H, generator=g).to(dtype)
    ids, weights = _routing(T, E, K, pattern)
    return tuple(t.to(device) for t in (x, ids, weights, *_experts(E, H, I)))


@triton_path
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_moe_mxfp4_matches_ref(case, dtype):
    args = _args(case, dtype)
    out = moe_mxfp4(*args)
    expected = moe_mxfp4_ref(*args)
    assert_close(out, expected, fp32_tol=1e-4 if dtype == torch.float32 else None)


@triton_path
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["one-token", "odd-T", "other-rank"])
def test_narrow_tiles_match_ref(case, dtype):
    """The plan for a GPU with many SMs narrows the GEMMs' column tiles (down to 16) to fill them: same result."""
    args = _args(case, dtype)
    out, launches = plan_moe_mxfp4(*args, sms=10_000)
    assert [l.meta["BLOCK_N"] for l in launches if "gemm" in l.name] == [16, 16]
    run(launches)
    assert_close(out, moe_mxfp4_ref(*args), fp32_tol=1e-4 if dtype == torch.float32 else None)


@triton_path
def test_moe_mxfp4_custom_limit_and_alpha():
    args = _args("odd-T", torch.float32)
    assert_close(moe_mxfp4(*args, swiglu_limit=1.5, alpha=0.5), moe_mxfp4_ref(*args, swiglu_limit=1.5, alpha=0.5),
                 fp32_tol=1e-4)


def _naive_moe(x, ids, weights, w1_blocks, w1_scales, b1, w2_blocks, w2_scales, b2, limit=7.0, alpha=1.702):
    """The spec, one token and one expert at a time, in float64."""
    w1 = dequantize_mxfp4(w1_blocks, w1_scales, torch.float32).double()  # [E, 2I, H]
    w2 = dequantize_mxfp4(w2_blocks, w2_scales, torch.float32).double()  # [E, H, I]
    out = torch.zeros(x.shape, dtype=torch.float64)
    for t in range(x.shape[0]):
        for k in range(ids.shape[1]):
            e = int(ids[t, k])
            if e < 0:
                continue
            h = w1[e] @ x[t].double() + b1[e].double()
            gate, up = h[0::2].clamp(max=limit), h[1::2].clamp(-limit, limit)
            act = gate * torch.sigmoid(alpha * gate) * (up + 1)
            out[t] += float(weights[t, k]) * (w2[e] @ act + b2[e].double())
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_moe_mxfp4_ref_matches_naive(case):
    args = _args(case, torch.float32, "cpu")
    out = moe_mxfp4_ref(*args)
    expected = _naive_moe(*args)
    torch.testing.assert_close(out.double(), expected, atol=1e-4, rtol=1e-5)
    if (args[1] == -1).all(dim=1).any():
        assert (out[(args[1] == -1).all(dim=1)] == 0).all()


def test_route_ref_tiles_cover_each_expert():
    ids = torch.tensor([[2, 0], [2, -1], [0, 2], [2, 3], [-1, -1]], dtype=torch.int32)
    r = route_ref(ids, num_experts=5, block_m=2)
    # assignments (t * K + k) grouped by expert, in token order, skipped ones last
    assert r.sorted_rows.tolist() == [1, 4, 0, 2, 5, 6, 7, 3, 8, 9]
    # expert 0: rows 0-1 (1 tile); expert 2: rows 2-5 (2 tiles); expert 3: row 6; spare tiles: -1
    assert r.tile_expert.tolist() == [0, 2, 2, 3, -1, -1, -1, -1, -1, -1]
    assert r.tile_start.tolist() == [0, 2, 4, 6, 0, 0, 0, 0, 0, 0]
    assert r.tile_end.tolist() == [2, 6, 6, 7, 0, 0, 0, 0, 0, 0]


@triton_path
@pytest.mark.parametrize("T,E,K,block_m,pattern", [
    (5, 5, 2, 2, "other-rank"), (1, 128, 4, 16, "random"), (100, 128, 4, 16, "other-rank"),
    (37, 4, 2, 32, "skewed"), (70, 8, 2, 16, "few-experts"),
])
def test_route_matches_ref(T, E, K, block_m, pattern):
    ids, _ = _routing(T, E, K, pattern)
    got, expected = route(ids.to(DEVICE), E, block_m), route_ref(ids.to(DEVICE), E, block_m)
    for name in ("sorted_rows", "tile_expert", "tile_start", "tile_end"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), atol=0, rtol=0, msg=name)
