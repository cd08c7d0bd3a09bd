"""Phi-4's byte-level BPE tokenizer on the `tokenizers` library, and the chat encoding built on it.

Two backends share one vocabulary: `_full` knows the added tokens (`<|im_end|>`, `<think>`, ...)
and decodes; `_plain` has none, so `encode` always treats its input as ordinary text. That matters
for safety: a user message containing the characters `<|im_end|>` must not end the turn, and
`encode_special_tokens=True` would not help for non-special added tokens such as `<think>`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, trainers

from .chat import DEFAULT_SYSTEM_PROMPT, IM_END, IM_SEP, IM_START, chat_template, chat_turns, \
    system_prompt_from_template
from .reasoning import THINK_END, THINK_START

# tiktoken's cl100k_base split pattern, which Phi-4 inherits.
CL100K_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# For small models trained from scratch: every digit and every punctuation mark is its own piece
# (a space may lead it), so numbers are written digit by digit and an ASCII grid cell by cell.
# A tiny model then learns 10 digits instead of a thousand number tokens, and can count columns.
FINE_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)| ?\p{L}+| ?\p{N}| ?[^\s\p{L}\p{N}]"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLITS = {"cl100k": CL100K_PATTERN, "fine": FINE_PATTERN}
ENDOFTEXT = "<|endoftext|>"
PAD = "<|dummy_85|>"
PHI4_SPECIAL_TOKENS = [ENDOFTEXT, "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", IM_START, IM_END, IM_SEP,
                       "<|endofprompt|>", PAD]
SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")


class TokenizerError(ValueError):
    """A tokenizer file is missing or malformed; the message names the file and the problem."""


class Tokenizer:
    def __init__(self, backend: tokenizers.Tokenizer, special_tokens: dict[str, str | None] | None = None,
                 system_prompt: str | None = None):
        """`special_tokens` maps bos_token/eos_token/pad_token/unk_token to strings; `system_prompt`
        is what encode_chat injects by default (None: Phi-4-reasoning's, "": none)."""
        self._full = backend
        self._full.no_truncation()  # a tokenizer.json may carry truncation/padding; encode must be exact
        self._full.no_padding()
        spec = json.loads(backend.to_str())
        spec["added_tokens"], spec["truncation"], spec["padding"] = [], None, None
        self._plain = tokenizers.Tokenizer.from_str(json.dumps(spec))
        self.special_tokens = {k: (special_tokens or {}).get(k) for k in SPECIAL_KEYS}
        self.system_prompt = DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt

    # ---- loading and saving
    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> Tokenizer:
        """Load tokenizer.json (or vocab.json + merges.txt), tokenizer_config.json, special_tokens_map.json;
        or a .gguf file's tokenizer metadata (phi4r.gguf_io)."""
        path = Path(path)
        if path.suffix == ".gguf" and path.is_file():
            from .gguf_io import read_tokenizer
            return read_tokenizer(path)
        if not path.is_dir():
            raise TokenizerError(f"{path}: not a directory")
        config = _read_json(path / "tokenizer_config.json", required=False)
        special_map = _read_json(path / "special_tokens_map.json", required=False)
        file = path / "tokenizer.json"
        if file.is_file():
            spec = _read_json(file, required=True)
            try:
                backend = tokenizers.Tokenizer.from_str(json.dumps(spec))
            except Exception as e:
                raise TokenizerError(f"{file}: not a valid tokenizers file: {e}") from e
            _check_added_ids(backend, spec.get("added_tokens", []), file)
        else:
            backend = _bpe_from_vocab_merges(path)

        special = {}
        for key in SPECIAL_KEYS:
            value = config.get(key) or special_map.get(key)
            special[key] = value.get("content") if isinstance(value, dict) else value
        _add_configured_tokens(backend, config, special_map, special, path / "tokenizer_config.json")

        template = config.get("chat_template")
        if (path / "chat_template.jinja").is_file():  # newer transformers save the template on its own
            template = (path / "chat_template.jinja").read_text(encoding="utf-8")
        elif isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        return cls(backend, special, system_prompt_from_template(template if isinstance(template, str) else None))

    def save(self, path: str | os.PathLike) -> None:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json that transformers loads."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self._full.save(str(path / "tokenizer.json"))
        added = {str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                          "single_word": t.single_word, "special": t.special}
                 for i, t in sorted(self._full.get_added_tokens_decoder().items())}
        special = {k: v for k, v in self.special_tokens.items() if v is not None}
        config = {
            "tokenizer_class": _tokenizer_class(path),
            "added_tokens_decoder": added,
            **special,
            "clean_up_tokenization_spaces": False,  # transformers 4 would otherwise alter " ." etc. on decode
            "model_max_length": 1_000_000_000,
            "chat_template": chat_template(self.system_prompt),
        }
        for file, data in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
            (path / file).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    # ---- text <-> ids
    def encode(self, text: str) -> list[int]:
        """Ids of `text` as plain text: special-token strings inside it are ordinary characters."""
        return self._plain.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        """Text of `ids`, added tokens included (`<think>`, `<|im_end|>`, ...); callers drop stop tokens."""
        return self._full.decode(list(ids), skip_special_tokens=False)

    def token_id(self, token: str) -> int:
        """Id of one token by its string (special tokens are looked up this way, never hard-coded)."""
        i = self._full.token_to_id(token)
        if i is None:
            raise KeyError(f"token {token!r} is not in the tokenizer's vocabulary")
        return i

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                    system_prompt: str | None = None) -> list[int]:
        """Prompt ids for a conversation, built structurally: control tokens as ids, roles and every
        message's content as plain text. The injected system prompt is template text, trusted like
        the template itself, so its `<think>` becomes the token (as transformers does); so is a first
        system message identical to it."""
        default = self.system_prompt if system_prompt is None else system_prompt
        inject, turns = chat_turns(messages, default)
        start, sep, end = self.token_id(IM_START), self.token_id(IM_SEP), self.token_id(IM_END)
        ids = []
        if inject is not None:
            ids += [start, *self.encode("system"), sep, *self._full.encode(inject, add_special_tokens=False).ids, end]
        for i, (role, text) in enumerate(turns):
            # A system message that repeats the default prompt word for word (as clients following the
            # card send it) is encoded as the template's own text: it can forge nothing the template
            # does not already say, and the model was trained on it with `<think>` as the token.
            trusted = i == 0 and role == "system" and text and text == default
            body = self._full.encode(text, add_special_tokens=False).ids if trusted else self.encode(text)
            ids += [start, *self.encode(role), sep, *body, end]
        if add_generation_prompt:
            ids += [start, *self.encode("assistant"), sep]
        return ids

    # ---- ids the engine needs
    def _maybe_id(self, token: str | None) -> int | None:
        return None if token is None else self._full.token_to_id(token)

    @property
    def eos_id(self) -> int | None:
        """`<|im_end|>`: the end of an assistant turn (the configured eos_token if the vocab lacks it)."""
        i = self._maybe_id(IM_END)
        return i if i is not None else self._maybe_id(self.special_tokens["eos_token"])

    @property
    def stop_ids(self) -> tuple[int, ...]:
        ids = (self._maybe_id(t) for t in (IM_END, ENDOFTEXT, self.special_tokens["eos_token"]))
        return tuple(dict.fromkeys(i for i in ids if i is not None))

    @property
    def bos_id(self) -> int | None:
        return self._maybe_id(self.special_tokens["bos_token"])

    @property
    def pad_id(self) -> int | None:
        return self._maybe_id(self.special_tokens["pad_token"])

    @property
    def think_start_id(self) -> int | None:
        return self._maybe_id(THINK_START)

    @property
    def think_end_id(self) -> int | None:
        return self._maybe_id(THINK_END)

    @property
    def vocab_size(self) -> int:
        """Highest id + 1, added tokens included (the embedding rows needed; ids may have gaps)."""
        return max(self._full.get_vocab(with_added_tokens=True).values()) + 1

    def __len__(self) -> int:
        return self.vocab_size


def train_bpe(texts, vocab_size: int = 512, system_prompt: str | None = None, split: str = "cl100k",
              pattern: str | None = None) -> Tokenizer:
    """A small byte-level BPE the Phi-4 way: cl100k split (or `split="fine"`: FINE_PATTERN, or a
    pre-tokenizer regex of the caller's as `pattern`), all 256 bytes, Phi-4's special tokens after
    the learned vocabulary, then `<think>` and `</think>`.
    `vocab_size` is the total, at most (a small corpus may not yield that many merges).

    `<think>`/`</think>` are added but not special, as in the reasoning checkpoints: they are
    still split out of template text, but decoders that skip special tokens keep them.
    """
    texts = list(texts)
    reserved = 256 + len(PHI4_SPECIAL_TOKENS) + 2
    if vocab_size < reserved:
        raise ValueError(f"vocab_size must be at least {reserved} (256 bytes + special tokens), got {vocab_size}")
    if pattern is None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    backend = _byte_level(models.BPE(), pattern or SPLITS[split])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - reserved + 256, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in PHI4_SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in (THINK_START, THINK_END)])
    special = {"bos_token": ENDOFTEXT, "eos_token": IM_END, "pad_token": PAD, "unk_token": None}
    return Tokenizer(backend, special, system_prompt)


def _tokenizer_class(path: Path) -> str:
    """Phi-4's own "GPT2Tokenizer" in a phi3 model directory: llama.cpp's converter reads a Phi3
    vocabulary as byte-level BPE only under that name (else it wants a SentencePiece tokenizer.model),
    and transformers, seeing model_type phi3, loads tokenizer.json as is. Alone, transformers 5 would
    rebuild a GPT2Tokenizer with GPT-2's regex, dropping our split: the generic class keeps it."""
    try:
        phi3 = json.loads((path / "config.json").read_text()).get("model_type") == "phi3"
    except (OSError, ValueError, AttributeError):
        phi3 = False
    return "GPT2Tokenizer" if phi3 else "PreTrainedTokenizerFast"


# ---- loading helpers
def _read_json(file: Path, required: bool) -> dict:
    if not file.is_file():
        if required:
            raise TokenizerError(f"{file}: file not found")
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{file}: invalid JSON: {e}") from e
    if not isinstance(data, dict):
        raise TokenizerError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


def _bpe_from_vocab_merges(path: Path) -> tokenizers.Tokenizer:
    """vocab.json + merges.txt as Phi-4 byte-level BPE (cl100k split, not GPT-2's)."""
    vocab, merges = path / "vocab.json", path / "merges.txt"
    if not vocab.is_file() and not merges.is_file():
        raise TokenizerError(f"{path}: no tokenizer.json and no vocab.json + merges.txt")
    for file in (vocab, merges):
        if not file.is_file():
            raise TokenizerError(f"{file}: file not found (vocab.json and merges.txt come as a pair)")
    _read_json(vocab, required=True)
    try:
        return _byte_level(models.BPE.from_file(str(vocab), str(merges)))
    except Exception as e:
        raise TokenizerError(f"{merges}: cannot build a BPE from vocab.json and merges.txt: {e}") from e


def _byte_level(model: models.BPE, pattern: str = CL100K_PATTERN) -> tokenizers.Tokenizer:
    """Phi-4's pipeline around a BPE model: cl100k split, then bytes as symbols (what tiktoken does)."""
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    return backend


def _check_added_ids(backend: tokenizers.Tokenizer, declared: list, file: Path) -> None:
    """The library silently renumbers an added token whose id it cannot honour; refuse instead."""
    for entry in declared:
        if not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
            raise TokenizerError(f"{file}: malformed added token {entry!r}")
        got = backend.token_to_id(entry["content"])
        if got != entry.get("id"):
            raise TokenizerError(f"{file}: added token {entry['content']!r} is declared with id {entry.get('id')} "
                                 f"but the vocabulary gives it {got}")


def _add_configured_tokens(backend: tokenizers.Tokenizer, config: dict, special_map: dict, special: dict,
                           file: Path) -> None:
    """Register tokenizer_config.json's added_tokens_decoder and the named special tokens as added
    tokens (so template text splits on them), checking declared ids."""
    known = {t.content for t in backend.get_added_tokens_decoder().values()}
    declared = []
    try:
        for i, t in sorted(config.get("added_tokens_decoder", {}).items(), key=lambda kv: int(kv[0])):
            declared.append({"id": int(i), "content": t["content"]})
            if t["content"] not in known:
                backend.add_tokens([AddedToken(t["content"], special=t.get("special", False),
                                               normalized=t.get("normalized", False), lstrip=t.get("lstrip", False),
                                               rstrip=t.get("rstrip", False),
                                               single_word=t.get("single_word", False))])
                known.add(t["content"])
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise TokenizerError(f"{file}: malformed added_tokens_decoder: {e}") from e
    _check_added_ids(backend, declared, file)
    named = [v for v in special.values() if v] + list(special_map.get("additional_special_tokens", []))
    for token in named:
        content = token.get("content") if isinstance(token, dict) else token
        if content not in known and backend.token_to_id(content) is not None:
            backend.add_special_tokens([AddedToken(content, special=True, normalized=False)])
            known.add(content)
