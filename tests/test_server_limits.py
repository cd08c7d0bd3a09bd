"""Server limits and lifecycle: clients that leave mid-request, a full queue (429 with Retry-After),
the body limit without a Content-Length, and shutdown with requests in flight.

Long requests ask for 30000 tokens of a 32768-token context: far more than any machine generates in
the few seconds these tests wait, so a freed slot can only come from an abort."""
from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from phi4r.api import LLM
from phi4r.server.app import create_app, serve_in_thread
from phi4r.tiny import make_checkpoint

USER = [{"role": "user", "content": "Count to a thousand."}]
LONG = {"model": "tiny", "messages": USER, "max_tokens": 30000, "ignore_eos": True}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(make_checkpoint(tmp_path_factory.mktemp("tiny"), max_position_embeddings=32768,
                               system_prompt="You are Phi."))


def app_for(checkpoint, **kw):
    llm = LLM(checkpoint, max_num_seqs=1)
    return create_app(llm, model_name="tiny", **kw), llm


def finished(url: str, reason: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(f'phi4r_request_finish_total{{reason="{reason}"}} '):
            return float(line.split()[-1])
    return 0.0


class Stream(threading.Thread):
    """A streamed chat read in the background; `events` are its `data:` payloads."""

    def __init__(self, url: str, body: dict):
        super().__init__(daemon=True)
        self.url, self.body, self.events, self.error = url, {**body, "stream": True}, [], None
        self.stop = threading.Event()

    def run(self):
        try:
            with httpx.stream("POST", self.url + "/v1/chat/completions", json=self.body, timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line[6:])
                    if self.stop.is_set():
                        return
        except Exception as e:  # reported by the test that reads it
            self.error = e


def wait_until(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_full_queue_is_429_with_retry_after(checkpoint):
    app, llm = app_for(checkpoint, max_queue=1)
    with serve_in_thread(app, graceful_timeout=1) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=10)
        running, waiting = Stream(url, LONG), Stream(url, LONG)
        running.start()
        wait_until(lambda: llm.engine.num_running() == 1)
        waiting.start()  # one slot, one queue place: this one waits
        wait_until(lambda: "phi4r_num_requests_waiting 1" in httpx.get(url + "/metrics").text)
        with pytest.raises(openai.RateLimitError) as e:
            client.chat.completions.create(model="tiny", messages=USER, max_tokens=4)
        assert e.value.response.headers["retry-after"] == "1"
        assert e.value.code == "queue_full"
        running.stop.set()
        waiting.stop.set()
        running.join(10)
        waiting.join(10)
        wait_until(lambda: not llm.engine.has_unfinished())
        # capacity is back
        assert client.chat.completions.create(model="tiny", messages=USER, max_tokens=2).choices


def test_body_limit_without_content_length(checkpoint):
    app, _ = app_for(checkpoint, max_body_bytes=1000)

    def chunks():  # a generator body is sent chunked, with no Content-Length to refuse early
        yield b'{"model": "tiny", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 200
        yield b'"}]}'

    with serve_in_thread(app, graceful_timeout=1) as url:
        r = httpx.post(url + "/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        small = httpx.post(url + "/v1/chat/completions", json={"model": "tiny", "messages": USER, "max_tokens": 2})
        assert small.status_code == 200


def test_non_streamed_client_that_leaves_frees_its_slot(checkpoint):
    app, llm = app_for(checkpoint)
    with serve_in_thread(app, graceful_timeout=1) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/chat/completions", json=LONG, timeout=httpx.Timeout(60, read=1.0))
        wait_until(lambda: not llm.engine.has_unfinished(), seconds=3)
        assert finished(url, "abort") == 1
        gone = 'phi4r_requests_total{endpoint="/v1/chat/completions",status="499"} 1'
        wait_until(lambda: gone in httpx.get(url + "/metrics").text, seconds=3)


def test_disconnect_mid_stream_frees_the_slot(checkpoint):
    app, llm = app_for(checkpoint)
    with serve_in_thread(app, graceful_timeout=1) as url:
        with httpx.stream("POST", url + "/v1/chat/completions", json={**LONG, "stream": True}) as r:
            lines = r.iter_lines()
            for _ in range(6):
                next(lines)
            assert llm.engine.num_running() == 1
        wait_until(lambda: not llm.engine.has_unfinished(), seconds=3)
        assert finished(url, "abort") == 1
        assert "phi4r_num_requests_running 0" in httpx.get(url + "/metrics").text


def test_shutdown_ends_streams_cleanly(checkpoint):
    app, llm = app_for(checkpoint)
    with serve_in_thread(app, graceful_timeout=0.5) as url:
        stream = Stream(url, LONG)
        stream.start()
        wait_until(lambda: len(stream.events) > 3)
    stream.join(10)
    assert stream.error is None  # not a dropped connection
    assert stream.events[-1] == "[DONE]"
    finish = [c["finish_reason"] for e in stream.events[:-1] for c in json.loads(e)["choices"] if c["finish_reason"]]
    assert finish == ["abort"]
    assert not llm.engine.has_unfinished()


def test_engine_failure_fails_the_requests_and_serving_goes_on(checkpoint):
    app, llm = app_for(checkpoint)
    step, failures = llm.engine.step, [1]

    def failing_step():
        if failures:
            failures.pop()
            raise RuntimeError("boom")
        return step()

    llm.engine.step = failing_step
    with serve_in_thread(app, graceful_timeout=1) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=30)
        with pytest.raises(openai.InternalServerError, match="engine error: boom"):
            client.chat.completions.create(model="tiny", messages=USER, max_tokens=4)
        assert client.chat.completions.create(model="tiny", messages=USER, max_tokens=4).choices
        wait_until(lambda: not llm.engine.has_unfinished())
