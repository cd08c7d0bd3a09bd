"""The sample log: one JSON line per scored (instance, run), appended and flushed as each finishes.

It is the evaluation's only state, so an interrupted run resumes by reading it back: pairs already
in the log are skipped, and a pair is written twice only to replace a transient failure (`"retry":
true`, the server busy or down), which a resumed run asks again: the later line wins.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def sample_key(sample: dict) -> tuple[str, str, int]:
    return sample["task"], sample["id"], sample["run"]


class SampleLog:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.samples: dict[tuple, dict] = {}
        if self.path.exists():
            self._load()
        self._file = None

    def _load(self) -> None:
        data = self.path.read_bytes()
        # A kill mid-write leaves a last line without its newline: drop it (that sample is redone)
        # and cut the file back, so the next append starts on a line of its own.
        end = data.rfind(b"\n") + 1
        if end < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(end)
        for n, line in enumerate(data[:end].splitlines(), 1):
            if not line.strip():
                continue
            try:
                sample = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{self.path}:{n}: corrupt sample log line ({e.msg})") from None
            key = sample_key(sample)
            if not self.settled(key):
                self.samples[key] = sample

    def __contains__(self, key: tuple) -> bool:
        return key in self.samples

    def settled(self, key: tuple) -> bool:
        """Logged for good: an answer, or an error that asking again would not change."""
        return key in self.samples and not self.samples[key].get("retry")

    def append(self, sample: dict) -> None:
        key = sample_key(sample)
        if self.settled(key):
            raise ValueError(f"sample {key} is already in {self.path}")
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(sample, ensure_ascii=False, default=str) + "\n")
        self._file.flush()
        self.samples[key] = sample

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
