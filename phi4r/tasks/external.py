"""Published benchmark files: JSONL (or a JSON list) always, Parquet when pyarrow is installed.

Nothing is downloaded: the user gives the path of a file in the dataset's published format.
"""
from __future__ import annotations

import json
from pathlib import Path

from .base import Instance, Task


def read_records(path, limit: int | None = None) -> list[dict]:
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError(f"reading {path} needs pyarrow (pip install pyarrow), "
                              "or convert the file to JSONL") from None
        records = pq.read_table(path).to_pylist()
    elif path.suffix.lower() in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            records = json.loads(text)
        else:
            records = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
    else:
        raise ValueError(f"{path}: expected .jsonl, .json or .parquet")
    return records[:limit] if limit is not None else records


def field(record: dict, *names, default=None):
    """The first of `names` present in the record (datasets differ in capitalisation)."""
    for name in names:
        if record.get(name) is not None:
            return record[name]
    if default is not None:
        return default
    raise KeyError(f"record has none of {names}; its fields are {sorted(record)}")


class ExternalTask(Task):
    """A benchmark read from a file; subclasses turn one record into an Instance."""

    procedural = False

    def load(self, path, limit: int | None = None) -> list[Instance]:
        out = []
        for i, record in enumerate(read_records(path, limit)):
            inst = self.from_record(record)
            key = field(record, "id", "ID", "question_id", "Record ID", "unique_id", default=i)
            inst.id, inst.task = f"{self.name}-{key}", self.name
            out.append(inst)
        return out

    def from_record(self, record: dict) -> Instance:
        raise NotImplementedError
