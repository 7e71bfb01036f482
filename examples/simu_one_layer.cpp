// The spec's one-layer training simulation, through the public C API only.
//
// A random value map, random sampling locations and random attention weights are the
// parameters of one MultiScale Deformable Attention layer. Each epoch runs the forward pass,
// an MSE loss against a fixed target (a random teacher layer's output), the backward pass, and
// one SGD step on all three parameters, with step sizes from curvature bounds the op itself
// measures. The program exits non-zero unless the loss falls in most epochs and ends below
// half its first value.
//
// Parameters are kept in fp32 ("master weights") and converted to the storage dtype before
// each call, as mixed-precision training does, so that FLOAT16 and BFLOAT16 runs learn too.
#include <msda/msda.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

struct Options {
  int64_t batch = 1;
  int64_t heads = 8;
  int64_t levels = 4;
  int64_t points = 4;
  int64_t dims = 32;
  int64_t queries = 1000;
  int64_t base_height = 32;  // Level l is (base_height >> l) x (base_width >> l), at least 1x1.
  int64_t base_width = 48;
  int epochs = 10;
  float lr = 0.0f;           // Scales the automatic rates; 0 means 1.
  float location_lr = 0.0f;  // Rate for the sampling locations, relative to lr; 0: default.
  int threads = 0;           // 0: library default (MSDA_NUM_THREADS or every core).
  msdaDataType dtype = MSDA_FLOAT32;
  uint32_t seed = 2024;
};

void Usage(const char* argv0) {
  std::printf(
      "usage: %s [--batch N] [--heads N] [--levels N] [--points N] [--dims N]\n"
      "          [--queries N] [--height N] [--width N] [--epochs N] [--lr X]\n"
      "          [--threads N] [--dtype float32|float16|bfloat16|float64] [--seed N]\n"
      "  --lr X scales the automatic step sizes (default 1, about half the stable step)\n",
      argv0);
}

bool ParseOptions(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "-h" || flag == "--help") {
      Usage(argv[0]);
      std::exit(0);
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "missing value after %s\n", flag.c_str());
      return false;
    }
    const char* arg = argv[++i];
    if (flag == "--batch")
      o->batch = std::atoll(arg);
    else if (flag == "--heads")
      o->heads = std::atoll(arg);
    else if (flag == "--levels")
      o->levels = std::atoll(arg);
    else if (flag == "--points")
      o->points = std::atoll(arg);
    else if (flag == "--dims")
      o->dims = std::atoll(arg);
    else if (flag == "--queries")
      o->queries = std::atoll(arg);
    else if (flag == "--height")
      o->base_height = std::atoll(arg);
    else if (flag == "--width")
      o->base_width = std::atoll(arg);
    else if (flag == "--epochs")
      o->epochs = std::atoi(arg);
    else if (flag == "--lr")
      o->lr = static_cast<float>(std::atof(arg));
    else if (flag == "--location-lr")
      o->location_lr = static_cast<float>(std::atof(arg));
    else if (flag == "--threads")
      o->threads = std::atoi(arg);
    else if (flag == "--seed")
      o->seed = static_cast<uint32_t>(std::atol(arg));
    else if (flag == "--dtype") {
      std::string d = arg;
      if (d == "float32")
        o->dtype = MSDA_FLOAT32;
      else if (d == "float16")
        o->dtype = MSDA_FLOAT16;
      else if (d == "bfloat16")
        o->dtype = MSDA_BFLOAT16;
      else if (d == "float64")
        o->dtype = MSDA_FLOAT64;
      else {
        std::fprintf(stderr, "unknown dtype %s\n", arg);
        return false;
      }
    } else {
      std::fprintf(stderr, "unknown option %s\n", flag.c_str());
      return false;
    }
  }
  if (o->batch < 1 || o->heads < 1 || o->levels < 1 || o->points < 1 || o->dims < 1 ||
      o->queries < 1 || o->base_height < 1 || o->base_width < 1 || o->epochs < 2) {
    std::fprintf(stderr, "sizes must be >= 1 and epochs >= 2\n");
    return false;
  }
  return true;
}

// fp16 and bf16 are storage formats: the example converts with round-to-nearest-even.
uint16_t FloatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u)
    return static_cast<uint16_t>(sign | (abs > 0x7F800000u ? 0x7E00u : 0x7C00u));
  if (abs >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // Rounds to infinity.
  if (abs < 0x38800000u) {  // Subnormal half: let the FPU round f + 0.5 (2^-1 magic).
    float magic;
    const uint32_t m = 0x3F000000u;
    std::memcpy(&magic, &m, 4);
    float a;
    std::memcpy(&a, &abs, 4);
    a += magic;
    uint32_t r;
    std::memcpy(&r, &a, 4);
    return static_cast<uint16_t>(sign | (r - m));
  }
  const uint32_t odd = (abs >> 13) & 1u;
  return static_cast<uint16_t>(sign | ((abs + 0xC8000FFFu + odd) >> 13));
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t man = h & 0x3FFu;
  float f;
  if (exp == 0) {
    f = std::ldexp(static_cast<float>(man), -24);
  } else if (exp == 31) {
    f = man ? NAN : INFINITY;
  } else {
    f = std::ldexp(static_cast<float>(man | 0x400u), static_cast<int>(exp) - 25);
  }
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits |= sign;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t FloatToBFloat(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  return static_cast<uint16_t>((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

float BFloatToFloat(uint16_t b) {
  const uint32_t x = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

// A parameter or activation: fp32 master copy plus the bytes handed to msda.
struct Buffer {
  std::vector<int64_t> dims;
  msdaDataType dtype;
  std::vector<float> master;
  std::vector<unsigned char> bytes;

  Buffer(std::vector<int64_t> d, msdaDataType t) : dims(std::move(d)), dtype(t) {
    int64_t n = 1;
    for (int64_t x : dims) n *= x;
    master.assign(static_cast<size_t>(n), 0.0f);
    bytes.assign(static_cast<size_t>(n * msdaDataTypeSize(t)), 0);
  }
  size_t size() const { return master.size(); }

  void Store() {  // master -> bytes
    for (size_t i = 0; i < size(); ++i) {
      switch (dtype) {
        case MSDA_FLOAT32:
          std::memcpy(&bytes[i * 4], &master[i], 4);
          break;
        case MSDA_FLOAT64: {
          double d = master[i];
          std::memcpy(&bytes[i * 8], &d, 8);
          break;
        }
        case MSDA_FLOAT16: {
          uint16_t h = FloatToHalf(master[i]);
          std::memcpy(&bytes[i * 2], &h, 2);
          break;
        }
        default: {
          uint16_t b = FloatToBFloat(master[i]);
          std::memcpy(&bytes[i * 2], &b, 2);
          break;
        }
      }
    }
  }
  float Load(size_t i) const {  // bytes[i] -> float
    switch (dtype) {
      case MSDA_FLOAT32: {
        float f;
        std::memcpy(&f, &bytes[i * 4], 4);
        return f;
      }
      case MSDA_FLOAT64: {
        double d;
        std::memcpy(&d, &bytes[i * 8], 8);
        return static_cast<float>(d);
      }
      case MSDA_FLOAT16: {
        uint16_t h;
        std::memcpy(&h, &bytes[i * 2], 2);
        return HalfToFloat(h);
      }
      default: {
        uint16_t b;
        std::memcpy(&b, &bytes[i * 2], 2);
        return BFloatToFloat(b);
      }
    }
  }
  msdaTensor* View() {
    return msdaCreateTensor(dims.data(), dims.size(), dtype, nullptr, 0, MSDA_DEVICE_CPU, 0,
                            bytes.data());
  }
};

// Owns the tensor views of one call so that every exit path frees them.
struct Views {
  std::vector<msdaTensor*> all;
  msdaTensor* Add(msdaTensor* t) {
    all.push_back(t);
    return t;
  }
  ~Views() {
    for (msdaTensor* t : all) msdaDestroyTensor(t);
  }
};

bool Check(msdaStatus status, const char* what) {
  if (status == MSDA_SUCCESS) return true;
  std::fprintf(stderr, "%s failed: %s: %s\n", what, msdaStatusString(status),
               msdaGetLastErrorMessage());
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (!ParseOptions(argc, argv, &o)) {
    Usage(argv[0]);
    return 2;
  }
  if (o.threads > 0 && !Check(msdaSetNumThreads(o.threads), "msdaSetNumThreads")) return 1;

  // Level shapes halve from the base map, as in a feature pyramid.
  std::vector<int64_t> shapes, starts;
  int64_t keys = 0;
  for (int64_t l = 0; l < o.levels; ++l) {
    const int64_t h = std::max<int64_t>(1, o.base_height >> l);
    const int64_t w = std::max<int64_t>(1, o.base_width >> l);
    shapes.push_back(h);
    shapes.push_back(w);
    starts.push_back(keys);
    keys += h * w;
  }
  const int64_t B = o.batch, Q = o.queries, H = o.heads, L = o.levels, P = o.points, D = o.dims;

  std::mt19937 rng(o.seed);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  std::normal_distribution<float> normal(0.0f, 1.0f);

  Buffer value({B, keys, H, D}, o.dtype);
  Buffer locations({B, Q, H, L, P, 2}, MSDA_FLOAT32);  // Coordinates stay fp32 for every dtype.
  Buffer weights({B, Q, H, L, P}, o.dtype);
  Buffer output({B, Q, H * D}, o.dtype);
  Buffer target({B, Q, H * D}, o.dtype);
  Buffer grad_output({B, Q, H * D}, o.dtype);
  Buffer grad_value({B, keys, H, D}, o.dtype);
  Buffer grad_locations({B, Q, H, L, P, 2}, MSDA_FLOAT32);
  Buffer grad_weights({B, Q, H, L, P}, o.dtype);

  for (float& v : value.master) v = normal(rng);
  // Each query looks around its own reference point, as a DETR encoder query does.
  for (int64_t b = 0; b < B; ++b)
    for (int64_t q = 0; q < Q; ++q) {
      const float rx = unit(rng), ry = unit(rng);
      for (int64_t i = 0; i < H * L * P; ++i) {
        float* xy = &locations.master[static_cast<size_t>(((b * Q + q) * H * L * P + i) * 2)];
        xy[0] = rx + 0.05f * normal(rng);
        xy[1] = ry + 0.05f * normal(rng);
      }
    }
  for (float& v : weights.master) v = 1.0f / static_cast<float>(L * P) * (0.5f + unit(rng));

  // Inputs of the probe calls that measure the curvature (below).
  Buffer probe_value({B, keys, H, D}, o.dtype);
  Buffer probe_weights({B, Q, H, L, P}, o.dtype);

  std::vector<int64_t> shape_dims = {L, 2}, start_dims = {L};
  // The views alias the buffers' bytes, which never move, so they serve every epoch.
  Views views;
  msdaTensor* t_value = views.Add(value.View());
  msdaTensor* t_shapes = views.Add(msdaCreateTensor(shape_dims.data(), 2, MSDA_INT64, nullptr, 0,
                                                    MSDA_DEVICE_CPU, 0, shapes.data()));
  msdaTensor* t_starts = views.Add(msdaCreateTensor(start_dims.data(), 1, MSDA_INT64, nullptr, 0,
                                                    MSDA_DEVICE_CPU, 0, starts.data()));
  msdaTensor* t_locations = views.Add(locations.View());
  msdaTensor* t_weights = views.Add(weights.View());
  msdaTensor* t_output = views.Add(output.View());
  msdaTensor* t_grad_output = views.Add(grad_output.View());
  msdaTensor* t_grad_value = views.Add(grad_value.View());
  msdaTensor* t_grad_locations = views.Add(grad_locations.View());
  msdaTensor* t_grad_weights = views.Add(grad_weights.View());
  msdaTensor* t_probe_value = views.Add(probe_value.View());
  msdaTensor* t_probe_weights = views.Add(probe_weights.View());
  for (msdaTensor* t : views.all) {
    if (t == nullptr) {
      std::fprintf(stderr, "msdaCreateTensor failed: %s\n", msdaGetLastErrorMessage());
      return 1;
    }
  }

  // Each call plans, sizes the workspace and runs (the run releases the executor).
  std::vector<unsigned char> workspace;
  auto forward = [&](msdaTensor* in_value, msdaTensor* in_weights) {
    uint64_t workspace_size = 0;
    msdaExecutor* executor = nullptr;
    if (!Check(msdaForwardGetWorkspaceSize(in_value, t_shapes, t_starts, t_locations, in_weights,
                                           t_output, &workspace_size, &executor),
               "msdaForwardGetWorkspaceSize"))
      return false;
    workspace.resize(workspace_size);
    return Check(msdaForward(workspace.data(), workspace_size, executor, nullptr), "msdaForward");
  };
  auto backward = [&](msdaTensor* in_value, msdaTensor* in_weights, msdaTensor* out_locations,
                      msdaTensor* out_weights) {
    uint64_t workspace_size = 0;
    msdaExecutor* executor = nullptr;
    if (!Check(msdaBackwardGetWorkspaceSize(in_value, t_shapes, t_starts, t_locations, in_weights,
                                            t_grad_output, t_grad_value, out_locations,
                                            out_weights, &workspace_size, &executor),
               "msdaBackwardGetWorkspaceSize"))
      return false;
    workspace.resize(workspace_size);
    return Check(msdaBackward(workspace.data(), workspace_size, executor, nullptr),
                 "msdaBackward");
  };

  // The target is what a teacher layer outputs: another random value map and weights over
  // the same sampling locations. The student can reach it (a random target of Q * H * D
  // numbers is out of its reach once the queries outnumber the value rows), so the loss can
  // fall far for every problem size.
  for (float& v : probe_value.master) v = normal(rng);
  for (float& w : probe_weights.master) w = 1.0f / static_cast<float>(L * P) * (0.5f + unit(rng));
  probe_value.Store();
  probe_weights.Store();
  locations.Store();
  if (!forward(t_probe_value, t_probe_weights)) return 1;
  for (size_t i = 0; i < output.size(); ++i) target.master[i] = output.Load(i);
  target.Store();

  // The step sizes. The loss is MSE = mean((out - target)^2) over n outputs; plain SGD is
  // stable while each rate times the curvature it meets stays below 2. Fixed rates from the
  // sizes alone do not do: how many samples share a value row grows with the query count (a
  // 4x6 level is read by every query), and a weight's curvature grows with the values it
  // scales, which grow as they learn. So each epoch bounds the curvature with three probe
  // calls of the op itself and gives every parameter a rate of `scale` / bound (scale 1/2
  // for values and weights: their sum stays below 2, with room for the terms the
  // Gauss-Newton bound leaves out).
  //
  // Value: out = J value with J >= 0 while the weights are, so its curvature (2 / n) J^T J is
  // bounded per row by (2 / n) (J^T J 1)_i (Gershgorin; scaled rows keep the bound). A
  // forward of an all-ones value with weights |w| gives J 1, a backward of that J^T J 1.
  // Weights: each (query, head) owns its outputs, so their curvature is block diagonal, each
  // block (2 / n) S^T S for the D x L*P samples S, bounded by its trace. A sample is a convex
  // combination of values, so sum_d s_d^2 <= the sample of value^2: a forward of value^2
  // with all-one weights, summed over d, bounds the trace.
  // Locations move in normalised units, where a step of 1 crosses the whole map; their small
  // fixed rate keeps them a minor term.
  const double n = static_cast<double>(output.size());
  const double scale = 0.5 * (o.lr > 0 ? o.lr : 1.0);
  const float location_lr = o.location_lr > 0 ? o.location_lr : static_cast<float>(0.25e-5 * n / D);
  std::vector<float> value_lr(value.size(), 0.0f), weight_lr(weights.size(), 0.0f);
  auto choose_rates = [&]() {
    for (float& v : probe_value.master) v = 1.0f;
    for (size_t i = 0; i < weights.size(); ++i) probe_weights.master[i] = std::fabs(weights.master[i]);
    probe_value.Store();
    probe_weights.Store();
    if (!forward(t_probe_value, t_probe_weights)) return false;
    for (size_t i = 0; i < output.size(); ++i) grad_output.master[i] = output.Load(i);
    grad_output.Store();
    if (!backward(t_probe_value, t_probe_weights, nullptr, nullptr)) return false;
    for (size_t i = 0; i < value.size(); ++i) {
      const double row_sum = grad_value.Load(i);
      value_lr[i] = row_sum > 0 ? static_cast<float>(scale * n / (2.0 * row_sum)) : 0.0f;
    }

    for (size_t i = 0; i < value.size(); ++i) probe_value.master[i] = value.master[i] * value.master[i];
    for (float& w : probe_weights.master) w = 1.0f;
    probe_value.Store();
    probe_weights.Store();
    if (!forward(t_probe_value, t_probe_weights)) return false;
    const size_t block = static_cast<size_t>(L * P);
    for (size_t qh = 0; qh < static_cast<size_t>(B * Q * H); ++qh) {
      double trace = 0;
      for (size_t d = 0; d < static_cast<size_t>(D); ++d) trace += output.Load(qh * D + d);
      const float rate = trace > 0 ? static_cast<float>(scale * n / (2.0 * trace)) : 0.0f;
      for (size_t i = 0; i < block; ++i) weight_lr[qh * block + i] = rate;
    }
    return true;
  };

  double first_loss = 0, last_loss = 0, previous_loss = 0;
  int falls = 0;
  std::printf(
      "msda %d.%d.%d  simu_one_layer: B=%lld Q=%lld H=%lld L=%lld P=%lld D=%lld K=%lld "
      "dtype=%s threads=%d lr scale=%g\n",
      msdaGetVersion() / 10000, msdaGetVersion() / 100 % 100, msdaGetVersion() % 100, (long long)B,
      (long long)Q, (long long)H, (long long)L, (long long)P, (long long)D, (long long)keys,
      o.dtype == MSDA_FLOAT32    ? "float32"
      : o.dtype == MSDA_FLOAT16  ? "float16"
      : o.dtype == MSDA_BFLOAT16 ? "bfloat16"
                                 : "float64",
      msdaGetNumThreads(), 2 * scale);

  for (int epoch = 0; epoch < o.epochs; ++epoch) {
    const auto start = std::chrono::steady_clock::now();
    if (!choose_rates()) return 1;
    value.Store();
    locations.Store();
    weights.Store();
    if (!forward(t_value, t_weights)) return 1;

    // Loss and its gradient with respect to the output.
    double loss = 0;
    for (size_t i = 0; i < output.size(); ++i) {
      const double diff = static_cast<double>(output.Load(i)) - target.Load(i);
      loss += diff * diff;
      grad_output.master[i] = static_cast<float>(2.0 * diff / n);
    }
    loss /= n;
    grad_output.Store();
    if (!backward(t_value, t_weights, t_grad_locations, t_grad_weights)) return 1;

    // SGD on the fp32 master copies.
    for (size_t i = 0; i < value.size(); ++i) value.master[i] -= value_lr[i] * grad_value.Load(i);
    for (size_t i = 0; i < weights.size(); ++i)
      weights.master[i] -= weight_lr[i] * grad_weights.Load(i);
    for (size_t i = 0; i < locations.size(); ++i)
      locations.master[i] -= location_lr * grad_locations.Load(i);

    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    std::printf("epoch %3d  loss %.6f  (%.1f ms forward+backward+update)\n", epoch, loss, ms);
    if (epoch == 0) first_loss = loss;
    if (epoch > 0 && loss < previous_loss) ++falls;
    previous_loss = last_loss = loss;
  }

  // Training works if the loss falls steadily: in most epochs, and to below half its first
  // value. A diverging run (or one stuck at a NaN-free plateau) fails both.
  const int steps = o.epochs - 1;
  std::printf("loss %.6f -> %.6f, falling in %d of %d epochs\n", first_loss, last_loss, falls,
              steps);
  if (!(2 * falls > steps && last_loss < 0.5 * first_loss)) {
    std::fprintf(stderr,
                 "FAILED: the loss must fall in most epochs and end below half its first value\n");
    return 1;
  }
  return 0;
}
