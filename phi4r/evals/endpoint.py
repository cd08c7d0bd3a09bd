"""An OpenAI-compatible chat endpoint (phi4r serve, vLLM, llama.cpp, ...) as an evaluation backend.

One request per (instance, run), `concurrency` in flight. Transient failures (connection errors,
timeouts, 408/409/425/429/5xx) are retried with exponential backoff and jitter, honouring
Retry-After; anything else, or running out of retries, raises `BackendError` naming the endpoint and
the last error, so a dead server is never mistaken for wrong answers.
"""
from __future__ import annotations

import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import httpx

from ..chat import DEFAULT_SYSTEM_PROMPT
from ..reasoning import split_reasoning
from .backends import BackendError, Completion, derive_seed, messages

RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}

# The card's recommended sampling; servers often drop a model's generation_config, so send it.
CARD_SAMPLING = {"temperature": 0.8, "top_p": 0.95, "top_k": 50}


def chat_url(url: str) -> str:
    """Accept a server root, an OpenAI base URL (`.../v1`) or the full chat completions URL."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


class EndpointBackend:
    """`model` None asks the server (`/v1/models`). Each run is one request (n=1) whose seed is
    derived from (instance seed, run): runs are independent, and a retry redraws the same sample
    on a server that honours seeds. The system message is always sent (Phi-4-reasoning's by
    default), since servers differ in what they inject when there is none."""

    system_prompt = DEFAULT_SYSTEM_PROMPT

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None, concurrency: int = 8,
                 retries: int = 5, backoff: float = 1.0, max_backoff: float = 60.0, timeout: float = 3600.0):
        self.url = chat_url(url)
        self.concurrency, self.retries = concurrency, retries
        self.backoff, self.max_backoff = backoff, max_backoff
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout, connect=30.0),
                                   limits=httpx.Limits(max_connections=concurrency))
        self.model = model or self._served_model()
        self.name = f"{self.url} ({self.model})"

    def _served_model(self) -> str:
        """The first model the server lists, as the `model` field most servers require."""
        url = self.url.removesuffix("/chat/completions") + "/models"
        data = self._request("GET", url)
        try:
            return data["data"][0]["id"]
        except (KeyError, IndexError, TypeError):
            raise BackendError(f"{url} lists no model; pass --served-model") from None

    def sampling_defaults(self) -> dict:
        return dict(CARD_SAMPLING)

    def _request(self, method: str, url: str, body: dict | None = None) -> dict:
        for attempt in range(self.retries + 1):
            retry_after = None
            try:
                r = self.client.request(method, url, json=body)
            except httpx.TransportError as e:  # connection refused/reset, timeouts
                error = f"{type(e).__name__}: {e}"
            else:
                if r.status_code == 200:
                    return r.json()
                error = f"HTTP {r.status_code}: {r.text[:500]}"
                if r.status_code not in RETRYABLE:
                    raise BackendError(f"{url} rejected the request ({error})")
                retry_after = r.headers.get("retry-after")
            if attempt == self.retries:
                raise BackendError(f"{url} failed {attempt + 1} times; last error: {error}")
            time.sleep(self._delay(attempt, retry_after))
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(float(retry_after), self.max_backoff)
            except ValueError:
                pass  # an HTTP date: fall back to our own schedule
        # Full jitter spreads out the retries of many concurrent requests.
        return random.uniform(0.5, 1.0) * min(self.max_backoff, self.backoff * 2**attempt)

    def _body(self, job, sampling: dict, system_prompt: str | None) -> dict:
        body = {"model": self.model, "messages": messages(job.instance, system_prompt), "n": 1,
                "seed": derive_seed(job.seed, job.run)}
        for key in ("temperature", "top_p", "max_tokens"):
            if sampling.get(key) is not None:
                body[key] = sampling[key]
        if sampling.get("top_k"):  # 0/None: leave top-k off (and unsent, for servers that reject it)
            body["top_k"] = sampling["top_k"]
        if sampling.get("thinking_budget") is not None:  # vLLM's name, which phi4r serve shares
            body["thinking_token_budget"] = sampling["thinking_budget"]
        return body

    def _complete_one(self, job, sampling, system_prompt) -> Completion:
        data = self._request("POST", self.url, self._body(job, sampling, system_prompt))
        try:
            choice = data["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError):
            raise BackendError(f"{self.url} returned no choice: {str(data)[:500]}") from None
        return completion_from_message(message, choice.get("finish_reason"), data.get("usage") or {})

    def complete(self, jobs, sampling, system_prompt):
        """Yield (job, completion) as requests finish. On a permanent failure, requests not yet
        started are cancelled, those in flight are still collected, then `BackendError` is raised."""
        stop = threading.Event()

        def work(job):
            if stop.is_set():
                return None
            try:
                return self._complete_one(job, sampling, system_prompt)
            except BackendError:
                stop.set()  # at once, so this worker starts no further request
                raise

        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            pending = {pool.submit(work, job): job for job in jobs}
            failure = None
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    job = pending.pop(future)
                    try:
                        completion = future.result()
                    except BackendError as e:
                        failure = failure or e
                        continue
                    if completion is not None:
                        yield job, completion
            if failure is not None:
                raise failure
        finally:
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)


def completion_from_message(message: dict, finish_reason: str | None, usage: dict) -> Completion:
    """Reasoning from `reasoning_content` (vLLM, phi4r) or `reasoning` (newer vLLM); a server without
    a reasoning parser returns it inside the content, which is split here the same way."""
    content = message.get("content")
    reasoning = next((message[k] for k in ("reasoning_content", "reasoning") if message.get(k) is not None), None)
    if reasoning is None:
        reasoning, content = split_reasoning(content or "")
    tokens = usage.get("completion_tokens")
    details = usage.get("completion_tokens_details") or {}
    reasoning_tokens = details.get("reasoning_tokens")
    if reasoning_tokens is None and tokens is not None:
        # Not every server counts reasoning tokens: apportion the completion by characters.
        chars = len(reasoning) + len(content or "")
        reasoning_tokens = round(tokens * len(reasoning) / chars) if chars else 0
    return Completion(reasoning, content, finish_reason, tokens, reasoning_tokens)
