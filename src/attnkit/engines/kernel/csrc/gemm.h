// BLAS glue: the tile GEMMs in float32 or half precision, and the scratch they write into.
//
// SDPA's kernel calls at::native::cpublas::gemm, which is not exported from libtorch_cpu;
// it forwards fp32 to MKL's sgemm_ and bf16/fp16 to MKL's cblas_gemm_{bf16bf16,f16f16}f32, which
// ARE exported, so we call those (weak symbols) and fall back to at::mm on torch builds without MKL.
// Where the CPU multiplies half types natively, half products go through cpublas::brgemm instead
// (exported; see "native half GEMM" below).
#pragma once

#include <ATen/ATen.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/native/CPUBlas.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace attnkit_fused {

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

// ----------------------------------------------------------------------------- native half GEMM
// Where the CPU multiplies bf16 (fp16) natively — AMX tiles or AVX512-BF16 dot products
// (fp16: AMX-FP16 only, build.py) — the tile products go through oneDNN's brgemm ukernel, which ATen
// exports as at::native::cpublas::brgemm and SDPA's bf16 kernel uses too. build.py compiles it
// in (-DATTNKIT_NATIVE_BF16 / _FP16) from the CPU flags; elsewhere the products go through MKL
// above. brgemm takes B in VNNI pairs: B[k][n] at ((k / 2) * ldb + n) * 2 + k % 2.
#ifndef ATTNKIT_NATIVE_BF16
#define ATTNKIT_NATIVE_BF16 0
#endif
#ifndef ATTNKIT_NATIVE_FP16
#define ATTNKIT_NATIVE_FP16 0
#endif
template <typename T>
constexpr bool native_half() {
  if constexpr (std::is_same_v<T, at::BFloat16>) return ATTNKIT_NATIVE_BF16 != 0;
  if constexpr (std::is_same_v<T, at::Half>) return ATTNKIT_NATIVE_FP16 != 0;
  return false;
}

// Row-major C[M,N] (+)= A[M,K] . B[K,N], B in VNNI pairs (K even), C float32.
template <typename T>
inline void gemm_vnni(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, float* C,
                      int64_t ldc, bool accumulate) {
  if (M == 0 || N == 0) return;
  if constexpr (native_half<T>()) {
    at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, accumulate, A, B, C, /*is_vnni=*/true);
  } else {
    TORCH_CHECK(false, "attnkit: VNNI GEMM without native half support");
  }
}

// Releases the brgemm ukernel's hardware state (the AMX tile configuration) when a thread's work ends.
template <typename T>
struct VnniRelease {
  bool used;
  ~VnniRelease() {
    if constexpr (native_half<T>()) {
      if (used) at::native::cpublas::brgemm_release(/*is_vnni=*/true);
    }
  }
};

// The transpose of rows x cols (row-major, leading dim ld; cols even) as a VNNI B operand
// [cols/2][rows][2]: the B of A . src^T (K^T for the scores Q K^T). A pair is one 32-bit word.
template <typename T>
void pack_transposed_vnni(const T* src, int64_t rows, int64_t cols, int64_t ld, T* dst) {
  if constexpr (sizeof(T) == 2) {  // only half types are packed (native_half)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; c += 2) std::memcpy(dst + (c * rows + 2 * r), src + r * ld + c, 4);
  }
}

// rows x cols (row-major, leading dim ld) as a VNNI B operand [ceil(rows/2)][cols][2] (V for P V);
// an odd last row is paired with zeros.
template <typename T>
void pack_vnni(const T* src, int64_t rows, int64_t cols, int64_t ld, T* dst) {
  for (int64_t r = 0; r < rows; r += 2) {
    const T* a = src + r * ld;
    T* d = dst + r * cols;  // pair r/2 starts at (r/2) * cols * 2
    if (r + 1 < rows) {
      const T* b = a + ld;
      for (int64_t c = 0; c < cols; ++c) d[2 * c] = a[c], d[2 * c + 1] = b[c];
    } else {
      for (int64_t c = 0; c < cols; ++c) d[2 * c] = a[c], d[2 * c + 1] = T(0.f);
    }
  }
}

// dst (rows x ldd, half) = scale * src (rows x cols, float32, scaled in place); columns
// [cols, ldd) are zero (ldd <= cols + 1): the A operand of a VNNI product over an odd cols.
template <typename T>
void to_half_scaled(float* src, int64_t rows, int64_t cols, float scale, T* dst, int64_t ldd) {
  for (int64_t r = 0; r < rows; ++r) {
    float* a = src + r * cols;
    using V = at::vec::Vectorized<float>;
    if (scale != 1.f) at::vec::map<float>([scale](V x) { return x * V(scale); }, a, a, cols);
    at::vec::convert(a, dst + r * ldd, cols);
    if (ldd > cols) dst[r * ldd + cols] = T(0.f);
  }
}

// dst (cols x ldd, half) = scale * src^T (src rows x cols, float32); column `rows` is zero when
// rows is odd (ldd = rows rounded up to even): the A operand P^T / dS^T of the backward. Two rows
// at a time, so each store is one 32-bit pair.
template <typename T>
void half_transposed(const float* src, int64_t rows, int64_t cols, float scale, T* dst, int64_t ldd) {
  if constexpr (sizeof(T) == 2) {
    for (int64_t r = 0; r < rows; r += 2) {
      const float* a = src + r * cols;
      const float* b = r + 1 < rows ? a + cols : nullptr;
      for (int64_t c = 0; c < cols; ++c) {
        const T pair[2] = {T(scale * a[c]), T(b ? scale * b[c] : 0.f)};
        std::memcpy(dst + c * ldd + r, pair, sizeof(pair));  // one 32-bit store
      }
    }
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

// 64-byte aligned scratch (MKL's packing routines are markedly slower on unaligned tiles); none for
// n = 0 (an empty tensor still costs an allocation of its own, per thread and call).
template <typename T>
at::Tensor scratch_of(int64_t n) {
  return n == 0 ? at::Tensor() : at::empty({n}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}
inline int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

// dst (rows x cols float32, dense) = src (rows x cols half, rows `ld` apart): a half input's tile
// widened for float32 products (a decode step reads its cache once, no widened copy of it).
template <typename T>
void widen_rows(const T* src, int64_t rows, int64_t cols, int64_t ld, float* dst) {
  using HalfVec = at::vec::Vectorized<T>;
  using FloatVec = at::vec::Vectorized<float>;
  for (int64_t r = 0; r < rows; ++r) {
    const T* a = src + r * ld;
    float* d = dst + r * cols;
    int64_t c = 0;
    for (; c + HalfVec::size() <= cols; c += HalfVec::size()) {
      auto [lo, hi] = at::vec::convert_to_float<T>(HalfVec::loadu(a + c));
      lo.store(d + c);
      hi.store(d + c + FloatVec::size());
    }
    for (; c < cols; ++c) d[c] = static_cast<float>(a[c]);
  }
}

template <typename T>
inline void to_gemm_type(const float* src, T* dst, int64_t n) {
  if constexpr (!std::is_same_v<T, float>) at::vec::convert(src, dst, n);
}

}  // namespace attnkit_fused
