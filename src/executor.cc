// The executor registry (a NULL, released or foreign executor is refused, never
// dereferenced) and the C entry points that act on an executor outside a run.
#include "executor.h"

#include <algorithm>
#include <cstdint>
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

msdaStatus msdaExecutorSetData(msdaExecutor* executor, void* const* data, uint64_t count) {
  msda::ClearError();
  if (!msda::IsLiveExecutor(executor)) {
    return Refuse(MSDA_ERROR_INVALID_EXECUTOR, "executor: NULL or not a live executor");
  }
  if (!executor->repeatable) {
    return Refuse(MSDA_ERROR_INVALID_EXECUTOR,
                  "executor: not repeatable (msdaSetExecutorRepeatable): a run call releases it, "
                  "so it cannot be given new data");
  }
  const bool forward = executor->plan.direction == msda::Direction::kForward;
  static const char* const kForwardNames[] = {
      "value", "spatialShapes", "levelStartIndex", "samplingLocations", "attentionWeights",
      "output"};
  static const char* const kBackwardNames[] = {"value",
                                               "spatialShapes",
                                               "levelStartIndex",
                                               "samplingLocations",
                                               "attentionWeights",
                                               "gradOutput",
                                               "gradValue",
                                               "gradSamplingLocations",
                                               "gradAttentionWeights"};
  const char* const* names = forward ? kForwardNames : kBackwardNames;
  const int n = executor->num_bindings;
  if (count != static_cast<uint64_t>(n)) {
    return Refuse(MSDA_ERROR_INVALID_VALUE, "count: this executor's GetWorkspaceSize call had " +
                                                std::to_string(n) + " tensor arguments, got " +
                                                std::to_string(count));
  }
  if (data == nullptr) return Refuse(MSDA_ERROR_NULL_POINTER, "data: is NULL");
  // Byte ranges [begin, end) the tensors reach in the new memory (empty: none).
  uintptr_t begin[msda::kMaxBindings] = {}, end[msda::kMaxBindings] = {};
  for (int i = 0; i < n; ++i) {
    const msda::Binding& b = executor->bindings[i];
    if (b.level_table) continue;  // Read at planning, never again.
    if (!b.present) {
      if (data[i] != nullptr) {
        return Refuse(MSDA_ERROR_INVALID_VALUE,
                      std::string(names[i]) +
                          ": was NULL (not computed) at planning, so its data must be NULL");
      }
      continue;
    }
    if (b.span_end == b.span_begin) continue;
    if (data[i] == nullptr) {
      return Refuse(MSDA_ERROR_NULL_POINTER,
                    std::string(names[i]) + ": data is NULL but the tensor has elements");
    }
    begin[i] = reinterpret_cast<uintptr_t>(data[i]) + static_cast<uintptr_t>(b.span_begin);
    end[i] = reinterpret_cast<uintptr_t>(data[i]) + static_cast<uintptr_t>(b.span_end);
  }
  for (int i = 0; i < n; ++i) {
    if (!executor->bindings[i].output || begin[i] == end[i]) continue;
    for (int j = 0; j < n; ++j) {
      if (j == i || begin[j] == end[j]) continue;
      if (begin[i] < end[j] && begin[j] < end[i]) {
        return Refuse(MSDA_ERROR_INVALID_LAYOUT,
                      std::string(names[i]) + ": output memory overlaps " + names[j] +
                          " (outputs must not share memory with any input or other output)");
      }
    }
  }
  auto at = [&](int i) -> char* {
    return data[i] == nullptr ? nullptr
                              : static_cast<char*>(data[i]) + executor->bindings[i].base_bytes;
  };
  msda::Params& p = executor->params;
  p.value = at(0);
  p.loc = at(3);
  p.attn = at(4);
  if (forward) {
    p.out = at(5);
  } else {
    p.grad_out = at(5);
    p.grad_value = at(6);
    p.grad_loc = at(7);
    p.grad_attn = at(8);
  }
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
