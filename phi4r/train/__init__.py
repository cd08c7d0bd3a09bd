"""The training recipe: a byte-level BPE, SFT on reasoning traces, then GRPO with verifiable rewards.

    config.py        dataclasses whose fields are `--flags` and YAML/JSON keys
    bpe.py           `phi4r train tokenizer`: a BPE trained on the conversations the model will see
    data.py          conversations -> token ids with an assistant-only loss mask; the batch order
    models.py        the model a run starts from (a checkpoint, or a fresh init from a config)
    logprobs.py      padded batches and per-token log-probabilities
    optim.py         AdamW, the learning-rate schedule and `optimizer_step`, the update every loop ends with
    rewards.py       the report's length-aware reward and the 5-gram repetition penalty
    sft.py, grpo.py  the trainers
    run.py           device, starting model, optimizer, resume, logs, checkpoints: what both trainers share
    checkpointing.py atomic Hugging Face checkpoints + trainer_state for an exact resume
    distributed.py   torchrun / DDP helpers (rank-aware sharding, rank 0 writes)
    plots.py         metrics JSONL and PNG curves

Importing this package (and `config`) does not import torch, so the CLI's --help stays instant.
"""
