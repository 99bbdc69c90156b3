"""A python session in a bubblewrap sandbox: no network, a read-only system, a private scratch directory, limits.

Flow: `Session.start()` runs `bwrap` (as an unprivileged uid when the server is root, so the kernel's per-user
process limit applies) with every namespace unshared (network: only a down loopback; pid: the session's own
processes; user, ipc, uts, cgroup), `/usr` bound read-only (the interpreter and its standard library; nothing of
the server's files, home or environment), a fresh /proc and /dev, size-limited tmpfs at /mnt/data (the scratch
directory, also the working directory) and /tmp, the root remounted read-only, an empty environment -> the kernel
(cluster/tools/kernel.py) sets RLIMIT_AS / NPROC / CPU / FSIZE / NOFILE / CORE inside -> `run(code)` writes a cell,
reads the merged stdout/stderr until the kernel's marker, keeping `max_output_bytes` (the rest is counted and dropped)
-> past `timeout_s` (an endless loop, a fork bomb) the whole sandbox is killed: the process group outside, and with
it the pid namespace inside. A session that died (killed, out of CPU time, os._exit) says so; the next call starts a
fresh one.
"""

import asyncio
import inspect
import json
import os
import secrets
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

from cluster.tools import kernel

INTERPRETERS = ("/usr/local/bin/python3", "/usr/bin/python3")
READ_CHUNK = 1 << 16


@dataclass
class CellResult:
    output: str  # stdout and stderr as written, at most max_output_bytes
    ok: bool  # the cell ran without an exception
    dropped: int = 0  # output bytes past the limit, counted and dropped
    stopped: str | None = None  # why the session ended during this cell (timeout, died); None: it lives on


def interpreter(configured: str | None) -> str | None:
    """The sandbox's python (it must live under /usr, the only tree the sandbox sees)."""
    for path in ([configured] if configured else INTERPRETERS):
        if path and path.startswith("/usr/") and os.access(path, os.X_OK):
            return path
    return None


def bwrap_command(config, python: str, marker: str) -> list[str]:
    limits = {"RLIMIT_AS": config.memory_bytes, "RLIMIT_NPROC": config.max_processes, "RLIMIT_CPU": config.cpu_s,
              "RLIMIT_FSIZE": config.scratch_bytes, "RLIMIT_NOFILE": 256, "RLIMIT_CORE": 0}
    size = str(config.scratch_bytes)
    links = [arg for name in ("bin", "lib", "lib64", "lib32", "sbin") if Path(f"/usr/{name}").exists()
             for arg in ("--symlink", f"usr/{name}", f"/{name}")]
    return ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr", *links,
            "--proc", "/proc", "--dev", "/dev", "--size", size, "--tmpfs", "/tmp", "--dir", "/mnt",
            "--size", size, "--tmpfs", "/mnt/data", "--remount-ro", "/", "--chdir", "/mnt/data", "--clearenv",
            "--setenv", "HOME", "/mnt/data", "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin",
            "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONUNBUFFERED", "1", "--setenv", "MPLBACKEND", "Agg",
            "--", python, "-I", "-c", _KERNEL, json.dumps(limits), marker]


_KERNEL = inspect.getsource(kernel)


def _as_sandbox_user(config) -> list[str]:
    """Run bwrap as an unprivileged uid when the server is root (root is exempt from RLIMIT_NPROC); setpriv (Debian's
    util-linux) rather than the event loop's own user switch, which uvloop (Ray's loop) does not offer."""
    if os.geteuid() != 0:
        return []
    uid = str(config.sandbox_uid)
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]


class Session:
    """One live python kernel in its sandbox."""

    def __init__(self, config, python: str):
        self.config, self.python = config, python
        self.marker = secrets.token_hex(16)
        self.proc: asyncio.subprocess.Process | None = None
        self.lock = asyncio.Lock()  # one cell at a time
        self.last_used = 0.0
        self.cells = 0  # cells run in this session

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *_as_sandbox_user(self.config), *bwrap_command(self.config, self.python, self.marker),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, env={"PATH": "/usr/bin:/bin"})

    async def run(self, code: str) -> CellResult:
        """Runs one cell (the caller holds `lock`)."""
        self.cells += 1
        try:
            self.proc.stdin.write((json.dumps({"code": code}) + "\n").encode())
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the kernel is gone; reading says how
        reader = _Reader(self.config.max_output_bytes, f"\0{self.marker}:".encode())
        try:
            ok = await asyncio.wait_for(reader.read(self.proc.stdout), self.config.timeout_s)
        except TimeoutError:
            await self.stop()
            return CellResult(reader.text(), False, reader.dropped,
                              f"the code ran past the {self.config.timeout_s:g} s limit")
        except BaseException:  # the response was cancelled mid-cell: the cell must not run on unseen
            await asyncio.shield(self.stop())
            raise
        if ok is None:  # end of output: the kernel died
            code = await self.proc.wait()
            await self.stop()
            return CellResult(reader.text(), False, reader.dropped, _death(code, self.config))
        return CellResult(reader.text(), ok, reader.dropped)

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # bwrap and, with its pid namespace, everything inside
            except ProcessLookupError:
                pass
        await proc.wait()


class _Reader:
    """Reads a cell's output up to the kernel's marker, keeping at most `limit` bytes."""

    def __init__(self, limit: int, marker: bytes):
        self.limit, self.marker = limit, marker
        self.kept, self.dropped = bytearray(), 0
        self._tail = b""  # the end of what was read, in case the marker spans two chunks

    async def read(self, stream) -> bool | None:
        """True/False: the cell ended (without / with an exception); None: the output ended (the kernel died)."""
        while True:
            chunk = await stream.read(READ_CHUNK)
            if not chunk:
                self._keep(self._tail)
                return None
            data = self._tail + chunk
            at = data.find(self.marker)
            if at >= 0:
                self._keep(data[:at])
                return data[at + len(self.marker):].startswith(b"ok")
            cut = max(0, len(data) - len(self.marker) - 8)
            self._keep(data[:cut])
            self._tail = data[cut:]

    def _keep(self, data: bytes) -> None:
        room = self.limit - len(self.kept)
        self.kept += data[:max(0, room)]
        self.dropped += max(0, len(data) - max(0, room))

    def text(self) -> str:
        return self.kept.decode("utf-8", "replace")


def _death(code: int, config) -> str:
    if code in (-signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGXCPU, 128 + signal.SIGKILL):
        return f"the session was stopped (signal; its CPU time limit is {config.cpu_s} s in all)"
    return f"the python session ended (exit status {code})"


async def probe(config) -> str | None:
    """Why sandboxes cannot run on this node (None: they can): bwrap missing, namespaces refused, no interpreter."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed on this node (apt-get install bubblewrap)"
    python = interpreter(config.interpreter)
    if python is None:
        return f"no python interpreter under /usr ({config.interpreter or ' or '.join(INTERPRETERS)})"
    session = Session(config, python)
    try:
        await session.start()
        result = await session.run("print(6 * 7)")
    except (OSError, ValueError) as err:
        return f"bubblewrap cannot start: {err}"
    finally:
        await session.stop()
    if result.output.strip() != "42":
        return f"the sandbox does not run here: {result.output.strip()[:300] or result.stopped}"
    return None
