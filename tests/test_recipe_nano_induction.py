"""The nano recipe's synthetic warm-ups (phi4r.recipes.nano.induction): copy and recall sequences can only be predicted by
copying, an interrupted warm-up resumes to the same model as an uninterrupted one, and the recall
warm-up continues from a given model."""
import json
import shutil

import pytest
import torch

from phi4r.checkpoint import load
from phi4r.recipes.nano import induction


def test_copy_batch_layout():
    gen = torch.Generator().manual_seed(0)
    ids, mask = induction.copy_batch(32, 16, 4, vocab=50, bos=60, sep=61, gen=gen)
    assert ids.shape == (32, 2 * 16 + 3 + 8) and mask.shape == (32, ids.shape[1] - 1)
    lengths, starts = set(), set()
    for row, m in zip(ids, mask):
        assert row[0] == 60 and (row == 61).sum() == 2
        first, second = (row == 61).nonzero().flatten().tolist()
        n = second - first - 1
        lengths.add(n)
        starts.add(first)
        assert 4 <= n <= 16
        assert torch.equal(row[second + 1: second + 1 + n], row[first + 1: first + 1 + n])
        # The loss covers exactly the predictions of the second copy's tokens.
        assert m.nonzero().flatten().tolist() == list(range(second, second + n))
        others = torch.cat([row[1:first], row[second + 1 + n:]])
        assert (others < 50).all()
    assert len(lengths) > 5 and len(starts) > 5  # no fixed length or offset to learn instead of copying


def test_copy_accuracy_reads_only_the_copied_tokens():
    class Oracle(torch.nn.Module):
        """Predicts the true next token everywhere: accuracy 1. Shifted by one: 0."""
        def __init__(self, ids, shift):
            super().__init__()
            self.ids, self.shift = ids, shift

        def forward(self, x):
            nxt = torch.roll(self.ids[:, 1:], self.shift, dims=1)
            return torch.nn.functional.one_hot(nxt, 70).float()

    ids, mask = induction.copy_batch(8, 10, 4, vocab=50, bos=60, sep=61, gen=torch.Generator().manual_seed(1))
    assert induction.copy_accuracy(Oracle(ids, 0), ids, mask, bf16=False) == 1.0
    assert induction.copy_accuracy(Oracle(ids, 1), ids, mask, bf16=False) < 0.2


def tiny_setup(tmp_path) -> dict:
    """A tokenizer with digits and a one-layer model size: the warm-up's common settings, with an
    unreachable target so that it runs max_steps."""
    from phi4r.tokenizer import train_bpe

    tok_dir = tmp_path / "tok"
    train_bpe(["copy 1 2 3 these words - 4 5 6 7 8 9 0 again"] * 20, vocab_size=300, split="fine").save(tok_dir)
    sizes = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
             "intermediate_size": 64, "max_position_embeddings": 128, "tie_word_embeddings": True}
    return dict(tokenizer=str(tok_dir), init_config=sizes, seed=3, per_device_train_batch_size=4, eval_steps=2,
                save_steps=2, bf16=False, target=2.0)


def test_warm_up_writes_a_model_and_resumes(tmp_path):
    common = {**tiny_setup(tmp_path), "max_len": 6, "max_steps": 6, "save_total_limit": None}
    whole = induction.warm_up(induction.InductionConfig(output_dir=str(tmp_path / "a"), **common), log=lambda m: None)
    # Killed after checkpoint-4 (what came later removed), then run again: resumes from checkpoint-4.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for later in ("final", "checkpoint-6", "summary.json"):
        shutil.rmtree(tmp_path / "b" / later) if later != "summary.json" else (tmp_path / "b" / later).unlink()
    resumed = induction.warm_up(induction.InductionConfig(output_dir=str(tmp_path / "b"), **common), log=lambda m: None)
    a, _ = load(whole, dtype="float32")
    b, _ = load(resumed, dtype="float32")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["passed_at"] is None
    steps = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [2, 4, 6] and all("copy_accuracy" in s for s in steps)


def test_warm_up_stops_extra_steps_after_the_target_and_resumes_that_decision(tmp_path):
    """A target of 0 is passed at the first evaluation (step 2): the run ends extra_steps later, not at
    max_steps, also when resumed from a checkpoint between the two."""
    common = {**tiny_setup(tmp_path), "max_len": 6, "max_steps": 20, "target": 0.0, "extra_steps": 3,
              "save_total_limit": None}
    induction.warm_up(induction.InductionConfig(output_dir=str(tmp_path / "a"), **common), log=lambda m: None)
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["passed_at"] == 2 and summary["steps"] == 5
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "final")
    shutil.rmtree(tmp_path / "b" / "checkpoint-5")
    induction.warm_up(induction.InductionConfig(output_dir=str(tmp_path / "b"), **common), log=lambda m: None)
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["steps"] == 5


def test_recall_batch_repeats_each_record_and_masks_only_the_lookups():
    values = [40, 41, 42, 43]  # a vocabulary of 1000 makes a noise token used three times unlikely
    ids, mask = induction.recall_batch(6, 96, 4, vocab=1000, bos=1001, values=values, gen=torch.Generator().manual_seed(2))
    assert ids.shape == (6, 96) and mask.shape == (6, 95)
    for row, m in zip(ids, mask):
        assert row[0] == 1001
        keys = [k for k in row[1:].unique().tolist() if k not in values and (row == k).sum() == 3]
        assert len(keys) == 4
        targets = set(m.nonzero().flatten().tolist())
        expected = set()
        for k in keys:
            at = (row == k).nonzero().flatten().tolist()
            first = row[at[0] + 1: at[0] + 4].tolist()
            assert all(v in values for v in first)
            for a in at[1:]:
                assert row[a + 1: a + 4].tolist() == first  # the same record every time
                expected |= {a, a + 1, a + 2}  # target t predicts ids[t + 1]: the three values
        assert targets == expected  # the first use of a key is never a target
        noise = [t for t in row[1:].tolist() if t not in keys and t not in values]
        assert noise and all(t < 1000 for t in noise)
    with pytest.raises(ValueError, match="need 145 tokens, T is 64"):
        induction.recall_batch(1, 64, 8, vocab=1000, bos=1001, values=values, gen=torch.Generator())


def test_recall_warm_up_continues_from_a_model(tmp_path):
    common = {**tiny_setup(tmp_path), "max_steps": 2}
    copy = induction.warm_up(induction.InductionConfig(output_dir=str(tmp_path / "copy"), max_len=6, **common),
                             log=lambda m: None)
    recall = induction.warm_up(induction.InductionConfig(output_dir=str(tmp_path / "recall"), task="recall",
                                                         model=str(copy), recall_len=64, recall_keys=2,
                                                         **{**common, "init_config": None}),
                               log=lambda m: None)
    a, _ = load(copy, dtype="float32")
    b, _ = load(recall, dtype="float32")
    assert any(not torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    summary = json.loads((tmp_path / "recall" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["config"]["model"] == str(copy)


def test_nano_recipe_runs_the_recall_stage_from_the_warm_up(tmp_path, monkeypatch):
    """`phi4r train nano`'s warmup and recall stages: OUT/warmup, then OUT/recall continuing from it
    with the recipe's RECALL settings (160-token records); a finished stage is not run again."""
    from phi4r.recipes.nano import recipe as nano

    setup = tiny_setup(tmp_path)
    monkeypatch.setattr(nano, "SIZES", {**setup["init_config"], "max_position_embeddings": 256})
    quick = {"max_steps": 2, "per_device_train_batch_size": 2, "eval_steps": 2, "bf16": False}
    warm = nano.stage_induction(tmp_path, 3, setup["tokenizer"], "warmup", max_len=6, **quick)
    recall = nano.stage_induction(tmp_path, 3, setup["tokenizer"], "recall", model=str(warm), **{**nano.RECALL, **quick})
    assert warm == tmp_path / "warmup" / "final" and recall == tmp_path / "recall" / "final"
    config = json.loads((tmp_path / "recall" / "summary.json").read_text())["config"]
    assert config["task"] == "recall" and config["recall_len"] == 160 and config["model"] == str(warm)
    stamp = (recall / "model.safetensors").stat().st_mtime_ns
    assert nano.stage_induction(tmp_path, 3, setup["tokenizer"], "recall", model=str(warm), **nano.RECALL) == recall
    assert (recall / "model.safetensors").stat().st_mtime_ns == stamp
