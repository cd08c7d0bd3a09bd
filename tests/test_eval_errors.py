"""Prompts longer than the context, on the real engine and `phi4r serve`'s app: `phi4r eval` logs each
refused sample with its error, scores it wrong, finishes with exit 0, and a resume asks nothing again;
a completion that would overrun the context gets what the context leaves, locally and over HTTP alike."""
import json

import pytest
from test_eval_endpoint import Server, flaky_app

from phi4r.api import LLM
from phi4r.cli import main
from phi4r.evals import LocalBackend, run_eval
from phi4r.server.app import create_app
from phi4r.tiny import make_checkpoint

CONTEXT = 600  # arithmetic prompts fit (~490 tokens with the system prompt), sat3's (~800-900) do not
FIELDS = ["max_tokens", "reasoning", "content", "response_tokens", "score"]
ARGS = ["--tasks", "arithmetic,sat3", "--limit", "2", "--greedy", "--max-tokens", "4096", "--quiet", "--no-plots"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(make_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", max_position_embeddings=CONTEXT))


def rows(out):
    return {(r["task"], r["id"]): r for r in map(json.loads, (out / "samples.jsonl").read_text().splitlines())}


def test_refused_samples_are_logged_and_the_run_completes(checkpoint, tmp_path, capsys):
    local = run_eval(LocalBackend(LLM(checkpoint)), ["arithmetic", "sat3"], tmp_path / "local", limit=2,
                     sampling={"temperature": 0.0, "max_tokens": 4096}, progress=False, plots=False)
    assert local["metrics"]["by_task"]["sat3"]["errors"] == 2 and local["metrics"]["by_task"]["arithmetic"]["errors"] == 0

    out = tmp_path / "http"
    with Server(create_app(LLM(checkpoint), model_name="tiny")) as server:
        assert main(["eval", "--endpoint", server.url, "--out", str(out), *ARGS]) == 0
        printed = capsys.readouterr()
        assert "2 samples got no answer" in printed.err and "context (max_model_len)" in printed.err
        assert "| errors (no answer, scored 0) | 0 | 2 | 2 |" in printed.out
        first = (out / "samples.jsonl").read_text()
        assert main(["eval", "--endpoint", server.url, "--out", str(out), *ARGS]) == 0  # resumed: all settled
        assert (out / "samples.jsonl").read_text() == first

    a, b = rows(tmp_path / "local"), rows(out)
    assert a.keys() == b.keys() and len(a) == 4
    for key, r in b.items():
        if key[0] == "sat3":  # the prompt alone exceeds the context: refused, logged, wrong
            assert r["score"] == 0.0 and r["finish_reason"] == "error" and not r["retry"]
            assert f"context (max_model_len) is {CONTEXT} tokens" in r["error"], r["error"]
            assert "refused by the engine" in a[key]["error"]
        else:  # max_tokens 4096 became what the context leaves, the same budget in both backends
            assert r.get("error") is None and 0 < r["max_tokens"] < CONTEXT and r["response_tokens"] <= r["max_tokens"]
            assert [r[f] for f in FIELDS] == [a[key][f] for f in FIELDS]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["by_task"]["sat3"]["errors"] == 2 and summary["errors_to_retry"] == 0


def test_transient_failures_left_make_the_cli_exit_1_until_a_resume_asks_them_again(tmp_path, capsys):
    with Server(flaky_app([503, 503])) as server:
        args = ["eval", "--endpoint", server.url, "--tasks", "arithmetic", "--limit", "3", "--retries", "0",
                "--concurrency", "1", "--out", str(tmp_path), "--quiet", "--no-plots"]
        assert main(args) == 1  # finished and reported, but two samples are still to be asked
        err = capsys.readouterr().err
        assert "2 samples got no answer" in err and "2 failed for a transient reason: run the same command" in err
        assert main(args) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["metrics"]["overall"]["errors"] == 0
