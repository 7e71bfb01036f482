// Per-target backward, the part every strategy shares: the location and weight gradients of
// one (batch, query, head), point by point or (SIMD geometry path) in sweeps with lanes over
// points. Where a point's grad_value contributions go is the strategy's Sink, a compile-time
// policy (see backward.cc):
//   static constexpr bool kAddsRows;       // Added to rows while the dots run (by head).
//   static constexpr bool kWritesEntries;  // Written after the point gradients (counting sort).
//   void Pair(left, right, coef_left, coef_right, head, slot, g_row) const;
//     one horizontal corner pair's contributions (rows -1 when off the map);
//   bool Sweep(points, g_row, value, key_stride, corners, coefs, dots, thread) const;
//     (kAddsRows only) the dots and contributions of all points in one fused sweep, or false.
// Included once per SIMD target by backward.cc (Highway's foreach_target pattern).

// Per-target include guard: foreach_target toggles HWY_TARGET_TOGGLE between passes.
#if defined(MSDA_SRC_CPU_BACKWARD_POINTS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MSDA_SRC_CPU_BACKWARD_POINTS_INL_H_
#undef MSDA_SRC_CPU_BACKWARD_POINTS_INL_H_
#else
#define MSDA_SRC_CPU_BACKWARD_POINTS_INL_H_
#endif

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cpu/geometry-inl.h"
#include "cpu/kernel_context.h"
#include "cpu/rows-inl.h"
#include "cpu/sampling.h"
#include "cpu/value_copy.h"
#include "executor.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace msda {
namespace cpu {
namespace HWY_NAMESPACE {

// The value rows of one (batch, head).
template <typename T>
struct HeadRows {
  const T* value;
  int64_t key_stride;
  int64_t dim_stride;
};

// The by-corner geometry of one (batch, query, head) in the thread's scratch (SIMD path).
struct Corners {
  int32_t* rows;  // [4][stride]: key rows, -1 off the map.
  float* weights;
  float* lh;
  float* lw;
  int64_t stride;
};

// The sink of the backward without a value gradient: only location and weight gradients.
template <typename Acc>
struct NoValueGradient {
  static constexpr bool kAddsRows = false;
  static constexpr bool kWritesEntries = false;
  void Pair(int64_t, int64_t, Acc, Acc, int64_t, int64_t, const Acc*) const {}
  template <typename T>
  bool Sweep(int64_t, const float*, const T*, int64_t, const Corners&, const float*, float*,
             int) const {
    return false;
  }
};

template <typename T, typename Loc, typename Acc>
struct BackwardPoints : KernelContext {
  // The rows to read: the caller's value, or the current batch item's head-major copy.
  ValueRows<T> value_rows;

  // The SIMD geometry path: fp32 arithmetic (fp32 or half-typed locations).
  static constexpr bool kSimdTypes = std::is_same<Acc, float>::value;

  const BackwardPlan& bp() const { return plan.backward; }
  int64_t NumPoints() const { return p.TotalPoints(); }
  HeadRows<T> RowsOf(int64_t b, int64_t h) const {
    return HeadRows<T>{value_rows.Of(b, h), value_rows.KeyStride(), value_rows.DimStride()};
  }
  const Loc* LocAt(int64_t b, int64_t q, int64_t h, int64_t l) const {
    const LocationStrides& s = prm.loc_strides;
    return static_cast<const Loc*>(prm.loc) + b * s.batch + q * s.query + h * s.head + l * s.level +
           p.TensorPoint(l) * s.point;
  }
  const T* AttnAt(int64_t b, int64_t q, int64_t h, int64_t l) const {
    const WeightStrides& s = prm.attn_strides;
    return static_cast<const T*>(prm.attn) + b * s.batch + q * s.query + h * s.head + l * s.level +
           p.TensorPoint(l) * s.point;
  }
  const T* GradOutAt(int64_t b, int64_t q, int64_t h) const {
    const RowStrides& s = prm.grad_out_strides;
    return static_cast<const T*>(prm.grad_out) + b * s.batch + q * s.query + h * p.dims * s.channel;
  }
  PointGeometry<Acc> Point(int64_t b, int64_t q, int64_t h, int64_t l, int64_t pt) const {
    const Loc* xy = LocAt(b, q, h, l) + pt * prm.loc_strides.point;
    return Locate<Acc>(p.levels[l], p.sampling, Load<Acc>(xy), Load<Acc>(xy + prm.loc_strides.xy));
  }

  Corners SimdCorners(int64_t b, int64_t q, int64_t h, int thread_index, bool fractions) const {
    const ScratchLayout& s = plan.scratch;
    char* scratch = Scratch(thread_index);
    Corners k;
    k.stride = (NumPoints() + 63) / 64 * 64;
    k.rows = reinterpret_cast<int32_t*>(scratch + s.corner_rows_by_corner);
    k.weights = reinterpret_cast<float*>(scratch + s.corner_weights_by_corner);
    k.lh = reinterpret_cast<float*>(scratch + s.point_fractions);
    k.lw = k.lh + k.stride;
    const float* xy = PointLocations(LocAt(b, q, h, 0), NumPoints(),
                                     reinterpret_cast<float*>(scratch + s.point_locations));
    PointCorners(p, *levels, xy, k.rows, k.weights, k.stride, fractions ? k.lh : nullptr,
                 fractions ? k.lw : nullptr);
    return k;
  }

  // The location and weight gradients of (b, q, h), and its grad_value contributions into
  // sink (slot: the grad_output row's index in the sink's terms). g_row receives grad_output's
  // row in the accumulation type.
  template <class Sink>
  void PointsOfHead(int64_t b, int64_t q, int64_t h, int64_t slot, Acc* g_row, const Sink& sink,
                    const HeadRows<T>& rows, int thread_index) const {
    const T* g_src = GradOutAt(b, q, h);
    if (plan.flat_rows) {
      WidenRow<T, Acc>(g_src, p.dims, g_row);
    } else {
      for (int64_t d = 0; d < p.dims; ++d) {
        g_row[d] = Load<Acc>(g_src + d * prm.grad_out_strides.channel);
      }
    }
    if constexpr (kSimdTypes) {
      if (levels != nullptr) {
        PointsOfHeadSimd(b, q, h, slot, g_row, sink, rows, thread_index);
        return;
      }
    }
    const T* value = rows.value;
    for (int64_t l = 0; l < p.num_levels(); ++l) {
      const Level& level = p.levels[l];
      const T* attn = AttnAt(b, q, h, l);
      for (int64_t pt = 0; pt < p.LevelPoints(l); ++pt) {
        const PointGeometry<Acc> g = Point(b, q, h, l, pt);
        Acc grad_x = 0, grad_y = 0, grad_a = 0;
        if (g.inside) {
          const Acc a = Load<Acc>(attn + pt * prm.attn_strides.point);
          Acc dot[4] = {0, 0, 0, 0};  // grad_output . corner row
          for (int c = 0; c < 4; ++c) {
            if (g.row[c] < 0) continue;
            const T* row = value + g.row[c] * rows.key_stride;
            dot[c] = rows.dim_stride == 1 ? DotRow<T, Acc>(g_row, row, p.dims)
                                          : Dot<T, Acc>(g_row, row, rows.dim_stride, p.dims);
          }
          sink.Pair(g.row[0], g.row[1], g.weight[0] * a, g.weight[1] * a, h, slot, g_row);
          sink.Pair(g.row[2], g.row[3], g.weight[2] * a, g.weight[3] * a, h, slot, g_row);
          const Acc hh = Acc(1) - g.lh, hw = Acc(1) - g.lw;
          grad_a = g.weight[0] * dot[0] + g.weight[1] * dot[1] + g.weight[2] * dot[2] +
                   g.weight[3] * dot[3];
          if (p.sampling == Sampling::kBilinear) {  // Discrete: no location gradient.
            grad_x = static_cast<Acc>(level.width) * a *
                     (hh * (dot[1] - dot[0]) + g.lh * (dot[3] - dot[2]));
            grad_y = static_cast<Acc>(level.height) * a *
                     (hw * (dot[2] - dot[0]) + g.lw * (dot[3] - dot[1]));
          }
        }
        StorePointGradients(b, q, h, l, pt, grad_x, grad_y, grad_a);
      }
    }
  }

  // PointsOfHead with the geometry of all points from the SIMD pass, in sweeps over the
  // (query, head)'s points (numbered in the body). Same formulas as the scalar path, and the
  // same contribution order (point, then corner).
  template <class Sink>
  void PointsOfHeadSimd(int64_t b, int64_t q, int64_t h, int64_t slot, const Acc* g_row,
                        const Sink& sink, const HeadRows<T>& head_rows, int thread_index) const {
    const T* value = head_rows.value;
    const int64_t key_stride = head_rows.key_stride;
    const int64_t dim_stride = head_rows.dim_stride;
    const Corners k = SimdCorners(b, q, h, thread_index, true);
    const int64_t num_points = NumPoints();
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
    for (int64_t l = 0, i = 0; l < p.num_levels(); ++l) {
      const T* a = AttnAt(b, q, h, l);
      for (int64_t pt = 0; pt < p.LevelPoints(l); ++pt, ++i) {
        attn[i] = Load<float>(a + pt * prm.attn_strides.point);
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
    bool swept = false;
    if constexpr (Sink::kAddsRows) {
      swept = dim_stride == 1 &&
              sink.Sweep(num_points, g_row, value, key_stride, k, coefs, dots, thread_index);
    }
    for (int64_t i = 0; i < num_points && !swept; ++i) {
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
        if constexpr (Sink::kAddsRows) {
          sink.Pair(r[0], r[1], coefs[i], coefs[stride + i], h, slot, g_row);
          sink.Pair(r[2], r[3], coefs[2 * stride + i], coefs[3 * stride + i], h, slot, g_row);
        }
      }
      for (int c = 0; c < 4; ++c) dots[c * stride + i] = r[c] >= 0 ? d4[c] : 0.0f;
    }

    // 3. Point gradients, lanes over points. Points outside the gate (all four rows -1) get
    // zero gradients, whatever their attention weight.
    const auto one = hn::Set(d, 1.0f);
    // Discrete sampling has no location gradient.
    const auto loc_grad = hn::Set(d, p.sampling == Sampling::kBilinear ? 1.0f : 0.0f);
    const auto has_loc_grad = hn::Gt(loc_grad, hn::Zero(d));
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
      const auto loc_inside = hn::And(inside, has_loc_grad);
      hn::StoreU(hn::IfThenElseZero(loc_inside, gx), d, grad_x + i);
      hn::StoreU(hn::IfThenElseZero(loc_inside, gy), d, grad_y + i);
    }
    WritePointGradients(b, q, h, grad_x, grad_y, grad_a);

    // 4. With the counting sort, the contributions as entries at the key blocks' cursors.
    if constexpr (Sink::kWritesEntries) {
      for (int64_t i = 0; i < num_points; ++i) {
        for (int64_t at = i; at < 4 * stride; at += 2 * stride) {  // Corner pairs (0, 1), (2, 3).
          sink.Pair(k.rows[at], k.rows[at + stride], coefs[at], coefs[at + stride], h, slot, g_row);
        }
      }
    }
  }

  // The gradients of all points of one (batch, query, head) from fp32 rows: as vectors where
  // the outputs are fp32 and contiguous over (level, point), else point by point.
  void WritePointGradients(int64_t b, int64_t q, int64_t h, const float* grad_x,
                           const float* grad_y, const float* grad_a) const {
    const int64_t num_points = NumPoints();
    const hn::ScalableTag<float> d;
    const int64_t n = static_cast<int64_t>(hn::Lanes(d));
    int64_t done = 0;  // Points written as vectors.
    if constexpr (std::is_same<T, float>::value && std::is_same<Loc, float>::value) {
      const WeightStrides& sa = prm.grad_attn_strides;
      const LocationStrides& sl = prm.grad_loc_strides;
      if (bp().flat_point_grads) {
        float* ga = prm.grad_attn == nullptr ? nullptr
                                             : static_cast<float*>(prm.grad_attn) + b * sa.batch +
                                                   q * sa.query + h * sa.head;
        float* gl = prm.grad_loc == nullptr ? nullptr
                                            : static_cast<float*>(prm.grad_loc) + b * sl.batch +
                                                  q * sl.query + h * sl.head;
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
    for (int64_t l = 0, i = 0; l < p.num_levels(); ++l) {
      for (int64_t pt = 0; pt < p.LevelPoints(l); ++pt, ++i) {
        if (i >= done) StorePointGradients(b, q, h, l, pt, grad_x[i], grad_y[i], grad_a[i]);
      }
    }
  }

  void StorePointGradients(int64_t b, int64_t q, int64_t h, int64_t l, int64_t pt, Acc grad_x,
                           Acc grad_y, Acc grad_a) const {
    if (prm.grad_attn != nullptr) {
      const WeightStrides& s = prm.grad_attn_strides;
      Store<Acc>(static_cast<T*>(prm.grad_attn) + b * s.batch + q * s.query + h * s.head +
                     l * s.level + (p.TensorPoint(l) + pt) * s.point,
                 grad_a);
    }
    if (prm.grad_loc != nullptr) {
      const LocationStrides& s = prm.grad_loc_strides;
      Loc* gl = static_cast<Loc*>(prm.grad_loc) + b * s.batch + q * s.query + h * s.head +
                l * s.level + (p.TensorPoint(l) + pt) * s.point;
      Store<Acc>(gl, grad_x);
      Store<Acc>(gl + s.xy, grad_y);
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
};

}  // namespace HWY_NAMESPACE
}  // namespace cpu
}  // namespace msda
HWY_AFTER_NAMESPACE();

#endif  // MSDA_SRC_CPU_BACKWARD_POINTS_INL_H_ (per-target guard)
