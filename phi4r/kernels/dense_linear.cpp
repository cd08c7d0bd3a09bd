// Dense (fp32 or bf16 weight) linear for CPU decode: y[M, N] = x[M, K] @ w[N, K]^T, for a few rows.
//
// w is the layer's own weight in its natural row-major [N, K] layout (no packed copy), x has w's dtype,
// y too; products are summed in fp32 and y is rounded once to its dtype:
//   fp32: 16 weights per vector -> vfmadd231ps with 16 x values;
//   bf16: 32 weights per vector -> vdpbf16ps with 32 x values (bf16 x bf16 products are exact in fp32;
//         vdpbf16ps adds each adjacent pair into an fp32 lane; it treats bf16 subnormals,
//         |x| < 1.2e-38, as zero).
// Both read 64 bytes of weights per vector, so one loop serves both. Decoding at batch 1 streams every
// weight once: the speed is the memory bandwidth, which oneDNN's prepacked fp32 GEMM (laid out for a
// batch of rows) reaches only in part at one row. So the weights are read in their order, one output
// channel after the other: one sequential stream per thread, which the hardware prefetchers follow
// best (a tile of channels read side by side, NR streams at once, with the next tile prefetched as
// int8_linear.cpp does, measured 12-14% slower on the anchor checkpoint's decode step). A channel's
// MR rows are summed in MR x U accumulators (U vectors per step, to hide the multiply-add latency);
// the NR channels of a tile (MR * NR <= 16) are reduced at the end by one shuffle tree for all of them. Threads claim chunks of output channels as they go
// (parallel.h: a thread on a busy core takes fewer), torch's thread count of them.
//
// Built by phi4r/kernels/dense.py with -O3 -march=native on the machine that runs it (AVX-512F/BW/VL
// and AVX512-BF16 required; the loader checks the CPU flags before compiling).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include "linear.h"
#include "parallel.h"
#include "simd.h"

#include <algorithm>
#include <type_traits>

namespace {

// One vector of 64 bytes of weights or x values (16 fp32 or 32 bf16), `valid` of them on a K tail.
template <typename T>
struct Vec;

template <>
struct Vec<float> {
  static constexpr int N = 16;
  using M = __mmask16;
  using V = __m512;
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load(const float* p, M valid) { return _mm512_maskz_loadu_ps(valid, p); }
  static __m512 madd(__m512 acc, V x, V w) { return _mm512_fmadd_ps(x, w, acc); }
};

template <>
struct Vec<at::BFloat16> {
  static constexpr int N = 32;
  using M = __mmask32;
  using V = __m512bh;
  static V load(const at::BFloat16* p) { return (__m512bh)_mm512_loadu_si512(p); }
  static V load(const at::BFloat16* p, M valid) { return (__m512bh)_mm512_maskz_loadu_epi16(valid, p); }
  static __m512 madd(__m512 acc, V x, V w) { return _mm512_dpbf16_ps(acc, x, w); }
};

// ---- one tile: MR rows of x (stride ldx) times NR weight rows (stride K) -> y (stride ldy), one
// channel after the other, with a software prefetch AHEAD bytes in front of the stream (non-temporal: a
// decode step reads each weight once, and weights kept in L2/L3 evict what the rest of the step reuses).
constexpr int64_t AHEAD = 4096;

template <typename T, int MR, int NR>
void tile(const T* x, int64_t ldx, const T* w, int64_t K, T* y, int64_t ldy) {
  using V = Vec<T>;
  constexpr int STEP = V::N;           // k values per vector: 64 bytes of a weight row
  constexpr int U = MR <= 2 ? 4 : 2;   // vectors per step: independent accumulators per row
  __m512 all[16];
  for (int i = 0; i < 16; ++i) all[i] = _mm512_setzero_ps();
  for (int n = 0; n < NR; ++n) {
    const T* wn = w + n * K;
    __m512 acc[MR][U];
    for (int m = 0; m < MR; ++m)
      for (int u = 0; u < U; ++u) acc[m][u] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + U * STEP <= K; k += U * STEP) {
      typename V::V wv[U];
      for (int u = 0; u < U; ++u) {
        _mm_prefetch(reinterpret_cast<const char*>(wn + k + u * STEP) + AHEAD, _MM_HINT_NTA);
        wv[u] = V::load(wn + k + u * STEP);
      }
      for (int m = 0; m < MR; ++m)
        for (int u = 0; u < U; ++u) acc[m][u] = V::madd(acc[m][u], V::load(x + m * ldx + k + u * STEP), wv[u]);
    }
    for (; k + STEP <= K; k += STEP) {
      const typename V::V wv = V::load(wn + k);
      for (int m = 0; m < MR; ++m) acc[m][0] = V::madd(acc[m][0], V::load(x + m * ldx + k), wv);
    }
    if (k < K) {
      const typename V::M valid((uint64_t(1) << (K - k)) - 1);
      const typename V::V wv = V::load(wn + k, valid);
      for (int m = 0; m < MR; ++m) acc[m][0] = V::madd(acc[m][0], V::load(x + m * ldx + k, valid), wv);
    }
    for (int m = 0; m < MR; ++m) {
      __m512 s = acc[m][0];
      for (int u = 1; u < U; ++u) s = _mm512_add_ps(s, acc[m][u]);
      all[m * NR + n] = s;
    }
  }
  alignas(64) float sums[16];
  _mm512_store_ps(sums, phi4r::reduce16(all));
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) y[m * ldy + n] = T(sums[m * NR + n]);
}

constexpr int MAX_MR = 8;  // rows per pass: more would need more than 16 accumulators at NR = 2

// Channels per tile for a call with M rows: as many as one reduction tree takes (MR * NR <= 16 sums).
inline int channels_per_tile(int64_t M) { return M == 1 ? 16 : M == 2 ? 8 : M <= 4 ? 4 : 2; }

// Calls f(std::integral_constant<int, mr>) for a run-time row count mr (1..MAX_MR), so that each tile
// kind is instantiated for every row count whose MR x NR accumulators fit in registers.
// Channels [n0, n1) for all M rows, in tiles of NR channels (the last ones one channel at a time).
template <typename T, int NR>
void channels(int64_t n0, int64_t n1, const T* x, int64_t M, int64_t K, const T* w, T* y, int64_t N) {
  for (int64_t n = n0; n < n1;) {
    const bool full = n + NR <= n1;
    for (int64_t m = 0; m < M; m += MAX_MR) {
      const int mr = int(std::min<int64_t>(MAX_MR, M - m));
      if (full) for_rows<NR, 8>(mr, "dense_linear", [&](auto R) { tile<T, decltype(R)::value, NR>(x + m * K, K, w + n * K, K, y + m * N + n, N); });
      else for_rows<1, 8>(mr, "dense_linear", [&](auto R) { tile<T, decltype(R)::value, 1>(x + m * K, K, w + n * K, K, y + m * N + n, N); });
    }
    n += full ? NR : 1;
  }
}

template <typename T>
void run(const T* x, int64_t M, int64_t K, const T* w, T* y, int64_t N) {
  const int nr = channels_per_tile(M);
  // Chunks of whole tiles, 64 channels or more each, so threads never share a tile.
  const int64_t tiles = (N + nr - 1) / nr, grain = std::max<int64_t>(1, 64 / nr);
  phi4r::dynamic_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
    const int64_t n0 = t0 * nr, n1 = std::min(N, t1 * nr);
    if (nr == 16) channels<T, 16>(n0, n1, x, M, K, w, y, N);
    else if (nr == 8) channels<T, 8>(n0, n1, x, M, K, w, y, N);
    else if (nr == 4) channels<T, 4>(n0, n1, x, M, K, w, y, N);
    else channels<T, 2>(n0, n1, x, M, K, w, y, N);
  });
}

}  // namespace

// x [..., K] fp32 or bf16 contiguous (its leading dims are the M rows), weight [N, K] of x's dtype,
// contiguous; returns [..., N] in x's dtype. Any leading dims: the caller saves two reshapes per call.
torch::Tensor dense_linear(const torch::Tensor& x, const torch::Tensor& weight) {
  TORCH_CHECK(x.dim() >= 1 && weight.dim() == 2 && x.size(-1) == weight.size(1), "dense_linear: shapes");
  TORCH_CHECK(x.scalar_type() == weight.scalar_type() &&
              (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "dense_linear: x and weight both fp32 or both bf16");
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu() && x.is_contiguous() && weight.is_contiguous(),
              "dense_linear: contiguous CPU tensors");
  const int64_t K = x.size(-1), N = weight.size(0);
  int64_t M;
  auto y = linear_output(x, N, M);
  if (M == 0 || N == 0) return y;
  if (K == 0) return y.zero_();
  if (x.scalar_type() == at::kBFloat16)
    run(x.data_ptr<at::BFloat16>(), M, K, weight.data_ptr<at::BFloat16>(), y.data_ptr<at::BFloat16>(), N);
  else
    run(x.data_ptr<float>(), M, K, weight.data_ptr<float>(), y.data_ptr<float>(), N);
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("dense_linear", &dense_linear, "y = x @ w^T for fp32 or bf16 x and w, fp32 sums (AVX-512)");
}
