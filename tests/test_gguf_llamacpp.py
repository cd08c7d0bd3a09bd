"""phi4r's GGUF export run by llama.cpp itself (llama-cpp-python): the same prompt tokens and the same
greedy tokens as phi4r; and `phi4r bench --against llama.cpp` end to end on a tiny checkpoint.

llama-cpp-python compiles llama.cpp on install (15-20 minutes on 2 cores), so it is the optional
`bench` extra, not a test dependency: these tests skip without it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (pip install 'phi4r[bench]'; it compiles llama.cpp)")

from phi4r.api import LLM  # noqa: E402
from phi4r.bench_llamacpp import GREEDY_PROMPTS  # noqa: E402
from phi4r.checkpoint import load  # noqa: E402
from phi4r.gguf_io import write_gguf  # noqa: E402
from phi4r.sampling import SamplingParams  # noqa: E402
from phi4r.tiny import make_checkpoint  # noqa: E402

NEW_TOKENS = 24
# Where phi4r's top-2 logits are closer than this, llama.cpp's different summation order (and at q8_0
# its 8-bit activations) may pick the other one: a near-tie, not an export error.
NEAR_TIE = {"f32": 1e-3, "q8_0": 0.05}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", max_position_embeddings=2048)


def _llama(path):
    # F32 KV cache: llama.cpp's default F16 one would round what phi4r keeps in fp32.
    return llama_cpp.Llama(str(path), n_ctx=512, n_threads=1, verbose=False, seed=0,
                           type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)


def _llama_greedy(llm, ids: list[int]) -> list[int]:
    llm.reset()
    out, step = [], ids
    for _ in range(NEW_TOKENS):
        llm.eval(step)
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),))
        out.append(int(logits.argmax()))
        step = [out[-1]]
    return out


@pytest.mark.parametrize("kind", ["f32", "q8_0"])
def test_llama_cpp_greedy_equals_phi4r(tiny, tmp_path, kind):
    model, tok = load(tiny, dtype="float32")
    out = tmp_path / f"tiny-{kind}.gguf"
    write_gguf(model, tok, out, kind, progress=False)
    # phi4r runs what the file holds (at q8_0 the dequantized weights), so any difference is llama.cpp's
    # arithmetic or a wrong export, never phi4r's own quantization.
    phi = LLM(str(out), dtype="float32", max_num_seqs=1, threads=1)
    llm = _llama(out)
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    for text in GREEDY_PROMPTS:
        ids = tok.encode(text)
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids, text
        ours = phi.generate(ids, params, use_tqdm=False)[0].outputs[0].token_ids
        theirs = _llama_greedy(llm, ids)
        if ours != theirs:
            k = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
            with torch.no_grad():
                top = phi.model(torch.tensor([ids + ours[:k]]))[0, -1].float().topk(2).values
            margin = float(top[0] - top[1])
            assert margin < NEAR_TIE[kind], f"{text!r}: token {k} differs ({ours[k]} vs {theirs[k]}) with a top-2 " \
                                            f"margin of {margin:.4f}: not a near-tie"
            assert ours[:k] == theirs[:k]


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
