"""Corrupt and incomplete checkpoints give errors that name the file and the problem."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from phi4r.checkpoint import CheckpointError, load_model, save_model
from phi4r.config import Phi3Config
from phi4r.model import Phi3ForCausalLM


@pytest.fixture
def ckpt(tmp_path):
    config = Phi3Config(vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    save_model(Phi3ForCausalLM(config), tmp_path, max_shard_bytes=20_000)
    return tmp_path


def shards(path):
    return sorted(path.glob("model-*.safetensors"))


def test_round_trip_is_exact(ckpt):
    model, _ = load_model(ckpt, dtype="float32")
    again = {}
    for f in shards(ckpt):
        again.update(load_file(f))
    for name, t in model.state_dict().items():
        assert torch.equal(t, again[name]), name


def test_bf16_load_converts(ckpt):
    model, _ = load_model(ckpt, dtype="bfloat16")
    assert model.dtype == torch.bfloat16


def test_missing_shard_names_it(ckpt):
    victim = shards(ckpt)[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=f"{victim.name}.*missing"):
        load_model(ckpt)


def test_truncated_file_names_it(ckpt):
    victim = shards(ckpt)[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=victim.name):
        load_model(ckpt)


def test_wrong_shape_names_tensor_and_file(ckpt):
    victim = shards(ckpt)[-1]
    tensors = load_file(victim)
    name = next(iter(tensors))
    tensors[name] = torch.zeros(3, 3)
    save_file(tensors, victim)
    with pytest.raises(CheckpointError, match=rf"{victim.name}.*{name}.*shape \[3, 3\]"):
        load_model(ckpt)


def test_unknown_architecture(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(architectures=["MistralForCausalLM"], model_type="mistral")
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config.json.*unknown architecture"):
        load_model(ckpt)


def test_longrope_checkpoint_refused(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["rope_scaling"] = {"type": "longrope", "long_factor": [1.0] * 4, "short_factor": [1.0] * 4}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="longrope"):
        load_model(ckpt)


def test_missing_and_bad_config(ckpt):
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json.*JSON"):
        load_model(ckpt)
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json.*missing"):
        load_model(ckpt)


def test_missing_tensor_is_reported(ckpt):
    victim = shards(ckpt)[0]
    tensors = load_file(victim)
    dropped = next(iter(tensors))
    del tensors[dropped]
    save_file(tensors, victim)
    with pytest.raises(CheckpointError, match=f"missing tensors.*{dropped}"):
        load_model(ckpt)


def test_pickle_weights_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(Phi3Config(hidden_size=32, num_attention_heads=4,
                                                                num_key_value_heads=2).to_dict()))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(CheckpointError, match="safetensors only"):
        load_model(tmp_path)


def test_not_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        load_model(tmp_path / "nope")
