// What the forward and the backward kernels of one call both read: the problem, the caller's
// tensors and strides (Params), the plan, the workspace and the level tables of the SIMD
// geometry path. Each kernel struct derives from it and adds the value rows it gathers from.
#ifndef MSDA_SRC_CPU_KERNEL_CONTEXT_H_
#define MSDA_SRC_CPU_KERNEL_CONTEXT_H_

#include <cstdint>

#include "executor.h"
#include "params.h"
#include "plan.h"
#include "problem.h"

namespace msda {
namespace cpu {

struct KernelContext {
  const Problem& p;
  const Params& prm;
  const Plan& plan;
  char* workspace;
  const PointLevels* levels;  // Non-null when the plan takes the SIMD geometry path.

  // The thread's scratch: one slice of the workspace, laid out by plan.scratch.
  char* Scratch(int thread_index) const { return workspace + thread_index * plan.scratch.bytes; }
};

inline KernelContext MakeKernelContext(const msdaExecutor& e, void* workspace) {
  return KernelContext{e.problem, e.params, e.plan, static_cast<char*>(workspace),
                       e.plan.simd_geometry ? &e.plan.point_levels : nullptr};
}

}  // namespace cpu
}  // namespace msda

#endif  // MSDA_SRC_CPU_KERNEL_CONTEXT_H_
