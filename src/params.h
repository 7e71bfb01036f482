// The layout of a call's tensors (strides, pointer-free: the planner reads it) and the
// pointers and strides a kernel needs (FlashAttention's params struct), bound at planning
// time. Pointers already include the tensor offset; strides are in elements.
#ifndef MSDA_SRC_PARAMS_H_
#define MSDA_SRC_PARAMS_H_

#include <cstdint>

namespace msda {

// Strides in elements, named by dimension (FlashAttention's q_batch_stride style).
struct ValueStrides {  // value and grad_value: [batch, keys, heads, dims]
  int64_t batch = 0, key = 0, head = 0, dim = 0;
};
struct WeightStrides {  // attention weights and gradient: [batch, queries, heads, levels, points]
  int64_t batch = 0, query = 0, head = 0, level = 0, point = 0;
};
struct LocationStrides {  // sampling locations and gradient: [..., levels, points, 2]
  int64_t batch = 0, query = 0, head = 0, level = 0, point = 0, xy = 0;
};
struct RowStrides {  // output and grad_output: [batch, queries, heads * dims]
  int64_t batch = 0, query = 0, channel = 0;
};

struct Strides {
  ValueStrides value_strides;
  LocationStrides loc_strides;
  WeightStrides attn_strides;
  RowStrides out_strides;
  RowStrides grad_out_strides;
  ValueStrides grad_value_strides;
  LocationStrides grad_loc_strides;
  WeightStrides grad_attn_strides;
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
