"""Gradient checkpointing and the chunked loss change memory, not results; `phi4r train plan` predicts
the memory a step takes (checked against measured peaks) and reports the card's model."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from phi4r.cli import main
from phi4r.config import Phi3Config
from phi4r.model import Phi3ForCausalLM
from phi4r.tiny import TINY
from phi4r.train.logprobs import token_logprobs
from phi4r.train.plan import Shapes, load_config, plan

# Large enough that activations and logits dwarf allocator noise, small enough for a second per step.
SIZES = dict(TINY, hidden_size=256, intermediate_size=512, num_hidden_layers=4, max_position_embeddings=2048,
             vocab_size=2048)

# One forward + backward per setup; the growth of the peak resident memory over the memory before it.
# A fixed mmap threshold makes glibc return every freed tensor to the OS, so RSS follows live tensors;
# writing 5 to clear_refs resets the kernel's peak (VmHWM) before each measured step.
MEASURE = r"""
import gc, json, re, sys, torch
from phi4r.config import Phi3Config
from phi4r.model import Phi3ForCausalLM
from phi4r.train.logprobs import token_logprobs
torch.set_num_threads(1)
sizes, T, setups = json.loads(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
model = Phi3ForCausalLM(Phi3Config(**sizes))
ids = torch.randint(0, sizes["vocab_size"], (1, T + 1))
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
def peak():
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024
def step(checkpointing, chunk):
    model.gradient_checkpointing = checkpointing
    token_logprobs(model, ids, chunk_size=chunk).sum().backward()
out = []
for checkpointing, chunk in setups:
    step(checkpointing, chunk)  # warm-up: lazy imports and initialisation of this path
    model.zero_grad(set_to_none=True)
    gc.collect()
    base = rss()
    open("/proc/self/clear_refs", "w").write("5")
    step(checkpointing, chunk)
    out.append(peak() - base)
    model.zero_grad(set_to_none=True)
print(json.dumps(out))
"""


def measure(T: int, setups: list) -> list[int]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    proc = subprocess.Popen([sys.executable, "-c", MEASURE, json.dumps(SIZES), str(T), json.dumps(setups)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
    return json.loads(out)


@pytest.mark.slow  # eight steps at 1024 tokens in a fresh process: ~10-30 s on two shared cores
def test_measured_peak_falls_as_plan_predicts():
    setups = [(False, 0), (True, 0), (True, 128), (False, 128)]
    measured = measure(1024, setups)
    config = Phi3Config(**SIZES)
    for (checkpointing, chunk), got in zip(setups, measured):
        # The step's share of the peak: what forward + backward add on top of weights and optimizer.
        predicted = plan(config, seq_len=1024, gradient_checkpointing=checkpointing, loss_chunk_size=chunk,
                         dtype="fp32")["step"]
        assert abs(got / predicted - 1) < 0.2, (checkpointing, chunk, got, predicted)
    assert measured[1] < 0.5 * measured[0]  # checkpointing keeps one layer's activations, not all four


@pytest.mark.parametrize("autocast", [False, True])
def test_checkpointing_and_chunked_loss_give_the_plain_loss_and_gradients(autocast):
    torch.manual_seed(0)
    model = Phi3ForCausalLM(Phi3Config(**dict(SIZES, num_hidden_layers=2)))
    ids = torch.randint(0, SIZES["vocab_size"], (2, 70))
    weights = torch.rand(2, 69)

    def run(checkpointing: bool, chunk: int):
        model.zero_grad(set_to_none=True)
        model.gradient_checkpointing = checkpointing
        logp = token_logprobs(model, ids, autocast, temperature=0.7, chunk_size=chunk)
        (logp * weights).sum().backward()
        return logp.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}

    plain_logp, plain_grads = run(False, 0)
    for checkpointing, chunk in ((True, 0), (False, 16), (True, 7)):
        logp, grads = run(checkpointing, chunk)
        tol = 2e-2 if autocast else 1e-5  # bf16 rounds each chunk's lm_head gradient on its own
        torch.testing.assert_close(logp, plain_logp, rtol=tol, atol=tol)
        for name, g in grads.items():
            scale = plain_grads[name].abs().max().item()
            assert (g - plain_grads[name]).abs().max().item() <= tol * max(scale, 1e-6), name


def test_plan_of_the_card_model(capsys):
    config = load_config("phi4-reasoning")
    assert Shapes.of(config).total == 14_659_507_200  # the card's 14.7B
    full = {"world_size": 32, "seq_len": 32768, "fsdp": True, "gradient_checkpointing": True, "loss_chunk_size": 4096}
    sharded = plan(config, **full)
    assert sharded["peak"] < 80 * 1024**3
    # Replicated (DDP) the same run needs fp32 weights + grads + AdamW of all 14.66B on every GPU.
    assert plan(config, **dict(full, fsdp=False))["peak"] > 16 * 14.6e9
    # Without checkpointing and chunking the activations and logits of 32K tokens do not fit.
    assert plan(config, **dict(full, gradient_checkpointing=False, loss_chunk_size=0))["peak"] > 80 * 1024**3
    lora = plan(config, seq_len=32768, use_peft=True, lora_r=16, gradient_checkpointing=True, loss_chunk_size=4096)
    assert 55e6 < lora["trainable"] < 56e6 and lora["peak"] < 80 * 1024**3

    assert main(["train", "plan", "--model", "phi4-reasoning", "--world-size", "32", "--seq-len", "32768", "--fsdp",
                 "--gradient-checkpointing", "--loss-chunk-size", "4096", "--gpu-memory", "80"]) == 0
    out = capsys.readouterr().out
    assert "14.66B parameters" in out and "fits in 80 GiB" in out
    assert main(["train", "plan", "--model", "phi4-reasoning", "--seq-len", "32768", "--gpu-memory", "80"]) == 1
    assert "does NOT fit" in capsys.readouterr().out
    assert main(["train", "plan", "--model", "phi4-reasoning", "--seq-len", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] == 14_659_507_200


def test_plan_bad_input_is_a_one_line_error(capsys, tmp_path):
    assert main(["train", "plan", "--model", "phi4-reasoning", "--seq-len", "8", "--dtype", "int3"]) != 0
    assert main(["train", "plan", "--model", str(tmp_path / "missing"), "--seq-len", "8"]) != 0
    assert main(["train", "plan", "--model", "phi4-reasoning", "--seq-len", "8", "--use-peft",
                 "--lora-target-modules", "q_proj"]) != 0
    err = capsys.readouterr().err
    assert "int3" in err and "missing" in err and "q_proj" in err and "Traceback" not in err
