// FlashAttention-2 backward (Algorithm 2) over one query range x one key range, from the forward's
// row maxima and sums.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <mutex>

#include "gemm.h"
#include "ops.h"
#include "parallel.h"
#include "params.h"
#include "row_step.h"

namespace attnkit_fused {
namespace {

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
void backward_kernel(const Params& p, const T* q, const T* k, const T* v, const T* dout, const RowStrides& os,
                     const RowStrides (&gs)[3], const float* m_in,
                     const float* l_in, const float* delta, float* dq, float* dk, float* dv, const at::Tensor* d_fmask, const at::Tensor* d_bias) {
  const int64_t bq = kBwdBlockQ, bk = kBwdBlockK;
  const int64_t bq_max = bq + kMinRows - 1, bk_max = bk + kMinCols - 1;  // with a joined remainder
  const int64_t k_blocks = block_count(p.Sb, bk, kMinCols), q_blocks = block_count(p.Lb, bq, kMinRows);
  constexpr bool half = !std::is_same_v<T, float>;
  // Native half products (gemm.h): every B operand in VNNI pairs, every A operand row-major. Per
  // key block: K^T, V^T (scores, dP) and K (dQ); per query block: Q (dK) and dO (dV); A operands
  // P^T, dS^T (cols x rows) and dS (rows x cols), an odd reduced dimension padded with zeros.
  const bool vnni = native_half<T>() && p.D % 2 == 0 && p.E % 2 == 0;
  const int64_t bq_pad = bq_max + 1, bk_pad = bk_max + 1;  // reduced dimensions rounded up to even
  // Scratch per chunk of work (one chunk per thread): P, dP (bq x bk), softcap derivative,
  // dK/dV accumulators, column keys.
  const int64_t per_thread = 3 * bq_max * bk_max + round16(bk_max * p.D) + round16(bk_max * p.E) + bk_max;
  // Half scratch: P and dS in the GEMMs' layout (3 with VNNI: P^T, dS^T, dS), then the VNNI packs.
  const int64_t half_ab = vnni ? 3 * bq_pad * bk_pad : 2 * bq_max * bk_max;
  const int64_t half_packs = vnni ? bk_pad * (2 * p.D + p.E) + bq_pad * (p.D + p.E) : 0;
  // dQ gathers contributions from every key block, and float-mask / bias gradients sum over
  // broadcast dims that several work items share: each chunk accumulates privately and adds
  // its copy to the caller's tensors under a lock at the end. With one key block (S up to
  // BWD_KEY_TILE: an encoder's training call) each (batch, kv head) item is the only writer of its
  // heads' dQ rows, so it adds into the caller's dq directly (no zeroed private copy per thread).
  const bool dq_direct = k_blocks == 1;
  const int64_t dq_numel = dq_direct ? 0 : p.B * p.H * p.Lb * p.D;
  const at::Tensor* dmask_out[2] = {d_fmask, d_bias};
  std::mutex reduce_lock;
  const float keep_scale = p.dropout_p > 0.f ? 1.f / (1.f - p.dropout_p) : 1.f;
  const bool raw = plain_scores(p);  // the forward's arithmetic for P, so both make the same weights

  WorkQueue work(p.B * p.G * k_blocks);
  at::parallel_for(0, work.threads(), 1, [&](int64_t, int64_t) {
    SequentialBlas sequential_blas;
    FlushDenormalResults flush_denormals;
    at::Tensor scratch = scratch_of<float>(per_thread);
    VnniRelease<T> release{vnni};
    at::Tensor scratch_half = scratch_of<T>(half ? half_ab + half_packs : 0);
    at::Tensor dq_private = dq_direct ? at::Tensor() : at::zeros({dq_numel}, at::kFloat);
    at::Tensor dmask_private[2];
    float* pbuf = scratch.data_ptr<float>();
    float* dpbuf = pbuf + bq_max * bk_max;
    float* dcap = dpbuf + bq_max * bk_max;
    float* dk_acc = dcap + bq_max * bk_max;
    float* dv_acc = dk_acc + round16(bk_max * p.D);
    uint32_t* ckeys = reinterpret_cast<uint32_t*>(dv_acc + round16(bk_max * p.E));
    T* p_half = half ? scratch_half.data_ptr<T>() : nullptr;
    T* ds_half = half ? p_half + (vnni ? bq_pad * bk_pad : bq_max * bk_max) : nullptr;
    T* dst_half = vnni ? ds_half + bq_pad * bk_pad : nullptr;  // dS^T
    T* kt_pack = vnni ? p_half + half_ab : nullptr;            // K^T [D/2][cols][2]
    T* vt_pack = vnni ? kt_pack + bk_pad * p.D : nullptr;      // V^T [E/2][cols][2]
    T* k_pack = vnni ? vt_pack + bk_pad * p.E : nullptr;       // K [cols/2][D][2]
    T* q_pack = vnni ? k_pack + bk_pad * p.D : nullptr;        // Q [rows/2][D][2]
    T* do_pack = vnni ? q_pack + bq_pad * p.D : nullptr;       // dO [rows/2][E][2]
    float* dq_t = dq_direct ? nullptr : dq_private.data_ptr<float>();
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
      const T* kp = k + b * p.ks.b + g * p.ks.h + n0 * p.ks.r;  // q/k/v/dO: any layout with contiguous rows
      const T* vp = v + b * p.vs.b + g * p.vs.h + n0 * p.vs.r;
      // Alg. 2 line 6: dK_j = 0, dV_j = 0 (kept in f32 for this key block across the R heads).
      std::fill(dk_acc, dk_acc + cols * p.D, 0.f);
      std::fill(dv_acc, dv_acc + cols * p.E, 0.f);
      const int64_t cp = cols + (cols & 1);  // cols rounded up to even (VNNI)
      if (vnni) {
        pack_transposed_vnni(kp, cols, p.D, p.ks.r, kt_pack);
        pack_transposed_vnni(vp, cols, p.E, p.vs.r, vt_pack);
        pack_vnni(kp, cols, p.D, p.ks.r, k_pack);
      }
      if (p.dropout_p > 0.f)
        for (int64_t c = 0; c < cols; ++c) ckeys[c] = col_key(ja + c);
      for (int64_t r_head = 0; r_head < p.R; ++r_head) {
        const int64_t h = g * p.R + r_head, bh = b * p.H + h;
        for (int64_t qb = 0; qb < q_blocks; ++qb) {
          const int64_t m0 = qb * bq, rows = block_len(p.Lb, bq, q_blocks, qb);
          // skip query blocks that see none of these keys
          if (!block_sees_keys(p, b, l_in + bh * p.Lb, m0, rows, ja, cols)) continue;
          const T* qp = q + b * p.qs.b + h * p.qs.h + m0 * p.qs.r;
          const T* dop = dout + b * os.b + h * os.h + m0 * os.r;
          // This block's dQ rows: the caller's (dq_direct) or this thread's private copy.
          float* dq_rows = dq_direct ? dq + b * gs[0].b + h * gs[0].h + m0 * gs[0].r : dq_t + (bh * p.Lb + m0) * p.D;
          const int64_t ldq = dq_direct ? gs[0].r : p.D;
          // Alg. 2 lines 10-11: S = Q K^T, P = exp(S - m) / l with the forward's final m and l (not
          // exp(S - L): a float L = m + log l rounds, and at a huge offset loses log l entirely);
          // line 14: dP = dO V^T.
          if (vnni) {
            gemm_vnni<T>(rows, cols, p.D, qp, p.qs.r, kt_pack, cols, pbuf, cols, false);
            gemm_vnni<T>(rows, cols, p.E, dop, os.r, vt_pack, cols, dpbuf, cols, false);
          } else {
            gemm<T>(false, true, rows, cols, p.D, 1.f, qp, p.qs.r, kp, p.ks.r, 0.f, pbuf, cols);
            gemm<T>(false, true, rows, cols, p.E, 1.f, dop, os.r, vp, p.vs.r, 0.f, dpbuf, cols);
          }
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
            exp_sum_row(s, cols, mr, raw ? p.scale : 1.f, 1.f / lr);
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
          if (vnni) {
            const int64_t rp = rows + (rows & 1);
            half_transposed(pbuf, rows, cols, 1.f, p_half, rp);          // P^T (cols x rp)
            half_transposed(dpbuf, rows, cols, p.scale, dst_half, rp);   // scale dS^T (cols x rp)
            to_half_scaled(dpbuf, rows, cols, p.scale, ds_half, cp);     // scale dS (rows x cp)
            pack_vnni(qp, rows, p.D, p.qs.r, q_pack);
            pack_vnni(dop, rows, p.E, os.r, do_pack);
            // Alg. 2 line 12: dV_j += P^T dO.
            gemm_vnni<T>(cols, p.E, rp, p_half, rp, do_pack, p.E, dv_acc, p.E, true);
            // Alg. 2 line 17: dQ_i += scale dS K_j.
            gemm_vnni<T>(rows, p.D, cp, ds_half, cp, k_pack, p.D, dq_rows, ldq, true);
            // Alg. 2 line 18: dK_j += scale dS^T Q.
            gemm_vnni<T>(cols, p.D, rp, dst_half, rp, q_pack, p.D, dk_acc, p.D, true);
            continue;
          }
          if constexpr (half) {
            to_gemm_type(pbuf, p_half, rows * cols);
            to_gemm_type(dpbuf, ds_half, rows * cols);
            pm_g = p_half, dsm_g = ds_half;
          } else {
            pm_g = pm, dsm_g = dsm;
          }
          // Alg. 2 line 12: dV_j += P^T dO.
          gemm<T>(true, false, cols, p.E, rows, 1.f, pm_g, cols, dop, os.r, 1.f, dv_acc, p.E);
          // Alg. 2 line 17: dQ_i += scale dS K_j (f32 accumulator of this thread).
          gemm<T>(false, false, rows, p.D, cols, p.scale, dsm_g, cols, kp, p.ks.r, 1.f, dq_rows, ldq);
          // Alg. 2 line 18: dK_j += scale dS^T Q.
          gemm<T>(true, false, cols, p.D, rows, p.scale, dsm_g, cols, qp, p.qs.r, 1.f, dk_acc, p.D);
        }
      }
      // Alg. 2 line 20: write dK_j, dV_j (accumulated into the caller's tensors).
      // dq/dk/dv: any layout with contiguous rows (gs: their strides), e.g. that of q/k/v.
      for (int64_t c = 0; c < cols; ++c) {
        float* dkp = dk + b * gs[1].b + g * gs[1].h + (n0 + c) * gs[1].r;
        float* dvp = dv + b * gs[2].b + g * gs[2].h + (n0 + c) * gs[2].r;
        at::vec::map2<float>([](Vec a, Vec x) { return a + x; }, dkp, dkp, dk_acc + c * p.D, p.D);
        at::vec::map2<float>([](Vec a, Vec x) { return a + x; }, dvp, dvp, dv_acc + c * p.E, p.E);
      }
    }
    std::lock_guard<std::mutex> guard(reduce_lock);
    for (int64_t bh = 0; bh < (dq_direct ? 0 : p.B * p.H); ++bh)
      for (int64_t i = 0; i < p.Lb; ++i) {
        float* row = dq + (bh / p.H) * gs[0].b + (bh % p.H) * gs[0].h + i * gs[0].r;
        at::vec::map2<float>([](Vec a, Vec x) { return a + x; }, row, row, dq_t + (bh * p.Lb + i) * p.D, p.D);
      }
    for (int w = 0; w < 2; ++w)
      if (dmask_out[w]) dmask_out[w]->add_(dmask_private[w]);
  });
}

}  // namespace

void backward(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& dout_in,
              const at::Tensor& m, const at::Tensor& l, const at::Tensor& delta, const at::Tensor& dq,
              const at::Tensor& dk, const at::Tensor& dv,
              const std::optional<at::Tensor>& d_float_mask, const std::optional<at::Tensor>& d_bias,
              ATTNKIT_SPEC_PARAMS) {
  // q/k/v/dO are read in place where their rows are contiguous (as_rows): a model's layout needs no copy.
  const at::Tensor q = as_rows(q_in), k = as_rows(k_in), v = as_rows(v_in), dout = as_rows(dout_in);
  const Params p = make_params(q, k, v, ATTNKIT_SPEC_ARGS);
  TORCH_CHECK(dout.scalar_type() == q.scalar_type() && dout.sizes() == at::IntArrayRef({p.B, p.H, p.Lb, p.E}),
              "dout: q's dtype, shape (B, H, Lb, E)");
  for (const at::Tensor* t : {&m, &l, &delta})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous(), "m/l/delta: contiguous float32");
  for (const at::Tensor* t : {&dq, &dk, &dv})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->dim() == 4 && as_rows(*t).is_same(*t),
                "dq/dk/dv: float32, rows contiguous");
  TORCH_CHECK(dq.sizes() == q.sizes() && dk.sizes() == k.sizes() && dv.sizes() == v.sizes(), "dq/dk/dv: q/k/v's shapes");
  const RowStrides gs[3] = {row_strides(dq), row_strides(dk), row_strides(dv)};
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
                                dout.data_ptr<scalar_t>(), row_strides(dout), gs, m.data_ptr<float>(), l.data_ptr<float>(), delta.data_ptr<float>(),
                                dq.data_ptr<float>(), dk.data_ptr<float>(), dv.data_ptr<float>(), dfm, dbi);
    }
  });
}

}  // namespace attnkit_fused
