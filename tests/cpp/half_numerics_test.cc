// Numerics under half types on a large map: with FLOAT16 / BFLOAT16 value and FLOAT32
// locations, sampling positions keep fp32 precision (half types are storage only), and no NaN
// appears unless an input holds one.
#include <gtest/gtest.h>
#include <msda/msda.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "reference.h"

namespace {

using msda_test::ElementBytes;
using msda_test::LoadElement;
using msda_test::StoreElement;
using msda_test::UnitRoundoff;

constexpr int64_t kSide = 1024;  // One level, kSide x kSide.
constexpr int64_t kDims = 16;

// The forward of one side x side level, one head, one point per query: value [side * side,
// dims] and attention_weights [queries] in dtype, fp32 locations [queries, 2]; writes out
// [queries, dims] in dtype.
void ForwardOneLevel(msdaDataType dtype, int64_t side, int64_t dims, int64_t queries,
                     std::vector<unsigned char>& value, std::vector<float>& loc,
                     std::vector<unsigned char>& attn, std::vector<unsigned char>& out) {
  std::vector<int64_t> shapes = {side, side}, starts = {0};
  const int64_t vd[4] = {1, side * side, 1, dims}, sd[2] = {1, 2}, ld[1] = {1};
  const int64_t pd[6] = {1, queries, 1, 1, 1, 2}, ad[5] = {1, queries, 1, 1, 1};
  const int64_t od[3] = {1, queries, dims};
  msdaTensor* t[6] = {
      msdaCreateTensor(vd, 4, dtype, nullptr, 0, MSDA_DEVICE_CPU, 0, value.data()),
      msdaCreateTensor(sd, 2, MSDA_INT64, nullptr, 0, MSDA_DEVICE_CPU, 0, shapes.data()),
      msdaCreateTensor(ld, 1, MSDA_INT64, nullptr, 0, MSDA_DEVICE_CPU, 0, starts.data()),
      msdaCreateTensor(pd, 6, MSDA_FLOAT32, nullptr, 0, MSDA_DEVICE_CPU, 0, loc.data()),
      msdaCreateTensor(ad, 5, dtype, nullptr, 0, MSDA_DEVICE_CPU, 0, attn.data()),
      msdaCreateTensor(od, 3, dtype, nullptr, 0, MSDA_DEVICE_CPU, 0, out.data())};
  uint64_t size = 0;
  msdaExecutor* e = nullptr;
  EXPECT_EQ(msdaForwardGetWorkspaceSize(t[0], t[1], t[2], t[3], t[4], t[5], &size, &e),
            MSDA_SUCCESS)
      << msdaGetLastErrorMessage();
  std::vector<unsigned char> workspace(size, 0xFF);
  EXPECT_EQ(msdaForward(workspace.data(), size, e, nullptr), MSDA_SUCCESS);
  for (msdaTensor* x : t) msdaDestroyTensor(x);
}

class HalfNumerics : public ::testing::TestWithParam<msdaDataType> {};

// Channel d of value is one at pixel P_d and zero elsewhere (exact in every dtype). Query q
// samples a random point within a pixel of P_(q mod D), so output channel q mod D is exactly
// one bilinear corner weight, a number in [0, 1] that moves by about 1 per pixel of position
// error. If the library rounded coordinates to the half type the position would be off by up to
// 2^-8 * 1024 = 4 pixels (bf16) or 0.5 pixel (fp16); in fp32 it is off by at most
// 2^-24 * (2 * 1024 + 4) pixels.
TEST_P(HalfNumerics, PositionsAreExactToFp32CoordinateError) {
  const msdaDataType dtype = GetParam();
  const int64_t queries = 512;
  std::mt19937 rng(7);
  std::uniform_int_distribution<int64_t> pixel(1, kSide - 2);
  std::uniform_real_distribution<double> jitter(-1.0, 1.0);

  std::vector<int64_t> hot(kDims);
  for (int64_t& k : hot) k = pixel(rng) * kSide + pixel(rng);
  std::vector<unsigned char> value(static_cast<size_t>(kSide * kSide * kDims * ElementBytes(dtype)),
                                   0);
  for (int64_t d = 0; d < kDims; ++d) {
    StoreElement(&value[(hot[d] * kDims + d) * ElementBytes(dtype)], dtype, 1.0);
  }
  std::vector<float> loc(queries * 2);
  for (int64_t q = 0; q < queries; ++q) {
    const int64_t k = hot[q % kDims];
    // Centre of pixel (h, w) is ((w + 0.5) / W, (h + 0.5) / H); move up to a pixel away.
    loc[2 * q] = static_cast<float>((k % kSide + 0.5 + jitter(rng)) / kSide);
    loc[2 * q + 1] = static_cast<float>((k / kSide + 0.5 + jitter(rng)) / kSide);
  }
  std::vector<unsigned char> attn(queries * ElementBytes(dtype));
  for (int64_t q = 0; q < queries; ++q) StoreElement(&attn[q * ElementBytes(dtype)], dtype, 1.0);
  std::vector<unsigned char> out(queries * kDims * ElementBytes(dtype), 0xFF);

  ForwardOneLevel(dtype, kSide, kDims, queries, value, loc, attn, out);
  ASSERT_FALSE(HasFailure());

  const double coordinate_error = std::ldexp(1.0, -24) * (2.0 * kSide + 4.0);
  double worst = 0;
  for (int64_t q = 0; q < queries; ++q) {
    const int64_t d_hot = q % kDims, k = hot[d_hot];
    // fp64 reference from the fp32 location the library reads.
    const double w_im = static_cast<double>(loc[2 * q]) * kSide - 0.5;
    const double h_im = static_cast<double>(loc[2 * q + 1]) * kSide - 0.5;
    const double dh = std::abs(h_im - static_cast<double>(k / kSide));
    const double dw = std::abs(w_im - static_cast<double>(k % kSide));
    const double want = std::max(0.0, 1.0 - dh) * std::max(0.0, 1.0 - dw);
    for (int64_t d = 0; d < kDims; ++d) {
      const double got = LoadElement(&out[(q * kDims + d) * ElementBytes(dtype)], dtype);
      ASSERT_FALSE(std::isnan(got)) << "query " << q << " channel " << d;
      if (d != d_hot) {
        // Another channel's hot pixel may be near by chance; only check this one's.
        continue;
      }
      // Weight error from the coordinate (both axes, slope <= 1) plus the output rounding.
      const double tolerance =
          2.0 * coordinate_error + UnitRoundoff(dtype) * want + 4 * std::ldexp(1.0, -24);
      worst = std::max(worst, std::abs(got - want) / tolerance);
      EXPECT_NEAR(got, want, tolerance)
          << "query " << q << " dtype " << msda_test::DtypeName(dtype);
    }
  }
  RecordProperty("worst_error_over_tolerance", std::to_string(worst));
}

// Large but finite inputs in half types never make NaN, forward or backward. Results can
// overflow to +-Inf when they are stored in the half type, which is IEEE behaviour, but no
// Inf - Inf arises inside, because arithmetic runs in fp32: the FLOAT16 range (65504) squared
// and summed stays far inside fp32. BFLOAT16 has fp32's range, so its inputs are kept where
// products of three of them (value, weight, gradient) stay finite in fp32.
TEST_P(HalfNumerics, NoNanFromFiniteInputs) {
  const msdaDataType dtype = GetParam();
  const int64_t queries = 300, heads = 2, levels = 2, points = 3, dims = 8;
  const int64_t keys = kSide * kSide / 16 + 64 * 64;
  std::mt19937 rng(11);
  const double big = dtype == MSDA_FLOAT16 ? 60000.0 : 1e12;
  std::uniform_real_distribution<double> values(-big, big), unit(-0.2, 1.2);
  auto fill = [&](std::vector<unsigned char>& bytes, int64_t n, msdaDataType t, bool locations) {
    bytes.assign(static_cast<size_t>(n * ElementBytes(t)), 0);
    for (int64_t i = 0; i < n; ++i) {
      StoreElement(&bytes[i * ElementBytes(t)], t, locations ? unit(rng) : values(rng));
    }
  };
  std::vector<unsigned char> value, loc, attn, grad_out;
  fill(value, keys * heads * dims, dtype, false);
  fill(loc, queries * heads * levels * points * 2, MSDA_FLOAT32, true);
  fill(attn, queries * heads * levels * points, dtype, false);
  fill(grad_out, queries * heads * dims, dtype, false);
  std::vector<unsigned char> out(queries * heads * dims * ElementBytes(dtype));
  std::vector<unsigned char> grad_value(value.size()), grad_loc(loc.size()), grad_attn(attn.size());
  std::vector<int64_t> shapes = {kSide / 4, kSide / 4, 64, 64}, starts = {0, kSide * kSide / 16};

  const int64_t vd[4] = {1, keys, heads, dims}, sd[2] = {levels, 2}, ld[1] = {levels};
  const int64_t pd[6] = {1, queries, heads, levels, points, 2};
  const int64_t ad[5] = {1, queries, heads, levels, points}, od[3] = {1, queries, heads * dims};
  auto make = [](const int64_t* dims_, uint64_t n, msdaDataType t, void* p) {
    return msdaCreateTensor(dims_, n, t, nullptr, 0, MSDA_DEVICE_CPU, 0, p);
  };
  msdaTensor* t_value = make(vd, 4, dtype, value.data());
  msdaTensor* t_shapes = make(sd, 2, MSDA_INT64, shapes.data());
  msdaTensor* t_starts = make(ld, 1, MSDA_INT64, starts.data());
  msdaTensor* t_loc = make(pd, 6, MSDA_FLOAT32, loc.data());
  msdaTensor* t_attn = make(ad, 5, dtype, attn.data());
  msdaTensor* t_out = make(od, 3, dtype, out.data());
  msdaTensor* t_grad_out = make(od, 3, dtype, grad_out.data());
  msdaTensor* t_grad_value = make(vd, 4, dtype, grad_value.data());
  msdaTensor* t_grad_loc = make(pd, 6, MSDA_FLOAT32, grad_loc.data());
  msdaTensor* t_grad_attn = make(ad, 5, dtype, grad_attn.data());

  uint64_t size = 0;
  msdaExecutor* e = nullptr;
  ASSERT_EQ(
      msdaForwardGetWorkspaceSize(t_value, t_shapes, t_starts, t_loc, t_attn, t_out, &size, &e),
      MSDA_SUCCESS)
      << msdaGetLastErrorMessage();
  std::vector<unsigned char> workspace(size, 0xFF);
  ASSERT_EQ(msdaForward(workspace.data(), size, e, nullptr), MSDA_SUCCESS);
  ASSERT_EQ(msdaBackwardGetWorkspaceSize(t_value, t_shapes, t_starts, t_loc, t_attn, t_grad_out,
                                         t_grad_value, t_grad_loc, t_grad_attn, &size, &e),
            MSDA_SUCCESS)
      << msdaGetLastErrorMessage();
  workspace.assign(size, 0xFF);
  ASSERT_EQ(msdaBackward(workspace.data(), size, e, nullptr), MSDA_SUCCESS);

  auto no_nan = [](const std::vector<unsigned char>& bytes, msdaDataType t, const char* name) {
    const int64_t n = static_cast<int64_t>(bytes.size()) / ElementBytes(t);
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_FALSE(std::isnan(LoadElement(&bytes[i * ElementBytes(t)], t)))
          << name << "[" << i << "]";
    }
  };
  no_nan(out, dtype, "output");
  no_nan(grad_value, dtype, "grad_value");
  no_nan(grad_loc, MSDA_FLOAT32, "grad_sampling_locations");
  no_nan(grad_attn, dtype, "grad_attention_weights");
  for (msdaTensor* x : {t_value, t_shapes, t_starts, t_loc, t_attn, t_out, t_grad_out, t_grad_value,
                        t_grad_loc, t_grad_attn}) {
    msdaDestroyTensor(x);
  }
}

// Infinities and NaNs stored in a half-typed value reach the output as they are, on every SIMD
// target (the vector loads widen them; a conversion that rebiased their exponent would make
// +inf 65536). Query 0 sits on the centre of key 5, so output = value[5]; query 1 halfway
// between keys 5 and 6, so output = (value[5] + value[6]) / 2.
TEST_P(HalfNumerics, InfinityAndNanInValueReachTheOutput) {
  const msdaDataType dtype = GetParam();
  const int64_t side = 4, dims = 16, queries = 2;
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<unsigned char> value(static_cast<size_t>(side * side * dims * ElementBytes(dtype)));
  for (int64_t k = 0; k < side * side; ++k) {
    for (int64_t d = 0; d < dims; ++d) {
      const double specials[3] = {inf, -inf, nan};
      const double v = k == 5 ? specials[d % 3] : 1.0;
      StoreElement(&value[(k * dims + d) * ElementBytes(dtype)], dtype, v);
    }
  }
  // Key 5 is pixel (1, 1); key 6 is (1, 2).
  std::vector<float> loc = {1.5f / side, 1.5f / side, 2.0f / side, 1.5f / side};
  std::vector<unsigned char> attn(queries * ElementBytes(dtype));
  for (int64_t q = 0; q < queries; ++q) StoreElement(&attn[q * ElementBytes(dtype)], dtype, 1.0);
  std::vector<unsigned char> out(queries * dims * ElementBytes(dtype), 0);
  ForwardOneLevel(dtype, side, dims, queries, value, loc, attn, out);
  ASSERT_FALSE(HasFailure());
  for (int64_t q = 0; q < queries; ++q) {
    for (int64_t d = 0; d < dims; ++d) {
      const double got = LoadElement(&out[(q * dims + d) * ElementBytes(dtype)], dtype);
      const double special = d % 3 == 0 ? inf : d % 3 == 1 ? -inf : nan;
      if (std::isnan(special)) {
        EXPECT_TRUE(std::isnan(got)) << "query " << q << " channel " << d << ": " << got;
      } else {
        EXPECT_EQ(got, special) << "query " << q << " channel " << d;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(HalfTypes, HalfNumerics, ::testing::Values(MSDA_FLOAT16, MSDA_BFLOAT16),
                         [](const ::testing::TestParamInfo<msdaDataType>& info) {
                           return std::string(msda_test::DtypeName(info.param));
                         });

}  // namespace
