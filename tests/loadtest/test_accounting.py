"""Per-request accounting: every way a request can end, sent to a fake server that scripts it, lands in the right
outcome (completed, rejected, failed, lost), with its retry hint; and the per-fault report and recovery time."""

import math
import socket

from loadtest import runner
from loadtest.accounting import FaultMark, classify, counts, fault_report, recovery_s, targets
from loadtest.fake_server import Reply
from loadtest.metrics import RequestRecord

from .conftest import make_config, reply

OK = [(0.01, 1, "final"), (0.01, 1, "final"), (0.01, 1, "final")]
SCRIPT = {  # request index -> (reply, expected outcome)
    0: (reply(*OK), "completed"),
    1: (reply(*OK, finish=None), "lost"),              # [DONE] and a clean end, but no finish reason: dropped silently
    2: (reply(*OK, done_marker=False, finish=None), "lost"),   # the body ends cleanly, no [DONE], no finish
    3: (reply(*OK, hang_after=1), "lost"),             # accepted, one token, then nothing until the timeout
    4: (Reply(status=429, retry_after="2"), "rejected"),
    5: (Reply(status=503), "rejected"),                # rejected, but with no retry hint
    6: (reply(*OK, error_after=1), "failed"),          # a clear error mid-stream
    7: (Reply(status=500), "failed"),
    8: (Reply(status=408), "failed"),
    9: (reply(*OK, cut_after=2), "failed"),            # the connection broke mid-stream: the client sees it fail
}


def test_each_ending_gets_its_outcome(fake_server):
    server = fake_server(lambda i, body: SCRIPT[i][0])
    point = runner.run(make_config(server.url, concurrency=1, num_requests=len(SCRIPT),
                                   request_timeout_s=0.5)).points[0]
    by_index = {int(r.request_id.split("-")[1]): r for r in point.records}
    assert {i: r.outcome for i, r in by_index.items()} == {i: want for i, (_, want) in SCRIPT.items()}
    assert by_index[0].finish_reason == "stop" and by_index[0].accepted > 0
    assert by_index[1].status == "ok" and not by_index[1].finish_reason     # the transport saw nothing wrong
    assert by_index[3].status == "timeout" and by_index[3].accepted == by_index[3].accepted
    assert by_index[4].retry_after_s == 2.0 and math.isnan(by_index[5].retry_after_s)
    outcomes = point.summary["outcomes"]
    assert by_index[2].status == "stream_broken" and by_index[9].status == "stream_reset"
    assert outcomes == {"completed": 1, "rejected": 2, "failed": 4, "lost": 3, "rejected_without_retry_hint": 1}
    assert point.summary["good_fraction"] == 1 / len(SCRIPT)                 # a lost stream is never good


def test_a_connection_never_made_is_rejected():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    point = runner.run(make_config(f"http://127.0.0.1:{port}", concurrency=1, num_requests=2)).points[0]
    assert point.summary["outcomes"]["rejected"] == 2
    assert point.summary["outcomes"]["rejected_without_retry_hint"] == 2


def record(scheduled, done, outcome="completed", sent=None, good=True, status="ok") -> RequestRecord:
    rec = RequestRecord(f"r{scheduled}", scheduled=scheduled, sent=scheduled if sent is None else sent, done=done,
                        status=status, finish_reason="stop" if outcome == "completed" else "",
                        accepted=scheduled + 0.01)
    rec.outcome, rec.good = outcome, good and outcome == "completed"
    return rec


def test_classify_without_an_outcome_set():
    assert classify(record(0, 1)) == "completed"
    assert classify(record(0, 1, outcome="lost")) == "lost"          # status ok, no finish reason
    assert classify(record(0, 1, outcome="x", status="stream_error")) == "failed"


def test_fault_report_counts_in_flight_and_recovery():
    # 10 req/s for 30 s; a fault at 10 s breaks every request in flight then (lost) and those scheduled in the next
    # 3 s miss their SLO; from 13 s on all are good again
    records = []
    for i in range(300):
        t = i / 10
        if 9.5 <= t < 10:
            records.append(record(t, 10.05, outcome="lost"))
        elif 10 <= t < 13:
            records.append(record(t, t + 0.5, good=False))
        else:
            records.append(record(t, t + 0.4))
    mark = FaultMark("kill", "kill_replica", False, 10.0, 10.2, {"pid": 1})
    (report,) = fault_report(records, [mark], end=30.0, window_s=2.0)
    assert report["in_flight_at_start"] == 5 and report["in_flight_outcomes"]["lost"] == 5
    assert report["outcomes"]["lost"] == 5 and report["outcomes"]["completed"] == 200
    assert report["baseline_good_fraction"] == 1.0
    assert 2.6 <= report["recovery_s"] <= 3.0 + 1e-9      # a window 90% good counts as recovered
    assert report["in_flight_without_first_token"] == 0
    assert targets(report) == {"0 lost": False, "no first token yet: completed": True, "recovered within 60 s": True}


def test_recovery_is_none_while_goodput_stays_low():
    records = [record(i / 10, i / 10 + 0.1, good=i < 100) for i in range(200)]
    assert recovery_s(records, 10.0, 20.0, 1.0, 2.0) is None
    assert counts(records)["completed"] == 200


def test_planned_targets_count_every_outcome():
    report = {"planned": True, "recovery_s": 0.0,
              "outcomes": {"completed": 9, "rejected": 1, "failed": 0, "lost": 0}}
    assert targets(report) == {"0 lost": True, "0 failed": True, "0 rejected": False}
