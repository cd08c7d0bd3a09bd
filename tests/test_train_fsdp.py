"""FSDP2 under torchrun (gloo, CPU): two sharded processes take one process's steps, a run killed
with SIGKILL resumes from its sharded checkpoint to the same weights, and the consolidated export
loads in transformers."""
import shutil
import time
from pathlib import Path

import pytest
import torch
from test_train_distributed import GRPO, SFT, kill, launch, max_diff, records, torchrun

from phi4r.checkpoint import load_model
from phi4r.tiny import make_checkpoint
from phi4r.train.config import GRPOConfig, SFTConfig
from phi4r.train.grpo import train_grpo
from phi4r.train.sft import train_sft

pytestmark = pytest.mark.slow  # each torchrun start imports torch in every process: ~15-40 s here
# Sharded runs also recompute layers and chunk the loss: the comparison covers those paths too. 9 held-out
# conversations in micro-batches of 2 are 3 forwards on rank 0 and 2 on rank 1: evaluation runs in lockstep.
FSDP_SFT = dict(SFT, n_per_task=36, eval_fraction=0.25, max_steps=8, save_steps=2, per_device_train_batch_size=2,
                fsdp=True, gradient_checkpointing=True, loss_chunk_size=16)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def running(pid: str) -> bool:
    try:  # a killed worker may linger as a zombie until something reaps it
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def sharded_run(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp") / "run"
    torchrun("sft", dict(FSDP_SFT, model=str(ckpt), output_dir=str(out)))
    return out


def test_sft_two_sharded_processes_match_one(ckpt, sharded_run, tmp_path):
    # Global batch 4: 1 plain process x 2 per device x 2 accumulation = 2 FSDP processes x 2 per device.
    plain = dict(FSDP_SFT, fsdp=False, gradient_checkpointing=False, loss_chunk_size=0, gradient_accumulation_steps=2)
    train_sft(SFTConfig(model=str(ckpt), output_dir=str(tmp_path), **plain))
    assert max_diff(tmp_path / "final", sharded_run / "final") < 2e-5
    assert max_diff(ckpt, sharded_run / "final") > 1e-3
    for a, b in zip(records(tmp_path), records(sharded_run), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a.get("eval_loss") == pytest.approx(b.get("eval_loss"), rel=1e-5)
    # The checkpoints are sharded (no gathered weights in them), the final export is whole.
    assert (sharded_run / "checkpoint-8" / "sharded").is_dir()
    assert not list((sharded_run / "checkpoint-8").glob("*.safetensors"))


def test_sigkill_then_resume_from_sharded_checkpoint(ckpt, sharded_run, tmp_path):
    run = tmp_path / "run"
    fields = dict(FSDP_SFT, model=str(ckpt), output_dir=str(run))
    log = tmp_path / "killed.log"
    with log.open("w") as out:
        proc = launch("sft", fields, out)
    try:
        deadline = time.monotonic() + 240
        while not (run / "checkpoint-2").is_dir():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        workers = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        kill(proc)  # every process of the run, mid-run
    finally:
        if proc.poll() is None:
            kill(proc)
    deadline = time.monotonic() + 10  # SIGKILL is delivered, not yet done
    while any(map(running, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(workers) == 2 and not any(map(running, workers))
    assert not (run / "final").exists() and not (run / "checkpoint-8").exists()
    torchrun("sft", dict(fields, resume_from_checkpoint="latest"))
    assert max_diff(sharded_run / "final", run / "final") == 0.0  # bit-exact
    assert [r["step"] for r in records(run)] == list(range(1, 9))


def test_sharded_checkpoint_resumes_in_one_plain_process(ckpt, sharded_run, tmp_path):
    # torch.distributed.checkpoint reshards on load: 2 FSDP ranks' checkpoint, 1 process without --fsdp.
    shutil.copytree(sharded_run / "checkpoint-6", tmp_path / "checkpoint-6")
    plain = dict(FSDP_SFT, fsdp=False, gradient_checkpointing=False, loss_chunk_size=0, gradient_accumulation_steps=2)
    train_sft(SFTConfig(model=str(ckpt), output_dir=str(tmp_path), resume_from_checkpoint="latest", **plain))
    assert max_diff(sharded_run / "final", tmp_path / "final") < 1e-6


def test_consolidated_export_loads_in_transformers(sharded_run):
    import transformers

    ours = load_model(sharded_run / "final", dtype="float32")[0]
    theirs = transformers.AutoModelForCausalLM.from_pretrained(sharded_run / "final", dtype=torch.float32).eval()
    ids = torch.randint(0, ours.config.vocab_size, (2, 40))
    with torch.no_grad():
        assert (ours(ids) - theirs(ids).logits).abs().max().item() < 1e-4


def test_grpo_sharded_matches_one_process(ckpt, tmp_path):
    # The sampler is a full copy refreshed from the shards each step; the reference model is sharded too.
    warm = train_sft(SFTConfig(model=str(ckpt), output_dir=str(tmp_path / "warm"),
                               **dict(SFT, max_steps=25, eval_fraction=0.0, per_device_train_batch_size=8)))
    one, two = tmp_path / "one", tmp_path / "two"
    grpo = dict(GRPO, max_steps=2)
    train_grpo(GRPOConfig(model=str(warm), output_dir=str(one), **grpo))
    torchrun("grpo", dict(grpo, model=str(warm), output_dir=str(two), fsdp=True, fsdp_cpu_offload=True,
                          loss_chunk_size=8))
    for a, b in zip(records(one), records(two), strict=True):
        assert (a["reward"], a["completion_length"]) == pytest.approx((b["reward"], b["completion_length"]))
        assert a["kl"] == pytest.approx(b["kl"], rel=1e-4, abs=1e-9)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert max_diff(one / "final", two / "final") < 2e-5
