"""Which parts of the recipe's traces a model has learned: teacher-forced, on held-out instances.

    python -m phi4r.recipes.nano.probes MODEL_DIR [--tasks spatialmap,calendar] [--level 1] [-n 40]

Each instance's recipe trace (`data.teach`, after the recipe's prompt) is fed to the model. Per kind
of token the trace writes - a place or person name (which the trace copies from the prompt or a
record), a number or clock time, any other word - it reports the mean loss and how often the
model's top token is the right one; then how many trace lines have every token right, and how far
into the trace the first wrong token comes (where a greedy answer would leave the teacher). A model
that does not look names up pays about log(16) nats on them, a uniform guess among 16 names.
"""
from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from ...tasks import get_task
from ...tasks.calendar import NAMES
from ...tasks.spatialmap import PLACES
from . import data
from .evaluation import DEV_SEED

KNOWN_NAMES = set(PLACES) | set(NAMES)


def kind(piece: str) -> str | None:
    word = piece.strip(" ([])")
    if not word:
        return None
    return "names" if word in KNOWN_NAMES else "numbers" if word[0].isdigit() else "words"


def probe(model, tok, task_name: str, level: int = 1, n: int = 40, seed: int = DEV_SEED) -> dict:
    """{kind: (mean loss in nats, argmax accuracy, tokens)} plus "lines" (share of trace lines with
    every token right) and "first_error" (mean share of the trace's tokens before the first wrong one)."""
    from ...train.data import encode_conversation

    nll, hits, lines, first_error = defaultdict(list), defaultdict(list), [], []
    for inst in get_task(task_name).generate(n, seed, difficulty=level):
        messages = [{"role": "user", "content": data.prompt(inst)}, {"role": "assistant", "content": data.teach(inst)}]
        ex = encode_conversation(tok, messages)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ex.ids]))[0].float(), -1)
        targets = [t for t in range(1, len(ex.ids)) if ex.mask[t]]
        right = [int(logp[t - 1].argmax()) == ex.ids[t] for t in targets]
        line_ok = True
        for t, ok in zip(targets, right):
            piece = tok.decode([ex.ids[t]])
            if (k := kind(piece)) is not None:
                nll[k].append(-logp[t - 1, ex.ids[t]].item())
                hits[k].append(ok)
            line_ok &= ok
            if "\n" in piece:
                lines.append(line_ok)
                line_ok = True
        first_error.append(right.index(False) / len(right) if False in right else 1.0)
    out = {k: (sum(v) / len(v), sum(hits[k]) / len(v), len(v)) for k, v in nll.items()}
    return out | {"lines": sum(lines) / max(1, len(lines)), "first_error": sum(first_error) / len(first_error)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="a Hugging Face directory (e.g. runs/nano/sft3/final)")
    p.add_argument("--tasks", default="spatialmap,calendar,arithmetic", help="[spatialmap,calendar,arithmetic]")
    p.add_argument("--level", type=int, default=1, help="difficulty level [1]")
    p.add_argument("-n", type=int, default=40, help="held-out instances per task [40]")
    args = p.parse_args(argv)
    from ... import load

    torch.set_num_threads(1)
    model, tok = load(args.model, dtype="float32")
    for name in args.tasks.split(","):
        result = probe(model, tok, name, args.level, args.n)
        kinds = "; ".join(f"{k} {loss:.2f} nats, argmax {100 * acc:.0f}% ({count})"
                          for k, v in result.items() if isinstance(v, tuple) for loss, acc, count in [v])
        print(f"{name} level {args.level}: {kinds}; lines all right {100 * result['lines']:.0f}%, "
              f"first wrong token at {100 * result['first_error']:.0f}% of the trace", flush=True)


if __name__ == "__main__":
    main()
