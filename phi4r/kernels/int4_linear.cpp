// int4 linear for CPU decode, group-wise symmetric: y[M, N] = x[M, K] @ W^T with
// W[n, k] = q[n, k] * scale[n, k / G], q in [-8, 7] (zero points: phi4r/quant_int4.py adds their term);
// x as it is (bf16 or fp32), or with int8_activations quantized per row and 128-k block to int8 first
// (llama.cpp's Q4_0 x Q8_0 scheme: see "int8 activations" below).
//
// The weights are compressed-tensors' "pack-quantized" layout as it is (no repacking): per row,
// ceil(K / 8) int32 of 8 nibbles, value k at bits 4 * (k % 8) of word k / 8, stored offset (q + 8).
// Read as bytes, 64 bytes hold 128 consecutive k (a "block"), and its 16-bit word i holds k = 4i..4i+3.
// x is bf16 or fp32, y has x's dtype; products are exact and sums fp32.
//   Unpacking: three word shifts (4, 8, 12) bring each word's nibbles down; w[j] then holds k = 4i + j
//   in word i, and x is permuted the same way once per call. bf16 x: one ternary-logic op per vector
//   makes bf16(q + 136) (unpack_biased), 4 vdpbf16ps per 128 weights; fp32 x: vpermw looks the nibble
//   up in a table of bf16(q) (unpack), each bf16 word is widened (shift / mask), then FMA.
//   Group scales: a block's 4 dot products sum into a fresh vector whose lane l covers k in
//   [8l, 8l + 8), so one FMA with a per-lane scale vector (a broadcast when G >= 128) applies them.
// At batch 1 the weights are streamed once with the int8 kernel's tile shapes (see int8_linear.cpp),
// prefetched further ahead. Several rows (up to 4 per pass) reuse each unpacked tile from registers;
// beyond ~16 rows the permuted x outgrows L1 and the kernel is compute-bound.
// Threads claim chunks of output channels as they go (parallel.h: a thread on a core another program
// is using takes fewer), torch's thread count of them.
//
// Built by phi4r/kernels/int4.py with -O3 -march=native (AVX-512F/BW/VL/VBMI/VNNI and AVX512-BF16 required).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include "int4.h"
#include "linear.h"
#include "parallel.h"
#include "simd.h"

#include <algorithm>
#include <type_traits>

namespace {

constexpr int BLOCK = 128;  // k values per step: 64 bytes of packed weights
constexpr int64_t PREFETCH = 8192;  // bytes
constexpr int BIAS = 136;    // bf16 path: the unpacked weights are q + BIAS (see unpack_biased)
// Elements of permuted x per row and block: bf16 also carries 16 fp32 lane sums (permute_x).
template <typename T>
constexpr int ROW = std::is_same_v<T, at::BFloat16> ? BLOCK + 32 : BLOCK;

inline __m512i make_table() {
  alignas(64) uint16_t t[32];
  for (int i = 0; i < 32; ++i) t[i] = c10::BFloat16(float((i & 15) - 8)).x;
  return _mm512_load_si512(t);
}

// 64 packed bytes -> w[j] (j = 0..3): bf16 of k = 4i + j in word i.
__attribute__((always_inline)) inline void unpack(__m512i b, __m512i table, __m512i (&w)[4]) {
  w[0] = _mm512_permutexvar_epi16(b, table);
  w[1] = _mm512_permutexvar_epi16(_mm512_srli_epi16(b, 4), table);
  w[2] = _mm512_permutexvar_epi16(_mm512_srli_epi16(b, 8), table);
  w[3] = _mm512_permutexvar_epi16(_mm512_srli_epi16(b, 12), table);
}

// The bf16 path's cheaper unpacking (no table lookups): a nibble u = q + 8 in the low bits of a word
// OR 0x4300 is the bf16 of 128 + u (bf16 has 7 fraction bits: from 128 on the spacing is 1), so
// w[j] = q + BIAS exactly, by one ternary-logic op per vector. The dot products then carry
// BIAS * sum(x), which each lane's accumulator starts negated (permute_x's lane sums).
__attribute__((always_inline)) inline void unpack_biased(__m512i b, __m512i (&w)[4]) {
  const __m512i low = _mm512_set1_epi16(0x000F), base = _mm512_set1_epi16(0x4300);
  w[0] = _mm512_ternarylogic_epi32(b, low, base, 0xEA);  // (b & low) | base
  w[1] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(b, 4), low, base, 0xEA);
  w[2] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(b, 8), low, base, 0xEA);
  w[3] = _mm512_or_si512(_mm512_srli_epi16(b, 12), base);
}

// x rows -> blocks of 128 in the order of the unpacked weights, zero-padded, block-major
// (out[kb * M * 128 + m * 128 + j]) so that a tile addresses its rows at constant offsets.
// bf16: position 32 j + i holds k = 4i + j, then 16 fp32: -BIAS * the sum of lane l's k (8l..8l+7);
// fp32: position 16 (2j + h) + l holds k = 8l + 4h + j.
template <typename T>
void permute_x(const T* x, int64_t M, int64_t K, int64_t blocks, T* out) {
  constexpr bool BF16 = std::is_same_v<T, at::BFloat16>;
  for (int64_t kb = 0; kb < blocks; ++kb)
    for (int64_t m = 0; m < M; ++m) {
      T* dst = out + (kb * M + m) * ROW<T>;
      const T* src = x + m * K + kb * BLOCK;
      const int64_t n = std::min<int64_t>(BLOCK, K - kb * BLOCK);
      for (int p = 0; p < BLOCK; ++p) {
        const int k = BF16 ? 4 * (p % 32) + p / 32 : 8 * (p % 16) + 4 * ((p / 16) % 2) + p / 32;
        dst[p] = k < n ? src[k] : T(0);
      }
      if constexpr (BF16) {
        float* sums = reinterpret_cast<float*>(dst + BLOCK);
        for (int l = 0; l < 16; ++l) {
          float sum = 0;
          for (int64_t k = 8 * l; k < std::min<int64_t>(8 * l + 8, n); ++k) sum += float(src[k]);
          sums[l] = -BIAS * sum;
        }
      }
    }
}

// A tile's walk over its blocks of 128 k, shared by both tiles: body(kb, packed, scales) where packed(n)
// is the block's 64 bytes of weight row n and scales(n) its group scales (scale_vec).
// Prefetch as int8_linear.cpp does, but at least PREFETCH bytes ahead: short rows make small tiles,
// and one tile ahead was too close to hide the memory latency (decode at K = 768 lost a third). The hint
// is non-temporal: a decode step reads each weight once, and weights kept in L2/L3 only evict what the
// rest of the step reuses (activations, the KV cache, the interpreter's own working set).
template <int GL, int NR, typename S, typename Body>
__attribute__((always_inline)) inline void each_block(const uint8_t* w, int64_t RB, int64_t blocks, const S* s,
                                                      int64_t ls, int64_t groups, int64_t G, Body&& body) {
  const int64_t ahead = (PREFETCH + NR * RB - 1) / (NR * RB);
  const char* next = reinterpret_cast<const char*>(w) + ahead * NR * RB;
  for (int64_t kb = 0; kb < blocks; ++kb) {
    for (int64_t b = kb * NR * 64; b < (kb + 1) * NR * 64; b += 64) _mm_prefetch(next + b, _MM_HINT_NTA);
    const int64_t left = RB - kb * 64;
    const uint64_t valid = left >= 64 ? ~uint64_t(0) : (uint64_t(1) << left) - 1;
    const int64_t first = GL == 1 ? kb * BLOCK / G : kb * GL;
    const int avail = int(std::min<int64_t>(GL, groups - first));
    auto packed = [&](int n) __attribute__((always_inline)) {
      const uint8_t* wp = w + n * RB + kb * 64;
      return left >= 64 ? _mm512_loadu_si512(wp) : _mm512_maskz_loadu_epi8(valid, wp);
    };
    auto scales = [&](int n) __attribute__((always_inline)) { return phi4r::scale_vec<GL>(s + n * ls, first, avail); };
    body(kb, packed, scales);
  }
}

// y[m * ldy + n] = the sum of acc[m][n]'s lanes.
template <typename T, int MR, int NR>
__attribute__((always_inline)) inline void store_tile(const __m512 (&acc)[MR][NR], T* y, int64_t ldy) {
  alignas(64) float sums[16];
  __m512 all[16];
  for (int i = 0; i < 16; ++i) all[i] = i < MR * NR ? acc[i / NR][i % NR] : _mm512_setzero_ps();
  _mm512_store_ps(sums, phi4r::reduce16(all));
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) y[m * ldy + n] = T(sums[m * NR + n]);
}

// One tile: MR rows of permuted x (ldx between blocks, row m at m * 128) times NR weight rows (RB bytes
// each, scales ls apart) -> y (stride ldy).
template <typename T, typename S, int GL, int MR, int NR>
void tile(const T* x, int64_t ldx, const uint8_t* w, int64_t RB, int64_t blocks, const S* s, int64_t ls,
          int64_t groups, int64_t G, T* y, int64_t ldy, __m512i table) {
  constexpr bool BF16 = std::is_same_v<T, at::BFloat16>;
  __m512 acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_setzero_ps();
  const __m512i hi16 = _mm512_set1_epi32(int(0xFFFF0000u));
  each_block<GL, NR>(w, RB, blocks, s, ls, groups, G, [&](int64_t kb, auto packed, auto scales) __attribute__((always_inline)) {
    auto weights = [&](int n, __m512i (&wv)[4]) __attribute__((always_inline)) {
      if constexpr (BF16) unpack_biased(packed(n), wv);
      else unpack(packed(n), table, wv);
    };
    const T* xb = x + kb * ldx;
    if constexpr (BF16) {
      // bf16 x: per channel 4 unpacked vectors, and MR rows' 4 x vectors (one row: loaded once for all
      // channels, unpacking channel by channel; several: all NR channels first, then row by row).
      if constexpr (MR == 1) {
        __m512bh xv[4];
        for (int j = 0; j < 4; ++j) xv[j] = (__m512bh)_mm512_loadu_si512(xb + 32 * j);
        const __m512 c = _mm512_loadu_ps(reinterpret_cast<const float*>(xb + BLOCK));
        for (int n = 0; n < NR; ++n) {
          __m512i wv[4];
          weights(n, wv);
          __m512 t = _mm512_dpbf16_ps(c, xv[0], (__m512bh)wv[0]);
          for (int j = 1; j < 4; ++j) t = _mm512_dpbf16_ps(t, xv[j], (__m512bh)wv[j]);
          acc[0][n] = _mm512_fmadd_ps(t, scales(n), acc[0][n]);
        }
      } else {
        __m512i wv[NR][4];
        __m512 sv[NR];
        for (int n = 0; n < NR; ++n) {
          weights(n, wv[n]);
          sv[n] = scales(n);
        }
        for (int m = 0; m < MR; ++m) {
          const T* xm = xb + m * ROW<T>;
          __m512bh xv[4];
          for (int j = 0; j < 4; ++j) xv[j] = (__m512bh)_mm512_loadu_si512(xm + 32 * j);
          const __m512 c = _mm512_loadu_ps(reinterpret_cast<const float*>(xm + BLOCK));
          for (int n = 0; n < NR; ++n) {
            __m512 t = _mm512_dpbf16_ps(c, xv[0], (__m512bh)wv[n][0]);
            for (int j = 1; j < 4; ++j) t = _mm512_dpbf16_ps(t, xv[j], (__m512bh)wv[n][j]);
            acc[m][n] = _mm512_fmadd_ps(t, sv[n], acc[m][n]);
          }
        }
      }
    } else {
      // fp32 x: each channel's 128 weights widened to 8 fp32 vectors (word 2l: << 16, word 2l + 1: mask).
      for (int n = 0; n < NR; ++n) {
        __m512i wv[4];
        weights(n, wv);
        __m512 wf[8];
        for (int j = 0; j < 4; ++j) {
          wf[2 * j] = _mm512_castsi512_ps(_mm512_slli_epi32(wv[j], 16));
          wf[2 * j + 1] = _mm512_castsi512_ps(_mm512_and_si512(wv[j], hi16));
        }
        const __m512 sv = scales(n);
        for (int m = 0; m < MR; ++m) {
          const float* xm = reinterpret_cast<const float*>(xb) + m * BLOCK;
          __m512 t = _mm512_mul_ps(_mm512_loadu_ps(xm), wf[0]);
          for (int v = 1; v < 8; ++v) t = _mm512_fmadd_ps(_mm512_loadu_ps(xm + 16 * v), wf[v], t);
          acc[m][n] = _mm512_fmadd_ps(t, sv, acc[m][n]);
        }
      }
    }
  });
  store_tile<T, MR, NR>(acc, y, ldy);
}


// ---- int8 activations (int4_linear's int8_activations): the weights' nibbles as they are, by vpdpbusd.
// x is quantized per row and block of 128 k, symmetric: scale = amax / 127, xq = round_half_even(x *
// (127 / amax)) clamped to [-127, 127] (a zero block: scale 0, xq 0), as int4.py's `a8_reference`. Byte
// p of a packed block holds k = 2p (low nibble) and k = 2p + 1 (high), so the low nibbles meet xq's
// even k in order and the high ones its odd k, and int32 lane l of both dot products covers k =
// 8l..8l+7, the group scales' lanes (scale_vec). The nibbles are q + 8: each lane starts at -8 * the
// sum of its 8 xq. Per 128 weights: 2 vpdpbusd, against 4 vdpbf16ps and twice the unpacking.
constexpr int XQ_ROW = 192;  // bytes per row and block: 64 even-k xq, 64 odd-k xq, 16 int32 lane starts

using phi4r::dpbusd;
using phi4r::load16;

// x [M, K] -> out[(kb * M + m) * XQ_ROW ...] and xs[kb * M + m] (see above); k beyond K: xq 0.
template <typename T>
void quantize_x(const T* x, int64_t M, int64_t K, int64_t blocks, uint8_t* out, float* xs) {
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127), ones = _mm512_set1_epi8(1);
  for (int64_t kb = 0; kb < blocks; ++kb)
    for (int64_t m = 0; m < M; ++m) {
      const T* src = x + m * K + kb * BLOCK;
      const int64_t n = std::min<int64_t>(BLOCK, K - kb * BLOCK);
      __m512 v[8];
      __m512 vmax = _mm512_setzero_ps();
      for (int i = 0; i < 8; ++i) {
        const int64_t left = std::clamp<int64_t>(n - 16 * i, 0, 16);
        v[i] = load16(src + 16 * i, __mmask16((1u << left) - 1));
        vmax = _mm512_max_ps(vmax, _mm512_abs_ps(v[i]));
      }
      const float amax = _mm512_reduce_max_ps(vmax);
      // Correctly rounded fp32 divisions (no -ffast-math): a8_reference computes the same two numbers.
      const __m512 inv = _mm512_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
      xs[kb * M + m] = amax / 127.f;
      alignas(64) int8_t q[BLOCK];
      for (int i = 0; i < 8; ++i) {
        __m512i qi = _mm512_cvt_roundps_epi32(_mm512_mul_ps(v[i], inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_store_si128(reinterpret_cast<__m128i*>(q + 16 * i), _mm512_cvtepi32_epi8(_mm512_min_epi32(_mm512_max_epi32(qi, lo), hi)));
      }
      uint8_t* dst = out + (kb * M + m) * XQ_ROW;
      for (int h = 0; h < 2; ++h) {  // 16-bit word p of q holds k = 2p (low byte) and 2p + 1 (high byte)
        const __m512i words = _mm512_load_si512(q + 64 * h);
        const __m256i e = _mm512_cvtepi16_epi8(words), o = _mm512_cvtepi16_epi8(_mm512_srai_epi16(words, 8));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 32 * h), e);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 64 + 32 * h), o);
      }
      const __m512i even = _mm512_loadu_si512(dst), odd = _mm512_loadu_si512(dst + 64);
      const __m512i sums = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, even), ones, odd);
      _mm512_storeu_si512(dst + 128, _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(sums, 3)));
    }
}

// One tile: MR rows of quantized x (their block kb at xq + kb * ldx + m * XQ_ROW, scale xs[kb * M + m])
// times NR weight rows (RB bytes each, scales ls apart) -> y (stride ldy).
template <typename T, typename S, int GL, int MR, int NR>
void tile_a8(const uint8_t* xq, int64_t ldx, const float* xs, int64_t M, const uint8_t* w, int64_t RB,
             int64_t blocks, const S* s, int64_t ls, int64_t groups, int64_t G, T* y, int64_t ldy) {
  __m512 acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_setzero_ps();
  const __m512i low = _mm512_set1_epi8(0x0F);
  each_block<GL, NR>(w, RB, blocks, s, ls, groups, G, [&](int64_t kb, auto packed, auto scales) __attribute__((always_inline)) {
    const uint8_t* xb = xq + kb * ldx;
    __m512 xsv[MR];
    for (int m = 0; m < MR; ++m) xsv[m] = _mm512_set1_ps(xs[kb * M + m]);
    for (int n = 0; n < NR; ++n) {
      const __m512i b = packed(n);
      const __m512i wl = _mm512_and_si512(b, low), wh = _mm512_and_si512(_mm512_srli_epi16(b, 4), low);
      const __m512 sv = scales(n);
      for (int m = 0; m < MR; ++m) {
        const uint8_t* xm = xb + m * XQ_ROW;
        __m512i t = _mm512_loadu_si512(xm + 128);
        dpbusd(t, wl, _mm512_loadu_si512(xm));
        dpbusd(t, wh, _mm512_loadu_si512(xm + 64));
        acc[m][n] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(sv, xsv[m]), acc[m][n]);
      }
    }
  });
  store_tile<T, MR, NR>(acc, y, ldy);
}

constexpr int MAX_MR = 4;  // rows per pass at 2 channels: 8 unpacked + 4 x + 8 accumulators + scales

// x: permute_x's blocks (T), or with A8 quantize_x's (uint8_t) and their scales xs.
template <typename T, typename S, int GL, bool A8>
void run(const void* x, const float* xs, int64_t M, int64_t blocks, const uint8_t* w, int64_t RB, const S* s,
         int64_t groups, int64_t G, T* y, int64_t N) {
  static const __m512i table = make_table();
  const int nr = M == 1 ? 8 : 2;
  // Chunks of at least 64 channels and 64 KB: each chunk starts a new stream whose first lines arrive
  // unprefetched, and a small layer's (a 0.3-0.5 MB qkv or o) 24 KB chunks spent a fifth of its time so.
  const int64_t tiles = (N + nr - 1) / nr, grain = std::max<int64_t>({1, 64 / nr, 65536 / (nr * RB)});
  const int64_t row = A8 ? XQ_ROW : ROW<T>, ldx = M * row;
  phi4r::dynamic_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
    const int64_t n1 = std::min(N, t1 * nr);
    for (int64_t n = t0 * nr; n < n1;) {
      const bool full = n + nr <= n1;
      for (int64_t m = 0; m < M; m += MAX_MR) {
        const int mr = int(std::min<int64_t>(MAX_MR, M - m));
        auto go = [&](auto R, auto C) {
          constexpr int MR = decltype(R)::value, NR = decltype(C)::value;
          if constexpr (A8)
            tile_a8<T, S, GL, MR, NR>(static_cast<const uint8_t*>(x) + m * row, ldx, xs + m, M, w + n * RB, RB,
                                      blocks, s + n * groups, groups, groups, G, y + m * N + n, N);
          else
            tile<T, S, GL, MR, NR>(static_cast<const T*>(x) + m * row, ldx, w + n * RB, RB, blocks,
                                   s + n * groups, groups, groups, G, y + m * N + n, N, table);
        };
        if (!full) for_rows<1, MAX_MR>(mr, "int4_linear", [&](auto R) { go(R, std::integral_constant<int, 1>{}); });
        else if (nr == 8) go(std::integral_constant<int, 1>{}, std::integral_constant<int, 8>{});
        else for_rows<2, MAX_MR>(mr, "int4_linear", [&](auto R) { go(R, std::integral_constant<int, 2>{}); });
      }
      n += full ? nr : 1;
    }
  });
}

template <typename T, bool A8>
void with_scales(const void* x, const float* xs, int64_t M, int64_t blocks, const uint8_t* w, int64_t RB,
                 const at::Tensor& scales, int64_t G, T* y, int64_t N) {
  const int64_t groups = scales.size(1);
  auto go = [&](auto* s) {
    using S = std::remove_const_t<std::remove_pointer_t<decltype(s)>>;
    if (G == 32) run<T, S, 4, A8>(x, xs, M, blocks, w, RB, s, groups, G, y, N);
    else if (G == 64) run<T, S, 2, A8>(x, xs, M, blocks, w, RB, s, groups, G, y, N);
    else run<T, S, 1, A8>(x, xs, M, blocks, w, RB, s, groups, G, y, N);
  };
  if (scales.scalar_type() == at::kFloat) go(scales.data_ptr<float>());
  else go(scales.data_ptr<at::BFloat16>());
}

// y = x @ W^T for one activation dtype T: x permuted (or quantized) once, then the tiles.
template <typename T>
void compute(const torch::Tensor& x, int64_t M, int64_t K, int64_t blocks, const uint8_t* w, int64_t RB,
             const torch::Tensor& scales, int64_t G, torch::Tensor& y, int64_t N, bool a8) {
  if (a8) {
    // One buffer: the quantized blocks, then their scales (XQ_ROW keeps the floats aligned).
    torch::Tensor buf = torch::empty({blocks * M * (XQ_ROW + 4)}, x.options().dtype(at::kByte));
    uint8_t* xq = buf.data_ptr<uint8_t>();
    float* xs = reinterpret_cast<float*>(xq + blocks * M * XQ_ROW);
    quantize_x(x.data_ptr<T>(), M, K, blocks, xq, xs);
    with_scales<T, true>(xq, xs, M, blocks, w, RB, scales, G, y.data_ptr<T>(), N);
  } else {
    torch::Tensor xp = torch::empty({blocks * M * ROW<T>}, x.options());
    permute_x(x.data_ptr<T>(), M, K, blocks, xp.data_ptr<T>());
    with_scales<T, false>(xp.data_ptr<T>(), nullptr, M, blocks, w, RB, scales, G, y.data_ptr<T>(), N);
  }
}

}  // namespace

// x [..., K] bf16 or fp32 contiguous; packed [N, ceil(K / 8)] int32 (compressed-tensors' order, q + 8);
// scales [N, ceil(K / G)] fp32 or bf16; G 32, 64 or a multiple of 128. Returns [..., N] in x's dtype.
torch::Tensor int4_linear(const torch::Tensor& x, const torch::Tensor& packed, const torch::Tensor& scales,
                          int64_t group_size, bool int8_activations) {
  TORCH_CHECK(x.dim() >= 1 && packed.dim() == 2 && scales.dim() == 2, "int4_linear: shapes");
  const int64_t K = x.size(-1), N = packed.size(0), G = group_size;
  TORCH_CHECK(G == 32 || G == 64 || (G > 0 && G % BLOCK == 0), "int4_linear: group size 32, 64 or a multiple of 128");
  TORCH_CHECK(packed.scalar_type() == at::kInt && packed.size(1) == (K + 7) / 8, "int4_linear: int32 packed [N, K / 8]");
  TORCH_CHECK(scales.size(0) == N && scales.size(1) == (K + G - 1) / G, "int4_linear: scales [N, K / group]");
  TORCH_CHECK(scales.scalar_type() == at::kFloat || scales.scalar_type() == at::kBFloat16, "int4_linear: fp32 or bf16 scales");
  TORCH_CHECK(x.device().is_cpu() && packed.device().is_cpu() && scales.device().is_cpu() && x.is_contiguous() &&
              packed.is_contiguous() && scales.is_contiguous(), "int4_linear: contiguous CPU tensors");
  int64_t M;
  auto y = linear_output(x, N, M);
  if (M == 0 || N == 0) return y;
  if (K == 0) return y.zero_();
  const int64_t blocks = (K + BLOCK - 1) / BLOCK, RB = packed.size(1) * 4;
  const auto* w = reinterpret_cast<const uint8_t*>(packed.data_ptr<int32_t>());
  if (x.scalar_type() == at::kBFloat16) {
    compute<at::BFloat16>(x, M, K, blocks, w, RB, scales, G, y, N, int8_activations);
  } else {
    TORCH_CHECK(x.scalar_type() == at::kFloat, "int4_linear: x must be bf16 or fp32");
    compute<float>(x, M, K, blocks, w, RB, scales, G, y, N, int8_activations);
  }
  return y;
}

// Also the dispatcher op torch.ops.phi4r.int4_linear for torch.compile's graphs (shape function:
// phi4r/kernels/int4.py). TORCH_LIBRARY_FRAGMENT: the namespace phi4r is int8_linear.cpp's library.
TORCH_LIBRARY_FRAGMENT(phi4r, m) {
  m.def("int4_linear(Tensor x, Tensor packed, Tensor scales, int group_size, bool int8_activations=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(phi4r, CPU, m) {
  m.impl("int4_linear", &int4_linear);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("int4_linear", &int4_linear, "y = x @ (q * group scale)^T, int4 weights (AVX-512 BF16 / VNNI)",
        py::arg("x"), py::arg("packed"), py::arg("scales"), py::arg("group_size"), py::arg("int8_activations") = false);
}
