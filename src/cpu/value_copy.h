// The head-major value copy of the forward and backward (see ForwardPlan in plan.h).
#ifndef MSDA_SRC_CPU_VALUE_COPY_H_
#define MSDA_SRC_CPU_VALUE_COPY_H_

#include <algorithm>
#include <cstdint>

#include "params.h"
#include "shape.h"

namespace msda {
namespace cpu {

// Keys [k_begin, k_end) of one batch item: copy[h][k][d] = value[batch, k, h, d], whatever the
// strides of value.
template <typename T>
void CopyHeadMajor(const Problem& p, const Params& prm, int64_t batch, int64_t k_begin,
                   int64_t k_end, T* copy) {
  const T* value = static_cast<const T*>(prm.value) + batch * prm.value_stride[0];
  for (int64_t k = k_begin; k < k_end; ++k) {
    for (int64_t h = 0; h < p.heads; ++h) {
      const T* src = value + k * prm.value_stride[1] + h * prm.value_stride[2];
      T* dst = copy + (h * p.keys + k) * p.dims;
      if (prm.value_stride[3] == 1) {
        std::copy(src, src + p.dims, dst);
      } else {
        for (int64_t d = 0; d < p.dims; ++d) dst[d] = src[d * prm.value_stride[3]];
      }
    }
  }
}

}  // namespace cpu
}  // namespace msda

#endif  // MSDA_SRC_CPU_VALUE_COPY_H_
