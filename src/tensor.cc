// msdaTensor: creation (the C entry points) and the layout arithmetic validation uses.
#include "tensor.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <new>
#include <numeric>
#include <string>

#include "error.h"

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
  order.reserve(t.dims.size());
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

using msda::Refuse;

extern "C" {

msdaTensor* msdaCreateTensor(const int64_t* dims, uint64_t ndim, msdaDataType dtype,
                             const int64_t* strides, int64_t offset, msdaDeviceType device,
                             int32_t deviceId, void* data) {
  msda::ClearError();
  if (ndim > static_cast<uint64_t>(msda::kMaxRank)) {
    Refuse(MSDA_ERROR_INVALID_RANK, "tensor: ndim " + std::to_string(ndim) +
                                        " is more than the supported " +
                                        std::to_string(msda::kMaxRank));
    return nullptr;
  }
  if (ndim > 0 && dims == nullptr) {
    Refuse(MSDA_ERROR_NULL_POINTER, "tensor: dims is NULL but ndim > 0");
    return nullptr;
  }
  // A C caller can pass any integer for an enum. Reading such a value as the C++ enum type is
  // undefined, so the raw integers are checked before the enums are used.
  int32_t raw_dtype, raw_device;
  static_assert(sizeof(dtype) == sizeof(raw_dtype) && sizeof(device) == sizeof(raw_device),
                "C enums are int-sized");
  std::memcpy(&raw_dtype, &dtype, sizeof raw_dtype);
  std::memcpy(&raw_device, &device, sizeof raw_device);
  if (raw_dtype < MSDA_FLOAT32 || raw_dtype > MSDA_INT64) {
    Refuse(MSDA_ERROR_INVALID_DTYPE, "tensor: unknown dtype " + std::to_string(raw_dtype));
    return nullptr;
  }
  if (raw_device != MSDA_DEVICE_CPU && raw_device != MSDA_DEVICE_CUDA) {
    Refuse(MSDA_ERROR_INVALID_DEVICE, "tensor: unknown device " + std::to_string(raw_device));
    return nullptr;
  }
  if (offset < 0) {
    Refuse(MSDA_ERROR_INVALID_LAYOUT, "tensor: offset must be >= 0, got " + std::to_string(offset));
    return nullptr;
  }
  for (uint64_t i = 0; i < ndim; ++i) {
    if (dims[i] < 0) {
      Refuse(MSDA_ERROR_INVALID_LAYOUT,
             "tensor: dim " + std::to_string(i) + " must be >= 0, got " + std::to_string(dims[i]));
      return nullptr;
    }
    if (strides != nullptr && strides[i] < 0) {
      Refuse(MSDA_ERROR_INVALID_LAYOUT, "tensor: stride " + std::to_string(i) +
                                            " must be >= 0, got " + std::to_string(strides[i]));
      return nullptr;
    }
  }
  msdaTensor* t = new (std::nothrow) msdaTensor();
  if (t == nullptr) {
    Refuse(MSDA_ERROR_OUT_OF_MEMORY, "tensor: out of host memory");
    return nullptr;
  }
  t->dims.assign(dims, dims + ndim);
  t->strides.resize(ndim);
  if (strides != nullptr) {
    t->strides.assign(strides, strides + ndim);
  } else {
    // Contiguous row-major; saturate rather than overflow, validation reports the size.
    int64_t stride = 1;
    for (uint64_t i = ndim; i-- > 0;) {
      t->strides[i] = stride;
      if (__builtin_mul_overflow(stride, std::max<int64_t>(dims[i], 1), &stride)) {
        stride = INT64_MAX;
      }
    }
  }
  t->offset = offset;
  t->dtype = dtype;
  t->device = device;
  t->device_id = deviceId;
  t->data = data;
  return t;
}

msdaStatus msdaDestroyTensor(msdaTensor* tensor) {
  msda::ClearError();
  delete tensor;
  return MSDA_SUCCESS;
}

int64_t msdaDataTypeSize(msdaDataType dtype) {
  // Any integer may arrive from C; check it as an integer (see msdaCreateTensor).
  int32_t raw;
  static_assert(sizeof(dtype) == sizeof(raw), "C enums are int-sized");
  std::memcpy(&raw, &dtype, sizeof raw);
  if (raw < MSDA_FLOAT32 || raw > MSDA_INT64) return 0;
  return msda::ElementSize(dtype);
}

}  // extern "C"
