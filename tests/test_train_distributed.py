"""Two torchrun processes (gloo, CPU) take the same steps as one process with the same global batch."""
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from phi4r.checkpoint import load_model
from phi4r.tiny import make_checkpoint
from phi4r.train.config import GRPOConfig, SFTConfig
from phi4r.train.grpo import train_grpo
from phi4r.train.sft import train_sft

ROOT = Path(__file__).resolve().parents[1]
COMMON = dict(tasks=["arithmetic"], difficulty=1, system_prompt="", learning_rate=3e-3, logging_steps=1,
              save_steps=1000, seed=5)
SFT = dict(COMMON, n_per_task=24, max_steps=4, eval_fraction=0.1, eval_steps=2)
GRPO = dict(COMMON, n_per_task=8, max_steps=3, num_prompts_per_step=4, num_generations=4, per_device_train_batch_size=4,
            max_completion_length=24, max_prompt_length=64, num_iterations=2, beta=0.01)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def warm(ckpt, tmp_path_factory):
    """A short SFT, so that samples differ in format, length and correctness (a random model's all
    run to the limit alike, and equal rewards give no gradient)."""
    out = tmp_path_factory.mktemp("warm")
    return train_sft(SFTConfig(model=str(ckpt), output_dir=str(out), **dict(SFT, max_steps=25, eval_fraction=0.0,
                                                                          per_device_train_batch_size=8)))


def flags(fields: dict) -> list[str]:
    out = []
    for k, v in fields.items():
        name = k.replace("_", "-")
        out += ([f"--{name}" if v else f"--no-{name}"] if isinstance(v, bool)
                else [f"--{name}", ",".join(v) if isinstance(v, list) else str(v)])
    return out


def launch(stage: str, fields: dict, log=subprocess.PIPE) -> subprocess.Popen:
    """`torchrun --nproc_per_node 2 -m phi4r.cli train STAGE`, in its own process group, output to `log`."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "phi4r.cli", "train", stage, *flags(fields)]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL a torchrun run: the agent's group and each worker's (torchrun starts every worker in a
    session of its own, and they outlive a killed agent)."""
    workers = [int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    for pgid in [proc.pid, *workers]:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    proc.wait()


def torchrun(stage: str, fields: dict, timeout: float = 300) -> None:
    proc = launch(stage, fields)
    try:
        out, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, out[-3000:]
    finally:
        if proc.poll() is None:
            kill(proc)


def max_diff(a, b) -> float:
    sa, sb = load_model(a, dtype="float32")[0].state_dict(), load_model(b, dtype="float32")[0].state_dict()
    return max((sa[k] - sb[k]).abs().max().item() for k in sa)


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_sft_two_processes_match_one(ckpt, tmp_path):
    # Global batch 4 both ways: 1 process x 2 per device x 2 accumulation = 2 processes x 2 per device.
    one, two = tmp_path / "one", tmp_path / "two"
    train_sft(SFTConfig(model=str(ckpt), output_dir=str(one), per_device_train_batch_size=2,
                        gradient_accumulation_steps=2, **SFT))
    torchrun("sft", dict(SFT, model=str(ckpt), output_dir=str(two), per_device_train_batch_size=2,
                         gradient_accumulation_steps=1))
    assert max_diff(one / "final", two / "final") < 2e-5
    assert max_diff(ckpt, two / "final") > 1e-3  # both trained
    # strict: one record per step, so rank 1 wrote no duplicate lines (rank 0 alone writes).
    for a, b in zip(records(one), records(two), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert ("eval_loss" in a) == ("eval_loss" in b)
        if "eval_loss" in a:
            assert a["eval_loss"] == pytest.approx(b["eval_loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)  # Adam would hide a mis-scaled gradient


def test_grpo_two_processes_match_one(warm, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    train_grpo(GRPOConfig(model=str(warm), output_dir=str(one), **GRPO))
    torchrun("grpo", dict(GRPO, model=str(warm), output_dir=str(two)))
    # Same samples (seeds follow the prompt's global position, not the rank), same update.
    log_one, log_two = records(one), records(two)
    for a, b in zip(log_one, log_two, strict=True):
        assert (a["reward"], a["completion_length"]) == pytest.approx((b["reward"], b["completion_length"]))
        assert a["kl"] == pytest.approx(b["kl"], rel=1e-4, abs=1e-9)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert any(r["reward_std"] > 0 for r in log_one)  # advantages were not all zero
    assert max_diff(one / "final", two / "final") < 2e-5
    assert max_diff(warm, two / "final") > 1e-4
