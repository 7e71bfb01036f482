// The pointers and strides a kernel needs, bound at planning time (FlashAttention's params
// struct). Pointers already include the tensor offset; strides are in elements.
#ifndef MSDA_SRC_PARAMS_H_
#define MSDA_SRC_PARAMS_H_

#include <cstdint>

namespace msda {

struct Params {
  const void* value = nullptr;  // [batch, keys, heads, dims]
  int64_t value_stride[4] = {};
  const void* loc = nullptr;  // [batch, queries, heads, levels, points, 2]
  int64_t loc_stride[6] = {};
  const void* attn = nullptr;  // [batch, queries, heads, levels, points]
  int64_t attn_stride[5] = {};
  void* out = nullptr;  // [batch, queries, heads * dims]
  int64_t out_stride[3] = {};

  const void* grad_out = nullptr;  // [batch, queries, heads * dims]
  int64_t grad_out_stride[3] = {};
  void* grad_value = nullptr;  // [batch, keys, heads, dims], or null to skip.
  int64_t grad_value_stride[4] = {};
  void* grad_loc = nullptr;  // [batch, queries, heads, levels, points, 2], or null.
  int64_t grad_loc_stride[6] = {};
  void* grad_attn = nullptr;  // [batch, queries, heads, levels, points], or null.
  int64_t grad_attn_stride[5] = {};
};

}  // namespace msda

#endif  // MSDA_SRC_PARAMS_H_
