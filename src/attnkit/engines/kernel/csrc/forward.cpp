// FlashAttention-2 forward (Algorithm 1) over one query range x one key range, and the hot path
// op (attnkit.attention's common call) on the same kernel. Half inputs use half-precision GEMMs
// (bf16 x bf16 -> f32, fp16 x fp16 -> f32) as SDPA's CPU kernel does.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "few_rows.h"
#include "gemm.h"
#include "ops.h"
#include "parallel.h"
#include "params.h"
#include "row_step.h"

namespace attnkit_fused {
namespace {

// ============================================================================= forward
// pv = sum over the keys row ia of head h can see of P[j] * V[j] (tile columns [0, n) = absolute
// keys [ja, ja+n)): the P V product of one row with hidden keys left out, not multiplied by 0.
template <typename T>
void visible_pv_row(const Params& p, int64_t b, int64_t h, int64_t ia, int64_t ja, int64_t n, const float* prob,
                    const T* v, float* pv) {  // v: key ja's row, rows p.vs.r apart
  int64_t lo, hi;
  visible_columns(p, b, ia, ja, n, lo, hi);
  std::fill(pv, pv + p.E, 0.f);
  const bool* mrow = p.mask ? p.mask + b * p.ms.b + h * p.ms.h + ia * p.ms.i : nullptr;
  for (int64_t j = lo; j < hi; ++j) {
    if (mrow && !mrow[(ja + j) * p.ms.j]) continue;
    const float w = prob[j];
    const T* vj = v + j * p.vs.r;
    for (int64_t e = 0; e < p.E; ++e) pv[e] += w * static_cast<float>(vj[e]);
  }
}

// Heads of one GQA group go into one query block only where q's rows are equally far apart across
// heads too (q (B,H,Lb,D) contiguous per head group; forward_q makes q so for the shortest ranges).
inline bool heads_pack(const Params& p) { return p.R > 1 && p.qs.h == p.Lb * p.qs.r; }

// Query blocks of the forward (blocks.py): `bq` rows per block, and the blocks of one (batch, kv
// group): blocks of one head (Lb >= bq) or several heads per block (Lb < bq, GQA).
struct QueryBlocks {
  int64_t bq, heads_per_block, blocks_per_head, group_blocks;
  QueryBlocks(const Params& p, int64_t rows) : bq(rows) {
    const int64_t fit = std::min(p.R, bq / std::max<int64_t>(p.Lb, 1));  // whole heads in bq rows
    heads_per_block = p.Lb >= bq || !heads_pack(p) ? 1 : std::max<int64_t>(1, fit);
    blocks_per_head = p.Lb >= bq ? block_count(p.Lb, bq, kMinRows) : 0;
    group_blocks = p.Lb >= bq ? p.R * blocks_per_head : (p.R + heads_per_block - 1) / heads_per_block;
  }
};

inline QueryBlocks query_blocks(const Params& p) {
  static_assert(kFwdBlockQSmall <= kFwdBlockQShort && kFwdBlockQShort <= kMidRange, "blocks.py: SMALL <= SHORT <= MID_RANGE");
  int64_t bq = p.Lb >= kLongRange  ? kFwdBlockQLarge
               : p.Lb >= kMidRange ? kFwdBlockQMid
               : p.Lb >= kFwdBlockQSmall ? kFwdBlockQShort
                                         : kFwdBlockQSmall;
  if (p.wl >= 0 && (p.causal != 0 || p.wr >= 0)) {
    // A band of `span` keys per row (blocks.band_span): a block of bq rows computes ~span + bq keys
    // per row, so keep bq <= span / kBandRatio; at w = 256 this is 64-row blocks instead of 256.
    const int64_t span = p.wl + (p.causal != 0 ? 0 : p.wr) + 1;
    while (bq > kFwdBlockQSmall && bq * kBandRatio > span) bq /= 2;
  }
  QueryBlocks blocks(p, bq);
  // A short range's whole-head block is halved while some thread would get none (B=1 H=1 L=128).
  if (bq == kFwdBlockQShort) {
    const int64_t threads = at::get_num_threads();
    while (blocks.bq > kFwdBlockQSmall && p.B * p.G * blocks.group_blocks < threads) blocks = QueryBlocks(p, blocks.bq / 2);
  }
  return blocks;
}

// T: the inputs' dtype; C: the tile products' (T, or float32 for half inputs that are widened: each
// tile of q, K and V is widened in this pass as it is read, so no widened copy of a cache is made);
// O: the output's (float32, or T for the hot path, which returns the inputs' dtype: rounded here
// once, as Tensor.to would, without a float32 output and a conversion call per decode step).
template <typename T, typename C = T, typename O = float>
void forward_kernel(const Params& p, const T* q, const T* k, const T* v, O* out, const RowStrides& os, float* lse,
                    float* m_out, float* l_out) {
  const int64_t bk = kFwdBlockK;
  // GQA packing: the R query heads of kv head g are R*Lb contiguous rows of q (B,H,Lb,D), so a
  // group is one (R*Lb, D) matrix. Long queries: blocks of bq rows inside one head. Short queries:
  // several heads per block where q's layout allows (heads_pack), so one pass over K/V serves them.
  const QueryBlocks qb = query_blocks(p);
  const int64_t bq = qb.bq, heads_per_block = qb.heads_per_block, blocks_per_head = qb.blocks_per_head;
  const int64_t group_blocks = qb.group_blocks;
  const int64_t rows_max = p.Lb >= bq ? bq + kMinRows - 1 : heads_per_block * p.Lb;
  const int64_t cols_max = bk + kMinCols - 1;
  constexpr bool half = !std::is_same_v<C, float>;  // half-precision products
  constexpr bool widen = !std::is_same_v<T, C>;     // half inputs, float32 products
  const double flops = 2.0 * p.B * p.H * p.Lb * p.Sb * (p.D + p.E);
  // Native half products (gemm.h): K^T and V of every (batch, kv head) packed once into VNNI pairs,
  // [D/2][Sb][2] and [Sp/2][E][2] (an odd last key paired with zeros).
  // Not below a query block (decode): brgemm JIT-compiles a kernel per shape and a decode step's
  // growing cache is a new shape every step (measured: 1.08 ms per bf16 step vs 0.21 ms at a fixed
  // length); those ranges are widened to float32 (HALF_IF_EVEN) or use MKL's half GEMM (HALF:
  // build.half_gemm).
  const bool vnni = native_half<C>() && p.D % 2 == 0 && p.E % 2 == 0 && p.Lb >= kFwdBlockQSmall;
  // A decode step's few rows multiply K and V as stored (few_rows.h): up to kFewRows float32 rows
  // (more are MKL's, which blocks them in registers), up to kFewRowsHalf rows of half inputs that
  // would be widened. The hot path's forward only (no m/l asked for): a backward rebuilds the
  // weights from BLAS products, summed in their order.
  constexpr bool half_in = !std::is_same_v<T, float>;
  const bool few = m_out == nullptr && !half && !vnni && rows_max <= (half_in ? kFewRowsHalf : kFewRows);
  const int64_t Sp = p.Sb + (p.Sb & 1), k_pack = p.D * p.Sb, kv_pack = k_pack + Sp * p.E;
  at::Tensor packed = vnni ? scratch_of<T>(p.B * p.G * kv_pack) : at::Tensor();
  if (vnni) {
    auto pack = [&](int64_t lo, int64_t hi) {
      for (int64_t bg = lo; bg < hi; ++bg) {
        T* dst = packed.data_ptr<T>() + bg * kv_pack;
        const int64_t b = bg / p.G, g = bg % p.G;
        pack_transposed_vnni(k + b * p.ks.b + g * p.ks.h, p.Sb, p.D, p.ks.r, dst);
        pack_vnni(v + b * p.vs.b + g * p.vs.h, p.Sb, p.E, p.vs.r, dst + k_pack);
      }
    };
    if (flops < kSerialFlops) {
      pack(0, p.B * p.G);
    } else {
      at::parallel_for(0, p.B * p.G, 1, pack);
    }
  }
  // Scratch per chunk of work (one chunk per thread): scores (rows x bk), half copy of P,
  // accumulator, m, l, column keys. Allocated inside the chunk, so nothing depends on thread ids.
  const int64_t per_thread =
      round16(rows_max * cols_max) + 2 * round16(rows_max * p.E) + 2 * round16(rows_max) + cols_max;
  const float keep_scale = p.dropout_p > 0.f ? 1.f / (1.f - p.dropout_p) : 1.f;
  const bool raw = plain_scores(p);
  // Later key blocks of a row in one pass (row_step.h, lazy_exp_sum_row) for plain or ALiBi scores
  // without dropout. The row's (m, l) stay a consistent pair (l = sum exp(s - m), m within
  // kLazySlack of the max), from which a backward rebuilds these weights.
  const bool alibi = alibi_scores(p);
  const bool lazy = (raw || alibi) && p.dropout_p == 0.f;
  // Widened inputs: K and V are widened and multiplied this many keys at a time (32 KiB of float32
  // each), so the product reads each chunk from L1 right after it is written (measured: widening
  // a whole 512-key block cost more than its product).
  const int64_t wide_keys = std::max<int64_t>(kMinCols, (kWidenFloats / std::max(p.D, p.E)) / 16 * 16);

  // Parallel over (batch * kv group, query block); K/V are read in place, never repeated. A problem
  // of a few microseconds (an L=16 encoder call) runs on the calling thread: an OpenMP fork/join
  // costs about as much, and on a busy machine the join waits for a descheduled thread.
  WorkQueue work(p.B * p.G * group_blocks, flops < kSerialFlops);
  at::parallel_for(0, work.threads(), 1, [&](int64_t, int64_t) {
    SequentialBlas sequential_blas;
    FlushDenormalResults flush_denormals;
    VnniRelease<T> release{vnni};
    at::Tensor scratch = scratch_of<float>(per_thread);
    at::Tensor scratch_half = scratch_of<C>(half ? rows_max * (cols_max + 2) : 0);  // + VNNI pair padding
    // Widened tiles: the block's q rows, then `wide_keys` keys of K and of V (L1-sized chunks).
    const int64_t chunk_max = wide_keys + kMinCols - 1;  // a short last chunk joins the one before
    const int64_t q_wide_size = round16(rows_max * p.D), k_wide_size = round16(chunk_max * p.D);
    const int64_t wide_size = few ? (half_in && !native_dot<T>() ? q_wide_size : 0)
                                  : widen ? q_wide_size + k_wide_size + chunk_max * p.E : 0;
    at::Tensor scratch_wide = scratch_of<float>(wide_size);
    float* q_wide = wide_size ? scratch_wide.data_ptr<float>() : nullptr;
    float* k_wide = widen && !few ? q_wide + q_wide_size : nullptr;
    float* v_wide = widen && !few ? k_wide + k_wide_size : nullptr;
    float* qk = scratch.data_ptr<float>();
    float* acc = qk + round16(rows_max * cols_max);
    float* mrow = acc + round16(rows_max * p.E);
    float* lrow = mrow + round16(rows_max);
    uint32_t* ckeys = reinterpret_cast<uint32_t*>(lrow + round16(rows_max));
    float* pv = reinterpret_cast<float*>(ckeys + cols_max);  // this tile's P V where some row hides a key of it
    C* p_half = half ? scratch_half.data_ptr<C>() : nullptr;
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
      // Packed rows are rows p.qs.r apart, across heads too (the op entry made q so where heads pack).
      const T* qp = q + b * p.qs.b + (g * p.R + pr0 / p.Lb) * p.qs.h + (pr0 % p.Lb) * p.qs.r;
      const T* kp = k + b * p.ks.b + g * p.ks.h;
      const T* vp = v + b * p.vs.b + g * p.vs.h;
      const T* kpk = vnni ? packed.data_ptr<T>() + bg * kv_pack : nullptr;  // K^T, then V, in VNNI pairs
      // The A operand of S = Q K^T: q's rows in place, or widened once per block.
      const C* qg = nullptr;
      const float* qf = nullptr;  // few rows: q in float32 (half inputs widened: rows x D)
      int64_t ldq;
      if (few) {
        if constexpr (native_dot<T>()) {
          ldq = p.qs.r;  // q's bf16 rows as stored (scores_few_rows_native)
        } else if constexpr (half_in) {
          widen_rows(qp, rows, p.D, p.qs.r, q_wide);
          qf = q_wide, ldq = p.D;
        } else {
          qf = qp, ldq = p.qs.r;
        }
      } else if constexpr (widen) {
        widen_rows(qp, rows, p.D, p.qs.r, q_wide);
        qg = q_wide, ldq = p.D;
      } else {
        qg = qp, ldq = p.qs.r;
      }
      // Alg. 1 line 4: m = -inf, l = 0, O = 0. Key blocks that no row of the tile sees are skipped.
      int64_t jlo = p.Sb, jhi = 0;
      int64_t inner_lo = 0, inner_hi = p.Sb;  // keys every row of the tile sees (structurally)
      for (int64_t r = 0; r < rows; ++r) {
        int64_t lo, hi;
        visible_columns(p, b, query_of(r), p.j0, p.Sb, lo, hi);
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
      // ALiBi's scores fall with the distance from a row's own position: the key block holding the
      // tile's first row's position goes first, so a row's max is mostly set by its first block and
      // the one-pass step (lazy) rarely has to rescale.
      const int64_t diag = alibi && lazy ? std::clamp<int64_t>((query_of(0) + align_offset(p, b) - p.j0 - jlo) / bk, 0,
                                                               std::max<int64_t>(key_blocks - 1, 0))
                                         : 0;
      for (int64_t visit = 0; visit < key_blocks; ++visit) {
        const int64_t kb = visit == 0 ? diag : visit <= diag ? visit - 1 : visit;
        const int64_t n0 = jlo + kb * bk, cols = block_len(jhi - jlo, bk, key_blocks, kb);
        // The first block writes O (GEMM beta = 0) instead of zeroing it and rescaling zeros.
        const bool first = visit == 0;
        // Alg. 1 line 8: S = Q_i K_j^T (raw products; the scale is fused into the row pass).
        const int64_t chunks = widen ? block_count(cols, wide_keys, kMinCols) : 0;  // widened K/V chunks
        if (few) {
          if constexpr (native_dot<T>()) {
            scores_few_rows_native<T>(rows, cols, p.D, qp, ldq, kp + n0 * p.ks.r, p.ks.r, qk, cols);
          } else {
            scores_few_rows<T>(rows, cols, p.D, qf, ldq, kp + n0 * p.ks.r, p.ks.r, qk, cols);
          }
        } else if constexpr (widen) {  // K widened a chunk at a time, each chunk's product right after
          for (int64_t c = 0, c0 = 0, n; c < chunks; ++c, c0 += n) {
            n = block_len(cols, wide_keys, chunks, c);  // never narrower than kMinCols (params.h)
            widen_rows(kp + (n0 + c0) * p.ks.r, n, p.D, p.ks.r, k_wide);
            gemm<float>(false, true, rows, n, p.D, 1.f, qg, ldq, k_wide, p.D, 0.f, qk + c0, cols);
          }
        } else if (vnni) {
          gemm_vnni<C>(rows, cols, p.D, qg, ldq, kpk + n0 * 2, p.Sb, qk, cols, false);
        } else {
          gemm<C>(false, true, rows, cols, p.D, 1.f, qg, ldq, kp + n0 * p.ks.r, p.ks.r, 0.f, qk, cols);
        }
        // P V over keys [a0, a1): VNNI pairs start at an even key, so P gets a zero column in front
        // (an odd n0) or behind (an odd end); the key it pairs with is outside this block.
        const int64_t a0 = vnni ? n0 - (n0 & 1) : n0, a1 = vnni ? n0 + cols + ((n0 + cols) & 1) : n0 + cols;
        const int64_t kc = a1 - a0, lead = n0 - a0;
        if (p.dropout_p > 0.f)
          for (int64_t c = 0; c < cols; ++c) ckeys[c] = col_key(p.j0 + n0 + c);
        // Row r of P in the products' half type (few rows are never half products: they read P in float32).
        auto to_half_row = [&](const float* s, int64_t r) {
          C* ph = p_half + r * kc;
          if (lead) ph[0] = T(0.f);
          to_gemm_type(s, ph + lead, cols);
          if (kc > lead + cols) ph[kc - 1] = T(0.f);
        };
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t ia = query_of(r), h = head_of(r);
          float* s = qk + r * cols;
          if (lazy && std::isfinite(mrow[r])) {  // a later block of a row that saw keys: one pass
            const int64_t ja = p.j0 + n0;
            const LazyStep step = alibi ? lazy_exp_sum_row(p, b, h, ia, ja, cols, s, mrow[r], AlibiScores(p, b, h, ia, ja))
                                        : lazy_exp_sum_row(p, b, h, ia, ja, cols, s, mrow[r], ScaledScores{Vec(p.scale)});
            lrow[r] = step.alpha * lrow[r] + step.sum;
            mrow[r] = step.m;
            if (step.alpha != 1.f) {
              at::vec::map<float>([&step](Vec x) { return x * Vec(step.alpha); }, acc + r * p.E, acc + r * p.E, p.E);
            }
            if constexpr (half) to_half_row(s, r);
            continue;
          }
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
          if constexpr (half) to_half_row(s, r);
        }
        // Alg. 1 line 10 (cont.): O += P V_j.
        const C* pg;
        if constexpr (half) {
          pg = p_half;
        } else {
          pg = qk;
        }
        // A key hidden from a row has P = 0 there, but 0 * NaN = NaN: garbage in V (a KV cache from
        // torch.empty) would leak through the GEMM. Where some row hides a key of this tile, the
        // product goes to `pv` first and rows that came out non-finite are redone over their visible
        // keys only (IEEE arithmetic for those, as in the reference). The cache is read once.
        // A VNNI pad key that is a real key of the cache (0 * its garbage) counts as hidden too.
        const bool padded = a0 < n0 || (a1 > n0 + cols && n0 + cols < p.Sb);
        const bool partial = p.mask != nullptr || n0 < inner_lo || n0 + cols > inner_hi || padded;
        float* const pv_out = partial ? pv : acc;  // partial: redone where non-finite, then added
        const float beta = !partial && !first ? 1.f : 0.f;
        if (few) {
          pv_few_rows<T>(rows, cols, p.E, qk, cols, vp + n0 * p.vs.r, p.vs.r, beta, pv_out, p.E);
        } else if constexpr (widen) {
          for (int64_t c = 0, c0 = 0, n; c < chunks; ++c, c0 += n) {
            n = block_len(cols, wide_keys, chunks, c);
            widen_rows(vp + (n0 + c0) * p.vs.r, n, p.E, p.vs.r, v_wide);
            gemm<float>(false, false, rows, p.E, n, 1.f, pg + c0, cols, v_wide, p.E, c0 == 0 ? beta : 1.f, pv_out, p.E);
          }
        } else if (vnni) {
          gemm_vnni<C>(rows, p.E, kc, pg, kc, kpk + k_pack + a0 * p.E, p.E, pv_out, p.E, beta != 0.f);
        } else {
          gemm<C>(false, false, rows, p.E, cols, 1.f, pg, cols, vp + n0 * p.vs.r, p.vs.r, beta, pv_out, p.E);
        }
        if (partial) {
          for (int64_t r = 0; r < rows; ++r) {
            float* pvr = pv + r * p.E;
            bool finite = true;
            for (int64_t e = 0; e < p.E && finite; ++e) finite = std::isfinite(pvr[e]);
            if (!finite) visible_pv_row(p, b, head_of(r), query_of(r), p.j0 + n0, cols, qk + r * cols,
                                        vp + n0 * p.vs.r, pvr);
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
        O* o = out + b * os.b + head_of(r) * os.h + (query_of(r) - p.i0) * os.r;
        const float l = lrow[r];
        const float inv = l == 0.f ? 0.f : 1.f / l;  // NaN rows stay NaN
        if constexpr (std::is_same_v<O, float>) {
          at::vec::map<float>([inv](Vec x) { return x * Vec(inv); }, o, acc + r * p.E, p.E);
        } else {
          float* a = acc + r * p.E;
          at::vec::map<float>([inv](Vec x) { return x * Vec(inv); }, a, a, p.E);
          at::vec::convert(a, o, p.E);
        }
        lse[row0 + r] = l == 0.f ? kNegInf : mrow[r] + std::log(l);
        // The row's m and l for the backward, which rebuilds exactly these weights, exp(s - m) * (1/l).
        if (m_out) m_out[row0 + r] = mrow[r], l_out[row0 + r] = l;
      }
    }
  });
}

// The forward over inputs of dtype T: products in T, or (`widen`, half inputs) in float32 with every
// tile widened as the pass reads it; the output in float32 or (the hot path) in T.
template <typename T, typename O>
void run_forward_into(bool widen, const Params& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      O* out, const RowStrides& os, at::Tensor& lse, float* m_out, float* l_out) {
  if constexpr (!std::is_same_v<T, float>) {
    if (widen) {
      forward_kernel<T, float, O>(p, q.data_ptr<T>(), k.data_ptr<T>(), v.data_ptr<T>(), out, os, lse.data_ptr<float>(),
                                  m_out, l_out);
      return;
    }
  }
  forward_kernel<T, T, O>(p, q.data_ptr<T>(), k.data_ptr<T>(), v.data_ptr<T>(), out, os, lse.data_ptr<float>(), m_out,
                          l_out);
}

template <typename T>
void run_forward(bool widen, const Params& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 at::Tensor& out, const RowStrides& os, at::Tensor& lse, float* m_out, float* l_out) {
  if (out.scalar_type() == at::kFloat) {
    run_forward_into<T>(widen, p, q, k, v, out.data_ptr<float>(), os, lse, m_out, l_out);
  } else {
    TORCH_CHECK(out.scalar_type() == q.scalar_type(), "attnkit: the output is float32 or the inputs' dtype");
    if constexpr (!std::is_same_v<T, float>) run_forward_into<T>(widen, p, q, k, v, out.data_ptr<T>(), os, lse, m_out, l_out);
  }
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

}  // namespace

// q as the forward reads it (as_rows). The heads of a range shorter than kFwdBlockQSmall (decode)
// must pack into one block (one pass over K/V for a whole GQA group), so their rows must be equally
// far apart across heads too: copied where not. Longer ranges pack heads only where q is so already
// (heads_pack); otherwise each head is its own block.
at::Tensor forward_q(const at::Tensor& q_in) {
  at::Tensor q = as_rows(q_in);
  const int64_t H = q.size(1), Lb = q.size(2);
  return H > 1 && Lb > 1 && Lb < kFwdBlockQSmall && q.stride(1) != Lb * q.stride(2) ? q.contiguous() : q;
}

// Half inputs multiplied in float32 (half_gemm 0): a range shorter than kMidRange is one query
// block per head (or per head group: decode), which reads each K/V tile once, so the pass widens
// its tiles as it reads them (no widened copy allocated and written per call: for a bf16 encoder
// call that copy cost more than the attention); a longer range reads every tile once per query
// block, so its inputs are widened once, up front.
inline bool widen_up_front(const at::Tensor& q, int64_t half_gemm) {
  return q.scalar_type() != at::kFloat && half_gemm == 0 && q.size(2) >= kMidRange;
}
inline at::Tensor widened_if(bool up_front, const at::Tensor& t) { return up_front ? t.to(at::kFloat) : t; }

// ============================================================================= op entry points
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(const at::Tensor& q_in, const at::Tensor& k_in,
                                                                   const at::Tensor& v_in, ATTNKIT_SPEC_PARAMS,
                                                                   int64_t half_gemm) {
  TORCH_CHECK(q_in.scalar_type() == k_in.scalar_type() && q_in.scalar_type() == v_in.scalar_type(), "q, k, v: one dtype");
  const bool up_front = widen_up_front(q_in, half_gemm);
  const at::Tensor q = forward_q(widened_if(up_front, q_in));
  const at::Tensor k = as_rows(widened_if(up_front, k_in)), v = as_rows(widened_if(up_front, v_in));
  const Params p = make_params(q, k, v, ATTNKIT_SPEC_ARGS);
  auto f32 = q.options().dtype(at::kFloat);
  // (B, Lb, H, E) storage seen as (B, H, Lb, E), as the hot path's (a model's transpose is free).
  const RowStrides os{p.Lb * p.H * p.E, p.E, p.H * p.E};
  at::Tensor out = at::empty_strided({p.B, p.H, p.Lb, p.E}, {os.b, os.h, os.r, 1}, f32);
  at::Tensor lse = at::empty({p.B, p.H, p.Lb}, f32), m = at::empty_like(lse), l = at::empty_like(lse);
  if (out.numel() == 0 && lse.numel() == 0) return {out, lse, m, l};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "attnkit_fused_forward", [&] {
    if constexpr (std::is_same_v<scalar_t, double>) {
      TORCH_CHECK(false, "float64 runs on the PyTorch tile path");
    } else {
      run_forward<scalar_t>(half_gemm == 0, p, q, k, v, out, os, lse, m.data_ptr<float>(), l.data_ptr<float>());
    }
  });
  return {out, lse, m, l};
}

std::tuple<at::Tensor, at::Tensor> attention(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                             const std::optional<at::Tensor>& mask_in,
                                             const std::optional<at::Tensor>& kv_lengths,
                                             const std::optional<at::Tensor>& q_lengths,
                                             const std::optional<at::Tensor>& alibi_slopes, int64_t causal,
                                             int64_t window_left, int64_t window_right, std::optional<double> scale,
                                             double softcap, int64_t half_gemm) {
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
  // Read in place where the layout allows (as_rows): a model's (B, L, H, D) storage needs no copy.
  const bool up_front = widen_up_front(q_in, half_gemm);
  const at::Tensor q = forward_q(widened_if(up_front, q_in));
  const at::Tensor k = as_rows(widened_if(up_front, k_in)), v = as_rows(widened_if(up_front, v_in));
  const Params p = make_params(q, k, v, kvl.defined() ? std::optional<at::Tensor>(kvl) : std::nullopt,
                               ql.defined() ? std::optional<at::Tensor>(ql) : std::nullopt, bmask, fmask,
                               /*bias=*/std::nullopt, alibi, /*i0=*/0, /*j0=*/0, L, S, causal, window_left,
                               window_right, /*seed=*/0, /*dropout_threshold=*/0, sc, softcap, /*dropout_p=*/0.0);
  const int64_t E = v.size(3);
  // The output in (B, L, H, E) storage, returned as a (B, H, L, E) view: a model's
  // out.transpose(1, 2).contiguous() is then free (SDPA's CPU kernel does the same).
  const RowStrides os{L * H * E, E, H * E};
  // The kernel writes q's dtype (the inputs', or float32 when they were widened up front) or float32.
  at::Tensor out = at::empty_strided({B, H, L, E}, {os.b, os.h, os.r, 1}, q.options());
  at::Tensor lse = at::empty({B, H, L}, q.options().dtype(at::kFloat));
  if (out.numel() != 0 || lse.numel() != 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "attnkit_fused_attention", [&] {
      if constexpr (!std::is_same_v<scalar_t, double>) {
        // half_gemm: 1 = half-precision products, 0 = half inputs widened tile by tile (the caller
        // decides: engines/kernel/fused.py half_products, the rule of the forward/backward ops too).
        run_forward<scalar_t>(half_gemm == 0, p, q, k, v, out, os, lse, nullptr, nullptr);
      }
    });
  }
  return {out.scalar_type() == dt ? out : out.to(dt), lse};
}
}  // namespace attnkit_fused
