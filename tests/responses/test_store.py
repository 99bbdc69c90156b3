"""The response store on both databases, exactly: SQLite in a temp dir and a real PostgreSQL 15 (started here):
owner scoping, chains only through finished responses, whole-row writes, expiry, usage, events, cancel flags, leases,
and a connection PostgreSQL dropped being opened again."""

import asyncio
import threading
import time

import pytest

from cluster.responses.store import Store, StoredResponse
from tests.responses import postgres


@pytest.fixture(scope="module")
def pg_dsn():
    if not postgres.available():
        pytest.skip("PostgreSQL 15 is not installed at /usr/lib/postgresql/15/bin")
    with postgres.postgres_server() as dsn:
        yield dsn


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = Store(path=tmp_path / "r.sqlite3")
    else:
        s = Store(dsn=request.getfixturevalue("pg_dsn"))
    run(s.connect())
    run(_clear(s))
    yield s
    s.close_sync()


async def _clear(s: Store):
    await s._run(lambda cur: (cur.execute("DELETE FROM gptoss_responses"),
                              cur.execute("DELETE FROM gptoss_response_events")))


def run(coro):
    return asyncio.run(coro)


def resp(rid, owner="key:a", status="completed", previous=None, **kw) -> StoredResponse:
    return StoredResponse(rid, owner, status, {"id": rid, "status": status, "output": []},
                          [{"type": "message", "role": "user", "content": rid}], {}, previous,
                          kw.pop("conversation", rid), created_at=time.time(), **kw)


def test_insert_get_is_scoped_to_the_owner(store):
    run(store.insert(resp("resp_1")))
    got = run(store.get("resp_1", "key:a"))
    assert got.body == {"id": "resp_1", "status": "completed", "output": []} and got.input_items[0]["content"] == \
        "resp_1"
    assert run(store.get("resp_1", "key:b")) is None
    assert run(store.get("resp_nope", "key:a")) is None


def test_chain_follows_previous_ids_oldest_first(store):
    run(store.insert(resp("r1")))
    run(store.insert(resp("r2", previous="r1", conversation="r1")))
    run(store.insert(resp("r3", previous="r2", conversation="r1")))
    assert [r.id for r in run(store.chain("r3", "key:a"))] == ["r1", "r2", "r3"]
    assert run(store.chain("r3", "key:b")) is None  # another key sees nothing
    run(store.delete("r2", "key:a"))
    assert run(store.chain("r3", "key:a")) is None  # a missing link breaks the chain


def test_a_chain_through_another_owners_response_is_refused(store):
    run(store.insert(resp("r1", owner="key:b")))
    run(store.insert(resp("r2", previous="r1")))
    assert run(store.chain("r2", "key:a")) is None


def test_finish_updates_only_running_responses_in_one_statement(store):
    run(store.insert(resp("r1", status="queued", background=True, lease_until=time.time() + 30)))
    assert run(store.finish("r1", "completed", {"id": "r1", "status": "completed", "output": [{"x": 1}]},
                            {"it": "seen"}))
    got = run(store.get("r1", "key:a"))
    assert (got.status, got.body["output"], got.hidden, got.lease_until) == ("completed", [{"x": 1}], {"it": "seen"},
                                                                             None)
    assert not run(store.finish("r1", "failed", {"id": "r1"}))  # finished once
    assert got.size == sum(len(p) for p in got.payload())


def test_expired_responses_are_invisible_and_purged(store):
    run(store.insert(resp("old", expires_at=time.time() - 1)))
    run(store.insert(resp("new", expires_at=time.time() + 60)))
    run(store.insert(resp("kept")))
    assert run(store.get("old", "key:a")) is None and run(store.get("new", "key:a")) is not None
    assert run(store.purge()) == 1
    assert run(store.usage("key:a")) == sum(run(store.get(i, "key:a")).size for i in ("new", "kept"))


def test_events_in_order_after_a_sequence_number(store):
    run(store.insert(resp("r1", status="in_progress", background=True, stream=True)))
    run(store.append_events("r1", 0, ["e0", "e1", "e2"]))
    run(store.append_events("r1", 3, ["e3"]))
    assert run(store.events("r1", -1)) == [(0, "e0"), (1, "e1"), (2, "e2"), (3, "e3")]
    assert run(store.events("r1", 1)) == [(2, "e2"), (3, "e3")]
    assert run(store.get("r1", "key:a")).size > sum(len(p) for p in resp("r1").payload())
    run(store.delete("r1", "key:a"))
    assert run(store.events("r1", -1)) == []


def test_cancel_flag_and_lease(store):
    run(store.insert(resp("r1", status="in_progress", background=True, lease_until=time.time() + 30)))
    assert run(store.renew("r1", time.time() + 30))
    run(store.request_cancel("r1", "key:b"))  # not the owner: no effect
    assert run(store.renew("r1", time.time() + 30))
    run(store.request_cancel("r1", "key:a"))
    assert not run(store.renew("r1", time.time() + 30))
    assert not run(store.lapse("r1", {"id": "r1", "status": "failed"}))  # its claim has not lapsed
    run(store.renew("r1", time.time() - 1))
    assert run(store.lapse("r1", {"id": "r1", "status": "failed"}))
    assert run(store.get("r1", "key:a")).status == "failed"


def test_concurrent_writers_from_threads(store):
    def write(i):
        asyncio.run(store.insert(resp(f"r{i}")))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert all(run(store.get(f"r{i}", "key:a")) for i in range(16))


def test_postgresql_connection_dropped_is_opened_again(pg_dsn):
    import psycopg

    s = Store(dsn=pg_dsn)
    run(s.connect())
    run(s.insert(resp("r-drop")))
    with psycopg.connect(pg_dsn, autocommit=True) as admin:  # the server ends every other session
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                      "AND datname = 'postgres'")
    assert run(s.get("r-drop", "key:a")).id == "r-drop"
    s.close_sync()


def test_two_stores_share_one_sqlite_file(tmp_path):
    a, b = Store(path=tmp_path / "s.sqlite3"), Store(path=tmp_path / "s.sqlite3")
    run(a.connect())
    run(b.connect())
    run(a.insert(resp("r1")))
    assert run(b.get("r1", "key:a")).id == "r1"
