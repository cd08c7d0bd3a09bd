"""Request bodies of the OpenAI API as pydantic models, and what phi4r refuses.

Unknown fields are a 400 (`extra="forbid"`), unlike vLLM, which ignores them with a log line:
a client that sends `logit_bias` or `tools` and gets an answer that ignored them has been misled.
Known OpenAI parameters that phi4r does not implement are declared so the error can say so
plainly; each is accepted only at a value that asks for nothing (null, false, 0, empty).

Every value is checked here, before anything runs: numbers must be finite and in range (integers fit
64 bits, what seeds and tensors hold), and no string anywhere in the body (keys included) may hold a
lone surrogate, which JSON's `\ud800` escapes can carry but UTF-8, the tokenizer and the response cannot.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

# parameter -> the values that ask for nothing, besides null
_NOOP = {
    "tools": ([],), "tool_choice": ("none",), "parallel_tool_calls": (False, True), "functions": ([],),
    "function_call": ("none",), "response_format": ({"type": "text"},), "logprobs": (False, 0),
    "top_logprobs": (0,), "logit_bias": ({},), "presence_penalty": (0,), "frequency_penalty": (0,),
    "audio": (), "modalities": (["text"],), "prediction": (), "store": (False,), "metadata": ({},),
    "service_tier": ("auto", "default"), "reasoning_effort": (), "web_search_options": (),
    "echo": (False,), "suffix": ("",), "best_of": (1,), "repetition_penalty": (1,),
}


INT64_MAX = 2**63 - 1
Count = Annotated[StrictInt, Field(ge=0, le=INT64_MAX)]
Seed = Annotated[StrictInt, Field(ge=-INT64_MAX - 1, le=INT64_MAX)]


def _finite(**bounds):
    return Field(None, allow_inf_nan=False, **bounds)


def _invalid_unicode_path(body) -> str | None:
    """OpenAI-style path ('messages[0].content') of the first string or key in `body` that UTF-8
    cannot encode (a lone surrogate), or None. Iterative: a deeply nested body cannot overflow the stack."""
    stack = [("", body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if not value.isascii() and not _utf8(value):
                return path or "body"
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                sub = f"{path}.{key}" if path else str(key)
                if isinstance(key, str) and not key.isascii() and not _utf8(key):
                    return sub.encode("utf-8", "backslashreplace").decode()  # the key itself is the problem
                stack.append((sub, item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in reversed(list(enumerate(value))))
    return None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant"]
    # Required; text parts are checked by chat.message_text, which names a bad one. Null only for an
    # assistant turn: an answer that never left its thinking has content null when sent back.
    content: str | list[dict] | None
    # Clients often send an earlier answer back whole; Phi-4's template renders an assistant turn
    # as its content alone, so its reasoning is accepted and left out, as the template does.
    reasoning_content: str | None = None
    reasoning: str | None = None
    name: Any = None  # refused unless null: ChatML here has no speaker names

    @field_validator("content")
    @classmethod
    def _has_content(cls, content, info: ValidationInfo):
        role = info.data.get("role")
        if content is None and role != "assistant":
            raise PydanticCustomError("missing_content", "a {role} message needs content (a string or text parts)",
                                      {"role": role})
        return content


class StreamOptions(Strict):
    include_usage: StrictBool = False
    continuous_usage_stats: StrictBool = False  # vLLM's: usage in every chunk (the page's live token count)


class GenerationRequest(Strict):
    """Fields shared by /v1/chat/completions and /v1/completions (vLLM's names and meanings)."""
    model: str | None = None
    n: StrictInt = Field(1, ge=1, le=INT64_MAX)
    temperature: float | None = _finite(ge=0, le=2)
    top_p: float | None = _finite(gt=0, le=1)  # a tiny one keeps only the most likely token
    top_k: StrictInt | None = Field(None, ge=-1, le=INT64_MAX)
    min_p: float | None = _finite(ge=0, le=1)
    max_tokens: StrictInt | None = Field(None, ge=1, le=INT64_MAX)
    stop: str | list[str] | None = None
    stop_token_ids: list[Count] | None = None
    seed: Seed | None = None
    thinking_token_budget: Count | None = None
    loop_guard: StrictBool | None = None  # phi4r's: end a degenerate loop ("repetition"); null: the server's default
    ignore_eos: StrictBool = False  # vLLM's: run to max_tokens (benchmarks)
    include_stop_str_in_output: StrictBool = False
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # an end-user id for the operator's logs; asks nothing of generation

    # Declared only to be refused by name (see _NOOP).
    logprobs: Any = None
    top_logprobs: Any = None
    logit_bias: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    repetition_penalty: Any = None
    store: Any = None
    metadata: Any = None
    service_tier: Any = None

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data):
        path = _invalid_unicode_path(data)
        if path is not None:
            raise PydanticCustomError("invalid_unicode", "{param} is not valid Unicode (it holds a lone surrogate)",
                                      {"param": path})
        return data

    def unsupported(self) -> list[str]:
        """Names of refused parameters set to something other than a value that asks for nothing."""
        return [name for name, noop in _NOOP.items()
                if name in type(self).model_fields and getattr(self, name) not in (None, *noop)]

    def max_new_tokens(self) -> int | None:
        return self.max_tokens

    def sampling_fields(self) -> dict:
        """The vLLM SamplingParams fields this request sets; the rest come from generation_config.json."""
        fields = {"n": self.n, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                  "min_p": self.min_p, "seed": self.seed, "thinking_budget": self.thinking_token_budget,
                  "stop": [self.stop] if isinstance(self.stop, str) else self.stop,
                  "stop_token_ids": self.stop_token_ids, "ignore_eos": self.ignore_eos,
                  "include_stop_str_in_output": self.include_stop_str_in_output, "loop_guard": self.loop_guard}
        return {k: v for k, v in fields.items() if v is not None}


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1, le=INT64_MAX)
    # phi4r's: "eager" streams content as it is written (with corrections), "hold" only once certain;
    # None: the server's --reasoning-stream.
    reasoning_stream: Literal["eager", "hold"] | None = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens  # vLLM's precedence

    def unsupported(self) -> list[str]:
        named = [f"messages[{i}].name" for i, m in enumerate(self.messages) if m.name is not None]
        return super().unsupported() + named


class CompletionRequest(GenerationRequest):
    # A string, token ids, or a batch of either; choices are numbered prompt-major (i * n + j).
    prompt: str | list[StrictInt] | list[str] | list[list[StrictInt]]
    echo: Any = None
    suffix: Any = None
    best_of: Any = None

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]
        return list(p)
