// Dense (fp32 or bf16 weight) linear for CPU decode: y[M, N] = x[M, K] @ w[N, K]^T, for a few rows.
//
// w is the layer's own weight in its natural row-major [N, K] layout (no packed copy), x has w's dtype,
// y too; products are summed in fp32 and y is rounded once to its dtype:
//   fp32: 16 weights per vector -> vfmadd231ps with 16 x values;
//   bf16: 32 weights per vector -> vdpbf16ps with 32 x values (bf16 x bf16 products are exact in fp32;
//         vdpbf16ps adds each adjacent pair into an fp32 lane; it treats bf16 subnormals,
//         |x| < 1.2e-38, as zero).
// Both read the same 64 bytes of weights per vector, so one loop serves both. Decoding at batch 1
// streams every weight once: the speed is the memory bandwidth, which a oneDNN prepacked fp32 GEMM
// (packed for a batch of rows) reaches only in part at one row. Register blocking as int8_linear.cpp:
// a tile of NR output channels x MR rows keeps MR * NR accumulators (one vector per dot product,
// reduced at the end by one shuffle tree for all of them), so each loaded weight vector serves all MR
// rows and each x vector all NR channels. The NR rows of a tile are NR interleaved streams, too many
// for the hardware prefetchers: every step also prefetches its share of the next tile (into L2), which
// makes the sweep over the weights one prefetched sequential stream, a tile ahead. Threads claim
// chunks of output channels as they go (parallel.h), torch's thread count of them.
//
// Built by phi4r/kernels/dense.py with -O3 -march=native on the machine that runs it (AVX-512F/BW/VL
// and AVX512-BF16 required; the loader checks the CPU flags before compiling).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

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

// ---- one tile: MR rows of x (stride ldx) times NR weight rows (stride K) -> y (stride ldy)
template <typename T, int MR, int NR>
void tile(const T* x, int64_t ldx, const T* w, int64_t K, T* y, int64_t ldy) {
  using V = Vec<T>;
  constexpr int STEP = V::N;  // k values per step: 64 bytes of each weight row
  __m512 acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_setzero_ps();
  // Each step reads NR * 64 bytes of this tile and prefetches as many of the next one, in order.
  const char* next = reinterpret_cast<const char*>(w + NR * K);
  auto step = [&](int64_t k, bool tail, typename V::M valid) __attribute__((always_inline)) {
    const int64_t b0 = k * NR * int64_t(sizeof(T));
    for (int64_t b = b0; b < b0 + NR * 64; b += 64) _mm_prefetch(next + b, _MM_HINT_T1);
    typename V::V wv[NR];
    for (int n = 0; n < NR; ++n) wv[n] = tail ? V::load(w + n * K + k, valid) : V::load(w + n * K + k);
    for (int m = 0; m < MR; ++m) {
      const typename V::V xv = tail ? V::load(x + m * ldx + k, valid) : V::load(x + m * ldx + k);
      for (int n = 0; n < NR; ++n) acc[m][n] = V::madd(acc[m][n], xv, wv[n]);
    }
  };
  int64_t k = 0;
  for (; k + STEP <= K; k += STEP) step(k, false, 0);
  if (k < K) step(k, true, typename V::M((uint64_t(1) << (K - k)) - 1));

  alignas(64) float sums[16];
  __m512 all[16];
  for (int i = 0; i < 16; ++i) all[i] = i < MR * NR ? acc[i / NR][i % NR] : _mm512_setzero_ps();
  _mm512_store_ps(sums, phi4r::reduce16(all));
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) y[m * ldy + n] = T(sums[m * NR + n]);
}

constexpr int MAX_MR = 8;  // rows per pass: more would need more than 16 accumulators at NR = 2

// Channels per tile for a call with M rows: enough independent accumulators to hide the multiply-add
// latency at one row, few enough (<= 16, with the NR weight vectors) to stay in the 32 vector registers.
inline int channels_per_tile(int64_t M) { return M <= 2 ? 8 : M <= 4 ? 4 : 2; }

// Calls f(std::integral_constant<int, mr>) for a run-time row count mr (1..MAX_MR), so that each tile
// kind is instantiated for every row count whose MR x NR accumulators fit in registers.
template <int NR, typename F>
void for_rows(int mr, F&& f) {
  switch (mr) {
#define PHI4R_CASE(R) case R: if constexpr (R * NR <= 16) return f(std::integral_constant<int, R>{}); break;
    PHI4R_CASE(1) PHI4R_CASE(2) PHI4R_CASE(3) PHI4R_CASE(4) PHI4R_CASE(5) PHI4R_CASE(6) PHI4R_CASE(7) PHI4R_CASE(8)
#undef PHI4R_CASE
  }
  TORCH_CHECK(false, "dense_linear: no tile for ", mr, " rows x ", NR, " channels");
}

// Channels [n0, n1) for all M rows, in tiles of NR channels (the last ones one channel at a time).
template <typename T, int NR>
void channels(int64_t n0, int64_t n1, const T* x, int64_t M, int64_t K, const T* w, T* y, int64_t N) {
  for (int64_t n = n0; n < n1;) {
    const bool full = n + NR <= n1;
    for (int64_t m = 0; m < M; m += MAX_MR) {
      const int mr = int(std::min<int64_t>(MAX_MR, M - m));
      if (full) for_rows<NR>(mr, [&](auto R) { tile<T, decltype(R)::value, NR>(x + m * K, K, w + n * K, K, y + m * N + n, N); });
      else for_rows<1>(mr, [&](auto R) { tile<T, decltype(R)::value, 1>(x + m * K, K, w + n * K, K, y + m * N + n, N); });
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
    if (nr == 8) channels<T, 8>(n0, n1, x, M, K, w, y, N);
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
  int64_t M = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) M *= x.size(d);
  auto out_sizes = x.sizes().vec();
  out_sizes.back() = N;
  auto y = torch::empty(out_sizes, x.options());
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
