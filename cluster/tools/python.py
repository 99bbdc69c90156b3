"""The python tool: a sandboxed session per conversation, kept in the replica while it is used.

Flow: `run(conversation, code, earlier)` -> the conversation's live session (a request's conversation is its first
response's id, so a chain of previous_response_id turns shares one; prefix-affinity routing sends those turns to the
same replica) or a new one (the least recently used is stopped past `max_sessions`; sessions idle past
`idle_timeout_s` are stopped) -> `Session.run` in the sandbox (cluster/tools/sandbox.py) -> a `ToolResult`: the
output as the model reads it (with the dropped bytes and a stopped session said plainly), and the item's `outputs`.
A conversation that used python before but whose session is gone (another replica, a restart, idle) gets a fresh
session and the model is told so. Whether sandboxes run on this node is probed once (`unavailable`).
"""

import asyncio
import time
from collections import OrderedDict

from cluster.tools.result import ToolResult
from cluster.tools.sandbox import Session, interpreter, probe

FRESH = "[a new python session was started: variables and files of earlier calls are gone]\n"
_UNPROBED = object()


class PythonTool:
    def __init__(self, config):
        self.config = config
        self.sessions: OrderedDict[str, Session] = OrderedDict()  # conversation -> session, least recent first
        self._why_not = _UNPROBED
        self._probe_lock = asyncio.Lock()

    async def unavailable(self) -> str | None:
        """Why the tool cannot run here (None: it can)."""
        if not self.config.enabled:
            return "the python tool is not enabled on this server (tools.python.enabled)"
        async with self._probe_lock:
            if self._why_not is _UNPROBED:
                self._why_not = await probe(self.config)
        return self._why_not

    async def run(self, conversation: str, code: str, earlier: bool) -> ToolResult:
        session, fresh = await self._session(conversation)
        async with session.lock:
            result = await session.run(code)
            session.last_used = time.monotonic()
        if result.stopped is not None:
            self.sessions.pop(conversation, None)
        text = (FRESH if fresh and earlier else "") + result.output
        if result.dropped:
            text += f"\n[{result.dropped} more bytes of output dropped: the limit is {self.config.max_output_bytes}]"
        if result.stopped is not None:
            text += f"\nerror: {result.stopped}; the python session was stopped and its state is lost"
        return ToolResult(text, result.stopped is not None, {"outputs": [{"type": "logs", "logs": text}]})

    async def _session(self, conversation: str) -> tuple[Session, bool]:
        await self._reap()
        session = self.sessions.get(conversation)
        if session is not None and session.alive:
            self.sessions.move_to_end(conversation)
            return session, False
        while len(self.sessions) >= self.config.max_sessions:
            _, oldest = self.sessions.popitem(last=False)
            await oldest.stop()
        session = Session(self.config, interpreter(self.config.interpreter))
        session.last_used = time.monotonic()
        await session.start()
        self.sessions[conversation] = session
        return session, True

    async def _reap(self) -> None:
        now = time.monotonic()
        for key, session in list(self.sessions.items()):
            if not session.lock.locked() and (now - session.last_used > self.config.idle_timeout_s
                                              or not session.alive):
                self.sessions.pop(key, None)
                await session.stop()

    async def close(self) -> None:
        for session in list(self.sessions.values()):
            await session.stop()
        self.sessions.clear()
