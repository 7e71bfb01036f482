// Timing helpers shared by the benchmarks (bench_msda, bench_loops).
#ifndef MSDA_BENCH_TIMING_H_
#define MSDA_BENCH_TIMING_H_

#include <algorithm>
#include <chrono>
#include <vector>

namespace bench {

using Clock = std::chrono::steady_clock;

inline double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// The median of `repeats` runs of fn, after a warm-up run (page faults, thread start).
template <typename Fn>
double Median(int repeats, Fn fn) {
  std::vector<double> t;
  fn();
  for (int i = 0; i < repeats; ++i) {
    const auto start = Clock::now();
    fn();
    t.push_back(Seconds(start, Clock::now()));
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// The median of `repeats` runs of fn, each after an untimed call of before (a cache flush).
template <typename Before, typename Fn>
double MedianAfter(int repeats, Before before, Fn fn) {
  std::vector<double> t;
  fn();
  for (int i = 0; i < repeats; ++i) {
    before();
    const auto start = Clock::now();
    fn();
    t.push_back(Seconds(start, Clock::now()));
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// The fastest of `repeats` runs of fn: for the machine's limits, which are the best it does (a
// median can take a run where the host lent the second vCPU elsewhere).
template <typename Fn>
double Fastest(int repeats, Fn fn) {
  double best = 0;
  for (int i = 0; i < repeats; ++i) {
    const auto start = Clock::now();
    fn();
    const double t = Seconds(start, Clock::now());
    if (i == 0 || t < best) best = t;
  }
  return best;
}

}  // namespace bench

#endif  // MSDA_BENCH_TIMING_H_
