// Per-target backward, the counting-sort strategy for grad_value (see BackwardPlan in plan.h
// and docs/design.md): per pass over a range of queries, A counts each chunk's contributions
// per key block, B computes the point gradients and writes the contributions at the counted
// positions, C adds each key block's contributions in query order. Included once per SIMD
// target by backward.cc.

// Per-target include guard: foreach_target toggles HWY_TARGET_TOGGLE between passes.
#if defined(MSDA_SRC_CPU_BACKWARD_COUNTING_SORT_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MSDA_SRC_CPU_BACKWARD_COUNTING_SORT_INL_H_
#undef MSDA_SRC_CPU_BACKWARD_COUNTING_SORT_INL_H_
#else
#define MSDA_SRC_CPU_BACKWARD_COUNTING_SORT_INL_H_
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu/backward_points-inl.h"
#include "cpu/rows-inl.h"
#include "cpu/value_copy.h"
#include "hwy/highway.h"
#include "threads.h"

HWY_BEFORE_NAMESPACE();
namespace msda {
namespace cpu {
namespace HWY_NAMESPACE {

// One contribution of a point to grad_value: accumulator row (key row in the block * heads +
// head) += coef[0] * grad_output row slot (query in pass * heads + head), and, for a pair
// entry, the next key's row (accumulator row + heads) += coef[1] * the same grad_output row.
// A point's two horizontal corner pairs (x0, x1) are neighbouring keys, so one entry carries
// both when both are on the map and in one key block: half the entries, and pass C loads each
// grad_output row once for two accumulator rows. Single-corner entries store ~slot (< 0).
// Indices are precomputed so that the reduction does no division.
template <typename Acc>
struct Entry {
  int32_t accum_row;
  int32_t slot;
  Acc coef[2];
};
static_assert(sizeof(Entry<float>) == 16, "BackwardEntryBytes assumes 16-byte fp32 entries");
static_assert(sizeof(Entry<double>) == 24, "BackwardEntryBytes assumes 24-byte fp64 entries");

// The counting sort's sink: a pair's entries at the cursors of their key blocks, one pair
// entry when both corners are on the map and in one key block, else one single entry per
// corner on the map. The pass's grad_output rows stay in the workspace (slot indexes them).
template <typename Acc>
struct SortedContributions {
  static constexpr bool kAddsRows = false;
  static constexpr bool kWritesEntries = true;
  int64_t* cursors;  // One per key block.
  Entry<Acc>* entries;
  int shift;  // key_block_rows == 1 << shift.
  int64_t heads;

  void Pair(int64_t left, int64_t right, Acc coef_left, Acc coef_right, int64_t h, int64_t slot,
            const Acc*) const {
    auto accum_row = [&](int64_t row) {
      return static_cast<int32_t>((row - ((row >> shift) << shift)) * heads + h);
    };
    if (left >= 0 && right >= 0 && (left >> shift) == (right >> shift)) {
      entries[cursors[left >> shift]++] =
          Entry<Acc>{accum_row(left), static_cast<int32_t>(slot), {coef_left, coef_right}};
      return;
    }
    const int32_t single = ~static_cast<int32_t>(slot);
    if (left >= 0) {
      entries[cursors[left >> shift]++] = Entry<Acc>{accum_row(left), single, {coef_left, Acc(0)}};
    }
    if (right >= 0) {
      entries[cursors[right >> shift]++] =
          Entry<Acc>{accum_row(right), single, {coef_right, Acc(0)}};
    }
  }
  template <typename T>
  bool Sweep(int64_t, const float*, const T*, int64_t, const Corners&, const float*, float*,
             int) const {
    return false;
  }
};

template <typename T, typename Loc, typename Acc>
struct CountingSort {
  const BackwardPoints<T, Loc, Acc>& k;

  const Problem& p() const { return k.p; }
  const BackwardPlan& bp() const { return k.bp(); }
  int64_t* Counts() const { return reinterpret_cast<int64_t*>(k.workspace + bp().counts_offset); }
  int64_t* BlockStart() const {
    return reinterpret_cast<int64_t*>(k.workspace + bp().block_start_offset);
  }
  Entry<Acc>* Entries() const {
    return reinterpret_cast<Entry<Acc>*>(k.workspace + bp().entries_offset);
  }
  Acc* GradRows() const { return reinterpret_cast<Acc*>(k.workspace + bp().grad_rows_offset); }
  // The accumulator row of key row r and head h (r * heads + h == index) of batch item b:
  // in the workspace, or grad_value itself when it is stored in the accumulation type.
  Acc* AccumRow(int64_t b, int64_t index) const {
    if (bp().grad_value_in_place) {
      const ValueStrides& st = k.prm.grad_value_strides;
      return static_cast<Acc*>(k.prm.grad_value) + b * st.batch +
             index * (p().heads == 1 ? st.key : st.head);
    }
    return reinterpret_cast<Acc*>(k.workspace + bp().accum_offset) + index * p().dims;
  }

  // The entries of one horizontal corner pair (rows -1 when off the map), as
  // SortedContributions writes them.
  void CountPair(int64_t left, int64_t right, int64_t* counts) const {
    const int shift = static_cast<int>(bp().key_block_shift);
    if (left >= 0 && right >= 0 && (left >> shift) == (right >> shift)) {
      ++counts[left >> shift];
      return;
    }
    if (left >= 0) ++counts[left >> shift];
    if (right >= 0) ++counts[right >> shift];
  }

  // Pass A: per key block, how many contributions the chunk's queries make.
  void Count(int64_t b, int64_t q_begin, int64_t q_end, int64_t* counts, int thread_index) const {
    std::fill(counts, counts + bp().num_key_blocks, int64_t{0});
    if constexpr (BackwardPoints<T, Loc, Acc>::kSimdTypes) {
      if (k.levels != nullptr) {
        const int64_t num_points = k.NumPoints();
        for (int64_t q = q_begin; q < q_end; ++q) {
          for (int64_t h = 0; h < p().heads; ++h) {
            const Corners c = k.SimdCorners(b, q, h, thread_index, false);
            for (int pair = 0; pair < 2; ++pair) {  // Corners (0, 1), then (2, 3).
              const int32_t* left = c.rows + 2 * pair * c.stride;
              const int32_t* right = left + c.stride;
              for (int64_t i = 0; i < num_points; ++i) CountPair(left[i], right[i], counts);
            }
          }
        }
        return;
      }
    }
    for (int64_t q = q_begin; q < q_end; ++q) {
      for (int64_t h = 0; h < p().heads; ++h) {
        for (int64_t l = 0; l < p().num_levels(); ++l) {
          for (int64_t pt = 0; pt < p().LevelPoints(l); ++pt) {
            const PointGeometry<Acc> g = k.Point(b, q, h, l, pt);
            if (!g.inside) continue;
            CountPair(g.row[0], g.row[1], counts);
            CountPair(g.row[2], g.row[3], counts);
          }
        }
      }
    }
  }

  // Pass B: location and weight gradients of the queries [q_begin, q_end), every head, and
  // their grad_value contributions at the cursors (one per key block); the grad_output rows
  // in the accumulation type go to grad_rows, indexed from pass_begin.
  void Points(int64_t b, int64_t q_begin, int64_t q_end, int64_t pass_begin, int64_t* cursors,
              int thread_index) const {
    const SortedContributions<Acc> sink{cursors, Entries(), static_cast<int>(bp().key_block_shift),
                                        p().heads};
    for (int64_t q = q_begin; q < q_end; ++q) {
      for (int64_t h = 0; h < p().heads; ++h) {
        const int64_t slot = (q - pass_begin) * p().heads + h;
        k.PointsOfHead(b, q, h, slot, GradRows() + slot * p().dims, sink, k.RowsOf(b, h),
                       thread_index);
      }
    }
  }

  // Pass C: add one key block's contributions, in order, into its accumulator rows; zero
  // them first on the first pass, write them to grad_value after the last (unless they are
  // grad_value's own rows).
  void Reduce(int64_t b, int64_t block, bool first_pass, bool last_pass) const {
    const int64_t rows = bp().key_block_rows;
    const int64_t row_begin = block * rows;
    const int64_t row_end = std::min(p().keys, row_begin + rows);
    const int64_t heads = p().heads, dims = p().dims;
    const int64_t first_index = row_begin * heads;  // Accumulator row of (row_begin, head 0).
    if (first_pass) {
      // All-zero bits are 0.0 in IEEE floats.
      for (int64_t i = first_index; i < row_end * heads; ++i) {
        std::memset(AccumRow(b, i), 0, sizeof(Acc) * dims);
      }
    }
    const Entry<Acc>* entries = Entries();
    const Acc* grad_rows = GradRows();
    const int64_t* block_start = BlockStart();
    Acc* const accum = AccumRow(b, first_index);
    // Accumulator rows are evenly spaced: dims apart in the workspace, a heads stride apart
    // in grad_value.
    const int64_t row_step = AccumRow(b, first_index + 1) - accum;
    const int64_t pair_step = heads * row_step;  // From a key's row to the next key's.
    for (int64_t i = block_start[block]; i < block_start[block + 1]; ++i) {
      const Entry<Acc>& e = entries[i];
      Acc* row = accum + int64_t{e.accum_row} * row_step;
      if (e.slot >= 0) {
        AxpyRowPair<Acc>(row, e.coef[0], row + pair_step, e.coef[1],
                         grad_rows + int64_t{e.slot} * dims, dims);
      } else {
        AxpyRow<Acc>(row, e.coef[0], grad_rows + int64_t{~e.slot} * dims, dims);
      }
    }
    if (!last_pass || bp().grad_value_in_place) return;
    const ValueStrides& st = k.prm.grad_value_strides;
    T* grad_value = static_cast<T*>(k.prm.grad_value) + b * st.batch;
    for (int64_t r = row_begin; r < row_end; ++r) {
      for (int64_t h = 0; h < heads; ++h) {
        k.WriteGradValueRow(AccumRow(b, r * heads + h), grad_value + r * st.key + h * st.head);
      }
    }
  }

  void Run() const {
    const BackwardPlan& plan_b = bp();
    const int threads = k.plan.num_threads;
    const int64_t blocks = plan_b.num_key_blocks;
    const int64_t queries = p().queries;
    for (int64_t b = 0; b < p().batch; ++b) {
      if (k.value_rows.copy != nullptr) {
        CopyBatchHeadMajor(p(), k.prm, b, plan_b.copy_block_keys, plan_b.num_copy_blocks, threads,
                           const_cast<T*>(k.value_rows.copy));
      }
      for (int64_t pass = 0; pass < plan_b.num_passes; ++pass) {
        const int64_t pass_begin = std::min(queries, pass * plan_b.pass_queries);
        const int64_t pass_end = std::min(queries, pass_begin + plan_b.pass_queries);
        const int64_t chunks =
            (pass_end - pass_begin + plan_b.chunk_queries - 1) / plan_b.chunk_queries;
        auto chunk_range = [&](int64_t c, int64_t* q0, int64_t* q1) {
          *q0 = pass_begin + c * plan_b.chunk_queries;
          *q1 = std::min(pass_end, *q0 + plan_b.chunk_queries);
        };
        int64_t* counts = Counts();  // [chunks][blocks]
        ParallelFor(threads, chunks, [&](int64_t c, int thread_index) {
          int64_t q0, q1;
          chunk_range(c, &q0, &q1);
          Count(b, q0, q1, counts + c * blocks, thread_index);
        });
        // Exclusive prefix over (block, chunk): a block's entries are grouped by chunk, so
        // in query order. Counts become each chunk's write cursors.
        int64_t* block_start = BlockStart();
        int64_t running = 0;
        for (int64_t block = 0; block < blocks; ++block) {
          block_start[block] = running;
          for (int64_t c = 0; c < chunks; ++c) {
            const int64_t n = counts[c * blocks + block];
            counts[c * blocks + block] = running;
            running += n;
          }
        }
        block_start[blocks] = running;
        ParallelFor(threads, chunks, [&](int64_t c, int thread_index) {
          int64_t q0, q1;
          chunk_range(c, &q0, &q1);
          Points(b, q0, q1, pass_begin, counts + c * blocks, thread_index);
        });
        const bool first = pass == 0, last = pass == plan_b.num_passes - 1;
        ParallelFor(threads, blocks, [&](int64_t block, int) { Reduce(b, block, first, last); });
      }
    }
  }
};

}  // namespace HWY_NAMESPACE
}  // namespace cpu
}  // namespace msda
HWY_AFTER_NAMESPACE();

#endif  // MSDA_SRC_CPU_BACKWARD_COUNTING_SORT_INL_H_ (per-target guard)
