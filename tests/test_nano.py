"""The shipped nano model (phi4r/assets/nano): a complete Hugging Face directory that transformers
reads with phi4r's logits, and a model that really solves the tasks it was trained on.

The accuracy floors are docs/NANO.md's greedy figures (seed 0 evaluation set) minus a margin, checked
on a different held-out set (seed TEST_SEED, never trained on: training used seeds 1000 to 4500), in
the prompts the model was trained on (the recipe's, `phi4r.recipes.nano.data.prompt`).
"""
import json

import pytest
import torch

from phi4r.checkpoint import NANO_DIR
from phi4r.recipes.nano.evaluation import TEST_SEED

# (task, level) -> (instances, minimum greedy accuracy): docs/NANO.md's greedy figure minus a margin
# for a set this small (seed 0 there, seed 7 here). The card tasks are also held to a floor over both
# levels together (TASK_FLOORS), where 48 instances allow a tighter margin: above chance (spatialmap
# has 4 options, 25%) and above calendar's baselines (docs/NANO.md: at most 21% over levels 1-2).
FLOORS = {
    ("arithmetic", 1): (24, 0.9),
    ("arithmetic", 2): (24, 0.8),
    ("spatialmap", 1): (24, 0.2),
    ("spatialmap", 2): (24, 0.2),
    ("calendar", 1): (24, 0.4),
    ("calendar", 2): (24, 0.2),
}
TASK_FLOORS = {"spatialmap": 0.33, "calendar": 0.45}


def test_files_are_complete():
    config = json.loads((NANO_DIR / "config.json").read_text())
    assert config["architectures"] == ["Phi3ForCausalLM"] and config["model_type"] == "phi3"
    assert config["torch_dtype"] in ("float32", "bfloat16")
    gen = json.loads((NANO_DIR / "generation_config.json").read_text())
    assert (gen["temperature"], gen["top_p"], gen["top_k"], gen["do_sample"]) == (0.8, 0.95, 50, True)
    tok = json.loads((NANO_DIR / "tokenizer_config.json").read_text())
    assert tok["chat_template"] and tok["eos_token"] == "<|im_end|>" and tok["bos_token"] and tok["pad_token"]
    assert (NANO_DIR / "tokenizer.json").is_file()
    size = sum(f.stat().st_size for f in NANO_DIR.iterdir())
    assert size < 50 * 2**20


def test_transformers_loads_it_with_phi4r_logits():
    transformers = pytest.importorskip("transformers")
    from phi4r import load

    theirs = transformers.AutoModelForCausalLM.from_pretrained(NANO_DIR, dtype=torch.float32).eval()
    assert type(theirs).__name__ == "Phi3ForCausalLM"
    hf_tok = transformers.AutoTokenizer.from_pretrained(NANO_DIR)
    model, tokenizer = load(NANO_DIR, dtype="float32")
    messages = [{"role": "user", "content": "Compute 17 + 25."}]
    ids = tokenizer.encode_chat(messages)
    assert hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False) == ids
    x = torch.tensor([ids + tokenizer.encode("<think>\n17 + 25 = 42")])
    with torch.no_grad():
        diff = (model(x) - theirs(x).logits).abs().max().item()
    assert diff < 1e-4


def test_readme_prompt_thinks_and_answers():
    from phi4r import LLM, SamplingParams
    from phi4r.recipes.nano.arithmetic import TraceError, check_trace

    # The README's first command: `phi4r chat --temperature 0 "What is 67 + 81?"`, answered column by column.
    question = "What is 67 + 81?"
    out = LLM().chat([{"role": "user", "content": question}],
                     SamplingParams(temperature=0, max_tokens=256), use_tqdm=False)[0].outputs[0]
    assert out.reasoning and "7 + 1 + 0 = 8, carry 0." in out.reasoning and "6 + 8 + 0 = 14, carry 1." in out.reasoning
    assert "Final Answer: 148" in out.content
    try:  # every column step right
        check_trace(question, out.text, ["+", 67, 81])
    except TraceError as e:
        pytest.fail(f"the README's trace has a wrong step: {e}")


# Column arithmetic (docs/NANO.md "Multi-digit arithmetic"): greedy, the recipe's development seed 101
# (never trained on), 20 problems per category: docs/NANO.md's held-out greedy figures minus a margin.
COLUMN_FLOORS = {"add_sub_2": 0.85, "add_sub_3": 0.75, "mul_2x1": 0.85,
                 "plain_add_sub_2": 0.85, "plain_add_sub_3": 0.75, "plain_mul_2x1": 0.85}


def test_column_arithmetic_on_unseen_problems():
    from phi4r import LLM, SamplingParams
    from phi4r.recipes.nano import arith_eval
    from phi4r.tasks import get_task

    insts = arith_eval.instances(arith_eval.DEV_SEEDS[0], 20, tuple(COLUMN_FLOORS))
    outs = LLM(max_num_seqs=64).chat([[{"role": "user", "content": i.prompt}] for i in insts],
                                     SamplingParams(temperature=0, max_tokens=arith_eval.MAX_TOKENS), use_tqdm=False)
    task, right = get_task("arithmetic"), {}
    for inst, out in zip(insts, outs):
        right.setdefault(inst.category, []).append(task.score(inst, out.outputs[0].text))
    accuracy = {c: sum(v) / len(v) for c, v in right.items()}
    for category, floor in COLUMN_FLOORS.items():
        assert accuracy[category] >= floor, (category, accuracy)


def test_greedy_accuracy_on_held_out_instances():
    from phi4r import LLM, SamplingParams
    from phi4r.recipes.nano.data import prompt
    from phi4r.tasks import get_task

    llm = LLM(max_num_seqs=64)
    sizes = {key: n for key, (n, _) in FLOORS.items()}
    instances = [i for (name, level), n in sizes.items() for i in get_task(name).generate(n, TEST_SEED, difficulty=level)]
    outputs = llm.chat([[{"role": "user", "content": prompt(i)}] for i in instances],
                       SamplingParams(temperature=0, max_tokens=768), use_tqdm=False)
    scores: dict[tuple, list[float]] = {}
    answered: dict[str, list[bool]] = {}
    for inst, out in zip(instances, outputs):
        task, text = get_task(inst.task), out.outputs[0].text
        scores.setdefault((inst.task, inst.difficulty), []).append(task.score(inst, text))
        answered.setdefault(inst.task, []).append(text.startswith("<think>") and text.count("</think>") == 1
                                                  and task.extract(text) is not None)
    accuracy = {key: sum(s) / len(s) for key, s in scores.items()}
    for key, (_, floor) in FLOORS.items():
        assert accuracy[key] >= floor, (key, accuracy)
    for name, floor in TASK_FLOORS.items():
        pooled = [s for (task, _), level_scores in scores.items() if task == name for s in level_scores]
        assert sum(pooled) / len(pooled) >= floor, (name, accuracy)
    for task, flags in answered.items():  # a think block, then an answer the verifier can read
        assert sum(flags) / len(flags) >= 0.9, (task, sum(flags) / len(flags))


def test_probe_finds_the_names_copied_in_its_traces():
    """The recipe's probe, teacher-forced on the shipped model: the names its traces copy out of the
    prompt and the records are read, not guessed (a guess among 16 names costs 2.8 nats)."""
    from phi4r import load
    from phi4r.recipes.nano.probes import probe

    model, tok = load(NANO_DIR, dtype="float32")
    result = probe(model, tok, "spatialmap", level=1, n=3, seed=TEST_SEED)
    loss, accuracy, count = result["names"]
    assert count > 50 and accuracy >= 0.9 and loss < 0.5
    assert 0.0 < result["first_error"] <= 1.0 and result["lines"] > 0.5
