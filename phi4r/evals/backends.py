"""Where responses come from: the local engine, an OpenAI-compatible endpoint, or task teachers.

A backend turns `Job`s (one instance, one run) into `Completion`s, yielding each as it finishes so
the runner can log it at once. Backends differ in how they batch; they agree on what they return.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterator, Protocol

from ..reasoning import THINK_END, THINK_START, split_reasoning
from ..tasks import Instance, approx_tokens, get_task


@dataclass
class Job:
    instance: Instance
    run: int
    seed: int  # the instance's seed; a backend derives each run's own randomness from (seed, run)


@dataclass
class Completion:
    reasoning: str | None
    content: str | None  # None when the thinking never closed (no answer)
    finish_reason: str | None
    response_tokens: int | None
    reasoning_tokens: int | None
    text: str | None = None  # the raw generated text, when the backend has it
    error: str | None = None  # why there is no answer (the request was refused or failed): scored wrong
    retry: bool = False  # the error may pass (server busy or down): a resumed run asks again
    max_tokens: int | None = None  # the smaller completion budget the backend had to use to fit the context

    @classmethod
    def failed(cls, error: str, retry: bool = False) -> Completion:
        return cls(None, None, "error", None, None, error=error, retry=retry)

    def answer_text(self) -> str:
        """What the task grades, the same for every backend: the content after the thinking.

        Rebuilt from the (reasoning, content) split, because an endpoint only returns the split:
        grading it rather than the raw text keeps local and HTTP scores identical.
        """
        closed = THINK_END + self.content if self.content is not None else ""
        return THINK_START + (self.reasoning or "") + closed


class BackendError(RuntimeError):
    """The backend cannot answer at all (a wrong URL or key, a server that stays down): the run stops;
    finished samples stay logged. A request refused or failed on its own is a `Completion.failed`."""


class Backend(Protocol):
    name: str  # recorded in the run's config, so a resumed run cannot mix models
    system_prompt: str | None  # the default when the user gives none

    def sampling_defaults(self) -> dict: ...

    def complete(self, jobs: list[Job], sampling: dict, system_prompt: str | None) -> Iterator[tuple[Job, Completion]]: ...


def derive_seed(*parts) -> int:
    """A 31-bit seed from its parts: independent streams for (instance, run) or (instance, block)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def messages(instance: Instance, system_prompt: str | None) -> list[dict]:
    user = [{"role": "user", "content": instance.prompt}]
    return user if system_prompt is None else [{"role": "system", "content": system_prompt}] + user


class TeacherBackend:
    """Answers every instance with its task's teacher trace: a check that a task's prompt, extractor
    and verifier agree (every procedural task should score 100%). Lengths are approximate tokens."""

    name = "teacher"
    system_prompt = None

    def sampling_defaults(self) -> dict:
        return {}

    def complete(self, jobs, sampling, system_prompt):
        for job in jobs:
            text = get_task(job.instance.task).teacher(job.instance)
            reasoning, content = split_reasoning(text)
            yield job, Completion(reasoning, content, "stop", approx_tokens(text), approx_tokens(reasoning), text)


class LocalBackend:
    """The in-process engine. An instance's runs are the n samples of one request, so they share one
    prefill; the engine seeds sample i of a request from (request seed, i), making every run its own
    reproducible stream. Runs are split into blocks of `max_num_seqs` samples (block b is one request,
    seeded from (instance seed, b)), so run r is the same sample however the work is scheduled.
    A resumed instance re-requests its block up to the highest missing run and keeps only the
    missing runs: exact reproduction costs regenerating the runs it already has.
    """

    def __init__(self, model="nano", dtype: str | None = None, quantization: str | None = None,
                 max_num_seqs: int = 16, max_model_len: int | None = None):
        from ..api import LLM

        self.llm = model if isinstance(model, LLM) else LLM(model, dtype=dtype, quantization=quantization,
                                                              max_num_seqs=max_num_seqs, max_model_len=max_model_len)
        engine = self.llm.engine
        self.block = engine.max_num_seqs
        where = self.llm.model_path or "in-memory model"
        # Everything that changes the samples, so a resumed run cannot mix engines.
        self.name = (f"local:{where} ({str(self.llm.model.dtype).removeprefix('torch.')}"
                     f"{', ' + quantization if quantization else ''}, max_num_seqs={self.block}, max_model_len={engine.max_model_len})")
        self.system_prompt = self.llm.tokenizer.system_prompt

    def sampling_defaults(self) -> dict:
        """The checkpoint's generation_config.json, resolved as the engine applies it."""
        from ..sampling import SamplingParams

        gc = self.llm.generation_config
        p = SamplingParams().resolved(gc)
        return {"temperature": p.temperature, "top_p": p.top_p, "top_k": p.top_k, "max_tokens": gc.get("max_new_tokens")}

    def complete(self, jobs, sampling, system_prompt):
        from ..engine import ContextLengthError
        from ..sampling import SamplingParams

        engine, tokenizer = self.llm.engine, self.llm.tokenizer
        blocks: dict[tuple, dict[int, Job]] = defaultdict(dict)  # (task, id, block) -> {index in block: job}
        for job in jobs:
            blocks[job.instance.task, job.instance.id, job.run // self.block][job.run % self.block] = job
        wanted: dict[str, dict[int, Job]] = {}
        budgets: dict[str, int] = {}  # request id -> the completion budget the context left, when smaller
        try:
            for (_, _, block), by_index in blocks.items():
                job = next(iter(by_index.values()))
                params = SamplingParams(
                    n=max(by_index) + 1, seed=derive_seed(job.seed, block), temperature=sampling.get("temperature"),
                    top_p=sampling.get("top_p"), top_k=sampling.get("top_k"), max_tokens=sampling.get("max_tokens"),
                    thinking_budget=sampling.get("thinking_budget"))
                # The system prompt goes in as the template's (trusted) text, as in training and
                # `LLM.chat`: as a system *message* its `<think>` would be plain text, a prompt the
                # model never saw (Phi-4-reasoning's own system prompt contains `<think>` too).
                ids = tokenizer.encode_chat([{"role": "user", "content": job.instance.prompt}],
                                            system_prompt=system_prompt)
                try:
                    request_id = engine.add_request(None, ids, params)
                    wanted[request_id] = by_index
                    # The engine gives a completion what the context leaves: record when that is less.
                    if params.max_tokens and params.max_tokens > engine.max_model_len - len(ids):
                        budgets[request_id] = engine.max_model_len - len(ids)
                except ContextLengthError as e:  # this prompt's fault alone: a wrong answer, not the end
                    for refused in by_index.values():
                        yield refused, Completion.failed(f"refused by the engine: {e}")
            left = sum(map(len, wanted.values()))
            while left:
                for delta in engine.step():
                    by_index = wanted.get(delta.request_id, {})
                    if delta.request is not None:
                        wanted.pop(delta.request_id, None)
                    # Skip deltas of unfinished samples and runs regenerated only to reach a missing one.
                    if delta.output is not None and delta.index in by_index:
                        out = delta.output
                        if out.finish_reason == "abort":  # not an answer: never grade it
                            raise BackendError(f"the engine aborted request {delta.request_id}")
                        left -= 1
                        if out.finish_reason == "error":  # this request failed alone: scored wrong, logged
                            yield by_index[delta.index], Completion.failed(f"engine error: {out.error}")
                            continue
                        yield by_index[delta.index], Completion(
                            out.reasoning, out.content, out.finish_reason, len(out.token_ids), out.reasoning_tokens,
                            out.text, max_tokens=budgets.get(delta.request_id))
        finally:
            for request_id in wanted:  # interrupted: leave no work behind in a shared engine
                engine.abort(request_id)
