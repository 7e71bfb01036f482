// The bilinear sampling geometry of one point and the row primitives shared by the forward
// and backward kernels. Everything here follows docs/semantics.md exactly.
#ifndef MSDA_SRC_CPU_SAMPLING_H_
#define MSDA_SRC_CPU_SAMPLING_H_

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cpu/numeric.h"
#include "msda/msda.h"
#include "problem.h"

namespace msda {
namespace cpu {

// Where one sampling point falls on its level. Corners are ordered (h0,w0), (h0,w0+1),
// (h0+1,w0), (h0+1,w0+1); a corner outside the map has row -1 and reads as zero.
template <typename Acc>
struct PointGeometry {
  bool inside = false;  // The gate: -1 < h_im < H and -1 < w_im < W (NaN and Inf fail it).
  Acc lh = 0, lw = 0;   // Fractional parts of h_im and w_im.
  int64_t row[4] = {-1, -1, -1, -1};  // Key rows (into value's keys dimension).
  Acc weight[4] = {0, 0, 0, 0};       // Bilinear corner weights.
};

// Discrete sampling's pixel index along a dim of `size` pixels: clamp(trunc(coord * size +
// 0.5), 0, size - 1) with each operation rounded in Acc; NaN gives 0, and values past the
// ends (infinities included) the nearest end.
template <typename Acc>
inline int64_t NearestIndex(Acc coord, int64_t size) {
  const Acc c = coord * static_cast<Acc>(size) + Acc(0.5);
  if (!(c > Acc(0))) return 0;
  if (c >= static_cast<Acc>(size - 1)) return size - 1;
  return std::min<int64_t>(static_cast<int64_t>(c), size - 1);
}

// Discrete sampling: one corner, the nearest pixel (clamped into the map), weight 1; never
// outside the gate, and no fractional parts (no location gradient).
template <typename Acc>
inline PointGeometry<Acc> LocateNearest(const Level& level, Acc x, Acc y) {
  PointGeometry<Acc> g;
  g.inside = true;
  g.row[0] =
      level.start + NearestIndex(y, level.height) * level.width + NearestIndex(x, level.width);
  g.weight[0] = Acc(1);
  return g;
}

template <typename Acc>
inline PointGeometry<Acc> Locate(const Level& level, Sampling sampling, Acc x, Acc y) {
  if (sampling == Sampling::kDiscrete) return LocateNearest<Acc>(level, x, y);
  PointGeometry<Acc> g;
  const Acc height = static_cast<Acc>(level.height);
  const Acc width = static_cast<Acc>(level.width);
  const Acc h_im = y * height - Acc(0.5);
  const Acc w_im = x * width - Acc(0.5);
  if (!(h_im > Acc(-1) && w_im > Acc(-1) && h_im < height && w_im < width)) return g;
  g.inside = true;
  // floor() by truncation and a fix-up for negative non-integers: exact here, and without
  // the libm call that std::floor becomes on baseline x86-64.
  int64_t h0 = static_cast<int64_t>(h_im);
  int64_t w0 = static_cast<int64_t>(w_im);
  h0 -= static_cast<Acc>(h0) > h_im;
  w0 -= static_cast<Acc>(w0) > w_im;
  g.lh = h_im - static_cast<Acc>(h0);
  g.lw = w_im - static_cast<Acc>(w0);
  const Acc hh = Acc(1) - g.lh;
  const Acc hw = Acc(1) - g.lw;
  g.weight[0] = hh * hw;
  g.weight[1] = hh * g.lw;
  g.weight[2] = g.lh * hw;
  g.weight[3] = g.lh * g.lw;
  const bool top = h0 >= 0, bottom = h0 + 1 <= level.height - 1;
  const bool left = w0 >= 0, right = w0 + 1 <= level.width - 1;
  const int64_t base = level.start + h0 * level.width + w0;
  if (top && left) g.row[0] = base;
  if (top && right) g.row[1] = base + 1;
  if (bottom && left) g.row[2] = base + level.width;
  if (bottom && right) g.row[3] = base + level.width + 1;
  return g;
}

// acc[d] += a * v[d * stride] for d < n.
template <typename T, typename Acc>
inline void Axpy(Acc* __restrict acc, Acc a, const T* __restrict v, int64_t stride, int64_t n) {
  if (stride == 1) {
    for (int64_t d = 0; d < n; ++d) acc[d] += a * Load<Acc>(v + d);
  } else {
    for (int64_t d = 0; d < n; ++d) acc[d] += a * Load<Acc>(v + d * stride);
  }
}

// sum over d < n of g[d] * v[d * stride]. The sum runs in 16 independent lanes, added
// pairwise at the end: a fixed order (so results do not depend on the machine's vector
// width) that the compiler can vectorise, which it cannot do for one serial float sum.
template <typename T, typename Acc>
inline Acc Dot(const Acc* __restrict g, const T* __restrict v, int64_t stride, int64_t n) {
  constexpr int kLanes = 16;
  Acc lanes[kLanes] = {};
  int64_t d = 0;
  if (stride == 1) {
    for (; d + kLanes <= n; d += kLanes) {
      for (int k = 0; k < kLanes; ++k) lanes[k] += g[d + k] * Load<Acc>(v + d + k);
    }
  } else {
    for (; d + kLanes <= n; d += kLanes) {
      for (int k = 0; k < kLanes; ++k) lanes[k] += g[d + k] * Load<Acc>(v + (d + k) * stride);
    }
  }
  for (int k = 0; d < n; ++d, ++k) lanes[k] += g[d] * Load<Acc>(v + d * stride);
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int k = 0; k < width; ++k) lanes[k] += lanes[k + width];
  }
  return lanes[0];
}

}  // namespace cpu
}  // namespace msda

#endif  // MSDA_SRC_CPU_SAMPLING_H_
