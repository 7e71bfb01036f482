// The kernels' inner loops alone, on synthetic rows that stay in L1 or in L2: how fast the
// machine runs the row work of one corner (forward) or one point (backward by head) when
// nothing else is in the way. These floors explain what the roofline of bench_msda cannot:
// the FMA peak assumes one FMA per loaded vector, and the gathers need more loads than that.
// Never a timed test: run it by hand, or through bench/report_cpp.py.
//
//   bench_loops [--markdown FILE]
//
// Forward: GatherRows (src/cpu/rows-inl.h, the forward's gather) over 64 corners of D = 32
// fp32 rows, the four corners of 16 bilinear points. Backward: per point, the by-head loop's
// row work (the four corner dot products with grad_output, reduced together, and the four
// contributions added to the accumulator rows), on rows laid out as the by-head buffer is:
// each key's accumulator row followed by its value row. Compiled for every SIMD target like the
// kernels, and run on the target the library picks (the best one, or MSDA_SIMD_TARGET).
#undef HWY_TARGET_INCLUDE
// clang-format off
#define HWY_TARGET_INCLUDE "bench_loops.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// clang-format on

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cpu/rows-inl.h"
#include "cpu/simd.h"
#include "hwy/aligned_allocator.h"
#include "hwy/highway.h"
#include "hwy/targets.h"
#include "timing.h"

// Target-independent helpers, once.
#ifndef MSDA_BENCH_LOOPS_ONCE
#define MSDA_BENCH_LOOPS_ONCE
namespace {

using bench::Fastest;

constexpr int64_t kDims = 32;
constexpr int64_t kPoints = 16;   // Per (query, head), as in the encoder (L = 4, P = 4).
constexpr int64_t kItems = 4096;  // (query, head) items per timed run.

// Corner key rows of kItems * kPoints bilinear points on a map `width` keys wide and `keys`
// keys in all: (y, x), (y, x + 1), (y + 1, x), (y + 1, x + 1), corner by corner per item as
// the forward's compacted lists are. As in bench_msda's encoder, an item's points come in 4
// groups (levels) of 4, each group a normal spread of 2 pixels around its own centre, so that
// points of a group share some keys.
std::vector<int32_t> CornerRows(int64_t keys, int64_t width, uint32_t seed) {
  std::mt19937 rng(seed);
  const int64_t height = keys / width;
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  auto clamp = [](float v, int64_t hi) {
    return std::min<int64_t>(hi, std::max<int64_t>(0, static_cast<int64_t>(v)));
  };
  std::vector<int32_t> rows(kItems * kPoints * 4);
  for (int64_t item = 0; item < kItems; ++item) {
    int32_t* r = rows.data() + item * kPoints * 4;
    float cx = 0, cy = 0;
    for (int64_t i = 0; i < kPoints; ++i) {
      if (i % 4 == 0) {
        cx = uniform(rng) * static_cast<float>(width - 1);
        cy = uniform(rng) * static_cast<float>(height - 1);
      }
      const int64_t x = clamp(cx + normal(rng), width - 2);
      const int64_t y = clamp(cy + normal(rng), height - 2);
      const int64_t key = y * width + x;
      r[i] = static_cast<int32_t>(key);
      r[kPoints + i] = static_cast<int32_t>(key + 1);
      r[2 * kPoints + i] = static_cast<int32_t>(key + width);
      r[3 * kPoints + i] = static_cast<int32_t>(key + width + 1);
    }
  }
  return rows;
}

}  // namespace
#endif  // MSDA_BENCH_LOOPS_ONCE

HWY_BEFORE_NAMESPACE();
namespace bench_loops {
namespace HWY_NAMESPACE {

namespace hn = hwy::HWY_NAMESPACE;
namespace kernels = msda::cpu::HWY_NAMESPACE;

// Nanoseconds per corner of the forward's gather, rows of kDims floats, `keys` of them.
double GatherNsPerCorner(int64_t keys, int64_t width) {
  auto value = hwy::AllocateAligned<float>(keys * kDims);
  for (int64_t i = 0; i < keys * kDims; ++i) value[i] = static_cast<float>(i % 7) * 0.25f;
  const std::vector<int32_t> rows = CornerRows(keys, width, 1);
  std::vector<float> weights(rows.size(), 0.25f);
  auto out = hwy::AllocateAligned<float>(kDims);
  float sink = 0;
  const double s = Fastest(30, [&] {
    for (int64_t item = 0; item < kItems; ++item) {
      const int64_t at = item * kPoints * 4;
      kernels::GatherRows<float, float>(value.get(), rows.data() + at, kDims, weights.data() + at,
                                        kPoints * 4, kDims, out.get());
      sink += out[item % kDims];
    }
  });
  if (sink == 12345.0f) std::printf(" ");  // Keeps the work.
  return s * 1e9 / static_cast<double>(kItems * kPoints * 4);
}

#if HWY_TARGET != HWY_SCALAR && !HWY_HAVE_SCALABLE
// The row work of one item's points, a row being kVectors whole vectors (a compile-time
// count, as in the kernel, so that grad_output's row stays in registers).
template <int kVectors = static_cast<int>(kDims / hn::MaxLanes(hn::ScalableTag<float>()))>
HWY_NOINLINE void PointRowWork(float* HWY_RESTRICT buf, int64_t row, const int32_t* r,
                               const float* coef, const float* g_row, float* dots) {
  const hn::ScalableTag<float> d;
  constexpr int64_t n = static_cast<int64_t>(hn::MaxLanes(d));
  hn::Vec<decltype(d)> g[kVectors];
  for (int v = 0; v < kVectors; ++v) g[v] = hn::LoadU(d, g_row + v * n);
  for (int64_t i = 0; i < kPoints; ++i) {
    float* acc[4];
    for (int c = 0; c < 4; ++c) acc[c] = buf + int64_t{r[c * kPoints + i]} * row;
    auto a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
    for (int v = 0; v < kVectors; ++v) {
      a0 = hn::MulAdd(g[v], hn::LoadU(d, acc[0] + kDims + v * n), a0);
      a1 = hn::MulAdd(g[v], hn::LoadU(d, acc[1] + kDims + v * n), a1);
      a2 = hn::MulAdd(g[v], hn::LoadU(d, acc[2] + kDims + v * n), a2);
      a3 = hn::MulAdd(g[v], hn::LoadU(d, acc[3] + kDims + v * n), a3);
    }
    kernels::SumLanes4(d, a0, a1, a2, a3, dots + 4 * i);
    for (int c = 0; c < 4; ++c) {
      const auto k = hn::Set(d, coef[c * kPoints + i]);
      for (int v = 0; v < kVectors; ++v) {
        float* a = acc[c] + v * n;
        hn::StoreU(hn::MulAdd(k, g[v], hn::LoadU(d, a)), d, a);
      }
    }
  }
}
#endif

// Nanoseconds per point of the backward's by-head row work on `keys` keys of (accumulator
// row, value row): the loop of DotsAndContributions (src/cpu/backward.cc) with its gates
// taken out, grad_output's row in registers, the four dots reduced together (SumLanes4) and
// the four accumulator rows read, updated and stored back.
double PointNsPerPoint(int64_t keys, int64_t width) {
  const int64_t row = 2 * kDims;  // Accumulator then value, in floats.
  auto buffer = hwy::AllocateAligned<float>(keys * row);
  for (int64_t i = 0; i < keys * row; ++i) buffer[i] = static_cast<float>(i % 5) * 0.125f;
  const std::vector<int32_t> rows = CornerRows(keys, width, 2);
  std::vector<float> coefs(rows.size(), 1e-6f);
  auto g_row = hwy::AllocateAligned<float>(kDims);
  for (int64_t d = 0; d < kDims; ++d) g_row[d] = 1e-3f * static_cast<float>(d);
  auto dots = hwy::AllocateAligned<float>(4 * kPoints);
  float* const buf = buffer.get();
  const double s = Fastest(30, [&] {
    for (int64_t item = 0; item < kItems; ++item) {
      const int32_t* r = rows.data() + item * kPoints * 4;
      const float* coef = coefs.data() + item * kPoints * 4;
#if HWY_TARGET == HWY_SCALAR || HWY_HAVE_SCALABLE  // As in the kernel: the general path.
      for (int64_t i = 0; i < kPoints; ++i) {
        float* acc[4];
        for (int c = 0; c < 4; ++c) acc[c] = buf + int64_t{r[c * kPoints + i]} * row;
        kernels::DotRows4<float>(g_row.get(), acc[0] + kDims, acc[1] + kDims, acc[2] + kDims,
                                 acc[3] + kDims, kDims, dots.get() + 4 * i);
        kernels::AxpyRowPair<float>(acc[0], coef[i], acc[1], coef[kPoints + i], g_row.get(), kDims);
        kernels::AxpyRowPair<float>(acc[2], coef[2 * kPoints + i], acc[3], coef[3 * kPoints + i],
                                    g_row.get(), kDims);
      }
#else
      PointRowWork(buf, row, r, coef, g_row.get(), dots.get());
#endif
    }
  });
  return s * 1e9 / static_cast<double>(kItems * kPoints);
}

// The four figures of the table, in order, and the target's name.
const char* Measure(double* out) {
  // L1: 128 keys, a 16 x 8 map (16 KiB of value rows, 32 KiB of by-head rows). L2: 512 KiB
  // of rows (4096 keys, 64 x 64, forward; 2048, 64 x 32, by head), half the L2 of the AMD
  // Zen 4/5 machines we measure on.
  out[0] = GatherNsPerCorner(128, 16);
  out[1] = GatherNsPerCorner(4096, 64);
  out[2] = PointNsPerPoint(128, 16);
  out[3] = PointNsPerPoint(2048, 64);
  return hwy::TargetName(HWY_TARGET);
}

}  // namespace HWY_NAMESPACE
}  // namespace bench_loops
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace bench_loops {
HWY_EXPORT(Measure);
}  // namespace bench_loops

int main(int argc, char** argv) {
  std::string markdown;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--markdown" && i + 1 < argc) {
      markdown = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s [--markdown FILE]\n", argv[0]);
      return 2;
    }
  }
  msda::cpu::SelectTargetOnce();
  double ns[4];
  const char* target = HWY_DYNAMIC_DISPATCH(bench_loops::Measure)(ns);
  char text[1024];
  std::snprintf(text, sizeof(text),
                "SIMD target %s, D = %lld fp32, %lld points per (query, head), fastest of 30 "
                "runs of %lld items.\n\n"
                "| loop | rows in L1 | rows in L2 |\n|---|---|---|\n"
                "| forward gather, ns per corner | %.3f | %.3f |\n"
                "| backward by-head row work, ns per point | %.3f | %.3f |\n",
                target, static_cast<long long>(kDims), static_cast<long long>(kPoints),
                static_cast<long long>(kItems), ns[0], ns[1], ns[2], ns[3]);
  std::fputs(text, stdout);
  if (!markdown.empty()) {
    FILE* f = std::fopen(markdown.c_str(), "w");
    if (f == nullptr) {
      std::fprintf(stderr, "cannot write %s\n", markdown.c_str());
      return 1;
    }
    std::fputs(text, f);
    std::fclose(f);
  }
  return 0;
}
#endif  // HWY_ONCE
