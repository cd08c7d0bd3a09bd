"""Which steps of a teacher trace has a model learned? The probe behind docs/NANO.md's step tables.

    python scripts/nano_trace_steps.py MODEL_DIR [TASK] [LEVEL]     # TASK: spatialmap (default) or calendar

Feeds the teacher's trace of 40 held-out instances (seed 0) to the model and prints, per kind of
step, how often the model's top token is right on every token of that step (teacher forcing).
Spatialmap: the name of the next sentence's place, the offsets copied from it, the coordinates
looked up by a place's record `(cafe`, the sums, the comparisons, the options. Calendar: each
person's line copied into day records, a day's records looked up, the blocks of each step of the
sweep, its later start and earlier end, the sums and fits, the slot. A step the model
has not learned shows as a low figure even when the rest of the trace is fluent.
"""
import collections
import re
import sys

import torch

from phi4r import load
from phi4r.tasks import get_task
from phi4r.train.data import encode_conversation


C = r"-?\d+ -?\d+"  # the coordinates in a record `(cafe 3 2)`
SPATIALMAP = {
 "line_name": r"^\d+\. The (\w+) is",
 "offset_copy": r"^\d+\. The \w+ is (.+?) of the",
 "base_name": r"of the (\w+) \(",
 "base_record_name": r"of the \w+ \((\w+) ",
 "base_coords": rf"of the \w+ \(\w+ ({C})\):",
 "x_operand": r"x (-?\d+) [+-] \d+ =",
 "x_offset": r"x -?\d+ ([+-] \d+) =",
 "y_offset": r"y -?\d+ ([+-] \d+) =",
 "x_result": r"x -?\d+ [+-] \d+ = (-?\d+)",
 "y_result": r"y -?\d+ [+-] \d+ = (-?\d+)",
 "x_last": r"x [^,]*= (-?\d+), y",
 "y_last": r"y [^,]*= (-?\d+), so \(",
 "so_coords": rf"so \(\w+ ({C})\)\.",
 "question": r"^Question: (.+)$",
 "ref_name": rf"(?:^From|^The \w+ \(\w+ {C}\) from) the (\w+)",
 "ref_coords": rf"(?:^From|^The \w+ \(\w+ {C}\) from) the \w+ \(\w+ ({C})\)",
 "subj_name": rf"^The (\w+) \(\w+ {C}\) from the",
 "subj_coords": rf"^The \w+ \(\w+ ({C})\) from the",
 "opt_place": r"^[A-D]\. (\w+) \(",
 "opt_coords": rf"^[A-D]\. \w+ \(\w+ ({C})\)",
 "cnt_name": r"^\d+\. The (\w+)(?: \(|:)",
 "cnt_coords": rf"^\d+\. The \w+ \(\w+ ({C})\)",
 "ref_x": r"x -?\d+ vs (-?\d+) \w+, y",
 "name_x": r"x -?\d+ vs -?\d+ (\w+), y",
 "ref_y": r"y -?\d+ vs (-?\d+) \w+, so",
 "name_y": r"y -?\d+ vs -?\d+ (\w+), so",
 "dir_word": r", so (\w+)[.,]",
 "yes_no": r"(yes|no)[.,]",
 "running": r"(?:yes|no), (\d+)\.",
 "count_total": r"^Places to the \w+: (\d+)",
 "opt_value": r"^[A-D]\. ([^:(]+): (?:yes|no)",
 "final_letter": r"Final Answer: ([A-D])",
}
T = r"\d\d:\d\d-\d\d:\d\d"  # a block of time
M = r"\d\d:\d\d"  # a time
P = r"(?!(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)\w*:)"  # a line that starts with a person, not a day
CALENDAR = {
 "duration": r"^Meeting of (\d+)",
 "person": rf"^{P}(\w+): [\(\[]",
 "first_records": rf"^{P}\w+: (\(.*)$",
 "later_records": rf"^{P}\w+: (\[.*)$",
 "day": r"^(\w+): \(\w+ ",
 "header_first": r"^\w+: \(\w+ ([^)]*)\) \[",
 "header_later": r"\) \[\w+ ([^\]]*)\]$",
 "pair_first": rf"^\w+ ({T}), \w+ {T}:",
 "pair_later": rf"^\w+ {T}, \w+ ({T}):",
 "start_copy": rf": start ({M} vs {M}) later",
 "later_start": rf"later ({M}), end",
 "end_copy": rf", end ({M} vs {M}) earlier",
 "earlier_end": rf"earlier ({M}) \w+",
 "ends_first": rf"earlier {M} (\w+)",
 "overlap_or_none": rf"earlier {M} \w+(, none|, {M}|, buffers|, hours|, outside)",
 "sum": rf"{M} \+ \d+ = ({M})",
 "fit": rf"= {M} vs {M} (fits|too short)",
 "nothing": r"^\w+: (nothing) fits",
 "slot": rf"constraint is (\w+ {T})\.",
 "final": r"Final Answer: (.+)",
}
PATTERNS = {"spatialmap": SPATIALMAP, "calendar": CALENDAR}


def main(model_dir, task_name="spatialmap", level=1, n=40, seed=0):
    model, tok = load(model_dir, dtype="float32")
    task = get_task(task_name)
    pats = PATTERNS[task_name]
    hits = collections.defaultdict(list)
    for inst in task.generate(n, seed, difficulty=level):
        msgs = [{"role": "user", "content": inst.prompt}, {"role": "assistant", "content": task.teacher(inst)}]
        ex = encode_conversation(tok, msgs)
        with torch.no_grad():
            pred = model(torch.tensor([ex.ids]))[0].argmax(-1)
        text, spans = "", []
        for t in range(len(ex.ids)):
            if ex.mask[t]:
                piece = tok.decode([ex.ids[t]])
                spans.append((len(text), len(text) + len(piece), t))
                text += piece
        for kind, pat in pats.items():
            for m in re.finditer(pat, text, re.M):
                a, b = m.span(1)
                toks = [t for (s, e, t) in spans if s < b and e > a and tok.decode([ex.ids[t]]).strip()]
                hits[kind].append(all(int(pred[t - 1]) == ex.ids[t] for t in toks))
    print(model_dir, task_name, "level", level)
    print("  ".join(f"{k} {100*sum(v)/len(v):.0f}%({len(v)})" for k in pats if (v := hits[k])))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "spatialmap", int(sys.argv[3]) if len(sys.argv) > 3 else 1)
