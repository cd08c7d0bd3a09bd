"""Published benchmark files: JSONL, JSON, CSV, and Parquet (pyarrow: `pip install phi4r[data]`).

Nothing is downloaded: the user gives the path of a file in one of the dataset's published
layouts (the original release, a Hugging Face copy, or Eureka's renamed columns); each task
maps the column names it knows and names the fields it found when none fit.
"""
from __future__ import annotations

import ast
import csv
import gzip
import json
import re
import sys
from pathlib import Path

from .base import Instance, Task

FORMATS = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


def parse_jsonl(path, text: str) -> list[dict]:
    """The records of JSON Lines `text` (read from `path`, named in errors)."""
    records = []
    # Split on "\n" only: str.splitlines() also breaks at U+2028/U+0085, which JSON allows raw
    # inside strings.
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
    return records


def _json(data) -> list:
    if isinstance(data, dict):
        # Records under one key ("data", "rows", a split name...), else the object is one record.
        lists = [v for k, v in data.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)
                 and (k in ("rows", "data") or len(data) == 1)]
        data = lists[0] if len(lists) == 1 else [data]
    # The Hugging Face datasets-server wraps each record as {"row_idx": i, "row": {...}}.
    return [r["row"] if isinstance(r, dict) and isinstance(r.get("row"), dict) else r for r in data]


def _csv(path: Path, delimiter: str) -> list[dict]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long questions and nested lists in cells
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f, delimiter=delimiter))


def read_records(path, limit: int | None = None) -> list[dict]:
    try:
        return _read(Path(path), limit)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def _read(path: Path, limit: int | None) -> list[dict]:
    gzipped = path.suffix.lower() == ".gz"  # EvalPlus ships HumanEvalPlus.jsonl.gz
    suffix = (path.with_suffix("") if gzipped else path).suffix.lower()
    if suffix not in FORMATS or (gzipped and suffix not in (".jsonl", ".json")):
        raise ValueError(f"{path}: expected one of {', '.join(FORMATS)} (.jsonl and .json also gzipped)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError(f"reading {path} needs pyarrow (pip install 'phi4r[data]'), "
                              "or convert the file to JSONL") from None
        try:
            records = pq.read_table(path).to_pylist()
        except (ValueError, OSError) as e:  # pyarrow's ArrowInvalid / ArrowIOError on a damaged file
            raise ValueError(f"{path}: not a readable Parquet file ({e})") from None
    elif suffix in (".csv", ".tsv"):
        records = _csv(path, "\t" if suffix == ".tsv" else ",")
    else:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if gzipped else raw).decode("utf-8-sig")
        try:  # one JSON document (a list, or an object holding one), else JSON Lines
            data = json.loads(text)
        except json.JSONDecodeError:
            records = parse_jsonl(path, text)
        else:
            records = [data] if isinstance(data, dict) and suffix == ".jsonl" else _json(data)
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
    if bad is not None:
        raise ValueError(f"{path}: record {bad + 1} is not an object ({type(records[bad]).__name__})")
    return records[:limit] if limit is not None else records


def field(record: dict, *names, default=None):
    """The first of `names` present and non-empty in the record (layouts differ in naming)."""
    for name in names:
        value = record.get(name)
        if value is not None and value != "":
            return value
    if default is not None:
        return default
    raise KeyError(f"record has none of {', '.join(map(repr, names))}; its fields are {sorted(record)}")


def structured(value):
    """A list or dict cell as an object: CSV and some JSON exports store them as text (JSON or
    a Python literal)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return value


QUOTED = r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""


def as_list(value, name: str) -> list:
    """A list cell (see `structured`), including numpy's `['a' 'b']` repr, which a pandas CSV
    export of a Parquet file writes (as a Python literal it would concatenate the strings)."""
    if isinstance(value, str) and re.fullmatch(rf"\[\s*(?:(?:{QUOTED})\s*)+\]", value.strip(), re.DOTALL):
        return [ast.literal_eval(q) for q in re.findall(QUOTED, value)]
    value = structured(value)
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"'{name}' is not a list: {str(value)[:80]!r}")
    return list(value)


def load_file(task: Task, path, limit: int | None = None) -> list[Instance]:
    """Instances from a published file, one per record, through `task.from_record`.

    Records that are already phi4r instances (a saved `Instance.to_dict()`) load as they are.
    """
    out = []
    for i, record in enumerate(read_records(path, limit)):
        if record.get("task") == task.name and {"id", "prompt", "answer"} <= set(record):
            out.append(Instance.from_dict({k: structured(v) if k in ("answer", "meta") else v
                                           for k, v in record.items()}))
            continue
        try:
            inst = task.from_record(record)
        except (KeyError, ValueError, TypeError, IndexError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            raise ValueError(f"{path}: record {i + 1} fits no {task.name} layout: {msg}") from None
        key = field(record, "id", "ID", "uid", "question_id", "Record ID", "unique_id", "sample_id", default=i)
        inst.id, inst.task = f"{task.name}-{key}", task.name
        out.append(inst)
    return out


def options_from_prompt(prompt: str) -> list[str]:
    """The `A. text` lines after `Available options:` in a prompt that carries its own options
    (Eureka's text-only Maze and SpatialMap)."""
    tail = prompt.split("Available options:", 1)
    if len(tail) < 2:
        raise KeyError("the prompt has no 'Available options:' list")
    options = []
    for line in tail[1].strip().split("\n"):
        m = re.match(r"\s*([A-J])\.\s*(.*)", line)
        if m is None or m.group(1) != "ABCDEFGHIJ"[len(options)]:
            break
        options.append(m.group(2).strip())
    if len(options) < 2:
        raise KeyError("the prompt's 'Available options:' list has no A., B., ... lines")
    return options


def choice_from_release(task: Task, record: dict) -> Instance:
    """A multiple-choice record whose prompt lists its options and whose `ground_truth` is the
    correct option's text (or its letter): Eureka's text-only Maze and SpatialMap
    (microsoft/VISION_LANGUAGE, `maze_text_only` and `spatial_map_text_only`)."""
    prompt = str(field(record, "prompt", "question"))
    options = options_from_prompt(prompt)
    truth = str(field(record, "ground_truth", "answer")).strip()
    lowered = [o.lower() for o in options]
    m = re.fullmatch(r"\(?([A-J])[.)]?\s*(.*)", truth)
    if truth.lower() in lowered:
        letter = "ABCDEFGHIJ"[lowered.index(truth.lower())]
    elif m and "ABCDEFGHIJ".index(m.group(1)) < len(options) and m.group(2).lower() in ("", lowered["ABCDEFGHIJ".index(m.group(1))]):
        letter = m.group(1)
    else:
        raise ValueError(f"ground_truth {truth!r} is none of the options {options}")
    value = options["ABCDEFGHIJ".index(letter)]
    return Instance(id="", task=task.name, prompt=prompt + '\n\nAnswer as "Final Answer: X" where X is the letter of your choice.',
                    answer={"letter": letter, "value": value, "options": options},
                    category=str(field(record, "question_type", "category", "task", default=task.name)))


class RecordLoader:
    """`load(path)` for a task with `from_record`; procedural tasks mix it in to read the
    released files of the data sets they also generate."""

    def load(self, path, limit: int | None = None) -> list[Instance]:
        return load_file(self, path, limit)

    def from_record(self, record: dict) -> Instance:
        raise NotImplementedError


class ExternalTask(RecordLoader, Task):
    """A benchmark read from a file; subclasses turn one record into an Instance."""

    procedural = False
