"""Result files (JSON, CSV, PNG) are written and read back; compare flags regressions; the CLI runs a sweep."""

import argparse
import copy
import csv
import json

import matplotlib.image
import pytest

from loadtest import cli, report, runner
from loadtest.compare import compare
from loadtest.plots import write_plots

from .conftest import make_config, reply


def gptoss(argv):
    """The `gptoss` command with only the load tester's subcommands (as engine/cli.py builds it)."""
    parser = argparse.ArgumentParser(prog="gptoss")
    cli.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


@pytest.fixture(scope="module")
def run_result():
    from loadtest.fake_server import FakeServer

    with FakeServer(lambda i, body: reply((0.02, 2, "reasoning"), (0.01, 3, "final"))) as server:
        return runner.run(make_config(server.url, sweep_concurrency=[1, 2], num_requests=4, api_key="sekret",
                                      metrics_url=server.url + "/metrics", scrape_interval_s=0.05))


def test_json_csv_png_written_and_readable(run_result, tmp_path):
    result = report.build_result(run_result)
    report.write_json(result, tmp_path / "result.json")
    report.write_csv(run_result, tmp_path / "requests.csv")
    back = report.load_result(tmp_path / "result.json")
    assert back["schema"] == report.SCHEMA and back["version"] == report.VERSION
    assert "sekret" not in (tmp_path / "result.json").read_text() and back["config"]["api_key_set"]
    assert back["formulas"]["ttft_ms"].startswith("t_first_token")
    assert back["environment"]["python"] and len(back["points"]) == 2
    assert back["points"][1]["summary"]["completed"] == 4 and back["points"][0]["timeline"]
    rows = list(csv.DictReader((tmp_path / "requests.csv").open()))
    assert len(rows) == 8 and {r["load_value"] for r in rows} == {"1.0", "2.0"}
    assert float(rows[0]["ttft_ms"]) > 0 and rows[0]["reasoning_tokens"] == "2"
    for png in write_plots(back, tmp_path):
        image = matplotlib.image.imread(png)
        assert image.shape[0] > 100 and image.shape[1] > 100
    table = report.table(back)
    assert "TTFT p50" in table and "best load meeting the SLOs: 2 (concurrency)" in table


def test_compare_flags_regressions(run_result, tmp_path):
    a = report.build_result(run_result)
    b = copy.deepcopy(a)
    for p in b["points"]:
        p["summary"]["ttft_ms"]["p99"] *= 1.5
    rows, notes = compare(a, b, threshold_pct=10)
    flagged = {(r.load, r.metric) for r in rows if r.regression}
    assert flagged == {("1 conc", "ttft_ms p99"), ("2 conc", "ttft_ms p99")}
    assert not any(r.regression for r in compare(a, a)[0])
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert gptoss(["loadtest", "compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 1
    assert gptoss(["loadtest", "compare", str(tmp_path / "a.json"), str(tmp_path / "a.json")]) == 0
    assert gptoss(["loadtest", "compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                   "--threshold", "60"]) == 0


def test_compare_throughput_drop_and_best_load(run_result):
    a = report.build_result(run_result)
    b = copy.deepcopy(a)
    b["points"][0]["summary"]["request_throughput_rps"] *= 0.5
    b["best_load"] = {"mode": "concurrency", "value": 1.0}
    b["config"]["model"] = "other"
    rows, notes = compare(a, b)
    flagged = {r.metric for r in rows if r.regression}
    assert flagged == {"request_throughput_rps", "best load meeting SLOs"}
    assert any("model" in n for n in notes)


def test_cli_run_sweep_writes_everything(fake_server, tmp_path, capsys):
    server = fake_server(lambda i, body: reply((0.02, 1, "final"), (0.01, 1, "final")))
    code = gptoss(["loadtest", "run", "--url", server.url, "--model", "fake", "--sweep-rates", "5,10",
                   "--arrival", "constant", "--duration", "0.6", "--warmup", "0.2", "--input-len", "uniform:4:8",
                   "--output-len", "2", "--tokenizer", "words", "--slo-ttft-ms", "500", "--no-progress",
                   "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "best load meeting the SLOs: 10 (rate)" in out
    for name in ("result.json", "requests.csv", "latency_cdf.png", "load.png", "timeline.png"):
        assert (tmp_path / name).stat().st_size > 0
    result = report.load_result(tmp_path / "result.json")
    assert [p["summary"]["requests"] for p in result["points"]] == [3, 6]
    assert gptoss(["loadtest", "plot", str(tmp_path / "result.json"), "--out", str(tmp_path / "again")]) == 0


def test_cli_rejects_bad_values(capsys):
    assert gptoss(["loadtest", "run", "--url", "http://127.0.0.1:9", "--model", "m", "--input-len", "zipf:3"]) == 2
    assert "bad length distribution" in capsys.readouterr().err
