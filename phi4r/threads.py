"""Fewer intra-op threads while other programs use the CPUs, back to the configured count when they stop.

A decode step is ~100 parallel calls, each ending when its slowest thread does. With as many threads as
cores, another busy program puts one of them on a shared core, and every call then waits for it (the
kernels' dynamic chunks, phi4r/kernels/parallel.h, shorten that wait but cannot remove it). With one
thread fewer per core the others take, each thread has a core to itself again.

`adapt()`, which the engine calls before every step on CPU, measures at most every INTERVAL seconds how
many cores other processes used (/proc/stat's busy time of all CPUs minus this process's own CPU time:
its spinning threads are its own) and sets torch's intra-op threads to the CPUs this process may run on
minus those cores, whole cores only from OTHERS_MARGIN on (background noise changes nothing); never more
than the count it found set at its first call or that someone set since (the user's choice, e.g.
`LLM(threads=...)`), never fewer than 1. Between measurements it is a clock read and a comparison.
PHI4R_ADAPT_THREADS=0 turns it off; without /proc/stat it changes nothing.
"""
from __future__ import annotations

import math
import os
import time

import torch

INTERVAL = 0.5  # seconds between measurements: /proc/stat counts in 10 ms ticks, so ~100 ticks on 2 CPUs
OTHERS_MARGIN = 0.35  # cores other processes must use before a thread is given up for them


def _cpu_busy_seconds() -> float | None:
    """Busy time of all CPUs since boot (user, nice, system, irq, softirq, steal), from /proc/stat."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 5 or fields[0] != b"cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]
    busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)  # minus idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class ThreadAdapter:
    """The measurement and decision behind `adapt()`, with its readings injectable for tests."""

    def __init__(self, ceiling: int | None = None, cpus: int | None = None, busy=_cpu_busy_seconds,
                 own=_own_cpu_seconds, clock=time.monotonic, set_threads=torch.set_num_threads,
                 get_threads=torch.get_num_threads):
        self.ceiling, self.cpus = ceiling, cpus
        self.busy, self.own, self.clock = busy, own, clock
        self.set_threads, self.get_threads = set_threads, get_threads
        self.others: float | None = None  # cores other processes used over the last interval
        self._last: tuple[float, float, float] | None = None  # (clock, busy, own) at the last measurement
        self._next = 0.0
        self._set: int | None = None  # the count in effect after our last call

    def __call__(self) -> int:
        now = self.clock()
        current = self.get_threads()
        if self.ceiling is None or (self._set is not None and current != self._set):
            self.ceiling = current  # first call, or the user chose a new count since our last change
        self._set = current
        if self.cpus is None:
            self.cpus = _cpus()
        if now < self._next:
            return current
        self._next = now + INTERVAL
        busy = self.busy()
        if busy is None:
            return current
        sample, last = (now, busy, self.own()), self._last
        self._last = sample
        if last is None or sample[0] <= last[0]:
            return current
        wall = sample[0] - last[0]
        self.others = max(0.0, (sample[1] - last[1]) - (sample[2] - last[2])) / wall
        taken = max(0, math.ceil(self.others - OTHERS_MARGIN))
        want = max(1, min(self.ceiling, self.cpus - taken))
        if want != current:
            self.set_threads(want)
        self._set = want
        return want


_adapter: ThreadAdapter | None = None


def adapt() -> int:
    """Set torch's intra-op thread count for the next step from the CPUs other programs use (see the
    module docstring); returns the count in effect. Cheap: call it once per engine step."""
    global _adapter
    if os.environ.get("PHI4R_ADAPT_THREADS", "1") == "0":
        return torch.get_num_threads()
    if _adapter is None:
        _adapter = ThreadAdapter()
    return _adapter()


def reset() -> None:
    """Forget the measurements and the ceiling (after the user sets a new thread count)."""
    global _adapter
    if _adapter is not None and _adapter.ceiling is not None:
        torch.set_num_threads(_adapter.ceiling)
    _adapter = None
