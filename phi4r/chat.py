"""Phi-4-reasoning's chat format: ChatML with `<|im_sep|>` and no newlines.

    <|im_start|>system<|im_sep|>{system}<|im_end|><|im_start|>user<|im_sep|>{user}<|im_end|><|im_start|>assistant<|im_sep|>

The official template injects a default system prompt when the conversation does not start with a
system message. Here the prompt to inject is a parameter: None means the Phi-4-reasoning default,
"" means inject nothing. `chat_template` writes the same format as Jinja for transformers, and
`system_prompt_from_template` reads the injected prompt back out of any checkpoint's template.
"""
from __future__ import annotations

import json
from datetime import datetime

import jinja2
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

DEFAULT_SYSTEM_PROMPT = (
    "You are Phi, a language model trained by Microsoft to help users. Your role as an assistant involves "
    "thoroughly exploring questions through a systematic thinking process before providing the final precise "
    "and accurate solutions. This requires engaging in a comprehensive cycle of analysis, summarizing, "
    "exploration, reassessment, reflection, backtracing, and iteration to develop well-considered thinking "
    "process. Please structure your response into two main sections: Thought and Solution using the specified "
    "format: <think> {Thought section} </think> {Solution section}. In the Thought section, detail your "
    "reasoning process in steps. Each step should include detailed considerations such as analysing "
    "questions, summarizing relevant findings, brainstorming new ideas, verifying the accuracy of the current "
    "steps, refining any errors, and revisiting previous steps. In the Solution section, based on various "
    "attempts, explorations, and reflections from the Thought section, systematically present the final "
    "solution that you deem correct. The Solution section should be logical, accurate, and concise and detail "
    "necessary steps needed to reach the conclusion. Now, try to solve the following question through the "
    "above guidelines:"
)

IM_START, IM_SEP, IM_END = "<|im_start|>", "<|im_sep|>", "<|im_end|>"
ROLES = ("system", "user", "assistant")


def message_text(message: dict) -> str:
    """The text of one message; `content` is a string, None, or OpenAI-style text parts."""
    content = message.get("content")
    if content is None:  # an assistant turn that only carried tool calls
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"unsupported content part {part!r}: only {{'type': 'text', 'text': str}} parts")
            texts.append(part["text"])
        return "".join(texts)
    raise ValueError(f"message content must be a string or a list of text parts, got {type(content).__name__}")


def chat_turns(messages: list[dict], system_prompt: str | None = None) -> tuple[str | None, list[tuple[str, str]]]:
    """(system prompt to inject or None, validated (role, text) turns) for a conversation."""
    turns = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise ValueError(f"message {i}: role must be one of {', '.join(ROLES)}, got {role!r}")
        turns.append((role, message_text(message)))
    if system_prompt is None:
        system_prompt = DEFAULT_SYSTEM_PROMPT
    inject = system_prompt if system_prompt and (not turns or turns[0][0] != "system") else None
    return inject, turns


def render_chat(messages: list[dict], add_generation_prompt: bool = True, system_prompt: str | None = None) -> str:
    """The prompt string for `messages`, exactly as Phi-4-reasoning's template renders it."""
    inject, turns = chat_turns(messages, system_prompt)
    if inject is not None:
        turns.insert(0, ("system", inject))
    text = "".join(f"{IM_START}{role}{IM_SEP}{content}{IM_END}" for role, content in turns)
    return text + (f"{IM_START}assistant{IM_SEP}" if add_generation_prompt else "")


def chat_template(system_prompt: str | None = None) -> str:
    """Jinja chat template that transformers' `apply_chat_template` renders like `render_chat`."""
    if system_prompt is None:
        system_prompt = DEFAULT_SYSTEM_PROMPT
    inject = ""
    if system_prompt:
        # Jinja string literals are unicode-escape decoded; a JSON literal without ASCII escaping survives that.
        literal = json.dumps(IM_START + "system" + IM_SEP + system_prompt + IM_END, ensure_ascii=False)
        inject = ("{%- if messages | length == 0 or messages[0]['role'] != 'system' -%}"
                  "{{ " + literal + " }}{%- endif -%}")
    return (
        inject
        + "{%- for message in messages -%}"
        "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
        "{{ raise_exception('role must be one of system, user, assistant') }}{%- endif -%}"
        "{%- if message['content'] is string -%}{%- set content = message['content'] -%}"
        "{%- elif message['content'] is none -%}{%- set content = '' -%}"
        "{%- else -%}{%- set content = message['content'] | selectattr('type', 'equalto', 'text')"
        " | map(attribute='text') | join('') -%}{%- endif -%}"
        "{{ '<|im_start|>' + message['role'] + '<|im_sep|>' + content + '<|im_end|>' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant<|im_sep|>' }}{%- endif -%}"
    )


class _GenerationTag(Extension):
    """transformers' `{% generation %}...{% endgeneration %}` (marks assistant tokens): render the body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _raise_exception(message):
    raise jinja2.TemplateError(message)


def _render(template: str, messages: list[dict]) -> str:
    # The environment transformers renders chat templates in, reduced to what reading a prompt needs.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                       extensions=[_GenerationTag, "jinja2.ext.loopcontrols"])
    env.globals.update(raise_exception=_raise_exception,
                       strftime_now=lambda fmt: datetime.now().strftime(fmt))
    return env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                            bos_token="", eos_token="", pad_token="", unk_token="")


def system_prompt_from_template(template: str | None) -> str | None:
    """The system prompt `template` injects for a lone user message; "" if it injects none; None if unknown.

    Format-agnostic: render [system S, user U] and [user U]; whatever surrounds S in the first must
    surround the injected prompt in the second.
    """
    if not template:
        return None
    s, u = "\x00SYSTEM-MARKER\x00", "\x00USER-MARKER\x00"
    try:
        with_system = _render(template, [{"role": "system", "content": s}, {"role": "user", "content": u}])
        user_only = _render(template, [{"role": "user", "content": u}])
    except Exception:  # a foreign template may fail in any way; then its prompt is unknown
        return None
    if with_system.count(s) != 1:
        return None
    before, after = with_system.split(s)
    if user_only.startswith(before) and user_only.endswith(after) and len(user_only) >= len(before) + len(after):
        return user_only[len(before):len(user_only) - len(after)]
    return ""
