"""Multi-digit arithmetic on fixed seeds, reported as mean ± std across seeds.

    python -m phi4r.recipes.nano.arith_eval --model nano --seeds heldout -n 50 --greedy
    python -m phi4r.recipes.nano.arith_eval --model runs/nano/grpo/final --seeds dev -n 50 --out runs/arith

Categories (CATEGORIES): two-digit + and - (alternately), three-digit + and -, two-digit x
one-digit, each in the benchmark task's prompt ("Compute 67 + 81.\\nAnswer as ...") and as a plain
question ("What is 67 + 81?", "Calculate 305 - 128", "12 * 34 = ?", ...). Every problem of a
(category, seed) is drawn from its own RNG, so the first n problems are the same for any n.

Seeds: DEV_SEEDS are for developing the recipe; HELDOUT_SEEDS are for reporting it and never
for choosing anything. `.data` keeps every problem of both sets (up to N_MAX per category and
seed) out of the training data. Each seed is one evaluation; a category's figure is the mean ±
the sample std of its per-seed accuracies: greedy (one run at temperature 0) and sampled (RUNS runs
at the checkpoint's sampling, temperature 0.8, top_p 0.95, top_k 50 for nano; a seed's sampled
accuracy is the mean over its runs).

Answers are graded by the arithmetic task's verifier (`Final Answer: N`) through the evaluation
API (`LocalBackend`, `score_sample`, `summarize`); "trace ok" is the share of answers whose every
step `.arithmetic.check_trace` accepts (the column trace the recipe teaches, followed exactly).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from statistics import mean, stdev

from ...tasks import Instance
from . import arithmetic

DEV_SEEDS = (101, 102, 103)
HELDOUT_SEEDS = (70001, 70002, 70003)
N_MAX = 100  # problems per category and seed that training never sees
RUNS = 5
MAX_TOKENS = 512  # a three-digit column trace is ~200 tokens
# category -> (problem kinds, cycled; prompt form: "task" or "plain")
CATEGORIES = {
    "add_sub_2": (("add2", "sub2"), "task"),
    "add_sub_3": (("add3", "sub3"), "task"),
    "mul_2x1": (("mul21",), "task"),
    "plain_add_sub_2": (("add2", "sub2"), "plain"),
    "plain_add_sub_3": (("add3", "sub3"), "plain"),
    "plain_mul_2x1": (("mul21",), "plain"),
}
# The plain questions asked: the wordings of the examples people type first.
PLAIN_FORMS = ("What is {}?", "Calculate {}", "{} = ?", "How much is {}?", "What is {}")


def log(msg: str) -> None:
    print(f"[arith_eval {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def problems(category: str, seed: int, n: int) -> list[tuple[int, str, int]]:
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")
    if not 1 <= n <= N_MAX:
        raise ValueError(f"n must be in 1..{N_MAX} (training excludes only the first {N_MAX} problems), got {n}")
    kinds, _ = CATEGORIES[category]
    return [arithmetic.draw(random.Random(f"arith-eval-{category}-{seed}-{i}"), kinds[i % len(kinds)])
            for i in range(n)]


def instances(seed: int, n: int, categories=tuple(CATEGORIES)) -> list[Instance]:
    """The arithmetic task's instances (its verifier grades them) for `seed`, n per category."""
    out = []
    for category in categories:
        form = CATEGORIES[category][1]
        for i, (a, op, b) in enumerate(problems(category, seed, n)):
            expr = arithmetic.expression(a, op, b)
            prompt = (arithmetic.TASK_PROMPT.format(expr) if form == "task"
                      else PLAIN_FORMS[i % len(PLAIN_FORMS)].format(expr))
            out.append(Instance(id=f"arith-eval-{category}-{seed}-{i}", task="arithmetic", prompt=prompt,
                                answer={"value": arithmetic.value((op, a, b)), "expression": expr, "tree": [op, a, b]},
                                category=category, difficulty=0, meta={"seed": seed}))
    return out


def all_expressions() -> set[str]:
    """Every problem of every development and held-out seed, up to N_MAX per category."""
    return {arithmetic.expression(*p) for seed in DEV_SEEDS + HELDOUT_SEEDS for c in CATEGORIES
            for p in problems(c, seed, N_MAX)}


def trace_ok(inst: Instance, response: str) -> bool:
    try:
        arithmetic.check_trace(inst.prompt, response, inst.answer["tree"])
        return True
    except arithmetic.TraceError:
        return False


def evaluate_seed(backend, seed: int, n: int, categories, runs: int, sampling: dict) -> list[dict]:
    """Samples (as the evaluation runner logs them, plus "trace_ok") of one seed."""
    from ...evals.backends import Job, derive_seed
    from ...evals.runner import score_sample

    insts = instances(seed, n, categories)
    jobs = [Job(i, r, derive_seed(seed, i.task, i.id)) for i in insts for r in range(runs)]
    samples = []
    for job, completion in backend.complete(jobs, sampling, backend.system_prompt):
        sample = score_sample(job, completion)
        sample["trace_ok"] = completion.error is None and trace_ok(job.instance, completion.answer_text())
        samples.append(sample)
    return samples


def seed_metrics(samples: list[dict], runs: int) -> dict:
    """category -> {accuracy, trace_ok, std_runs, tokens} of one seed's samples."""
    from ...evals.metrics import summarize

    out = {}
    for category in sorted({s["category"] for s in samples}, key=list(CATEGORIES).index):
        group = [s for s in samples if s["category"] == category]
        m = summarize(group, runs)
        out[category] = {"accuracy": m["mean"], "std_runs": m["std"], "tokens": m["mean_tokens"],
                         "trace_ok": mean(s["trace_ok"] for s in group), "truncated": m["truncation_rate"]}
    return out


def across(per_seed: dict[int, dict], key: str) -> dict:
    """category -> {mean, std, per_seed} of `key` over the seeds."""
    out = {}
    for category in next(iter(per_seed.values())):
        values = [per_seed[s][category][key] for s in per_seed]
        out[category] = {"mean": mean(values), "std": stdev(values) if len(values) > 1 else None,
                         "per_seed": values}
    return out


def run(model, seeds, n: int, categories=tuple(CATEGORIES), modes=("greedy", "sampled"), runs: int = RUNS,
        max_tokens: int = MAX_TOKENS, max_num_seqs: int = 64, out: Path | None = None) -> dict:
    """Evaluate `model` (a checkpoint directory, "nano", an LLM or a backend) on `seeds`; returns
    {"config", mode: {"accuracy": across seeds, "trace_ok": ..., "per_seed": ...}}."""
    from ...evals import LocalBackend

    backend = model if hasattr(model, "complete") else LocalBackend(model, max_num_seqs=max_num_seqs)
    result = {"config": {"model": getattr(backend, "name", str(model)), "seeds": list(seeds), "n": n,
                         "categories": list(categories), "runs": runs, "max_tokens": max_tokens}}
    for mode in modes:
        mode_runs = 1 if mode == "greedy" else runs
        sampling = {**backend.sampling_defaults(), "max_tokens": max_tokens}
        if mode == "greedy":
            sampling["temperature"] = 0.0
        result["config"][f"sampling_{mode}"] = sampling
        per_seed = {}
        for seed in seeds:
            started = time.time()
            samples = evaluate_seed(backend, seed, n, categories, mode_runs, sampling)
            per_seed[seed] = seed_metrics(samples, mode_runs)
            log(f"{mode} seed {seed}: " + ", ".join(f"{c} {100 * m['accuracy']:.0f}%" for c, m in per_seed[seed].items())
                + f" ({time.time() - started:.0f} s)")
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                with open(out / f"samples-{mode}-{seed}.jsonl", "w", encoding="utf-8") as f:
                    f.writelines(json.dumps(s) + "\n" for s in samples)
        result[mode] = {"accuracy": across(per_seed, "accuracy"), "trace_ok": across(per_seed, "trace_ok"),
                        "per_seed": {str(k): v for k, v in per_seed.items()}}
    if out is not None:
        (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _pct(m: dict) -> str:
    return f"{100 * m['mean']:.1f}" + (f" ± {100 * m['std']:.1f}" if m["std"] is not None else "")


def table(result: dict) -> str:
    """Markdown: per category, each mode's accuracy (mean ± std across seeds), its per-seed values
    and the share of answers with a fully checked column trace."""
    modes = [m for m in ("greedy", "sampled") if m in result]
    runs = result["config"]["runs"]
    names = {"greedy": "greedy", "sampled": f"T=0.8 ({runs} runs)"}
    head = "| category | " + " | ".join(f"{names[m]} | {names[m]} per seed | {names[m]} trace ok" for m in modes) + " |"
    lines = [head, "|---|" + "---|---|---|" * len(modes)]
    for category in result["config"]["categories"]:
        cells = []
        for m in modes:
            acc, ok = result[m]["accuracy"][category], result[m]["trace_ok"][category]
            cells += [_pct(acc), " / ".join(f"{100 * v:.0f}" for v in acc["per_seed"]), _pct(ok)]
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_seeds(text: str) -> tuple[int, ...]:
    if text in ("dev", "heldout"):
        return DEV_SEEDS if text == "dev" else HELDOUT_SEEDS
    try:
        return tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes dev, heldout or comma-separated integers, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m phi4r.recipes.nano.arith_eval", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="nano", help="checkpoint directory or 'nano' [nano]")
    p.add_argument("--seeds", type=parse_seeds, default=DEV_SEEDS,
                   help=f"dev {DEV_SEEDS}, heldout {HELDOUT_SEEDS}, or a comma-separated list [dev]")
    p.add_argument("-n", type=int, default=50, help=f"problems per category and seed, at most {N_MAX} [50]")
    p.add_argument("--categories", default=",".join(CATEGORIES), help="comma-separated subset [all]")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--greedy", action="store_true", help="only greedy (temperature 0)")
    mode.add_argument("--sampled", action="store_true", help="only the sampled runs")
    p.add_argument("--runs", type=int, default=RUNS, help=f"sampled runs per problem [{RUNS}]")
    p.add_argument("--max-tokens", type=int, default=MAX_TOKENS, help=f"completion budget [{MAX_TOKENS}]")
    p.add_argument("--max-num-seqs", type=int, default=64, help="engine batch [64]")
    p.add_argument("--threads", type=int, default=None, help="torch threads [1 for small models]")
    p.add_argument("--out", type=Path, help="directory for samples-*.jsonl and summary.json")
    args = p.parse_args(argv)
    categories = [c.strip() for c in args.categories.split(",") if c.strip()]
    unknown = set(categories) - set(CATEGORIES)
    if unknown:
        p.error(f"unknown categories {sorted(unknown)}; known: {', '.join(CATEGORIES)}")
    if not 1 <= args.n <= N_MAX:
        p.error(f"-n must be in 1..{N_MAX}")
    if args.runs < 1:
        p.error("--runs must be >= 1")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    modes = ("greedy",) if args.greedy else ("sampled",) if args.sampled else ("greedy", "sampled")
    result = run(args.model, args.seeds, args.n, categories, modes, args.runs, args.max_tokens, args.max_num_seqs,
                 args.out)
    print(f"model {result['config']['model']}, seeds {list(args.seeds)}, n {args.n} per category and seed\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
