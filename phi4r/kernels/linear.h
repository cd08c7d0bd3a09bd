// What the linear kernels (int8, int4, w8a8, dense) share around their tiles: the output of
// x[..., K] @ W^T, and the dispatch of a row count to a tile height known at compile time.
#pragma once
#include <torch/extension.h>

#include <type_traits>

// y = an uninitialised [..., N] tensor of x's dtype; `rows` = the product of x's leading dims.
inline torch::Tensor linear_output(const torch::Tensor& x, int64_t N, int64_t& rows) {
  rows = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) rows *= x.size(d);
  auto sizes = x.sizes().vec();
  sizes.back() = N;
  return torch::empty(sizes, x.options());
}

// f(std::integral_constant<int, R>{}) for mr == R, R in 1..MAX_R with R * NR <= 16 (the tile's
// accumulators in zmm registers); another mr is an error naming `kernel`.
template <int NR, int MAX_R, typename F>
void for_rows(int mr, const char* kernel, F&& f) {
  switch (mr) {
#define PHI4R_CASE(R) case R: if constexpr (R <= MAX_R && R * NR <= 16) return f(std::integral_constant<int, R>{}); break;
    PHI4R_CASE(1) PHI4R_CASE(2) PHI4R_CASE(3) PHI4R_CASE(4) PHI4R_CASE(5) PHI4R_CASE(6) PHI4R_CASE(7) PHI4R_CASE(8)
#undef PHI4R_CASE
  }
  TORCH_CHECK(false, kernel, ": no tile for ", mr, " rows x ", NR, " channels");
}
