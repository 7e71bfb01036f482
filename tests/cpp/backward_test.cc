// Backward vs the fp64 reference: every dtype, every subset of gradients, map shapes and
// sizes, strided gradient outputs, special locations, empty problems, and bitwise determinism
// across runs and thread counts.
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

class BackwardDtype : public ::testing::TestWithParam<DtypeCase> {};

TEST_P(BackwardDtype, MatchesReference) { DtypeCaseTester(GetParam()).TestBackward(); }

TEST_P(BackwardDtype, MatchesReferenceWhenQueriesShareCorners) {
  // A 3x3 map and many points: every key row collects dozens of contributions.
  const auto [vt, lt, it] = GetParam();
  MsdaTester()
      .Batch(2)
      .Queries(40)
      .Heads(2)
      .Dims(6)
      .Points(4)
      .LevelShapes({{3, 3}, {1, 2}})
      .Dtype(vt)
      .LocDtype(lt)
      .IndexDtype(it)
      .TestBackward();
}

INSTANTIATE_TEST_SUITE_P(AllDtypes, BackwardDtype, AllDtypeCases(), DtypeCaseName);

// ---------------------------------------------------------------------------------------------
// Any subset of the three gradients.

class BackwardSubset : public ::testing::TestWithParam<std::tuple<bool, bool, bool, msdaDataType>> {
};

TEST_P(BackwardSubset, ComputesExactlyTheRequestedGradients) {
  const auto [value, loc, attn, dtype] = GetParam();
  MsdaTester()
      .Batch(2)
      .Queries(33)
      .Heads(2)
      .Dims(4)
      .Points(3)
      .LevelShapes({{4, 4}, {2, 3}})
      .Dtype(dtype)
      .Grads(value, loc, attn)
      .TestBackward();
}

INSTANTIATE_TEST_SUITE_P(
    All, BackwardSubset,
    ::testing::Combine(::testing::Bool(), ::testing::Bool(), ::testing::Bool(),
                       ::testing::Values(MSDA_FLOAT32, MSDA_BFLOAT16)),
    [](const ::testing::TestParamInfo<std::tuple<bool, bool, bool, msdaDataType>>& i) {
      std::string s;
      s += std::get<0>(i.param) ? "Value" : "";
      s += std::get<1>(i.param) ? "Loc" : "";
      s += std::get<2>(i.param) ? "Attn" : "";
      if (s.empty()) s = "None";
      return s + "_" + DtypeName(std::get<3>(i.param));
    });

// ---------------------------------------------------------------------------------------------
// Map shapes and sizes: the catalogue the forward is tested on too (shapes.h), and a problem
// too large for the grad_value reduction to take in one pass.

class BackwardShapes : public ::testing::TestWithParam<ShapeCase> {};

TEST_P(BackwardShapes, MatchesReference) { MsdaTester(GetParam().tester).TestBackward(); }

INSTANTIATE_TEST_SUITE_P(Catalogue, BackwardShapes, ::testing::ValuesIn(ShapeCatalogue()),
                         ShapeCaseName);

TEST(BackwardEnvelope, ManyContributionsPerQuery) {
  // 16 heads x 4 levels x 16 points x 4 corners = 4096 corner contributions per query: the
  // grad_value reduction cannot hold all 1200 queries at once and must work in several
  // passes over the queries (fp32 and fp64 contributions differ in size).
  for (msdaDataType dtype : {MSDA_FLOAT32, MSDA_FLOAT64}) {
    MsdaTester()
        .Batch(2)
        .Queries(1200)
        .Heads(16)
        .Dims(4)
        .Points(16)
        .LevelShapes({{8, 8}, {4, 4}, {2, 2}, {1, 1}})
        .Dtype(dtype)
        .Grads(true, false, true)
        .TestBackward();
  }
}

// ---------------------------------------------------------------------------------------------
// Empty problems.

TEST(BackwardEmpty, ZeroBatch) { MsdaTester().Batch(0).Queries(5).TestBackward(); }

TEST(BackwardEmpty, ZeroQueriesWritesZerosToGradValue) {
  // No query samples anything: grad_value (NaN-filled before the call) must become zeros.
  for (msdaDataType dtype : {MSDA_FLOAT32, MSDA_FLOAT16, MSDA_BFLOAT16, MSDA_FLOAT64}) {
    MsdaTester t;
    t.Batch(2).Queries(0).Dtype(dtype);
    const MsdaTester::BackwardRun run = t.RunBackward(t.MakeInputs());
    ASSERT_FALSE(::testing::Test::HasFailure());
    ASSERT_EQ(run.grad_value.size(), static_cast<size_t>(NumElements(t.problem().value_dims())));
    for (size_t i = 0; i < run.grad_value.size(); ++i) {
      ASSERT_EQ(run.grad_value[i], 0.0) << DtypeName(dtype) << " grad_value" << i;
    }
  }
  // Also with a strided grad_value and no other gradient.
  MsdaTester()
      .Batch(2)
      .Queries(0)
      .Grads(true, false, false)
      .GradValueLayout(Permuted({0, 2, 1, 3}, 2, 5))
      .TestBackward();
}

// ---------------------------------------------------------------------------------------------
// Strided, permuted and padded inputs and gradient outputs.

class BackwardLayout : public ::testing::TestWithParam<msdaDataType> {
 protected:
  static MsdaTester Base() {
    MsdaTester t;
    t.Batch(2).Queries(5).Heads(3).Dims(6).Points(3).LevelShapes({{4, 5}, {2, 3}, {1, 1}});
    t.Dtype(GetParam());
    return t;
  }
};

TEST_P(BackwardLayout, GradValueStoredBatchHeadKeyDimWithGaps) {
  Base().GradValueLayout(Permuted({0, 2, 1, 3}, 1, 3)).TestBackward();
}

// FLOAT32 and FLOAT64 grad_value with contiguous dims and keys x heads flattening into one
// row index is its own accumulator (no workspace copy); the gaps must stay untouched.
TEST_P(BackwardLayout, GradValueAccumulatedInPlaceWithGapsBetweenHeads) {
  const Problem p = Base().problem();
  const int64_t row = p.dims + 3;  // Each head's row padded by 3 elements.
  Base()
      .GradValueLayout(Strided({p.keys() * p.heads * row + 5, p.heads * row, row, 1}, 2))
      .TestBackward();
}

TEST_P(BackwardLayout, GradValueAccumulatedInPlaceWithOneHead) {
  // One head: the head stride is arbitrary, the key stride gives the rows.
  MsdaTester t = Base();
  t.Heads(1);
  const Problem p = t.problem();
  t.GradValueLayout(Strided({p.keys() * (p.dims + 2) + 1, p.dims + 2, 1, 1}, 3)).TestBackward();
}

TEST_P(BackwardLayout, GradValueWithStridedEmbedDim) {
  Base().GradValueLayout(Permuted({3, 1, 0, 2}, 0, 1)).TestBackward();
}

TEST_P(BackwardLayout, GradLocationsPlanarWithGaps) {
  Base().GradLocLayout(Permuted({5, 0, 1, 2, 3, 4}, 1, 2)).TestBackward();
}

TEST_P(BackwardLayout, GradLocationsPointsInnermost) {
  Base().GradLocLayout(Permuted({0, 1, 2, 3, 5, 4}, 0, 0)).TestBackward();
}

TEST_P(BackwardLayout, GradWeightsHeadMajorWithGaps) {
  Base().GradAttnLayout(Permuted({0, 2, 1, 3, 4}, 2, 7)).TestBackward();
}

TEST_P(BackwardLayout, GradOutputQueryMajorAndStridedChannels) {
  Base().GradOutLayout(Permuted({1, 0, 2}, 3, 4)).TestBackward();
  const Problem p = Base().problem();
  const int64_t C = p.heads * p.dims;
  Base().GradOutLayout(Strided({p.queries * 2 * C, 2 * C, 2}, 1)).TestBackward();
}

TEST_P(BackwardLayout, InputsPermuted) {
  Base()
      .ValueLayout(Permuted({0, 2, 1, 3}, 1, 2))
      .LocLayout(Permuted({5, 0, 1, 2, 3, 4}, 0, 5))
      .AttnLayout(Permuted({0, 2, 1, 3, 4}, 2, 3))
      .ShapesLayout(Permuted({1, 0}, 1, 1))
      .StartsLayout(Padded(2, 3))
      .TestBackward();
}

TEST_P(BackwardLayout, ValueBroadcastOverBatch) {
  const Problem p = Base().problem();
  Base().ValueLayout(Strided({0, p.heads * p.dims, p.dims, 1}, 1)).TestBackward();
}

TEST_P(BackwardLayout, EverythingPermutedAtOnce) {
  Base()
      .ValueLayout(Permuted({2, 0, 3, 1}, 1, 4))
      .LocLayout(Permuted({4, 5, 3, 2, 1, 0}, 1, 3))
      .AttnLayout(Permuted({4, 3, 2, 1, 0}, 0, 9))
      .GradOutLayout(Permuted({2, 1, 0}, 2, 1))
      .GradValueLayout(Permuted({3, 2, 1, 0}, 1, 6))
      .GradLocLayout(Permuted({5, 4, 3, 2, 1, 0}, 1, 2))
      .GradAttnLayout(Permuted({1, 0, 4, 3, 2}, 1, 3))
      .IndexDtype(MSDA_INT32)
      .TestBackward();
}

INSTANTIATE_TEST_SUITE_P(Dtypes, BackwardLayout,
                         ::testing::Values(MSDA_FLOAT32, MSDA_FLOAT16, MSDA_BFLOAT16, MSDA_FLOAT64),
                         [](const ::testing::TestParamInfo<msdaDataType>& i) {
                           return std::string(DtypeName(i.param));
                         });

// ---------------------------------------------------------------------------------------------
// Special sampling locations (shapes.h): borders, the gate, non-finite and huge coordinates.

class BackwardSpecial : public ::testing::TestWithParam<std::tuple<msdaDataType, msdaDataType>> {};

TEST_P(BackwardSpecial, MatchesReferenceAndGivesZeroGradientsOutsideTheGate) {
  const auto [vt, lt] = GetParam();
  const int64_t num_points = NumSpecialPoints();
  MsdaTester t;
  t.Batch(2).Queries(3).Heads(2).Dims(3).Points(num_points).LevelShapes(kSpecialLevels);
  t.Dtype(vt).LocDtype(lt).Edit(PlaceSpecialPoints);
  t.TestBackward();
  // Explicitly: a point that fails the gate has exactly zero location and weight gradients
  // (not NaN), and no gradient anywhere is NaN.
  const MsdaTester::BackwardRun run = t.RunBackward(t.MakeInputs(), 1);
  ASSERT_FALSE(::testing::Test::HasFailure());
  const Problem& p = t.problem();
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t q = 0; q < p.queries; ++q) {
      for (int64_t h = 0; h < p.heads; ++h) {
        for (int64_t l = 0; l < p.num_levels(); ++l) {
          const auto points = SpecialPoints(p.levels[l][0], p.levels[l][1]);
          for (int64_t pt = 0; pt < p.points; ++pt) {
            const SpecialPoint& s = points[pt];
            const int64_t i = p.attn_index(b, q, h, l, pt);
            EXPECT_FALSE(std::isnan(run.grad_attn[i])) << s.name;
            EXPECT_FALSE(std::isnan(run.grad_loc[2 * i])) << s.name;
            EXPECT_FALSE(std::isnan(run.grad_loc[2 * i + 1])) << s.name;
            if (s.contributes) continue;
            EXPECT_EQ(run.grad_attn[i], 0.0) << s.name << " level " << l;
            EXPECT_EQ(run.grad_loc[2 * i], 0.0) << s.name << " level " << l;
            EXPECT_EQ(run.grad_loc[2 * i + 1], 0.0) << s.name << " level " << l;
          }
        }
      }
    }
  }
  for (double v : run.grad_value) ASSERT_TRUE(std::isfinite(v));
}

INSTANTIATE_TEST_SUITE_P(
    Dtypes, BackwardSpecial,
    ::testing::Values(
        std::make_tuple(MSDA_FLOAT32, MSDA_FLOAT32), std::make_tuple(MSDA_FLOAT16, MSDA_FLOAT16),
        std::make_tuple(MSDA_FLOAT16, MSDA_FLOAT32), std::make_tuple(MSDA_BFLOAT16, MSDA_BFLOAT16),
        std::make_tuple(MSDA_FLOAT64, MSDA_FLOAT64), std::make_tuple(MSDA_FLOAT64, MSDA_FLOAT32)),
    [](const ::testing::TestParamInfo<std::tuple<msdaDataType, msdaDataType>>& i) {
      return std::string(DtypeName(std::get<0>(i.param))) + "_loc" +
             DtypeName(std::get<1>(i.param));
    });

TEST(BackwardSpecial, OnlyNonContributingPointsGiveAllZeroGradients) {
  MsdaTester t;
  t.Batch(2).Queries(4).Heads(2).Dims(3).LevelShapes(kSpecialLevels).AttnRange(3, 7);
  t.Points(NumSpecialPointsOutsideTheGate()).Edit(PlaceSpecialPointsOutsideTheGate);
  const MsdaTester::BackwardRun run = t.RunBackward(t.MakeInputs());
  ASSERT_FALSE(::testing::Test::HasFailure());
  for (double v : run.grad_value) ASSERT_EQ(v, 0.0);
  for (double v : run.grad_loc) ASSERT_EQ(v, 0.0);
  for (double v : run.grad_attn) ASSERT_EQ(v, 0.0);
}

// ---------------------------------------------------------------------------------------------
// Determinism: bitwise the same gradients for every run and every thread count, with many
// queries colliding on the same few pixels (the grad_value reduction is where an
// order-dependent sum would show).

void ExpectDeterministic(MsdaTester base, int repeats_per_count) {
  const Inputs in = base.MakeInputs();
  const MsdaTester::BackwardRun first =
      MsdaTester(base).Threads(1).RunBackward(in, repeats_per_count);
  ASSERT_FALSE(::testing::Test::HasFailure());
  for (int threads : {1, 2, 3, 8}) {
    for (int run = 0; run < 2; ++run) {
      const MsdaTester::BackwardRun again =
          MsdaTester(base).Threads(threads).RunBackward(in, repeats_per_count);
      EXPECT_TRUE(again.value_bytes == first.value_bytes)
          << "grad_value, " << threads << " threads";
      EXPECT_TRUE(again.loc_bytes == first.loc_bytes)
          << "grad_sampling_locations, " << threads << " threads";
      EXPECT_TRUE(again.attn_bytes == first.attn_bytes)
          << "grad_attention_weights, " << threads << " threads";
    }
  }
}

class BackwardDeterminism : public ::testing::TestWithParam<msdaDataType> {};

TEST_P(BackwardDeterminism, CollidingQueriesAcrossThreadCounts) {
  MsdaTester base;
  base.Batch(2).Queries(2000).Heads(2).Dims(8).Points(8).LevelShapes({{2, 2}, {1, 1}});
  base.Dtype(GetParam()).LocRange(0.0, 1.0);
  ExpectDeterministic(base, 1);
  // The same problem is also right, not just reproducible.
  base.Threads(3).TestBackward();
}

TEST_P(BackwardDeterminism, WithoutTheValueGradient) {
  MsdaTester base;
  base.Batch(2).Queries(700).Heads(2).Dims(8).Points(8).LevelShapes({{2, 2}, {1, 1}});
  base.Dtype(GetParam()).Grads(false, true, true);
  ExpectDeterministic(base, 1);
}

TEST_P(BackwardDeterminism, SeveralReductionPasses) {
  // 4 heads x 8 points x 4 corners per query and 20000 queries on a 4x4 map: more
  // contributions than one pass of the reduction holds.
  MsdaTester base;
  base.Queries(20000).Heads(4).Dims(4).Points(8).LevelShapes({{4, 4}});
  base.Dtype(GetParam()).Grads(true, false, false);
  ExpectDeterministic(base, 1);
}

TEST_P(BackwardDeterminism, ByHeadAndCountingSortAgreeBitwise) {
  // Two (batch, head) tasks: 1, 2 and 3 threads run the by-head mode, 8 threads the counting
  // sort (plan_test.cc checks the rule), so the comparison spans both. D = 21 has a vector
  // part and a scalar tail on every target.
  MsdaTester base;
  base.Batch(1).Queries(1500).Heads(2).Dims(21).Points(4).LevelShapes({{3, 5}, {2, 2}, {1, 1}});
  base.Dtype(GetParam()).LocRange(-0.1, 1.1);
  ExpectDeterministic(base, 1);
}

TEST_P(BackwardDeterminism, ByHeadInPlaceOnALargeGradValueReadByFewQueries) {
  // 1.6 MiB of fp32 grad_value per batch item (6400 keys, 2 heads, D = 32) and 60 queries:
  // by-head tasks add into grad_value itself, zeroed in 1 MiB blocks by the workers
  // (plan_test.cc checks the rule); 8 threads run the counting sort. Two batch items, so the
  // second item's rows start past the first's.
  MsdaTester base;
  base.Batch(2).Queries(60).Heads(2).Dims(32).Points(4).LevelShapes({{64, 80}, {32, 40}});
  base.Dtype(GetParam()).LocRange(-0.05, 1.05);
  ExpectDeterministic(base, 1);
  base.Threads(2).TestBackward();
}

INSTANTIATE_TEST_SUITE_P(Dtypes, BackwardDeterminism,
                         ::testing::Values(MSDA_FLOAT32, MSDA_BFLOAT16),
                         [](const ::testing::TestParamInfo<msdaDataType>& i) {
                           return std::string(DtypeName(i.param));
                         });

// The by-head mode has a branch-free path for fp32 locations and dims of 1, 2, 4, 8 or 16
// whole vectors (8 to 256 covers every case on AVX-512 and AVX2, all but one vector on SSE4);
// corners off the map send their contributions to spare rows. Every dtype (FLOAT64 takes the
// general path).
class BackwardWholeVectorDims : public ::testing::TestWithParam<msdaDataType> {};

TEST_P(BackwardWholeVectorDims, ByHeadAgreesWithCountingSortBitwiseAndMatchesReference) {
  // 1, 2 and 3 threads run by head, 8 threads the counting sort.
  for (int64_t dims : {8, 16, 32, 64, 128, 256}) {
    SCOPED_TRACE("dims " + std::to_string(dims));
    MsdaTester base;
    base.Batch(1).Queries(700).Heads(2).Dims(dims).Points(4).LevelShapes({{5, 7}, {3, 2}, {1, 1}});
    base.Dtype(GetParam()).LocRange(-0.15, 1.15);
    ExpectDeterministic(base, 1);
    base.Threads(2).TestBackward();
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, BackwardWholeVectorDims,
                         ::testing::Values(MSDA_FLOAT32, MSDA_FLOAT16, MSDA_BFLOAT16, MSDA_FLOAT64),
                         [](const ::testing::TestParamInfo<msdaDataType>& i) {
                           return std::string(DtypeName(i.param));
                         });

// Head-major mode: enough queries per key that pass B reads a head-major copy of value
// (plan_test.cc checks the backward's rule). FLOAT32 and FLOAT64
// also accumulate grad_value in place here; the half types go through the workspace.
class BackwardHeadMajor : public ::testing::TestWithParam<msdaDataType> {
 protected:
  static MsdaTester Base() {
    MsdaTester t;
    t.Batch(2).Queries(1031).Heads(3).Dims(5).Points(2).LevelShapes({{9, 7}, {4, 5}, {1, 1}});
    t.Dtype(GetParam()).LocRange(-0.2, 1.2);
    return t;
  }
};

TEST_P(BackwardHeadMajor, MatchesReference) { Base().TestBackward(); }

TEST_P(BackwardHeadMajor, ValueWithStridedEmbedDimAndGradValueWithGaps) {
  const Problem p = Base().problem();
  const int64_t row = p.dims + 1;
  Base()
      .ValueLayout(Permuted({3, 0, 1, 2}, 1, 2))
      .GradValueLayout(Strided({p.keys() * p.heads * row, p.heads * row, row, 1}, 1))
      .TestBackward();
}

TEST_P(BackwardHeadMajor, ResultDoesNotDependOnTheThreadCount) { ExpectDeterministic(Base(), 1); }

INSTANTIATE_TEST_SUITE_P(Dtypes, BackwardHeadMajor,
                         ::testing::Values(MSDA_FLOAT32, MSDA_FLOAT16, MSDA_BFLOAT16, MSDA_FLOAT64),
                         [](const ::testing::TestParamInfo<msdaDataType>& i) {
                           return std::string(DtypeName(i.param));
                         });

TEST(BackwardTolerance, CatchesAMisplacedContribution) {
  // The comparison is tight enough to see one contribution land on the wrong key.
  MsdaTester t;
  t.Queries(6).Heads(2).Dims(4).Points(3).LevelShapes({{6, 7}, {3, 3}});
  const MsdaTester::BackwardRun run = t.RunBackward(t.MakeInputs(), 1);
  ASSERT_FALSE(::testing::Test::HasFailure());
  const Problem& p = t.problem();
  const BackwardResult ref = ReferenceBackward(p, run.seen, ArithmeticRoundoff(MSDA_FLOAT32));
  std::vector<double> moved = ref.grad_value;
  // Move a non-zero row of key 0 (b 0, h 0) to key 1.
  for (int64_t d = 0; d < p.dims; ++d) {
    moved[p.value_index(0, 1, 0, d)] += moved[p.value_index(0, 0, 0, d)];
    moved[p.value_index(0, 0, 0, d)] = 0;
  }
  bool nonzero = false;
  for (int64_t d = 0; d < p.dims; ++d) nonzero |= ref.grad_value[p.value_index(0, 0, 0, d)] != 0;
  if (nonzero) {
    EXPECT_GT(CountMismatches("grad_value", run.grad_value, moved, ref.bound_value, MSDA_FLOAT32,
                              p.value_dims(), false),
              0);
  }
  std::vector<double> sign = ref.grad_loc;
  for (double& v : sign) v = -v;
  EXPECT_GT(CountMismatches("grad_loc", run.grad_loc, sign, ref.bound_loc, MSDA_FLOAT32,
                            p.loc_dims(), false),
            0);
  // And the true reference passes.
  ExpectClose("grad_value", run.grad_value, ref.grad_value, ref.bound_value, MSDA_FLOAT32,
              p.value_dims());
  ExpectClose("grad_loc", run.grad_loc, ref.grad_loc, ref.bound_loc, MSDA_FLOAT32, p.loc_dims());
}

}  // namespace
}  // namespace msda_test
