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

// The value rows of a corner list that a kernel will gather next, fetched a few at a time
// while it gathers the current list (GatherRows), so that the fetches spread over the gather
// instead of arriving as one burst that fills the core's miss buffers and stalls it. Row i is
// `row_bytes` at base + rows[i] * row_stride (bytes).
struct RowPrefetch {
  const char* base = nullptr;
  const int32_t* rows = nullptr;
  int64_t count = 0;       // Rows in the list; Fetch ignores indices at or past it.
  int64_t row_stride = 0;  // Bytes between key rows.
  int64_t lines = 0;       // Cache lines per row, at most 8 (512 bytes, as PrefetchSpan).

  RowPrefetch() = default;
  RowPrefetch(const void* value, const int32_t* list, int64_t n, int64_t stride_bytes,
              int64_t row_bytes)
      : base(static_cast<const char*>(value)), rows(list), count(n), row_stride(stride_bytes) {
    // Rows that all start on a line span ceil(bytes / 64) lines; others one more.
    const bool aligned =
        ((reinterpret_cast<uintptr_t>(value) | static_cast<uintptr_t>(stride_bytes)) & 63) == 0;
    lines = std::min<int64_t>((row_bytes + 63) / 64 + (aligned ? 0 : 1), 8);
  }

  void Fetch(int64_t i) const {
    if (i >= count) return;
    const char* at = base + int64_t{rows[i]} * row_stride;
    if (lines == 2) {  // 128-byte rows: D = 32 fp32, D = 64 half; the common case.
      PrefetchLine(at);
      PrefetchLine(at + 64);
      return;
    }
    // An unaligned row's last line is the one holding its last byte.
    for (int64_t l = 0; l < lines; ++l) PrefetchLine(at + 64 * l);
  }
  // Rows [i, count): what the gather's own walk did not reach.
  void FetchFrom(int64_t i) const {
    for (; i < count; ++i) Fetch(i);
  }
};

}  // namespace cpu
}  // namespace msda

#endif  // MSDA_SRC_CPU_PREFETCH_H_
