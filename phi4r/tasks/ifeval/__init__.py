"""IFEval (Zhou et al., 2023): verifiable instructions ("answer in under 100 words", "no commas").

Records use the published layout (google-research's `input_data.jsonl`, also the columns of the
Hugging Face copy `google/IFEval`): `key`, `prompt`, `instruction_id_list`, and `kwargs`, one dict
per instruction (the Hugging Face copy fills every kwarg any instruction takes, mostly null).
The prompt goes to the model as it is; only the text after the last `</think>` is graded
(stripped; a response without think tags is graded exactly as it is).

Each instruction is checked strictly on that text, and loosely: it passes if it holds on any of
eight variants (the text, without its first line, without its last line, without both, each
also with every `*` removed). A sample scores 1 when every instruction holds strictly; its
details carry both modes per instruction, and `accuracy` gives the four published metrics.
"""
from __future__ import annotations

import json

from ..base import Instance, Score, final_text
from ..external import ExternalTask, field, read_records
from .checks import CHECKS, bind
from .text import EXTRA, missing_modules


def variants(text: str) -> list[str]:
    """The texts loose evaluation tries: markdown emphasis and a first/last line of chatter removed."""
    lines = text.split("\n")
    cut = ["\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return [text, text.replace("*", "")] + cut + [c.replace("*", "") for c in cut]


def follow(instruction_ids: list[str], kwargs: list[dict], text: str) -> tuple[list[bool], list[bool]]:
    """Per instruction: (followed strictly, followed loosely). An empty text follows nothing."""
    strict, loose = [], []
    for instruction_id, kw in zip(instruction_ids, kwargs, strict=True):
        check = bind(instruction_id, kw)
        strict.append(bool(text.strip()) and check(text))
        loose.append(any(v.strip() and check(v) for v in variants(text)))
    return strict, loose


def accuracy(details: list[dict]) -> dict[str, float]:
    """Prompt-level (all of a prompt's instructions) and instruction-level (over all instructions
    of all prompts, not averaged per prompt) accuracy, strict and loose, from `Score.details`."""
    out = {}
    for mode in ("strict", "loose"):
        flat = [ok for d in details for ok in d[f"inst_{mode}"]]
        out[f"prompt_level_{mode}_acc"] = sum(all(d[f"inst_{mode}"]) for d in details) / len(details)
        out[f"inst_level_{mode}_acc"] = sum(flat) / len(flat)
    return out


class IFEval(ExternalTask):
    name = "ifeval"
    categories = sorted({i.split(":")[0] for i in CHECKS}) + ["multiple"]

    def load(self, path, limit: int | None = None) -> list[Instance]:
        out = []
        for n, record in enumerate(read_records(path, limit)):
            try:
                inst = self.from_record(record)
            except (KeyError, ValueError, TypeError) as e:
                raise ValueError(f"{path}: record {n + 1}: {e}") from None
            inst.id = f"{self.name}-{field(record, 'key', 'id', default=n)}"
            out.append(inst)
        missing = missing_modules({i for inst in out for i in inst.answer["instruction_id_list"]})
        if missing:  # said before any sample is generated, not by the first sample that needs it
            raise ValueError(f"{path}: its instructions need {', '.join(missing)}: {EXTRA}")
        return out

    def from_record(self, record: dict) -> Instance:
        ids = field(record, "instruction_id_list")
        ids = list(json.loads(ids) if isinstance(ids, str) else ids)  # a CSV copy holds JSON text
        kwargs = field(record, "kwargs", default=[{}] * len(ids))
        if isinstance(kwargs, str):
            kwargs = json.loads(kwargs)
        if len(kwargs) != len(ids):
            raise ValueError(f"{len(ids)} instructions but {len(kwargs)} kwargs")
        kwargs = [{k: v for k, v in (kw or {}).items() if v is not None} for kw in kwargs]
        for instruction_id, kw in zip(ids, kwargs):
            bind(instruction_id, kw)  # a bad instruction or kwarg fails the load, not the run
        return Instance(id="", task=self.name, prompt=field(record, "prompt"),
                        answer={"instruction_id_list": ids, "kwargs": kwargs},
                        category=ids[0].split(":")[0] if len(ids) == 1 else "multiple")

    def parse(self, text: str):
        return text

    def check(self, inst: Instance, response: str) -> Score:
        ids, kwargs = inst.answer["instruction_id_list"], inst.answer["kwargs"]
        text = final_text(response)
        if text is not None and "</think>" in response:
            # The blank lines between the reasoning and the answer are not part of the answer:
            # kept, they would shift paragraph counts and what loose mode calls the first line.
            text = text.strip()
        strict, loose = follow(ids, kwargs, text) if text is not None else ([False] * len(ids),) * 2
        details = {"prompt_strict": all(strict), "prompt_loose": all(loose), "inst_strict": strict,
                   "inst_loose": loose}
        # The extracted "answer" is which instructions held: runs agreeing on it vote together.
        return Score(float(all(strict)), None if text is None else strict, details)
