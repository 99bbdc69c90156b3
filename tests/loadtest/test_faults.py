"""Fault schedules: parsing and validation before a run, a plugin action run on schedule beside the load (here it
makes a fake server drop its streams silently for a while: the routing-layer stand-in for a fault), its marks on
the timeline, and the per-fault report that counts what it cost."""

import json
import time

import pytest

from loadtest import report, runner
from loadtest.faults import Action, FaultContext, load_schedule, parse_seconds
from loadtest.fake_server import Chunk, Reply

from .conftest import make_config

BROKEN = {"on": False}    # the plugin flips this; the fake server's script reads it


class DropStreams(Action):
    """A test plugin: for `seconds`, the fake server ends every stream cleanly but without a finish reason."""

    name, planned = "drop_streams", False

    def __init__(self, ctx: FaultContext, seconds: float = 1.0) -> None:
        super().__init__(ctx)
        self.seconds = float(seconds)

    def run(self) -> dict:
        BROKEN["on"] = True
        time.sleep(self.seconds)
        BROKEN["on"] = False
        return {"dropped_for_s": self.seconds}


def script(i, body):
    return Reply(chunks=[Chunk(0.02, "a b"), Chunk(0.02, "c d")], finish=None if BROKEN["on"] else "stop")


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("1m", 60), ("1m30s", 90), ("2.5", 2.5), (7, 7)])
def test_times(text, seconds):
    assert parse_seconds(text) == seconds


def test_schedule_is_checked_before_the_run():
    ctx = FaultContext()
    with pytest.raises(ValueError, match="unknown fault action 'explode'; built-in: .*kill_replica"):
        load_schedule([{"at": "1s", "action": "explode"}], ctx)
    with pytest.raises(ValueError, match=r"faults\[0\] \(kill_replica\): .*unexpected keyword argument 'colour'"):
        load_schedule([{"at": "1s", "action": "kill_replica", "colour": "red"}], ctx)
    with pytest.raises(ValueError, match="needs the application's config file"):
        load_schedule([{"at": "1s", "action": "redeploy", "set": {"models.0.num_replicas": 1}}], ctx)
    with pytest.raises(ValueError, match="'at' must be seconds"):
        load_schedule("- {at: soon, action: kill_replica}", ctx)
    schedule = load_schedule("- {at: 20s, action: kill_ingress}\n- {at: 5s, action: stop_rank, rank: 1, name: s}",
                             ctx)
    assert [(f.at_s, f.label, f.action.name, f.action.planned) for f in schedule] == [
        (5.0, "s", "stop_rank", False), (20.0, "kill_ingress@20s", "kill_ingress", False)]


def test_redeploy_changes_are_checked(tmp_path):
    config = tmp_path / "app.yaml"
    config.write_text("name: app\nmodels:\n  - {name: tiny, path: /x, num_replicas: 2}\n")
    ctx = FaultContext(serve_config=str(config))
    (fault,) = load_schedule([{"at": 1, "action": "scale_down", "replicas": 1}], ctx)
    assert fault.action.planned and fault.action.changes == {"models.0.num_replicas": 1, "models.0.autoscaling": None}
    with pytest.raises(ValueError, match="'models.3.engine' does not exist"):
        load_schedule([{"at": 1, "action": "redeploy", "set": {"models.3.engine": {}}}], ctx)


def test_a_fault_under_load_is_marked_and_counted(fake_server, tmp_path):
    server = fake_server(script)
    faults = [{"at": "1s", "action": "tests.loadtest.test_faults:DropStreams", "seconds": 0.6, "name": "drop"}]
    cfg = make_config(server.url, rate=40, duration_s=2.5, arrival="constant", faults=faults, recovery_window_s=0.5)
    point = runner.run(cfg).points[0]
    (mark,) = point.faults
    assert mark.label == "drop" and mark.detail == {"dropped_for_s": 0.6} and not mark.error
    assert 0.95 < mark.start < 1.2 and 0.55 < mark.end - mark.start < 0.9
    (fault,) = point.summary["faults"]
    lost = [r for r in point.records if r.outcome == "lost"]
    # every request the server answered while broken is lost (about 40/s x 0.6 s), the rest completed; the fault
    # owns every request that ended after it began
    assert 15 <= len(lost) <= 35 and fault["outcomes"]["lost"] == len(lost)
    assert all(mark.start - 0.1 <= r.sent <= mark.end + 0.1 for r in lost)
    assert fault["outcomes"]["completed"] + len(lost) == fault["requests"]
    assert fault["baseline_good_fraction"] == 1.0 and fault["recovery_s"] is not None
    assert fault["recovery_s"] <= mark.end - mark.start + 0.6
    result = report.build_result(runner.RunResult(cfg, [point], None))
    saved = json.loads(json.dumps(result))
    assert saved["points"][0]["faults"][0]["label"] == "drop" and saved["points"][0]["series"]["lost"]
    assert "drop" in report.table(saved) and "0 lost" in report.table(saved)
    from loadtest.plots import write_plots

    paths = write_plots(saved, tmp_path)
    assert all(p.stat().st_size > 1000 for p in paths)


def test_faults_need_one_load_point(fake_server):
    with pytest.raises(ValueError, match="one load point"):
        make_config("http://127.0.0.1:1", sweep_rates=[1, 2], faults=[{"at": 1, "action": "kill_replica"}])
