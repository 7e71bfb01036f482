// Finite-difference checks of every gradient in FLOAT64, independent of the reference: the
// library's backward against central differences of the library's own forward, for the loss
// sum(output * grad_output).
//
// Sampling points are kept at least 0.1 pixel from every integer h_im / w_im (pixel
// boundaries and the gate at -1 and H_l), where bilinear sampling is not differentiable.
// Between those boundaries the output is linear in each single input (value, weight, x or
// y), so the central difference has no truncation error; only rounding remains, about
// u * |terms| / step, far below the tolerance below. A wrong sign, scale (W_l vs H_l), corner
// or missing term is O(1) off.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "msda/msda.h"
#include "reference.h"
#include "tester.h"

namespace msda_test {
namespace {

// d/dz sum(out * G) by central differences, where `perturb` moves one input by +-step and
// returns the step actually taken (after rounding to the input's dtype).
template <typename Perturb>
double CentralDifference(const MsdaTester& t, const Inputs& in, Perturb perturb) {
  Inputs plus = in, minus = in;
  const double up = perturb(&plus, +1);
  const double down = perturb(&minus, -1);
  const std::vector<double> out_plus = t.RunForward(plus, 1).out;
  const std::vector<double> out_minus = t.RunForward(minus, 1).out;
  // Sum the per-element differences: outputs the input does not reach cancel exactly.
  double sum = 0;
  for (size_t i = 0; i < out_plus.size(); ++i) sum += (out_plus[i] - out_minus[i]) * in.grad_out[i];
  return sum / (up - down);
}

// The analytic gradient is stored in its tensor's dtype (FLOAT32 for FLOAT32 locations), which
// rounds it by u(dtype) relative.
void ExpectFd(const std::string& what, double fd, double analytic, msdaDataType dtype) {
  EXPECT_NEAR(fd, analytic,
              1e-9 * (1.0 + std::fabs(analytic)) + 2 * UnitRoundoff(dtype) * std::fabs(analytic))
      << what;
}

void CheckAllGradients(const MsdaTester& t) {
  const Problem& p = t.problem();
  const Inputs in = t.MakeInputs();
  const MsdaTester::BackwardRun analytic = t.RunBackward(in, 1);
  ASSERT_FALSE(::testing::Test::HasFailure());
  const msdaDataType lt = t.loc_dtype();

  for (size_t i = 0; i < in.value.size(); ++i) {
    const double fd = CentralDifference(t, in, [&](Inputs* x, int sign) {
      x->value[i] += sign * 0.125;
      return sign * 0.125;
    });
    ExpectFd("grad_value" + IndexString(static_cast<int64_t>(i), p.value_dims()), fd,
             analytic.grad_value[i], t.value_dtype());
    if (::testing::Test::HasFailure()) return;
  }
  for (size_t i = 0; i < in.attn.size(); ++i) {
    const double fd = CentralDifference(t, in, [&](Inputs* x, int sign) {
      x->attn[i] += sign * 0.125;
      return sign * 0.125;
    });
    ExpectFd("grad_attention_weights" + IndexString(static_cast<int64_t>(i), p.attn_dims()), fd,
             analytic.grad_attn[i], t.value_dtype());
    if (::testing::Test::HasFailure()) return;
  }
  for (size_t i = 0; i < in.loc.size(); ++i) {
    // 2^-12 in normalised units moves h_im / w_im by at most 8 * 2^-12 < 0.002 pixel, well
    // inside the 0.1 pixel margin; it is exact in FLOAT32 as well for |x| < 2.
    const double step = std::ldexp(1.0, -12);
    const double fd = CentralDifference(t, in, [&](Inputs* x, int sign) {
      const double before = x->loc[i];
      x->loc[i] = RoundTo(lt, before + sign * step);
      return x->loc[i] - before;
    });
    ExpectFd("grad_sampling_locations" + IndexString(static_cast<int64_t>(i), p.loc_dims()), fd,
             analytic.grad_loc[i], lt);
    if (::testing::Test::HasFailure()) return;
  }
}

TEST(GradCheck, Float64AllGradients) {
  // Points land partly outside the maps (corners that read zero) as well as inside.
  MsdaTester t;
  t.Batch(2).Queries(3).Heads(2).Dims(3).Points(2).LevelShapes({{3, 4}, {2, 2}});
  t.Dtype(MSDA_FLOAT64).LocRange(-0.2, 1.2).Margin(0.1).AttnRange(-1.5, 1.5);
  CheckAllGradients(t);
}

TEST(GradCheck, Float64DegenerateMaps) {
  MsdaTester t;
  t.Queries(3).Heads(2).Dims(2).Points(3).LevelShapes({{1, 1}, {1, 5}, {5, 1}});
  t.Dtype(MSDA_FLOAT64).LocRange(-0.4, 1.4).Margin(0.1).Seed(7);
  CheckAllGradients(t);
}

TEST(GradCheck, Float64ValueWithFloat32Locations) {
  MsdaTester t;
  t.Queries(3).Heads(2).Dims(4).Points(2).LevelShapes({{4, 3}, {2, 2}});
  t.Dtype(MSDA_FLOAT64).LocDtype(MSDA_FLOAT32).Margin(0.1).Seed(11);
  CheckAllGradients(t);
}

TEST(GradCheck, Float64StridedTensors) {
  // The same check through permuted and padded views of every tensor.
  MsdaTester t;
  t.Batch(2).Queries(2).Heads(2).Dims(3).Points(2).LevelShapes({{3, 3}, {1, 2}});
  t.Dtype(MSDA_FLOAT64).Margin(0.1).Seed(13);
  t.ValueLayout(Permuted({0, 2, 1, 3}, 1, 2))
      .LocLayout(Permuted({5, 0, 1, 2, 3, 4}, 1, 1))
      .AttnLayout(Permuted({4, 3, 2, 1, 0}, 0, 3))
      .OutLayout(Permuted({1, 0, 2}, 2, 1))
      .GradOutLayout(Permuted({2, 1, 0}, 1, 0))
      .GradValueLayout(Permuted({3, 1, 2, 0}, 1, 5))
      .GradLocLayout(Permuted({0, 1, 2, 3, 5, 4}, 2, 1))
      .GradAttnLayout(Padded(1, 2));
  CheckAllGradients(t);
}

}  // namespace
}  // namespace msda_test
