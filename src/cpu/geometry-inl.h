// Per-target SIMD geometry: the bilinear corners of all L*P points of one (batch, query, head)
// at once, lanes over points. Shared by the forward and backward kernels; included per target
// like rows-inl.h. Every lane does exactly what Locate (sampling.h) does for one point, so the
// SIMD and scalar paths agree bit for bit.

#if defined(MSDA_SRC_CPU_GEOMETRY_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MSDA_SRC_CPU_GEOMETRY_INL_H_
#undef MSDA_SRC_CPU_GEOMETRY_INL_H_
#else
#define MSDA_SRC_CPU_GEOMETRY_INL_H_
#endif

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu/rows-inl.h"
#include "hwy/highway.h"
#include "params.h"
#include "plan.h"
#include "problem.h"

HWY_BEFORE_NAMESPACE();
namespace msda {
namespace cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Corner c of point i: rows[c * stride + i] is its key row, or -1 when the corner is off the
// map or the point fails the gate; weights[c * stride + i] its bilinear weight. With lh / lw
// non-null, also the fractional parts of h_im and w_im (0 for points that fail the gate).
// stride >= the number of points rounded up to a multiple of the vector length.
HWY_INLINE void PointCorners(const Problem& p, const PointLevels& lv, const float* HWY_RESTRICT loc,
                             int32_t* HWY_RESTRICT rows, float* HWY_RESTRICT weights,
                             int64_t stride, float* HWY_RESTRICT lh_out,
                             float* HWY_RESTRICT lw_out) {
  const hn::ScalableTag<float> d;
  const hn::RebindToSigned<decltype(d)> di;
  const int64_t n = static_cast<int64_t>(hn::Lanes(d));
  const int64_t count = p.TotalPoints();
  const auto half = hn::Set(d, 0.5f), one = hn::Set(d, 1.0f), minus_one = hn::Set(d, -1.0f);
  const auto one_i = hn::Set(di, 1), minus_one_i = hn::Set(di, -1);
  // One vector of points from xy (interleaved x, y), written at point i. Lanes off `valid`
  // fail the gate: rows -1.
  auto corners = [&](const float* HWY_RESTRICT xy, int64_t i, hn::Mask<decltype(d)> valid) {
    hn::Vec<decltype(d)> x, y;
    hn::LoadInterleaved2(d, xy, x, y);
    const auto width = hn::LoadU(d, lv.width.data() + i);
    const auto height = hn::LoadU(d, lv.height.data() + i);
    auto w_im = hn::Sub(hn::Mul(x, width), half);
    auto h_im = hn::Sub(hn::Mul(y, height), half);
    // The gate; NaN fails every comparison. Points that fail it get coordinates 0 so that the
    // integer conversion below stays defined; their corners are masked off.
    const auto inside =
        hn::And(valid, hn::And(hn::And(hn::Gt(h_im, minus_one), hn::Gt(w_im, minus_one)),
                               hn::And(hn::Lt(h_im, height), hn::Lt(w_im, width))));
    h_im = hn::IfThenElseZero(inside, h_im);
    w_im = hn::IfThenElseZero(inside, w_im);
    const auto h0f = hn::Floor(h_im), w0f = hn::Floor(w_im);
    const auto lh = hn::Sub(h_im, h0f), lw = hn::Sub(w_im, w0f);
    const auto hh = hn::Sub(one, lh), hw = hn::Sub(one, lw);
    const auto h0 = hn::ConvertTo(di, h0f), w0 = hn::ConvertTo(di, w0f);
    const auto width_i = hn::LoadU(di, lv.width_i.data() + i);
    const auto height_i = hn::LoadU(di, lv.height_i.data() + i);
    const auto in_i = hn::RebindMask(di, inside);
    const auto top = hn::And(in_i, hn::Gt(h0, minus_one_i));
    const auto bottom = hn::And(in_i, hn::Lt(hn::Add(h0, one_i), height_i));
    const auto left = hn::Gt(w0, minus_one_i);
    const auto right = hn::Lt(hn::Add(w0, one_i), width_i);
    const auto base =
        hn::Add(hn::LoadU(di, lv.start_i.data() + i), hn::Add(hn::Mul(h0, width_i), w0));
    const auto below = hn::Add(base, width_i);
    hn::StoreU(hn::IfThenElse(hn::And(top, left), base, minus_one_i), di, rows + i);
    hn::StoreU(hn::IfThenElse(hn::And(top, right), hn::Add(base, one_i), minus_one_i), di,
               rows + stride + i);
    hn::StoreU(hn::IfThenElse(hn::And(bottom, left), below, minus_one_i), di,
               rows + 2 * stride + i);
    hn::StoreU(hn::IfThenElse(hn::And(bottom, right), hn::Add(below, one_i), minus_one_i), di,
               rows + 3 * stride + i);
    hn::StoreU(hn::Mul(hh, hw), d, weights + i);
    hn::StoreU(hn::Mul(hh, lw), d, weights + stride + i);
    hn::StoreU(hn::Mul(lh, hw), d, weights + 2 * stride + i);
    hn::StoreU(hn::Mul(lh, lw), d, weights + 3 * stride + i);
    if (lh_out != nullptr) {
      hn::StoreU(lh, d, lh_out + i);
      hn::StoreU(lw, d, lw_out + i);
    }
  };
  // Discrete sampling (LocateNearest): corner 0 is the nearest pixel, weight 1; the others
  // are off the map.
  const auto zero = hn::Zero(d);
  auto nearest = [&](const float* HWY_RESTRICT xy, int64_t i, hn::Mask<decltype(d)> valid) {
    hn::Vec<decltype(d)> x, y;
    hn::LoadInterleaved2(d, xy, x, y);
    const auto width = hn::LoadU(d, lv.width.data() + i);
    const auto height = hn::LoadU(d, lv.height.data() + i);
    auto index = [&](hn::Vec<decltype(d)> c, hn::Vec<decltype(d)> size) {
      c = hn::Add(hn::Mul(c, size), half);
      c = hn::IfThenElseZero(hn::Gt(c, zero), c);                // NaN and c <= 0: 0.
      return hn::ConvertTo(di, hn::Min(c, hn::Sub(size, one)));  // Truncates.
    };
    const auto row = hn::Add(
        hn::LoadU(di, lv.start_i.data() + i),
        hn::Add(hn::Mul(index(y, height), hn::LoadU(di, lv.width_i.data() + i)), index(x, width)));
    hn::StoreU(hn::IfThenElse(hn::RebindMask(di, valid), row, minus_one_i), di, rows + i);
    for (int c = 1; c < 4; ++c) {
      hn::StoreU(minus_one_i, di, rows + c * stride + i);
      hn::StoreU(zero, d, weights + c * stride + i);
    }
    hn::StoreU(hn::IfThenElseZero(valid, one), d, weights + i);
    if (lh_out != nullptr) {
      hn::StoreU(zero, d, lh_out + i);
      hn::StoreU(zero, d, lw_out + i);
    }
  };
  const bool discrete = p.sampling == Sampling::kDiscrete;
  auto run = [&](const float* HWY_RESTRICT xy, int64_t i, hn::Mask<decltype(d)> valid) {
    if (discrete) {
      nearest(xy, i, valid);
    } else {
      corners(xy, i, valid);
    }
  };
  int64_t i = 0;
  for (; i + n <= count; i += n) run(loc + 2 * i, i, hn::FirstN(d, static_cast<size_t>(n)));
  if (i < count) {
    // The last partial vector (all of them when L * P is below the vector length, as for
    // L = 4, P = 2 or 3 on AVX-512) from a zero-padded copy, since loc may end right after
    // the last point; the padding lanes fail the gate. The scratch rows and level tables are
    // padded to whole vectors.
    HWY_ALIGN float tail[2 * hn::MaxLanes(d)] = {};
    std::copy(loc + 2 * i, loc + 2 * count, tail);
    run(tail, i, hn::FirstN(d, static_cast<size_t>(count - i)));
  }
}

// The (x, y) pairs of a (query, head)'s `count` points as fp32, for PointCorners: fp32
// locations in place, half-typed ones widened into `scratch` (2 * count floats), each
// coordinate exactly as Load<float> widens it on the scalar path.
template <typename Loc>
HWY_INLINE const float* PointLocations(const Loc* HWY_RESTRICT loc, int64_t count,
                                       float* HWY_RESTRICT scratch) {
  if constexpr (std::is_same<Loc, float>::value) {
    return loc;
  } else {
    WidenRow<Loc, float>(loc, 2 * count, scratch);
    return scratch;
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace cpu
}  // namespace msda
HWY_AFTER_NAMESPACE();

#endif  // MSDA_SRC_CPU_GEOMETRY_INL_H_
