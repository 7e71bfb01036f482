// The kernels' type dispatch: from a problem's dtypes to the storage and accumulation types
// a kernel template is instantiated with.
#ifndef MSDA_SRC_CPU_DISPATCH_H_
#define MSDA_SRC_CPU_DISPATCH_H_

#include "cpu/numeric.h"
#include "msda/msda.h"

namespace msda {
namespace cpu {

// Calls fn with the kernel's storage types for a problem's dtypes: value type T, location
// type Loc and accumulation type Acc.
template <typename Fn>
void DispatchTypes(msdaDataType value_dtype, msdaDataType loc_dtype, Fn&& fn) {
  const bool loc_f32 = loc_dtype == MSDA_FLOAT32;
  switch (value_dtype) {
    case MSDA_FLOAT32:
      fn(float{}, float{}, float{});
      return;
    case MSDA_FLOAT64:
      if (loc_f32) {
        fn(double{}, float{}, double{});
      } else {
        fn(double{}, double{}, double{});
      }
      return;
    case MSDA_FLOAT16:
      if (loc_f32) {
        fn(Half{}, float{}, float{});
      } else {
        fn(Half{}, Half{}, float{});
      }
      return;
    case MSDA_BFLOAT16:
      if (loc_f32) {
        fn(BFloat16{}, float{}, float{});
      } else {
        fn(BFloat16{}, BFloat16{}, float{});
      }
      return;
    default:
      return;  // Refused by validation.
  }
}

}  // namespace cpu
}  // namespace msda

#endif  // MSDA_SRC_CPU_DISPATCH_H_
