// A small persistent thread pool. ParallelFor runs tasks 0..n-1 on up to num_threads threads,
// the caller included, handing tasks out dynamically. The caller always takes part and waits
// only for tasks that were started, so concurrent callers (each with their own executor)
// never deadlock: if the pool is busy, the caller does the work itself.
//
// Bounded: a call uses at most kMaxNumThreads threads; a worker that finds no work for
// kDefaultIdleMs exits (the next call that needs it starts a new one); no wait spins. When
// the system refuses a new thread the call runs on the threads there are, the caller's
// included, with the same results.
#ifndef MSDA_SRC_THREADS_H_
#define MSDA_SRC_THREADS_H_

#include <atomic>
#include <cstdint>
#include <functional>

#include "msda/msda.h"

namespace msda {

constexpr int kMaxNumThreads = MSDA_MAX_NUM_THREADS;
constexpr int kDefaultIdleMs = 1000;

// Pool settings msda's tests change (testing.h): how long an idle worker waits before it
// exits, and how many more threads may be created (-1: as many as the system allows).
extern std::atomic<int> idle_ms;
extern std::atomic<int> creations_left;

// fn(task, thread_index) with thread_index in [0, num_threads); each thread index is used by
// one thread at a time, so it may pick per-thread scratch.
void ParallelFor(int num_threads, int64_t num_tasks,
                 const std::function<void(int64_t task, int thread_index)>& fn);

// The thread count a plan made on this thread uses: msdaSetNumThreads's value if > 0, else
// MSDA_NUM_THREADS if set, else the hardware's.
int ResolveNumThreads();
void SetThreadLocalNumThreads(int num_threads);
int ThreadLocalNumThreads();

// The pool's workers alive now (the caller threads not counted).
int PoolWorkers();

// msdaSetParallelRunner: ParallelFor on this thread hands its sections to runner (null: the
// pool).
void SetThreadLocalRunner(msdaParallelRunner runner, void* user);

}  // namespace msda

#endif  // MSDA_SRC_THREADS_H_
