// Which SIMD instruction set the CPU kernels run with. Kernels are compiled once per target
// with Highway (see rows-inl.h) and dispatched at the kernel entry points only.
#ifndef MSDA_SRC_CPU_SIMD_H_
#define MSDA_SRC_CPU_SIMD_H_

#include <string>
#include <vector>

namespace msda {
namespace cpu {

// Targets this build has kernels for and this CPU can run, best first (e.g. AVX3, AVX2,
// SSE4, SSSE3, SCALAR on x86; SVE, NEON, SCALAR on Arm).
std::vector<std::string> AvailableTargets();

// The target the kernels use. By default the best available one; the MSDA_SIMD_TARGET
// environment variable, read once, picks another available one by name (for testing every
// target and for measuring SIMD against scalar). An unknown or unavailable name is ignored.
const char* ActiveTarget();

// Applies the choice above before the first dispatch; cheap after the first call.
void SelectTargetOnce();

}  // namespace cpu
}  // namespace msda

#endif  // MSDA_SRC_CPU_SIMD_H_
