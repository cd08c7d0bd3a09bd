// Dynamic work distribution for phi4r's kernels (int8_linear.cpp, int4_linear.cpp, w8a8_linear.cpp).
//
// at::parallel_for hands each thread a fixed, equal share of the range. When another program takes one
// of the cores, the thread there runs a fraction of the time and every call waits for its share: a
// decode step of ~100 such calls then runs at the speed of the slowest core (measured: 5-17x slower
// with one busy process on two cores). dynamic_for instead lets the threads claim `chunk` items at a
// time from a shared counter until none are left: a thread on a busy core claims fewer, the others
// claim the rest, and the call only waits for the chunk the slow thread holds.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace phi4r {

// f(i0, i1) over [begin, end) in chunks of at least `chunk` items (the last one shorter), on torch's intra-op
// threads (at most one per chunk); on the calling thread alone when there is one chunk, one thread, or
// the caller already runs in a parallel region. Chunks are claimed in order: items i0.. of one call are
// contiguous, so a thread streams its chunk's weights sequentially.
template <typename F>
void dynamic_for(int64_t begin, int64_t end, int64_t chunk, const F& f) {
  if (end <= begin) return;
  const int64_t n = end - begin, available = at::get_num_threads();
  // At least `chunk` items, and at most PER_THREAD chunks per thread: long sequential streams (the
  // hardware prefetchers and the kernels' next-tile prefetches work within a chunk; threads taking
  // turns on 64-channel chunks measured up to ~8% slower linears on this noisy VM), yet fine enough
  // that a slow thread holds up at most 1/PER_THREAD of its share.
  constexpr int64_t PER_THREAD = 8;
  chunk = std::max<int64_t>({int64_t(1), chunk, (n + available * PER_THREAD - 1) / (available * PER_THREAD)});
  const int64_t chunks = (n + chunk - 1) / chunk;
  const int64_t threads = std::min<int64_t>(available, chunks);
  if (threads <= 1 || at::in_parallel_region()) {
    f(begin, end);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1, std::memory_order_relaxed); c < chunks;
         c = next.fetch_add(1, std::memory_order_relaxed))
      f(begin + c * chunk, std::min(end, begin + (c + 1) * chunk));
  });
}

}  // namespace phi4r
