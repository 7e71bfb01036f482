#include "plan.h"

#include <algorithm>
#include <cstdio>
#include <initializer_list>
#include <limits>

#include "tensor.h"

namespace msda {
namespace {

constexpr int64_t kAlign = 64;

// For a >= 0, b > 0; never overflows (a + b - 1 would, for a near the int64 limit).
int64_t CeilDiv(int64_t a, int64_t b) { return a / b + (a % b != 0 ? 1 : 0); }

// *out = the product of the factors; false if it overflows int64. Every size product the
// planner forms from the problem goes through here: with batch 0 every tensor is empty, so no
// tensor-size check bounds the other dims.
bool Product(std::initializer_list<int64_t> factors, int64_t* out) {
  int64_t product = 1;
  for (int64_t f : factors) {
    if (__builtin_mul_overflow(product, f, &product)) return false;
  }
  *out = product;
  return true;
}

// stride == a * b, where a product past int64 equals no stride. The layout checks compare
// strides with products of problem dims that no tensor size bounds when batch is 0.
bool StrideIs(int64_t stride, int64_t a, int64_t b) {
  int64_t product = 0;
  return !__builtin_mul_overflow(a, b, &product) && stride == product;
}

// Adds n bytes to a running layout at a 64-byte aligned offset, checking for overflow.
class Layout {
 public:
  int64_t Add(int64_t count, int64_t element_bytes) {
    const int64_t start = size_;
    if (count < 0 || element_bytes < 0 ||
        (element_bytes != 0 && count > (kLimit - start) / element_bytes)) {
      overflow_ = true;
      return 0;
    }
    const int64_t bytes = count * element_bytes;
    size_ = std::min(kLimit, CeilDiv(start + bytes, kAlign) * kAlign);
    return start;
  }
  int64_t size() const { return size_; }
  bool overflow() const { return overflow_; }

 private:
  // Keeps every offset and size well inside int64 and uint64 arithmetic.
  static constexpr int64_t kLimit = std::numeric_limits<int64_t>::max() / 4;
  int64_t size_ = 0;
  bool overflow_ = false;
};

// The points of one (batch, query, head), N: false if L * P overflows int64 (the flat
// layout's sum was checked by validation).
bool PointCount(const Problem& p, int64_t* n) {
  if (p.flat_points()) {
    *n = p.TotalPoints();
    return true;
  }
  return Product({p.num_levels(), p.points}, n);
}

// Whether a points tensor's (level, point) dims are one contiguous run of N points of
// `unit` elements each (the flat layout's level stride is 0, see Problem::TensorPoint).
bool PointsContiguous(const Problem& p, int64_t level_stride, int64_t point_stride, int64_t unit) {
  if (point_stride != unit) return false;
  return p.flat_points() || p.num_levels() == 1 || StrideIs(level_stride, unit, p.points);
}

// Bounds levels * points * 4 so that the padded counts below stay far inside int64.
constexpr int64_t kMaxScratchCorners = std::numeric_limits<int64_t>::max() / 64;

// Returns false on overflow.
bool MakeScratchLayout(const Problem& p, int64_t acc_bytes, ScratchLayout* scratch) {
  Layout layout;
  int64_t corners = 0, padded = 0;
  // Padded by 64 lanes: SIMD compaction stores whole vectors past the last kept corner.
  int64_t points = 0;
  if (!PointCount(p, &points) || !Product({points, 4}, &corners) || corners > kMaxScratchCorners ||
      !Product({CeilDiv(corners / 4, 64), 64 * 4}, &padded)) {
    return false;
  }
  scratch->corner_offsets = layout.Add(corners + 64, sizeof(int64_t));
  scratch->corner_weights = layout.Add(corners + 64, acc_bytes);
  scratch->corner_rows_by_corner = layout.Add(padded, sizeof(int32_t));
  scratch->corner_weights_by_corner = layout.Add(padded, sizeof(float));
  scratch->point_fractions = layout.Add(padded / 2, sizeof(float));
  scratch->point_locations = layout.Add(padded / 2, sizeof(float));
  scratch->point_work = layout.Add(padded / 4 * kPointWorkRows, sizeof(float));
  scratch->next_rows = layout.Add(corners + 64, sizeof(int32_t));
  scratch->next_weights = layout.Add(corners + 64, sizeof(float));
  scratch->row = layout.Add(p.dims, acc_bytes);
  scratch->grad_row = layout.Add(p.dims, acc_bytes);
  scratch->spare_row = layout.Add(8 * p.dims, acc_bytes);
  scratch->bytes = layout.size();
  return !layout.overflow();
}

int64_t AccBytes(const Problem& p) { return p.value_dtype == MSDA_FLOAT64 ? 8 : 4; }

constexpr int64_t kCopyBlockKeys = 1024;

// The largest grad_value of a batch item that by-head tasks add into in place whatever the
// queries (see BackwardPlan::head_rows_in_grad_value): within L2, where its rows' stride
// costs nothing. A larger one where the queries read few corner rows per key (no head-major
// copy: a decoder) or it has one head.
constexpr int64_t kHeadRowsInGradValueBytes = int64_t{256} << 10;

// Whether the queries read enough corner rows per key of each head (each query reads
// L * P * 4 rows per head) to pay for a head-major copy of value, read and written once: at
// least min_corners_per_key. Measured (bench/bench_q_sweep.py, encoder map K=20197, H=8, L=4,
// P=4, one thread, realistic and uniform locations, value 64-byte aligned as PyTorch
// allocates it): without the copy a point costs about the same at every Q, with it the
// copy's fixed cost is amortised. The backward's copy wins from Q=1000 (3.2 corner reads per
// key): kBackwardCopyCornersPerKey. The forward's loses 1.2-1.5x at Q=1000-1500 and wins from
// Q=2500 (7.9), the two about even at Q=2000 (6.3): kForwardCopyCornersPerKey. On two
// threads the forward's copy loses 1.3-2x at Q=1000-1500 and is about even at Q=2000-3000.
constexpr int64_t kBackwardCopyCornersPerKey = 3;
constexpr int64_t kForwardCopyCornersPerKey = 6;

bool ManyCornersPerKey(const Problem& p, int64_t min_corners_per_key) {
  int64_t corners = 0, points = 0;
  return PointCount(p, &points) && Product({4, p.queries, points}, &corners) &&
         corners / min_corners_per_key >= p.keys;
}

// Whether a pass over the queries should read a head-major copy of value (see ForwardPlan):
// when there are at least min_corners_per_key corner reads per key (or
// options.head_major_always) and the copy fits its budget. Sets *bytes to the copy's size
// when it does.
bool WantsHeadMajorCopy(const Problem& p, const PlannerOptions& options,
                        int64_t min_corners_per_key, int64_t* bytes) {
  if (!options.head_major_copy) return false;
  int64_t value_bytes = ElementSize(p.value_dtype);
  const bool sizes_fit = !__builtin_mul_overflow(value_bytes, p.keys, &value_bytes) &&
                         !__builtin_mul_overflow(value_bytes, p.heads, &value_bytes) &&
                         !__builtin_mul_overflow(value_bytes, p.dims, &value_bytes);
  if (!sizes_fit || p.batch < 1 || p.heads < 2 || value_bytes > kHeadMajorCopyLimitBytes) {
    return false;
  }
  if (!options.head_major_always && !ManyCornersPerKey(p, min_corners_per_key)) return false;
  *bytes = value_bytes;
  return true;
}

// The backward's by-head mode (see BackwardPlan), if its rule holds: each worker's buffer
// fits the workspace budget, and the (batch, head) tasks keep the threads busy enough that
// the mode, 1.25x (deep-dims) to 1.7x (encoder, wide-batch) faster per task than the counting
// sort, wins: rounds * threads at most 1.5x the tasks (8 tasks: by head for up to 6 and for
// 8 to 12 threads; 1 task: for 1 thread). Each task copies its head's value rows on the
// head-major rule (decoder: no measurable gain from copying 20197 keys per head for 900
// queries, and half the buffer without).
bool MakeByHeadPlan(const Problem& p, const Machine& machine, bool dense_grad_value, Plan* plan) {
  const bool forced = machine.options.backward == BackwardStrategy::kByHead;
  BackwardPlan& b = plan->backward;
  const int threads = std::max(1, machine.num_threads);
  int64_t tasks = 0, head_rows = 0;
  if (__builtin_mul_overflow(p.batch, p.heads, &tasks) ||
      __builtin_mul_overflow(p.keys, p.dims, &head_rows) || tasks < 1 ||
      head_rows > (kWorkspaceBudgetBytes >> 3)) {
    return false;
  }
  const bool copy =
      machine.options.head_major_copy && p.heads > 1 &&
      (machine.options.head_major_always || ManyCornersPerKey(p, kBackwardCopyCornersPerKey));
  // In place (see BackwardPlan::head_rows_in_grad_value): grad_value is dense in the
  // accumulation type, and either small, or one head, or read by few corners per key. The
  // buffers (zeroed, then copied out) cost more than the work there: on the decoder (20 MiB of
  // grad_value, 2.85 corner reads per key) by head in place is about 1.15x faster.
  int64_t grad_value_bytes = 0;
  const bool in_place = dense_grad_value && !copy &&
                        Product({p.keys, p.heads, p.dims, plan->acc_bytes}, &grad_value_bytes) &&
                        (grad_value_bytes <= kHeadRowsInGradValueBytes || p.heads == 1 ||
                         !ManyCornersPerKey(p, kBackwardCopyCornersPerKey));
  // dims <= head_rows < 2^23: no overflow below. Rows 8-byte aligned for fp64 accumulators.
  const int64_t row_bytes =
      CeilDiv(p.dims * (plan->acc_bytes + (copy ? ElementSize(p.value_dtype) : 0)), 8) * 8;
  Layout buffer;
  if (!in_place) buffer.Add(p.keys, row_bytes);
  const int64_t scratch_bytes = plan->scratch.bytes;
  const int64_t spare = kWorkspaceBudgetBytes - threads * std::min<int64_t>(scratch_bytes, 1 << 20);
  const int64_t fit = buffer.size() > 0 ? spare / buffer.size() : threads;
  const int64_t workers = std::min<int64_t>({threads, tasks, fit});
  if (workers < 1 || scratch_bytes > (1 << 20)) return false;
  const int64_t rounds = CeilDiv(tasks, workers);
  int64_t busy = 0, wanted = 0;
  if (!Product({2, rounds, threads}, &busy) || !Product({3, tasks}, &wanted) ||
      (busy > wanted && !forced)) {
    return false;
  }

  b.by_head = true;
  b.interleaved_rows = copy;
  b.head_rows_in_grad_value = in_place;
  b.head_workers = static_cast<int>(workers);
  b.head_buffer_bytes = buffer.size();
  b.head_row_bytes = row_bytes;
  plan->num_threads = b.head_workers;
  Layout layout;
  layout.Add(plan->num_threads, scratch_bytes);
  b.head_buffers_offset = layout.Add(workers, b.head_buffer_bytes);
  if (layout.overflow()) return false;
  plan->workspace_bytes = static_cast<uint64_t>(layout.size());
  return true;
}

// The layout and sizes the SIMD geometry pass needs (see Plan::simd_geometry), not counting
// the forward's attention weights.
bool SimdGeometryApplies(const Problem& p, const Strides& st) {
  // Locations are fp32 or value's half type (validation), widened to fp32 per (query, head).
  if (p.value_dtype == MSDA_FLOAT64 || p.loc_dtype == MSDA_FLOAT64) return false;
  if (st.loc_strides.xy != 1 ||
      !PointsContiguous(p, st.loc_strides.level, st.loc_strides.point, 2)) {
    return false;
  }
  if (p.keys >= (int64_t{1} << 31) - 1) return false;
  for (const Level& level : p.levels) {
    if (level.height >= (1 << 24) || level.width >= (1 << 24)) return false;
  }
  return true;
}

// Plan::point_levels for a problem with batch items and queries (so with a bounded point
// count: loc has batch * queries * heads * levels * points elements).
void FillPointLevels(const Problem& p, PointLevels* lv) {
  const size_t padded = static_cast<size_t>(CeilDiv(p.TotalPoints(), 64) * 64);
  for (auto* v : {&lv->width, &lv->height}) v->assign(padded, 1.0f);
  for (auto* v : {&lv->width_i, &lv->height_i}) v->assign(padded, 1);
  lv->start_i.assign(padded, 0);
  size_t i = 0;
  for (int64_t l = 0; l < p.num_levels(); ++l) {
    const Level& level = p.levels[l];
    for (int64_t pt = 0; pt < p.LevelPoints(l); ++pt, ++i) {
      lv->width[i] = static_cast<float>(level.width);
      lv->height[i] = static_cast<float>(level.height);
      lv->width_i[i] = static_cast<int32_t>(level.width);
      lv->height_i[i] = static_cast<int32_t>(level.height);
      lv->start_i[i] = static_cast<int32_t>(level.start);
    }
  }
}

// Sets the plan's geometry path (simd_geometry, point_levels) for a call that samples
// (batch and queries > 0); the forward also wants the attention weights flat.
void PlanGeometry(const Problem& p, const Strides& st, bool attn_flat, Plan* plan) {
  plan->simd_geometry = p.batch > 0 && p.queries > 0 && attn_flat && SimdGeometryApplies(p, st);
  if (plan->simd_geometry) FillPointLevels(p, &plan->point_levels);
}

// Row-major strides of dims; a stride past int64 (only a problem too large to allocate has
// one) saturates rather than wraps, so planning such a problem reports its overflow.
void RowMajor(const std::vector<int64_t>& dims, int64_t* strides) {
  int64_t stride = 1;
  for (size_t i = dims.size(); i-- > 0;) {
    strides[i] = stride;
    if (i > 0 && __builtin_mul_overflow(stride, dims[i], &stride)) {
      stride = std::numeric_limits<int64_t>::max();
    }
  }
}

}  // namespace

Strides ContiguousStrides(const Problem& p) {
  const int64_t B = p.batch, K = p.keys, H = p.heads, D = p.dims, Q = p.queries, L = p.num_levels(),
                P = p.points;
  int64_t v[4], l[6], a[5], r[3];
  RowMajor({B, K, H, D}, v);
  if (p.flat_points()) {  // [B, Q, H, N, 2] and [B, Q, H, N]; level stride 0.
    const int64_t N = p.TotalPoints();
    RowMajor({B, Q, H, 1, N, 2}, l);
    RowMajor({B, Q, H, 1, N}, a);
    l[3] = a[3] = 0;
  } else {
    RowMajor({B, Q, H, L, P, 2}, l);
    RowMajor({B, Q, H, L, P}, a);
  }
  RowMajor({B, Q, H * D}, r);
  Strides st;
  st.value_strides = st.grad_value_strides = ValueStrides{v[0], v[1], v[2], v[3]};
  st.loc_strides = st.grad_loc_strides = LocationStrides{l[0], l[1], l[2], l[3], l[4], l[5]};
  st.attn_strides = st.grad_attn_strides = WeightStrides{a[0], a[1], a[2], a[3], a[4]};
  st.out_strides = st.grad_out_strides = RowStrides{r[0], r[1], r[2]};
  return st;
}

int64_t BackwardEntryBytes(int64_t acc_bytes) {
  // int32 row within the key block, int32 query within the pass, and two coefficients (a
  // horizontal corner pair).
  return acc_bytes == 8 ? 24 : 16;
}

bool MakeForwardPlan(const Problem& p, const Strides& st, const Machine& machine, Plan* plan) {
  *plan = Plan();
  plan->direction = Direction::kForward;
  plan->acc_bytes = AccBytes(p);
  plan->flat_rows = st.out_strides.channel == 1;
  PlanGeometry(p, st, PointsContiguous(p, st.attn_strides.level, st.attn_strides.point, 1), plan);
  const int threads = std::max(1, machine.num_threads);
  // No batch item: nothing is read or written, so no tiles, scratch or workspace (with every
  // tensor empty, no tensor size bounds the other dims).
  if (p.batch == 0) return true;

  // Aim for about 16 tiles per thread so that dynamic scheduling balances uneven tiles
  // (points outside the maps cost nothing).
  ForwardPlan& f = plan->forward;
  const int64_t target_tiles = int64_t{16} * threads;
  int64_t items = 0, pairs = 0;  // batch * queries, batch * heads.
  if (!Product({p.batch, p.queries}, &items) || !Product({p.batch, p.heads}, &pairs)) {
    return false;
  }
  int64_t value_bytes = 0;
  f.head_major = WantsHeadMajorCopy(p, machine.options, kForwardCopyCornersPerKey, &value_bytes);
  if (f.head_major) {
    // One head per tile over a long run of queries: the band of the copy that a run of
    // queries samples is then one head's (about 0.5 MiB on the encoder, within L2) instead of
    // every head's. The run reads loc and attn and writes out in one head's slices, hundreds
    // of bytes apart, which the kernel prefetches a few queries ahead.
    f.heads_per_tile = 1;
    f.num_head_groups = p.heads;
    const int64_t blocks_per_row = CeilDiv(target_tiles, pairs);
    f.query_block = std::max<int64_t>(CeilDiv(p.queries, blocks_per_row), 256);
    // A batch item's tiles are all one section has to share among the threads: shorter runs
    // (down to 16 queries) where runs of 256 would leave fewer than 4 tiles a thread, as for
    // a decoder's few hundred queries on many threads.
    const int64_t blocks_wanted = CeilDiv(int64_t{4} * threads, p.heads);
    if (CeilDiv(p.queries, f.query_block) < blocks_wanted) {
      f.query_block = std::max<int64_t>(CeilDiv(p.queries, blocks_wanted), 16);
    }
    f.copy_block_keys = kCopyBlockKeys;
    f.num_copy_blocks = CeilDiv(p.keys, f.copy_block_keys);
  } else {
    // A tile takes all heads of its queries when there is enough work: this reads whole
    // contiguous [heads, dims] rows of a key instead of one head's rows at a power-of-two
    // stride. Query blocks of at most 256 queries.
    f.heads_per_tile = items >= 8 * target_tiles ? p.heads : 1;
    f.num_head_groups = CeilDiv(p.heads, f.heads_per_tile);
    const int64_t rows = p.batch * f.num_head_groups;  // Independent rows of query blocks.
    const int64_t blocks_per_row = rows > 0 ? CeilDiv(target_tiles, rows) : 1;
    f.query_block =
        std::clamp<int64_t>(CeilDiv(std::max<int64_t>(p.queries, 1), blocks_per_row), 1, 256);
  }
  f.num_query_blocks = CeilDiv(p.queries, f.query_block);
  if (!Product({p.batch, f.num_head_groups, f.num_query_blocks}, &f.num_tiles)) return false;
  plan->num_threads =
      static_cast<int>(std::clamp<int64_t>(f.num_tiles, 1, static_cast<int64_t>(threads)));

  // Scratch holds one query's corners: none without queries.
  if (p.queries > 0 && !MakeScratchLayout(p, plan->acc_bytes, &plan->scratch)) return false;
  Layout layout;
  layout.Add(plan->num_threads, plan->scratch.bytes);
  if (f.head_major) f.value_copy_offset = layout.Add(value_bytes, 1);
  if (layout.overflow()) return false;
  plan->workspace_bytes = static_cast<uint64_t>(layout.size());
  return true;
}

bool MakeBackwardPlan(const Problem& p, const Strides& st, const Machine& machine,
                      const GradientSet& grads, Plan* plan) {
  *plan = Plan();
  plan->direction = Direction::kBackward;
  plan->acc_bytes = AccBytes(p);
  const int threads = std::max(1, machine.num_threads);
  BackwardPlan& b = plan->backward;
  b.grads = grads;
  b.entry_bytes = BackwardEntryBytes(plan->acc_bytes);
  plan->flat_rows = st.grad_out_strides.channel == 1;
  PlanGeometry(p, st, true, plan);
  const ValueStrides& gv = st.grad_value_strides;
  b.grad_value_in_place = grads.value &&
                          (p.value_dtype == MSDA_FLOAT32 || p.value_dtype == MSDA_FLOAT64) &&
                          gv.dim == 1 && (p.heads == 1 || StrideIs(gv.key, p.heads, gv.head));
  const WeightStrides& ga = st.grad_attn_strides;
  const LocationStrides& gl = st.grad_loc_strides;
  b.flat_point_grads =
      p.value_dtype == MSDA_FLOAT32 && p.loc_dtype == MSDA_FLOAT32 &&
      (!grads.weights || PointsContiguous(p, ga.level, ga.point, 1)) &&
      (!grads.locations || (gl.xy == 1 && PointsContiguous(p, gl.level, gl.point, 2)));
  // No batch item: no gradient element to write (see MakeForwardPlan).
  if (p.batch == 0) return true;

  // Work is per batch item and walks all heads of each query together (see ForwardPlan), so
  // a query makes heads * levels * points * 4 corner contributions.
  int64_t corners_per_query = 0;
  int64_t channels = 0;  // heads * dims: one key row, or one query row, of every head.
  int64_t points = 0;
  if (!PointCount(p, &points) || !Product({p.heads, points, 4}, &corners_per_query) ||
      !Product({p.heads, p.dims}, &channels)) {
    return false;
  }
  const int64_t queries = std::max<int64_t>(p.queries, 1);
  if (grads.value) {
    // A pass holds every contribution of its queries; split the queries if they do not fit.
    // Entries index (query in pass, head) in an int32.
    const int64_t budget_entries = kBackwardEntryBudgetBytes / b.entry_bytes;
    b.pass_queries = std::clamp<int64_t>(budget_entries / corners_per_query, 1, queries);
    b.pass_queries =
        std::min<int64_t>(b.pass_queries, std::numeric_limits<int32_t>::max() / p.heads);
    if (b.pass_queries < 1) return false;
  } else {
    b.pass_queries = queries;
  }
  b.num_passes = CeilDiv(queries, b.pass_queries);
  // Chunks: at least 16 queries, at most about 256 chunks per pass to bound the counts.
  b.chunk_queries = std::clamp<int64_t>(CeilDiv(b.pass_queries, 256), 16, 1 << 20);
  b.chunk_queries = std::min(b.chunk_queries, b.pass_queries);
  b.chunks_per_pass = CeilDiv(b.pass_queries, b.chunk_queries);
  // A key block's accumulator rows (every head) fill about 32 KiB, so they stay in L1/L2
  // while added to. A power of two, so that the kernels find a row's block with a shift.
  int64_t row_bytes = 0;
  if (!Product({channels, plan->acc_bytes}, &row_bytes)) return false;
  row_bytes = std::max<int64_t>(row_bytes, 1);
  b.key_block_shift = 0;
  while (b.key_block_shift < 10 && row_bytes <= ((int64_t{32} << 10) >> (b.key_block_shift + 1))) {
    ++b.key_block_shift;
  }
  b.key_block_rows = int64_t{1} << b.key_block_shift;
  b.num_key_blocks = CeilDiv(p.keys, b.key_block_rows);

  if (!MakeScratchLayout(p, plan->acc_bytes, &plan->scratch)) return false;
  // grad_value's batch items are each [keys][heads][dims] dense in the accumulation type.
  const bool dense_grad_value = b.grad_value_in_place && gv.dim == 1 &&
                                (p.heads == 1 || gv.head == p.dims) &&
                                StrideIs(gv.key, p.heads, p.dims);
  if (grads.value && machine.options.backward != BackwardStrategy::kCountingSort &&
      MakeByHeadPlan(p, machine, dense_grad_value, plan)) {
    return true;
  }
  int64_t parallel_tasks = 0;
  if (grads.value) {
    parallel_tasks = std::max(b.chunks_per_pass, b.num_key_blocks);
  } else if (!Product({p.batch, b.chunks_per_pass, b.num_passes}, &parallel_tasks)) {
    return false;
  }
  plan->num_threads =
      static_cast<int>(std::clamp<int64_t>(parallel_tasks, 1, static_cast<int64_t>(threads)));

  Layout layout;
  layout.Add(plan->num_threads, plan->scratch.bytes);
  if (grads.value) {
    if (corners_per_query > std::numeric_limits<int64_t>::max() / b.pass_queries) return false;
    b.entry_capacity = b.pass_queries * corners_per_query;
    if (b.chunks_per_pass > std::numeric_limits<int64_t>::max() / (b.num_key_blocks + 1)) {
      return false;
    }
    b.counts_offset = layout.Add(b.chunks_per_pass * b.num_key_blocks, sizeof(int64_t));
    b.block_start_offset = layout.Add(b.num_key_blocks + 1, sizeof(int64_t));
    b.entries_offset = layout.Add(b.entry_capacity, b.entry_bytes);
    if (channels > std::numeric_limits<int64_t>::max() / std::max(p.keys, b.pass_queries)) {
      return false;
    }
    b.grad_rows_offset = layout.Add(b.pass_queries * channels, plan->acc_bytes);
    if (!b.grad_value_in_place) b.accum_offset = layout.Add(p.keys * channels, plan->acc_bytes);
    // The copy only where the workspace stays within its budget (a strided or half-type
    // grad_value needs the accumulator as well).
    int64_t value_bytes = 0;
    b.head_major =
        WantsHeadMajorCopy(p, machine.options, kBackwardCopyCornersPerKey, &value_bytes) &&
        layout.size() + value_bytes <= kWorkspaceBudgetBytes;
    if (b.head_major) {
      b.value_copy_offset = layout.Add(value_bytes, 1);
      b.copy_block_keys = kCopyBlockKeys;
      b.num_copy_blocks = CeilDiv(p.keys, b.copy_block_keys);
    }
  }
  if (layout.overflow()) return false;
  plan->workspace_bytes = static_cast<uint64_t>(layout.size());
  return true;
}

std::string DescribePlan(const Problem& p, const Plan& plan) {
  char buf[1024];
  std::string s;
  std::snprintf(buf, sizeof(buf),
                "msda %s plan: batch=%lld keys=%lld heads=%lld dims=%lld queries=%lld "
                "levels=%lld points=%lld%s sampling=%s\n  threads=%d acc_bytes=%lld "
                "scratch/thread=%lld B workspace=%llu B\n"
                "  path: geometry=%s %s rows=%s\n",
                plan.direction == Direction::kForward ? "forward" : "backward", (long long)p.batch,
                (long long)p.keys, (long long)p.heads, (long long)p.dims, (long long)p.queries,
                (long long)p.num_levels(),
                (long long)(p.flat_points() ? p.TotalPoints() : p.points),
                p.flat_points() ? " (in all; per level in the flat layout)" : " (per level)",
                p.sampling == Sampling::kDiscrete ? "discrete" : "bilinear", plan.num_threads,
                (long long)plan.acc_bytes, (long long)plan.scratch.bytes,
                (unsigned long long)plan.workspace_bytes, plan.simd_geometry ? "simd" : "scalar",
                plan.direction == Direction::kForward ? "output" : "grad_output",
                plan.flat_rows ? "flat" : "strided");
  s += buf;
  if (plan.direction == Direction::kForward) {
    const ForwardPlan& f = plan.forward;
    std::snprintf(buf, sizeof(buf),
                  "  tiles=(batch, head group, query block): query_block=%lld blocks=%lld "
                  "heads_per_tile=%lld tiles=%lld\n"
                  "  head_major=%d (value copy at %lld, %lld blocks of %lld keys)\n",
                  (long long)f.query_block, (long long)f.num_query_blocks,
                  (long long)f.heads_per_tile, (long long)f.num_tiles, f.head_major ? 1 : 0,
                  (long long)f.value_copy_offset, (long long)f.num_copy_blocks,
                  (long long)f.copy_block_keys);
    s += buf;
  } else {
    const BackwardPlan& b = plan.backward;
    std::snprintf(buf, sizeof(buf), "  strategy=%s grad_value=%s point gradients=%s\n",
                  !b.grads.value ? "no value gradient"
                  : b.by_head    ? "by head"
                                 : "counting sort",
                  !b.grads.value          ? "-"
                  : b.grad_value_in_place ? "accumulated in place"
                                          : "accumulated in the workspace",
                  b.flat_point_grads ? "flat" : "strided");
    s += buf;
    if (b.by_head) {
      std::snprintf(buf, sizeof(buf),
                    "  grads: value=%d locations=%d weights=%d\n"
                    "  by_head=1: tasks=(batch, head) %lld, workers=%d, buffers at %lld of %lld "
                    "B (rows of %lld B: accumulator, then value if interleaved_rows=%d)\n",
                    b.grads.value, b.grads.locations, b.grads.weights,
                    (long long)(p.batch * p.heads), b.head_workers,
                    (long long)b.head_buffers_offset, (long long)b.head_buffer_bytes,
                    (long long)b.head_row_bytes, b.interleaved_rows ? 1 : 0);
      s += buf;
      return s;
    }
    std::snprintf(
        buf, sizeof(buf),
        "  grads: value=%d locations=%d weights=%d\n"
        "  passes=%lld x %lld queries, chunks/pass=%lld x %lld queries, "
        "key blocks=%lld x %lld rows\n"
        "  entries: %lld x %lld B at %lld; counts at %lld; grad rows at %lld; "
        "accumulator at %lld (-1: in place, in grad_value)\n"
        "  head_major=%d (value copy at %lld, %lld blocks of %lld keys)\n",
        b.grads.value, b.grads.locations, b.grads.weights, (long long)b.num_passes,
        (long long)b.pass_queries, (long long)b.chunks_per_pass, (long long)b.chunk_queries,
        (long long)b.num_key_blocks, (long long)b.key_block_rows, (long long)b.entry_capacity,
        (long long)b.entry_bytes, (long long)b.entries_offset, (long long)b.counts_offset,
        (long long)b.grad_rows_offset, (long long)b.accum_offset, b.head_major ? 1 : 0,
        (long long)b.value_copy_offset, (long long)b.num_copy_blocks, (long long)b.copy_block_keys);
    s += buf;
  }
  return s;
}

}  // namespace msda
