"""The command line: `phi4r chat`, `generate` and `bench` on a tiny random checkpoint, the shared
model options, one-line errors for a user's mistakes, the loop guard's defaults.

Commands run in subprocesses with no terminal (as in CI), so what they print is what a pipe gets.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from phi4r import __file__ as package_init
from phi4r.api import LLM
from phi4r.cli import build_parser, main
from phi4r.sampling import SamplingParams
from phi4r.tiny import make_checkpoint

STATS = re.compile(r"^\[(\d+) prompt tokens · (\d+) generated .* finish_reason=(\w+)\]$", re.MULTILINE)


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    return str(make_checkpoint(tmp_path_factory.mktemp("ck"), seed=2))


def phi4r(*args, stdin=None, timeout=120, **popen):
    """Run the CLI with no terminal, in its own process group, which is killed whole when the run ends
    (a timeout, a failed test, a child it left behind)."""
    proc = subprocess.Popen([sys.executable, "-m", "phi4r.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE, text=True,
                            start_new_session=True, **popen)
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_help_is_instant_and_lists_every_command():
    code = "import sys; from phi4r.cli import build_parser; build_parser(); print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    top = phi4r("--help")
    assert top.returncode == 0 and all(c in top.stdout for c in ("chat", "generate", "bench"))
    for command, flags in {"chat": ["--hide-thinking", "--fold-thinking", "--thinking-budget", "--system-prompt"],
                           "generate": ["--input", "--output", "--n", "--top-p"],
                           "bench": ["--batches", "--dtypes", "--new-tokens", "--out"]}.items():
        out = phi4r(command, "--help")
        assert out.returncode == 0 and all(f in out.stdout for f in flags), (command, out.stdout)


def test_one_shot_chat_prints_thinking_then_answer(ck):
    args = ["--max-tokens", "16", "--thinking-budget", "5", "--seed", "0"]
    run = phi4r("chat", "--model", ck, "--threads", "1", *args, "What is 2 + 2?")
    assert run.returncode == 0, run.stderr
    # The same request through the API (LLM seed 0, first request): the CLI must print exactly its split.
    [out] = LLM(ck, max_num_seqs=1, seed=0).chat([{"role": "user", "content": "What is 2 + 2?"}],
                                                 SamplingParams(max_tokens=16, thinking_budget=5), use_tqdm=False)
    o = out.outputs[0]
    assert o.thinking_budget_reached and o.content
    assert run.stdout == f"<think>\n{o.reasoning.strip()}\n</think>\n{o.content.strip()}\n"
    [(prompt, generated, reason)] = STATS.findall(run.stderr)
    assert int(prompt) == out.num_prompt_tokens and int(generated) == len(o.token_ids) and reason == o.finish_reason


def test_hidden_thinking_prints_only_the_answer(ck):
    # Seeded: a random model may write a second `</think>`, which the display shows (it cannot take
    # back an answer already streamed); this seed's output has one, so only the answer may appear.
    run = phi4r("chat", "--model", ck, "--threads", "1", "--max-tokens", "16", "--thinking-budget", "5",
                "--seed", "0", "--hide-thinking", "Hi")
    [out] = LLM(ck, max_num_seqs=1, seed=0).chat([{"role": "user", "content": "Hi"}],
                                                 SamplingParams(max_tokens=16, thinking_budget=5), use_tqdm=False)
    assert out.outputs[0].text.count("</think>") == 1
    assert run.returncode == 0 and "think>" not in run.stdout
    assert run.stdout == out.outputs[0].content.strip() + "\n"


def test_interactive_chat_keeps_history_until_reset(ck):
    turns = "hello\nand again\n/reset\n/think hide\nhello\n/exit\nnever answered\n"
    run = phi4r("chat", "--model", ck, "--threads", "1", "--max-tokens", "6", "--temperature", "0", stdin=turns)
    assert run.returncode == 0, run.stderr
    prompts = [int(p) for p, _, _ in STATS.findall(run.stderr)]
    assert len(prompts) == 3  # nothing after /exit
    assert prompts[1] > prompts[0] and prompts[2] == prompts[0]  # turn 2 sees turn 1; /reset forgets it
    assert "[conversation cleared]" in run.stderr and "[thinking: hide]" in run.stderr
    assert run.stdout.count("<think>") == 2  # the third answer hides its thinking


def test_generate_writes_one_line_per_prompt_and_resumes(ck, tmp_path):
    prompts = tmp_path / "in.jsonl"
    prompts.write_text('{"prompt": "12 + 7 ="}\n'
                       '{"id": "chat", "messages": [{"role": "user", "content": "Hi"}]}\n\n'
                       '{"prompt": "The quick brown fox"}\n')
    out = tmp_path / "out.jsonl"
    args = ["generate", "--model", ck, "--input", str(prompts), "--output", str(out), "--n", "2",
            "--max-tokens", "6", "--seed", "1", "--quiet", "--threads", "1"]
    assert phi4r(*args).returncode == 0
    first = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert sorted(first, key=str) == [0, 3, "chat"]
    assert first[0]["prompt"] == "12 + 7 =" and first["chat"]["messages"][0]["content"] == "Hi"
    for record in first.values():
        assert record["prompt_tokens"] > 0 and [o["index"] for o in record["outputs"]] == [0, 1]
        for o in record["outputs"]:
            assert o["completion_tokens"] == 6 == o["reasoning_tokens"] + o["content_tokens"]
            assert o["finish_reason"] == "length" and isinstance(o["text"], str)
            assert {"reasoning", "content", "thinking_budget_reached"} <= set(o)
    # Interrupted after one prompt, mid-way through writing the next: the rerun finishes the rest.
    lines = out.read_text().splitlines()
    out.write_text(lines[0] + "\n" + lines[1][:20])
    rerun = phi4r(*args)
    assert rerun.returncode == 0 and "resuming: 1 of 3 prompts" in rerun.stderr
    second = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(second) == 3 and {r["id"]: r for r in second} == first  # seeded per prompt: same samples


def test_generate_refuses_bad_input_naming_the_line(tmp_path, capsys):
    prompts = tmp_path / "in.jsonl"
    prompts.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    assert main(["generate", "--input", str(prompts), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "line 2" in capsys.readouterr().err and not (tmp_path / "o.jsonl").exists()


def test_generate_reads_a_raw_line_separator_inside_a_json_string(tmp_path):
    """JSON allows U+2028/U+2029 unescaped in strings (json.dumps(ensure_ascii=False) writes them so):
    a record with one is one line, and its id stays the line's number."""
    from phi4r.commands.generate import read_prompts

    prompts = tmp_path / "in.jsonl"
    records = [{"prompt": "first\u2028half"}, {"prompt": "para\u2029graph"}, {"prompt": "plain"}]
    prompts.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    assert "\u2028" in prompts.read_text(encoding="utf-8")
    assert [(r["id"], r["prompt"]) for r in read_prompts(prompts)] == [(i, r["prompt"]) for i, r in enumerate(records)]


@pytest.mark.slow
def test_bench_smoke_prints_the_table(ck, tmp_path):
    run = phi4r("bench", "--model", ck, "--batches", "1", "--dtypes", "fp32,int8,int4", "--prompt-len", "8",
                "--new-tokens", "3", "--threads", "1", "--out", str(tmp_path / "r.json"), timeout=300)
    assert run.returncode == 0, run.stderr
    assert "| engine | dtype | batch | prefill tok/s | decode tok/s | peak MB |" in run.stdout
    rows = [line.split("|")[1:4] for line in run.stdout.splitlines() if line.startswith(("| phi4r", "| transformers"))]
    assert [[c.strip() for c in r] for r in rows] == [["phi4r", "fp32", "1"], ["transformers", "fp32", "1"],
                                                       ["phi4r", "int8", "1"], ["phi4r", "int4", "1"]]
    assert "batch-1 decode fp32: phi4r / transformers" in run.stdout
    assert "batch-1 decode int4: phi4r / roofline" in run.stdout
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["model"]["params"] > 0 and result["machine"]["read_gbps"] > 0
    assert all(r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0 and r["peak_mb"] > 0 for r in result["rows"])


@pytest.mark.slow
def test_bench_runs_from_an_installed_package(tmp_path):
    # An installed wheel has the package alone: no benchmarks/ beside it, and the measurements run in
    # child processes that must import that same copy.
    site = tmp_path / "site"
    shutil.copytree(Path(package_init).parent, site / "phi4r", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(site), "PHI4R_ATTENTION_KERNEL": "0"}  # the copy would rebuild it
    run = phi4r("bench", "--model", "nano", "--batches", "1", "--dtypes", "fp32", "--prompt-len", "8",
                "--new-tokens", "3", "--threads", "1", "--no-transformers", "--out", str(tmp_path / "r.json"),
                env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert [(r["engine"], r["dtype"], r["batch"]) for r in result["rows"]] == [("phi4r", "fp32", 1)]
    assert result["rows"][0]["path"] == str(site / "phi4r" / "assets" / "nano")
    assert result["rows"][0]["decode_tok_s"] > 0


def test_every_model_command_shares_the_model_options():
    parser = build_parser()
    for command, extra in {"chat": [], "generate": ["--input", "i", "--output", "o"], "serve": [],
                           "eval": ["--tasks", "sat3", "--out", "d"]}.items():
        args = parser.parse_args([command, *extra])
        assert (args.model, args.dtype, args.quantization, args.threads, args.compile) == ("nano", None, None, None, None)
        args = parser.parse_args([command, *extra, "--model", "m", "--dtype", "bfloat16", "--quantization", "int8",
                                  "--threads", "2", "--compile"])
        assert (args.model, args.dtype, args.quantization, args.threads, args.compile) == ("m", "bfloat16", "int8", 2, True)
    bench = parser.parse_args(["bench", "--model", "nano", "--threads", "1", "--compile"])
    assert (bench.model, bench.threads, bench.compile) == ("nano", 1, True)
    # No --model: each benchmark takes its own default checkpoint ("bench"; "anchor" against llama.cpp).
    assert parser.parse_args(["bench"]).model is None and parser.parse_args(["bench", "--checkpoint", "d"]).model == "d"


def test_eval_uses_the_nano_model_by_default(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["eval", "--tasks", "arithmetic", "--limit", "1", "--max-tokens", "8", "--out", str(out), "--quiet",
                 "--no-plots", "--threads", "1"]) == 0
    backend = json.loads((out / "summary.json").read_text())["settings"]["backend"]
    assert backend.startswith("local:") and backend.split()[0].endswith(str(Path("assets") / "nano"))
    assert "| metric | arithmetic |" in capsys.readouterr().out


def test_loop_guard_flags_and_defaults():
    parser = build_parser()
    assert parser.parse_args(["chat"]).loop_guard is True and parser.parse_args(["chat", "--no-loop-guard"]).loop_guard is False
    generate = ["generate", "--input", "i", "--output", "o"]
    assert parser.parse_args(generate).loop_guard is False and parser.parse_args([*generate, "--loop-guard"]).loop_guard
    serve = parser.parse_args(["serve"])
    assert (serve.loop_guard, serve.reasoning_stream) == (False, "eager")
    serve = parser.parse_args(["serve", "--loop-guard", "--reasoning-stream", "hold"])
    assert (serve.loop_guard, serve.reasoning_stream) == (True, "hold")


LOOPING_PROMPT = "Repeat this text exactly:\n" + "a b c " * 30


@pytest.mark.slow
def test_chat_ends_a_greedy_loop_by_default():
    # Asked to repeat a long run of "a b c", the nano model's greedy answer repeats one word until the
    # context ends.
    stats = {}
    for flag in ("--loop-guard", "--no-loop-guard"):
        run = phi4r("chat", "--temperature", "0", "--max-tokens", "500", flag, LOOPING_PROMPT)
        assert run.returncode == 0, run.stderr
        [(_, generated, reason)] = STATS.findall(run.stderr)
        stats[flag] = int(generated), reason
    assert stats["--no-loop-guard"] == (500, "length")
    assert stats["--loop-guard"][1] == "repetition" and stats["--loop-guard"][0] < 500


def run_main(argv):
    try:
        return main(argv)
    except SystemExit as e:  # argparse's errors
        return e.code


@pytest.fixture
def mistakes(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.yaml").write_text("learning_rate: [\n")
    (tmp_path / "in.jsonl").write_text('{"prompt": "ok"}\n{"prompt": "no newline"}')
    missing = tmp_path / "missing"
    return {"chat": [(["chat", ""], "empty prompt"),
                     (["chat", "--model", str(missing), "hi"], "not a checkpoint directory"),
                     (["chat", "--model", str(tmp_path / "empty"), "hi"], "config.json: missing"),
                     (["chat", "--temperature", "hot", "hi"], "argument --temperature: 'hot' is not a number >= 0"),
                     (["chat", "--max-tokens", "-3", "hi"], "'-3' is not a positive integer"),
                     (["chat", "--top-p", "0", "hi"], "top_p must be in (0, 1]")],
            "generate": [(["generate", "--input", str(missing), "--output", str(tmp_path / "o.jsonl")],
                          f"No such file or directory: {missing}"),
                         (["generate", "--input", "i", "--output", "o", "--n", "0"], "'0' is not a positive integer"),
                         (["generate", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "in.jsonl")],
                          "in.jsonl, line 1: not a line phi4r generate writes; refusing to add to this file"),
                         (["generate", "--input", str(tmp_path / "bad.yaml"), "--output", str(tmp_path / "o.jsonl")],
                          "bad.yaml, line 1: not JSON")],
            "serve": [(["serve", "--model", str(missing)], "not a checkpoint directory"),
                      (["serve", "--port", "70000"], "'70000' is not a port number"),
                      (["serve", "--reasoning-stream", "late"], "invalid choice: 'late'")],
            "eval": [(["eval", "--tasks", "nosuchtask", "--out", str(tmp_path / "e")], "unknown task 'nosuchtask'"),
                     (["eval", "--tasks", "sat3", "--runs", "0", "--out", str(tmp_path / "e")], "not a positive integer"),
                     (["eval", "--tasks", "sat3", "--model", str(missing), "--out", str(tmp_path / "e")],
                      "not a checkpoint directory")],
            "bench": [(["bench", "--model", str(missing)], "not a checkpoint directory"),
                      (["bench", "--dtypes", "fp64"], "unknown dtype 'fp64'"),
                      (["bench", "--batches", "1,x"], "'x' is not a positive integer")],
            "train sft": [(["train", "sft", "--tasks", "arithmetic", "--output-dir", str(tmp_path / "sft")],
                           "say what to train: --model"),
                          (["train", "sft", "--config", str(tmp_path / "bad.yaml")], "bad.yaml: not valid YAML"),
                          (["train", "sft", "--max-steps", "many"], "max_steps: expected int, got 'many'")]}


@pytest.mark.parametrize("command", ["chat", "generate", "serve", "eval", "bench", "train sft"])
def test_a_users_mistake_is_one_line_and_a_failure(command, mistakes, tmp_path, capsys):
    for argv, message in mistakes[command]:
        status = run_main(argv)
        err = capsys.readouterr().err
        assert status != 0 and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
        assert err.startswith(f"phi4r {command}: ") and message in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "empty", "in.jsonl"]  # nothing written
    assert (tmp_path / "in.jsonl").read_text().endswith('"no newline"}')


def test_mistakes_through_the_real_entry_point(tmp_path):
    for args, line in ((["chat", ""], "phi4r chat: empty prompt\n"),
                       (["train", "sft", "--output-dir", str(tmp_path / "sft")],
                        "phi4r train sft: say what to train: --model CHECKPOINT (or --init-config SIZES --tokenizer DIR)\n")):
        run = phi4r(*args)
        assert (run.returncode, run.stdout, run.stderr) == (2, "", line)
    assert not (tmp_path / "sft").exists()


def test_a_bug_keeps_its_traceback(monkeypatch, capsys):
    from phi4r.commands import chat
    from phi4r.checkpoint import CheckpointError

    monkeypatch.setattr(chat, "_run", lambda args: json.loads("{"))  # a ValueError raised inside a library
    with pytest.raises(json.JSONDecodeError):
        main(["chat", "hi"])

    def refuse(args):
        raise CheckpointError("a refusal")
    monkeypatch.setattr(chat, "_run", refuse)  # raised by the test, not by phi4r: still a bug here
    with pytest.raises(CheckpointError):
        main(["chat", "hi"])
    monkeypatch.undo()
    monkeypatch.setenv("PHI4R_DEBUG", "1")  # and phi4r's own refusals show their traceback on request
    with pytest.raises(ValueError, match="empty prompt"):
        main(["chat", ""])
    assert capsys.readouterr().err == ""


def test_start_up_says_what_takes_long_and_nothing_otherwise(ck, capfd):
    import time

    from phi4r.api import _said_if_slow

    with _said_if_slow("quantizing", after=0.1):
        time.sleep(0.4)
    with _said_if_slow("prepacking", after=5):
        pass
    err = capfd.readouterr().err
    assert re.fullmatch(r"phi4r: quantizing \.\.\.\nphi4r: quantizing: done in \d+ s\n", err), err
    LLM(ck, max_num_seqs=1, threads=1)  # a small model loads in well under the 2 s before a bar appears
    assert "loading" not in capfd.readouterr().err  # (a kernel build may still announce itself)
