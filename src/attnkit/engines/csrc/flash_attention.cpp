// The fused CPU kernel of attnkit: FlashAttention-2 forward (Algorithm 1) and backward
// (Algorithm 2) over one query range x one key range, with attnkit's structure fused in the tile.
//
// Contract (the forward/backward of engines/_kernel.py, called through engines/_fused.py):
//   forward(q (B,H,Lb,D), k (B,G,Sb,D), v (B,G,Sb,E), ...) -> out (B,H,Lb,E) f32, lse, m, l (B,H,Lb) f32
//     queries are the absolute rows [i0, i0+Lb), keys the absolute columns [j0, j0+Sb) of an
//     (L, S) problem; masks/biases are indexed with absolute positions through broadcast strides.
//   backward(..., dout, m, l, delta, dq, dk, dv, d_float_mask?, d_bias?) accumulates in place; m and l
//     are the forward's row max and row sum (the final ones of these queries), lse = m + log l.
//
// Score of (b, h, i, j), in attnkit.scores order:
//   s = scale*q.k -> softcap c*tanh(s/c) -> + alibi -slope*|p-j| -> + float_mask + bias
//   -> hidden (causal / window / lengths / bool mask) = -inf.
// Softmax state and accumulation are float32 whatever the input type; half inputs use
// half-precision GEMMs (bf16 x bf16 -> f32, fp16 x fp16 -> f32) as SDPA's CPU kernel does.
//
// GEMMs: SDPA's kernel calls at::native::cpublas::gemm, which is not exported from libtorch_cpu;
// it forwards fp32 to MKL's sgemm_ and bf16/fp16 to MKL's cblas_gemm_{bf16bf16,f16f16}f32, which
// ARE exported, so we call those (weak symbols) and fall back to at::mm on torch builds without MKL.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/extension.h>  // pybind11: the hot path's direct entry from Python (see the end)
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <mutex>
#include <vector>

namespace attnkit_fused {
namespace {

// ----------------------------------------------------------------------------- block sizes
// Forward query blocks as SDPA (256 / 64 / 32 rows for Lb >= 768 / >= 192 / else), keys 512.
constexpr int64_t kFwdBlockQLarge = 256;
constexpr int64_t kFwdBlockQMid = 64;
constexpr int64_t kFwdBlockQSmall = 32;
constexpr int64_t kFwdBlockK = 512;
// Backward: parallel over (batch*kv-group, key block); small key blocks give B=1 H=1 work
// to every core, the query blocks are walked inside.
constexpr int64_t kBwdBlockQ = 64;
constexpr int64_t kBwdBlockK = 128;
// Forward problems below this many flops run on one thread (see forward_kernel).
constexpr double kSerialFlops = 1 << 18;
// MKL computes a product whose output has fewer than 16 columns or 4 rows with other kernels, which
// sum the dot products in another order (up to 1e-6 apart in the scores; tests/test_fused.py probes
// it). The backward rebuilds the forward's weights exp(s - m) / l from its own products of the same
// q and k, so both must be the same numbers: no score product is narrower than this unless the
// whole range is, a short last block joins the one before it, and the forward widens a narrow band.
constexpr int64_t kMinCols = 16, kMinRows = 4;

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

// ----------------------------------------------------------------------------- GEMM
extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
            const int*, const float*, const int*, const float*, float*, const int*) __attribute__((weak));
void cblas_gemm_bf16bf16f32(int, int, int, int, int, int, float, const uint16_t*, int, const uint16_t*, int,
                            float, float*, int) __attribute__((weak));
void cblas_gemm_f16f16f32(int, int, int, int, int, int, float, const uint16_t*, int, const uint16_t*, int,
                          float, float*, int) __attribute__((weak));
int MKL_Set_Num_Threads_Local(int) __attribute__((weak));  // the C interface (by value)
}
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

template <typename T>
at::Tensor as_matrix(const T* p, int64_t rows, int64_t cols, int64_t ld, bool trans) {
  // Row-major (rows x cols) with leading dim ld, or its transpose when `trans`.
  auto t = at::from_blob(const_cast<T*>(p), {trans ? cols : rows, trans ? rows : cols}, {ld, 1},
                         at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  return trans ? t.t() : t;
}

// Row-major C[M,N] = alpha * op(A)[M,K] . op(B)[K,N] + beta * C  (C float32).
template <typename T>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const T* A, int64_t lda, const T* B,
          int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if constexpr (std::is_same_v<T, float>) {
    if (sgemm_ != nullptr) {
      // Column-major BLAS computes C^T = op(B)^T op(A)^T: swap the operands, keep the flags.
      const int m = N, n = M, k = K, la = ldb, lb = lda, lc = ldc;
      const char fa = tb ? 'T' : 'N', fb = ta ? 'T' : 'N';
      sgemm_(&fa, &fb, &m, &n, &k, &alpha, B, &la, A, &lb, &beta, C, &lc);
      return;
    }
  } else if constexpr (std::is_same_v<T, at::BFloat16>) {
    if (cblas_gemm_bf16bf16f32 != nullptr) {
      cblas_gemm_bf16bf16f32(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, M, N, K, alpha,
                             reinterpret_cast<const uint16_t*>(A), lda, reinterpret_cast<const uint16_t*>(B), ldb,
                             beta, C, ldc);
      return;
    }
  } else {
    if (cblas_gemm_f16f16f32 != nullptr) {
      cblas_gemm_f16f16f32(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, M, N, K, alpha,
                           reinterpret_cast<const uint16_t*>(A), lda, reinterpret_cast<const uint16_t*>(B), ldb,
                           beta, C, ldc);
      return;
    }
  }
  // No MKL in this torch build: the same product through ATen (slower, same numbers in fp32).
  auto a = as_matrix(A, M, K, lda, ta).to(at::kFloat);
  auto b = as_matrix(B, K, N, ldb, tb).to(at::kFloat);
  auto c = as_matrix(C, M, N, ldc, false);
  auto prod = at::mm(a, b);
  if (beta == 0.f) {
    c.copy_(prod.mul_(alpha));
  } else {
    c.mul_(beta).add_(prod, alpha);
  }
}

// Tile GEMMs are small and already run one per thread: MKL must not fork its own OpenMP team
// per call (each fork/join waits at a barrier — seconds under load when a thread is descheduled).
struct SequentialBlas {
  int previous = 0;
  SequentialBlas() {
    if (MKL_Set_Num_Threads_Local != nullptr) previous = MKL_Set_Num_Threads_Local(1);
  }
  ~SequentialBlas() {
    if (MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(previous);
  }
};

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

struct Params {
  int64_t B, H, G, R, Lb, Sb, D, E;
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

Params make_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const std::optional<at::Tensor>& kv_lengths, const std::optional<at::Tensor>& q_lengths,
                   const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& float_mask,
                   const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& alibi,
                   at::IntArrayRef ints, at::ArrayRef<double> floats) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q, k, v must be 4-D");
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous(), "q, k, v must be contiguous");
  TORCH_CHECK(ints.size() == 9 && floats.size() == 3, "ints = [i0,j0,L,S,causal,wl,wr,seed,threshold]");
  Params p;
  p.B = q.size(0), p.H = q.size(1), p.Lb = q.size(2), p.D = q.size(3);
  p.G = k.size(1), p.Sb = k.size(2), p.E = v.size(3);
  TORCH_CHECK(p.G > 0 && p.H % p.G == 0, "H must be a multiple of G");
  p.R = p.H / p.G;
  p.i0 = ints[0], p.j0 = ints[1], p.L = ints[2], p.S = ints[3];
  p.causal = ints[4], p.wl = ints[5], p.wr = ints[6];
  const uint64_t seed = static_cast<uint64_t>(ints[7]);
  p.threshold = ints[8];
  p.base_key = mix32(static_cast<uint32_t>(seed & 0xFFFFFFFFu) ^ static_cast<uint32_t>((seed >> 32) & 0xFFFFFFFFu));
  p.scale = static_cast<float>(floats[0]);
  p.softcap = static_cast<float>(floats[1]);
  p.dropout_p = static_cast<float>(floats[2]);
  if (kv_lengths) p.kv_len = kv_lengths->data_ptr<int64_t>();
  if (q_lengths) p.q_len = q_lengths->data_ptr<int64_t>();
  if (mask) p.mask = mask->data_ptr<bool>(), p.ms = broadcast_strides(*mask);
  if (float_mask) p.fmask = float_mask->data_ptr<float>(), p.fs = broadcast_strides(*float_mask);
  if (bias) p.bias = bias->data_ptr<float>(), p.bs = broadcast_strides(*bias);
  if (alibi) p.alibi = alibi->data_ptr<float>();
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

inline Vec load_strided(const float* base, int64_t stride, int64_t count) {
  if (stride == 1) return Vec::loadu(base, count);
  if (stride == 0) return Vec(*base);
  __at_align__ float tmp[Vec::size()] = {};
  for (int64_t t = 0; t < count; ++t) tmp[t] = base[t * stride];
  return Vec::loadu(tmp);
}

// Turns one row of raw q.k products (tile columns [0, n) = absolute keys [ja, ja+n)) into the
// final scores in place; hidden keys become -inf. Returns the row max (-inf if nothing is
// visible). The scale is fused with the max (FA-2 Alg. 1 line 9 computes S and m together).
// `dcap`, if given, receives d(softcap)/ds = 1 - tanh^2 for the backward chain rule.
// Scores that are the scaled products alone (no softcap, ALiBi, masks or biases; scale > 0): their
// max is the raw products' max times the scale, so the forward leaves the products raw and applies
// the scale inside the exp pass (exp_sum_row) — one store per score less than scaling first.
inline bool plain_scores(const Params& p) {
  return p.softcap == 0.f && !p.alibi && !p.fmask && !p.bias && !p.mask && p.scale > 0.f;
}

inline float score_row(const Params& p, int64_t b, int64_t h, int64_t ia, int64_t ja, int64_t n, float* s,
                       float* dcap, bool raw = false) {
  int64_t lo, hi;
  row_range(p, b, ia, lo, hi);
  lo = std::clamp(lo - ja, int64_t(0), n);
  hi = std::clamp(hi - ja, int64_t(0), n);
  std::fill(s, s + lo, kNegInf);
  std::fill(s + hi, s + n, kNegInf);
  if (dcap) {  // hidden keys: zero derivative (never 0 * garbage in the chain rule)
    std::fill(dcap, dcap + lo, 0.f);
    std::fill(dcap + std::max(lo, hi), dcap + n, 0.f);
  }
  if (lo >= hi) return kNegInf;
  const int64_t VS = Vec::size();
  if (raw) {  // plain_scores(p): the max of the raw products, scaled (NaN-propagating like the rest)
    Vec rmax(kNegInf);
    int64_t j = lo;
    for (; j + VS <= hi; j += VS) rmax = at::vec::maximum(rmax, Vec::loadu(s + j));
    float m = at::vec::vec_reduce_all<float>([](Vec& a, Vec& c) { return at::vec::maximum(a, c); }, rmax);
    for (; j < hi; ++j) m = std::isnan(s[j]) ? s[j] : std::max(m, s[j]);
    return m * p.scale;
  }
  const Vec vscale(p.scale), vninf(kNegInf);
  Vec vmax(kNegInf);
  const bool cap = p.softcap != 0.f;
  const float slope = p.alibi ? p.alibi[b * p.H + h] : 0.f;
  const float pos = static_cast<float>(ia + align_offset(p, b));
  const float* frow = p.fmask ? p.fmask + b * p.fs.b + h * p.fs.h + ia * p.fs.i : nullptr;
  const float* brow = p.bias ? p.bias + b * p.bs.b + h * p.bs.h + ia * p.bs.i : nullptr;
  // Key positions of the current vector, stepped by VS (Vec::arange builds its lanes one by one:
  // per vector it made ALiBi cost 1.35x a plain forward). Exact for positions below 2^24.
  Vec cols = p.alibi ? Vec::arange(static_cast<float>(ja + lo), 1.f) : Vec(0.f);
  const Vec step(static_cast<float>(VS));
  for (int64_t j = lo; j < hi; j += VS) {
    const int64_t cnt = std::min(VS, hi - j);
    Vec x = Vec::loadu(s + j, cnt) * vscale;
    if (cap) {
      // tanh(y) = 1 - 2 / (e^{2y} + 1) with the fast exp: Sleef's tanh made softcap cost 1.4x a
      // plain forward; this form is within a few ulps of 1 in absolute terms (what the scores need).
      Vec e2 = (x * Vec(2.f / p.softcap)).exp_u20();
      Vec t = Vec(1.f) - Vec(2.f) / (e2 + Vec(1.f));
      if (dcap) (Vec(1.f) - t * t).store(dcap + j, cnt);
      x = t * Vec(p.softcap);
    }
    if (p.alibi) {
      x = x - Vec(slope) * (Vec(pos) - cols).abs();
      cols = cols + step;
    }
    if (frow) x = x + load_strided(frow + (ja + j) * p.fs.j, p.fs.j, cnt);
    if (brow) x = x + load_strided(brow + (ja + j) * p.bs.j, p.bs.j, cnt);
    x.store(s + j, cnt);
    vmax = at::vec::maximum(vmax, cnt == VS ? x : Vec::set(vninf, x, cnt));
  }
  if (p.mask) {
    const bool* mrow = p.mask + b * p.ms.b + h * p.ms.h + ia * p.ms.i;
    vmax = vninf;
    for (int64_t j = lo; j < hi; ++j) {
      if (!mrow[(ja + j) * p.ms.j]) s[j] = kNegInf;
    }
    for (int64_t j = lo; j < hi; j += VS) {
      const int64_t cnt = std::min(VS, hi - j);
      Vec x = Vec::loadu(s + j, cnt);
      vmax = at::vec::maximum(vmax, cnt == VS ? x : Vec::set(vninf, x, cnt));
    }
  }
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& c) { return at::vec::maximum(a, c); }, vmax);
}

// s <- exp(scale * s - m), returns the row sum (FA-2 Alg. 1 line 10: P~ and rowsum(P~) in one pass).
// scale = 1 for finished scores; the forward passes the softmax scale for raw products (plain_scores).
inline float exp_sum_row(float* s, int64_t n, float m, float scale = 1.f) {
  const int64_t VS = Vec::size();
  const Vec vm(m), vscale(scale);
  Vec vsum(0.f);
  int64_t j = 0;
  for (; j + VS <= n; j += VS) {
    Vec e = at::vec::fmsub(Vec::loadu(s + j), vscale, vm).exp_u20();
    e.store(s + j);
    vsum = vsum + e;
  }
  float sum = at::vec::vec_reduce_all<float>([](Vec& a, Vec& c) { return a + c; }, vsum);
  for (; j < n; ++j) {
    s[j] = std::exp(s[j] * scale - m);
    sum += s[j];
  }
  return sum;
}

// Row of probabilities times keep/(1-p) (keep = attnkit.dropout.keep_mask at (b, h, ia, ja+j)).
inline void dropout_row(const Params& p, int64_t b, int64_t h, int64_t ia, const uint32_t* ckeys, float* s,
                        int64_t n, float keep_scale) {
  const uint32_t bh = mix32(p.base_key ^ static_cast<uint32_t>(b * p.H + h));
  const uint32_t rk = mix32(bh ^ static_cast<uint32_t>(ia));
  const int64_t thr = p.threshold;
  for (int64_t j = 0; j < n; ++j) {
    const bool keep = static_cast<int64_t>(mix32(rk ^ ckeys[j])) >= thr;
    s[j] = keep ? s[j] * keep_scale : 0.f;
  }
}

// 64-byte aligned scratch (MKL's packing routines are markedly slower on unaligned tiles).
template <typename T>
at::Tensor scratch_of(int64_t n) {
  return at::empty({n}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}
inline int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

template <typename T>
inline void to_gemm_type(const float* src, T* dst, int64_t n) {
  if constexpr (!std::is_same_v<T, float>) at::vec::convert(src, dst, n);
}

// Work items are handed out one at a time from an atomic counter instead of one static chunk per
// thread: when another process takes a core, the slowed thread simply takes fewer items and the
// others do not wait for it at the end (the static split made a busy machine stall at the barrier).
class WorkQueue {
 public:
  // `serial`: run on the calling thread (a range of 1 makes at::parallel_for call inline, no OpenMP team).
  explicit WorkQueue(int64_t total, bool serial = false) : total_(total), serial_(serial) {}
  int64_t threads() const {
    return serial_ ? 1 : std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), total_));
  }
  bool next(int64_t& item) { return (item = next_.fetch_add(1, std::memory_order_relaxed)) < total_; }

 private:
  const int64_t total_;
  const bool serial_;
  std::atomic<int64_t> next_{0};
};

// ============================================================================= forward
// pv = sum over the keys row ia of head h can see of P[j] * V[j] (tile columns [0, n) = absolute
// keys [ja, ja+n)): the P V product of one row with hidden keys left out, not multiplied by 0.
template <typename T>
void visible_pv_row(const Params& p, int64_t b, int64_t h, int64_t ia, int64_t ja, int64_t n, const float* prob,
                    const T* v, float* pv) {
  int64_t lo, hi;
  row_range(p, b, ia, lo, hi);
  lo = std::clamp(lo - ja, int64_t(0), n);
  hi = std::clamp(hi - ja, int64_t(0), n);
  std::fill(pv, pv + p.E, 0.f);
  const bool* mrow = p.mask ? p.mask + b * p.ms.b + h * p.ms.h + ia * p.ms.i : nullptr;
  for (int64_t j = lo; j < hi; ++j) {
    if (mrow && !mrow[(ja + j) * p.ms.j]) continue;
    const float w = prob[j];
    const T* vj = v + j * p.E;
    for (int64_t e = 0; e < p.E; ++e) pv[e] += w * static_cast<float>(vj[e]);
  }
}

// Causal work is triangular: visiting blocks as 0, n-1, 1, n-2, ... gives each thread's
// contiguous chunk of items an even mix of light and heavy blocks.
inline int64_t zigzag(int64_t t, int64_t n) { return t % 2 == 0 ? t / 2 : n - 1 - t / 2; }

template <typename T>
void forward_kernel(const Params& p, const T* q, const T* k, const T* v, float* out, float* lse, float* m_out,
                    float* l_out) {
  int64_t bq = p.Lb >= 768 ? kFwdBlockQLarge : p.Lb >= 192 ? kFwdBlockQMid : kFwdBlockQSmall;
  if (p.wl >= 0 && (p.causal != 0 || p.wr >= 0)) {
    // A band of `span` keys per row: a block of bq rows computes ~span + bq keys per row, so keep
    // bq <= span / 4 (waste <= 1.25x); at w = 256 this is 64-row blocks instead of 256 (2x less work).
    const int64_t span = p.wl + (p.causal != 0 ? 0 : p.wr) + 1;
    while (bq > kFwdBlockQSmall && bq * 4 > span) bq /= 2;
  }
  const int64_t bk = kFwdBlockK;
  // GQA packing: the R query heads of kv head g are R*Lb contiguous rows of q (B,H,Lb,D), so a
  // group is one (R*Lb, D) matrix. Long queries: blocks of bq rows inside one head. Short queries
  // (decode): several heads per block, so one pass over K/V serves them all.
  const int64_t heads_per_block = p.Lb >= bq ? 1 : std::max<int64_t>(1, std::min(p.R, bq / std::max<int64_t>(p.Lb, 1)));
  const int64_t blocks_per_head = p.Lb >= bq ? block_count(p.Lb, bq, kMinRows) : 0;
  const int64_t group_blocks = p.Lb >= bq ? p.R * blocks_per_head : (p.R + heads_per_block - 1) / heads_per_block;
  const int64_t rows_max = p.Lb >= bq ? bq + kMinRows - 1 : heads_per_block * p.Lb;
  const int64_t cols_max = bk + kMinCols - 1;
  constexpr bool half = !std::is_same_v<T, float>;
  // Scratch per chunk of work (one chunk per thread): scores (rows x bk), half copy of P,
  // accumulator, m, l, column keys. Allocated inside the chunk, so nothing depends on thread ids.
  const int64_t per_thread =
      round16(rows_max * cols_max) + 2 * round16(rows_max * p.E) + 2 * round16(rows_max) + cols_max;
  const float keep_scale = p.dropout_p > 0.f ? 1.f / (1.f - p.dropout_p) : 1.f;
  const bool raw = plain_scores(p);

  // Parallel over (batch * kv group, query block); K/V are read in place, never repeated. A problem
  // of a few microseconds (an L=16 encoder call) runs on the calling thread: an OpenMP fork/join
  // costs about as much, and on a busy machine the join waits for a descheduled thread.
  const double flops = 2.0 * p.B * p.H * p.Lb * p.Sb * (p.D + p.E);
  WorkQueue work(p.B * p.G * group_blocks, flops < kSerialFlops);
  at::parallel_for(0, work.threads(), 1, [&](int64_t, int64_t) {
    SequentialBlas sequential_blas;
    at::Tensor scratch = scratch_of<float>(per_thread);
    at::Tensor scratch_half = scratch_of<T>(half ? rows_max * cols_max : 0);
    float* qk = scratch.data_ptr<float>();
    float* acc = qk + round16(rows_max * cols_max);
    float* mrow = acc + round16(rows_max * p.E);
    float* lrow = mrow + round16(rows_max);
    uint32_t* ckeys = reinterpret_cast<uint32_t*>(lrow + round16(rows_max));
    float* pv = reinterpret_cast<float*>(ckeys + cols_max);  // this tile's P V where some row hides a key of it
    T* p_half = half ? scratch_half.data_ptr<T>() : nullptr;
    for (int64_t item; work.next(item);) {
      const int64_t bg = item / group_blocks, t = zigzag(item % group_blocks, group_blocks);
      const int64_t b = bg / p.G, g = bg % p.G;
      int64_t pr0, rows;  // packed rows [pr0, pr0 + rows) of this group
      if (p.Lb >= bq) {
        const int64_t i = t % blocks_per_head, m = i * bq;
        pr0 = (t / blocks_per_head) * p.Lb + m, rows = block_len(p.Lb, bq, blocks_per_head, i);
      } else {
        pr0 = t * heads_per_block * p.Lb, rows = std::min(heads_per_block, p.R - t * heads_per_block) * p.Lb;
      }
      auto head_of = [&](int64_t r) { return g * p.R + (pr0 + r) / p.Lb; };
      auto query_of = [&](int64_t r) { return p.i0 + (pr0 + r) % p.Lb; };
      const int64_t row0 = bg * p.R * p.Lb + pr0;  // first row in (B*H*Lb) order
      const T* qp = q + row0 * p.D;
      const T* kp = k + bg * p.Sb * p.D;
      const T* vp = v + bg * p.Sb * p.E;
      // Alg. 1 line 4: m = -inf, l = 0, O = 0. Key blocks that no row of the tile sees are skipped.
      int64_t jlo = p.Sb, jhi = 0;
      int64_t inner_lo = 0, inner_hi = p.Sb;  // keys every row of the tile sees (structurally)
      for (int64_t r = 0; r < rows; ++r) {
        int64_t lo, hi;
        row_range(p, b, query_of(r), lo, hi);
        lo = std::clamp(lo - p.j0, int64_t(0), p.Sb);
        hi = std::clamp(hi - p.j0, int64_t(0), p.Sb);
        if (lo < hi) jlo = std::min(jlo, lo), jhi = std::max(jhi, hi);
        inner_lo = std::max(inner_lo, lo), inner_hi = std::min(inner_hi, hi);
        mrow[r] = kNegInf;
        lrow[r] = 0.f;
      }
      if (jlo >= jhi) std::fill(acc, acc + rows * p.E, 0.f);  // no key block: the rows stay empty
      if (jlo < jhi && jhi - jlo < kMinCols) {  // a narrow band: widen it with hidden keys (kMinCols)
        jhi = std::min(p.Sb, jlo + kMinCols);
        jlo = std::max<int64_t>(0, jhi - kMinCols);
      }
      // Key blocks start at the first key any row sees and stop at the last: a window of w keys
      // costs ~rows x (w + rows), and the causal diagonal block is trimmed to its visible part.
      const int64_t key_blocks = block_count(jhi - jlo, bk, kMinCols);
      for (int64_t kb = 0; kb < key_blocks; ++kb) {
        const int64_t n0 = jlo + kb * bk, cols = block_len(jhi - jlo, bk, key_blocks, kb);
        // The first block writes O (GEMM beta = 0) instead of zeroing it and rescaling zeros.
        const bool first = n0 == jlo;
        // Alg. 1 line 8: S = Q_i K_j^T (raw products; the scale is fused into the row pass).
        gemm<T>(false, true, rows, cols, p.D, 1.f, qp, p.D, kp + n0 * p.D, p.D, 0.f, qk, cols);
        if (p.dropout_p > 0.f)
          for (int64_t c = 0; c < cols; ++c) ckeys[c] = col_key(p.j0 + n0 + c);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t ia = query_of(r), h = head_of(r);
          float* s = qk + r * cols;
          // Alg. 1 line 9: m_new = max(m_old, rowmax(S)).
          const float smax = score_row(p, b, h, ia, p.j0 + n0, cols, s, nullptr, raw);
          // NaN (from a NaN query) must win over -inf so it stays in its row.
          const float mnew = std::isnan(smax) ? smax : std::max(mrow[r], smax);
          if (mnew == kNegInf) {
            std::fill(s, s + cols, 0.f);  // nothing visible yet: P = 0 (never exp(-inf + inf))
          } else {
            // Alg. 1 line 10: P = exp(S - m_new), l = e^{m_old - m_new} l + rowsum(P).
            const float sum = exp_sum_row(s, cols, mnew, raw ? p.scale : 1.f);
            const float alpha = std::exp(mrow[r] - mnew);
            lrow[r] = alpha * lrow[r] + sum;
            mrow[r] = mnew;
            if (alpha != 1.f && !first) {
              // O = diag(e^{m_old - m_new}) O before adding this block's P V.
              at::vec::map<float>([alpha](Vec x) { return x * Vec(alpha); }, acc + r * p.E, acc + r * p.E, p.E);
            }
            // Dropout after the sum: l keeps the undropped normalizer (out = sum p keep v / ((1-p) l)).
            if (p.dropout_p > 0.f) dropout_row(p, b, h, ia, ckeys, s, cols, keep_scale);
          }
          if constexpr (half) to_gemm_type(s, p_half + r * cols, cols);
        }
        // Alg. 1 line 10 (cont.): O += P V_j.
        const T* pg;
        if constexpr (half) {
          pg = p_half;
        } else {
          pg = qk;
        }
        // A key hidden from a row has P = 0 there, but 0 * NaN = NaN: garbage in V (a KV cache from
        // torch.empty) would leak through the GEMM. Where some row hides a key of this tile, the
        // product goes to `pv` first and rows that came out non-finite are redone over their visible
        // keys only (IEEE arithmetic for those, as in the reference). The cache is read once.
        const bool partial = p.mask != nullptr || n0 < inner_lo || n0 + cols > inner_hi;
        if (!partial) {
          gemm<T>(false, false, rows, p.E, cols, 1.f, pg, cols, vp + n0 * p.E, p.E, first ? 0.f : 1.f, acc, p.E);
        } else {
          gemm<T>(false, false, rows, p.E, cols, 1.f, pg, cols, vp + n0 * p.E, p.E, 0.f, pv, p.E);
          for (int64_t r = 0; r < rows; ++r) {
            float* pvr = pv + r * p.E;
            bool finite = true;
            for (int64_t e = 0; e < p.E && finite; ++e) finite = std::isfinite(pvr[e]);
            if (!finite) visible_pv_row(p, b, head_of(r), query_of(r), p.j0 + n0, cols, qk + r * cols,
                                        vp + n0 * p.E, pvr);
            if (first) {
              std::copy(pvr, pvr + p.E, acc + r * p.E);
            } else {
              at::vec::map2<float>([](Vec a, Vec c) { return a + c; }, acc + r * p.E, acc + r * p.E, pvr, p.E);
            }
          }
        }
      }
      // Alg. 1 lines 12-13: O = diag(l)^-1 O, L = m + log l; rows that saw nothing: O = 0, L = -inf.
      for (int64_t r = 0; r < rows; ++r) {
        float* o = out + (row0 + r) * p.E;
        const float l = lrow[r];
        const float inv = l == 0.f ? 0.f : 1.f / l;  // NaN rows stay NaN
        at::vec::map<float>([inv](Vec x) { return x * Vec(inv); }, o, acc + r * p.E, p.E);
        lse[row0 + r] = l == 0.f ? kNegInf : mrow[r] + std::log(l);
        // The row's m and l for the backward, which rebuilds exactly these weights, exp(s - m) * (1/l).
        if (m_out) m_out[row0 + r] = mrow[r], l_out[row0 + r] = l;
      }
    }
  });
}

// ============================================================================= backward
// Whether some row of the query block [m0, m0+rows) (l: this head's row sums) sees a key of the
// absolute range [ja, ja+cols) and saw anything at all: the backward skips the block otherwise.
inline bool block_sees_keys(const Params& p, int64_t b, const float* l, int64_t m0, int64_t rows, int64_t ja,
                            int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    int64_t lo, hi;
    row_range(p, b, p.i0 + m0 + r, lo, hi);
    if (lo < ja + cols && hi > ja && lo < hi && l[m0 + r] != 0.f) return true;
  }
  return false;
}

template <typename T>
void backward_kernel(const Params& p, const T* q, const T* k, const T* v, const T* dout, const float* m_in,
                     const float* l_in, const float* delta, float* dq, float* dk, float* dv, const at::Tensor* d_fmask, const at::Tensor* d_bias) {
  const int64_t bq = kBwdBlockQ, bk = kBwdBlockK;
  const int64_t bq_max = bq + kMinRows - 1, bk_max = bk + kMinCols - 1;  // with a joined remainder
  const int64_t k_blocks = block_count(p.Sb, bk, kMinCols), q_blocks = block_count(p.Lb, bq, kMinRows);
  constexpr bool half = !std::is_same_v<T, float>;
  // Scratch per chunk of work (one chunk per thread): P, dP (bq x bk), softcap derivative,
  // dK/dV accumulators, column keys.
  const int64_t per_thread = 3 * bq_max * bk_max + round16(bk_max * p.D) + round16(bk_max * p.E) + bk_max;
  // dQ gathers contributions from every key block, and float-mask / bias gradients sum over
  // broadcast dims that several work items share: each chunk accumulates privately and adds
  // its copy to the caller's tensors under a lock at the end.
  const int64_t dq_numel = p.B * p.H * p.Lb * p.D;
  const at::Tensor* dmask_out[2] = {d_fmask, d_bias};
  std::mutex reduce_lock;
  const float keep_scale = p.dropout_p > 0.f ? 1.f / (1.f - p.dropout_p) : 1.f;
  const bool raw = plain_scores(p);  // the forward's arithmetic for P, so both make the same weights

  WorkQueue work(p.B * p.G * k_blocks);
  at::parallel_for(0, work.threads(), 1, [&](int64_t, int64_t) {
    SequentialBlas sequential_blas;
    at::Tensor scratch = scratch_of<float>(per_thread);
    at::Tensor scratch_half = scratch_of<T>(half ? 2 * bq_max * bk_max : 0);
    at::Tensor dq_private = at::zeros({dq_numel}, at::kFloat);
    at::Tensor dmask_private[2];
    float* pbuf = scratch.data_ptr<float>();
    float* dpbuf = pbuf + bq_max * bk_max;
    float* dcap = dpbuf + bq_max * bk_max;
    float* dk_acc = dcap + bq_max * bk_max;
    float* dv_acc = dk_acc + round16(bk_max * p.D);
    uint32_t* ckeys = reinterpret_cast<uint32_t*>(dv_acc + round16(bk_max * p.E));
    T* p_half = half ? scratch_half.data_ptr<T>() : nullptr;
    T* ds_half = half ? p_half + bq_max * bk_max : nullptr;
    float* dq_t = dq_private.data_ptr<float>();
    float* dm_t[2] = {nullptr, nullptr};
    Strides4 dm_s[2];
    for (int w = 0; w < 2; ++w) {
      if (!dmask_out[w]) continue;
      dmask_private[w] = at::zeros_like(*dmask_out[w]);
      dm_t[w] = dmask_private[w].data_ptr<float>(), dm_s[w] = broadcast_strides(*dmask_out[w]);
    }
    for (int64_t item; work.next(item);) {
      const int64_t bg = item / k_blocks, kb = zigzag(item % k_blocks, k_blocks);
      const int64_t b = bg / p.G, g = bg % p.G;
      const int64_t n0 = kb * bk, cols = block_len(p.Sb, bk, k_blocks, kb);
      const int64_t ja = p.j0 + n0;
      const T* kp = k + (bg * p.Sb + n0) * p.D;
      const T* vp = v + (bg * p.Sb + n0) * p.E;
      // Alg. 2 line 6: dK_j = 0, dV_j = 0 (kept in f32 for this key block across the R heads).
      std::fill(dk_acc, dk_acc + cols * p.D, 0.f);
      std::fill(dv_acc, dv_acc + cols * p.E, 0.f);
      if (p.dropout_p > 0.f)
        for (int64_t c = 0; c < cols; ++c) ckeys[c] = col_key(ja + c);
      for (int64_t r_head = 0; r_head < p.R; ++r_head) {
        const int64_t h = g * p.R + r_head, bh = b * p.H + h;
        for (int64_t qb = 0; qb < q_blocks; ++qb) {
          const int64_t m0 = qb * bq, rows = block_len(p.Lb, bq, q_blocks, qb);
          // skip query blocks that see none of these keys
          if (!block_sees_keys(p, b, l_in + bh * p.Lb, m0, rows, ja, cols)) continue;
          const T* qp = q + (bh * p.Lb + m0) * p.D;
          const T* dop = dout + (bh * p.Lb + m0) * p.E;
          // Alg. 2 lines 10-11: S = Q K^T, P = exp(S - m) / l with the forward's final m and l (not
          // exp(S - L): a float L = m + log l rounds, and at a huge offset loses log l entirely).
          gemm<T>(false, true, rows, cols, p.D, 1.f, qp, p.D, kp, p.D, 0.f, pbuf, cols);
          // Alg. 2 line 14: dP = dO V^T.
          gemm<T>(false, true, rows, cols, p.E, 1.f, dop, p.E, vp, p.E, 0.f, dpbuf, cols);
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t ia = p.i0 + m0 + r;
            float* s = pbuf + r * cols;
            float* dpr = dpbuf + r * cols;
            float* dcr = p.softcap != 0.f ? dcap + r * cols : nullptr;
            const float mr = m_in[bh * p.Lb + m0 + r], lr = l_in[bh * p.Lb + m0 + r];
            score_row(p, b, h, ia, ja, cols, s, dcr, raw);
            if (lr == 0.f) {
              std::fill(s, s + cols, 0.f);  // the row saw nothing: it contributes nothing
              std::fill(dpr, dpr + cols, 0.f);
              continue;
            }
            // The forward's exp pass and its 1/l: the weights its output was made of, so the rows sum
            // to 1 and D = rowsum(dO o O) matches them to the output's own rounding.
            exp_sum_row(s, cols, mr, raw ? p.scale : 1.f);
            const Vec vinv(1.f / lr);
            at::vec::map<float>([vinv](Vec x) { return x * vinv; }, s, s, cols);
            // Alg. 2 line 16: dS = P o (dP - D_i), with dropout dP <- dP o keep / (1-p).
            const Vec vd(delta[bh * p.Lb + m0 + r]);
            if (p.dropout_p > 0.f) dropout_row(p, b, h, ia, ckeys, dpr, cols, keep_scale);
            at::vec::map2<float>([vd](Vec pp, Vec dd) { return pp * (dd - vd); }, dpr, s, dpr, cols);
            // dV uses the dropped probabilities: P o keep / (1-p).
            if (p.dropout_p > 0.f) dropout_row(p, b, h, ia, ckeys, s, cols, keep_scale);
            for (int w = 0; w < 2; ++w) {
              if (!dm_t[w]) continue;
              float* drow = dm_t[w] + b * dm_s[w].b + h * dm_s[w].h + ia * dm_s[w].i;
              for (int64_t c = 0; c < cols; ++c) drow[(ja + c) * dm_s[w].j] += dpr[c];
            }
            if (dcr) at::vec::map2<float>([](Vec a, Vec c) { return a * c; }, dpr, dpr, dcr, cols);
          }
          const float* pm = pbuf;
          const float* dsm = dpbuf;
          const T* pm_g;
          const T* dsm_g;
          if constexpr (half) {
            to_gemm_type(pbuf, p_half, rows * cols);
            to_gemm_type(dpbuf, ds_half, rows * cols);
            pm_g = p_half, dsm_g = ds_half;
          } else {
            pm_g = pm, dsm_g = dsm;
          }
          // Alg. 2 line 12: dV_j += P^T dO.
          gemm<T>(true, false, cols, p.E, rows, 1.f, pm_g, cols, dop, p.E, 1.f, dv_acc, p.E);
          // Alg. 2 line 17: dQ_i += scale dS K_j (f32 accumulator of this thread).
          gemm<T>(false, false, rows, p.D, cols, p.scale, dsm_g, cols, kp, p.D, 1.f, dq_t + (bh * p.Lb + m0) * p.D,
                  p.D);
          // Alg. 2 line 18: dK_j += scale dS^T Q.
          gemm<T>(true, false, cols, p.D, rows, p.scale, dsm_g, cols, qp, p.D, 1.f, dk_acc, p.D);
        }
      }
      // Alg. 2 line 20: write dK_j, dV_j (accumulated into the caller's tensors).
      float* dkp = dk + (bg * p.Sb + n0) * p.D;
      float* dvp = dv + (bg * p.Sb + n0) * p.E;
      at::vec::map2<float>([](Vec a, Vec c) { return a + c; }, dkp, dkp, dk_acc, cols * p.D);
      at::vec::map2<float>([](Vec a, Vec c) { return a + c; }, dvp, dvp, dv_acc, cols * p.E);
    }
    std::lock_guard<std::mutex> guard(reduce_lock);
    at::vec::map2<float>([](Vec a, Vec c) { return a + c; }, dq, dq, dq_t, dq_numel);
    for (int w = 0; w < 2; ++w)
      if (dmask_out[w]) dmask_out[w]->add_(dmask_private[w]);
  });
}

// ============================================================================= op entry points
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const std::optional<at::Tensor>& kv_lengths, const std::optional<at::Tensor>& q_lengths,
    const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& float_mask,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& alibi_slopes, at::IntArrayRef ints,
    at::ArrayRef<double> floats) {
  const Params p = make_params(q, k, v, kv_lengths, q_lengths, mask, float_mask, bias, alibi_slopes, ints, floats);
  auto f32 = q.options().dtype(at::kFloat);
  at::Tensor out = at::empty({p.B, p.H, p.Lb, p.E}, f32);
  at::Tensor lse = at::empty({p.B, p.H, p.Lb}, f32), m = at::empty_like(lse), l = at::empty_like(lse);
  if (out.numel() == 0 && lse.numel() == 0) return {out, lse, m, l};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "attnkit_fused_forward", [&] {
    if constexpr (std::is_same_v<scalar_t, double>) {
      TORCH_CHECK(false, "float64 runs on the PyTorch tile path");
    } else {
      forward_kernel<scalar_t>(p, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                               out.data_ptr<float>(), lse.data_ptr<float>(), m.data_ptr<float>(), l.data_ptr<float>());
    }
  });
  return {out, lse, m, l};
}

void backward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& dout,
              const at::Tensor& m, const at::Tensor& l, const at::Tensor& delta, const at::Tensor& dq,
              const at::Tensor& dk, const at::Tensor& dv,
              const std::optional<at::Tensor>& d_float_mask, const std::optional<at::Tensor>& d_bias,
              const std::optional<at::Tensor>& kv_lengths, const std::optional<at::Tensor>& q_lengths,
              const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& float_mask,
              const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& alibi_slopes,
              at::IntArrayRef ints, at::ArrayRef<double> floats) {
  const Params p = make_params(q, k, v, kv_lengths, q_lengths, mask, float_mask, bias, alibi_slopes, ints, floats);
  TORCH_CHECK(dout.scalar_type() == q.scalar_type() && dout.is_contiguous(), "dout: contiguous, q's dtype");
  for (const at::Tensor* t : {&m, &l, &delta, &dq, &dk, &dv})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous(), "m/l/delta/dq/dk/dv: contiguous float32");
  const at::Tensor* dfm = d_float_mask ? &*d_float_mask : nullptr;
  const at::Tensor* dbi = d_bias ? &*d_bias : nullptr;
  for (const at::Tensor* t : {dfm, dbi})
    TORCH_CHECK(!t || (t->scalar_type() == at::kFloat && t->dim() == 4), "d_float_mask/d_bias: 4-D float32");
  if (p.Lb == 0 || p.Sb == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "attnkit_fused_backward", [&] {
    if constexpr (std::is_same_v<scalar_t, double>) {
      TORCH_CHECK(false, "float64 runs on the PyTorch tile path");
    } else {
      backward_kernel<scalar_t>(p, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                                dout.data_ptr<scalar_t>(), m.data_ptr<float>(), l.data_ptr<float>(), delta.data_ptr<float>(),
                                dq.data_ptr<float>(), dk.data_ptr<float>(), dv.data_ptr<float>(), dfm, dbi);
    }
  });
}

// ============================================================================= the hot path
// attnkit.attention's common call in one op: arguments checked here, the forward kernel over the
// whole problem, the result in the input dtype. Every check that fails raises; the Python side then
// runs the general path, which either computes the call (a case the hot path leaves to it) or
// raises the AttnkitError with expected/got/fix — so both paths give the same errors.
at::Tensor lengths_arg(const std::optional<at::Tensor>& t, int64_t B, int64_t n, const char* name) {
  if (!t) return at::Tensor();
  TORCH_CHECK(t->device().is_cpu() && t->dim() == 1 && t->size(0) == B, "hot path: ", name, " shape/device");
  TORCH_CHECK(at::isIntegralType(t->scalar_type(), /*includeBool=*/false), "hot path: ", name, " dtype");
  at::Tensor c = t->to(at::kLong).contiguous();
  const int64_t* d = c.data_ptr<int64_t>();
  for (int64_t i = 0; i < B; ++i) TORCH_CHECK(d[i] >= 0 && d[i] <= n, "hot path: ", name, " out of range");
  return c;
}

std::tuple<at::Tensor, at::Tensor> attention(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                             const std::optional<at::Tensor>& mask_in,
                                             const std::optional<at::Tensor>& kv_lengths,
                                             const std::optional<at::Tensor>& q_lengths,
                                             const std::optional<at::Tensor>& alibi_slopes, int64_t causal,
                                             int64_t window_left, int64_t window_right, std::optional<double> scale,
                                             double softcap, bool half_gemm) {
  const auto dt = q_in.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, "hot path: dtype");
  for (const at::Tensor* t : {&q_in, &k_in, &v_in}) {
    TORCH_CHECK(t->dim() == 4 && t->scalar_type() == dt && t->device().is_cpu() && t->layout() == at::kStrided,
                "hot path: q/k/v must be 4-D strided CPU tensors of one floating dtype");
  }
  const int64_t B = q_in.size(0), H = q_in.size(1), L = q_in.size(2), D = q_in.size(3);
  const int64_t G = k_in.size(1), S = k_in.size(2);
  TORCH_CHECK(k_in.size(0) == B && k_in.size(3) == D && G > 0 && H % G == 0, "hot path: key shape");
  TORCH_CHECK(v_in.size(0) == B && v_in.size(1) == G && v_in.size(2) == S, "hot path: value shape");
  TORCH_CHECK(D > 0 && v_in.size(3) > 0, "hot path: empty head dims");
  TORCH_CHECK(causal >= 0 && causal <= 2 && window_left >= -1 && window_right >= -1, "hot path: causal/window");
  TORCH_CHECK(std::isfinite(softcap) && softcap >= 0.0, "hot path: softcap");
  const double sc = scale ? *scale : (D > 0 ? 1.0 / std::sqrt(static_cast<double>(D)) : 1.0);
  TORCH_CHECK(std::isfinite(sc), "hot path: scale");

  std::optional<at::Tensor> bmask, fmask, alibi;
  if (mask_in) {
    const at::Tensor& m = *mask_in;
    TORCH_CHECK(m.device().is_cpu() && m.dim() <= 4, "hot path: mask device/dims");
    TORCH_CHECK(m.scalar_type() == at::kBool || at::isFloatingType(m.scalar_type()), "hot path: mask dtype");
    const int64_t full[4] = {B, H, L, S};
    std::vector<int64_t> shape(4 - m.dim(), 1);
    for (int64_t d = 0; d < m.dim(); ++d) shape.push_back(m.size(d));
    for (int d = 0; d < 4; ++d) TORCH_CHECK(shape[d] == 1 || shape[d] == full[d], "hot path: mask shape");
    at::Tensor m4 = m.reshape(shape);
    if (m.scalar_type() == at::kBool) {
      bmask = m4;
    } else {
      fmask = m4.to(at::kFloat);  // float32 whatever the inputs: half would round 2049 to 2048
    }
  }
  if (alibi_slopes) {
    const at::Tensor& a = *alibi_slopes;
    TORCH_CHECK(a.device().is_cpu() && at::isFloatingType(a.scalar_type()), "hot path: alibi dtype/device");
    TORCH_CHECK((a.dim() == 1 && a.size(0) == H) || (a.dim() == 2 && a.size(0) == B && a.size(1) == H),
                "hot path: alibi shape");
    alibi = a.to(at::kFloat).expand({B, H}).contiguous();
  }
  const at::Tensor kvl = lengths_arg(kv_lengths, B, S, "kv_lengths");
  const at::Tensor ql = lengths_arg(q_lengths, B, L, "q_lengths");
  const bool widen = dt != at::kFloat && !half_gemm;
  const at::Tensor q = widen ? q_in.to(at::kFloat).contiguous() : q_in.contiguous();
  const at::Tensor k = widen ? k_in.to(at::kFloat).contiguous() : k_in.contiguous();
  const at::Tensor v = widen ? v_in.to(at::kFloat).contiguous() : v_in.contiguous();
  const int64_t ints[9] = {0, 0, L, S, causal, window_left, window_right, 0, 0};
  const double floats[3] = {sc, softcap, 0.0};
  const Params p = make_params(q, k, v, kvl.defined() ? std::optional<at::Tensor>(kvl) : std::nullopt,
                               ql.defined() ? std::optional<at::Tensor>(ql) : std::nullopt, bmask, fmask,
                               std::nullopt, alibi, ints, floats);
  const int64_t E = v.size(3);
  at::Tensor out = at::empty({B, H, L, E}, q.options().dtype(at::kFloat));
  at::Tensor lse = at::empty({B, H, L}, q.options().dtype(at::kFloat));
  if (out.numel() != 0 || lse.numel() != 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "attnkit_fused_attention", [&] {
      if constexpr (!std::is_same_v<scalar_t, double>) {
        forward_kernel<scalar_t>(p, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                                 out.data_ptr<float>(), lse.data_ptr<float>(), nullptr, nullptr);
      }
    });
  }
  return {dt == at::kFloat ? out : out.to(dt), lse};
}

}  // namespace
}  // namespace attnkit_fused

// ints = [i0, j0, L, S, causal (0 none / 1 bottom_right / 2 top_left), window_left, window_right
//         (-1 = unbounded), dropout seed, dropout threshold]; floats = [scale, softcap (0 = none), dropout_p].
TORCH_LIBRARY(attnkit_fused, m) {
  m.def(
      "forward(Tensor q, Tensor k, Tensor v, Tensor? kv_lengths, Tensor? q_lengths, Tensor? mask, "
      "Tensor? float_mask, Tensor? bias, Tensor? alibi_slopes, int[] ints, float[] floats) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "backward(Tensor q, Tensor k, Tensor v, Tensor dout, Tensor m, Tensor l, Tensor delta, Tensor(a!) dq, "
      "Tensor(b!) dk, Tensor(c!) dv, Tensor(d!)? d_float_mask, Tensor(e!)? d_bias, Tensor? kv_lengths, "
      "Tensor? q_lengths, Tensor? mask, Tensor? float_mask, Tensor? bias, Tensor? alibi_slopes, int[] ints, "
      "float[] floats) -> ()");
  // The hot path of attnkit.attention (no autograd, no dropout): checks its arguments, returns
  // out (B,H,L,E) in q's dtype and lse (B,H,L) float32.
  m.def(
      "attention(Tensor q, Tensor k, Tensor v, Tensor? mask, Tensor? kv_lengths, Tensor? q_lengths, "
      "Tensor? alibi_slopes, int causal, int window_left, int window_right, float? scale, float softcap, "
      "bool half_gemm) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(attnkit_fused, CPU, m) {
  m.impl("attention", &attnkit_fused::attention);
  m.impl("forward", &attnkit_fused::forward);
  m.impl("backward", &attnkit_fused::backward);
}

// The hot path's entry from Python without the dispatcher (its argument parsing against the schema
// costs ~3 µs, as much as an L=16 call's whole kernel): the same function as the `attention` op,
// which stays the entry for torch.compile, meta tensors and the dispatcher. The GIL is released
// while it computes.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("attention", &attnkit_fused::attention, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "attnkit_fused::attention without the dispatcher (see the op's schema)");
}
