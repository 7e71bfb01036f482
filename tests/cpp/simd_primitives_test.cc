// The kernels' SIMD primitives (src/cpu/rows-inl.h, geometry-inl.h) on every SIMD target this
// build compiles and this CPU runs, in one process: the file is compiled once per target
// (Highway's foreach_target) and each test runs once per target (Highway's
// HWY_EXPORT_AND_TEST_P), against references computed here in fp64. Row lengths cross every
// vector boundary of the target (1, n - 1, n, n + 1, ... 4n + 3 lanes) so that every loop and
// tail of a primitive runs; canaries after each output catch a store past the row.

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "simd_primitives_test.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

// The per-target headers must follow foreach_target.
// clang-format off
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cpu/geometry-inl.h"
#include "cpu/numeric.h"
#include "cpu/rows-inl.h"
#include "cpu/simd.h"
#include "hwy/highway.h"
#include "hwy/tests/hwy_gtest.h"
#include "plan.h"
#include "problem.h"
// clang-format on

// Target-independent helpers, compiled once.
#ifndef MSDA_TESTS_SIMD_PRIMITIVES_ONCE_
#define MSDA_TESTS_SIMD_PRIMITIVES_ONCE_
namespace msda {
namespace cpu {
namespace primitives_test {

constexpr float kCanary = -1234.5f;

// The storage types' values in fp64, written from their bit layouts (not numeric.h's
// conversions, which are what the widening primitives use).
inline double ToDouble(float v) { return v; }
inline double ToDouble(double v) { return v; }
inline double ToDouble(Half h) {
  const int sign = (h.bits >> 15) ? -1 : 1;
  const int exponent = (h.bits >> 10) & 0x1F;
  const int mantissa = h.bits & 0x3FF;
  if (exponent == 0x1F) {
    return mantissa ? std::numeric_limits<double>::quiet_NaN()
                    : sign * std::numeric_limits<double>::infinity();
  }
  if (exponent == 0) return sign * std::ldexp(mantissa, -24);  // Subnormal or zero.
  return sign * std::ldexp(1024 + mantissa, exponent - 25);
}
inline double ToDouble(BFloat16 b) {
  const int sign = (b.bits >> 15) ? -1 : 1;
  const int exponent = (b.bits >> 7) & 0xFF;
  const int mantissa = b.bits & 0x7F;
  if (exponent == 0xFF) {
    return mantissa ? std::numeric_limits<double>::quiet_NaN()
                    : sign * std::numeric_limits<double>::infinity();
  }
  if (exponent == 0) return sign * std::ldexp(mantissa, -133);
  return sign * std::ldexp(128 + mantissa, exponent - 134);
}

// A storage value near v (any rounding will do: the references read back what was stored).
template <typename T>
T FromFloat(float v) {
  return static_cast<T>(v);
}
template <>
inline Half FromFloat<Half>(float v) {
  return Half{FloatToHalf(v)};
}
template <>
inline BFloat16 FromFloat<BFloat16>(float v) {
  return BFloat16{FloatToBFloat16(v)};
}

// The row lengths that cross every vector boundary of a target with n lanes.
inline std::vector<int64_t> RowLengths(int64_t n) {
  std::vector<int64_t> dims = {1, 2, 3, 5, 7, 32, 37};
  for (int64_t k = 1; k <= 4; ++k) {
    for (int64_t extra : {-1, 0, 1, 3}) dims.push_back(k * n + extra);
  }
  dims.push_back(6 * n + 5);
  std::sort(dims.begin(), dims.end());
  dims.erase(std::unique(dims.begin(), dims.end()), dims.end());
  dims.erase(std::remove_if(dims.begin(), dims.end(), [](int64_t d) { return d < 1; }), dims.end());
  return dims;
}

// float(a op b) computed exactly in fp64 and rounded once: fp32 arithmetic that the compiler
// cannot fuse into an FMA (the primitives multiply and add in separate instructions).
inline float MulF(float a, float b) { return static_cast<float>(double{a} * double{b}); }
inline float SubF(float a, float b) { return static_cast<float>(double{a} - double{b}); }

}  // namespace primitives_test
}  // namespace cpu
}  // namespace msda
#endif  // MSDA_TESTS_SIMD_PRIMITIVES_ONCE_

HWY_BEFORE_NAMESPACE();
namespace msda {
namespace cpu {
namespace HWY_NAMESPACE {
namespace {

using primitives_test::FromFloat;
using primitives_test::kCanary;
using primitives_test::RowLengths;
using primitives_test::ToDouble;

template <typename Acc>
int64_t LanesOf() {
  return static_cast<int64_t>(hn::Lanes(hn::ScalableTag<Acc>()));
}

// A bound on the error of a sum of `terms` products in Acc, relative to the sum of |products|.
template <typename Acc>
double SumBound(int64_t terms, double magnitude) {
  return 2.0 * static_cast<double>(terms + 1) * std::numeric_limits<Acc>::epsilon() * magnitude +
         std::numeric_limits<Acc>::min();
}

template <typename T, typename Acc, typename Index>
void CheckGatherRows() {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  for (int64_t dims : RowLengths(LanesOf<Acc>())) {
    const int64_t scale = dims + 3, keys = 11;  // Padded rows, as in a [keys, heads, dims] view.
    std::vector<T> base(static_cast<size_t>(keys * scale));
    for (T& v : base) v = FromFloat<T>(u(rng));
    for (int64_t count : {0, 1, 2, 3, 4, 5, 8, 9, 16}) {
      std::vector<Index> offsets(static_cast<size_t>(count));
      std::vector<Acc> weights(static_cast<size_t>(count));
      for (int64_t i = 0; i < count; ++i) {
        offsets[i] = static_cast<Index>(rng() % keys);
        weights[i] = static_cast<Acc>(u(rng));
      }
      std::vector<Acc> out(static_cast<size_t>(dims + 1), static_cast<Acc>(kCanary));
      GatherRows(base.data(), offsets.data(), scale, weights.data(), count, dims, out.data());
      for (int64_t k = 0; k < dims; ++k) {
        double expected = 0, magnitude = 0;
        for (int64_t i = 0; i < count; ++i) {
          const double term = double{weights[i]} * ToDouble(base[offsets[i] * scale + k]);
          expected += term;
          magnitude += std::fabs(term);
        }
        ASSERT_NEAR(out[k], expected, SumBound<Acc>(count, magnitude))
            << "dims " << dims << " count " << count << " k " << k;
      }
      ASSERT_EQ(out[dims], static_cast<Acc>(kCanary)) << "stored past the row, dims " << dims;
    }
  }
}

void TestGatherRows() {
  CheckGatherRows<float, float, int32_t>();
  CheckGatherRows<float, float, int64_t>();
  CheckGatherRows<double, double, int32_t>();
  CheckGatherRows<Half, float, int32_t>();
  CheckGatherRows<BFloat16, float, int64_t>();
}

template <typename T, typename Acc>
void CheckDotRow() {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  for (int64_t dims : RowLengths(LanesOf<Acc>())) {
    std::vector<Acc> g(static_cast<size_t>(dims));
    std::vector<T> row(static_cast<size_t>(dims));
    double expected = 0, magnitude = 0;
    for (int64_t k = 0; k < dims; ++k) {
      g[k] = static_cast<Acc>(u(rng));
      row[k] = FromFloat<T>(u(rng));
      expected += double{g[k]} * ToDouble(row[k]);
      magnitude += std::fabs(double{g[k]} * ToDouble(row[k]));
    }
    const Acc got = DotRow<T, Acc>(g.data(), row.data(), dims);
    ASSERT_NEAR(got, expected, SumBound<Acc>(dims, magnitude)) << "dims " << dims;
  }
}

void TestDotRow() {
  CheckDotRow<float, float>();
  CheckDotRow<double, double>();
  CheckDotRow<Half, float>();
  CheckDotRow<BFloat16, float>();
}

template <typename T>
void CheckDotRows4() {
  std::mt19937 rng(13);
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  for (int64_t dims : RowLengths(LanesOf<float>())) {
    std::vector<float> g(static_cast<size_t>(dims));
    std::vector<T> rows[4];
    for (auto& r : rows) r.resize(static_cast<size_t>(dims));
    for (int64_t k = 0; k < dims; ++k) {
      g[k] = u(rng);
      for (auto& r : rows) r[k] = FromFloat<T>(u(rng));
    }
    float out[5] = {kCanary, kCanary, kCanary, kCanary, kCanary};
    DotRows4(g.data(), rows[0].data(), rows[1].data(), rows[2].data(), rows[3].data(), dims, out);
    for (int c = 0; c < 4; ++c) {
      double expected = 0, magnitude = 0;
      for (int64_t k = 0; k < dims; ++k) {
        expected += double{g[k]} * ToDouble(rows[c][k]);
        magnitude += std::fabs(double{g[k]} * ToDouble(rows[c][k]));
      }
      ASSERT_NEAR(out[c], expected, SumBound<float>(dims, magnitude))
          << "dims " << dims << " row " << c;
    }
    ASSERT_EQ(out[4], kCanary);
  }
}

void TestDotRows4() {
  CheckDotRows4<float>();
  CheckDotRows4<Half>();
  CheckDotRows4<BFloat16>();
}

// SumLanes4 reduces four vectors at once by interleaving: with small integers every partial
// sum is exact, so a lane sent to the wrong sum (or dropped) shows as an exact mismatch.
void TestSumLanes4() {
#if HWY_TARGET == HWY_SCALAR
  GTEST_SKIP() << "no SumLanes4 on the scalar target (DotRows4 sums row by row there)";
#else
  const hn::ScalableTag<float> d;
  const int64_t n = static_cast<int64_t>(hn::Lanes(d));
  std::vector<float> lanes(static_cast<size_t>(4 * n));
  for (int trial = 0; trial < 3; ++trial) {
    for (int64_t i = 0; i < 4 * n; ++i) {
      lanes[i] = trial == 0 ? static_cast<float>(i + 1)  // Distinct: a swap changes the sum.
                            : static_cast<float>((i * 37 + trial * 11) % 29) - 14.0f;
    }
    float out[5] = {kCanary, kCanary, kCanary, kCanary, kCanary};
    SumLanes4(d, hn::LoadU(d, &lanes[0]), hn::LoadU(d, &lanes[n]), hn::LoadU(d, &lanes[2 * n]),
              hn::LoadU(d, &lanes[3 * n]), out);
    for (int c = 0; c < 4; ++c) {
      double expected = 0;
      for (int64_t i = 0; i < n; ++i) expected += lanes[c * n + i];
      ASSERT_EQ(out[c], expected) << "vector " << c << " trial " << trial << " lanes " << n;
    }
    ASSERT_EQ(out[4], kCanary);
  }
#endif
}

template <typename Acc>
void CheckAxpyRows() {
  std::mt19937 rng(17);
  for (int64_t dims : RowLengths(LanesOf<Acc>())) {
    // Small integers and a power-of-two factor: every result is exact in either type.
    std::vector<Acc> x(dims), acc0(dims + 1), acc1(dims + 1);
    for (int64_t k = 0; k < dims; ++k) {
      x[k] = static_cast<Acc>(static_cast<int>(rng() % 17) - 8);
      acc0[k] = static_cast<Acc>(static_cast<int>(rng() % 9) - 4);
      acc1[k] = static_cast<Acc>(static_cast<int>(rng() % 9) - 4);
    }
    acc0[dims] = acc1[dims] = static_cast<Acc>(kCanary);
    const std::vector<Acc> start0 = acc0, start1 = acc1;
    const Acc a0 = static_cast<Acc>(0.75), a1 = static_cast<Acc>(-2.5);
    AxpyRow(acc0.data(), a0, x.data(), dims);
    for (int64_t k = 0; k < dims; ++k) {
      ASSERT_EQ(acc0[k], start0[k] + a0 * x[k]) << "AxpyRow dims " << dims << " k " << k;
    }
    ASSERT_EQ(acc0[dims], static_cast<Acc>(kCanary));
    acc0 = start0;
    AxpyRowPair(acc0.data(), a0, acc1.data(), a1, x.data(), dims);
    for (int64_t k = 0; k < dims; ++k) {
      ASSERT_EQ(acc0[k], start0[k] + a0 * x[k]) << "AxpyRowPair dims " << dims << " k " << k;
      ASSERT_EQ(acc1[k], start1[k] + a1 * x[k]) << "AxpyRowPair dims " << dims << " k " << k;
    }
    ASSERT_EQ(acc0[dims], static_cast<Acc>(kCanary));
    ASSERT_EQ(acc1[dims], static_cast<Acc>(kCanary));
  }
}

void TestAxpyRows() {
  CheckAxpyRows<float>();
  CheckAxpyRows<double>();
}

// Every 16-bit pattern widens exactly (NaN to NaN), whatever part of a row it falls in: the
// row runs three patterns past 2^16, so that some also land in the scalar tail.
template <typename T>
void CheckWidenAll() {
  const int64_t dims = 65536 + 3;
  std::vector<T> src(dims);
  for (int64_t i = 0; i < dims; ++i) src[i].bits = static_cast<uint16_t>(i & 0xFFFF);
  std::vector<float> row(dims + 1, kCanary);
  WidenRow(src.data(), dims, row.data());
  for (int64_t i = 0; i < dims; ++i) {
    const double expected = ToDouble(src[i]);
    if (std::isnan(expected)) {
      ASSERT_TRUE(std::isnan(row[i])) << "bits " << (i & 0xFFFF);
    } else {
      ASSERT_EQ(row[i], expected) << "bits " << (i & 0xFFFF);
    }
  }
  ASSERT_EQ(row[dims], kCanary);
}

template <typename T, typename Acc>
void CheckWidenNarrowLengths() {
  std::mt19937 rng(19);
  std::uniform_real_distribution<float> u(-3.0f, 3.0f);
  for (int64_t dims : RowLengths(LanesOf<Acc>())) {
    std::vector<T> src(dims), back(dims + 1);
    for (T& v : src) v = FromFloat<T>(u(rng));
    std::vector<Acc> row(dims + 1, static_cast<Acc>(kCanary));
    WidenRow(src.data(), dims, row.data());
    ASSERT_EQ(row[dims], static_cast<Acc>(kCanary));
    std::memset(static_cast<void*>(&back[dims]), 0x5A, sizeof(T));
    NarrowRow(row.data(), dims, back.data());
    for (int64_t k = 0; k < dims; ++k) {
      ASSERT_EQ(row[k], ToDouble(src[k])) << "dims " << dims << " k " << k;
      // Representable values survive the round trip exactly.
      ASSERT_EQ(std::memcmp(&back[k], &src[k], sizeof(T)), 0) << "dims " << dims << " k " << k;
    }
    T canary;
    std::memset(static_cast<void*>(&canary), 0x5A, sizeof(T));
    ASSERT_EQ(std::memcmp(&back[dims], &canary, sizeof(T)), 0) << "stored past the row";
  }
}

// NarrowRow to a half type rounds to nearest, ties to even: checked on the exact midpoints
// between neighbouring half values (and a quarter either side of them) for a range of
// exponents, against the neighbours' fp64 values.
template <typename T>
void CheckNarrowRounding(int mantissa_bits) {
  std::vector<float> src;
  std::vector<uint16_t> low_bits;
  for (uint32_t bits = 1; bits < 0x7B00; bits += 97) {  // Positive finite values of both types.
    T lo, hi;
    lo.bits = static_cast<uint16_t>(bits);
    hi.bits = static_cast<uint16_t>(bits + 1);
    const double a = ToDouble(lo), b = ToDouble(hi);
    if (!std::isfinite(b)) break;
    for (double f : {0.5, 0.25, 0.75}) {
      const float x = static_cast<float>(a + (b - a) * f);
      if (static_cast<double>(x) != a + (b - a) * f) continue;  // Needs more than fp32 bits.
      src.push_back(x);
      low_bits.push_back(static_cast<uint16_t>(bits));
      src.push_back(-x);
      low_bits.push_back(static_cast<uint16_t>(bits | 0x8000u));
    }
  }
  ASSERT_GT(src.size(), 100u);
  std::vector<T> out(src.size());
  NarrowRow(src.data(), static_cast<int64_t>(src.size()), out.data());
  for (size_t i = 0; i < src.size(); ++i) {
    T lo, hi;
    lo.bits = low_bits[i];
    hi.bits = static_cast<uint16_t>(low_bits[i] + 1);
    const double a = std::fabs(ToDouble(lo)), b = std::fabs(ToDouble(hi));
    const double x = std::fabs(static_cast<double>(src[i]));
    uint16_t expected;
    if (x - a < b - x) {
      expected = lo.bits;
    } else if (x - a > b - x) {
      expected = hi.bits;
    } else {  // A tie: the even mantissa.
      expected = (lo.bits & 1u) == 0 ? lo.bits : hi.bits;
    }
    ASSERT_EQ(out[i].bits, expected)
        << "value " << src[i] << " (" << mantissa_bits << "-bit mantissa)";
  }
}

void TestWidenAndNarrowRows() {
  CheckWidenAll<Half>();
  CheckWidenAll<BFloat16>();
  CheckWidenNarrowLengths<float, float>();
  CheckWidenNarrowLengths<double, double>();
  CheckWidenNarrowLengths<Half, float>();
  CheckWidenNarrowLengths<BFloat16, float>();
  CheckNarrowRounding<Half>(10);
  CheckNarrowRounding<BFloat16>(7);
}

// PointCorners for all L * P points of a (query, head) against Locate's rules, written out
// here in fp32 steps: rows and weights bit for bit, points on the gate's edges, on pixel
// centres, NaN, infinities and huge coordinates included, and point counts below, at and
// across the vector length.
void TestPointCorners() {
  const hn::ScalableTag<float> d;
  const int64_t n = static_cast<int64_t>(hn::Lanes(d));
  std::mt19937 rng(23);
  std::uniform_real_distribution<float> u(-0.3f, 1.3f);
  const std::vector<Level> levels = {{3, 5, 0}, {1, 1, 15}, {2, 7, 16}, {6, 4, 30}};
  for (int64_t num_levels : {1, 2, 4}) {
    for (int64_t points : {1, 2, 3, 4, 5, 8, 9}) {
      Problem p;
      p.points = points;
      p.levels.assign(levels.begin(), levels.begin() + num_levels);
      const int64_t count = num_levels * points;
      const int64_t stride = (count + n - 1) / n * n;  // The smallest stride PointCorners allows.
      PointLevels lv;
      for (auto* v : {&lv.width, &lv.height}) v->assign(stride, 1.0f);
      for (auto* v : {&lv.width_i, &lv.height_i, &lv.start_i}) v->assign(stride, 1);
      for (int64_t i = 0; i < count; ++i) {
        const Level& level = p.levels[i / points];
        lv.width[i] = static_cast<float>(level.width);
        lv.height[i] = static_cast<float>(level.height);
        lv.width_i[i] = static_cast<int32_t>(level.width);
        lv.height_i[i] = static_cast<int32_t>(level.height);
        lv.start_i[i] = static_cast<int32_t>(level.start);
      }
      const float specials[] = {std::nanf(""),
                                std::numeric_limits<float>::infinity(),
                                -std::numeric_limits<float>::infinity(),
                                1e30f,
                                -1e30f,
                                0.0f,
                                1.0f};
      for (int trial = 0; trial < 4; ++trial) {
        std::vector<float> loc(2 * count);  // Exactly the points' (x, y): nothing after them.
        for (int64_t i = 0; i < count; ++i) {
          const Level& level = p.levels[i / points];
          float x = u(rng), y = u(rng);
          const int64_t kind = (i + trial) % 6;
          if (kind == 1) x = 0.5f / static_cast<float>(level.width);   // Pixel centre.
          if (kind == 2) x = -0.5f / static_cast<float>(level.width);  // On the -1 edge.
          if (kind == 3) y = (static_cast<float>(level.height) + 0.5f) / level.height;
          if (kind == 4) y = specials[(i + trial) % 7];
          if (kind == 5 && trial > 1) x = specials[(i * 3 + trial) % 7];
          loc[2 * i] = x;
          loc[2 * i + 1] = y;
        }
        std::vector<int32_t> rows(4 * stride, 77);
        std::vector<float> weights(4 * stride, kCanary), lh(stride, kCanary), lw(stride, kCanary);
        PointCorners(p, lv, loc.data(), rows.data(), weights.data(), stride, lh.data(), lw.data());
        for (int64_t i = 0; i < count; ++i) {
          const Level& level = p.levels[i / points];
          const float width = static_cast<float>(level.width);
          const float height = static_cast<float>(level.height);
          using primitives_test::MulF;
          using primitives_test::SubF;
          const float w_im = SubF(MulF(loc[2 * i], width), 0.5f);
          const float h_im = SubF(MulF(loc[2 * i + 1], height), 0.5f);
          const bool inside = h_im > -1.0f && w_im > -1.0f && h_im < height && w_im < width;
          int64_t expected_rows[4] = {-1, -1, -1, -1};
          float expected_w[4] = {1.0f, 0.0f, 0.0f, 0.0f}, elh = 0.0f, elw = 0.0f;
          if (inside) {
            const double h0 = std::floor(h_im), w0 = std::floor(w_im);
            elh = SubF(h_im, static_cast<float>(h0));
            elw = SubF(w_im, static_cast<float>(w0));
            const float hh = SubF(1.0f, elh), hw = SubF(1.0f, elw);
            expected_w[0] = MulF(hh, hw);
            expected_w[1] = MulF(hh, elw);
            expected_w[2] = MulF(elh, hw);
            expected_w[3] = MulF(elh, elw);
            const int64_t base =
                level.start + static_cast<int64_t>(h0) * level.width + static_cast<int64_t>(w0);
            const bool top = h0 >= 0, bottom = h0 + 1 <= level.height - 1;
            const bool left = w0 >= 0, right = w0 + 1 <= level.width - 1;
            if (top && left) expected_rows[0] = base;
            if (top && right) expected_rows[1] = base + 1;
            if (bottom && left) expected_rows[2] = base + level.width;
            if (bottom && right) expected_rows[3] = base + level.width + 1;
          }
          for (int c = 0; c < 4; ++c) {
            ASSERT_EQ(rows[c * stride + i], expected_rows[c])
                << "point " << i << " of " << count << " corner " << c << " at (" << loc[2 * i]
                << ", " << loc[2 * i + 1] << ")";
            if (expected_rows[c] >= 0) {  // An off-map corner's weight is never read.
              ASSERT_EQ(weights[c * stride + i], expected_w[c]) << "point " << i << " corner " << c;
            }
          }
          if (inside) {
            ASSERT_EQ(lh[i], elh) << "point " << i;
            ASSERT_EQ(lw[i], elw) << "point " << i;
          }
        }
        // Padding lanes (points count..stride) fail the gate.
        for (int64_t i = count; i < stride; ++i) {
          for (int c = 0; c < 4; ++c) ASSERT_EQ(rows[c * stride + i], -1) << "padding lane " << i;
        }
      }
    }
  }
}

}  // namespace
// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace cpu
}  // namespace msda
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace msda {
namespace cpu {
namespace {
HWY_BEFORE_TEST(SimdPrimitives);
HWY_EXPORT_AND_TEST_P(SimdPrimitives, TestGatherRows);
HWY_EXPORT_AND_TEST_P(SimdPrimitives, TestDotRow);
HWY_EXPORT_AND_TEST_P(SimdPrimitives, TestDotRows4);
HWY_EXPORT_AND_TEST_P(SimdPrimitives, TestSumLanes4);
HWY_EXPORT_AND_TEST_P(SimdPrimitives, TestAxpyRows);
HWY_EXPORT_AND_TEST_P(SimdPrimitives, TestWidenAndNarrowRows);
HWY_EXPORT_AND_TEST_P(SimdPrimitives, TestPointCorners);

// The tests above ran on exactly the targets the library's kernels dispatch to (this file
// and src/cpu/ are compiled for the same set).
TEST(SimdPrimitivesTargets, AreTheKernelsTargets) {
  std::vector<std::string> tested;
  for (int64_t t : hwy::SupportedAndGeneratedTargets()) tested.push_back(hwy::TargetName(t));
  EXPECT_EQ(tested, AvailableTargets());
  EXPECT_FALSE(tested.empty());
}
}  // namespace
}  // namespace cpu
}  // namespace msda
#endif
