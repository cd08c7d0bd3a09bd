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
