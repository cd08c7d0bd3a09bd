"""Prometheus text-format metrics, written by hand: a handful of counters and histograms does not
need a client library. Names follow vLLM's where one exists (`num_requests_running`, ...)."""
from __future__ import annotations

import bisect
import threading
from collections import Counter

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Histogram:
    def __init__(self, buckets=LATENCY_BUCKETS):
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def lines(self, name: str) -> list[str]:
        out, total = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts):
            total += count
            out.append(f'{name}_bucket{{le="{bound}"}} {total}')
        return out + [f"{name}_sum {self.sum:.6f}", f"{name}_count {total}"]


class Metrics:
    """Updated from request handlers; read by GET /metrics. A lock keeps each update whole."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests = Counter()  # (endpoint, HTTP status) -> count
        self.finish_reasons = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.reasoning_tokens = 0
        self.latency = Histogram()
        self.ttft = Histogram()

    def request_done(self, endpoint: str, status: int, latency: float | None = None) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1
            if latency is not None:
                self.latency.observe(latency)

    def tokens(self, prompt: int, completion: int, reasoning: int, finish_reasons) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.completion_tokens += completion
            self.reasoning_tokens += reasoning
            self.finish_reasons.update(finish_reasons)

    def first_token(self, seconds: float) -> None:
        with self._lock:
            self.ttft.observe(seconds)

    def render(self, running: int, waiting: int) -> str:
        with self._lock:
            lines = []

            def metric(name, kind, help_, samples):
                """`samples`: the metric's lines, or its one unlabelled value."""
                samples = samples if isinstance(samples, list) else [f"{name} {samples}"]
                lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}", *samples])

            metric("phi4r_requests_total", "counter", "HTTP requests by endpoint and status code.",
                   [f'phi4r_requests_total{{endpoint="{e}",status="{s}"}} {n}'
                    for (e, s), n in sorted(self.requests.items())])
            metric("phi4r_request_finish_total", "counter", "Finished sequences by finish reason.",
                   [f'phi4r_request_finish_total{{reason="{r}"}} {n}' for r, n in sorted(self.finish_reasons.items())])
            metric("phi4r_prompt_tokens_total", "counter", "Prompt tokens processed.", self.prompt_tokens)
            metric("phi4r_generation_tokens_total", "counter", "Completion tokens generated (reasoning included).",
                   self.completion_tokens)
            metric("phi4r_reasoning_tokens_total", "counter", "Completion tokens inside the thinking.",
                   self.reasoning_tokens)
            metric("phi4r_num_requests_running", "gauge", "Sequences the engine is generating.", running)
            metric("phi4r_num_requests_waiting", "gauge", "Sequences accepted but waiting for an engine slot.", waiting)
            metric("phi4r_request_latency_seconds", "histogram", "Time from request to its last byte.",
                   self.latency.lines("phi4r_request_latency_seconds"))
            metric("phi4r_time_to_first_token_seconds", "histogram", "Time from request to its first token.",
                   self.ttft.lines("phi4r_time_to_first_token_seconds"))
            return "\n".join(lines) + "\n"
