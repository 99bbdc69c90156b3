"""The audit log's chain, exactly: records written by the real writer (files and a real PostgreSQL) verify; a copy
with one line changed, removed or moved, or a segment cut short at its start, fails `gptoss audit verify` naming
the line; kept text is redacted."""

import asyncio
import json

import pytest

from cluster import safety_cli
from cluster.audit import AuditConfig, AuditLog, digest, read_files, verify_records
from cluster.guards.config import RegexFilterSpec
from cluster.guards.regex import RegexFilter
from tests.responses import postgres


def write(config: AuditConfig, count: int, chain: str = "ingress-1", redact=None) -> AuditLog:
    async def go():
        log = AuditLog(config, chain, redact)
        for i in range(count):
            log.record({"request_id": f"chatcmpl-{i}", "key": "team-a", "status": 200, "prompt_tokens": i,
                        "prompt": log.text(f"mail me at user{i}@example.com")})
        await log.close()
        return log

    return asyncio.run(go())


def verify(*paths) -> tuple[int, str]:
    import argparse
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = safety_cli.run_verify(argparse.Namespace(paths=list(paths), dsn=None, dsn_env=None))
    return rc, out.getvalue()


def test_a_real_log_verifies_and_every_edit_is_found(tmp_path):
    log = write(AuditConfig(dir=str(tmp_path / "log")), 6)
    assert (log.seq, log.errors) == (6, 0)
    rc, out = verify(tmp_path / "log")
    assert rc == 0 and "ok: 6 records in 1 chains" in out and f"head {log.prev}" in out
    (segment,) = (tmp_path / "log").glob("audit-*.jsonl")
    lines = segment.read_text().splitlines()
    edited = json.loads(lines[2])
    edited["prompt_tokens"] = 999
    cases = {"changed": lines[:2] + [json.dumps(edited)] + lines[3:], "removed": lines[:3] + lines[4:],
             "first removed": lines[1:], "swapped": lines[:2] + [lines[3], lines[2]] + lines[4:]}
    for name, copy in cases.items():
        broken = tmp_path / name.replace(" ", "-")
        broken.mkdir()
        (broken / segment.name).write_text("\n".join(copy) + "\n")
        rc, out = verify(broken)
        assert rc == 1 and "FAIL" in out, name
    assert "does not match its hash (edited)" in verify(tmp_path / "changed")[1]
    assert "seq 4 does not follow seq 2" in verify(tmp_path / "removed")[1]
    assert "the segment starts at seq 1, its name says 0" in verify(tmp_path / "first-removed")[1]


def test_segments_rotate_and_chain_into_each_other(tmp_path):
    config = AuditConfig(dir=str(tmp_path), max_bytes=4096, keep_segments=0)
    write(config, 40)
    segments = sorted(tmp_path.glob("audit-ingress-1-*.jsonl"))
    assert len(segments) > 2
    assert verify(tmp_path)[0] == 0
    middle = segments[1].read_text().splitlines()
    segments[1].write_text("\n".join(middle[:-1]) + "\n")  # the last line of a closed segment
    rc, out = verify(tmp_path)
    assert rc == 1 and "does not follow" in out
    segments[1].unlink()  # a whole segment in the middle
    assert verify(tmp_path)[0] == 1


def test_old_segments_are_removed_past_keep_segments(tmp_path):
    write(AuditConfig(dir=str(tmp_path), max_bytes=4096, keep_segments=2), 60)
    assert len(list(tmp_path.glob("audit-*.jsonl"))) == 2
    report = verify_records(read_files([tmp_path]))
    assert report.ok  # the oldest kept segment starts the verifiable chain (its name says where)


def test_text_is_kept_only_when_asked_and_redacted(tmp_path):
    write(AuditConfig(dir=str(tmp_path / "plain")), 1)
    (plain,) = read_files([tmp_path / "plain"])
    assert plain.record["prompt"] is None
    pii = RegexFilter("audit", RegexFilterSpec()).redact
    write(AuditConfig(dir=str(tmp_path / "text"), include_text=True), 1, redact=pii)
    (kept,) = read_files([tmp_path / "text"])
    assert kept.record["prompt"] == "mail me at [REDACTED:email]" and digest(kept.record) == kept.record["hash"]


@pytest.fixture(scope="module")
def pg_dsn():
    if not postgres.available():
        pytest.skip("PostgreSQL 15 is not installed at /usr/lib/postgresql/15/bin")
    with postgres.postgres_server() as dsn:
        yield dsn


def test_postgresql_records_verify_and_an_edit_is_found(pg_dsn, monkeypatch, capsys):
    import argparse

    import psycopg

    write(AuditConfig(dsn=pg_dsn), 5, "gateway-1")
    write(AuditConfig(dsn=pg_dsn), 3, "ingress-2")
    monkeypatch.setenv("AUDIT_DSN", pg_dsn)
    args = argparse.Namespace(paths=[], dsn=None, dsn_env="AUDIT_DSN")
    assert safety_cli.run_verify(args) == 0 and "ok: 8 records in 2 chains" in capsys.readouterr().out
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM gptoss_audit WHERE chain = 'gateway-1' AND seq = 2")
    assert safety_cli.run_verify(args) == 1 and "seq 3 does not follow seq 1" in capsys.readouterr().out


def test_the_cli_is_registered_with_gptoss():
    import argparse

    from cluster import cli

    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["audit", "verify", "x"]).run is safety_cli.run_verify
    assert parser.parse_args(["keys", "new", "ops"]).run is safety_cli.run_new_key
