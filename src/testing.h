// Hooks for msda's own tests, exported from the library but not part of its API (no public
// header declares them): the planner options one test process sets, for example to run both
// backward strategies on one problem and compare them byte for byte.
#ifndef MSDA_SRC_TESTING_H_
#define MSDA_SRC_TESTING_H_

#include "msda/msda.h"

extern "C" {
// head_major_copy: 0 or 1, or -1 for the default; backward_strategy: a BackwardStrategy value
// (0 auto, 1 by head, 2 counting sort), or -1 for the default. Process-wide; takes effect at
// the next GetWorkspaceSize call.
MSDA_API void msdaTestingSetPlannerOptions(int32_t head_major_copy, int32_t backward_strategy);

// The thread pool: idle_ms, how long an idle worker waits for work before it exits (-1: the
// default, 1000 ms); thread_creations, how many more worker threads may be created before
// creation fails as if the system refused (-1: no limit). Process-wide.
MSDA_API void msdaTestingSetPoolOptions(int32_t idle_ms, int32_t thread_creations);
// The pool's worker threads alive now.
MSDA_API int32_t msdaTestingPoolWorkers(void);
}

namespace msda {

struct PlannerOptions;  // plan.h

// Applies the options a test has set, if any.
void TestPlannerOptions(PlannerOptions* options);

}  // namespace msda

#endif  // MSDA_SRC_TESTING_H_
