#include "testing.h"

#include <atomic>

#include "plan.h"
#include "threads.h"

namespace msda {
namespace {

// -1: not set. Relaxed: a test sets them before the calls that read them, on its own thread
// or before starting the threads that plan.
std::atomic<int32_t> head_major_copy{-1};
std::atomic<int32_t> backward_strategy{-1};

}  // namespace

void TestPlannerOptions(PlannerOptions* options) {
  const int32_t copy = head_major_copy.load(std::memory_order_relaxed);
  const int32_t strategy = backward_strategy.load(std::memory_order_relaxed);
  if (copy >= 0) options->head_major_copy = copy != 0;
  if (strategy >= 0) options->backward = static_cast<BackwardStrategy>(strategy);
}

}  // namespace msda

extern "C" void msdaTestingSetPlannerOptions(int32_t head_major_copy, int32_t backward_strategy) {
  msda::head_major_copy.store(head_major_copy < 0 ? -1 : head_major_copy != 0,
                              std::memory_order_relaxed);
  msda::backward_strategy.store(
      backward_strategy >= 0 && backward_strategy <= 2 ? backward_strategy : -1,
      std::memory_order_relaxed);
}

extern "C" void msdaTestingSetPoolOptions(int32_t idle_ms, int32_t thread_creations) {
  msda::idle_ms.store(idle_ms < 0 ? msda::kDefaultIdleMs : idle_ms, std::memory_order_relaxed);
  msda::creations_left.store(thread_creations < 0 ? -1 : thread_creations,
                             std::memory_order_relaxed);
}

extern "C" int32_t msdaTestingPoolWorkers(void) { return msda::PoolWorkers(); }
