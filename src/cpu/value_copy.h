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
