// The two products of a few query rows (a decode step: one row per query head of a GQA group) with
// K and V read as stored, float32 or half: S = Q K^T and O (+)= P V, float32 accumulation.
//
// Why not the BLAS: at a handful of rows a tile's GEMM is a matrix-vector product, and a call per
// tile and head cost about as much as the product over a short cache (fp32 S=16: ~0.5 us of a
// ~1 us head); half inputs were first widened into scratch, 32 KiB at a time, a BLAS call per
// chunk (bf16 decode ran at half the speed of fp32 over the same cache). Here every key or value
// row is read once, converted in registers and used by all rows of the block. Rows 16 keys (8
// values) ahead are prefetched: a long cache comes from memory, and without it MKL's products,
// which prefetch, read a GQA cache 10-15% faster (RESULTS.md, "Decode rows in registers").
//
// The sums run in another order than MKL's, so a forward whose weights a backward rebuilds
// (params.h kMinRows) keeps the BLAS products: these serve the hot path's forward only.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/Exception.h>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace attnkit_fused {

using FloatVec = at::vec::Vectorized<float>;

template <typename T>
inline FloatVec load_as_float(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return FloatVec::loadu(p);
  } else {
    FloatVec out;
    at::vec::load_to_float<T>(p, out);
    return out;
  }
}

// The first n < FloatVec::size() elements, zeros behind.
template <typename T>
inline FloatVec load_as_float(const T* p, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    return FloatVec::loadu(p, n);
  } else {
    float buf[FloatVec::size()] = {};
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<float>(p[i]);
    return FloatVec::loadu(buf);
  }
}

// Calls f(std::integral_constant<int, RB>, r) over rows [0, rows) in blocks of RB = 4, 2, 1 rows
// (the block size is a template argument: its accumulators live in registers).
template <typename F>
inline void for_row_blocks(int64_t rows, F&& f) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) f(std::integral_constant<int, 4>{}, r);
  for (; r + 2 <= rows; r += 2) f(std::integral_constant<int, 2>{}, r);
  if (r < rows) f(std::integral_constant<int, 1>{}, r);
}

// S[r][j] = sum_d Q[r][d] K[j][d] for RB rows and KB = 4 keys at a time: each chunk of a key row
// is loaded (and converted) once for the RB rows, 4 * RB independent FMA chains.
template <typename T, int RB>
void scores_rows(int64_t cols, int64_t D, const float* q, int64_t ldq, const T* k, int64_t ldk, float* s,
                 int64_t lds) {
  constexpr int64_t W = FloatVec::size();
  constexpr int KB = 4;
  const int64_t full = D / W * W, tail = D - full;
  auto add = [](FloatVec& a, FloatVec& b) { return a + b; };
  for (int64_t j = 0; j < cols; j += KB) {
    const int64_t nk = std::min<int64_t>(KB, cols - j);
    const T* kj = k + j * ldk;
    if (j + 4 * KB < cols)  // prefetch never faults: rows past the tile's end are harmless
      for (int c = 0; c < KB; ++c)
        for (int64_t d = 0; d < D; d += 64 / static_cast<int64_t>(sizeof(T))) __builtin_prefetch(kj + (4 * KB + c) * ldk + d);
    FloatVec acc[RB][KB];
    for (int r = 0; r < RB; ++r)
      for (int c = 0; c < KB; ++c) acc[r][c] = FloatVec(0.f);
    auto step = [&](int64_t d, int64_t n) {  // n < W: the tail, zeros behind
      FloatVec x[KB];
      for (int c = 0; c < KB; ++c)
        x[c] = c < nk ? (n == W ? load_as_float(kj + c * ldk + d) : load_as_float(kj + c * ldk + d, n)) : FloatVec(0.f);
      for (int r = 0; r < RB; ++r) {
        const FloatVec qv = n == W ? FloatVec::loadu(q + r * ldq + d) : FloatVec::loadu(q + r * ldq + d, n);
        for (int c = 0; c < KB; ++c) acc[r][c] = at::vec::fmadd(qv, x[c], acc[r][c]);
      }
    };
    for (int64_t d = 0; d < full; d += W) step(d, W);
    if (tail) step(full, tail);
    for (int r = 0; r < RB; ++r)
      for (int64_t c = 0; c < nk; ++c) s[r * lds + j + c] = at::vec::vec_reduce_all<float>(add, acc[r][c]);
  }
}

// bf16 inputs on a CPU with AVX512-BF16 dot products (build.py: -DATTNKIT_NATIVE_BF16): q·k from
// bf16 pairs with float32 sums (each product of two bf16 is exact in float32), q read unwidened and
// K unconverted: MKL's bf16 GEMV beat the converting loop at one row per head, this does not lose.
#if defined(CPU_CAPABILITY_AVX512) && defined(ATTNKIT_NATIVE_BF16) && ATTNKIT_NATIVE_BF16
#define ATTNKIT_DOT_BF16 1
template <int RB>
void scores_rows_bf16(int64_t cols, int64_t D, const at::BFloat16* q, int64_t ldq, const at::BFloat16* k,
                      int64_t ldk, float* s, int64_t lds) {
  constexpr int KB = 4;
  const int64_t full = D / 32 * 32, tail = D - full;
  const __mmask32 tail_mask = static_cast<__mmask32>((1ull << tail) - 1);
  for (int64_t j = 0; j < cols; j += KB) {
    const int64_t nk = std::min<int64_t>(KB, cols - j);
    const at::BFloat16* kj = k + j * ldk;
    if (j + 4 * KB < cols)
      for (int c = 0; c < KB; ++c)
        for (int64_t d = 0; d < D; d += 32) __builtin_prefetch(kj + (4 * KB + c) * ldk + d);
    __m512 acc[RB][KB];
    for (int r = 0; r < RB; ++r)
      for (int c = 0; c < KB; ++c) acc[r][c] = _mm512_setzero_ps();
    auto step = [&](int64_t d, __mmask32 m) {
      __m512i x[KB];
      for (int c = 0; c < KB; ++c)
        x[c] = c < nk ? _mm512_maskz_loadu_epi16(m, kj + c * ldk + d) : _mm512_setzero_si512();
      for (int r = 0; r < RB; ++r) {
        const __m512i qv = _mm512_maskz_loadu_epi16(m, q + r * ldq + d);
        for (int c = 0; c < KB; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], (__m512bh)qv, (__m512bh)x[c]);
      }
    };
    for (int64_t d = 0; d < full; d += 32) step(d, ~__mmask32(0));
    if (tail) step(full, tail_mask);
    for (int r = 0; r < RB; ++r)
      for (int64_t c = 0; c < nk; ++c) s[r * lds + j + c] = _mm512_reduce_add_ps(acc[r][c]);
  }
}
#else
#define ATTNKIT_DOT_BF16 0
#endif

// Whether scores_few_rows_native takes T's q rows as stored (no float32 copy of q).
template <typename T>
constexpr bool native_dot() {
  return ATTNKIT_DOT_BF16 && std::is_same_v<T, at::BFloat16>;
}

template <typename T>
void scores_few_rows_native(int64_t rows, int64_t cols, int64_t D, const T* q, int64_t ldq, const T* k, int64_t ldk,
                            float* s, int64_t lds) {
#if ATTNKIT_DOT_BF16
  if constexpr (std::is_same_v<T, at::BFloat16>) {
    for_row_blocks(rows, [&](auto rb, int64_t r) {
      scores_rows_bf16<decltype(rb)::value>(cols, D, q + r * ldq, ldq, k, ldk, s + r * lds, lds);
    });
    return;
  }
#endif
  TORCH_CHECK(false, "attnkit: native few-row dot products without AVX512-BF16");
}

template <typename T>
void scores_few_rows(int64_t rows, int64_t cols, int64_t D, const float* q, int64_t ldq, const T* k, int64_t ldk,
                     float* s, int64_t lds) {
  for_row_blocks(rows, [&](auto rb, int64_t r) {
    scores_rows<T, decltype(rb)::value>(cols, D, q + r * ldq, ldq, k, ldk, s + r * lds, lds);
  });
}

// Columns [e0, e0 + NV * W) of RB rows of O = beta O + P V, accumulated in registers over all keys.
template <typename T, int RB, int NV>
inline void pv_block(int64_t cols, const float* p, int64_t ldp, const T* v, int64_t ldv, float beta, float* out,
                     int64_t ldo) {
  constexpr int64_t W = FloatVec::size();
  FloatVec acc[RB][NV];
  for (int r = 0; r < RB; ++r)
    for (int i = 0; i < NV; ++i)
      acc[r][i] = beta == 0.f ? FloatVec(0.f) : FloatVec::loadu(out + r * ldo + i * W) * FloatVec(beta);
  for (int64_t j = 0; j < cols; ++j) {
    if (j + 8 < cols)
      for (int i = 0; i < NV; i += 64 / (W * static_cast<int>(sizeof(T)))) __builtin_prefetch(v + (j + 8) * ldv + i * W);
    FloatVec x[NV];
    for (int i = 0; i < NV; ++i) x[i] = load_as_float(v + j * ldv + i * W);
    for (int r = 0; r < RB; ++r) {
      const FloatVec w(p[r * ldp + j]);
      for (int i = 0; i < NV; ++i) acc[r][i] = at::vec::fmadd(w, x[i], acc[r][i]);
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int i = 0; i < NV; ++i) acc[r][i].store(out + r * ldo + i * W);
}

template <typename T, int RB>
void pv_rows(int64_t cols, int64_t E, const float* p, int64_t ldp, const T* v, int64_t ldv, float beta, float* out,
             int64_t ldo) {
  constexpr int64_t W = FloatVec::size();
  int64_t e = 0;
  for (; e + 4 * W <= E; e += 4 * W) pv_block<T, RB, 4>(cols, p, ldp, v + e, ldv, beta, out + e, ldo);
  switch ((E - e) / W) {
    case 3: pv_block<T, RB, 3>(cols, p, ldp, v + e, ldv, beta, out + e, ldo), e += 3 * W; break;
    case 2: pv_block<T, RB, 2>(cols, p, ldp, v + e, ldv, beta, out + e, ldo), e += 2 * W; break;
    case 1: pv_block<T, RB, 1>(cols, p, ldp, v + e, ldv, beta, out + e, ldo), e += W; break;
    default: break;
  }
  for (; e < E; ++e) {  // E % W columns (an odd head dim)
    for (int r = 0; r < RB; ++r) {
      float sum = 0.f;
      for (int64_t j = 0; j < cols; ++j) sum += p[r * ldp + j] * static_cast<float>(v[j * ldv + e]);
      out[r * ldo + e] = beta == 0.f ? sum : beta * out[r * ldo + e] + sum;
    }
  }
}

// O[r][:] = beta O[r][:] + sum_j P[r][j] V[j][:] (beta 0 or 1), up to four rows per pass over V.
template <typename T>
void pv_few_rows(int64_t rows, int64_t cols, int64_t E, const float* p, int64_t ldp, const T* v, int64_t ldv,
                 float beta, float* out, int64_t ldo) {
  for_row_blocks(rows, [&](auto rb, int64_t r) {
    pv_rows<T, decltype(rb)::value>(cols, E, p + r * ldp, ldp, v, ldv, beta, out + r * ldo, ldo);
  });
}

}  // namespace attnkit_fused
