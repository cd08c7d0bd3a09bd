"""phi4r: the Phi-4-reasoning system in Python.

    from phi4r import LLM, SamplingParams
    llm = LLM()                      # the shipped nano model
    out = llm.chat([{"role": "user", "content": "What is 7 + 5?"}], SamplingParams(max_tokens=256))
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public names, imported on first use so `import phi4r` stays fast (no torch for the CLI's --help).
_LAZY = {
    "load": "phi4r.checkpoint",
    "save": "phi4r.checkpoint",
    "render_chat": "phi4r.chat",
    "split_reasoning": "phi4r.reasoning",
    "LLM": "phi4r.api",
    "SamplingParams": "phi4r.sampling",
    "Phi3Config": "phi4r.config",
    "Phi3ForCausalLM": "phi4r.model",
    "Tokenizer": "phi4r.tokenizer",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'phi4r' has no attribute {name!r}")
