"""`phi4r eval`: score a model on the task suite as the card's Eureka harness does.

    phi4r eval --model nano --tasks sat3,tsp --runs 5 --limit 20 --out runs/nano
    phi4r eval --endpoint http://localhost:8000/v1 --tasks aime --data aime=aime25.jsonl --runs 8 --out runs/srv
    phi4r eval --model teacher --tasks all --out runs/teacher     # validates the tasks: 100% expected
    phi4r eval --endpoint http://localhost:8000/v1 --suite card --data-dir benchmarks --runs 5 --out runs/card

Run the same command again to resume an interrupted evaluation.
"""
from __future__ import annotations

import os
import sys

from ._options import add_model_args, add_sampling_args, count, int_list, load_llm, number, positive_int

EPILOG = ("Sampling defaults: a local model's generation_config.json; the card's temperature 0.8, top_p 0.95, "
          "top_k 50 for an endpoint. System prompt: the checkpoint's (local) or Phi-4-reasoning's (endpoint). "
          "Writes samples.jsonl (resumable log), report.md, summary.json and plots/*.png into --out; --suite card "
          "writes them per benchmark into --out/<benchmark>/ and card.md, card.json into --out.")


def _pairs(text: str) -> dict[str, str]:
    pairs = dict(item.split("=", 1) for item in text.split(",") if item.strip())
    return {k.strip(): v.strip() for k, v in pairs.items()}


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a model on the task suite (mean ± std over runs, best/worst-of-N, "
                                           "majority vote, pass@k)", description=__doc__.split("\n")[0], epilog=EPILOG)
    src = p.add_mutually_exclusive_group()
    add_model_args(p, group=src, help="'nano' (the shipped model), a checkpoint directory, or 'teacher' (each "
                                      "task's teacher trace) [nano]")
    src.add_argument("--endpoint", help="an OpenAI-compatible server, e.g. http://localhost:8000/v1")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="endpoint key [$OPENAI_API_KEY]")
    p.add_argument("--served-model", help="the endpoint's model name [the first one it lists]")
    p.add_argument("--tasks", help="comma-separated task names; 'all' = every generated task plus those given --data")
    p.add_argument("--suite", choices=["card"], help="instead of --tasks: the model card's benchmarks that have files "
                   "(--data KEY=PATH, --data-dir), in the card's table next to its published numbers")
    p.add_argument("--data-dir", help="with --suite card: a folder holding benchmark files under their published names")
    p.add_argument("--difficulty", type=int_list, help="levels to generate, e.g. 1,2,3 (--limit instances each) [all, cycled]")
    p.add_argument("--runs", type=positive_int, default=1, help="samples per instance [1]")
    p.add_argument("--limit", type=positive_int, help="instances per generated task (per level) [10]; records per file [all]")
    p.add_argument("--data", type=_pairs, action="append", default=[], help="files of published benchmarks, or released "
                   "sets of generated tasks: aime=PATH,sat3=PATH,... (repeatable); with --suite card the keys are its "
                   "benchmarks' (aime24, aime25, omnimath, gpqa, ...)")
    add_sampling_args(p, default=0, help="instance generation and sampling seed [0]").add_argument(
        "--greedy", action="store_true", help="temperature 0")
    p.add_argument("--out", required=True, help="output directory (resumes the evaluation it holds)")
    p.add_argument("--concurrency", type=positive_int, default=8, help="endpoint requests in flight [8]")
    p.add_argument("--retries", type=count, default=5, help="endpoint retries of a transient failure [5]")
    p.add_argument("--timeout", type=number(float, 0.001, "a positive number of seconds"), default=3600.0,
                   help="endpoint seconds per request [3600]")
    p.add_argument("--max-num-seqs", type=positive_int, default=16, help="local engine samples in flight [16]")
    p.add_argument("--max-model-len", type=positive_int, help="local engine context [the model's]")
    p.add_argument("--scoring", choices=["strict", "eureka"], help="headline scoring: phi4r's exact verifiers or "
                   "Eureka's rules (the report shows both where they differ) [strict; eureka with --suite card]")
    p.add_argument("--judge-endpoint", help="an OpenAI-compatible server for Eureka's LLM steps (answer "
                   "extraction fallback, Omni-MATH equivalence) and ArenaHard's pairwise verdicts [none: those "
                   "samples are marked needs_judge]")
    p.add_argument("--judge-model", help="the judge endpoint's model name (required with --judge-endpoint)")
    p.add_argument("--judge-api-key", default=os.environ.get("OPENAI_API_KEY"), help="judge key [$OPENAI_API_KEY]")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _backend(args):
    from ..evals import EndpointBackend, LocalBackend, TeacherBackend

    if args.endpoint:
        return EndpointBackend(args.endpoint, model=args.served_model, api_key=args.api_key,
                               concurrency=args.concurrency, retries=args.retries, timeout=args.timeout)
    if args.model == "teacher":
        return TeacherBackend()
    llm = load_llm(args, "eval", max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len)
    return LocalBackend(llm, quantization=args.quantization)


def _tasks(args) -> list[str]:
    from ..tasks import get_task, list_tasks

    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if names == ["all"]:
        generated = list_tasks(procedural=True)
        return generated + sorted(set(args.data) - set(generated))
    try:
        return [get_task(name).name for name in names]  # unknown names fail before a model is loaded
    except KeyError as e:
        raise ValueError(e.args[0]) from None  # its message, without KeyError's quotes


def _run(args) -> int:
    from ..evals import BackendError, run_eval
    from ..evals.report import main_table
    from ..sandbox import SandboxError

    if args.greedy and args.temperature not in (None, 0):
        raise ValueError("--greedy and --temperature contradict each other")
    if (args.tasks is None) == (args.suite is None):
        raise ValueError("give --tasks or --suite card")
    if args.data_dir and not args.suite:
        raise ValueError("--data-dir goes with --suite card (use --data TASK=PATH with --tasks)")
    args.data = {k: v for pairs in args.data for k, v in pairs.items()}
    sampling = {"temperature": 0.0 if args.greedy else args.temperature, "top_p": args.top_p, "top_k": args.top_k,
                "max_tokens": args.max_tokens, "thinking_budget": args.thinking_budget}
    if args.judge_endpoint and not args.judge_model:
        raise ValueError("--judge-endpoint needs --judge-model")

    def judge_at(cache):
        from ..evals.judge import EndpointJudge
        return EndpointJudge(args.judge_endpoint, args.judge_model, api_key=args.judge_api_key, cache=cache)

    log = os.path.join(args.out, "<benchmark>" if args.suite else "", "samples.jsonl")
    try:
        if args.suite:
            return _card(args, sampling, judge_at if args.judge_endpoint else None)
        tasks = _tasks(args)
        if "arenahard" in tasks and not args.judge_endpoint:
            raise ValueError("arenahard is scored by a judge only: give --judge-endpoint and --judge-model")
        judge = judge_at(os.path.join(args.out, "judge_cache.jsonl")) if args.judge_endpoint else None
        summary = run_eval(_backend(args), tasks, args.out, runs=args.runs, limit=args.limit, seed=args.seed,
                           difficulty=args.difficulty, data=args.data, sampling=sampling,
                           system_prompt=args.system_prompt, progress=not args.quiet, plots=not args.no_plots,
                           scoring=args.scoring or "strict", judge=judge)
    except BackendError as e:
        print(f"error: {e}\nThe samples finished so far are saved in {log}; run the same "
              "command again to resume.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: the samples finished so far are saved in {log}; run the same "
              "command again to resume.", file=sys.stderr)
        return 130
    except SandboxError as e:  # a code task on a machine that cannot isolate model-written code
        print(f"phi4r eval: {e}", file=sys.stderr)
        return 2
    print(main_table(summary))
    if "arenahard" in tasks:
        _print_win_rate(args.out)
    print(f"\nreport: {os.path.join(args.out, 'report.md')}")
    errors, retry = summary["metrics"]["overall"]["errors"], summary["errors_to_retry"]
    if errors:  # refused samples are a final result (exit 0); transient failures leave the run unfinished
        example = next(iter(summary["first_errors"].values()))
        print(f"{errors} sample{'s' * (errors != 1)} got no answer (scored wrong; errors in {args.out}/samples.jsonl, "
              f"e.g. {example[:300]})"
              + (f"; {retry} failed for a transient reason: run the same command again to ask them again"
                 if retry else ""), file=sys.stderr)
    return 1 if retry else 0


def _card(args, sampling, make_judge) -> int:
    from ..evals.card import CARD_FILE, run_card, table

    if args.difficulty:
        raise ValueError("--difficulty picks generated instances; the card suite runs released files only")
    card = run_card(lambda: _backend(args), args.out, data=args.data, data_dir=args.data_dir, runs=args.runs,
                    limit=args.limit, seed=args.seed, sampling=sampling, system_prompt=args.system_prompt,
                    scoring=args.scoring or "eureka", progress=not args.quiet, plots=not args.no_plots,
                    make_judge=make_judge)
    print(table(card))
    for row in card["rows"]:
        if row["status"] == "skipped":
            print(f"skipped {row['benchmark']}: {row['reason']}", file=sys.stderr)
    print(f"\ncard: {os.path.join(args.out, CARD_FILE)}")
    return 0


def _print_win_rate(out) -> None:
    """ArenaHard's score is its battles pooled over questions, not the per-question mean of the table."""
    from ..evals.log import SampleLog
    from ..evals.report import pct
    from ..tasks.arenahard import win_rate

    with SampleLog(os.path.join(out, "samples.jsonl")) as log:
        rate = win_rate([s for s in log.samples.values() if s["task"] == "arenahard"])
    print(f"\narenahard: win rate against the baseline {pct(rate['mean'], rate['std'])} over {rate['battles']} "
          f"weighted battles (= the Bradley-Terry score); malformed verdicts {rate['verdict_errors']}, "
          f"unjudged answers {rate['unjudged']}")
