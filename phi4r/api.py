"""The offline API, in vLLM's shape.

    from phi4r import LLM, SamplingParams
    llm = LLM()                                   # the shipped nano model; or LLM("path/to/checkpoint")
    [out] = llm.chat([{"role": "user", "content": "What is 7 + 5?"}], SamplingParams(max_tokens=256))
    out.outputs[0].reasoning, out.outputs[0].content
    for delta in llm.stream([{"role": "user", "content": "Hi"}]):   # live deltas, split by reasoning
        print(delta.reasoning or delta.content, end="")   # delta.reclassified: see engine.Delta

`LLM` drives its `Engine` (`llm.engine`) itself, one call at a time. A server instead drives the
engine from its own thread (`engine.add_request`, `engine.step`, `engine.abort`) and must then not
call `generate`/`chat`/`stream` on the same LLM.
"""
from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from .chat import render_chat
from .checkpoint import load_model, read_generation_config, resolve_model_path
from .engine import CompletionOutput, Delta, Engine, RequestOutput
from .lora import load_adapter
from .reasoning import HoldBack
from .sampling import LoopGuard, SamplingParams

__all__ = ["LLM", "SamplingParams", "LoopGuard", "RequestOutput", "CompletionOutput", "Delta"]

Prompt = str | list[int]
Messages = list[dict]


# Below this size a token's matmuls are too small to gain much from a second core, and splitting them
# costs many times over when other work shares the cores (each matmul then waits for the busy core).
# LLM then uses one torch thread unless told.
SMALL_MODEL = 100 * 10**6


@contextmanager
def _said_if_slow(what: str, after: float = 2.0):
    """Tells stderr what start-up is doing once a step has taken `after` seconds, and when it is done:
    a step with no progress to count must still not look like a hang."""
    start, said = time.perf_counter(), threading.Event()

    def say():
        said.set()
        print(f"phi4r: {what} ...", file=sys.stderr, flush=True)

    timer = threading.Timer(after, say)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if said.is_set():
            print(f"phi4r: {what}: done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)


class LLM:
    def __init__(self, model: str = "nano", dtype: str | None = None, quantization: str | None = None,
                 max_num_seqs: int = 16, max_model_len: int | None = None, seed: int | None = None,
                 device: str | None = None, threads: int | None = None, prepack: bool | None = None,
                 compile: bool | None = None, adapter: str | None = None,
                 kv_cache_memory: str | float | int | None = None):
        """Load a Hugging Face checkpoint directory ("nano": the model shipped with phi4r).

        quantization="int8": weight-only int8 linear layers (phi4r.quant); "w8a8": int8 weights and
        activations quantized per token (phi4r.quant.W8A8Linear: faster batched decode, a little less
        accurate); "int4": weight-only int4, group-wise (phi4r.quant_int4: group 128, symmetric); with
        any of them, activations default to bf16, the dtype the CPU kernels are fast in.
        seed: makes unseeded requests reproducible.
        threads: torch's CPU threads (process-wide, `torch.set_num_threads`); None leaves torch's
        setting alone, except for models under SMALL_MODEL parameters, which get one thread.
        prepack: on CPU, keep a oneDNN-prepacked copy of the float linear weights (phi4r.fastlinear;
        inference only; 1.3-2x faster decode for a second copy of those weights); None: when that copy
        fits in a quarter of physical memory.
        compile: decode steps through torch.compile (phi4r.engine; the first steps compile, ~20-40 s
        per new batch/span shape, then each step runs the fused graph); None: on when PHI4R_COMPILE=1.
        kv_cache_memory: the paged KV cache's budget: bytes ("8GiB", "512MiB", 2e9) or a fraction in (0, 1]
        of the memory available after loading; None: room for max(max_model_len, max_num_seqs * 2048)
        tokens, at most half the available memory (phi4r.kv_budget). Requests wait, or the newest is
        preempted and recomputed, when it is full; max_model_len is lowered to fit it.
        adapter: a LoRA adapter directory (PEFT's format, e.g. a `--use-peft` run's final/) applied unmerged
        on the base (phi4r.lora); with quantization the base is quantized and the adapter stays fp32.
        """
        import torch

        from . import fastlinear
        from .tokenizer import Tokenizer

        if threads:
            torch.set_num_threads(threads)

        if quantization not in (None, "int8", "w8a8", "int4"):
            raise ValueError(f"quantization must be None, 'int8', 'w8a8' or 'int4', got {quantization!r}")
        path = resolve_model_path(model)
        # Quantized as each weight is read (a compressed-tensors checkpoint: as stored), never whole in float.
        net, _ = load_model(path, dtype=dtype, device=device or "cpu", progress=True, quantization=quantization)
        if adapter:
            load_adapter(net, adapter)
        # (quantized weights are buffers: counted by their shapes)
        weights = net.num_parameters() + sum(m.in_features * m.out_features for m in net.modules()
                                             if hasattr(m, "in_features") and not list(m.parameters()))
        if not threads and weights < SMALL_MODEL:
            torch.set_num_threads(1)
        if net.device.type == "cpu":
            net.eval()  # loaded for inference only (from_model leaves a training loop's module alone)
            if prepack or (prepack is None and fastlinear.fits(net)):
                with _said_if_slow("prepacking the linear weights"):
                    fastlinear.prepack(net, batch_hint=max_num_seqs)
        self.model_path = path
        with _said_if_slow("starting the engine"):
            self._init(net, Tokenizer.from_dir(path), read_generation_config(path), max_num_seqs, max_model_len, seed,
                       compile, kv_cache_memory)

    @classmethod
    def from_model(cls, model, tokenizer, generation_config: dict | None = None, max_num_seqs: int = 16,
                   max_model_len: int | None = None, seed: int | None = None, compile: bool | None = None,
                   kv_cache_memory: str | float | int | None = None) -> LLM:
        """Wrap a model already in memory (a training loop sampling from its policy, tests)."""
        llm = cls.__new__(cls)
        llm.model_path = None
        llm._init(model, tokenizer, generation_config, max_num_seqs, max_model_len, seed, compile, kv_cache_memory)
        return llm

    def _init(self, model, tokenizer, generation_config, max_num_seqs, max_model_len, seed, compile=None,
              kv_cache_memory=None) -> None:
        self.model, self.tokenizer = model, tokenizer  # not .eval(): a training loop may own the module
        self.generation_config = generation_config or {}
        self.engine = Engine(model, tokenizer, max_num_seqs=max_num_seqs, max_model_len=max_model_len,
                             generation_config=self.generation_config, seed=seed, compile=compile,
                             kv_cache_memory=kv_cache_memory)

    def get_tokenizer(self):
        return self.tokenizer

    # ---- whole outputs
    def generate(self, prompts: Prompt | Sequence[Prompt], sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """Complete raw prompts: strings are encoded as plain text (control-token strings stay text; use
        `chat` or token ids for those); a list of ints is one prompt of token ids."""
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        items = [(p, self.tokenizer.encode(p)) if isinstance(p, str) else (None, list(p)) for p in prompts]
        return self._run(items, sampling_params, use_tqdm)

    def chat(self, messages: Messages | Sequence[Messages], sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
             system_prompt: str | None = None, use_tqdm: bool = True,
             add_generation_prompt: bool = True) -> list[RequestOutput]:
        """Answer one conversation (a list of {"role", "content"} dicts) or a list of them.
        system_prompt: None injects the checkpoint's default system prompt when the conversation has
        none; "" injects nothing."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        items = [self._chat_item(c, system_prompt, add_generation_prompt) for c in conversations]
        return self._run(items, sampling_params, use_tqdm)

    # ---- streaming
    def stream(self, prompt: Prompt | Messages, sampling_params: SamplingParams | None = None,
               system_prompt: str | None = None, reasoning_stream: str = "eager") -> Iterator[Delta]:
        """Deltas of one request as they are generated (all n samples, told apart by `delta.index`).
        `prompt`: a conversation (list of dicts, chat-encoded), a string (plain text) or token ids.
        reasoning_stream: "eager" streams content as soon as it follows a `</think>` and corrects it
        (`delta.reclassified`, applied by `reasoning.StreamedSplit`) if a later `</think>` comes;
        "hold" sends content only once it is certain (usually at the end), never corrected.
        Stopping the iteration early aborts the request."""
        if reasoning_stream not in ("eager", "hold"):
            raise ValueError(f"reasoning_stream must be 'eager' or 'hold', got {reasoning_stream!r}")
        hold = HoldBack() if reasoning_stream == "hold" else None
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):
            text, ids = self._chat_item(prompt, system_prompt, True)
        else:
            text, ids = (prompt, self.tokenizer.encode(prompt)) if isinstance(prompt, str) else (None, list(prompt))
        request_id = self.engine.add_request(None, ids, sampling_params, prompt=text)
        done = False
        try:
            while not done:
                for delta in self.engine.step():
                    if delta.request_id == request_id:
                        done = delta.request is not None
                        yield hold(delta) if hold else delta
        finally:
            if not done:
                self.engine.abort(request_id)

    # ---- helpers
    def _chat_item(self, conversation: Messages, system_prompt: str | None, add_generation_prompt: bool):
        system = self.tokenizer.system_prompt if system_prompt is None else system_prompt
        return (render_chat(conversation, add_generation_prompt, system),
                self.tokenizer.encode_chat(conversation, add_generation_prompt, system_prompt))

    def _run(self, items: list[tuple[str | None, list[int]]], sampling_params, use_tqdm: bool) -> list[RequestOutput]:
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params] * len(items)
        if len(sampling_params) != len(items):
            raise ValueError(f"{len(sampling_params)} sampling params for {len(items)} prompts")
        ids: list[str] = []
        results: dict[str, RequestOutput] = {}
        try:
            for (text, prompt_ids), params in zip(items, sampling_params):
                ids.append(self.engine.add_request(None, prompt_ids, params, prompt=text))
            wanted = set(ids)
            from tqdm.auto import tqdm

            with tqdm(total=len(ids), desc="Generating", disable=not use_tqdm) as bar:
                while len(results) < len(ids):
                    for delta in self.engine.step():
                        if delta.request is not None and delta.request_id in wanted:
                            results[delta.request_id] = delta.request
                            bar.update(1)
        finally:
            for request_id in ids:  # interrupted (or a prompt was refused): do not leave work behind
                if request_id not in results:
                    self.engine.abort(request_id)
        return [results[i] for i in ids]
