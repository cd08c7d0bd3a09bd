"""int4 weight-only quantization (phi4r.quant_int4) and its AVX-512 kernel (phi4r/kernels/int4_linear.cpp):
the packed layout against compressed-tensors' definition, the kernel against the float reference, the
compressed tensors' round trip, and the nano model still answering in int4.

The first test run on a machine compiles the kernel (cached afterwards in torch's extensions directory).
"""
import pytest
import torch

from phi4r.api import LLM
from phi4r.kernels import int4
from phi4r.quant_int4 import Int4Linear, quantize_int4, to_compressed
from phi4r.sampling import SamplingParams

KERNEL = (int4, int4.linear, "int4")  # the `kernel` fixture (conftest.py) builds and probes it


def ct_pack(q: torch.Tensor) -> torch.Tensor:
    """compressed-tensors' pack_to_int32(q, 4) (packed_dim=1), written from its definition: q + 8 as
    uint8, padded to a multiple of 8 columns, value i of each 8 shifted by 4i and summed in int32."""
    u = torch.nn.functional.pad((q.to(torch.int16) + 8).to(torch.uint8), (0, -q.shape[1] % 8))
    shifts = torch.arange(8, dtype=torch.int32) * 4
    return (u.view(q.shape[0], -1, 8).to(torch.int32) << shifts).sum(dim=2, dtype=torch.int32)


def test_pack_is_compressed_tensors_layout_and_unpack_inverts_it():
    gen = torch.Generator().manual_seed(0)
    for rows, cols in ((5, 16), (3, 37), (9, 8)):
        q = torch.randint(-8, 8, (rows, cols), generator=gen, dtype=torch.int8)
        assert torch.equal(int4.pack(q), ct_pack(q))
        assert torch.equal(int4.unpack(int4.pack(q), cols), q)
        assert torch.equal(int4.pack(q, dim=0), ct_pack(q.T.contiguous()).T)  # zero points: along dim 0
        assert torch.equal(int4.unpack(int4.pack(q, dim=0), rows, dim=0), q)
    assert int4.pack(torch.tensor([[7, -8, 0, 1, -1, 2, 3, -3]], dtype=torch.int8)).item() == 0x5BA7980F  # q + 8 = F 0 8 9 7 A B 5, value 0 lowest


# N and K: below and above the tiles (8/2 channels, 128 k per block), a partial last block, ragged last groups.
SHAPES = [(45, 200), (64, 1024), (17, 328), (3, 8), (130, 776), (9, 2056)]


@pytest.mark.parametrize("group", [32, 64, 128, 256])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 33])
def test_kernel_matches_reference(kernel, rows, dtype, group):
    gen = torch.Generator().manual_seed(rows * group)
    for n, k in SHAPES:
        q = torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8)
        scales = (torch.rand(n, -(-k // group), generator=gen) / 16 + 1e-4).to(torch.bfloat16)
        x = torch.randn(rows, k, generator=gen).to(dtype)
        w = int4.dequantize(int4.pack(q), scales, k, group, dtype=torch.float64)
        ref = x.double() @ w.T
        for s in (scales, scales.float()):
            got = kernel(x, int4.pack(q), s, group)
            assert got.dtype == dtype and got.shape == (rows, n)
            # fp32 sums: bf16 x carries a bias of 136 per weight (the kernel's unpacking), ~2^-24 of
            # 144 * sum |x| per block; then one rounding to the output dtype.
            terms = x.double().abs() @ (w.abs() + 144 * scales.double().repeat_interleave(group, 1)[:, :k]).T
            rounding = 2 ** -8 if dtype == torch.bfloat16 else 2 ** -24
            assert ((got.double() - ref).abs() <= rounding * ref.abs() + 2 ** -19 * terms + 1e-30).all(), (n, k)


def test_activation_quantization_is_per_128_block_and_half_even():
    x = torch.zeros(2, 300)
    x[0, :128] = torch.linspace(-2, 2, 128)
    x[0, 5] = 2 * 2.5 / 127  # exactly 2.5 steps: half to even gives 2
    x[0, 128:256] = 1e-3  # a block of its own scale
    xq, scales = int4.quantize_activations(x)
    assert xq.dtype == torch.int8 and xq.shape == (2, 300) and scales.shape == (2, 3)
    assert scales[0, 0] == torch.tensor(2.0) / 127 and xq[0, 127] == 127 and xq[0, 0] == -127 and xq[0, 5] == 2
    assert (xq[0, 128:256] == 127).all() and scales[0, 1] == torch.tensor(1e-3) / 127
    assert (xq[0, 256:] == 0).all() and (scales[0, 2] == 0) and (xq[1] == 0).all() and (scales[1] == 0).all()


@pytest.mark.parametrize("group", [32, 64, 128, 256])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("rows", [1, 3, 8, 33])
def test_kernel_with_int8_activations(kernel, rows, dtype, group):
    gen = torch.Generator().manual_seed(rows * group + 1)
    for n, k in SHAPES:
        q = torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8)
        scales = (torch.rand(n, -(-k // group), generator=gen) / 16 + 1e-4).to(torch.bfloat16)
        x = (torch.randn(rows, k, generator=gen) * torch.rand(rows, 1, generator=gen) * 4).to(dtype)
        got = kernel(x, int4.pack(q), scales, group, True)
        assert got.dtype == dtype and got.shape == (rows, n)
        ref = int4.a8_reference(x, int4.pack(q), scales, k, group)
        # The integer dot products are exact; fp32 scaling and sums add ~2^-22 of the terms' magnitudes.
        xq, xs = int4.quantize_activations(x)
        w = int4.dequantize(int4.pack(q), scales, k, group, dtype=torch.float64)
        terms = (xq.double().abs() * xs.double().repeat_interleave(int4.ACTIVATION_BLOCK, 1)[:, :k]) @ w.abs().T
        rounding = 2 ** -8 if dtype == torch.bfloat16 else 2 ** -24
        assert ((got.double() - ref).abs() <= rounding * ref.abs() + 2 ** -20 * terms + 1e-30).all(), (n, k)
        # ... and against the exact product, within what rounding x to its block's int8 steps can change:
        # half a step (the block's scale) times the weights' magnitudes.
        exact = x.double() @ w.T
        bound = (xs.double().repeat_interleave(int4.ACTIVATION_BLOCK, 1)[:, :k] / 2) @ w.abs().T
        assert ((got.double() - exact).abs() <= bound * (1 + 2 ** -10) + rounding * exact.abs() + 2 ** -20 * terms).all()


def test_kernel_threads_and_empty(kernel):
    gen = torch.Generator().manual_seed(1)
    q = torch.randint(-8, 8, (300, 512), generator=gen, dtype=torch.int8)
    scales = torch.rand(300, 4, generator=gen).to(torch.bfloat16)
    x = torch.randn(3, 512, generator=gen).to(torch.bfloat16)
    one, a8 = kernel(x, int4.pack(q), scales, 128), kernel(x, int4.pack(q), scales, 128, True)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # channels split between threads: the same numbers, bit for bit
        assert torch.equal(kernel(x, int4.pack(q), scales, 128), one)
        assert torch.equal(kernel(x, int4.pack(q), scales, 128, True), a8)
    finally:
        torch.set_num_threads(threads)
    assert kernel(x[:0], int4.pack(q), scales, 128).shape == (0, 300)
    with pytest.raises(RuntimeError, match="group size"):
        kernel(x, int4.pack(q), scales, 96)


@pytest.mark.parametrize("symmetric", [True, False])
def test_quantization_error_is_within_half_a_step(symmetric):
    torch.manual_seed(0)
    w = torch.randn(40, 300) * torch.rand(40, 1)
    lin = Int4Linear(w, group_size=64, symmetric=symmetric)
    steps = lin.weight_scale.float().repeat_interleave(64, 1)[:, :300]
    err = (lin.dequantize() - w).abs()
    zeros = 0 if symmetric else lin.weight_zero_point.float().repeat_interleave(64, 1)[:, :300]
    inside = (w >= (-8.5 - zeros) * steps) & (w <= (7.5 - zeros) * steps)  # within the grid (+ half a step)
    assert (err[inside] <= 0.5001 * steps[inside] + 1e-6).all()
    # Outside: symmetric, a positive value as large as the negative extreme (which sets the scale: -8
    # steps) is clamped to 7 steps (llama.cpp's q4_0 makes the same trade); asymmetric, the rounded zero point.
    assert (err <= 1.0001 * steps + 1e-6).all() and inside.float().mean() > 0.99
    q = int4.unpack(lin.weight_packed, 300)
    assert q.min() == -8 and q.max() == 7  # the whole range is used
    if symmetric:  # each group's extreme value is exact
        g = w.view(40, -1)[:, :256].unflatten(1, (4, 64))
        ext = g.gather(-1, g.abs().argmax(-1, keepdim=True)).squeeze(-1)
        deq = lin.dequantize()[:, :256].unflatten(1, (4, 64)).gather(-1, g.abs().argmax(-1, keepdim=True)).squeeze(-1)
        assert ((deq - ext).abs() <= 2 ** -8 * ext.abs() * 8).all()  # up to the bf16 rounding of the scale


@pytest.mark.parametrize("symmetric", [True, False])
def test_compressed_round_trip_is_exact(symmetric):
    torch.manual_seed(0)
    lin = Int4Linear(torch.randn(24, 200), group_size=32, symmetric=symmetric)
    tensors = to_compressed(lin)
    assert tensors["weight_packed"].dtype == torch.int32 and tensors["weight_packed"].shape == (24, 25)
    assert tensors["weight_scale"].shape == (24, 7) and tensors["weight_shape"].tolist() == [24, 200]
    assert ("weight_zero_point" in tensors) == (not symmetric)
    if not symmetric:
        assert tensors["weight_zero_point"].shape == (3, 7)  # packed along the output dimension
    back = Int4Linear.from_compressed(tensors, 32, symmetric=symmetric)
    for name in ("weight_packed", "weight_scale", "weight_zero_point"):
        a, b = getattr(lin, name), getattr(back, name)
        assert (a is None and b is None) or torch.equal(a, b)
    again = to_compressed(back)
    assert tensors.keys() == again.keys() and all(torch.equal(tensors[k], again[k]) for k in tensors)
    x = torch.randn(2, 200).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(lin(x), back(x))


def test_from_compressed_rejects_bad_tensors_clearly():
    lin = Int4Linear(torch.randn(16, 64), group_size=32)
    good = to_compressed(lin)
    with pytest.raises(ValueError, match="lack weight_scale"):
        Int4Linear.from_compressed({k: v for k, v in good.items() if k != "weight_scale"}, 32)
    with pytest.raises(ValueError, match="weight_scale must be"):
        Int4Linear.from_compressed(good, 16)
    with pytest.raises(ValueError, match="weight_packed must be int32"):
        Int4Linear.from_compressed({**good, "weight_packed": good["weight_packed"].to(torch.int64)}, 32)
    with pytest.raises(ValueError, match="lack weight_zero_point"):
        Int4Linear.from_compressed(good, 32, symmetric=False)
    with pytest.raises(ValueError, match="activation order"):
        Int4Linear.from_compressed({**good, "weight_g_idx": torch.randperm(64) // 32}, 32)
    trivial = Int4Linear.from_compressed({**good, "weight_g_idx": torch.arange(64, dtype=torch.int32) // 32}, 32)
    assert torch.equal(trivial.weight_packed, lin.weight_packed)
    # fp16 scales (fp16 checkpoints) are kept exactly, as fp32
    half = Int4Linear.from_compressed({**good, "weight_scale": good["weight_scale"].half()}, 32)
    assert half.weight_scale.dtype == torch.float32
    # one group per row (the "channel" strategy)
    chan = Int4Linear.from_compressed({**good, "weight_scale": good["weight_scale"][:, :1]}, None)
    assert chan.group_size == 64


@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_linear_kernel_path_agrees_with_the_torch_path(kernel, monkeypatch, symmetric):
    torch.manual_seed(0)
    lin = Int4Linear(torch.randn(96, 384), group_size=128, symmetric=symmetric)
    x = torch.randn(2, 3, 384).to(torch.bfloat16)
    calls = []
    monkeypatch.setattr(int4, "ready", lambda: lambda *a: calls.append(1) or kernel(*a))
    with torch.no_grad():
        got = lin(x)
    assert calls and got.shape == (2, 3, 96) and got.dtype == torch.bfloat16
    monkeypatch.setattr(int4, "ready", lambda: None)
    with torch.no_grad():
        fallback = lin(x)
    ref = x.double() @ lin.dequantize(torch.float64).T
    for y in (got, fallback):
        assert (y.double() - ref).abs().max() <= 2 ** -6 * ref.abs().max()


def test_quantize_int4_replaces_linears_except_excluded():
    net = torch.nn.Sequential(torch.nn.Linear(64, 32, bias=False), torch.nn.ReLU(), torch.nn.Linear(32, 8, bias=False))
    quantize_int4(net, group_size=32, exclude=("2",))
    assert isinstance(net[0], Int4Linear) and isinstance(net[2], torch.nn.Linear) and net[0].group_size == 32


@pytest.fixture(scope="module")
def nano_int4(kernel):
    return LLM("nano", quantization="int4")


def test_nano_answers_its_arithmetic_in_int4(nano_int4):
    from phi4r.recipes.nano.data import prompt
    from phi4r.tasks import get_task

    assert any(isinstance(m, Int4Linear) for m in nano_int4.model.modules())
    out = nano_int4.chat([{"role": "user", "content": "What is 7 + 5?"}], SamplingParams(temperature=0, max_tokens=64),
                         use_tqdm=False)[0].outputs[0]
    assert "7 + 5 = 12" in out.reasoning and "Final Answer: 12" in out.content
    task = get_task("arithmetic")
    instances = task.generate(12, 12345, difficulty=1)
    outs = nano_int4.chat([[{"role": "user", "content": prompt(i)}] for i in instances],
                          SamplingParams(temperature=0, max_tokens=256), use_tqdm=False)
    # fp32 and bf16 answer all 20 of this seed's first instances; int4 did too when measured.
    assert sum(task.score(i, o.outputs[0].text) for i, o in zip(instances, outs)) >= 10


def test_nano_int4_logits_close_to_fp32(nano_int4):
    ref = LLM("nano", dtype="float32")
    ids = torch.tensor([ref.tokenizer.encode("<think>\n17 + 25 = 42\n</think>\nFinal Answer: 42 and 7 + 5 = 12")])
    with torch.no_grad():
        a, b = ref.model(ids)[0].float(), nano_int4.model(ids)[0].float()
    cos = torch.nn.functional.cosine_similarity(a, b)  # per position; measured mean 0.987 (bf16: 0.99994)
    assert cos.mean() > 0.97 and cos.min() > 0.9, cos
