"""Sampling parameters (vLLM's names) and the batched logits-to-token step.

Unset (None) sampling fields take the checkpoint's generation_config.json values (Phi-4-reasoning:
temperature 0.8, top_p 0.95, top_k 50), then neutral ones (temperature 1, no truncation), as vLLM
does. temperature 0 is greedy.

Randomness: every sample owns a `random.Random` seeded from the request's seed and draws exactly
one uniform number per sampled token, whatever else is in the batch. The token is then the
inverse-CDF pick from its own truncated distribution. So a seeded request is reproducible run after
run (same batch composition: bit-identical), and alone or batched it consumes the same random
stream. Its logits are not bit-identical alone and batched (fp32 CPU, measured: up to ~2.5e-5 apart,
since the matmul kernels differ for 1 and for B rows), so a token can differ only when its uniform
falls within about that distance of a CDF boundary, or for greedy at a near-tie: rare, not
impossible (tests/test_sampling.py checks a 20-token request alone and in a batch of 4).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from .kernels import decode_ops


@dataclass(frozen=True)
class LoopGuard:
    """Ends a sample stuck in a degenerate loop (finish_reason "repetition").

    Fires when the last `min_span` or more tokens all repeat one cycle of period at most
    `max_period`, at least `min_repeats` times (e.g. "the the the ...", or a paragraph over and over).
    """
    max_period: int = 64
    min_span: int = 256
    min_repeats: int = 4

    def __post_init__(self):
        for name in ("max_period", "min_span", "min_repeats"):
            _check_int(name, getattr(self, name))
        if self.max_period < 1 or self.min_span < 2 or self.min_repeats < 2:
            raise ValueError("LoopGuard needs max_period >= 1, min_span >= 2, min_repeats >= 2")


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # 0 or -1: no top-k
    min_p: float | None = None
    seed: int | None = None
    max_tokens: int | None = None  # None: as many as the context leaves (vLLM's offline default is 16)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False  # do not stop at the tokenizer's stop ids (benchmarks)
    thinking_budget: int | None = None  # max reasoning tokens before the engine forces </think>
    loop_guard: bool | LoopGuard = False

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in (self.stop or []) if s]
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.loop_guard is True:
            self.loop_guard = LoopGuard()
        if not isinstance(self.loop_guard, (bool, LoopGuard)):
            raise ValueError(f"loop_guard must be a bool or a LoopGuard, got {self.loop_guard!r}")  # noqa: TRY004
        for name in ("temperature", "top_p", "min_p"):
            if getattr(self, name) is not None:
                _check_float(name, getattr(self, name))
        for name in ("n", "top_k", "seed", "max_tokens", "thinking_budget"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name))
        for i, token in enumerate(self.stop_token_ids):
            _check_int(f"stop_token_ids[{i}]", token)
        if not all(isinstance(s, str) for s in self.stop):
            raise ValueError("stop must be a string or a list of strings")
        checks = [
            (self.n >= 1, f"n must be >= 1, got {self.n}"),
            (self.temperature is None or self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (self.top_p is None or 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k is None or self.top_k >= -1, f"top_k must be >= -1 (0 or -1 disable it), got {self.top_k}"),
            (self.min_p is None or 0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p}"),
            (self.max_tokens is None or self.max_tokens >= 1, f"max_tokens must be >= 1, got {self.max_tokens}"),
            (self.thinking_budget is None or self.thinking_budget >= 0,
             f"thinking_budget must be >= 0, got {self.thinking_budget}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def resolved(self, generation_config: dict | None) -> SamplingParams:
        """A copy with every unset sampling field filled from `generation_config`, then neutral defaults."""
        gc = generation_config or {}
        greedy_default = gc.get("do_sample") is False
        defaults = dict(temperature=0.0 if greedy_default else gc.get("temperature", 1.0),
                        top_p=gc.get("top_p", 1.0), top_k=gc.get("top_k", 0), min_p=gc.get("min_p", 0.0))
        return dataclasses.replace(self, **{k: v if getattr(self, k) is None else getattr(self, k)
                                            for k, v in defaults.items()})

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


# Temperatures below this sample greedily (vLLM's rule): dividing logits by a smaller one can overflow
# float32 to inf, whose softmax is NaN.
GREEDY_BELOW = 1e-5
INT64 = 2**63


def _check_float(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def _check_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")  # noqa: TRY004 - callers answer ValueError with a 400
    if not -INT64 <= value < INT64:  # what torch tensors and seeds hold
        raise ValueError(f"{name}={value} is out of range (a 64-bit integer)")


# Without top-k, a nucleus (top-p) is looked for among this many most likely tokens; only a flatter
# distribution needs the full sort of its row (sorting 100k logits costs ~10 ms per row on a CPU).
NUCLEUS_CANDIDATES = 256


def sample(logits: torch.Tensor, params: list[SamplingParams], uniforms: list[float]) -> list[int]:
    """One token per row of `logits` [B, V] (fp32, or the model's dtype: the same tokens). Greedy rows
    take the argmax; the others apply the temperature, keep the tokens that survive top-k, then top-p
    (on the top-k renormalised distribution), then min-p, as transformers does, and pick the token where
    the kept mass first exceeds uniform * total. `params` must be resolved. Raises ValueError for rows
    with NaN or +inf logits (a broken model or input), which no rule can sample from."""
    if params and all(p.greedy for p in params):
        ops = _argmax_kernel(logits)
        if ops is not None:
            # One pass for the check and the argmax (torch.argmax of 100k fp32 logits alone takes ~60 us
            # on one thread, the kernel ~10 us, and a bf16 row needs no fp32 copy first).
            tokens, finite = ops.argmax(logits.contiguous())
            if not finite:
                raise ValueError("the model's logits contain NaN or +inf")
            return tokens
    logits = logits.float()  # bf16 -> fp32 is exact: the same tokens from either
    # One pass over the logits: amax is NaN if any is NaN and +inf if any is +inf (a decode step's
    # four-op check of isnan/isposinf over a 100k vocabulary cost ~0.2 ms per token).
    if logits.numel() and not bool(logits.amax() < float("inf")):
        raise ValueError("the model's logits contain NaN or +inf")
    V = logits.shape[-1]
    tokens = [0] * len(params)
    greedy = [i for i, p in enumerate(params) if p.greedy]
    with_k = [i for i, p in enumerate(params) if not p.greedy and 0 < p.top_k < V]
    without_k = [i for i, p in enumerate(params) if not p.greedy and not 0 < p.top_k < V]
    for rows, pick in ((greedy, _argmax), (with_k, _sample_top_k), (without_k, _sample_vocab)):
        if rows:
            x = logits if len(rows) == len(params) else logits[rows]  # no copy for a uniform batch
            u = torch.tensor([uniforms[i] for i in rows])
            for row, token in zip(rows, pick(x, [params[i] for i in rows], u).tolist()):
                tokens[row] = token
    return tokens


def _argmax_kernel(logits: torch.Tensor):
    """kernels.decode_ops (its `argmax`) for CPU fp32/bf16 logits [B, V] where it is built, else None."""
    if logits.dim() != 2 or not logits.is_cpu or logits.dtype not in (torch.float32, torch.bfloat16) or not logits.shape[1]:
        return None
    return decode_ops.ops()


def _temperatures(params: list[SamplingParams]) -> torch.Tensor:
    return torch.tensor([p.temperature for p in params])[:, None]


def _argmax(x: torch.Tensor, params: list[SamplingParams], u: torch.Tensor) -> torch.Tensor:
    return x.argmax(-1)


def _sample_top_k(x: torch.Tensor, params: list[SamplingParams], u: torch.Tensor) -> torch.Tensor:
    """Rows with top-k: all the work happens among each row's k best tokens (a partial sort)."""
    ks = torch.tensor([p.top_k for p in params])
    values, ids = x.topk(int(ks.max()))  # descending; the temperature does not change the order
    values = values.float() / _temperatures(params)
    probs = values.masked_fill(torch.arange(values.shape[1]) >= ks[:, None], float("-inf")).softmax(-1)
    top_p = torch.tensor([p.top_p for p in params])[:, None]
    before = probs.cumsum(-1) - probs  # mass of the more likely tokens
    drop = (before >= top_p) & (top_p < 1)
    drop[:, 0] = False  # the most likely token always stays (a top_p too small for fp32 is greedy)
    probs = probs.masked_fill(drop, 0.0)
    probs = probs.masked_fill(probs < torch.tensor([p.min_p for p in params])[:, None] * probs[:, :1], 0.0)
    return ids.gather(1, _inverse_cdf(probs, u)[:, None])[:, 0]


def _sample_vocab(x: torch.Tensor, params: list[SamplingParams], u: torch.Tensor) -> torch.Tensor:
    """Rows without top-k: the whole vocabulary, cut by one probability threshold per row (top-p and
    min-p both keep a most-likely set)."""
    probs = (x.float() / _temperatures(params)).softmax(-1)
    keep = torch.tensor([p.min_p for p in params]) * probs.max(-1).values
    nucleus = [r for r, p in enumerate(params) if p.top_p < 1]
    if nucleus:
        candidates = probs[nucleus].topk(min(probs.shape[-1], NUCLEUS_CANDIDATES)).values
        for top, r in zip(candidates, nucleus):
            top_p = params[r].top_p
            if top.sum() < top_p:  # the nucleus is wider than the candidates
                top = probs[r].sort(descending=True).values
            last = max(0, int((top.cumsum(0) - top < top_p).sum()) - 1)  # at least the most likely
            keep[r] = max(keep[r], top[last])
    if (keep > 0).any():
        probs = probs.masked_fill(probs < keep[:, None], 0.0)
    return _inverse_cdf(probs, u)


def _inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per row, the first index where the cumulative (unnormalised) mass exceeds u * total."""
    cdf = probs.cumsum(-1)
    picks = torch.searchsorted(cdf, u[:, None].to(cdf.dtype) * cdf[:, -1:], right=True)[:, 0]
    # The cdf is flat over dropped tokens, so a pick always has mass, unless fp32 rounding put
    # u * total on the total itself: then it falls past the end and takes the last kept token.
    for r in (picks == probs.shape[-1]).nonzero()[:, 0].tolist():
        picks[r] = int(probs[r].nonzero()[-1])
    return picks
