// The internal form of msdaTensor: a strided view of caller-owned memory.
#ifndef MSDA_SRC_TENSOR_H_
#define MSDA_SRC_TENSOR_H_

#include <cstdint>
#include <vector>

#include "msda/msda.h"

struct msdaTensor {
  std::vector<int64_t> dims;
  std::vector<int64_t> strides;  // In elements, all >= 0.
  int64_t offset = 0;            // In elements.
  msdaDataType dtype = MSDA_FLOAT32;
  msdaDeviceType device = MSDA_DEVICE_CPU;
  int32_t device_id = 0;
  void* data = nullptr;
};

namespace msda {

constexpr int kMaxRank = 8;

// Bytes per element of a dtype, or 0 for an unknown enumerator.
int64_t ElementSize(msdaDataType dtype);
const char* DataTypeName(msdaDataType dtype);

// The number of elements, or -1 if it overflows int64.
int64_t NumElements(const msdaTensor& t);

// The half-open byte range [begin, end) the view can touch, relative to data. Empty views
// give begin == end == 0. Returns false if the arithmetic overflows int64.
bool ByteSpan(const msdaTensor& t, int64_t* begin, int64_t* end);

// True if two distinct index tuples of the view may address the same element.
bool SelfOverlaps(const msdaTensor& t);

// The first element's address: data + offset elements. An empty view may have NULL data (and
// any offset): its base stays NULL, since it is never dereferenced.
inline char* BasePointer(const msdaTensor& t) {
  if (t.data == nullptr) return nullptr;
  return static_cast<char*>(t.data) + t.offset * ElementSize(t.dtype);
}

}  // namespace msda

#endif  // MSDA_SRC_TENSOR_H_
