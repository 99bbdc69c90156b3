import pytest
import torch

from engine.weights.mxfp4 import FP4_VALUES, dequantize_mxfp4, quantize_mxfp4


def spec_decode(blocks, scales, r, k):
    """The spec's formula for one element, written out literally."""
    b = int(blocks[r, k // 32, (k % 32) // 2])
    nibble = (b & 0xF) if k % 2 == 0 else (b >> 4)
    return FP4_VALUES[nibble] * 2.0 ** (int(scales[r, k // 32]) - 127)


def test_dequantize_matches_the_spec_formula_elementwise():
    gen = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (7, 3, 16), dtype=torch.uint8, generator=gen)
    scales = torch.randint(110, 140, (7, 3), dtype=torch.uint8, generator=gen)
    dense = dequantize_mxfp4(blocks, scales, torch.float32)
    assert dense.shape == (7, 96)
    for r in range(7):
        for k in range(96):
            assert dense[r, k].item() == spec_decode(blocks, scales, r, k)


@pytest.mark.parametrize("chunk_bytes", [16, 100, 1 << 22])
def test_chunking_does_not_change_the_result(chunk_bytes):
    blocks = torch.randint(0, 256, (4, 5, 2, 16), dtype=torch.uint8)
    scales = torch.randint(120, 130, (4, 5, 2), dtype=torch.uint8)
    whole = dequantize_mxfp4(blocks, scales, torch.float32)
    assert torch.equal(dequantize_mxfp4(blocks, scales, torch.float32, chunk_bytes=chunk_bytes), whole)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_representable_values_round_trip_exactly(dtype):
    blocks = torch.randint(0, 256, (6, 8, 4, 16), dtype=torch.uint8)
    scales = torch.randint(100, 150, (6, 8, 4), dtype=torch.uint8)
    dense = dequantize_mxfp4(blocks, scales, dtype)
    again = dequantize_mxfp4(*quantize_mxfp4(dense), dtype)
    assert torch.equal(again, dense)


def test_quantization_error_is_bounded_by_one_scale_step():
    x = torch.randn(32, 256) * torch.logspace(-3, 3, 32)[:, None]
    blocks, scales = quantize_mxfp4(x)
    step = torch.ldexp(torch.ones(()), scales.int() - 127).repeat_interleave(32, dim=-1)  # 2**e per element
    err = (dequantize_mxfp4(blocks, scales, torch.float32) - x).abs()
    assert (err <= step).all()
    # the largest magnitude of each block never overflows its scale
    assert (x.abs().reshape(32, -1, 32).amax(-1) <= 6 * step[:, ::32]).all()


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_mxfp4(torch.randn(3, 33))
    with pytest.raises(ValueError, match="uint8"):
        dequantize_mxfp4(torch.zeros(2, 1, 16), torch.zeros(2, 1, dtype=torch.uint8))
