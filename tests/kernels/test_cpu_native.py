"""The native CPU kernels (engine/kernels/cpu_native.c) on every instruction set this CPU has: the MXFP4 decode bit
for bit against engine.weights.mxfp4.decode_rows, the fused decode-and-dot and the bf16 linear against torch, the
build, its cache and the fallback without a compiler."""

import logging

import pytest
import torch
import torch.nn.functional as F

from engine import kernels
from engine.kernels import cpu_native
from engine.kernels.moe import moe_mxfp4_ref
from engine.kernels.moe_cpu import moe_mxfp4_cpu
from engine.weights.mxfp4 import decode_rows

from ._util import DTYPES, assert_close
from .test_moe import _args



PANEL_MIN_TOKENS = 8  # cpu_native.c's F32_PANEL_MIN_TOKENS: from this many tokens the AVX2 linear paths use panels


def assert_token_independent(got, run, x, isa, panels=True, panels_from=PANEL_MIN_TOKENS, dp_from=None):
    """got = run(x): below the AVX2 panels' token count `panels_from` (or elsewhere) every count equals 4 tokens at a
    time (the fused kernels' passes); with panels each token's sums are its own, whichever tokens share the call (the
    first and last `panels_from` tokens run alone give the same bits); so too from `dp_from` tokens on AVX512-BF16
    (the vdpbf16ps blocks of bf16 linear, where given)."""
    tokens = x.shape[0]
    own_from = panels_from if isa.gptoss_mxfp4_isa() == 1 and panels else \
        dp_from if isa.gptoss_mxfp4_isa() == 3 and dp_from else None
    if own_from is not None and tokens >= own_from:
        assert torch.equal(got[:own_from], run(x[:own_from]))
        assert torch.equal(got[-own_from:], run(x[-own_from:]))
    elif tokens > 4:
        assert torch.equal(got, torch.cat([run(x[t:t + 4]) for t in range(0, tokens, 4)]))

@pytest.fixture(params=sorted(cpu_native.ISA_NAMES), ids=cpu_native.ISA_NAMES.get)
def isa(request):
    """Each of the native kernels' code paths this CPU can run (the best one is what the engine uses)."""
    lib = cpu_native.library()
    assert lib is not None, "the native kernels did not build (is there a C compiler?)"
    if lib.gptoss_mxfp4_set_isa(request.param) < 0:
        pytest.skip(f"this CPU has no {cpu_native.ISA_NAMES[request.param]}")
    yield lib
    lib.gptoss_mxfp4_set_isa(-1)


def _every_byte_and_scale() -> tuple[torch.Tensor, torch.Tensor]:
    """256 rows, row r: scale byte r, the 16 packed bytes running through all 256 values across the row's groups."""
    blocks = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16).expand(256, 16, 16).contiguous()
    blocks = blocks.roll(1, dims=0)  # rows differ in bytes as well as scales
    scales = torch.arange(256, dtype=torch.uint8)[:, None].expand(256, 16).contiguous()
    return blocks, scales


@pytest.mark.parametrize("dtype", DTYPES)
def test_native_decode_is_exact(isa, dtype):
    """Every byte value under every scale byte (2**-127 .. 2**128): the same bits as decode_rows, in split order."""
    blocks, scales = _every_byte_and_scale()
    scales = scales.clone()
    scales[255] = 254  # 255 is NaN in e8m0; decode_rows makes it inf, which nothing should rely on
    expected = cpu_native.split_order(decode_rows(blocks, scales, dtype).float()).to(dtype)
    got = cpu_native.decode(isa, blocks, scales, dtype)
    assert torch.equal(got.view(torch.int16) if dtype == torch.bfloat16 else got.view(torch.int32),
                       expected.view(torch.int16) if dtype == torch.bfloat16 else expected.view(torch.int32))
    buffer = torch.empty(300, 512, dtype=dtype)
    assert torch.equal(cpu_native.decode(isa, blocks[:7], scales[:7], dtype, buffer[:7]), expected[:7])


@pytest.mark.parametrize("shape", [(203, 7), (2048, 32), (17, 90)])  # odd groups (the AVX-512 pair loop's tail);
#                                                                      1 MiB: threads; a panel block's row tail
# AVX2: 1-5 tokens a register block each; 13: blocks of 5, 4, 4; 200: passes of TPANEL_PASS_TOKENS
@pytest.mark.parametrize("tokens", [1, 2, 3, 4, 5, 8, 9, 13, 50, 200])
def test_native_matvec(isa, tokens, shape):
    """x @ W.T with the decode fused in, any token count (4 per pass), rows split between threads when the matrix is
    big enough to pay for a thread's start; on AVX2 each block of rows decoded once into a transposed panel for all
    the tokens (each sum in k's order), so a token's sums do not depend on the other tokens of the call, one token
    alone included; elsewhere every count equals 4 tokens at a time."""
    gen = torch.Generator().manual_seed(tokens)
    rows, groups = shape
    blocks = torch.randint(0, 256, (rows, groups, 16), dtype=torch.uint8, generator=gen)
    scales = torch.randint(0, 200, (rows, groups), dtype=torch.uint8, generator=gen)  # subnormal 2**-127 to 2**72
    scales[:, ::2] = torch.randint(120, 130, (rows, (groups + 1) // 2), dtype=torch.uint8, generator=gen)
    x = torch.randn(tokens, groups * 32, generator=gen)
    w = decode_rows(blocks, scales, torch.float32).double()
    expected = x.double() @ w.T
    got = cpu_native.matvec(isa, cpu_native.split_order(x), blocks, scales)
    tol = 1e-5 * (x.double().abs() @ w.abs().T) + 1e-30  # fp32 sums of these terms, in any order
    assert ((got.double() - expected).abs() <= tol).all()
    assert_token_independent(got, lambda x: cpu_native.matvec(isa, cpu_native.split_order(x), blocks, scales), x, isa,
                             panels_from=1)


@pytest.mark.parametrize("shape", [(203, 7), (2048, 32), (16, 2)])  # a phantom group, a block tail; threads; one block
@pytest.mark.parametrize("tokens", [1, 4, 5, 12, 17, 64, 65, 130])  # around AMX_ and PANEL_MIN_TOKENS, tiles, passes
@pytest.mark.parametrize("scale_range", [(120, 130), (0, 10)])  # scales a bf16 decode holds exactly; some it cannot
def test_native_matvec_bf16_valued(isa, tokens, shape, scale_range):
    """bf16-valued x (a bf16 model's activations): the weights decoded into bf16 once for every token, fp32 sums (on
    AMX from cpu_native.c's AMX_MIN_TOKENS tokens, tdpbf16ps; on AVX512-BF16 from its PANEL_MIN_TOKENS, vdpbf16ps,
    and below it each 4 groups decoded in registers, vdpbf16ps, any scale): x @ W.T up to summation order, as the
    fused path. A matrix with a scale whose values a bf16 cannot hold (under
    2**-125, over 2**125) keeps that path."""
    gen = torch.Generator().manual_seed(tokens)
    rows, groups = shape
    blocks = torch.randint(0, 256, (rows, groups, 16), dtype=torch.uint8, generator=gen)
    scales = torch.randint(*scale_range, (rows, groups), dtype=torch.uint8, generator=gen)
    x = torch.randn(tokens, groups * 32, generator=gen).to(torch.bfloat16).float()
    w = decode_rows(blocks, scales, torch.float32).double()
    expected = x.double() @ w.T
    got = cpu_native.matvec(isa, cpu_native.split_order(x), blocks, scales, bf16_valued=True)
    tol = 1e-5 * (x.double().abs() @ w.abs().T) + 1e-30  # fp32 sums of these terms, in any order
    assert ((got.double() - expected).abs() <= tol).all()
    level = isa.gptoss_mxfp4_isa()
    if level >= 3 and tokens >= {4: 4, 3: 12}[level] and rows == 2048:  # which path ran: they sum in another order
        isa.gptoss_mxfp4_set_isa(2)
        fused = cpu_native.matvec(isa, cpu_native.split_order(x), blocks, scales, bf16_valued=True)
        isa.gptoss_mxfp4_set_isa(level)
        assert torch.equal(got, fused) == (scale_range != (120, 130))
    if level == 3 and tokens < 12 and rows == 2048:  # decoded in registers whatever the scales: another order
        isa.gptoss_mxfp4_set_isa(2)
        fused = cpu_native.matvec(isa, cpu_native.split_order(x), blocks, scales, bf16_valued=True)
        isa.gptoss_mxfp4_set_isa(level)
        assert not torch.equal(got, fused)


@pytest.mark.parametrize("shape", [(203, 7 * 32), (37, 100), (5, 64 * 3 + 31), (1024, 512)])  # K tails; 1 MiB: threads
@pytest.mark.parametrize("tokens", [1, 2, 4, 5, 8, 33, 200])  # 33: by_chunks' blocks of rows against 9 passes; AVX2
#                                                               panels from 8, 200: more than F32_PASS_TOKENS
def test_linear_bf16(isa, shape, tokens):
    """bf16 x @ W.T + b summed in fp32 (the bf16 result within one bf16 rounding of the fp64 product); through
    kernels.linear the same for the rows native_serves, F.linear's beyond. On AVX512-BF16 from 9 tokens of a weight
    of 64 rows or more (K a multiple of 32) 16 tokens a vector, each token's sums its own."""
    gen = torch.Generator().manual_seed(tokens)
    weight = torch.randn(shape, generator=gen).to(torch.bfloat16)
    bias = torch.randn(shape[0], generator=gen).to(torch.bfloat16)
    x = torch.randn(tokens, shape[1], generator=gen).to(torch.bfloat16)
    expected = (x.double() @ weight.double().T + bias.double())
    got = cpu_native.linear_bf16(isa, x, weight, bias)
    assert got.dtype == torch.bfloat16 and got.shape == (tokens, shape[0])
    torch.testing.assert_close(got.double(), expected, rtol=1e-2, atol=1e-2)
    via = kernels.linear(x, weight, bias)
    if kernels.native_serves(tokens, shape[0]) or not kernels.onednn_bf16():  # without oneDNN's bf16: any count
        assert torch.equal(via, got)
    else:
        assert torch.equal(via, F.linear(x, weight, bias))
    assert torch.equal(cpu_native.linear_bf16(isa, x[None], weight, None)[0], cpu_native.linear_bf16(isa, x, weight,
                                                                                                     None))
    # on AVX2 from F32_PANEL_MIN_TOKENS rows (K a multiple of 16) each block of rows widened once into a panel
    assert_token_independent(got, lambda x: cpu_native.linear_bf16(isa, x, weight, bias), x, isa,
                             panels=shape[1] % 16 == 0, dp_from=9 if shape[0] >= 64 and shape[1] % 32 == 0 else None)


@pytest.mark.parametrize("shape", [(203, 7 * 32), (1024, 512), (37, 100)])  # threads; K not a multiple of 16
@pytest.mark.parametrize("tokens", [1, 2, 3, 4, 7, 8, 64, 200])
def test_linear_f32(isa, shape, tokens):
    """fp32 x @ W.T on an AVX2-only CPU (up to 7 tokens 2 rows x 3 tokens a block straight on the weight, from
    F32_PANEL_MIN_TOKENS a transposed panel; elsewhere None: the caller takes MKL) within fp32 rounding of the fp64
    product; kernels.linear takes it up to F32_NATIVE_MAX_TOKENS rows, the bias added after."""
    gen = torch.Generator().manual_seed(tokens)
    weight, bias = torch.randn(shape, generator=gen), torch.randn(shape[0], generator=gen)
    x = torch.randn(tokens, shape[1], generator=gen)
    got = cpu_native.linear_f32(isa, x, weight)
    if isa.gptoss_mxfp4_isa() != 1 or shape[1] % 16:
        assert got is None
        return
    tol = 1e-5 * (x.double().abs() @ weight.double().abs().T) + 1e-30
    assert ((got.double() - x.double() @ weight.double().T).abs() <= tol).all()
    assert_token_independent(got, lambda x: cpu_native.linear_f32(isa, x, weight), x, isa)
    if cpu_native.library().gptoss_mxfp4_isa() == 1:  # the engine's level: kernels.linear takes the kernel
        assert torch.equal(kernels.linear(x[None], weight, bias)[0], got + bias)


def test_native_rejects_mismatched_shapes():
    lib = cpu_native.library()
    blocks, scales = torch.zeros(4, 2, 16, dtype=torch.uint8), torch.zeros(4, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="do not match"):
        cpu_native.decode(lib, blocks, scales, torch.float32)
    with pytest.raises(ValueError, match="columns"):
        cpu_native.matvec(lib, torch.zeros(1, 32), blocks, torch.zeros(4, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="contiguous uint8"):
        cpu_native.decode(lib, blocks.transpose(0, 1), scales, torch.float32)
    with pytest.raises(ValueError, match="bf16"):
        cpu_native.linear_bf16(lib, torch.zeros(1, 8), torch.zeros(4, 8, dtype=torch.bfloat16), None)


def test_no_compiler_falls_back_with_one_warning(tmp_path, monkeypatch, caplog):
    """No C compiler (or GPTOSS_CPU_NATIVE=0): library() is None, said once, and the MoE still matches the ref."""
    monkeypatch.setenv("GPTOSS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    cpu_native.library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=cpu_native.__name__):
            assert cpu_native.library() is None
            assert cpu_native.library() is None
        assert len([r for r in caplog.records if "cannot be built" in r.getMessage()]) == 1
        args = _args("one-token", torch.float32, "cpu")
        assert_close(moe_mxfp4_cpu(*args), moe_mxfp4_ref(*args), fp32_tol=1e-5)
        monkeypatch.delenv("CC")
        monkeypatch.setenv(cpu_native.ENV_SWITCH, "0")
        cpu_native.library.cache_clear()
        assert cpu_native.library() is None
    finally:
        cpu_native.library.cache_clear()


def test_built_in_the_cache_once(tmp_path, monkeypatch):
    """Built under $GPTOSS_CACHE_DIR/native, then loaded from there (no second build)."""
    monkeypatch.setenv("GPTOSS_CACHE_DIR", str(tmp_path))
    cpu_native.library.cache_clear()
    try:
        assert cpu_native.library() is not None
        built = list((tmp_path / "native").glob("*.so"))
        assert len(built) == 1 and not list((tmp_path / "native").glob("tmp*"))
        monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))  # a rebuild would now fail
        cpu_native.library.cache_clear()
        assert cpu_native.library() is not None
    finally:
        cpu_native.library.cache_clear()


@pytest.mark.parametrize("dtype", DTYPES)
def test_argmax_matches_torch(isa, dtype):
    """torch.argmax over the last dimension: ties (the first index wins, within a SIMD lane and across lanes), rows
    whose maximum sits in the tail past the last full vector, short rows, -inf rows, NaN (largest, the first one)."""
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(12, 1000, generator=gen).to(dtype)
    rows[1, 5] = rows[1, 700] = rows[1, 21] = 9  # tie across lanes and within one
    rows[2, 999] = 9  # in the tail (1000 = 62 * 16 + 8; rows[:, 3:]: 997 = 124 * 8 + 5)
    rows[3] = -torch.inf
    rows[4, 10], rows[4, 500] = torch.nan, torch.nan
    rows[5, 998] = torch.nan
    rows[6] = 0.0
    for r in (rows, rows[:, :7], rows[:, :16], rows[:, :17], rows[:, 3:]):
        assert torch.equal(cpu_native.argmax(isa, r), r.argmax(dim=-1)), r.shape
    assert torch.equal(kernels.argmax(rows), rows.argmax(dim=-1))
    vocab = torch.randn(3, 201088, generator=gen).to(dtype)  # the real vocabulary: rows split between threads
    assert torch.equal(cpu_native.argmax(isa, vocab), vocab.argmax(dim=-1))


@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_on_a_packed_weight(with_bias):
    """The rows of bf16 the native kernel does not take (packed_serves) go through oneDNN on pack_linear's copy:
    F.linear's result; too big a weight, another dtype: no copy."""
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(300, 64, generator=gen).to(torch.bfloat16)
    bias = torch.randn(300, generator=gen).to(torch.bfloat16) if with_bias else None
    packed = kernels.pack_linear(weight)
    if not kernels.onednn_bf16():  # oneDNN cannot reorder bf16 on this CPU (no AVX-512 BW/VL/DQ, no AVX-NE-CONVERT)
        assert packed is None
        pytest.skip("oneDNN has no bf16 on this CPU: no packed copies (the native kernel takes every row count)")
    assert packed is not None
    for rows in (5, 64, 100):
        x = torch.randn(rows, 64, generator=gen).to(torch.bfloat16)
        torch.testing.assert_close(kernels.linear(x, weight, bias, packed), F.linear(x, weight, bias), rtol=1e-2,
                                   atol=1e-2)
    assert kernels.pack_linear(weight.float()) is None
    assert kernels.pack_linear(torch.empty(kernels.PACK_MAX_BYTES // 2 + 1, dtype=torch.bfloat16)[None]) is None


def test_without_onednn_bf16_every_row_count_takes_the_native_kernel(monkeypatch):
    """A CPU whose oneDNN has no bf16 (AVX2 only: its bf16 reorder raises, torch's bf16 GEMM runs at a tenth of the
    native kernel's speed): no packed copy, and any number of rows through cpu_native.linear_bf16."""
    monkeypatch.setattr(kernels, "onednn_bf16", lambda: False)
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(300, 64, generator=gen).to(torch.bfloat16)
    assert kernels.pack_linear(weight) is None
    lib = cpu_native.library()
    for rows in (1, 5, 64):
        x = torch.randn(rows, 64, generator=gen).to(torch.bfloat16)
        assert torch.equal(kernels.linear(x, weight), cpu_native.linear_bf16(lib, x, weight, None))


def test_a_packed_copy_serves_more_than_linear_max_tokens_rows():
    """With a packed copy (here of 2 x weight, to show which path ran) up to LINEAR_MAX_TOKENS rows keep the native
    kernel, whatever the weight's size (on AVX512-BF16 without AMX up to DP_LINEAR_MAX_TOKENS, or
    DP_LINEAR_MAX_PRODUCT rows x outputs), and more rows take the copy."""
    if not kernels.onednn_bf16():
        pytest.skip("oneDNN has no bf16 on this CPU: no packed copies")
    gen = torch.Generator().manual_seed(2)
    weight = torch.randn(300, 64, generator=gen).to(torch.bfloat16)
    doubled = kernels.pack_linear(weight * 2)
    dp = cpu_native.library().gptoss_mxfp4_isa() == 3
    for rows in (1, kernels.LINEAR_MAX_TOKENS, kernels.LINEAR_MAX_TOKENS + 1, kernels.DP_LINEAR_MAX_TOKENS,
                 kernels.DP_LINEAR_MAX_TOKENS + 1):
        x = torch.randn(rows, 64, generator=gen).to(torch.bfloat16)
        assert kernels.packed_serves(rows, 300) == (rows > (kernels.DP_LINEAR_MAX_TOKENS if dp else
                                                            kernels.LINEAR_MAX_TOKENS))
        expected = F.linear(x, weight * 2 if kernels.packed_serves(rows, 300) else weight)
        torch.testing.assert_close(kernels.linear(x, weight, None, doubled), expected, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_native_small_ops_match_torch(isa, dtype):
    """The decode step's small ops, each one native call: RoPE (kernels.rotate: reference.rotate's bits), the KV write
    (write_kv_cpu: write_kv_ref's cache, skipped slots included) and, for bf16, the RMSNorm (rms_norm_cpu: the ref's
    sum of squares in another order, within a bf16 rounding; fp32 keeps the ref). On AVX-512 16 lanes at a time (a
    head_dim of 40: a masked tail), and prefill-sized calls split between threads."""
    from engine.kernels import attention, norm
    from engine.model.reference import rotate

    gen = torch.Generator().manual_seed(3)
    for tokens, heads, dim in ((5, 8, 64), (7, 3, 40), (600, 8, 64)):
        x = torch.randn(tokens, heads, dim, generator=gen).to(dtype)
        cos, sin = torch.randn(tokens, dim // 2, generator=gen), torch.randn(tokens, dim // 2, generator=gen)
        assert torch.equal(kernels.rotate(x, cos, sin), rotate(x, cos, sin))
    cache, expected = torch.zeros(2, 6, 4, 2, 64, dtype=dtype), torch.zeros(2, 6, 4, 2, 64, dtype=dtype)
    k, v, slots = torch.randn(3, 2, 64, generator=gen).to(dtype), torch.randn(3, 2, 64, generator=gen).to(dtype), \
        torch.tensor([5, -1, 17])
    attention.write_kv_cpu(cache, k, v, slots)
    attention.write_kv_ref(expected, k, v, slots)
    assert torch.equal(cache, expected)
    for tokens, width, w_dtype in ((7, 2880, dtype), (300, 1024, dtype), (3, 100, torch.float32)):
        h = torch.randn(tokens, width, generator=gen).to(dtype)
        weight = torch.randn(width, generator=gen).to(w_dtype)
        got, residual = norm.rms_norm_cpu(h, weight, 1e-5)
        ref = norm.rms_norm_ref(h, weight, 1e-5)[0]
        assert residual is h
        if dtype == torch.float32:
            assert torch.equal(got, ref)
        else:
            torch.testing.assert_close(got.float(), ref.float(), rtol=8e-3, atol=1e-6)


@pytest.mark.parametrize("vocab, k", [(1000, 64), (37, 32), (16, 96), (4099, 1024)])  # tails past whole 16-row blocks
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 16, 70, 130])  # 2-8: 8, 4, 2 pairs a token; 70, 130: a second pass
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_greedy_tokens_equal_argmax_of_the_logits(isa, vocab, k, rows, dtype):
    """kernels.greedy_tokens (the unembedding and a plain greedy sampler in one pass, no logits written): argmax of
    the logits kernels.linear makes (bf16 on AMX, and on AVX512-BF16 from 12 or 8 rows; bf16 and fp32 on AVX2 from 8
    rows, the linear paths' panels), the first of equal maxima (two equal best rows), NaN largest (a row with a NaN
    weight); None where it does not run.
    At each level the CPU has (an AVX-512 machine runs the AVX2 panels in fp32; its oneDNN takes bf16 there)."""
    lib = isa
    gen = torch.Generator().manual_seed(rows)
    weight = (torch.randn(vocab, k, generator=gen) * 0.05).to(dtype)
    x = torch.randn(rows, k, generator=gen).to(dtype)
    level = lib.gptoss_mxfp4_isa()
    runs = (dtype == torch.bfloat16 and (level == 4 or level == 3 and rows >= (12 if k <= 128 else 2)) or
            level == 1 and rows >= 8 and k % 16 == 0 and (dtype == torch.float32 or not kernels.onednn_bf16()))
    if not runs:
        assert kernels.greedy_tokens(x, weight) is None
        pytest.skip("the logits path runs here")
    assert torch.equal(kernels.greedy_tokens(x, weight), kernels.linear(x, weight).argmax(-1))
    if level >= 3:
        assert torch.equal(kernels.greedy_tokens(x, weight), F.linear(x, weight).argmax(-1))
    weight[vocab // 3] = weight[vocab - 1] = 1.0  # equal best rows (x > 0 below): the first one wins
    x = x.abs()
    assert torch.equal(kernels.greedy_tokens(x, weight), torch.full((rows,), vocab // 3))
    weight[vocab // 2, 3] = float("nan")
    assert torch.equal(kernels.greedy_tokens(x, weight), torch.full((rows,), vocab // 2))
    assert kernels.greedy_tokens(x.double(), weight) is None
    weight[:] = -torch.inf  # every logit -inf (x > 0): the first index, as torch.argmax
    assert torch.equal(kernels.greedy_tokens(x, weight), torch.zeros(rows, dtype=torch.int64))


FORKED_CHILD = """
import os, signal, torch
from engine.kernels import cpu_native
lib = cpu_native.library()
blocks = torch.randint(0, 256, (2048, 32, 16), dtype=torch.uint8)
scales = torch.randint(120, 130, (2048, 32), dtype=torch.uint8)
xs = cpu_native.split_order(torch.randn(5, 1024))
expected = cpu_native.matvec(lib, xs, blocks, scales)  # the pool's worker is started here
pid = os.fork()
if pid == 0:  # the child: without the parent's worker, a pool of its own (torch itself is not used after the fork)
    signal.alarm(60)
    out = torch.empty_like(expected)
    lib.gptoss_mxfp4_matvec(xs.data_ptr(), 5, blocks.data_ptr(), scales.data_ptr(), 2048, 32, out.data_ptr(), 0, 2)
    os._exit(0 if torch.equal(out, expected) else 1)
_, status = os.waitpid(pid, 0)
raise SystemExit(os.waitstatus_to_exitcode(status))
"""


def test_the_worker_pool_under_concurrent_callers_and_after_fork():
    """The native kernels' one pool of worker threads: two Python threads calling at once (the second one starts
    threads of its own while the first holds the pool) get the serial results, and a forked child, where the
    parent's workers do not exist, starts a pool of its own instead of waiting on them (in a fresh interpreter:
    torch's own OpenMP ops are not fork-safe once they have run)."""
    import subprocess
    import sys
    import threading

    lib = cpu_native.library()
    gen = torch.Generator().manual_seed(3)
    blocks = torch.randint(0, 256, (2048, 32, 16), dtype=torch.uint8, generator=gen)  # 1 MiB: split between threads
    scales = torch.randint(120, 130, (2048, 32), dtype=torch.uint8, generator=gen)
    xs = [cpu_native.split_order(torch.randn(n, 1024, generator=gen)) for n in (1, 3, 4, 5)]
    expected = [cpu_native.matvec(lib, x, blocks, scales) for x in xs]
    errors = []

    def call(k):
        for _ in range(30):
            if not torch.equal(cpu_native.matvec(lib, xs[k], blocks, scales), expected[k]):
                errors.append(k)

    threads = [threading.Thread(target=call, args=(k,)) for k in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    done = subprocess.run([sys.executable, "-c", FORKED_CHILD], timeout=120, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
