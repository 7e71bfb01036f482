// The C entry points: validate -> plan -> executor at GetWorkspaceSize; check -> run at the
// run call. Everything device-specific sits behind RunForward / RunBackward (src/cpu/).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <unordered_set>

#include "cpu/kernels.h"
#include "cpu/simd.h"
#include "error.h"
#include "executor.h"
#include "msda/msda.h"
#include "plan.h"
#include "tensor.h"
#include "threads.h"
#include "validate.h"

namespace msda {
namespace {

// Whether an on/off environment switch is on: unset or anything but "0".
bool SwitchOn(const char* name) {
  const char* env = std::getenv(name);
  return env == nullptr || std::strcmp(env, "0") != 0;
}

// The planner's view of the machine: the thread count for this call, and three switches
// read once, for measuring what a technique buys: MSDA_PREFETCH=0 turns the kernels' software
// prefetch off, MSDA_HEAD_MAJOR=0 the head-major value copies, MSDA_BY_HEAD=0 the backward's
// by-head mode (leaving the counting sort).
msda::Machine ThisMachine() {
  static const bool prefetch = SwitchOn("MSDA_PREFETCH");
  static const bool head_major = SwitchOn("MSDA_HEAD_MAJOR");
  static const bool by_head = SwitchOn("MSDA_BY_HEAD");
  return msda::Machine{msda::ResolveNumThreads(), prefetch, head_major, by_head};
}

thread_local std::string tls_error;

std::mutex& RegistryMutex() {
  static std::mutex* mutex = new std::mutex();
  return *mutex;
}
std::unordered_set<const msdaExecutor*>& Registry() {
  static auto* registry = new std::unordered_set<const msdaExecutor*>();
  return *registry;
}

// The caller's workspace may have any alignment (the header promises nothing), while the
// kernels want 64-byte aligned scratch: callers are asked for kWorkspaceAlignment - 1 bytes
// more than the plan needs, and the run starts at the first aligned byte.
constexpr uint64_t kWorkspaceAlignment = 64;

uint64_t CallerWorkspaceBytes(const Plan& plan) {
  return plan.workspace_bytes == 0 ? 0 : plan.workspace_bytes + kWorkspaceAlignment - 1;
}

void* AlignWorkspace(void* workspace) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(workspace);
  const uintptr_t aligned = (address + kWorkspaceAlignment - 1) & ~(kWorkspaceAlignment - 1);
  return static_cast<char*>(workspace) + (aligned - address);
}

// Shared tail of both GetWorkspaceSize calls: the plan becomes an executor.
msdaStatus MakeExecutor(const Problem& problem, const Params& params, const Plan& plan,
                        uint64_t* workspace_size, msdaExecutor** executor) {
  msdaExecutor* e = new (std::nothrow) msdaExecutor();
  if (e == nullptr) return Refuse(MSDA_ERROR_OUT_OF_MEMORY, "executor: out of host memory");
  e->problem = problem;
  e->params = params;
  e->plan = plan;
  RegisterExecutor(e);
  *workspace_size = CallerWorkspaceBytes(plan);
  *executor = e;
  return MSDA_SUCCESS;
}

// Checks shared by both run calls; on success the executor is live and of the right kind.
msdaStatus CheckRun(const void* workspace, uint64_t workspace_size, msdaExecutor* executor,
                    Direction direction) {
  if (executor == nullptr) return Refuse(MSDA_ERROR_INVALID_EXECUTOR, "executor: is NULL");
  if (!IsLiveExecutor(executor)) {
    return Refuse(MSDA_ERROR_INVALID_EXECUTOR,
                  "executor: not a live executor (already released by a run call, destroyed, "
                  "or never created by msda)");
  }
  if (executor->plan.direction != direction) {
    return Refuse(MSDA_ERROR_INVALID_EXECUTOR,
                  direction == Direction::kForward
                      ? "executor: was made by msdaBackwardGetWorkspaceSize; run it with "
                        "msdaBackward"
                      : "executor: was made by msdaForwardGetWorkspaceSize; run it with "
                        "msdaForward");
  }
  const uint64_t needed = CallerWorkspaceBytes(executor->plan);
  if (workspace_size < needed) {
    return Refuse(MSDA_ERROR_WORKSPACE_TOO_SMALL,
                  "workspace: workspaceSize is " + std::to_string(workspace_size) +
                      " bytes but this executor needs " + std::to_string(needed));
  }
  if (needed > 0 && workspace == nullptr) {
    return Refuse(MSDA_ERROR_WORKSPACE_TOO_SMALL, "workspace: is NULL but this executor needs " +
                                                      std::to_string(needed) + " bytes");
  }
  return MSDA_SUCCESS;
}

template <typename RunFn>
msdaStatus RunAndRelease(void* workspace, uint64_t workspace_size, msdaExecutor* executor,
                         Direction direction, RunFn run) {
  ClearError();
  msdaStatus status = CheckRun(workspace, workspace_size, executor, direction);
  if (status == MSDA_ERROR_INVALID_EXECUTOR) return status;
  if (status == MSDA_SUCCESS) {
    try {
      run(*executor, AlignWorkspace(workspace));
    } catch (const std::bad_alloc&) {
      status = Refuse(MSDA_ERROR_OUT_OF_MEMORY, "executor: out of host memory while running");
    } catch (...) {
      status = Refuse(MSDA_ERROR_INTERNAL, "executor: unexpected exception while running");
    }
  }
  if (!executor->repeatable) ReleaseExecutor(executor);
  return status;
}

}  // namespace

msdaStatus Refuse(msdaStatus status, std::string message) {
  tls_error = std::move(message);
  return status;
}
void ClearError() { tls_error.clear(); }
const char* LastErrorMessage() { return tls_error.c_str(); }

void RegisterExecutor(msdaExecutor* executor) {
  std::lock_guard<std::mutex> lock(RegistryMutex());
  Registry().insert(executor);
}
bool IsLiveExecutor(const msdaExecutor* executor) {
  std::lock_guard<std::mutex> lock(RegistryMutex());
  return Registry().count(executor) > 0;
}
bool ReleaseExecutor(msdaExecutor* executor) {
  {
    std::lock_guard<std::mutex> lock(RegistryMutex());
    if (Registry().erase(executor) == 0) return false;
  }
  delete executor;
  return true;
}

}  // namespace msda

using msda::Refuse;

extern "C" {

int32_t msdaGetVersion(void) { return MSDA_VERSION; }

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

msdaStatus msdaForwardGetWorkspaceSize(const msdaTensor* value, const msdaTensor* spatialShapes,
                                       const msdaTensor* levelStartIndex,
                                       const msdaTensor* samplingLocations,
                                       const msdaTensor* attentionWeights, msdaTensor* output,
                                       uint64_t* workspaceSize, msdaExecutor** executor) {
  msda::ClearError();
  if (workspaceSize == nullptr) return Refuse(MSDA_ERROR_NULL_POINTER, "workspaceSize: is NULL");
  if (executor == nullptr) return Refuse(MSDA_ERROR_NULL_POINTER, "executor: is NULL");
  *workspaceSize = 0;
  *executor = nullptr;
  try {
    msda::CallTensors call;
    call.value = value;
    call.spatial_shapes = spatialShapes;
    call.level_start_index = levelStartIndex;
    call.sampling_locations = samplingLocations;
    call.attention_weights = attentionWeights;
    call.output = output;
    msda::Problem problem;
    msda::Params params;
    msdaStatus status = msda::ValidateForward(call, &problem, &params);
    if (status != MSDA_SUCCESS) return status;
    msda::Plan plan;
    if (!msda::MakeForwardPlan(problem, msda::ThisMachine(), &plan)) {
      return Refuse(MSDA_ERROR_LIMIT_EXCEEDED, "workspace: a size the plan needs overflows int64");
    }
    return msda::MakeExecutor(problem, params, plan, workspaceSize, executor);
  } catch (const std::bad_alloc&) {
    return Refuse(MSDA_ERROR_OUT_OF_MEMORY, "executor: out of host memory while planning");
  }
}

msdaStatus msdaForward(void* workspace, uint64_t workspaceSize, msdaExecutor* executor,
                       msdaStream stream) {
  (void)stream;  // The CPU backend runs synchronously on the calling thread and its pool.
  return msda::RunAndRelease(workspace, workspaceSize, executor, msda::Direction::kForward,
                             [](const msdaExecutor& e, void* ws) { msda::cpu::RunForward(e, ws); });
}

msdaStatus msdaBackwardGetWorkspaceSize(
    const msdaTensor* value, const msdaTensor* spatialShapes, const msdaTensor* levelStartIndex,
    const msdaTensor* samplingLocations, const msdaTensor* attentionWeights,
    const msdaTensor* gradOutput, msdaTensor* gradValue, msdaTensor* gradSamplingLocations,
    msdaTensor* gradAttentionWeights, uint64_t* workspaceSize, msdaExecutor** executor) {
  msda::ClearError();
  if (workspaceSize == nullptr) return Refuse(MSDA_ERROR_NULL_POINTER, "workspaceSize: is NULL");
  if (executor == nullptr) return Refuse(MSDA_ERROR_NULL_POINTER, "executor: is NULL");
  *workspaceSize = 0;
  *executor = nullptr;
  try {
    msda::CallTensors call;
    call.value = value;
    call.spatial_shapes = spatialShapes;
    call.level_start_index = levelStartIndex;
    call.sampling_locations = samplingLocations;
    call.attention_weights = attentionWeights;
    call.grad_output = gradOutput;
    call.grad_value = gradValue;
    call.grad_sampling_locations = gradSamplingLocations;
    call.grad_attention_weights = gradAttentionWeights;
    msda::Problem problem;
    msda::Params params;
    msda::GradientSet grads;
    msdaStatus status = msda::ValidateBackward(call, &problem, &params, &grads);
    if (status != MSDA_SUCCESS) return status;
    msda::Plan plan;
    if (!msda::MakeBackwardPlan(problem, msda::ThisMachine(), grads, &plan)) {
      return Refuse(MSDA_ERROR_LIMIT_EXCEEDED, "workspace: a size the plan needs overflows int64");
    }
    return msda::MakeExecutor(problem, params, plan, workspaceSize, executor);
  } catch (const std::bad_alloc&) {
    return Refuse(MSDA_ERROR_OUT_OF_MEMORY, "executor: out of host memory while planning");
  }
}

msdaStatus msdaBackward(void* workspace, uint64_t workspaceSize, msdaExecutor* executor,
                        msdaStream stream) {
  (void)stream;
  return msda::RunAndRelease(
      workspace, workspaceSize, executor, msda::Direction::kBackward,
      [](const msdaExecutor& e, void* ws) { msda::cpu::RunBackward(e, ws); });
}

msdaStatus msdaSetExecutorRepeatable(msdaExecutor* executor) {
  msda::ClearError();
  if (!msda::IsLiveExecutor(executor)) {
    return Refuse(MSDA_ERROR_INVALID_EXECUTOR, "executor: NULL or not a live executor");
  }
  executor->repeatable = true;
  return MSDA_SUCCESS;
}

msdaStatus msdaDestroyExecutor(msdaExecutor* executor) {
  msda::ClearError();
  if (executor == nullptr) return MSDA_SUCCESS;
  if (!msda::ReleaseExecutor(executor)) {
    return Refuse(MSDA_ERROR_INVALID_EXECUTOR,
                  "executor: not a live executor (already released or destroyed)");
  }
  return MSDA_SUCCESS;
}

msdaStatus msdaSetNumThreads(int32_t numThreads) {
  msda::ClearError();
  if (numThreads < 0) {
    return Refuse(MSDA_ERROR_INVALID_VALUE,
                  "numThreads: must be >= 0 (0 = default), got " + std::to_string(numThreads));
  }
  msda::SetThreadLocalNumThreads(numThreads);
  return MSDA_SUCCESS;
}

int32_t msdaGetNumThreads(void) { return msda::ResolveNumThreads(); }

int64_t msdaExecutorDescribe(const msdaExecutor* executor, char* buffer, uint64_t bufferSize) {
  if (!msda::IsLiveExecutor(executor)) return -1;
  std::string text = msda::DescribePlan(executor->problem, executor->plan);
  std::string targets;
  for (const std::string& t : msda::cpu::AvailableTargets())
    targets += (targets.empty() ? "" : " ") + t;
  text +=
      "simd target: " + std::string(msda::cpu::ActiveTarget()) + " (available: " + targets + ")\n";
  if (buffer != nullptr && bufferSize > 0) {
    const size_t n = std::min<size_t>(text.size(), bufferSize - 1);
    std::memcpy(buffer, text.data(), n);
    buffer[n] = '\0';
  }
  return static_cast<int64_t>(text.size());
}

const char* msdaGetLastErrorMessage(void) { return msda::LastErrorMessage(); }

int64_t msdaDataTypeSize(msdaDataType dtype) {
  // Any integer may arrive from C; check it as an integer (see msdaCreateTensor).
  int32_t raw;
  static_assert(sizeof(dtype) == sizeof(raw), "C enums are int-sized");
  std::memcpy(&raw, &dtype, sizeof raw);
  if (raw < MSDA_FLOAT32 || raw > MSDA_INT64) return 0;
  return msda::ElementSize(dtype);
}

const char* msdaStatusString(msdaStatus status) {
  // Any integer may arrive from C; switch on it as an integer (see msdaCreateTensor).
  int32_t raw;
  static_assert(sizeof(status) == sizeof(raw), "C enums are int-sized");
  std::memcpy(&raw, &status, sizeof raw);
  switch (raw) {
    case MSDA_SUCCESS:
      return "MSDA_SUCCESS";
    case MSDA_ERROR_NULL_POINTER:
      return "MSDA_ERROR_NULL_POINTER";
    case MSDA_ERROR_INVALID_RANK:
      return "MSDA_ERROR_INVALID_RANK";
    case MSDA_ERROR_SHAPE_MISMATCH:
      return "MSDA_ERROR_SHAPE_MISMATCH";
    case MSDA_ERROR_INVALID_DTYPE:
      return "MSDA_ERROR_INVALID_DTYPE";
    case MSDA_ERROR_INVALID_DEVICE:
      return "MSDA_ERROR_INVALID_DEVICE";
    case MSDA_ERROR_INVALID_LAYOUT:
      return "MSDA_ERROR_INVALID_LAYOUT";
    case MSDA_ERROR_INVALID_VALUE:
      return "MSDA_ERROR_INVALID_VALUE";
    case MSDA_ERROR_LIMIT_EXCEEDED:
      return "MSDA_ERROR_LIMIT_EXCEEDED";
    case MSDA_ERROR_WORKSPACE_TOO_SMALL:
      return "MSDA_ERROR_WORKSPACE_TOO_SMALL";
    case MSDA_ERROR_INVALID_EXECUTOR:
      return "MSDA_ERROR_INVALID_EXECUTOR";
    case MSDA_ERROR_OUT_OF_MEMORY:
      return "MSDA_ERROR_OUT_OF_MEMORY";
    case MSDA_ERROR_INTERNAL:
      return "MSDA_ERROR_INTERNAL";
  }
  return "MSDA_ERROR_UNKNOWN";
}

}  // extern "C"
