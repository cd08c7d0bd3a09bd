// Fused element-wise ops of a decoder layer, for decoding on CPU: each replaces a chain of torch ops
// (several dispatches, allocations and passes over memory) by one call and one pass.
//
//   rms_norm(x, residual?, weight, eps) -> (h, y): h = x + residual (or x), y = RMSNorm(h) as phi4r's
//       RMSNorm computes it: fp32 statistics; bf16 rounds h * rsqrt(mean(h^2) + eps) once, then the
//       product with the weight; fp32 multiplies by the weight in fp32.
//   rope_(x, cos, sin): x [B, T, heads, D] (any strides, last dim contiguous) rotated in place on its
//       first R dims by cos/signed sin [B, T, 1, R]: x * cos + roll(x, R / 2) * sin (see model.Rotary).
//   swiglu(gate_up) -> gate_up[..., I:] * silu(gate_up[..., :I]) (the MLP's fused projection).
//   rope_kv_(qkv, cos, sin, heads, k_pool, v_pool, rows): a projection qkv [B, T, heads + 2 KV, D]
//       rotated in place on its first `heads` + KV heads (queries and keys, as rope_), then each new
//       key and value head copied to its row of the cache pools (rows [B, T, KV]), as the index_put_
//       of model.CacheStep would write it: one call per layer instead of a rotation and two scatters.
//   argmax(logits) -> (ids, finite): per row of logits [B, V], the index of the first largest value
//       (torch.argmax's), and whether all of them are free of NaN and +inf (sampling refuses those):
//       greedy decoding's one pass over the vocabulary, where torch.argmax of fp32 does not vectorise.
//   DecodeLayer: a decoder layer's whole decode step (model.DecoderLayer.fused_decode) in one call, see
//       below.
//
// Rounding follows torch's op chain: each product, sum and silu is rounded to the tensor's dtype as a
// separate torch op would round it (bf16: computed in fp32, rounded to nearest even), so h and rope_
// are bit-identical to the torch formulas; the norm's statistics and silu's exp differ from torch's by
// fp32 rounding only. Products and sums that torch does as separate ops use the _round_ intrinsics, which
// the compiler never contracts into a fused multiply-add (that would round once instead of twice).
//
// Rows are split over torch's threads only when there are many (prefill); a decode step's few rows run
// on the calling thread, where waking the other threads costs more than the work.
//
// Built by phi4r/kernels/decode_ops.py with -O3 -march=native (AVX-512F/BW and AVX512-BF16 required).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include "simd.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>
#include <tuple>
#include <type_traits>

namespace {

constexpr int RN = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

inline __mmask16 lanes(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1); }

// 16 (or the first n < 16) values -> fp32 lanes, and back (bf16: round to nearest even, as torch).
inline __m512 load(const float* p, int64_t n) { return _mm512_maskz_loadu_ps(lanes(n), p); }
inline __m512 load(const at::BFloat16* p, int64_t n) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lanes(n), p)), 16));
}
inline void store(float* p, __m512 v, int64_t n) { _mm512_mask_storeu_ps(p, lanes(n), v); }
inline void store(at::BFloat16* p, __m512 v, int64_t n) {
  _mm256_mask_storeu_epi16(p, lanes(n), (__m256i)_mm512_cvtneps_pbh(v));
}
// v rounded to T's precision and back (the value a torch op of dtype T would hand to the next op).
template <typename T>
inline __m512 rounded(__m512 v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(v)), 16));
}
inline __m512 mul(__m512 a, __m512 b) { return _mm512_mul_round_ps(a, b, RN); }
inline __m512 add(__m512 a, __m512 b) { return _mm512_add_round_ps(a, b, RN); }

// Rows [r0, r1) of `rows` x `len` elements: f(row) on the calling thread for a decode step's few rows,
// split over torch's threads from about 64K elements on.
template <typename F>
void for_rows(int64_t rows, int64_t len, F&& f) {
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, len));
  if (rows <= grain) {
    for (int64_t r = 0; r < rows; ++r) f(r);
    return;
  }
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) f(r);
  });
}

template <typename T>
void norm_rows(const T* x, const T* res, const T* w, T* h, T* y, int64_t rows, int64_t N, float eps) {
  for_rows(rows, N, [&](int64_t r) {
    const T* xr = x + r * N;
    T* yr = y + r * N;
    const T* hr = xr;  // the row the norm reads: x itself, or h = x + residual as stored (rounded)
    __m512 acc = _mm512_setzero_ps();
    if (res != nullptr) {
      const T* rr = res + r * N;
      T* out = h + r * N;
      for (int64_t i = 0; i < N; i += 16) {
        const __m512 v = rounded<T>(add(load(xr + i, N - i), load(rr + i, N - i)));
        store(out + i, v, N - i);
        acc = _mm512_fmadd_ps(v, v, acc);
      }
      hr = out;
    } else {
      for (int64_t i = 0; i < N; i += 16) {
        const __m512 v = load(xr + i, N - i);
        acc = _mm512_fmadd_ps(v, v, acc);
      }
    }
    const float inv = 1.0f / std::sqrt(_mm512_reduce_add_ps(acc) / float(N) + eps);
    const __m512 s = _mm512_set1_ps(inv);
    for (int64_t i = 0; i < N; i += 16) {
      const __m512 v = rounded<T>(mul(load(hr + i, N - i), s));
      store(yr + i, mul(v, load(w + i, N - i)), N - i);
    }
  });
}

template <typename T>
void rope_rows(T* x, const T* cos, const T* sin, int64_t B, int64_t Tn, int64_t H, int64_t R,
               const int64_t* xs, const int64_t* cs, const int64_t* ss) {
  const int64_t half = R / 2;
  for_rows(B * Tn * H, R, [&](int64_t row) {
    const int64_t b = row / (Tn * H), t = row / H % Tn, hd = row % H;
    T* xr = x + b * xs[0] + t * xs[1] + hd * xs[2];
    const T* c = cos + b * cs[0] + t * cs[1];
    const T* s = sin + b * ss[0] + t * ss[1];
    // Both halves computed from the row as read, then stored (in place: roll reads the other half).
    for (int64_t i = 0; i < half; i += 16) {
      const int64_t n = half - i;
      const __m512 lo = load(xr + i, n), hi = load(xr + half + i, n);
      // out[i] = x[i] c[i] + x[i + half] s[i]; out[i + half] = x[i + half] c[i + half] + x[i] s[i + half]
      const __m512 a = add(rounded<T>(mul(lo, load(c + i, n))), rounded<T>(mul(hi, load(s + i, n))));
      const __m512 z = add(rounded<T>(mul(hi, load(c + half + i, n))), rounded<T>(mul(lo, load(s + half + i, n))));
      store(xr + i, a, n);
      store(xr + half + i, z, n);
    }
  });
}

template <typename T>
void swiglu_rows(const T* gu, T* y, int64_t rows, int64_t I) {
  for_rows(rows, I, [&](int64_t r) {
    const T* g = gu + r * 2 * I;
    const T* u = g + I;
    T* yr = y + r * I;
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < I; i += 16) {
      const __m512 x = load(g + i, I - i);
      // silu(x) = x / (1 + e^-x), rounded as torch's silu op, then the product with "up".
      const __m512 silu = rounded<T>(_mm512_div_ps(x, _mm512_add_ps(one, phi4r::exp16(_mm512_sub_ps(_mm512_setzero_ps(), x)))));
      store(yr + i, mul(load(u + i, I - i), silu), I - i);
    }
  });
}

// First index of the largest of x[0..V) and whether NaN or +inf occurs. Four independent (max, index)
// accumulators, each over every fourth vector (one alone waits on its compare-and-blend chain): per lane
// the first strictly larger value wins, then the lowest index among the lanes holding the maximum.
template <typename T>
int64_t argmax_row(const T* x, int64_t V, bool& bad) {
  constexpr int A = 4;
  __m512 best[A];
  __m512i at[A];
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512 inf = _mm512_set1_ps(INFINITY);
  for (int a = 0; a < A; ++a) {
    best[a] = _mm512_set1_ps(-INFINITY);
    at[a] = _mm512_setzero_si512();
  }
  __mmask16 odd = 0;
  int64_t i = 0;
  for (; i + 16 * A <= V; i += 16 * A) {
#pragma GCC unroll 4
    for (int a = 0; a < A; ++a) {
      const __m512 v = load(x + i + 16 * a, 16);
      odd |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(v, inf, _CMP_EQ_OQ);
      const __mmask16 gt = _mm512_cmp_ps_mask(v, best[a], _CMP_GT_OQ);
      best[a] = _mm512_mask_blend_ps(gt, best[a], v);
      at[a] = _mm512_mask_blend_epi32(gt, at[a], _mm512_add_epi32(iota, _mm512_set1_epi32(int(i + 16 * a))));
    }
  }
  for (; i < V; i += 16) {  // the last vectors, into accumulator 0 (their indices exceed all before)
    const __mmask16 m = lanes(V - i);
    const __m512 v = load(x + i, V - i);
    odd |= _mm512_mask_cmp_ps_mask(m, v, v, _CMP_UNORD_Q) | _mm512_mask_cmp_ps_mask(m, v, inf, _CMP_EQ_OQ);
    const __mmask16 gt = _mm512_mask_cmp_ps_mask(m, v, best[0], _CMP_GT_OQ);
    best[0] = _mm512_mask_blend_ps(gt, best[0], v);
    at[0] = _mm512_mask_blend_epi32(gt, at[0], _mm512_add_epi32(iota, _mm512_set1_epi32(int(i))));
  }
  bad = bad || odd != 0;
  __m512 top = best[0];
  for (int a = 1; a < A; ++a) top = _mm512_max_ps(top, best[a]);
  const __m512 all = _mm512_set1_ps(_mm512_reduce_max_ps(top));
  // Lanes that never saw a value above -inf hold index 0 (a row of -inf: torch.argmax's 0 as well).
  int64_t first = V;
  for (int a = 0; a < A; ++a) {
    const __mmask16 eq = _mm512_cmp_ps_mask(best[a], all, _CMP_EQ_OQ);
    if (eq) first = std::min<int64_t>(first, _mm512_mask_reduce_min_epi32(eq, at[a]));
  }
  return first;
}

void check_float(const torch::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16),
              what, ": fp32 or bf16 CPU tensors");
}

}  // namespace

// x [..., N] contiguous; residual: None or like x; weight [N] of x's dtype. Returns (h, y): h = x +
// residual (x itself when residual is None), y = RMSNorm(h) * weight.
std::tuple<torch::Tensor, torch::Tensor> rms_norm(const torch::Tensor& x, const c10::optional<torch::Tensor>& residual,
                                                  const torch::Tensor& weight, double eps) {
  check_float(x, "rms_norm");
  const int64_t N = x.size(-1);
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous() && weight.numel() == N && weight.scalar_type() == x.scalar_type(),
              "rms_norm: contiguous x [..., N] and a weight [N] of its dtype");
  const bool add = residual.has_value() && residual->defined();
  if (add)
    TORCH_CHECK(residual->sizes() == x.sizes() && residual->is_contiguous() && residual->scalar_type() == x.scalar_type(),
                "rms_norm: the residual must be contiguous, of x's shape and dtype");
  auto y = torch::empty_like(x);
  auto h = add ? torch::empty_like(x) : x;
  const int64_t rows = N == 0 ? 0 : x.numel() / N;
  if (x.scalar_type() == at::kFloat)
    norm_rows<float>(x.data_ptr<float>(), add ? residual->data_ptr<float>() : nullptr, weight.data_ptr<float>(),
                     h.data_ptr<float>(), y.data_ptr<float>(), rows, N, float(eps));
  else
    norm_rows<at::BFloat16>(x.data_ptr<at::BFloat16>(), add ? residual->data_ptr<at::BFloat16>() : nullptr,
                            weight.data_ptr<at::BFloat16>(), h.data_ptr<at::BFloat16>(), y.data_ptr<at::BFloat16>(),
                            rows, N, float(eps));
  return {h, y};
}

// x [B, T, heads, D] (last dim contiguous), cos/sin [B, T, 1, R] (last dim contiguous), R even <= D.
torch::Tensor rope_(torch::Tensor x, const torch::Tensor& cos, const torch::Tensor& sin) {
  check_float(x, "rope_");
  TORCH_CHECK(x.dim() == 4 && cos.dim() == 4 && sin.dim() == 4, "rope_: x [B, T, heads, D], cos/sin [B, T, 1, R]");
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3), R = cos.size(3);
  TORCH_CHECK(cos.scalar_type() == x.scalar_type() && sin.scalar_type() == x.scalar_type(), "rope_: cos/sin in x's dtype");
  TORCH_CHECK(cos.size(0) == B && cos.size(1) == T && cos.size(2) == 1 && sin.sizes() == cos.sizes(),
              "rope_: cos/sin [B, T, 1, R] for x [B, T, heads, D]");
  TORCH_CHECK(R % 2 == 0 && R <= D, "rope_: an even rotary dim <= head dim");
  TORCH_CHECK((D <= 1 || x.stride(3) == 1) && (R <= 1 || (cos.stride(3) == 1 && sin.stride(3) == 1)),
              "rope_: the last dim must be contiguous");
  if (x.numel() == 0 || R == 0) return x;
  const int64_t xs[3] = {x.stride(0), x.stride(1), x.stride(2)}, cs[2] = {cos.stride(0), cos.stride(1)},
                ss[2] = {sin.stride(0), sin.stride(1)};
  if (x.scalar_type() == at::kFloat)
    rope_rows<float>(x.data_ptr<float>(), cos.data_ptr<float>(), sin.data_ptr<float>(), B, T, H, R, xs, cs, ss);
  else
    rope_rows<at::BFloat16>(x.data_ptr<at::BFloat16>(), cos.data_ptr<at::BFloat16>(), sin.data_ptr<at::BFloat16>(),
                            B, T, H, R, xs, cs, ss);
  return x;
}

// gate_up [..., 2I] contiguous -> [..., I].
torch::Tensor swiglu(const torch::Tensor& gate_up) {
  check_float(gate_up, "swiglu");
  TORCH_CHECK(gate_up.is_contiguous() && gate_up.dim() >= 1 && gate_up.size(-1) % 2 == 0,
              "swiglu: contiguous [..., 2I]");
  auto sizes = gate_up.sizes().vec();
  const int64_t I = sizes.back() / 2;
  sizes.back() = I;
  auto y = torch::empty(sizes, gate_up.options());
  const int64_t rows = I == 0 ? 0 : y.numel() / I;
  if (gate_up.scalar_type() == at::kFloat) swiglu_rows<float>(gate_up.data_ptr<float>(), y.data_ptr<float>(), rows, I);
  else swiglu_rows<at::BFloat16>(gate_up.data_ptr<at::BFloat16>(), y.data_ptr<at::BFloat16>(), rows, I);
  return y;
}

// qkv [B, T, heads + 2 KV, D] (last dim contiguous), cos/sin as for rope_, k_pool/v_pool contiguous of
// qkv's dtype with rows of D values, rows int64 [B, T, KV] contiguous: rotates the query and key heads in
// place, then k_pool row rows[b, t, j] = key head j of (b, t), v_pool's likewise the value head j.
void rope_kv_(torch::Tensor qkv, const torch::Tensor& cos, const torch::Tensor& sin, int64_t heads,
              const torch::Tensor& k_pool, const torch::Tensor& v_pool, const torch::Tensor& rows) {
  check_float(qkv, "rope_kv_");
  TORCH_CHECK(qkv.dim() == 4, "rope_kv_: qkv [B, T, heads + 2 KV, D]");
  const int64_t B = qkv.size(0), T = qkv.size(1), D = qkv.size(3), KV = (qkv.size(2) - heads) / 2;
  TORCH_CHECK(heads >= 0 && KV >= 1 && heads + 2 * KV == qkv.size(2), "rope_kv_: qkv [B, T, heads + 2 KV, D]");
  TORCH_CHECK(rows.scalar_type() == at::kLong && rows.is_contiguous() && rows.dim() == 3 && rows.size(0) == B &&
              rows.size(1) == T && rows.size(2) == KV, "rope_kv_: rows int64 [B, T, KV], contiguous");
  for (const auto* pool : {&k_pool, &v_pool})
    TORCH_CHECK(pool->is_contiguous() && pool->scalar_type() == qkv.scalar_type() && pool->dim() >= 1 &&
                pool->size(-1) == D && pool->device().is_cpu(), "rope_kv_: contiguous CPU pools [..., D] of qkv's dtype");
  const int64_t n_rows = std::min(k_pool.numel(), v_pool.numel()) / std::max<int64_t>(1, D);
  const int64_t* r = rows.data_ptr<int64_t>();
  for (int64_t i = 0; i < rows.numel(); ++i)
    TORCH_CHECK(r[i] >= 0 && r[i] < n_rows, "rope_kv_: cache row ", r[i], " out of range [0, ", n_rows, ")");
  rope_(qkv.narrow(2, 0, heads + KV), cos, sin);
  const int64_t bytes = D * qkv.element_size();
  const char* src = static_cast<const char*>(qkv.data_ptr());
  char* kp = static_cast<char*>(k_pool.data_ptr());
  char* vp = static_cast<char*>(v_pool.data_ptr());
  const int64_t e = qkv.element_size(), s0 = qkv.stride(0) * e, s1 = qkv.stride(1) * e, s2 = qkv.stride(2) * e;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < KV; ++j) {
        const char* head = src + b * s0 + t * s1;
        const int64_t row = r[(b * T + t) * KV + j];
        std::memcpy(kp + row * bytes, head + (heads + j) * s2, bytes);
        std::memcpy(vp + row * bytes, head + (heads + KV + j) * s2, bytes);
      }
}

// ---- A decoder layer's decode step in one call: model.DecoderLayer.fused_decode for one new token per
// sequence over a paged cache, with projections whose kernels are phi4r's dispatcher ops and the decode
// attention kernel, called from here. The same ops in the same order as the Python path (the same bits);
// what it saves is the Python between them, ~20 us a layer (a tenth of an int4 decode step of a 258M
// model), and each kernel's Python call.

namespace {

template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// One projection: its kernel (phi4r::int4_linear, int8_linear or w8a8_linear) and weight arguments.
struct Projection {
  enum Kind { INT4, INT8, W8A8 } kind;
  std::vector<torch::Tensor> t;  // int4: packed, scales; int8: weight, scales; w8a8: packed, comp, scales
  int64_t group;                 // int4's group size
  bool a8;                       // int4's int8 activations

  Projection(const std::string& name, std::vector<torch::Tensor> tensors, int64_t group_size, bool int8_activations)
      : t(std::move(tensors)), group(group_size), a8(int8_activations) {
    const size_t want = name == "int4" ? 2 : name == "int8" ? 2 : name == "w8a8" ? 3 : 0;
    TORCH_CHECK(want && t.size() == want, "DecodeLayer: a projection is int4 (packed, scales), int8 (weight, scales) "
                "or w8a8 (packed, comp, scales), got ", name, " with ", t.size(), " tensors");
    kind = name == "int4" ? INT4 : name == "int8" ? INT8 : W8A8;
  }

  torch::Tensor operator()(const torch::Tensor& x) const {
    using T = const torch::Tensor&;
    switch (kind) {
      case INT4: {
        static const auto op = find_op<torch::Tensor(T, T, T, int64_t, bool)>("phi4r::int4_linear");
        return op.call(x, t[0], t[1], group, a8);
      }
      case INT8: {
        static const auto op = find_op<torch::Tensor(T, T, T)>("phi4r::int8_linear");
        return op.call(x, t[0], t[1]);
      }
      default: {
        static const auto op = find_op<torch::Tensor(T, T, T, T)>("phi4r::w8a8_linear");
        return op.call(x, t[0], t[1], t[2]);
      }
    }
  }
};

}  // namespace

class DecodeLayer {
 public:
  // norms' weights and eps; projections qkv, o, gate_up, down as (kind, tensors, group, a8).
  DecodeLayer(torch::Tensor w1, double eps1, torch::Tensor w2, double eps2,
              const std::vector<std::tuple<std::string, std::vector<torch::Tensor>, int64_t, bool>>& projections,
              int64_t heads, int64_t kv_heads, int64_t head_dim)
      : w1_(std::move(w1)), w2_(std::move(w2)), eps1_(eps1), eps2_(eps2), H_(heads), KV_(kv_heads), D_(head_dim) {
    TORCH_CHECK(projections.size() == 4, "DecodeLayer: qkv, o, gate_up and down projections");
    for (const auto& [name, tensors, group, a8] : projections) p_.emplace_back(name, tensors, group, a8);
  }

  // (delta + x, or x when delta is None) through the layer: returns (its MLP output, x + delta + its
  // attention output), as fused_decode. x [B, 1, hidden]; cos/sin [B, 1, 1, R]; the layer's pools;
  // rows [B, 1, KV] (the new keys' cache rows); lengths [B]; tables [B, blocks] (the paged cache's).
  std::tuple<torch::Tensor, torch::Tensor> forward(const c10::optional<torch::Tensor>& delta, const torch::Tensor& x,
                                                   const torch::Tensor& cos, const torch::Tensor& sin,
                                                   const torch::Tensor& k_pool, const torch::Tensor& v_pool,
                                                   const torch::Tensor& rows, const torch::Tensor& lengths, double scale,
                                                   const torch::Tensor& tables) const {
    using T = const torch::Tensor&;
    static const auto attention =
        find_op<torch::Tensor(T, T, T, T, double, const c10::optional<torch::Tensor>&)>("phi4r::decode_attention");
    const int64_t B = x.size(0);
    auto [h, normed] = delta.has_value() && delta->defined() ? rms_norm(delta->contiguous(), x.contiguous(), w1_, eps1_)
                                                             : rms_norm(x.contiguous(), c10::nullopt, w1_, eps1_);
    torch::Tensor qkv = p_[0](normed).view({B, 1, H_ + 2 * KV_, D_});
    rope_kv_(qkv, cos, sin, H_, k_pool, v_pool, rows);
    torch::Tensor out = attention.call(qkv.select(1, 0).narrow(1, 0, H_), k_pool, v_pool, lengths, scale, tables);
    auto [h2, normed2] = rms_norm(p_[1](out.reshape({B, 1, H_ * D_}).contiguous()).contiguous(), h, w2_, eps2_);
    return {p_[3](swiglu(p_[2](normed2).contiguous())), h2};
  }

 private:
  torch::Tensor w1_, w2_;
  double eps1_, eps2_;
  int64_t H_, KV_, D_;
  std::vector<Projection> p_;
};

// logits [B, V] contiguous -> (the argmax of each row, no NaN or +inf anywhere).
std::tuple<std::vector<int64_t>, bool> argmax(const torch::Tensor& logits) {
  check_float(logits, "argmax");
  TORCH_CHECK(logits.dim() == 2 && logits.is_contiguous() && logits.size(1) >= 1 && logits.size(1) < (int64_t(1) << 31),
              "argmax: contiguous logits [B, V], 1 <= V < 2^31");
  const int64_t B = logits.size(0), V = logits.size(1);
  std::vector<int64_t> ids(B);
  bool bad = false;
  for (int64_t b = 0; b < B; ++b)
    ids[b] = logits.scalar_type() == at::kFloat ? argmax_row(logits.data_ptr<float>() + b * V, V, bad)
                                                : argmax_row(logits.data_ptr<at::BFloat16>() + b * V, V, bad);
  return {ids, !bad};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rms_norm", &rms_norm, "(h, y): h = x + residual, y = RMSNorm(h) * weight", py::arg("x"), py::arg("residual"),
        py::arg("weight"), py::arg("eps"));
  m.def("rope_", &rope_, "rotate x [B, T, heads, D] in place by cos/signed sin [B, T, 1, R]");
  m.def("swiglu", &swiglu, "up * silu(gate) of [..., gate | up]");
  m.def("rope_kv_", &rope_kv_, "rotate qkv's query and key heads in place and copy its keys/values to their cache rows",
        py::arg("qkv"), py::arg("cos"), py::arg("sin"), py::arg("heads"), py::arg("k_pool"), py::arg("v_pool"),
        py::arg("rows"));
  m.def("argmax", &argmax, "(first argmax of each row of logits [B, V], no NaN/+inf in them)");
  py::class_<DecodeLayer>(m, "DecodeLayer", "a decoder layer's decode step in one call (model.DecoderLayer.fused_decode)")
      .def(py::init<torch::Tensor, double, torch::Tensor, double,
                    const std::vector<std::tuple<std::string, std::vector<torch::Tensor>, int64_t, bool>>&, int64_t,
                    int64_t, int64_t>(),
           py::arg("w1"), py::arg("eps1"), py::arg("w2"), py::arg("eps2"), py::arg("projections"), py::arg("heads"),
           py::arg("kv_heads"), py::arg("head_dim"))
      .def("forward", &DecodeLayer::forward, py::arg("delta"), py::arg("x"), py::arg("cos"), py::arg("sin"),
           py::arg("k_pool"), py::arg("v_pool"), py::arg("rows"), py::arg("lengths"), py::arg("scale"), py::arg("tables"));
  // The loader (build.py) hands out one function: this one, returning the module with all of them.
  py::object self = m;
  m.def("ops", [self]() { return self; }, "this module");
}
