"""The kernels of cpu_native.c for the CPU path: built with the system C compiler on first use, called by ctypes.

Flow: library() -> the shared object for this source under cache_root()/native/ (built once with `cc -O3 -shared`,
written under a temporary name then renamed, so concurrent replicas never load half a file) -> ctypes functions,
which release the GIL while they run. No compiler, or GPTOSS_CPU_NATIVE=0: None, with one warning, and the callers
keep their torch paths (the same numbers up to summation order, several times slower).

The MXFP4 kernels take the input dimension in "split" order (each 32-value scale group as its 16 even elements, then its
16 odd ones: how the packed bytes hold them, low nibble then high), so the caller reorders x once (`split_order`)
instead of the kernel interleaving every weight:

    decode(blocks, scales, dtype)   W [R, K] in split order, fp32 or bf16  (for a GEMM with many tokens)
    matvec(xs, blocks, scales)      xs [n, K] @ W.T in fp32 (AVX2: W decoded once into panels; else the decode fused
                                    in, a pass over W per MAX_TOKENS)
    linear_bf16(x, weight, bias)    x [n, K] @ W.T + bias for a bf16 W [R, K] and a few tokens (read at the memory's
                                    speed: torch's bf16 GEMM reads a skinny product's weights at about half of it)
    argmax(rows)                    each row's first largest index, fp32 or bf16 rows (torch's CPU argmax: ~10x slower)
    decode_attention(...)           one query per sequence over the paged KV cache (attention.paged_attention_cpu)
    moe(...)                        the whole MoE MLP (moe_cpu.moe_mxfp4_cpu at decode; any tokens on AMX)
    greedy_tokens(h, weight)        argmax of h @ weight.T without writing the logits (the unembedding and the greedy
                                    sampler of a plain batch in one pass over the weight): bf16 on AMX, bf16 on
                                    AVX512-BF16 from 12 rows (K <= 128) or 128, bf16 or fp32 on AVX2 from 8 rows
                                    (the linear paths' panels)
    rms_norm, rotate, write_kv      a decode step's small ops in one call each (torch's take several ops, each
                                    costing more than the arithmetic at a few tokens)
"""

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from engine.paths import cache_root

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_native.c")
ENV_SWITCH = "GPTOSS_CPU_NATIVE"  # "0": never build or use the native kernels
FLAGS = ("-O3", "-shared", "-fPIC", "-pthread", "-fopenmp-simd")  # the `omp simd` pragmas only: no OpenMP runtime
LIBS = ("-lm",)
ISA_NAMES = {0: "scalar", 1: "avx2", 2: "avx512", 3: "avx512-bf16", 4: "amx"}
_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, built on first use; None when they cannot be (the reason logged once)."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None
    source = SOURCE.read_bytes()
    tag = hashlib.sha256(source + " ".join(FLAGS + LIBS).encode()).hexdigest()[:16]
    path = cache_root() / "native" / f"cpu_native-{tag}.so"
    try:
        if not path.is_file():
            build(path)
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("the native CPU kernels cannot be built here (%s); the CPU path runs on torch alone", e)
        return None
    lib.gptoss_mxfp4_decode.argtypes = [_P, _P, _I64, _I64, _P, _INT, _INT]
    lib.gptoss_mxfp4_decode.restype = None
    lib.gptoss_mxfp4_matvec.argtypes = [_P, _I64, _P, _P, _I64, _I64, _P, _INT, _INT]
    lib.gptoss_mxfp4_matvec.restype = _INT
    lib.gptoss_bf16_matvec.argtypes = [_P, _I64, _P, _P, _I64, _I64, _P, _INT, _INT]
    lib.gptoss_bf16_matvec.restype = _INT
    lib.gptoss_f32_linear.argtypes = [_P, _I64, _P, _I64, _I64, _P, _INT]
    lib.gptoss_f32_linear.restype = _INT
    lib.gptoss_decode_attention.argtypes = [_P, _P, _INT, _I64, _P, _P, _P, _I64, _P, _INT, _I64, _I64, _I64, _I64,
                                            _I64, _P, _I64, ctypes.c_float, _INT]
    lib.gptoss_decode_attention.restype = None
    lib.gptoss_moe_mxfp4.argtypes = [_P, _I64, _I64, _P, _P, _I64, _P, _P, _P, _P, _P, _P, _INT, _INT, _I64, _I64,
                                     ctypes.c_float, ctypes.c_float, _P, _INT]
    lib.gptoss_moe_mxfp4.restype = _INT
    lib.gptoss_argmax.argtypes = [_P, _INT, _I64, _I64, _P, _INT]
    lib.gptoss_argmax.restype = None
    lib.gptoss_mxfp4_set_isa.argtypes = [_INT]
    lib.gptoss_rms_norm.argtypes = [_P, _P, _P, _I64, _I64, _INT, _INT, ctypes.c_float, _INT]
    lib.gptoss_rms_norm.restype = None
    lib.gptoss_rotate.argtypes = [_P, _P, _P, _P, _I64, _I64, _I64, _INT, _INT]
    lib.gptoss_rotate.restype = None
    lib.gptoss_write_kv.argtypes = [_P, _P, _P, _P, _I64, _I64, _I64]
    lib.gptoss_write_kv.restype = None
    lib.gptoss_greedy_tokens.argtypes = [_P, _I64, _P, _I64, _I64, _INT, _P, _INT]
    lib.gptoss_greedy_tokens.restype = _INT
    log.info("native CPU kernels: %s (%s)", ISA_NAMES[lib.gptoss_mxfp4_isa()], path)
    return lib


def build(path: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler (cc, gcc or $CC) on PATH")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", tmp, *LIBS], check=False, capture_output=True, text=True,
                              timeout=120)
        if done.returncode:
            raise OSError(f"{compiler} failed: {done.stderr.strip()[-500:]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


MAX_TOKENS = 4  # tokens per pass over the weights in matvec and linear_bf16 (cpu_native.c's MAX_TOKENS)


def split_order(x: torch.Tensor) -> torch.Tensor:
    """x [n, K] -> [n, K] with each group of 32 columns as its even columns then its odd ones (contiguous)."""
    n, k = x.shape
    return x.reshape(n, k // 32, 16, 2).transpose(2, 3).reshape(n, k)


def _check(blocks: torch.Tensor, scales: torch.Tensor) -> tuple[int, int]:
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8 or not (blocks.is_contiguous()
                                                                          and scales.is_contiguous()):
        raise ValueError("MXFP4 blocks and scales must be contiguous uint8 tensors")
    rows, groups = scales.shape
    if blocks.shape != (rows, groups, 16):
        raise ValueError(f"MXFP4 blocks {tuple(blocks.shape)} do not match scales {tuple(scales.shape)}")
    return rows, groups


def decode(lib: ctypes.CDLL, blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """blocks [R, G, 16], scales [R, G] -> W [R, G * 32] in `dtype` (fp32 or bf16), split order; into `out` (the
    first R rows of a contiguous buffer reused tile after tile) when given."""
    rows, groups = _check(blocks, scales)
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"the native decode writes fp32 or bf16, not {dtype}")
    if out is None:
        out = torch.empty(rows, groups * 32, dtype=dtype)
    elif out.dtype != dtype or not out.is_contiguous() or out.shape != (rows, groups * 32):
        raise ValueError(f"decode buffer {out.dtype} {tuple(out.shape)} is not {dtype} {(rows, groups * 32)}")
    lib.gptoss_mxfp4_decode(blocks.data_ptr(), scales.data_ptr(), rows, groups, out.data_ptr(),
                            int(dtype == torch.bfloat16), torch.get_num_threads())
    return out


def matvec(lib: ctypes.CDLL, xs: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor,
           bf16_valued: bool = False) -> torch.Tensor:
    """xs [n, K] fp32 in split order @ W.T -> [n, R] fp32: on the AVX2 level each block of W's rows decoded once into
    an fp32 panel for all the tokens (each token's sums its own), elsewhere MAX_TOKENS tokens per pass over W (one
    call: each thread takes its rows through every pass); `bf16_valued` xs (a bf16 model's activations) with W
    decoded once into bf16 for all the tokens where the CPU allows it (`decodes_once(lib)`): AMX tiles from
    cpu_native.c's AMX_MIN_TOKENS tokens, AVX512-BF16 panels from its PANEL_MIN_TOKENS."""
    rows, groups = _check(blocks, scales)
    xs = xs.float().contiguous()
    if xs.shape[1] != groups * 32:
        raise ValueError(f"x has {xs.shape[1]} columns, the matrix {groups * 32}")
    out = torch.empty(xs.shape[0], rows, dtype=torch.float32)
    lib.gptoss_mxfp4_matvec(xs.data_ptr(), xs.shape[0], blocks.data_ptr(), scales.data_ptr(), rows, groups,
                            out.data_ptr(), int(bf16_valued), torch.get_num_threads())
    return out


def amx(lib: ctypes.CDLL) -> bool:
    """Whether the native kernels run AMX here (the CPU has it, Linux grants it, and no test forced a lower ISA)."""
    return lib.gptoss_mxfp4_isa() >= 4


def decodes_once(lib: ctypes.CDLL, dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether the MXFP4 matvec of tokens of this dtype decodes each block of the weights once for any number of them,
    so an MoE of any batch is one native call: bf16-valued tokens on AMX tiles or AVX512-BF16 panels (vdpbf16ps),
    any tokens on the AVX2 level's fp32 panels (from one token)."""
    level = lib.gptoss_mxfp4_isa()
    return level == 1 or (level >= 3 and dtype == torch.bfloat16)


def linear_bf16(lib: ctypes.CDLL, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [..., K] @ weight.T + bias for a contiguous bf16 weight [R, K] (and bias) and bf16 x, summed in fp32 and
    rounded once to bf16 as torch's GEMM does; MAX_TOKENS rows of x per pass over the weight (meant for a few
    rows: decode), or on AVX512-BF16 without AMX from 9 rows of a weight of 64 rows or more 16 of them in each
    vdpbf16ps against one weight row's pair at a time (greedy_tokens' blocks with the sums stored)."""
    if weight.dtype != torch.bfloat16 or x.dtype != torch.bfloat16 or not weight.is_contiguous() or weight.dim() != 2:
        raise ValueError("linear_bf16 takes bf16 x and a contiguous 2-d bf16 weight")
    if bias is not None and (bias.dtype != torch.bfloat16 or not bias.is_contiguous()):
        bias = bias.to(torch.bfloat16).contiguous()
    rows, k = weight.shape
    xb = x if x.dim() == 2 and x.is_contiguous() else x.reshape(-1, k).contiguous()
    out = torch.empty(xb.shape[0], rows, dtype=torch.bfloat16)
    if lib.gptoss_bf16_matvec(xb.data_ptr(), xb.shape[0], weight.data_ptr(), None if bias is None else bias.data_ptr(),
                              rows, k, out.data_ptr(), 1, torch.get_num_threads()):
        raise MemoryError("linear_bf16: no memory for the widened input")
    return out if x.dim() == 2 else out.reshape(*x.shape[:-1], rows)


def f32_linear_runs(lib: ctypes.CDLL) -> bool:
    """Whether linear_f32's kernel runs at the level in use (AVX2 without AVX-512: the only CPU it was measured on)."""
    return lib.gptoss_mxfp4_isa() == 1


def linear_f32(lib: ctypes.CDLL, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """x [n, K] @ weight.T for contiguous fp32 x and weight [R, K] on an AVX2-only CPU (below 8 rows 2 rows x 3 tokens
    a block, from 8 the transposed panels; fp32 sums; MKL's sgemm runs its generic path on AMD: 12 GFLOP/s at 16 rows
    of the larger unembedding, this 2-4x that), or None where the kernel does not run (another CPU, K not a multiple of
    16, a misaligned weight)."""
    out = torch.empty(x.shape[0], weight.shape[0])
    if lib.gptoss_f32_linear(x.data_ptr(), x.shape[0], weight.data_ptr(), weight.shape[0], weight.shape[1],
                             out.data_ptr(), torch.get_num_threads()):
        return None
    return out


def argmax(lib: ctypes.CDLL, rows: torch.Tensor) -> torch.Tensor:
    """rows [n, V] fp32 or bf16 -> [n] int64: torch.argmax(rows, -1) (the first of equal maxima; NaN is largest)."""
    if rows.dtype not in (torch.float32, torch.bfloat16) or rows.dim() != 2:
        raise ValueError(f"argmax takes 2-d fp32 or bf16 rows, not {rows.dtype} {tuple(rows.shape)}")
    rows = rows.contiguous()
    out = torch.empty(rows.shape[0], dtype=torch.int64)
    lib.gptoss_argmax(rows.data_ptr(), int(rows.dtype == torch.bfloat16), rows.shape[0], rows.shape[1], out.data_ptr(),
                      torch.get_num_threads())
    return out


def decode_attention(lib: ctypes.CDLL, out: torch.Tensor, q: torch.Tensor, kv_cache: torch.Tensor,
                     block_table: torch.Tensor, seq_lens: torch.Tensor, rows: torch.Tensor, sinks: torch.Tensor,
                     sliding_window: int | None, scale: float) -> None:
    """Writes out[rows[b]] = attention of q[rows[b]] (the one query of sequence b, at position seq_lens[b] - 1) over
    its keys in the paged cache [2, blocks, block_size, KV, D] (the window's, when sliding), the sink of each head in
    the softmax's denominator; fp32 sums. q and out [T, KV * G, D] in the same dtype (fp32 or bf16)."""
    if not (q.is_contiguous() and out.is_contiguous() and kv_cache.is_contiguous()) or q.dtype != out.dtype:
        raise ValueError("decode_attention takes contiguous q, out (one dtype) and cache")
    if q.dtype not in (torch.float32, torch.bfloat16) or kv_cache.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"decode_attention runs fp32 or bf16, not {q.dtype} / {kv_cache.dtype}")
    _, blocks, block_size, kv_heads, dim = kv_cache.shape
    table = block_table.to(torch.int32).contiguous()
    lens, starts = seq_lens.to(torch.int32).contiguous(), rows.to(torch.int32).contiguous()
    sinks = sinks.float().contiguous()
    lib.gptoss_decode_attention(q.data_ptr(), out.data_ptr(), int(q.dtype == torch.bfloat16), starts.shape[0],
                                starts.data_ptr(), lens.data_ptr(), table.data_ptr(), table.shape[1],
                                kv_cache.data_ptr(), int(kv_cache.dtype == torch.bfloat16), blocks, block_size,
                                kv_heads, q.shape[1] // kv_heads, dim, sinks.data_ptr(), sliding_window or 0, scale,
                                torch.get_num_threads())


def moe(lib: ctypes.CDLL, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, w1_blocks: torch.Tensor,
        w1_scales: torch.Tensor, b1: torch.Tensor, w2_blocks: torch.Tensor, w2_scales: torch.Tensor, b2: torch.Tensor,
        swiglu_limit: float, alpha: float) -> torch.Tensor:
    """moe_mxfp4's result [T, H] in fp32 (the caller casts): every step in C, fp32 sums, one pass over each active
    expert's weights for all its tokens where `decodes_once`, else per 4 of them; with bf16 x, h, the SwiGLU and each
    expert's output rounded to bf16 as the torch path holds them. Ids outside this rank's experts are skipped."""
    tensors = (w1_blocks, w1_scales, b1, w2_blocks, w2_scales, b2)
    if not all(t.is_contiguous() for t in tensors) or b1.dtype != b2.dtype or b1.dtype not in (torch.float32,
                                                                                              torch.bfloat16):
        raise ValueError("moe takes contiguous expert tensors and fp32 or bf16 biases of one dtype")
    experts, rows, groups, _ = w1_blocks.shape
    hidden, inter = groups * 32, rows // 2
    xf = x.float().contiguous()
    ids = topk_ids.to(torch.int64).contiguous()
    weights = topk_weights.float().contiguous()
    out = torch.zeros(xf.shape, dtype=torch.float32)
    if lib.gptoss_moe_mxfp4(xf.data_ptr(), xf.shape[0], hidden, ids.data_ptr(), weights.data_ptr(), ids.shape[1],
                            w1_blocks.data_ptr(), w1_scales.data_ptr(), b1.data_ptr(), w2_blocks.data_ptr(),
                            w2_scales.data_ptr(), b2.data_ptr(), int(b1.dtype == torch.bfloat16),
                            int(x.dtype == torch.bfloat16), experts, inter,
                            swiglu_limit, alpha, out.data_ptr(), torch.get_num_threads()):
        raise MemoryError("the native MoE could not allocate its buffers")
    return out


def rms_norm(lib: ctypes.CDLL, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """norm.rms_norm_ref(x, weight, eps)[0] for contiguous 2-d fp32 or bf16 x (the sum of squares in another order)."""
    out = torch.empty_like(x)
    lib.gptoss_rms_norm(x.data_ptr(), weight.data_ptr(), out.data_ptr(), x.shape[0], x.shape[1],
                        int(x.dtype == torch.bfloat16), int(weight.dtype == torch.bfloat16), eps, torch.get_num_threads())
    return out


def rotate(lib: ctypes.CDLL, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """reference.rotate(x, cos, sin) for contiguous fp32 or bf16 x [T, heads, D] and contiguous fp32 cos, sin
    [T, D/2]: the same bits."""
    out = torch.empty_like(x)
    lib.gptoss_rotate(x.data_ptr(), out.data_ptr(), cos.data_ptr(), sin.data_ptr(), x.shape[0], x.shape[1],
                      x.shape[2], int(x.dtype == torch.bfloat16), torch.get_num_threads())
    return out


def write_kv(lib: ctypes.CDLL, kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """attention.write_kv_ref for contiguous k, v in the contiguous cache's dtype: rows copied to their slots."""
    slots = slot_mapping.to(torch.int64).contiguous()
    row = k.shape[1] * k.shape[2] * k.element_size()
    lib.gptoss_write_kv(kv_cache.data_ptr(), k.data_ptr(), v.data_ptr(), slots.data_ptr(), k.shape[0], row,
                        kv_cache[0].numel() * kv_cache.element_size())


def greedy_tokens(lib: ctypes.CDLL, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """argmax(logits of h [n, K] @ weight.T, -1) for contiguous h and weight [V, K], both bf16 (each logit rounded to
    bf16, as linear_bf16's) or both fp32 (the first of equal maxima, NaN largest), the logits never written; None
    where it cannot run (on AMX: bf16, K a multiple of 32; on AVX512-BF16 the same from 12 rows where K <= 128, else
    from 2; on AVX2: from 8 rows, K a multiple of 16, as the panels of linear_bf16 and linear_f32, whose logits these
    are; elsewhere never)."""
    if h.dtype != weight.dtype or h.dtype not in (torch.bfloat16, torch.float32):
        raise ValueError(f"greedy_tokens takes bf16 or fp32 h and weight of one dtype, not {h.dtype}, {weight.dtype}")
    out = torch.empty(h.shape[0], dtype=torch.int64)
    if lib.gptoss_greedy_tokens(h.data_ptr(), h.shape[0], weight.data_ptr(), weight.shape[0], weight.shape[1],
                                int(h.dtype == torch.bfloat16), out.data_ptr(), torch.get_num_threads()):
        return None
    return out
