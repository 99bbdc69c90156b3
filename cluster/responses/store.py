"""The response store: stored responses and their event logs in SQLite (one node) or PostgreSQL (every node).

Flow: a front door's `ResponsesService` calls the async methods here -> each runs one short transaction in a worker
thread (the event loop never blocks on the database) on the process's one connection (SQLite in WAL mode with a busy
timeout, or psycopg 3; a dropped PostgreSQL connection is opened again once) -> rows come back as `StoredResponse`.
Writes are whole: a response row is inserted with everything it has, and a run's end (status, body, hidden tool
results) is one UPDATE; a conversation (`chain`) only follows responses whose status is completed or incomplete, so a
crash mid-run never leaves a half-written turn that `previous_response_id` would follow. Every read is scoped to the
owner (cluster/auth.py's identity): another key's response does not exist for the caller. Rows past `expires_at`
(store_ttl) are invisible and `purge` deletes them. The same SQL runs on both (`?` becomes `%s` for psycopg).
"""

import asyncio
import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

FOLLOWABLE = ("completed", "incomplete")  # statuses a previous_response_id may name
RUNNING = ("queued", "in_progress")
MAX_CHAIN = 10_000  # links followed at most (a loop in the data cannot hang a request)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS gptoss_responses (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        previous_id TEXT,
        conversation TEXT NOT NULL,
        status TEXT NOT NULL,
        background INTEGER NOT NULL,
        stream INTEGER NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION,
        lease_until DOUBLE PRECISION,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        size BIGINT NOT NULL,
        body TEXT NOT NULL,
        input_items TEXT NOT NULL,
        hidden TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS gptoss_responses_owner ON gptoss_responses (owner, created_at)",
    "CREATE INDEX IF NOT EXISTS gptoss_responses_expiry ON gptoss_responses (expires_at)",
    """CREATE TABLE IF NOT EXISTS gptoss_response_events (
        response_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        frame TEXT NOT NULL,
        PRIMARY KEY (response_id, seq))""",
)
_COLUMNS = ("id, owner, previous_id, conversation, status, background, stream, created_at, expires_at, lease_until, "
            "cancel_requested, size, body, input_items, hidden")


@dataclass
class StoredResponse:
    id: str  # "resp_..."
    owner: str  # the caller identity that created it (cluster/auth.py)
    status: str  # queued | in_progress | completed | incomplete | failed | cancelled
    body: dict  # the response object as the API returns it
    input_items: list[dict] = field(default_factory=list)  # this turn's input items, ids filled in
    hidden: dict = field(default_factory=dict)  # output item id -> the tool result text the model read
    previous_id: str | None = None  # previous_response_id
    conversation: str = ""  # the first response's id of the chain (python sessions are keyed on it)
    background: bool = False
    stream: bool = False  # a background run created with stream: its events are kept for GET ?stream=true
    created_at: float = 0.0  # unix time
    expires_at: float | None = None  # unix time; None: kept until deleted
    lease_until: float | None = None  # a running background response: its front door's claim, renewed
    cancel_requested: bool = False  # POST .../cancel reached another front door than the one running it
    size: int = 0  # bytes counted against the owner's max_store_bytes_per_key

    def payload(self) -> tuple[str, str, str]:
        return _dump(self.body), _dump(self.input_items), _dump(self.hidden)


def _dump(value) -> str:
    return json.dumps(value, separators=(",", ":"))


class Store:
    """One database; async methods, each one transaction. `connect()` opens it (and creates the tables)."""

    def __init__(self, dsn: str | None = None, path: str | Path | None = None):
        if (dsn is None) == (path is None):
            raise ValueError("a Store needs exactly one of dsn (PostgreSQL) and path (SQLite)")
        self.dsn, self.path = dsn, Path(path) if path is not None else None
        self.kind = "postgresql" if dsn else "sqlite"
        self._conn = None
        self._lock = threading.Lock()  # one connection per process: one transaction at a time

    # ---- connection ----
    def _connect(self):
        if self.dsn is not None:
            import psycopg  # noqa: PLC0415 - only where a DSN is configured

            return psycopg.connect(self.dsn, autocommit=False, connect_timeout=10)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    async def connect(self) -> "Store":
        """Opens the database and creates the tables (front doors starting together: one at a time on PostgreSQL)."""
        def create(cur):
            if self.kind == "postgresql":
                cur.execute("SELECT pg_advisory_xact_lock(727274)")  # concurrent CREATE IF NOT EXISTS can clash
            for sql in SCHEMA:
                cur.execute(sql)
        await self._run(create)
        return self

    def _transaction(self, fn):
        """fn(cursor) inside BEGIN..COMMIT on the connection (opened, or opened again once if it dropped)."""
        with self._lock:
            for attempt in (0, 1):
                if self._conn is None:
                    self._conn = self._connect()
                try:
                    return self._once(fn)
                except Exception as err:  # noqa: BLE001 - a broken connection: drop it, retry once
                    if attempt == 1 or not _connection_lost(err):
                        raise
                    self.close_sync()
        raise AssertionError("unreachable")

    def _once(self, fn):
        conn = self._conn
        cur = conn.cursor()
        if self.kind == "sqlite":
            cur.execute("BEGIN IMMEDIATE")
        try:
            result = fn(_Cursor(cur, self.kind))
            conn.commit() if self.kind == "postgresql" else cur.execute("COMMIT")
            return result
        except BaseException:
            try:
                conn.rollback() if self.kind == "postgresql" else cur.execute("ROLLBACK")
            except Exception:  # noqa: BLE001 - the connection is gone; the caller sees the first error
                pass
            raise

    async def _run(self, fn):
        return await asyncio.to_thread(self._transaction, fn)

    def close_sync(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)

    # ---- writes ----
    async def insert(self, r: StoredResponse) -> None:
        body, items, hidden = r.payload()
        r.size = len(body) + len(items) + len(hidden)
        await self._run(lambda cur: cur.execute(
            f"INSERT INTO gptoss_responses ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (r.id, r.owner, r.previous_id, r.conversation, r.status, int(r.background), int(r.stream), r.created_at,
             r.expires_at, r.lease_until, int(r.cancel_requested), r.size, body, items, hidden)))

    async def finish(self, response_id: str, status: str, body: dict, hidden: dict | None = None,
                     first_seq: int = 0, frames: list[str] = ()) -> bool:
        """A running response's end (and its last events) in one transaction; False if it is no longer running
        (cancelled, deleted)."""
        body_text, hidden_text = _dump(body), _dump(hidden or {})

        def update(cur):
            if frames:
                cur.executemany("INSERT INTO gptoss_response_events (response_id, seq, frame) VALUES (?, ?, ?)",
                                [(response_id, first_seq + i, f) for i, f in enumerate(frames)])
            cur.execute("UPDATE gptoss_responses SET status = ?, body = ?, hidden = ?, lease_until = NULL, "
                        "size = size - length(body) - length(hidden) + ? WHERE id = ? AND status IN (?, ?)",
                        (status, body_text, hidden_text, len(body_text) + len(hidden_text), response_id, *RUNNING))
            return cur.rowcount == 1
        return await self._run(update)

    async def set_running(self, response_id: str, body: dict, lease_until: float) -> None:
        text = _dump(body)
        await self._run(lambda cur: cur.execute(
            "UPDATE gptoss_responses SET status = 'in_progress', body = ?, lease_until = ? WHERE id = ? AND "
            "status IN (?, ?)", (text, lease_until, response_id, *RUNNING)))

    async def renew(self, response_id: str, lease_until: float) -> bool:
        """Renews a run's claim; True while the response is running and nobody asked to cancel it."""
        def renew(cur):
            cur.execute("UPDATE gptoss_responses SET lease_until = ? WHERE id = ? AND status IN (?, ?)",
                        (lease_until, response_id, *RUNNING))
            cur.execute("SELECT cancel_requested FROM gptoss_responses WHERE id = ?", (response_id,))
            row = cur.fetchone()
            return row is not None and not row[0]
        return await self._run(renew)

    async def lapse(self, response_id: str, body: dict) -> bool:
        """A running response whose claim lapsed becomes failed (once: compare and set)."""
        text = _dump(body)

        def update(cur):
            cur.execute("UPDATE gptoss_responses SET status = 'failed', body = ?, lease_until = NULL WHERE id = ? AND "
                        "status IN (?, ?) AND lease_until < ?", (text, response_id, *RUNNING, time.time()))
            return cur.rowcount == 1
        return await self._run(update)

    async def request_cancel(self, response_id: str, owner: str) -> None:
        await self._run(lambda cur: cur.execute(
            "UPDATE gptoss_responses SET cancel_requested = 1 WHERE id = ? AND owner = ?", (response_id, owner)))

    async def delete(self, response_id: str, owner: str) -> bool:
        def delete(cur):
            cur.execute("DELETE FROM gptoss_responses WHERE id = ? AND owner = ?", (response_id, owner))
            found = cur.rowcount == 1
            if found:
                cur.execute("DELETE FROM gptoss_response_events WHERE response_id = ?", (response_id,))
            return found
        return await self._run(delete)

    async def append_events(self, response_id: str, first_seq: int, frames: list[str]) -> None:
        rows = [(response_id, first_seq + i, frame) for i, frame in enumerate(frames)]

        def append(cur):
            cur.executemany("INSERT INTO gptoss_response_events (response_id, seq, frame) VALUES (?, ?, ?)", rows)
            cur.execute("UPDATE gptoss_responses SET size = size + ? WHERE id = ?",
                        (sum(len(f) for f in frames), response_id))
        if rows:
            await self._run(append)

    async def purge(self) -> int:
        """Deletes every response past its expiry (and its events); returns how many."""
        now = time.time()

        def purge(cur):
            cur.execute("DELETE FROM gptoss_response_events WHERE response_id IN (SELECT id FROM gptoss_responses "
                        "WHERE expires_at < ?)", (now,))
            cur.execute("DELETE FROM gptoss_responses WHERE expires_at < ?", (now,))
            return cur.rowcount
        return await self._run(purge)

    # ---- reads ----
    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        def get(cur):
            cur.execute(f"SELECT {_COLUMNS} FROM gptoss_responses WHERE id = ? AND owner = ? AND "
                        "(expires_at IS NULL OR expires_at > ?)", (response_id, owner, time.time()))
            row = cur.fetchone()
            return _row(row) if row else None
        return await self._run(get)

    async def chain(self, response_id: str, owner: str) -> list[StoredResponse] | None:
        """The conversation ending at `response_id`, oldest first; None if any link is missing or not the owner's."""
        def chain(cur):
            cur.execute(
                "WITH RECURSIVE c(id, previous_id, depth) AS ("
                " SELECT id, previous_id, 0 FROM gptoss_responses WHERE id = ? AND owner = ?"
                " UNION ALL SELECT r.id, r.previous_id, c.depth + 1 FROM gptoss_responses r JOIN c"
                " ON r.id = c.previous_id WHERE r.owner = ? AND c.depth < ?) "
                f"SELECT {', '.join('r.' + c.strip() for c in _COLUMNS.split(','))} FROM gptoss_responses r JOIN c "
                "ON r.id = c.id ORDER BY c.depth DESC", (response_id, owner, owner, MAX_CHAIN))
            return [_row(row) for row in cur.fetchall()]
        rows = await self._run(chain)
        now = time.time()
        if not rows or rows[0].previous_id is not None or any(r.expires_at is not None and r.expires_at <= now
                                                               for r in rows):
            return None
        return rows

    async def events(self, response_id: str, after: int, limit: int = 1000) -> list[tuple[int, str]]:
        return await self._run(lambda cur: _fetch(cur, (
            "SELECT seq, frame FROM gptoss_response_events WHERE response_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (response_id, after, limit))))

    async def usage(self, owner: str) -> int:
        """Bytes stored for `owner`."""
        rows = await self._run(lambda cur: _fetch(cur, (
            "SELECT COALESCE(SUM(size), 0) FROM gptoss_responses WHERE owner = ?", (owner,))))
        return int(rows[0][0])

    async def ping(self) -> None:
        await self._run(lambda cur: cur.execute("SELECT 1"))


class _Cursor:
    """A DB-API cursor taking `?` placeholders on both databases."""

    def __init__(self, cur, kind: str):
        self._cur, self._pg = cur, kind == "postgresql"

    def execute(self, sql: str, params=()):
        return self._cur.execute(sql.replace("?", "%s") if self._pg else sql, params)

    def executemany(self, sql: str, rows):
        return self._cur.executemany(sql.replace("?", "%s") if self._pg else sql, rows)

    def fetchone(self):
        return self._cur.fetchone()

    def fetchall(self):
        return self._cur.fetchall()

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount


def _fetch(cur, query) -> list:
    cur.execute(*query)
    return cur.fetchall()


def _row(row) -> StoredResponse:
    (rid, owner, previous_id, conversation, status, background, stream, created_at, expires_at, lease_until, cancel,
     size, body, items, hidden) = row
    return StoredResponse(rid, owner, status, json.loads(body), json.loads(items), json.loads(hidden), previous_id,
                          conversation, bool(background), bool(stream), created_at, expires_at, lease_until,
                          bool(cancel), size)


def _connection_lost(err: BaseException) -> bool:
    """psycopg's OperationalError / InterfaceError (server restarted, connection dropped); never SQLite's."""
    return any(c.__name__ in ("OperationalError", "InterfaceError") and c.__module__.startswith("psycopg")
               for c in type(err).__mro__)


def open_store(config) -> Store:
    """The Store a `cluster.responses.config.ResponsesConfig` names (not yet connected)."""
    dsn = config.dsn()
    return Store(dsn=dsn) if dsn else Store(path=config.sqlite_path())
