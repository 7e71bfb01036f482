// The layout of a call's tensors (strides, pointer-free: the planner reads it) and the
// pointers and strides a kernel needs (FlashAttention's params struct), bound at planning
// time. Pointers already include the tensor offset; strides are in elements.
#ifndef MSDA_SRC_PARAMS_H_
#define MSDA_SRC_PARAMS_H_

#include <cstdint>

namespace msda {

struct Strides {
  int64_t value_stride[4] = {};      // [batch, keys, heads, dims]
  int64_t loc_stride[6] = {};        // [batch, queries, heads, levels, points, 2]
  int64_t attn_stride[5] = {};       // [batch, queries, heads, levels, points]
  int64_t out_stride[3] = {};        // [batch, queries, heads * dims]
  int64_t grad_out_stride[3] = {};   // [batch, queries, heads * dims]
  int64_t grad_value_stride[4] = {};  // like value
  int64_t grad_loc_stride[6] = {};   // like loc
  int64_t grad_attn_stride[5] = {};  // like attn
};

struct Params : Strides {
  const void* value = nullptr;
  const void* loc = nullptr;
  const void* attn = nullptr;
  void* out = nullptr;
  const void* grad_out = nullptr;
  void* grad_value = nullptr;  // Null to skip.
  void* grad_loc = nullptr;    // Null to skip.
  void* grad_attn = nullptr;   // Null to skip.
};

}  // namespace msda

#endif  // MSDA_SRC_PARAMS_H_
