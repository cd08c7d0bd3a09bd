"""SamplingParams defaults and validation, the batched sampler, and seeded reproducibility."""
import pytest
import torch

from phi4r.api import LLM
from phi4r.sampling import SamplingParams, sample
from phi4r.tiny import make_checkpoint

PHI4_GC = {"do_sample": True, "temperature": 0.8, "top_p": 0.95, "top_k": 50}


def test_unset_fields_take_generation_config_then_neutral_defaults():
    p = SamplingParams(top_p=0.5).resolved(PHI4_GC)
    assert (p.temperature, p.top_p, p.top_k, p.min_p) == (0.8, 0.5, 50, 0.0)
    assert SamplingParams(temperature=0).resolved(PHI4_GC).greedy
    assert SamplingParams().resolved({"do_sample": False}).greedy  # transformers' greedy default
    p = SamplingParams().resolved(None)
    assert (p.temperature, p.top_p, p.top_k, p.min_p) == (1.0, 1.0, 0, 0.0)
    assert SamplingParams(stop="x").stop == ["x"]


@pytest.mark.parametrize("bad", [dict(n=0), dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-2),
                                 dict(min_p=2), dict(max_tokens=0), dict(thinking_budget=-1),
                                 dict(temperature=float("nan")), dict(temperature=float("inf")),
                                 dict(top_p=float("nan")), dict(min_p=float("-inf")), dict(top_p="0.5"),
                                 dict(n=2**64), dict(seed=-2**64), dict(top_k=2**63), dict(max_tokens=1.5),
                                 dict(thinking_budget=True), dict(stop_token_ids=[1, 2**70]), dict(stop=["a", 3]),
                                 dict(loop_guard="yes")])
def test_invalid_params_are_refused_naming_the_field(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        SamplingParams(**bad)


def _params(**kw):
    return SamplingParams(**kw).resolved(None)


def test_sampler_follows_the_distribution_and_truncations():
    torch.manual_seed(0)
    logits = torch.randn(1, 40) * 2
    probs = logits.softmax(-1)[0]
    # Evenly spaced uniforms are exact quantiles: each token's share equals its probability to 1/N.
    N = 4000
    us = [(i + 0.5) / N for i in range(N)]
    got = sample(logits.expand(N, -1), [_params(temperature=1.0)] * N, us)
    freq = torch.bincount(torch.tensor(got), minlength=40).float() / N
    assert (freq - probs).abs().max() < 2 / N
    top2 = probs.topk(2).indices.tolist()
    got = sample(logits.expand(N, -1), [_params(temperature=1.0, top_k=2)] * N, us)
    assert set(got) == set(top2)
    share = got.count(top2[0]) / N
    assert abs(share - probs[top2[0]] / probs[top2].sum()) < 2 / N
    # top_p below the largest probability, or min_p = 1, leaves only the argmax.
    best = int(probs.argmax())
    assert set(sample(logits.expand(50, -1), [_params(top_p=probs.max().item() * 0.9)] * 50, us[::80])) == {best}
    assert set(sample(logits.expand(50, -1), [_params(min_p=1.0)] * 50, us[::80])) == {best}


@pytest.mark.parametrize("kw", [dict(temperature=0.7, top_k=12), dict(temperature=1.3, top_p=0.8),
                                dict(temperature=0.8, top_k=20, top_p=0.9), dict(temperature=1.0, min_p=0.05),
                                dict(temperature=0.6, top_k=15, top_p=0.85, min_p=0.1)])
def test_kept_tokens_and_their_shares_match_transformers_warpers(kw):
    lp = pytest.importorskip("transformers.generation.logits_process")
    torch.manual_seed(len(kw))
    logits = torch.randn(1, 30) * 1.5
    warpers = [lp.TemperatureLogitsWarper(kw["temperature"])]
    warpers += [lp.TopKLogitsWarper(kw["top_k"])] if "top_k" in kw else []
    warpers += [lp.TopPLogitsWarper(kw["top_p"])] if "top_p" in kw else []
    warpers += [lp.MinPLogitsWarper(kw["min_p"])] if "min_p" in kw else []
    scores = logits.clone()
    for w in warpers:
        scores = w(None, scores)
    expected = scores.softmax(-1)[0]
    N = 20000
    got = sample(logits.expand(N, -1), [_params(**kw)] * N, [(i + 0.5) / N for i in range(N)])
    share = torch.bincount(torch.tensor(got), minlength=30).float() / N
    assert set(got) == set(expected.nonzero()[:, 0].tolist())
    assert (share - expected).abs().max() < 2 / N


def test_rows_are_processed_with_their_own_parameters():
    torch.manual_seed(1)
    logits = torch.randn(3, 100)
    rows = [_params(temperature=0), _params(top_k=1), _params(temperature=5.0)]
    alone = [sample(logits[i:i + 1], [rows[i]], [0.7])[0] for i in range(3)]
    assert sample(logits, rows, [0.7, 0.7, 0.7]) == alone
    assert alone[:2] == logits[:2].argmax(-1).tolist()


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    return LLM(str(make_checkpoint(tmp_path_factory.mktemp("ck"), seed=3)), max_num_seqs=4)


def _tokens(llm, prompts, params):
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]


def test_seeded_requests_are_reproducible_and_seeds_matter(llm):
    p = SamplingParams(temperature=1.0, top_k=0, seed=7, max_tokens=24, ignore_eos=True)
    first = _tokens(llm, "The quick brown fox", p)
    assert _tokens(llm, "The quick brown fox", p) == first
    other = _tokens(llm, "The quick brown fox", SamplingParams(temperature=1.0, top_k=0, seed=8, max_tokens=24,
                                                                ignore_eos=True))
    assert other != first


def test_seeded_request_alone_equals_batched_with_others(llm):
    """Documented in phi4r/sampling.py: each sample draws from its own stream, so a seeded request's
    tokens do not depend on its batch, except where batched logits (~1e-5 off) flip a token."""
    p = SamplingParams(temperature=1.0, seed=11, max_tokens=20, ignore_eos=True)
    alone = _tokens(llm, "What is 12 + 7?", p)[0]
    noise = [SamplingParams(temperature=1.0, max_tokens=n, ignore_eos=True) for n in (5, 30, 9)]
    batched = llm.generate(["abc", "What is 12 + 7?", "def add(a, b):", "Monday 09:00"],
                           [noise[0], p, noise[1], noise[2]], use_tqdm=False)
    assert batched[1].outputs[0].token_ids == alone


def test_unseeded_requests_follow_the_llm_seed(tmp_path):
    path = str(make_checkpoint(tmp_path, seed=4))
    p = SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True)
    a = _tokens(LLM(path, seed=5), ["x", "y"], p)
    assert _tokens(LLM(path, seed=5), ["x", "y"], p) == a
    assert _tokens(LLM(path, seed=6), ["x", "y"], p) != a


def test_a_uniform_that_rounds_to_one_still_picks_a_kept_token():
    logits = torch.tensor([[0.0, 5.0, -1e9, 4.0, -1e9]])  # the last token has no mass
    for p in (_params(temperature=1.0), _params(temperature=1.0, top_k=2), _params(temperature=1.0, min_p=0.5)):
        assert sample(logits, [p], [1 - 2 ** -30])[0] in (1, 3)


@pytest.mark.parametrize("kw", [dict(top_p=1e-300), dict(top_p=1e-300, top_k=3), dict(top_p=1e-9, min_p=0.5),
                                dict(temperature=1e-300), dict(temperature=1e-6, top_k=2)])
def test_a_tiny_top_p_or_temperature_keeps_only_the_most_likely_token(kw):
    torch.manual_seed(1)
    logits = torch.randn(3, 300) * 3
    best = logits.argmax(-1).tolist()
    params = _params(**{"temperature": 1.0, **kw})
    for u in (0.0, 0.5, 1 - 2 ** -30):
        assert sample(logits, [params] * 3, [u] * 3) == best


def test_non_finite_logits_are_an_error_not_a_token():
    logits = torch.zeros(2, 10)
    logits[1, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        sample(logits, [_params(temperature=0)] * 2, [0.5, 0.5])


def test_positive_infinite_logits_are_an_error_negative_ones_are_not():
    logits = torch.zeros(2, 10)
    logits[0, 3] = float("-inf")  # a masked token
    logits[1, 2] = 1.0
    assert sample(logits, [_params(temperature=0)] * 2, [0.5, 0.5]) == [0, 2]
    logits[1, 4] = float("inf")
    with pytest.raises(ValueError, match=r"\+inf"):
        sample(logits, [_params(temperature=0)] * 2, [0.5, 0.5])
    for dtype in (torch.bfloat16, torch.float16):
        with pytest.raises(ValueError, match="NaN"):
            sample(torch.full((1, 5), float("nan"), dtype=dtype), [_params(temperature=0)], [0.5])


@pytest.mark.parametrize("kernel", [True, False])
def test_bf16_logits_give_the_tokens_of_their_fp32_copy(kernel, monkeypatch):
    """The engine hands over logits in the model's dtype: greedy rows (decode_ops.argmax, or torch's)
    and sampled rows pick what the exact fp32 copy picks, ties included."""
    from phi4r.kernels import decode_ops

    if not kernel:
        monkeypatch.setattr(decode_ops, "ops", lambda: None)
    elif decode_ops.get() is None:
        pytest.skip("no decode ops kernel on this machine")
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(4, 100352, generator=gen) * 3).bfloat16()
    logits[1, [70, 5000, 99999]] = 30  # a tie: the first wins
    greedy = [_params(temperature=0)] * 4
    assert sample(logits, greedy, [0.0] * 4) == sample(logits.float(), greedy, [0.0] * 4) == logits.float().argmax(-1).tolist()
    assert sample(logits, greedy, [0.0] * 4)[1] == 70
    mixed = [_params(temperature=0), _params(temperature=0.8, top_k=50), _params(temperature=1.0, top_p=0.9),
             _params(temperature=0.7, min_p=0.1)]
    for u in (0.1, 0.5, 0.97):
        assert sample(logits, mixed, [u] * 4) == sample(logits.float(), mixed, [u] * 4)
