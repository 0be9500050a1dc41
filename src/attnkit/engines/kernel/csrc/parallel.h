// Work scheduling shared by the forward and backward kernels.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

namespace attnkit_fused {

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

// Causal work is triangular: visiting blocks as 0, n-1, 1, n-2, ... gives each thread's
// contiguous chunk of items an even mix of light and heavy blocks.
inline int64_t zigzag(int64_t t, int64_t n) { return t % 2 == 0 ? t / 2 : n - 1 - t / 2; }

// Float results below the normal range (|x| < 2^-126) are 0 on this thread while the guard lives
// (MXCSR's flush-to-zero bit; inputs are read as they are). exp() of a score about 90 below its
// row's max is such a number, and an Intel core takes a microcode assist for every one it makes:
// ALiBi's far keys made the forward 1.3x a plain one on a Xeon (AMD EPYC: no assist, 1.04x).
// Such a weight is below 2^-126 of the row's largest (1), so no float32 sum can see it.
struct FlushDenormalResults {
#if defined(__x86_64__) || defined(_M_X64)
  const unsigned int previous = _mm_getcsr();
  FlushDenormalResults() { _mm_setcsr(previous | _MM_FLUSH_ZERO_ON); }
  ~FlushDenormalResults() { _mm_setcsr(previous); }
#endif
};

}  // namespace attnkit_fused
