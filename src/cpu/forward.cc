// Forward: out[b, q, h*D + d] = sum over (l, p) of A * bilinear(value)[d].
//
// A tile is (batch, query block, head group). For each (query, head) the kernel first
// computes, for all L*P points, the element offsets of the in-map corners and their weights
// (already multiplied by the attention weight) into per-thread scratch, then gathers those
// rows into D accumulators held in SIMD registers (GatherRows in rows-inl.h): the coordinate
// math runs in one pass and the gathers in a tight loop over a compact corner list.
//
// This file is compiled once per SIMD target (Highway's foreach_target); RunForward at the
// bottom dispatches to the best one.
#undef HWY_TARGET_INCLUDE
// clang-format off
#define HWY_TARGET_INCLUDE "cpu/forward.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// clang-format on

#include <algorithm>

#include "cpu/kernels.h"
#include "cpu/rows-inl.h"
#include "cpu/sampling.h"
#include "cpu/simd.h"
#include "hwy/highway.h"
#include "threads.h"

HWY_BEFORE_NAMESPACE();
namespace msda {
namespace cpu {
namespace HWY_NAMESPACE {

template <typename T, typename L, typename Acc>
struct ForwardKernel {
  const Problem& p;
  const Params& prm;
  const Plan& plan;
  char* workspace;

  void RunTile(int64_t tile, int thread_index) const {
    const ForwardPlan& f = plan.forward;
    const int64_t group = tile % f.num_head_groups;
    const int64_t block = (tile / f.num_head_groups) % f.num_query_blocks;
    const int64_t batch = tile / (f.num_head_groups * f.num_query_blocks);
    const int64_t q_begin = block * f.query_block;
    const int64_t q_end = std::min(p.queries, q_begin + f.query_block);
    const int64_t h_begin = group * f.heads_per_tile;
    const int64_t h_end = std::min(p.heads, h_begin + f.heads_per_tile);
    for (int64_t q = q_begin; q < q_end; ++q) {
      for (int64_t head = h_begin; head < h_end; ++head) RunQuery(batch, q, head, thread_index);
    }
  }

  // One (batch, query, head): out[batch, q, head * D + d] for every d.
  void RunQuery(int64_t batch, int64_t q, int64_t head, int thread_index) const {
    const ScratchLayout& s = plan.scratch;
    char* scratch = workspace + thread_index * s.bytes;
    int64_t* offsets = reinterpret_cast<int64_t*>(scratch + s.corner_offsets);  // [L * P * 4]
    Acc* weights = reinterpret_cast<Acc*>(scratch + s.corner_weights);          // [L * P * 4]
    Acc* acc = reinterpret_cast<Acc*>(scratch + s.row);                         // [D]

    const T* value = static_cast<const T*>(prm.value) + batch * prm.value_stride[0] +
                     head * prm.value_stride[2];  // [keys, dims] of this (batch, head).
    const int64_t key_stride = prm.value_stride[1];
    const int64_t dim_stride = prm.value_stride[3];
    const L* loc = static_cast<const L*>(prm.loc);
    const T* attn = static_cast<const T*>(prm.attn);
    T* out = static_cast<T*>(prm.out);

    // Pass 1: geometry of every point; only in-map corners enter the list.
    int64_t count = 0;
    for (int64_t l = 0; l < p.num_levels(); ++l) {
      const Level& level = p.levels[l];
      const L* loc_lp = loc + batch * prm.loc_stride[0] + q * prm.loc_stride[1] +
                        head * prm.loc_stride[2] + l * prm.loc_stride[3];
      const T* attn_lp = attn + batch * prm.attn_stride[0] + q * prm.attn_stride[1] +
                         head * prm.attn_stride[2] + l * prm.attn_stride[3];
      for (int64_t pt = 0; pt < p.points; ++pt) {
        const Acc x = Load<Acc>(loc_lp + pt * prm.loc_stride[4]);
        const Acc y = Load<Acc>(loc_lp + pt * prm.loc_stride[4] + prm.loc_stride[5]);
        const PointGeometry<Acc> g = Locate<Acc>(level, x, y);
        if (!g.inside) continue;
        const Acc a = Load<Acc>(attn_lp + pt * prm.attn_stride[4]);
        for (int c = 0; c < 4; ++c) {
          if (g.row[c] < 0) continue;
          offsets[count] = g.row[c] * key_stride;
          weights[count] = g.weight[c] * a;
          ++count;
        }
      }
    }
    // Pass 2: gather the corner rows.
    if (dim_stride == 1) {
      GatherRows<T, Acc>(value, offsets, weights, count, p.dims, acc);
    } else {
      std::fill(acc, acc + p.dims, Acc(0));
      for (int64_t i = 0; i < count; ++i) {
        Axpy<T, Acc>(acc, weights[i], value + offsets[i], dim_stride, p.dims);
      }
    }
    T* out_q =
        out + batch * prm.out_stride[0] + q * prm.out_stride[1] + head * p.dims * prm.out_stride[2];
    for (int64_t d = 0; d < p.dims; ++d) Store<Acc>(out_q + d * prm.out_stride[2], acc[d]);
  }
};

void RunForwardTarget(const msdaExecutor& e, void* workspace) {
  DispatchTypes(e.problem.value_dtype, e.problem.loc_dtype, [&](auto t, auto l, auto acc) {
    using T = decltype(t);
    using L = decltype(l);
    using Acc = decltype(acc);
    const ForwardKernel<T, L, Acc> kernel{e.problem, e.params, e.plan,
                                          static_cast<char*>(workspace)};
    ParallelFor(e.plan.num_threads, e.plan.forward.num_tiles,
                [&](int64_t tile, int thread_index) { kernel.RunTile(tile, thread_index); });
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace cpu
}  // namespace msda
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace msda {
namespace cpu {

HWY_EXPORT(RunForwardTarget);

void RunForward(const msdaExecutor& e, void* workspace) {
  SelectTargetOnce();
  HWY_DYNAMIC_DISPATCH(RunForwardTarget)(e, workspace);
}

}  // namespace cpu
}  // namespace msda
#endif  // HWY_ONCE
