// The problem of one kernel call: its arguments by name, the parameter struct, which keys a row
// sees (causal / window / lengths), the dropout hash and the block sizes.
//
// Contract (the forward/backward of engines/kernel/__init__.py, called through engines/kernel/fused.py):
//   forward(q (B,H,Lb,D), k (B,G,Sb,D), v (B,G,Sb,E), ...) -> out (B,H,Lb,E) f32, lse, m, l (B,H,Lb) f32
//     queries are the absolute rows [i0, i0+Lb), keys the absolute columns [j0, j0+Sb) of an
//     (L, S) problem; masks/biases are indexed with absolute positions through broadcast strides.
//   backward(..., dout, m, l, delta, dq, dk, dv, d_float_mask?, d_bias?) accumulates in place; m and l
//     are the forward's row max (or a point up to kLazySlack below it, row_step.h) and l = sum exp(s - m)
//     (the final ones of these queries), lse = m + log l.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>

// Every op's description of the problem, by name: the tail of the forward / backward
// schemas (register.cpp), the C++ parameters of those ops, and the names they pass on. The three
// lists below must agree; engines/kernel/fused.py (`spec_args`) builds the arguments by name.
//   i0, j0: absolute first query / key of this call; L, S: the whole problem's lengths;
//   causal: 0 none, 1 bottom_right, 2 top_left; window_left/right: -1 = unbounded;
//   seed, dropout_threshold: keep an entry iff its counter hash >= the threshold (p * 2^32);
//   scale; softcap (0 = none); dropout_p.
#define ATTNKIT_SPEC_SCHEMA                                                                                          \
  "Tensor? kv_lengths, Tensor? q_lengths, Tensor? mask, Tensor? float_mask, Tensor? bias, Tensor? alibi_slopes, "    \
  "int i0, int j0, int L, int S, int causal, int window_left, int window_right, int seed, int dropout_threshold, " \
  "float scale, float softcap, float dropout_p"
#define ATTNKIT_SPEC_PARAMS                                                                                       \
  const std::optional<at::Tensor>& kv_lengths, const std::optional<at::Tensor>& q_lengths,                          \
      const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& float_mask,                           \
      const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& alibi_slopes, int64_t i0, int64_t j0, \
      int64_t L, int64_t S, int64_t causal, int64_t window_left, int64_t window_right, int64_t seed,               \
      int64_t dropout_threshold, double scale, double softcap, double dropout_p
#define ATTNKIT_SPEC_ARGS                                                                                          \
  kv_lengths, q_lengths, mask, float_mask, bias, alibi_slopes, i0, j0, L, S, causal, window_left, window_right, seed, \
      dropout_threshold, scale, softcap, dropout_p

namespace attnkit_fused {

// ----------------------------------------------------------------------------- block sizes
// The tile rule is engines/kernel/blocks.py (both backends); build.py passes it as -D defines, so
// the sizes below are never written here. What each means is said there.
#if !defined(ATTNKIT_QUERY_TILE) || !defined(ATTNKIT_MIN_PRODUCT_ROWS)
#error "build with engines/kernel/build.py: it passes the tile rule of engines/kernel/blocks.py (-DATTNKIT_*)"
#endif
constexpr int64_t kFwdBlockQLarge = ATTNKIT_QUERY_TILE;     // rows, Lb >= kLongRange
constexpr int64_t kFwdBlockQMid = ATTNKIT_QUERY_TILE_MID;   // rows, Lb >= kMidRange
constexpr int64_t kFwdBlockQShort = ATTNKIT_QUERY_TILE_SHORT;  // rows, kFwdBlockQSmall <= Lb < kMidRange
constexpr int64_t kFwdBlockQSmall = ATTNKIT_QUERY_TILE_SMALL;  // rows, Lb < kFwdBlockQSmall (heads pack)
constexpr int64_t kLongRange = ATTNKIT_QUERY_TILE_LONG_RANGE, kMidRange = ATTNKIT_QUERY_TILE_MID_RANGE;
constexpr int64_t kFwdBlockK = ATTNKIT_KEY_TILE;
constexpr int64_t kBandRatio = ATTNKIT_BAND_RATIO;
constexpr int64_t kBwdBlockQ = ATTNKIT_BWD_QUERY_TILE;
constexpr int64_t kBwdBlockK = ATTNKIT_BWD_KEY_TILE;
// No score product narrower than this unless the whole range is (MKL sums narrower products with
// other kernels, in another order; the backward rebuilds the forward's weights from its own
// products, so both must be the same numbers): a short last block joins the one before it, and
// the forward widens a narrow band with hidden keys. tests/test_backward_rule.py checks the result.
constexpr int64_t kMinCols = ATTNKIT_MIN_PRODUCT_COLS, kMinRows = ATTNKIT_MIN_PRODUCT_ROWS;
// Forward problems below this many flops run on one thread (see forward_kernel): a threading
// threshold, not a tile size.
constexpr double kSerialFlops = 1 << 18;
constexpr int64_t kWidenFloats = ATTNKIT_WIDEN_TILE_FLOATS;  // float32 per widened K or V chunk (forward.cpp)
// Query blocks multiplied in registers (few_rows.h): float32 rows, half rows (widened there).
constexpr int64_t kFewRows = ATTNKIT_FEW_ROWS, kFewRowsHalf = ATTNKIT_FEW_ROWS_HALF;

// Blocks of `size` over n items, a last remainder shorter than `min_tail` joined to the block before.
inline int64_t block_count(int64_t n, int64_t size, int64_t min_tail) {
  const int64_t full = n / size;
  return full == 0 ? (n > 0 ? 1 : 0) : full + (n % size >= min_tail ? 1 : 0);
}
// Length of block i of `count` such blocks (the last one takes what is left).
inline int64_t block_len(int64_t n, int64_t size, int64_t count, int64_t i) {
  return i + 1 < count ? size : n - i * size;
}

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
using Vec = at::vec::Vectorized<float>;

// ----------------------------------------------------------------------------- dropout
// Port of attnkit/dropout.py: the same counter hash, so keep masks are bit-identical.
inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x21F0AAADu;
  x ^= x >> 15;
  x *= 0x735A2D97u;
  return x ^ (x >> 15);
}
inline uint32_t col_key(int64_t j) { return mix32(static_cast<uint32_t>(j) * 0x2545F491u); }

// ----------------------------------------------------------------------------- parameters
struct Strides4 {
  int64_t b = 0, h = 0, i = 0, j = 0;
};

inline Strides4 broadcast_strides(const at::Tensor& t) {
  // Size-1 dims broadcast: stride 0.
  Strides4 s;
  s.b = t.size(0) == 1 ? 0 : t.stride(0);
  s.h = t.size(1) == 1 ? 0 : t.stride(1);
  s.i = t.size(2) == 1 ? 0 : t.stride(2);
  s.j = t.size(3) == 1 ? 0 : t.stride(3);
  return s;
}

// Element strides of a (batch, head, row, ·) tensor whose rows are contiguous (`as_rows`).
struct RowStrides {
  int64_t b = 0, h = 0, r = 0;
};

struct Params {
  int64_t B, H, G, R, Lb, Sb, D, E;
  RowStrides qs, ks, vs;  // q (B,H,Lb,D), k (B,G,Sb,D), v (B,G,Sb,E): any layout with contiguous rows
  int64_t i0, j0, L, S;
  float scale;
  int64_t causal;  // 0 none, 1 bottom_right, 2 top_left
  int64_t wl, wr;  // window sides, -1 = unbounded
  const int64_t* kv_len = nullptr;
  const int64_t* q_len = nullptr;
  const bool* mask = nullptr;
  Strides4 ms;
  const float* fmask = nullptr;
  Strides4 fs;
  const float* bias = nullptr;
  Strides4 bs;
  const float* alibi = nullptr;  // (B, H) contiguous
  float softcap = 0.f;           // 0 = none
  float dropout_p = 0.f;
  int64_t threshold = 0;  // keep iff hash >= threshold
  uint32_t base_key = 0;  // mix32 of the seed
};

// t itself when the kernel can read it in place — rows (the last dim) contiguous, row strides no
// shorter than a row, and for 2-byte types even strides on a 4-byte boundary (VNNI pairs are 32-bit
// words) — else a contiguous copy. Hugging Face's (B, L, H, D) storage seen as (B, H, L, D) is read
// in place: no copy of q, k, v per call.
inline at::Tensor as_rows(const at::Tensor& t) {
  const int64_t n = t.size(3);
  const bool pairs = t.element_size() == 2;
  bool ok = (t.stride(3) == 1 || n <= 1) && (!pairs || reinterpret_cast<uintptr_t>(t.data_ptr()) % 4 == 0);
  for (int d = 0; d < 3 && ok; ++d)
    ok = t.size(d) <= 1 || (t.stride(d) >= n && (!pairs || t.stride(d) % 2 == 0));
  return ok ? t : t.contiguous();
}

// The row strides of a tensor `as_rows` accepted; a size-1 dim gets the stride a contiguous
// tensor would have (its stride is arbitrary and never stepped over, but it is a GEMM's lda).
inline RowStrides row_strides(const at::Tensor& t) {
  const int64_t n = t.size(3), rows = t.size(2), heads = t.size(1);
  RowStrides s;
  s.r = rows > 1 ? t.stride(2) : heads > 1 ? t.stride(1) : n;  // one row: heads are the rows (decode)
  s.h = heads > 1 ? t.stride(1) : rows * s.r;
  s.b = t.size(0) > 1 ? t.stride(0) : heads * s.h;
  return s;
}

inline Params make_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, ATTNKIT_SPEC_PARAMS) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q, k, v must be 4-D");
  // The op entries pass q/k/v through as_rows first (here only its cheapest condition is checked).
  for (const at::Tensor* t : {&q, &k, &v})
    TORCH_CHECK(t->stride(3) == 1 || t->size(3) <= 1, "q, k, v: rows contiguous (as_rows)");
  Params p;
  p.B = q.size(0), p.H = q.size(1), p.Lb = q.size(2), p.D = q.size(3);
  p.G = k.size(1), p.Sb = k.size(2), p.E = v.size(3);
  p.qs = row_strides(q), p.ks = row_strides(k), p.vs = row_strides(v);
  TORCH_CHECK(p.G > 0 && p.H % p.G == 0, "H must be a multiple of G");
  p.R = p.H / p.G;
  p.i0 = i0, p.j0 = j0, p.L = L, p.S = S;
  p.causal = causal, p.wl = window_left, p.wr = window_right;
  const uint64_t seed64 = static_cast<uint64_t>(seed);
  p.threshold = dropout_threshold;
  p.base_key = mix32(static_cast<uint32_t>(seed64 & 0xFFFFFFFFu) ^ static_cast<uint32_t>((seed64 >> 32) & 0xFFFFFFFFu));
  p.scale = static_cast<float>(scale);
  p.softcap = static_cast<float>(softcap);
  p.dropout_p = static_cast<float>(dropout_p);
  if (kv_lengths) p.kv_len = kv_lengths->data_ptr<int64_t>();
  if (q_lengths) p.q_len = q_lengths->data_ptr<int64_t>();
  if (mask) p.mask = mask->data_ptr<bool>(), p.ms = broadcast_strides(*mask);
  if (float_mask) p.fmask = float_mask->data_ptr<float>(), p.fs = broadcast_strides(*float_mask);
  if (bias) p.bias = bias->data_ptr<float>(), p.bs = broadcast_strides(*bias);
  if (alibi_slopes) p.alibi = alibi_slopes->data_ptr<float>();
  return p;
}

// Visible absolute keys [lo, hi) of absolute query row ia in batch b from the structured masks
// (attnkit.masks.visible): aligned position pos = ia + offset, offset = 0 (top_left) or
// kv_len - q_len (bottom_right; S - L without lengths).
inline void row_range(const Params& p, int64_t b, int64_t ia, int64_t& lo, int64_t& hi) {
  const int64_t kvl = p.kv_len ? p.kv_len[b] : p.S;
  const int64_t ql = p.q_len ? p.q_len[b] : p.L;
  lo = 0, hi = p.S;
  if (p.q_len && ia >= ql) {
    hi = 0;
    return;
  }
  if (p.kv_len) hi = std::min(hi, kvl);
  if (p.causal != 0 || p.wl >= 0 || p.wr >= 0) {
    const int64_t pos = ia + (p.causal == 2 ? 0 : kvl - ql);
    if (p.causal != 0) hi = std::min(hi, pos + 1);
    if (p.wl >= 0) lo = std::max(lo, pos - p.wl);
    if (p.wr >= 0 && p.causal == 0) hi = std::min(hi, pos + p.wr + 1);
  }
  hi = std::max(hi, lo);
}

inline int64_t align_offset(const Params& p, int64_t b) {
  if (p.causal == 2) return 0;
  return (p.kv_len ? p.kv_len[b] : p.S) - (p.q_len ? p.q_len[b] : p.L);
}

}  // namespace attnkit_fused
