"""One engine for all requests: a background thread steps it while there is work, and hands each
step's deltas to the asyncio loop, which routes them to per-request queues.

The engine's `add_request` and `abort` are thread-safe and cheap (they only queue), so handlers
call them directly; only `step()` runs on the engine thread. A handler that stops listening
(client gone) aborts, and the engine frees the slot on its next step.
"""
from __future__ import annotations

import asyncio
import logging
import threading

log = logging.getLogger("phi4r.server")


class EngineFailure(RuntimeError):
    """A request's engine work failed: the engine ended it with finish_reason "error" (that request
    alone), or, should `step()` itself ever raise, every request in flight ends with this error."""


class EngineRunner:
    def __init__(self, engine):
        self.engine = engine
        self._queues: dict[str, asyncio.Queue] = {}  # engine request id -> its handler's queue
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="phi4r-engine", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def abort_all(self) -> None:
        """End every request in flight; each gets its final "abort" delta on the next step."""
        for request_id in list(self._queues):
            self.engine.abort(request_id)

    def stop(self, timeout: float = 10.0) -> None:
        """Abort whatever is still in flight and end the engine thread."""
        self.abort_all()
        self._stopping.set()  # the thread sees it within wait_for_requests' timeout
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- called on the event loop
    def submit(self, requests: list[tuple[str, list[int], object, str | None]]) -> asyncio.Queue:
        """Add engine requests (id, prompt ids, SamplingParams, prompt text) whose deltas all go to
        one queue. If the engine refuses one, the ones already added are aborted and the error raised."""
        queue: asyncio.Queue = asyncio.Queue()
        added = []
        try:
            for request_id, prompt_ids, params, prompt in requests:
                self._queues[request_id] = queue  # before add_request: no delta can arrive unrouted
                self.engine.add_request(request_id, prompt_ids, params, prompt=prompt)
                added.append(request_id)
        except BaseException:
            self.release([r[0] for r in requests], abort=added)
            raise
        return queue

    def release(self, request_ids, abort=()) -> None:
        """Stop routing `request_ids`; abort those in `abort` (the engine ignores finished ones)."""
        for request_id in request_ids:
            self._queues.pop(request_id, None)
        for request_id in abort:
            self.engine.abort(request_id)

    # ---- the engine thread
    def _run(self) -> None:
        while not self._stopping.is_set():
            if not self.engine.wait_for_requests(timeout=0.5):
                continue
            try:
                deltas = self.engine.step()
            except Exception as e:  # a bug or out-of-memory: fail the requests, keep serving
                log.exception("engine step failed")
                self._loop.call_soon_threadsafe(self._fail_all, EngineFailure(f"engine error: {e}"))
                continue
            if deltas:
                self._loop.call_soon_threadsafe(self._route, deltas)

    def _route(self, deltas) -> None:
        for delta in deltas:
            queue = self._queues.get(delta.request_id)
            if queue is not None:
                queue.put_nowait(delta)

    def _fail_all(self, error: Exception) -> None:
        for request_id, queue in list(self._queues.items()):
            queue.put_nowait(error)
            self.engine.abort(request_id)
