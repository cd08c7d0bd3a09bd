"""The scale scenario (`phi4r bench scale`): a full-size random checkpoint, loaded per quantization.

    phi4r bench scale --dir /data/phi4-scale                          # Phi-4-reasoning's config, every run
    phi4r bench scale --dir /tmp/small --config small.json --runs int8,saved-int8 --out scale.json

It writes a random bf16 checkpoint of a config (Phi-4-reasoning's by default: 40 layers, hidden 5120,
40/10 heads, intermediate 17920, vocab 100352; ~29 GB in ~5 GB shards with their index) by streaming,
a block of rows at a time, so it never holds a tensor, let alone the model (a directory that already
holds this checkpoint is kept as it is). Then for each run it starts a child process that loads the
checkpoint as a user would (`LLM(path, quantization=...)`) and decodes a few tokens greedily, and
measures:

- load seconds (LLM() returning: reading, quantizing, building the engine) and decode tokens/s (batch
  1, the median step);
- peak process memory: the child's RSS high-water mark (VmHWM), and the anonymous and file-backed RSS
  (RssAnon, RssFile) sampled every 0.2 s at the sample where RSS was highest;
- against the targets: int8/w8a8 peak <= 1.1 x the loaded model's bytes (int8 linears, bf16 embeddings)
  + its KV cache + 1 GiB; a saved quantized checkpoint loads in under 60 s; int4 peak <= 10 GiB.

Runs: "bf16" (no quantization: the shards memory-mapped), "int8", "w8a8", "int4" (quantized while
loading the bf16 checkpoint) and "saved-<kind>" (a checkpoint `phi4r quantize` wrote, made first when
missing: that command runs as a child too and is a row of its own). A watchdog kills a child whose
anonymous RSS passes --memory-limit-gb (and reports it), or that runs past --timeout. Before each child the
checkpoint's files are dropped from the page cache (posix_fadvise DONTNEED; --warm keeps them), so a
load reads the disk as a first start does. Each row is printed as it completes and all of them are
written as JSON (--out).
"""
from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .bench import child_env, proc_status, step_times

GiB = 2**30
# Phi-4-reasoning's config.json (microsoft/Phi-4-reasoning), less the token ids, which come from the
# small tokenizer written with the random weights.
PHI4_REASONING = {
    "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_act": "silu", "hidden_size": 5120,
    "intermediate_size": 17920, "num_hidden_layers": 40, "num_attention_heads": 40, "num_key_value_heads": 10,
    "max_position_embeddings": 32768, "original_max_position_embeddings": 32768, "rms_norm_eps": 1e-05,
    "rope_theta": 500000, "rope_scaling": None, "partial_rotary_factor": 1.0, "sliding_window": None,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 100352, "attention_bias": False,
}
CONFIGS = {"phi4-reasoning": PHI4_REASONING}
KINDS = ("int8", "w8a8", "int4")
RUNS = ("bf16", *KINDS, *(f"saved-{k}" for k in KINDS))
# The order that answers the most first: the 16 GB question, then the saved checkpoints' load times.
DEFAULT_RUNS = ("int4", "saved-int8", "saved-int4", "int8", "w8a8")
SAVED_LOAD_TARGET_S = 60.0
INT4_PEAK_TARGET = 10 * GiB
_BLOCK_BYTES = 64 * 2**20  # fp32 bytes of random values made at a time while writing


def add_arguments(p) -> None:
    from .commands._options import names_from, number, positive_int

    runs = names_from(RUNS, "run")

    p.add_argument("--dir", type=Path, required=True,
                   help="where the random checkpoint is (written there when missing; saved quantized copies "
                        "go in DIR/quantized/<kind>)")
    p.add_argument("--config", default="phi4-reasoning",
                   help="'phi4-reasoning' or a config.json to make the checkpoint of [phi4-reasoning]")
    p.add_argument("--runs", type=runs, default=list(DEFAULT_RUNS),
                   help=f"comma-separated, in order, from {','.join(RUNS)} [{','.join(DEFAULT_RUNS)}]")
    p.add_argument("--quantization", dest="runs", type=runs, help="the same as --runs")
    p.add_argument("--shard-gb", type=number(float, 1e-6, "a size > 0"), default=5.0, help="size of the bf16 shards written [5]")
    p.add_argument("--prompt-len", type=positive_int, default=16, help="prompt tokens [16]")
    p.add_argument("--new-tokens", type=positive_int, default=8, help="tokens decoded greedily per run [8]")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads in the child [torch's default]")
    p.add_argument("--memory-limit-gb", type=number(float, 1e-6, "a size > 0"), default=21.0,
                   help="kill a child whose anonymous RSS passes this many GiB [21]")
    p.add_argument("--timeout", type=number(float, 1e-6, "seconds > 0"), default=3600.0, help="kill a child running longer (s) [3600]")
    p.add_argument("--warm", action="store_true", help="leave the checkpoint in the page cache between runs")
    p.add_argument("--out", type=Path, help="write every row as JSON here [DIR/bench-scale.json]")
    p.add_argument("--start-before", type=_clock, metavar="HH:MM",
                   help="start no run after this UTC time (the runs left are listed as skipped)")


def _clock(text: str):
    import argparse
    import datetime

    try:
        return datetime.datetime.strptime(text, "%H:%M").time()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HH:MM (UTC), got {text!r}") from None


def _too_late(args) -> bool:
    import datetime

    return args.start_before is not None and datetime.datetime.now(datetime.timezone.utc).time() >= args.start_before


def run(args) -> int:
    """`phi4r bench scale` (commands/bench.py parsed the arguments)."""
    config = load_config(args.config)
    context = args.prompt_len + args.new_tokens + 8
    if context > config.get("max_position_embeddings", context):
        raise ValueError(f"--prompt-len + --new-tokens + 8 = {context} exceeds the config's max_position_embeddings "
                         f"{config['max_position_embeddings']}")
    wrote = write_random_checkpoint(args.dir, config, shard_bytes=int(args.shard_gb * 1e9), progress=True)
    print(f"{'wrote' if wrote else 'using'} {args.dir}: {describe(args.dir)}", file=sys.stderr, flush=True)
    out = args.out or args.dir / "bench-scale.json"
    rows: list[dict] = []
    print(TABLE_HEADER, flush=True)
    # A SIGTERM ends the runs like Ctrl-C: run_child then kills the child's process group.
    signal.signal(signal.SIGTERM, _interrupt)
    for name in args.runs:
        if _too_late(args):
            rows.append({"run": name, "outcome": f"skipped: not started after {args.start_before:%H:%M} UTC"})
            print(table_row(rows[-1]), flush=True)
            continue
        kind = name.removeprefix("saved-")
        path = args.dir
        if name.startswith("saved-"):
            path = args.dir / "quantized" / kind
            if not (path / "config.json").is_file():
                rows.append(quantize_row(args, kind, path))
                print(table_row(rows[-1]), flush=True)
                _write_json(out, args, rows)
                if rows[-1]["outcome"] != "ok" or _too_late(args):
                    continue
        spec = {"path": str(path), "quantization": None if kind == "bf16" else kind, "prompt_len": args.prompt_len,
                "new_tokens": args.new_tokens, "threads": args.threads}
        if not args.warm:
            drop_page_cache(path)
        print(f"[{name}] loading {path} in a child process ...", file=sys.stderr, flush=True)
        result = run_child([sys.executable, "-m", "phi4r.bench_scale", json.dumps(spec)],
                           args.memory_limit_gb * GiB, args.timeout)
        rows.append(with_targets({"run": name, **spec, **result}))
        print(table_row(rows[-1]), flush=True)
        _write_json(out, args, rows)
    print(f"\nJSON: {out}", file=sys.stderr)
    return 0 if all(r["outcome"] == "ok" for r in rows) else 1


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def quantize_row(args, kind: str, dst: Path) -> dict:
    """`phi4r quantize DIR DST` in a watched child: the saved checkpoint, and the time and memory it took."""
    if dst.exists():  # an unfinished earlier attempt (config.json is written last)
        import shutil

        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not args.warm:
        drop_page_cache(args.dir)
    print(f"[quantize {kind}] phi4r quantize {args.dir} {dst} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    result = run_child([sys.executable, "-m", "phi4r.cli", "quantize", str(args.dir), str(dst), "--quantization", kind],
                       args.memory_limit_gb * GiB, args.timeout)
    result.setdefault("load_s", time.perf_counter() - start)
    return {"run": f"quantize-{kind}", "path": str(dst), "quantization": kind, **result}


# ---- the checkpoint

def load_config(name: str) -> dict:
    if name in CONFIGS:
        return dict(CONFIGS[name])
    file = Path(name)
    if file.is_dir():
        file = file / "config.json"
    if not file.is_file():
        raise ValueError(f"--config {name!r}: neither {' nor '.join(map(repr, CONFIGS))} nor a config.json file")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from e


def _plan(config: dict, shard_bytes: int):
    """(config.json's dict, [(file name, [(tensor, shape), ...]), ...]) of the checkpoint: tensors in the
    model's order, shards of at most shard_bytes (one tensor may exceed it alone)."""
    import torch

    from .config import Phi3Config
    from .model import Phi3ForCausalLM
    from .tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    fields = {**config, "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
              "pad_token_id": tokenizer.pad_id}
    fields.setdefault("torch_dtype", "bfloat16")
    if fields["torch_dtype"] != "bfloat16":
        raise ValueError(f"the scale checkpoint is bf16; config torch_dtype is {fields['torch_dtype']!r}")
    cfg = Phi3Config.from_dict(fields)
    if cfg.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"vocab_size {cfg.vocab_size} is below the tokenizer's {tokenizer.vocab_size}")
    with torch.device("meta"):
        model = Phi3ForCausalLM(cfg)
    tensors = [(n, tuple(t.shape)) for n, t in model.state_dict().items()
               if not (cfg.tie_word_embeddings and n == "lm_head.weight")]
    shards: list[list] = [[]]
    size = 0
    for name, shape in tensors:
        nbytes = 2 * math.prod(shape)
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    names = [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    return cfg.to_dict(), list(zip(names, shards)), tokenizer


def _header(tensors) -> bytes:
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors:
        nbytes = 2 * math.prod(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    return len(raw).to_bytes(8, "little") + raw


def _holds(path: Path, cfg: dict, shards) -> bool:
    """Whether `path` already holds this checkpoint whole, however sharded: config.json (written last, so
    the writing finished) is this config, the index lists these tensors and no shard is cut short."""
    from .checkpoint import INDEX_NAME

    file, index = path / "config.json", path / INDEX_NAME
    if not file.is_file():
        return False
    if json.loads(file.read_text()) != json.loads(json.dumps(cfg)):
        raise ValueError(f"{path} holds a checkpoint of another config; name another --dir (nothing was changed)")
    if not index.is_file():
        return False
    weight_map = json.loads(index.read_text()).get("weight_map", {})
    if set(weight_map) != {t for _, tensors in shards for t, _ in tensors}:
        return False
    for name in set(weight_map.values()):
        shard = path / name
        try:
            with open(shard, "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(size))
        except (OSError, ValueError):
            return False
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if shard.stat().st_size != 8 + size + end:
            return False
    return True


def write_random_checkpoint(path: Path, config: dict, shard_bytes: int = 5 * 10**9, seed: int = 0,
                            progress: bool = False) -> bool:
    """Write a random bf16 checkpoint of `config` (a config.json dict) to `path`, streaming; False when
    `path` already holds it. Weights: uniform with std 2/sqrt(fan_in) (phi4r.tiny's scale), norms 1;
    a small trained tokenizer (phi4r.tiny), whose token ids the config takes."""
    import torch
    from tqdm.auto import tqdm

    from .checkpoint import INDEX_NAME, _atomic_write

    path = Path(path)
    cfg, shards, tokenizer = _plan(config, shard_bytes)
    if _holds(path, cfg, shards):
        return False
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").unlink(missing_ok=True)
    total = sum(2 * math.prod(s) for _, tensors in shards for _, s in tensors)
    generator = torch.Generator().manual_seed(seed)
    with tqdm(total=total, desc=f"writing {path.name}", unit="B", unit_scale=True, disable=not progress,
              mininterval=2) as bar:
        for name, tensors in shards:
            tmp = path / (name + ".tmp")
            with open(tmp, "wb") as f:
                f.write(_header(tensors))
                for tensor, shape in tensors:
                    if len(shape) == 1:  # norms
                        f.write(torch.ones(shape, dtype=torch.bfloat16).view(torch.int16).numpy().tobytes())
                        bar.update(2 * shape[0])
                        continue
                    bound = 2.0 / shape[1] ** 0.5 * 3 ** 0.5  # uniform(-b, b) has std b / sqrt(3)
                    rows = max(1, _BLOCK_BYTES // (4 * shape[1]))
                    for start in range(0, shape[0], rows):
                        n = min(rows, shape[0] - start)
                        block = torch.empty(n, shape[1]).uniform_(-bound, bound, generator=generator)
                        f.write(block.to(torch.bfloat16).view(torch.int16).numpy().data)
                        bar.update(2 * block.numel())
            os.replace(tmp, path / name)
    weight_map = {t: name for name, tensors in shards for t, _ in tensors}
    _atomic_write(path / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map})
    tokenizer.save(path)
    _atomic_write(path / "config.json", cfg)  # last: what _holds looks for
    return True


def describe(path: Path) -> str:
    cfg = json.loads((path / "config.json").read_text())
    size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    return (f"{cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, {cfg['num_attention_heads']}/"
            f"{cfg['num_key_value_heads']} heads, intermediate {cfg['intermediate_size']}, vocab {cfg['vocab_size']}; "
            f"{size / 1e9:.1f} GB of bf16 safetensors")


def drop_page_cache(path: Path) -> None:
    """Ask the kernel to drop `path`'s files from the page cache (clean pages only; no privileges needed)."""
    for file in Path(path).glob("*.safetensors"):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# ---- the watched child

def _die_with_parent() -> None:
    """In the child, before exec: a SIGKILL when this process dies (Linux's PR_SET_PDEATHSIG), so a
    measurement never outlives the benchmark, however it ends."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_child(cmd: list[str], memory_limit: float, timeout: float) -> dict:
    """Run `cmd` (its stderr shown) in its own process group, sampling its memory every 0.2 s; killed past
    memory_limit bytes of anonymous RSS (a memory-mapped bf16 model's file pages may exceed it) or `timeout`
    seconds. The child's last stdout line, if JSON, is merged in."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=child_env(), start_new_session=True,
                            preexec_fn=_die_with_parent)
    peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
    hwm, outcome = 0, None
    try:
        while proc.poll() is None:
            s = proc_status(proc.pid)
            hwm = max(hwm, s.get("VmHWM", 0))
            if s.get("VmRSS", 0) > peak["VmRSS"]:
                peak = {k: s.get(k, 0) for k in peak}
            anon = s.get("RssAnon", 0) + s.get("RssShmem", 0)  # (file-backed pages are the kernel's to reclaim)
            if anon > memory_limit:
                outcome = f"killed: anonymous RSS {anon / GiB:.2f} GiB passed the {memory_limit / GiB:.1f} GiB limit"
            elif time.perf_counter() - start > timeout:
                outcome = f"killed: still running after {timeout:.0f} s"
            if outcome:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate()
    result = {}
    lines = stdout.strip().splitlines()
    if lines:
        try:
            result = json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    if outcome is None:
        outcome = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    result.update(outcome=outcome, wall_s=time.perf_counter() - start, sampled_peak_rss=peak["VmRSS"],
                  sampled_peak_anon=peak["RssAnon"], sampled_peak_file=peak["RssFile"])
    # The high-water mark: the child's own at the end of its measurement, or a later sample (its exit).
    result["peak_rss"] = max(result.get("peak_rss", 0), hwm, peak["VmRSS"])
    return result


# ---- one measurement (in the child)

def measure(spec: dict) -> dict:
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    from .api import LLM
    from .kernels import build
    from .sampling import SamplingParams

    base = proc_status(os.getpid())
    start = time.perf_counter()
    llm = LLM(spec["path"], quantization=spec["quantization"], max_num_seqs=1,
              max_model_len=spec["prompt_len"] + spec["new_tokens"] + 8)
    load_s = time.perf_counter() - start
    build.wait_for_builds()  # a first run on a machine builds the kernels; decode is measured with them
    kernels = {loader.what: loader.state.get("fn") is not None for loader in build.LOADERS if loader.state}
    model, cfg = llm.model, llm.model.config
    weight_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    loaded = proc_status(os.getpid())
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, cfg.vocab_size, (spec["prompt_len"],), generator=generator).tolist()
    params = SamplingParams(temperature=0, max_tokens=spec["new_tokens"], ignore_eos=True)
    steps = step_times(llm.engine, [prompt], params)
    step_s = statistics.median(steps[1:]) if len(steps) > 1 else steps[0]
    end = proc_status(os.getpid())
    kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * model.dtype.itemsize
    return {"load_s": load_s, "first_step_s": steps[0], "decode_tok_s": 1 / step_s, "decode_steps": len(steps),
            "weight_bytes": weight_bytes, "kv_bytes": kv_per_token * llm.engine.max_model_len,
            "base_rss": base.get("VmRSS", 0), "load_peak_rss": loaded.get("VmHWM", 0),
            "loaded_anon": loaded.get("RssAnon", 0), "loaded_file": loaded.get("RssFile", 0),
            "peak_rss": end.get("VmHWM", 0), "end_anon": end.get("RssAnon", 0), "end_file": end.get("RssFile", 0),
            "kernels": kernels, "threads": torch.get_num_threads()}


# ---- the report

def with_targets(row: dict) -> dict:
    """The row with its target (bytes or seconds) and whether it was met, where one applies."""
    run, kind = row["run"], row.get("quantization")
    if row.get("outcome") != "ok":
        return row
    if run.startswith("saved-"):
        row["target"] = f"load < {SAVED_LOAD_TARGET_S:.0f} s"
        row["met"] = row["load_s"] < SAVED_LOAD_TARGET_S
    if kind == "int4":
        row["target"] = (row.get("target", "") + "; " if "target" in row else "") + "peak <= 10 GiB"
        row["met"] = row.get("met", True) and row["peak_rss"] <= INT4_PEAK_TARGET
    elif kind in ("int8", "w8a8"):
        limit = 1.1 * row["weight_bytes"] + row["kv_bytes"] + GiB
        row["target"] = (row.get("target", "") + "; " if "target" in row else "") + \
            f"peak <= 1.1 x weights + KV + 1 GiB = {limit / GiB:.2f} GiB"
        row["met"] = row.get("met", True) and row["peak_rss"] <= limit
    return row


TABLE_HEADER = ("| run | load s | peak RSS GiB | anon / file at peak GiB | model GiB | decode tok/s | outcome | target |\n"
                "|---|---:|---:|---:|---:|---:|---|---|")


def table_row(r: dict) -> str:
    def gib(key):
        return f"{r[key] / GiB:.2f}" if r.get(key) else "-"

    decode = f"{r['decode_tok_s']:.2f}" if r.get("decode_tok_s") else "-"
    target = f"{r['target']}: {'met' if r['met'] else 'MISSED'}" if "target" in r else "-"
    return (f"| {r['run']} | {r.get('load_s', 0):.1f} | {gib('peak_rss')} | {gib('sampled_peak_anon')} / "
            f"{gib('sampled_peak_file')} | {gib('weight_bytes')} | {decode} | {r['outcome']} | {target} |")


def _write_json(out: Path, args, rows: list[dict]) -> None:
    from .checkpoint import _atomic_write

    data = {"dir": str(args.dir), "config": describe(args.dir), "machine": {"cpus": os.cpu_count(),
            "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB},
            "memory_limit_gib": args.memory_limit_gb, "cold_cache": not args.warm, "rows": rows}
    _atomic_write(out, data)


if __name__ == "__main__":  # the child of one run
    print(json.dumps(measure(json.loads(sys.argv[1]))))
