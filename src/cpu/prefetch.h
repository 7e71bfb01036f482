// Software prefetch for the kernels' per-query slices, which the hardware prefetchers miss
// where one head's slices lie far apart (see docs/design.md).
#ifndef MSDA_SRC_CPU_PREFETCH_H_
#define MSDA_SRC_CPU_PREFETCH_H_

#include <algorithm>
#include <cstdint>

namespace msda {
namespace cpu {

// Starts loading the cache line holding `at` into every cache level. Inline assembly on x86:
// GCC 12 silently drops __builtin_prefetch, and so Highway's Prefetch, from the per-target
// kernel templates (a plain function in the same file keeps it), which left every software
// prefetch of the kernels compiled to nothing; an asm statement cannot be dropped.
inline void PrefetchLine(const void* at) {
#if defined(__x86_64__) || defined(__i386__)
  asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(at)));
#else
  __builtin_prefetch(at, 0, 3);
#endif
}

// Every cache line of [at, at + bytes), at most 512 bytes: a row that does not start on a line
// spans one line more than its size suggests (a 128-byte row, three).
inline void PrefetchSpan(const void* at, int64_t bytes) {
  const uintptr_t first = reinterpret_cast<uintptr_t>(at) & ~uintptr_t{63};
  const uintptr_t end =
      reinterpret_cast<uintptr_t>(at) + static_cast<uintptr_t>(std::min<int64_t>(bytes, 512));
  for (uintptr_t line = first; line < end; line += 64) {
    PrefetchLine(reinterpret_cast<const void*>(line));
  }
}

}  // namespace cpu
}  // namespace msda

#endif  // MSDA_SRC_CPU_PREFETCH_H_
