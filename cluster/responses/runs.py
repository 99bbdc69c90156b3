"""Background responses: run in the front door that took them, tracked in the store, followed from any front door.

Flow: `Runs.start` inserts the queued row (one statement) and starts a task in this process -> the task opens the
call through the front door (the caller's identity, `responses.background_timeout_s` as its deadline), marks the row
in_progress with a claim (`lease_until`) that a watcher renews every third of `background_lease_s`, and reads the
replica's items: events (kept in memory and written to the store in batches, when the request asked to stream)
and at the end the `ResponseRecord` -> the row's end (status, body, hidden tool results) is one UPDATE. Cancel: here,
the task is cancelled (closing the call aborts the engine request); from another front door, a flag in the store
that the watcher sees at its next renewal. Followers (the POST's own stream, GET ?stream=true&starting_after=N)
read the live events of a run in this process, or poll the store's event log elsewhere, until the response ends.
A run whose front door dies stops renewing: once its claim lapses any reader marks it failed.
"""

import asyncio
import logging
import time

from cluster.errors import ApiError
from cluster.output.openai import sse
from cluster.output.responses import ResponseRecord
from cluster.responses.store import RUNNING

log = logging.getLogger(__name__)
FLUSH_EVENTS, FLUSH_S = 64, 0.25  # a stream run's events reach the store in batches of this many, or this often
POLL_S = 0.2  # a follower in another front door reads the store's event log this often


def initial_body(greq, status: str) -> dict:
    """The response object before any output (queued, in_progress, or ended early)."""
    return {"id": greq.request_id, "object": "response", "created_at": greq.created or int(time.time()),
            "status": status, "model": greq.model, "output": [], "error": None, "incomplete_details": None,
            **greq.echo, "reasoning": {"effort": greq.reasoning_effort, "summary": None}, "usage": None}


def failed_body(body: dict, message: str, code: str = "server_error") -> dict:
    return {**body, "status": "failed", "error": {"code": code, "message": message}}


class Run:
    """One background response running in this process."""

    def __init__(self, record, greq, stream: bool):
        self.record, self.greq, self.stream = record, greq, stream
        self.frames: list[str] = []  # every event so far (stream runs), sequence number = index
        self.persisted = 0  # frames already in the store
        self.tail: list[str] = []  # the closing event(s), shown only once the store holds the response's end
        self.flushed_at = time.monotonic()
        self.done = asyncio.Event()
        self._changed = asyncio.Event()
        self.task: asyncio.Task | None = None

    def add(self, frame: str) -> None:
        self.frames.append(frame)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        await self._changed.wait()

    def end(self) -> None:
        self.done.set()
        self._wake()

    async def flush(self, store, force: bool = False) -> None:
        pending = len(self.frames) - self.persisted
        if pending and (force or pending >= FLUSH_EVENTS or time.monotonic() - self.flushed_at > FLUSH_S):
            frames = self.frames[self.persisted:]
            await store.append_events(self.record.id, self.persisted, frames)
            self.persisted += len(frames)
            self.flushed_at = time.monotonic()


class Runs:
    def __init__(self, service):
        self.service = service
        self.running: dict[str, Run] = {}

    def live(self, response_id: str) -> bool:
        return response_id in self.running

    async def start(self, greq, record, stream: bool):
        store = await self.service.store()
        await store.insert(record)
        run = Run(record, greq, stream)
        self.running[record.id] = run
        run.task = asyncio.get_running_loop().create_task(self._run(run))
        return self._live(run, -1) if stream else record.body

    async def _run(self, run: Run) -> None:
        service, greq = self.service, run.greq
        settings, store = service.settings, await service.store()
        status, body, hidden, call = "failed", run.record.body, {}, None
        watcher = asyncio.get_running_loop().create_task(self._watch(run, store, settings.background_lease_s))
        try:
            call = await service.door.open(greq, None, run.record.owner, limit=settings.background_timeout_s)
            body = {**body, "status": "in_progress"}
            await store.set_running(run.record.id, body, time.time() + settings.background_lease_s)
            status, body, hidden = await self._consume(run, call, store, body)
        except asyncio.CancelledError:
            status, body = "cancelled", {**body, "status": "cancelled"}
        except ApiError as err:
            status, body = "failed", failed_body(body, err.message, err.code or err.type)
            self._failed_event(run, body)
        except Exception as err:  # noqa: BLE001 - recorded as the response's failure
            log.exception("background response %s failed", run.record.id)
            status, body = "failed", failed_body(body, f"Internal server error ({type(err).__name__}).")
            self._failed_event(run, body)
        finally:
            watcher.cancel()
            await self._end(run, call, store, status, body, hidden)

    async def _consume(self, run: Run, call, store, body: dict) -> tuple[str, dict, dict]:
        result = None
        async for item in call:
            if isinstance(item, ResponseRecord):
                result = item
            elif isinstance(item, ApiError):
                raise item
            elif run.stream and isinstance(item, str) and result is not None:
                run.tail.append(item)  # response.completed: after the store has the end
            elif run.stream and isinstance(item, str):
                run.add(item)
                await run.flush(store)
        if result is None:
            raise ApiError(500, "the replica ended the response without its result", "server_error")
        return result.body["status"], result.body, result.hidden

    def _failed_event(self, run: Run, body: dict) -> None:
        if run.stream:
            run.tail = [sse({"type": "response.failed", "sequence_number": len(run.frames), "response": body},
                            event="response.failed")]

    async def _end(self, run: Run, call, store, status: str, body: dict, hidden: dict) -> None:
        try:
            if call is not None:
                await call.close()
            frames = run.frames[run.persisted:] + run.tail
            await store.finish(run.record.id, status, body, hidden, run.persisted, frames)
            run.persisted += len(frames)
        except Exception as err:  # noqa: BLE001 - its claim lapses and readers mark it failed
            log.error("background response %s could not be recorded as %s: %r", run.record.id, status, err)
        finally:
            self.running.pop(run.record.id, None)
            run.frames += run.tail
            run.end()

    async def _watch(self, run: Run, store, lease: float) -> None:
        """Renews the run's claim; a cancel asked for elsewhere (or the row deleted) cancels the run."""
        while True:
            await asyncio.sleep(lease / 3)
            try:
                going = await store.renew(run.record.id, time.time() + lease)
            except Exception as err:  # noqa: BLE001 - a store hiccup: try again at the next renewal
                log.warning("renewing background response %s failed: %r", run.record.id, err)
                continue
            if not going:
                run.task.cancel()
                return

    # ---- cancel ----
    async def cancel_local(self, response_id: str) -> None:
        run = self.running.get(response_id)
        if run is not None:
            run.task.cancel()
            await asyncio.shield(run.done.wait())

    async def cancel(self, r) -> dict:
        store = await self.service.store()
        if r.id in self.running:
            await self.cancel_local(r.id)
        else:
            await store.request_cancel(r.id, r.owner)
            end = time.monotonic() + self.service.settings.background_lease_s + 5
            while time.monotonic() < end:
                current = await self.service.get(r.id, r.owner)
                if current.status not in RUNNING:
                    return current.body
                await asyncio.sleep(POLL_S)
        return (await self.service.get(r.id, r.owner)).body

    # ---- following ----
    def follow(self, r, after: int):
        run = self.running.get(r.id)
        return self._live(run, after) if run is not None else self._poll(r, after)

    async def _live(self, run: Run, after: int):
        while True:
            frames = run.frames[after + 1:]
            for frame in frames:
                yield frame
            after += len(frames)
            if run.done.is_set() and after + 1 >= len(run.frames):
                return
            await run.changed()

    async def _poll(self, r, after: int):
        store = await self.service.store()
        while True:
            events = await store.events(r.id, after)
            for seq, frame in events:
                yield frame
                after = seq
            if events:
                continue
            if (await self.service.get(r.id, r.owner)).status not in RUNNING:
                for seq, frame in await store.events(r.id, after):  # written just before it ended
                    yield frame
                return
            await asyncio.sleep(POLL_S)
