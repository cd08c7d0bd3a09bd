"""An OpenAI-compatible chat endpoint (phi4r serve, vLLM, llama.cpp, ...) as an evaluation backend.

One request per (instance, run), `concurrency` in flight. Transient failures (connection errors,
timeouts, 408/409/425/429/5xx) are retried with exponential backoff and jitter, honouring
Retry-After. One sample never ends the run: a request the server refuses (400, 413, 422: a prompt
longer than the context, ...) or one still failing after its retries becomes a logged error, scored
wrong. Only what fails every request stops it with `BackendError` (401/403/404: a wrong key, URL or
model; `concurrency` (at least 3) requests in a row failing after their retries: the server is
down), so a dead server is never mistaken for wrong answers.

The context: `max_tokens` is clamped to the `max_model_len` that `/v1/models` reports (vLLM and
phi4r serve do). The endpoint does not count the prompt's tokens for us, so a completion that does
not fit is refused; when the refusal states the prompt's token count (vLLM's, phi4r's and
llama.cpp's messages do), the request is sent once more with the budget the context leaves, which is
what the local engine and vLLM (max_tokens unset) do, and the sample records that budget.
"""
from __future__ import annotations

import json
import random
import re
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import httpx

from ..chat import DEFAULT_SYSTEM_PROMPT
from ..reasoning import split_reasoning
from .backends import BackendError, Completion, derive_seed, messages

RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}
FATAL = {401, 403, 404, 405}  # every request would get the same: stop, don't score

# The card's recommended sampling; servers often drop a model's generation_config, so send it.
CARD_SAMPLING = {"temperature": 0.8, "top_p": 0.95, "top_k": 50}

# How servers state the context and the prompt's length in a refusal (vLLM, phi4r, OpenAI).
_CONTEXT = [re.compile(p) for p in (r"maximum context length is (\d+)", r"max_model_len\) is (\d+)")]
_PROMPT = [re.compile(p) for p in (r"(\d+) (?:tokens )?in the (?:messages|prompt|input)", r"has (\d+) input tokens",
                                   r"prompt has (\d+) tokens", r"prompt contains at least (\d+)")]


class Refused(Exception):
    """The server refused this request: asking again gets the same answer."""

    def __init__(self, message: str, body: str):
        super().__init__(message)
        self.body = body


class Unavailable(Exception):
    """Transient failures outlasted the retries: a later (resumed) run may succeed."""


def chat_url(url: str) -> str:
    """Accept a server root, an OpenAI base URL (`.../v1`) or the full chat completions URL."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


def error_message(text: str) -> str:
    """`error.message` of an OpenAI-shaped error body, else the body as it is."""
    try:
        message = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return text
    return message if isinstance(message, str) else text


def request_json(client: httpx.Client, method: str, url: str, body: dict | None, retries: int, delay) -> dict:
    """The JSON reply to one request, asked up to `retries` more times after a transient failure
    (a transport error, a RETRYABLE status), `delay(attempt, Retry-After header or None)` seconds
    apart. Raises BackendError for a FATAL status (every request would get the same), Refused for
    another error status, Unavailable when the retries are used up."""
    for attempt in range(retries + 1):
        retry_after = None
        try:
            r = client.request(method, url, json=body)
        except httpx.TransportError as e:  # connection refused/reset, timeouts
            error = f"{type(e).__name__}: {e}"
        else:
            if r.status_code == 200:
                return r.json()
            error = f"HTTP {r.status_code}: {error_message(r.text)[:500]}"
            if r.status_code in FATAL:
                raise BackendError(f"{url} rejected the request ({error})")
            if r.status_code not in RETRYABLE:
                raise Refused(f"{url} refused the request ({error})", r.text)
            retry_after = r.headers.get("retry-after")
        if attempt == retries:
            raise Unavailable(f"{url} failed {attempt + 1} times; last error: {error}")
        time.sleep(delay(attempt, retry_after))
    raise AssertionError("unreachable")


def _first_int(patterns, text: str) -> int | None:
    return next((int(m.group(1)) for p in patterns if (m := p.search(text))), None)


def fitting_budget(refusal: str, max_tokens: int | None, max_model_len: int | None) -> int | None:
    """The max_tokens that fits the context, from a refusal that states the prompt's length; None
    when the refusal is not about the completion's length (e.g. the prompt alone is too long)."""
    try:  # llama.cpp's exceed_context_size_error carries the numbers as fields
        error = json.loads(refusal).get("error") or {}
        context, prompt = error.get("n_ctx"), error.get("n_prompt_tokens")
    except (ValueError, AttributeError):
        context = prompt = None
    context = context or _first_int(_CONTEXT, refusal) or max_model_len
    prompt = prompt or _first_int(_PROMPT, refusal)
    if not (isinstance(context, int) and isinstance(prompt, int)) or prompt >= context:
        return None
    room = context - prompt
    return room if max_tokens is None or max_tokens > room else None


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
        entry = self._served_model(model)
        self.model = model or entry["id"]
        limit = entry.get("max_model_len")
        self.max_model_len = limit if isinstance(limit, int) and limit > 0 else None
        # The context decides which samples fit, so a resumed run must see the same one.
        context = f", max_model_len={self.max_model_len}" if self.max_model_len else ""
        self.name = f"{self.url} ({self.model}{context})"

    def _served_model(self, model: str | None) -> dict:
        """The `/v1/models` entry of `model` (the first listed when None), for its id and context.
        A given model needs no listing, but a server that cannot be reached stops us here."""
        url = self.url.removesuffix("/chat/completions") + "/models"
        try:
            entries = [e for e in self._request("GET", url)["data"] if model is None or e.get("id") == model]
            return entries[0] if model is None else (entries or [{}])[0]
        except Unavailable as e:
            raise BackendError(str(e)) from None
        except BackendError:  # a wrong key or URL
            if model is None:
                raise
            return {}
        except (Refused, KeyError, IndexError, TypeError, AttributeError, ValueError):
            if model is None:
                raise BackendError(f"{url} lists no model; pass --served-model") from None
            return {}

    def sampling_defaults(self) -> dict:
        return dict(CARD_SAMPLING)

    def _request(self, method: str, url: str, body: dict | None = None) -> dict:
        return request_json(self.client, method, url, body, self.retries, self._delay)

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
        if self.max_model_len and body.get("max_tokens", 0) > self.max_model_len:
            body["max_tokens"] = self.max_model_len  # never more than any prompt could leave
        if sampling.get("top_k"):  # 0/None: leave top-k off (and unsent, for servers that reject it)
            body["top_k"] = sampling["top_k"]
        if sampling.get("thinking_budget") is not None:  # vLLM's name, which phi4r serve shares
            body["thinking_token_budget"] = sampling["thinking_budget"]
        return body

    def _complete_one(self, job, sampling, system_prompt) -> Completion:
        body = self._body(job, sampling, system_prompt)
        try:
            data = self._request("POST", self.url, body)
        except Refused as e:
            budget = fitting_budget(e.body, body.get("max_tokens"), self.max_model_len)
            if budget is None:
                raise
            body["max_tokens"] = budget  # the prompt fits; the completion gets what the context leaves
            data = self._request("POST", self.url, body)
        try:
            choice = data["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError):
            raise Unavailable(f"{self.url} returned no choice: {str(data)[:500]}") from None
        completion = completion_from_message(message, choice.get("finish_reason"), data.get("usage") or {})
        if body.get("max_tokens") != sampling.get("max_tokens"):
            completion.max_tokens = body["max_tokens"]
        return completion

    def complete(self, jobs, sampling, system_prompt):
        """Yield (job, completion) as requests finish; a refused or failed request yields a failed
        completion. On a `BackendError`, requests not yet started are cancelled, those in flight are
        still collected, then it is raised."""
        stop = threading.Event()

        def work(job):
            if stop.is_set():
                return None
            try:
                return self._complete_one(job, sampling, system_prompt)
            except Refused as e:
                return Completion.failed(str(e))
            except Unavailable as e:
                return Completion.failed(str(e), retry=True)
            except BackendError:
                stop.set()  # at once, so this worker starts no further request
                raise

        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            pending = {pool.submit(work, job): job for job in jobs}
            failure, failed_in_a_row = None, 0
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    job = pending.pop(future)
                    try:
                        completion = future.result()
                    except BackendError as e:
                        failure = failure or e
                        continue
                    if completion is None:
                        continue
                    failed_in_a_row = failed_in_a_row + 1 if completion.retry else 0
                    if failed_in_a_row >= max(3, self.concurrency) and failure is None:
                        stop.set()  # the server is down: stop asking, rather than fail every sample
                        failure = BackendError(f"{failed_in_a_row} requests in a row failed after their retries; "
                                               f"last: {completion.error}")
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
