// The planner is a pure host function: these tests check its decisions without running a
// kernel.
#include "plan.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>

namespace msda {
namespace {

Problem Encoder() {
  Problem p;
  p.batch = 1;
  p.heads = 8;
  p.dims = 32;
  p.queries = 20197;
  p.points = 4;
  p.levels = {{100, 152, 0}, {50, 76, 15200}, {25, 38, 19000}, {13, 19, 19950}};
  p.keys = 20197;
  return p;
}

// A machine with the default planner options.
Machine Threads(int threads) {
  Machine m;
  m.num_threads = threads;
  return m;
}

Machine Options(int threads, bool head_major_copy,
                BackwardStrategy strategy = BackwardStrategy::kAuto) {
  Machine m = Threads(threads);
  m.options.head_major_copy = head_major_copy;
  m.options.backward = strategy;
  return m;
}

// A machine whose backward always takes the counting sort.
Machine CountingSort(int threads, bool head_major_copy = true) {
  return Options(threads, head_major_copy, BackwardStrategy::kCountingSort);
}

// Contiguous tensors, but for value_in_place = false a grad_value view of every other element
// (a strided view), whose backward accumulates in the workspace.
Strides Layout(const Problem& p, bool value_in_place) {
  Strides st = ContiguousStrides(p);
  if (!value_in_place) {
    ValueStrides& gv = st.grad_value_strides;
    for (int64_t* s : {&gv.batch, &gv.key, &gv.head, &gv.dim}) {
      *s = *s > std::numeric_limits<int64_t>::max() / 2 ? std::numeric_limits<int64_t>::max()
                                                        : 2 * *s;
    }
  }
  return st;
}

bool Forward(const Problem& p, const Machine& m, Plan* plan) {
  return MakeForwardPlan(p, ContiguousStrides(p), m, plan);
}

bool Backward(const Problem& p, const Machine& m, const GradientSet& grads, Plan* plan,
              bool value_in_place = false) {
  return MakeBackwardPlan(p, Layout(p, value_in_place), m, grads, plan);
}

TEST(ForwardPlan, TilesCoverEveryQueryOfEveryBatchAndHead) {
  for (int threads : {1, 2, 3, 8, 64}) {
    for (int64_t queries : {0, 1, 7, 900, 20197}) {
      Problem p = Encoder();
      p.queries = queries;
      p.batch = 3;
      Plan plan;
      ASSERT_TRUE(Forward(p, Threads(threads), &plan));
      const ForwardPlan& f = plan.forward;
      EXPECT_GE(f.query_block, 1);
      EXPECT_GE(f.num_query_blocks * f.query_block, queries);
      EXPECT_LT((f.num_query_blocks - 1) * f.query_block, std::max<int64_t>(queries, 1));
      EXPECT_EQ(f.num_tiles, p.batch * f.num_head_groups * f.num_query_blocks);
      EXPECT_GE(f.num_head_groups * f.heads_per_tile, p.heads);
      EXPECT_GE(plan.num_threads, 1);
      EXPECT_LE(plan.num_threads, threads);
      if (f.num_tiles >= threads) {
        EXPECT_EQ(plan.num_threads, threads);
      }
      uint64_t copy_bytes = 0;
      if (f.head_major) {
        EXPECT_EQ(f.heads_per_tile, 1);  // One head per tile over a long run of queries.
        EXPECT_GE(f.value_copy_offset, plan.num_threads * plan.scratch.bytes);
        EXPECT_EQ(f.value_copy_offset % 64, 0);
        EXPECT_GE(f.num_copy_blocks * f.copy_block_keys, p.keys);
        EXPECT_LT((f.num_copy_blocks - 1) * f.copy_block_keys, p.keys);
        copy_bytes = static_cast<uint64_t>(p.keys * p.heads * p.dims * 4);
        EXPECT_EQ(plan.workspace_bytes, static_cast<uint64_t>(f.value_copy_offset) + copy_bytes);
      } else {
        EXPECT_EQ(plan.workspace_bytes,
                  static_cast<uint64_t>(plan.num_threads * plan.scratch.bytes));
      }
    }
  }
}

TEST(Plans, TheMachineCanTurnTheHeadMajorCopyOff) {
  Plan plan;
  GradientSet grads;
  ASSERT_TRUE(Forward(Encoder(), Options(2, false), &plan));
  EXPECT_FALSE(plan.forward.head_major);
  ASSERT_TRUE(Backward(Encoder(), CountingSort(2, false), grads, &plan, true));
  EXPECT_FALSE(plan.backward.head_major);
  ASSERT_TRUE(Backward(Encoder(), CountingSort(2, true), grads, &plan, true));
  EXPECT_TRUE(plan.backward.head_major);
  // By head, the switch turns the per-task copy of a head's rows off.
  ASSERT_TRUE(Backward(Encoder(), Options(2, true), grads, &plan, true));
  EXPECT_TRUE(plan.backward.by_head);
  EXPECT_TRUE(plan.backward.interleaved_rows);
  ASSERT_TRUE(Backward(Encoder(), Options(2, false), grads, &plan, true));
  EXPECT_TRUE(plan.backward.by_head);
  EXPECT_FALSE(plan.backward.interleaved_rows);
}

TEST(ForwardPlan, CopiesValueHeadMajorOnlyWhenManyQueriesShareTheMap) {
  Plan plan;
  Problem p = Encoder();  // 64 corner rows per query, as many queries as keys.
  ASSERT_TRUE(Forward(p, Threads(2), &plan));
  EXPECT_TRUE(plan.forward.head_major);
  EXPECT_NE(DescribePlan(p, plan).find("head_major=1"), std::string::npos);
  p.queries = 900;  // The decoder: the copy would cost more than it saves.
  ASSERT_TRUE(Forward(p, Threads(2), &plan));
  EXPECT_FALSE(plan.forward.head_major);
  // The measured thresholds (bench_q_sweep.py): the forward copies from 6 corner reads per key
  // of each head, here Q * 16 * 4 >= 6 * 20197, Q >= 1894; the backward from 3, Q >= 947.
  p.queries = 1894;
  ASSERT_TRUE(Forward(p, Threads(1), &plan));
  EXPECT_TRUE(plan.forward.head_major);
  p.queries = 1893;
  ASSERT_TRUE(Forward(p, Threads(1), &plan));
  EXPECT_FALSE(plan.forward.head_major);
  p.queries = 947;
  ASSERT_TRUE(Forward(p, Threads(1), &plan));
  EXPECT_FALSE(plan.forward.head_major);
  ASSERT_TRUE(Backward(p, Options(1, true), GradientSet{}, &plan, true));
  EXPECT_TRUE(plan.backward.by_head && plan.backward.interleaved_rows);
  p.queries = 946;
  ASSERT_TRUE(Backward(p, Options(1, true), GradientSet{}, &plan, true));
  EXPECT_FALSE(plan.backward.interleaved_rows);
  Machine always = Threads(1);  // MSDA_HEAD_MAJOR=always: the copy whatever the rule says.
  always.options.head_major_always = true;
  ASSERT_TRUE(Forward(p, always, &plan));
  EXPECT_TRUE(plan.forward.head_major);
  always.options.head_major_copy = false;  // Off wins.
  ASSERT_TRUE(Forward(p, always, &plan));
  EXPECT_FALSE(plan.forward.head_major);
  // A decoder on a smaller map (Q=600, K=5440: 7.1 reads per key) copies; on 16 threads its
  // one section still has at least 4 tiles a thread.
  p = Encoder();
  p.queries = 600;
  p.levels = {{64, 64, 0}, {32, 32, 4096}, {16, 16, 5120}, {8, 8, 5376}};
  p.keys = 5440;
  ASSERT_TRUE(Forward(p, Threads(16), &plan));
  EXPECT_TRUE(plan.forward.head_major);
  EXPECT_GE(plan.forward.tiles_per_batch(), 64);
  EXPECT_EQ(plan.num_threads, 16);
  ASSERT_TRUE(Forward(p, Threads(2), &plan));  // Few threads: runs of 256 as before.
  EXPECT_EQ(plan.forward.query_block, 256);
  p = Encoder();
  p = Encoder();
  p.heads = 1;  // Nothing to transpose.
  ASSERT_TRUE(Forward(p, Threads(2), &plan));
  EXPECT_FALSE(plan.forward.head_major);
  p = Encoder();
  p.dims = 512;  // An 80 MiB copy: over the workspace budget.
  ASSERT_TRUE(Forward(p, Threads(2), &plan));
  EXPECT_FALSE(plan.forward.head_major);
  // The shape of ForwardHeadMajor (forward_test.cc), in every dtype.
  for (msdaDataType dtype : {MSDA_FLOAT32, MSDA_FLOAT16, MSDA_BFLOAT16, MSDA_FLOAT64}) {
    p = Encoder();
    p.batch = 2;
    p.queries = 1031;
    p.heads = 3;
    p.dims = 5;
    p.points = 2;
    p.levels = {{9, 7, 0}, {4, 5, 63}, {1, 1, 83}};
    p.keys = 84;
    p.value_dtype = dtype;
    ASSERT_TRUE(Forward(p, Threads(2), &plan));
    EXPECT_TRUE(plan.forward.head_major) << dtype;
    // BackwardHeadMajor, under MSDA_BY_HEAD=0.
    ASSERT_TRUE(Backward(p, CountingSort(2), GradientSet{}, &plan));
    EXPECT_TRUE(plan.backward.head_major) << dtype;
  }
  p = Encoder();
  p.keys = int64_t{1} << 60;  // Sizes that overflow: no copy, no wrap.
  ASSERT_TRUE(Forward(p, Threads(2), &plan));
  EXPECT_FALSE(plan.forward.head_major);
}

TEST(ForwardPlan, GivesEveryThreadSeveralTilesWhenThereIsWork) {
  Plan plan;
  Problem p = Encoder();
  p.queries = 900;  // The decoder shape.
  ASSERT_TRUE(Forward(p, Threads(2), &plan));
  EXPECT_GE(plan.forward.num_tiles, 16 * 2);
}

TEST(ScratchLayout, IsAlignedAndHoldsOneQueryOfCorners) {
  Plan plan;
  Problem p = Encoder();
  ASSERT_TRUE(Forward(p, Threads(4), &plan));
  const ScratchLayout& s = plan.scratch;
  const int64_t corners = p.num_levels() * p.points * 4;
  EXPECT_EQ(s.corner_offsets % 64, 0);
  EXPECT_EQ(s.corner_weights % 64, 0);
  EXPECT_EQ(s.row % 64, 0);
  EXPECT_EQ(s.grad_row % 64, 0);
  EXPECT_EQ(s.bytes % 64, 0);
  EXPECT_GE(s.corner_weights - s.corner_offsets, corners * 8);
  EXPECT_GE(s.row - s.corner_weights, corners * 4);
  EXPECT_GE(s.grad_row - s.row, p.dims * 4);
  EXPECT_GE(s.bytes - s.grad_row, p.dims * 4);
  // fp64 problems accumulate in fp64.
  p.value_dtype = MSDA_FLOAT64;
  ASSERT_TRUE(Forward(p, Threads(4), &plan));
  EXPECT_EQ(plan.acc_bytes, 8);
  EXPECT_GE(plan.scratch.row - plan.scratch.corner_weights, corners * 8);
}

TEST(BackwardPlan, SizesDoNotDependOnTheThreadCount) {
  // Determinism across thread counts rests on this: chunking, passes and key blocks fix the
  // summation order of grad_value.
  Plan one, many;
  ASSERT_TRUE(Backward(Encoder(), CountingSort(1), GradientSet{}, &one));
  for (int threads : {2, 3, 8, 61}) {
    ASSERT_TRUE(Backward(Encoder(), CountingSort(threads), GradientSet{}, &many));
    EXPECT_EQ(one.backward.chunk_queries, many.backward.chunk_queries);
    EXPECT_EQ(one.backward.pass_queries, many.backward.pass_queries);
    EXPECT_EQ(one.backward.key_block_rows, many.backward.key_block_rows);
    EXPECT_EQ(one.backward.num_key_blocks, many.backward.num_key_blocks);
  }
}

TEST(BackwardPlan, WorkspaceRegionsAreDisjointAndInBounds) {
  Plan plan;
  const Problem p = Encoder();
  ASSERT_TRUE(Backward(p, CountingSort(2), GradientSet{}, &plan));
  const BackwardPlan& b = plan.backward;
  const int64_t acc = plan.acc_bytes;
  struct Region {
    int64_t begin, bytes;
  };
  const Region regions[] = {
      {0, plan.num_threads * plan.scratch.bytes},
      {b.counts_offset, b.chunks_per_pass * b.num_key_blocks * 8},
      {b.block_start_offset, (b.num_key_blocks + 1) * 8},
      {b.entries_offset, b.entry_capacity * b.entry_bytes},
      {b.grad_rows_offset, b.pass_queries * p.heads * p.dims * acc},
      {b.accum_offset, p.keys * p.heads * p.dims * acc},
  };
  for (size_t i = 0; i < std::size(regions); ++i) {
    EXPECT_EQ(regions[i].begin % 64, 0) << "region " << i;
    EXPECT_LE(static_cast<uint64_t>(regions[i].begin + regions[i].bytes), plan.workspace_bytes);
    for (size_t j = i + 1; j < std::size(regions); ++j) {
      const bool disjoint = regions[i].begin + regions[i].bytes <= regions[j].begin ||
                            regions[j].begin + regions[j].bytes <= regions[i].begin;
      EXPECT_TRUE(disjoint) << "regions " << i << " and " << j;
    }
  }
  EXPECT_EQ(b.entry_capacity, b.pass_queries * p.heads * p.num_levels() * p.points * 4);
  EXPECT_GE(b.num_passes * b.pass_queries, p.queries);
  EXPECT_GE(b.num_key_blocks * b.key_block_rows, p.keys);
  EXPECT_EQ(b.key_block_rows, int64_t{1} << b.key_block_shift);
  EXPECT_LT((b.num_key_blocks - 1) * b.key_block_rows, p.keys);
}

TEST(BackwardPlan, SplitsQueriesIntoPassesToBoundTheContributionBuffer) {
  Problem p = Encoder();
  p.queries = 500000;
  p.levels = {{16, 16, 0}};
  p.keys = 256;
  p.points = 16;
  Plan plan;
  ASSERT_TRUE(Backward(p, CountingSort(2), GradientSet{}, &plan));
  const BackwardPlan& b = plan.backward;
  EXPECT_GT(b.num_passes, 1);
  EXPECT_LE(b.entry_capacity * b.entry_bytes, kBackwardEntryBudgetBytes);
  EXPECT_GE(b.num_passes * b.pass_queries, p.queries);
}

TEST(BackwardPlan, NeedsNoReductionBuffersWithoutTheValueGradient) {
  Plan plan;
  GradientSet grads;
  grads.value = false;
  ASSERT_TRUE(Backward(Encoder(), Threads(2), grads, &plan));
  EXPECT_EQ(plan.workspace_bytes, static_cast<uint64_t>(plan.num_threads * plan.scratch.bytes));
}

TEST(Plans, FitTheStandardShapesInto64MiB) {
  Problem decoder = Encoder();
  decoder.queries = 900;
  Problem wide = Encoder();
  wide.batch = 4;
  wide.queries = 10000;
  wide.levels = {{64, 64, 0}, {32, 32, 4096}, {16, 16, 5120}, {8, 8, 5376}};
  wide.keys = 5440;
  Problem deep = Encoder();
  deep.heads = 1;
  deep.dims = 256;
  deep.queries = 4096;
  deep.points = 8;
  deep.levels = {{64, 64, 0}};
  deep.keys = 4096;
  for (Problem p : {Encoder(), decoder, wide, deep}) {
    for (msdaDataType dtype : {MSDA_FLOAT32, MSDA_FLOAT16, MSDA_BFLOAT16}) {
      p.value_dtype = dtype;
      Plan f, b;
      ASSERT_TRUE(Forward(p, Threads(16), &f));
      EXPECT_LE(f.workspace_bytes, uint64_t{64} << 20);
      for (bool in_place : {false, true}) {
        GradientSet grads;
        for (BackwardStrategy strategy :
             {BackwardStrategy::kCountingSort, BackwardStrategy::kAuto}) {
          ASSERT_TRUE(Backward(p, Options(16, true, strategy), grads, &b, in_place));
          EXPECT_LE(b.workspace_bytes, uint64_t{64} << 20) << dtype << " " << in_place;
        }
      }
    }
  }
  // The encoder takes the head-major copy in both directions when its grad_value is its own
  // accumulator (fp32, contiguous).
  Plan b;
  ASSERT_TRUE(Backward(Encoder(), CountingSort(2), GradientSet{}, &b, true));
  EXPECT_TRUE(b.backward.head_major);
}

TEST(BackwardPlan, InPlaceGradValueNeedsNoAccumulator) {
  Plan in_place, copied;
  GradientSet grads;
  ASSERT_TRUE(Backward(Encoder(), CountingSort(2), grads, &copied));
  ASSERT_TRUE(Backward(Encoder(), CountingSort(2), grads, &in_place, true));
  EXPECT_GE(copied.backward.accum_offset, 0);
  EXPECT_EQ(in_place.backward.accum_offset, -1);
  const Problem p = Encoder();
  const int64_t value_bytes = p.keys * p.heads * p.dims * 4;  // Accumulator or copy.
  const int64_t copies = int64_t{in_place.backward.head_major} - copied.backward.head_major;
  EXPECT_EQ(static_cast<int64_t>(copied.workspace_bytes - in_place.workspace_bytes),
            value_bytes - copies * value_bytes);
}

TEST(BackwardPlan, GoesByHeadWhenTheBatchAndHeadPairsKeepTheThreadsBusy) {
  // Rounds of (batch, head) tasks times threads at most 1.5x the tasks.
  struct Case {
    int64_t batch, heads;
    int threads;
    bool by_head;
  };
  const Case cases[] = {{1, 8, 1, true},  {1, 8, 2, true},  {1, 8, 3, true},   {1, 8, 6, true},
                        {1, 8, 7, false}, {1, 8, 8, true},  {1, 8, 12, true},  {1, 8, 13, false},
                        {4, 8, 16, true}, {1, 1, 1, true},  {1, 1, 2, false},  {2, 1, 3, true},
                        {2, 1, 4, false}, {1, 2, 8, false}, {3, 3, 64, false}, {0, 8, 2, false}};
  for (const Case& c : cases) {
    Problem p = Encoder();
    p.batch = c.batch;
    p.heads = c.heads;
    Plan plan;
    ASSERT_TRUE(Backward(p, Threads(c.threads), GradientSet{}, &plan));
    const BackwardPlan& b = plan.backward;
    SCOPED_TRACE(::testing::Message()
                 << "batch " << c.batch << " heads " << c.heads << " threads " << c.threads);
    EXPECT_EQ(b.by_head, c.by_head);
    if (!b.by_head) continue;
    // One worker per thread and task, as many as the workspace budget holds (4 x 8 tasks
    // on 16 threads: 12 buffers of 4.9 MiB).
    const int64_t wanted = std::min<int64_t>(c.threads, c.batch * c.heads);
    EXPECT_GE(b.head_workers, 1);
    EXPECT_LE(b.head_workers, wanted);
    EXPECT_LE(plan.workspace_bytes, static_cast<uint64_t>(kWorkspaceBudgetBytes));
    if (b.head_workers < wanted) {
      EXPECT_GT(plan.workspace_bytes + b.head_buffer_bytes,
                static_cast<uint64_t>(kWorkspaceBudgetBytes));
    }
    EXPECT_EQ(plan.num_threads, b.head_workers);
    EXPECT_EQ(b.interleaved_rows, c.heads > 1);  // 20197 queries: 64 corner rows per key.
    // Scratch, then one buffer per worker: per key the accumulator row, then the value row.
    EXPECT_EQ(b.head_buffers_offset % 64, 0);
    EXPECT_GE(b.head_buffers_offset, plan.num_threads * plan.scratch.bytes);
    EXPECT_EQ(b.head_buffer_bytes % 64, 0);
    EXPECT_EQ(b.head_row_bytes % 8, 0);
    EXPECT_GE(b.head_row_bytes, p.dims * (b.interleaved_rows ? 8 : 4));
    EXPECT_GE(b.head_buffer_bytes, p.keys * b.head_row_bytes);
    EXPECT_EQ(plan.workspace_bytes,
              static_cast<uint64_t>(b.head_buffers_offset + b.head_workers * b.head_buffer_bytes));
  }
  // Not without grad_value, nor when the machine turns it off.
  Plan plan;
  GradientSet grads;
  grads.value = false;
  ASSERT_TRUE(Backward(Encoder(), Threads(2), grads, &plan));
  EXPECT_FALSE(plan.backward.by_head);
  ASSERT_TRUE(Backward(Encoder(), CountingSort(2), GradientSet{}, &plan));
  EXPECT_FALSE(plan.backward.by_head);
}

TEST(BackwardPlan, ByHeadCopiesAHeadsRowsOnlyWhenManyQueriesShareThem) {
  Problem p = Encoder();
  p.queries = 900;  // The decoder.
  Plan plan;
  ASSERT_TRUE(Backward(p, Threads(2), GradientSet{}, &plan));
  EXPECT_TRUE(plan.backward.by_head);
  EXPECT_FALSE(plan.backward.interleaved_rows);
  EXPECT_EQ(plan.backward.head_row_bytes, p.dims * 4);
}

TEST(BackwardPlan, ByHeadAddsIntoADenseGradValueInPlaceWhereBuffersCostMore) {
  Problem p = Encoder();
  p.queries = 1;
  p.levels = {{8, 8, 0}};  // 64 keys: 64 KiB of grad_value.
  p.keys = 64;
  Plan plan;
  ASSERT_TRUE(Backward(p, Threads(1), GradientSet{}, &plan, /*value_in_place=*/true));
  ASSERT_TRUE(plan.backward.by_head);
  EXPECT_TRUE(plan.backward.head_rows_in_grad_value);
  // Not for a strided grad_value, nor for bf16 (accumulated in fp32), nor for a large one.
  ASSERT_TRUE(Backward(p, Threads(1), GradientSet{}, &plan, /*value_in_place=*/false));
  EXPECT_FALSE(plan.backward.head_rows_in_grad_value);
  Problem half = p;
  half.value_dtype = half.loc_dtype = MSDA_BFLOAT16;
  ASSERT_TRUE(Backward(half, Threads(1), GradientSet{}, &plan, /*value_in_place=*/true));
  EXPECT_FALSE(plan.backward.head_rows_in_grad_value);
  // A large one: in place where the queries read few corner rows per key (the decoder, 20 MiB
  // of grad_value), with no buffers in the workspace; not where they read many (the encoder,
  // whose tasks copy their head's rows).
  Problem decoder = Encoder();
  decoder.queries = 900;
  ASSERT_TRUE(Backward(decoder, Threads(1), GradientSet{}, &plan, /*value_in_place=*/true));
  ASSERT_TRUE(plan.backward.by_head);
  EXPECT_TRUE(plan.backward.head_rows_in_grad_value);
  EXPECT_EQ(plan.backward.head_buffer_bytes, 0);
  EXPECT_LT(plan.workspace_bytes, uint64_t{1} << 20);
  ASSERT_TRUE(Backward(decoder, Threads(1), GradientSet{}, &plan, /*value_in_place=*/false));
  ASSERT_TRUE(plan.backward.by_head);
  EXPECT_FALSE(plan.backward.head_rows_in_grad_value);
  EXPECT_GT(plan.backward.head_buffer_bytes, 0);
  ASSERT_TRUE(Backward(Encoder(), Threads(1), GradientSet{}, &plan, /*value_in_place=*/true));
  ASSERT_TRUE(plan.backward.by_head);
  EXPECT_TRUE(plan.backward.interleaved_rows);
  EXPECT_FALSE(plan.backward.head_rows_in_grad_value);
  // One head: in place whatever the queries (its rows are dense anyway).
  Problem one_head = Encoder();
  one_head.heads = 1;
  ASSERT_TRUE(Backward(one_head, Threads(1), GradientSet{}, &plan, /*value_in_place=*/true));
  ASSERT_TRUE(plan.backward.by_head);
  EXPECT_TRUE(plan.backward.head_rows_in_grad_value);
}

TEST(BackwardPlan, ByHeadBuffersStayWithinTheWorkspaceBudget) {
  Problem p = Encoder();
  p.dims = 256;  // 20 + 20 MiB a worker in fp32: one fits, two do not.
  Plan plan;
  ASSERT_TRUE(Backward(p, Threads(1), GradientSet{}, &plan));
  EXPECT_TRUE(plan.backward.by_head);
  EXPECT_EQ(plan.backward.head_workers, 1);
  EXPECT_LE(plan.workspace_bytes, static_cast<uint64_t>(kWorkspaceBudgetBytes));
  // One worker for two threads would be 8 rounds of 8 tasks: not by head.
  ASSERT_TRUE(Backward(p, Threads(2), GradientSet{}, &plan));
  EXPECT_FALSE(plan.backward.by_head);
  p.dims = 1024;  // Not even one worker's buffer fits: the counting sort.
  ASSERT_TRUE(Backward(p, Threads(2), GradientSet{}, &plan));
  EXPECT_FALSE(plan.backward.by_head);
}

TEST(Plans, ReportOverflowInsteadOfWrapping) {
  Problem p = Encoder();
  p.keys = int64_t{1} << 60;
  p.dims = int64_t{1} << 10;
  Plan plan;
  EXPECT_FALSE(Backward(p, Threads(2), GradientSet{}, &plan));
}

// With batch 0 every tensor is empty, so no tensor size bounds the point count or a stride:
// the layout checks compare strides with products that overflow (a fuzzer input reached
// 2 * points). Planning must neither overflow (UBSan) nor fail.
TEST(Plans, BatchZeroWithHugeDimsAndStrides) {
  Problem p = Encoder();
  p.batch = 0;
  p.points = int64_t{1} << 62;
  p.heads = int64_t{1} << 40;
  Strides st = ContiguousStrides(p);
  st.loc_strides.xy = 1;
  st.loc_strides.point = 2;
  st.grad_loc_strides = st.loc_strides;
  st.grad_value_strides.dim = 1;
  st.grad_value_strides.head = int64_t{1} << 40;
  Plan plan;
  EXPECT_TRUE(MakeForwardPlan(p, st, Threads(2), &plan));
  EXPECT_EQ(plan.workspace_bytes, 0u);
  const GradientSet all{true, true, true};
  EXPECT_TRUE(MakeBackwardPlan(p, st, Threads(2), all, &plan));
  EXPECT_FALSE(plan.simd_geometry);
  EXPECT_FALSE(plan.backward.flat_point_grads);
  EXPECT_FALSE(plan.backward.grad_value_in_place);
}

TEST(Plans, DescribeNamesTheDecisions) {
  Plan plan;
  ASSERT_TRUE(Backward(Encoder(), CountingSort(2), GradientSet{}, &plan));
  const std::string text = DescribePlan(Encoder(), plan);
  EXPECT_NE(text.find("backward"), std::string::npos);
  EXPECT_NE(text.find("key blocks"), std::string::npos);
  ASSERT_TRUE(Backward(Encoder(), Threads(2), GradientSet{}, &plan));
  EXPECT_NE(DescribePlan(Encoder(), plan).find("by_head=1"), std::string::npos);
  ASSERT_TRUE(Forward(Encoder(), Threads(2), &plan));
  EXPECT_NE(DescribePlan(Encoder(), plan).find("query_block"), std::string::npos);
}

}  // namespace
}  // namespace msda

namespace msda {
namespace {

// The path decisions the planner makes from the layout, each on its own.
TEST(PlanPath, SimdGeometryNeedsFlatFp32OrHalfLocationsAndInt32Rows) {
  const Problem p = Encoder();
  const Strides flat = ContiguousStrides(p);
  Plan plan;
  ASSERT_TRUE(MakeForwardPlan(p, flat, Threads(2), &plan));
  EXPECT_TRUE(plan.simd_geometry);
  // The level tables, built with the plan: one entry per (level, point), padded to 64.
  const PointLevels& lv = plan.point_levels;
  ASSERT_EQ(lv.width.size(), 64u);
  for (int64_t i = 0; i < 16; ++i) {
    const Level& level = p.levels[i / p.points];
    EXPECT_EQ(lv.width[i], static_cast<float>(level.width));
    EXPECT_EQ(lv.height_i[i], level.height);
    EXPECT_EQ(lv.start_i[i], level.start);
  }
  EXPECT_EQ(lv.width_i[16], 1);
  EXPECT_EQ(lv.start_i[63], 0);
  EXPECT_NE(DescribePlan(p, plan).find("geometry=simd"), std::string::npos);
  ASSERT_TRUE(MakeBackwardPlan(p, flat, Threads(2), GradientSet{}, &plan));
  EXPECT_TRUE(plan.simd_geometry);

  auto forward_simd = [&](const Problem& q, const Strides& st) {
    Plan f;
    EXPECT_TRUE(MakeForwardPlan(q, st, Threads(2), &f));
    EXPECT_EQ(f.point_levels.width.empty(), !f.simd_geometry);
    return f.simd_geometry;
  };
  Problem q = p;
  q.loc_dtype = MSDA_FLOAT16;
  q.value_dtype = MSDA_FLOAT16;
  EXPECT_TRUE(forward_simd(q, flat));  // Half locations: widened per (query, head).
  q.loc_dtype = q.value_dtype = MSDA_BFLOAT16;
  EXPECT_TRUE(forward_simd(q, flat));
  q.loc_dtype = MSDA_FLOAT32;
  EXPECT_TRUE(forward_simd(q, flat));  // fp32 locations with half values.
  q.value_dtype = MSDA_FLOAT64;
  EXPECT_FALSE(forward_simd(q, flat));  // fp64 arithmetic.
  q.loc_dtype = MSDA_FLOAT64;
  EXPECT_FALSE(forward_simd(q, flat));
  q.loc_dtype = q.value_dtype = MSDA_BFLOAT16;
  Strides half_st = flat;
  half_st.loc_strides.xy = 2;  // Strided half locations: point by point.
  EXPECT_FALSE(forward_simd(q, half_st));
  Strides st = flat;
  st.loc_strides.xy = 2;  // x and y apart.
  EXPECT_FALSE(forward_simd(p, st));
  st = flat;
  st.attn_strides.level += 1;  // Levels of the weights apart: the forward only.
  EXPECT_FALSE(forward_simd(p, st));
  ASSERT_TRUE(MakeBackwardPlan(p, st, Threads(2), GradientSet{}, &plan));
  EXPECT_TRUE(plan.simd_geometry);
  q = p;
  q.levels[0].width = 1 << 24;  // Not exact in fp32 arithmetic with the fraction.
  EXPECT_FALSE(forward_simd(q, flat));
  q = p;
  q.queries = 0;  // Nothing to sample: no tables.
  EXPECT_FALSE(forward_simd(q, flat));
}

TEST(PlanPath, RowsAndPointGradientsAreFlatWhenContiguous) {
  const Problem p = Encoder();
  Strides st = ContiguousStrides(p);
  Plan plan;
  ASSERT_TRUE(MakeForwardPlan(p, st, Threads(2), &plan));
  EXPECT_TRUE(plan.flat_rows);
  ASSERT_TRUE(MakeBackwardPlan(p, st, Threads(2), GradientSet{}, &plan));
  EXPECT_TRUE(plan.flat_rows);
  EXPECT_TRUE(plan.backward.flat_point_grads);
  EXPECT_TRUE(plan.backward.grad_value_in_place);
  EXPECT_NE(DescribePlan(p, plan).find("point gradients=flat"), std::string::npos);
  st.out_strides.channel = 2;
  st.grad_out_strides.channel = 2;
  ASSERT_TRUE(MakeForwardPlan(p, st, Threads(2), &plan));
  EXPECT_FALSE(plan.flat_rows);
  ASSERT_TRUE(MakeBackwardPlan(p, st, Threads(2), GradientSet{}, &plan));
  EXPECT_FALSE(plan.flat_rows);
  EXPECT_NE(DescribePlan(p, plan).find("grad_output rows=strided"), std::string::npos);
  // A strided gradient of the weights: point by point, unless it is skipped.
  st = ContiguousStrides(p);
  st.grad_attn_strides.point = 3;
  ASSERT_TRUE(MakeBackwardPlan(p, st, Threads(2), GradientSet{}, &plan));
  EXPECT_FALSE(plan.backward.flat_point_grads);
  GradientSet no_weights;
  no_weights.weights = false;
  ASSERT_TRUE(MakeBackwardPlan(p, st, Threads(2), no_weights, &plan));
  EXPECT_TRUE(plan.backward.flat_point_grads);
  // Half types are converted element by element.
  Problem half = p;
  half.value_dtype = MSDA_BFLOAT16;
  ASSERT_TRUE(MakeBackwardPlan(half, ContiguousStrides(half), Threads(2), GradientSet{}, &plan));
  EXPECT_FALSE(plan.backward.flat_point_grads);
  EXPECT_FALSE(plan.backward.grad_value_in_place);  // Not stored in the accumulation type.
  // grad_value in place needs rows of dims contiguous and keys and heads flattening.
  st = ContiguousStrides(p);
  st.grad_value_strides.key += 1;
  ASSERT_TRUE(MakeBackwardPlan(p, st, Threads(2), GradientSet{}, &plan));
  EXPECT_FALSE(plan.backward.grad_value_in_place);
  EXPECT_NE(DescribePlan(p, plan).find("accumulated in the workspace"), std::string::npos);
}

TEST(PlanPath, TheBackwardStrategyCanBeForced) {
  // The decoder's 8 (batch, head) tasks on 7 threads (two rounds): the rule picks the
  // counting sort.
  Problem p = Encoder();
  p.queries = 900;
  Plan plan;
  ASSERT_TRUE(Backward(p, Threads(7), GradientSet{}, &plan));
  EXPECT_FALSE(plan.backward.by_head);
  ASSERT_TRUE(Backward(p, Options(7, true, BackwardStrategy::kByHead), GradientSet{}, &plan));
  EXPECT_TRUE(plan.backward.by_head);
  EXPECT_NE(DescribePlan(p, plan).find("strategy=by head"), std::string::npos);
  ASSERT_TRUE(Backward(p, Options(1, true, BackwardStrategy::kCountingSort), GradientSet{}, &plan));
  EXPECT_FALSE(plan.backward.by_head);
  EXPECT_NE(DescribePlan(p, plan).find("strategy=counting sort"), std::string::npos);
}

}  // namespace
}  // namespace msda
