// Weight-only int8 linear for CPU decode: y[M, N] = (x[M, K] @ q[N, K]^T) * scale[N].
//
// q is int8 per output channel in its natural row-major [N, K] layout (no repacking), x is bf16 or
// fp32, y has x's dtype. Activations are not quantized: every int8 weight is converted exactly
// (|q| <= 127 fits bf16's 8-bit significand and fp32's 24) and every product is exact; sums are fp32.
//   bf16 x: 64 weights -> bf16 by a byte-table lookup (cvt64_bf16) -> vdpbf16ps with 64 x values
//           (bf16 x bf16 products are exact in fp32; vdpbf16ps adds them into fp32 lanes; it treats
//           bf16 subnormals, |x| < 1.2e-38, as zero);
//   fp32 x: 16 weights -> vpmovsxbd + vcvtdq2ps -> vfmadd231ps.
// Register blocking: a tile of NR output channels x MR rows keeps MR * NR accumulators (one 16-lane
// vector per dot product, reduced at the end by one shuffle tree for all of them), so each converted
// weight vector serves all MR rows and each x vector all NR channels. bf16 x is copied once per call
// into a block-major layout (per 64 k: all rows), so a tile addresses its rows at constant offsets
// from one pointer: with a pointer per row GCC ran out of registers and reloaded x for every channel.
// Decode at batch 1 streams the weights once (bandwidth-bound: ~25 GB/s on one Zen 4 core); from a
// few rows on it is compute-bound. Beyond 8 rows (bf16) each tile's weights are converted once into
// an L1 buffer that every group of 8 rows reads (tile_buf), rather than converted again per group.
// Threads claim chunks of output channels as they go (parallel.h: a thread on a core another program
// is using takes fewer), torch's thread count of them.
//
// Built by phi4r/kernels/int8.py with -O3 -march=native on the machine that runs it (AVX-512F/BW/VL
// and AVX512-BF16 required; the loader checks the CPU flags before compiling).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include "linear.h"
#include "parallel.h"
#include "simd.h"

#include <cstdlib>
#include <memory>
#include <type_traits>

namespace {

// ---- int8 -> float conversions (exact)

// fp32 x: 16 int8 -> 16 fp32. The masked form reads only the first `valid` bytes (a K tail).
inline __m512 cvt16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline __m512 cvt16(const int8_t* p, __mmask16 valid) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(valid, p)));
}

// bf16 x: 64 int8 -> 64 bf16 by table lookup, 6 instructions (widening to int32, converting to
// fp32 and packing to bf16 takes 10 and was the bottleneck at batch 1). The bf16 bit pattern of
// |q| (0..127) is looked up byte by byte (vpermt2b indexes a 128-byte table held in two registers),
// the sign bit is q's own, and interleaving low and high bytes gives 16-bit words. The kernel's
// contract: q in [-127, 127] (|-128| does not fit the 7-bit index; quantize_int8 never makes -128).
// unpack{lo,hi} work within 128-bit lanes, so w0 holds k = 0-7, 16-23, 32-39, 48-55 of the block
// and w1 the other half: x is permuted the same way once per call (permute_x).
struct Tables {
  __m512i lo0, lo1, hi0, hi1;
};

inline Tables make_tables() {
  alignas(64) uint8_t lo[128], hi[128];
  for (int v = 0; v < 128; ++v) {
    const uint16_t bits = c10::BFloat16(float(v)).x;
    lo[v] = uint8_t(bits & 0xFF);
    hi[v] = uint8_t(bits >> 8);
  }
  return {_mm512_load_si512(lo), _mm512_load_si512(lo + 64), _mm512_load_si512(hi), _mm512_load_si512(hi + 64)};
}

inline void cvt64_bf16(__m512i q, const Tables& t, __m512i sign, __m512bh& w0, __m512bh& w1) {
  const __m512i a = _mm512_abs_epi8(q);
  const __m512i lo = _mm512_permutex2var_epi8(t.lo0, a, t.lo1);
  const __m512i hi = _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(t.hi0, a, t.hi1), q, sign, 0xF8);  // | (q & 0x80)
  w0 = (__m512bh)_mm512_unpacklo_epi8(lo, hi);
  w1 = (__m512bh)_mm512_unpackhi_epi8(lo, hi);
}

// x rows -> bf16 of Kp = K rounded up to 64 per row, each 64-block reordered as [w0's k | w1's k] and
// zero-padded, so that the weights' K tail needs only a masked weight load; stored block-major:
// out[(k / 64) * M * 64 + m * 64 + j] (a tile's rows at constant offsets, one pointer per step).
void permute_x(const at::BFloat16* x, int64_t M, int64_t K, int64_t Kp, at::BFloat16* out) {
  const __m512i idx0 = _mm512_setr_epi64(0, 1, 4, 5, 8, 9, 12, 13), idx1 = _mm512_setr_epi64(2, 3, 6, 7, 10, 11, 14, 15);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t k = 0; k < Kp; k += 64) {
      const at::BFloat16* src = x + m * K + k;
      const int64_t n = std::min<int64_t>(64, K - k);
      const __mmask32 v0 = n >= 32 ? ~__mmask32(0) : __mmask32((1u << n) - 1);
      const __mmask32 v1 = n >= 64 ? ~__mmask32(0) : n <= 32 ? 0 : __mmask32((1u << (n - 32)) - 1);
      const __m512i a = _mm512_maskz_loadu_epi16(v0, src), b = _mm512_maskz_loadu_epi16(v1, src + 32);
      at::BFloat16* dst = out + k * M + m * 64;  // block k / 64 of all rows, then row m
      _mm512_storeu_si512(dst, _mm512_permutex2var_epi64(a, idx0, b));
      _mm512_storeu_si512(dst + 32, _mm512_permutex2var_epi64(a, idx1, b));
    }
  }
}

// A tile's MR x NR accumulators -> y (stride ldy): summed, scaled per channel, in y's dtype.
template <typename T, int MR, int NR>
__attribute__((always_inline)) inline void store_tile(const __m512 (&acc)[MR][NR], const float* scale, T* y, int64_t ldy) {
  alignas(64) float sums[16];
  __m512 all[16];
  for (int i = 0; i < 16; ++i) all[i] = i < MR * NR ? acc[i / NR][i % NR] : _mm512_setzero_ps();
  _mm512_store_ps(sums, phi4r::reduce16(all));
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) y[m * ldy + n] = T(sums[m * NR + n] * scale[n]);
}

// ---- one tile: MR rows of x times NR weight rows (stride K) -> y (stride ldy). x: fp32 rows of stride
// ldx; bf16 permuted and block-major (permute_x), ldx = M * 64 between 64-blocks, row m at m * 64.

template <typename T, int MR, int NR>
void tile(const T* x, int64_t ldx, const int8_t* w, int64_t K, const float* scale, T* y, int64_t ldy,
          const Tables& tables) {
  constexpr bool BF16 = std::is_same_v<T, at::BFloat16>;
  constexpr int STEP = BF16 ? 64 : 16;  // k values per step
  __m512 acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_setzero_ps();
  const Tables t = tables;  // in registers for the whole tile
  const __m512i sign = _mm512_set1_epi8(char(0x80));

  // The tile's NR rows are NR * K contiguous bytes, read as NR interleaved streams of K bytes: too
  // many short streams for the hardware prefetchers (decode ran at a third of the memory bandwidth
  // without this). So every step also prefetches its share of the next tile's bytes, which makes the
  // sweep over the weights one prefetched sequential stream, one tile ahead. Non-temporal: a decode
  // step reads each weight once, and weights kept in L2/L3 only evict what the rest of the step reuses.
  const char* next = reinterpret_cast<const char*>(w) + NR * K;
  // One k step: convert each channel's weights, then MR multiply-adds with them. `valid` masks a K tail.
  auto step = [&](int64_t k, bool tail, uint64_t valid) __attribute__((always_inline)) {
    for (int64_t b = k * NR; b < (k + STEP) * NR; b += 64) _mm_prefetch(next + b, _MM_HINT_NTA);
    if constexpr (BF16 && MR > 1) {
      // Several rows: convert all NR channels first, then load each x vector once for all of them
      // (x loads, not multiply-adds, were the limit when every product reloaded its x vector).
      __m512bh w0[NR], w1[NR];
      for (int n = 0; n < NR; ++n) {
        const int8_t* wp = w + n * K + k;
        cvt64_bf16(tail ? _mm512_maskz_loadu_epi8(valid, wp) : _mm512_loadu_si512(wp), t, sign, w0[n], w1[n]);
      }
      for (int m = 0; m < MR; ++m) {
        const at::BFloat16* xp = x + (k >> 6) * ldx + m * 64;  // permuted, padded: always 64 readable values
        const __m512bh x0 = (__m512bh)_mm512_loadu_si512(xp), x1 = (__m512bh)_mm512_loadu_si512(xp + 32);
        for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_dpbf16_ps(_mm512_dpbf16_ps(acc[m][n], x0, w0[n]), x1, w1[n]);
      }
      return;
    }
    for (int n = 0; n < NR; ++n) {
      const int8_t* wp = w + n * K + k;
      if constexpr (BF16) {  // one row: one channel at a time (8 channels' weights would not fit in registers)
        __m512bh w0, w1;
        cvt64_bf16(tail ? _mm512_maskz_loadu_epi8(valid, wp) : _mm512_loadu_si512(wp), t, sign, w0, w1);
        const at::BFloat16* xp = x + (k >> 6) * ldx;
        acc[0][n] = _mm512_dpbf16_ps(acc[0][n], (__m512bh)_mm512_loadu_si512(xp), w0);
        acc[0][n] = _mm512_dpbf16_ps(acc[0][n], (__m512bh)_mm512_loadu_si512(xp + 32), w1);
      } else {
        const __m512 wv = tail ? cvt16(wp, __mmask16(valid)) : cvt16(wp);
        for (int m = 0; m < MR; ++m) {
          const float* xp = reinterpret_cast<const float*>(x) + m * ldx + k;
          const __m512 xv = tail ? _mm512_maskz_loadu_ps(__mmask16(valid), xp) : _mm512_loadu_ps(xp);
          acc[m][n] = _mm512_fmadd_ps(xv, wv, acc[m][n]);
        }
      }
    }
  };
  int64_t k = 0;
  for (; k + STEP <= K; k += STEP) step(k, false, 0);
  if (k < K) step(k, true, (uint64_t(1) << (K - k)) - 1);

  store_tile<T, MR, NR>(acc, scale, y, ldy);
}

// ---- many rows (bf16 x, M > MAX_MR): convert a tile's weights once into an L1 buffer of bf16
// ([k block][NR channels][64]), then run every group of MAX_MR rows over the buffer, instead of
// converting the weights again for each group (6 vector instructions per 64 weights, against the 16
// vdpbf16ps that use them in a group of 8 rows).

template <int NR>
void convert_tile(const int8_t* w, int64_t K, at::BFloat16* wb, const Tables& tables) {
  const Tables t = tables;
  const __m512i sign = _mm512_set1_epi8(char(0x80));
  const char* next = reinterpret_cast<const char*>(w) + NR * K;  // prefetch the next tile, as tile() does
  for (int64_t k = 0; k < K; k += 64) {
    for (int64_t b = k * NR; b < (k + 64) * NR; b += 64) _mm_prefetch(next + b, _MM_HINT_NTA);
    const uint64_t valid = K - k >= 64 ? ~uint64_t(0) : (uint64_t(1) << (K - k)) - 1;
    for (int n = 0; n < NR; ++n) {
      const int8_t* wp = w + n * K + k;
      __m512bh w0, w1;
      cvt64_bf16(K - k >= 64 ? _mm512_loadu_si512(wp) : _mm512_maskz_loadu_epi8(valid, wp), t, sign, w0, w1);
      at::BFloat16* dst = wb + (k >> 6) * NR * 64 + n * 64;
      _mm512_store_si512(dst, (__m512i)w0);
      _mm512_store_si512(dst + 32, (__m512i)w1);
    }
  }
}

template <int MR, int NR>
void tile_buf(const at::BFloat16* x, int64_t ldx, const at::BFloat16* wb, int64_t blocks, const float* scale,
              at::BFloat16* y, int64_t ldy) {
  __m512 acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_setzero_ps();
  for (int64_t kb = 0; kb < blocks; ++kb) {
    __m512bh w0[NR], w1[NR];
    for (int n = 0; n < NR; ++n) {
      w0[n] = (__m512bh)_mm512_load_si512(wb + (kb * NR + n) * 64);
      w1[n] = (__m512bh)_mm512_load_si512(wb + (kb * NR + n) * 64 + 32);
    }
    for (int m = 0; m < MR; ++m) {
      const at::BFloat16* xp = x + kb * ldx + m * 64;
      const __m512bh x0 = (__m512bh)_mm512_loadu_si512(xp), x1 = (__m512bh)_mm512_loadu_si512(xp + 32);
      for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_dpbf16_ps(_mm512_dpbf16_ps(acc[m][n], x0, w0[n]), x1, w1[n]);
    }
  }
  store_tile<at::BFloat16, MR, NR>(acc, scale, y, ldy);
}

constexpr int MAX_MR = 8;  // rows per pass: more would need more than 16 accumulators at NR = 2

// Channels per tile for a call with M rows: enough independent accumulators to hide the
// multiply-add latency at small M, few enough (<= 16) to stay in the 32 vector registers.
inline int channels_per_tile(int64_t M) { return M == 1 ? 8 : M <= 4 ? 4 : 2; }

// Calls f(std::integral_constant<int, mr>) for a run-time row count mr (1..MAX_MR), so that each
// tile kind is instantiated for every row count whose MR x NR accumulators fit in registers.
// Channels [n0, n1) for all M rows (x as in tile()), in tiles of NR channels (the last ones one
// channel at a time). s[i] is the scale of channel n0 + i.
template <typename T, int NR>
void channels(int64_t n0, int64_t n1, const T* x, int64_t ldx, int64_t M, int64_t K, const int8_t* w,
              const float* s, T* y, int64_t N, const Tables& t) {
  constexpr bool BF16 = std::is_same_v<T, at::BFloat16>;
  // Not for long rows: at K = 3584 (the MLP's down projection) converting twice measured faster.
  const bool buffered = BF16 && M > MAX_MR && K <= 2048;
  const int64_t blocks = (K + 63) / 64;
  std::unique_ptr<at::BFloat16, decltype(&std::free)> wbuf(
      buffered ? static_cast<at::BFloat16*>(std::aligned_alloc(64, NR * blocks * 64 * sizeof(at::BFloat16))) : nullptr,
      &std::free);
  for (int64_t n = n0; n < n1;) {
    const bool full = n + NR <= n1;
    if constexpr (BF16) {
      if (buffered && full) {
        convert_tile<NR>(w + n * K, K, wbuf.get(), t);
        for (int64_t m = 0; m < M; m += MAX_MR)
          for_rows<NR, 8>(int(std::min<int64_t>(MAX_MR, M - m)), "int8_linear", [&](auto R) {
            tile_buf<decltype(R)::value, NR>(x + m * 64, ldx, wbuf.get(), blocks, s + (n - n0), y + m * N + n, N);
          });
        n += NR;
        continue;
      }
    }
    for (int64_t m = 0; m < M; m += MAX_MR) {
      const int mr = int(std::min<int64_t>(MAX_MR, M - m));
      const T* xm = BF16 ? x + m * 64 : x + m * ldx;  // bf16 x is block-major (permute_x)
      if (full) for_rows<NR, 8>(mr, "int8_linear", [&](auto R) { tile<T, decltype(R)::value, NR>(xm, ldx, w + n * K, K, s + (n - n0), y + m * N + n, N, t); });
      else for_rows<1, 8>(mr, "int8_linear", [&](auto R) { tile<T, decltype(R)::value, 1>(xm, ldx, w + n * K, K, s + (n - n0), y + m * N + n, N, t); });
    }
    n += full ? NR : 1;
  }
}

template <typename T>
void run(const T* x, int64_t ldx, int64_t M, int64_t K, const int8_t* w, const at::Tensor& scales, T* y, int64_t N) {
  static const Tables tables = make_tables();
  const int nr = channels_per_tile(M);
  // Chunks of whole tiles, 64 channels or more each, so threads never share a tile.
  const int64_t tiles = (N + nr - 1) / nr, grain = std::max<int64_t>(1, 64 / nr);
  phi4r::dynamic_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
    const int64_t n0 = t0 * nr, n1 = std::min(N, t1 * nr);
    // This chunk's scales in fp32 (they are usually bf16): on the stack for chunks of up to 64 channels
    // (most of a small layer's), else on the heap.
    float local[64];
    std::vector<float> heap;
    const float* s;
    if (scales.scalar_type() == at::kFloat) {
      s = scales.data_ptr<float>() + n0;
    } else {
      float* buf = local;
      if (n1 - n0 > 64) {
        heap.resize(n1 - n0);
        buf = heap.data();
      }
      const auto* src = scales.data_ptr<at::BFloat16>() + n0;
      for (int64_t i = 0; i < n1 - n0; ++i) buf[i] = float(src[i]);
      s = buf;
    }
    if (nr == 8) channels<T, 8>(n0, n1, x, ldx, M, K, w, s, y, N, tables);
    else if (nr == 4) channels<T, 4>(n0, n1, x, ldx, M, K, w, s, y, N, tables);
    else channels<T, 2>(n0, n1, x, ldx, M, K, w, s, y, N, tables);
  });
}

}  // namespace

// x [..., K] bf16 or fp32 contiguous (its leading dims are the M rows), weight [N, K] int8 contiguous in
// [-127, 127], scales [N] fp32 or bf16; returns [..., N]. Taking any leading dims saves the caller two
// reshapes per call (Python overhead at batch 1 is a good part of a decode step outside the kernel).
torch::Tensor int8_linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& scales) {
  TORCH_CHECK(x.dim() >= 1 && weight.dim() == 2 && x.size(-1) == weight.size(1), "int8_linear: shapes");
  TORCH_CHECK(weight.scalar_type() == at::kChar && scales.numel() == weight.size(0), "int8_linear: int8 weight, N scales");
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu() && scales.device().is_cpu() && x.is_contiguous() &&
              weight.is_contiguous(), "int8_linear: contiguous CPU tensors");
  const int64_t K = x.size(-1), N = weight.size(0);
  int64_t M;
  auto y = linear_output(x, N, M);
  TORCH_CHECK(scales.is_contiguous() && (scales.scalar_type() == at::kFloat || scales.scalar_type() == at::kBFloat16),
              "int8_linear: contiguous fp32 or bf16 scales");
  if (M == 0 || N == 0) return y;
  if (K == 0) return y.zero_();
  if (x.scalar_type() == at::kBFloat16) {
    const int64_t Kp = (K + 63) / 64 * 64;
    auto xp = torch::empty({M, Kp}, x.options());  // x in the order of the converted weights
    permute_x(x.data_ptr<at::BFloat16>(), M, K, Kp, xp.data_ptr<at::BFloat16>());
    run(xp.data_ptr<at::BFloat16>(), M * 64, M, K, weight.data_ptr<int8_t>(), scales, y.data_ptr<at::BFloat16>(), N);
  } else {
    TORCH_CHECK(x.scalar_type() == at::kFloat, "int8_linear: x must be bf16 or fp32");
    run(x.data_ptr<float>(), K, M, K, weight.data_ptr<int8_t>(), scales, y.data_ptr<float>(), N);
  }
  return y;
}

// Also a dispatcher op, torch.ops.phi4r.int8_linear, so torch.compile can keep it in its graph as an
// opaque call (its shape function is registered from Python: phi4r/kernels/int8.py). Eager code calls
// the pybind function below, which skips the dispatcher's few microseconds.
TORCH_LIBRARY(phi4r, m) {
  m.def("int8_linear(Tensor x, Tensor weight, Tensor scales) -> Tensor");
}

TORCH_LIBRARY_IMPL(phi4r, CPU, m) {
  m.impl("int8_linear", &int8_linear);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("int8_linear", &int8_linear, "y = (x @ q^T) * scale, weight-only int8 (AVX-512 BF16)");
}
