"""The nano recipe's SFT data (phi4r.train.nano): taught conversations, copy conversations, and no
overlap with the held-out evaluation and test sets."""
from phi4r.tasks import get_task
from phi4r.train import nano


def test_copy_conversations_repeat_the_prompt_word_for_word():
    convs = nano.copy_conversations({"spatialmap": 4, "calendar": 2}, seed=5)
    assert len(convs) == 6
    for user, assistant in convs:
        assert user["role"] == "user" and user["content"].startswith(nano.COPY_PROMPT)
        text = user["content"][len(nano.COPY_PROMPT):]
        answer = assistant["content"].split("</think>", 1)[1]
        assert answer.strip() == text.strip() and "Answer as" in text  # a whole task prompt


def test_sft_mix_counts_and_held_out_sets():
    mix = {"arithmetic": {1: 6}, "spatialmap": {1: 4, 2: 2}, "copy": {"spatialmap": 4}}
    convs = nano.sft_conversations(0, mix)
    assert len(convs) == 6 + 6 + 4
    copies = [c for c in convs if c[0]["content"].startswith(nano.COPY_PROMPT)]
    assert len(copies) == 4
    held_out = {i.prompt for seed in (nano.EVAL_SEED, nano.TEST_SEED) for level in (1, 2)
                for i in get_task("spatialmap").generate(50, seed, difficulty=level)}
    for user, _ in convs:
        assert user["content"].removeprefix(nano.COPY_PROMPT) not in held_out
    # Every taught conversation is its task's teacher trace, which the task's verifier accepts.
    for inst in nano.instances(mix, nano.SFT_SEED_OFFSET):
        assert get_task(inst.task).score(inst, get_task(inst.task).teacher(inst)) == 1.0
