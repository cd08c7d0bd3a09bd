"""Does a model read facts out of its prompt? The diagnosis behind docs/NANO.md's "Why".

    python scripts/nano_copy_loss.py MODEL_DIR     # teacher-forced loss of name tokens copied from the prompt
    python scripts/nano_copy_loss.py --synthetic   # can the nano architecture learn a lookup at all?

The first feeds each task's teacher trace to the model (20 held-out level-1 instances, seed 0) and
averages the loss (and how often the model's top token is the right one) over the trace tokens that
are a place or person name (which the trace copies from the prompt) and over digit tokens; a model
that does not look names up pays about log(16), a uniform guess among the task's 16 names. The
second trains a fresh model of nano's sizes on "find the marker, copy the token after it" over 60
tokens and prints accuracy as it learns.
"""
from __future__ import annotations

import argparse
import math
import time

import torch


def copy_loss(model_dir: str, tasks: list[str], n: int = 20) -> None:
    from phi4r import load
    from phi4r.tasks import get_task
    from phi4r.tasks.calendar import NAMES
    from phi4r.tasks.spatialmap import PLACES
    from phi4r.train.data import encode_conversation

    model, tok = load(model_dir, dtype="float32")
    for task_name in tasks:
        names = {"spatialmap": PLACES, "calendar": NAMES}.get(task_name)
        task = get_task(task_name)
        nll: dict[str, list[float]] = {"names": [], "digits": []}
        hits: dict[str, list[bool]] = {"names": [], "digits": []}
        for inst in task.generate(n, 0, difficulty=1):
            messages = [{"role": "user", "content": inst.prompt}, {"role": "assistant", "content": task.teacher(inst)}]
            ex = encode_conversation(tok, messages)
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ex.ids]))[0].float(), -1)
            for t in range(1, len(ex.ids)):
                if ex.mask[t]:
                    piece = tok.decode([ex.ids[t]]).strip()
                    kind = "names" if names and piece in names else "digits" if piece.isdigit() else None
                    if kind:
                        nll[kind].append(-logp[t - 1, ex.ids[t]].item())
                        hits[kind].append(int(logp[t - 1].argmax()) == ex.ids[t])
        parts = [f"{kind} {sum(v) / len(v):.2f} nats, argmax right {100 * sum(hits[kind]) / len(v):.0f}% ({len(v)} tokens)"
                 for kind, v in nll.items() if v]
        line = f"{task_name}: " + "; ".join(parts)
        if names:
            line += f" (a uniform guess among {len(names)} names: {math.log(len(names)):.2f} nats)"
        print(line, flush=True)


def synthetic(steps: int = 300, seed: int = 0) -> None:
    from phi4r.config import Phi3Config
    from phi4r.model import Phi3ForCausalLM
    from phi4r.train.nano import SIZES

    torch.manual_seed(seed)
    model = Phi3ForCausalLM(Phi3Config.from_dict({**SIZES, "vocab_size": 64, "architectures": ["Phi3ForCausalLM"],
                                                  "model_type": "phi3"}))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.02)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.98), weight_decay=0.01)
    marker, query = 10, 11  # ids 0-9 are the digits to copy, 20-62 filler

    def batch(b=16, t=60):
        x = torch.randint(20, 63, (b, t))
        digit, where = torch.randint(0, 10, (b,)), torch.randint(0, t - 10, (b,))
        x[torch.arange(b), where], x[torch.arange(b), where + 1] = marker, digit
        x[:, -2], x[:, -1] = query, digit
        return x

    started = time.time()
    for step in range(steps + 1):
        x = batch()
        logits = model(x[:, :-1])[:, -1].float()
        loss = torch.nn.functional.cross_entropy(logits, x[:, -1])
        if step % 50 == 0:
            acc = (logits.argmax(-1) == x[:, -1]).float().mean().item()
            print(f"step {step}: loss {loss.item():.3f}, accuracy {acc:.2f} ({time.time() - started:.0f} s)", flush=True)
        opt.zero_grad()
        loss.backward()
        opt.step()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", nargs="?", help="a Hugging Face directory (e.g. runs/nano/sft3/final)")
    p.add_argument("--synthetic", action="store_true", help="train the synthetic lookup task instead")
    p.add_argument("--tasks", default="spatialmap,calendar,arithmetic", help="tasks to probe [spatialmap,calendar,arithmetic]")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.synthetic:
        synthetic()
    elif args.model:
        copy_loss(args.model, args.tasks.split(","))
    else:
        p.error("give MODEL or --synthetic")


if __name__ == "__main__":
    main()
