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

    def log_file(self, name: str) -> MetricsLog:
        """An extra JSONL (e.g. samples), truncated on resume like the metrics."""
        self.logs[name] = MetricsLog(self.out / f"{name}.jsonl")
        return self.logs[name]

    def restore(self, optimizer, data_position: dict) -> int:
        """Load the optimizer and this rank's RNG states from the resume checkpoint; the step to continue at."""
        if self.resume_path is None:
            return 0
        state = ckpt.load_state(self.resume_path)
        if state["data"] != data_position:
            raise ValueError(f"{self.resume_path}: the data changed since this checkpoint ({state['data']} vs "
                             f"{data_position}); an exact resume needs the same data, seed and batch size")
        optimizer.load_state_dict(state["optimizer"])
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
        if self.main:
            state = {"step": step, "optimizer": optimizer.state_dict(), "rng": rng, "data": data_position,
                     "summary": summary}
            ckpt.save_checkpoint(self.out, step, model, tokenizer, state, self.cfg, generation_config,
                                 self.cfg.save_total_limit)
            plot_metrics(self.logs["metrics"].read(), self.plot_keys, self.out / f"{self.name}_curves.png",
                         title=f"{self.name.upper()} {self.out.name}")
        dist.barrier()

    def finish(self, model, tokenizer, generation_config) -> Path:
        final = self.out / "final"
        if self.main:
            ckpt.save_model_dir(final, model, tokenizer, generation_config)
            print(f"{self.name}: final model in {final}")
        dist.teardown()
        return final
