"""The chat page in a real headless Chromium (selenium): API key, a streamed answer with its
thinking in a foldable section, the live thinking count, hiding the thinking, multi-turn history.

A random tiny model writes gibberish and may stop at any token, so the checkpoint is constructed
for a known shape: it can never emit a stop token (see `never_stopping_checkpoint`), and the page's
thinking budget forces `</think>` after 6 tokens. Every answer is then 6 reasoning tokens, the
forced `</think>`, and content up to max tokens. The test checks that the page shows exactly the
reasoning and content the engine produced (recorded in-process), not any particular words.
"""
from __future__ import annotations

import shutil

import pytest
import torch

import phi4r
from phi4r.api import LLM
from phi4r.server.app import create_app, serve_in_thread
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


@pytest.fixture
def served(tmp_path):
    llm = LLM(str(never_stopping_checkpoint(tmp_path / "ckpt")), max_num_seqs=2, seed=0)
    prompts, outputs = [], []
    add_request, step = llm.engine.add_request, llm.engine.step

    def recording_add(request_id, prompt_ids, *args, **kw):
        prompts.append(list(prompt_ids))
        return add_request(request_id, prompt_ids, *args, **kw)

    def recording_step():
        deltas = step()
        outputs.extend(d.output for d in deltas if d.output is not None)
        return deltas

    llm.engine.add_request, llm.engine.step = recording_add, recording_step
    with serve_in_thread(create_app(llm, model_name="tiny", api_key=KEY), graceful_timeout=1) as url:
        yield url, llm, prompts, outputs


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_chat_page(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, llm, prompts, outputs = served
    wait = WebDriverWait(browser, 60)
    find = browser.find_element

    def raw(element) -> str:  # the text as set, without selenium's whitespace normalisation
        return element.get_attribute("textContent")

    browser.get(url + "/")
    # The server wants a key: the page asks for one, then finds the model.
    wait.until(lambda b: find(By.ID, "api-key-field").is_displayed())
    find(By.ID, "api-key").send_keys(KEY + "\t")
    wait.until(lambda b: find(By.ID, "model-name").text == "tiny")

    for field, value in (("temperature", "1"), ("max-tokens", "24"), ("thinking-budget", str(BUDGET))):
        find(By.ID, field).clear()
        find(By.ID, field).send_keys(value)

    def ask(text: str, turn: int):
        find(By.ID, "prompt").send_keys(text)
        find(By.ID, "send").click()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".turn.assistant[data-done=true]")) == turn)
        return browser.find_elements(By.CSS_SELECTOR, ".turn.assistant")[turn - 1]

    first = ask("What is 2 + 2?", 1)
    [out] = outputs
    details = first.find_element(By.CSS_SELECTOR, "details.thinking")
    thinking = first.find_element(By.CSS_SELECTOR, ".thinking-text")
    answer = first.find_element(By.CSS_SELECTOR, ".answer")
    # The page shows exactly what the engine generated, split where the server split it.
    assert out.thinking_budget_reached and out.reasoning and out.content
    assert raw(thinking) == out.reasoning and raw(answer) == out.content
    assert details.is_displayed() and details.get_attribute("open") is not None and thinking.is_displayed()
    # The live count is the server's reasoning token count: the budget plus the forced </think>.
    assert first.find_element(By.CSS_SELECTOR, ".thinking-count").text == str(BUDGET + 1) == str(out.reasoning_tokens)

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
    ask("And 3 + 3?", 2)
    history = llm.tokenizer.decode(prompts[-1])
    assert out.content in history and out.reasoning not in history
    assert "What is 2 + 2?" in history and history.count("And 3 + 3?") == 1

    # Stop: the page aborts the fetch, and the server frees the slot at once.
    for field, value in (("max-tokens", "30000"), ("thinking-budget", "")):
        find(By.ID, field).clear()
        if value:
            find(By.ID, field).send_keys(value)
    find(By.ID, "prompt").send_keys("Count to a thousand.")
    find(By.ID, "send").click()
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".turn.assistant")) == 3)
    third = browser.find_elements(By.CSS_SELECTOR, ".turn.assistant")[2]
    wait.until(lambda b: len(raw(third.find_element(By.CSS_SELECTOR, ".thinking-text"))) > 0)
    find(By.ID, "stop").click()
    wait.until(lambda b: third.get_attribute("data-done") == "true")
    assert third.find_element(By.CSS_SELECTOR, ".note").text == "Stopped."
    WebDriverWait(browser, 5).until(lambda b: not llm.engine.has_unfinished())  # 30000 tokens take far longer
    assert outputs[-1].finish_reason == "abort" and len(outputs[-1].token_ids) < 30000
