// Forward vs the fp64 reference: every dtype combination, map shapes, sizes, strided and
// permuted tensors, special sampling locations and empty problems.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "msda/msda.h"
#include "reference.h"
#include "shapes.h"
#include "tester.h"

namespace msda_test {
namespace {

// ---------------------------------------------------------------------------------------------
// Dtypes: value (weights, output) x sampling_locations x index tensors.

class ForwardDtype : public ::testing::TestWithParam<DtypeCase> {};

TEST_P(ForwardDtype, MatchesReference) { DtypeCaseTester(GetParam()).TestForward(); }

TEST_P(ForwardDtype, MatchesReferenceWithLargeValues) {
  // Values of a few hundred and weights up to 4 (sums stay well inside FLOAT16's range):
  // the bound scales with sum |A| max |v|, not with an absolute tolerance.
  const auto [vt, lt, it] = GetParam();
  MsdaTester()
      .Queries(6)
      .Heads(2)
      .Dims(8)
      .Points(4)
      .LevelShapes({{6, 6}, {3, 3}})
      .Dtype(vt)
      .LocDtype(lt)
      .IndexDtype(it)
      .AttnRange(-4.0, 4.0)
      .Edit([](const Problem&, Inputs* in) {
        for (double& v : in->value) v *= 300.0;
      })
      .TestForward();
}

INSTANTIATE_TEST_SUITE_P(AllDtypes, ForwardDtype, AllDtypeCases(), DtypeCaseName);

// ---------------------------------------------------------------------------------------------
// Map shapes and sizes: the catalogue the backward is tested on too (shapes.h).

class ForwardShapes : public ::testing::TestWithParam<ShapeCase> {};

TEST_P(ForwardShapes, MatchesReference) { MsdaTester(GetParam().tester).TestForward(); }

INSTANTIATE_TEST_SUITE_P(Catalogue, ForwardShapes, ::testing::ValuesIn(ShapeCatalogue()),
                         ShapeCaseName);

TEST(ForwardThreads, ResultDoesNotDependOnTheThreadCount) {
  MsdaTester base;
  base.Batch(2).Queries(300).Heads(4).Dims(16).Points(4).LevelShapes({{8, 8}, {4, 4}});
  const Inputs in = base.MakeInputs();
  const std::vector<unsigned char> one = MsdaTester(base).Threads(1).RunForward(in).out_bytes;
  for (int threads : {2, 3, 8}) {
    EXPECT_TRUE(MsdaTester(base).Threads(threads).RunForward(in).out_bytes == one)
        << threads << " threads";
  }
}

// ---------------------------------------------------------------------------------------------
// Head-major mode: enough queries per key that the forward copies value head-major into the
// workspace first (plan_test.cc checks that this shape takes that mode). The copy reads the
// caller's layout, whatever its strides.

class ForwardHeadMajor : public ::testing::TestWithParam<msdaDataType> {
 protected:
  static MsdaTester Base() {
    MsdaTester t;
    t.Batch(2).Queries(1031).Heads(3).Dims(5).Points(2).LevelShapes({{9, 7}, {4, 5}, {1, 1}});
    t.Dtype(GetParam()).LocRange(-0.2, 1.2);
    return t;
  }
};

TEST_P(ForwardHeadMajor, MatchesReference) { Base().TestForward(); }

TEST_P(ForwardHeadMajor, ValueWithStridedEmbedDim) {
  Base().ValueLayout(Permuted({3, 0, 1, 2}, 1, 2)).TestForward();
}

TEST_P(ForwardHeadMajor, ValueSlicedWithGapsAndOffset) {
  Base().ValueLayout(Padded(3, 11)).TestForward();
}

TEST_P(ForwardHeadMajor, ValueBroadcastOverBatch) {
  const Problem p = Base().problem();
  Base().ValueLayout(Strided({0, p.heads * p.dims, p.dims, 1}, 1)).TestForward();
}

TEST_P(ForwardHeadMajor, ResultDoesNotDependOnTheThreadCount) {
  const MsdaTester base = Base();
  const Inputs in = base.MakeInputs();
  const std::vector<unsigned char> one = MsdaTester(base).Threads(1).RunForward(in).out_bytes;
  for (int threads : {2, 3, 8}) {
    EXPECT_TRUE(MsdaTester(base).Threads(threads).RunForward(in).out_bytes == one)
        << threads << " threads";
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ForwardHeadMajor,
                         ::testing::Values(MSDA_FLOAT32, MSDA_FLOAT16, MSDA_BFLOAT16, MSDA_FLOAT64),
                         [](const ::testing::TestParamInfo<msdaDataType>& i) {
                           return std::string(DtypeName(i.param));
                         });

// ---------------------------------------------------------------------------------------------
// Empty problems.

TEST(ForwardEmpty, ZeroBatch) { MsdaTester().Batch(0).Queries(5).TestForward(); }

TEST(ForwardEmpty, ZeroQueries) { MsdaTester().Batch(2).Queries(0).TestForward(); }

// ---------------------------------------------------------------------------------------------
// Strided, permuted and padded tensors (inputs and output).

class ForwardLayout : public ::testing::TestWithParam<msdaDataType> {
 protected:
  static MsdaTester Base() {
    MsdaTester t;
    t.Batch(2).Queries(5).Heads(3).Dims(6).Points(3).LevelShapes({{4, 5}, {2, 3}, {1, 1}});
    t.Dtype(GetParam());
    return t;
  }
};

TEST_P(ForwardLayout, ValueStoredBatchHeadKeyDim) {
  Base().ValueLayout(Permuted({0, 2, 1, 3})).TestForward();
}

TEST_P(ForwardLayout, ValueWithStridedEmbedDim) {
  // D outermost: the embed dim has the largest stride.
  Base().ValueLayout(Permuted({3, 0, 1, 2}, 1, 2)).TestForward();
}

TEST_P(ForwardLayout, ValueSlicedWithGapsAndOffset) {
  Base().ValueLayout(Padded(3, 11)).TestForward();
}

TEST_P(ForwardLayout, ValueBroadcastOverBatch) {
  // Stride 0: both batch items read the same value; inputs may overlap themselves.
  const Problem p = Base().problem();
  Base().ValueLayout(Strided({0, p.heads * p.dims, p.dims, 1}, 1)).TestForward();
}

TEST_P(ForwardLayout, LocationsPlanarAndPermuted) {
  // x and y in two planes, [2, B, Q, H, L, P].
  Base().LocLayout(Permuted({5, 0, 1, 2, 3, 4}, 0, 5)).TestForward();
  // Points innermost after the coordinate: [B, Q, H, L, 2, P], with gaps.
  Base().LocLayout(Permuted({0, 1, 2, 3, 5, 4}, 1, 0)).TestForward();
}

TEST_P(ForwardLayout, WeightsHeadMajorWithGaps) {
  Base().AttnLayout(Permuted({0, 2, 1, 3, 4}, 2, 3)).TestForward();
}

TEST_P(ForwardLayout, OutputQueryMajorWithPaddedRows) {
  // Output stored [Q, B, H*D] with padding after every row and an offset; the padding must
  // keep its bytes.
  Base().OutLayout(Permuted({1, 0, 2}, 3, 7)).TestForward();
}

TEST_P(ForwardLayout, OutputWithStridedChannels) {
  // Channels every third element: the gaps in between must stay untouched.
  const Problem p = Base().problem();
  const int64_t C = p.heads * p.dims;
  Base().OutLayout(Strided({p.queries * 3 * C + 1, 3 * C, 3}, 2)).TestForward();
}

TEST_P(ForwardLayout, IndexTensorsStrided) {
  // spatial_shapes column-major ([2, L] storage) with an offset; level_start_index every
  // third element.
  const int64_t L = Base().problem().num_levels();
  Base().ShapesLayout(Strided({1, L + 1}, 2)).StartsLayout(Strided({3}, 1)).TestForward();
}

TEST_P(ForwardLayout, EverythingPermutedAtOnce) {
  Base()
      .ValueLayout(Permuted({2, 0, 3, 1}, 1, 4))
      .LocLayout(Permuted({4, 5, 3, 2, 1, 0}, 1, 3))
      .AttnLayout(Permuted({4, 3, 2, 1, 0}, 0, 9))
      .OutLayout(Permuted({2, 1, 0}, 2, 1))
      .ShapesLayout(Permuted({1, 0}, 1, 1))
      .StartsLayout(Padded(2, 3))
      .IndexDtype(MSDA_INT32)
      .TestForward();
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ForwardLayout,
                         ::testing::Values(MSDA_FLOAT32, MSDA_FLOAT16, MSDA_BFLOAT16, MSDA_FLOAT64),
                         [](const ::testing::TestParamInfo<msdaDataType>& i) {
                           return std::string(DtypeName(i.param));
                         });

// ---------------------------------------------------------------------------------------------
// Special sampling locations (shapes.h): borders, the gate, non-finite and huge coordinates.

TEST(ForwardSpecialLocations, ReferenceAgreesOnTheGate) {
  // The test's own reference: points on the gate or non-finite do not contribute.
  for (const auto& level : kSpecialLevels) {
    for (const SpecialPoint& s : SpecialPoints(level[0], level[1])) {
      EXPECT_EQ(Locate(level[0], level[1], s.x, s.y).inside, s.contributes)
          << s.name << " on a " << level[0] << "x" << level[1] << " map";
    }
  }
}

class ForwardSpecial : public ::testing::TestWithParam<std::tuple<msdaDataType, msdaDataType>> {};

TEST_P(ForwardSpecial, MatchesReference) {
  const auto [vt, lt] = GetParam();
  MsdaTester()
      .Batch(2)
      .Queries(3)
      .Heads(2)
      .Dims(3)
      .Points(NumSpecialPoints())
      .LevelShapes(kSpecialLevels)
      .Dtype(vt)
      .LocDtype(lt)
      .Edit(PlaceSpecialPoints)
      .TestForward();
}

TEST_P(ForwardSpecial, PointsThatFailTheGateContributeNothing) {
  // Only non-contributing points, with large weights: the output must be exactly zero.
  const auto [vt, lt] = GetParam();
  MsdaTester t;
  t.Queries(2).Heads(2).Dims(3).LevelShapes(kSpecialLevels).Dtype(vt).LocDtype(lt).AttnRange(5, 9);
  t.Points(NumSpecialPointsOutsideTheGate()).Edit(PlaceSpecialPointsOutsideTheGate);
  const MsdaTester::ForwardRun run = t.RunForward(t.MakeInputs());
  ASSERT_FALSE(::testing::Test::HasFailure());
  for (size_t i = 0; i < run.out.size(); ++i) {
    ASSERT_EQ(run.out[i], 0.0) << "output"
                               << IndexString(static_cast<int64_t>(i), t.problem().out_dims());
  }
}

INSTANTIATE_TEST_SUITE_P(
    Dtypes, ForwardSpecial,
    ::testing::Values(
        std::make_tuple(MSDA_FLOAT32, MSDA_FLOAT32), std::make_tuple(MSDA_FLOAT16, MSDA_FLOAT16),
        std::make_tuple(MSDA_BFLOAT16, MSDA_BFLOAT16), std::make_tuple(MSDA_BFLOAT16, MSDA_FLOAT32),
        std::make_tuple(MSDA_FLOAT64, MSDA_FLOAT64), std::make_tuple(MSDA_FLOAT64, MSDA_FLOAT32)),
    [](const ::testing::TestParamInfo<std::tuple<msdaDataType, msdaDataType>>& i) {
      return std::string(DtypeName(std::get<0>(i.param))) + "_loc" +
             DtypeName(std::get<1>(i.param));
    });

// ---------------------------------------------------------------------------------------------
// The comparison itself can fail: a half-pixel shift of the sampling grid, or one dropped
// corner, is far outside the bound.

TEST(ForwardTolerance, CatchesAShiftedGridAndADroppedTerm) {
  MsdaTester t;
  t.Queries(6).Heads(2).Dims(4).Points(3).LevelShapes({{6, 7}, {3, 3}});
  const MsdaTester::ForwardRun run = t.RunForward(t.MakeInputs(), 1);
  ASSERT_FALSE(::testing::Test::HasFailure());
  const Problem& p = t.problem();
  const double u = ArithmeticRoundoff(MSDA_FLOAT32);
  Inputs shifted = run.seen;
  for (size_t i = 0; i < shifted.loc.size(); i += 2) shifted.loc[i] += 0.5 / 7.0;
  const ForwardResult wrong = ReferenceForward(p, shifted, u);
  EXPECT_GT(
      CountMismatches("output", run.out, wrong.out, wrong.bound, MSDA_FLOAT32, p.out_dims(), false),
      0);
  Inputs dropped = run.seen;
  // One point's contribution gone: the first point that passes the gate.
  size_t inside = 0;
  while (inside < dropped.attn.size()) {
    const int64_t level = static_cast<int64_t>(inside / p.points) % p.num_levels();
    if (Locate(p.levels[level][0], p.levels[level][1], dropped.loc[2 * inside],
               dropped.loc[2 * inside + 1])
            .inside) {
      break;
    }
    ++inside;
  }
  ASSERT_LT(inside, dropped.attn.size());
  dropped.attn[inside] = 0;
  const ForwardResult wrong2 = ReferenceForward(p, dropped, u);
  // Only the D outputs of that (batch, query, head) change, and every one of them fails.
  EXPECT_EQ(CountMismatches("output", run.out, wrong2.out, wrong2.bound, MSDA_FLOAT32, p.out_dims(),
                            false),
            p.dims);
  // And the true reference passes.
  const ForwardResult right = ReferenceForward(p, run.seen, u);
  ExpectClose("output", run.out, right.out, right.bound, MSDA_FLOAT32, p.out_dims());
}

}  // namespace
}  // namespace msda_test
