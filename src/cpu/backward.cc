// Backward. Location and weight gradients are per point. grad_value is a reduction over
// points, done without atomics in one of two modes (see BackwardPlan in plan.h): by head,
// where each (batch, head) task adds its contributions straight into an accumulator of that
// head's rows (RunByHead), or by a counting sort of the contributions by key block
// (RunWithValueGradient). Either way every element of grad_value is summed in the same
// order, (query, head, level, point, corner) ascending, whatever the thread count, so results
// are bitwise reproducible and the two modes agree. On the SIMD path each (query, head) runs
// in sweeps over its points: the corner coefficients, then per point the four corner dot
// products (one reduction) and, by head, the point's contributions (branch-free, with
// grad_output's row in registers, where a row is 1, 2, 4, 8 or 16 whole vectors:
// DotsAndContributions); the point gradients with lanes over points; with the counting sort,
// the contribution entries, one per horizontal corner pair.
//
// This file is compiled once per SIMD target (Highway's foreach_target); RunBackward at the
// bottom dispatches to the best one.
#undef HWY_TARGET_INCLUDE
// clang-format off
#define HWY_TARGET_INCLUDE "cpu/backward.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// clang-format on

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/geometry-inl.h"
#include "cpu/kernels.h"
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

// One contribution of a point to grad_value: accumulator row (key row in the block * heads +
// head) += coef[0] * grad_output row slot (query in pass * heads + head), and, for a pair
// entry, the next key's row (accumulator row + heads) += coef[1] * the same grad_output row.
// A point's two horizontal corner pairs (x0, x1) are neighbouring keys, so one entry carries
// both when both are on the map and in one key block: half the entries, and pass C loads each
// grad_output row once for two accumulator rows. Single-corner entries store ~slot (< 0).
// Indices are precomputed so that the reduction does no division.
template <typename Acc>
struct Entry {
  int32_t accum_row;
  int32_t slot;
  Acc coef[2];
};
static_assert(sizeof(Entry<float>) == 16, "BackwardEntryBytes assumes 16-byte fp32 entries");
static_assert(sizeof(Entry<double>) == 24, "BackwardEntryBytes assumes 24-byte fp64 entries");

template <typename T, typename L, typename Acc>
struct BackwardKernel {
  const Problem& p;
  const Params& prm;
  const Plan& plan;
  char* workspace;
  const PointLevels* levels;  // Non-null when the SIMD geometry pass applies.
  // The rows to read: the caller's value, or the current batch item's head-major copy.
  ValueRows<T> value_rows;

  const BackwardPlan& bp() const { return plan.backward; }
  const T* ValueOf(int64_t b, int64_t h) const { return value_rows.Of(b, h); }
  int64_t KeyStride() const { return value_rows.KeyStride(); }
  int64_t DimStride() const { return value_rows.DimStride(); }
  char* Scratch(int thread_index) const { return workspace + thread_index * plan.scratch.bytes; }
  int64_t* Counts() const { return reinterpret_cast<int64_t*>(workspace + bp().counts_offset); }
  int64_t* BlockStart() const {
    return reinterpret_cast<int64_t*>(workspace + bp().block_start_offset);
  }
  Entry<Acc>* Entries() const {
    return reinterpret_cast<Entry<Acc>*>(workspace + bp().entries_offset);
  }
  Acc* GradRows() const { return reinterpret_cast<Acc*>(workspace + bp().grad_rows_offset); }
  // The accumulator row of key row r and head h (r * heads + h == index) of batch item b:
  // in the workspace, or grad_value itself when it is stored in the accumulation type.
  Acc* AccumRow(int64_t b, int64_t index) const {
    if (bp().grad_value_in_place) {
      const ValueStrides& st = prm.grad_value_strides;
      return static_cast<Acc*>(prm.grad_value) + b * st.batch +
             index * (p.heads == 1 ? st.key : st.head);
    }
    return reinterpret_cast<Acc*>(workspace + bp().accum_offset) + index * p.dims;
  }

  const L* LocAt(int64_t b, int64_t q, int64_t h, int64_t l) const {
    return static_cast<const L*>(prm.loc) + b * prm.loc_strides.batch + q * prm.loc_strides.query +
           h * prm.loc_strides.head + l * prm.loc_strides.level;
  }
  const T* AttnAt(int64_t b, int64_t q, int64_t h, int64_t l) const {
    return static_cast<const T*>(prm.attn) + b * prm.attn_strides.batch + q * prm.attn_strides.query +
           h * prm.attn_strides.head + l * prm.attn_strides.level;
  }
  PointGeometry<Acc> Point(int64_t b, int64_t q, int64_t h, int64_t l, int64_t pt) const {
    const L* xy = LocAt(b, q, h, l) + pt * prm.loc_strides.point;
    return Locate<Acc>(p.levels[l], Load<Acc>(xy), Load<Acc>(xy + prm.loc_strides.xy));
  }

  // Where the grad_value contributions of a (query, head) go: entries at the counting sort's
  // cursors (one per key block), or, in by-head mode, added straight into the head's
  // accumulator rows [keys][dims]. Neither: only location and weight gradients.
  struct Sink {
    int64_t* cursors = nullptr;
    Acc* rows = nullptr;
    int64_t row_stride = 0;  // Between key rows of `rows`, in Acc elements.
    // By head with the head's value copy: each key's value row follows its accumulator row.
    bool value_after_acc = false;
  };
  // The value rows of one (batch, head).
  struct HeadRows {
    const T* value;
    int64_t key_stride;
    int64_t dim_stride;
  };
  HeadRows RowsOf(int64_t b, int64_t h) const {
    return HeadRows{ValueOf(b, h), KeyStride(), DimStride()};
  }

  // The by-corner geometry of one (batch, query, head) in the thread's scratch (SIMD path).
  struct Corners {
    int32_t* rows;
    float* weights;
    float* lh;
    float* lw;
    int64_t stride;
  };
  Corners SimdCorners(int64_t b, int64_t q, int64_t h, int thread_index, bool fractions) const {
    const ScratchLayout& s = plan.scratch;
    char* scratch = Scratch(thread_index);
    Corners k;
    k.stride = (p.num_levels() * p.points + 63) / 64 * 64;
    k.rows = reinterpret_cast<int32_t*>(scratch + s.corner_rows_by_corner);
    k.weights = reinterpret_cast<float*>(scratch + s.corner_weights_by_corner);
    k.lh = reinterpret_cast<float*>(scratch + s.point_fractions);
    k.lw = k.lh + k.stride;
    PointCorners(p, *levels, reinterpret_cast<const float*>(LocAt(b, q, h, 0)), k.rows, k.weights,
                 k.stride, fractions ? k.lh : nullptr, fractions ? k.lw : nullptr);
    return k;
  }

  // The entries of one horizontal corner pair (rows -1 when off the map), as PairEntries
  // writes them: one pair entry when both corners are on the map and in one key block, else
  // one single entry per corner on the map.
  void CountPair(int64_t left, int64_t right, int64_t* counts) const {
    const int shift = static_cast<int>(bp().key_block_shift);
    if (left >= 0 && right >= 0 && (left >> shift) == (right >> shift)) {
      ++counts[left >> shift];
      return;
    }
    if (left >= 0) ++counts[left >> shift];
    if (right >= 0) ++counts[right >> shift];
  }
  void WritePair(int64_t left, int64_t right, Acc coef_left, Acc coef_right, int64_t h,
                 int64_t slot, int64_t* cursors, Entry<Acc>* entries) const {
    const int shift = static_cast<int>(bp().key_block_shift);
    auto accum_row = [&](int64_t row) {
      return static_cast<int32_t>((row - ((row >> shift) << shift)) * p.heads + h);
    };
    if (left >= 0 && right >= 0 && (left >> shift) == (right >> shift)) {
      entries[cursors[left >> shift]++] =
          Entry<Acc>{accum_row(left), static_cast<int32_t>(slot), {coef_left, coef_right}};
      return;
    }
    const int32_t single = ~static_cast<int32_t>(slot);
    if (left >= 0) {
      entries[cursors[left >> shift]++] = Entry<Acc>{accum_row(left), single, {coef_left, Acc(0)}};
    }
    if (right >= 0) {
      entries[cursors[right >> shift]++] =
          Entry<Acc>{accum_row(right), single, {coef_right, Acc(0)}};
    }
  }

  // By-head mode: a horizontal corner pair's contributions (rows -1 when off the map) added to
  // the head's accumulator rows, left corner first, as Reduce adds a pair entry.
  void AddPair(const Sink& sink, int64_t left, int64_t right, Acc coef_left, Acc coef_right,
               const Acc* g_row) const {
    const int64_t dims = p.dims, stride = sink.row_stride;
    if (left >= 0 && right >= 0) {
      AxpyRowPair<Acc>(sink.rows + left * stride, coef_left, sink.rows + right * stride, coef_right,
                       g_row, dims);
      return;
    }
    if (left >= 0) AxpyRow<Acc>(sink.rows + left * stride, coef_left, g_row, dims);
    if (right >= 0) AxpyRow<Acc>(sink.rows + right * stride, coef_right, g_row, dims);
  }
  void Contribute(const Sink& sink, int64_t left, int64_t right, Acc coef_left, Acc coef_right,
                  int64_t h, int64_t slot, const Acc* g_row) const {
    if (sink.rows != nullptr) {
      AddPair(sink, left, right, coef_left, coef_right, g_row);
    } else if (sink.cursors != nullptr) {
      WritePair(left, right, coef_left, coef_right, h, slot, sink.cursors, Entries());
    }
  }

  // Pass A: per key block, how many contributions the chunk's queries make.
  void Count(int64_t b, int64_t q_begin, int64_t q_end, int64_t* counts, int thread_index) const {
    std::fill(counts, counts + bp().num_key_blocks, int64_t{0});
    if constexpr (std::is_same<L, float>::value && std::is_same<Acc, float>::value) {
      if (levels != nullptr) {
        const int64_t num_points = p.num_levels() * p.points;
        for (int64_t q = q_begin; q < q_end; ++q) {
          for (int64_t h = 0; h < p.heads; ++h) {
            const Corners k = SimdCorners(b, q, h, thread_index, false);
            for (int pair = 0; pair < 2; ++pair) {  // Corners (0, 1), then (2, 3).
              const int32_t* left = k.rows + 2 * pair * k.stride;
              const int32_t* right = left + k.stride;
              for (int64_t i = 0; i < num_points; ++i) {
                CountPair(left[i], right[i], counts);
              }
            }
          }
        }
        return;
      }
    }
    for (int64_t q = q_begin; q < q_end; ++q) {
      for (int64_t h = 0; h < p.heads; ++h) {
        for (int64_t l = 0; l < p.num_levels(); ++l) {
          for (int64_t pt = 0; pt < p.points; ++pt) {
            const PointGeometry<Acc> g = Point(b, q, h, l, pt);
            if (!g.inside) continue;
            CountPair(g.row[0], g.row[1], counts);
            CountPair(g.row[2], g.row[3], counts);
          }
        }
      }
    }
  }

  // Pass B: location and weight gradients of the queries [q_begin, q_end), every head; with
  // cursors (one per key block, from the counting sort) also the grad_value contributions,
  // and the grad_output rows in the accumulation type (grad_rows, indexed from pass_begin).
  void Points(int64_t b, int64_t q_begin, int64_t q_end, int64_t pass_begin, int64_t* cursors,
              int thread_index) const {
    for (int64_t q = q_begin; q < q_end; ++q) {
      for (int64_t h = 0; h < p.heads; ++h) {
        const int64_t slot = (q - pass_begin) * p.heads + h;
        Acc* g_row = cursors != nullptr
                         ? GradRows() + slot * p.dims
                         : reinterpret_cast<Acc*>(Scratch(thread_index) + plan.scratch.grad_row);
        PointsOfHead(b, q, h, slot, g_row, Sink{cursors, nullptr, 0}, RowsOf(b, h), thread_index);
      }
    }
  }

  void PointsOfHead(int64_t b, int64_t q, int64_t h, int64_t slot, Acc* g_row, const Sink& sink,
                    const HeadRows& rows, int thread_index) const {
    const T* value = rows.value;
    const int64_t key_stride = rows.key_stride;
    const int64_t dim_stride = rows.dim_stride;
    {
      const T* g_src = static_cast<const T*>(prm.grad_out) + b * prm.grad_out_strides.batch +
                       q * prm.grad_out_strides.query + h * p.dims * prm.grad_out_strides.channel;
      if (plan.flat_rows) {
        WidenRow<T, Acc>(g_src, p.dims, g_row);
      } else {
        for (int64_t d = 0; d < p.dims; ++d) {
          g_row[d] = Load<Acc>(g_src + d * prm.grad_out_strides.channel);
        }
      }
      if constexpr (std::is_same<L, float>::value && std::is_same<Acc, float>::value) {
        if (levels != nullptr) {
          PointsOfHeadSimd(b, q, h, slot, g_row, sink, rows, thread_index);
          return;
        }
      }
      for (int64_t l = 0; l < p.num_levels(); ++l) {
        const Level& level = p.levels[l];
        const T* attn = AttnAt(b, q, h, l);
        for (int64_t pt = 0; pt < p.points; ++pt) {
          const PointGeometry<Acc> g = Point(b, q, h, l, pt);
          Acc grad_x = 0, grad_y = 0, grad_a = 0;
          if (g.inside) {
            const Acc a = Load<Acc>(attn + pt * prm.attn_strides.point);
            Acc dot[4] = {0, 0, 0, 0};  // grad_output . corner row
            for (int c = 0; c < 4; ++c) {
              if (g.row[c] < 0) continue;
              const T* row = value + g.row[c] * key_stride;
              dot[c] = dim_stride == 1 ? DotRow<T, Acc>(g_row, row, p.dims)
                                       : Dot<T, Acc>(g_row, row, dim_stride, p.dims);
            }
            Contribute(sink, g.row[0], g.row[1], g.weight[0] * a, g.weight[1] * a, h, slot, g_row);
            Contribute(sink, g.row[2], g.row[3], g.weight[2] * a, g.weight[3] * a, h, slot, g_row);
            const Acc hh = Acc(1) - g.lh, hw = Acc(1) - g.lw;
            grad_a = g.weight[0] * dot[0] + g.weight[1] * dot[1] + g.weight[2] * dot[2] +
                     g.weight[3] * dot[3];
            grad_x = static_cast<Acc>(level.width) * a *
                     (hh * (dot[1] - dot[0]) + g.lh * (dot[3] - dot[2]));
            grad_y = static_cast<Acc>(level.height) * a *
                     (hw * (dot[2] - dot[0]) + g.lw * (dot[3] - dot[1]));
          }
          StorePointGradients(b, q, h, l, pt, grad_x, grad_y, grad_a);
        }
      }
    }
  }

  // Sweep 2 of PointsOfHeadSimd in by-head mode, when value rows are contiguous and dims is 1,
  // 2, 4, 8 or 16 whole vectors (16 to 256 with AVX-512): grad_output's row stays in
  // registers for all points and every corner is branch-free. A corner off the map reads a
  // zero value row (its dot is set to 0 afterwards, as the general loop does) and adds its
  // contribution to a spare accumulator row, never read: one per corner in the thread's
  // scratch, so that such additions do not wait on each other.
  // The four dots of a point are stored together and turned into rows by corner at the end.
  // Same operations in the same order as the general loop (DotRows4, AxpyRowPair), so the same
  // bits. Returns false where it does not apply.
  bool DotsAndContributionsFixed(const float* g_row, const T* value, int64_t key_stride,
                                 const Sink& sink, const Corners& k, const float* coefs,
                                 float* dots, int thread_index) const {
#if HWY_TARGET != HWY_SCALAR && !HWY_HAVE_SCALABLE
    const int64_t n = static_cast<int64_t>(hn::Lanes(hn::ScalableTag<float>()));
    const int64_t vectors = p.dims % n == 0 ? p.dims / n : 0;
    return sink.value_after_acc ? DotsAndContributionsOf<true>(vectors, g_row, value, key_stride,
                                                               sink, k, coefs, dots, thread_index)
                                : DotsAndContributionsOf<false>(vectors, g_row, value, key_stride,
                                                                sink, k, coefs, dots, thread_index);
#else
    (void)g_row, (void)value, (void)key_stride, (void)sink, (void)k, (void)coefs, (void)dots;
    (void)thread_index;
    return false;
#endif
  }

#if HWY_TARGET != HWY_SCALAR && !HWY_HAVE_SCALABLE
  // The row lengths, in whole vectors, that DotsAndContributions is instantiated for.
  using RowVectors = std::integer_sequence<int, 1, 2, 4, 8, 16>;

  // DotsAndContributions for a row of `vectors` whole vectors, one of RowVectors, or false.
  template <bool kValueAfterAcc>
  bool DotsAndContributionsOf(int64_t vectors, const float* g_row, const T* value,
                              int64_t key_stride, const Sink& sink, const Corners& k,
                              const float* coefs, float* dots, int thread_index) const {
    return DotsAndContributionsAny<kValueAfterAcc>(RowVectors{}, vectors, g_row, value, key_stride,
                                                   sink, k, coefs, dots, thread_index);
  }
  template <bool kValueAfterAcc, int... kVectors>
  bool DotsAndContributionsAny(std::integer_sequence<int, kVectors...>, int64_t vectors,
                               const float* g_row, const T* value, int64_t key_stride,
                               const Sink& sink, const Corners& k, const float* coefs, float* dots,
                               int thread_index) const {
    // The instance whose row length matches; none when `vectors` is not in the list.
    return ((vectors == kVectors &&
             DotsAndContributions<kVectors, kValueAfterAcc>(g_row, value, key_stride, sink, k,
                                                            coefs, dots, thread_index)) ||
            ...);
  }

  // kValueAfterAcc: each key's value row (the head's copy) follows its accumulator row.
  template <int V, bool kValueAfterAcc>
  bool DotsAndContributions(const float* g_row, const T* value, int64_t key_stride,
                            const Sink& sink, const Corners& k, const float* coefs, float* dots,
                            int thread_index) const {
    const hn::ScalableTag<float> d;
    const hn::RebindToSigned<decltype(d)> di;
    const int64_t n = static_cast<int64_t>(hn::Lanes(d));
    using Vec = hn::Vec<decltype(d)>;
    Vec g[V];
    for (int v = 0; v < V; ++v) g[v] = hn::LoadU(d, g_row + v * n);
    char* const scratch = Scratch(thread_index);
    float* const dots4 = reinterpret_cast<float*>(scratch + plan.scratch.point_work) +
                         kPointWorkDots4 * k.stride;  // [points][4]
    // Byte addresses and strides in locals: the stores to the rows may not alias them.
    char* const spare = scratch + plan.scratch.spare_row;
    // Spare row c: an accumulator row, then a value row of zeros (RunByHead zeroes them), as
    // in the head's buffer.
    const int64_t row_bytes = V * n * int64_t{sizeof(float)};  // One accumulator row.
    const char* const zero_value = spare + row_bytes;
    char* const rows = reinterpret_cast<char*>(sink.rows);
    const int64_t key_row_bytes = sink.row_stride * int64_t{sizeof(float)};
    const char* const value_bytes = reinterpret_cast<const char*>(value);
    const int64_t value_row_bytes = key_stride * int64_t{sizeof(T)};
    const int32_t* const corner_rows = k.rows;
    const int64_t stride = k.stride;
    const int64_t num_points = p.num_levels() * p.points;
    for (int64_t i = 0; i < num_points; ++i) {
      const int32_t r[4] = {corner_rows[i], corner_rows[stride + i], corner_rows[2 * stride + i],
                            corner_rows[3 * stride + i]};
      // A point outside the gate (all four rows -1) has nothing to add; its dots are masked.
      if ((r[0] & r[1] & r[2] & r[3]) < 0) continue;
      const T* row[4];
      float* acc[4];
      for (int c = 0; c < 4; ++c) {
        char* const a = r[c] >= 0 ? rows + r[c] * key_row_bytes : spare + 2 * c * row_bytes;
        acc[c] = reinterpret_cast<float*>(a);
        if constexpr (kValueAfterAcc) {
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
        const Vec coef = hn::Set(d, coefs[c * stride + i]);
        for (int v = 0; v < V; ++v) {
          hn::StoreU(hn::MulAdd(coef, g[v], hn::LoadU(d, acc[c] + v * n)), d, acc[c] + v * n);
        }
      }
    }
    // Dots by corner, 0 for corners off the map. The rows are padded to whole vectors.
    for (int64_t i = 0; i < num_points; i += n) {
      Vec by_corner[4];
      hn::LoadInterleaved4(d, dots4 + 4 * i, by_corner[0], by_corner[1], by_corner[2],
                           by_corner[3]);
      for (int c = 0; c < 4; ++c) {
        const auto on_map = hn::RebindMask(
            d, hn::Not(hn::Lt(hn::LoadU(di, k.rows + c * stride + i), hn::Zero(di))));
        hn::StoreU(hn::IfThenElseZero(on_map, by_corner[c]), d, dots + c * stride + i);
      }
    }
    return true;
  }
#endif

  // PointsOfHead with the geometry of all points from the SIMD pass, in sweeps over the
  // (query, head)'s points (numbered in the body). Same formulas as the scalar path, and the
  // same contribution order (point, then corner).
  void PointsOfHeadSimd(int64_t b, int64_t q, int64_t h, int64_t slot, const Acc* g_row,
                        const Sink& sink, const HeadRows& head_rows, int thread_index) const {
    const T* value = head_rows.value;
    const int64_t key_stride = head_rows.key_stride;
    const int64_t dim_stride = head_rows.dim_stride;
    const Corners k = SimdCorners(b, q, h, thread_index, true);
    const int64_t num_points = p.num_levels() * p.points;
    const int64_t stride = k.stride;
    float* work = reinterpret_cast<float*>(Scratch(thread_index) + plan.scratch.point_work);
    float* dots = work;                 // [4][stride]
    float* coefs = work + 4 * stride;   // [4][stride]
    float* attn = work + 8 * stride;    // [stride]
    float* grad_x = work + 9 * stride;  // [stride]
    float* grad_y = work + 10 * stride;
    float* grad_a = work + 11 * stride;

    const hn::ScalableTag<float> d;
    const hn::RebindToSigned<decltype(d)> di;
    const int64_t n = static_cast<int64_t>(hn::Lanes(d));

    // 1. Attention weights and the corner coefficients (bilinear weight * attention weight),
    // lanes over points.
    for (int64_t l = 0; l < p.num_levels(); ++l) {
      const T* a = AttnAt(b, q, h, l);
      for (int64_t pt = 0; pt < p.points; ++pt) {
        attn[l * p.points + pt] = Load<float>(a + pt * prm.attn_strides.point);
      }
    }
    for (int64_t i = 0; i < num_points; i += n) {  // Rows are padded to whole vectors.
      const auto a = hn::LoadU(d, attn + i);
      for (int c = 0; c < 4; ++c) {
        hn::StoreU(hn::Mul(hn::LoadU(d, k.weights + c * stride + i), a), d, coefs + c * stride + i);
      }
    }

    // 2. Per point: grad_output . corner row (0 for corners off the map) and, by head, the
    // point's contributions to its corners' accumulator rows, while those keys are in cache.
    const bool fixed_dims =
        sink.rows != nullptr && dim_stride == 1 &&
        DotsAndContributionsFixed(g_row, value, key_stride, sink, k, coefs, dots, thread_index);
    for (int64_t i = 0; i < num_points && !fixed_dims; ++i) {
      const int32_t r[4] = {k.rows[i], k.rows[stride + i], k.rows[2 * stride + i],
                            k.rows[3 * stride + i]};
      const int32_t any = std::max(std::max(r[0], r[1]), std::max(r[2], r[3]));
      float d4[4] = {0, 0, 0, 0};
      if (any >= 0) {
        if (dim_stride == 1) {
          // The four corners together: one reduction for four dot products. Corners off the
          // map read an on-map corner's row; their dot is dropped below.
          const T* row[4];
          for (int c = 0; c < 4; ++c) row[c] = value + int64_t{r[c] >= 0 ? r[c] : any} * key_stride;
          DotRows4<T>(g_row, row[0], row[1], row[2], row[3], p.dims, d4);
        } else {
          for (int c = 0; c < 4; ++c) {
            if (r[c] >= 0) {
              d4[c] = Dot<T, Acc>(g_row, value + int64_t{r[c]} * key_stride, dim_stride, p.dims);
            }
          }
        }
        if (sink.rows != nullptr) {
          AddPair(sink, r[0], r[1], coefs[i], coefs[stride + i], g_row);
          AddPair(sink, r[2], r[3], coefs[2 * stride + i], coefs[3 * stride + i], g_row);
        }
      }
      for (int c = 0; c < 4; ++c) dots[c * stride + i] = r[c] >= 0 ? d4[c] : 0.0f;
    }

    // 3. Point gradients, lanes over points. Points outside the gate (all four rows -1) get
    // zero gradients, whatever their attention weight.
    const auto one = hn::Set(d, 1.0f);
    for (int64_t i = 0; i < num_points; i += n) {
      const auto all_rows = hn::And(
          hn::And(hn::LoadU(di, k.rows + i), hn::LoadU(di, k.rows + stride + i)),
          hn::And(hn::LoadU(di, k.rows + 2 * stride + i), hn::LoadU(di, k.rows + 3 * stride + i)));
      const auto inside = hn::RebindMask(d, hn::Not(hn::Lt(all_rows, hn::Zero(di))));
      const auto a = hn::LoadU(d, attn + i);
      const auto w0 = hn::LoadU(d, k.weights + i), w1 = hn::LoadU(d, k.weights + stride + i);
      const auto w2 = hn::LoadU(d, k.weights + 2 * stride + i);
      const auto w3 = hn::LoadU(d, k.weights + 3 * stride + i);
      const auto d0 = hn::LoadU(d, dots + i), d1 = hn::LoadU(d, dots + stride + i);
      const auto d2 = hn::LoadU(d, dots + 2 * stride + i);
      const auto d3 = hn::LoadU(d, dots + 3 * stride + i);
      const auto lh = hn::LoadU(d, k.lh + i), lw = hn::LoadU(d, k.lw + i);
      const auto hh = hn::Sub(one, lh), hw = hn::Sub(one, lw);
      const auto ga = hn::Add(hn::Add(hn::Add(hn::Mul(w0, d0), hn::Mul(w1, d1)), hn::Mul(w2, d2)),
                              hn::Mul(w3, d3));
      const auto gx = hn::Mul(hn::Mul(hn::LoadU(d, levels->width.data() + i), a),
                              hn::Add(hn::Mul(hh, hn::Sub(d1, d0)), hn::Mul(lh, hn::Sub(d3, d2))));
      const auto gy = hn::Mul(hn::Mul(hn::LoadU(d, levels->height.data() + i), a),
                              hn::Add(hn::Mul(hw, hn::Sub(d2, d0)), hn::Mul(lw, hn::Sub(d3, d1))));
      hn::StoreU(hn::IfThenElseZero(inside, ga), d, grad_a + i);
      hn::StoreU(hn::IfThenElseZero(inside, gx), d, grad_x + i);
      hn::StoreU(hn::IfThenElseZero(inside, gy), d, grad_y + i);
    }
    WritePointGradients(b, q, h, grad_x, grad_y, grad_a);

    // 4. With the counting sort, the contributions as entries at the key blocks' cursors.
    if (sink.cursors != nullptr) {
      Entry<Acc>* entries = Entries();
      for (int64_t i = 0; i < num_points; ++i) {
        for (int64_t at = i; at < 4 * stride; at += 2 * stride) {  // Corner pairs (0, 1), (2, 3).
          WritePair(k.rows[at], k.rows[at + stride], coefs[at], coefs[at + stride], h, slot,
                    sink.cursors, entries);
        }
      }
    }
  }

  // The gradients of all points of one (batch, query, head) from fp32 rows: as vectors where
  // the outputs are fp32 and contiguous over (level, point), else point by point.
  void WritePointGradients(int64_t b, int64_t q, int64_t h, const float* grad_x,
                           const float* grad_y, const float* grad_a) const {
    const int64_t num_points = p.num_levels() * p.points;
    const hn::ScalableTag<float> d;
    const int64_t n = static_cast<int64_t>(hn::Lanes(d));
    int64_t done = 0;  // Points written as vectors.
    if constexpr (std::is_same<T, float>::value && std::is_same<L, float>::value) {
      const WeightStrides& sa = prm.grad_attn_strides;
      const LocationStrides& sl = prm.grad_loc_strides;
      if (bp().flat_point_grads) {
        float* ga = prm.grad_attn == nullptr
                        ? nullptr
                        : static_cast<float*>(prm.grad_attn) + b * sa.batch + q * sa.query + h * sa.head;
        float* gl = prm.grad_loc == nullptr
                        ? nullptr
                        : static_cast<float*>(prm.grad_loc) + b * sl.batch + q * sl.query + h * sl.head;
        for (; done + n <= num_points; done += n) {
          if (ga != nullptr) hn::StoreU(hn::LoadU(d, grad_a + done), d, ga + done);
          if (gl != nullptr) {
            hn::StoreInterleaved2(hn::LoadU(d, grad_x + done), hn::LoadU(d, grad_y + done), d,
                                  gl + 2 * done);
          }
        }
        for (; done < num_points; ++done) {  // The rest, still contiguous.
          if (ga != nullptr) ga[done] = grad_a[done];
          if (gl != nullptr) {
            gl[2 * done] = grad_x[done];
            gl[2 * done + 1] = grad_y[done];
          }
        }
      }
    }
    for (int64_t i = done; i < num_points; ++i) {
      StorePointGradients(b, q, h, i / p.points, i % p.points, grad_x[i], grad_y[i], grad_a[i]);
    }
  }

  void StorePointGradients(int64_t b, int64_t q, int64_t h, int64_t l, int64_t pt, Acc grad_x,
                           Acc grad_y, Acc grad_a) const {
    if (prm.grad_attn != nullptr) {
      T* ga = static_cast<T*>(prm.grad_attn) + b * prm.grad_attn_strides.batch +
              q * prm.grad_attn_strides.query + h * prm.grad_attn_strides.head +
              l * prm.grad_attn_strides.level + pt * prm.grad_attn_strides.point;
      Store<Acc>(ga, grad_a);
    }
    if (prm.grad_loc != nullptr) {
      L* gl = static_cast<L*>(prm.grad_loc) + b * prm.grad_loc_strides.batch +
              q * prm.grad_loc_strides.query + h * prm.grad_loc_strides.head + l * prm.grad_loc_strides.level +
              pt * prm.grad_loc_strides.point;
      Store<Acc>(gl, grad_x);
      Store<Acc>(gl + prm.grad_loc_strides.xy, grad_y);
    }
  }

  // One accumulator row of dims to a row of grad_value (its dims stride from the caller).
  void WriteGradValueRow(const Acc* src, T* dst) const {
    const int64_t stride = prm.grad_value_strides.dim;
    if (stride == 1) {
      NarrowRow<T, Acc>(src, p.dims, dst);
    } else {
      for (int64_t d = 0; d < p.dims; ++d) Store<Acc>(dst + d * stride, src[d]);
    }
  }

  // Pass C: add one key block's contributions, in order, into its accumulator rows; zero
  // them first on the first pass, write them to grad_value after the last (unless they are
  // grad_value's own rows).
  void Reduce(int64_t b, int64_t block, bool first_pass, bool last_pass) const {
    const int64_t rows = bp().key_block_rows;
    const int64_t row_begin = block * rows;
    const int64_t row_end = std::min(p.keys, row_begin + rows);
    const int64_t heads = p.heads, dims = p.dims;
    const int64_t first_index = row_begin * heads;  // Accumulator row of (row_begin, head 0).
    if (first_pass) {
      // All-zero bits are 0.0 in IEEE floats.
      for (int64_t i = first_index; i < row_end * heads; ++i) {
        std::memset(AccumRow(b, i), 0, sizeof(Acc) * dims);
      }
    }
    const Entry<Acc>* entries = Entries();
    const Acc* grad_rows = GradRows();
    const int64_t* block_start = BlockStart();
    Acc* const accum = AccumRow(b, first_index);
    // Accumulator rows are evenly spaced: dims apart in the workspace, a heads stride apart
    // in grad_value.
    const int64_t row_step = AccumRow(b, first_index + 1) - accum;
    const int64_t pair_step = heads * row_step;  // From a key's row to the next key's.
    for (int64_t i = block_start[block]; i < block_start[block + 1]; ++i) {
      const Entry<Acc>& e = entries[i];
      Acc* row = accum + int64_t{e.accum_row} * row_step;
      if (e.slot >= 0) {
        AxpyRowPair<Acc>(row, e.coef[0], row + pair_step, e.coef[1],
                         grad_rows + int64_t{e.slot} * dims, dims);
      } else {
        AxpyRow<Acc>(row, e.coef[0], grad_rows + int64_t{~e.slot} * dims, dims);
      }
    }
    if (!last_pass || bp().grad_value_in_place) return;
    T* grad_value = static_cast<T*>(prm.grad_value) + b * prm.grad_value_strides.batch;
    for (int64_t r = row_begin; r < row_end; ++r) {
      for (int64_t h = 0; h < heads; ++h) {
        WriteGradValueRow(AccumRow(b, r * heads + h),
                          grad_value + r * prm.grad_value_strides.key + h * prm.grad_value_strides.head);
      }
    }
  }

  void RunWithValueGradient() const {
    const BackwardPlan& plan_b = bp();
    const int threads = plan.num_threads;
    const int64_t blocks = plan_b.num_key_blocks;
    for (int64_t b = 0; b < p.batch; ++b) {
      if (value_rows.copy != nullptr) {
        CopyBatchHeadMajor(p, prm, b, plan_b.copy_block_keys, plan_b.num_copy_blocks, threads,
                           const_cast<T*>(value_rows.copy));
      }
      {
        for (int64_t pass = 0; pass < plan_b.num_passes; ++pass) {
          const int64_t pass_begin = std::min(p.queries, pass * plan_b.pass_queries);
          const int64_t pass_end = std::min(p.queries, pass_begin + plan_b.pass_queries);
          const int64_t chunks =
              (pass_end - pass_begin + plan_b.chunk_queries - 1) / plan_b.chunk_queries;
          auto chunk_range = [&](int64_t c, int64_t* q0, int64_t* q1) {
            *q0 = pass_begin + c * plan_b.chunk_queries;
            *q1 = std::min(pass_end, *q0 + plan_b.chunk_queries);
          };
          int64_t* counts = Counts();  // [chunks][blocks]
          ParallelFor(threads, chunks, [&](int64_t c, int thread_index) {
            int64_t q0, q1;
            chunk_range(c, &q0, &q1);
            Count(b, q0, q1, counts + c * blocks, thread_index);
          });
          // Exclusive prefix over (block, chunk): a block's entries are grouped by chunk, so
          // in query order. Counts become each chunk's write cursors.
          int64_t* block_start = BlockStart();
          int64_t running = 0;
          for (int64_t k = 0; k < blocks; ++k) {
            block_start[k] = running;
            for (int64_t c = 0; c < chunks; ++c) {
              const int64_t n = counts[c * blocks + k];
              counts[c * blocks + k] = running;
              running += n;
            }
          }
          block_start[blocks] = running;
          ParallelFor(threads, chunks, [&](int64_t c, int thread_index) {
            int64_t q0, q1;
            chunk_range(c, &q0, &q1);
            Points(b, q0, q1, pass_begin, counts + c * blocks, thread_index);
          });
          const bool first = pass == 0, last = pass == plan_b.num_passes - 1;
          ParallelFor(threads, blocks, [&](int64_t k, int) { Reduce(b, k, first, last); });
        }
      }
    }
  }

  static constexpr int64_t kQueriesAhead = 6;
  // (batch, query, head)'s slices of the locations, weights and grad_output, and of the
  // location and weight gradients: every cache line they touch (a 128-byte row that does not
  // start on a line spans three; fetching only two left the encoder at 130 ms instead of 102).
  void PrefetchQuery(int64_t b, int64_t q, int64_t h) const {
    const int64_t points = p.num_levels() * p.points;
    const int64_t loc_bytes = 2 * points * int64_t{sizeof(L)};
    const int64_t attn_bytes = points * int64_t{sizeof(T)};
    PrefetchSpan(LocAt(b, q, h, 0), loc_bytes);
    PrefetchSpan(AttnAt(b, q, h, 0), attn_bytes);
    PrefetchSpan(static_cast<const T*>(prm.grad_out) + b * prm.grad_out_strides.batch +
                     q * prm.grad_out_strides.query + h * p.dims * prm.grad_out_strides.channel,
                 p.dims * int64_t{sizeof(T)});
    if (prm.grad_loc != nullptr) {
      PrefetchSpan(static_cast<const L*>(prm.grad_loc) + b * prm.grad_loc_strides.batch +
                       q * prm.grad_loc_strides.query + h * prm.grad_loc_strides.head,
                   loc_bytes);
    }
    if (prm.grad_attn != nullptr) {
      PrefetchSpan(static_cast<const T*>(prm.grad_attn) + b * prm.grad_attn_strides.batch +
                       q * prm.grad_attn_strides.query + h * prm.grad_attn_strides.head,
                   attn_bytes);
    }
  }

  // By-head mode (see BackwardPlan): task (batch, head) on worker w uses the worker's buffer,
  // per key an accumulator row and, with head_copy, a copy of the key's value row.
  void RunByHead() const {
    const BackwardPlan& plan_b = bp();
    const int64_t dims = p.dims;
    ParallelFor(plan_b.head_workers, p.batch * p.heads, [&](int64_t task, int worker) {
      const int64_t b = task / p.heads, h = task % p.heads;
      char* buffer = workspace + plan_b.head_buffers_offset + worker * plan_b.head_buffer_bytes;
      const int64_t row_bytes = plan_b.head_row_bytes;
      const Sink sink{nullptr, reinterpret_cast<Acc*>(buffer),
                      row_bytes / static_cast<int64_t>(sizeof(Acc)), plan_b.head_copy};
      // The spare rows' value halves read as zeros (DotsAndContributions).
      std::memset(Scratch(worker) + plan.scratch.spare_row, 0, 8 * sizeof(Acc) * dims);
      HeadRows rows = RowsOf(b, h);
      for (int64_t k = 0; k < p.keys; ++k) {
        char* row = buffer + k * row_bytes;
        std::memset(row, 0, sizeof(Acc) * dims);  // All-zero bits are 0.0.
        if (!plan_b.head_copy) continue;
        CopyRow(rows.value + k * rows.key_stride, rows.dim_stride, dims,
                reinterpret_cast<T*>(row + sizeof(Acc) * dims));
      }
      if (plan_b.head_copy) {
        rows = HeadRows{reinterpret_cast<const T*>(buffer + sizeof(Acc) * dims),
                        row_bytes / static_cast<int64_t>(sizeof(T)), 1};
      }
      Acc* g_row = reinterpret_cast<Acc*>(Scratch(worker) + plan.scratch.grad_row);
      for (int64_t q = 0; q < p.queries; ++q) {
        // One head's slices of the per-query tensors are a few hundred bytes apart from one
        // query to the next, across pages every few queries, where the hardware prefetchers
        // stop: fetch them a few queries ahead.
        if (q + kQueriesAhead < p.queries) PrefetchQuery(b, q + kQueriesAhead, h);
        PointsOfHead(b, q, h, 0, g_row, sink, rows, worker);
      }
      const ValueStrides& st = prm.grad_value_strides;
      T* grad_value = static_cast<T*>(prm.grad_value) + b * st.batch + h * st.head;
      for (int64_t k = 0; k < p.keys; ++k) {
        WriteGradValueRow(sink.rows + k * sink.row_stride, grad_value + k * st.key);
      }
    });
  }

  void RunWithoutValueGradient() const {
    // Tasks are (batch, chunk of queries); nothing is shared between them.
    const int64_t chunk = bp().chunk_queries;
    const int64_t chunks = (p.queries + chunk - 1) / chunk;
    ParallelFor(plan.num_threads, p.batch * chunks, [&](int64_t task, int thread_index) {
      const int64_t c = task % chunks;
      const int64_t b = task / chunks;
      const int64_t q0 = c * chunk;
      Points(b, q0, std::min(p.queries, q0 + chunk), q0, nullptr, thread_index);
    });
  }
};

void RunBackwardTarget(const msdaExecutor& e, void* workspace) {
  const GradientSet& grads = e.plan.backward.grads;
  if (!grads.value && !grads.locations && !grads.weights) return;
  if (e.problem.batch == 0) return;  // No gradient element.
  DispatchTypes(e.problem.value_dtype, e.problem.loc_dtype, [&](auto t, auto l, auto acc) {
    using T = decltype(t);
    using L = decltype(l);
    using Acc = decltype(acc);
    char* ws = static_cast<char*>(workspace);
    const bool copy = grads.value && e.plan.backward.head_major;
    const BackwardKernel<T, L, Acc> kernel{
        e.problem,
        e.params,
        e.plan,
        ws,
        e.plan.simd_geometry ? &e.plan.point_levels : nullptr,
        ValueRows<T>{
            e.problem, e.params,
            copy ? reinterpret_cast<const T*>(ws + e.plan.backward.value_copy_offset) : nullptr}};
    if (grads.value && e.plan.backward.by_head) {
      kernel.RunByHead();
    } else if (grads.value) {
      kernel.RunWithValueGradient();
    } else {
      kernel.RunWithoutValueGradient();
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
