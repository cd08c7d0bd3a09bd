"""A whole phi4r-written directory (weights + tokenizer + chat template) read by transformers."""
import json

import torch
import transformers

import phi4r
from phi4r.tiny import make_checkpoint

MESSAGES = [{"role": "user", "content": "What is 3 + 4?"}, {"role": "assistant", "content": "7"},
            {"role": "user", "content": "And 5 * 6?"}]


def test_transformers_reads_phi4r_directory(tmp_path):
    make_checkpoint(tmp_path, num_key_value_heads=1)
    model, tok = phi4r.load(tmp_path, dtype="float32")
    ids = tok.encode_chat(MESSAGES)
    assert phi4r.render_chat(MESSAGES, system_prompt=tok.system_prompt).endswith("<|im_start|>assistant<|im_sep|>")

    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    hf_ids = hf_tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    hf_ids = hf_ids["input_ids"] if isinstance(hf_ids, dict) or hasattr(hf_ids, "keys") else hf_ids
    assert list(hf_ids) == ids

    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        assert (model(x) - hf_model(x).logits).abs().max().item() < 1e-4

    gen = json.loads((tmp_path / "generation_config.json").read_text())
    assert (gen["temperature"], gen["top_p"], gen["top_k"]) == (0.8, 0.95, 50)
    assert tok.eos_id in gen["eos_token_id"]
    assert transformers.GenerationConfig.from_pretrained(tmp_path).top_k == 50


def test_save_then_load_round_trip(tmp_path):
    make_checkpoint(tmp_path / "a", system_prompt="You are a tiny model. Think in <think> tags.")
    model, tok = phi4r.load(tmp_path / "a")
    phi4r.save(model, tok, tmp_path / "b")
    model2, tok2 = phi4r.load(tmp_path / "b")
    assert tok2.system_prompt == "You are a tiny model. Think in <think> tags."
    assert tok2.encode_chat(MESSAGES) == tok.encode_chat(MESSAGES)
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
