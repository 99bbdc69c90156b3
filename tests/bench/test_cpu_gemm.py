"""bench/cpu_gemm.py on a small shape: every product runs, is timed against the baseline and reports GFLOP/s."""

from bench.cpu_gemm import measure


def test_measure_times_each_product_against_torchs_fp32_gemm():
    dense = measure(64, 64, False, 8, 1, greedy=True)
    assert {"torch fp32 (baseline)", "linear bf16", "linear fp32"} <= dense.keys()
    assert dense["torch fp32 (baseline)"]["vs_baseline"] == 1.0
    assert all(v["gflops"] > 0 and v["ms"] > 0 for v in dense.values())
    packed = measure(32, 64, True, 8, 1)
    assert "mxfp4 experts" in packed and "linear bf16" not in packed
    assert "greedy tokens bf16" not in measure(64, 64, False, 8, 1)  # an unembedding's only
