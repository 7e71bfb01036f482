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
#include <type_traits>
#include <vector>

#include "cpu/geometry-inl.h"
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
  const PointLevels* levels;  // Non-null when the SIMD geometry pass applies.

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
    const L* loc = static_cast<const L*>(prm.loc) + batch * prm.loc_stride[0] +
                   q * prm.loc_stride[1] + head * prm.loc_stride[2];
    const T* attn = static_cast<const T*>(prm.attn) + batch * prm.attn_stride[0] +
                    q * prm.attn_stride[1] + head * prm.attn_stride[2];
    T* out = static_cast<T*>(prm.out);

    // Pass 1: geometry of every point; only in-map corners enter the list, in (level, point,
    // corner) order.
    int64_t count = 0;
    if constexpr (std::is_same<L, float>::value && std::is_same<Acc, float>::value) {
      if (levels != nullptr) {
        const int64_t stride = (p.num_levels() * p.points + 63) / 64 * 64;
        int32_t* rows = reinterpret_cast<int32_t*>(scratch + s.corner_rows_by_corner);
        float* by_corner = reinterpret_cast<float*>(scratch + s.corner_weights_by_corner);
        PointCorners(p, *levels, loc, rows, by_corner, stride, nullptr, nullptr);
        // Fold the attention weights into the corner weights.
        const hn::ScalableTag<float> df;
        const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
        const int64_t points = p.num_levels() * p.points;
        int64_t i = 0;
        for (; i + lanes <= points; i += lanes) {
          const auto a = LoadRow(df, attn + i);
          for (int c = 0; c < 4; ++c) {
            float* w = by_corner + c * stride + i;
            hn::StoreU(hn::Mul(hn::LoadU(df, w), a), df, w);
          }
        }
        for (; i < points; ++i) {
          const float a = Load<float>(attn + i);
          for (int c = 0; c < 4; ++c) by_corner[c * stride + i] *= a;
        }
        // Compaction: keep the in-map corners, corner by corner, in point order.
        int32_t* kept_rows = reinterpret_cast<int32_t*>(offsets);  // [L * P * 4 + lanes]
        const hn::ScalableTag<float> d;
        const hn::RebindToSigned<decltype(d)> di;
        const int64_t n = static_cast<int64_t>(hn::Lanes(d));
        const int64_t num_points = p.num_levels() * p.points;
        const auto zero_i = hn::Zero(di);
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
        // AVX-512 compresses natively; elsewhere Highway emulates it with tables, which costs
        // more than the scalar loop below.
        for (int c = 0; c < 4; ++c) {
          for (int64_t i = 0; i < num_points; i += n) {
            const auto r = hn::LoadU(di, rows + c * stride + i);
            const auto w = hn::LoadU(d, by_corner + c * stride + i);
            const auto keep = hn::And(hn::FirstN(di, static_cast<size_t>(num_points - i)),
                                      hn::Not(hn::Lt(r, zero_i)));
            hn::CompressStore(w, hn::RebindMask(d, keep), d, weights + count);
            count += static_cast<int64_t>(hn::CompressStore(r, keep, di, kept_rows + count));
          }
        }
#else
        (void)n;
        (void)zero_i;
        for (int c = 0; c < 4; ++c) {
          for (int64_t i = 0; i < num_points; ++i) {
            // Branch-free: every slot is written, only in-map corners advance.
            const int32_t r = rows[c * stride + i];
            kept_rows[count] = r;
            weights[count] = by_corner[c * stride + i];
            count += r >= 0;
          }
        }
#endif
        if (dim_stride == 1) {
          GatherRows<T, Acc>(value, kept_rows, key_stride, weights, count, p.dims, acc);
        } else {
          std::fill(acc, acc + p.dims, Acc(0));
          for (int64_t i = 0; i < count; ++i) {
            Axpy<T, Acc>(acc, weights[i], value + int64_t{kept_rows[i]} * key_stride, dim_stride,
                         p.dims);
          }
        }
        Write(out, batch, q, head, acc);
        return;
      }
    }
    for (int64_t l = 0; l < p.num_levels(); ++l) {
      const Level& level = p.levels[l];
      const L* loc_lp = loc + l * prm.loc_stride[3];
      const T* attn_lp = attn + l * prm.attn_stride[3];
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
    Gather(value, dim_stride, offsets, weights, count, acc);
    Write(out, batch, q, head, acc);
  }

  // Pass 2: gather the corner rows into acc [D].
  void Gather(const T* value, int64_t dim_stride, const int64_t* offsets, const Acc* weights,
              int64_t count, Acc* acc) const {
    if (dim_stride == 1) {
      GatherRows<T, Acc>(value, offsets, 1, weights, count, p.dims, acc);
    } else {
      std::fill(acc, acc + p.dims, Acc(0));
      for (int64_t i = 0; i < count; ++i) {
        Axpy<T, Acc>(acc, weights[i], value + offsets[i], dim_stride, p.dims);
      }
    }
  }

  void Write(T* out, int64_t batch, int64_t q, int64_t head, const Acc* acc) const {
    T* out_q =
        out + batch * prm.out_stride[0] + q * prm.out_stride[1] + head * p.dims * prm.out_stride[2];
    if (prm.out_stride[2] == 1) {
      NarrowRow<T, Acc>(acc, p.dims, out_q);
    } else {
      for (int64_t d = 0; d < p.dims; ++d) Store<Acc>(out_q + d * prm.out_stride[2], acc[d]);
    }
  }
};

void RunForwardTarget(const msdaExecutor& e, void* workspace) {
  PointLevels levels;
  // The forward also reads the attention weights as vectors: contiguous over (level, point).
  const bool simd_geometry = e.params.attn_stride[4] == 1 &&
                             e.params.attn_stride[3] == e.problem.points &&
                             SimdGeometryApplies(e.problem, e.params, &levels);
  DispatchTypes(e.problem.value_dtype, e.problem.loc_dtype, [&](auto t, auto l, auto acc) {
    using T = decltype(t);
    using L = decltype(l);
    using Acc = decltype(acc);
    const ForwardKernel<T, L, Acc> kernel{e.problem, e.params, e.plan,
                                          static_cast<char*>(workspace),
                                          simd_geometry ? &levels : nullptr};
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
