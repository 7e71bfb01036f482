// Configure-time probe (try_run): prints the SIMD targets that Highway compiles and this CPU
// runs, so that ctest can run the kernel tests once per target.
#include <cstdio>

#include "hwy/highway.h"
#include "hwy/targets.h"

int main() {
  const char* separator = "";
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    std::printf("%s%s", separator, hwy::TargetName(target));
    separator = ";";
  }
  return 0;
}
