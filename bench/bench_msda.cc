// C++ benchmark of msda on the standard shapes, through the public API. Reports, side by side
// in one run: median forward and backward times, achieved GB/s and GFLOP/s, and the fraction
// of a roofline made from this machine's memory bandwidth and FMA peak measured in the same
// run; one thread against all threads. Never a timed test: run it by hand (see README).
//
//   bench_msda [--repeats N] [--shapes encoder,decoder,...] [--threads N] [--markdown FILE]
//              [--uniform] [--vs-scalar] [--vs-counting-sort] [--hot-value]
//              [--cold] [--misalign BYTES] [--gather-floor]
#include <msda/msda.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "timing.h"

namespace {

using bench::Clock;
using bench::Fastest;
using bench::Median;
using bench::Seconds;

// Every tensor and workspace is 64-byte aligned, as PyTorch's CPU allocator and
// std::aligned_alloc(64, ...) place them. std::vector's own allocator (glibc malloc) starts a
// large block 16 bytes into a page, where each 128-byte slice of a row spans three cache lines
// instead of two. --misalign BYTES shifts every tensor by that much, to measure what such an
// allocation costs.
int64_t g_misalign = 0;

template <typename T>
struct Aligned64 {
  using value_type = T;
  Aligned64() = default;
  template <typename U>
  Aligned64(const Aligned64<U>&) {}  // NOLINT: allocators convert implicitly.
  T* allocate(size_t n) {
    const size_t bytes = (n * sizeof(T) + static_cast<size_t>(g_misalign) + 63) / 64 * 64;
    char* block = static_cast<char*>(std::aligned_alloc(64, bytes));
    if (block == nullptr) throw std::bad_alloc();
    return reinterpret_cast<T*>(block + g_misalign);
  }
  void deallocate(T* p, size_t) { std::free(reinterpret_cast<char*>(p) - g_misalign); }
  template <typename U>
  bool operator==(const Aligned64<U>&) const {
    return true;
  }
  template <typename U>
  bool operator!=(const Aligned64<U>&) const {
    return false;
  }
};
template <typename T>
using Buffer = std::vector<T, Aligned64<T>>;

// Runs fn(thread_index) on n threads and returns when all are done.
template <typename Fn>
void OnThreads(int n, Fn fn) {
  std::vector<std::thread> threads;
  for (int i = 1; i < n; ++i) threads.emplace_back(fn, i);
  fn(0);
  for (auto& t : threads) t.join();
}

// Memory bandwidth: a triad a = b + s * c over arrays far larger than the caches; counts
// the bytes read and written (3 arrays).
double MeasureBandwidth(int threads) {
  const size_t n = size_t{32} << 20;  // 32 Mi floats per array, 384 MiB in all.
  Buffer<float> a(n, 1.0f), b(n, 2.0f), c(n, 3.0f);
  const double t = Fastest(7, [&] {
    OnThreads(threads, [&](int i) {
      const size_t begin = n * i / threads, end = n * (i + 1) / threads;
      for (size_t k = begin; k < end; ++k) a[k] = b[k] + 0.5f * c[k];
    });
  });
  return 3.0 * n * sizeof(float) / t;
}

// FMA peak: many independent fp32 FMA chains, vectorised for the build machine.
double MeasureFmaPeak(int threads) {
  constexpr int kChains = 16, kWidth = 16;
  const long iterations = 2000000;
  std::vector<float> sink(threads);
  const double t = Fastest(7, [&] {
    OnThreads(threads, [&](int i) {
      float acc[kChains][kWidth];
      for (int c = 0; c < kChains; ++c)
        for (int w = 0; w < kWidth; ++w) acc[c][w] = 1.0f + 1e-3f * (c + w + i);
      const float m = 0.9999999f, s = 1e-7f;
      for (long it = 0; it < iterations; ++it) {
        for (int c = 0; c < kChains; ++c)
          for (int w = 0; w < kWidth; ++w) acc[c][w] = acc[c][w] * m + s;
      }
      float total = 0;
      for (int c = 0; c < kChains; ++c)
        for (int w = 0; w < kWidth; ++w) total += acc[c][w];
      sink[i] = total;
    });
  });
  volatile float keep = sink[0];
  (void)keep;
  return 2.0 * kChains * kWidth * iterations * threads / t;
}

struct Shape {
  std::string name;
  int64_t batch, queries, heads, points, dims;
  std::vector<std::pair<int64_t, int64_t>> levels;
};

// Deformable DETR's four levels for an 800 x 1216 image (strides 8 to 64).
std::vector<std::pair<int64_t, int64_t>> DetrLevels() {
  return {{100, 152}, {50, 76}, {25, 38}, {13, 19}};
}

std::vector<Shape> StandardShapes() {
  const std::vector<std::pair<int64_t, int64_t>> detr = DetrLevels();
  return {
      {"encoder", 1, 20197, 8, 4, 32, detr},
      {"decoder", 1, 900, 8, 4, 32, detr},
      {"wide-batch", 4, 10000, 8, 4, 32, {{64, 64}, {32, 32}, {16, 16}, {8, 8}}},
      {"deep-dims", 1, 4096, 1, 8, 256, {{64, 64}}},
  };
}

// Diagnostic shapes, run only when named with --shapes. encoder-hot has the encoder's queries,
// heads, points and dims but a tiny map that stays in L1: the gap between it and encoder is
// what cache misses cost. encoder-p2 and encoder-p3 are the encoder with 2 and 3 points per
// level: L * P = 8 and 12 points per (query, head), less than one AVX-512 vector.
// encoder-d16 and encoder-d64 change only the head dims: how much of the time scales with D.
std::vector<Shape> DiagnosticShapes() {
  const std::vector<std::pair<int64_t, int64_t>> detr = DetrLevels();
  return {{"encoder-hot", 1, 20197, 8, 4, 32, {{8, 8}, {4, 4}, {2, 2}, {1, 1}}},
          {"encoder-p2", 1, 20197, 8, 2, 32, detr},
          {"encoder-p3", 1, 20197, 8, 3, 32, detr},
          {"encoder-d16", 1, 20197, 8, 4, 16, detr},
          {"encoder-d64", 1, 20197, 8, 4, 64, detr}};
}

#define CHECK_MSDA(expr)                                                         \
  do {                                                                           \
    const msdaStatus s_ = (expr);                                                \
    if (s_ != MSDA_SUCCESS) {                                                    \
      std::fprintf(stderr, "%s failed: %s\n", #expr, msdaGetLastErrorMessage()); \
      std::exit(1);                                                              \
    }                                                                            \
  } while (0)

struct Case {
  Shape shape;
  int64_t keys = 0;
  Buffer<float> value, loc, attn, out, grad_out, grad_value, grad_loc, grad_attn;
  std::vector<int64_t> spatial, starts;
};

// Locations as a trained model makes them: each query has a reference point, and its
// samples fall a few pixels around it on every level. Encoder queries are the flattened
// multi-level map itself (queries == keys), so query q's reference point is the centre of key
// pixel q; other queries (decoder object queries) get uniform random reference points. With
// uniform = true every sample is uniform on [0, 1]^2 instead: the worst case for caches.
Case MakeCase(const Shape& s, bool uniform_locations) {
  Case c;
  c.shape = s;
  for (auto [h, w] : s.levels) {
    c.spatial.push_back(h);
    c.spatial.push_back(w);
    c.starts.push_back(c.keys);
    c.keys += h * w;
  }
  const int64_t L = static_cast<int64_t>(s.levels.size());
  std::mt19937 rng(42);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  c.value.resize(s.batch * c.keys * s.heads * s.dims);
  for (float& v : c.value) v = normal(rng);
  const int64_t points = s.batch * s.queries * s.heads * L * s.points;
  c.loc.resize(points * 2);
  c.attn.resize(points);
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t q = 0; q < s.queries; ++q) {
      float rx = uniform(rng), ry = uniform(rng);
      if (s.queries == c.keys) {
        int64_t l = 0;
        while (l + 1 < L && c.starts[l + 1] <= q) ++l;
        const int64_t pixel = q - c.starts[l], width = s.levels[l].second;
        rx = (pixel % width + 0.5f) / width;
        ry = (pixel / width + 0.5f) / s.levels[l].first;
      }
      for (int64_t i = 0; i < s.heads * L * s.points; ++i) {
        const int64_t l = (i / s.points) % L;
        const int64_t idx = (b * s.queries + q) * s.heads * L * s.points + i;
        if (uniform_locations) {
          c.loc[2 * idx] = uniform(rng);
          c.loc[2 * idx + 1] = uniform(rng);
        } else {
          c.loc[2 * idx] = rx + 2.0f * normal(rng) / s.levels[l].second;
          c.loc[2 * idx + 1] = ry + 2.0f * normal(rng) / s.levels[l].first;
        }
        c.attn[idx] = uniform(rng) / (L * s.points);
      }
    }
  }
  c.out.resize(s.batch * s.queries * s.heads * s.dims);
  c.grad_out.resize(c.out.size());
  for (float& g : c.grad_out) g = normal(rng);
  c.grad_value.resize(c.value.size());
  c.grad_loc.resize(c.loc.size());
  c.grad_attn.resize(c.attn.size());
  return c;
}

struct Tensors {
  std::vector<msdaTensor*> all;
  msdaTensor* Add(std::vector<int64_t> dims, msdaDataType dtype, void* data) {
    all.push_back(
        msdaCreateTensor(dims.data(), dims.size(), dtype, nullptr, 0, MSDA_DEVICE_CPU, 0, data));
    return all.back();
  }
  ~Tensors() {
    for (auto* t : all) msdaDestroyTensor(t);
  }
};

struct Timing {
  double forward_s, backward_s;
  uint64_t forward_ws, backward_ws;
};

std::string g_simd_target = "?";  // From the first plan's description.
bool g_hot_value = false;         // --hot-value (see TimeCase).
bool g_cold = false;              // --cold: caches flushed before every timed call.

// Writes and reads a buffer twice the size of the last-level caches of most hosts (64 MiB),
// which evicts the tensors a previous call left cached: what a call in a model sees after the
// layers between two calls of the op.
void EvictCaches() {
  static std::vector<char> junk(64 << 20);
  for (size_t i = 0; i < junk.size(); i += 64) junk[i] = static_cast<char>(junk[i] + 1);
  volatile char keep = junk[junk.size() / 2];
  (void)keep;
}
void FlushCaches() {
  if (g_cold) EvictCaches();
}

Timing TimeCase(Case& c, int threads, int repeats) {
  const Shape& s = c.shape;
  const int64_t L = static_cast<int64_t>(s.levels.size());
  Tensors t;
  msdaTensor* value = t.Add({s.batch, c.keys, s.heads, s.dims}, MSDA_FLOAT32, c.value.data());
  if (g_hot_value) {
    // Diagnostic: every key of a head reads the same row (strides 0), so every gather hits L1
    // while the geometry and the work stay those of the shape. Run it with MSDA_HEAD_MAJOR=0,
    // or the forward copies the rows out again.
    msdaDestroyTensor(value);
    t.all.pop_back();
    const int64_t dims[4] = {s.batch, c.keys, s.heads, s.dims}, strides[4] = {0, 0, s.dims, 1};
    value = msdaCreateTensor(dims, 4, MSDA_FLOAT32, strides, 4, MSDA_DEVICE_CPU, 0, c.value.data());
    t.all.push_back(value);
  }
  msdaTensor* spatial = t.Add({L, 2}, MSDA_INT64, c.spatial.data());
  msdaTensor* starts = t.Add({L}, MSDA_INT64, c.starts.data());
  msdaTensor* loc =
      t.Add({s.batch, s.queries, s.heads, L, s.points, 2}, MSDA_FLOAT32, c.loc.data());
  msdaTensor* attn = t.Add({s.batch, s.queries, s.heads, L, s.points}, MSDA_FLOAT32, c.attn.data());
  msdaTensor* out = t.Add({s.batch, s.queries, s.heads * s.dims}, MSDA_FLOAT32, c.out.data());
  msdaTensor* grad_out =
      t.Add({s.batch, s.queries, s.heads * s.dims}, MSDA_FLOAT32, c.grad_out.data());
  msdaTensor* grad_value =
      t.Add({s.batch, c.keys, s.heads, s.dims}, MSDA_FLOAT32, c.grad_value.data());
  msdaTensor* grad_loc =
      t.Add({s.batch, s.queries, s.heads, L, s.points, 2}, MSDA_FLOAT32, c.grad_loc.data());
  msdaTensor* grad_attn =
      t.Add({s.batch, s.queries, s.heads, L, s.points}, MSDA_FLOAT32, c.grad_attn.data());

  CHECK_MSDA(msdaSetNumThreads(threads));
  Timing timing{};
  msdaExecutor* fwd = nullptr;
  CHECK_MSDA(msdaForwardGetWorkspaceSize(value, spatial, starts, loc, attn, out, &timing.forward_ws,
                                         &fwd));
  CHECK_MSDA(msdaSetExecutorRepeatable(fwd));
  {
    char text[2048];
    msdaExecutorDescribe(fwd, text, sizeof(text));
    const char* at = std::strstr(text, "simd target: ");
    if (at != nullptr) g_simd_target = std::string(at + 13, std::strcspn(at + 13, " \n"));
  }
  Buffer<char> fwd_ws(timing.forward_ws + 1);
  timing.forward_s = bench::MedianAfter(repeats, FlushCaches, [&] {
    CHECK_MSDA(msdaForward(fwd_ws.data(), timing.forward_ws, fwd, nullptr));
  });
  msdaDestroyExecutor(fwd);

  msdaExecutor* bwd = nullptr;
  CHECK_MSDA(msdaBackwardGetWorkspaceSize(value, spatial, starts, loc, attn, grad_out, grad_value,
                                          grad_loc, grad_attn, &timing.backward_ws, &bwd));
  CHECK_MSDA(msdaSetExecutorRepeatable(bwd));
  Buffer<char> bwd_ws(timing.backward_ws + 1);
  timing.backward_s = bench::MedianAfter(repeats, FlushCaches, [&] {
    CHECK_MSDA(msdaBackward(bwd_ws.data(), timing.backward_ws, bwd, nullptr));
  });
  msdaDestroyExecutor(bwd);
  return timing;
}

// One 4-byte word from each of words[at[0]], ..., words[at[n - 1]], XORed in four independent
// chains, so that the reads, not the additions, set the pace.
template <typename Index>
uint32_t ReadWords(const uint32_t* words, const Index* at, size_t n) {
  uint32_t a[4] = {0, 0, 0, 0};
  const size_t whole = n - n % 4;
  for (size_t i = 0; i < whole; i += 4) {
    for (int k = 0; k < 4; ++k) a[k] ^= words[at[i + k]];
  }
  for (size_t i = whole; i < n; ++i) a[0] ^= words[at[i]];
  return a[0] ^ a[1] ^ a[2] ^ a[3];
}

// --gather-floor's machine line: one thread's time per read of a random cache line of buffers
// of growing size, one word per line, reads independent of each other (so as many are in
// flight as the core allows). Where it jumps is the cache this thread can actually use; the
// largest buffer gives what a line from DRAM costs.
void PrintRandomReads(int repeats) {
  const size_t reads = size_t{1} << 21;
  std::printf("random line reads, 1 thread, ns per read:");
  for (const size_t mib : {1, 4, 8, 16, 32, 64}) {
    const size_t lines = mib << 14;
    Buffer<uint32_t> words(lines * 16, 1);
    std::vector<uint32_t> at(reads);
    std::mt19937_64 rng(mib);
    for (uint32_t& a : at) a = static_cast<uint32_t>(rng() % lines) * 16;
    volatile uint32_t sink = 0;
    const double s =
        Fastest(repeats, [&] { sink = sink + ReadWords(words.data(), at.data(), reads); });
    std::printf(" %zu MiB %.2f%s", mib, s / reads * 1e9, mib == 64 ? "\n" : ",");
  }
}

// --gather-floor: what reading the value rows a forward gathers costs this machine with no
// arithmetic, one thread, against the forward itself. The rows are the in-map corners of every
// (batch, query, head) in the order the SIMD forward gathers them (all heads of a query in
// turn; corner by corner over the points), read one 4-byte word per cache line; then the same
// rows' distinct lines in address order (the best order any implementation could read them
// in) and in random order (each line read once, in no order a prefetcher follows), and all of
// value streamed; and the forward's reads folded into 512 KiB, so that every one hits L2 (what
// issuing them costs). Cold: caches evicted before every run.
void PrintGatherFloor(Case& c, int repeats) {
  const Shape& s = c.shape;
  const int64_t L = static_cast<int64_t>(s.levels.size());
  const int64_t row_lines = (s.dims * 4 + 63) / 64;
  std::vector<int64_t> lines;  // Float offsets of every line of every corner row, in order.
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t q = 0; q < s.queries; ++q) {
      for (int64_t h = 0; h < s.heads; ++h) {
        const int64_t item = (b * s.queries + q) * s.heads + h;
        for (int corner = 0; corner < 4; ++corner) {
          for (int64_t i = 0; i < L * s.points; ++i) {
            const int64_t l = i / s.points;
            const auto [height, width] = s.levels[l];
            const float x = c.loc[2 * (item * L * s.points + i)] * width - 0.5f;
            const float y = c.loc[2 * (item * L * s.points + i) + 1] * height - 0.5f;
            if (!(y > -1 && x > -1 && y < height && x < width)) continue;
            const int64_t row = static_cast<int64_t>(std::floor(y)) + (corner >> 1);
            const int64_t col = static_cast<int64_t>(std::floor(x)) + (corner & 1);
            if (row < 0 || row >= height || col < 0 || col >= width) continue;
            const int64_t key = c.starts[l] + row * width + col;
            for (int64_t k = 0; k < row_lines; ++k) {
              lines.push_back(((b * c.keys + key) * s.heads + h) * s.dims + 16 * k);
            }
          }
        }
      }
    }
  }
  std::vector<int64_t> distinct = lines;
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  std::vector<int64_t> shuffled = distinct;
  std::shuffle(shuffled.begin(), shuffled.end(), std::mt19937_64(1));
  // The same reads folded into 512 KiB (every line an L2 hit): what issuing them costs.
  std::vector<int64_t> folded = lines;
  for (int64_t& at : folded) at &= (int64_t{1} << 17) - 1;
  const uint32_t* words = reinterpret_cast<const uint32_t*>(c.value.data());
  volatile uint32_t sink = 0;
  auto read = [&](const std::vector<int64_t>& at) {
    sink = sink + ReadWords(words, at.data(), at.size());
  };
  auto stream = [&] {
    uint32_t a[4] = {0, 0, 0, 0};
    for (size_t i = 0; i + 64 <= c.value.size(); i += 64) {
      for (int k = 0; k < 4; ++k) a[k] ^= words[i + 16 * k];
    }
    sink = sink + (a[0] ^ a[1] ^ a[2] ^ a[3]);
  };
  auto nothing = [] {};
  const double order_cold = bench::MedianAfter(repeats, EvictCaches, [&] { read(lines); });
  const double order_warm = bench::MedianAfter(repeats, nothing, [&] { read(lines); });
  const double distinct_cold = bench::MedianAfter(repeats, EvictCaches, [&] { read(distinct); });
  const double shuffled_cold = bench::MedianAfter(repeats, EvictCaches, [&] { read(shuffled); });
  const double stream_cold = bench::MedianAfter(repeats, EvictCaches, stream);
  const double folded_warm = bench::MedianAfter(repeats, nothing, [&] { read(folded); });
  const bool cold = g_cold;
  g_cold = true;
  const double forward_cold = TimeCase(c, 1, repeats).forward_s;
  g_cold = false;
  const double forward_warm = TimeCase(c, 1, repeats).forward_s;
  g_cold = cold;
  std::printf(
      "gather floor, %s, 1 thread: %zu cache lines of corner rows (%zu distinct, %.1f MB of "
      "%.1f MB of value)\n"
      "  read in the forward's order, no arithmetic: %.2f ms cold, %.2f ms warm, %.2f ms with "
      "every line in L2\n"
      "  distinct lines in address order: %.2f ms cold, in random order: %.2f ms cold; all of "
      "value streamed: %.2f ms cold\n"
      "  the forward: %.2f ms cold, %.2f ms warm\n",
      s.name.c_str(), lines.size(), distinct.size(), distinct.size() * 64 / 1e6,
      c.value.size() * 4 / 1e6, order_cold * 1e3, order_warm * 1e3, folded_warm * 1e3,
      distinct_cold * 1e3, shuffled_cold * 1e3, stream_cold * 1e3, forward_cold * 1e3,
      forward_warm * 1e3);
}

// Bytes that must move: every input read once, every output written once (fp32).
double ForwardBytes(const Case& c) {
  return 4.0 * (c.value.size() + c.loc.size() + c.attn.size() + c.out.size());
}
double BackwardBytes(const Case& c) {
  return 4.0 * (c.value.size() + c.loc.size() + c.attn.size() + c.grad_out.size() +
                c.grad_value.size() + c.grad_loc.size() + c.grad_attn.size());
}
// FLOPs: per sampling point, 4 corners of D multiply-adds (forward); the backward does a
// dot product and a scaled add per corner. Coordinate math is not counted.
double ForwardFlops(const Case& c) { return 2.0 * 4 * c.attn.size() * c.shape.dims; }
double BackwardFlops(const Case& c) { return 2.0 * ForwardFlops(c); }

}  // namespace

int main(int argc, char** argv) {
  int repeats = 7;
  int all_threads = static_cast<int>(std::thread::hardware_concurrency());
  std::string only, markdown;
  bool uniform_locations = false;
  bool vs_scalar = false, vs_sort = false, child_times = false, gather_floor = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (arg == "--repeats")
      repeats = std::max(1, std::atoi(next().c_str()));
    else if (arg == "--threads")
      all_threads = std::max(1, std::atoi(next().c_str()));
    else if (arg == "--shapes")
      only = "," + next() + ",";
    else if (arg == "--markdown")
      markdown = next();
    else if (arg == "--uniform")
      uniform_locations = true;
    else if (arg == "--vs-scalar")
      vs_scalar = true;
    else if (arg == "--vs-counting-sort")
      vs_sort = true;
    else if (arg == "--hot-value")
      g_hot_value = true;
    else if (arg == "--cold")
      g_cold = true;
    else if (arg == "--misalign")
      g_misalign = std::clamp(std::atoi(next().c_str()), 0, 63);
    else if (arg == "--gather-floor")
      gather_floor = true;
    else if (arg == "--child-times")
      child_times = true;
    else {
      std::printf(
          "usage: %s [--repeats N] [--threads N] [--shapes a,b] [--markdown FILE] [--uniform]\n"
          "          [--vs-scalar] [--vs-counting-sort] [--hot-value]\n"
          "          [--cold] [--misalign BYTES] [--gather-floor]\n",
          argv[0]);
      return arg == "--help" ? 0 : 2;
    }
  }

  std::vector<Shape> shapes = StandardShapes();
  for (const Shape& shape : DiagnosticShapes()) {
    if (only.find("," + shape.name + ",") != std::string::npos) shapes.push_back(shape);
  }
  if (child_times) {
    // Internal: timings only, for a parent run comparing against the scalar target.
    for (const Shape& shape : shapes) {
      if (!only.empty() && only.find("," + shape.name + ",") == std::string::npos) continue;
      Case c = MakeCase(shape, uniform_locations);
      const Timing one = TimeCase(c, 1, repeats);
      const Timing all = TimeCase(c, all_threads, repeats);
      std::printf("%s %.9f %.9f %.9f %.9f\n", shape.name.c_str(), one.forward_s, one.backward_s,
                  all.forward_s, all.backward_s);
    }
    return 0;
  }
  if (gather_floor) {
    PrintRandomReads(repeats);
    for (const Shape& shape : shapes) {
      if (!only.empty() && only.find("," + shape.name + ",") == std::string::npos) continue;
      Case c = MakeCase(shape, uniform_locations);
      PrintGatherFloor(c, repeats);
    }
    return 0;
  }
  std::printf(
      "msda %d, tensors 64-byte aligned + %d bytes, measuring the machine with %d "
      "threads...\n",
      msdaGetVersion(), static_cast<int>(g_misalign), all_threads);
  const double bw1 = MeasureBandwidth(1), bwn = MeasureBandwidth(all_threads);
  const double fma1 = MeasureFmaPeak(1), fman = MeasureFmaPeak(all_threads);
  std::printf("memory bandwidth (triad): 1 thread %.1f GB/s, %d threads %.1f GB/s\n", bw1 / 1e9,
              all_threads, bwn / 1e9);
  std::printf("fp32 FMA peak: 1 thread %.1f GFLOP/s, %d threads %.1f GFLOP/s\n\n", fma1 / 1e9,
              all_threads, fman / 1e9);

  std::string table =
      "| shape | pass | threads | median ms | GB/s | GFLOP/s | roofline ms | x roofline | "
      "speedup vs 1 thread | workspace MiB | scalar ms | SIMD speedup | counting-sort ms | "
      "by-head speedup |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const Shape& shape : shapes) {
    if (!only.empty() && only.find("," + shape.name + ",") == std::string::npos) continue;
    Case c = MakeCase(shape, uniform_locations);
    const Timing one = TimeCase(c, 1, repeats);
    const Timing all = TimeCase(c, all_threads, repeats);
    // The same shape on the scalar target, and with the counting sort only, each in a child
    // process (both are chosen once per process), right after these timings.
    // Each: 1-thread fwd, bwd; all-thread fwd, bwd.
    double scalar[4] = {0, 0, 0, 0}, sort[4] = {0, 0, 0, 0};
    auto child_times = [&](const char* env, double* out) {
      const std::string command =
          std::string(env) + " '" + std::string(argv[0]) + "' --child-times --shapes " +
          shape.name + " --threads " + std::to_string(all_threads) + " --repeats " +
          std::to_string(repeats) + (uniform_locations ? " --uniform" : "") +
          (g_hot_value ? " --hot-value" : "") + (g_cold ? " --cold" : "") + " --misalign " +
          std::to_string(g_misalign);
      if (FILE* child = popen(command.c_str(), "r")) {
        char name[64];
        if (std::fscanf(child, "%63s %lf %lf %lf %lf", name, &out[0], &out[1], &out[2], &out[3]) !=
            5) {
          std::fill(out, out + 4, 0.0);
        }
        pclose(child);
      }
    };
    if (vs_scalar) child_times("MSDA_SIMD_TARGET=SCALAR", scalar);
    // The backward with its counting sort only (the forward has no by-head mode).
    if (vs_sort) child_times("MSDA_BY_HEAD=0", sort);
    for (int pass = 0; pass < 2; ++pass) {
      const double bytes = pass == 0 ? ForwardBytes(c) : BackwardBytes(c);
      const double flops = pass == 0 ? ForwardFlops(c) : BackwardFlops(c);
      for (int k = 0; k < 2; ++k) {
        const Timing& t = k == 0 ? one : all;
        const int threads = k == 0 ? 1 : all_threads;
        const double seconds = pass == 0 ? t.forward_s : t.backward_s;
        const double bw = k == 0 ? bw1 : bwn, fma = k == 0 ? fma1 : fman;
        const double roofline = std::max(bytes / bw, flops / fma);
        const double speedup = (pass == 0 ? one.forward_s : one.backward_s) / seconds;
        const uint64_t ws = pass == 0 ? t.forward_ws : t.backward_ws;
        // "| ms | ratio" cells of a child run, or dashes.
        auto cells = [&](const double* child, char* buf, size_t size) {
          const double s = child[2 * k + pass];
          if (s > 0) {
            std::snprintf(buf, size, "| %.2f | %.2f ", s * 1e3, s / seconds);
          } else {
            std::snprintf(buf, size, "| - | - ");
          }
        };
        char scalar_cells[64], sort_cells[64];
        cells(scalar, scalar_cells, sizeof(scalar_cells));
        if (pass == 1) {
          cells(sort, sort_cells, sizeof(sort_cells));
        } else {
          std::snprintf(sort_cells, sizeof(sort_cells), "| - | - ");
        }
        char row[640];
        std::snprintf(row, sizeof(row),
                      "| %s | %s | %d | %.2f | %.1f | %.1f | %.2f | %.2f | %.2f | %.1f %s%s|\n",
                      shape.name.c_str(), pass == 0 ? "forward" : "backward", threads,
                      seconds * 1e3, bytes / seconds / 1e9, flops / seconds / 1e9, roofline * 1e3,
                      seconds / roofline, speedup, ws / 1048576.0, scalar_cells, sort_cells);
        table += row;
      }
    }
  }
  std::printf("SIMD target: %s\n%s", g_simd_target.c_str(), table.c_str());
  if (!markdown.empty()) {
    FILE* f = std::fopen(markdown.c_str(), "w");
    if (f == nullptr) return 1;
    std::fprintf(f,
                 "SIMD target %s. Memory bandwidth (triad): 1 thread %.1f GB/s, %d threads %.1f "
                 "GB/s. fp32 FMA peak: 1 thread %.1f GFLOP/s, %d threads %.1f GFLOP/s.\n\n%s",
                 g_simd_target.c_str(), bw1 / 1e9, all_threads, bwn / 1e9, fma1 / 1e9, all_threads,
                 fman / 1e9, table.c_str());
    std::fclose(f);
  }
  return 0;
}
