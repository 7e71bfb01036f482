// Forward: out[b, q, h*D + d] = sum over (l, p) of A * bilinear(value)[d].
//
// A tile is (batch, head group, query block). For each (query, head) the kernel first
// computes, for all L*P points, the key rows of the in-map corners and their weights (already
// multiplied by the attention weight) into per-thread scratch, then gathers those rows into D
// accumulators held in SIMD registers (GatherRows in rows-inl.h): the coordinate math runs in
// one pass and the gathers in a tight loop over a compact corner list. On the SIMD path the
// next (query, head)'s list is built before the current one is gathered, which gives the core
// independent work to overlap with the gathers' cache misses. In head-major mode each batch
// item's value is first copied [heads][keys][dims] into the workspace and the gathers read
// the copy.
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

#include "cpu/dispatch.h"
#include "cpu/geometry-inl.h"
#include "cpu/kernel_context.h"
#include "cpu/kernels.h"
#include "cpu/prefetch.h"
#include "cpu/rows-inl.h"
#include "cpu/sampling.h"
#include "cpu/simd.h"
#include "cpu/value_copy.h"
#include "hwy/highway.h"
#include "threads.h"

HWY_BEFORE_NAMESPACE();
namespace msda {
namespace cpu {
namespace HWY_NAMESPACE {

template <typename T, typename Loc, typename Acc>
struct ForwardKernel : KernelContext {
  // The rows to gather: the caller's value, or this batch item's head-major copy.
  ValueRows<T> value_rows;

  const T* ValueOf(int64_t batch, int64_t head) const { return value_rows.Of(batch, head); }
  int64_t KeyStride() const { return value_rows.KeyStride(); }
  int64_t DimStride() const { return value_rows.DimStride(); }

  void RunTile(int64_t tile, int thread_index) const {
    const ForwardPlan& f = plan.forward;
    const int64_t block = tile % f.num_query_blocks;
    const int64_t group = (tile / f.num_query_blocks) % f.num_head_groups;
    const int64_t batch = tile / f.tiles_per_batch();
    const int64_t q_begin = block * f.query_block;
    const int64_t q_end = std::min(p.queries, q_begin + f.query_block);
    const int64_t h_begin = group * f.heads_per_tile;
    const int64_t h_end = std::min(p.heads, h_begin + f.heads_per_tile);
    if constexpr (std::is_same<Acc, float>::value) {  // fp32 or half-typed locations.
      if (levels != nullptr) {
        return RunTilePipelined(batch, q_begin, q_end, h_begin, h_end, thread_index);
      }
    }
    for (int64_t q = q_begin; q < q_end; ++q) {
      for (int64_t head = h_begin; head < h_end; ++head) RunQuery(batch, q, head, thread_index);
    }
  }

  // The SIMD-geometry path, software pipelined over the tile's (query, head) items: the corner
  // list of item i + 1 is built before the rows of item i are gathered, so that the out-of-order
  // core overlaps the two (encoder shape: 1.05-1.15x against building each list just before
  // its gathers).
  void RunTilePipelined(int64_t batch, int64_t q_begin, int64_t q_end, int64_t h_begin,
                        int64_t h_end, int thread_index) const {
    const ScratchLayout& s = plan.scratch;
    char* scratch = Scratch(thread_index);
    int32_t* rows[2] = {reinterpret_cast<int32_t*>(scratch + s.corner_offsets),
                        reinterpret_cast<int32_t*>(scratch + s.next_rows)};
    float* weights[2] = {reinterpret_cast<float*>(scratch + s.corner_weights),
                         reinterpret_cast<float*>(scratch + s.next_weights)};
    Acc* acc = reinterpret_cast<Acc*>(scratch + s.row);
    const int64_t key_stride = KeyStride();
    const int64_t dim_stride = DimStride();
    const int64_t heads = h_end - h_begin;
    const int64_t items = (q_end - q_begin) * heads;
    // Without the head-major copy the value rows mostly miss the caches (docs/design.md):
    // the next item's rows are fetched while this one's are gathered, two for every two
    // corners gathered (RowPrefetch). The copy's rows are mostly cached, and prefetching them
    // gains nothing.
    const bool prefetch_rows = !plan.forward.head_major && dim_stride == 1;
    int64_t count = BuildCornerList(batch, q_begin, h_begin, scratch, rows[0], weights[0]);
    // Item i is (q, head); (q1, head1) is item i + 1, stepped without dividing.
    int64_t q = q_begin, head = h_begin;
    for (int64_t i = 0; i < items; ++i) {
      const int cur = static_cast<int>(i & 1);
      int64_t q1 = q, head1 = head + 1;
      if (head1 == h_end) q1 = q + 1, head1 = h_begin;
      int64_t next_count = 0;
      RowPrefetch ahead;
      if (i + 1 < items) {
        next_count = BuildCornerList(batch, q1, head1, scratch, rows[1 - cur], weights[1 - cur]);
        if (prefetch_rows) {
          ahead = RowPrefetch(ValueOf(batch, head1), rows[1 - cur], next_count,
                              key_stride * int64_t{sizeof(T)}, p.dims * int64_t{sizeof(T)});
        }
      }
      if (heads == 1 && q + kQueriesAhead < q_end) {
        PrefetchQuery(batch, q + kQueriesAhead, head);
      }
      const T* value = ValueOf(batch, head);
      if (dim_stride == 1) {
        if (prefetch_rows) {
          GatherRows<T, Acc>(value, rows[cur], key_stride, weights[cur], count, p.dims, acc, ahead);
        } else {
          GatherRows<T, Acc>(value, rows[cur], key_stride, weights[cur], count, p.dims, acc);
        }
      } else {
        std::fill(acc, acc + p.dims, Acc(0));
        for (int64_t k = 0; k < count; ++k) {
          Axpy<T, Acc>(acc, weights[cur][k], value + int64_t{rows[cur][k]} * key_stride, dim_stride,
                       p.dims);
        }
      }
      Write(static_cast<T*>(prm.out), batch, q, head, acc);
      count = next_count;
      q = q1, head = head1;
    }
  }

  // A tile of one head walks its queries' slices of loc, attn and out, hundreds of bytes apart
  // and across a page every few queries, where the hardware prefetchers stop: fetch the
  // slices of the query kQueriesAhead ahead.
  static constexpr int64_t kQueriesAhead = 6;
  void PrefetchQuery(int64_t batch, int64_t q, int64_t head) const {
    const int64_t points = p.TotalPoints();
    PrefetchSpan(static_cast<const Loc*>(prm.loc) + batch * prm.loc_strides.batch +
                     q * prm.loc_strides.query + head * prm.loc_strides.head,
                 2 * points * int64_t{sizeof(Loc)});
    PrefetchSpan(static_cast<const T*>(prm.attn) + batch * prm.attn_strides.batch +
                     q * prm.attn_strides.query + head * prm.attn_strides.head,
                 points * int64_t{sizeof(T)});
    PrefetchSpan(static_cast<const T*>(prm.out) + batch * prm.out_strides.batch +
                     q * prm.out_strides.query + head * p.dims * prm.out_strides.channel,
                 p.dims * int64_t{sizeof(T)});
  }

  // The SIMD geometry of one (batch, query, head): the in-map corners' key rows and weights
  // (bilinear times attention), compacted corner by corner in point order. Returns the count.
  int64_t BuildCornerList(int64_t batch, int64_t q, int64_t head, char* scratch, int32_t* kept_rows,
                          float* weights) const {
    const ScratchLayout& s = plan.scratch;
    const Loc* loc = static_cast<const Loc*>(prm.loc) + batch * prm.loc_strides.batch +
                     q * prm.loc_strides.query + head * prm.loc_strides.head;
    const T* attn = static_cast<const T*>(prm.attn) + batch * prm.attn_strides.batch +
                    q * prm.attn_strides.query + head * prm.attn_strides.head;
    const int64_t stride = (p.TotalPoints() + 63) / 64 * 64;
    int32_t* rows = reinterpret_cast<int32_t*>(scratch + s.corner_rows_by_corner);
    float* by_corner = reinterpret_cast<float*>(scratch + s.corner_weights_by_corner);
    PointCorners(
        p, *levels,
        PointLocations(loc, p.TotalPoints(), reinterpret_cast<float*>(scratch + s.point_locations)),
        rows, by_corner, stride, nullptr, nullptr);
    // Fold the attention weights into the corner weights.
    const hn::ScalableTag<float> d;
    const int64_t n = static_cast<int64_t>(hn::Lanes(d));
    const int64_t points = p.TotalPoints();
    int64_t i = 0;
    for (; i + n <= points; i += n) {
      const auto a = LoadRow(d, attn + i);
      for (int c = 0; c < 4; ++c) {
        float* w = by_corner + c * stride + i;
        hn::StoreU(hn::Mul(hn::LoadU(d, w), a), d, w);
      }
    }
    for (; i < points; ++i) {
      const float a = Load<float>(attn + i);
      for (int c = 0; c < 4; ++c) by_corner[c * stride + i] *= a;
    }
    // Compaction: keep the in-map corners, corner by corner, in point order.
    int64_t count = 0;
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
    // AVX-512 compresses natively; elsewhere Highway emulates it with tables, which costs more
    // than the scalar loop below. Register-form compress plus a full store (the lists are
    // padded by 64 lanes): the memory form of vpcompress is microcoded and slow on AMD Zen 4.
    const hn::RebindToSigned<decltype(d)> di;
    const auto zero_i = hn::Zero(di);
    for (int c = 0; c < 4; ++c) {
      for (int64_t i = 0; i < points; i += n) {
        const auto r = hn::LoadU(di, rows + c * stride + i);
        const auto w = hn::LoadU(d, by_corner + c * stride + i);
        const auto keep =
            hn::And(hn::FirstN(di, static_cast<size_t>(points - i)), hn::Not(hn::Lt(r, zero_i)));
        hn::StoreU(hn::Compress(w, hn::RebindMask(d, keep)), d, weights + count);
        hn::StoreU(hn::Compress(r, keep), di, kept_rows + count);
        count += static_cast<int64_t>(hn::CountTrue(di, keep));
      }
    }
#else
    for (int c = 0; c < 4; ++c) {
      for (int64_t i = 0; i < points; ++i) {
        // Branch-free: every slot is written, only in-map corners advance.
        const int32_t r = rows[c * stride + i];
        kept_rows[count] = r;
        weights[count] = by_corner[c * stride + i];
        count += r >= 0;
      }
    }
#endif
    return count;
  }

  // One (batch, query, head) on the scalar geometry path: out[batch, q, head * D + d] for
  // every d.
  void RunQuery(int64_t batch, int64_t q, int64_t head, int thread_index) const {
    const ScratchLayout& s = plan.scratch;
    char* scratch = Scratch(thread_index);
    int64_t* offsets = reinterpret_cast<int64_t*>(scratch + s.corner_offsets);  // [L * P * 4]
    Acc* weights = reinterpret_cast<Acc*>(scratch + s.corner_weights);          // [L * P * 4]
    Acc* acc = reinterpret_cast<Acc*>(scratch + s.row);                         // [D]

    const T* value = ValueOf(batch, head);
    const int64_t key_stride = KeyStride();
    const int64_t dim_stride = DimStride();
    const Loc* loc = static_cast<const Loc*>(prm.loc) + batch * prm.loc_strides.batch +
                     q * prm.loc_strides.query + head * prm.loc_strides.head;
    const T* attn = static_cast<const T*>(prm.attn) + batch * prm.attn_strides.batch +
                    q * prm.attn_strides.query + head * prm.attn_strides.head;
    T* out = static_cast<T*>(prm.out);
    int64_t count = 0;
    for (int64_t l = 0; l < p.num_levels(); ++l) {
      const Level& level = p.levels[l];
      const int64_t first = p.TensorPoint(l);
      const Loc* loc_lp = loc + l * prm.loc_strides.level + first * prm.loc_strides.point;
      const T* attn_lp = attn + l * prm.attn_strides.level + first * prm.attn_strides.point;
      for (int64_t pt = 0; pt < p.LevelPoints(l); ++pt) {
        const Acc x = Load<Acc>(loc_lp + pt * prm.loc_strides.point);
        const Acc y = Load<Acc>(loc_lp + pt * prm.loc_strides.point + prm.loc_strides.xy);
        const PointGeometry<Acc> g = Locate<Acc>(level, p.sampling, x, y);
        if (!g.inside) continue;
        const Acc a = Load<Acc>(attn_lp + pt * prm.attn_strides.point);
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
    T* out_q = out + batch * prm.out_strides.batch + q * prm.out_strides.query +
               head * p.dims * prm.out_strides.channel;
    if (plan.flat_rows) {
      NarrowRow<T, Acc>(acc, p.dims, out_q);
    } else {
      for (int64_t d = 0; d < p.dims; ++d) Store<Acc>(out_q + d * prm.out_strides.channel, acc[d]);
    }
  }
};

void RunForwardTarget(const msdaExecutor& e, void* workspace) {
  // No output element (and, with every tensor empty, no bound on the point count).
  if (e.problem.batch == 0 || e.problem.queries == 0) return;
  const ForwardPlan& f = e.plan.forward;
  char* ws = static_cast<char*>(workspace);
  DispatchTypes(e.problem.value_dtype, e.problem.loc_dtype, [&](auto t, auto loc, auto acc) {
    using T = decltype(t);
    using Loc = decltype(loc);
    using Acc = decltype(acc);
    T* copy = f.head_major ? reinterpret_cast<T*>(ws + f.value_copy_offset) : nullptr;
    const ForwardKernel<T, Loc, Acc> kernel{{MakeKernelContext(e, workspace)},
                                            ValueRows<T>{e.problem, e.params, copy}};
    if (!f.head_major) {
      ParallelFor(e.plan.num_threads, f.num_tiles,
                  [&](int64_t tile, int thread_index) { kernel.RunTile(tile, thread_index); });
      return;
    }
    // One batch item at a time: copy its value head-major, then run its tiles on the copy.
    for (int64_t b = 0; b < e.problem.batch; ++b) {
      CopyBatchHeadMajor(e.problem, e.params, b, f.copy_block_keys, f.num_copy_blocks,
                         e.plan.num_threads, copy);
      ParallelFor(e.plan.num_threads, f.tiles_per_batch(), [&](int64_t tile, int thread_index) {
        kernel.RunTile(b * f.tiles_per_batch() + tile, thread_index);
      });
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

HWY_EXPORT(RunForwardTarget);

void RunForward(const msdaExecutor& e, void* workspace) {
  SelectTargetOnce();
  HWY_DYNAMIC_DISPATCH(RunForwardTarget)(e, workspace);
}

}  // namespace cpu
}  // namespace msda
#endif  // HWY_ONCE
