"""What every trainer does around its steps: the output directory, resuming, logs, checkpoints, final model.

Layout of `output_dir`: `train_config.yaml` (the resolved config), `metrics.jsonl`, `{name}_curves.png`,
`checkpoint-N/` (see checkpointing.py) and `final/`. Only rank 0 writes; every rank takes part in
the collective calls (RNG gathering, barriers), so trainers call these methods on all ranks.
"""
from __future__ import annotations

from pathlib import Path

from . import checkpointing as ckpt
from . import config as config_mod
from . import distributed as dist
from .plots import MetricsLog, plot_metrics


class Run:
    def __init__(self, cfg, name: str, plot_keys: list[str]):
        self.cfg, self.name, self.plot_keys = cfg, name, plot_keys
        self.out = Path(cfg.output_dir)
        self.main = dist.is_main()
        self.resume_path = ckpt.resolve_resume(self.out, cfg.resume_from_checkpoint)
        self.logs = {"metrics": MetricsLog(self.out / "metrics.jsonl")}
        self.summary: dict = {}  # the resume checkpoint's (see `save`)

    def log_file(self, name: str) -> MetricsLog:
        """An extra JSONL (e.g. samples), truncated on resume like the metrics."""
        self.logs[name] = MetricsLog(self.out / f"{name}.jsonl")
        return self.logs[name]

    @property
    def weights_path(self) -> Path | None:
        """The checkpoint to load the model from (a Hugging Face directory), None when starting fresh or
        when the checkpoint is sharded (its weights are loaded by `restore`, after sharding)."""
        return None if self.resume_path is None or ckpt.is_sharded(self.resume_path) else self.resume_path

    def restore(self, optimizer, data_position: dict, model=None) -> int:
        """Load the optimizer (and a sharded checkpoint's model) and this rank's RNG states from the resume
        checkpoint; the step to continue at."""
        if self.resume_path is None:
            return 0
        state = ckpt.load_state(self.resume_path)
        if state["data"] != data_position:
            raise ValueError(f"{self.resume_path}: the data changed since this checkpoint ({state['data']} vs "
                             f"{data_position}); an exact resume needs the same data, seed and batch size")
        if ckpt.is_sharded(self.resume_path):
            ckpt.load_sharded(self.resume_path, model, optimizer)
        elif model is not None and dist.is_fsdp(model):
            raise ValueError(f"{self.resume_path} was written without --fsdp: resume it without --fsdp")
        else:
            optimizer.load_state_dict(state["optimizer"])
        self.summary = state["summary"]
        rngs = state["rng"]
        ckpt.set_rng_state(rngs[dist.rank()] if len(rngs) == dist.world_size() else rngs[0])
        return state["step"]

    def begin(self, step: int, message: str) -> None:
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            config_mod.save(self.cfg, self.out / "train_config.yaml")
            for log in self.logs.values():
                log.truncate(step)  # a killed run may have logged past its last checkpoint
            print(f"{self.name}: {message}")

    def log(self, step: int, record: dict, name: str = "metrics") -> None:
        if self.main:
            self.logs[name].write({"step": step, **record})

    def save(self, step: int, model, tokenizer, optimizer, data_position: dict, generation_config, summary: dict) -> None:
        rng = dist.all_gather_objects(ckpt.rng_state())
        sharded = dist.is_fsdp(model)
        if sharded:  # every rank writes its shards into the temporary directory rank 0 prepares
            tmp = self.out / f".tmp-{ckpt.PREFIX}{step}"
            if self.main:
                ckpt.tmp_dir(self.out / f"{ckpt.PREFIX}{step}")
            dist.barrier()
            ckpt.save_sharded(tmp, model, optimizer)
            dist.barrier()
        if self.main:
            state = {"step": step, "optimizer": None if sharded else optimizer.state_dict(), "rng": rng,
                     "data": data_position, "summary": summary}
            ckpt.save_checkpoint(self.out, step, model, tokenizer, state, self.cfg, generation_config,
                                 self.cfg.save_total_limit, sharded=sharded)
            plot_metrics(self.logs["metrics"].read(), self.plot_keys, self.out / f"{self.name}_curves.png",
                         title=f"{self.name.upper()} {self.out.name}")
        dist.barrier()

    def finish(self, model, tokenizer, generation_config) -> Path:
        final = self.out / "final"
        if dist.is_fsdp(model):  # gather the shards into one plain model on rank 0
            model = dist.consolidate(model)
        if self.main:
            ckpt.save_model_dir(final, model, tokenizer, generation_config)
            print(f"{self.name}: final model in {final}")
        dist.teardown()
        return final
