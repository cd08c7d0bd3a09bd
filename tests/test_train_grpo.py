"""GRPO: the loss pieces, reward rising on a toy task, exact resume, checkpoints that transformers loads."""
import json
import shutil

import pytest
import torch

from phi4r.checkpoint import load_model
from phi4r.tasks import TASKS, Instance, Score, Task
from phi4r.tasks.base import trace
from phi4r.tiny import make_checkpoint
from phi4r.train.config import GRPOConfig, SFTConfig
from phi4r.train.grpo import group_advantages, policy_loss, train_grpo
from phi4r.train.sft import train_sft


class Pick(Task):
    """Answer "A". The teacher answers A or B half of the time each, so after SFT the model is a
    coin flip with well-formed think blocks, and only the reward can tell it which side is right."""
    name = "pick"
    difficulties = [1]

    def make(self, rng, difficulty, k):
        return Instance("", self.name, "Pick a letter.", "A")

    def parse(self, text):
        return text.strip()

    def check(self, inst, response):
        got = self.extract(response)
        return Score(float(got == inst.answer), got)

    def teacher(self, inst):
        return trace(["ok"], "AB"[int(inst.id.rsplit("-", 1)[1]) % 2])


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """A tiny model after a short SFT on Pick's teacher traces."""
    root = tmp_path_factory.mktemp("grpo")
    TASKS["pick"] = Pick()
    ckpt = make_checkpoint(root / "tiny")
    final = train_sft(SFTConfig(model=str(ckpt), output_dir=str(root / "sft"), tasks=["pick"], n_per_task=64,
                                system_prompt="", max_steps=30, learning_rate=3e-3, per_device_train_batch_size=8,
                                eval_fraction=0.0, logging_steps=10, save_steps=1000))
    yield root, final
    del TASKS["pick"]


def grpo_config(model, out, **kw):
    base = dict(model=str(model), output_dir=str(out), tasks=["pick"], n_per_task=16, system_prompt="",
                max_steps=8, learning_rate=3e-3, num_prompts_per_step=4, num_generations=8,
                per_device_train_batch_size=16, max_completion_length=16, max_prompt_length=64, beta=0.0,
                logging_steps=1, save_steps=1000)
    return GRPOConfig(**{**base, **kw})


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_group_advantages():
    r = torch.tensor([[1.0, 0.0, 0.0, -1.0], [0.5, 0.5, 0.5, 0.5]])
    a = group_advantages(r, scale=True)
    assert torch.allclose(a[0], (r[0] - 0.0) / (r[0].std() + 1e-4))
    assert torch.equal(a[1], torch.zeros(4))  # a group that all agrees teaches nothing
    assert torch.equal(group_advantages(r, scale=False)[0], r[0])


def test_policy_loss_clip_kl_and_normalisers():
    cfg = GRPOConfig(epsilon=0.2, beta=0.1, loss_type="grpo", max_completion_length=10)
    logp = torch.tensor([[-1.0, -1.0, -2.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    adv = torch.tensor([1.0, -1.0])
    # Same-policy ratios (1) and a reference equal to the policy: the loss is -mean advantage, KL 0.
    loss, kl, clipped = policy_loss(logp, logp.detach(), logp.detach(), mask, adv, cfg, n_seqs=2, n_tokens=5)
    assert loss.item() == pytest.approx(0.0) and kl == pytest.approx(0.0) and clipped == 0
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-0.25, -0.25, 0.0], [1 / 6, 1 / 6, 1 / 6]]))
    # Ratios beyond 1 + epsilon with a positive advantage are clipped: no gradient from them.
    logp.grad = None
    old = logp.detach() - torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])  # ratio e^0.5 on token 0
    loss, _, clipped = policy_loss(logp, old, None, mask, adv, GRPOConfig(epsilon=0.2, loss_type="dapo"), 2, 5)
    loss.backward()
    assert clipped == 1 and logp.grad[0, 0] == 0 and logp.grad[0, 1] != 0
    # k3 estimator: exp(d) - d - 1 with d = ref - logp, always >= 0.
    ref = logp.detach() + 0.3
    _, kl, _ = policy_loss(logp, logp.detach(), ref, mask, adv, cfg, 2, 5)
    assert kl == pytest.approx(5 * (torch.exp(torch.tensor(0.3)) - 1.3).item(), rel=1e-5)
    # dr_grpo divides by sequences x max_completion_length.
    loss, _, _ = policy_loss(logp, logp.detach(), None, mask, adv, GRPOConfig(loss_type="dr_grpo",
                             max_completion_length=10), 2, 5)
    assert loss.item() == pytest.approx(-(2 * 1.0 - 3 * 1.0) / 20)


def test_grpo_raises_reward_on_a_toy_task(warm):
    root, sft_final = warm
    out = root / "run"
    train_grpo(grpo_config(sft_final, out))
    log = records(out)
    first, last = log[0], log[-3:]
    assert 0.2 < first["accuracy"] < 0.8  # the warm start really is undecided
    assert sum(r["accuracy"] for r in last) / 3 > first["accuracy"] + 0.25
    assert sum(r["reward"] for r in last) / 3 > first["reward"] + 0.1
    assert all(k in first for k in ("completion_length", "truncated", "kl", "malformed", "clip_ratio"))
    assert (out / "grpo_curves.png").is_file() and (out / "samples.jsonl").is_file()


def test_grpo_resume_and_transformers_load(warm):
    import transformers

    root, sft_final = warm
    full, killed = root / "full", root / "killed"
    kw = dict(max_steps=4, save_steps=2, beta=0.05, num_iterations=2, save_total_limit=None)
    train_grpo(grpo_config(sft_final, full, **kw))
    killed.mkdir()
    shutil.copytree(full / "checkpoint-2", killed / "checkpoint-2")
    train_grpo(grpo_config(sft_final, killed, resume_from_checkpoint="latest", **kw))
    a, b = load_model(full / "final", dtype="float32")[0], load_model(killed / "final", dtype="float32")[0]
    sa, sb = a.state_dict(), b.state_dict()
    assert max((sa[k] - sb[k]).abs().max().item() for k in sa) <= 1e-6
    assert records(full)[-1]["kl"] > 0  # the reference model is in the loss

    theirs = transformers.AutoModelForCausalLM.from_pretrained(full / "final", dtype=torch.float32).eval()
    ids = torch.randint(0, a.config.vocab_size, (2, 30))
    with torch.no_grad():
        assert (a(ids) - theirs(ids).logits).abs().max().item() < 1e-4


def test_grpo_bf16_reference_is_a_bf16_copy_and_starts_at_zero_kl(warm, monkeypatch):
    # Under --bf16 the frozen reference is held in bf16 (half an fp32 copy); at step 1 the policy is still
    # the reference, so the KL term starts at (nearly) zero and then grows.
    import phi4r.train.grpo as grpo_module

    root, sft_final = warm
    seen = []
    real = grpo_module.micro_batches
    monkeypatch.setattr(grpo_module, "micro_batches", lambda completions, cfg, model, ref, *a: (
        seen.append({p.dtype for p in ref.parameters()}), real(completions, cfg, model, ref, *a))[1])
    out = root / "bf16-ref"
    train_grpo(grpo_config(sft_final, out, max_steps=2, beta=0.05, bf16=True))
    assert seen and all(dtypes == {torch.bfloat16} for dtypes in seen)
    kl = [r["kl"] for r in records(out)]
    assert abs(kl[0]) < 1e-2 and kl[-1] > kl[0]
