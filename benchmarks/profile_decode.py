"""Where a batch-1 decode step's time goes: in the linear layers (the weights) or outside them.

    python benchmarks/profile_decode.py --dtypes int8,bf16 --threads 2 --modes quiet,busy

Makes (once) a random checkpoint of the anchor shape (hidden 768, 12 layers, 12/4 heads, intermediate
3072, vocab 100352: Phi-4's proportions at 258M parameters) with phi4r, loads it with `phi4r.LLM`, and
for each dtype and mode reports:

- decode tok/s: the median engine step at batch 1 (prompt of --prompt-len tokens, --tokens steps timed);
- linear ms: every linear layer of the model called in model order on a [1, 1, in] input, each call
  timed, the per-layer medians summed (one pass over all of them per repeat, so every weight comes
  from memory as in a real step, not from a cache the previous call warmed);
- outside ms: step ms - linear ms, the per-token overhead (norms, RoPE, attention, the cache, sampling,
  Python);
- the top ops of torch.profiler over a few steps (self CPU time per step, written to --profile-dir).

Before every step it calls `phi4r.threads.adapt()` (where the checkout has it; --no-adapt: never), as
an engine loop would, and each mode first decodes untimed for --settle seconds.

"busy" runs the same with one CPU-bound background process (a Python busy loop) started first and
killed after: another program taking one of the cores, as on a laptop. Every dtype measures quiet and
busy back to back. Run it under the shared lock on a shared machine (flock /tmp/heavy.lock ...).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ANCHOR = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
          "num_key_value_heads": 4, "vocab_size": 100352, "max_position_embeddings": 4096, "rope_theta": 250000.0}
DTYPES = {"fp32": ("float32", None), "bf16": ("bfloat16", None), "int8": ("bfloat16", "int8"),
          "int4": ("bfloat16", "int4"), "w8a8": ("bfloat16", "w8a8")}
DEFAULT_CHECKPOINT = Path(tempfile.gettempdir()) / "phi4r-anchor-258m"


def make_checkpoint(path: Path) -> Path:
    if not (path / "config.json").is_file():
        from phi4r.tiny import make_checkpoint as make

        print(f"making the anchor checkpoint in {path} ...", file=sys.stderr, flush=True)
        shape = dict(ANCHOR)
        make(path, vocab_size=shape.pop("vocab_size"), **shape)
    return path


def busy_process() -> subprocess.Popen:
    """One CPU-bound process in its own session (killed with its group by `stop`)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def linear_ms(model, dtype, reps: int) -> float:
    """Sum over the model's linear layers of the median time of one [1, 1, in] call (see the docstring)."""
    import torch
    from torch import nn

    from phi4r.quant import Int8Linear, W8A8Linear

    kinds = (nn.Linear, Int8Linear, W8A8Linear)
    try:
        from phi4r.quant_int4 import Int4Linear
        kinds += (Int4Linear,)
    except ImportError:
        pass
    layers = [m for m in model.modules() if isinstance(m, kinds)]
    layers.sort(key=lambda m: 1 if m is model.lm_head else 0)  # the head runs last, as in a step
    inputs = [torch.randn(1, 1, m.in_features).to(dtype) for m in layers]
    times = [[] for _ in layers]
    with torch.inference_mode():
        for rep in range(reps + 2):
            for i, (m, x) in enumerate(zip(layers, inputs)):
                start = time.perf_counter()
                m(x)
                if rep >= 2:  # two untimed passes first
                    times[i].append(time.perf_counter() - start)
    return 1e3 * sum(statistics.median(t) for t in times)


def adapter(enabled: bool):
    """phi4r.threads.adapt where asked for and this phi4r has it (called before every engine step, as
    the engine would), else a no-op."""
    if enabled:
        try:
            from phi4r.threads import adapt
            return adapt
        except ImportError:
            pass
    return lambda: None


def decode_steps(engine, prompt: list[int], tokens: int, adapt=lambda: None) -> list[float]:
    """Seconds of each decode-only engine step of one batch-1 request (the prefill step dropped)."""
    from phi4r.sampling import SamplingParams

    engine.add_request(None, prompt, SamplingParams(temperature=0, max_tokens=tokens + 1, ignore_eos=True))
    steps = []
    while engine.has_unfinished():
        start = time.perf_counter()
        adapt()
        engine.step()
        steps.append(time.perf_counter() - start)
    return steps[1:]


def wait_for_kernels() -> list[str]:
    """Every phi4r kernel this checkout has, built and loaded before anything is timed (a build still
    running would leave the timed steps on the torch path); their names."""
    import importlib

    names = []
    for name in ("attention", "int8", "int4", "w8a8", "dense", "decode_ops"):
        try:
            module = importlib.import_module(f"phi4r.kernels.{name}")
        except ImportError:
            continue
        if module.loader.get() is not None:
            names.append(name)
    return names


def top_ops(engine, prompt: list[int], steps: int, out: Path, adapt, rows: int = 25) -> list[dict]:
    """torch.profiler over `steps` decode steps (the prefill step is not profiled): the top torch ops by
    self CPU time, per step. phi4r's C++ kernels are called directly, not through the dispatcher, so
    they are not listed: the table shows the torch ops around them."""
    from torch.profiler import ProfilerActivity, profile

    from phi4r.sampling import SamplingParams

    engine.add_request(None, prompt, SamplingParams(temperature=0, max_tokens=steps + 1, ignore_eos=True))
    engine.step()  # the prefill
    done = 0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        while engine.has_unfinished():
            adapt()
            engine.step()
            done += 1
    steps = max(1, done)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    out.write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=60))
    return [{"op": e.key, "calls_per_step": e.count / steps, "self_us_per_step": e.self_cpu_time_total / steps}
            for e in events[:rows]]


def measure(args, name: str, path: Path, prompt: list[int]) -> list[dict]:
    import torch

    from phi4r.api import LLM

    dtype, quantization = DTYPES[name]
    llm = LLM(str(path), dtype=dtype, quantization=quantization, max_num_seqs=1, threads=args.threads)
    engine, torch_dtype = llm.engine, llm.model.dtype
    adapt = adapter(args.adapt)
    decode_steps(engine, prompt, 8, adapt)  # warm-up: cache allocation, kernels' first calls
    rows = []
    for mode in args.modes:
        proc = busy_process() if mode == "busy" else None
        try:
            # Decode untimed for a while first: the background process gets its core, and the thread
            # adaptation (which measures every half second) sees the machine as it now is.
            end = time.monotonic() + args.settle
            while time.monotonic() < end:
                decode_steps(engine, prompt, 16, adapt)
            steps = decode_steps(engine, prompt, args.tokens, adapt)
            threads_used = torch.get_num_threads()
            step_ms = 1e3 * statistics.median(steps)
            lin = linear_ms(llm.model, torch_dtype, args.linear_reps)
            ops = top_ops(engine, prompt, args.profile_steps, args.profile_dir / f"{name}-{mode}.txt", adapt)
        finally:
            if proc is not None:
                stop(proc)
        row = {"dtype": name, "mode": mode, "threads": threads_used, "decode_tok_s": 1e3 / step_ms,
               "step_ms": step_ms, "step_ms_p90": 1e3 * sorted(steps)[int(0.9 * (len(steps) - 1))],
               "linear_ms": lin, "outside_ms": step_ms - lin, "top_ops": ops}
        rows.append(row)
        print(f"{name:5s} {mode:5s} {threads_used} thr {row['decode_tok_s']:7.1f} tok/s  step {step_ms:6.2f} ms (p90 "
              f"{row['step_ms_p90']:6.2f})  linears {lin:6.2f} ms  outside {row['outside_ms']:5.2f} ms", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtypes", default="int8,bf16", help=f"comma-separated, of {', '.join(DTYPES)}")
    p.add_argument("--modes", default="quiet,busy", help="comma-separated: quiet, busy (one background CPU hog)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=64, help="decode steps timed per mode")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--linear-reps", type=int, default=15)
    p.add_argument("--profile-steps", type=int, default=8)
    p.add_argument("--settle", type=float, default=2.0, help="seconds of untimed decoding before each mode")
    p.add_argument("--adapt", action=argparse.BooleanOptionalAction, default=True,
                   help="call phi4r.threads.adapt() before every step, where this phi4r has it")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--profile-dir", type=Path, default=Path(tempfile.gettempdir()) / "phi4r-profile")
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = p.parse_args(argv)
    args.dtypes, args.modes = args.dtypes.split(","), args.modes.split(",")
    for name in args.dtypes:
        if name not in DTYPES:
            p.error(f"unknown dtype {name!r}; choose from {', '.join(DTYPES)}")
    for mode in args.modes:
        if mode not in ("quiet", "busy"):
            p.error(f"unknown mode {mode!r}: quiet or busy")
    args.profile_dir.mkdir(parents=True, exist_ok=True)
    path = make_checkpoint(args.checkpoint)
    import torch

    prompt = torch.randint(100, 20000, (args.prompt_len,), generator=torch.Generator().manual_seed(0)).tolist()
    kernels = wait_for_kernels()
    print(f"phi4r from {Path(sys.modules['phi4r'].__file__).parent}; kernels: {', '.join(kernels) or 'none'}; "
          f"thread adaptation {'on' if args.adapt else 'off'}; load average {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for name in args.dtypes:
        rows += measure(args, name, path, prompt)
    for r in rows:
        if r["mode"] == "busy":
            quiet = next((q for q in rows if q["dtype"] == r["dtype"] and q["mode"] == "quiet"), None)
            if quiet:
                print(f"{r['dtype']}: busy/quiet {r['decode_tok_s'] / quiet['decode_tok_s']:.2f}")
    print(f"profiles in {args.profile_dir}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
