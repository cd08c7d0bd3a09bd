"""ArenaHard: open-ended prompts, each answer judged against a baseline model's by an LLM judge.

Scored as lmarena/arena-hard-auto does it (gen_judgment.py and show_result.py at commit 196f6b8):
- Every question is judged twice (`judge` steps in evals/judge.py): the baseline's answer as
  assistant A and the model's as B (`arenahard_model_b`), then the other way round
  (`arenahard_model_a`), so a judge's preference for a position cancels out.
- The verdict is the last `[[X]]` in the judge's reply (upper-cased), else the last `[X]`, X made of
  A, B, <, >, =. It reads as assistant A's score: A>B 1, A=B 0.5, B>A 0 (and the mirrored spellings
  B<A, B=A, A<B); a strong verdict (A>>B, B>>A and mirrors) counts as WEIGHT = 3 battles.
- A question whose reply in either order has no such verdict, or one outside those labels, counts
  as no battles (arena-hard-auto drops it as a null judgment); here it is counted in `verdict_errors`.
- The score is the model's win rate over all battles against the baseline, a tie counting a half
  (`win_rate`). arena-hard-auto reports a Bradley-Terry score against the baseline; with one model
  and one baseline the Bradley-Terry maximum-likelihood win probability is exactly this weighted
  win rate, so the two are the same number.

A sample's own score is its question's win fraction (its wins over its battles): the per-question
mean that the generic metrics average differs from the pooled rate when questions carry different
numbers of battles, so the card and `win_rate` pool the battles as arena-hard-auto does.

The earlier arena-hard-auto (v0.1's judge_config.yaml) differed only in its reply parsing: it took
the `[[X]]` verdict when a reply held exactly one distinct one, and asked the judge once more to
finish its judgment when it held none.

Files (nothing is downloaded): arena-hard-auto's `data/<bench>/question.jsonl` (v0.1: `question_id`,
`category`, `cluster`, `turns[{content}]`; later: `uid`, `category`, `cluster`, `prompt`) and the
baseline's answers in `model_answer/<model>.jsonl` beside it (v0.1: `question_id`, `model_id`,
`choices[{turns[{content}]}]`; later: `uid`, `model`, `messages[..., {content: {answer}}]`). The
baseline is arena-hard-auto's own for the question's category (gpt-4-0314 for arena-hard-v0.1),
else the only file in `model_answer/`. Give the path of the question file or of its directory.
"""
from __future__ import annotations

import re
from pathlib import Path
from statistics import mean, stdev

from .base import Instance, Score, Task
from .external import FORMATS, field, read_records

WEIGHT = 3
PAIRWISE_STEPS = ("arenahard_model_b", "arenahard_model_a")  # the model's answer as B, then as A
# Assistant A's score for each verdict and how many battles it counts as.
LABELS = {
    "A>>B": (1.0, WEIGHT), "A>B": (1.0, 1), "A=B": (0.5, 1), "B>A": (0.0, 1), "B>>A": (0.0, WEIGHT),
    "B<<A": (1.0, WEIGHT), "B<A": (1.0, 1), "B=A": (0.5, 1), "A<B": (0.0, 1), "A<<B": (0.0, WEIGHT),
}
PATTERNS = (r"\[\[([AB<>=]+)\]\]", r"\[([AB<>=]+)\]")
# arena-hard-auto's baseline per question category (utils/judge_utils.py JUDGE_SETTINGS).
BASELINES = {"arena-hard-v0.1": "gpt-4-0314", "hard_prompt": "o3-mini-2025-01-31", "coding": "o3-mini-2025-01-31",
             "math": "o3-mini-2025-01-31", "creative_writing": "gemini-2.0-flash-001"}
QUESTION_FILE, ANSWER_DIR = "question.jsonl", "model_answer"


def parse_verdict(reply: str) -> str | None:
    """The verdict label in a judge's reply, as arena-hard-auto reads it; None when there is none."""
    for pattern in PATTERNS:
        found = [m for m in re.findall(pattern, reply.upper()) if m]
        if found:
            return found[-1].strip("\n")
    return None


def battles(verdicts: tuple[str | None, str | None]) -> tuple[float, int, int]:
    """(the model's weighted wins, battles, malformed verdicts) of one question, from its verdicts
    with the model as B and as A; a question with a malformed verdict counts no battles."""
    bad = sum(v not in LABELS for v in verdicts)
    if bad:
        return 0.0, 0, bad
    (as_b, wb), (as_a, wa) = LABELS[verdicts[0]], LABELS[verdicts[1]]
    return (1.0 - as_b) * wb + as_a * wa, wb + wa, 0


def win_rate(samples: list[dict]) -> dict:
    """The model's win rate against the baseline over the battles of each run (samples as the eval
    runner logs them, their details from `ArenaHard.grade`), mean ± std over runs."""
    runs: dict[int, list[float]] = {}
    for s in samples:
        d = s.get("details") or {}
        wins, count = runs.setdefault(s["run"], [0.0, 0])
        runs[s["run"]] = [wins + d.get("wins", 0.0), count + d.get("battles", 0)]
    per_run = [w / n if n else None for w, n in (runs[r] for r in sorted(runs))]
    rates = [r for r in per_run if r is not None]
    return {"mean": mean(rates) if rates else None, "std": stdev(rates) if len(rates) > 1 else None,
            "per_run": per_run, "battles": sum(n for _, n in runs.values()),
            "verdict_errors": sum((s.get("details") or {}).get("verdict_errors", 0) for s in samples),
            "unjudged": sum(bool((s.get("details") or {}).get("needs_judge")) for s in samples)}


def _text(record: dict) -> str:
    """A question's or an answer's single turn, in either of arena-hard-auto's layouts."""
    if "turns" in record:
        turns = record["turns"]
    elif "choices" in record:
        turns = record["choices"][0]["turns"]
    elif "messages" in record:
        content = record["messages"][-1]["content"]
        return content["answer"] if isinstance(content, dict) else content
    else:
        return str(field(record, "prompt", "question"))
    if len(turns) != 1:
        raise ValueError(f"{len(turns)} turns: ArenaHard's judge prompt takes single-turn questions only")
    return turns[0]["content"]


def locate(path) -> tuple[Path, Path]:
    """The question file and the baseline answers' directory for a given question file or directory."""
    path = Path(path)
    questions = path / QUESTION_FILE if path.is_dir() else path
    if not questions.is_file():
        raise FileNotFoundError(f"{questions}: no such file (give arena-hard-auto's question.jsonl or its directory)")
    answers = questions.parent / ANSWER_DIR
    if not answers.is_dir():
        raise ValueError(f"{answers}: no such directory: the baseline's answers go in "
                                f"{ANSWER_DIR}/<model>.jsonl beside {questions.name}, as arena-hard-auto keeps them")
    return questions, answers


def load_baseline(answers: Path, category: str) -> tuple[str, dict[str, str]]:
    """(the baseline model, its answer per question id) for questions of `category`."""
    files = sorted(p for p in answers.iterdir() if p.suffix in FORMATS)
    wanted = answers / f"{BASELINES.get(category, '')}.jsonl"
    if wanted.is_file():
        chosen = wanted
    elif len(files) == 1:
        chosen = files[0]
    else:
        raise ValueError(f"{answers}: no baseline answers for category {category!r}: looked for {wanted.name}"
                                + (f" and found {len(files)} other files ({', '.join(p.name for p in files)}): "
                                   "keep only the baseline's" if files else ""))
    out = {}
    for i, record in enumerate(read_records(chosen)):
        try:
            out[str(field(record, "question_id", "uid"))] = _text(record)
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise ValueError(f"{chosen}: record {i + 1} is no arena-hard-auto answer: {e}") from None
    return chosen.stem, out


class ArenaHard(Task):
    name = "arenahard"
    procedural = False

    def load(self, path, limit: int | None = None) -> list[Instance]:
        questions, answers = locate(path)
        baselines: dict[str, tuple[str, dict[str, str]]] = {}
        out = []
        for i, record in enumerate(read_records(questions, limit)):
            try:
                qid, question = str(field(record, "question_id", "uid")), _text(record)
            except (KeyError, IndexError, TypeError, ValueError) as e:
                raise ValueError(f"{questions}: record {i + 1} is no arena-hard-auto question: {e}") from None
            category = str(record.get("category") or "arena-hard-v0.1")
            if category not in baselines:
                baselines[category] = load_baseline(answers, category)
            model, answered = baselines[category]
            if qid not in answered:
                raise ValueError(f"{answers / model}.jsonl has no answer to question {qid}")
            out.append(Instance(id=f"{self.name}-{qid}", task=self.name, prompt=question,
                                answer={"baseline": answered[qid], "baseline_model": model}, category=category,
                                meta={"cluster": record.get("cluster", "")}))
        return out

    def parse(self, text):
        return None  # nothing to extract: the judge reads the whole answer

    def check(self, inst, response):
        return self.grade(inst, response)

    def grade(self, inst, response, mode="strict", judge=None):
        """The same judged verdict in every scoring mode: ArenaHard has no rule-based score."""
        if mode not in ("strict", "eureka"):
            raise ValueError(f"unknown scoring mode {mode!r}")
        if judge is None:
            return Score(0.0, None, {"needs_judge": True, "wins": 0.0, "battles": 0, "verdict_errors": 0})
        replies = [judge(step, inst, response) for step in PAIRWISE_STEPS]
        verdicts = tuple(None if r is None else parse_verdict(r) for r in replies)
        wins, count, bad = battles(verdicts)
        return Score(wins / count if count else 0.0, list(verdicts),
                     {"needs_judge": False, "wins": wins, "battles": count, "verdict_errors": bad})
