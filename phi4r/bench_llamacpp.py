"""phi4r against llama.cpp in one run (`phi4r bench --against llama.cpp`; llama-cpp-python: `pip install 'phi4r[bench]'`).

    phi4r bench --against llama.cpp                 # the anchor checkpoint, 4 precision pairs (~20 min, 2 cores)
    phi4r bench --against llama.cpp --quick         # fewer positions and steps, one round (~6 min)
    phi4r bench --against llama.cpp --precisions int8,int4 --out llama.json

The same checkpoint (default: "anchor", bench.ANCHOR_SHAPE with random weights, made by phi4r on first
use) is exported by phi4r (phi4r/gguf_io.py) to GGUF at each pair's type (PAIRS: fp32 / F32, bf16 /
BF16, int8 weight-only / Q8_0, int4 / Q4_0). Every measurement runs in its own child process with the
same thread count (2 by default), the contenders interleaved (phi4r, llama.cpp, llama.cpp, phi4r, ...
in the next round), so both see the same machine. Each child measures, at every position P
(POSITIONS): prefill tok/s of a P-token random prompt (after one untimed prefill of that length: first
calls set up kernels for new shapes), then batch-1 greedy decode tok/s of the next steps (1 / the
median step time). The best of the rounds counts. llama.cpp runs through llama-cpp-python's
`Llama.eval` with the next token picked by argmax over its logits (no sampler chain), flash attention
on (llama.cpp's own default on CPU) and its default F16 KV cache; phi4r through its engine as
`phi4r bench` measures it.

"Busy machine": the short-position decode again, with one CPU-bound background process (a busy
loop) running for the whole scenario.

Greedy agreement, per precision, on 5 text prompts: (a) the GGUF file itself, read by phi4r
(dequantized to fp32) and by llama.cpp: the export is right when they agree; (b) phi4r at its own
precision against llama.cpp (int8 and Q8_0 quantize differently, so agreement there is reported,
not required). Where the tokens differ, the top-2 logit margin at the first difference tells a
near-tie from a real disagreement.

Targets: DECODE_TARGETS per precision and BUSY_TARGET, ratios phi4r / llama.cpp of the short-position
batch-1 decode.
"""
from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# phi4r precision -> (GGUF type, phi4r dtype, phi4r quantization)
PAIRS = {"fp32": ("f32", "float32", None), "bf16": ("bf16", "bfloat16", None), "int8": ("q8_0", "bfloat16", "int8"),
         "int4": ("q4_0", "bfloat16", "int4")}
DECODE_TARGETS = {"fp32": 0.95, "bf16": 0.95, "int8": 1.2, "int4": 1.0}
BUSY_TARGET = 0.8
POSITIONS = {"short": 64, "1K": 1024, "4K": 4096}
GREEDY_PROMPTS = ["What is 12 + 7? Let me add the ones digits first.",
                  "The quick brown fox jumps over the lazy dog. Final Answer:",
                  "def add(a, b):\n    return a + b\n\nprint(add(3, 4))\n",
                  "Path 0->1->2->0, TotalDistance 17. Monday 09:00-10:30.",
                  "Über café naïve 東京 — unicode text survives the byte-level tokenizer."]
GREEDY_TOKENS = 16
CHILD_TIMEOUT_S = 1800  # one contender at one precision; a hung child must not hang the benchmark
WARMUP_LEN = 16


def require_llama_cpp() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        raise ValueError("`phi4r bench --against llama.cpp` needs llama-cpp-python: pip install 'phi4r[bench]' "
                         "(it compiles llama.cpp; 15-20 minutes on 2 cores)")


def plan(quick: bool) -> dict:
    """Positions, timed decode steps and rounds of a full or --quick run."""
    if quick:
        return {"positions": {"short": 64, "1K": 1024}, "new_tokens": 16, "rounds": 1}
    return {"positions": dict(POSITIONS), "new_tokens": 48, "rounds": 2}


# ---- the parent: exports, the interleaved schedule, the report

def run(args) -> int:
    from phi4r import bench
    from phi4r.checkpoint import resolve_model_path

    require_llama_cpp()
    import llama_cpp

    name = args.model or bench.ANCHOR_MODEL
    path = bench.preset_checkpoint(name) if name in bench.PRESETS else resolve_model_path(name)
    if path.suffix == ".gguf":
        raise ValueError("--against llama.cpp exports the checkpoint itself at every precision: pass a checkpoint "
                         "directory, not a .gguf file")
    settings = plan(args.quick)
    if args.rounds:
        settings["rounds"] = args.rounds
    threads = args.threads or 2
    compile_ = bool(args.compile if args.compile is not None else os.environ.get("PHI4R_COMPILE", "0") == "1")
    precisions = args.precisions
    files = export_all(path, [PAIRS[p][0] for p in precisions], args.gguf_dir)
    prompts = _greedy_prompts(path)
    print(f"Checkpoint {path}; llama-cpp-python {llama_cpp.__version__}; {threads} threads each; positions "
          f"{settings['positions']}; {settings['new_tokens']} decode steps timed; {settings['rounds']} round(s), "
          f"contenders interleaved.{' phi4r decodes through torch.compile.' if compile_ else ''}\n", flush=True)
    loadavg_start = os.getloadavg()
    base = {"threads": threads, "new_tokens": settings["new_tokens"], "positions": settings["positions"],
            "compile": compile_}
    runs: list[dict] = []
    for r in range(settings["rounds"]):
        for precision in precisions:
            order = ("phi4r", "llama.cpp") if r % 2 == 0 else ("llama.cpp", "phi4r")
            for engine in order:
                spec = {**base, **_contender(engine, precision, path, files), "greedy": prompts if r == 0 else None}
                runs.append({"scenario": "idle", "round": r, **_child(spec)})
    busy: list[dict] = []
    with busy_process():
        for precision in precisions:
            for engine in ("phi4r", "llama.cpp"):
                spec = {**base, **_contender(engine, precision, path, files), "greedy": None,
                        "positions": {"short": settings["positions"]["short"]}}
                busy.append({"scenario": "busy", "round": 0, **_child(spec)})
    export_check = []
    for precision in precisions:  # phi4r reading the exported file: the export's correctness
        spec = {**base, "engine": "phi4r", "precision": precision, "path": str(files[PAIRS[precision][0]]),
                "dtype": "float32", "quantization": None, "positions": {}, "greedy": prompts}
        export_check.append(_child(spec))
    rows = summarize(runs + busy, precisions)
    greedy = greedy_report(runs, export_check, precisions)
    print(markdown_table(rows))
    print("\nGreedy agreement (5 prompts, " f"{GREEDY_TOKENS} tokens each):")
    print("\n".join(greedy["lines"]))
    print(f"\nLoad average (1, 5, 15 min) {bench.loadavg(loadavg_start)} at the start, {bench.loadavg(os.getloadavg())} at the end.")
    if args.out:
        args.out.write_text(json.dumps({"checkpoint": str(path), "llama_cpp_python": llama_cpp.__version__,
                                        "settings": {**settings, "threads": threads, "compile": compile_}, "rows": rows,
                                        "greedy": greedy["pairs"], "measurements": runs + busy,
                                        "export_check": export_check, "loadavg_start": loadavg_start,
                                        "loadavg_end": os.getloadavg()}, indent=2) + "\n")
    return 0


def export_all(path: Path, types: list[str], where: Path | None) -> dict[str, Path]:
    """phi4r's GGUF export of `path` at each type, kept next to the other bench files and redone when
    the checkpoint is newer than the file."""
    from phi4r.checkpoint import load
    from phi4r.gguf_io import write_gguf

    where = Path(where) if where else Path(tempfile.gettempdir()) / f"phi4r-bench-gguf-{path.name}"
    where.mkdir(parents=True, exist_ok=True)
    stamp = max(f.stat().st_mtime for f in path.iterdir() if f.is_file())
    files, model = {}, None
    for kind in types:
        out = where / f"{path.name}-{kind}.gguf"
        if not out.is_file() or out.stat().st_mtime < stamp:
            if model is None:
                model, tokenizer = load(path, dtype="float32")
            print(f"exporting {path.name} to {out} ...", file=sys.stderr, flush=True)
            for note in write_gguf(model, tokenizer, out, kind, name=path.name):
                print(f"  note: {note}", file=sys.stderr)
        files[kind] = out
    return files


def _greedy_prompts(path: Path) -> list[dict]:
    from phi4r.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(path)
    return [{"text": t, "ids": tok.encode(t)} for t in GREEDY_PROMPTS]


def _contender(engine: str, precision: str, path: Path, files: dict) -> dict:
    gguf_type, dtype, quantization = PAIRS[precision]
    if engine == "phi4r":
        return {"engine": engine, "precision": precision, "path": str(path), "dtype": dtype, "quantization": quantization}
    return {"engine": engine, "precision": precision, "path": str(files[gguf_type]), "gguf_type": gguf_type}


class busy_process:
    """One CPU-bound background process (a Python busy loop) for the length of the `with` block."""

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        print(f"busy machine: background process {self.proc.pid} spinning", file=sys.stderr, flush=True)
        time.sleep(1.0)  # let the scheduler see it
        return self.proc

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def _child(spec: dict) -> dict:
    from phi4r import bench

    # The child imports the same phi4r as this process, installed or a source tree on PYTHONPATH.
    what = f"{spec['engine']} {spec['precision']}" + (" (reading the GGUF)" if spec["path"].endswith(".gguf")
                                                     and spec["engine"] == "phi4r" else "")
    print(f"  {what} ...", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run([sys.executable, "-m", "phi4r.bench_llamacpp", json.dumps(spec)], capture_output=True,
                              text=True, check=False, env=bench.child_env(), timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"measurement {what} took more than {CHILD_TIMEOUT_S} s; stopped") from None
    if proc.returncode != 0:
        raise SystemExit(f"measurement {what} failed:\n{proc.stderr[-4000:]}")
    return {"engine": spec["engine"], "precision": spec["precision"], **json.loads(proc.stdout.strip().splitlines()[-1])}


def summarize(measurements: list[dict], precisions: list[str]) -> list[dict]:
    """One row per (scenario, precision, metric, position): the best of the rounds for each engine."""
    best: dict[tuple, float] = {}
    for m in measurements:
        for pos, result in m["positions"].items():
            for metric in ("decode", "prefill"):
                key = (m["scenario"], m["precision"], metric, pos, m["engine"])
                best[key] = max(best.get(key, 0.0), result[f"{metric}_tok_s"])
    rows = []
    for scenario in ("idle", "busy"):
        for precision in precisions:
            for metric in ("decode", "prefill"):
                for pos in POSITIONS:
                    a, b = (best.get((scenario, precision, metric, pos, e)) for e in ("phi4r", "llama.cpp"))
                    if a is None or b is None:
                        continue
                    target = None
                    if metric == "decode" and pos == "short":
                        target = BUSY_TARGET if scenario == "busy" else DECODE_TARGETS[precision]
                    ratio = a / b
                    rows.append({"scenario": scenario, "precision": precision, "gguf_type": PAIRS[precision][0],
                                 "metric": metric, "position": pos, "phi4r_tok_s": a, "llama_cpp_tok_s": b,
                                 "ratio": ratio, "target": target,
                                 "verdict": None if target is None else ("PASS" if ratio >= target else "MISS")})
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| scenario | phi4r / llama.cpp | tok/s | position | phi4r | llama.cpp | ratio | target | |",
             "|---|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        target = f">= {r['target']:g}" if r["target"] is not None else ""
        lines.append(f"| {r['scenario']} | {r['precision']} / {r['gguf_type']} | {r['metric']} | {r['position']} | "
                     f"{r['phi4r_tok_s']:.1f} | {r['llama_cpp_tok_s']:.1f} | {r['ratio']:.2f} | {target} | "
                     f"{r['verdict'] or ''} |")
    return "\n".join(lines)


def greedy_report(runs: list[dict], export_check: list[dict], precisions: list[str]) -> dict:
    """Agreement of the greedy tokens per precision: the exported file (phi4r vs llama.cpp on the same
    GGUF) and the engines at their own precisions; at the first difference, both top-2 margins."""
    lines, pairs = [], {}
    for precision in precisions:
        llama = next(m for m in runs if m["engine"] == "llama.cpp" and m["precision"] == precision and m.get("greedy"))
        own = next(m for m in runs if m["engine"] == "phi4r" and m["precision"] == precision and m.get("greedy"))
        exported = next(m for m in export_check if m["precision"] == precision)
        pairs[precision] = {}
        for label, phi in (("GGUF read by phi4r (fp32)", exported), (f"phi4r {precision}", own)):
            agree, notes = 0, []
            for i, (p, q) in enumerate(zip(phi["greedy"], llama["greedy"])):
                if p["tokens"] == q["tokens"]:
                    agree += 1
                    continue
                k = next(j for j, (x, y) in enumerate(zip(p["tokens"], q["tokens"])) if x != y)
                notes.append(f"prompt {i}: differ at token {k} ({p['tokens'][k]} vs {q['tokens'][k]}); top-2 margin "
                             f"there: phi4r {p['margins'][k]:.3f}, llama.cpp {q['margins'][k]:.3f} (logit units)")
            same_ids = all(p["prompt_ids"] == q["prompt_ids"] for p, q in zip(phi["greedy"], llama["greedy"]))
            pairs[precision][label] = {"agree": agree, "of": len(llama["greedy"]), "notes": notes,
                                       "tokenizers_agree": same_ids}
            lines.append(f"- {precision} / {PAIRS[precision][0]}, {label} vs llama.cpp: {agree}/{len(llama['greedy'])} "
                         f"prompts identical; prompt tokens {'identical' if same_ids else 'DIFFER'}")
            lines += [f"    {n}" for n in notes]
    return {"lines": lines, "pairs": pairs}


# ---- one contender at one precision (in its own process)

def random_prompt(length: int, vocab_size: int) -> list[int]:
    """The same prompt in every child (token ids drawn over the whole vocabulary)."""
    import numpy as np

    return np.random.default_rng(length).integers(0, vocab_size, length).tolist()


def measure(spec: dict) -> dict:
    runner = _Phi4r(spec) if spec["engine"] == "phi4r" else _LlamaCpp(spec)
    runner.generate(random_prompt(WARMUP_LEN, runner.vocab_size), 3)  # first calls, buffers: not timed
    positions = {}
    for name, length in spec["positions"].items():
        prompt = random_prompt(length, runner.vocab_size)
        runner.generate(prompt, 1)  # a prompt length's first prefill sets up kernels for its shapes: not timed
        prefill_s, steps = runner.generate(prompt, spec["new_tokens"])
        step = statistics.median(steps)
        positions[name] = {"length": length, "prefill_tok_s": length / prefill_s, "decode_tok_s": 1 / step,
                           "step_ms": 1e3 * step}
    greedy = [runner.greedy(p["ids"], p["text"]) for p in spec["greedy"]] if spec.get("greedy") else None
    return {"positions": positions, "greedy": greedy, "load_s": runner.load_s}


def _margins(logits) -> list[float]:
    """Top-1 minus top-2 logit of each row."""
    import torch

    top = torch.as_tensor(logits).float().topk(2, dim=-1).values
    return (top[..., 0] - top[..., 1]).tolist()


class _Phi4r:
    def __init__(self, spec: dict):
        import torch

        from phi4r.api import LLM

        torch.set_num_threads(spec["threads"])
        start = time.perf_counter()
        longest = max([WARMUP_LEN, *spec["positions"].values()]) + spec["new_tokens"] + 8
        self.llm = LLM(spec["path"], dtype=spec["dtype"], quantization=spec["quantization"], max_num_seqs=1,
                       max_model_len=max(longest, 512), threads=spec["threads"], compile=spec["compile"])
        self.load_s = time.perf_counter() - start
        self.vocab_size = self.llm.model.config.vocab_size

    def generate(self, ids: list[int], new_tokens: int) -> tuple[float, list[float]]:
        """(prefill seconds, seconds of each decode step). The engine's first step prefills, samples the
        first token and runs one decode step: prefill = that step minus the median decode step."""
        from phi4r.bench import step_times
        from phi4r.sampling import SamplingParams

        steps = step_times(self.llm.engine, [ids], SamplingParams(temperature=0, max_tokens=new_tokens + 2,
                                                                  ignore_eos=True))
        decode = steps[1:]
        return steps[0] - statistics.median(decode), decode

    def greedy(self, ids: list[int], text: str) -> dict:
        import torch

        from phi4r.sampling import SamplingParams

        out = self.llm.generate(ids, SamplingParams(temperature=0, max_tokens=GREEDY_TOKENS, ignore_eos=True),
                                use_tqdm=False)[0].outputs[0].token_ids
        with torch.no_grad():  # the logits each token was picked from, for the margins
            logits = self.llm.model(torch.tensor([ids + out[:-1]]))[0, len(ids) - 1:]
        return {"prompt_ids": self.llm.tokenizer.encode(text), "tokens": list(out), "margins": _margins(logits)}


class _LlamaCpp:
    def __init__(self, spec: dict):
        import llama_cpp

        self.llama_cpp = llama_cpp
        start = time.perf_counter()
        longest = max([WARMUP_LEN, *spec["positions"].values()]) + spec["new_tokens"] + 8
        self.llm = llama_cpp.Llama(spec["path"], n_ctx=max(longest, 512), n_batch=512, n_ubatch=512,
                                   n_threads=spec["threads"], n_threads_batch=spec["threads"], flash_attn=True,
                                   verbose=False, seed=0)
        self.load_s = time.perf_counter() - start
        self.vocab_size = self.llm.n_vocab()

    def _logits(self):
        import numpy as np

        ptr = self.llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.vocab_size,))

    def generate(self, ids: list[int], new_tokens: int) -> tuple[float, list[float]]:
        self.llm.reset()
        start = time.perf_counter()
        self.llm.eval(ids)
        token = int(self._logits().argmax())
        prefill = time.perf_counter() - start
        steps = []
        for _ in range(new_tokens):
            start = time.perf_counter()
            self.llm.eval([token])
            token = int(self._logits().argmax())
            steps.append(time.perf_counter() - start)
        return prefill, steps

    def greedy(self, ids: list[int], text: str) -> dict:
        self.llm.reset()
        tokens, margins = [], []
        step = ids
        for _ in range(GREEDY_TOKENS):
            self.llm.eval(step)
            logits = self._logits().copy()
            tokens.append(int(logits.argmax()))
            margins += _margins(logits[None])
            step = [tokens[-1]]
        prompt_ids = self.llm.tokenize(text.encode(), add_bos=False, special=False)
        return {"prompt_ids": prompt_ids, "tokens": tokens, "margins": margins}


if __name__ == "__main__":  # one contender: `python -m phi4r.bench_llamacpp SPEC_JSON` (see _child)
    print(json.dumps(measure(json.loads(sys.argv[1]))))
