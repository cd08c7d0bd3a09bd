"""`phi4r chat`, `phi4r generate` and `phi4r bench` from the command line, on a tiny random checkpoint.

Commands run in subprocesses with no terminal (as in CI), so what they print is what a pipe gets.
"""
import json
import re
import subprocess
import sys

import pytest

from phi4r.api import LLM
from phi4r.cli import main
from phi4r.sampling import SamplingParams
from phi4r.tiny import make_checkpoint

STATS = re.compile(r"^\[(\d+) prompt tokens · (\d+) generated .* finish_reason=(\w+)\]$", re.MULTILINE)


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    return str(make_checkpoint(tmp_path_factory.mktemp("ck"), seed=2))


def phi4r(*args, stdin=None, timeout=120):
    """Run the CLI with no terminal; threads=1 keeps a tiny model fast on a busy machine."""
    return subprocess.run([sys.executable, "-m", "phi4r.cli", *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False, stdin=None if stdin is not None else subprocess.DEVNULL)


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


def test_bench_smoke_prints_the_table(ck, tmp_path):
    run = phi4r("bench", "--checkpoint", ck, "--batches", "1", "--dtypes", "fp32,int8", "--prompt-len", "8",
                "--new-tokens", "3", "--threads", "1", "--out", str(tmp_path / "r.json"), timeout=300)
    assert run.returncode == 0, run.stderr
    assert "| engine | dtype | batch | prefill tok/s | decode tok/s | peak MB |" in run.stdout
    rows = [line.split("|")[1:4] for line in run.stdout.splitlines() if line.startswith(("| phi4r", "| transformers"))]
    assert [[c.strip() for c in r] for r in rows] == [["phi4r", "fp32", "1"], ["transformers", "fp32", "1"],
                                                       ["phi4r", "int8", "1"]]
    assert "batch-1 decode fp32: phi4r / transformers" in run.stdout
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["model"]["params"] > 0 and result["machine"]["read_gbps"] > 0
    assert all(r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0 and r["peak_mb"] > 0 for r in result["rows"])
