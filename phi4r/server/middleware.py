"""ASGI middleware: the gate every /v1 request passes before FastAPI parses anything (API key, body
size), and the observer that counts requests by status for /metrics."""
from __future__ import annotations

import hmac
import time

from .errors import APIError
from .metrics import Metrics

GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")
KNOWN_PATHS = (*GENERATION_PATHS, "/v1/models", "/health", "/metrics", "/")


class Gate:
    """401 without the right `Authorization: Bearer KEY` on /v1 (vLLM's rule: the page, /health and
    /metrics stay open); 413 for a body over `max_body_bytes`. The body is read here, bounded, and
    replayed to the app, so a chunked upload cannot get past the limit either."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1"):
            return await self.app(scope, receive, send)
        if self.api_key is not None and not self._authorized(scope):
            return await _reply(send, APIError(401, "missing or invalid API key (send Authorization: Bearer KEY)",
                                               code="invalid_api_key"))
        too_large = APIError(413, f"request body exceeds the server's limit of {self.max_body_bytes} bytes",
                             code="request_too_large")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return await _reply(send, too_large)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending its body
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return await _reply(send, too_large)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: the disconnect that handlers watch for

        await self.app(scope, replay, send)

    def _authorized(self, scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())


class Observe:
    """Counts every request by endpoint and status; times the generation endpoints to their last byte."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def observed_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
            timed = path in GENERATION_PATHS and status == 200
            self.metrics.request_done(path, status, time.perf_counter() - start if timed else None)


async def _reply(send, error: APIError) -> None:
    response = error.response()
    await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})
