"""The local engine backend on a random tiny checkpoint: the same greedy evaluation over HTTP
(`phi4r serve`'s app) and in-process gives the same responses; seeded runs are independent and
survive an interruption."""
import json

import pytest

from phi4r.api import LLM
from phi4r.evals import EndpointBackend, LocalBackend, run_eval
from phi4r.server.app import create_app
from phi4r.tiny import make_checkpoint

from test_eval_endpoint import Server

TASKS = ["sat3", "arithmetic"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # A context long enough for Phi-4-reasoning's system prompt and a 3SAT prompt.
    return str(make_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", max_position_embeddings=2048))


@pytest.fixture(scope="module")
def llm(checkpoint):
    return LLM(checkpoint)


def by_key(out):
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return {(r["task"], r["id"], r["run"]): r for r in rows}


def test_http_and_in_process_greedy_evaluations_agree(llm, checkpoint, tmp_path):
    kwargs = dict(runs=2, limit=2, sampling={"temperature": 0.0, "max_tokens": 24}, progress=False, plots=False)
    local = run_eval(LocalBackend(llm), TASKS, tmp_path / "local", **kwargs)
    # The server batches the concurrent requests in its own engine, as `phi4r serve` does.
    with Server(create_app(LLM(checkpoint), model_name="tiny")) as server:
        remote = run_eval(EndpointBackend(server.url, concurrency=3), TASKS, tmp_path / "http", **kwargs)
    a, b = by_key(tmp_path / "local"), by_key(tmp_path / "http")
    assert a.keys() == b.keys() and len(a) == 8
    fields = ["reasoning", "content", "extracted", "score", "finish_reason", "response_tokens", "reasoning_tokens"]
    for key in a:
        assert [a[key][f] for f in fields] == [b[key][f] for f in fields], key
    assert any(r["response_tokens"] > 1 for r in a.values())  # the model said something to compare
    assert local["metrics"] == remote["metrics"]


def test_seeded_runs_are_independent_and_survive_an_interruption(llm, tmp_path):
    kwargs = dict(runs=3, limit=2, sampling={"max_tokens": 12}, progress=False, plots=False)
    backend = LocalBackend(llm)
    assert backend.sampling_defaults()["temperature"] == 0.8  # the checkpoint's generation_config
    run_eval(backend, ["arithmetic"], tmp_path / "whole", **kwargs)
    whole = by_key(tmp_path / "whole")
    runs_of_one = [whole["arithmetic", "arithmetic-1-0-0", r]["text"] for r in range(3)]
    assert len(set(runs_of_one)) > 1  # runs are different samples, not copies

    done = []

    def interrupt(sample):
        done.append(sample)
        if len(done) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_eval(backend, ["arithmetic"], tmp_path / "resumed", on_sample=interrupt, **kwargs)
    run_eval(backend, ["arithmetic"], tmp_path / "resumed", **kwargs)
    resumed = by_key(tmp_path / "resumed")
    assert resumed.keys() == whole.keys()
    assert {k: r["text"] for k, r in resumed.items()} == {k: r["text"] for k, r in whole.items()}


def test_local_evaluation_prompts_the_model_as_chat_does(llm, tmp_path):
    # The checkpoint's system prompt (Phi-4-reasoning's, with `<think>` in it) must reach the model as
    # the template's text, exactly as `LLM.chat` and training send it.
    from phi4r.sampling import SamplingParams
    from phi4r.tasks import get_task

    run_eval(LocalBackend(llm), ["arithmetic"], tmp_path / "ev", runs=1, limit=3,
             sampling={"temperature": 0.0, "max_tokens": 24}, progress=False, plots=False)
    rows = [json.loads(line) for line in (tmp_path / "ev" / "samples.jsonl").read_text().splitlines()]
    instances = {i.id: i for i in get_task("arithmetic").generate(3, 0)}
    assert "<think>" in llm.tokenizer.system_prompt
    for row in rows:
        chat = llm.chat([{"role": "user", "content": instances[row["id"]].prompt}],
                        SamplingParams(temperature=0.0, max_tokens=24), use_tqdm=False)[0].outputs[0]
        assert row["text"] == chat.text, row["id"]


def test_a_request_the_engine_fails_is_a_logged_error_and_the_run_goes_on(checkpoint, tmp_path, monkeypatch):
    llm = LLM(checkpoint)  # its own engine: the fault is injected into it
    engine, real = llm.engine, llm.engine._prefill
    first_prompt = {}

    def prefill(ids, slots):
        first_prompt.setdefault("ids", ids)
        if ids == first_prompt["ids"]:
            raise RuntimeError("injected fault")
        return real(ids, slots)

    monkeypatch.setattr(engine, "_prefill", prefill)
    result = run_eval(LocalBackend(llm), ["arithmetic"], tmp_path / "ev", runs=1, limit=3,
                      sampling={"temperature": 0.0, "max_tokens": 8}, progress=False, plots=False)
    rows = [json.loads(line) for line in (tmp_path / "ev" / "samples.jsonl").read_text().splitlines()]
    failed = [r for r in rows if r.get("error")]
    assert len(rows) == 3 and len(failed) == 1
    assert "injected fault" in failed[0]["error"] and failed[0]["score"] == 0
    assert all(r["finish_reason"] in ("stop", "length") for r in rows if not r.get("error"))
    assert result["metrics"]["overall"]["errors"] == 1
