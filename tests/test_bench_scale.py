"""`phi4r bench scale` (phi4r/bench_scale.py) end to end on a tiny config: the streamed random checkpoint,
the watched child loads, the saved quantized copy, the JSON and the memory watchdog."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_in_group
from safetensors import safe_open

from phi4r import bench_scale
from phi4r.checkpoint import load_model

ROOT = Path(__file__).resolve().parent.parent
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 640, "max_position_embeddings": 256}


def bench(*args, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = run_in_group([sys.executable, "-m", "phi4r.cli", "bench", "scale", *map(str, args)], timeout=timeout, env=env)
    return proc.returncode, proc.stdout, proc.stderr


def test_random_checkpoint_is_streamed_in_shards_and_kept(tmp_path):
    path = tmp_path / "ckpt"
    assert bench_scale.write_random_checkpoint(path, TINY, shard_bytes=60_000)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((path / s).is_file() for s in shards)
    model, config = load_model(path)
    assert config.num_hidden_layers == 2 and model.lm_head.weight.dtype == torch.bfloat16
    assert len(index["weight_map"]) == len(model.state_dict())
    with safe_open(str(path / index["weight_map"]["model.layers.1.mlp.down_proj.weight"]), "pt") as f:
        w = f.get_tensor("model.layers.1.mlp.down_proj.weight").float()
    bound = 2 / 128 ** 0.5 * 3 ** 0.5
    assert w.abs().max() <= bound * 1.01 and abs(w.std().item() - 2 / 128 ** 0.5) < 0.02  # uniform, std 2/sqrt(in)
    assert torch.equal(model.model.norm.weight, torch.ones(64, dtype=torch.bfloat16))
    stamp = {f: f.stat().st_mtime_ns for f in path.iterdir()}
    assert not bench_scale.write_random_checkpoint(path, TINY, shard_bytes=60_000)  # already there: untouched
    assert stamp == {f: f.stat().st_mtime_ns for f in path.iterdir()}
    with pytest.raises(ValueError, match="another config"):
        bench_scale.write_random_checkpoint(path, {**TINY, "num_hidden_layers": 3})


def test_scale_scenario_end_to_end(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "scale.json"
    code, stdout, err = bench("--dir", tmp_path / "ckpt", "--config", config, "--shard-gb", "0.0001",
                              "--runs", "int8,saved-int4", "--new-tokens", "4", "--out", out)
    assert code == 0, err
    assert "| int8 |" in stdout and "| saved-int4 |" in stdout and "| quantize-int4 |" in stdout
    rows = {r["run"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["int8", "quantize-int4", "saved-int4"]
    assert all(r["outcome"] == "ok" for r in rows.values())
    for name in ("int8", "saved-int4"):
        r = rows[name]
        assert r["load_s"] > 0 and r["decode_tok_s"] > 0 and r["decode_steps"] >= 2  # (the first step prefills and decodes)
        assert r["peak_rss"] >= r["load_peak_rss"] > r["base_rss"] > 0
        assert 0 < r["sampled_peak_rss"] <= r["peak_rss"]
        assert r["met"] is True
    # The int8 model's bytes: int8 linears (+ a bf16 scale per row), bf16 embeddings and norms.
    model, _ = load_model(tmp_path / "ckpt", quantization="int8")
    assert rows["int8"]["weight_bytes"] == sum(t.numel() * t.element_size()
                                               for t in [*model.parameters(), *model.buffers()])
    cfg = json.loads((tmp_path / "ckpt" / "quantized" / "int4" / "config.json").read_text())
    assert cfg["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] == 4
    # A second run reuses the checkpoint and the saved copy.
    code, stdout, err = bench("--dir", tmp_path / "ckpt", "--config", config, "--runs", "saved-int4",
                              "--new-tokens", "2", "--out", out)
    assert code == 0, err
    assert "using" in err and [r["run"] for r in json.loads(out.read_text())["rows"]] == ["saved-int4"]


def test_watchdog_kills_a_child_over_the_memory_limit(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    code, stdout, err = bench("--dir", tmp_path / "ckpt", "--config", config, "--runs", "int8",
                              "--memory-limit-gb", "0.05")  # below any Python process with torch
    assert code == 1
    row = json.loads((tmp_path / "ckpt" / "bench-scale.json").read_text())["rows"][0]
    assert row["outcome"].startswith("killed: anonymous RSS") and "0.1 GiB limit" in row["outcome"]
    assert "killed: anonymous RSS" in stdout


def test_bad_arguments_are_refused(tmp_path):
    code, _, err = bench("--dir", tmp_path, "--runs", "int3")
    assert code == 2 and "unknown run 'int3'" in err
    code, _, err = bench("--dir", tmp_path, "--config", tmp_path / "none.json")
    assert code != 0 and "none.json" in err and "Traceback" not in err
    code, _, err = bench("--dir", tmp_path, "--new-tokens", "0")
    assert code == 2 and "--new-tokens" in err
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    code, _, err = bench("--dir", tmp_path / "c", "--config", config, "--prompt-len", "300")
    assert code != 0 and "max_position_embeddings 256" in err and not (tmp_path / "c").exists()
