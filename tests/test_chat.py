import hashlib

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from phi4r.chat import DEFAULT_SYSTEM_PROMPT, chat_template, render_chat, system_prompt_from_template

D = DEFAULT_SYSTEM_PROMPT
SYS = "<|im_start|>system<|im_sep|>"


def test_default_system_prompt_is_the_cards_exactly():
    # sha256 of the system prompt in the model card (huggingface.co/microsoft/Phi-4-reasoning)
    assert hashlib.sha256(D.encode()).hexdigest() == "88df15fe1f347e9837ab4579c60f4fbae1cd1abf5a5ceab1bd93b846f65e1228"
    assert D.startswith("You are Phi, a language model trained by Microsoft to help users.")
    assert "format: <think> {Thought section} </think> {Solution section}." in D
    assert D.endswith("through the above guidelines:") and "\n" not in D


def test_single_user_message_gets_the_default_system_prompt():
    assert render_chat([{"role": "user", "content": "What is 2+2?"}]) == (
        f"{SYS}{D}<|im_end|><|im_start|>user<|im_sep|>What is 2+2?<|im_end|><|im_start|>assistant<|im_sep|>")


def test_explicit_system_message_replaces_the_default():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert render_chat(msgs) == (f"{SYS}Be brief.<|im_end|><|im_start|>user<|im_sep|>Hi<|im_end|>"
                                 "<|im_start|>assistant<|im_sep|>")


def test_system_prompt_argument_overrides_and_empty_disables():
    msgs = [{"role": "user", "content": "Hi"}]
    assert render_chat(msgs, system_prompt="S") == (f"{SYS}S<|im_end|><|im_start|>user<|im_sep|>Hi<|im_end|>"
                                                    "<|im_start|>assistant<|im_sep|>")
    no_system = "<|im_start|>user<|im_sep|>Hi<|im_end|><|im_start|>assistant<|im_sep|>"
    assert render_chat(msgs, system_prompt="") == no_system


def test_multi_turn_with_assistant_history_and_no_generation_prompt():
    msgs = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "<think>easy</think>2"},
            {"role": "user", "content": "times 3?"}]
    expected = (f"{SYS}{D}<|im_end|><|im_start|>user<|im_sep|>1+1?<|im_end|>"
                "<|im_start|>assistant<|im_sep|><think>easy</think>2<|im_end|>"
                "<|im_start|>user<|im_sep|>times 3?<|im_end|>")
    assert render_chat(msgs, add_generation_prompt=False) == expected
    assert render_chat(msgs) == expected + "<|im_start|>assistant<|im_sep|>"


def test_list_content_parts_are_joined_and_none_is_empty():
    msgs = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": None}]
    assert render_chat(msgs, add_generation_prompt=False, system_prompt="") == (
        "<|im_start|>user<|im_sep|>ab<|im_end|><|im_start|>assistant<|im_sep|><|im_end|>")


@pytest.mark.parametrize("msgs, match", [
    ([{"role": "tool", "content": "x"}], "role must be one of"),
    ([{"content": "x"}], "role must be one of"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "only .* parts"),
    ([{"role": "user", "content": 3}], "string or a list"),
])
def test_invalid_messages_raise_clear_errors(msgs, match):
    with pytest.raises(ValueError, match=match):
        render_chat(msgs)


def _hf_render(template, messages, add_generation_prompt=True):
    # The Jinja settings transformers' apply_chat_template uses.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt)


CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "<think>x</think>2"},
     {"role": "user", "content": [{"type": "text", "text": "and "}, {"type": "text", "text": "2+2?"}]}],
    [],
]


@pytest.mark.parametrize("system_prompt", [None, "", "Custom {{ not jinja }} \"quoted\" 'x' \\ é 😀\nline"])
@pytest.mark.parametrize("msgs", CONVERSATIONS)
@pytest.mark.parametrize("gen", [True, False])
def test_chat_template_renders_like_render_chat(system_prompt, msgs, gen):
    assert _hf_render(chat_template(system_prompt), msgs, gen) == render_chat(msgs, gen, system_prompt)


@pytest.mark.parametrize("prompt", [D, "Short.", "Custom {% raw %} \"q\" \\n é 😀\nline"])
def test_system_prompt_round_trips_through_a_template(prompt):
    assert system_prompt_from_template(chat_template(prompt)) == prompt


def test_system_prompt_from_official_style_template():
    # The shape of Phi-4-reasoning's own template, with transformers' {% generation %} tag.
    template = (
        "{% if messages|length == 0 or messages[0]['role'] != 'system' %}{{'<|im_start|>system<|im_sep|>"
        + D + "<|im_end|>'}}{% endif %}{% for message in messages %}{% if (message['role'] == 'system') %}"
        "{{'<|im_start|>system<|im_sep|>' + message['content'] + '<|im_end|>'}}{% elif (message['role'] == 'user') %}"
        "{{'<|im_start|>user<|im_sep|>' + message['content'] + '<|im_end|>'}}"
        "{% elif (message['role'] == 'assistant') %}{{'<|im_start|>assistant<|im_sep|>'}}{% generation %}"
        "{{message['content'] + '<|im_end|>'}}{% endgeneration %}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}")
    assert system_prompt_from_template(template) == D


def test_system_prompt_from_other_formats_and_failures():
    phi3 = ("{% if messages[0]['role'] != 'system' %}{{ '<|system|>\nYou help.<|end|>\n' }}{% endif %}"
            "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endfor %}")
    assert system_prompt_from_template(phi3) == "You help."
    assert system_prompt_from_template(chat_template("")) == ""  # injects nothing
    assert system_prompt_from_template("{% for m in messages %}{{ m['content'] }}{% endfor %}") == ""
    assert system_prompt_from_template("{{ raise_exception('no system role') }}") is None
    assert system_prompt_from_template("{% if %}") is None
    assert system_prompt_from_template(None) is None
