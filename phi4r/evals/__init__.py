"""Evaluation as Microsoft's Eureka harness scores the card's benchmarks: every instance answered
`runs` times; accuracy as mean ± std over runs, best-of-N, worst-of-N, majority vote, pass@k; by
task, category and difficulty; a resumable sample log; a markdown/JSON/PNG report.

    from phi4r.evals import run_eval, LocalBackend
    summary = run_eval(LocalBackend("nano"), ["sat3", "tsp"], "runs/nano", runs=5, limit=20)
"""
from __future__ import annotations

from .backends import Backend, BackendError, Completion, Job, LocalBackend, TeacherBackend
from .endpoint import EndpointBackend
from .metrics import breakdown, majority_score, pass_at_k, summarize
from .runner import EvalConfigError, run_eval

__all__ = ["Backend", "BackendError", "Completion", "EndpointBackend", "EvalConfigError", "Job", "LocalBackend",
           "TeacherBackend", "breakdown", "majority_score", "pass_at_k", "run_eval", "summarize"]
