"""Quantizing while loading, `phi4r quantize` and compressed-tensors checkpoints (phi4r/compressed.py).

The compressed-tensors package (the `quant` extra) checks the format: it validates the configs phi4r writes,
decompresses phi4r's tensors, and writes checkpoints as llm-compressor does for phi4r to read.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import run_in_group

from phi4r import checkpoint
from phi4r.checkpoint import CheckpointError, load_model
from phi4r.compressed import pack_int8, unpack_int8
from phi4r.quant import Int8Linear, W8A8Linear, quantize_int8, quantize_w8a8
from phi4r.tiny import make_checkpoint

ROOT = Path(__file__).resolve().parent.parent
HAS_INT4 = importlib.util.find_spec("phi4r.quant_int4") is not None
IDS = torch.tensor([[1, 5, 9, 33, 7, 2, 100]])
OLD = {"int8": quantize_int8, "w8a8": quantize_w8a8}


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("src"), hidden_size=128, intermediate_size=320, vocab_size=600)


def run_cli(*args, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PHI4R_INT8_KERNEL": "0", "PHI4R_W8A8_KERNEL": "0"}
    proc = run_in_group([sys.executable, "-m", "phi4r.cli", *map(str, args)], timeout=timeout, env=env)
    return proc.returncode, proc.stdout, proc.stderr


def logits(model):
    with torch.no_grad():
        out = model(IDS)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("kind", ["int8", "w8a8"])
@pytest.mark.parametrize("tied", [False, True])
def test_quantizing_while_loading_matches_quantizing_the_loaded_model(tmp_path, monkeypatch, kind, tied):
    path = make_checkpoint(tmp_path, hidden_size=96, intermediate_size=160, vocab_size=600, tie_word_embeddings=tied)
    old, _ = load_model(path, dtype="bfloat16")
    OLD[kind](old)
    monkeypatch.setattr(checkpoint, "QUANT_BLOCK_BYTES", 37 * 4 * 96)  # several blocks per weight, a short last one
    new, _ = load_model(path, quantization=kind)
    assert isinstance(new.lm_head, W8A8Linear if kind == "w8a8" else Int8Linear)
    a, b = old.state_dict(), new.state_dict()
    assert a.keys() == b.keys()
    for name in a:  # bit-identical int8 weights, scales and float tensors
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
    assert torch.equal(logits(old), logits(new))


def test_w8a8_packing_block_by_block_is_the_kernels_packing():
    from phi4r.kernels import w8a8 as w8a8_kernel
    from phi4r.quant import W8A8Packer, int8_module

    q = torch.randint(-127, 128, (1100, 37), dtype=torch.int8)  # tiles of 64 rows and a short last one
    want = w8a8_kernel.pack(q)
    packer = W8A8Packer(tuple(q.shape))
    for start, stop in ((0, 5), (5, 64), (64, 70), (70, 600), (600, 1100)):  # blocks across tile edges
        packer.add(q[start:stop])
    for got in (packer.finish(), (lambda m: (m.weight, m.comp))(int8_module(W8A8Linear, q, torch.ones(1100)))):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    packer = W8A8Packer(tuple(q.shape))
    packer.add(q[:100])
    with pytest.raises(ValueError, match="gave 100 rows, expected 1100"):
        packer.finish()


@pytest.mark.skipif(not HAS_INT4, reason="phi4r.quant_int4 (int4 kernel) not in this tree")
def test_int4_packing_through_bytes_is_the_kernels_packing():
    from phi4r.kernels import int4 as int4_kernel
    from phi4r.quant_int4 import _pack_rows

    for k in (8, 13, 64, 131):
        q = torch.randint(-8, 8, (7, k), dtype=torch.int8)
        padded = torch.nn.functional.pad(q.float(), (0, -k % 8 + 8))  # the quantizer's padded groups
        assert torch.equal(_pack_rows(padded, k), int4_kernel.pack(q))


def test_pack_int8_is_compressed_tensors_packing():
    helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    for cols in (128, 130, 7):
        q = torch.randint(-128, 128, (5, cols), dtype=torch.int8)
        assert torch.equal(pack_int8(q), helpers.pack_to_int32(q, 8))
        assert torch.equal(unpack_int8(pack_int8(q), cols), q)


@pytest.mark.parametrize("kind", ["int8", "w8a8"])
def test_quantize_command_round_trip(src, tmp_path, kind):
    dst = tmp_path / kind
    code, _, err = run_cli("quantize", src, dst, "--quantization", kind)
    assert code == 0, err
    assert {p.name for p in src.iterdir()} <= {p.name for p in dst.iterdir()}  # tokenizer etc. came along
    qc = json.loads((dst / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["ignore"] == ["lm_head"]
    assert qc["format"] == {"w8a8": "int-quantized", "int8": "pack-quantized"}[kind]
    from safetensors import safe_open

    with safe_open(str(dst / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        assert f.get_tensor("lm_head.weight").dtype == torch.bfloat16  # stored unquantized, as vLLM reads it
    layer = "model.layers.0.mlp.down_proj"
    assert {f"{layer}.weight", f"{layer}.weight_scale"} <= names if kind == "w8a8" else \
        {f"{layer}.weight_packed", f"{layer}.weight_scale", f"{layer}.weight_shape"} <= names
    fresh, _ = load_model(src, quantization=kind)
    saved, _ = load_model(dst)  # the kind comes from the checkpoint
    assert type(saved.lm_head) is type(fresh.lm_head)
    assert torch.equal(logits(fresh), logits(saved))
    with pytest.raises(CheckpointError, match=f"already quantized \\({kind}\\)"):
        load_model(dst, quantization="int8" if kind == "w8a8" else "w8a8")


@pytest.mark.parametrize("kind", ["int8", "w8a8"])
def test_compressed_tensors_reads_what_phi4r_writes(src, tmp_path, kind):
    """The package validates the config and decompresses each layer to phi4r's own dequantized weights."""
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file

    dst = tmp_path / kind
    assert run_cli("quantize", src, dst, "--quantization", kind)[0] == 0
    qc = QuantizationConfig.model_validate(json.loads((dst / "config.json").read_text())["quantization_config"])
    scheme = qc.config_groups["group_0"]
    compressor = BaseCompressor.get_value_from_registry(qc.format)
    tensors = load_file(str(dst / "model.safetensors"))
    model, _ = load_model(dst, quantization=kind)
    for name, module in model.named_modules():
        if isinstance(module, (Int8Linear, W8A8Linear)) and name != "lm_head":
            local = {k.removeprefix(f"{name}."): v for k, v in tensors.items() if k.startswith(f"{name}.")}
            weight = compressor.decompress(local, scheme)["weight"]
            q = module.int8_weight() if kind == "w8a8" else module.weight
            assert torch.equal(weight.float(), (q.float() * module.scales.float()[:, None]).to(weight.dtype).float())


def _llm_compressor_checkpoint(src: Path, out: Path, scheme) -> None:
    """What llm-compressor's oneshot + save_pretrained write: transformers model, scheme applied, weight
    scales set (amax / qmax per channel or group, in fp32), compressed by the package, saved, config updated."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationConfig,
        QuantizationStatus,
        apply_quantization_config,
    )
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"]))
    for module in model.modules():
        if hasattr(module, "weight_scale"):
            w, args = module.weight.detach().float(), scheme.weights
            group = args.group_size if args.strategy == "group" else w.shape[1]  # per channel: one group a row
            amax = w.view(w.shape[0], -1, group).abs().amax(dim=-1)
            scale = amax.clamp(min=1e-12) / (2 ** (args.num_bits - 1) - 1)
            module.weight_scale = torch.nn.Parameter(scale, requires_grad=False)
            module.quantization_status = QuantizationStatus.FROZEN
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.save_pretrained(out)
    compressor.update_config(out)


@pytest.mark.parametrize("kind", ["int8", "w8a8"])
def test_reads_checkpoints_made_by_compressed_tensors(src, tmp_path, kind):
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationScheme,
        preset_name_to_scheme,
    )

    scheme = preset_name_to_scheme("W8A8", ["Linear"]) if kind == "w8a8" else QuantizationScheme(
        targets=["Linear"], weights=QuantizationArgs(num_bits=8, strategy="channel", symmetric=True))
    _llm_compressor_checkpoint(src, tmp_path / "ct", scheme)
    fmt = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]["format"]
    assert fmt == {"w8a8": "int-quantized", "int8": "pack-quantized"}[kind]
    theirs, _ = load_model(tmp_path / "ct")
    ours, _ = load_model(src, quantization=kind)
    assert torch.equal(logits(theirs), logits(ours))


def test_unsupported_schemes_are_refused(src, tmp_path):
    dst = tmp_path / "w8a8"
    assert run_cli("quantize", src, dst, "--quantization", "w8a8")[0] == 0
    cfg_file = dst / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["quantization_config"]["config_groups"]["group_0"]["weights"]["type"] = "float"
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unsupported compressed-tensors scheme"):
        load_model(dst)
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="quant_method 'gptq'"):
        load_model(dst)


def test_quantize_command_refusals(src, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    code, _, err = run_cli("quantize", src, tmp_path / "full", "--quantization", "int8")
    assert code == 2 and "not empty" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "full" / "x").read_text() == "keep"
    assert run_cli("quantize", src, tmp_path / "q", "--quantization", "int8")[0] == 0
    code, _, err = run_cli("quantize", tmp_path / "q", tmp_path / "qq", "--quantization", "int8")
    assert code == 2 and "already quantized" in err


@pytest.mark.skipif(not HAS_INT4, reason="phi4r.quant_int4 (int4 kernel) not in this tree")
def test_int4_round_trip_and_package_fixture(src, tmp_path):
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.quantization import preset_name_to_scheme

    assert run_cli("quantize", src, tmp_path / "q4", "--quantization", "int4", "--group-size", "32")[0] == 0
    fresh, _ = load_model(src, quantization="int4", group_size=32)
    assert torch.equal(logits(fresh), logits(load_model(tmp_path / "q4")[0]))
    preset = preset_name_to_scheme("W4A16", ["Linear"])
    # The preset's group of 128 does not divide this model's intermediate size (320): the same scheme in 32s.
    scheme = type(preset)(targets=["Linear"], weights=type(preset.weights)(
        **{**preset.weights.model_dump(), "group_size": 32}))
    _llm_compressor_checkpoint(src, tmp_path / "ct", scheme)
    # Their scales (amax / 7) round differently from phi4r's, and int4 noise compounds through a random model's
    # logits: compare what each stored layer holds with the float weights it came from, within one step.
    theirs, float_model = load_model(tmp_path / "ct")[0], load_model(src, dtype="float32")[0]
    weights = dict(float_model.named_modules())
    layers = [(n, m) for n, m in theirs.named_modules() if type(m).__name__ == "Int4Linear" and n != "lm_head"]
    assert len(layers) == 4 * 2  # qkv, o, gate_up, down in both layers
    for name, module in layers:
        w = weights[name].weight.detach().float()
        step = w.view(w.shape[0], -1, 32).abs().amax(-1, keepdim=True) / 7
        err = (module.dequantize(torch.float32) - w).view(w.shape[0], -1, 32).abs()
        assert (err <= step * 0.5 + 0.02 * step.amax()).all(), name  # half a step, plus bf16 rounding of the fixture


PEAK = textwrap.dedent("""
    import json, sys, time
    import torch
    from phi4r.checkpoint import load_model
    from phi4r.quant import quantize_int8, quantize_w8a8
    path, kind, how, warm = sys.argv[1:]
    load_model(warm, quantization=kind)  # torch's first-use allocations (thread pools, ...) are not loading's
    # /proc's VmHWM, not ru_maxrss: that one keeps the forking parent's peak across exec.
    status = lambda key: int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024
    before = status("VmRSS:")
    start = time.perf_counter()
    if how == "old":
        model, _ = load_model(path, dtype="bfloat16")
        (quantize_int8 if kind == "int8" else quantize_w8a8)(model)
    else:
        model, _ = load_model(path, quantization=None if how == "saved" else kind)
    seconds = time.perf_counter() - start
    peak = status("VmHWM:") - before
    held = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    print(json.dumps({"peak": peak, "held": held, "seconds": seconds}))
""")


def _peak(path, kind, how, warm):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PHI4R_INT8_KERNEL": "0", "PHI4R_W8A8_KERNEL": "0"}
    proc = run_in_group([sys.executable, "-c", PEAK, str(path), kind, how, str(warm)], timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_peak_memory_and_load_time(tmp_path):
    """A ~0.8 GB fp32 checkpoint: quantizing while loading holds about the quantized model at peak (the old
    path: the whole bf16 model plus fp32 copies), and its saved copy loads faster than quantizing it."""
    path = make_checkpoint(tmp_path / "big", hidden_size=1024, intermediate_size=4096, num_hidden_layers=8,
                           num_attention_heads=16, num_key_value_heads=4, vocab_size=32000)
    warm = make_checkpoint(tmp_path / "warm", vocab_size=600)
    new, old = _peak(path, "int8", "new", warm), _peak(path, "int8", "old", warm)
    print("int8 load, peak over the model it holds:", new, old)
    assert new["peak"] <= 1.1 * new["held"] + 256 * 2**20  # (the constant: a few blocks' temporaries)
    assert new["peak"] < 0.6 * old["peak"]
    assert run_cli("quantize", path, tmp_path / "q", "--quantization", "int8", timeout=600)[0] == 0
    saved = _peak(tmp_path / "q", "int8", "saved", warm)
    print("saved:", saved)
    assert saved["peak"] <= 1.1 * saved["held"] + 256 * 2**20
    assert saved["seconds"] < new["seconds"]


def test_nano_answers_the_same_from_its_saved_w8a8_copy(tmp_path):
    from phi4r import LLM, SamplingParams

    assert run_cli("quantize", "nano", tmp_path / "nano-w8a8", "--quantization", "w8a8")[0] == 0
    ask = [{"role": "user", "content": "What is 12 + 7?"}]
    params = SamplingParams(temperature=0, max_tokens=48)
    fresh = LLM("nano", quantization="w8a8").chat(ask, params, use_tqdm=False)[0].outputs[0]
    saved = LLM(str(tmp_path / "nano-w8a8")).chat(ask, params, use_tqdm=False)[0].outputs[0]
    assert saved.token_ids == fresh.token_ids and len(fresh.token_ids) > 0
