"""One training run, what SFT and GRPO share around their steps: the process group and device, the model
it starts from, the optimizer, resuming, logs, progress bar, checkpoints and the final model.

Layout of `output_dir`: `train_config.yaml` (the resolved config), `metrics.jsonl`, `{name}_curves.png`,
`checkpoint-N/` (see checkpointing.py) and `final/`. Only rank 0 writes; every rank takes part in
the collective calls (RNG gathering, barriers), so trainers call these methods on all ranks.
"""
from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from . import checkpointing as ckpt
from . import config as config_mod
from . import distributed as dist
from . import models
from .optim import make_optimizer
from .plots import MetricsLog, plot_metrics


class Run:
    def __init__(self, cfg, name: str, plot_keys: list[str]):
        """Join the processes, pick the device and load the model to start from (`model`, `tokenizer`,
        `generation_config`, `pad_id`): the resume checkpoint's, else as cfg says (models.start)."""
        self.cfg, self.name, self.plot_keys = cfg, name, plot_keys
        self.device = dist.setup(cfg.device)
        self.out = Path(cfg.output_dir)
        self.main = dist.is_main()
        self.resume_path = ckpt.resolve_resume(self.out, cfg.resume_from_checkpoint)
        self.logs = {"metrics": MetricsLog(self.out / "metrics.jsonl")}
        self.summary: dict = {}  # the resume checkpoint's (see `save`)
        # A sharded checkpoint's weights are loaded in `start`, into the sharded model.
        plain = self.resume_path is not None and not ckpt.is_sharded(self.resume_path)
        self.model, self.tokenizer, self.generation_config = models.start(cfg, self.resume_path if plain else None)
        self.model.to(self.device).train()
        self.model.gradient_checkpointing = cfg.gradient_checkpointing
        self.pad_id = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else self.tokenizer.eos_id

    def start(self, data_position: dict, total: int, message: str):
        """Wrap the model for the processes (DDP/FSDP), make the optimizer, restore the resume checkpoint
        (which must have been made on the same `data_position`), write the config and print `message`:
        (wrapped model, optimizer, the step to continue at)."""
        self.data_position = data_position
        wrapped = dist.wrap(self.model, self.device, self.cfg)
        self.optimizer = make_optimizer(self.model, self.cfg)
        step = self._restore()
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            config_mod.save(self.cfg, self.out / "train_config.yaml")
            for log in self.logs.values():
                log.truncate(step)  # a killed run may have logged past its last checkpoint
            print(f"{self.name}: {message}")
        self.bar = tqdm(total=total, initial=step, desc=self.name, disable=not self.main, dynamic_ncols=True)
        return wrapped, self.optimizer, step

    def step_done(self, step: int, record: dict, summary: dict, last: bool, shown: tuple = ()) -> None:
        """After optimizer step `step`: log `record` (if any; `shown` keys on the progress bar), and write
        a checkpoint (with `summary`) every save_steps and at the `last` step."""
        if record:
            self.log(step, record)
            self.bar.set_postfix({k: f"{record[k]:.4g}" for k in shown if k in record})
        self.bar.update(1)
        if step % self.cfg.save_steps == 0 or last:
            self.save(step, summary)

    def log_file(self, name: str) -> MetricsLog:
        """An extra JSONL (e.g. samples), truncated on resume like the metrics."""
        self.logs[name] = MetricsLog(self.out / f"{name}.jsonl")
        return self.logs[name]

    def _restore(self) -> int:
        """Load the optimizer (and a sharded checkpoint's model) and this rank's RNG states from the resume
        checkpoint; the step to continue at."""
        if self.resume_path is None:
            return 0
        state = ckpt.load_state(self.resume_path)
        if state["data"] != self.data_position:
            raise ValueError(f"{self.resume_path}: the data changed since this checkpoint ({state['data']} vs "
                             f"{self.data_position}); an exact resume needs the same data, seed and batch size")
        if ckpt.is_sharded(self.resume_path):
            ckpt.load_sharded(self.resume_path, self.model, self.optimizer)
        elif dist.is_fsdp(self.model):
            raise ValueError(f"{self.resume_path} was written without --fsdp: resume it without --fsdp")
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.summary = state["summary"]
        rngs = state["rng"]
        ckpt.set_rng_state(rngs[dist.rank()] if len(rngs) == dist.world_size() else rngs[0])
        return state["step"]

    def log(self, step: int, record: dict, name: str = "metrics") -> None:
        if self.main:
            self.logs[name].write({"step": step, **record})

    def save(self, step: int, summary: dict) -> None:
        model, optimizer = self.model, self.optimizer
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
                     "data": self.data_position, "summary": summary}
            ckpt.save_checkpoint(self.out, step, model, self.tokenizer, state, self.cfg, self.generation_config,
                                 self.cfg.save_total_limit, sharded=sharded)
            plot_metrics(self.logs["metrics"].read(), self.plot_keys, self.out / f"{self.name}_curves.png",
                         title=f"{self.name.upper()} {self.out.name}")
        dist.barrier()

    def finish(self) -> Path:
        self.bar.close()
        final, model = self.out / "final", self.model
        if dist.is_fsdp(model):  # gather the shards into one plain model on rank 0
            model = dist.consolidate(model)
        if self.main:
            ckpt.save_model_dir(final, model, self.tokenizer, self.generation_config)
            print(f"{self.name}: final model in {final}")
        dist.teardown()
        return final
