"""Engine benchmark (`phi4r bench`): phi4r vs transformers' `generate` vs the machine's roofline, in one run.

    phi4r bench --threads 1                        # the full grid (11 minutes on a busy 2-core machine)
    phi4r bench --batches 1,16 --dtypes fp32,int8 --new-tokens 32 --out results.json    # a quick run
    phi4r bench --batches 1,16 --dtypes int8,bf16 --new-tokens 32 --compile    # decode via torch.compile
    phi4r bench --model nano --batches 1 --no-transformers                      # another checkpoint

On a Phi-4-shaped checkpoint of about 250M parameters (head_dim 128, 4 query heads per KV head,
SwiGLU, untied lm_head; made once and cached, see `make_bench_checkpoint`; or --model), for each dtype
(fp32, bf16, int8 weight-only, w8a8: int8 weights and per-token int8 activations, int4: group-wise 4-bit
weights) and batch size, it measures prefill and decode tokens/s and peak memory of phi4r's engine and
of transformers (fp32 and bf16; the quantized dtypes are compared with transformers bf16). Both decode greedily and exactly
--new-tokens tokens (`ignore_eos` / `min_new_tokens`) from the same random prompts of --prompt-len
tokens. Every measurement runs in its own subprocess, so peak memory is its own and the two libraries
never share a process.

Decode tokens/s = batch / the median time of a decode step (robust to a busy machine's hiccups);
prefill tokens/s = prompt tokens / the time to the first token of every sequence.

Roofline: decoding reads every linear weight once per step (plus each sequence's KV cache), so
memory-bound tokens/s = batch * bandwidth / (weight bytes + batch * KV bytes); large batches become
compute-bound: tokens/s = GEMM FLOP/s / (2 * linear params + attention FLOPs). The roofline is the
lower of the two, from read bandwidth and GEMM FLOP/s measured at the start of the same run (int8 is
given the bf16 GEMM rate: its large-batch path dequantizes to bf16; w8a8 the int8 x int8 -> int32 rate
of torch._int_mm, and int8 weight bytes plus a bf16 scale and an int32 weight sum per channel; int4 half
a byte per weight plus a bf16 scale per 128, and the int8 x int8 rate).
"""
from __future__ import annotations

import importlib.util
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Phi-4-reasoning's proportions at about 250M parameters.
BENCH_SHAPE = {"hidden_size": 1024, "intermediate_size": 3584, "num_hidden_layers": 14, "num_attention_heads": 8,
               "num_key_value_heads": 2, "vocab_size": 32000, "max_position_embeddings": 4096, "rope_theta": 500000.0}
DTYPES = {"fp32": ("float32", None), "bf16": ("bfloat16", None), "int8": ("bfloat16", "int8"),
          "w8a8": ("bfloat16", "w8a8"), "int4": ("bfloat16", "int4")}
QUANTIZED = ("int8", "w8a8", "int4")
INT4_GROUP = 128  # Int4Linear's default group size: one bf16 scale per 128 weights
# transformers has no CPU int8 or int4 to compare with
HF_BASELINE = {"fp32": "fp32", "bf16": "bf16", "int8": "bf16", "w8a8": "bf16", "int4": "bf16"}
WARMUP_LEN = 16
DEFAULT_CHECKPOINT = Path(tempfile.gettempdir()) / "phi4r-bench-250m"
BENCH_MODEL = "bench"  # the --model name of DEFAULT_CHECKPOINT
# The 258M Phi-4-shaped checkpoint phi4r is measured against llama.cpp on (phi4r/bench_llamacpp.py):
# Phi-4's vocabulary, so the embedding and lm_head weigh what they do in the real model.
ANCHOR_SHAPE = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                "num_key_value_heads": 4, "vocab_size": 100352, "max_position_embeddings": 16384,
                "rope_theta": 250000.0}
ANCHOR_MODEL = "anchor"
# --model names of the checkpoints phi4r writes itself (random weights, nothing downloaded)
PRESETS = {BENCH_MODEL: (BENCH_SHAPE, DEFAULT_CHECKPOINT),
           ANCHOR_MODEL: (ANCHOR_SHAPE, Path(tempfile.gettempdir()) / "phi4r-bench-anchor-258m")}


def run(args) -> int:
    """The grid `phi4r bench` parsed (commands/bench.py); each measurement in a child process."""
    from phi4r.checkpoint import resolve_model_path

    if args.transformers and importlib.util.find_spec("transformers") is None:
        raise ValueError("transformers is not installed: `pip install transformers`, or pass --no-transformers")
    name = args.model or BENCH_MODEL
    path = preset_checkpoint(name) if name in PRESETS else resolve_model_path(name)
    if args.compile is None:  # resolved here as the engine would, so the report says which it measured
        args.compile = os.environ.get("PHI4R_COMPILE", "0") == "1"
    model = model_facts(path)
    machine = machine_facts(args.threads)
    print(f"Checkpoint {path}: {model['params'] / 1e6:.1f}M parameters ({model['linear_params'] / 1e6:.1f}M in linear "
          f"layers). Machine: {machine['cpus']} CPUs, {machine['threads']} torch threads, memory read bandwidth "
          f"{machine['read_gbps']:.1f} GB/s (copy {machine['copy_gbps']:.1f}), GEMM {machine['gflops']['fp32']:.0f} "
          f"GFLOP/s fp32 / {machine['gflops']['bf16']:.0f} bf16 / {machine['gflops']['w8a8']:.0f} int8 x int8 (GOP/s). "
          f"Prompts of {args.prompt_len} tokens, "
          f"{args.new_tokens} decode steps timed.{' phi4r decodes through torch.compile.' if args.compile else ''}\n",
          flush=True)
    rows = []
    for dtype in args.dtypes:
        for batch in args.batches:
            engines = ["phi4r"] + (["transformers"] if args.transformers and dtype not in QUANTIZED else [])
            for engine in engines:  # back to back, so both see the same machine load
                spec = {"engine": engine, "dtype": dtype, "batch": batch, "path": str(path),
                        "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "repeats": args.repeats,
                        "threads": args.threads, "compile": args.compile}
                print(f"  {engine} {dtype} batch {batch} ...", file=sys.stderr, flush=True)
                rows.append({**spec, **_child(spec)})
    for row in rows:
        row["roofline_tok_s"] = roofline(model, machine, row)
    machine["loadavg_end"] = os.getloadavg()
    verdicts = check_targets(rows)
    print(markdown_table(rows) + "\n\n" + "\n".join(verdicts))
    print(f"\nLoad average (1, 5, 15 min) {loadavg(machine['loadavg_start'])} at the start, "
          f"{loadavg(machine['loadavg_end'])} at the end.")
    if args.out:
        results = {"model": model, "machine": machine, "rows": rows, "targets": verdicts}
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


# ---- the checkpoint and the machine

def make_bench_checkpoint(path: Path, shape: dict = BENCH_SHAPE) -> Path:
    """The benchmark checkpoint at `path`, made (fp32, random weights, small tokenizer) unless a
    checkpoint is already there."""
    if not (path / "config.json").is_file():
        from phi4r.tiny import make_checkpoint

        print(f"making the benchmark checkpoint in {path} ...", file=sys.stderr, flush=True)
        shape = dict(shape)
        make_checkpoint(path, vocab_size=shape.pop("vocab_size"), **shape)
    return path


def preset_checkpoint(name: str) -> Path:
    """The checkpoint of a PRESETS name, made on first use."""
    shape, path = PRESETS[name]
    return make_bench_checkpoint(path, shape)


def model_facts(path: Path) -> dict:
    from torch import nn

    from phi4r.checkpoint import load_model

    model, config = load_model(path)  # memory-mapped: nothing is read but the header
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    rows = sum(m.weight.shape[0] for m in model.modules() if isinstance(m, nn.Linear))
    return {"params": model.num_parameters(), "linear_params": linear, "linear_rows": rows,
            "layers": config.num_hidden_layers, "kv_width": config.num_key_value_heads * config.head_dim,
            "q_width": config.num_attention_heads * config.head_dim}


def machine_facts(threads: int | None) -> dict:
    """Read and copy bandwidth of a 512 MB tensor, and GEMM FLOP/s per dtype (best of several runs)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    loadavg = os.getloadavg()
    x = torch.ones(128 * 2**20)  # 512 MB: far beyond the caches
    y = torch.empty_like(x)
    read = min(_timed(x.sum) for _ in range(10))
    copy = min(_timed(y.copy_, x) for _ in range(10))
    gflops = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(2048, 1024, dtype=dtype), torch.randn(1024, 4096, dtype=dtype)
        gflops[name] = 2 * 2048 * 1024 * 4096 / min(_timed(torch.mm, a, b) for _ in range(5)) / 1e9
    gflops["int8"] = gflops["bf16"]
    a, b = torch.randint(-127, 128, (2048, 1024), dtype=torch.int8), torch.randint(-127, 128, (1024, 4096), dtype=torch.int8)
    gflops["w8a8"] = 2 * 2048 * 1024 * 4096 / min(_timed(torch._int_mm, a, b) for _ in range(5)) / 1e9
    gflops["int4"] = gflops["w8a8"]  # its kernel multiplies with int8 activations (integer dot products)
    return {"read_gbps": x.nbytes / read / 1e9, "copy_gbps": 2 * x.nbytes / copy / 1e9, "gflops": gflops,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "loadavg_start": loadavg}


def loadavg(values) -> str:
    return " ".join(f"{x:.2f}" for x in values)


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def roofline(model: dict, machine: dict, row: dict) -> float:
    """Upper bound on decode tokens/s for this row: min(memory-bound, compute-bound)."""
    weight_bytes = {"fp32": 4, "bf16": 2, "int8": 1, "w8a8": 1, "int4": 0.5}[row["dtype"]] * model["linear_params"]
    if row["dtype"] == "int4":
        weight_bytes += 2 * model["linear_params"] / INT4_GROUP  # a bf16 scale per group
    elif row["dtype"] in QUANTIZED:
        weight_bytes += 2 * model["linear_rows"]  # one bf16 scale per output channel
    if row["dtype"] == "w8a8":
        weight_bytes += 4 * model["linear_rows"]  # and an int32 weight sum (the kernel's compensation)
    kv_elem = 4 if row["dtype"] == "fp32" else 2
    context = row["prompt_len"] + row["new_tokens"] / 2  # mean over the timed steps
    kv_bytes = 2 * model["layers"] * model["kv_width"] * kv_elem * context
    batch = row["batch"]
    memory = batch * machine["read_gbps"] * 1e9 / (weight_bytes + batch * kv_bytes)
    flops = 2 * model["linear_params"] + 4 * model["layers"] * model["q_width"] * context
    compute = machine["gflops"][row["dtype"]] * 1e9 / flops
    return min(memory, compute)


# ---- one measurement (in its own process)

def child_env() -> dict[str, str]:
    """The environment of a measurement's child: it imports the same phi4r as this process, installed
    or a source tree on PYTHONPATH."""
    package_root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}


def _child(spec: dict) -> dict:
    cmd = [sys.executable, "-m", "phi4r.bench", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=child_env())
    if proc.returncode != 0:
        raise SystemExit(f"measurement {spec['engine']} {spec['dtype']} batch {spec['batch']} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(spec: dict) -> dict:
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    measure_fn = _measure_phi4r if spec["engine"] == "phi4r" else _measure_transformers
    base = proc_status(os.getpid())["VmRSS"]
    run_once = measure_fn(spec)  # loads the model, warms up, returns the timed run
    load_peak = proc_status(os.getpid())["VmHWM"] - base
    Path("/proc/self/clear_refs").write_text("5")  # restart the peak (VmHWM) count: the run's own peak
    best = max((run_once() for _ in range(spec["repeats"])), key=lambda r: r["decode_tok_s"])
    return {**best, "peak_mb": (proc_status(os.getpid())["VmHWM"] - base) / 2**20, "load_peak_mb": load_peak / 2**20}


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, RssShmem and VmHWM of a process in bytes (empty once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def step_times(engine, prompts: list[list[int]], params) -> list[float]:
    """Seconds of every engine step until the requests of `prompts` finish. Step 1 prefills every
    prompt, samples each first token and runs one decode step; every later step is one decode step
    of the whole batch."""
    for ids in prompts:
        engine.add_request(None, ids, params)
    steps = []
    while engine.has_unfinished():
        start = time.perf_counter()
        engine.step()
        steps.append(time.perf_counter() - start)
    return steps


def _prompts(spec: dict, vocab_size: int):
    """Random prompts for the timed run, and their first WARMUP_LEN tokens for the warm-up run (which
    sets up the decode at this batch size without paying for a second full prefill)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, vocab_size, (spec["batch"], spec["prompt_len"]), generator=generator)
    return prompts, prompts[:, :WARMUP_LEN]


def _measure_phi4r(spec: dict):
    from phi4r.api import LLM
    from phi4r.sampling import SamplingParams

    dtype, quantization = DTYPES[spec["dtype"]]
    llm = LLM(spec["path"], dtype=dtype, quantization=quantization, max_num_seqs=spec["batch"],
              compile=spec.get("compile", False))
    prompts, warmup = _prompts(spec, llm.model.config.vocab_size)
    engine, B, N = llm.engine, spec["batch"], spec["new_tokens"]

    def generate(prompts, new_tokens: int) -> list[float]:
        return step_times(engine, prompts.tolist(), SamplingParams(temperature=0, max_tokens=new_tokens + 2,
                                                                   ignore_eos=True))

    start = time.perf_counter()
    # One-time setup (the KV cache, kernels' first calls; with --compile, compiling: 3 decode steps, so
    # that the span's recompile as a dynamic size happens here too) is not timed.
    generate(warmup, 3)
    warmup_s = time.perf_counter() - start

    def timed() -> dict:
        steps = generate(prompts, N)
        step_s = statistics.median(steps[1:])
        prefill_s = steps[0] - step_s  # step 1 minus its decode step
        return {"prefill_tok_s": B * spec["prompt_len"] / prefill_s, "decode_tok_s": B / step_s,
                "warmup_s": warmup_s, "step_ms": 1e3 * step_s}
    return timed


class _Clock:
    """A transformers streamer that only timestamps: put() is called with the prompt, then once per
    generated token (for the whole batch)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        self.times.append(time.perf_counter())


def _measure_transformers(spec: dict):
    import warnings

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[spec["dtype"]]
    model = transformers.AutoModelForCausalLM.from_pretrained(spec["path"], dtype=dtype).eval()
    prompts, warmup = _prompts(spec, model.config.vocab_size)
    B, N = spec["batch"], spec["new_tokens"]

    def generate(ids, new_tokens: int) -> _Clock:
        clock = _Clock()
        with torch.inference_mode():
            start = time.perf_counter()
            model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens + 1,
                           min_new_tokens=new_tokens + 1, pad_token_id=model.config.pad_token_id, streamer=clock)
        clock.times[0] = start  # the prompt's put() comes before any work
        return clock

    generate(warmup, 2)

    def timed() -> dict:
        t = generate(prompts, N).times  # [start, token 1 (prefill done), token 2, ..., token N + 1, end]
        step_s = statistics.median(b - a for a, b in itertools.pairwise(t[1:-1]))
        return {"prefill_tok_s": B * spec["prompt_len"] / (t[1] - t[0]), "decode_tok_s": B / step_s}
    return timed


# ---- the report

def markdown_table(rows: list[dict]) -> str:
    hf = {(r["dtype"], r["batch"]): r for r in rows if r["engine"] == "transformers"}
    header = ("| engine | dtype | batch | prefill tok/s | decode tok/s | peak MB | prefill vs HF | decode vs HF "
              "| roofline tok/s | decode vs roofline | warm-up s |")
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        base = hf.get((HF_BASELINE[r["dtype"]], r["batch"])) if r["engine"] == "phi4r" else None
        vs = f" (vs {HF_BASELINE[r['dtype']]})" if base and r["dtype"] in QUANTIZED else ""
        prefill, decode = (f"{r[k] / base[k]:.2f}x{vs}" if base else "" for k in ("prefill_tok_s", "decode_tok_s"))
        lines.append(f"| {r['engine']} | {r['dtype']} | {r['batch']} | {r['prefill_tok_s']:.0f} | "
                     f"{r['decode_tok_s']:.1f} | {r['peak_mb']:.0f} | {prefill} | {decode} | "
                     f"{r['roofline_tok_s']:.1f} | {r['decode_tok_s'] / r['roofline_tok_s']:.0%} | "
                     f"{r.get('warmup_s', float('nan')):.1f} |")
    return "\n".join(lines)


def check_targets(rows: list[dict]) -> list[str]:
    """The engine's targets (ratios to transformers, to batch 1 and to the roofline), for the rows this grid has."""
    decode = {(r["engine"], r["dtype"], r["batch"]): r["decode_tok_s"] for r in rows}
    roof = {(r["engine"], r["dtype"], r["batch"]): r["roofline_tok_s"] for r in rows}
    ratios = [(f"batch-1 decode {d}: phi4r / transformers", ("phi4r", d, 1), ("transformers", d, 1), 1.5)
              for d in ("fp32", "bf16")]
    ratios += [(f"batch-1 decode {d}: phi4r / transformers bf16", ("phi4r", d, 1), ("transformers", "bf16", 1), 2.5)
               for d in QUANTIZED]
    ratios += [(f"aggregate decode {d}: phi4r batch 16 / batch 1", ("phi4r", d, 16), ("phi4r", d, 1), 6.0) for d in DTYPES]
    verdicts = [_verdict(name, decode[a] / decode[b], target) for name, a, b, target in ratios
                if a in decode and b in decode]
    for d in QUANTIZED:
        key = ("phi4r", d, 1)
        if key in decode:
            verdicts.append(_verdict(f"batch-1 decode {d}: phi4r / roofline", decode[key] / roof[key], 0.7))
    return verdicts


def _verdict(name: str, value: float, target: float) -> str:
    return f"- {'PASS' if value >= target else 'MISS'} {name}: {value:.2f} (target {target:g})"


if __name__ == "__main__":  # one measurement: `python -m phi4r.bench SPEC_JSON` (see _child)
    print(json.dumps(measure(json.loads(sys.argv[1]))))
