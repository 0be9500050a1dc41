// The online-softmax row step: one row of a score tile made final (scale, softcap, ALiBi, float
// mask, bias, hidden keys = -inf) with its max, the exp-and-sum pass, and dropout on a row.
// Score of (b, h, i, j), in attnkit.scores order:
//   s = scale*q.k -> softcap c*tanh(s/c) -> + alibi -slope*|p-j| -> + float_mask + bias
//   -> hidden (causal / window / lengths / bool mask) = -inf.
// Softmax state and accumulation are float32 whatever the input type.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <type_traits>
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#include "params.h"

namespace attnkit_fused {

inline Vec load_strided(const float* base, int64_t stride, int64_t count) {
  if (stride == 1) return Vec::loadu(base, count);
  if (stride == 0) return Vec(*base);
  __at_align__ float tmp[Vec::size()] = {};
  for (int64_t t = 0; t < count; ++t) tmp[t] = base[t * stride];
  return Vec::loadu(tmp);
}

// x where the boolean mask row keeps the key (m[t * stride], lanes t < cnt), -inf elsewhere: the
// mask applied in the score pass itself (a scalar pass and a second max pass cost a training call
// with a padding mask 1.25x SDPA's on a Xeon).
// A full vector of a contiguous mask row is one byte load and a blend (the portable loop below
// compiles to a compare and branch per lane, then a store-forwarding stall).
inline Vec keep_visible(Vec x, const bool* m, int64_t stride, int64_t cnt) {
#if defined(CPU_CAPABILITY_AVX512)
  if (stride == 1 && cnt == 16) {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(m));
    return Vec(_mm512_mask_blend_ps(_mm_test_epi8_mask(bytes, bytes), _mm512_set1_ps(kNegInf), x));
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if (stride == 1 && cnt == 8) {
    const __m256i lanes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(m)));
    const __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(lanes, _mm256_setzero_si256()));
    return Vec(_mm256_blendv_ps(_mm256_set1_ps(kNegInf), x, keep));
  }
#endif
  __at_align__ float keep[Vec::size()];
  for (int64_t t = 0; t < Vec::size(); ++t) keep[t] = t < cnt && m[t * stride] ? 1.f : 0.f;
  return Vec::blendv(Vec(kNegInf), x, Vec::loadu(keep) != Vec(0.f));
}

// The visible keys [lo, hi) of row ia among tile columns [0, n) (absolute keys [ja, ja+n)).
inline void visible_columns(const Params& p, int64_t b, int64_t ia, int64_t ja, int64_t n, int64_t& lo, int64_t& hi) {
  row_range(p, b, ia, lo, hi);
  lo = std::clamp(lo - ja, int64_t(0), n);
  hi = std::clamp(hi - ja, int64_t(0), n);
}

// scale * q.k - slope * |query position - key position|, rounded once (as the plain scores' exp
// argument is): a large product keeps its precision. Key positions `cols`, exact below 2^24.
inline Vec alibi_score(const Vec& products, const Vec& scale, const Vec& slope, const Vec& pos, const Vec& cols) {
  return at::vec::fmsub(products, scale, slope * (pos - cols).abs());
}

// tanh(y/c) of scaled scores y (two_over_c = 2/c) as 1 - 2 / (e^{2y/c} + 1) with the fast exp:
// Sleef's tanh made softcap cost 1.4x a plain forward; this form is within a few ulps of 1 in
// absolute terms (what the scores need).
inline Vec softcap_tanh(const Vec& y, const Vec& two_over_c) {
  const Vec t = Vec(1.f) - Vec(2.f) / ((y * two_over_c).exp_u20() + Vec(1.f));
  return Vec::blendv(t, y, y.isnan());  // exp_u20 makes NaN a large number: a NaN product stays NaN
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
  visible_columns(p, b, ia, ja, n, lo, hi);
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
  const bool* mrow = p.mask ? p.mask + b * p.ms.b + h * p.ms.h + ia * p.ms.i : nullptr;
  // Key positions of the current vector, stepped by VS (Vec::arange builds its lanes one by one:
  // per vector it made ALiBi cost 1.35x a plain forward). Exact for positions below 2^24.
  Vec cols = p.alibi ? Vec::arange(static_cast<float>(ja + lo), 1.f) : Vec(0.f);
  const Vec step(static_cast<float>(VS));
  for (int64_t j = lo; j < hi; j += VS) {
    const int64_t cnt = std::min(VS, hi - j);
    Vec x = Vec::loadu(s + j, cnt);
    if (cap) {
      const Vec t = softcap_tanh(x * vscale, Vec(2.f / p.softcap));
      if (dcap) (Vec(1.f) - t * t).store(dcap + j, cnt);
      x = t * Vec(p.softcap);
      if (p.alibi) x = x - Vec(slope) * (Vec(pos) - cols).abs();
    } else if (p.alibi) {
      x = alibi_score(x, vscale, Vec(slope), Vec(pos), cols);
    } else {
      x = x * vscale;
    }
    if (p.alibi) cols = cols + step;
    if (frow) x = x + load_strided(frow + (ja + j) * p.fs.j, p.fs.j, cnt);
    if (brow) x = x + load_strided(brow + (ja + j) * p.bs.j, p.bs.j, cnt);
    if (mrow) x = keep_visible(x, mrow + (ja + j) * p.ms.j, p.ms.j, cnt);
    x.store(s + j, cnt);
    vmax = at::vec::maximum(vmax, cnt == VS ? x : Vec::set(vninf, x, cnt));
  }
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& c) { return at::vec::maximum(a, c); }, vmax);
}

// s <- exp(scale * s - m) * inv, returns the row sum before `inv` (FA-2 Alg. 1 line 10: P~ and
// rowsum(P~) in one pass). scale = 1 for finished scores; the forward passes the softmax scale for
// raw products (plain_scores); the backward passes inv = 1/l to rebuild the forward's weights. Every
// entry, the row's last partial vector too, takes the same fused multiply-subtract and vector exp,
// so both passes make the same P bit for bit wherever their tiles cut the row.
inline float exp_sum_row(float* s, int64_t n, float m, float scale = 1.f, float inv = 1.f) {
  const int64_t VS = Vec::size();
  const Vec vm(m), vscale(scale), vinv(inv), zero(0.f);
  Vec vsum(0.f);
  for (int64_t j = 0; j < n; j += VS) {
    const int64_t cnt = std::min(VS, n - j);
    Vec e = at::vec::fmsub(Vec::loadu(s + j, cnt), vscale, vm).exp_u20();
    if (cnt < VS) e = Vec::set(zero, e, cnt);  // lanes past the row add nothing
    vsum = vsum + e;
    (inv == 1.f ? e : e * vinv).store(s + j, cnt);
  }
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& c) { return a + c; }, vsum);
}

// Whether some lane of x exceeds t or is NaN (an unordered "not <=" compare).
inline bool any_above_or_nan(const Vec& x, const Vec& t) {
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_cmp_ps_mask(x, t, _CMP_NLE_UQ) != 0;
#elif defined(CPU_CAPABILITY_AVX2)
  return _mm256_movemask_ps(_mm256_cmp_ps(x, t, _CMP_NLE_UQ)) != 0;
#else
  __at_align__ float a[Vec::size()], c[Vec::size()];
  x.store(a);
  t.store(c);
  for (int64_t i = 0; i < Vec::size(); ++i)
    if (!(a[i] <= c[i])) return true;
  return false;
#endif
}

// Lazy rescaling (FlashAttention-4's, used here to save a pass): a row whose running max m is finite
// takes a later key block in ONE pass, P = exp(score - m), instead of a score-and-max pass
// and then the exp pass. While no score exceeds m + kLazySlack, m stays (weights up to e^kLazySlack:
// O and l cannot overflow, and exp's argument stays small, where exp_u20 is most accurate). From the
// first vector with a score above that, or a NaN (exp_u20 would make it a large finite weight), the
// rest of the row takes the two passes against its own max (NaN: the row's l and output are NaN, as
// the two passes make them) and the weights already made are rescaled to it.
// `score(products, j, m)`: exp's arguments (score - m) for the vector of raw products at column j,
// rounded once where it can — scaled products or ALiBi's scores. Softcap, masks and biases keep the
// two passes: written generically, one pass over every transform spilled its registers and ran
// slower than two; softcap's own one pass (two exps per score) ran no faster (178-182 vs 176-180 ms
// at L = 4096: its tanh, not the pass over memory, is its cost).
constexpr float kLazySlack = 5.5451774f;  // 8 ln 2: weights up to 2^8 (FA-4's threshold)
struct LazyStep {
  float sum, m, alpha;  // the block's row sum (relative to m), the row's new max, e^{m_old - m}
};

struct ScaledScores {  // plain_scores(p)
  Vec scale;
  Vec operator()(const Vec& x, int64_t, const Vec& m) const { return at::vec::fmsub(x, scale, m); }
};

struct AlibiScores {  // ALiBi alone (alibi_scores(p)), as score_row computes it
  Vec scale, slope, pos, lanes;
  float ja;  // the tile's first key
  AlibiScores(const Params& p, int64_t b, int64_t h, int64_t ia, int64_t ja_)
      : scale(p.scale), slope(p.alibi[b * p.H + h]), pos(static_cast<float>(ia + align_offset(p, b))),
        lanes(Vec::arange(0.f, 1.f)), ja(static_cast<float>(ja_)) {}
  Vec operator()(const Vec& x, int64_t j, const Vec& m) const {
    return alibi_score(x, scale, slope, pos, Vec(ja + static_cast<float>(j)) + lanes) - m;
  }
};
inline bool alibi_scores(const Params& p) {
  return p.alibi && p.softcap == 0.f && !p.fmask && !p.bias && !p.mask;
}

template <typename Score>
inline LazyStep lazy_exp_sum_row(const Params& p, int64_t b, int64_t h, int64_t ia, int64_t ja, int64_t n, float* s,
                                 float m, const Score& score) {
  constexpr bool raw = std::is_same_v<Score, ScaledScores>;  // plain_scores: s stays unscaled in the two passes
  int64_t lo, hi;
  visible_columns(p, b, ia, ja, n, lo, hi);
  std::fill(s, s + lo, 0.f);  // hidden keys: P = 0
  std::fill(s + std::max(lo, hi), s + n, 0.f);
  if (lo >= hi) return {0.f, m, 1.f};
  const int64_t VS = Vec::size();
  const Vec vm(m), slack(kLazySlack), zero(0.f), vninf(kNegInf);
  Vec vsum(0.f);
  auto weigh = [&](int64_t j, int64_t cnt) {  // false: a score of this vector jumped
    const Vec d = cnt == VS ? score(Vec::loadu(s + j), j, vm) : Vec::set(vninf, score(Vec::loadu(s + j, cnt), j, vm), cnt);
    if (any_above_or_nan(d, slack)) return false;
    const Vec e = d.exp_u20();
    vsum = vsum + (cnt == VS ? e : Vec::set(zero, e, cnt));
    e.store(s + j, cnt);
    return true;
  };
  int64_t jump = lo;  // the rest of the row, [jump, hi), takes the two passes (score_row, exp_sum_row)
  while (jump + VS <= hi && weigh(jump, VS)) jump += VS;
  if (jump + VS > hi && jump < hi && weigh(jump, hi - jump)) jump = hi;
  const float sum = at::vec::vec_reduce_all<float>([](Vec& a, Vec& c) { return a + c; }, vsum);
  if (jump == hi) return {sum, m, 1.f};
  const float mnew = score_row(p, b, h, ia, ja + jump, hi - jump, s + jump, nullptr, raw);  // > m + slack, or NaN
  const float alpha = std::exp(m - mnew);
  const Vec va(alpha);
  at::vec::map<float>([va](Vec x) { return x * va; }, s + lo, s + lo, jump - lo);
  return {alpha * sum + exp_sum_row(s + jump, hi - jump, mnew, raw ? p.scale : 1.f), mnew, alpha};
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

}  // namespace attnkit_fused
