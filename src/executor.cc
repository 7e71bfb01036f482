// The executor registry (a NULL, released or foreign executor is refused, never
// dereferenced) and the C entry points that act on an executor outside a run.
#include "executor.h"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_set>

#include "cpu/simd.h"
#include "error.h"
#include "msda/msda.h"
#include "plan.h"

namespace msda {
namespace {

std::mutex& RegistryMutex() {
  static std::mutex* mutex = new std::mutex();
  return *mutex;
}
std::unordered_set<const msdaExecutor*>& Registry() {
  static auto* registry = new std::unordered_set<const msdaExecutor*>();
  return *registry;
}

}  // namespace

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

}  // extern "C"
