// Tiling: a pure host function from the problem and the machine to a plan. The plan fixes how
// work is split into tiles over threads and lays out the workspace; the run call only follows
// it. Nothing here depends on pointers, so plans are unit-tested without running a kernel.
#ifndef MSDA_SRC_PLAN_H_
#define MSDA_SRC_PLAN_H_

#include <cstdint>
#include <string>
#include <vector>

#include "params.h"
#include "problem.h"

namespace msda {

enum class Direction { kForward, kBackward };

// How the backward reduces grad_value (see BackwardPlan): by the planner's rule, or one
// mode wherever it can run (by head needs its buffers to fit the workspace budget).
enum class BackwardStrategy { kAuto, kByHead, kCountingSort };

// Planner options for measuring and testing what a technique buys; results never depend on
// them (the two backward strategies agree bit for bit).
struct PlannerOptions {
  bool head_major_copy = true;  // The head-major value copies where the rule asks for them.
  // The copies wherever they can be made (at least two heads, within the copy budget),
  // whatever the rule says: how the rule's threshold is measured (bench/bench_q_sweep.py).
  bool head_major_always = false;
  BackwardStrategy backward = BackwardStrategy::kAuto;
};

struct Machine {
  int num_threads = 1;
  PlannerOptions options;
};

// Which gradients a backward call computes.
struct GradientSet {
  bool value = true;
  bool locations = true;
  bool weights = true;
};

// Forward: tiles are (batch, head group, query block), each an independent piece of output;
// tile t is batch t / tiles_per_batch(), head group (t / num_query_blocks) % num_head_groups,
// query block t % num_query_blocks.
//
// Head-major mode: when many queries share a map, the value of each batch item is first
// copied head-major ([heads][keys][dims]) into the workspace, and the tiles then read the copy.
// In the caller's [keys, heads, dims] layout one head's rows sit heads * dims elements apart,
// a power-of-two stride in most models that maps the rows a head samples around a point onto
// a few cache sets; in the copy they are contiguous and the neighbourhood a run of queries
// samples stays cached (docs/design.md; bench_msda under MSDA_HEAD_MAJOR=0 measures it,
// MSDA_HEAD_MAJOR=always makes the copy wherever it fits).
struct ForwardPlan {
  bool head_major = false;
  int64_t value_copy_offset = 0;  // The copy: T [heads][keys][dims], one batch item.
  int64_t copy_block_keys = 1;    // Keys per copy task.
  int64_t num_copy_blocks = 0;
  int64_t query_block = 1;       // Queries per tile.
  int64_t num_query_blocks = 0;  // ceil(queries / query_block).
  int64_t heads_per_tile = 1;    // Heads a tile walks together, for each of its queries.
  int64_t num_head_groups = 1;   // ceil(heads / heads_per_tile).
  int64_t num_tiles = 0;         // batch * num_query_blocks * num_head_groups.
  // Tile t covers batch t / tiles_per_batch; the head-major mode runs one batch item at a time.
  int64_t tiles_per_batch() const { return num_query_blocks * num_head_groups; }
};

// Backward. Gradients of locations and weights are per sampling point and need no
// reduction. grad_value is a reduction over points; it is done without atomics, in an order
// that does not depend on the thread count, so that results are bitwise reproducible:
//   for each batch item and each pass over a range of queries (all heads of each query):
//   A. count, per chunk of queries, the corner contributions that fall into each key block;
//   B. per chunk: compute location and weight gradients, and write each contribution (key
//      row, query and head, coefficients; one entry for a horizontal pair of corners in one
//      key block) at a position fixed by the counts (a counting sort);
//   C. per key block: add the contributions, in query order, into an fp32 (fp64 for FLOAT64)
//      accumulator of the block's rows (grad_value itself when it is stored in that type);
//      after the last pass write them to grad_value.
// Chunk, pass and block sizes depend only on the problem, never on the thread count.
//
// By-head mode (by_head) replaces all of that when there are enough (batch, head) pairs to
// keep the threads busy: an element of grad_value only receives contributions from its own
// head, so each (batch, head) is a task that walks its queries in order, computes their
// location and weight gradients and adds each corner's contribution straight into a
// per-worker fp32 (fp64) accumulator of that head's [keys][dims] rows, then writes them to
// grad_value. Every element gets the same additions in the same order, (query, level, point,
// corner) ascending, as from the counting sort, so the two modes give bitwise the same
// results and the choice between them may depend on the thread count. No contribution
// is stored: the mode saves the sort's memory traffic (`bench_msda --vs-counting-sort`).
// With interleaved_rows each task first copies its head's value rows into its buffer, each
// next to the key's accumulator row (the forward's head-major reasoning: one head's rows sit
// heads * dims apart otherwise; and a point's dot products and contributions then touch the
// same few cache lines per corner).
struct BackwardPlan {
  GradientSet grads;
  // grad_value is its own accumulator: stored in the accumulation type (FLOAT32, FLOAT64)
  // with rows of dims contiguous and the keys and heads dims flattening into one row index.
  bool grad_value_in_place = false;
  // grad_sampling_locations and grad_attention_weights (those asked for) are fp32 and
  // contiguous over (level, point) within a (batch, query, head): written as vectors.
  bool flat_point_grads = false;
  bool by_head = false;
  bool interleaved_rows = false;  // By-head tasks read a contiguous copy of their head's rows.
  // By-head tasks add into grad_value itself, zeroed first, instead of a buffer copied out
  // (then no buffers): for a dense grad_value in the accumulation type, without
  // interleaved_rows, that is small (a one-query call: the copy was a third of its backward),
  // has one head, or is read by few corner rows per key (a decoder), where zeroing and copying
  // out every head's rows costs more than the work.
  bool head_rows_in_grad_value = false;
  int head_workers = 0;             // Threads that run by-head tasks, one buffer each.
  int64_t head_buffers_offset = 0;  // head_workers buffers of head_buffer_bytes, each keys
  int64_t head_buffer_bytes = 0;    // rows of head_row_bytes: acc [dims], the accumulator row,
  int64_t head_row_bytes = 0;       // then (interleaved_rows) T [dims], the key's value row.
  int64_t chunk_queries = 1;        // Queries per chunk (a task of passes A and B).
  int64_t pass_queries = 1;         // Queries per pass; bounds the contribution buffer.
  int64_t num_passes = 1;
  int64_t chunks_per_pass = 1;  // ceil(pass_queries / chunk_queries).
  int64_t key_block_rows = 1;   // Keys per key block (a task of pass C), all heads;
  int64_t key_block_shift = 0;  // a power of two: key_block_rows == 1 << key_block_shift.
  int64_t num_key_blocks = 0;
  int64_t entry_bytes = 0;     // One corner contribution.
  int64_t entry_capacity = 0;  // Contributions one pass can produce.
  // Workspace layout, byte offsets (each 64-byte aligned).
  int64_t counts_offset = 0;       // int64 [chunks_per_pass][num_key_blocks]
  int64_t block_start_offset = 0;  // int64 [num_key_blocks + 1]
  int64_t entries_offset = 0;      // entry [entry_capacity]
  int64_t grad_rows_offset = 0;    // acc [pass_queries][heads][dims]: grad_output rows.
  // acc [keys][heads][dims]: grad_value of a batch item; none when grad_value_in_place (the
  // kernel then zeroes grad_value and accumulates there).
  int64_t accum_offset = -1;
  // Head-major value copy read by pass B, on the forward's rule (see ForwardPlan).
  bool head_major = false;
  int64_t value_copy_offset = 0;
  int64_t copy_block_keys = 1;
  int64_t num_copy_blocks = 0;
};

// Per-thread scratch: the corner offsets and weights of one query's L*P points and two rows
// of dims in the accumulation type. Byte offsets from the thread's scratch start.
constexpr int64_t kPointWorkRows = 16;
// The first row of the by-head backward's dots by point, [points][4], four rows long.
constexpr int64_t kPointWorkDots4 = 12;

struct ScratchLayout {
  int64_t corner_offsets = 0;  // int64 [levels * points * 4]
  int64_t corner_weights = 0;  // acc [levels * points * 4]
  // The SIMD geometry pass writes corners by corner index before they are compacted into the
  // two lists above: int32 key rows (-1: outside the map) and fp32 weights, [4][points_padded],
  // levels * points rounded up to a multiple of 64 lanes.
  int64_t corner_rows_by_corner = 0;
  int64_t corner_weights_by_corner = 0;
  int64_t point_fractions = 0;  // fp32 [2][points_padded]: lh then lw of every point.
  // fp32 [points_padded][2]: a (query, head)'s half-typed locations widened for the SIMD
  // geometry pass (unused with fp32 locations, which it reads in place).
  int64_t point_locations = 0;
  // The backward's per-point work rows, fp32 [kPointWorkRows][points_padded]: the corner dot
  // products [4], corner coefficients [4], the attention weights, the three gradients, then
  // the by-head backward's dot products by point (kPointWorkDots4).
  int64_t point_work = 0;
  // A second compacted list, int32 key rows and fp32 weights [levels * points * 4 + 64]: the
  // forward builds the next (query, head)'s list here before it gathers the current one.
  int64_t next_rows = 0;
  int64_t next_weights = 0;
  int64_t row = 0;  // acc [dims]: the forward's sums
  // acc [4][2][dims]: the by-head backward's spare rows, one per corner: an accumulator row
  // where corners off the map send their contributions, then a row of zeros they read.
  int64_t spare_row = 0;
  int64_t grad_row = 0;  // acc [dims]
  int64_t bytes = 0;     // Per thread, a multiple of 64.
};

// Per-point level constants of the SIMD geometry pass, built with the plan: point
// i = l * P + p of a (query, head) lies on level l; padded to a multiple of 64 points with
// 1x1 maps at key 0, so that loops over points may read a last partial vector.
struct PointLevels {
  std::vector<float> width, height;                 // As floats, for the coordinates.
  std::vector<int32_t> width_i, height_i, start_i;  // As integers, for the key rows.
};

struct Plan {
  Direction direction = Direction::kForward;
  int num_threads = 1;
  int64_t acc_bytes = 4;  // 4: fp32 arithmetic; 8: fp64 (FLOAT64 problems).
  // The SIMD geometry pass: a (query, head)'s corners as vectors over its points, from the
  // level tables below. It needs a non-fp64 value and locations (fp32, or half-typed ones,
  // widened to fp32 first exactly as the scalar path widens each coordinate) laid out (level,
  // point, xy) contiguously, for the forward attention weights contiguous over (level,
  // point) too, and key rows and map sizes that fit int32 (map sizes exact in fp32).
  // Otherwise point by point.
  bool simd_geometry = false;
  PointLevels point_levels;  // Filled when simd_geometry.
  // The output (forward) or grad_output (backward) rows are contiguous over dims: written or
  // read as vectors.
  bool flat_rows = false;
  ForwardPlan forward;
  BackwardPlan backward;
  // Per-thread scratch lives at the start of the workspace, num_threads * scratch.bytes.
  ScratchLayout scratch;
  uint64_t workspace_bytes = 0;
};

// Both return false if the workspace size overflows int64 (the caller reports a limit).
// strides is the layout of the call's tensors (those of skipped gradients are not read).
bool MakeForwardPlan(const Problem& problem, const Strides& strides, const Machine& machine,
                     Plan* plan);
bool MakeBackwardPlan(const Problem& problem, const Strides& strides, const Machine& machine,
                      const GradientSet& grads, Plan* plan);

// Row-major strides of every tensor of the problem (for tests and tools).
Strides ContiguousStrides(const Problem& problem);

// The byte size of one corner contribution in the backward counting sort.
int64_t BackwardEntryBytes(int64_t acc_bytes);
// Bytes the backward may spend on contributions in one pass; passes split queries to fit.
constexpr int64_t kBackwardEntryBudgetBytes = int64_t{24} << 20;
// The largest head-major value copy the forward makes (one batch item).
constexpr int64_t kHeadMajorCopyLimitBytes = int64_t{48} << 20;
// The backward adds its head-major copy only if the workspace stays within this.
constexpr int64_t kWorkspaceBudgetBytes = int64_t{64} << 20;

std::string DescribePlan(const Problem& problem, const Plan& plan);

}  // namespace msda

#endif  // MSDA_SRC_PLAN_H_
