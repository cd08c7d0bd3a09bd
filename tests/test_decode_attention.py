"""The AVX-512 decode-attention kernel (phi4r/kernels/attention.py): against the Python path, under
torch.compile, and the fallbacks.

The first test run on a machine compiles the kernel (about 30 s; cached afterwards in torch's
extensions directory).
"""
from subprocess import Popen

import pytest
import torch

from phi4r import model as model_mod
from phi4r.api import LLM
from phi4r.kernels import attention, build
from phi4r.model import DecodeStep, _decode_attention, _kernel_attention, _visible
from phi4r.sampling import SamplingParams
from phi4r.tiny import make_checkpoint


KERNEL = (attention, attention.kernel, "attention")  # the `kernel` fixture (conftest.py) builds and probes it


def case(B, H, KV, D, lengths, dtype, seed=0, max_len=None):
    """q [B, 1, H, D] as the model slices it from q/k rows, keys/values as views of a cache's slots
    1..B (strided in the batch dim), positions and lengths."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    span = int(lengths.max())
    max_len = max_len or span + 5
    qk = torch.randn(B, 1, H + KV, D, generator=gen).to(dtype)
    ck = torch.randn(B + 2, KV, max_len, D, generator=gen).to(dtype)
    cv = torch.randn(B + 2, KV, max_len, D, generator=gen).to(dtype)
    return qk[:, :, :H], ck[1:B + 1, :, :span], cv[1:B + 1, :, :span], lengths[:, None] - 1, lengths


def python_path(q, keys, values, positions):
    """The fp32 Python path on fp32 copies: the exact maths the kernel is held to."""
    return _decode_attention(q.float(), keys.float(), values.float(), _visible(keys.shape[2], positions))


def check(got, ref, values, dtype):
    assert got.dtype == dtype and got.shape == ref.shape
    # fp32 sums in another order (outputs are weighted means of V), then for bf16 one rounding.
    tol = (2 ** -8 if dtype == torch.bfloat16 else 0) * ref.abs() + 2e-6 * values.float().abs().max()
    assert ((got.float() - ref).abs() <= tol).all(), (got.float() - ref).abs().max()


LENGTHS = {1: [[1], [37], [16]], 3: [[1, 17, 40], [33, 32, 31]], 16: [[150 - 9 * b for b in range(16)]]}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("H,KV", [(4, 4), (8, 4), (8, 2), (6, 2), (12, 1)], ids=["g1", "g2", "g4", "g3", "g12"])
@pytest.mark.parametrize("D", [64, 128, 16, 48])
@pytest.mark.parametrize("B", [1, 3, 16])
def test_kernel_matches_the_python_path(kernel, B, H, KV, D, dtype):
    for i, lengths in enumerate(LENGTHS[B]):
        q, keys, values, positions, lens = case(B, H, KV, D, lengths, dtype, seed=i)
        got = _kernel_attention(q, keys, values, lens)
        check(got, python_path(q, keys, values, positions), values, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_later_tile_raising_the_max_rescales(kernel, dtype):
    # Scores growing with the position (and large): every 16-row tile raises each query's max, far
    # enough that exp of the earlier ones underflows; lengths 1..300 with odd tails.
    B, H, KV, D = 4, 8, 2, 64
    q, keys, values, positions, lens = case(B, H, KV, D, [300, 161, 2, 77], dtype)
    ramp = torch.linspace(0.1, 4, keys.shape[2])[None, None, :, None]
    keys = (keys.float() * ramp + q.float().mean(2, keepdim=True).transpose(1, 2) * ramp * 3).to(dtype)
    got = _kernel_attention(q, keys, values, lens)
    check(got, python_path(q, keys, values, positions), values, dtype)


def test_threads_split_the_items_bit_for_bit(kernel):
    q, keys, values, positions, lens = case(5, 12, 1, 128, [1, 40, 33, 17, 64], torch.bfloat16)
    one = _kernel_attention(q, keys, values, lens)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert torch.equal(_kernel_attention(q, keys, values, lens), one)
    finally:
        torch.set_num_threads(threads)


def test_cache_step_and_decode_step_use_the_kernel(kernel, monkeypatch):
    calls = []
    monkeypatch.setattr(attention, "ready", lambda: lambda *a: calls.append(a[3].tolist()) or kernel(*a))
    B, H, KV, D = 3, 4, 2, 16
    q, keys, values, positions, lens = case(B, H, KV, D, [9, 4, 7], torch.float32)
    ks, vs = [torch.zeros(B, KV, 12, D)], [torch.zeros(B, KV, 12, D)]
    step = DecodeStep(ks, vs, positions, span=9)
    new_k, new_v = torch.randn(B, 1, KV, D), torch.randn(B, 1, KV, D)
    keys, values = step.update(0, new_k, new_v)
    got = step.attention(q, keys, values)
    check(got, python_path(q, keys, values, positions), values, torch.float32)
    assert calls == [[9, 4, 7]]


def test_the_op_in_a_compiled_graph(kernel):
    B, H, KV, D = 5, 8, 2, 128
    q, keys, values, positions, lens = case(B, H, KV, D, [1, 20, 33, 2, 16], torch.bfloat16)
    targets = []

    def record(gm, example_inputs):
        targets.extend(n.target for n in gm.graph.nodes)
        return gm.forward

    torch._dynamo.reset()
    got = torch.compile(_kernel_attention, backend=record, fullgraph=True)(q, keys, values, lens)
    assert attention.op() in targets
    assert torch.equal(got, kernel(q[:, 0], keys, values, lens, D ** -0.5).unsqueeze(2))
    inductor = torch.compile(_kernel_attention, fullgraph=True)(q, keys, values, lens)  # shape function, layout
    assert torch.equal(inductor, got)


def test_fallbacks_use_the_python_path(kernel, monkeypatch):
    monkeypatch.setattr(attention, "kernel", lambda: pytest.fail("the kernel must not be called"))
    for D in (24, 8):  # not a multiple of 16
        q, keys, values, positions, lens = case(2, 4, 2, D, [3, 5], torch.float32)
        assert _kernel_attention(q, keys, values, lens) is None
        got = _decode_attention(q, keys, values, _visible(5, positions), lens)
        assert torch.equal(got, python_path(q, keys, values, positions))
    q, keys, values, positions, lens = case(2, 4, 2, 16, [3, 5], torch.float16)
    assert _kernel_attention(q, keys, values, lens) is None
    q, keys, values, positions, lens = case(2, 4, 2, 16, [3, 5], torch.float32)
    assert _kernel_attention(q, keys, values.bfloat16(), lens) is None  # mixed dtypes
    q.requires_grad_(True)
    out = _decode_attention(q, keys, values, _visible(5, positions), lens)
    out.sum().backward()  # autograd: the Python path, which has a backward
    assert q.grad is not None
    monkeypatch.setattr(attention.loader, "state", {"fn": None, "op": None})  # no kernel in this process
    assert _kernel_attention(q.detach(), keys, values, lens) is None


def test_prepare_loads_a_build_or_builds_in_a_child_process(kernel, monkeypatch):
    started = []
    monkeypatch.setattr(build.subprocess, "Popen", lambda args, **kw: started.append((args, kw)) or Popen(["true"]))
    monkeypatch.setattr(attention.loader, "state", {})
    assert build.is_built(attention.NAME, attention.SOURCE)  # the fixture built it
    attention.prepare()
    assert attention.ready() is not None and attention.op() is not None and not started

    # A machine without the build: this process keeps the torch path, a child process builds it.
    monkeypatch.setattr(attention.loader, "state", {})
    with monkeypatch.context() as m:
        m.setattr(build, "record", lambda name, source: None)
        attention.prepare()
        attention.prepare()  # under way: no second build
        assert attention.ready() is None and attention.op() is None
    [(args, kw)] = started
    assert args[1:4] == ["-m", "phi4r.kernels.build", "phi4r.kernels.attention"] and kw["start_new_session"]
    q, keys, values, positions, lens = case(2, 4, 2, 16, [3, 5], torch.float32)
    assert _kernel_attention(q, keys, values, lens) is None
    attention.loader.state["next"] = 0.0  # the next poll finds the child's build (here: the fixture's)
    assert attention.ready() is kernel and attention.op() is not None


def test_an_edited_source_is_a_new_build(tmp_path):
    src = tmp_path / "k.cpp"
    src.write_text("int a;")
    first = build._tagged("x", src)
    src.write_text("int b;")
    assert build._tagged("x", src) != first and not build.is_built("x", src)


def test_the_switch_off(kernel, monkeypatch):
    monkeypatch.setenv("PHI4R_ATTENTION_KERNEL", "0")
    monkeypatch.setattr(attention.loader, "state", {})  # decide again: the environment now turns it off
    assert attention.kernel() is None and attention.op() is None


def test_greedy_tokens_equal_without_the_kernel(kernel, tmp_path, monkeypatch):
    path = make_checkpoint(tmp_path, seed=5, num_attention_heads=8, num_key_value_heads=2, hidden_size=128)
    prompts = ["What is 12 + 7?", "The quick brown fox jumps over the lazy dog.", "abc"]
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)

    def tokens():
        llm = LLM(str(path), max_num_seqs=4, threads=1)
        return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]

    calls = []
    monkeypatch.setattr(model_mod, "_kernel_attention",
                        lambda *a, f=model_mod._kernel_attention: calls.append(1) or f(*a))
    with_kernel = tokens()
    assert calls
    monkeypatch.setattr(attention.loader, "state", {"fn": None, "op": None})
    assert tokens() == with_kernel
