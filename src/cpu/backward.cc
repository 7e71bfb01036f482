// Backward. Location and weight gradients are per point (backward_points-inl.h). grad_value
// is a reduction over points, done without atomics by one of two strategies the plan chooses
// (BackwardPlan in plan.h; docs/design.md): by head (backward_by_head-inl.h), where each
// (batch, head) task adds its contributions straight into an accumulator of that head's rows,
// or by a counting sort of the contributions by key block (backward_counting_sort-inl.h).
// Either way every element of grad_value is summed in the same order, (query, head, level,
// point, corner) ascending, whatever the thread count, so results are bitwise reproducible
// and the two strategies agree. The strategy is a compile-time policy: the sink a point's
// contributions go to.
//
// This file is compiled once per SIMD target (Highway's foreach_target); RunBackward at the
// bottom dispatches to the best one.
#undef HWY_TARGET_INCLUDE
// clang-format off
#define HWY_TARGET_INCLUDE "cpu/backward.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// clang-format on

#include <algorithm>
#include <cstdint>

#include "cpu/backward_by_head-inl.h"
#include "cpu/backward_counting_sort-inl.h"
#include "cpu/backward_points-inl.h"
#include "cpu/dispatch.h"
#include "cpu/kernels.h"
#include "cpu/simd.h"
#include "cpu/value_copy.h"
#include "hwy/highway.h"
#include "threads.h"

HWY_BEFORE_NAMESPACE();
namespace msda {
namespace cpu {
namespace HWY_NAMESPACE {

// Without a value gradient: tasks are (batch, chunk of queries), nothing is shared between
// them.
template <typename T, typename Loc, typename Acc>
void RunPointGradients(const BackwardPoints<T, Loc, Acc>& k) {
  const Problem& p = k.p;
  const int64_t chunk = k.bp().chunk_queries;
  const int64_t chunks = (p.queries + chunk - 1) / chunk;
  const NoValueGradient<Acc> sink;
  ParallelFor(k.plan.num_threads, p.batch * chunks, [&](int64_t task, int thread_index) {
    const int64_t b = task / chunks;
    const int64_t q_begin = (task % chunks) * chunk;
    const int64_t q_end = std::min(p.queries, q_begin + chunk);
    Acc* g_row = reinterpret_cast<Acc*>(k.Scratch(thread_index) + k.plan.scratch.grad_row);
    for (int64_t q = q_begin; q < q_end; ++q) {
      for (int64_t h = 0; h < p.heads; ++h) {
        k.PointsOfHead(b, q, h, 0, g_row, sink, k.RowsOf(b, h), thread_index);
      }
    }
  });
}

void RunBackwardTarget(const msdaExecutor& e, void* workspace) {
  const BackwardPlan& bp = e.plan.backward;
  const GradientSet& grads = bp.grads;
  if (!grads.value && !grads.locations && !grads.weights) return;
  if (e.problem.batch == 0) return;  // No gradient element.
  DispatchTypes(e.problem.value_dtype, e.problem.loc_dtype, [&](auto t, auto loc, auto acc) {
    using T = decltype(t);
    using Loc = decltype(loc);
    using Acc = decltype(acc);
    char* ws = static_cast<char*>(workspace);
    const bool copy = grads.value && bp.head_major;
    const BackwardPoints<T, Loc, Acc> kernel{
        {MakeKernelContext(e, workspace)},
        ValueRows<T>{e.problem, e.params,
                     copy ? reinterpret_cast<const T*>(ws + bp.value_copy_offset) : nullptr}};
    if (!grads.value) {
      RunPointGradients(kernel);
    } else if (bp.by_head) {
      ByHead<T, Loc, Acc>{kernel}.Run();
    } else {
      CountingSort<T, Loc, Acc>{kernel}.Run();
    }
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace cpu
}  // namespace msda
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace msda {
namespace cpu {

HWY_EXPORT(RunBackwardTarget);

void RunBackward(const msdaExecutor& e, void* workspace) {
  SelectTargetOnce();
  HWY_DYNAMIC_DISPATCH(RunBackwardTarget)(e, workspace);
}

}  // namespace cpu
}  // namespace msda
#endif  // HWY_ONCE
