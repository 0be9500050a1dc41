// The ops' C++ entry points (registered in register.cpp; schemas there and in params.h).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "params.h"

namespace attnkit_fused {

// forward.cpp: one query range x key range; out (B,H,Lb,E) and lse, m, l (B,H,Lb), float32.
// half_gemm 0: half inputs multiplied in float32, each tile widened as it is read.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(const at::Tensor& q, const at::Tensor& k,
                                                                   const at::Tensor& v, ATTNKIT_SPEC_PARAMS,
                                                                   int64_t half_gemm);
// forward.cpp: the hot path, attnkit.attention's common call with its checks; out in q's dtype.
std::tuple<at::Tensor, at::Tensor> attention(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                             const std::optional<at::Tensor>& mask_in,
                                             const std::optional<at::Tensor>& kv_lengths,
                                             const std::optional<at::Tensor>& q_lengths,
                                             const std::optional<at::Tensor>& alibi_slopes, int64_t causal,
                                             int64_t window_left, int64_t window_right, std::optional<double> scale,
                                             double softcap, int64_t half_gemm);
// backward.cpp: accumulates dq, dk, dv (and d_float_mask / d_bias) in place.
void backward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& dout,
              const at::Tensor& m, const at::Tensor& l, const at::Tensor& delta, const at::Tensor& dq,
              const at::Tensor& dk, const at::Tensor& dv, const std::optional<at::Tensor>& d_float_mask,
              const std::optional<at::Tensor>& d_bias, ATTNKIT_SPEC_PARAMS);

}  // namespace attnkit_fused
