// The CPU backend: runs an executor's plan on the calling thread and the msda thread pool.
#ifndef MSDA_SRC_CPU_KERNELS_H_
#define MSDA_SRC_CPU_KERNELS_H_

#include "executor.h"

namespace msda {
namespace cpu {

// workspace holds at least executor.plan.workspace_bytes bytes, contents undefined.
void RunForward(const msdaExecutor& executor, void* workspace);
void RunBackward(const msdaExecutor& executor, void* workspace);

}  // namespace cpu
}  // namespace msda

#endif  // MSDA_SRC_CPU_KERNELS_H_
