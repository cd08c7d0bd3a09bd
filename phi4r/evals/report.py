"""The report of an evaluation: a markdown table in the card's layout (a metric per row, a task per
column, "mean ± std" over runs), per-task breakdowns by category and difficulty, a JSON summary,
and the plots."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

REPORT_FILE, SUMMARY_FILE = "report.md", "summary.json"


def pct(value: float | None, std: float | None = None) -> str:
    """A rate in percent with one decimal, as the card prints it; "-" when undefined."""
    if value is None:
        return "-"
    return f"{100 * value:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def num(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _rows(runs: int, pass_ks: list[str]) -> list[tuple[str, Callable[[dict], str]]]:
    """(row label, how to read the cell from one group's metrics)."""
    return [
        (f"accuracy (mean ± std over {runs} runs)" if runs > 1 else "accuracy", lambda m: pct(m["mean"], m["std"])),
        (f"best-of-{runs}", lambda m: pct(m["best_of_n"])),
        (f"worst-of-{runs}", lambda m: pct(m["worst_of_n"])),
        ("majority vote", lambda m: pct(m["majority_vote"])),
        *[(f"pass@{k}", lambda m, k=k: pct(m["pass_at_k"].get(k))) for k in pass_ks],
        ("instances", lambda m: str(m["instances"])),
        ("mean response tokens", lambda m: num(m["mean_tokens"])),
        ("mean reasoning tokens", lambda m: num(m["mean_reasoning_tokens"])),
        ("truncated (%)", lambda m: pct(m["truncation_rate"])),
        ("errors (no answer, scored 0)", lambda m: str(m["errors"])),
    ]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main_table(summary: dict) -> str:
    """Tasks as columns (and "all" when there are several), one metric per row."""
    metrics, runs = summary["metrics"], summary["settings"]["runs"]
    groups = dict(metrics["by_task"])
    if len(groups) > 1:
        groups["all"] = metrics["overall"]
    rows = _rows(runs, list(metrics["overall"]["pass_at_k"]))
    return markdown_table(["metric", *groups], [[label, *(cell(m) for m in groups.values())] for label, cell in rows])


def breakdown_table(task: str, summary: dict, key: str) -> str:
    """One row per category (or difficulty) of a task, the metrics as columns."""
    metrics, runs = summary["metrics"], summary["settings"]["runs"]
    rows = _rows(runs, list(metrics["overall"]["pass_at_k"]))
    groups = metrics[f"by_{key}"][task]
    return markdown_table([key, *(label for label, _ in rows)],
                          [[g, *(cell(m) for _, cell in rows)] for g, m in groups.items()])


def modes_table(summary: dict) -> str:
    """Each task's accuracy in every scoring mode, the headline mode first, with the number of
    samples they score differently and of verdicts made without the judge Eureka would ask."""
    modes, headline = summary.get("modes") or {}, summary["settings"].get("scoring", "strict")
    if not modes:
        return ""
    names = sorted(next(iter(modes.values()))["by_mode"], key=lambda k: (k != headline, k))
    rows = [[task, *(pct(m["by_mode"][n]["mean"], m["by_mode"][n]["std"]) for n in names), str(m["differ"]),
             str(m["needs_judge"])]
            for task, m in modes.items()]
    header = ["task", *(f"{n} (headline)" if n == headline else n for n in names),
              "samples scored differently", "verdicts without a judge"]
    return ("## Scoring modes\n\nstrict: phi4r's exact verifiers; eureka: Eureka's extraction and metrics "
            "rule for rule (its LLM steps only with a judge).\n\n" + markdown_table(header, rows))


def render_markdown(summary: dict, plot_files: list[str]) -> str:
    s = summary["settings"]
    sampling = ", ".join(f"{k}={v}" for k, v in s["sampling"].items()) or "-"
    parts = [
        f"# Evaluation of {s['backend']}",
        f"tasks: {', '.join(s['tasks'])}; runs: {s['runs']}; limit: {s['limit']}; seed: {s['seed']}; "
        f"difficulty: {s['difficulty'] or 'all'}; sampling: {sampling}; scoring: {s.get('scoring', 'strict')}",
        main_table(summary),
    ]
    if summary.get("modes"):
        parts.append(modes_table(summary))
    for task, m in summary["metrics"]["by_task"].items():
        parts += [f"## {task}", breakdown_table(task, summary, "category"), breakdown_table(task, summary, "difficulty")]
        if m["errors"]:
            parts.append(f"{m['errors']} of {m['samples']} samples got no answer (scored 0; errors in "
                         f"samples.jsonl), e.g. {summary.get('first_errors', {}).get(task, '-')}")
        if m["details"]:
            parts.append("Verifier details (mean over samples): "
                         + ", ".join(f"{k} {v:.3g}" for k, v in m["details"].items()))
        compared = (summary.get("modes") or {}).get(task, {"differ": 0})
        for mode, other in compared.get("by_mode", {}).items():
            if mode != s.get("scoring", "strict") and other["details"] and compared["differ"]:
                parts.append(f"{mode} details (mean over samples): "
                             + ", ".join(f"{k} {v:.3g}" for k, v in other["details"].items()))
    if plot_files:
        parts += ["## Plots", *(f"![{Path(f).stem}]({f})" for f in plot_files)]
    return "\n\n".join(parts) + "\n"


def write_report(out_dir, summary: dict, samples: list[dict], plots: bool = True) -> list[Path]:
    """Write summary.json, the plots (plots/*.png) and report.md into `out_dir`; returns the paths."""
    out = Path(out_dir)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    plot_files = []
    if plots:
        from .plots import write_plots  # matplotlib is slow to import: only when plots are wanted

        plot_files = [str(p.relative_to(out)) for p in write_plots(out / "plots", summary, samples)]
    (out / REPORT_FILE).write_text(render_markdown(summary, plot_files))
    return [out / SUMMARY_FILE, out / REPORT_FILE, *(out / f for f in plot_files)]
