"""The endpoint backend against small OpenAI-compatible servers on 127.0.0.1: retries of transient
failures, refused samples logged as errors while the run goes on, a dead server stopping the run,
max_tokens fitted to the context, and the reasoning/content fields."""
import json
import socket
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from phi4r.evals import BackendError, EndpointBackend, run_eval
from phi4r.evals.endpoint import chat_url, completion_from_message, fitting_budget


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


def logged(out):
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_a_server_that_stays_down_stops_the_run_and_a_resume_asks_its_failures_again(tmp_path):
    app = flaky_app([500] * 6)  # with 1 retry each: three samples in a row fail, then the server is back
    with Server(app) as server:
        backend = EndpointBackend(server.url, model="m", concurrency=1, retries=1, backoff=0.01)
        with pytest.raises(BackendError, match=r"3 requests in a row failed.*failed 2 times; last error: HTTP 500"):
            run_eval(backend, ["arithmetic"], tmp_path, runs=1, limit=5, progress=False, plots=False)
        failed = [r for r in logged(tmp_path) if r.get("error")]
        assert len(failed) == 3 and all(r["retry"] and r["score"] == 0.0 for r in failed)
        answered_before = len(logged(tmp_path)) - 3
        summary = run_eval(backend, ["arithmetic"], tmp_path, runs=1, limit=5, progress=False, plots=False)
    m = summary["metrics"]["overall"]
    assert m["samples"] == 5 and m["errors"] == 0 and summary["errors_to_retry"] == 0
    assert len(app.state.requests) == 6 + answered_before + (5 - answered_before)  # nothing answered twice
    rows = logged(tmp_path)
    assert len(rows) == 5 + 3 and {r["id"] for r in rows if r.get("error")} <= {r["id"] for r in rows[3:]}


def test_a_refused_request_is_logged_scored_wrong_and_not_asked_again(tmp_path):
    app = flaky_app([400, 422])
    with Server(app) as server:
        backend = EndpointBackend(server.url, model="m", concurrency=1, retries=5, backoff=0.01)
        summary = run_eval(backend, ["arithmetic", "sat3"], tmp_path, runs=1, limit=2, progress=False, plots=False)
        assert len(app.state.requests) == 4  # a refusal is not retried
        refused = [r for r in logged(tmp_path) if r.get("error")]
        assert len(refused) == 2
        assert all("refused the request (HTTP 4" in r["error"] and not r["retry"] and r["score"] == 0.0
                   for r in refused)
        m = summary["metrics"]
        assert m["overall"]["errors"] == 2 and summary["errors_to_retry"] == 0
        assert m["by_task"]["arithmetic"]["errors"] + m["by_task"]["sat3"]["errors"] == 2
        assert "| errors (no answer, scored 0) |" in (tmp_path / "report.md").read_text()
        run_eval(backend, ["arithmetic", "sat3"], tmp_path, runs=1, limit=2, progress=False, plots=False)
        assert len(app.state.requests) == 4  # resumed: a refusal is final, nothing is asked again


def test_unauthorized_stops_the_run(tmp_path):
    app = flaky_app([401] * 10)
    with Server(app) as server:
        backend = EndpointBackend(server.url, model="m", concurrency=1, retries=5, backoff=0.01)
        with pytest.raises(BackendError, match="rejected the request.*HTTP 401"):
            run_eval(backend, ["arithmetic"], tmp_path, runs=1, limit=3, progress=False, plots=False)
    assert len(app.state.requests) == 1


def vllm_like_app(context: int):
    """Counts a token per 4 characters of the user message; refuses as vLLM does what cannot fit, and
    lists `max_model_len` in /v1/models."""
    app = FastAPI()
    app.state.requests = []

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": "other", "max_model_len": 7},
                                           {"id": "served", "object": "model", "max_model_len": context}]}

    @app.post("/v1/chat/completions")
    def chat(body: dict):
        app.state.requests.append(body)
        prompt = len(body["messages"][-1]["content"]) // 4
        asked = body.get("max_tokens")
        if prompt >= context:
            message = (f"This model's maximum context length is {context} tokens. However, your request has "
                       f"{prompt} input tokens. Please reduce the length of the input messages.")
        elif asked is not None and prompt + asked > context:
            message = (f"'max_tokens' or 'max_completion_tokens' is too large: {asked}. This model's maximum context "
                       f"length is {context} tokens and your request has {prompt} input tokens "
                       f"({asked} > {context} - {prompt}).")
        else:
            return {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Final Answer: 1"},
                                 "finish_reason": "length"}], "usage": {"completion_tokens": asked or 1}}
        return JSONResponse({"error": {"message": message, "type": "BadRequestError", "code": 400}}, status_code=400)

    return app


def test_max_tokens_fits_the_context_the_server_reports(tmp_path):
    app = vllm_like_app(context=60)
    with Server(app) as server:
        backend = EndpointBackend(server.url, model="served", concurrency=2, backoff=0.01)
        assert backend.max_model_len == 60 and "max_model_len=60" in backend.name
        summary = run_eval(backend, ["arithmetic", "sat3"], tmp_path, runs=1, limit=2,
                           sampling={"max_tokens": 4096}, progress=False, plots=False)
    rows = {r["id"]: r for r in logged(tmp_path)}
    assert all(b["max_tokens"] <= 60 for b in app.state.requests)  # never more than the context
    for r in rows.values():
        prompt = len(r["prompt"]) // 4
        if prompt < 60:  # the prompt fits: answered with what the context leaves, and that is recorded
            assert r.get("error") is None and r["max_tokens"] == r["response_tokens"] == 60 - prompt
        else:  # the prompt alone is too long: refused, logged, scored wrong
            assert "maximum context length is 60 tokens" in r["error"] and r["score"] == 0.0
    by_task = summary["metrics"]["by_task"]
    assert by_task["arithmetic"]["errors"] == 0 and by_task["sat3"]["errors"] == 2


def test_fitting_budget_reads_the_servers_refusals():
    assert fitting_budget("This model's maximum context length is 1024 tokens. However, you requested 2097 tokens "
                          "(49 in the messages, 2048 in the completion).", 2048, None) == 975  # phi4r, older vLLM
    assert fitting_budget("This model's maximum context length is 1024 tokens. However, you requested 1100 tokens "
                          "(100 in the messages, 1000 in the completion).", 1000, None) == 924
    assert fitting_budget('{"error": {"code": 400, "type": "exceed_context_size_error", "n_prompt_tokens": 300, '
                          '"n_ctx": 512}}', 400, None) == 212  # llama.cpp
    # The prompt alone does not fit, or nothing says how long it is: no retry.
    assert fitting_budget("the prompt has 1092 tokens but the context (max_model_len) is 1024 tokens", None, 1024) is None
    assert fitting_budget("bad top_p", 100, 1024) is None
    assert fitting_budget("your request has 10 input tokens", 5, 1024) is None  # it fit: refused for another reason


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
