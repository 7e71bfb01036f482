// What a GetWorkspaceSize call hands to the run call: the validated problem, the bound
// pointers and the plan. The run call only binds the workspace and executes.
#ifndef MSDA_SRC_EXECUTOR_H_
#define MSDA_SRC_EXECUTOR_H_

#include "params.h"
#include "plan.h"
#include "problem.h"

namespace msda {

// What msdaExecutorSetData needs of one tensor argument of the GetWorkspaceSize call that made
// the executor.
struct Binding {
  bool present = false;      // False for a gradient skipped (NULL) at planning.
  bool output = false;       // Written by the run.
  bool level_table = false;  // spatial_shapes, level_start_index: read at planning only.
  int64_t base_bytes = 0;    // The tensor's offset in bytes: its Params pointer is data + this.
  int64_t span_begin = 0;    // Bytes from data that the tensor reaches, [begin, end);
  int64_t span_end = 0;      // empty when it has no element.
};

// The tensor arguments in the order of the GetWorkspaceSize calls: the forward's five inputs
// and output, the backward's five inputs, grad_output and three gradients.
constexpr int kMaxBindings = 9;

}  // namespace msda

struct msdaExecutor {
  msda::Problem problem;
  msda::Params params;
  msda::Plan plan;
  bool repeatable = false;
  int num_bindings = 0;
  msda::Binding bindings[msda::kMaxBindings];
};

namespace msda {

// Executors are tracked in a registry so that a NULL, released or foreign pointer is refused
// with MSDA_ERROR_INVALID_EXECUTOR instead of being dereferenced.
void RegisterExecutor(msdaExecutor* executor);
bool IsLiveExecutor(const msdaExecutor* executor);
// Removes the executor from the registry and frees it; false if it was not live.
bool ReleaseExecutor(msdaExecutor* executor);

}  // namespace msda

#endif  // MSDA_SRC_EXECUTOR_H_
