"""Test helper: run an Engine's requests to completion (imported by the engine tests)."""


def run(engine, prompts, params):
    """Final RequestOutputs (in prompt order) and every delta, by running the engine to completion."""
    params = params if isinstance(params, list) else [params] * len(prompts)
    ids = [engine.add_request(None, engine.tokenizer.encode(p) if isinstance(p, str) else p, sp)
           for p, sp in zip(prompts, params)]
    done, deltas = {}, []
    while engine.has_unfinished():
        for d in engine.step():
            deltas.append(d)
            if d.request is not None:
                done[d.request_id] = d.request
    return [done[i] for i in ids], deltas


def greedy_tokens(engine, prompts, max_tokens: list[int]) -> list[list[int]]:
    """Each prompt's greedy tokens, exactly max_tokens[i] of them (EOS ignored)."""
    from phi4r.sampling import SamplingParams

    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in max_tokens]
    outputs, _ = run(engine, prompts, params)
    return [o.outputs[0].token_ids for o in outputs]


def assert_equal_up_to_near_ties(llm, prompts, ours, theirs, min_equal: int = 2):
    """Greedy token sequences of two numerically different paths of `llm` (ours, theirs) are equal,
    except that a pick may flip where the top two logits are within a rounding of each other (a
    random model's logits are flat); from there on the sequences differ. Such a flip must be a
    near-tie, and at least `min_equal` sequences must be equal throughout."""
    import torch

    for prompt, a, b in zip(prompts, ours, theirs):
        if a == b:
            continue
        i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        ids = llm.tokenizer.encode(prompt) + b[:i]
        with torch.no_grad():
            logits = llm.model(torch.tensor([ids]))[0, -1].float()
        assert logits[b[i]] - logits[a[i]] <= 2 ** -6 * logits.abs().max(), (prompt, i)
    assert sum(a == b for a, b in zip(ours, theirs)) >= min_equal
