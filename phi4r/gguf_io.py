"""GGUF files of the Phi-3/Phi-4 family (llama.cpp, Ollama) read and written through gguf-py.

The layout is what llama.cpp's convert_hf_to_gguf.py writes for Phi3ForCausalLM (arch "phi3"):
Hugging Face tensors renamed (qkv and gate_up stay fused, Q/K rows are not permuted: phi3 uses
NeoX rotary like transformers), hyper-parameters under `phi3.*`, and a GPT-2-style byte-level BPE
vocabulary whose split regex llama.cpp knows only by a pre-tokenizer name (`tokenizer.ggml.pre`).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import gguf
import numpy as np
import torch

from .checkpoint import CheckpointError
from .config import Phi3Config, UnsupportedConfigError

ARCH = "phi3"
# The exact regex phi4r split with, for a lossless phi4r -> GGUF -> phi4r round trip (llama.cpp
# ignores keys it does not know and tokenizes by `tokenizer.ggml.pre`).
REGEX_KEY = "phi4r.pretokenizer_regex"
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# llama.cpp pre-tokenizer names whose split (llama-vocab.cpp) is exactly cl100k's / GPT-2's.
_CL100K_NAMES = ("dbrx", "llama3", "llama-v3", "llama-bpe", "smaug-bpe")
_GPT2_NAMES = ("gpt2",)  # not "default": llama.cpp's default BPE split is its own (digits apart, ...)
EXPORT_TYPES = ("f32", "bf16", "q8_0", "q4_0")
_LAYER_NAMES = {"input_layernorm.weight": "attn_norm", "self_attn.qkv_proj.weight": "attn_qkv",
                "self_attn.o_proj.weight": "attn_output", "post_attention_layernorm.weight": "ffn_norm",
                "mlp.gate_up_proj.weight": "ffn_up", "mlp.down_proj.weight": "ffn_down"}
_SPLIT_QKV = ("attn_q.weight", "attn_k.weight", "attn_v.weight")
_TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}


def hf_name(gguf_name: str) -> str | None:
    """The phi4r/transformers name of a llama.cpp phi3 tensor (None: not one phi4r has)."""
    for hf, gg in _TOP_NAMES.items():
        if gguf_name == gg:
            return hf
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit():
        for hf, gg in _LAYER_NAMES.items():
            if parts[2] == gg + ".weight":
                return f"model.layers.{parts[1]}.{hf}"
        if parts[2] in _SPLIT_QKV:  # llama.cpp also accepts Q, K, V apart; phi4r keeps them fused
            return f"model.layers.{parts[1]}.self_attn.qkv_proj.weight"
    return None


def gguf_name(name: str) -> str:
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    _, _, layer, rest = name.split(".", 3)
    return f"blk.{layer}.{_LAYER_NAMES[rest]}.weight"


# ---- reading
class _Meta:
    def __init__(self, reader, path: Path):
        self.reader, self.path = reader, path

    def get(self, key: str, default=None):
        field = self.reader.get_field(key)
        return default if field is None else field.contents()

    def need(self, key: str):
        value = self.get(key)
        if value is None:
            raise CheckpointError(f"{self.path}: GGUF metadata {key!r} is missing")
        return value


def open_gguf(path: str | os.PathLike):
    path = Path(path).expanduser()
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # gguf-py raises ValueError/struct.error/... for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable GGUF file ({e})") from e
    meta = _Meta(reader, path)
    arch = meta.get("general.architecture")
    if arch != ARCH:
        raise CheckpointError(f"{path}: GGUF architecture {arch!r}; phi4r reads the Phi-3/Phi-4 family ('phi3')")
    return reader, meta


def read_config(meta: _Meta, reader) -> Phi3Config:
    k = ARCH + "."
    hidden, heads = int(meta.need(k + "embedding_length")), int(meta.need(k + "attention.head_count"))
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise CheckpointError(f"{meta.path}: no token_embd.weight tensor")
    rope_dims = meta.get(k + "rope.dimension_count")
    scaling = meta.get(k + "rope.scaling.type")
    rope_scaling = None
    if "rope_factors_long.weight" in tensors or scaling not in (None, "none"):
        rope_scaling = {"type": "longrope" if "rope_factors_long.weight" in tensors else scaling}
    window = meta.get(k + "attention.sliding_window")
    try:
        return Phi3Config(
            vocab_size=int(tensors["token_embd.weight"].shape[1]), hidden_size=hidden,
            intermediate_size=int(meta.need(k + "feed_forward_length")),
            num_hidden_layers=int(meta.need(k + "block_count")), num_attention_heads=heads,
            num_key_value_heads=int(meta.get(k + "attention.head_count_kv", heads)),
            max_position_embeddings=int(meta.need(k + "context_length")),
            rope_theta=_f32(meta.get(k + "rope.freq_base", 10000.0)),
            partial_rotary_factor=int(rope_dims) / (hidden // heads) if rope_dims else 1.0,
            rms_norm_eps=_f32(meta.need(k + "attention.layer_norm_rms_epsilon")),
            tie_word_embeddings="output.weight" not in tensors, rope_scaling=rope_scaling,
            sliding_window=int(window) if window else None,
            bos_token_id=meta.get("tokenizer.ggml.bos_token_id"), eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
            pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
            torch_dtype="float32" if _all_f32(reader) else "bfloat16")
    except UnsupportedConfigError as e:
        raise CheckpointError(f"{meta.path}: {e}") from e


def _f32(value) -> float:
    """A float32 metadata value as the decimal it was written from (1e-05, not 9.9999997e-06)."""
    return float(str(np.float32(value)))


def _all_f32(reader) -> bool:
    return all(t.tensor_type.name == "F32" for t in reader.tensors if len(t.shape) > 1)


def _lossy(kind: str, dtype: torch.dtype) -> bool:
    """Whether GGUF weights of `kind` lose anything as `dtype` (block-quantized ones always change form)."""
    exact = {"F32": (torch.float32,), "F16": (torch.float16, torch.float32), "BF16": (torch.bfloat16, torch.float32)}
    return dtype not in exact.get(kind, ())


def _tensor(t, dtype: torch.dtype) -> torch.Tensor:
    shape = tuple(int(n) for n in reversed(t.shape.tolist()))
    if t.tensor_type.name in ("F32", "F16"):
        array = np.asarray(t.data)
    else:
        array = gguf.quants.dequantize(t.data, t.tensor_type)
    return torch.from_numpy(np.array(array).reshape(shape)).to(dtype)  # a copy: never alias the mmap


def load_model(path: str | os.PathLike, dtype=None, device="cpu", progress: bool = False):
    """(Phi3ForCausalLM, Phi3Config) from a GGUF file; block-quantized weights are dequantized once."""
    from tqdm.auto import tqdm

    from .checkpoint import resolve_dtype
    from .model import Phi3ForCausalLM

    reader, meta = open_gguf(path)
    config = read_config(meta, reader)
    dtype = resolve_dtype(dtype, config)
    with torch.device("meta"):
        model = Phi3ForCausalLM(config)
    expected = dict(model.state_dict())
    loaded, kinds, split = {}, set(), {}
    q_rows, kv_rows = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    for t in tqdm(reader.tensors, desc=f"loading {meta.path.name}", delay=2, disable=not progress, leave=False):
        name = hf_name(t.name)
        if name is None:
            if t.name.startswith("rope_factors"):
                continue  # refused by the config above (longrope)
            raise CheckpointError(f"{meta.path}: unexpected tensor {t.name!r} for arch phi3")
        part = t.name.split(".", 2)[-1]
        want = tuple(expected[name].shape)
        if part in _SPLIT_QKV:
            want = (q_rows if part == "attn_q.weight" else kv_rows, config.hidden_size)
        if tuple(int(n) for n in reversed(t.shape.tolist())) != want:
            raise CheckpointError(f"{meta.path}: tensor {t.name!r} has shape {list(reversed(t.shape.tolist()))}, "
                                  f"expected {list(want)} from the metadata")
        try:
            tensor = _tensor(t, dtype).to(device)
        except (NotImplementedError, ValueError) as e:
            raise CheckpointError(f"{meta.path}: cannot read tensor {t.name!r} ({t.tensor_type.name}: {e})") from e
        if part in _SPLIT_QKV:
            split.setdefault(name, {})[part] = tensor
            if len(split[name]) == 3:
                loaded[name] = torch.cat([split[name].pop(p) for p in _SPLIT_QKV])
        else:
            loaded[name] = tensor
        if _lossy(t.tensor_type.name, dtype):
            kinds.add(t.tensor_type.name)
    missing = [n for n in expected if n not in loaded and not (config.tie_word_embeddings and n == "lm_head.weight")]
    if missing:
        raise CheckpointError(f"{meta.path}: missing tensors {[gguf_name(n) for n in missing[:5]]}")
    if kinds:  # phi4r's int8 is per output channel, GGUF's blocks are 32-256 values: no exact re-quantization
        print(f"phi4r: converted {'/'.join(sorted(kinds))} -> {str(dtype).removeprefix('torch.')} at load",
              file=sys.stderr)
    model.load_state_dict(loaded, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval(), config


def read_tokenizer(path: str | os.PathLike):
    """phi4r's Tokenizer from a GGUF's `tokenizer.ggml.*` metadata (GPT-2-style BPE only)."""
    from tokenizers import AddedToken, models

    from .chat import system_prompt_from_template
    from .tokenizer import Tokenizer, _byte_level

    _, meta = open_gguf(path)
    kind = meta.need("tokenizer.ggml.model")
    if kind != "gpt2":
        raise CheckpointError(f"{meta.path}: tokenizer model {kind!r}; phi4r reads byte-level BPE ('gpt2') only")
    pattern = meta.get(REGEX_KEY) or pattern_for_pre(meta.get("tokenizer.ggml.pre", "default"), meta.path)
    tokens, types = meta.need("tokenizer.ggml.tokens"), meta.need("tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in meta.need("tokenizer.ggml.merges")]
    T = gguf.TokenType
    vocab = {tok: i for i, (tok, ty) in enumerate(zip(tokens, types)) if ty != T.UNUSED}
    try:
        backend = _byte_level(models.BPE(vocab, merges), pattern)
    except Exception as e:
        raise CheckpointError(f"{meta.path}: cannot build the BPE from the GGUF vocabulary ({e})") from e
    # Added tokens keep their GGUF ids: they are in the BPE vocabulary, which the library reuses.
    backend.add_tokens([AddedToken(tokens[i], special=types[i] == T.CONTROL, normalized=False)
                        for i in range(len(tokens)) if types[i] in (T.CONTROL, T.USER_DEFINED)])
    special = {}
    for key, field in (("bos_token", "bos"), ("eos_token", "eos"), ("pad_token", "padding"), ("unk_token", "unknown")):
        i = meta.get(f"tokenizer.ggml.{field}_token_id")
        special[key] = tokens[i] if i is not None and i < len(tokens) else None
    template = meta.get("tokenizer.chat_template")
    return Tokenizer(backend, special, system_prompt_from_template(template if isinstance(template, str) else None))


def pattern_for_pre(pre: str, where) -> str:
    from .tokenizer import CL100K_PATTERN

    if pre in _CL100K_NAMES:
        return CL100K_PATTERN
    if pre in _GPT2_NAMES:
        return GPT2_PATTERN
    raise CheckpointError(f"{where}: pre-tokenizer {pre!r} is not one phi4r knows "
                          f"({', '.join(_CL100K_NAMES + _GPT2_NAMES)})")


# ---- writing
def split_pattern(tokenizer) -> str | None:
    """The regex a phi4r tokenizer splits text with (None: not a Split + ByteLevel pipeline)."""
    spec = json.loads(tokenizer._full.to_str())
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre])
    if spec.get("normalizer") or len(steps) != 2 or steps[0].get("type") != "Split" \
            or steps[1].get("type") != "ByteLevel" or steps[1].get("use_regex") or steps[1].get("add_prefix_space"):
        if len(steps) == 1 and steps[0].get("type") == "ByteLevel" and steps[0].get("use_regex"):
            return GPT2_PATTERN
        return None
    return steps[0].get("pattern", {}).get("Regex")


def llama_cpp_pre(pattern: str | None) -> str | None:
    """llama.cpp's name for a split regex ("dbrx" is the one Phi-4 GGUFs carry), None if it has none."""
    from .tokenizer import CL100K_PATTERN

    return {CL100K_PATTERN: "dbrx", GPT2_PATTERN: "gpt2"}.get(pattern)


def _vocab(tokenizer, n_vocab: int):
    spec = json.loads(tokenizer._full.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise CheckpointError(f"the tokenizer is {model.get('type')}, not byte-level BPE: no GGUF 'gpt2' vocabulary")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [gguf.TokenType.UNUSED] * n_vocab
    for tok, i in model["vocab"].items():
        tokens[i], types[i] = tok, gguf.TokenType.NORMAL
    for i, added in tokenizer._full.get_added_tokens_decoder().items():
        tokens[i] = added.content
        types[i] = gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges


def write_gguf(model, tokenizer, out: str | os.PathLike, type_: str = "bf16", force_pre: bool = False,
               name: str = "phi4r", progress: bool = True) -> list[str]:
    """Write `model` + `tokenizer` as llama.cpp's converter would; returns notes for the user."""
    from .chat import chat_template

    Q = gguf.GGMLQuantizationType
    if type_ not in EXPORT_TYPES:
        raise ValueError(f"--type must be one of {', '.join(EXPORT_TYPES)}, got {type_!r}")
    config, notes = model.config, []
    pattern = split_pattern(tokenizer)
    pre = llama_cpp_pre(pattern)
    if pre is None:
        if not force_pre:
            raise ValueError("llama.cpp has no pre-tokenizer for this tokenizer's split regex "
                             f"({pattern!r}): it would tokenize differently; --force-pretokenizer writes "
                             "it anyway with llama.cpp's cl100k one ('dbrx')")
        pre = "dbrx"
        notes.append("llama.cpp will split text with cl100k's regex, not this tokenizer's: its tokens will differ")
    n_vocab = config.vocab_size
    if tokenizer.vocab_size > n_vocab:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids, the model's vocab_size is {n_vocab}")
    tokens, types, merges = _vocab(tokenizer, n_vocab)

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), ARCH)
    w.add_name(name)
    w.add_context_length(config.max_position_embeddings)
    w.add_rope_scaling_orig_ctx_len(config.original_max_position_embeddings or config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_rope_dimension_count(config.rotary_dim)
    w.add_rope_freq_base(config.rope_theta)
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[type_]
    w.add_file_type(ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_sliding_window(config.sliding_window or 0)  # 0 tells llama.cpp "Phi-4: no sliding window"
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_string(REGEX_KEY, pattern or "")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for add, value in ((w.add_bos_token_id, tokenizer.bos_id), (w.add_eos_token_id, tokenizer.eos_id),
                       (w.add_pad_token_id, tokenizer.pad_id)):
        if value is not None:
            add(value)
    w.add_add_bos_token(False)  # phi4r's prompts have no BOS; llama.cpp must not prepend one
    w.add_chat_template(chat_template(tokenizer.system_prompt))

    qtype = {"f32": Q.F32, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}[type_]
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    state = {k: v for k, v in model.state_dict().items() if not (k == "lm_head.weight" and tied)}
    kinds = {}
    for hf, tensor in state.items():  # tensor infos first, data streamed after: one tensor in memory at a time
        kind = qtype if tensor.dim() == 2 else Q.F32  # norms stay F32, as llama.cpp keeps 1-D tensors
        if kind in (Q.Q8_0, Q.Q4_0) and tensor.shape[-1] % 32:
            kind = Q.BF16
            notes.append(f"{gguf_name(hf)}: rows of {tensor.shape[-1]} are not whole 32-value blocks; written as BF16")
        kinds[hf] = kind
        if kind == Q.F32:
            w.add_tensor_info(gguf_name(hf), tuple(tensor.shape), np.dtype(np.float32), tensor.numel() * 4)
        else:
            raw = gguf.quants.quant_shape_to_byte_shape(tuple(tensor.shape), kind)
            w.add_tensor_info(gguf_name(hf), raw, np.dtype(np.uint8), int(np.prod(raw)), raw_dtype=kind)
    from tqdm.auto import tqdm

    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for hf, tensor in tqdm(state.items(), desc=f"writing {out.name}", disable=not progress, leave=False):
            data = tensor.detach().float().cpu().numpy()
            w.write_tensor_data(data if kinds[hf] == Q.F32 else gguf.quants.quantize(data, kinds[hf]))
        w.close()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return notes
