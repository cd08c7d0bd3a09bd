"""The AVX-512 dense (fp32/bf16) linear kernel (phi4r/kernels/dense.py): against F.linear and a float64
reference, its use by phi4r.fastlinear's prepacked linears for few rows, the fallbacks, and end to end.

The first test run on a machine compiles the kernel (about 30 s; cached afterwards in torch's extensions
directory); each test then takes well under a second.
"""
import pytest
import torch
import torch.nn.functional as F

from phi4r import fastlinear
from phi4r.api import LLM
from phi4r.kernels import dense
from phi4r.sampling import SamplingParams
from phi4r.tiny import make_checkpoint
from engine_runs import assert_equal_up_to_near_ties  # tests/engine_runs.py

KERNEL = (dense, dense.linear, "dense")  # the `kernel` fixture (conftest.py) builds and probes it

# N and K: below, at and above the tiles (8/4/2 channels; 16 fp32 / 32 bf16 k values per vector), with tails.
SHAPES = [(45, 83), (64, 1024), (17, 200), (130, 96), (8, 64), (3, 1), (21, 2113), (9, 31)]
DTYPES = pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])


def within_rounding(got, ref, x, w, dtype):
    """|got - ref| within one rounding to `dtype` plus fp32 summation error (K * 2^-23 of the terms' size)."""
    terms = x.double().abs() @ w.double().abs().T
    rounding = 2 ** -8 if dtype == torch.bfloat16 else 2 ** -24  # half an ulp, relative: 8 and 24 bits
    k = x.shape[-1]
    return ((got.double() - ref).abs() <= rounding * ref.abs() + k * 2 ** -23 * terms + 1e-30).all()


@DTYPES
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 9, 11])
def test_kernel_matches_f_linear(kernel, rows, dtype):
    gen = torch.Generator().manual_seed(rows)
    for n, k in SHAPES:
        w = torch.randn(n, k, generator=gen).to(dtype)
        x = torch.randn(rows, k, generator=gen).to(dtype)
        got = kernel(x, w)
        assert got.dtype == dtype and got.shape == (rows, n)
        ref = x.double() @ w.double().T
        assert within_rounding(got, ref, x, w, dtype), (n, k)
        # F.linear (oneDNN) also sums in fp32 and rounds once: the two differ by summation order only.
        assert within_rounding(got, F.linear(x, w).double(), x, w, dtype), (n, k)


@DTYPES
def test_kernel_leading_dims_threads_and_empty(kernel, dtype):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(300, 520, generator=gen).to(dtype)
    x = torch.randn(2, 2, 520, generator=gen).to(dtype)
    one = kernel(x, w)
    assert one.shape == (2, 2, 300) and torch.equal(one.reshape(4, 300), kernel(x.reshape(4, 520), w))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # channels split between threads: the same numbers, bit for bit
        assert torch.equal(kernel(x, w), one)
    finally:
        torch.set_num_threads(threads)
    assert kernel(x[:0], w).shape == (0, 2, 300)
    assert torch.equal(kernel(x[..., :0].contiguous(), w[:, :0].contiguous()), torch.zeros(2, 2, 300, dtype=dtype))


def test_kernel_rejects_bad_input(kernel):
    w = torch.randn(8, 32)
    with pytest.raises(RuntimeError, match="both fp32 or both bf16"):
        kernel(torch.randn(1, 32).to(torch.bfloat16), w)
    with pytest.raises(RuntimeError, match="shapes"):
        kernel(torch.randn(1, 31), w)
    with pytest.raises(RuntimeError, match="contiguous"):
        kernel(torch.randn(1, 32), torch.randn(32, 8).T)


def test_probe_rejects_a_wrong_kernel(kernel):
    assert dense._probe(kernel) is None
    assert "disagrees" in dense._probe(lambda x, w: kernel(x, w) * 1.01)
    assert "raised" in dense._probe(lambda x, w: kernel(x.T, w))


def packed(dtype, n=96, k=200, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(k, n, bias=False)).to(dtype).eval()
    assert fastlinear.prepack(model, batch_hint=4) == 1
    return model[0]


@DTYPES
def test_packed_linear_takes_the_kernel_for_few_rows_only(kernel, dtype, monkeypatch):
    if not fastlinear.available():
        pytest.skip("no oneDNN linear ops in this torch build")
    lin = packed(dtype)
    calls = []
    monkeypatch.setattr(dense, "ready", lambda: lambda *a: calls.append(a[0].shape) or kernel(*a))
    with torch.inference_mode():
        for rows in range(1, fastlinear.DENSE_MAX_ROWS + 3):
            x = torch.randn(1, rows, lin.in_features).to(dtype)
            calls.clear()
            got = lin(x)
            assert bool(calls) == (rows <= fastlinear.DENSE_MAX_ROWS), rows
            assert got.shape == (1, rows, lin.out_features)
            assert within_rounding(got, F.linear(x, lin.weight).double(), x, lin.weight, dtype), rows
            # The op compiled decode steps call: the same choice.
            calls.clear()
            assert torch.equal(torch.ops.phi4r.packed_linear(x, lin.weight, lin._handle), got)
            assert bool(calls) == (rows <= fastlinear.DENSE_MAX_ROWS), rows


@DTYPES
def test_packed_linear_falls_back_to_onednn_without_the_kernel(kernel, dtype, monkeypatch):
    if not fastlinear.available():
        pytest.skip("no oneDNN linear ops in this torch build")
    lin = packed(dtype)
    x = torch.randn(2, lin.in_features).to(dtype)
    monkeypatch.setattr(dense, "ready", lambda: None)  # not built (yet), or not usable here
    with torch.inference_mode():
        got = lin(x)
    onednn = torch.ops.mkldnn._linear_pointwise(x, lin._packed, None, "none", [], "")
    assert torch.equal(got, onednn)
    with torch.no_grad():  # a weight changed in place: F.linear, kernel or not
        monkeypatch.setattr(dense, "ready", lambda: kernel)
        lin.weight.mul_(2)
        assert torch.equal(lin(x), F.linear(x, lin.weight))


def test_switch_turns_the_kernel_off(kernel, monkeypatch):
    monkeypatch.setenv("PHI4R_DENSE_KERNEL", "0")
    monkeypatch.setattr(dense.loader, "state", {})  # decide again: the environment now turns it off
    assert dense.linear() is None and dense.ready() is None


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_greedy_tokens_equal_without_the_kernel(kernel, tmp_path, monkeypatch, dtype):
    if not fastlinear.available():
        pytest.skip("no oneDNN linear ops in this torch build")
    path = make_checkpoint(tmp_path, seed=3, num_attention_heads=4, num_key_value_heads=2)
    prompts = ["What is 12 + 7?", "The quick brown fox jumps over the lazy dog.", "abc"]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    calls = []
    ready = dense.ready
    monkeypatch.setattr(dense, "ready", lambda: calls.append(1) or ready())

    def tokens():
        llm = LLM(str(path), dtype=dtype, max_num_seqs=4, threads=1)
        assert any(isinstance(m, fastlinear.PackedLinear) for m in llm.model.modules())
        return llm, [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]

    _, with_kernel = tokens()
    assert calls and dense.ready() is kernel
    monkeypatch.setenv("PHI4R_DENSE_KERNEL", "0")
    monkeypatch.setattr(dense.loader, "state", {})  # decide again: the environment now turns it off
    llm, without = tokens()
    assert dense.ready() is None
    # Equal, except where the two paths' different summation orders flip a greedy pick between two
    # logits within a rounding of each other (this random model's logits are flat); from there on the
    # sequences differ. Such a flip must be a near-tie.
    assert_equal_up_to_near_ties(llm, prompts, with_kernel, without)
