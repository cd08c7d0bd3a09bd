"""Shared by the kernel micro-benchmarks (bench_int8_kernel.py, bench_decode_attention.py)."""
from __future__ import annotations

import statistics
import time


def median_time(fn, args_list, reps: int) -> float:
    """Median seconds of one call, cycling through args_list (two untimed warm-up calls first)."""
    for a in args_list[:2]:
        fn(*a)
    times = []
    for i in range(reps):
        a = args_list[i % len(args_list)]
        start = time.perf_counter()
        fn(*a)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
