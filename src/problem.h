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

struct Problem {
  int64_t batch = 0;
  int64_t keys = 0;
  int64_t heads = 0;
  int64_t dims = 0;  // embed_dims per head.
  int64_t queries = 0;
  int64_t points = 0;
  std::vector<Level> levels;
  msdaDataType value_dtype = MSDA_FLOAT32;  // Also weights, output and every gradient but locs.
  msdaDataType loc_dtype = MSDA_FLOAT32;

  int64_t num_levels() const { return static_cast<int64_t>(levels.size()); }
};

}  // namespace msda

#endif  // MSDA_SRC_PROBLEM_H_
