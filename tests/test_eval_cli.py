"""`phi4r eval` from the command line."""
import json
import socket

from phi4r.cli import main


def test_teacher_eval_prints_the_table_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["eval", "--model", "teacher", "--tasks", "sat3,tsp", "--runs", "2", "--limit", "2",
               "--difficulty", "1,2", "--out", str(out), "--quiet", "--no-plots"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "| metric | sat3 | tsp | all |" in printed
    assert "| accuracy (mean ± std over 2 runs) | 100.0 ± 0.0 | 100.0 ± 0.0 | 100.0 ± 0.0 |" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["difficulty"] == [1, 2]
    assert summary["metrics"]["by_task"]["sat3"]["instances"] == 4
    assert (out / "report.md").exists() and len((out / "samples.jsonl").read_text().splitlines()) == 16


def test_endpoint_failure_exits_with_a_clear_message(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = main(["eval", "--endpoint", f"http://127.0.0.1:{port}/v1", "--served-model", "m", "--tasks", "arithmetic",
               "--limit", "1", "--retries", "0", "--out", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "error:" in err and "ConnectError" in err and "run the same command again to resume" in err


def test_bad_arguments_are_refused(tmp_path, capsys):
    assert main(["eval", "--model", "teacher", "--tasks", "sat3", "--greedy", "--temperature", "0.7",
                 "--out", str(tmp_path)]) == 2
    assert main(["eval", "--model", "teacher", "--tasks", "nosuchtask", "--out", str(tmp_path)]) == 2
    assert "unknown task 'nosuchtask'" in capsys.readouterr().err
