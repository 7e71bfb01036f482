#include "tensor.h"

#include <algorithm>
#include <limits>
#include <numeric>

namespace msda {
namespace {

bool MulOverflows(int64_t a, int64_t b, int64_t* out) { return __builtin_mul_overflow(a, b, out); }
bool AddOverflows(int64_t a, int64_t b, int64_t* out) { return __builtin_add_overflow(a, b, out); }

}  // namespace

int64_t ElementSize(msdaDataType dtype) {
  switch (dtype) {
    case MSDA_FLOAT32:
    case MSDA_INT32:
      return 4;
    case MSDA_FLOAT16:
    case MSDA_BFLOAT16:
      return 2;
    case MSDA_FLOAT64:
    case MSDA_INT64:
      return 8;
  }
  return 0;
}

const char* DataTypeName(msdaDataType dtype) {
  switch (dtype) {
    case MSDA_FLOAT32:
      return "FLOAT32";
    case MSDA_FLOAT16:
      return "FLOAT16";
    case MSDA_BFLOAT16:
      return "BFLOAT16";
    case MSDA_FLOAT64:
      return "FLOAT64";
    case MSDA_INT32:
      return "INT32";
    case MSDA_INT64:
      return "INT64";
  }
  return "UNKNOWN";
}

int64_t NumElements(const msdaTensor& t) {
  int64_t n = 1;
  for (int64_t d : t.dims) {
    if (MulOverflows(n, d, &n)) return -1;
  }
  return n;
}

bool ByteSpan(const msdaTensor& t, int64_t* begin, int64_t* end) {
  *begin = *end = 0;
  const int64_t n = NumElements(t);
  if (n < 0) return false;
  if (n == 0) return true;
  // The last element reached: offset + sum (dim - 1) * stride, all terms non-negative.
  int64_t last = t.offset;
  for (size_t i = 0; i < t.dims.size(); ++i) {
    int64_t step;
    if (MulOverflows(t.dims[i] - 1, t.strides[i], &step) || AddOverflows(last, step, &last)) {
      return false;
    }
  }
  const int64_t size = ElementSize(t.dtype);
  int64_t first_byte, last_byte;
  if (MulOverflows(t.offset, size, &first_byte) || MulOverflows(last, size, &last_byte) ||
      AddOverflows(last_byte, size, &last_byte)) {
    return false;
  }
  *begin = first_byte;
  *end = last_byte;
  return true;
}

bool SelfOverlaps(const msdaTensor& t) {
  if (NumElements(t) <= 1) return false;
  // Sorted by stride, each dimension must step past everything the smaller ones reach. This
  // is sufficient for no overlap; exotic interleavings that also do not overlap are refused.
  std::vector<size_t> order;
  for (size_t i = 0; i < t.dims.size(); ++i) {
    if (t.dims[i] > 1) order.push_back(i);
  }
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return t.strides[a] < t.strides[b]; });
  int64_t reach = 1;  // 1 + the largest offset the dimensions placed so far reach.
  for (size_t i : order) {
    if (t.strides[i] < reach) return true;
    int64_t extent;
    if (MulOverflows(t.dims[i] - 1, t.strides[i], &extent) || AddOverflows(reach, extent, &reach)) {
      return false;  // The span itself overflows; ByteSpan reports it.
    }
  }
  return false;
}

}  // namespace msda
