"""Every failure is counted under its kind: status codes, a stream cut mid-way, the request timeout, refused
connections."""

import socket

from loadtest import runner
from loadtest.fake_server import Reply

from .conftest import make_config, reply

OK = [(0.01, 1, "final"), (0.01, 1, "final"), (0.01, 1, "final")]


def script(i, body):
    return [Reply(status=429), Reply(status=503), Reply(status=408), Reply(status=500),
            reply(*OK, cut_after=2), reply((2.0, 1, "final")), reply(*OK)][i]


def test_each_error_kind_is_counted(fake_server):
    server = fake_server(script)
    cfg = make_config(server.url, concurrency=1, num_requests=7, request_timeout_s=0.5)
    point = runner.run(cfg).points[0]
    s = point.summary
    assert s["errors"] == {"http_429": 1, "http_503": 1, "http_408": 1, "http_other": 1, "stream_reset": 1,
                           "timeout": 1}
    assert (s["requests"], s["completed"], s["failed"]) == (7, 1, 6)
    by_kind = {r.status: r for r in point.records}
    assert by_kind["http_429"].http_status == 429 and by_kind["http_other"].http_status == 500
    assert by_kind["stream_reset"].chunks == 2          # what arrived before the cut is kept on the record
    assert s["ttft_ms"]["count"] == 1                     # latency histograms hold successful requests only
    assert any("6 of 7 requests failed" in w for w in point.warnings)


def test_refused_connection_is_connect_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]        # closed again before the run: nothing listens there
    point = runner.run(make_config(f"http://127.0.0.1:{port}", concurrency=1, num_requests=2)).points[0]
    assert point.summary["errors"] == {"connect": 2}


def test_error_object_mid_stream_is_stream_error(fake_server):
    server = fake_server(lambda i, body: reply(*OK, error_after=1))
    point = runner.run(make_config(server.url, concurrency=1, num_requests=2)).points[0]
    assert point.summary["errors"] == {"stream_error": 2}
    assert "scripted error" in point.records[0].error
