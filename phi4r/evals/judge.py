"""An LLM judge behind any OpenAI-compatible endpoint, for Eureka's LLM steps (tasks/base.py Judge).

Each step has its prompt in judge_prompts/<step>.txt (the problem, the reference answer and the
response's final text filled in; paraphrasing Eureka's omni_math_gpt_eval.jinja and extraction prompts); the request is greedy (temperature 0), transient failures are retried as the
eval endpoint does. ArenaHard's pairwise steps (tasks/arenahard.py) send arena-hard-auto's two
messages instead, a system prompt (judge_prompts/arenahard_system.txt) and the question with both
answers (arenahard_user.txt), the model's answer in the place the step names. Verdicts are cached
by (step, instance id, sha256 of the response, and for a pairwise step of the baseline answer too) and, with a
`cache` path, appended to a JSONL file in the run directory, so a resumed or re-scored run asks
nothing twice. A judge still failing after its retries raises JudgeError: the runner then grades the
sample without a judge (`needs_judge`) and logs the error in its details.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import sys
import threading
from importlib import resources
from pathlib import Path

import httpx

from ..reasoning import final_text
from .backends import BackendError
from .endpoint import Refused, Unavailable, chat_url, request_json

# Where each ArenaHard step puts the model's answer: arena-hard-auto judges every question twice,
# the baseline as assistant A and then as assistant B.
PAIRWISE = {"arenahard_model_b": "B", "arenahard_model_a": "A"}
STEPS = ("extract", "math_equivalence", *PAIRWISE)
# A pairwise judge writes its own answer before judging: arena-hard-auto lets it 4096 tokens.
PAIRWISE_MAX_TOKENS = 4096


class JudgeError(RuntimeError):
    """The judge gave no reply (refused, or failing beyond its retries)."""


def prompt(step: str, inst, response: str) -> str:
    if step not in STEPS:
        raise ValueError(f"unknown judge step {step!r}; known: {', '.join(STEPS)}")
    template = resources.files(__package__).joinpath(f"judge_prompts/{step}.txt").read_text()
    # Eureka shows the judge its model_output: the message content, without the reasoning.
    response = final_text(response) or ""
    reference = inst.answer.get("answer", "") if isinstance(inst.answer, dict) else inst.answer
    # str.replace, not format: problems and responses are full of braces (\boxed{}, sets, JSON).
    for key, value in (("problem", inst.prompt), ("reference", str(reference)), ("response", response)):
        template = template.replace("{" + key + "}", value)
    return template


def messages(step: str, inst, response: str) -> list[dict]:
    """The chat messages sent for `step`: one user message, or ArenaHard's system and user pair."""
    if step not in PAIRWISE:
        return [{"role": "user", "content": prompt(step, inst, response)}]
    prompts = resources.files(__package__).joinpath("judge_prompts")
    model, baseline = final_text(response) or "", inst.answer["baseline"]
    answers = (baseline, model) if PAIRWISE[step] == "B" else (model, baseline)
    user = prompts.joinpath("arenahard_user.txt").read_text()
    # One pass over the placeholders, so an answer that contains "{answer_b}" is left as it is.
    fill = {"question": inst.prompt, "answer_a": answers[0], "answer_b": answers[1]}
    user = re.sub(r"\{(question|answer_a|answer_b)\}", lambda m: fill[m.group(1)], user)
    return [{"role": "system", "content": prompts.joinpath("arenahard_system.txt").read_text().strip()},
            {"role": "user", "content": user}]


def _digest(step: str, inst, response: str) -> str:
    text = response if step not in PAIRWISE else json.dumps([inst.answer["baseline"], response])
    return hashlib.sha256(text.encode()).hexdigest()


class EndpointJudge:
    def __init__(self, url: str, model: str, api_key: str | None = None, cache: str | Path | None = None,
                 retries: int = 5, backoff: float = 1.0, timeout: float = 600.0, max_tokens: int = 2048):
        self.url, self.model, self.retries, self.backoff, self.max_tokens = chat_url(url), model, retries, backoff, max_tokens
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout, connect=30.0))
        self.cache_path = None if cache is None else Path(cache)
        self.verdicts: dict[tuple, str] = {}
        self.lock = threading.Lock()
        if self.cache_path is not None and self.cache_path.exists():
            for line in self.cache_path.read_text().split("\n"):
                try:
                    row = json.loads(line)
                    self.verdicts[row["step"], row["id"], row["sha256"]] = row["reply"]
                except (ValueError, KeyError, TypeError):  # a line cut by a killed run: asked again
                    continue

    def __call__(self, step: str, inst, response: str) -> str | None:
        if step not in STEPS:
            raise ValueError(f"unknown judge step {step!r}; known: {', '.join(STEPS)}")
        key = (step, f"{inst.task}/{inst.id}", _digest(step, inst, response))
        if key in self.verdicts:
            return self.verdicts[key]
        max_tokens = max(self.max_tokens, PAIRWISE_MAX_TOKENS) if step in PAIRWISE else self.max_tokens
        reply = self._ask(messages(step, inst, response), max_tokens)
        with self.lock:
            self.verdicts[key] = reply
            if self.cache_path is not None:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                with self.cache_path.open("a") as f:
                    f.write(json.dumps({"step": key[0], "id": key[1], "sha256": key[2], "reply": reply}) + "\n")
        return reply

    def _ask(self, chat: list[dict], max_tokens: int) -> str:
        body = {"model": self.model, "messages": chat, "temperature": 0.0, "max_tokens": max_tokens}
        try:
            reply = request_json(self.client, "POST", self.url, body, self.retries, self._delay)
            return reply["choices"][0]["message"]["content"] or ""
        except (BackendError, Refused, Unavailable) as e:
            print(f"phi4r eval: judge {e}", file=sys.stderr)
            raise JudgeError(f"judge {e}") from None
        except (ValueError, KeyError, IndexError, TypeError):  # a reply that is not JSON, or not a completion
            raise JudgeError(f"judge {self.url}: not a chat completion") from None

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        return random.uniform(0, min(self.backoff * 2 ** attempt, 30.0))

    def close(self) -> None:
        self.client.close()
