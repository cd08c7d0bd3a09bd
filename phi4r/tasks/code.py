"""Code generation graded by running the answer's program on tests, in phi4r.sandbox.

The answer is the last ```python block after the reasoning. A problem passes when every test
passes (pass@1 over runs is the mean; pass@k comes from the runner's metrics). Layouts:

- `livecodebench`: LiveCodeBench's code_generation_lite records: `question_content`, `starter_code`,
  `public_test_cases` / `private_test_cases` (JSON lists of {input, output, testtype}; the private
  ones are also published zlib+pickle+base64-packed), `metadata` (JSON with `func_name`),
  `platform`, `difficulty`, `question_id`. Graded as lcb_runner/evaluation/testing_util.py does:
  its import prelude; "functional" tests call `Solution().func_name(*json lines)` and compare with
  `==` (tuples as lists); "stdin" tests compare stripped lines, token-wise as Decimals when they
  differ; 6 s per test.
- `codeforces`: Codeforces problems as open-r1/codeforces publishes them: `description`,
  `input_format`, `output_format`, `examples`, `official_tests` (or `tests`) as {input, output},
  `time_limit` (s), `memory_limit` (MB); stdin/stdout graded like LiveCodeBench's stdin tests.
"""
from __future__ import annotations

import base64
import io
import json
import pickle
import re
import secrets
import sys
import zlib
from decimal import Decimal, InvalidOperation

from ..sandbox import Limits, preflight, run_python
from .base import Instance, Score
from .external import ExternalTask, field

# LiveCodeBench runs every program after these imports (and a deep recursion limit).
_MODULES = ["string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random", "statistics",
            "itertools", "functools", "operator", "io", "sys", "json", "builtins", "typing"]
PRELUDE = "".join(f"from {m} import *\n" for m in _MODULES) + "".join(
    f"import {m}\n" for m in _MODULES if m not in ("builtins", "typing")) + "sys.setrecursionlimit(50000)\n"

_FENCE = re.compile(r"```[ \t]*(python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_code(text: str) -> str | None:
    """The last ```python block (a bare ``` block counts too when no block is marked python)."""
    blocks = _FENCE.findall(text)
    marked = [code for lang, code in blocks if lang]
    code = (marked or [code for _, code in blocks] or [None])[-1]
    return code if code and code.strip() else None


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]


def _decimals(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(tok) for tok in line.split()]
    except InvalidOperation:
        return None


def outputs_match(got: str, expected: str) -> bool:
    """LiveCodeBench's stdin check: same number of stripped lines, each equal as text or as a list of
    decimals (so "1.50" matches "1.5", and no float rounding merges distinct big integers)."""
    got_lines, want_lines = _lines(got), _lines(expected)
    if len(got_lines) != len(want_lines):
        return False
    for g, w in zip(got_lines, want_lines):
        if g != w:
            dg, dw = _decimals(g), _decimals(w)
            if dg is None or dw is None or dg != dw:
                return False
    return True


def run_stdin_tests(code: str, tests: list[dict], limits: Limits) -> dict:
    """Run the program once per test, stopping at the first failure."""
    for i, test in enumerate(tests):
        r = run_python(PRELUDE + code, stdin=test["input"], limits=limits)
        if not r.ok:
            return {"passed": i, "tests": len(tests), "verdict": r.status, "stderr": r.stderr[-500:]}
        if not outputs_match(r.stdout, test["output"]):
            return {"passed": i, "tests": len(tests), "verdict": "wrong_answer"}
    return {"passed": len(tests), "tests": len(tests), "verdict": "accepted"}


# Runs inside the sandbox: loads the solution as a module (not __main__), calls the method on each
# test and reports, after a per-run token the solution's code does not see, how many passed.
_FUNCTIONAL = '''
import json, sys, types
token = sys.stdin.readline().strip()
tests = json.loads(sys.stdin.read())
mod = types.ModuleType("solution")
exec(compile(open("solution.py").read(), "solution.py", "exec"), mod.__dict__)
obj = mod.Solution() if hasattr(mod, "Solution") else mod
method = getattr(obj, sys.argv[1])
passed = 0
for test in tests:
    args = [json.loads(line) for line in test["input"].split("\\n")]
    got = method(*args)
    if isinstance(got, tuple):
        got = list(got)
    if got != json.loads(test["output"]):
        break
    passed += 1
print("\\n" + token, passed)
'''


def run_functional_tests(code: str, tests: list[dict], func_name: str, limits: Limits) -> dict:
    """All tests in one process (as LiveCodeBench does), stopping at the first wrong answer."""
    token = secrets.token_hex(16)
    r = run_python(_FUNCTIONAL, stdin=token + "\n" + json.dumps(tests), files={"solution.py": PRELUDE + code},
                   args=(func_name,), limits=limits)
    passed = _reported(r.stdout, token)
    if passed is None:  # crashed, timed out, or exited before the harness could report
        verdict = "no_result" if r.ok else r.status
    else:
        verdict = "accepted" if passed == len(tests) else "wrong_answer"
    return {"passed": passed or 0, "tests": len(tests), "verdict": verdict, "stderr": r.stderr[-500:]}


def _reported(stdout: str, token: str) -> int | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(token + " "):
            return int(line.split()[1])
    return None


class CodeTask(ExternalTask):
    """A file of problems whose answers are programs; `answer` holds the tests."""

    def load(self, path, limit=None):
        preflight()  # fail before any answer is generated, not at the first grading
        return super().load(path, limit)

    def parse(self, text):
        return extract_code(text)

    def check(self, inst, response):
        code = self.extract(response)
        if code is None:
            return Score(0.0, None, {"verdict": "no_code"})
        details = self.run_tests(inst, code)
        return Score(float(details["verdict"] == "accepted"), code, details)

    def run_tests(self, inst: Instance, code: str) -> dict:
        raise NotImplementedError


def _tests(value) -> list[dict]:
    if isinstance(value, list):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        # The lite release packs the private tests: base64 of zlib of a pickled JSON string.
        return json.loads(_load_pickled_str(zlib.decompress(base64.b64decode(value))))


class _StrOnly(pickle.Unpickler):
    def find_class(self, module, name):  # the payload is a plain string: no object may be built
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a test-case field")


def _load_pickled_str(data: bytes) -> str:
    value = _StrOnly(io.BytesIO(data)).load()
    if not isinstance(value, str):
        raise TypeError(f"expected packed JSON text, got {type(value).__name__}")
    return value


STDIN_INSTRUCTION = ("Read the input from standard input, solve the problem and write the answer to standard "
                     "output. Give your final program in a single ```python code block.")


class LiveCodeBench(CodeTask):
    name = "livecodebench"
    timeout = 6.0  # seconds per test, as LiveCodeBench

    def from_record(self, record):
        question = field(record, "question_content", "question")
        starter = record.get("starter_code") or ""
        tests = _tests(field(record, "public_test_cases", default=[])) + \
            _tests(field(record, "private_test_cases", default=[]))
        if not tests:
            raise ValueError(f"livecodebench record {record.get('question_id')!r} has no test cases")
        meta = record.get("metadata") or {}
        meta = json.loads(meta) if isinstance(meta, str) else meta
        if starter.strip():
            prompt = (f"{question}\n\nComplete the starter code below and give the whole solution in a single "
                      f"```python code block.\n\n```python\n{starter}\n```")
        else:
            prompt = f"{question}\n\n{STDIN_INSTRUCTION}"
        answer = {"tests": [{k: t[k] for k in ("input", "output", "testtype")} for t in tests],
                  "func_name": meta.get("func_name")}
        return Instance(id="", task=self.name, prompt=prompt, answer=answer,
                        category=str(record.get("difficulty") or record.get("platform") or "livecodebench"),
                        meta={"platform": record.get("platform"), "contest_date": record.get("contest_date")})

    def run_tests(self, inst, code):
        tests, func = inst.answer["tests"], inst.answer.get("func_name")
        per_test = Limits(cpu_seconds=self.timeout, wall_seconds=2 * self.timeout + 5)
        if func and any(t.get("testtype") == "functional" for t in tests):
            limits = Limits(cpu_seconds=self.timeout * len(tests), wall_seconds=2 * self.timeout * len(tests) + 10)
            return run_functional_tests(code, tests, func, limits)
        return run_stdin_tests(code, tests, per_test)


class Codeforces(CodeTask):
    name = "codeforces"

    def load(self, path, limit=None):
        # Interactive and file-I/O problems need a judge program or files: they are left out, saying so.
        insts = super().load(path, limit)
        kept = [i for i in insts if i.answer is not None]
        if len(kept) < len(insts):
            print(f"codeforces: skipped {len(insts) - len(kept)} interactive or file-I/O problems",
                  file=sys.stderr)
        return kept

    def from_record(self, record):
        title = record.get("title") or ""
        parts = [f"# {title}" if title else "", field(record, "description", "problem", "statement")]
        for key, head in (("input_format", "Input"), ("output_format", "Output"), ("note", "Note")):
            if record.get(key):
                parts.append(f"## {head}\n{record[key]}")
        for ex in record.get("examples") or []:
            parts.append(f"## Example\nInput:\n{ex['input']}\nOutput:\n{ex['output']}")
        time_limit = float(record.get("time_limit") or 2.0)
        prompt = "\n\n".join(p for p in parts if p) + (
            f"\n\nTime limit: {time_limit:g} s. Memory limit: {record.get('memory_limit') or 256} MB.\n\n"
            + STDIN_INSTRUCTION)
        tests = record.get("official_tests") or record.get("tests") or record.get("examples") or []
        special = record.get("interaction_format") or record.get("input_mode") not in (None, "stdio")
        answer = None if special or not tests else {
            "tests": [{"input": t["input"], "output": t["output"]} for t in tests],
            "time_limit": time_limit, "memory_limit": int(record.get("memory_limit") or 256)}
        rating = record.get("rating")
        return Instance(id="", task=self.name, prompt=prompt, answer=answer,
                        category=str(rating) if rating else "codeforces")

    def run_tests(self, inst, code):
        a = inst.answer
        # The interpreter's own address space counts against RLIMIT_AS: the limit gets a margin.
        limits = Limits(cpu_seconds=a["time_limit"], wall_seconds=2 * a["time_limit"] + 5,
                        memory_mb=a["memory_limit"] + 256)
        return run_stdin_tests(code, a["tests"], limits)
