// Registration: the torch ops (schemas, CPU kernels) and the hot path's direct Python entry.
// One extension library built from every .cpp of this directory (engines/kernel/build.py).

#include <torch/extension.h>  // pybind11: the hot path's direct entry from Python (see the end)
#include <torch/library.h>

#include "ops.h"
#include "params.h"

// Every op's problem description is ATTNKIT_SPEC_SCHEMA: named arguments (params.h).
TORCH_LIBRARY(attnkit_fused, m) {
  m.def("forward(Tensor q, Tensor k, Tensor v, " ATTNKIT_SPEC_SCHEMA
        ", int half_gemm=1) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "backward(Tensor q, Tensor k, Tensor v, Tensor dout, Tensor m, Tensor l, Tensor delta, Tensor(a!) dq, "
      "Tensor(b!) dk, Tensor(c!) dv, Tensor(d!)? d_float_mask, Tensor(e!)? d_bias, " ATTNKIT_SPEC_SCHEMA ") -> ()");
  // The hot path of attnkit.attention (no autograd, no dropout): checks its arguments, returns
  // out (B,H,L,E) in q's dtype and lse (B,H,L) float32.
  m.def(
      "attention(Tensor q, Tensor k, Tensor v, Tensor? mask, Tensor? kv_lengths, Tensor? q_lengths, "
      "Tensor? alibi_slopes, int causal, int window_left, int window_right, float? scale, float softcap, "
      "int half_gemm) -> (Tensor, Tensor)");
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
