"""The FastAPI application: one `LLM`'s engine shared by every request through continuous batching.

    app = create_app(LLM("nano"), model_name="nano", api_key=None)
    make_server(app, host="127.0.0.1", port=8000).run()
"""
from __future__ import annotations

import asyncio
import threading
import time
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from . import defaults, errors
from .generation import router as generation_router
from .jobs import Admission
from .metrics import Metrics
from .middleware import Gate, Observe
from .runner import EngineRunner

PAGE = Path(__file__).resolve().parent.parent / "web" / "index.html"


class ServerState:
    """What the handlers share: the engine (through its runner), tokenizer, limits and metrics."""

    def __init__(self, llm, model_name: str, max_queue: int, loop_guard: bool):
        self.llm, self.engine, self.tokenizer = llm, llm.engine, llm.tokenizer
        self.model_name, self.loop_guard = model_name, loop_guard
        self.created = int(time.time())
        self.runner = EngineRunner(self.engine)
        self.admission = Admission(self.engine, max_queue)
        self.metrics = Metrics()


def create_app(llm, model_name: str = "nano", api_key: str | None = None, max_queue: int = defaults.MAX_QUEUE,
               max_body_bytes: int = defaults.MAX_BODY_BYTES, loop_guard: bool = False,
               reasoning_stream: str = "eager") -> FastAPI:
    """loop_guard: the default of the per-request `loop_guard` field (SamplingParams.loop_guard).
    reasoning_stream: how streamed chats send content after `</think>` unless a request says
    otherwise: "eager" at once (with a correction if a later `</think>` comes), "hold" once certain."""
    if reasoning_stream not in ("eager", "hold"):
        raise ValueError(f"reasoning_stream must be 'eager' or 'hold', got {reasoning_stream!r}")
    state = ServerState(llm, model_name, max_queue, loop_guard)
    state.reasoning_stream = reasoning_stream

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.runner.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            state.runner.stop()

    app = FastAPI(title="phi4r", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state
    errors.install(app)
    app.include_router(generation_router)
    app.add_middleware(Gate, api_key=api_key or None, max_body_bytes=max_body_bytes)
    app.add_middleware(Observe, metrics=state.metrics)  # outermost: it also counts the gate's refusals
    page = PAGE.read_text(encoding="utf-8")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{
            "id": model_name, "object": "model", "created": state.created, "owned_by": "phi4r",
            "root": str(getattr(llm, "model_path", None) or model_name), "max_model_len": state.engine.max_model_len}]}

    @app.get("/health")
    async def health():
        if not state.runner.alive():
            return JSONResponse({"status": "engine thread stopped"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        text = state.metrics.render(running=state.admission.running, waiting=state.admission.waiting)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return page

    return app


def make_server(app: FastAPI, host: str = "127.0.0.1", port: int = 8000,
                graceful_timeout: float = defaults.GRACEFUL_TIMEOUT, log_level: str = "info"):
    """A uvicorn.Server for `app` (port 0: any free port). On shutdown it stops accepting, lets the
    requests in flight run for up to `graceful_timeout` seconds, then aborts the rest, which end
    cleanly: finish_reason "abort", and `data: [DONE]` for streams."""
    import uvicorn

    runner = app.state.server.runner

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None):
            timer = asyncio.get_running_loop().call_later(graceful_timeout, runner.abort_all)
            try:
                await super().shutdown(sockets)
            finally:
                timer.cancel()

    # uvicorn's own timeout (cancelling handlers, dropping connections) is only the backstop.
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=graceful_timeout + 5, lifespan="on")
    return Server(config)


@contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", graceful_timeout: float = defaults.GRACEFUL_TIMEOUT,
                    startup_timeout: float = 60.0):
    """Run `app` on a free port in a background thread; yields the base URL (tests, benchmarks)."""
    server = make_server(app, host=host, port=0, graceful_timeout=graceful_timeout, log_level="warning")
    thread = threading.Thread(target=server.run, name="phi4r-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(graceful_timeout + 10)
