// The operator's C entry points: validate -> plan -> executor at GetWorkspaceSize; check -> run
// at the run call. Everything device-specific sits behind RunForward / RunBackward (src/cpu/).
// Tensor creation is in tensor.cc, the executor registry in executor.cc, errors in error.cc.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "cpu/kernels.h"
#include "cpu/simd.h"
#include "error.h"
#include "executor.h"
#include "msda/msda.h"
#include "plan.h"
#include "tensor.h"
#include "testing.h"
#include "threads.h"
#include "validate.h"

namespace msda {
namespace {

// Whether an on/off environment switch is on: unset or anything but "0".
bool SwitchOn(const char* name) {
  const char* env = std::getenv(name);
  return env == nullptr || std::strcmp(env, "0") != 0;
}

// The planner's view of the machine: the thread count for this call and the planner options,
// by default those of the benchmark switches (MSDA_HEAD_MAJOR=0: no head-major value copies,
// MSDA_HEAD_MAJOR=always: the copies wherever they fit;
// MSDA_BY_HEAD=0: the backward's counting sort only), read once, unless a test has set them.
msda::Machine ThisMachine() {
  static const PlannerOptions from_env = [] {
    PlannerOptions o;
    o.head_major_copy = SwitchOn("MSDA_HEAD_MAJOR");
    const char* head_major = std::getenv("MSDA_HEAD_MAJOR");
    o.head_major_always = head_major != nullptr && std::strcmp(head_major, "always") == 0;
    if (!SwitchOn("MSDA_BY_HEAD")) o.backward = BackwardStrategy::kCountingSort;
    return o;
  }();
  PlannerOptions options = from_env;
  TestPlannerOptions(&options);
  return msda::Machine{msda::ResolveNumThreads(), options};
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

// What msdaExecutorSetData needs of the call's (validated) tensor arguments, in the order of
// the GetWorkspaceSize call.
void RecordBindings(const CallTensors& call, Direction direction, msdaExecutor* e) {
  const msdaTensor* const forward[] = {call.value,
                                       call.spatial_shapes,
                                       call.level_start_index,
                                       call.sampling_locations,
                                       call.attention_weights,
                                       call.output};
  const msdaTensor* const backward[] = {call.value,
                                        call.spatial_shapes,
                                        call.level_start_index,
                                        call.sampling_locations,
                                        call.attention_weights,
                                        call.grad_output,
                                        call.grad_value,
                                        call.grad_sampling_locations,
                                        call.grad_attention_weights};
  const bool is_forward = direction == Direction::kForward;
  const msdaTensor* const* tensors = is_forward ? forward : backward;
  e->num_bindings = is_forward ? 6 : 9;
  for (int i = 0; i < e->num_bindings; ++i) {
    Binding& b = e->bindings[i];
    const msdaTensor* t = tensors[i];
    b = Binding();
    b.level_table = i == 1 || i == 2;
    b.output = is_forward ? i == 5 : i >= 6;
    b.present = t != nullptr;
    if (!b.present) continue;
    b.base_bytes = t->offset * ElementSize(t->dtype);  // Validated: no overflow.
    ByteSpan(*t, &b.span_begin, &b.span_end);
  }
}

// Shared tail of both GetWorkspaceSize calls: the plan becomes an executor.
msdaStatus MakeExecutor(const CallTensors& call, const Problem& problem, const Params& params,
                        const Plan& plan, uint64_t* workspace_size, msdaExecutor** executor) {
  msdaExecutor* e = new (std::nothrow) msdaExecutor();
  if (e == nullptr) return Refuse(MSDA_ERROR_OUT_OF_MEMORY, "executor: out of host memory");
  e->problem = problem;
  e->params = params;
  e->plan = plan;
  RecordBindings(call, plan.direction, e);
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

}  // namespace msda

using msda::Refuse;

extern "C" {

int32_t msdaGetVersion(void) { return MSDA_VERSION; }

msdaStatus msdaOptionsInit(msdaOptions* options) {
  msda::ClearError();
  if (options == nullptr) return Refuse(MSDA_ERROR_NULL_POINTER, "options: is NULL");
  *options = msdaOptions();
  options->structSize = sizeof(msdaOptions);
  options->samplingMethod = MSDA_SAMPLING_BILINEAR;
  return MSDA_SUCCESS;
}

msdaStatus msdaForwardGetWorkspaceSize(const msdaTensor* value, const msdaTensor* spatialShapes,
                                       const msdaTensor* levelStartIndex,
                                       const msdaTensor* samplingLocations,
                                       const msdaTensor* attentionWeights, msdaTensor* output,
                                       uint64_t* workspaceSize, msdaExecutor** executor) {
  return msdaForwardGetWorkspaceSizeEx(value, spatialShapes, levelStartIndex, samplingLocations,
                                       attentionWeights, output, nullptr, workspaceSize, executor);
}

msdaStatus msdaForwardGetWorkspaceSizeEx(const msdaTensor* value, const msdaTensor* spatialShapes,
                                         const msdaTensor* levelStartIndex,
                                         const msdaTensor* samplingLocations,
                                         const msdaTensor* attentionWeights, msdaTensor* output,
                                         const msdaOptions* options, uint64_t* workspaceSize,
                                         msdaExecutor** executor) {
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
    call.options = options;
    msda::Problem problem;
    msda::Params params;
    msdaStatus status = msda::ValidateForward(call, &problem, &params);
    if (status != MSDA_SUCCESS) return status;
    msda::Plan plan;
    if (!msda::MakeForwardPlan(problem, params, msda::ThisMachine(), &plan)) {
      return Refuse(MSDA_ERROR_LIMIT_EXCEEDED, "workspace: a size the plan needs overflows int64");
    }
    return msda::MakeExecutor(call, problem, params, plan, workspaceSize, executor);
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
  return msdaBackwardGetWorkspaceSizeEx(
      value, spatialShapes, levelStartIndex, samplingLocations, attentionWeights, gradOutput,
      gradValue, gradSamplingLocations, gradAttentionWeights, nullptr, workspaceSize, executor);
}

msdaStatus msdaBackwardGetWorkspaceSizeEx(
    const msdaTensor* value, const msdaTensor* spatialShapes, const msdaTensor* levelStartIndex,
    const msdaTensor* samplingLocations, const msdaTensor* attentionWeights,
    const msdaTensor* gradOutput, msdaTensor* gradValue, msdaTensor* gradSamplingLocations,
    msdaTensor* gradAttentionWeights, const msdaOptions* options, uint64_t* workspaceSize,
    msdaExecutor** executor) {
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
    call.options = options;
    msda::Problem problem;
    msda::Params params;
    msda::GradientSet grads;
    msdaStatus status = msda::ValidateBackward(call, &problem, &params, &grads);
    if (status != MSDA_SUCCESS) return status;
    msda::Plan plan;
    if (!msda::MakeBackwardPlan(problem, params, msda::ThisMachine(), grads, &plan)) {
      return Refuse(MSDA_ERROR_LIMIT_EXCEEDED, "workspace: a size the plan needs overflows int64");
    }
    return msda::MakeExecutor(call, problem, params, plan, workspaceSize, executor);
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

msdaStatus msdaSetNumThreads(int32_t numThreads) {
  msda::ClearError();
  if (numThreads < 0 || numThreads > MSDA_MAX_NUM_THREADS) {
    return Refuse(MSDA_ERROR_INVALID_VALUE,
                  "numThreads: must be in [0, " + std::to_string(MSDA_MAX_NUM_THREADS) +
                      "] (0 = default), got " + std::to_string(numThreads));
  }
  msda::SetThreadLocalNumThreads(numThreads);
  return MSDA_SUCCESS;
}

int32_t msdaGetNumThreads(void) { return msda::ResolveNumThreads(); }

msdaStatus msdaSetParallelRunner(msdaParallelRunner runner, void* user) {
  msda::ClearError();
  msda::SetThreadLocalRunner(runner, user);
  return MSDA_SUCCESS;
}

}  // extern "C"
