// The AscendCL runtime on the host: one device (the CPU), synchronous streams, host memory in
// place of device memory. Each refusal also sets the message aclGetRecentErrMsg returns.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <utility>

#include "acl/acl.h"
#include "internal.h"

namespace msda_aclnn {
namespace {

std::atomic<bool> initialized{false};

// Streams are tagged so that destroying one twice, or a pointer that is no stream, is
// refused when the tag is wrong instead of freeing foreign memory (a best effort: a stale
// pointer may still be reused by the allocator).
constexpr uint64_t kStreamTag = 0x6d7364615f737472ull;  // "msda_str"
struct Stream {
  uint64_t tag = kStreamTag;
};

// Device allocations are 64-byte aligned: msda's kernels run fastest on such rows, and it is
// at least what device allocators give.
constexpr size_t kAlignment = 64;

// A C caller may pass any int for an enum; such a value is no valid C++ enum value, so it is
// read as the int it is rather than loaded as the enum.
template <typename Enum>
int RawValue(const Enum& value) {
  static_assert(sizeof(Enum) == sizeof(int), "the ABI passes these enums as int");
  int raw;
  std::memcpy(&raw, &value, sizeof raw);
  return raw;
}

aclError Refuse(aclError error, std::string message) {
  SetRecentError(std::move(message));
  return error;
}

aclError CheckDevice(const char* call, int32_t device_id) {
  if (device_id == 0) return ACL_SUCCESS;
  return Refuse(ACL_ERROR_RT_INVALID_DEVICEID, std::string(call) + ": device id " +
                                                   std::to_string(device_id) +
                                                   " does not exist (the host CPU is device 0)");
}

aclError Allocate(const char* call, void** ptr, size_t size) {
  if (ptr == nullptr) return Refuse(ACL_ERROR_INVALID_PARAM, std::string(call) + ": ptr is NULL");
  *ptr = nullptr;
  if (size == 0) return Refuse(ACL_ERROR_INVALID_PARAM, std::string(call) + ": size is 0");
  const size_t rounded = (size + kAlignment - 1) / kAlignment * kAlignment;
  if (rounded < size) {
    return Refuse(ACL_ERROR_RT_MEMORY_ALLOCATION, std::string(call) + ": size too large");
  }
  *ptr = std::aligned_alloc(kAlignment, rounded);
  if (*ptr == nullptr) {
    return Refuse(ACL_ERROR_RT_MEMORY_ALLOCATION, std::string(call) + ": out of host memory (" +
                                                      std::to_string(size) + " bytes)");
  }
  return ACL_SUCCESS;
}

aclError Free(const char* call, void* ptr) {
  if (ptr == nullptr) return Refuse(ACL_ERROR_INVALID_PARAM, std::string(call) + ": ptr is NULL");
  std::free(ptr);
  return ACL_SUCCESS;
}

}  // namespace
}  // namespace msda_aclnn

extern "C" {

aclError aclInit(const char* /*configPath*/) {
  if (msda_aclnn::initialized.exchange(true)) {
    return msda_aclnn::Refuse(ACL_ERROR_REPEAT_INITIALIZE, "aclInit: already initialized");
  }
  return ACL_SUCCESS;
}

aclError aclFinalize(void) {
  if (!msda_aclnn::initialized.exchange(false)) {
    return msda_aclnn::Refuse(ACL_ERROR_UNINITIALIZE, "aclFinalize: aclInit was not called");
  }
  return ACL_SUCCESS;
}

aclError aclrtSetDevice(int32_t deviceId) {
  return msda_aclnn::CheckDevice("aclrtSetDevice", deviceId);
}

aclError aclrtResetDevice(int32_t deviceId) {
  return msda_aclnn::CheckDevice("aclrtResetDevice", deviceId);
}

aclError aclrtGetDeviceCount(uint32_t* count) {
  if (count == nullptr) {
    return msda_aclnn::Refuse(ACL_ERROR_INVALID_PARAM, "aclrtGetDeviceCount: count is NULL");
  }
  *count = 1;
  return ACL_SUCCESS;
}

aclError aclrtCreateStream(aclrtStream* stream) {
  if (stream == nullptr) {
    return msda_aclnn::Refuse(ACL_ERROR_INVALID_PARAM, "aclrtCreateStream: stream is NULL");
  }
  *stream = new (std::nothrow) msda_aclnn::Stream;
  if (*stream == nullptr) {
    return msda_aclnn::Refuse(ACL_ERROR_RT_MEMORY_ALLOCATION,
                              "aclrtCreateStream: out of host memory");
  }
  return ACL_SUCCESS;
}

aclError aclrtDestroyStream(aclrtStream stream) {
  auto* s = static_cast<msda_aclnn::Stream*>(stream);
  if (s == nullptr || s->tag != msda_aclnn::kStreamTag) {
    return msda_aclnn::Refuse(ACL_ERROR_INVALID_PARAM,
                              "aclrtDestroyStream: NULL or not a stream from aclrtCreateStream");
  }
  s->tag = 0;
  delete s;
  return ACL_SUCCESS;
}

aclError aclrtSynchronizeStream(aclrtStream /*stream*/) {
  // Every call ran to completion before it returned: there is never pending work.
  return ACL_SUCCESS;
}

aclError aclrtMalloc(void** devPtr, size_t size, aclrtMemMallocPolicy policy) {
  const int raw_policy = msda_aclnn::RawValue(policy);
  if (raw_policy < ACL_MEM_MALLOC_HUGE_FIRST || raw_policy > ACL_MEM_MALLOC_NORMAL_ONLY_P2P) {
    return msda_aclnn::Refuse(ACL_ERROR_INVALID_PARAM,
                              "aclrtMalloc: unknown policy " + std::to_string(raw_policy));
  }
  return msda_aclnn::Allocate("aclrtMalloc", devPtr, size);
}

aclError aclrtFree(void* devPtr) { return msda_aclnn::Free("aclrtFree", devPtr); }

aclError aclrtMallocHost(void** hostPtr, size_t size) {
  return msda_aclnn::Allocate("aclrtMallocHost", hostPtr, size);
}

aclError aclrtFreeHost(void* hostPtr) { return msda_aclnn::Free("aclrtFreeHost", hostPtr); }

aclError aclrtMemcpy(void* dst, size_t destMax, const void* src, size_t count,
                     aclrtMemcpyKind kind) {
  using msda_aclnn::Refuse;
  const int raw_kind = msda_aclnn::RawValue(kind);
  if (raw_kind < ACL_MEMCPY_HOST_TO_HOST || raw_kind > ACL_MEMCPY_DEVICE_TO_DEVICE) {
    return Refuse(ACL_ERROR_INVALID_PARAM, "aclrtMemcpy: unknown kind " + std::to_string(raw_kind));
  }
  if (count > destMax) {
    return Refuse(ACL_ERROR_INVALID_PARAM, "aclrtMemcpy: count " + std::to_string(count) +
                                               " is more than destMax " + std::to_string(destMax));
  }
  if (count == 0) return ACL_SUCCESS;
  if (dst == nullptr || src == nullptr) {
    return Refuse(ACL_ERROR_INVALID_PARAM, "aclrtMemcpy: dst or src is NULL");
  }
  std::memmove(dst, src, count);
  return ACL_SUCCESS;
}

aclError aclrtMemset(void* devPtr, size_t maxCount, int32_t value, size_t count) {
  using msda_aclnn::Refuse;
  if (count > maxCount) {
    return Refuse(ACL_ERROR_INVALID_PARAM, "aclrtMemset: count " + std::to_string(count) +
                                               " is more than maxCount " +
                                               std::to_string(maxCount));
  }
  if (count == 0) return ACL_SUCCESS;
  if (devPtr == nullptr) return Refuse(ACL_ERROR_INVALID_PARAM, "aclrtMemset: devPtr is NULL");
  std::memset(devPtr, value, count);
  return ACL_SUCCESS;
}

}  // extern "C"
