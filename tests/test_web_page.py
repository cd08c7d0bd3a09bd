"""The chat page in a real headless Chromium (selenium).

- On the nano model with the page's defaults: an answer, its token counts and speed, no max_tokens
  asked beyond the context, the loop guard on.
- On a tiny model: API key, a streamed answer with its thinking in a foldable section, the live
  thinking count, hiding the thinking, multi-turn history, a too-large max tokens, Stop.
- Against a scripted SSE server (the page's real code, chunks the model cannot be made to write):
  the correction that moves streamed content back into the thinking, following the newest output
  until the user scrolls up, a server without `max_model_len`.

A random tiny model writes gibberish and may stop at any token, so the checkpoint is constructed
for a known shape: it can never emit a stop token (see `never_stopping_checkpoint`), and the page's
thinking budget forces `</think>` after 6 tokens. Every answer is then 6 reasoning tokens, the
forced `</think>`, and content up to max tokens. The test checks that the page shows exactly the
reasoning and content the engine produced (recorded in-process), not any particular words.
"""
from __future__ import annotations

import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

import phi4r
from phi4r.api import LLM
from phi4r.server.app import PAGE, create_app, serve_in_thread
from phi4r.tiny import make_checkpoint

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
KEY = "page-key"
BUDGET = 6

pytestmark = pytest.mark.skipif(not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)),
                                reason="chromium and chromedriver are not installed")


def never_stopping_checkpoint(path):
    """A tiny checkpoint whose stop tokens' logits are always far below the rest: hidden dimension 0
    is a constant 10 (set in every embedding; no layer writes to it), so after the final RMSNorm it is
    a large positive feature, and the stop tokens' lm_head rows weigh it by -10 and nothing else."""
    path = make_checkpoint(path, max_position_embeddings=32768, system_prompt="You are Phi.")
    model, tokenizer = phi4r.load(path)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 10.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0] = 0.0
            layer.mlp.down_proj.weight[0] = 0.0
        for token in tokenizer.stop_ids:
            model.lm_head.weight[token] = 0.0
            model.lm_head.weight[token, 0] = -10.0
    phi4r.save(model, tokenizer, path)
    return path


def recording(llm):
    """Records each engine request's prompt and sampling params, and every finished output."""
    prompts, params, outputs = [], [], []
    add_request, step = llm.engine.add_request, llm.engine.step

    def recording_add(request_id, prompt_ids, sampling, *args, **kw):
        prompts.append(list(prompt_ids))
        params.append(sampling)
        return add_request(request_id, prompt_ids, sampling, *args, **kw)

    def recording_step():
        deltas = step()
        outputs.extend(d.output for d in deltas if d.output is not None)
        return deltas

    llm.engine.add_request, llm.engine.step = recording_add, recording_step
    return prompts, params, outputs


@pytest.fixture
def served(tmp_path):
    llm = LLM(str(never_stopping_checkpoint(tmp_path / "ckpt")), max_num_seqs=2, seed=0)
    prompts, params, outputs = recording(llm)
    with serve_in_thread(create_app(llm, model_name="tiny", api_key=KEY), graceful_timeout=1) as url:
        yield url, llm, prompts, params, outputs


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1000,700", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def raw(element) -> str:  # the text as set, without selenium's whitespace normalisation
    return element.get_attribute("textContent")


def ask(browser, text: str, turn: int):
    """Send `text`; the assistant turn once its answer is done."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.find_element(By.ID, "prompt").send_keys(text)
    browser.find_element(By.ID, "send").click()
    done = ".turn.assistant[data-done=true]"
    WebDriverWait(browser, 120).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, done)) == turn)
    return browser.find_elements(By.CSS_SELECTOR, ".turn.assistant")[turn - 1]


def stats(turn) -> tuple[int, int, float]:
    """The answer's shown thinking and answer token counts and tokens per second."""
    from selenium.webdriver.common.by import By

    shown = [turn.find_element(By.CSS_SELECTOR, ".stats .stat-" + k).text for k in ("thinking", "answer", "speed")]
    assert "tok/s" in turn.find_element(By.CSS_SELECTOR, ".stats").text
    return int(shown[0]), int(shown[1]), float(shown[2])


@pytest.mark.slow
def test_page_defaults_on_nano(browser):
    """A new user's first message: the nano model, every setting as the page starts."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    llm = LLM(max_num_seqs=2)
    _, params, outputs = recording(llm)
    with serve_in_thread(create_app(llm, model_name="nano"), graceful_timeout=1) as url:
        browser.get(url + "/")
        WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "model-name").text == "nano")
        assert browser.find_element(By.ID, "max-tokens").get_attribute("max") == str(llm.engine.max_model_len)
        turn = ask(browser, "What is 7 + 5?", 1)
    [out] = outputs
    assert not turn.find_elements(By.CSS_SELECTOR, ".error")
    # No max_tokens was asked for (the context decides), and the loop guard was on.
    assert params[0].max_tokens is None and params[0].loop_guard
    assert out.content.strip() and raw(turn.find_element(By.CSS_SELECTOR, ".answer")) == out.content.strip()
    assert raw(turn.find_element(By.CSS_SELECTOR, ".thinking-text")) == out.reasoning.strip()
    thinking, answer, speed = stats(turn)
    assert (thinking, answer) == (out.reasoning_tokens, len(out.token_ids) - out.reasoning_tokens)
    assert speed > 0


def test_chat_page(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, llm, prompts, params, outputs = served
    wait = WebDriverWait(browser, 60)
    find = browser.find_element

    browser.get(url + "/")
    # The server wants a key: the page asks for one, then finds the model.
    wait.until(lambda b: find(By.ID, "api-key-field").is_displayed())
    find(By.ID, "api-key").send_keys(KEY + "\t")
    wait.until(lambda b: find(By.ID, "model-name").text == "tiny")

    for field, value in (("temperature", "1"), ("max-tokens", "24"), ("thinking-budget", str(BUDGET))):
        find(By.ID, field).clear()
        find(By.ID, field).send_keys(value)

    first = ask(browser, "What is 2 + 2?", 1)
    [out] = outputs
    details = first.find_element(By.CSS_SELECTOR, "details.thinking")
    thinking = first.find_element(By.CSS_SELECTOR, ".thinking-text")
    answer = first.find_element(By.CSS_SELECTOR, ".answer")
    # The page shows what the engine generated (without the blank lines around it), split where the server split it.
    assert out.thinking_budget_reached and out.reasoning and out.content
    assert raw(thinking) == out.reasoning.strip() and raw(answer) == out.content.strip()
    assert details.is_displayed() and details.get_attribute("open") is not None and thinking.is_displayed()
    # The live count is the server's reasoning token count: the budget plus the forced </think>.
    assert first.find_element(By.CSS_SELECTOR, ".thinking-count").text == str(BUDGET + 1) == str(out.reasoning_tokens)
    assert stats(first)[:2] == (BUDGET + 1, 24 - BUDGET - 1) and params[0].max_tokens == 24

    # Fold the thinking away and back.
    details.find_element(By.TAG_NAME, "summary").click()
    assert details.get_attribute("open") is None and not thinking.is_displayed() and answer.is_displayed()
    details.find_element(By.TAG_NAME, "summary").click()
    assert thinking.is_displayed()

    # "Show thinking" off hides every thinking section.
    find(By.ID, "show-thinking").click()
    assert not details.is_displayed() and answer.is_displayed()
    find(By.ID, "show-thinking").click()
    assert details.is_displayed()

    # A second turn sends the first answer's content back, without its reasoning.
    ask(browser, "And 3 + 3?", 2)
    history = llm.tokenizer.decode(prompts[-1])
    assert out.content in history and out.reasoning not in history
    assert "What is 2 + 2?" in history and history.count("And 3 + 3?") == 1

    # More max tokens than the context holds: the field is clamped to it, and since the conversation
    # takes some of it, the server refuses that, and the page asks for what the context leaves.
    for field, value in (("max-tokens", "99999"), ("thinking-budget", "")):
        find(By.ID, field).clear()
        if value:
            find(By.ID, field).send_keys(value)
    find(By.ID, "prompt").send_keys("Count to a thousand.")
    find(By.ID, "send").click()
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".turn.assistant")) == 3)
    assert find(By.ID, "max-tokens").get_attribute("value") == str(llm.engine.max_model_len)
    wait.until(lambda b: len(params) == 3)
    assert params[2].max_tokens is None
    # Stop: the page aborts the fetch, and the server frees the slot at once.
    third = browser.find_elements(By.CSS_SELECTOR, ".turn.assistant")[2]
    wait.until(lambda b: len(raw(third.find_element(By.CSS_SELECTOR, ".thinking-text"))) > 0)
    find(By.ID, "stop").click()
    wait.until(lambda b: third.get_attribute("data-done") == "true")
    assert third.find_element(By.CSS_SELECTOR, ".note").text == "Stopped."
    WebDriverWait(browser, 5).until(lambda b: not llm.engine.has_unfinished())  # 30000 tokens take far longer
    assert outputs[-1].finish_reason == "abort" and len(outputs[-1].token_ids) < 30000
    assert not third.find_elements(By.CSS_SELECTOR, ".error")


# ---- the page against scripted SSE streams
class Scripted(ThreadingHTTPServer):
    """Serves the real page, a model list without `max_model_len` (servers before vLLM's field), and
    for each chat request the next script: SSE chunks, with an Event meaning "wait until it is set"."""
    daemon_threads = True

    def __init__(self, scripts):
        super().__init__(("127.0.0.1", 0), ScriptedHandler)
        self.scripts, self.bodies = list(scripts), []


class ScriptedHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/v1/models":
            data, kind = json.dumps({"object": "list", "data": [{"id": "scripted", "object": "model"}]}), "application/json"
        else:
            data, kind = PAGE.read_text(encoding="utf-8"), "text/html; charset=utf-8"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.end_headers()
        self.wfile.write(data.encode())

    def do_POST(self):
        self.server.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for item in self.server.scripts.pop(0) + ["[DONE]"]:
            if isinstance(item, threading.Event):
                assert item.wait(60)
                continue
            self.wfile.write(b"data: " + (item if item == "[DONE]" else json.dumps(item)).encode() + b"\n\n")
            self.wfile.flush()
            time.sleep(0.005)


def stream(deltas):
    """Chunks as phi4r's server streams them with continuous usage, one token per delta (Events are
    pauses); the tokens are reasoning up to the last delta that is not content."""
    chunks, count, reasoning = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}], 0, 0
    for d in deltas:
        if isinstance(d, threading.Event):
            chunks.append(d)
            continue
        count += 1
        reasoning = reasoning if "content" in d else count
        usage = {"prompt_tokens": 9, "completion_tokens": count, "total_tokens": 9 + count,
                 "completion_tokens_details": {"reasoning_tokens": reasoning}}
        chunks.append({"choices": [{"index": 0, "delta": d, "finish_reason": None}], "usage": usage})
    chunks[-1]["choices"][0]["finish_reason"] = "stop"
    return chunks + [{"choices": [], "usage": chunks[-1]["usage"]}]


def test_page_reclassify_and_scroll(browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    paused, settle = threading.Event(), "requestAnimationFrame(() => requestAnimationFrame(arguments[0]))"
    # Thinking, then content after a first </think> - a line with a character beyond UTF-16's BMP
    # among many, enough to overflow the window - then a second </think>: the server says all the
    # content so far was thinking, and the answer follows.
    early = [{"content": f"step {i} 🙂\n"} for i in range(60)]
    late = [{"content": f"more {i}\n"} for i in range(20)]
    moved = "".join(d["content"] for d in early + late)
    first = stream([{"reasoning_content": "Let me think.\n"}, *early, paused, *late,
                    {"phi4r_reclassify": {"content_chars": len(moved), "joiner": "</think>"}},
                    {"content": "The answer "}, {"content": "is 12."}])
    second = stream([{"reasoning_content": "Easy."}, *({"content": f"line {i}\n"} for i in range(40))])
    server = Scripted([first, second])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_port}/")
        WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "model-name").text == "scripted")
        log = browser.find_element(By.ID, "log")
        gap = "const l = arguments[0]; return l.scrollHeight - l.scrollTop - l.clientHeight;"

        # No max_model_len: the typed max tokens is sent as it is.
        browser.find_element(By.ID, "max-tokens").send_keys("5000")
        browser.find_element(By.ID, "prompt").send_keys("What is 7 + 5?")
        browser.find_element(By.ID, "send").click()
        WebDriverWait(browser, 30).until(lambda b: raw(b.find_element(By.CSS_SELECTOR, ".answer")).endswith("step 59 🙂"))
        # Streaming follows the newest output...
        assert browser.execute_script("return arguments[0].scrollHeight > 2 * arguments[0].clientHeight", log)
        assert browser.execute_script(gap, log) < 2
        # ...until the user scrolls up: then the view stays where they put it.
        ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(log), 0, -400).perform()
        browser.execute_async_script(settle)
        top = browser.execute_script("return arguments[0].scrollTop", log)
        assert browser.execute_script(gap, log) > 300
        paused.set()
        turn = WebDriverWait(browser, 30).until(
            lambda b: b.find_element(By.CSS_SELECTOR, ".turn.assistant[data-done=true]"))
        assert browser.execute_script("return arguments[0].scrollTop", log) == top
        # The correction moved every streamed content character into the thinking.
        assert raw(turn.find_element(By.CSS_SELECTOR, ".thinking-text")) == "Let me think.\n</think>" + moved.strip()
        assert raw(turn.find_element(By.CSS_SELECTOR, ".answer")) == "The answer is 12."
        thinking = 1 + len(early) + len(late) + 1  # the second </think> included
        assert turn.find_element(By.CSS_SELECTOR, ".thinking-count").text == str(thinking)
        assert stats(turn)[:2] == (thinking, 2) and stats(turn)[2] > 0

        # A new message follows the output again.
        ask(browser, "And 3 + 3?", 2)
        browser.execute_async_script(settle)
        assert browser.execute_script(gap, log) < 2
        assert [b.get("max_tokens") for b in server.bodies] == [5000, 5000]
        assert all(b["loop_guard"] is True and b["stream_options"]["continuous_usage_stats"] for b in server.bodies)
    finally:
        paused.set()
        server.shutdown()
        server.server_close()
