"""`phi4r eval --suite card`: the card's benchmarks that have files, in the card's table."""
import json

import pytest

from phi4r.cli import main
from phi4r.evals.card import CARD
from phi4r.evals.log import SampleLog
from phi4r.tasks.arenahard import win_rate

import fake_judge
from test_arenahard import prefer_longer, write_bench


def write_data(tmp_path):
    data = tmp_path / "benchmarks"
    data.mkdir()
    (data / "aime24.jsonl").write_text("".join(json.dumps({"problem": p, "answer": a}) + "\n"
                                               for p, a in (("What is 2+3?", "5"), ("What is 7*6?", "42"))))
    # Eureka's text-only Maze release: the options in the prompt, the answer as the option's text.
    (data / "maze_text_only.jsonl").write_text(json.dumps({
        "prompt": "S..\n.#.\n..E\nHow many right turns on the shortest path?\nAvailable options:\nA. 0\nB. 1\nC. 2",
        "ground_truth": "1", "question_type": "right_turns"}) + "\n")
    write_bench(data)  # arena-hard-v0.1/question.jsonl and model_answer/gpt-4-0314.jsonl
    aime25 = tmp_path / "elsewhere.jsonl"  # Eureka's AIME layout, given by --data
    aime25.write_text(json.dumps({"Question": "What is 1+1?", "Answer": "2", "ID": "2025-I-1"}) + "\n")
    return data, aime25


def test_a_card_run_on_nano_fills_the_rows_it_has_files_for(tmp_path, capsys):
    data, aime25 = write_data(tmp_path)
    out = tmp_path / "card"
    with fake_judge.judge_server(prefer_longer) as (url, state):
        rc = main(["eval", "--suite", "card", "--data-dir", str(data), "--data", f"aime25={aime25}", "--runs", "2",
                   "--max-tokens", "4", "--judge-endpoint", url, "--judge-model", "judge", "--out", str(out),
                   "--quiet", "--no-plots"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    pairwise = [b for b in state["calls"] if b["messages"][0]["role"] == "system"]
    # Two orders for each of four questions, in each run unless the run's answer repeats an earlier one.
    assert 2 * 4 <= len(pairwise) <= 2 * 2 * 4 and len(pairwise) % 2 == 0

    card = json.loads((out / "card.json").read_text())
    assert card["models"] == ["Phi-4-reasoning", "Phi-4-reasoning-plus"]
    assert card["settings"]["scoring"] == "eureka" and card["settings"]["runs"] == 2
    rows = {r["key"]: r for r in card["rows"]}
    assert [r["key"] for r in card["rows"]] == [b.key for b in CARD]
    assert {k for k, r in rows.items() if r["status"] == "ran"} == {"aime24", "aime25", "maze", "arenahard"}
    assert rows["aime24"]["published"] == {"Phi-4-reasoning": 75.3, "Phi-4-reasoning-plus": 81.3}
    assert rows["kitab"]["published"]["Phi-4-reasoning-plus"] == [27.6, 93.6, 6.3, 75.4]
    assert rows["aime24"]["file"] == str(data / "aime24.jsonl") and rows["aime25"]["file"] == str(aime25)
    for key in ("aime24", "aime25", "maze"):  # mean ± std over the two runs, from the benchmark's own report
        metrics = json.loads((out / key / "summary.json").read_text())["metrics"]["overall"]
        assert rows[key]["mean"] == pytest.approx(100 * metrics["mean"]) and rows[key]["std"] == pytest.approx(100 * metrics["std"])
        assert set(rows[key]["modes"]) == {"strict", "eureka"}
    with SampleLog(out / "arenahard" / "samples.jsonl") as log:
        rate = win_rate(list(log.samples.values()))
    assert rows["arenahard"]["mean"] == pytest.approx(100 * rate["mean"])
    assert rows["arenahard"]["battles"] == rate["battles"] > 0 and rows["arenahard"]["verdict_errors"] == 2 * 2
    assert rows["arenahard"]["baseline"] == "gpt-4-0314"
    assert (out / "arenahard" / "judge_cache.jsonl").exists() and (out / "maze" / "report.md").exists()

    assert "released files only" in rows["sat3"]["reason"] and "sat3.{jsonl,json,csv,tsv,parquet}" in rows["sat3"]["reason"]
    assert str(data) in rows["gpqa"]["reason"] and "--data gpqa=PATH" in rows["gpqa"]["reason"]
    assert rows["kitab"]["reason"] == "phi4r has no Kitab task"
    assert "skipped 3SAT: no file: looked for sat3." in captured.err

    md = (out / "card.md").read_text()
    assert ("| benchmark | this run (eureka scoring, mean ± std over 2 runs) | this run (strict scoring) | "
            "Phi-4-reasoning | Phi-4-reasoning-plus |") in md
    assert "| AIME 24 | " in md and "| 75.3 | 81.3 |" in md
    assert "| 3SAT | skipped | skipped | — | — |" in md
    assert "| Kitab (no-context precision / with-context precision / no-context recall / with-context recall) | " \
           "skipped | skipped | 23.2 / 91.5 / 4.9 / 74.8 | 27.6 / 93.6 / 6.3 / 75.4 |" in md
    assert "- TSP: no file: looked for tsp.{jsonl" in md and "Bradley-Terry" in md
    assert md.split("\n\n")[2] in captured.out  # the table is printed

    # Run again: every sample and verdict is in place, nothing is asked.
    with fake_judge.judge_server(prefer_longer) as (url, state):
        assert main(["eval", "--suite", "card", "--data-dir", str(data), "--data", f"aime25={aime25}", "--runs", "2",
                     "--max-tokens", "4", "--judge-endpoint", url, "--judge-model", "judge", "--out", str(out),
                     "--quiet", "--no-plots"]) == 0
        assert state["calls"] == []
    assert json.loads((out / "card.json").read_text())["rows"] == card["rows"]


def test_without_a_judge_arenahard_is_skipped_and_saying_why(tmp_path, capsys):
    data, _ = write_data(tmp_path)
    for f in ("aime24.jsonl", "maze_text_only.jsonl"):
        (data / f).unlink()
    with pytest.raises(ValueError, match="no card benchmark has a file"):
        from phi4r.evals.card import run_card
        run_card(lambda: pytest.fail("no model is loaded when nothing runs"), tmp_path / "out", data_dir=data)
    assert main(["eval", "--suite", "card", "--data-dir", str(data), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "ArenaHard: " in err and "give --judge-endpoint and --judge-model" in err


@pytest.mark.parametrize("args, message", [
    (["--suite", "card", "--tasks", "aime"], "give --tasks or --suite card"),
    (["--tasks", "sat3", "--data-dir", "."], "--data-dir goes with --suite card"),
    (["--suite", "card", "--data", "aime=x.jsonl"], "--data aime: not a card benchmark"),
    (["--suite", "card", "--data-dir", "/nonexistent/dir"], "no such directory"),
    (["--suite", "card", "--data", "aime24={bad}"], r"AIME 24 \(aime24=.*bad.jsonl\): .*record 1 fits no aime layout"),
])
def test_bad_card_arguments_fail_before_a_model_loads(tmp_path, capsys, args, message):
    import re
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem": "no answer here"}) + "\n")
    args = [a.replace("{bad}", str(bad)) for a in args]
    assert main(["eval", *args, "--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert re.search(message, capsys.readouterr().err)
