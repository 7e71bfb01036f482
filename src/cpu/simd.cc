#include "cpu/simd.h"

#include <strings.h>

#include <cstdlib>
#include <mutex>

#include "hwy/highway.h"
#include "hwy/targets.h"

namespace msda {
namespace cpu {
namespace {

struct Selection {
  std::vector<int64_t> available;  // Best first.
  int64_t active = 0;
};

Selection& GetSelection() {
  static Selection* selection = [] {
    auto* s = new Selection();
    s->available = hwy::SupportedAndGeneratedTargets();
    // SupportedAndGeneratedTargets lists lower bits first; Highway's higher bits are the
    // older instruction sets on x86 and Arm, so the best target has the lowest bit.
    s->active = s->available.empty() ? 0 : s->available.front();
    if (const char* wanted = std::getenv("MSDA_SIMD_TARGET")) {
      for (int64_t t : s->available) {
        if (strcasecmp(wanted, hwy::TargetName(t)) == 0) {
          s->active = t;
          // Highway's own test hook: dispatch now sees exactly this one target.
          hwy::SetSupportedTargetsForTest(t);
          break;
        }
      }
    }
    return s;
  }();
  return *selection;
}

}  // namespace

std::vector<std::string> AvailableTargets() {
  std::vector<std::string> names;
  for (int64_t t : GetSelection().available) names.push_back(hwy::TargetName(t));
  return names;
}

const char* ActiveTarget() { return hwy::TargetName(GetSelection().active); }

void SelectTargetOnce() { (void)GetSelection(); }

}  // namespace cpu
}  // namespace msda
