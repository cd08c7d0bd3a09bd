"""A request in flight: its engine requests, admission against the queue limit, and the deltas.

Sequences are what the engine schedules (a request with n=4 is four), so admission counts them:
at most max_num_seqs running plus `max_queue` waiting; beyond that the server answers 429, unless
the request alone needs more than that: it could never be admitted, so it is a 400 (not worth a retry).
"""
from __future__ import annotations

import time
import uuid

from ..engine import ContextLengthError
from ..sampling import SamplingParams
from .errors import APIError
from .metrics import Metrics
from .runner import EngineFailure, EngineRunner

RETRY_AFTER_SECONDS = 1


class Admission:
    def __init__(self, engine, max_queue: int):
        self.engine, self.max_queue = engine, max_queue
        self.outstanding = 0  # sequences accepted and not yet finished (touched on the event loop only)

    @property
    def running(self) -> int:
        return self.engine.num_running()

    @property
    def waiting(self) -> int:
        return max(0, self.outstanding - self.running)

    def take(self, seqs: int, param: str) -> None:
        capacity = self.engine.max_num_seqs + self.max_queue
        if seqs > capacity:
            raise APIError(400, f"this request needs {seqs} sequences (prompts x n) but the server holds at most "
                                f"{capacity} ({self.engine.max_num_seqs} running + {self.max_queue} queued); "
                                "send fewer at a time", param=param, code="too_many_sequences")
        if self.outstanding + seqs > capacity:
            raise APIError(429, f"the server is at capacity ({self.engine.max_num_seqs} running, "
                                f"{self.max_queue} queued sequences); retry shortly", code="queue_full",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        self.outstanding += seqs

    def give_back(self, seqs: int) -> None:
        self.outstanding -= seqs


class Job:
    """One HTTP request's engine requests (one per prompt, each with n samples)."""

    def __init__(self, runner: EngineRunner, admission: Admission, metrics: Metrics, prefix: str,
                 prompts: list[tuple[str | None, list[int]]], params: SamplingParams, param_name: str):
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.start = time.perf_counter()
        self.runner, self.admission, self.metrics = runner, admission, metrics
        self.n = params.n
        self.engine_ids = [f"{self.id}-{i}" for i in range(len(prompts))]
        self.prompt_tokens = sum(len(ids) for _, ids in prompts)
        self.seqs = len(prompts) * params.n
        self.finished: dict[str, object] = {}  # engine id -> RequestOutput
        self._first_token = False
        self._closed = False
        self.failed = False  # the engine ended one of its requests with an error
        admission.take(self.seqs, "n" if len(prompts) == 1 else param_name)
        try:
            self.queue = runner.submit([(rid, ids, params, text) for rid, (text, ids) in zip(self.engine_ids, prompts)])
        except BaseException as e:
            admission.give_back(self.seqs)
            if isinstance(e, ContextLengthError):
                raise APIError(400, str(e), param=param_name, code="context_length_exceeded") from e
            if isinstance(e, ValueError):
                raise APIError(400, str(e), param=param_name, code="invalid_value") from e
            raise

    def choice_index(self, delta) -> int:
        """Choices are numbered prompt-major: prompt i's sample j is i * n + j (OpenAI's order)."""
        return self.engine_ids.index(delta.request_id) * self.n + delta.index

    async def deltas(self):
        """Every delta until all engine requests are finished."""
        while len(self.finished) < len(self.engine_ids):
            delta = await self.queue.get()
            if isinstance(delta, EngineFailure):
                raise delta
            if delta.finish_reason == "error":  # the engine failed this request alone (see engine.py)
                self.failed = True
                raise EngineFailure(f"engine error while serving this request: {delta.output.error}")
            if not self._first_token and delta.token_ids:
                self._first_token = True
                self.metrics.first_token(time.perf_counter() - self.start)
            if delta.request is not None:
                self.finished[delta.request_id] = delta.request
            yield delta

    def outputs(self) -> list:
        """All CompletionOutputs in choice order (once finished)."""
        return [o for rid in self.engine_ids for o in self.finished[rid].outputs]

    def usage(self, reasoning: bool) -> dict:
        outputs = self.outputs()
        completion = sum(len(o.token_ids) for o in outputs)
        usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                 "total_tokens": self.prompt_tokens + completion}
        if reasoning:
            usage["completion_tokens_details"] = {"reasoning_tokens": sum(o.reasoning_tokens for o in outputs)}
        return usage

    def close(self) -> None:
        """Free everything: called when the response is done or the client has gone. Aborting an
        unfinished request frees its engine slots on the next step."""
        if self._closed:
            return
        self._closed = True
        unfinished = [rid for rid in self.engine_ids if rid not in self.finished]
        self.runner.release(self.engine_ids, abort=unfinished)
        self.admission.give_back(self.seqs)
        outputs = [o for rid in self.engine_ids if rid in self.finished for o in self.finished[rid].outputs]
        cut = "error" if self.failed else "abort"  # how the unfinished ones ended
        self.metrics.tokens(self.prompt_tokens, sum(len(o.token_ids) for o in outputs),
                            sum(o.reasoning_tokens for o in outputs),
                            [o.finish_reason for o in outputs] + [cut] * (len(unfinished) * self.n))
