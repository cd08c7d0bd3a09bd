"""Peak memory of loading a sharded checkpoint: phi4r.load_model vs transformers, in one run.

    python benchmarks/load_memory.py [--dir /tmp/phi4r-load-bench] [--hidden 1024] [--layers 6]

Each load runs in a fresh subprocess; peak RSS (ru_maxrss) minus the process's RSS before loading
is compared with the checkpoint's weight bytes. Lazy loading should stay near 1x.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

def child(which: str, path: str) -> None:
    import torch  # noqa: F401  (imported before the baseline so its own memory is not counted)
    import transformers  # noqa: F401
    from phi4r.checkpoint import load_model

    base = _rss_now()
    if which == "phi4r":
        model, _ = load_model(path, dtype="float32")
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"base": base, "peak": peak, "params": sum(p.numel() for p in model.parameters())}))


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/phi4r-load-bench")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    from phi4r.checkpoint import save_model
    from phi4r.config import Phi3Config
    from phi4r.model import Phi3ForCausalLM

    path = Path(args.dir)
    config = Phi3Config(vocab_size=32000, hidden_size=args.hidden, intermediate_size=args.hidden * 3,
                        num_hidden_layers=args.layers, num_attention_heads=args.hidden // 128,
                        num_key_value_heads=max(1, args.hidden // 512), max_position_embeddings=4096,
                        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = Phi3ForCausalLM(config)
    save_model(model, path, max_shard_bytes=100 * 1024**2)
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    del model
    shards = len(list(path.glob("model-*.safetensors")))
    print(f"checkpoint: {weight_bytes / 1e6:.0f} MB fp32 in {shards} shards at {path}")
    print("| loader | peak RSS over baseline (MB) | x weight bytes |")
    print("|---|---|---|")
    for which in ("phi4r", "transformers"):
        out = subprocess.run([sys.executable, __file__, "--child", which, str(path)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        extra = r["peak"] - r["base"]
        print(f"| {which} | {extra / 1e6:.0f} | {extra / weight_bytes:.2f} |")


if __name__ == "__main__":
    main()
