"""Continuous batching over a preallocated KV cache: many requests, one batched forward per token.

    engine = Engine(model, tokenizer, max_num_seqs=16)
    engine.add_request("a", tokenizer.encode_chat(messages), SamplingParams(max_tokens=256))
    while engine.has_unfinished():
        for delta in engine.step():           # text/reasoning/content deltas per sample
            ...

Each `step()` admits waiting requests into free cache slots (one prefill per request; its n
samples copy that prefill into their own slots), then feeds every running sample's last token in ONE
forward (positions differ per row), samples the next tokens, applies the stop rules, and frees the
slots of finished samples for the next waiting request.

Faults stay with their request: an exception while serving one request (prefill, sampling, stop
rules, detokenizing) ends that request alone with finish_reason "error" (the message in
`CompletionOutput.error`) and frees its slots; a batched forward or sampling step that raises is
retried row by row, so only the requests that fail alone fail. `step()` itself does not raise.

Threads: `add_request`, `abort` and `wait_for_requests` may be called from any thread; `step()` is
driven by one thread at a time (the server's engine thread, or `LLM` itself).
"""
from __future__ import annotations

import itertools
import logging
import os
import random
import threading
import time
import types
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .kernels import attention as attention_kernel
from .kernels import build as kernel_build
from .model import KVCache
from .reasoning import THINK_END, ReasoningStream, partial_suffix, split_reasoning
from .sampling import LoopGuard, SamplingParams, sample

log = logging.getLogger(__name__)

# Text forced after the budget's </think>: the answer then starts the way Phi-4-reasoning writes it.
BUDGET_BRIDGE = "\n\n"


class ContextLengthError(ValueError):
    """A prompt does not fit the context (the server answers 400)."""


@dataclass
class CompletionOutput:
    """One sample of a request. reasoning/content split `text` at the last `</think>` (reasoning.py);
    reasoning_tokens counts the tokens up to and including the last `</think>` token (all of them
    when there is none), content_tokens the rest; together they are len(token_ids)."""
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    reasoning: str | None = None
    content: str | None = None
    finish_reason: str | None = None  # "stop" | "length" | "repetition" | "abort" | "error"
    stop_reason: int | str | None = None  # the stop string or stop_token_ids entry that ended it
    reasoning_tokens: int = 0
    content_tokens: int = 0
    thinking_budget_reached: bool = False  # the engine closed the reasoning with a forced </think>
    error: str | None = None  # finish_reason "error": what failed while serving this request

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None

    @property
    def time_to_first_token(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def latency(self) -> float | None:
        return None if self.finished_time is None else self.finished_time - self.arrival_time


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    metrics: RequestMetrics
    finished: bool = False

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_generated_tokens(self) -> int:
        return sum(len(o.token_ids) for o in self.outputs)


@dataclass
class Delta:
    """What one step added to one sample. Content streams as soon as it follows a `</think>`; if a
    later `</think>` shows it was reasoning, a delta's `reclassified` says how many characters of the
    content streamed so far (all of it) move to the reasoning, after a `</think>`, BEFORE its own
    reasoning and content are appended (reasoning.py; `reasoning.StreamedSplit` does this). So the
    deltas of a sample concatenate, corrections applied, to its final text, reasoning and content.
    reasoning_tokens / content_tokens: the sample's tokens so far, split at its last `</think>` so far
    (on the last delta, the output's own counts). `output` is set on the sample's last delta,
    `request` on the delta that finishes the whole request."""
    request_id: str
    index: int
    text: str = ""
    reasoning: str = ""
    content: str = ""
    reclassified: int = 0
    reasoning_tokens: int = 0
    content_tokens: int = 0
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    output: CompletionOutput | None = None
    request: RequestOutput | None = None


class _Detokenizer:
    """Incremental decode that never emits a broken character: decode a short window of recent ids
    twice and emit the new suffix only when it does not end in U+FFFD (vLLM's method)."""

    def __init__(self, tokenizer):
        self.decode = tokenizer.decode
        self.ids: list[int] = []
        self.prefix = self.read = 0

    def add(self, token: int) -> str:
        self.ids.append(token)
        return self.flush(final=False)

    def flush(self, final: bool) -> str:
        if self.read == len(self.ids):
            return ""
        before = self.decode(self.ids[self.prefix:self.read])
        after = self.decode(self.ids[self.prefix:])
        if after.endswith("\ufffd") and not final:
            return ""  # an incomplete character: wait for its next bytes
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before):]


class _StopStrings:
    """Cuts the text before the first stop string; holds back a tail that may begin one, so streamed
    text never has to be taken back."""

    def __init__(self, stops: list[str], include: bool):
        self.stops, self.include = stops, include
        self.held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """(text safe to emit, the stop string if one was found)."""
        if not self.stops:
            return text, None
        held = self.held + text
        hits = [(i, s) for s in self.stops if (i := held.find(s)) >= 0]
        if hits:
            i, stop = min(hits)
            self.held = ""
            return held[:i] + (stop if self.include else ""), stop
        keep = max(partial_suffix(held, s) for s in self.stops)
        self.held = held[len(held) - keep:]
        return held[:len(held) - keep], None

    def flush(self) -> str:
        text, self.held = self.held, ""
        return text


class _LoopDetector:
    """Per period p, the length of the current run of tokens equal to the token p before them."""

    def __init__(self, guard: LoopGuard):
        self.guard = guard
        self.runs = [0] * guard.max_period

    def looping(self, tokens: list[int]) -> bool:
        n, last, g = len(tokens), tokens[-1], self.guard
        self.runs = [r + 1 if p < n and tokens[-1 - p] == last else 0 for p, r in enumerate(self.runs, 1)]
        # A run of r matches at period p means the last r + p tokens repeat a p-token cycle.
        return any(r + p >= g.min_span and r + p >= g.min_repeats * p for p, r in enumerate(self.runs, 1))


class _Request:
    def __init__(self, request_id, prompt_ids, params, prompt):
        self.id, self.prompt_ids, self.params = request_id, prompt_ids, params
        self.output = RequestOutput(request_id, prompt, prompt_ids,
                                    [CompletionOutput(i) for i in range(params.n)], RequestMetrics(time.time()))
        self.samples: list[_Sample] = []


class _Sample:
    def __init__(self, engine: Engine, request: _Request, index: int, slot: int, rng: random.Random):
        params = request.params
        self.request, self.index, self.slot, self.rng = request, index, slot, rng
        self.params = params
        self.out = request.output.outputs[index]
        self.tokens = self.out.token_ids
        self.max_tokens = min(params.max_tokens or engine.max_model_len, engine.max_model_len - len(request.prompt_ids))
        self.stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else engine.stop_ids)
        self.detok = _Detokenizer(engine.tokenizer)
        self.stops = _StopStrings(params.stop, params.include_stop_str_in_output)
        self.reasoning = ReasoningStream(eager=True)
        self.loops = _LoopDetector(params.loop_guard) if params.loop_guard else None
        self.thinking = True  # no </think> yet: every token so far is reasoning
        self.last_think_end = 0  # tokens up to the last </think> (0: none yet)
        # Tokens to append next instead of sampling: the budget's </think> (at once for a budget of 0).
        self.forced: deque[int] = deque(engine.think_end + engine.bridge if params.thinking_budget == 0 else ())
        self.out.thinking_budget_reached = params.thinking_budget == 0

    @property
    def position(self) -> int:
        """Cache position of the last token, the one the next forward feeds."""
        return len(self.request.prompt_ids) + len(self.tokens) - 1


class Engine:
    def __init__(self, model, tokenizer, max_num_seqs: int = 16, max_model_len: int | None = None,
                 generation_config: dict | None = None, seed: int | None = None, compile: bool | None = None):
        """compile: run decode steps through `torch.compile` of `model.decode` (inductor; the first
        step at a new batch size or cache size compiles, then steps reuse it); None reads PHI4R_COMPILE=1.
        Prefill stays eager. If compiling or a compiled step fails, the engine logs one warning and
        continues eagerly."""
        self.model, self.tokenizer = model, tokenizer
        if compile is None:
            compile = os.environ.get("PHI4R_COMPILE", "0") == "1"
        # The engine alone chooses the model's decode attention (an argument of model.forward/decode): the
        # kernel where it applies once its build is ready, else the torch reference, asked every step
        # (attention_kernel.choose) so that a build finishing mid-run is picked up; nothing waits for it. A
        # compiled step keeps what was chosen when it was traced, so compiling waits for the builds (bounded).
        self._kernel_args = (model.dtype, model.config.head_dim, model.device)
        if attention_kernel.supports(*self._kernel_args):
            attention_kernel.prepare()
        if compile and model.device.type == "cpu":
            kernel_build.wait_for_builds()
        attention = attention_kernel.choose(*self._kernel_args, compiled=True)
        self._compiled = _compile_decode(model, attention) if compile else None
        self.config = model.config
        self.max_num_seqs = max_num_seqs
        limit = self.config.max_position_embeddings
        if max_model_len is not None and max_model_len > limit:
            raise ValueError(f"max_model_len={max_model_len} exceeds the model's max_position_embeddings={limit}")
        self.max_model_len = max_model_len or limit
        self.generation_config = generation_config or {}
        self.stop_ids = set(tokenizer.stop_ids)
        end = tokenizer.think_end_id
        self.think_end = [end] if end is not None else tokenizer.encode(THINK_END)
        self.bridge = tokenizer.encode(BUDGET_BRIDGE)
        self._seeds = random.Random(seed)  # seeds of unseeded requests: reproducible under LLM(seed=...)
        self._ids = itertools.count()
        # The cache grows (doubling) up to max_model_len as sequences need it, so a long context costs
        # memory only when it is used.
        self.cache: KVCache | None = None
        self.free_slots = list(range(max_num_seqs))
        self.waiting: deque[_Request] = deque()
        self.running: list[_Sample] = []
        self.requests: dict[str, _Request] = {}
        self._inbox: list[_Request] = []
        self._aborts: list[str] = []
        self._lock = threading.Lock()
        self._wakeup = threading.Event()

    # ---- called from any thread
    def add_request(self, request_id: str | None, prompt_token_ids: list[int], params: SamplingParams | None = None,
                    prompt: str | None = None) -> str:
        """Queue a request; returns its id. Raises ContextLengthError / ValueError for a request that
        can never run (too long, empty, n > max_num_seqs, duplicate id, a non-finite or out-of-range
        sampling value, even one set on `params` after it was made)."""
        params = (params or SamplingParams()).resolved(self.generation_config)
        prompt_token_ids = list(prompt_token_ids)
        if not prompt_token_ids:
            raise ValueError("the prompt is empty (it needs at least one token)")
        if len(prompt_token_ids) >= self.max_model_len:
            raise ContextLengthError(
                f"the prompt has {len(prompt_token_ids)} tokens but the context (max_model_len) is "
                f"{self.max_model_len} tokens; the prompt must be shorter to leave room for an answer")
        if params.n > self.max_num_seqs:
            raise ValueError(f"n={params.n} samples exceed max_num_seqs={self.max_num_seqs}")
        vocab = self.config.vocab_size
        if not all(0 <= t < vocab for t in prompt_token_ids):
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        with self._lock:
            if request_id is None:
                request_id = f"req-{next(self._ids)}"
            request_id = str(request_id)
            if request_id in self.requests or any(r.id == request_id for r in self._inbox):
                raise ValueError(f"request id {request_id!r} is already in use")
            self._inbox.append(_Request(request_id, prompt_token_ids, params, prompt))
        self._wakeup.set()
        return request_id

    def abort(self, request_id: str) -> None:
        """Stop a request; its slots are free from the next step on, which reports finish_reason "abort"."""
        with self._lock:
            self._aborts.append(str(request_id))
        self._wakeup.set()

    def num_running(self) -> int:
        """Sequences generating now (a request with n samples counts n)."""
        return len(self.running)

    def has_unfinished(self) -> bool:
        with self._lock:
            return bool(self.requests or self._inbox)

    def wait_for_requests(self, timeout: float | None = None) -> bool:
        """Block until there is work (for an engine thread that is idle); True if there is."""
        if not self.has_unfinished():
            self._wakeup.wait(timeout)
        self._wakeup.clear()
        return self.has_unfinished()

    # ---- the engine thread
    @torch.inference_mode()
    def step(self) -> list[Delta]:
        deltas: list[Delta] = []
        try:
            self._take_inbox(deltas)
            self._admit(deltas)
            if self.running:
                self._decode(deltas)
        except Exception as e:  # noqa: BLE001 - outside any one request (e.g. moving cache rows)
            # No running sample's state can be trusted now: end them all, keep the engine serving.
            for request in {id(s.request): s.request for s in self.running}.values():
                self._fail(request, e, deltas)
            self.free_slots = sorted(set(range(self.max_num_seqs)) - {s.slot for s in self.running})
        return deltas

    def _take_inbox(self, deltas: list[Delta]) -> None:
        with self._lock:
            new, self._inbox = self._inbox, []
            aborts, self._aborts = self._aborts, []
            for r in new:
                self.requests[r.id] = r
        self.waiting.extend(new)
        for request_id in aborts:
            request = self.requests.get(request_id)
            if request is None:
                continue
            if request in self.waiting:
                self.waiting.remove(request)
            with self._isolated(request, deltas):
                for out in request.output.outputs:
                    if not out.finished():
                        sample = next((s for s in request.samples if s.index == out.index), None)
                        deltas.append(self._finish(sample, "abort") if sample else self._abort_unstarted(request, out))

    def _abort_unstarted(self, request: _Request, out: CompletionOutput) -> Delta:
        out.finish_reason = "abort"
        return self._final_delta(request, out, Delta(request.id, out.index))

    def _admit(self, deltas: list[Delta]) -> None:
        # First come, first served: a request waits until all its n samples fit.
        while self.waiting and len(self.free_slots) >= self.waiting[0].params.n:
            request = self.waiting.popleft()
            request.output.metrics.first_scheduled_time = time.time()
            slots = [self.free_slots.pop(0) for _ in range(request.params.n)]
            try:
                logits = self._prefill(request.prompt_ids, slots)
            except BaseException as e:  # e.g. out of memory (this request fails) or Ctrl-C: the slots stay usable
                self.free_slots = sorted(self.free_slots + slots)
                if not isinstance(e, Exception):
                    raise  # the caller's abort() ends the request
                self._fail(request, e, deltas)
                continue
            with self._isolated(request, deltas):
                seed = request.params.seed if request.params.seed is not None else self._seeds.getrandbits(63)
                request.samples = [_Sample(self, request, i, slot, random.Random(f"{seed}:{i}"))
                                   for i, slot in enumerate(slots)]
                self.running.extend(request.samples)
                tokens = sample(logits.expand(len(slots), -1), [request.params] * len(slots),
                                [self._uniform(s) for s in request.samples])
                for s, token in zip(request.samples, tokens):
                    deltas.append(self._append(s, s.forced.popleft() if s.forced else token))
            if not request.samples:  # failed before its samples existed
                self.free_slots = sorted(self.free_slots + slots)

    def _prefill(self, prompt_ids: list[int], slots: list[int]) -> torch.Tensor:
        """Logits [1, V] after the prompt, written once into slots[0] and copied to the other slots."""
        n = len(prompt_ids)
        self._reserve(n + 1)
        device = self.model.device
        ids = torch.tensor([prompt_ids], device=device)
        positions = torch.arange(n, device=device)[None]
        logits = self.model(ids, positions=positions, cache=self.cache, slots=torch.tensor(slots[:1], device=device),
                            last_only=True, attention=attention_kernel.choose(*self._kernel_args))[:, -1].float()
        for slot in slots[1:]:
            self.cache.copy_slot(slots[0], slot, n)
        return logits

    def _decode(self, deltas: list[Delta]) -> None:
        self._compact()
        batch = list(self.running)  # finishing samples leave self.running while we go through the batch
        batch, logits = self._per_sample(batch, lambda b: self._forward(b, compiled=b is batch), torch.cat, deltas)
        uniforms = [self._uniform(s) for s in batch]
        rows = {id(s): i for i, s in enumerate(batch)}

        def pick(b: list[_Sample]) -> list[int]:
            i = [rows[id(s)] for s in b]
            return sample(logits if b is batch else logits[i], [s.params for s in b], [uniforms[j] for j in i])

        batch, tokens = self._per_sample(batch, pick, lambda parts: [t for p in parts for t in p], deltas)
        for s, token in zip(batch, tokens):
            if not s.out.finished():  # else its request failed through another of its samples
                with self._isolated(s.request, deltas):
                    deltas.append(self._append(s, s.forced.popleft() if s.forced else token))

    def _forward(self, batch: list[_Sample], compiled: bool) -> torch.Tensor:
        """Logits [B, V] after feeding each sample's last token at its position."""
        device = self.model.device
        span = max(s.position for s in batch) + 1
        self._reserve(span)
        ids = torch.tensor([[s.tokens[-1]] for s in batch], device=device)
        positions = torch.tensor([[s.position] for s in batch], device=device)
        slots = torch.tensor([s.slot for s in batch], device=device)
        logits = None
        if compiled and self._compiled is not None and all(s.slot == i for i, s in enumerate(batch)):  # slots 0..B-1
            try:
                logits = self._compiled(ids, positions, self.cache.k, self.cache.v, span).float()
            except Exception as e:  # noqa: BLE001 - a compiler problem must not end the requests
                log.warning("phi4r: the compiled decode step failed (%s: %s); decoding eagerly from now on",
                            type(e).__name__, str(e).strip().splitlines()[0] if str(e).strip() else "")
                self._compiled = None  # the eager forward below rewrites the same cache positions
        if logits is None:
            logits = self.model(ids, positions=positions, cache=self.cache, slots=slots, last_only=True,
                                attention=attention_kernel.choose(*self._kernel_args))[:, -1].float()
        return logits

    def _per_sample(self, batch: list[_Sample], fn, join, deltas: list[Delta]):
        """(samples, fn(samples)) for the whole batch; if that raises, fn runs for each sample alone
        (a fault one request causes, or a transient one, then fails only the requests that fail
        alone) and the results of the samples that succeeded are joined."""
        try:
            return batch, fn(batch)
        except Exception as e:  # noqa: BLE001
            log.warning("phi4r: a batched step failed (%s: %s); retrying sample by sample", type(e).__name__, e)
        kept, parts = [], []
        for s in batch:
            if s.out.finished():  # its request failed through another of its samples
                continue
            try:
                parts.append(fn([s]))
                kept.append(s)
            except Exception as e:  # noqa: BLE001
                self._fail(s.request, e, deltas)
        return kept, join(parts) if parts else []

    @staticmethod
    def _uniform(s: _Sample) -> float:
        # Only a token that is really sampled draws from the sample's stream, so the stream (and the
        # output) depends on nothing but the request.
        return 0.0 if s.params.greedy or s.forced else s.rng.random()

    def _compact(self) -> None:
        """Move samples from high slots into free lower ones: a batch in consecutive slots reads its
        cache rows as one view instead of a gathered copy every step (a move copies one sample once)."""
        self.running.sort(key=lambda s: s.slot)
        for s in reversed(self.running):
            if not self.free_slots or self.free_slots[0] > s.slot:
                break
            dst = self.free_slots.pop(0)
            self.cache.copy_slot(s.slot, dst, s.position)  # the token at s.position is fed this step
            self.free_slots.append(s.slot)
            s.slot = dst
        self.free_slots.sort()
        self.running.sort(key=lambda s: s.slot)

    def _reserve(self, length: int) -> None:
        """Make the cache hold `length` positions per slot (grows by doubling, never past max_model_len)."""
        if self.cache is not None and self.cache.max_len >= length:
            return
        size = max(length, 2 * self.cache.max_len if self.cache else 256)
        size = min(size, self.max_model_len)
        old, device = self.cache, self.model.device
        self.cache = KVCache(self.config, self.max_num_seqs, size, dtype=self.model.dtype, device=device)
        if old is not None:
            for new_t, old_t in zip(self.cache.k + self.cache.v, old.k + old.v):
                new_t[:, :, :old.max_len] = old_t

    # ---- faults
    @contextmanager
    def _isolated(self, request: _Request, deltas: list[Delta]):
        """Run work for one request: an exception in it fails that request alone."""
        try:
            yield
        except Exception as e:  # noqa: BLE001
            self._fail(request, e, deltas)

    def _fail(self, request: _Request, error: Exception, deltas: list[Delta]) -> None:
        """End `request` with finish_reason "error": its samples that have not had their final delta
        leave the batch, their slots are freed, and each gets a final delta with the error."""
        log.error("phi4r: request %s failed: %s: %s", request.id, type(error).__name__, error, exc_info=error)
        message = f"{type(error).__name__}: {error}"
        if request in self.waiting:
            self.waiting.remove(request)
        # A sample still running has not had its final delta, even if _finish got as far as its reason.
        running = [s for s in request.samples if s in self.running]
        for s in running:
            self.running.remove(s)
            self.free_slots.append(s.slot)
        self.free_slots.sort()
        unreported = {s.index for s in running}
        for out in request.output.outputs:
            if out.index in unreported or not out.finished():
                out.finish_reason, out.error = "error", message
                deltas.append(self._final_delta(request, out, Delta(request.id, out.index)))

    # ---- per-token bookkeeping
    def _append(self, s: _Sample, token: int) -> Delta:
        """Add one generated token to sample `s`; apply stops, the thinking budget and the loop guard."""
        out, tokens = s.out, s.tokens
        metrics = s.request.output.metrics
        if metrics.first_token_time is None:
            metrics.first_token_time = time.time()
        tokens.append(token)
        delta = Delta(s.request.id, s.index, token_ids=[token])
        if token in s.stop_ids:
            out.stop_reason = token if token in s.params.stop_token_ids else None
            return self._finish(s, "stop", delta)
        text, stop = s.stops.feed(s.detok.add(token))
        self._emit(s, delta, text)
        if stop is not None:
            out.stop_reason = stop
            return self._finish(s, "stop", delta, flush=False)
        if tokens[-len(self.think_end):] == self.think_end:
            s.thinking, s.last_think_end = False, len(tokens)
        delta.reasoning_tokens = len(tokens) if s.thinking else s.last_think_end
        delta.content_tokens = len(tokens) - delta.reasoning_tokens
        budget = s.params.thinking_budget
        if s.thinking and budget is not None and len(tokens) >= budget and not s.forced:
            s.forced.extend(self.think_end + self.bridge)
            out.thinking_budget_reached = True
        if len(tokens) >= s.max_tokens:
            return self._finish(s, "length", delta)
        if s.loops and s.loops.looping(tokens):
            return self._finish(s, "repetition", delta)
        return delta

    def _emit(self, s: _Sample, delta: Delta, text: str) -> None:
        if text:
            s.out.text += text
            delta.text += text
            self._add_split(delta, s.reasoning.feed(text))

    @staticmethod
    def _add_split(delta: Delta, split) -> None:
        # A delta can gather several splits (a token's text, then the flush at the end). A correction
        # counts the content shown by this delta too; the delta's own correction covers earlier ones only.
        if split.reclassified:
            earlier = split.reclassified - len(delta.content)
            if earlier:  # then nothing in this delta was reasoning yet
                delta.reclassified, delta.reasoning = earlier, delta.content
            else:
                delta.reasoning += THINK_END + delta.content
            delta.content = ""
        delta.reasoning += split.reasoning
        delta.content += split.content

    def _finish(self, s: _Sample, reason: str, delta: Delta | None = None, flush: bool = True) -> Delta:
        """End sample `s`. `flush`: release the text held back for an incomplete character or a
        possible stop string (unless that text completes a stop string after all)."""
        delta = delta or Delta(s.request.id, s.index)
        out = s.out
        if flush:
            text, stop = s.stops.feed(s.detok.flush(final=True))
            if stop is not None:
                reason, out.stop_reason = "stop", stop
            self._emit(s, delta, text + s.stops.flush())
        out.finish_reason = reason
        self._add_split(delta, s.reasoning.finish())
        self.running.remove(s)
        self.free_slots.append(s.slot)
        self.free_slots.sort()
        return self._final_delta(s.request, out, delta)

    def _final_delta(self, request: _Request, out: CompletionOutput, delta: Delta) -> Delta:
        out.reasoning, out.content = split_reasoning(out.text)
        sample = next((x for x in request.samples if x.index == out.index), None)
        if out.content is None:
            out.reasoning_tokens = len(out.token_ids)
        else:
            out.reasoning_tokens = sample.last_think_end if sample else 0
        out.content_tokens = len(out.token_ids) - out.reasoning_tokens
        delta.reasoning_tokens, delta.content_tokens = out.reasoning_tokens, out.content_tokens
        delta.finish_reason, delta.output = out.finish_reason, out
        if all(o.finished() for o in request.output.outputs):
            request.output.finished = True
            request.output.metrics.finished_time = time.time()
            delta.request = request.output
            with self._lock:
                self.requests.pop(request.id, None)
        return delta


def _compile_decode(model, attention):
    """A callable running `model.decode` with `attention`, compiled by torch.compile (inductor), or None
    (logged) when torch.compile is unavailable here. Compiling happens at the first call and again, a
    bounded number of times, when a size first changes (span, batch size, cache length: each then
    becomes dynamic)."""
    try:
        import torch._dynamo  # noqa: F401 - fails early on builds without dynamo

        model.rotary.tables(model.device, model.dtype)  # built now: a table built inside the graph is recomputed every call
        # emulate_precision_casts: round intermediates to bf16 where eager does (greedy tokens equal eager).
        # A copy of decode's code object per model: dynamo keeps its compiled graphs (and counts them against
        # its recompile limit) per code object, so two models in one process do not share that limit.
        fn = type(model).decode
        fresh = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
        compiled = torch.compile(types.MethodType(fresh, model), dynamic=None, options={"emulate_precision_casts": True})
        # Guards check the modules' dicts by version tag instead of every parameter again (~0.25 ms a step
        # less here); a module that is changed still fails its tag check and gets the full guards.
        patch = torch._dynamo.config.patch(use_recursive_dict_tags_for_guards=True)
    except Exception as e:  # noqa: BLE001
        log.warning("phi4r: torch.compile is unavailable (%s); decoding eagerly", e)
        return None

    def decode(ids, positions, ks, vs, span):
        with patch:
            return compiled(ids, positions, ks, vs, span, attention)
    return decode
