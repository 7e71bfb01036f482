// aclCreateTensor / aclDestroyTensor over msda views, and the per-thread error message.
#include <msda/msda.h>

#include <cstdint>
#include <new>
#include <string>
#include <utility>

#include "acl/acl_base.h"
#include "aclnn/acl_meta.h"
#include "internal.h"

namespace msda_aclnn {
namespace {

thread_local std::string recent_error;

// One past the last storage element the view reaches (0 for an empty view), or -1 if that
// overflows int64. msda has already checked that dims, strides and offset are >= 0.
int64_t ViewExtent(const int64_t* dims, uint64_t ndim, const int64_t* strides, int64_t offset) {
  for (uint64_t i = 0; i < ndim; ++i) {
    if (dims[i] == 0) return 0;
  }
  int64_t last = offset;
  int64_t row_major_stride = 1;
  for (uint64_t i = ndim; i-- > 0;) {
    const int64_t stride = strides != nullptr ? strides[i] : row_major_stride;
    int64_t step;
    if (__builtin_mul_overflow(dims[i] - 1, stride, &step) ||
        __builtin_add_overflow(last, step, &last) ||
        __builtin_mul_overflow(row_major_stride, dims[i], &row_major_stride)) {
      return -1;
    }
  }
  return last + 1;
}

}  // namespace

void SetRecentError(std::string message) { recent_error = std::move(message); }

bool ToMsdaDataType(aclDataType dtype, msdaDataType* out) {
  switch (dtype) {
    case ACL_FLOAT: *out = MSDA_FLOAT32; return true;
    case ACL_FLOAT16: *out = MSDA_FLOAT16; return true;
    case ACL_BF16: *out = MSDA_BFLOAT16; return true;
    case ACL_DOUBLE: *out = MSDA_FLOAT64; return true;
    case ACL_INT32: *out = MSDA_INT32; return true;
    case ACL_INT64: *out = MSDA_INT64; return true;
    default: return false;
  }
}

std::string DataTypeName(aclDataType dtype) {
  switch (dtype) {
    case ACL_DT_UNDEFINED: return "ACL_DT_UNDEFINED";
    case ACL_FLOAT: return "ACL_FLOAT";
    case ACL_FLOAT16: return "ACL_FLOAT16";
    case ACL_INT8: return "ACL_INT8";
    case ACL_INT32: return "ACL_INT32";
    case ACL_UINT8: return "ACL_UINT8";
    case ACL_INT16: return "ACL_INT16";
    case ACL_UINT16: return "ACL_UINT16";
    case ACL_UINT32: return "ACL_UINT32";
    case ACL_INT64: return "ACL_INT64";
    case ACL_UINT64: return "ACL_UINT64";
    case ACL_DOUBLE: return "ACL_DOUBLE";
    case ACL_BOOL: return "ACL_BOOL";
    case ACL_STRING: return "ACL_STRING";
    case ACL_COMPLEX64: return "ACL_COMPLEX64";
    case ACL_COMPLEX128: return "ACL_COMPLEX128";
    case ACL_BF16: return "ACL_BF16";
    case ACL_INT4: return "ACL_INT4";
    case ACL_UINT1: return "ACL_UINT1";
    case ACL_COMPLEX32: return "ACL_COMPLEX32";
  }
  return "aclDataType " + std::to_string(static_cast<int>(dtype));
}

std::string FormatName(aclFormat format) {
  switch (format) {
    case ACL_FORMAT_UNDEFINED: return "ACL_FORMAT_UNDEFINED";
    case ACL_FORMAT_NCHW: return "ACL_FORMAT_NCHW";
    case ACL_FORMAT_NHWC: return "ACL_FORMAT_NHWC";
    case ACL_FORMAT_ND: return "ACL_FORMAT_ND";
    case ACL_FORMAT_NC1HWC0: return "ACL_FORMAT_NC1HWC0";
    case ACL_FORMAT_FRACTAL_Z: return "ACL_FORMAT_FRACTAL_Z";
    case ACL_FORMAT_NC1HWC0_C04: return "ACL_FORMAT_NC1HWC0_C04";
    case ACL_FORMAT_HWCN: return "ACL_FORMAT_HWCN";
    case ACL_FORMAT_NDHWC: return "ACL_FORMAT_NDHWC";
    case ACL_FORMAT_FRACTAL_NZ: return "ACL_FORMAT_FRACTAL_NZ";
    case ACL_FORMAT_NCDHW: return "ACL_FORMAT_NCDHW";
    case ACL_FORMAT_NDC1HWC0: return "ACL_FORMAT_NDC1HWC0";
    case ACL_FRACTAL_Z_3D: return "ACL_FRACTAL_Z_3D";
    case ACL_FORMAT_NC: return "ACL_FORMAT_NC";
    case ACL_FORMAT_NCL: return "ACL_FORMAT_NCL";
  }
  return "aclFormat " + std::to_string(static_cast<int>(format));
}

}  // namespace msda_aclnn

extern "C" {

const char* aclGetRecentErrMsg(void) { return msda_aclnn::recent_error.c_str(); }

size_t aclDataTypeSize(aclDataType dataType) {
  switch (dataType) {
    case ACL_INT8: case ACL_UINT8: case ACL_BOOL: return 1;
    case ACL_FLOAT16: case ACL_BF16: case ACL_INT16: case ACL_UINT16: return 2;
    case ACL_FLOAT: case ACL_INT32: case ACL_UINT32: case ACL_COMPLEX32: return 4;
    case ACL_DOUBLE: case ACL_INT64: case ACL_UINT64: case ACL_COMPLEX64: return 8;
    case ACL_COMPLEX128: return 16;
    default: return 0;
  }
}

aclTensor* aclCreateTensor(const int64_t* viewDims, uint64_t viewDimsNum, aclDataType dataType,
                           const int64_t* stride, int64_t offset, aclFormat format,
                           const int64_t* storageDims, uint64_t storageDimsNum,
                           void* tensorData) {
  using msda_aclnn::SetRecentError;
  msdaDataType msda_dtype = MSDA_INT32;
  const bool known = msda_aclnn::ToMsdaDataType(dataType, &msda_dtype);
  msdaTensor* view = msdaCreateTensor(viewDims, viewDimsNum, msda_dtype, stride, offset,
                                      MSDA_DEVICE_CPU, 0, tensorData);
  if (view == nullptr) {
    SetRecentError(msdaGetLastErrorMessage());
    return nullptr;
  }
  if (storageDimsNum > 0) {
    // The storage dims bound the memory behind the view; a view past them would read or
    // write memory the caller did not describe.
    const char* problem = nullptr;
    int64_t storage_elements = 1;
    if (storageDims == nullptr) problem = "storageDims is NULL but storageDimsNum > 0";
    for (uint64_t i = 0; problem == nullptr && i < storageDimsNum; ++i) {
      if (storageDims[i] < 0) problem = "storage dims must be >= 0";
      if (__builtin_mul_overflow(storage_elements, storageDims[i], &storage_elements)) {
        problem = "the storage element count overflows int64";
      }
    }
    const int64_t extent = msda_aclnn::ViewExtent(viewDims, viewDimsNum, stride, offset);
    if (problem == nullptr && extent < 0) problem = "the view's extent overflows int64";
    if (problem != nullptr) {
      msdaDestroyTensor(view);
      SetRecentError(std::string("tensor: ") + problem);
      return nullptr;
    }
    if (extent > storage_elements) {
      msdaDestroyTensor(view);
      SetRecentError("tensor: the view (offset, dims and strides) reaches storage element " +
                     std::to_string(extent - 1) + " but the storage dims hold " +
                     std::to_string(storage_elements) + " elements");
      return nullptr;
    }
  }
  aclTensor* tensor = new (std::nothrow) aclTensor;
  if (tensor == nullptr) {
    msdaDestroyTensor(view);
    SetRecentError("tensor: out of host memory");
    return nullptr;
  }
  tensor->view = view;
  tensor->dtype = dataType;
  tensor->dtype_known_to_msda = known;
  tensor->format = format;
  return tensor;
}

aclnnStatus aclDestroyTensor(const aclTensor* tensor) {
  if (tensor == nullptr) return ACLNN_SUCCESS;
  msdaDestroyTensor(tensor->view);
  delete tensor;
  return ACLNN_SUCCESS;
}

}  // extern "C"
