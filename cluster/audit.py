"""The audit log: one structured, hash-chained record per request, in rotated JSONL files or in PostgreSQL.

Flow: a front door's request ends (cluster/safety.py) -> `AuditLog.record(fields)` stamps the writer's chain id (the
front door: "ingress-<replica>", "gateway-<replica>") and the next sequence number, links the record to the
previous one (`prev`: its hash) and hashes it (`hash` = SHA-256 of the record's canonical JSON without `hash`) ->
the record waits in memory; every `flush_interval_s` a worker thread appends the batch to the writer's current
segment file `audit-<chain>-<first seq>.jsonl` under `audit.dir` (a new segment past `max_bytes`; the oldest
removed past `keep_segments`), or inserts it into the `gptoss_audit` table (`audit.dsn`) -> `gptoss audit verify`
(`verify_records`) reads files or the table back, and fails on a record whose hash does not match its content (an
edited line), a record whose `prev` is not the hash before it or a gap in `seq` (a removed line; a segment whose
first record is not the seq its name says), and says where. What the chain cannot show alone: the newest records
of a live segment removed from its end, or whole segments removed from the start (anchor the heads `verify`
prints elsewhere for that). Text (prompt, answer) is kept only with `include_text`, redacted by a regex filter
(cluster/guards/regex.py: e-mail, phone and card numbers by default). Writing never fails a request: a failed write
is logged and counted (gptoss_audit_errors_total).
"""

import asyncio
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pydantic import model_validator

from cluster.responses.store import Database
from cluster.sections import ConfigError, Section, doc
from engine.paths import cache_root

log = logging.getLogger(__name__)
GENESIS = "0" * 64  # `prev` of a chain's first record
VERSION = 1  # of the record format
_SEGMENT = re.compile(r"^audit-(?P<chain>[A-Za-z0-9_.-]+)-(?P<seq>\d{12})\.jsonl$")
SCHEMA = ("""CREATE TABLE IF NOT EXISTS gptoss_audit (
        chain TEXT NOT NULL,
        seq BIGINT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (chain, seq))""",
          "CREATE INDEX IF NOT EXISTS gptoss_audit_at ON gptoss_audit (at)")


class AuditConfig(Section):
    """Where the audit log goes and what it keeps."""

    enabled: bool = doc(True, "write one record per request handled by a front door")
    dir: str | None = doc(None, "directory of the JSONL segments (None: $GPTOSS_AUDIT_DIR, else audit/ in the cache "
                                "directory, $GPTOSS_CACHE_DIR or ~/.cache/gptoss-serve); every front door writes its "
                                "own chain")
    max_bytes: int = doc(64 << 20, "a segment past this size is closed and a new one started", ge=4096)
    keep_segments: int = doc(100, "segments kept per front door (the oldest removed first; 0: keep all)", ge=0)
    dsn: str | None = doc(None, "PostgreSQL connection string: records go to its gptoss_audit table instead of "
                                "files (prefer dsn_env)")
    dsn_env: str | None = doc(None, "environment variable holding that connection string (the Helm chart sets it "
                                    "from a Secret)", min_length=1)
    include_text: bool = doc(False, "keep the prompt and the answer's text in each record (redacted)")
    redact_with: str | None = doc(None, "a regex filter (guards.filters) that redacts kept text (None: e-mail, phone "
                                        "and card numbers)")
    max_text_chars: int = doc(16384, "characters of prompt and of answer kept per record (the rest cut)", ge=0)
    flush_interval_s: float = doc(0.5, "how often records are written out", gt=0)

    @model_validator(mode="after")
    def _one_dsn(self) -> "AuditConfig":
        if self.dsn is not None and self.dsn_env is not None:
            raise ValueError("dsn and dsn_env are exclusive: give one PostgreSQL connection string")
        return self

    def database(self) -> str | None:
        if self.dsn_env is None:
            return self.dsn
        value = os.environ.get(self.dsn_env, "").strip()
        if not value:
            raise ConfigError(f"audit.dsn_env names {self.dsn_env!r}, which is not set")
        return value

    def directory(self) -> Path:
        if self.dir is not None:
            return Path(self.dir).expanduser()
        if os.environ.get("GPTOSS_AUDIT_DIR"):
            return Path(os.environ["GPTOSS_AUDIT_DIR"])
        return cache_root() / "audit"


def canonical(record: dict) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(record: dict) -> str:
    """The hash of a record: SHA-256 of its canonical JSON without `hash` (its `prev` included: the link)."""
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"}).encode()).hexdigest()


class AuditLog:
    """One front door's chain of records, written in the background."""

    def __init__(self, config: AuditConfig, chain: str, redact=None):
        self.config, self.redact = config, redact
        self.chain = re.sub(r"[^A-Za-z0-9_.-]", "-", chain)
        self.seq, self.prev = 0, GENESIS
        self.pending: list[dict] = []
        self.errors = 0  # records that could not be written
        dsn = config.database()
        self.sink = _Table(dsn) if dsn else _Files(config, self.chain)
        self._task: asyncio.Task | None = None

    def record(self, fields: dict) -> dict:
        """Chain and queue one record; returns it."""
        record = {"v": VERSION, "chain": self.chain, "seq": self.seq, "time": _iso(fields.pop("at", time.time())),
                  **fields, "prev": self.prev}
        record["hash"] = self.prev = digest(record)
        self.seq += 1
        self.pending.append(record)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())
        return record

    def text(self, text: str | None) -> str | None:
        """Text as the log keeps it: redacted and cut (None unless include_text)."""
        if text is None or not self.config.include_text:
            return None
        text = text[:self.config.max_text_chars]
        return self.redact(text) if self.redact is not None else text

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.flush_interval_s)
            await self.flush()

    async def flush(self) -> None:
        batch, self.pending = self.pending, []
        if not batch:
            return
        try:
            await asyncio.to_thread(self.sink.write, batch)
        except Exception as err:  # noqa: BLE001 - the audit log never fails a request
            self.errors += len(batch)
            log.error("audit: %d records could not be written: %r", len(batch), err)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        await self.flush()
        await asyncio.to_thread(self.sink.close)


class _Files:
    """Segments of one chain in a directory."""

    def __init__(self, config: AuditConfig, chain: str):
        self.dir, self.chain = config.directory(), chain
        self.max_bytes, self.keep = config.max_bytes, config.keep_segments
        self.path: Path | None = None

    def write(self, batch: list[dict]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for record in batch:
            if self.path is None or self.path.stat().st_size >= self.max_bytes:
                self._start(record["seq"])
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(canonical(record) + "\n")

    def _start(self, seq: int) -> None:
        self.path = self.dir / f"audit-{self.chain}-{seq:012d}.jsonl"
        self.path.touch(mode=0o600)
        segments = sorted(self.dir.glob(f"audit-{self.chain}-*.jsonl"))
        if self.keep and len(segments) > self.keep:
            for old in segments[:len(segments) - self.keep]:
                old.unlink(missing_ok=True)

    def close(self) -> None:
        pass


class AuditTable(Database):
    """The gptoss_audit table (PostgreSQL), through the response store's connection handling."""

    SCHEMA = SCHEMA
    LOCK_ID = 727275

    def write(self, batch: list[dict]) -> None:
        rows = [(r["chain"], r["seq"], time.time(), canonical(r)) for r in batch]
        self._transaction(lambda cur: cur.executemany(
            "INSERT INTO gptoss_audit (chain, seq, at, record) VALUES (?, ?, ?, ?)", rows))

    def read(self) -> list[tuple]:
        return self._transaction(lambda cur: (cur.execute(
            "SELECT chain, seq, record FROM gptoss_audit ORDER BY chain, seq"), cur.fetchall())[1])


class _Table:
    """The sink over an AuditTable: the table is created on the first write (from the writer's thread)."""

    def __init__(self, dsn: str):
        self.table, self.created = AuditTable(dsn=dsn), False

    def write(self, batch: list[dict]) -> None:
        if not self.created:
            self.table._transaction(lambda cur: [cur.execute(sql) for sql in SCHEMA])
            self.created = True
        self.table.write(batch)

    def close(self) -> None:
        self.table.close_sync()


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- verification ----------------------------------------------------------------------------------------------------


@dataclass
class Line:
    """A record as read back, with where it came from."""

    where: str  # "FILE:LINE" or "gptoss_audit chain/seq"
    record: dict | None  # None: the line is not a JSON object
    expected_seq: int | None = None  # a segment's first line: the seq its file name says


@dataclass
class Report:
    records: int
    chains: dict[str, tuple[int, str]]  # chain -> (last seq, last hash): the heads to anchor elsewhere
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def read_files(paths: list[Path]) -> list[Line]:
    """Every record of the given files and directories (their audit-*.jsonl segments), segment by segment."""
    files = []
    for path in paths:
        files += sorted(path.glob("audit-*.jsonl")) if path.is_dir() else [path]
    lines = []
    for file in sorted(files, key=_segment_key):
        named = _SEGMENT.match(file.name)
        for n, text in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            lines.append(Line(f"{file}:{n}", _parse(text), int(named["seq"]) if named and n == 1 else None))
    return lines


def read_database(dsn: str) -> list[Line]:
    table = AuditTable(dsn=dsn)
    try:
        rows = table.read()
    finally:
        table.close_sync()
    return [Line(f"gptoss_audit {chain}/{seq}", _parse(record)) for chain, seq, record in rows]


def verify_records(lines: list[Line]) -> Report:
    """Checks every chain: hashes, links and sequence numbers."""
    problems, heads = [], {}
    for line in lines:
        r = line.record
        if r is None or not {"chain", "seq", "prev", "hash"} <= set(r):
            problems.append(f"{line.where}: not an audit record")
            continue
        last = heads.get(r["chain"])
        if digest(r) != r["hash"]:
            problems.append(f"{line.where}: the record does not match its hash (edited)")
        if line.expected_seq is not None and r["seq"] != line.expected_seq:
            problems.append(f"{line.where}: the segment starts at seq {r['seq']}, its name says "
                            f"{line.expected_seq} (records removed)")
        if last is not None and (r["seq"] != last[0] + 1 or r["prev"] != last[1]):
            problems.append(f"{line.where}: seq {r['seq']} does not follow seq {last[0]} of chain {r['chain']} "
                            "(records removed or reordered)")
        elif last is None and r["seq"] == 0 and r["prev"] != GENESIS:
            problems.append(f"{line.where}: the chain's first record does not start from the genesis hash")
        heads[r["chain"]] = (r["seq"], r["hash"])
    return Report(len(lines), heads, problems)


def _parse(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _segment_key(path: Path) -> tuple:
    named = _SEGMENT.match(path.name)
    return (named["chain"], int(named["seq"])) if named else (path.name, 0)

