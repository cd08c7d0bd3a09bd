"""The AVX-512 decode-attention kernel (phi4r/kernels/attention.py): against the torch reference, under
torch.compile, who chooses it (the engine, explicitly) and the fallbacks.

The first test run on a machine compiles the kernel (about 30 s; cached afterwards in torch's
extensions directory).
"""
from subprocess import Popen

import pytest
import torch

from phi4r.api import LLM
from phi4r.config import Phi3Config
from phi4r.kernels import attention, build
from phi4r.model import KVCache, Phi3ForCausalLM
from phi4r.sampling import SamplingParams
from phi4r.tiny import make_checkpoint

KERNEL = (attention, attention.kernel, "attention")  # the `kernel` fixture (conftest.py) builds and probes it
CPU = torch.device("cpu")


def case(B, H, KV, D, lengths, dtype, seed=0, max_len=None):
    """q [B, H, D] as the model slices it from q/k rows, keys/values as views of a cache's slots
    1..B (strided in the batch dim), and lengths."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    span = int(lengths.max())
    max_len = max_len or span + 5
    qk = torch.randn(B, 1, H + KV, D, generator=gen).to(dtype)
    ck = torch.randn(B + 2, KV, max_len, D, generator=gen).to(dtype)
    cv = torch.randn(B + 2, KV, max_len, D, generator=gen).to(dtype)
    return qk[:, 0, :H], ck[1:B + 1, :, :span], cv[1:B + 1, :, :span], lengths


def reference(q, keys, values, lengths):
    """The reference on fp32 copies: the exact maths the kernel is held to."""
    return attention.reference(q.float(), keys.float(), values.float(), lengths, q.shape[-1] ** -0.5)


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
def test_kernel_matches_the_reference(kernel, B, H, KV, D, dtype):
    for i, lengths in enumerate(LENGTHS[B]):
        q, keys, values, lens = case(B, H, KV, D, lengths, dtype, seed=i)
        check(kernel(q, keys, values, lens, D ** -0.5), reference(q, keys, values, lens), values, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_later_tile_raising_the_max_rescales(kernel, dtype):
    # Scores growing with the position (and large): every 16-row tile raises each query's max, far
    # enough that exp of the earlier ones underflows; lengths 1..300 with odd tails.
    B, H, KV, D = 4, 8, 2, 64
    q, keys, values, lens = case(B, H, KV, D, [300, 161, 2, 77], dtype)
    ramp = torch.linspace(0.1, 4, keys.shape[2])[None, None, :, None]
    keys = (keys.float() * ramp + q.float().mean(1)[:, None, None] * ramp * 3).to(dtype)
    check(kernel(q, keys, values, lens, D ** -0.5), reference(q, keys, values, lens), values, dtype)


def test_threads_split_the_items_bit_for_bit(kernel):
    q, keys, values, lens = case(5, 12, 1, 128, [1, 40, 33, 17, 64], torch.bfloat16)
    one = kernel(q, keys, values, lens, 128 ** -0.5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert torch.equal(kernel(q, keys, values, lens, 128 ** -0.5), one)
    finally:
        torch.set_num_threads(threads)


def tiny_model(dtype=torch.float32):
    torch.manual_seed(0)
    config = Phi3Config(vocab_size=40, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return Phi3ForCausalLM(config).to(dtype).eval()


def test_the_model_attends_with_what_it_is_given_and_nothing_else(kernel, monkeypatch):
    model = tiny_model()
    cache = KVCache(model.config, 3, 16)
    ids = torch.randint(0, 40, (3, 9))
    lengths = []
    # Whatever another module prepared in this process (an engine, the fixture), the model without an
    # `attention` argument runs the torch reference.
    monkeypatch.setattr(attention, "ready", lambda: pytest.fail("the model must not look for the kernel"))

    def recorder(*args):
        lengths.append(args[3].tolist())
        return kernel(*args)
    with torch.no_grad():
        model(ids, positions=torch.arange(9).expand(3, 9), cache=cache)
        last, at = ids[:, :1], torch.tensor([[8], [3], [6]])
        ref = model(last, positions=at, cache=cache, slots=torch.tensor([0, 1, 2]))
        got = model(last, positions=at, cache=cache, slots=torch.tensor([0, 1, 2]), attention=recorder)
        assert lengths == [[9, 4, 7]] * 2 and torch.allclose(got, ref, atol=1e-5)
        compiled_step = model.decode(last, at, cache.k, cache.v, 9, attention=recorder)  # slots 0..2, no syncs
    assert lengths[2:] == [[9, 4, 7]] * 2 and torch.allclose(compiled_step, ref[:, -1], atol=1e-5)


def test_the_op_in_a_compiled_decode_graph(kernel):
    model = tiny_model(torch.bfloat16)
    cache = KVCache(model.config, 3, 16, dtype=torch.bfloat16)
    ids, positions = torch.tensor([[5], [7], [1]]), torch.tensor([[4], [9], [2]])
    op = attention.choose(torch.bfloat16, model.config.head_dim, CPU, compiled=True)
    assert op is attention.op() and op is not None
    targets = []

    def record(gm, example_inputs):
        targets.extend(n.target for n in gm.graph.nodes)
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        got = torch.compile(model.decode, backend=record, fullgraph=True)(ids, positions, cache.k, cache.v, 10, op)
        assert op in targets
        assert torch.equal(got, model.decode(ids, positions, cache.k, cache.v, 10, kernel))
        inductor = torch.compile(model.decode, fullgraph=True)(ids, positions, cache.k, cache.v, 10, op)  # shape function
    assert torch.allclose(inductor.float(), got.float(), atol=2e-2)


def test_choose_falls_back_to_the_reference(kernel, monkeypatch):
    assert attention.choose(torch.float32, 64, CPU) is kernel and attention.choose(torch.bfloat16, 16, CPU) is kernel
    for args in ((torch.float32, 24, CPU), (torch.float32, 8, CPU), (torch.float16, 64, CPU),
                 (torch.float32, 64, torch.device("meta"))):  # head dim, dtype, device it lacks
        assert attention.choose(*args) is attention.reference and attention.choose(*args, compiled=True) is attention.reference
    q, keys, values, lens = case(2, 4, 2, 16, [3, 5], torch.float32)
    q.requires_grad_(True)
    attention.reference(q, keys, values, lens, 0.25).sum().backward()  # autograd: the reference has a backward
    assert q.grad is not None
    monkeypatch.setattr(attention.loader, "state", {"fn": None, "op": None})  # no kernel in this process
    assert attention.choose(torch.float32, 64, CPU) is attention.reference


def test_prepare_loads_a_build_or_builds_in_a_child_process(kernel, monkeypatch):
    started, children = [], []

    def fake_builder(args, **kw):  # a child that stays "building" until the test ends
        started.append((args, kw))
        children.append(Popen(["sleep", "600"], start_new_session=True))
        return children[-1]

    monkeypatch.setattr(build.subprocess, "Popen", fake_builder)
    try:
        _prepare_then_build(kernel, monkeypatch, started)
    finally:
        for child in children:
            child.kill()
            child.wait()


def _prepare_then_build(kernel, monkeypatch, started):
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
    assert attention.choose(torch.float32, 16, CPU) is attention.reference
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
    monkeypatch.setattr(attention, "ready", lambda: lambda *a: calls.append(1) or kernel(*a))  # as the engine finds it
    with_kernel = tokens()
    assert calls
    monkeypatch.setattr(attention, "ready", lambda: None)  # a build not ready yet: the engine passes the reference
    assert tokens() == with_kernel
