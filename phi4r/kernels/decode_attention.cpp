// Decode attention for CPU: one query per sequence against its cached keys and values.
//
// out[b, h] = softmax(scale * q[b, h] . k[b, h / G, j]) @ v[b, h / G, j] over j < lengths[b], where
// G = H / KV (grouped-query attention). q, K and V are all fp32 or all bf16; the softmax and every
// sum are fp32 (bf16 -> fp32 is exact), the output has q's dtype.
//
// K and V are either per sequence ([B, KV, S, D], views of a cache are fine) or a paged cache's
// pools [blocks, KV, block_size, D] with a block table [B, n]: position j of sequence b is row
// j % block_size of block table[b, j / block_size]. A block size that is a multiple of the 16-row tile
// keeps every tile inside one block, so a block costs one table lookup per tile and nothing per row.
//
// Work item: one (sequence, KV head) and its group of G queries (in blocks of GB <= 8, padded to a
// power of two by repeating the last query), so each K and V row is read once for the whole group,
// in one pass, a tile of 16 rows at a time (online softmax: a running max per query, and its sum and
// output rescaled when a tile raises it):
//   scores: R = 16 / GB rows at a time, GB x R dot products in 16 accumulators (fp32: FMA; bf16:
//           vdpbf16ps, whose bf16 x bf16 products are exact in fp32), reduced together by one tree of
//           shuffles into one vector with lane g * R + r, stored as is: the scores live in blocks of
//           16 (R rows x GB queries), so the softmax runs on whole vectors for any group size;
//   softmax: fp32 max and exp (Cephes' range reduction and polynomial, ~1 ulp); the division by the
//           sum is applied to the output at the end instead of to every weight;
//   values: acc[g] += p[g, j] * v[j] with GB x NV register accumulators (NV vectors of 16 dims), V rows
//           converted once for the group; the head dim in chunks of NV = 16 / GB vectors (fewer for
//           the last one: power-of-two steps), kept in an fp32 row per query between tiles.
// The next tile's K/V rows are prefetched during the scores (~1.3x on a cache read from memory).
// Threads split the work items (at::parallel_for: torch's thread count).
//
// Built by phi4r/kernels/attention.py with -O3 -march=native (AVX-512F/BW and AVX512-BF16 required).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include "simd.h"

#include <algorithm>
#include <cmath>
#include <memory>

namespace {

using bf16 = at::BFloat16;

// ---- loads as fp32 (bf16: the 16 bits become the top half of an fp32, exactly)

inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const bf16* p) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

inline void store16(float* p, __m512 x) { _mm512_storeu_ps(p, x); }
inline void store16(bf16* p, __m512 x) {  // round to nearest even, like torch's .to(bfloat16)
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)_mm512_cvtneps_pbh(x));
}

// ---- dot-product steps: Step dims of q and k per instruction

template <typename T> struct Dot;

template <> struct Dot<float> {
  static constexpr int Step = 16;
  using V = __m512;
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static __m512 madd(__m512 acc, V a, V b) { return _mm512_fmadd_ps(a, b, acc); }
};

template <> struct Dot<bf16> {
  static constexpr int Step = 32;
  using V = __m512bh;
  static V load(const bf16* p) { return (__m512bh)_mm512_loadu_si512(p); }
  static V load_half(const bf16* p) { return (__m512bh)_mm512_maskz_loadu_epi16(0xFFFF, p); }  // D % 32 == 16
  static __m512 madd(__m512 acc, V a, V b) { return _mm512_dpbf16_ps(acc, a, b); }
};

// Every lane gets the max (or sum) of its aligned group of R lanes (one query's lanes in a block).
template <int R, bool Max>
inline __m512 group_reduce(__m512 x) {
  for (int s = 1; s < R; s *= 2) {
    const __m512i idx = _mm512_xor_si512(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                         _mm512_set1_epi32(s));
    const __m512 y = _mm512_permutexvar_ps(idx, x);
    x = Max ? _mm512_max_ps(x, y) : _mm512_add_ps(x, y);
  }
  return x;
}

// Rows per tile (16 measured faster than 32 and 64): a tile's K and V rows (4 KB each at head dim 128,
// bf16) stay in L1 from the scores to the values, and the next tile's are prefetched meanwhile.
constexpr int64_t Tile = 16;

struct Item {
  const void* q[8];  // the block's GB queries (the last one repeated up to GB)
  void* out[8];      // their outputs (the first `queries` are stored)
  int queries;
  const void* k;     // row 0 of block 0 of this KV head (in attend's tiles: row 0 of the tile)
  const void* v;
  int64_t ks, vs;    // row strides (elements)
  const int64_t* table;  // this sequence's blocks
  int64_t bs, kb, vb;    // rows per block, block strides (elements)
  int64_t len, D;
  float scale;
  const void* next_k;  // the next item's rows, prefetched during the last tile
  const void* next_v;
  int64_t next_len;    // 0: no next item
};

// Into L2: into L1 (T0) it was slower, the tiles in use being evicted.
template <typename T>
inline void prefetch_rows(const T* p, int64_t stride, int64_t rows, int64_t D) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < D * int64_t(sizeof(T)); b += 64)
      _mm_prefetch(reinterpret_cast<const char*>(p + r * stride) + b, _MM_HINT_T1);
}

// Scores of the block's queries against rows [j0, j0 + R) (rows past len: -inf) -> s[0..16).
template <typename T, int GB>
__attribute__((always_inline)) inline void scores(const Item& it, int64_t j0, float* s) {
  constexpr int R = 16 / GB;
  using D_ = Dot<T>;
  const T* q[GB];
  const T* k[R];
#pragma GCC unroll 16
  for (int g = 0; g < GB; ++g) q[g] = static_cast<const T*>(it.q[g]);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) k[r] = static_cast<const T*>(it.k) + std::min(j0 + r, it.len - 1) * it.ks;
  __m512 acc[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
  // One step of Step dims (`load`: whole vectors, or D_::load_half for D % 32 == 16 in bf16).
  auto step = [&](int64_t d, auto load) __attribute__((always_inline)) {
    typename D_::V qv[GB];
#pragma GCC unroll 16
    for (int g = 0; g < GB; ++g) qv[g] = load(q[g] + d);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const auto kv = load(k[r] + d);
#pragma GCC unroll 16
      for (int g = 0; g < GB; ++g) acc[g * R + r] = D_::madd(acc[g * R + r], qv[g], kv);
    }
  };
  int64_t d = 0;
  for (; d + D_::Step <= it.D; d += D_::Step) step(d, [](const T* p) { return D_::load(p); });
  if constexpr (D_::Step == 32) if (d < it.D) step(d, [](const T* p) { return D_::load_half(p); });  // zeros add nothing
  __m512 x = _mm512_mul_ps(phi4r::reduce16(acc), _mm512_set1_ps(it.scale));
  const int valid = int(std::min<int64_t>(R, it.len - j0));
  if (valid < R) {  // lanes g * R + r with r >= valid
    __mmask16 keep = 0;
    for (int i = 0; i < 16; ++i) keep |= __mmask16((i % R) < valid) << i;
    x = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), keep, x);
  }
  _mm512_storeu_ps(s, x);
}

// acc[g][d0, d0 + 16 NV) = acc * c[g] + sum_j p[g, j] v[s0 + j][...] over the tile's rows.
template <typename T, int GB, int NV>
__attribute__((always_inline)) inline void values(const Item& it, const float* p, int64_t s0, int64_t rows,
                                                  const float* c, float* acc, int64_t d0) {
  constexpr int R = 16 / GB;
  __m512 a[GB * NV];  // constant indices only: an array indexed at run time would live on the stack
#pragma GCC unroll 8
  for (int g = 0; g < GB; ++g)
#pragma GCC unroll 16
    for (int n = 0; n < NV; ++n)
      a[g * NV + n] = _mm512_mul_ps(_mm512_loadu_ps(acc + g * it.D + d0 + 16 * n), _mm512_set1_ps(c[g]));
  const T* v = static_cast<const T*>(it.v) + s0 * it.vs + d0;
  for (int64_t j = 0; j < rows; ++j, v += it.vs) {
    const float* pj = p + (j / R) * 16 + j % R;  // lane g * R + j % R of block j / R
    __m512 x[NV];
#pragma GCC unroll 16
    for (int n = 0; n < NV; ++n) x[n] = load16(v + 16 * n);
#pragma GCC unroll 8
    for (int g = 0; g < GB; ++g) {
      const __m512 w = _mm512_set1_ps(pj[g * R]);
#pragma GCC unroll 16
      for (int n = 0; n < NV; ++n) a[g * NV + n] = _mm512_fmadd_ps(w, x[n], a[g * NV + n]);
    }
  }
#pragma GCC unroll 8
  for (int g = 0; g < GB; ++g)
#pragma GCC unroll 16
    for (int n = 0; n < NV; ++n) _mm512_storeu_ps(acc + g * it.D + d0 + 16 * n, a[g * NV + n]);
}

// The head dim in chunks of NV vectors: as many full ones as fit, the rest by halving NV.
template <typename T, int GB, int NV>
inline void values_from(const Item& it, const float* p, int64_t s0, int64_t rows, const float* c, float* acc,
                        int64_t d0) {
  for (; d0 + 16 * NV <= it.D; d0 += 16 * NV) values<T, GB, NV>(it, p, s0, rows, c, acc, d0);
  if constexpr (NV > 1) values_from<T, GB, NV / 2>(it, p, s0, rows, c, acc, d0);
}

// Row s0 (a multiple of Tile) of a sequence whose block 0 of this head starts at `base`.
template <typename T>
inline const T* tile_row(const T* base, const int64_t* table, int64_t bs, int64_t block_stride, int64_t row_stride,
                         int64_t s0) {
  return base + table[s0 / bs] * block_stride + (s0 % bs) * row_stride;
}

// One pass over the rows, a tile at a time, with the softmax's running max (online softmax): when
// a tile raises a query's max, its sum and output so far are scaled by exp(old max - new max).
template <typename T, int GB>
void attend(const Item& it, float* acc) {
  constexpr int R = 16 / GB;
  alignas(64) float p[Tile * GB];  // the tile's scores, then weights, in blocks of 16 (R rows x GB queries)
  alignas(64) float lanes[16];
  float c[GB];
  std::fill(acc, acc + GB * it.D, 0.f);
  __m512 m = _mm512_set1_ps(-INFINITY), sum = _mm512_setzero_ps();  // per lane; a query's lanes agree on m
  for (int64_t s0 = 0; s0 < it.len; s0 += Tile) {
    const int64_t rows = std::min(Tile, it.len - s0), blocks = (rows + R - 1) / R;
    Item t = it;  // the tile's rows, contiguous within one block: rows [0, rows) from here on
    t.k = tile_row(static_cast<const T*>(it.k), it.table, it.bs, it.kb, it.ks, s0);
    t.v = tile_row(static_cast<const T*>(it.v), it.table, it.bs, it.vb, it.vs, s0);
    t.len = rows;
    // The next tile's rows (in this item or the next one) into L2, a block's worth per block: the
    // hardware prefetcher alone left K/V reads at half the memory bandwidth (new streams every item).
    const bool last = s0 + Tile >= it.len;
    const T* pk = last ? static_cast<const T*>(it.next_k)
                       : tile_row(static_cast<const T*>(it.k), it.table, it.bs, it.kb, it.ks, s0 + Tile);
    const T* pv = last ? static_cast<const T*>(it.next_v)
                       : tile_row(static_cast<const T*>(it.v), it.table, it.bs, it.vb, it.vs, s0 + Tile);
    const int64_t ahead = std::min(Tile, last ? it.next_len : it.len - s0 - Tile);
    __m512 tmax = _mm512_set1_ps(-INFINITY);
    for (int64_t i = 0; i < blocks; ++i) {
      const int64_t pr = std::max<int64_t>(0, std::min<int64_t>(R, ahead - i * R));
      prefetch_rows(pk + i * R * it.ks, it.ks, pr, it.D);
      prefetch_rows(pv + i * R * it.vs, it.vs, pr, it.D);
      scores<T, GB>(t, i * R, p + 16 * i);
      tmax = _mm512_max_ps(tmax, _mm512_load_ps(p + 16 * i));
    }
    const __m512 mnew = _mm512_max_ps(m, group_reduce<R, true>(tmax));
    const __m512 rescale = phi4r::exp16(_mm512_sub_ps(m, mnew));  // first tile: exp(-inf) = 0
    sum = _mm512_mul_ps(sum, rescale);
    m = mnew;
    for (int64_t i = 0; i < blocks; ++i) {  // rows past len: exp(-inf - m) = 0
      const __m512 e = phi4r::exp16(_mm512_sub_ps(_mm512_load_ps(p + 16 * i), m));
      _mm512_store_ps(p + 16 * i, e);
      sum = _mm512_add_ps(sum, e);
    }
    _mm512_store_ps(lanes, rescale);
    for (int g = 0; g < GB; ++g) c[g] = lanes[g * R];
    values_from<T, GB, 16 / GB>(t, p, 0, rows, c, acc, 0);
  }
  _mm512_store_ps(lanes, group_reduce<R, false>(sum));
  for (int g = 0; g < it.queries; ++g) {
    const __m512 inv = _mm512_set1_ps(1.f / lanes[g * R]);
    for (int64_t d = 0; d < it.D; d += 16)
      store16(static_cast<T*>(it.out[g]) + d, _mm512_mul_ps(_mm512_loadu_ps(acc + g * it.D + d), inv));
  }
}

template <typename T>
void run(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const int64_t* lengths,
         const int64_t* tables, int64_t table_stride, int64_t bs, double scale, torch::Tensor& out) {
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), KV = k.size(1), G = H / KV;
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, B * KV, 1, [&](int64_t i0, int64_t i1) {
    std::unique_ptr<float[]> acc(new float[8 * D]);  // the output rows of a block of queries, fp32
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / KV, h = i % KV;
      for (int64_t g0 = 0; g0 < G; g0 += 8) {
        Item it;
        it.queries = int(std::min<int64_t>(8, G - g0));
        const int GB = it.queries <= 1 ? 1 : it.queries <= 2 ? 2 : it.queries <= 4 ? 4 : 8;
        for (int g = 0; g < GB; ++g) {
          const int64_t head = h * G + g0 + std::min(g, it.queries - 1);
          it.q[g] = qp + b * q.stride(0) + head * q.stride(1);
          it.out[g] = op + (b * H + head) * D;
        }
        it.k = kp + h * k.stride(1);
        it.v = vp + h * v.stride(1);
        it.ks = k.stride(2);
        it.vs = v.stride(2);
        it.table = tables + b * table_stride;
        it.bs = bs;
        it.kb = k.stride(0);
        it.vb = v.stride(0);
        it.len = lengths[b];
        it.D = D;
        it.scale = float(scale);
        // Another block of this item's queries reads the same rows again; the last one the next item's.
        const int64_t n = g0 + 8 < G ? i : i + 1;
        const int64_t first = n < i1 ? tables[(n / KV) * table_stride] : 0;  // its block 0
        it.next_k = n < i1 ? kp + first * k.stride(0) + (n % KV) * k.stride(1) : it.k;
        it.next_v = n < i1 ? vp + first * v.stride(0) + (n % KV) * v.stride(1) : it.v;
        it.next_len = n < i1 ? lengths[n / KV] : 0;
        if (GB == 1) attend<T, 1>(it, acc.get());
        else if (GB == 2) attend<T, 2>(it, acc.get());
        else if (GB == 4) attend<T, 4>(it, acc.get());
        else attend<T, 8>(it, acc.get());
      }
    }
  });
}

}  // namespace

// q [B, H, D], k/v [B, KV, S, D] (any strides but the last dim's: views of a cache work as they are),
// lengths [B] int64 in [1, S]: sequence b attends to its first lengths[b] positions; D % 16 == 0,
// H % KV == 0; q, k, v all fp32 or all bf16. Returns [B, H, D] contiguous, q's dtype.
// With block_table [B, n] int64: k/v are pools [blocks, KV, block_size, D] (block_size a multiple of 16
// when n > 1), lengths in [1, n * block_size], and the blocks a sequence reads must exist.
torch::Tensor decode_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& lengths, double scale,
                               const c10::optional<torch::Tensor>& block_table) {
  const bool paged = block_table.has_value() && block_table->defined();
  TORCH_CHECK(q.dim() == 3 && k.dim() == 4 && k.sizes() == v.sizes() && (paged || k.size(0) == q.size(0)) &&
              k.size(3) == q.size(2) && k.size(1) > 0 && q.size(1) % k.size(1) == 0, "decode_attention: shapes");
  TORCH_CHECK(q.size(2) % 16 == 0, "decode_attention: head dim must be a multiple of 16");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && k.scalar_type() == v.scalar_type() &&
              (q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16),
              "decode_attention: q, k, v all fp32 or all bf16");
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu() && lengths.device().is_cpu(),
              "decode_attention: CPU tensors");
  TORCH_CHECK(q.stride(2) == 1 && k.stride(3) == 1 && v.stride(3) == 1, "decode_attention: contiguous head dim");
  TORCH_CHECK(lengths.scalar_type() == at::kLong && lengths.dim() == 1 && lengths.size(0) == q.size(0),
              "decode_attention: lengths int64 [B]");
  auto out = torch::empty(q.sizes(), q.options());
  if (q.numel() == 0) return out;
  const auto len = lengths.contiguous();
  const int64_t* lp = len.data_ptr<int64_t>();
  torch::Tensor table;
  int64_t bs, span;
  if (paged) {
    table = block_table->contiguous();
    TORCH_CHECK(table.scalar_type() == at::kLong && table.dim() == 2 && table.size(0) == q.size(0) &&
                table.size(1) > 0 && table.device().is_cpu(), "decode_attention: block_table int64 [B, n]");
    bs = k.size(2);
    TORCH_CHECK(table.size(1) == 1 || bs % Tile == 0, "decode_attention: block size must be a multiple of ", Tile);
    span = table.size(1) * bs;
  } else {
    table = torch::arange(q.size(0), lengths.options()).view({-1, 1});  // one block per sequence: its own
    bs = int64_t(1) << 62;  // a multiple of Tile larger than any length: every row in block 0
    span = k.size(2);
  }
  const int64_t* tp = table.data_ptr<int64_t>();
  const int64_t n = table.size(1);
  for (int64_t b = 0; b < q.size(0); ++b) {
    TORCH_CHECK(lp[b] >= 1 && lp[b] <= span, "decode_attention: lengths must be in [1, ", span, "]");
    if (paged)
      for (int64_t j = 0; j * bs < lp[b]; ++j)
        TORCH_CHECK(tp[b * n + j] >= 0 && tp[b * n + j] < k.size(0), "decode_attention: block ids must be in [0, ",
                    k.size(0), ")");
  }
  if (q.scalar_type() == at::kFloat) run<float>(q, k, v, lp, tp, n, bs, scale, out);
  else run<bf16>(q, k, v, lp, tp, n, bs, scale, out);
  return out;
}

// A dispatcher op, torch.ops.phi4r.decode_attention, for torch.compile's graphs (shape function:
// phi4r/kernels/attention.py). A fragment: int8_linear.cpp defines the namespace in another library.
TORCH_LIBRARY_FRAGMENT(phi4r, m) {
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor lengths, float scale, Tensor? block_table=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(phi4r, CPU, m) {
  m.impl("decode_attention", &decode_attention);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_attention", &decode_attention, "one query per sequence against its KV cache (AVX-512)",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("lengths"), py::arg("scale"),
        py::arg("block_table") = py::none());
}
