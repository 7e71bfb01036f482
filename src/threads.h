// A small persistent thread pool. ParallelFor runs tasks 0..n-1 on up to num_threads threads,
// the caller included, handing tasks out dynamically. The caller always takes part and waits
// only for tasks that were started, so concurrent callers (each with their own executor)
// never deadlock: if the pool is busy, the caller does the work itself.
#ifndef MSDA_SRC_THREADS_H_
#define MSDA_SRC_THREADS_H_

#include <cstdint>
#include <functional>

namespace msda {

// fn(task, thread_index) with thread_index in [0, num_threads); each thread index is used by
// one thread at a time, so it may pick per-thread scratch.
void ParallelFor(int num_threads, int64_t num_tasks,
                 const std::function<void(int64_t task, int thread_index)>& fn);

// The thread count a plan made on this thread uses: msdaSetNumThreads's value if > 0, else
// MSDA_NUM_THREADS if set, else the hardware's.
int ResolveNumThreads();
void SetThreadLocalNumThreads(int num_threads);
int ThreadLocalNumThreads();

}  // namespace msda

#endif  // MSDA_SRC_THREADS_H_
