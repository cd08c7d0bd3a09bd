// W8A8 int8 linear for CPU decode (vLLM's int8 "W8A8" scheme): y[M, N] = (xq @ q^T) * xs[m] * ws[n].
//
// Weights: int8 per output channel (q in [-127, 127], scale ws[n]), quantized once, ahead of time.
// Activations: quantized here, per call, per row (per token), symmetric: xs[m] = amax(|x[m, :]|) / 127,
// xq = round_half_even(x * (127 / amax)) clamped to [-127, 127] (a zero row: xs = 0, xq = 0). The
// product is exact in int32; only the scaling (acc -> fp32, * xs[m], * ws[n], in that order, each an
// fp32 rounding) and the final conversion to x's dtype round. phi4r/quant.py's torch path computes the
// same numbers with the same operations (`w8a8_reference`), so the two agree up to those roundings.
//
// vpdpbusd multiplies unsigned by signed bytes, 4 products summed into each int32 lane. So the
// activations are made unsigned, u = xq + 128 in [1, 255], and the kernel subtracts
// comp[n] = 128 * sum_k q[n, k], precomputed at packing time: sum_k u * q = sum_k xq * q + comp[n].
//
// Layouts (packed by phi4r/kernels/w8a8.py `pack`, once):
//   weights  [Np / 64][K4][64][4] int8: a tile of 64 channels, for each group of 4 k values the 64
//            channels' 4 weights (one 256-byte step = four zmm, each 16 channels x 4 k for one vpdpbusd);
//            N padded to Np (a multiple of 64) and K to 4 * K4 with zero weights, so there are no tails
//            in the inner loop (the padded channels are computed and not stored);
//   comp     [Np] int32;  scales [N] fp32 or bf16.
// The whole weight matrix is one sequential stream (tile after tile), which the hardware prefetchers
// follow at the memory bandwidth: decode at batch 1 reads each weight byte once.
//   activations, per call: [K4][M] uint32 (4 unsigned bytes each: row m's 4 values of k group k4), so a
//            tile's rows are at constant offsets from one pointer that advances by M per k group.
// Register blocking: MR rows x 4 blocks of 16 channels = MR * 4 int32 accumulators (MR <= 6: 24
// accumulators + 4 weight vectors + a broadcast in the 32 zmm registers); each weight vector serves
// MR rows and each broadcast activation 4 blocks. Rows beyond 6 take further passes over the tile's
// weights, which by then are in L2 (64 channels x K bytes), while software prefetches bring the next
// tile into L2. Threads claim tiles two at a time as they go (parallel.h: a thread on a core another
// program is using takes fewer) and split the rows to quantize.
// One Zen 4 core, one decode step of the 250M benchmark model's linears (bf16 x): batch 1 as fast as
// int8_linear.cpp (memory-bound), 16 rows ~2.2x faster (~350 GOP/s: benchmarks/bench_w8a8_kernel.py).
//
// Built by phi4r/kernels/w8a8.py with -O3 -march=native (AVX-512F/BW/VL and AVX512-VNNI required).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include "linear.h"
#include "parallel.h"
#include "simd.h"

#include <cstdint>
#include <type_traits>
#include <vector>

namespace {

constexpr int NB = 4;          // 16-channel blocks per tile
constexpr int TILE = 16 * NB;  // channels per tile (the packing's unit)
constexpr int MAX_MR = 6;      // rows per pass

using phi4r::dpbusd;
using phi4r::load16;

// Row m of x -> its scale rs[m] and u8 values (xq + 128) at xq[k4 * M + m] (4 bytes per k group), the
// K tail padded with 128 (times zero weights). row: a scratch buffer of 4 * K4 bytes.
template <typename T>
void quantize_row(const T* x, int64_t K, int64_t K4, int64_t M, int64_t m, uint32_t* xq, float* rs, uint8_t* row) {
  __m512 vmax = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 valid = K - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (K - k)) - 1);
    vmax = _mm512_max_ps(vmax, _mm512_abs_ps(load16(x + k, valid)));
  }
  const float amax = _mm512_reduce_max_ps(vmax);
  // Correctly rounded fp32 divisions (no -ffast-math): the torch path computes the same two numbers.
  const float inv = amax > 0.f ? 127.f / amax : 0.f;
  rs[m] = amax / 127.f;
  const __m512 vinv = _mm512_set1_ps(inv);
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127), off = _mm512_set1_epi32(128);
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 valid = K - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (K - k)) - 1);
    __m512i q = _mm512_cvt_roundps_epi32(_mm512_mul_ps(load16(x + k, valid), vinv),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);  // half to even
    q = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(q, lo), hi), off);
    _mm_mask_storeu_epi8(row + k, valid, _mm512_cvtepi32_epi8(q));
  }
  for (int64_t k = K; k < 4 * K4; ++k) row[k] = 128;
  const uint32_t* groups = reinterpret_cast<const uint32_t*>(row);
  for (int64_t g = 0; g < K4; ++g) xq[g * M + m] = groups[g];
}

// Stores 16 fp32 lanes as T (the first `valid` of them).
template <typename T>
inline void store16(T* y, __m512 v, __mmask16 valid) {
  if constexpr (std::is_same_v<T, float>) {
    _mm512_mask_storeu_ps(y, valid, v);
  } else {
    _mm256_mask_storeu_epi16(y, valid, (__m256i)_mm512_cvtneps_pbh(v));  // round to nearest even
  }
}

// MR rows (xq: their first at offset 0, stride M per k group) x one tile of 64 channels (w: K4 steps of
// 256 bytes) -> y (row stride N), the first `valid_n` channels of the tile.
// Prefetch: the pass over the tile also fetches, `lines` cache lines per step, its share of the next
// tile (pf: that share's start, pf_end: the next tile's end; null: none) into L2, so that the passes
// over tile t (from L2, compute-bound) overlap the memory reads of tile t + 1 (the hardware prefetcher
// alone ran the first pass over each tile at the memory's pace and the later ones after it).
template <typename T, int MR>
void tile(const uint32_t* xq, int64_t M, const int8_t* w, int64_t K4, const int32_t* comp, const float* rs,
          const float* ws, T* y, int64_t N, int64_t valid_n, const char* pf, const char* pf_end, int lines) {
  __m512i acc[MR][NB];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) acc[m][b] = _mm512_setzero_si512();
  for (int64_t g = 0; g < K4; ++g) {
    const __m512i* wp = reinterpret_cast<const __m512i*>(w + g * (TILE * 4));
    __m512i wv[NB];
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) wv[b] = _mm512_loadu_si512(wp + b);
    if (pf != nullptr)
      for (int i = 0; i < lines; ++i, pf += 64)
        if (pf < pf_end) _mm_prefetch(pf, _MM_HINT_T1);
    const uint32_t* xp = xq + g * M;
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const __m512i xb = _mm512_set1_epi32(int(xp[m]));
#pragma GCC unroll 4
      for (int b = 0; b < NB; ++b) dpbusd(acc[m][b], xb, wv[b]);
    }
  }
#pragma GCC unroll 4
  for (int b = 0; b < NB; ++b) {  // (no early exit: keeps acc[][] in registers)
    const int64_t left = std::min<int64_t>(16, std::max<int64_t>(0, valid_n - b * 16));
    const __mmask16 valid = __mmask16((1u << left) - 1);
    const __m512i c = _mm512_loadu_si512(comp + b * 16);
    const __m512 s = _mm512_loadu_ps(ws + b * 16);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[m][b], c));
      store16(y + m * N + b * 16, _mm512_mul_ps(_mm512_mul_ps(f, _mm512_set1_ps(rs[m])), s), valid);
    }
  }
}

template <typename T>
void tile_rows(int mr, const uint32_t* xq, int64_t M, const int8_t* w, int64_t K4, const int32_t* comp,
               const float* rs, const float* ws, T* y, int64_t N, int64_t valid_n, const char* pf,
               const char* pf_end, int lines) {
#define PHI4R_ARGS xq, M, w, K4, comp, rs, ws, y, N, valid_n, pf, pf_end, lines
  switch (mr) {
    case 1: return tile<T, 1>(PHI4R_ARGS);
    case 2: return tile<T, 2>(PHI4R_ARGS);
    case 3: return tile<T, 3>(PHI4R_ARGS);
    case 4: return tile<T, 4>(PHI4R_ARGS);
    case 5: return tile<T, 5>(PHI4R_ARGS);
    case 6: return tile<T, 6>(PHI4R_ARGS);
  }
#undef PHI4R_ARGS
  TORCH_CHECK(false, "w8a8_linear: no tile for ", mr, " rows");
}

template <typename T>
void run(const T* x, int64_t M, int64_t K, const int8_t* w, int64_t K4, const int32_t* comp,
         const at::Tensor& scales, T* y, int64_t N) {
  std::vector<uint32_t> xq(K4 * M);
  std::vector<float> rs(M);
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {  // (a prefill's many rows: threads split them)
    std::vector<uint8_t> row(4 * K4);
    for (int64_t m = m0; m < m1; ++m) quantize_row(x + m * K, K, K4, M, m, xq.data(), rs.data(), row.data());
  });
  // Rows in passes of at most MAX_MR, as even as possible (16 rows: 6 + 5 + 5, not 6 + 6 + 4).
  const int64_t passes = (M + MAX_MR - 1) / MAX_MR, per = (M + passes - 1) / passes;
  const int64_t tiles = (N + TILE - 1) / TILE;
  // Cache lines prefetched per step: a tile (4 lines per step) spread over the passes. One pass (up to
  // 6 rows) streams the weights once, sequentially, which the hardware prefetcher does best alone
  // (prefetching there too made batch 1 25% slower).
  const int lines = passes > 1 ? int((4 + passes - 1) / passes) : 0;
  phi4r::dynamic_for(0, tiles, 2, [&](int64_t t0, int64_t t1) {  // (2: the next tile is prefetched within a chunk)
    alignas(64) float ws[TILE];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = t * TILE, valid_n = std::min<int64_t>(TILE, N - n0);
      for (int64_t i = 0; i < TILE; ++i)  // this tile's channel scales in fp32 (padded channels: 0)
        ws[i] = i >= valid_n ? 0.f
                : scales.scalar_type() == at::kFloat ? scales.data_ptr<float>()[n0 + i]
                                                     : float(scales.data_ptr<at::BFloat16>()[n0 + i]);
      const int8_t* wt = w + t * K4 * TILE * 4;
      // The next tile (this thread's), prefetched over the passes: pass p fetches lines from p * K4 * lines.
      const char* next = t + 1 < t1 && lines > 0 ? reinterpret_cast<const char*>(wt + K4 * TILE * 4) : nullptr;
      for (int64_t m = 0, pass = 0; m < M; m += per, ++pass) {
        const int mr = int(std::min<int64_t>(per, M - m));
        tile_rows<T>(mr, xq.data() + m, M, wt, K4, comp + n0, rs.data() + m, ws, y + m * N + n0, N, valid_n,
                     next == nullptr ? nullptr : next + pass * K4 * lines * 64, next + K4 * TILE * 4, lines);
      }
    }
  });
}

}  // namespace

// x [..., K] bf16 or fp32 contiguous (leading dims: the M rows); packed [Np / 64, K4, 64, 4] int8 with
// K4 = ceil(K / 4); comp [Np] int32 (128 * each channel's weight sum); scales [N] fp32 or bf16 (N <= Np:
// the real channels). Returns [..., N] in x's dtype.
torch::Tensor w8a8_linear(const torch::Tensor& x, const torch::Tensor& packed, const torch::Tensor& comp,
                          const torch::Tensor& scales) {
  TORCH_CHECK(x.dim() >= 1 && packed.dim() == 4 && packed.size(2) == TILE && packed.size(3) == 4,
              "w8a8_linear: packed weights must be [Np / 64, K4, 64, 4]");
  TORCH_CHECK(packed.scalar_type() == at::kChar && comp.scalar_type() == at::kInt, "w8a8_linear: int8 weights, int32 comp");
  TORCH_CHECK(x.device().is_cpu() && packed.device().is_cpu() && comp.device().is_cpu() && scales.device().is_cpu() &&
              x.is_contiguous() && packed.is_contiguous() && comp.is_contiguous() && scales.is_contiguous(),
              "w8a8_linear: contiguous CPU tensors");
  TORCH_CHECK(scales.scalar_type() == at::kFloat || scales.scalar_type() == at::kBFloat16, "w8a8_linear: fp32 or bf16 scales");
  const int64_t K = x.size(-1), K4 = packed.size(1), Np = packed.size(0) * TILE, N = scales.numel();
  TORCH_CHECK(K4 == (K + 3) / 4, "w8a8_linear: x has ", K, " features, the weights ", K4, " groups of 4");
  TORCH_CHECK(comp.numel() == Np && N <= Np && N > Np - TILE, "w8a8_linear: comp/scales do not match the packed weights");
  // int32 sums of (xq + 128) * q: |sum| <= 255 * 127 * K.
  TORCH_CHECK(K <= 66000, "w8a8_linear: K = ", K, " could overflow the int32 accumulators");
  int64_t M;
  auto y = linear_output(x, N, M);
  if (M == 0 || N == 0) return y;
  if (K == 0) return y.zero_();
  if (x.scalar_type() == at::kBFloat16) {
    run(x.data_ptr<at::BFloat16>(), M, K, packed.data_ptr<int8_t>(), K4, comp.data_ptr<int32_t>(), scales,
        y.data_ptr<at::BFloat16>(), N);
  } else {
    TORCH_CHECK(x.scalar_type() == at::kFloat, "w8a8_linear: x must be bf16 or fp32");
    run(x.data_ptr<float>(), M, K, packed.data_ptr<int8_t>(), K4, comp.data_ptr<int32_t>(), scales,
        y.data_ptr<float>(), N);
  }
  return y;
}

// Also a dispatcher op, torch.ops.phi4r.w8a8_linear, for torch.compile's graphs (shape function:
// phi4r/kernels/w8a8.py). TORCH_LIBRARY_FRAGMENT: the namespace phi4r is int8_linear.cpp's library.
TORCH_LIBRARY_FRAGMENT(phi4r, m) {
  m.def("w8a8_linear(Tensor x, Tensor packed, Tensor comp, Tensor scales) -> Tensor");
}

TORCH_LIBRARY_IMPL(phi4r, CPU, m) {
  m.impl("w8a8_linear", &w8a8_linear);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("w8a8_linear", &w8a8_linear, "y = (quant(x) @ q^T) * x_scale * w_scale, W8A8 int8 (AVX-512 VNNI)");
}
