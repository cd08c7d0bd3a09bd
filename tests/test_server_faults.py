"""Hostile requests against a busy server: the shipped nano model (`LLM()`, the default a user gets)
serves normal streams while bad requests arrive. Each bad request gets its 4xx in OpenAI's error
shape (or, for a fault inside the engine, a 500 / an error event), every normal stream finishes as
it would alone, and the server stays healthy afterwards."""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from phi4r.api import LLM
from phi4r.server import generation
from phi4r.server.app import create_app, serve_in_thread

USER = [{"role": "user", "content": "What is 7 + 5?"}]
FAULT_SEED = 4242  # requests with this seed hit the injected engine fault
NORMAL = {"messages": USER, "max_tokens": 256, "ignore_eos": True, "stream": True,
          "stream_options": {"include_usage": True}}


@pytest.fixture(scope="module")
def server():
    llm = LLM()
    app = create_app(llm, model_name="nano")
    with serve_in_thread(app, graceful_timeout=2) as url:
        yield url, llm, app.state.server


@pytest.fixture
def faulty(server, monkeypatch):
    """The engine raises while serving any request seeded FAULT_SEED, from its third token on."""
    engine = server[1].engine
    real = engine._append

    def append(s, token):
        if s.params.seed == FAULT_SEED and len(s.tokens) >= 2:
            raise RuntimeError("injected fault")
        return real(s, token)
    monkeypatch.setattr(engine, "_append", append)


def raw(url: str, body, path: str = "/v1/chat/completions") -> httpx.Response:
    """POST `body` as given (a str is sent verbatim: NaN, lone surrogate escapes, broken JSON)."""
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return httpx.post(url + path, content=content, headers={"content-type": "application/json"}, timeout=60)


def assert_openai_error(r: httpx.Response, status: int, param: str | None = None, code: str | None = None):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param and param.split("[")[0].split(".")[0] in error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def events(r: httpx.Response) -> list:
    return [line[6:] for line in r.iter_lines() if line.startswith("data: ")]


def sse(url: str, body: dict) -> list:
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        return events(r)


class Stream(threading.Thread):
    """A normal streamed chat; `started` is set at its first content or reasoning chunk."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.started, self.data, self.error, self.ended = url, threading.Event(), [], None, None

    def run(self):
        try:
            with httpx.stream("POST", self.url + "/v1/chat/completions", json=NORMAL, timeout=120) as r:
                for line in r.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        self.data.append(json.loads(line[6:]))
                        if len(self.data) > 1:
                            self.started.set()
                    elif line == "data: [DONE]":
                        self.data.append("[DONE]")
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e
        finally:
            self.ended = time.monotonic()
            self.started.set()


# (name, body, path, status, param, code): each bad request and what it must get
BAD = [
    ("nan temperature", '{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', None, 400,
     "temperature", None),
    ("inf top_p", '{"messages": [{"role": "user", "content": "x"}], "top_p": Infinity}', None, 400, "top_p", None),
    ("nan min_p", '{"messages": [{"role": "user", "content": "x"}], "min_p": NaN}', None, 400, "min_p", None),
    ("huge seed", {"messages": USER, "seed": 2**64}, None, 400, "seed", None),
    ("huge n", {"messages": USER, "n": 10**30}, None, 400, "n", None),
    ("huge stop id", {"messages": USER, "stop_token_ids": [2**70]}, None, 400, "stop_token_ids[0]", None),
    ("huge max_tokens", {"messages": USER, "max_tokens": 10**19}, None, 400, "max_tokens", None),
    ("lone surrogate", '{"messages": [{"role": "user", "content": "a\\ud800b"}]}', None, 400,
     "messages[0].content", "invalid_unicode"),
    ("surrogate in a text part", '{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}',
     None, 400, "messages[0].content[0].text", "invalid_unicode"),
    ("surrogate in stop", '{"messages": [{"role": "user", "content": "x"}], "stop": ["\\ud800"]}', None, 400,
     "stop[0]", "invalid_unicode"),
    ("surrogate in a prompt", '{"prompt": "\\ud83d"}', "/v1/completions", 400, "prompt", "invalid_unicode"),
    ("no content", {"messages": [{"role": "user"}]}, None, 400, "messages[0].content", None),
    ("null user content", {"messages": [{"role": "user", "content": None}]}, None, 400, "messages[0].content", None),
    ("more sequences than the server holds", {"prompt": ["hi"] * 300, "max_tokens": 2}, "/v1/completions", 400,
     "prompt", "too_many_sequences"),
    ("malformed JSON", '{"messages": [', None, 400, None, "invalid_json"),
    ("invalid UTF-8", b'{"messages": [{"role": "user", "content": "\xff"}]}', None, 400, None, None),
    ("not an object", "[1, 2]", None, 400, None, None),
    ("loop_guard not a bool", {"messages": USER, "loop_guard": "yes"}, None, 400, "loop_guard", None),
]


def test_bad_requests_under_load_fail_alone_and_the_server_stays_healthy(server, faulty):
    url, llm, state = server
    streams = [Stream(url) for _ in range(4)]
    for s in streams:
        s.start()
    for s in streams:
        assert s.started.wait(120)
    assert not any(s.ended for s in streams), "the normal streams must still be running"

    with ThreadPoolExecutor(8) as pool:
        bad = {name: pool.submit(raw, url, body, path or "/v1/chat/completions")
               for name, body, path, *_ in BAD}
        # Requests the engine runs next to the streams: a tiny top_p (greedy, not a crash) and injected faults.
        tiny_top_p = pool.submit(raw, url, {"messages": [{"role": "user", "content": "x"}], "top_p": 1e-300,
                                            "temperature": 1, "max_tokens": 8, "ignore_eos": True})
        tiny_top_p_stream = pool.submit(sse, url, {"messages": USER, "top_p": 1e-300, "max_tokens": 8, "stream": True})
        fault = pool.submit(raw, url, {"messages": USER, "seed": FAULT_SEED, "max_tokens": 16, "n": 2})
        fault_stream = pool.submit(sse, url, {"messages": USER, "seed": FAULT_SEED, "max_tokens": 16, "stream": True})
    answered = time.monotonic()  # every bad request has its answer

    for name, _, _, status, param, code in BAD:
        assert_openai_error(bad[name].result(), status, param, code)
    assert "300 sequences" in bad["more sequences than the server holds"].result().json()["error"]["message"]

    r = tiny_top_p.result()
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"
    assert r.json()["usage"]["completion_tokens"] == 8
    chunks = tiny_top_p_stream.result()
    assert chunks[-1] == "[DONE]" and json.loads(chunks[-2])["choices"][0]["finish_reason"] in ("stop", "length")

    error = assert_openai_error(fault.result(), 500, code="engine_error")
    assert "RuntimeError: injected fault" in error["message"]
    chunks = fault_stream.result()
    assert chunks[-1] == "[DONE]"
    assert "injected fault" in json.loads(chunks[-2])["error"]["message"]
    assert json.loads(chunks[0])["choices"][0]["delta"]["role"] == "assistant"  # a normal start

    for s in streams:
        s.join(120)
        assert s.error is None and s.data[-1] == "[DONE]"
        finish = [c["choices"][0]["finish_reason"] for c in s.data[:-1] if c["choices"]]
        assert finish[-1] == "length" and s.data[-2]["usage"]["completion_tokens"] == 256
        assert s.ended > answered  # the failures happened while this stream was being generated

    # Healthy afterwards: a normal request works, the engine holds nothing, /metrics counts the errors.
    r = raw(url, {"messages": USER, "max_tokens": 8})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"
    assert httpx.get(url + "/health").json() == {"status": "ok"}
    metrics = httpx.get(url + "/metrics")
    assert metrics.status_code == 200 and 'phi4r_request_finish_total{reason="error"}' in metrics.text
    engine = llm.engine
    assert not engine.running and not engine.requests and engine.cache.num_free() == engine.cache.num_blocks
    assert state.admission.outstanding == 0


def test_the_openai_client_sees_engine_faults_as_errors(server, faulty):
    client = openai.OpenAI(base_url=server[0] + "/v1", api_key="none", max_retries=0, timeout=60)
    with pytest.raises(openai.InternalServerError, match="injected fault"):
        client.chat.completions.create(model="nano", messages=USER, seed=FAULT_SEED, max_tokens=16)
    with pytest.raises(openai.APIError, match="injected fault"):
        for _ in client.chat.completions.create(model="nano", messages=USER, seed=FAULT_SEED, max_tokens=16,
                                                stream=True):
            pass
    with pytest.raises(openai.BadRequestError, match="top_p"):
        client.chat.completions.create(model="nano", messages=USER, top_p=1.5)
    with pytest.raises(openai.BadRequestError, match="can never|holds at most"):
        client.completions.create(model="nano", prompt=["hi"] * 300, max_tokens=2)
    r = client.chat.completions.create(model="nano", messages=USER, max_tokens=8, top_p=1e-300)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_unexpected_exceptions_are_openai_errors(server, monkeypatch):
    url, llm, _ = server

    def broken(*a, **kw):
        raise RuntimeError("a bug")
    monkeypatch.setattr(llm.tokenizer, "encode_chat", broken)
    error = assert_openai_error(raw(url, {"messages": USER, "max_tokens": 4}), 500, code="internal_error")
    assert "a bug" in error["message"]
    monkeypatch.undo()
    # After the 200 and its headers, a failing stream still ends with an error event and [DONE].
    monkeypatch.setattr(generation, "_stream_choice", broken)
    chunks = sse(url, {"messages": USER, "max_tokens": 4, "stream": True})
    assert chunks[-1] == "[DONE]" and json.loads(chunks[-2])["error"]["code"] == "internal_error"
    assert httpx.get(url + "/nowhere").json()["error"]["type"] == "not_found_error"


def test_models_report_max_model_len(server):
    [entry] = httpx.get(server[0] + "/v1/models").json()["data"]
    assert entry["max_model_len"] == server[1].engine.max_model_len == 1024


def test_loop_guard_per_request_and_as_the_server_default(server, monkeypatch):
    url, _, state = server
    # The nano model at temperature 0, asked to repeat a long run of "a b c", repeats one word until
    # max_tokens: the guard ends it.
    looping = "Repeat this text exactly:\n" + "a b c " * 30
    body = {"messages": [{"role": "user", "content": looping}], "temperature": 0, "max_tokens": 450}

    def finish(*extras) -> list[str]:  # the requests run side by side: one batch, one request's time
        with ThreadPoolExecutor(len(extras)) as pool:
            replies = list(pool.map(lambda extra: raw(url, {**body, **extra}), extras))
        assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
        return [r.json()["choices"][0]["finish_reason"] for r in replies]
    assert finish({}, {"loop_guard": True}) == ["length", "repetition"]
    monkeypatch.setattr(state, "loop_guard", True)  # what create_app(..., loop_guard=True) sets
    assert finish({}, {"loop_guard": False}) == ["repetition", "length"]
    assert create_app(server[1], loop_guard=True).state.server.loop_guard is True
