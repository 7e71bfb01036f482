// The problem one call solves: sizes, the level table and dtypes, independent of pointers.
#ifndef MSDA_SRC_PROBLEM_H_
#define MSDA_SRC_PROBLEM_H_

#include <cstdint>
#include <vector>

#include "msda/msda.h"

namespace msda {

struct Level {
  int64_t height = 0;
  int64_t width = 0;
  int64_t start = 0;  // First row of the level in the keys dimension of value.
};

// How a point reads its level: bilinear (the original kernel) or the nearest pixel
// (RT-DETRv2's "discrete" method: no location gradient). docs/semantics.md has both.
enum class Sampling { kBilinear, kDiscrete };

struct Problem {
  int64_t batch = 0;
  int64_t keys = 0;
  int64_t heads = 0;
  int64_t dims = 0;  // embed_dims per head.
  int64_t queries = 0;
  // Points per level when every level has the same count (the 6-D layout [..., L, P, 2]).
  int64_t points = 0;
  // Per-level counts P_l when they differ (the flat layout [..., sum P_l, 2]); empty
  // otherwise (a call with equal counts in the flat layout is planned as a 6-D view of it).
  std::vector<int64_t> level_points;
  std::vector<int64_t> point_starts;  // With level_points: its prefix sums, L + 1 entries.
  std::vector<Level> levels;
  Sampling sampling = Sampling::kBilinear;
  msdaDataType value_dtype = MSDA_FLOAT32;  // Also weights, output and every gradient but locs.
  msdaDataType loc_dtype = MSDA_FLOAT32;

  int64_t num_levels() const { return static_cast<int64_t>(levels.size()); }
  // Sets unequal per-level counts (counts.size() == levels.size()).
  void SetLevelPoints(const std::vector<int64_t>& counts) {
    level_points = counts;
    point_starts.assign(counts.size() + 1, 0);
    for (size_t l = 0; l < counts.size(); ++l) point_starts[l + 1] = point_starts[l] + counts[l];
    points = 0;
  }
  bool flat_points() const { return !level_points.empty(); }
  // The points of a (batch, query, head), numbered level by level: level l's run starts at
  // FirstPoint(l) and has LevelPoints(l) points.
  int64_t LevelPoints(int64_t l) const { return flat_points() ? level_points[l] : points; }
  int64_t FirstPoint(int64_t l) const { return flat_points() ? point_starts[l] : l * points; }
  int64_t TotalPoints() const { return FirstPoint(num_levels()); }
  // Where level l's points start in the point dim of a points tensor: 0 in the 6-D layout
  // (the level dim has its own stride), FirstPoint(l) in the flat one (its level stride is 0).
  int64_t TensorPoint(int64_t l) const { return flat_points() ? FirstPoint(l) : 0; }
};

}  // namespace msda

#endif  // MSDA_SRC_PROBLEM_H_
