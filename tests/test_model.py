"""The model against transformers' Phi3ForCausalLM (an implementation nobody here wrote)."""
import pytest
import torch
import transformers

from phi4r.checkpoint import load_model, save_model
from phi4r.config import Phi3Config, UnsupportedConfigError
from phi4r.model import KVCache, Phi3ForCausalLM

# GQA ratios 1, 2 and 5; rope_theta 10000 and 500000; partial rotary 1.0 and 0.75.
SHAPES = [
    dict(num_attention_heads=4, num_key_value_heads=4, rope_theta=10000.0, partial_rotary_factor=1.0),
    dict(num_attention_heads=4, num_key_value_heads=2, rope_theta=500000.0, partial_rotary_factor=0.75),
    dict(num_attention_heads=10, num_key_value_heads=2, rope_theta=500000.0, partial_rotary_factor=1.0, hidden_size=80),
    dict(num_attention_heads=5, num_key_value_heads=1, rope_theta=10000.0, partial_rotary_factor=0.75, hidden_size=80),
]


def hf_model(tie=False, **over):
    fields = dict(vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                  tie_word_embeddings=tie)
    fields.update(over)
    torch.manual_seed(sum(map(ord, repr(sorted(over.items())))))
    return transformers.Phi3ForCausalLM(transformers.Phi3Config(**fields)).eval()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"h{s['num_attention_heads']}kv{s['num_key_value_heads']}")
def test_transformers_checkpoint_loads_with_same_logits(tmp_path, shape):
    ref = hf_model(**shape)
    ref.save_pretrained(tmp_path)
    model, config = load_model(tmp_path, dtype="float32")
    assert config.num_key_value_heads == shape["num_key_value_heads"]
    assert config.rotary_dim == int(shape["partial_rotary_factor"] * config.head_dim)
    ids = torch.randint(0, 211, (2, 37))
    with torch.no_grad():
        diff = (model(ids) - ref(ids).logits).abs().max().item()
    assert diff < 1e-4


@pytest.mark.parametrize("shape", SHAPES[1:3], ids=["gqa2", "gqa5"])
def test_phi4r_checkpoint_loads_in_transformers(tmp_path, shape):
    ref = hf_model(**shape)
    config = Phi3Config.from_dict(ref.config.to_dict())
    model = Phi3ForCausalLM(config)
    torch.manual_seed(1)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    save_model(model, tmp_path, max_shard_bytes=40_000)  # force several shards
    assert (tmp_path / "model.safetensors.index.json").exists()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(theirs).__name__ == "Phi3ForCausalLM"
    ids = torch.randint(0, 211, (1, 50))
    with torch.no_grad():
        assert (model(ids) - theirs(ids).logits).abs().max().item() < 1e-4


def test_config_built_from_scratch_loads_in_transformers(tmp_path):
    config = Phi3Config(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = Phi3ForCausalLM(config).eval()
    save_model(model, tmp_path)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = torch.randint(0, 128, (1, 20))
    with torch.no_grad():
        assert (model(ids) - theirs(ids).logits).abs().max().item() < 1e-4


def test_missing_lm_head_is_tied(tmp_path):
    ref = hf_model(tie=True)
    ref.save_pretrained(tmp_path)
    model, _ = load_model(tmp_path, dtype="float32")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ids = torch.randint(0, 211, (1, 12))
    with torch.no_grad():
        assert (model(ids) - ref(ids).logits).abs().max().item() < 1e-4


def test_kv_cache_matches_full_forward_in_any_slot():
    torch.manual_seed(0)
    config = Phi3Config(vocab_size=97, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64)
    model = Phi3ForCausalLM(config).eval()
    ids = torch.randint(0, 97, (2, 20))
    cache = KVCache(config, num_slots=4, max_len=32)
    slots = torch.tensor([3, 1])
    with torch.no_grad():
        full = model(ids)
        # Fill slot 3 with junk first: stale entries beyond a position must be masked.
        model(torch.randint(0, 97, (1, 30)), positions=torch.arange(30)[None], cache=cache, slots=torch.tensor([3]))
        pre = model(ids[:, :12], positions=torch.arange(12).expand(2, 12), cache=cache, slots=slots)
        steps = [model(ids[:, t:t + 1], positions=torch.full((2, 1), t), cache=cache, slots=slots) for t in range(12, 20)]
    assert (pre - full[:, :12]).abs().max() < 1e-5
    assert (torch.cat(steps, 1) - full[:, 12:]).abs().max() < 1e-5
    cache.copy_slot(1, 2, 20)
    assert torch.equal(cache.k[0][2, :, :20], cache.k[0][1, :, :20])


def test_bf16_forward_close_to_fp32():
    torch.manual_seed(0)
    config = Phi3Config(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = Phi3ForCausalLM(config).eval()
    ids = torch.randint(0, 97, (1, 16))
    with torch.no_grad():
        ref = model(ids)
        low = model.to(torch.bfloat16)(ids).float()
    assert low.dtype == torch.float32 and (low - ref).abs().max() < 0.1 * ref.abs().max()
    assert (low.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9


def test_full_phi4_reasoning_config_counts_14b_parameters_on_meta():
    with torch.device("meta"):
        model = Phi3ForCausalLM(Phi3Config())
    assert model.num_parameters() == 14_659_507_200
    assert model.config.head_dim == 128 and model.config.rotary_dim == 128


def test_unimplemented_rope_scaling_is_refused():
    with pytest.raises(UnsupportedConfigError, match="longrope"):
        Phi3Config(rope_scaling={"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]})
    with pytest.raises(UnsupportedConfigError, match="architecture"):
        Phi3Config.from_dict({"architectures": ["LlamaForCausalLM"], "model_type": "llama"})


def test_config_round_trips_unknown_fields():
    d = Phi3Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2).to_dict()
    d["some_future_field"] = 7
    again = Phi3Config.from_dict(d).to_dict()
    assert again["some_future_field"] == 7 and again["hidden_size"] == 64
