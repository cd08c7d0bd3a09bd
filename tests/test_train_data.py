"""Training data and configs: the assistant-only loss mask against encode_chat, the batch order, flags and files."""
import argparse

import pytest
import torch

from phi4r.tiny import make_checkpoint
from phi4r.train import config as C
from phi4r.train.data import BatchOrder, encode_conversation, split_heldout
from phi4r.train.sft import summed_nll

TRACE = "<think>\n2 + 3 = 5\n</think>\n\nFinal Answer: 5"


@pytest.fixture(scope="module")
def model_and_tok(tmp_path_factory):
    from phi4r import load

    return load(make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny"), dtype="float32")


def test_mask_covers_exactly_the_assistant_turn(model_and_tok):
    _, tok = model_and_tok
    messages = [{"role": "user", "content": "What is 2 + 3? <|im_end|> stays text"},
                {"role": "assistant", "content": TRACE}]
    ex = encode_conversation(tok, messages)  # the checkpoint's (default) system prompt is injected
    prompt = tok.encode_chat(messages[:1], add_generation_prompt=True)
    assert ex.ids[:len(prompt)] == prompt  # system + user + generation prompt exactly as inference sees them
    assert prompt[0] == tok.token_id("<|im_start|>") and tok.decode(prompt).startswith("<|im_start|>system")
    assert set(ex.mask[:len(prompt)]) == {0}  # no system/user/template token is a target
    target = ex.ids[len(prompt):]
    assert set(ex.mask[len(prompt):]) == {1} and len(ex.ids) == len(ex.mask)
    assert target[-1] == tok.eos_id  # the closing <|im_end|> is learned, so the model stops
    assert tok.decode(target) == TRACE + "<|im_end|>"
    # Think tags are the single tokens the model emits, not their characters.
    assert target[0] == tok.think_start_id and tok.think_end_id in target


def test_multi_turn_masks_every_assistant_turn_only(model_and_tok):
    _, tok = model_and_tok
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1 + 1?"},
                {"role": "assistant", "content": "2"}, {"role": "user", "content": "and 2 + 2?"},
                {"role": "assistant", "content": "4"}]
    ex = encode_conversation(tok, messages, system_prompt="")
    # Without think tags the ids are encode_chat of the whole conversation.
    assert ex.ids == tok.encode_chat(messages, add_generation_prompt=False, system_prompt="")
    targets = [i for i, m in zip(ex.ids, ex.mask) if m]
    assert tok.decode(targets) == "2<|im_end|>4<|im_end|>"
    second_prompt = tok.encode_chat(messages[:4], add_generation_prompt=True, system_prompt="")
    assert ex.ids[:len(second_prompt)] == second_prompt
    assert [m for m in ex.mask[len(second_prompt):]] == [1] * (len(ex.ids) - len(second_prompt))


def test_loss_counts_only_masked_targets(model_and_tok):
    model, tok = model_and_tok
    ex = encode_conversation(tok, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": TRACE}],
                             system_prompt="")
    with torch.no_grad():
        got = summed_nll(model, [ex], 0, torch.device("cpu"), False)
        logp = model(torch.tensor([ex.ids])).log_softmax(-1)[0]
    # Token t is predicted by position t - 1; only mask[t] == 1 counts.
    want = -sum(logp[t - 1, ex.ids[t]] for t in range(1, len(ex.ids)) if ex.mask[t])
    assert abs(float(got) - float(want)) < 1e-4


def test_batch_order_is_a_function_of_step():
    lengths = [i % 7 + 1 for i in range(30)]
    a, b = BatchOrder(30, 4, seed=3, lengths=lengths), BatchOrder(30, 4, seed=3, lengths=lengths)
    steps = [a.batch(s) for s in range(20)]
    assert [b.batch(s) for s in reversed(range(20))] == steps[::-1]  # no hidden iterator state
    epoch = [i for s in range(a.steps_per_epoch) for i in steps[s]]
    assert len(set(epoch)) == len(epoch) == 28  # each example at most once per epoch, last partial batch dropped
    assert steps[a.steps_per_epoch:2 * a.steps_per_epoch] != steps[:a.steps_per_epoch]  # reshuffled
    train, held = split_heldout(list(range(20)), 0.1, seed=0)
    assert len(held) == 2 and sorted(train + held) == list(range(20))


def test_config_precedence_file_then_flags(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("learning_rate: 1e-4\ntasks: [arithmetic, sat3]\nmax_steps: 50\ngroup_by_length: false\n")
    parser = argparse.ArgumentParser()
    C.add_arguments(parser, C.SFTConfig)
    cfg = C.from_args(C.SFTConfig, parser.parse_args(["--config", str(file), "--lr", "3e-4", "--n-per-task", "7"]))
    assert cfg.learning_rate == 3e-4  # flag beats file ("1e-4" is a string to YAML: coerced)
    assert cfg.tasks == ["arithmetic", "sat3"] and cfg.max_steps == 50 and cfg.group_by_length is False
    assert cfg.n_per_task == 7 and cfg.warmup_steps == C.SFTConfig.warmup_steps
    cfg = C.from_args(C.SFTConfig, parser.parse_args(["--tasks", "a,b", "--difficulty", "none", "--group-by-length"]))
    assert cfg.tasks == ["a", "b"] and cfg.difficulty is None and cfg.group_by_length is True
    C.save(cfg, tmp_path / "out.yaml")
    assert C.from_dict(C.SFTConfig, C.load_file(tmp_path / "out.yaml")) == cfg
    with pytest.raises(ValueError, match="unknown SFTConfig field"):
        C.from_dict(C.SFTConfig, {"lr_typo": 1})
    with pytest.raises(ValueError, match="max_steps"):
        C.from_dict(C.SFTConfig, {"max_steps": "many"})
