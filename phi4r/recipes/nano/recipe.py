"""`phi4r train nano`: the shipped nano model, end to end, by phi4r's own recipe.

    phi4r train nano --out runs/nano                  # tokenizer -> SFT -> GRPO -> eval -> report
    phi4r train nano --out runs/nano --ship           # ... then copy the GRPO model into phi4r/assets/nano
    python -m phi4r.recipes.nano.recipe --out runs/nano  # the same without the CLI wiring

Stages, each in its own OUT/ directory, skipped when done and resumed from its newest checkpoint
when interrupted: tokenizer (`train_bpe` with the recipe's SPLIT), warmup and recall (`.induction`:
the copying and the lookup by key that SFT needs to read facts out of a prompt), the SFT PHASES on
MIX's conversations (`.data`: the recipe's prompts and traces), grpo on GRPO_MIX, eval (`.evaluation`
of both models, and of --baseline if given, on seeds never used to develop the recipe: the benchmark
tasks and the column arithmetic) and report (OUT/report.md, OUT/plots, OUT/timings.json).

Everything is written under --out; `ship()` (`--ship`) is the separate step that copies a model into
the package. Everything is seeded (--seed); the data are the tasks' generators, nothing downloaded.
--threads defaults to 1: on a shared 2-core machine one thread per process was faster than two.
docs/NANO.md describes the model.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from .evaluation import EVAL_SEEDS, evaluate

SYSTEM_PROMPT = "You are Phi-nano. Think step by step inside <think> </think>, then give the final answer."

# The model: 4 layers of width 256, tied embeddings, a 1024-token context; ~3.6M parameters.
SIZES = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4,
         "intermediate_size": 768, "max_position_embeddings": 1024, "tie_word_embeddings": True,
         "rope_theta": 10000.0}
VOCAB_SIZE = 1024

# SFT data: task -> {difficulty level: instances}, levels below the card's range, and "copy": task ->
# copy conversations (`.data`). Maze (answers need a path search) and sat3 (clauses in a five-symbol
# alphabet the model does not learn to copy) stayed at chance. Arithmetic is cheap (~75 tokens a
# conversation; batches are length-bucketed) and weighted up: at temperature 0.8 its answers must be
# sharp, not just right under argmax. "columns": single operations on multi-digit numbers, worked
# column by column (`.arithmetic`), half of them as plain questions ("What is 67 + 81?"): the sums
# people ask first, in steps of one lookup and one digit operation each, which a model this small can take.
# "drill": conversations of column steps alone (`.arithmetic` DRILLS), every line a one-digit fact
# as the column traces write it; without them ~1 step in 5 was wrong, which was nearly every wrong answer.
MIX = {"arithmetic": {1: 3000, 2: 2500, 3: 400, 4: 400}, "spatialmap": {1: 3000, 2: 3000}, "calendar": {1: 2000, 2: 2000},
       "copy": {"spatialmap": 2000, "calendar": 500},
       "columns": {"add2": 600, "sub2": 600, "add3": 900, "sub3": 900, "addmix": 300, "submix": 300, "mul21": 1000,
                   "mul12": 200, "mul31": 300, "mul22": 100},
       "drill": {"add": 1200, "sub": 1200, "mul": 1200}}
SFT_SEED_OFFSET = 1000  # the first phase's instances: seed + 1000 (then the PHASES' offsets)
GRPO_SEED_OFFSET = 2000

# The recall stage: records `key v v v` over 160 noise tokens, from the copy warm-up; the lookup by
# key forms abruptly after a few hundred steps (at 320 tokens it did not within the budget).
RECALL = {"task": "recall", "recall_len": 160, "per_device_train_batch_size": 32, "warmup_steps": 20, "eval_steps": 25,
          "logging_steps": 25, "target": 0.9, "extra_steps": 25, "max_steps": 400}

# lr 5e-4 in phase 1, while the copying carries over from the warm-up (at 1e-3 the name lookups did
# not form), 1e-3 after. A phase is one pass over MIX's conversations in batches of 16.
CONVERSATIONS = sum(n for entry in MIX.values() for n in entry.values())
SFT = {"learning_rate": 5e-4, "warmup_steps": 30, "weight_decay": 0.01, "adam_beta2": 0.98,
       "max_steps": -(-CONVERSATIONS // 16), "bf16": True,
       "per_device_train_batch_size": 16, "max_length": 1024, "eval_fraction": 0.01, "eval_steps": 100,
       "logging_steps": 10, "save_steps": 100, "save_total_limit": 2}
# Phases 2 and 3 continue from the previous phase on fresh instances of the same mix (the lookups and
# sums of the traces form after the format; fresh data, not a second epoch).
SFT2 = {**SFT, "learning_rate": 1e-3, "warmup_steps": 20}
# (run directory, mix, seed offset, config)
PHASES = [("sft", MIX, SFT_SEED_OFFSET, SFT), ("sft2", MIX, 3000, SFT2), ("sft3", MIX, 4000, SFT2)]
# GRPO: where SFT leaves signal (accuracy between ~20% and ~80%): the multi-step arithmetic (levels 3
# and 4: chained operations, a column step inside) and three-digit and multiplication column
# problems; levels 1-2 are at ~100% after SFT, so their groups all score 1 and carry no advantage,
# and the card tasks' rewards are noise near chance. Completions are column traces (~100-200 tokens).
GRPO_MIX = {"arithmetic": {3: 800, 4: 800}, "columns": {"add3": 300, "sub3": 300, "mul21": 400}}
GRPO = {"learning_rate": 1.5e-4, "warmup_steps": 2, "max_steps": 40, "num_generations": 8, "num_prompts_per_step": 16,
        "per_device_train_batch_size": 64, "max_completion_length": 256, "max_prompt_length": 256,
        "temperature": 1.0, "beta": 0.0, "logging_steps": 1, "save_steps": 10, "save_total_limit": 2,
        "max_num_seqs": 128}

def log(msg: str) -> None:
    print(f"[nano {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- stages
def stage_tokenizer(out: Path, seed: int) -> Path:
    from ...train.bpe import train_tokenizer
    from ...train.config import TokenizerConfig
    from .data import SPLIT, sft_conversations, write_jsonl

    tok_dir = out / "tokenizer"
    if (tok_dir / "tokenizer.json").is_file():
        log(f"tokenizer: done ({tok_dir})")
        return tok_dir
    data = write_jsonl(out / "data" / "sft.jsonl", ({"messages": m} for m in sft_conversations(MIX, seed + SFT_SEED_OFFSET)))
    train_tokenizer(TokenizerConfig(output_dir=str(tok_dir), tasks=[], n_per_task=0, data=str(data),
                                    vocab_size=VOCAB_SIZE, system_prompt=SYSTEM_PROMPT, seed=seed, split="fine"),
                    pattern=SPLIT)
    return tok_dir


def stage_induction(out: Path, seed: int, tok_dir: Path, name: str, **options) -> Path:
    """A synthetic stage of `.induction` in OUT/`name`: the copy warm-up from a fresh model of SIZES (no
    options) or the recall stage (RECALL, `model`: the warm-up's)."""
    from .induction import InductionConfig, warm_up

    sizes = None if options.get("model") else SIZES
    return warm_up(InductionConfig(output_dir=str(out / name), tokenizer=str(tok_dir), init_config=sizes, seed=seed,
                                   device="cpu", **options), log=log)


def stage_train(run_dir: Path, trainer, config_class, **fields) -> Path:
    """A trainer's stage in `run_dir` (train_sft or train_grpo with its config class): skipped when its
    final/ is there, else run on the CPU with the recipe's system prompt, resumed from its newest checkpoint."""
    from ...train.checkpointing import latest_if_any

    if (run_dir / "final" / "config.json").is_file():
        log(f"{run_dir.name}: done ({run_dir / 'final'})")
        return run_dir / "final"
    return trainer(config_class(output_dir=str(run_dir), system_prompt=SYSTEM_PROMPT, device="cpu",
                                resume_from_checkpoint=latest_if_any(run_dir), **fields))


def stage_sft_phase(out: Path, seed: int, prev_dir: Path, name: str, mix: dict, offset: int, params: dict) -> Path:
    """An SFT phase: from `prev_dir` (the recall stage, or the previous phase) on `mix` at seed + `offset`."""
    from ...train.config import SFTConfig
    from ...train.sft import train_sft
    from .data import sft_conversations, write_jsonl

    data = out / "data" / f"{name}.jsonl"
    if not data.is_file():
        write_jsonl(data, ({"messages": m} for m in sft_conversations(mix, seed + offset)))
    return stage_train(out / name, train_sft, SFTConfig, model=str(prev_dir), data=str(data), seed=seed, **params)


def stage_grpo(out: Path, seed: int, sft_dir: Path, overrides: dict) -> Path:
    from ...train.config import GRPOConfig
    from ...train.grpo import train_grpo
    from .data import COLUMNS, column_instances, instances, prompt, write_jsonl

    data = out / "data" / "grpo.jsonl"
    if not data.is_file():
        insts = (instances(GRPO_MIX, seed + GRPO_SEED_OFFSET)
                 + column_instances(GRPO_MIX.get(COLUMNS, {}), seed + GRPO_SEED_OFFSET))
        write_jsonl(data, ({k: v for k, v in i.to_dict().items() if k != "id"} | {"prompt": prompt(i), "id": i.id}
                           for i in insts))
    return stage_train(out / "grpo", train_grpo, GRPOConfig, model=str(sft_dir), data=str(data), n_per_task=0,
                       seed=seed, **{**GRPO, **overrides})


def write_plots(out: Path) -> list[Path]:
    """OUT/plots/sft_loss.png (the SFT phases end to end, one step axis) and OUT/plots/grpo.png, from the
    trainers' metrics.jsonl."""
    from ...train.plots import MetricsLog, plot_metrics

    made = []
    (out / "plots").mkdir(parents=True, exist_ok=True)
    sft, offset = [], 0
    for run in [name for name, *_ in PHASES]:
        records = MetricsLog(out / run / "metrics.jsonl").read()
        sft += [{**r, "step": r["step"] + offset} for r in records]
        offset += max((r["step"] for r in records), default=0)
    grpo = MetricsLog(out / "grpo" / "metrics.jsonl").read()
    for records, keys, name, title in (
            (sft, ["loss", "eval_loss", "lr"], "sft_loss.png", "nano SFT (phases 1-3, end to end)"),
            (grpo, ["reward", "accuracy", "completion_length"], "grpo.png", "nano GRPO (multi-step and column arithmetic)")):
        if records:
            plot_metrics(records, keys, out / "plots" / name, title=title)
            made.append(out / "plots" / name)
    return made


def write_report(out: Path, timings: dict) -> Path:
    from .evaluation import columns_command, columns_table, eval_command, eval_runs, results_table

    write_plots(out)
    cmds = [eval_command("MODEL", task, str(d), args) for task, d, args in eval_runs(Path("EVAL_DIR"))]
    cmds.append(columns_command("MODEL", "EVAL_DIR/columns"))
    text = "\n\n".join([
        "# nano: SFT vs GRPO",
        f"Benchmark tasks, mean ± std across seeds {', '.join(map(str, EVAL_SEEDS))} (each seed: mean of its runs):",
        results_table(out), "Column arithmetic (`.arith_eval`), the same seeds:", columns_table(out),
        "Wall-clock per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()),
        "The same evaluations as commands (MODEL = sft/final or grpo/final, EVAL_DIR = eval/sft or eval/grpo):\n\n```\n"
        + "\n".join(cmds) + "\n```",
    ]) + "\n"
    path = out / "report.md"
    path.write_text(text)
    return path


def ship(model_dir: Path, dest: Path | None = None) -> Path:
    """Copy a Hugging Face directory into phi4r/assets/nano (the model `LLM()` loads)."""
    from ...checkpoint import NANO_DIR

    dest = Path(dest or NANO_DIR)
    tmp = dest.with_name(f".tmp-{dest.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json"):
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, tmp / name)
    # As Phi-4's own files say: llama.cpp's converter reads a Phi-3 BPE vocabulary only when
    # tokenizer_class is GPT2Tokenizer (else it looks for a SentencePiece tokenizer.model).
    tok_config = json.loads((tmp / "tokenizer_config.json").read_text())
    model_config = json.loads((tmp / "config.json").read_text())
    tok_config.update(tokenizer_class="GPT2Tokenizer", model_max_length=model_config["max_position_embeddings"])
    (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")
    for f in tmp.iterdir():
        f.chmod(0o644)
    if dest.exists():
        shutil.rmtree(dest)
    os.rename(tmp, dest)
    log(f"shipped {model_dir} -> {dest}")
    return dest


# ---- entry points
STAGES = ("tokenizer", "warmup", "recall", "sft", "grpo", "eval", "report")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/nano", help="run directory (resumes what it holds) [runs/nano]")
    p.add_argument("--seed", type=int, default=0, help="seed of data, initialisation and sampling [0]")
    p.add_argument("--threads", type=int, default=1, help="torch threads [1]")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)} [all]")
    p.add_argument("--baseline", help="also evaluate this model (a checkpoint directory, or 'nano': the shipped "
                                      "one) on the same instances, for the report's comparison")
    p.add_argument("--ship", action="store_true", help="copy the final model into phi4r/assets/nano")
    p.add_argument("--ship-stage", choices=["sft", "grpo"], default="grpo", help="which model --ship copies [grpo]")
    p.add_argument("--sft-steps", type=int, help=f"override SFT phase 1 max_steps [{SFT['max_steps']}]")
    p.add_argument("--grpo-steps", type=int, help=f"override GRPO max_steps [{GRPO['max_steps']}]")


def register(subparsers) -> None:
    """Add `nano` to `phi4r train`'s sub-subcommands."""
    p = subparsers.add_parser("nano", help="the shipped nano model end to end: tokenizer, SFT, GRPO, eval, report",
                              description=__doc__.split("\n")[0])
    add_arguments(p)
    p.set_defaults(func=lambda args: run(args))


def run(args) -> int:
    import torch

    torch.set_num_threads(max(1, args.threads))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise SystemExit(f"unknown stage(s) {sorted(unknown)}; known: {', '.join(STAGES)}")
    timings_file = out / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}

    def timed(name, fn):
        started = time.time()
        result = fn()
        # Re-read first: an eval may run in another process next to training.
        timings.update(json.loads(timings_file.read_text()) if timings_file.is_file() else {})
        timings[name] = timings.get(name, 0.0) + (time.time() - started)  # a resumed stage adds up
        timings_file.write_text(json.dumps(timings, indent=2) + "\n")
        return result

    tok_dir, warm_dir, grpo_dir = out / "tokenizer", out / "warmup" / "final", out / "grpo" / "final"
    recall_dir = out / "recall" / "final"
    sft_dir = out / PHASES[-1][0] / "final"  # the SFT model: the last phase's
    sft_over = {"max_steps": args.sft_steps} if args.sft_steps else {}
    grpo_over = {"max_steps": args.grpo_steps} if args.grpo_steps else {}
    if "tokenizer" in stages:
        tok_dir = timed("tokenizer", lambda: stage_tokenizer(out, args.seed))
    if "warmup" in stages:
        warm_dir = timed("warmup", lambda: stage_induction(out, args.seed, tok_dir, "warmup"))
    if "recall" in stages:
        recall_dir = timed("recall", lambda: stage_induction(out, args.seed, tok_dir, "recall",
                                                                 model=str(warm_dir), **RECALL))
    if "sft" in stages:
        sft_dir = recall_dir
        for k, (name, mix, offset, params) in enumerate(PHASES):
            params = {**params, **(sft_over if k == 0 else {})}
            sft_dir = timed(name, lambda prev=sft_dir, name=name, mix=mix, offset=offset, params=params:
                            stage_sft_phase(out, args.seed, prev, name, mix, offset, params))
    if "grpo" in stages:
        grpo_dir = timed("grpo", lambda: stage_grpo(out, args.seed, sft_dir, grpo_over))
    if "eval" in stages:
        timed("eval_sft", lambda: evaluate(sft_dir, out / "eval" / "sft", log=log))
        if grpo_dir.is_dir():
            timed("eval_grpo", lambda: evaluate(grpo_dir, out / "eval" / "grpo", log=log))
        if args.baseline:
            timed("eval_baseline", lambda: evaluate(args.baseline, out / "eval" / "baseline", log=log))
    if "report" in stages:
        log(f"report: {write_report(out, timings)}")
    if args.ship:
        ship(grpo_dir if args.ship_stage == "grpo" else sft_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="phi4r train nano", description=__doc__.split("\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
