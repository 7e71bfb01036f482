// The test catalogue shared by forward_test.cc and backward_test.cc: the dtype combinations,
// map shapes, problem sizes and special sampling locations that the forward and the backward
// are both checked on against the fp64 reference, so a case added here is tested in both
// directions.
#ifndef MSDA_TESTS_CPP_SHAPES_H_
#define MSDA_TESTS_CPP_SHAPES_H_

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <ostream>
#include <string>
#include <tuple>
#include <vector>

#include "msda/msda.h"
#include "tester.h"

namespace msda_test {

// ---------------------------------------------------------------------------------------------
// Dtypes: value (weights, output, gradients) x sampling_locations x index tensors.

using DtypeCase = std::tuple<msdaDataType, msdaDataType, msdaDataType>;

inline std::string DtypeCaseName(const ::testing::TestParamInfo<DtypeCase>& info) {
  return std::string(DtypeName(std::get<0>(info.param))) + "_loc" +
         DtypeName(std::get<1>(info.param)) + "_" + DtypeName(std::get<2>(info.param));
}

// Every value dtype, with locations in the same dtype and in fp32, each index dtype.
inline auto AllDtypeCases() {
  return ::testing::Values(DtypeCase{MSDA_FLOAT32, MSDA_FLOAT32, MSDA_INT64},
                           DtypeCase{MSDA_FLOAT32, MSDA_FLOAT32, MSDA_INT32},
                           DtypeCase{MSDA_FLOAT16, MSDA_FLOAT16, MSDA_INT64},
                           DtypeCase{MSDA_FLOAT16, MSDA_FLOAT32, MSDA_INT32},
                           DtypeCase{MSDA_BFLOAT16, MSDA_BFLOAT16, MSDA_INT32},
                           DtypeCase{MSDA_BFLOAT16, MSDA_FLOAT32, MSDA_INT64},
                           DtypeCase{MSDA_FLOAT64, MSDA_FLOAT64, MSDA_INT64},
                           DtypeCase{MSDA_FLOAT64, MSDA_FLOAT32, MSDA_INT32});
}

// A small problem on three levels (one of them 1x1), in the dtypes of c, with locations
// reaching past the maps.
inline MsdaTester DtypeCaseTester(const DtypeCase& c) {
  MsdaTester t;
  t.Batch(2).Queries(7).Heads(3).Dims(5).Points(3).LevelShapes({{5, 7}, {3, 2}, {1, 1}});
  t.Dtype(std::get<0>(c)).LocDtype(std::get<1>(c)).IndexDtype(std::get<2>(c));
  return t.LocRange(-0.2, 1.2);
}

// ---------------------------------------------------------------------------------------------
// Map shapes and sizes.

struct ShapeCase {
  std::string name;  // A gtest parameter name: letters, digits and underscores.
  MsdaTester tester;
};

inline void PrintTo(const ShapeCase& c, std::ostream* os) { *os << c.name; }

inline std::string ShapeCaseName(const ::testing::TestParamInfo<ShapeCase>& info) {
  return info.param.name;
}

// Sixteen levels of sizes 1 to 5 by 1 to 7, no two neighbours alike.
inline MsdaTester::Levels SixteenLevels() {
  MsdaTester::Levels levels;
  for (int64_t l = 0; l < 16; ++l) levels.push_back({l % 5 + 1, (3 * l) % 7 + 1});
  return levels;
}

inline std::vector<ShapeCase> ShapeCatalogue() {
  std::vector<ShapeCase> cases;
  auto add = [&](std::string name, MsdaTester t) { cases.push_back({std::move(name), t}); };
  MsdaTester small;
  small.Queries(9).Heads(2).Dims(3).Points(4);

  // Degenerate maps: sampling there hits the border on every side. The locations reach well
  // past the map, where corners fall outside.
  add("OneByOneMap", MsdaTester(small).LevelShapes({{1, 1}}).LocRange(-0.6, 1.6));
  add("OneRowMap", MsdaTester(small).LevelShapes({{1, 9}}).LocRange(-0.3, 1.3));
  add("OneColumnMap", MsdaTester(small).LevelShapes({{9, 1}}).LocRange(-0.3, 1.3));
  for (msdaDataType dtype : {MSDA_FLOAT16, MSDA_BFLOAT16}) {
    add(std::string("DegenerateMapsTogether_") + DtypeName(dtype),
        MsdaTester()
            .Batch(2)
            .Queries(6)
            .Heads(2)
            .Dims(4)
            .Points(3)
            .LevelShapes({{1, 1}, {1, 7}, {7, 1}, {4, 6}})
            .LocRange(-0.5, 1.5)
            .Dtype(dtype));
  }

  // Level, point and head counts at their extremes.
  add("OneLevel", MsdaTester().Queries(10).Heads(2).Dims(8).Points(4).LevelShapes({{11, 13}}));
  add("SixteenLevels",
      MsdaTester().Queries(5).Heads(2).Dims(4).Points(4).LevelShapes(SixteenLevels()));
  for (msdaDataType dtype : {MSDA_FLOAT16, MSDA_BFLOAT16}) {
    add(std::string("SixteenLevelsSixteenPointsSixteenHeads_") + DtypeName(dtype),
        MsdaTester()
            .Queries(3)
            .Heads(16)
            .Dims(2)
            .Points(16)
            .LevelShapes(SixteenLevels())
            .Dtype(dtype));
  }
  add("SixteenPoints",
      MsdaTester().Queries(6).Heads(2).Dims(8).Points(16).LevelShapes({{8, 8}, {4, 4}}));
  add("SixteenHeads",
      MsdaTester().Queries(6).Heads(16).Dims(8).Points(2).LevelShapes({{8, 8}, {4, 4}}));

  // Every point outside the maps: the output and every gradient are zero.
  add("AllPointsPastTheFarEdges", MsdaTester().Queries(5).LocRange(1.6, 3.0));
  add("AllPointsBeforeTheNearEdges", MsdaTester().Queries(5).LocRange(-3.0, -0.6));

  // Embed dims from one lane to past a whole number of vectors.
  for (int64_t dims : {1, 8, 32, 256, 264}) {
    for (msdaDataType dtype : {MSDA_FLOAT32, MSDA_BFLOAT16}) {
      add("EmbedDims" + std::to_string(dims) + "_" + DtypeName(dtype),
          MsdaTester()
              .Queries(4)
              .Heads(2)
              .Dims(dims)
              .Points(4)
              .LevelShapes({{6, 5}, {3, 3}})
              .Dtype(dtype));
    }
  }

  // The envelope of the spec: the smallest query count it names and a moderately large one,
  // on the usual four-level pyramid, eight heads of 32 dims and four points.
  add("EnvelopeThirtyTwoQueries", MsdaTester().Queries(32).Heads(8).Dims(32).Points(4).LevelShapes(
                                      {{16, 16}, {8, 8}, {4, 4}, {2, 2}}));
  add("EnvelopeThreeThousandQueries",
      MsdaTester().Batch(2).Queries(3000).Heads(8).Dims(32).Points(4).LevelShapes(
          {{32, 32}, {16, 16}, {8, 8}, {4, 4}}));
  return cases;
}

// ---------------------------------------------------------------------------------------------
// Special sampling locations: borders, the gate, non-finite and huge coordinates, for the
// forward and backward tests of points that do and do not pass the gate.

// Power-of-two maps, so that every special coordinate below is exact in every dtype and the
// library's fp32 coordinate arithmetic is exact too: the library and the reference agree on
// which pixel (and which side of the gate) each point falls, and gradients can be compared even
// on pixel boundaries.
inline const MsdaTester::Levels kSpecialLevels = {{1, 1}, {1, 4}, {4, 1}, {2, 8}};

struct SpecialPoint {
  const char* name;
  double x, y;       // For an (H, W) level.
  bool contributes;  // Whether the point passes the gate.
};

// The special points for one level.
inline std::vector<SpecialPoint> SpecialPoints(int64_t H, int64_t W) {
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double h = static_cast<double>(H), w = static_cast<double>(W);
  const double gate_y_lo = -0.5 / h;       // h_im == -1
  const double gate_y_hi = (h + 0.5) / h;  // h_im == H
  const double gate_x_lo = -0.5 / w;
  const double gate_x_hi = (w + 0.5) / w;
  const double step = 1.0 / 64.0;
  return {
      {"origin", 0.0, 0.0, true},
      {"far corner", 1.0, 1.0, true},
      {"x0 y1", 0.0, 1.0, true},
      {"x1 y0", 1.0, 0.0, true},
      {"top border", 0.5, 0.0, true},
      {"bottom border", 0.5, 1.0, true},
      {"pixel centre", 0.5 / w, 0.5 / h, true},
      {"gate y = -1", 0.5, gate_y_lo, false},
      {"gate y = H", 0.5, gate_y_hi, false},
      {"gate x = -1", gate_x_lo, 0.5, false},
      {"gate x = W", gate_x_hi, 0.5, false},
      {"inside y gate", 0.5, gate_y_lo + step, true},
      {"inside x gate", gate_x_hi - step, 0.5, true},
      {"NaN x", nan, 0.5, false},
      {"NaN y", 0.5, nan, false},
      {"NaN both", nan, nan, false},
      {"+Inf x", inf, 0.5, false},
      {"-Inf x", -inf, 0.5, false},
      {"+Inf y", 0.5, inf, false},
      {"-Inf y", 0.5, -inf, false},
      {"1e30 x", 1e30, 0.5, false},
      {"-1e30 x", -1e30, 0.5, false},
      {"1e30 y", 0.5, 1e30, false},
      {"-1e30 y", 0.5, -1e30, false},
      {"1e30 both", 1e30, 1e30, false},
      {"-1e30 both", -1e30, -1e30, false},
  };
}

// How many special points there are, and how many of them fail the gate (the same on every
// level).
inline int64_t NumSpecialPoints() { return static_cast<int64_t>(SpecialPoints(1, 1).size()); }
inline int64_t NumSpecialPointsOutsideTheGate() {
  int64_t n = 0;
  for (const SpecialPoint& s : SpecialPoints(1, 1)) n += s.contributes ? 0 : 1;
  return n;
}

// Places special point pt (mod their count) of each level at every (batch, query, head);
// with outside_only, only those that fail the gate. An Edit for MsdaTester.
inline void PlaceSpecialPointsOf(const Problem& p, Inputs* in, bool outside_only) {
  for (int64_t l = 0; l < p.num_levels(); ++l) {
    std::vector<SpecialPoint> points;
    for (const SpecialPoint& s : SpecialPoints(p.levels[l][0], p.levels[l][1])) {
      if (!outside_only || !s.contributes) points.push_back(s);
    }
    for (int64_t b = 0; b < p.batch; ++b) {
      for (int64_t q = 0; q < p.queries; ++q) {
        for (int64_t h = 0; h < p.heads; ++h) {
          for (int64_t pt = 0; pt < p.points; ++pt) {
            const SpecialPoint& s = points[pt % points.size()];
            in->loc[p.loc_index(b, q, h, l, pt, 0)] = s.x;
            in->loc[p.loc_index(b, q, h, l, pt, 1)] = s.y;
          }
        }
      }
    }
  }
}
inline void PlaceSpecialPoints(const Problem& p, Inputs* in) { PlaceSpecialPointsOf(p, in, false); }
inline void PlaceSpecialPointsOutsideTheGate(const Problem& p, Inputs* in) {
  PlaceSpecialPointsOf(p, in, true);
}

}  // namespace msda_test

#endif  // MSDA_TESTS_CPP_SHAPES_H_
