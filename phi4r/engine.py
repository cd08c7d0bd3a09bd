"""Continuous batching over a paged KV cache: many requests, one batched forward per token.

    engine = Engine(model, tokenizer, max_num_seqs=16)
    engine.add_request("a", tokenizer.encode_chat(messages), SamplingParams(max_tokens=256))
    while engine.has_unfinished():
        for delta in engine.step():           # text/reasoning/content deltas per sample
            ...

Each `step()` admits waiting requests (one prefill per request; its n samples share the prompt's
cache blocks, kv_cache.py), then feeds every running sample's last token in ONE forward (positions
differ per row), samples the next tokens, applies the stop rules, and frees the blocks of finished
samples for the next waiting request.

Memory, as vLLM schedules it: the KV cache holds a budget of blocks (kv_budget.py). Requests are
admitted first come, first served, when max_num_seqs and the free blocks allow (the prompt, and a
block for each sample's next token); a request that could never fit is refused by `add_request`.
When running samples need a block and none is free, the newest sample is preempted: its blocks are
freed and, once blocks are free again (before any new request), its prompt and tokens so far are
recomputed in one prefill and it continues where it was, its output unchanged.

Faults stay with their request: an exception while serving one request (prefill, sampling, stop
rules, detokenizing) ends that request alone with finish_reason "error" (the message in
`CompletionOutput.error`) and frees its blocks; a batched forward or sampling step that raises is
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
from . import kv_budget, threads
from .kv_cache import BLOCK_SIZE, PagedKVCache
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
        self.order = -1  # when it was first admitted


class _Sample:
    def __init__(self, engine: Engine, request: _Request, index: int, blocks: list[int], rng: random.Random):
        params = request.params
        self.request, self.index, self.blocks, self.rng = request, index, blocks, rng
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

    @property
    def order(self) -> tuple[int, int]:
        """Oldest first: the request's admission, then the sample's index (the newest is preempted first)."""
        return self.request.order, self.index


class Engine:
    def __init__(self, model, tokenizer, max_num_seqs: int = 16, max_model_len: int | None = None,
                 generation_config: dict | None = None, seed: int | None = None, compile: bool | None = None,
                 kv_cache_memory: str | float | int | None = None):
        """compile: run decode steps through `torch.compile` of `model.decode` (inductor; the first
        step at a new batch size or cache size compiles, then steps reuse it); None reads PHI4R_COMPILE=1.
        Prefill stays eager. If compiling or a compiled step fails, the engine logs one warning and
        continues eagerly.
        kv_cache_memory: the KV cache budget, bytes ("8GiB", 2e9) or a fraction of the available memory
        (kv_budget.py; None: room for max(max_model_len, max_num_seqs * 2048) tokens, at most half the
        available memory). max_model_len is lowered to fit it, or an error if it was given."""
        self.model, self.tokenizer = model, tokenizer
        if compile is None:
            compile = os.environ.get("PHI4R_COMPILE", "0") == "1"
        # The engine alone chooses the model's decode attention (an argument of model.forward/decode): the
        # kernel where it applies once its build is ready, else the torch reference, asked every step
        # (attention_kernel.choose) so that a build finishing mid-run is picked up; nothing waits for it. A
        # compiled step keeps what was chosen when it was traced, so compiling waits for the builds (bounded).
        self._kernel_args = (model.dtype, model.config.head_dim, model.device)
        self._adapt_threads = model.device.type == "cpu"  # fewer threads while other programs take cores
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
        budget = kv_budget.plan(self.config, model.dtype, model.device, BLOCK_SIZE, max_model_len or limit,
                                max_model_len is not None, max_num_seqs, kv_cache_memory)
        self.max_model_len = budget.max_model_len
        # The pool's pages are touched only as blocks are first used (kv_cache.py): the budget is a bound.
        self.cache = PagedKVCache(self.config, budget.num_blocks, BLOCK_SIZE, dtype=model.dtype, device=model.device)
        self.num_preemptions = 0
        self.generation_config = generation_config or {}
        self.stop_ids = set(tokenizer.stop_ids)
        end = tokenizer.think_end_id
        self.think_end = [end] if end is not None else tokenizer.encode(THINK_END)
        self.bridge = tokenizer.encode(BUDGET_BRIDGE)
        self._seeds = random.Random(seed)  # seeds of unseeded requests: reproducible under LLM(seed=...)
        self._ids = itertools.count()
        self.waiting: deque[_Request] = deque()
        self.running: list[_Sample] = []
        self.preempted: list[_Sample] = []  # oldest first; they come back before any waiting request
        self._order = itertools.count()
        self.requests: dict[str, _Request] = {}
        self._inbox: list[_Request] = []
        self._aborts: list[str] = []
        self._lock = threading.Lock()
        self._wakeup = threading.Event()

    # ---- called from any thread
    def add_request(self, request_id: str | None, prompt_token_ids: list[int], params: SamplingParams | None = None,
                    prompt: str | None = None) -> str:
        """Queue a request; returns its id. Raises ContextLengthError / ValueError for a request that
        can never run (too long, more than the KV cache holds, empty, n > max_num_seqs, duplicate id, a
        non-finite or out-of-range sampling value, even one set on `params` after it was made)."""
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
        need = self._blocks_to_start(len(prompt_token_ids), params.n)
        if need > self.cache.num_blocks:
            raise ContextLengthError(
                f"the prompt of {len(prompt_token_ids)} tokens with n={params.n} samples needs {need} KV cache "
                f"blocks of {self.cache.block_size} tokens but the cache holds {self.cache.num_blocks}; "
                f"raise --kv-cache-memory or send fewer samples")
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
        """Stop a request; its blocks are free from the next step on, which reports finish_reason "abort"."""
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
        if self._adapt_threads:
            threads.adapt()
        try:
            self._take_inbox(deltas)
            self._admit(deltas)
            if self.running:
                self._decode(deltas)
        except Exception as e:  # noqa: BLE001 - outside any one request (e.g. moving cache rows)
            # No running sample's state can be trusted now: end them all, keep the engine serving.
            for request in {id(s.request): s.request for s in self.running}.values():
                self._fail(request, e, deltas)
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

    def _blocks_to_start(self, prompt_len: int, n: int) -> int:
        """Blocks a request needs to be admitted: its prompt, once, and for each sample the block its
        first generated token is written into (a new one, or a copy of a shared partial one)."""
        return self.cache.blocks_for(prompt_len) + n

    def _admit(self, deltas: list[Delta]) -> None:
        # First come, first served: preempted samples (admitted earlier) come back first, then waiting
        # requests; each waits until its sequences and blocks fit, and nothing overtakes one that waits.
        # The blocks the running samples need for their next token are kept free for them.
        reserved = sum(self.cache.needed(s.blocks, s.position) for s in self.running)
        while self.preempted and len(self.running) < self.max_num_seqs:
            s = self.preempted[0]
            need = self.cache.blocks_for(s.position + 1)
            if need + reserved > self.cache.num_free():
                return
            self.preempted.pop(0)
            with self._isolated(s.request, deltas):
                self.cache.reserve(s.blocks, s.position)
                self._prefill(s.request.prompt_ids + s.tokens[:-1], s.blocks)  # its last token is fed next
                self.running.append(s)
            if s not in self.running:
                self.cache.free(s.blocks)
        while self.waiting and len(self.running) + self.waiting[0].params.n <= self.max_num_seqs:
            request = self.waiting[0]
            n = request.params.n
            if self._blocks_to_start(len(request.prompt_ids), n) + reserved > self.cache.num_free():
                return
            self.waiting.popleft()
            request.order = next(self._order)
            request.output.metrics.first_scheduled_time = time.time()
            table: list[int] = []
            try:
                self.cache.reserve(table, len(request.prompt_ids) - 1)
                logits = self._prefill(request.prompt_ids, table)
            except BaseException as e:  # e.g. out of memory (this request fails) or Ctrl-C: the blocks stay usable
                self.cache.free(table)
                if not isinstance(e, Exception):
                    raise  # the caller's abort() ends the request
                self._fail(request, e, deltas)
                continue
            tables = [table] + [self.cache.fork(table) for _ in range(n - 1)]  # the prompt is stored once
            with self._isolated(request, deltas):
                seed = request.params.seed if request.params.seed is not None else self._seeds.getrandbits(63)
                request.samples = [_Sample(self, request, i, blocks, random.Random(f"{seed}:{i}"))
                                   for i, blocks in enumerate(tables)]
                self.running.extend(request.samples)
                tokens = sample(logits.expand(n, -1), [request.params] * n,
                                [self._uniform(s) for s in request.samples])
                for s, token in zip(request.samples, tokens):
                    deltas.append(self._append(s, s.forced.popleft() if s.forced else token))
            if not request.samples:  # failed before its samples existed
                for t in tables:
                    self.cache.free(t)
            reserved = sum(self.cache.needed(s.blocks, s.position) for s in self.running)

    def _prefill(self, ids: list[int], table: list[int]) -> torch.Tensor:
        """Logits [1, V] (the model's dtype) after `ids`, whose keys/values are written at positions 0.. into
        the blocks of `table`."""
        n = len(ids)
        device = self.model.device
        positions = torch.arange(n, device=device)[None]
        return self.model(torch.tensor([ids], device=device), positions=positions, cache=self.cache,
                          tables=self.cache.tables_tensor([table]), last_only=True,
                          attention=attention_kernel.choose(*self._kernel_args))[:, -1]

    def _make_room(self) -> None:
        """Give every running sample an owned block for the position it writes next, oldest first; when
        none is free, preempt the newest sample (it is recomputed later, see `_admit`) until one is."""
        self.running.sort(key=lambda s: s.order)
        copies: list[tuple[int, int]] = []
        i = 0
        while i < len(self.running):
            s = self.running[i]
            while self.cache.needed(s.blocks, s.position) > self.cache.num_free():
                victim = self.running[-1]
                self._preempt(victim)
                if victim is s:
                    break
            else:
                self.cache.reserve(s.blocks, s.position, copies)
                i += 1
        self.cache.copy_blocks(copies)

    def _preempt(self, s: _Sample) -> None:
        self.running.remove(s)
        self.cache.free(s.blocks)
        self.preempted.append(s)
        self.preempted.sort(key=lambda x: x.order)
        self.num_preemptions += 1
        log.info("phi4r: KV cache full: sample %d of request %s preempted, to be recomputed when blocks are free "
                 "(%d preemptions so far; a larger --kv-cache-memory avoids them)", s.index, s.request.id,
                 self.num_preemptions)

    def _drop(self, s: _Sample) -> None:
        """Take a sample that ends out of the schedule and give back its blocks."""
        if s in self.running:
            self.running.remove(s)
        elif s in self.preempted:
            self.preempted.remove(s)
        self.cache.free(s.blocks)

    def _decode(self, deltas: list[Delta]) -> None:
        self._make_room()
        if not self.running:
            return
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
        """Logits [B, V] after feeding each sample's last token at its position (in the model's dtype:
        `sample` converts what it needs, greedy decoding nothing)."""
        span = max(s.position for s in batch) + 1
        # One tensor for the token ids and positions (columns 0 and 1): each small tensor costs microseconds.
        fed = torch.tensor([[s.tokens[-1], s.position] for s in batch], device=self.cache.k[0].device)
        ids, positions = fed[:, :1], fed[:, 1:]
        tables = self.cache.tables_tensor([s.blocks for s in batch])
        logits = None
        if compiled and self._compiled is not None:
            try:
                logits = self._compiled(ids, positions, self.cache.k, self.cache.v, span, tables)
            except Exception as e:  # noqa: BLE001 - a compiler problem must not end the requests
                log.warning("phi4r: the compiled decode step failed (%s: %s); decoding eagerly from now on",
                            type(e).__name__, str(e).strip().splitlines()[0] if str(e).strip() else "")
                self._compiled = None  # the eager forward below rewrites the same cache positions
        if logits is None:
            logits = self.model(ids, positions=positions, cache=self.cache, tables=tables, last_only=True,
                                attention=attention_kernel.choose(*self._kernel_args))[:, -1]
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
        leave the batch, their blocks are freed, and each gets a final delta with the error."""
        log.error("phi4r: request %s failed: %s: %s", request.id, type(error).__name__, error, exc_info=error)
        message = f"{type(error).__name__}: {error}"
        if request in self.waiting:
            self.waiting.remove(request)
        # A sample still running has not had its final delta, even if _finish got as far as its reason.
        running = [s for s in request.samples if s in self.running or s in self.preempted]
        for s in running:
            self._drop(s)
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
        self._drop(s)
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

    def decode(ids, positions, ks, vs, span, tables=None):
        with patch:
            return compiled(ids, positions, ks, vs, span, attention, tables)
    return decode
