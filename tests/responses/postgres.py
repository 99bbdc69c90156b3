"""A real PostgreSQL 15 for tests: a fresh cluster in a temp dir (initdb), started on a free port, stopped after."""

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

BIN = Path("/usr/lib/postgresql/15/bin")


def available() -> bool:
    return (BIN / "initdb").exists() and (BIN / "pg_ctl").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_user():
    """initdb and postgres refuse root: run them as the postgres (or nobody) user."""
    if os.geteuid() != 0:
        return None, None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
        except KeyError:
            continue
    raise RuntimeError("running as root and no postgres or nobody user to run PostgreSQL as")


@contextlib.contextmanager
def postgres_server():
    """Yields a DSN (postgresql://postgres@127.0.0.1:PORT/postgres); stops the server and removes its files after."""
    root = Path(tempfile.mkdtemp(prefix="gptoss-pg-"))
    uid, gid = _as_user()
    if uid is not None:
        os.chown(root, uid, gid)
    data, port = root / "data", _free_port()
    run = dict(user=uid, group=gid, check=True, capture_output=True, timeout=120) if uid is not None else \
        dict(check=True, capture_output=True, timeout=120)
    try:
        subprocess.run([BIN / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
                       **run)
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run([BIN / "pg_ctl", "-D", data, "-o", options, "-l", root / "log", "-w", "start"], **run)
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run([BIN / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"], **{**run, "check": False})
    finally:
        shutil.rmtree(root, ignore_errors=True)
