"""bench.kernel_resources: every kernel the ops launch, compiled for sm_90 on CPU at its decode and prefill launch
settings, is fit to run on the GPU: it compiles, never spills, and fits its shared memory. Tiles made too big for
the test must fail the same check. Compiles are cached under .cache/kernel_resources/ (`make kernels-aot` runs
every case on sm_90 and sm_100)."""

import dataclasses

import pytest

kr = pytest.importorskip("bench.kernel_resources")  # needs triton (the `kernels` extra)

from engine.kernels import attention, moe, norm, rope, router  # noqa: E402

SM90 = kr.ARCHS[90]


def _jit_kernels() -> set[str]:
    """Every @triton.jit kernel (a launched one: named *_kernel) defined in the kernel modules."""
    modules = (attention, moe, norm, rope, router)
    return {name for m in modules for name, value in vars(m).items()
            if name.endswith("_kernel") and hasattr(value, "arg_names")}


def _launch(name: str, case: kr.Case):
    return next(p.launch for p in kr.layer_launches(case, kr.TARGETS[90]) if p.launch.name == name)


def test_every_kernel_fits_sm90_at_decode_and_prefill():
    report = kr.sweep(kr.cases(**kr.QUICK), archs=(90,), log=lambda *_: None)
    assert {c["kernel"] for c in report.compiles} == _jit_kernels()  # none left out
    prefill_gemms = [c for c in report.compiles if c["kernel"] == "_moe_gemm1_kernel" and "BLOCK_M=64" in c["config"]]
    assert prefill_gemms and any("BLOCK_M=16" in c["config"] for c in report.compiles)  # decode and prefill tiles
    unfit = {f"{c['kernel']} [{c['config']}]": c["problems"] for c in report.compiles if c["problems"]}
    assert not unfit
    assert all(c["registers"] <= 255 and c["warps_per_sm"] >= c["num_warps"] for c in report.compiles)


def test_an_oversized_tile_is_reported_as_a_spill(tmp_path):
    """One warp for the prefill GEMM1 tile (64 x 64 accumulator and its operands) cannot hold it in registers."""
    launch = _launch("_moe_gemm1_kernel", kr.Case("gpt-oss-120b", 1, False, 2048, True, "bfloat16"))
    res = kr.compile_launch(dataclasses.replace(launch, meta={**launch.meta, "num_warps": 1}), SM90, tmp_path)
    assert res.registers == 255 and res.spill_stores > 0
    assert any(p.startswith("spills") for p in kr.problems(res, SM90))


def test_too_many_stages_are_reported_as_shared_memory_over_the_limit(tmp_path):
    launch = _launch("_moe_gemm2_kernel", kr.Case("gpt-oss-120b", 1, False, 2048, True, "bfloat16"))
    meta = {**launch.meta, "BLOCK_M": 128, "BLOCK_N": 128, "num_stages": 12}
    res = kr.compile_launch(dataclasses.replace(launch, meta=meta), SM90, tmp_path)
    assert res.shared > SM90.shared_per_block
    assert kr.problems(res, SM90) == [f"shared memory {res.shared} B > {SM90.shared_per_block} B per block"]


def test_a_failed_compile_is_a_problem(tmp_path):
    launch = _launch("_rms_norm_kernel", kr.Case("gpt-oss-120b", 1, False, 1, False, "bfloat16"))
    res = kr.compile_launch(dataclasses.replace(launch, meta={**launch.meta, "BLOCK_H": 3000}), SM90, tmp_path)
    assert res.error and kr.problems(res, SM90)[0].startswith("compile failed")  # arange needs a power of two


def test_results_are_cached(tmp_path):
    launch = _launch("_router_topk_kernel", kr.Case("gpt-oss-20b", 1, False, 8, False, "bfloat16"))
    first = kr.compile_launch(launch, SM90, tmp_path)
    assert len(list(tmp_path.iterdir())) == 1
    assert kr.compile_launch(launch, SM90, tmp_path) == first


def test_occupancy_takes_the_tightest_limit():
    res = kr.Resources("k", "sm_90", "", registers=128, shared=0, num_warps=4)
    assert kr.occupancy(res, SM90) == 16  # 65536 / (128 * 32) = 16 warps
    res = dataclasses.replace(res, registers=32, shared=100 * 1024)
    assert kr.occupancy(res, SM90) == 8  # 228 KiB / (100 + 1 KiB) = 2 blocks of 4 warps
    res = dataclasses.replace(res, registers=16, shared=0, num_warps=1)
    assert kr.occupancy(res, SM90) == 32  # 32 blocks per SM at most


def test_cases_cover_the_issue_grid():
    labels = {c.label for c in kr.cases()}
    assert "gpt-oss-120b TP8 EP decode T=1 bfloat16" in labels
    assert "gpt-oss-20b TP4 prefill T=8192 float32" in labels
    assert len(labels) == 2 * (4 + 3) * 6 * 2  # models x (TP + EP for TP > 1) x steps x dtypes
