"""The AVX-512 int8 linear kernel (phi4r/kernels): against the float reference, and end to end.

The first test run on a machine compiles the kernel (about 30 s with gcc 12; cached afterwards in
torch's extensions directory); each test then takes well under a second.
"""
import pytest
import torch

from phi4r.api import LLM
from phi4r.kernels import int8
from phi4r.quant import Int8Linear
from phi4r.sampling import SamplingParams
from phi4r.tiny import make_checkpoint
from engine_runs import assert_equal_up_to_near_ties  # tests/engine_runs.py


KERNEL = (int8, int8.linear, "int8")  # the `kernel` fixture (conftest.py) builds and probes it


def reference(x, q, scales):
    return x.double() @ (q.double() * scales.double()[:, None]).T


# N and K: below, at and above the kernel's tiles (8/4/2 channels, 16/64 k values), with tails; K
# above 2048 takes the many-row path without the converted-weight buffer.
SHAPES = [(45, 83), (64, 1024), (17, 200), (130, 96), (8, 64), (3, 1), (21, 2113)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("rows", [1, 2, 3, 7, 8, 9, 16, 33, 64])
def test_kernel_matches_reference(kernel, rows, dtype):
    gen = torch.Generator().manual_seed(rows)
    for n, k in SHAPES:
        q = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
        scales = (torch.rand(n, generator=gen) / 64 + 1e-4).to(torch.bfloat16)
        x = torch.randn(rows, k, generator=gen).to(dtype)
        got = kernel(x, q, scales)
        ref = reference(x, q, scales)
        assert got.dtype == dtype and got.shape == (rows, n)
        # fp32 sums (error ~ K * 2^-24 of the terms' size), then one rounding to the output dtype.
        terms = x.double().abs() @ (q.double().abs() * scales.double()[:, None]).T
        rounding = 2 ** -8 if dtype == torch.bfloat16 else 2 ** -24  # half an ulp, relative: 8 and 24 bits
        assert ((got.double() - ref).abs() <= rounding * ref.abs() + k * 2 ** -23 * terms + 1e-30).all(), (n, k)


def test_kernel_scales_dtypes_and_threads(kernel):
    gen = torch.Generator().manual_seed(0)
    q = torch.randint(-127, 128, (300, 520), generator=gen, dtype=torch.int8)
    scales = torch.rand(300, generator=gen) / 64
    x = torch.randn(5, 520, generator=gen).to(torch.bfloat16)
    one = kernel(x, q, scales)  # fp32 scales
    assert torch.equal(kernel(x, q, scales.to(torch.bfloat16)).float(),
                       kernel(x, q, scales.to(torch.bfloat16).float()).float())
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # channels split between threads: the same numbers, bit for bit
        assert torch.equal(kernel(x, q, scales), one)
    finally:
        torch.set_num_threads(threads)
    assert kernel(x[:0], q, scales).shape == (0, 300)


def test_int8_linear_uses_the_kernel_and_agrees_with_the_torch_path(kernel, monkeypatch):
    torch.manual_seed(0)
    lin = torch.nn.Linear(200, 96, bias=False)
    q = Int8Linear(lin.weight, kernel=True)
    x = torch.randn(2, 3, 200).to(torch.bfloat16)
    calls = []
    monkeypatch.setattr(int8, "ready", lambda: lambda *a: calls.append(1) or kernel(*a))
    with torch.no_grad():
        got = q(x)
        assert calls and got.shape == (2, 3, 96) and got.dtype == torch.bfloat16
        calls.clear()
        plain = Int8Linear(lin.weight)(x)  # kernel=False (the default): the torch path, kernel loaded or not
        assert not calls
        monkeypatch.setattr(int8, "ready", lambda: None)  # kernel=True but its build is not ready: the torch path
        fallback = q(x)
    assert torch.equal(plain, fallback)
    # The torch path rounds to bf16 twice (GEMM result, then times the scale); the kernel once.
    assert (got.float() - fallback.float()).abs().max() <= 2 ** -6 * fallback.float().abs().max()


def test_greedy_tokens_equal_the_torch_path(kernel, tmp_path, monkeypatch):
    path = make_checkpoint(tmp_path, seed=3, num_attention_heads=4, num_key_value_heads=2)
    prompts = ["What is 12 + 7?", "The quick brown fox jumps over the lazy dog.", "abc"]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)

    def tokens():
        llm = LLM(str(path), quantization="int8", max_num_seqs=4, threads=1)
        return llm, [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]

    _, with_kernel = tokens()
    monkeypatch.setenv("PHI4R_INT8_KERNEL", "0")
    monkeypatch.setattr(int8.loader, "state", {})  # decide again: the environment now turns it off
    assert int8.linear() is None
    llm, without = tokens()
    # Equal, except that the two paths round differently (the torch path twice), so a greedy pick may
    # flip where this random model's top two bf16 logits are within a rounding of each other; from
    # there on the sequences differ. Such a flip must be a near-tie.
    assert_equal_up_to_near_ties(llm, prompts, with_kernel, without)
