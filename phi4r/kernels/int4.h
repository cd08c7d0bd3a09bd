// What the int4 kernels (int4_linear.cpp, int4_a8_linear.cpp) share: compressed-tensors' group
// scales as one vector per 128-k block of packed weights, lane l covering k = 8l..8l+7.
#pragma once
#include <torch/extension.h>
#include <immintrin.h>

#include <cstdint>
#include <type_traits>

namespace phi4r {

inline float to_float(float s) { return s; }
inline float to_float(at::BFloat16 s) { return float(s); }

// The scales of one block as a per-lane vector (lane l: k = 8l..8l+7). GL groups per block (4: G = 32,
// 2: G = 64, 1: G a multiple of 128, index `first`); `avail` of them exist (a ragged last block).
template <int GL, typename S>
__attribute__((always_inline)) inline __m512 scale_vec(const S* s, int64_t first, int avail) {
  if constexpr (GL == 1) {
    return _mm512_set1_ps(to_float(s[first]));
  } else {
    const __mmask8 valid = __mmask8((1u << avail) - 1);
    __m128 v;
    if constexpr (std::is_same_v<S, float>) v = _mm_maskz_loadu_ps(valid, s + first);
    else v = _mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(_mm_maskz_loadu_epi16(valid, s + first)), 16));
    const __m512i idx = _mm512_srli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                          GL == 4 ? 2 : 3);
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v));
  }
}

}  // namespace phi4r
