// AVX-512 helpers shared by phi4r's kernels (int8_linear.cpp, int4_linear.cpp, w8a8_linear.cpp,
// decode_attention.cpp, decode_ops.cpp).
#pragma once
#include <immintrin.h>

#include <type_traits>

namespace phi4r {

// Lane i of the result = the sum of a[i]'s 16 lanes, for all 16 vectors by one tree of shuffles and
// adds: 45 instructions, where one _mm512_reduce_add_ps per vector would take ~10 each.
__attribute__((always_inline)) inline __m512 reduce16(const __m512 (&a)[16]) {
  __m512 b[8], c[4], d[2];
#pragma GCC unroll 16
  for (int i = 0; i < 8; ++i)  // per 128-bit lane: [v0+v2, w0+w2, v1+v3, w1+w3] of v = a[2i], w = a[2i+1]
    b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
#pragma GCC unroll 16
  for (int i = 0; i < 4; ++i)  // per 128-bit lane: the partial sums of a[4i .. 4i+3]
    c[i] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * i], b[2 * i + 1], 0x44), _mm512_shuffle_ps(b[2 * i], b[2 * i + 1], 0xEE));
#pragma GCC unroll 16
  for (int i = 0; i < 2; ++i)  // 128-bit lanes: c[2i] lanes 0+1, 2+3, c[2i+1] lanes 0+1, 2+3
    d[i] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0x88), _mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(d[0], d[1], 0x88), _mm512_shuffle_f32x4(d[0], d[1], 0xDD));
}

// e^x for fp32 lanes: x = n ln2 + r, |r| <= ln2 / 2, e^r by Cephes' expf polynomial (about 1 ulp), times
// 2^n by vscalefps (inf beyond fp32's range; below -110, 2^-159 or less: 0, also for -inf).
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-110.f));  // -> 2^-159 or less: 0 (also for -inf)
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // ln2 in two parts: n * hi is exact
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

// acc += 4-byte dot products of unsigned a and signed b per int32 lane (vpdpbusd, AVX512-VNNI). Inline
// asm: with the intrinsic, GCC 12 copies every accumulator to a temporary and back (the builtin's tied
// operand), which doubles the registers a tile needs and spilled accumulators from 4 rows x 4 blocks on.
__attribute__((always_inline)) inline void dpbusd(__m512i& acc, __m512i a, __m512i b) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "vm"(b));
}

// 16 values (fp32, or bf16 as any 16-bit type) from p as fp32; `valid` masks a tail.
template <typename T>
inline __m512 load16(const T* p, __mmask16 valid) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm512_maskz_loadu_ps(valid, p);
  } else {
    static_assert(sizeof(T) == 2, "load16: fp32 or bf16");
    const __m256i h = _mm256_maskz_loadu_epi16(valid, p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));  // bf16 -> fp32: exact
  }
}

}  // namespace phi4r
