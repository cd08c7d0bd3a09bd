// AVX-512 helpers shared by phi4r's kernels (int8_linear.cpp, decode_attention.cpp).
#pragma once
#include <immintrin.h>

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

}  // namespace phi4r
