// The value rows the kernels gather from: the caller's [batch, keys, heads, dims] tensor, or
// the head-major copy of one batch item (see ForwardPlan in plan.h), which both the forward
// and the backward make the same way.
#ifndef MSDA_SRC_CPU_VALUE_COPY_H_
#define MSDA_SRC_CPU_VALUE_COPY_H_

#include <algorithm>
#include <cstdint>

#include "params.h"
#include "problem.h"
#include "threads.h"

namespace msda {
namespace cpu {

// Starts loading the cache line holding `at` into every cache level. Inline assembly on x86:
// GCC 12 silently drops __builtin_prefetch, and so Highway's Prefetch, from the per-target
// kernel templates (a plain function in the same file keeps it), which left every software
// prefetch of the kernels compiled to nothing; an asm statement cannot be dropped.
inline void PrefetchLine(const void* at) {
#if defined(__x86_64__) || defined(__i386__)
  asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(at)));
#else
  __builtin_prefetch(at, 0, 3);
#endif
}

// Every cache line of [at, at + bytes), at most 512 bytes: a row that does not start on a line
// spans one line more than its size suggests (a 128-byte row, three).
inline void PrefetchSpan(const void* at, int64_t bytes) {
  const uintptr_t first = reinterpret_cast<uintptr_t>(at) & ~uintptr_t{63};
  const uintptr_t end =
      reinterpret_cast<uintptr_t>(at) + static_cast<uintptr_t>(std::min<int64_t>(bytes, 512));
  for (uintptr_t line = first; line < end; line += 64) {
    PrefetchLine(reinterpret_cast<const void*>(line));
  }
}

// Where the rows of one (batch, head) are, and their strides.
template <typename T>
struct ValueRows {
  const Problem& p;
  const Params& prm;
  const T* copy;  // The head-major copy of the current batch item, or null.

  // [keys, dims] of one (batch, head).
  const T* Of(int64_t batch, int64_t head) const {
    if (copy != nullptr) return copy + head * p.keys * p.dims;
    return static_cast<const T*>(prm.value) + batch * prm.value_strides.batch +
           head * prm.value_strides.head;
  }
  int64_t KeyStride() const { return copy != nullptr ? p.dims : prm.value_strides.key; }
  int64_t DimStride() const { return copy != nullptr ? 1 : prm.value_strides.dim; }
};

// dst[d] = src[d * dim_stride], d < dims: one value row into contiguous storage.
template <typename T>
void CopyRow(const T* src, int64_t dim_stride, int64_t dims, T* dst) {
  if (dim_stride == 1) {
    std::copy(src, src + dims, dst);
  } else {
    for (int64_t d = 0; d < dims; ++d) dst[d] = src[d * dim_stride];
  }
}

// Keys [k_begin, k_end) of one batch item: copy[h][k][d] = value[batch, k, h, d], whatever the
// strides of value.
template <typename T>
void CopyHeadMajor(const Problem& p, const Params& prm, int64_t batch, int64_t k_begin,
                   int64_t k_end, T* copy) {
  const T* value = static_cast<const T*>(prm.value) + batch * prm.value_strides.batch;
  for (int64_t k = k_begin; k < k_end; ++k) {
    for (int64_t h = 0; h < p.heads; ++h) {
      const T* src = value + k * prm.value_strides.key + h * prm.value_strides.head;
      CopyRow(src, prm.value_strides.dim, p.dims, copy + (h * p.keys + k) * p.dims);
    }
  }
}

// The whole head-major copy of one batch item, in blocks of block_keys keys over the threads.
template <typename T>
void CopyBatchHeadMajor(const Problem& p, const Params& prm, int64_t batch, int64_t block_keys,
                        int64_t num_blocks, int num_threads, T* copy) {
  ParallelFor(num_threads, num_blocks, [&](int64_t block, int) {
    const int64_t k_begin = block * block_keys;
    CopyHeadMajor(p, prm, batch, k_begin, std::min(p.keys, k_begin + block_keys), copy);
  });
}

}  // namespace cpu
}  // namespace msda

#endif  // MSDA_SRC_CPU_VALUE_COPY_H_
