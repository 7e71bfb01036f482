// Per-target backward, the by-head strategy for grad_value (see BackwardPlan in plan.h and
// docs/design.md): each (batch, head) is a task that walks its queries in order and adds every
// contribution straight into its worker's accumulator of that head's rows. Included once per
// SIMD target by backward.cc.

// Per-target include guard: foreach_target toggles HWY_TARGET_TOGGLE between passes.
#if defined(MSDA_SRC_CPU_BACKWARD_BY_HEAD_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MSDA_SRC_CPU_BACKWARD_BY_HEAD_INL_H_
#undef MSDA_SRC_CPU_BACKWARD_BY_HEAD_INL_H_
#else
#define MSDA_SRC_CPU_BACKWARD_BY_HEAD_INL_H_
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>

#include "cpu/backward_points-inl.h"
#include "cpu/prefetch.h"
#include "cpu/rows-inl.h"
#include "cpu/value_copy.h"
#include "hwy/highway.h"
#include "threads.h"

HWY_BEFORE_NAMESPACE();
namespace msda {
namespace cpu {
namespace HWY_NAMESPACE {

// The by-head sink: contributions added to the head's accumulator rows [keys][dims], left
// corner first, as the counting sort's reduction adds a pair entry.
template <typename T, typename Loc, typename Acc>
struct HeadAccumulator {
  static constexpr bool kAddsRows = true;
  static constexpr bool kWritesEntries = false;
  const BackwardPoints<T, Loc, Acc>& k;
  Acc* rows;
  int64_t row_stride;  // Between key rows of `rows`, in Acc elements.
  // Each key's value row (the head's copy) follows its accumulator row.
  bool interleaved_rows;

  void Pair(int64_t left, int64_t right, Acc coef_left, Acc coef_right, int64_t, int64_t,
            const Acc* g_row) const {
    const int64_t dims = k.p.dims;
    if (left >= 0 && right >= 0) {
      AxpyRowPair<Acc>(rows + left * row_stride, coef_left, rows + right * row_stride, coef_right,
                       g_row, dims);
      return;
    }
    if (left >= 0) AxpyRow<Acc>(rows + left * row_stride, coef_left, g_row, dims);
    if (right >= 0) AxpyRow<Acc>(rows + right * row_stride, coef_right, g_row, dims);
  }

  // The dots and contributions of all points in one sweep when value rows are contiguous and
  // dims is 1, 2, 4, 8 or 16 whole vectors: grad_output's row stays in registers for all
  // points and every corner is branch-free. A corner off the map reads a zero value row (its
  // dot is set to 0 afterwards, as the general loop does) and adds its contribution to a
  // spare accumulator row, never read: one per corner in the thread's scratch, so that such
  // additions do not wait on each other. The four dots of a point are stored together and
  // turned into rows by corner at the end. Same operations in the same order as the general
  // loop (DotRows4, AxpyRowPair), so the same bits. Returns false where it does not apply.
  bool Sweep(int64_t num_points, const float* g_row, const T* value, int64_t key_stride,
             const Corners& c, const float* coefs, float* dots, int thread_index) const {
#if HWY_TARGET != HWY_SCALAR && !HWY_HAVE_SCALABLE
    const int64_t n = static_cast<int64_t>(hn::Lanes(hn::ScalableTag<float>()));
    const int64_t vectors = k.p.dims % n == 0 ? k.p.dims / n : 0;
    const Fused f{num_points, g_row, value, key_stride, c, coefs, dots, thread_index};
    return interleaved_rows ? SweepAny<true>(RowVectors{}, vectors, f)
                            : SweepAny<false>(RowVectors{}, vectors, f);
#else
    (void)num_points, (void)g_row, (void)value, (void)key_stride, (void)c, (void)coefs;
    (void)dots, (void)thread_index;
    return false;
#endif
  }

#if HWY_TARGET != HWY_SCALAR && !HWY_HAVE_SCALABLE
  struct Fused {
    int64_t num_points;
    const float* g_row;
    const T* value;
    int64_t key_stride;
    const Corners& c;
    const float* coefs;
    float* dots;
    int thread_index;
  };
  // The row lengths, in whole vectors, that the sweep is instantiated for.
  using RowVectors = std::integer_sequence<int, 1, 2, 4, 8, 16>;

  // The instance whose row length matches; false when `vectors` is not in the list.
  template <bool kInterleaved, int... kVectors>
  bool SweepAny(std::integer_sequence<int, kVectors...>, int64_t vectors, const Fused& f) const {
    return ((vectors == kVectors && SweepOf<kVectors, kInterleaved>(f)) || ...);
  }

  template <int V, bool kInterleaved>
  bool SweepOf(const Fused& f) const {
    const hn::ScalableTag<float> d;
    const hn::RebindToSigned<decltype(d)> di;
    const int64_t n = static_cast<int64_t>(hn::Lanes(d));
    using Vec = hn::Vec<decltype(d)>;
    Vec g[V];
    for (int v = 0; v < V; ++v) g[v] = hn::LoadU(d, f.g_row + v * n);
    char* const scratch = k.Scratch(f.thread_index);
    const int64_t stride = f.c.stride;
    float* const dots4 = reinterpret_cast<float*>(scratch + k.plan.scratch.point_work) +
                         kPointWorkDots4 * stride;  // [points][4]
    // Byte addresses and strides in locals: the stores to the rows may not alias them.
    char* const spare = scratch + k.plan.scratch.spare_row;
    // Spare row c: an accumulator row, then a value row of zeros (ByHead::Run zeroes them),
    // as in the head's buffer.
    const int64_t row_bytes = V * n * int64_t{sizeof(float)};  // One accumulator row.
    const char* const zero_value = spare + row_bytes;
    char* const acc_rows = reinterpret_cast<char*>(rows);
    const int64_t key_row_bytes = row_stride * int64_t{sizeof(float)};
    const char* const value_bytes = reinterpret_cast<const char*>(f.value);
    const int64_t value_row_bytes = f.key_stride * int64_t{sizeof(T)};
    const int32_t* const corner_rows = f.c.rows;
    for (int64_t i = 0; i < f.num_points; ++i) {
      const int32_t r[4] = {corner_rows[i], corner_rows[stride + i], corner_rows[2 * stride + i],
                            corner_rows[3 * stride + i]};
      // A point outside the gate (all four rows -1) has nothing to add; its dots are masked.
      if ((r[0] & r[1] & r[2] & r[3]) < 0) continue;
      const T* row[4];
      float* acc[4];
      for (int c = 0; c < 4; ++c) {
        char* const a = r[c] >= 0 ? acc_rows + r[c] * key_row_bytes : spare + 2 * c * row_bytes;
        acc[c] = reinterpret_cast<float*>(a);
        if constexpr (kInterleaved) {
          row[c] = reinterpret_cast<const T*>(a + row_bytes);
        } else {
          row[c] = reinterpret_cast<const T*>(r[c] >= 0 ? value_bytes + r[c] * value_row_bytes
                                                        : zero_value);
        }
      }
      Vec a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
      for (int v = 0; v < V; ++v) {
        a0 = hn::MulAdd(g[v], LoadRow(d, row[0] + v * n), a0);
        a1 = hn::MulAdd(g[v], LoadRow(d, row[1] + v * n), a1);
        a2 = hn::MulAdd(g[v], LoadRow(d, row[2] + v * n), a2);
        a3 = hn::MulAdd(g[v], LoadRow(d, row[3] + v * n), a3);
      }
      SumLanes4(d, a0, a1, a2, a3, dots4 + 4 * i);
      for (int c = 0; c < 4; ++c) {
        const Vec coef = hn::Set(d, f.coefs[c * stride + i]);
        for (int v = 0; v < V; ++v) {
          hn::StoreU(hn::MulAdd(coef, g[v], hn::LoadU(d, acc[c] + v * n)), d, acc[c] + v * n);
        }
      }
    }
    // Dots by corner, 0 for corners off the map. The rows are padded to whole vectors.
    for (int64_t i = 0; i < f.num_points; i += n) {
      Vec by_corner[4];
      hn::LoadInterleaved4(d, dots4 + 4 * i, by_corner[0], by_corner[1], by_corner[2],
                           by_corner[3]);
      for (int c = 0; c < 4; ++c) {
        const auto on_map = hn::RebindMask(
            d, hn::Not(hn::Lt(hn::LoadU(di, f.c.rows + c * stride + i), hn::Zero(di))));
        hn::StoreU(hn::IfThenElseZero(on_map, by_corner[c]), d, f.dots + c * stride + i);
      }
    }
    return true;
  }
#endif
};

template <typename T, typename Loc, typename Acc>
struct ByHead {
  const BackwardPoints<T, Loc, Acc>& k;

  static constexpr int64_t kQueriesAhead = 6;
  static constexpr int64_t kZeroBlockBytes = int64_t{1} << 20;
  // (batch, query, head)'s slices of the locations, weights and grad_output, and of the
  // location and weight gradients: every cache line they touch.
  void PrefetchQuery(int64_t b, int64_t q, int64_t h) const {
    const Params& prm = k.prm;
    const int64_t points = k.NumPoints();
    const int64_t loc_bytes = 2 * points * int64_t{sizeof(Loc)};
    const int64_t attn_bytes = points * int64_t{sizeof(T)};
    PrefetchSpan(k.LocAt(b, q, h, 0), loc_bytes);
    PrefetchSpan(k.AttnAt(b, q, h, 0), attn_bytes);
    PrefetchSpan(k.GradOutAt(b, q, h), k.p.dims * int64_t{sizeof(T)});
    if (prm.grad_loc != nullptr) {
      const LocationStrides& s = prm.grad_loc_strides;
      PrefetchSpan(static_cast<const Loc*>(prm.grad_loc) + b * s.batch + q * s.query + h * s.head,
                   loc_bytes);
    }
    if (prm.grad_attn != nullptr) {
      const WeightStrides& s = prm.grad_attn_strides;
      PrefetchSpan(static_cast<const T*>(prm.grad_attn) + b * s.batch + q * s.query + h * s.head,
                   attn_bytes);
    }
  }

  // Task (batch, head) on worker w uses the worker's buffer: per key an accumulator row and,
  // with interleaved_rows, a copy of the key's value row.
  void Run() const {
    const Problem& p = k.p;
    const BackwardPlan& plan_b = k.bp();
    const int64_t dims = p.dims;
    const ValueStrides& st = k.prm.grad_value_strides;
    // In place: grad_value is T == Acc, each batch item's [keys][heads][dims] dense.
    const bool in_place = plan_b.head_rows_in_grad_value;
    if (in_place) {  // Zeroed by the workers, in blocks of kZeroBlockBytes.
      const int64_t item_bytes = p.keys * p.heads * dims * int64_t{sizeof(Acc)};
      const int64_t blocks = (item_bytes + kZeroBlockBytes - 1) / kZeroBlockBytes;
      ParallelFor(plan_b.head_workers, p.batch * blocks, [&](int64_t task, int) {
        const int64_t b = task / blocks, offset = task % blocks * kZeroBlockBytes;
        std::memset(
            static_cast<char*>(k.prm.grad_value) + b * st.batch * int64_t{sizeof(Acc)} + offset, 0,
            static_cast<size_t>(std::min(kZeroBlockBytes, item_bytes - offset)));
      });
    }
    ParallelFor(plan_b.head_workers, p.batch * p.heads, [&](int64_t task, int worker) {
      const int64_t b = task / p.heads, h = task % p.heads;
      char* buffer = k.workspace + plan_b.head_buffers_offset + worker * plan_b.head_buffer_bytes;
      const int64_t row_bytes = plan_b.head_row_bytes;
      const HeadAccumulator<T, Loc, Acc> sink =
          in_place ? HeadAccumulator<T, Loc, Acc>{k,
                                                  static_cast<Acc*>(k.prm.grad_value) +
                                                      b * st.batch + h * dims,
                                                  st.key, false}
                   : HeadAccumulator<T, Loc, Acc>{k, reinterpret_cast<Acc*>(buffer),
                                                  row_bytes / static_cast<int64_t>(sizeof(Acc)),
                                                  plan_b.interleaved_rows};
      // The spare rows' value halves read as zeros (HeadAccumulator::Sweep).
      std::memset(k.Scratch(worker) + k.plan.scratch.spare_row, 0, 8 * sizeof(Acc) * dims);
      HeadRows<T> rows = k.RowsOf(b, h);
      for (int64_t key = 0; !in_place && key < p.keys; ++key) {
        char* row = buffer + key * row_bytes;
        std::memset(row, 0, sizeof(Acc) * dims);  // All-zero bits are 0.0.
        if (!plan_b.interleaved_rows) continue;
        CopyRow(rows.value + key * rows.key_stride, rows.dim_stride, dims,
                reinterpret_cast<T*>(row + sizeof(Acc) * dims));
      }
      if (plan_b.interleaved_rows) {
        rows = HeadRows<T>{reinterpret_cast<const T*>(buffer + sizeof(Acc) * dims),
                           row_bytes / static_cast<int64_t>(sizeof(T)), 1};
      }
      Acc* g_row = reinterpret_cast<Acc*>(k.Scratch(worker) + k.plan.scratch.grad_row);
      for (int64_t q = 0; q < p.queries; ++q) {
        // One head's slices of the per-query tensors are a few hundred bytes apart from one
        // query to the next, across pages every few queries, where the hardware prefetchers
        // stop: fetch them a few queries ahead.
        if (q + kQueriesAhead < p.queries) PrefetchQuery(b, q + kQueriesAhead, h);
        k.PointsOfHead(b, q, h, 0, g_row, sink, rows, worker);
      }
      if (in_place) return;
      T* grad_value = static_cast<T*>(k.prm.grad_value) + b * st.batch + h * st.head;
      for (int64_t key = 0; key < p.keys; ++key) {
        k.WriteGradValueRow(sink.rows + key * sink.row_stride, grad_value + key * st.key);
      }
    });
  }
};

}  // namespace HWY_NAMESPACE
}  // namespace cpu
}  // namespace msda
HWY_AFTER_NAMESPACE();

#endif  // MSDA_SRC_CPU_BACKWARD_BY_HEAD_INL_H_ (per-target guard)
