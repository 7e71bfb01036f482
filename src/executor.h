// What a GetWorkspaceSize call hands to the run call: the validated problem, the bound
// pointers and the plan. The run call only binds the workspace and executes.
#ifndef MSDA_SRC_EXECUTOR_H_
#define MSDA_SRC_EXECUTOR_H_

#include "params.h"
#include "plan.h"
#include "problem.h"

struct msdaExecutor {
  msda::Problem problem;
  msda::Params params;
  msda::Plan plan;
  bool repeatable = false;
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
