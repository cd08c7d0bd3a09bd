"""LoRA: adapters trained by phi4r load in PEFT on transformers' model (and PEFT's load in phi4r) with
the same logits, merge-lora writes W + scaling * B @ A, the engine samples through unmerged adapters,
GRPO's reference is the base with adapters off, and a killed LoRA run resumes exactly."""
import json
import shutil

import peft
import pytest
import torch
import transformers
from safetensors import safe_open

from phi4r import lora
from phi4r.api import LLM
from phi4r.checkpoint import CheckpointError, load
from phi4r.cli import main
from phi4r.sampling import SamplingParams
from phi4r.tiny import make_checkpoint
from phi4r.train.config import GRPOConfig, SFTConfig
from phi4r.train.grpo import train_grpo
from phi4r.train.logprobs import token_logprobs
from phi4r.train.sft import train_sft

TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("lora") / "tiny")


@pytest.fixture(scope="module")
def trained(ckpt, tmp_path_factory):
    """An adapter from `phi4r train sft --use-peft` (a few steps, rank 4, TRL's default dropout 0.05)."""
    out = tmp_path_factory.mktemp("sft-lora")
    assert main(["train", "sft", "--model", str(ckpt), "--use-peft", "--lora-r", "4", "--lora-alpha", "8",
                 "--tasks", "arithmetic", "--difficulty", "1", "--n-per-task", "16",
                 "--system-prompt", "", "--max-steps", "4", "--lr", "3e-2", "--per-device-train-batch-size", "4",
                 "--eval-fraction", "0", "--logging-steps", "1", "--save-steps", "2", "--output-dir", str(out)]) == 0
    return out


def hf_model(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def phi4r_with(ckpt, adapter):
    model, _ = load(ckpt, dtype="float32")
    lora.load_adapter(model, adapter)
    return model


def ids_for(model, seed=0):
    return torch.randint(0, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(seed))


def test_sft_adapter_is_peft_format_and_loads_in_peft_with_same_logits(ckpt, trained):
    final = trained / "final"
    assert not (final / "model.safetensors").exists()  # the base is frozen: only the adapter is saved
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (4, 8, 0.05)
    assert sorted(config["target_modules"]) == sorted(TARGETS)
    assert config["base_model_name_or_path"] == str(ckpt.resolve())
    with safe_open(str(final / "adapter_model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight").abs().max() > 0  # trained
    layers = 2
    assert keys == {f"base_model.model.model.layers.{i}.{part}.{name}.lora_{ab}.weight" for i in range(layers)
                    for part, name in [("self_attn", "qkv_proj"), ("self_attn", "o_proj"), ("mlp", "gate_up_proj"),
                                       ("mlp", "down_proj")] for ab in "AB"}

    ours = phi4r_with(ckpt, final)  # loaded for inference: no dropout
    theirs = peft.PeftModel.from_pretrained(hf_model(ckpt), final).eval()
    base = hf_model(ckpt)
    ids = ids_for(ours)
    with torch.no_grad():
        got, want, plain = ours(ids), theirs(ids).logits, base(ids).logits
    assert (got - want).abs().max().item() < 1e-4
    assert (got - plain).abs().max().item() > 1e-2  # the adapter changes the model


def test_peft_made_adapter_loads_in_phi4r_and_merges_like_peft(ckpt, tmp_path):
    # rsLoRA, random B (init_lora_weights=False), a regex-free list of targets: what PEFT users save.
    torch.manual_seed(0)
    cfg = peft.LoraConfig(r=4, lora_alpha=16, target_modules=TARGETS, use_rslora=True, init_lora_weights=False,
                          task_type="CAUSAL_LM")
    theirs = peft.get_peft_model(hf_model(ckpt), cfg).eval()
    theirs.save_pretrained(tmp_path / "adapter")
    ours = phi4r_with(ckpt, tmp_path / "adapter")
    assert ours.lora_config.scaling == pytest.approx(16 / 2)  # alpha / sqrt(r)
    ids = ids_for(ours, 1)
    with torch.no_grad():
        assert (ours(ids) - theirs(ids).logits).abs().max().item() < 1e-4
        lora.merge(ours)
        merged_theirs = theirs.merge_and_unload().state_dict()
    assert not lora.has_adapters(ours)
    for name, tensor in ours.state_dict().items():
        assert torch.allclose(tensor, merged_theirs[name], atol=1e-6, rtol=0), name


def test_merge_lora_command_writes_base_plus_scaled_ba(ckpt, trained, tmp_path):
    final, out = trained / "final", tmp_path / "merged"
    assert main(["merge-lora", str(ckpt), str(final), str(out)]) == 0
    scaling = 8 / 4
    with safe_open(str(ckpt / "model.safetensors"), "pt") as b, safe_open(str(out / "model.safetensors"), "pt") as m, \
            safe_open(str(final / "adapter_model.safetensors"), "pt") as a:
        assert set(m.keys()) == set(b.keys())
        for name in b.keys():
            module = name.removesuffix(".weight")
            if module.rsplit(".", 1)[-1] in TARGETS:
                A = a.get_tensor(f"base_model.model.{module}.lora_A.weight")
                B = a.get_tensor(f"base_model.model.{module}.lora_B.weight")
                assert torch.allclose(m.get_tensor(name), b.get_tensor(name) + scaling * B @ A, atol=1e-6, rtol=0)
            else:
                assert torch.equal(m.get_tensor(name), b.get_tensor(name)), name
    # The merged checkpoint is a plain Phi-3 directory: transformers without PEFT gives PEFT's logits.
    ids = ids_for(hf_model(out))
    with torch.no_grad():
        unmerged = peft.PeftModel.from_pretrained(hf_model(ckpt), final).eval()(ids).logits
        assert (hf_model(out)(ids).logits - unmerged).abs().max().item() < 1e-4


def test_merge_lora_command_errors(ckpt, trained, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert main(["merge-lora", str(ckpt), str(trained / "final"), str(taken)]) == 2
    assert (taken / "keep.txt").read_text() == "mine"  # nothing overwritten
    assert main(["merge-lora", str(ckpt), str(ckpt), str(tmp_path / "out")]) == 2  # a checkpoint, not an adapter
    err = capsys.readouterr().err
    assert "not empty" in err and "adapter_config.json" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_engine_samples_through_unmerged_adapter(ckpt, tmp_path):
    model, tokenizer = load(ckpt, dtype="float32")
    lora.add_adapters(model, lora.LoraConfig(r=8, lora_alpha=16), seed=3)
    with torch.no_grad():
        for layer in lora.lora_modules(model).values():
            layer.lora_B.normal_(0, 0.2, generator=torch.Generator().manual_seed(4))
    lora.save(model, tokenizer, tmp_path / "adapter")
    assert main(["merge-lora", str(ckpt), str(tmp_path / "adapter"), str(tmp_path / "merged")]) == 0
    greedy = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    prompts = [[5, 9, 13], [7, 7, 200, 31]]

    def tokens(llm):
        return [r.outputs[0].token_ids for r in llm.generate(prompts, greedy, use_tqdm=False)]

    adapted = tokens(LLM(str(ckpt), adapter=str(tmp_path / "adapter")))
    assert adapted == tokens(LLM.from_model(model, tokenizer))  # a training loop's module with live adapters
    assert adapted == tokens(LLM(str(tmp_path / "merged")))
    assert adapted != tokens(LLM(str(ckpt)))
    with pytest.raises(CheckpointError, match="adapter_config.json"):
        LLM(str(ckpt), adapter=str(ckpt))


def test_adapter_that_does_not_fit_the_model_is_refused(ckpt, tmp_path):
    other = make_checkpoint(tmp_path / "wide", hidden_size=96, intermediate_size=192)
    model, tokenizer = load(other, dtype="float32")
    lora.add_adapters(model, lora.LoraConfig(r=2, lora_alpha=4))
    lora.save(model, tokenizer, tmp_path / "wide-adapter")
    target, _ = load(ckpt, dtype="float32")
    with pytest.raises(CheckpointError, match="has shape"):
        lora.load_adapter(target, tmp_path / "wide-adapter")
    assert not lora.has_adapters(target)  # nothing half-applied
    config = json.loads((tmp_path / "wide-adapter" / "adapter_config.json").read_text())
    (tmp_path / "wide-adapter" / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora"):
        lora.load_adapter(target, tmp_path / "wide-adapter")


def test_grpo_with_lora_reference_is_the_base(ckpt, tmp_path):
    # A random model's samples differ in how often they repeat a token: with 1-gram repetition counted
    # from the second occurrence, rewards vary within each group, so the adapter gets a gradient.
    cfg = GRPOConfig(model=str(ckpt), output_dir=str(tmp_path / "grpo"), tasks=["arithmetic"], difficulty=1,
                     n_per_task=8, system_prompt="", max_steps=2, learning_rate=5e-2, num_prompts_per_step=2,
                     num_generations=4, per_device_train_batch_size=8, max_completion_length=16,
                     max_prompt_length=128, beta=0.5, repetition_ngram=1, repetition_threshold=2,
                     logging_steps=1, save_steps=1000, use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    final = train_grpo(cfg)
    kl = [json.loads(line)["kl"] for line in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert kl[0] == 0.0  # B starts at zero: the first policy is exactly the reference
    assert kl[1] > 0.0  # after one update the policy left the reference, which stayed the base
    model = phi4r_with(ckpt, final)
    base, _ = load(ckpt, dtype="float32")
    ids = ids_for(model, 2)
    with torch.no_grad():
        ref = token_logprobs(lora.WithoutAdapters(model), ids)
        assert torch.equal(ref, token_logprobs(base, ids))
        assert (token_logprobs(model, ids) - ref).abs().max() > 1e-4
    assert lora.has_adapters(model)  # the reference view left the adapters on


def test_killed_lora_run_resumes_to_the_same_adapter(ckpt, tmp_path):
    def cfg(out, **kw):
        return SFTConfig(model=str(ckpt), output_dir=str(out), tasks=["arithmetic"], difficulty=1, n_per_task=16,
                         system_prompt="", learning_rate=1e-2, per_device_train_batch_size=4, eval_fraction=0.0,
                         logging_steps=1, save_steps=2, max_steps=4, use_peft=True, lora_r=4, **kw)

    train_sft(cfg(tmp_path / "full"))
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-2", killed / "checkpoint-2")
    train_sft(cfg(killed, resume_from_checkpoint="latest"))
    with safe_open(str(tmp_path / "full" / "final" / "adapter_model.safetensors"), "pt") as a, \
            safe_open(str(killed / "final" / "adapter_model.safetensors"), "pt") as b:
        for key in a.keys():
            assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key
