"""The endpoint backend against small OpenAI-compatible servers on 127.0.0.1: retries of transient
failures, clear permanent failures, and the reasoning/content fields."""
import socket
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from phi4r.evals import BackendError, EndpointBackend, run_eval
from phi4r.evals.endpoint import chat_url, completion_from_message


class Server:
    """Run a FastAPI app with uvicorn in a thread on a free port."""

    def __init__(self, app):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def flaky_app(failures: list[int], answer="<think>hmm</think>Final Answer: 1"):
    """Answers chat requests, but first fails with the given status codes, one per request."""
    app = FastAPI()
    app.state.requests = []

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": "stub", "object": "model"}]}

    @app.post("/v1/chat/completions")
    def chat(body: dict):
        app.state.requests.append(body)
        if failures:
            return JSONResponse({"error": {"message": "try later"}}, status_code=failures.pop(0),
                                headers={"Retry-After": "0"})
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                             "finish_reason": "stop"}], "usage": {"completion_tokens": 7}}

    return app


def test_transient_failures_are_retried_and_the_run_completes(tmp_path):
    app = flaky_app([500, 429, 503, 502, 429])
    with Server(app) as server:
        backend = EndpointBackend(server.url, concurrency=2, retries=4, backoff=0.01)
        assert backend.model == "stub"  # the served model, asked from /v1/models
        summary = run_eval(backend, ["arithmetic"], tmp_path, runs=2, limit=3, progress=False, plots=False)
    assert summary["metrics"]["overall"]["samples"] == 6
    assert len(app.state.requests) == 6 + 5
    body = app.state.requests[-1]
    assert (body["temperature"], body["top_p"], body["top_k"]) == (0.8, 0.95, 50)  # the card's sampling
    assert body["model"] == "stub" and body["messages"][0]["role"] == "system"
    assert len({r["seed"] for r in app.state.requests}) == 6  # each run its own seed, the same on retry


def test_permanent_failure_is_reported_not_scored(tmp_path):
    with Server(flaky_app([500] * 100)) as server:
        backend = EndpointBackend(server.url, model="m", concurrency=2, retries=2, backoff=0.01)
        with pytest.raises(BackendError, match=r"failed 3 times; last error: HTTP 500"):
            run_eval(backend, ["arithmetic"], tmp_path, runs=1, limit=3, progress=False, plots=False)
    assert not (tmp_path / "samples.jsonl").exists() or not (tmp_path / "samples.jsonl").read_text()


def test_a_rejected_request_is_not_retried(tmp_path):
    app = flaky_app([400] * 100)
    with Server(app) as server:
        backend = EndpointBackend(server.url, model="m", concurrency=1, retries=5, backoff=0.01)
        with pytest.raises(BackendError, match="rejected the request.*HTTP 400"):
            run_eval(backend, ["arithmetic"], tmp_path, runs=1, limit=3, progress=False, plots=False)
    assert len(app.state.requests) == 1


def test_unreachable_endpoint_is_reported():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(BackendError, match="ConnectError"):
        EndpointBackend(f"http://127.0.0.1:{port}", retries=1, backoff=0.01)


def test_reasoning_fields_and_split():
    c = completion_from_message({"content": "42", "reasoning_content": "think"}, "stop",
                                {"completion_tokens": 9, "completion_tokens_details": {"reasoning_tokens": 5}})
    assert (c.reasoning, c.content, c.response_tokens, c.reasoning_tokens) == ("think", "42", 9, 5)
    assert completion_from_message({"content": "42", "reasoning": "r"}, "stop", {}).reasoning == "r"
    # No reasoning parser on the server: split the text at the last </think>.
    c = completion_from_message({"content": "<think>a</think>b</think>Final Answer: 3"}, "stop", {"completion_tokens": 8})
    assert (c.reasoning, c.content) == ("a</think>b", "Final Answer: 3")
    assert c.reasoning_tokens == round(8 * 10 / 25)  # apportioned by characters when not counted
    # Cut inside the thinking: no content, so nothing to grade.
    c = completion_from_message({"content": None, "reasoning_content": "still thinking"}, "length", {})
    assert c.content is None and c.answer_text() == "<think>still thinking"


def test_chat_url_forms():
    assert chat_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"
