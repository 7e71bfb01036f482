#include "threads.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>

namespace msda {

// Relaxed: settings, read when a worker starts waiting or a thread is about to be created.
std::atomic<int> idle_ms{kDefaultIdleMs};
std::atomic<int> creations_left{-1};  // -1: no limit (a test sets one, testing.h).

namespace {

// One ParallelFor call. fn, num_tasks and num_threads are written before the job is queued and
// read by helpers after they dequeue it; the pool's mutex orders the two, so the atomics below
// only count.
//
// No wait here spins: helpers sleep on the pool's condition variable and the caller on the
// job's, and the caller runs tasks itself until none are left, so a call finishes on one core,
// under emulation, or when no helper ever wakes.
struct Job {
  const std::function<void(int64_t, int)>* fn = nullptr;
  int64_t num_tasks = 0;
  // Relaxed: a task number only has to be handed out once; fetch_add's atomicity gives that,
  // and nothing else is published through it.
  std::atomic<int64_t> next_task{0};
  // Relaxed, for the same reason: it hands out distinct thread indices. Index 0 is the caller's.
  std::atomic<int> next_thread_index{1};
  int num_threads = 1;
  // Counts finished tasks. Each fetch_add releases what its thread's tasks wrote; they are all
  // read-modify-writes, so they form one release sequence and the caller's acquire load that
  // sees num_tasks sees every task's writes. No thread reads results after its own fetch_add,
  // so no acquire is needed there.
  std::atomic<int64_t> done_tasks{0};
  std::mutex mutex;
  std::condition_variable finished;

  // Takes tasks until none are left; returns after the last task it ran.
  void Work(int thread_index) {
    int64_t ran = 0;
    for (;;) {
      const int64_t task = next_task.fetch_add(1, std::memory_order_relaxed);
      if (task >= num_tasks) break;
      (*fn)(task, thread_index);
      ++ran;
    }
    if (ran > 0 && done_tasks.fetch_add(ran, std::memory_order_release) + ran == num_tasks) {
      // Under the job's mutex, so the caller cannot test the predicate, miss this notify and
      // then sleep for ever.
      std::lock_guard<std::mutex> lock(mutex);
      finished.notify_all();
    }
  }
};

class Pool {
 public:
  static Pool& Get() {
    // Leaked on purpose: worker threads must not be joined during static destruction.
    // The first call publishes the pool under the thread-safe static initialisation; every
    // call reads it through the atomic, which a fork may replace. Release and acquire: a
    // thread that loads the pointer must also see the pool it points to constructed.
    static const bool initialised = [] {
      // A forked child (a PyTorch DataLoader worker, say) has none of the parent's worker
      // threads and may inherit a locked mutex: give it a fresh pool. The old one leaks.
      pthread_atfork(nullptr, nullptr,
                     [] { current.store(new Pool(), std::memory_order_release); });
      current.store(new Pool(), std::memory_order_release);
      return true;
    }();
    (void)initialised;
    return *current.load(std::memory_order_acquire);
  }

  void Run(int num_threads, int64_t num_tasks, const std::function<void(int64_t, int)>& fn) {
    auto job = std::make_shared<Job>();
    job->fn = &fn;
    job->num_tasks = num_tasks;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      // If the system refuses new threads the call runs on the helpers there are (or on the
      // caller alone): fewer thread indices are used, the results are the same.
      const int helpers = EnsureWorkers(num_threads - 1);
      job->num_threads = helpers + 1;
      for (int i = 0; i < helpers; ++i) queue_.push_back(job);
    }
    wake_.notify_all();
    job->Work(0);
    // Acquire, pairing with the helpers' release: fn's writes are visible once this returns.
    std::unique_lock<std::mutex> lock(job->mutex);
    job->finished.wait(
        lock, [&] { return job->done_tasks.load(std::memory_order_acquire) == job->num_tasks; });
    // Helpers that dequeue the job later find no task left; the shared_ptr keeps it alive
    // for them, and fn is not called after this point.
  }

 private:
  // Starts workers until there are count; returns how many there are, at most count. Under
  // mutex_.
  int EnsureWorkers(int count) {
    while (live_ < count && StartWorker()) ++live_;
    return std::min(count, live_);
  }

  // False when the system (or a test, testing.h) refuses a new thread.
  bool StartWorker() {
    int left = creations_left.load(std::memory_order_relaxed);
    while (left >= 0) {  // A test's budget of thread creations.
      if (left == 0) return false;
      if (creations_left.compare_exchange_weak(left, left - 1, std::memory_order_relaxed)) break;
    }
    try {
      std::thread([this] { Loop(); }).detach();
    } catch (const std::system_error&) {  // EAGAIN: a thread or process limit.
      return false;
    }
    return true;
  }

  // A worker sleeps on wake_ until a job is queued; after idle_ms without one it exits, so
  // a process that once asked for many threads does not keep them.
  void Loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      const auto idle = std::chrono::milliseconds(idle_ms.load(std::memory_order_relaxed));
      if (!wake_.wait_for(lock, idle, [&] { return !queue_.empty(); })) {
        --live_;  // Under mutex_: Run never counts on a worker that is leaving.
        return;
      }
      const std::shared_ptr<Job> job = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      const int index = job->next_thread_index.fetch_add(1, std::memory_order_relaxed);
      if (index < job->num_threads) job->Work(index);
      lock.lock();
    }
  }

 public:
  int LiveWorkers() {
    std::lock_guard<std::mutex> lock(mutex_);
    return live_;
  }

 private:
  static inline std::atomic<Pool*> current{nullptr};
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Job>> queue_;
  int live_ = 0;  // Workers started and not yet exited; under mutex_.
};

thread_local int tls_num_threads = 0;
thread_local msdaParallelRunner tls_runner = nullptr;
thread_local void* tls_runner_user = nullptr;

// One ParallelFor section on a caller's runner (msdaSetParallelRunner). The runner's join
// orders the calls' writes before its return, so the counters only hand out tasks and
// thread indices.
struct RunnerJob {
  const std::function<void(int64_t, int)>* fn;
  int64_t num_tasks;
  int num_threads;
  std::atomic<int64_t> next_task{0};
  // The scratch index of each call, in the order the calls start: distinct whatever indices
  // the runner passes (a runner that passed one index twice would otherwise share scratch).
  std::atomic<int> next_thread_index{0};

  void Run(int thread_index) {
    for (;;) {
      const int64_t task = next_task.fetch_add(1, std::memory_order_relaxed);
      if (task >= num_tasks) return;
      (*fn)(task, thread_index);
    }
  }

  // msdaParallelWork. A call whose index is outside [0, num_threads), or beyond the
  // num_threads-th call, takes no task (the caller runs what is left).
  static void Work(void* context, int32_t thread_index) {
    auto* job = static_cast<RunnerJob*>(context);
    if (thread_index < 0 || thread_index >= job->num_threads) return;
    const int index = job->next_thread_index.fetch_add(1, std::memory_order_relaxed);
    if (index < job->num_threads) job->Run(index);
  }
};

void RunOnRunner(int num_threads, int64_t num_tasks, const std::function<void(int64_t, int)>& fn) {
  RunnerJob job{&fn, num_tasks, num_threads};
  tls_runner(&RunnerJob::Work, &job, num_threads, tls_runner_user);
  // Whatever the runner left undone (it made no call, or only calls that took no task), on
  // the caller: every work call has returned, so any scratch index is free.
  job.Run(0);
}

int ClampThreads(long n) { return static_cast<int>(std::min<long>(n, kMaxNumThreads)); }

}  // namespace

void ParallelFor(int num_threads, int64_t num_tasks,
                 const std::function<void(int64_t task, int thread_index)>& fn) {
  if (num_tasks <= 0) return;
  if (num_threads > num_tasks) num_threads = static_cast<int>(num_tasks);
  if (num_threads <= 1) {
    for (int64_t t = 0; t < num_tasks; ++t) fn(t, 0);
    return;
  }
  if (tls_runner != nullptr) {
    RunOnRunner(num_threads, num_tasks, fn);
    return;
  }
  Pool::Get().Run(num_threads, num_tasks, fn);
}

int ResolveNumThreads() {
  if (tls_num_threads > 0) return tls_num_threads;
  if (const char* env = std::getenv("MSDA_NUM_THREADS")) {
    const long n = std::strtol(env, nullptr, 10);
    if (n > 0) return ClampThreads(n);
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? ClampThreads(static_cast<long>(hw)) : 1;
}

void SetThreadLocalNumThreads(int num_threads) { tls_num_threads = num_threads; }
void SetThreadLocalRunner(msdaParallelRunner runner, void* user) {
  tls_runner = runner;
  tls_runner_user = user;
}
int PoolWorkers() { return Pool::Get().LiveWorkers(); }
int ThreadLocalNumThreads() { return tls_num_threads; }

}  // namespace msda
