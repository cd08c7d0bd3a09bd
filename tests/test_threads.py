"""phi4r.threads.adapt: fewer intra-op threads while other processes use the CPUs, back after."""
import os
import sys
import time

import pytest
import torch

from phi4r import threads
from phi4r.threads import INTERVAL, ThreadAdapter


class Machine:
    """A fake clock, CPU busy time and own CPU time: `run(seconds, others, own)` advances them."""

    def __init__(self, threads_now: int):
        self.t, self.busy, self.own, self.threads, self.sets = 100.0, 1000.0, 5.0, threads_now, []

    def run(self, seconds: float, others: float, own: float) -> None:
        self.t += seconds
        self.busy += seconds * (others + own)
        self.own += seconds * own

    def set_threads(self, n: int) -> None:
        self.threads = n
        self.sets.append(n)

    def adapter(self, **kw) -> ThreadAdapter:
        return ThreadAdapter(busy=lambda: self.busy, own=lambda: self.own, clock=lambda: self.t,
                             set_threads=self.set_threads, get_threads=lambda: self.threads, **kw)


def test_gives_up_a_thread_per_core_others_take_and_takes_it_back():
    m = Machine(threads_now=4)
    adapt = m.adapter(cpus=4)
    assert adapt() == 4  # first call: the baseline, nothing measured yet
    m.run(1.0, others=0.1, own=4.0)  # background noise: keeps every thread
    assert adapt() == 4 and m.sets == []
    m.run(1.0, others=1.0, own=3.0)  # one busy process
    assert adapt() == 3
    m.run(1.0, others=2.7, own=1.3)
    assert adapt() == 1  # never below 1 ...
    m.run(1.0, others=3.9, own=1.0)
    assert adapt() == 1
    m.run(1.0, others=0.0, own=1.0)  # ... and back to the user's count, never above it
    assert adapt() == 4
    assert m.sets == [3, 1, 4]


def test_own_spinning_threads_are_not_others():
    m = Machine(threads_now=2)
    adapt = m.adapter(cpus=2)
    adapt()
    m.run(1.0, others=0.0, own=2.0)  # both of our threads busy (working or spinning)
    assert adapt() == 2 and adapt.others == pytest.approx(0.0)


def test_measures_at_most_every_interval_and_is_cheap_between():
    m = Machine(threads_now=2)
    calls = []
    adapt = ThreadAdapter(cpus=2, busy=lambda: calls.append(1) or m.busy, own=lambda: m.own, clock=lambda: m.t,
                          set_threads=m.set_threads, get_threads=lambda: m.threads)
    adapt()
    m.run(INTERVAL / 10, others=2.0, own=0.0)
    assert adapt() == 2 and len(calls) == 1  # too soon: not measured
    m.run(INTERVAL, others=2.0, own=0.0)
    assert adapt() == 1 and len(calls) == 2
    start = time.perf_counter()
    for _ in range(1000):
        adapt()
    assert (time.perf_counter() - start) / 1000 < 20e-6


def test_ceiling_is_the_count_found_first():
    m = Machine(threads_now=1)
    adapt = m.adapter(cpus=8)
    adapt()
    m.run(1.0, others=0.0, own=1.0)
    assert adapt() == 1 and m.sets == []  # one thread asked for: more cores free changes nothing


def test_a_count_the_user_sets_later_is_the_new_ceiling():
    m = Machine(threads_now=4)
    adapt = m.adapter(cpus=4)
    adapt()
    m.run(1.0, others=2.0, own=2.0)
    assert adapt() == 2
    m.threads = 3  # the user (e.g. a new LLM(threads=3)) sets a count of their own
    m.run(1.0, others=0.0, own=3.0)
    assert adapt() == 3  # a quiet machine: the user's new count, not the first one (4)
    m.run(1.0, others=3.0, own=1.0)
    assert adapt() == 1
    m.run(1.0, others=0.0, own=1.0)
    assert adapt() == 3 and m.sets == [2, 1, 3]


def test_no_proc_stat_changes_nothing():
    m = Machine(threads_now=2)
    adapt = ThreadAdapter(cpus=2, busy=lambda: None, own=lambda: m.own, clock=lambda: m.t,
                          set_threads=m.set_threads, get_threads=lambda: m.threads)
    for _ in range(3):
        m.run(1.0, others=2.0, own=0.0)
        assert adapt() == 2
    assert m.sets == []


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs /proc/stat")
def test_real_busy_processes_take_the_threads(processes):
    """Busy processes on every CPU: the real readings give up all threads but one."""
    cpus = threads._cpus()
    if cpus < 2:
        pytest.skip("one CPU: nothing to give up")
    sets = []
    adapt = ThreadAdapter(ceiling=cpus, cpus=cpus, set_threads=sets.append, get_threads=lambda: cpus)
    hogs = [processes.start([sys.executable, "-c", "while True: pass"]) for _ in range(cpus)]
    time.sleep(0.3)  # let them start
    adapt()
    time.sleep(INTERVAL + 0.3)
    assert adapt() == 1, f"others used {adapt.others:.2f} cores"
    assert sets == [1]
    for hog in hogs:
        processes.kill(hog)


def test_env_var_turns_it_off(monkeypatch):
    monkeypatch.setenv("PHI4R_ADAPT_THREADS", "0")
    monkeypatch.setattr(threads, "_adapter", None)
    assert threads.adapt() == torch.get_num_threads()
    assert threads._adapter is None


def test_module_adapt_keeps_the_set_count_on_a_quiet_call(monkeypatch):
    monkeypatch.delenv("PHI4R_ADAPT_THREADS", raising=False)
    monkeypatch.setattr(threads, "_adapter", None)
    n = torch.get_num_threads()
    try:
        assert threads.adapt() == n  # the first call only takes its baseline
        assert threads._adapter.ceiling == n
    finally:
        threads.reset()
    assert torch.get_num_threads() == n and threads._adapter is None


@pytest.mark.parametrize("threads_n", [2, 3])
@pytest.mark.parametrize("rows", [1, 5, 17])
def test_linear_kernels_same_bits_on_any_thread_count_and_under_load(processes, threads_n, rows):
    """The linear kernels' threads claim chunks of channels dynamically (kernels/parallel.h): whichever
    thread computes a channel, its result is the same bits as on one thread, also with a busy process
    making one thread slow (so the others take its chunks)."""
    from phi4r.kernels import int4, int8, w8a8

    gen = torch.Generator().manual_seed(rows)
    n, k = 1000, 320  # many chunks of 64 channels, a tail
    q = torch.randint(-7, 8, (n, k), generator=gen, dtype=torch.int8)
    scales = (torch.rand(n, generator=gen) / 64 + 1e-4).to(torch.bfloat16)
    x = torch.randn(rows, k, generator=gen).to(torch.bfloat16)
    calls = []
    if (fn := int8.linear()) is not None:
        calls.append(lambda: fn(x, q, scales))
    if (fn4 := int4.linear()) is not None:
        packed4, s4 = int4.pack(q), scales[:, None].expand(n, k // 64).contiguous()
        calls.append(lambda: fn4(x, packed4, s4, 64))
    if (fn8 := w8a8.linear()) is not None:
        packed8, comp = w8a8.pack(q)
        calls.append(lambda: fn8(x, packed8, comp, scales))
    if not calls:
        pytest.skip("no linear kernel on this CPU")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ref = [c() for c in calls]
        torch.set_num_threads(threads_n)
        assert all(torch.equal(c(), r) for c, r in zip(calls, ref))
        hog = processes.start([sys.executable, "-c", "while True: pass"])
        time.sleep(0.2)
        for _ in range(20):
            assert all(torch.equal(c(), r) for c, r in zip(calls, ref))
        processes.kill(hog)
    finally:
        torch.set_num_threads(before)
