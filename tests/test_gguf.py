"""GGUF both ways: phi4r's export read back, a GGUF laid out the way llama.cpp's converter writes
one (built here with gguf-py from a transformers Phi3ForCausalLM), the tokenizer carried in GGUF
metadata, and the tokenizer files `phi4r.save` writes for llama.cpp's converter."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from phi4r.checkpoint import CheckpointError, load
from phi4r.cli import main
from phi4r.tiny import make_checkpoint

gguf = pytest.importorskip("gguf")
from phi4r.gguf_io import read_tokenizer, write_gguf

TEXTS = ["Hello world, 12 + 7 = 19. Don't   stop!\n\n  indented", "Über café naïve 東京 😀 1234567 +-*/",
         "<|im_end|> <think> is plain text here", "def add(a, b):\n\treturn a + b\r\n"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")


def _logits(model, tokenizer):
    ids = torch.tensor([tokenizer.encode(TEXTS[0] + TEXTS[1])])
    with torch.no_grad():
        return model(ids).float()


@pytest.mark.parametrize("kind", ["f32", "bf16", "q8_0", "q4_0"])
def test_export_import_round_trip(tiny, tmp_path, kind, capsys):
    model, tok = load(tiny, dtype="float32")
    out = tmp_path / f"m-{kind}.gguf"
    assert write_gguf(model, tok, out, kind, progress=False) == []
    back, tok2 = load(out, dtype="float32")
    ref, got = _logits(model, tok), _logits(back, tok2)
    if kind == "f32":
        assert torch.equal(ref, got)
    elif kind == "bf16":  # bf16 weights are exactly the source's weights rounded to bf16
        bf = _logits(load(tiny, dtype="bfloat16")[0].float(), tok)
        assert torch.equal(bf, got)
    else:  # Q8_0: half a step of block max / 127; Q4_0: one step of block max / 8 (its range is [-8, 7])
        bound = {"q8_0": 0.51 / 127, "q4_0": 1.01 / 8}[kind]
        source, loaded = model.state_dict(), back.state_dict()
        for name, w in source.items():
            assert (w - loaded[name]).abs().max() <= w.abs().max() * bound, name
        cos = torch.nn.functional.cosine_similarity(ref.flatten(), got.flatten(), dim=0)
        assert cos > {"q8_0": 0.995, "q4_0": 0.8}[kind], cos  # random weights amplify errors: logits loosely
        assert f"converted {kind.upper()} -> float32 at load" in capsys.readouterr().err
    assert all(tok2.encode(t) == tok.encode(t) for t in TEXTS)
    assert tok2.special_tokens == tok.special_tokens and tok2.system_prompt == tok.system_prompt


def test_tied_embeddings_round_trip(tmp_path):
    model, tok = load(make_checkpoint(tmp_path / "tied", tie_word_embeddings=True))
    write_gguf(model, tok, tmp_path / "t.gguf", "f32", progress=False)
    reader = gguf.GGUFReader(str(tmp_path / "t.gguf"))
    assert "output.weight" not in {t.name for t in reader.tensors}  # as llama.cpp writes tied models
    back, _ = load(tmp_path / "t.gguf")
    assert back.lm_head.weight is back.model.embed_tokens.weight
    assert torch.equal(_logits(model, tok), _logits(back, tok))


def _convert_like_llama_cpp(src, out, outtype):
    """What convert_hf_to_gguf.py's Phi3MiniModel writes: set_gguf_parameters, _set_vocab_gpt2 (with
    the cl100k pre-tokenizer name; its hash table only knows published vocabularies) and tensors
    renamed by gguf-py's own tensor map."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hp = json.loads((src / "config.json").read_text())
    hf = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    w = gguf.GGUFWriter(str(out), "phi3")
    w.add_context_length(hp["max_position_embeddings"])
    w.add_rope_scaling_orig_ctx_len(hp["max_position_embeddings"])
    w.add_embedding_length(hp["hidden_size"])
    w.add_feed_forward_length(hp["intermediate_size"])
    w.add_block_count(hp["num_hidden_layers"])
    w.add_head_count(hp["num_attention_heads"])
    w.add_head_count_kv(hp["num_key_value_heads"])
    w.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    w.add_rope_dimension_count(hp["hidden_size"] // hp["num_attention_heads"])
    w.add_rope_freq_base(hp["rope_theta"])
    w.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype])
    w.add_sliding_window(hp.get("sliding_window") or 0)
    tok = AutoTokenizer.from_pretrained(src)
    reverse = {i: t for t, i in tok.get_vocab().items()}
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(hp["vocab_size"]):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("dbrx")
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(src, load_merges=True, n_vocab=len(tokens)).add_to_gguf(w, quiet=True)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.PHI3, hp["num_hidden_layers"])
    Q = gguf.GGMLQuantizationType
    rounded = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)  # the weights as stored
    for (name, t), r in zip(hf.state_dict().items(), rounded.state_dict().values()):
        new = names.get_name(name, try_suffixes=(".weight",))
        data = t.numpy()
        if data.ndim == 1:
            w.add_tensor(new, data)
            continue
        if outtype == "f16":
            w.add_tensor(new, data.astype(np.float16))
        else:
            w.add_tensor(new, gguf.quants.quantize(data, Q.Q8_0), raw_dtype=Q.Q8_0)
        r.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(data, Q[outtype.upper()]),
                                                        Q[outtype.upper()])))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hf, rounded


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_converter_layout_matches_transformers(tiny, tmp_path, outtype):
    out = tmp_path / f"conv-{outtype}.gguf"
    hf, rounded = _convert_like_llama_cpp(tiny, out, outtype)
    model, tok = load(out, dtype="float32")
    source = load(tiny)[1]
    ids = torch.tensor([source.encode(TEXTS[0] + TEXTS[3])])
    with torch.no_grad():
        ref, same, got = hf(ids).logits, rounded(ids).logits, model(ids).float()
    # transformers on the stored (rounded) weights: the mapping loses nothing
    assert (same - got).abs().max() / same.abs().max() < 1e-4
    # and the source model, within the storage type's error (random weights amplify it)
    assert torch.nn.functional.cosine_similarity(ref.flatten(), got.flatten(), dim=0) > 0.995
    # the tokenizer rebuilt from GGUF metadata encodes like the source, chat turns included
    for text in TEXTS:
        assert tok.encode(text) == source.encode(text)
    chat = [{"role": "user", "content": "What is 12 + 7? <|im_end|>"}]
    assert tok.encode_chat(chat) == source.encode_chat(chat)
    assert tok.stop_ids == source.stop_ids and tok.decode(source.encode(TEXTS[1])) == TEXTS[1]


def _rewrite(src, out, tensors):
    """`src`'s metadata with other tensors: `tensors` yields (name, array, raw_dtype or None)."""
    reader = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(out), "phi3")
    for field in reader.fields.values():
        if field.name.startswith(("phi3.", "tokenizer.")):
            w.add_key_value(field.name, field.contents(), field.types[0], field.types[-1] if len(field.types) > 1 else None)
    for name, array, raw in tensors(reader):
        w.add_tensor(name, array, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("kind", ["Q4_K", "Q6_K"])
def test_k_quant_weights_dequantized_as_gguf_py_does(tmp_path, kind):
    """Q4_K_M files hold Q4_K and Q6_K blocks (256 values): gguf-py cannot write them, so the blocks
    here are random bytes with sane scales; phi4r must load exactly gguf-py's dequantization."""
    model, tok = load(make_checkpoint(tmp_path / "k", hidden_size=256, intermediate_size=256))
    write_gguf(model, tok, tmp_path / "f.gguf", "f32", progress=False)
    qtype = gguf.GGMLQuantizationType[kind]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rng, expected = np.random.default_rng(0), {}

    def blocks(reader):
        for t in reader.tensors:
            if len(t.shape) == 1:
                yield t.name, np.array(t.data), None
                continue
            rows, cols = int(t.shape[1]), int(t.shape[0])
            raw = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
            scale = np.array([0.002], dtype=np.float16).view(np.uint8)
            if kind == "Q4_K":  # d and dmin lead the block
                raw[..., 0:2], raw[..., 2:4] = scale, scale
            else:  # d closes it
                raw[..., -2:] = scale
            raw = raw.reshape(rows, -1)
            expected[t.name] = gguf.quants.dequantize(raw, qtype)
            yield t.name, raw, qtype

    _rewrite(tmp_path / "f.gguf", tmp_path / "k.gguf", blocks)
    state = load(tmp_path / "k.gguf", dtype="float32")[0].state_dict()
    assert torch.equal(state["model.layers.1.mlp.gate_up_proj.weight"],
                       torch.from_numpy(expected["blk.1.ffn_up.weight"]))
    assert torch.equal(state["lm_head.weight"], torch.from_numpy(expected["output.weight"]))


def test_separate_q_k_v_tensors_are_fused(tiny, tmp_path):
    """llama.cpp's phi3 loader also takes attn_q/attn_k/attn_v instead of attn_qkv."""
    model, tok = load(tiny)
    write_gguf(model, tok, tmp_path / "f.gguf", "f32", progress=False)
    q, kv = model.config.num_attention_heads * model.config.head_dim, model.config.num_key_value_heads * model.config.head_dim

    def split(reader):
        for t in reader.tensors:
            data = np.array(t.data)
            if t.name.endswith("attn_qkv.weight"):
                for part, rows in zip("qkv", np.split(data, [q, q + kv])):
                    yield t.name.replace("qkv", part), rows, None
            else:
                yield t.name, data, None

    _rewrite(tmp_path / "f.gguf", tmp_path / "s.gguf", split)
    assert torch.equal(_logits(load(tmp_path / "s.gguf")[0], tok), _logits(model, tok))


def test_saved_tokenizer_is_what_llama_cpp_converter_reads(tiny, tmp_path):
    from transformers import AutoTokenizer

    config = json.loads((tiny / "tokenizer_config.json").read_text())
    # convert_hf_to_gguf.py's Phi3MiniModel.set_vocab: byte-level BPE only under this exact name
    assert config["tokenizer_class"] == "GPT2Tokenizer"
    spec = json.loads((tiny / "tokenizer.json").read_text())
    assert spec["model"]["type"] == "BPE" and len(spec["model"]["merges"]) > 100
    assert {"Ġ", "Ċ"} <= spec["model"]["vocab"].keys()  # GPT-2's byte-to-unicode alphabet
    assert spec["pre_tokenizer"]["pretokenizers"][-1]["type"] == "ByteLevel"
    # and transformers still splits with our regex under that class
    source = load(tiny)[1]
    hf = AutoTokenizer.from_pretrained(tiny)
    assert all(hf.encode(t, add_special_tokens=False) == source.encode(t) for t in TEXTS[:2] + TEXTS[3:])
    special = gguf.SpecialVocab(tiny, load_merges=True)  # what the converter copies into the GGUF
    assert special.merges and special.special_token_ids["eos"] == source.eos_id and special.chat_template


def test_unknown_split_regex_is_refused_unless_forced(tmp_path, capsys):
    out = tmp_path / "nano.gguf"
    assert main(["export-gguf", "nano", str(out), "--type", "q8_0"]) == 2
    err = capsys.readouterr().err
    assert "no pre-tokenizer" in err and "--force-pretokenizer" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.iterdir())
    assert main(["export-gguf", "nano", str(out), "--type", "q8_0", "--force-pretokenizer"]) == 0
    assert "tokens will differ" in capsys.readouterr().err
    reader = gguf.GGUFReader(str(out))
    assert reader.get_field("tokenizer.ggml.pre").contents() == "dbrx"
    nano_tok = load("nano")[1]  # phi4r itself reads back the exact regex it split with
    assert all(read_tokenizer(out).encode(t) == nano_tok.encode(t) for t in TEXTS)


def test_bad_files_are_refused_clearly(tmp_path, tiny):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    with pytest.raises(CheckpointError, match="not a readable GGUF"):
        load(bad)
    other = tmp_path / "llama.gguf"
    w = gguf.GGUFWriter(str(other), "llama")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError, match="architecture 'llama'"):
        load(other)
    assert main(["chat", "--model", str(bad)]) != 0


def test_llm_serves_a_gguf_like_its_source(tiny, tmp_path):
    from phi4r import LLM, SamplingParams

    model, tok = load(tiny)
    write_gguf(model, tok, tmp_path / "m.gguf", "f32", progress=False)
    params = SamplingParams(temperature=0, max_tokens=12)
    chat = [{"role": "user", "content": "What is 12 + 7?"}]
    a = LLM(str(tiny)).chat(chat, params, use_tqdm=False)[0].outputs[0].token_ids
    b = LLM(str(tmp_path / "m.gguf")).chat(chat, params, use_tqdm=False)[0].outputs[0].token_ids
    assert list(a) == list(b) and len(a) == 12


def test_llama_cpp_greedy_tokens_match(tiny, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (optional, heavy build)")
    model, tok = load(tiny, dtype="float32")
    out = tmp_path / "m.gguf"
    write_gguf(model, tok, out, "f32", progress=False)
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=256, n_threads=1, verbose=False)
    for text in ["What is 12 + 7?", "The quick brown fox", "def add(a, b):", "Über café", "Path 0->1"]:
        ids = tok.encode(text)
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids
        ours, seq = [], torch.tensor([ids])
        with torch.no_grad():
            for _ in range(8):
                ours.append(int(model(seq)[0, -1].argmax()))
                seq = torch.cat([seq, torch.tensor([[ours[-1]]])], dim=1)
        llm.reset()
        theirs = [t for _, t in zip(range(8), llm.generate(ids, top_k=1, temp=0.0, reset=True))]
        assert theirs == ours, text
