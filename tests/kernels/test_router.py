"""router_topk against router_topk_ref, and the ref against "softmax over all, keep top k, renormalise"."""

import pytest
import torch

from engine.kernels.router import router_topk, router_topk_ref

from ._util import DEVICE, DTYPES, triton_path


def _logits(T, E, dtype):
    g = torch.Generator().manual_seed(T * 100 + E)
    return torch.randn(T, E, generator=g).to(dtype).to(DEVICE)


@triton_path
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,E,k", [(1, 8, 1), (7, 12, 3), (5, 32, 4), (3, 128, 4)])
def test_router_topk_matches_ref(T, E, k, dtype):
    logits = _logits(T, E, dtype)
    if dtype == torch.bfloat16:  # bf16 rounding makes ties: use distinct multiples of 1/16 (exact in bf16)
        g = torch.Generator().manual_seed(E)
        logits = torch.stack([torch.randperm(E, generator=g) - E / 2 for _ in range(T)]).div(16).to(dtype).to(DEVICE)
    ids, weights = router_topk(logits, k)
    ids_ref, weights_ref = router_topk_ref(logits, k)
    assert ids.dtype == torch.int32 and weights.dtype == torch.float32
    torch.testing.assert_close(ids, ids_ref, atol=0, rtol=0)
    torch.testing.assert_close(weights, weights_ref, atol=1e-6, rtol=1e-5)


def test_router_topk_ref_is_renormalised_softmax():
    logits = _logits(6, 16, torch.float32)
    ids, weights = router_topk_ref(logits, 4)
    probs = torch.softmax(logits.double(), dim=-1)
    expected_ids = probs.argsort(dim=-1, descending=True)[:, :4]
    torch.testing.assert_close(ids.long(), expected_ids, atol=0, rtol=0)
    kept = probs.gather(1, expected_ids)
    torch.testing.assert_close(weights.double(), kept / kept.sum(-1, keepdim=True), atol=1e-6, rtol=1e-6)
