"""GGUF against llama.cpp's own code: phi4r's export run by llama.cpp (llama-cpp-python) gives the same
prompt tokens and greedy tokens as phi4r; a GGUF written by llama.cpp's converter (convert_hf_to_gguf.py)
is read by phi4r within the quantization's tolerance of the source; and `phi4r bench --against
llama.cpp` end to end on a tiny checkpoint.

llama-cpp-python compiles llama.cpp on install (15-20 minutes on 2 cores), so it is the optional
`bench` extra, not a test dependency: its tests skip without it. Its wheel does not carry the
converter (llama.cpp's source tree and llama-cpp-python's sdist do, in vendor/llama.cpp/): that test
runs when LLAMA_CPP_CONVERTER names convert_hf_to_gguf.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from phi4r.bench_llamacpp import GREEDY_PROMPTS
from phi4r.checkpoint import load
from phi4r.tiny import make_checkpoint

pytest.importorskip("gguf")
from phi4r.gguf_io import write_gguf  # noqa: E402

try:
    import llama_cpp
except ImportError:
    llama_cpp = None
needs_llama_cpp = pytest.mark.skipif(
    llama_cpp is None, reason="llama-cpp-python is not installed (pip install 'phi4r[bench]'; it compiles llama.cpp)")
CONVERTER = os.environ.get("LLAMA_CPP_CONVERTER")

NEW_TOKENS = 24
# llama.cpp's largest logit difference from phi4r on the same weights, relative to the largest logit:
# F32 differs only in summation order; at Q8_0 llama.cpp also rounds each activation block to 8 bits
# (its q8_0 x q8_0 dot product), which phi4r, running the dequantized weights in fp32, does not.
LOGIT_TOL = {"f32": 1e-4, "q8_0": 0.06}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", max_position_embeddings=2048)


def _llama(path):
    # F32 KV cache: llama.cpp's default F16 one would round what phi4r keeps in fp32.
    return llama_cpp.Llama(str(path), n_ctx=512, n_threads=1, verbose=False, seed=0,
                           type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)


def _llama_greedy(llm, ids: list[int]) -> tuple[list[int], list[np.ndarray]]:
    """llama.cpp's greedy tokens after `ids`, and the logits each was picked from."""
    llm.reset()
    out, logits, step = [], [], ids
    for _ in range(NEW_TOKENS):
        llm.eval(step)
        logits.append(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1),
                                            shape=(llm.n_vocab(),)).copy())
        out.append(int(logits[-1].argmax()))
        step = [out[-1]]
    return out, logits


@needs_llama_cpp
@pytest.mark.parametrize("kind", ["f32", "q8_0"])
def test_llama_cpp_greedy_equals_phi4r(tiny, tmp_path, kind):
    from phi4r.api import LLM
    from phi4r.sampling import SamplingParams

    model, tok = load(tiny, dtype="float32")
    out = tmp_path / f"tiny-{kind}.gguf"
    write_gguf(model, tok, out, kind, progress=False)
    # At f32 phi4r runs the source checkpoint itself. At q8_0 it runs what the file holds (the dequantized
    # weights; tests/test_gguf.py bounds them against the source), so a difference is llama.cpp's
    # arithmetic or a misread file, never phi4r's own int8 quantization.
    phi = LLM(str(tiny if kind == "f32" else out), dtype="float32", max_num_seqs=1, threads=1)
    llm = _llama(out)
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)

    def phi4r_logits(ids):
        with torch.no_grad():
            return phi.model(torch.tensor([ids]))[0, -1].float().numpy()

    def relative_diff(ours, theirs):
        return float(np.abs(ours - theirs).max() / np.abs(ours).max())

    for text in GREEDY_PROMPTS:
        ids = tok.encode(text)
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids, text
        ours = phi.generate(ids, params, use_tqdm=False)[0].outputs[0].token_ids
        theirs, their_logits = _llama_greedy(llm, ids)
        assert relative_diff(phi4r_logits(ids), their_logits[0]) <= LOGIT_TOL[kind], text
        if ours != theirs:  # allowed only where the two best logits are closer than the engines' difference
            k = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
            logits = phi4r_logits(ids + ours[:k])
            top = np.sort(logits)[-2:]
            noise = float(np.abs(logits - their_logits[k]).max())
            assert relative_diff(logits, their_logits[k]) <= LOGIT_TOL[kind], (text, k)
            assert top[1] - top[0] < 2 * noise, f"{text!r}: token {k} differs ({ours[k]} vs {theirs[k]}) with a " \
                                                f"top-2 margin of {top[1] - top[0]:.4f}, logits within {noise:.4f}"


@needs_llama_cpp
def test_llama_cpp_reads_the_metadata(tiny, tmp_path):
    model, tok = load(tiny, dtype="float32")
    out = tmp_path / "tiny-bf16.gguf"
    write_gguf(model, tok, out, "bf16", progress=False)
    llm = _llama(out)
    cfg = model.config
    meta = llm.metadata
    assert meta["general.architecture"] == "phi3" and meta["tokenizer.ggml.pre"] in ("dbrx", "gpt2")
    assert int(meta["phi3.block_count"]) == cfg.num_hidden_layers
    assert llm.n_vocab() == cfg.vocab_size and llm.n_embd() == cfg.hidden_size
    assert llm.token_eos() == tok.eos_id
    assert llm.detokenize(tok.encode(GREEDY_PROMPTS[4])).decode() == GREEDY_PROMPTS[4]


@needs_llama_cpp
def test_bench_against_llama_cpp_quick(tiny, tmp_path):
    """The whole `phi4r bench --against llama.cpp` path (export, interleaved children, busy machine,
    greedy check, table, JSON) on the tiny checkpoint."""
    from phi4r.cli import main

    out = tmp_path / "r.json"
    assert main(["bench", "--against", "llama.cpp", "--model", str(tiny), "--quick", "--precisions", "fp32,int8",
                 "--gguf-dir", str(tmp_path / "g"), "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {(r["scenario"], r["precision"], r["metric"], r["position"]): r for r in result["rows"]}
    assert set(rows) == {(s, p, m, pos) for s in ("idle", "busy") for p in ("fp32", "int8") for m in ("decode", "prefill")
                         for pos in (("short", "1K") if s == "idle" else ("short",))}
    for r in rows.values():
        assert r["phi4r_tok_s"] > 0 and r["llama_cpp_tok_s"] > 0
        assert r["ratio"] == pytest.approx(r["phi4r_tok_s"] / r["llama_cpp_tok_s"])
    assert rows["idle", "int8", "decode", "short"]["target"] == 1.2
    assert rows["busy", "fp32", "decode", "short"]["target"] == 0.8
    assert rows["idle", "fp32", "prefill", "1K"]["target"] is None
    check = result["greedy"]["fp32"]["GGUF read by phi4r (fp32)"]
    assert check["tokenizers_agree"] and check["of"] == 5


# The converter names a BPE vocabulary's pre-tokenizer by hashing how it tokenizes a probe text, and
# knows only published vocabularies: a random test tokenizer's hash gets the cl100k name the real
# Phi-4 one gets ("dbrx"; the test tokenizer splits with cl100k's regex). Everything else (hyper-
# parameters, tensor names and types, vocabulary, special tokens, chat template) is the converter's own.
_DRIVER = """
import runpy, sys
from pathlib import Path
script = Path(sys.argv[1]).resolve()
sys.path[:0] = [str(script.parent), str(script.parent / "gguf-py")]
import conversion.base
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "dbrx"
sys.argv = [str(script)] + sys.argv[2:]
runpy.run_path(str(script), run_name="__main__")
"""


@pytest.mark.skipif(not CONVERTER, reason="LLAMA_CPP_CONVERTER (the path of llama.cpp's convert_hf_to_gguf.py) is "
                                          "not set; llama-cpp-python's wheel does not include it")
@pytest.mark.parametrize("kind", ["f32", "bf16", "q8_0"])
def test_phi4r_reads_llama_cpp_converter_output(tiny, tmp_path, kind):
    pytest.importorskip("transformers")
    out = tmp_path / f"converted-{kind}.gguf"
    proc = subprocess.run([sys.executable, "-c", _DRIVER, str(Path(CONVERTER)), str(tiny), "--outfile", str(out),
                           "--outtype", kind], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, tok = load(tiny, dtype="float32")
    back, tok2 = load(out, dtype="float32")
    ids = torch.tensor([tok.encode(GREEDY_PROMPTS[0] + GREEDY_PROMPTS[4])])
    with torch.no_grad():
        ref, got = model(ids), back(ids)
    if kind == "f32":
        assert torch.equal(ref, got)
    elif kind == "bf16":  # the converter rounds each weight to bf16 as torch does
        with torch.no_grad():
            assert torch.equal(load(tiny, dtype="bfloat16")[0].float()(ids), got)
    else:  # Q8_0: each weight within half a step (block max / 127) of the source's
        for name, w in model.state_dict().items():
            assert (w - back.state_dict()[name]).abs().max() <= w.abs().max() * 0.51 / 127, name
        assert torch.nn.functional.cosine_similarity(ref.flatten(), got.flatten(), dim=0) > 0.995
    assert all(tok2.encode(t) == tok.encode(t) for t in GREEDY_PROMPTS)
    assert tok2.eos_id == tok.eos_id and tok2.system_prompt == tok.system_prompt
