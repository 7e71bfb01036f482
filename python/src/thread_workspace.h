// The calling thread's workspace for msda's run calls, shared by the two native modules
// (msda._C and msda/_torch_ops.so; each keeps its own, as each has its own copy of the core).
#ifndef MSDA_PYTHON_SRC_THREAD_WORKSPACE_H_
#define MSDA_PYTHON_SRC_THREAD_WORKSPACE_H_

#include <cstdint>
#include <cstdlib>
#include <memory>

namespace msda_python {

// Kept between calls and grown when a call needs more: a fresh multi-MB allocation per call
// costs more in page faults than a small backward itself (about 10 ms for the decoder shape).
// Each thread that calls msda keeps its largest workspace so far. 64-byte aligned, like the
// plan's regions. nullptr for 0 bytes, and when the allocation fails (bytes > 0).
inline void* ThreadWorkspace(uint64_t bytes) {
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<void, Free> buffer;
  thread_local uint64_t capacity = 0;
  if (bytes == 0) return nullptr;
  if (bytes > capacity) {
    buffer.reset();
    capacity = 0;
    const uint64_t rounded = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, static_cast<size_t>(rounded));
    if (p == nullptr) return nullptr;
    buffer.reset(p);
    capacity = rounded;
  }
  return buffer.get();
}

}  // namespace msda_python

#endif  // MSDA_PYTHON_SRC_THREAD_WORKSPACE_H_
