// The spec's one-layer training simulation, written against the Ascend API only: AscendCL for
// the device, streams and memory, and the two aclnn operator headers. It builds unchanged
// against CANN; linked with msda::aclnn it runs on the host CPU (docs/aclnn.md).
//
// A value map over three levels, sampling locations and attention weights are the layer's
// parameters. Each epoch runs the forward, an MSE loss against a fixed target (a random
// teacher layer's output), the gradient, and one SGD step on the three parameters, with step
// sizes from curvature bounds the operator itself measures. The program exits non-zero unless
// the loss falls in most epochs and ends below half its first value.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "acl/acl.h"
#include "aclnn_multi_scale_deformable_attn_func_v2.h"
#include "aclnn_multi_scale_deformable_attn_grad_v2.h"

namespace {

#define CHECK_ACL(call)                                                                \
  do {                                                                                 \
    const int status_ = static_cast<int>(call);                                        \
    if (status_ != 0) {                                                                \
      std::fprintf(stderr, "%s failed: %d: %s\n", #call, status_, aclGetRecentErrMsg()); \
      return false;                                                                    \
    }                                                                                  \
  } while (0)

// A float tensor in device memory with a host copy: the host copy is what the loss and the
// SGD step work on, as host code around a device operator does.
struct DeviceTensor {
  std::vector<int64_t> shape;
  aclDataType dtype = ACL_FLOAT;
  size_t bytes = 0;
  void* device = nullptr;
  aclTensor* tensor = nullptr;

  bool Create(std::vector<int64_t> dims, aclDataType type, size_t element_size) {
    shape = std::move(dims);
    dtype = type;
    int64_t elements = 1;
    for (int64_t d : shape) elements *= d;
    bytes = static_cast<size_t>(elements) * element_size;
    CHECK_ACL(aclrtMalloc(&device, bytes, ACL_MEM_MALLOC_HUGE_FIRST));
    std::vector<int64_t> strides(shape.size(), 1);
    for (size_t i = shape.size() - 1; i > 0; --i) strides[i - 1] = strides[i] * shape[i];
    tensor = aclCreateTensor(shape.data(), shape.size(), dtype, strides.data(), 0, ACL_FORMAT_ND,
                             shape.data(), shape.size(), device);
    if (tensor == nullptr) {
      std::fprintf(stderr, "aclCreateTensor failed: %s\n", aclGetRecentErrMsg());
      return false;
    }
    return true;
  }
  template <typename T>
  bool Upload(const std::vector<T>& host) {
    CHECK_ACL(aclrtMemcpy(device, bytes, host.data(), bytes, ACL_MEMCPY_HOST_TO_DEVICE));
    return true;
  }
  template <typename T>
  bool Download(std::vector<T>* host) const {
    host->resize(bytes / sizeof(T));
    CHECK_ACL(aclrtMemcpy(host->data(), bytes, device, bytes, ACL_MEMCPY_DEVICE_TO_HOST));
    return true;
  }
  void Destroy() {
    if (tensor != nullptr) aclDestroyTensor(tensor);
    if (device != nullptr) aclrtFree(device);
    tensor = nullptr;
    device = nullptr;
  }
};

struct Workspace {
  void* device = nullptr;
  uint64_t bytes = 0;
  bool Reserve(uint64_t size) {
    if (size <= bytes) return true;
    if (device != nullptr) aclrtFree(device);
    device = nullptr;
    bytes = 0;
    CHECK_ACL(aclrtMalloc(&device, size, ACL_MEM_MALLOC_HUGE_FIRST));
    bytes = size;
    return true;
  }
};

struct Options {
  int epochs = 20;
  int64_t queries = 100;
};

bool Train(const Options& o, aclrtStream stream) {
  // bs 1, 4 heads of 16 dims, 3 levels of 16x16, 8x8 and 4x4, 4 points per level.
  const int64_t batch = 1, heads = 4, dims = 16, points = 4, queries = o.queries;
  const std::vector<int64_t> level_shapes = {16, 16, 8, 8, 4, 4};
  const int64_t levels = static_cast<int64_t>(level_shapes.size() / 2);
  std::vector<int64_t> level_starts;
  int64_t keys = 0;
  for (int64_t l = 0; l < levels; ++l) {
    level_starts.push_back(keys);
    keys += level_shapes[2 * l] * level_shapes[2 * l + 1];
  }

  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  std::vector<float> value(static_cast<size_t>(batch * keys * heads * dims));
  std::vector<float> location(static_cast<size_t>(batch * queries * heads * levels * points * 2));
  std::vector<float> weight(static_cast<size_t>(batch * queries * heads * levels * points));
  std::vector<float> target(static_cast<size_t>(batch * queries * heads * dims));
  for (float& v : value) v = normal(rng);
  // Each query samples around its own reference point, as an encoder query does.
  for (int64_t q = 0; q < batch * queries; ++q) {
    const float x = unit(rng), y = unit(rng);
    for (int64_t i = 0; i < heads * levels * points; ++i) {
      float* xy = &location[static_cast<size_t>((q * heads * levels * points + i) * 2)];
      xy[0] = x + 0.05f * normal(rng);
      xy[1] = y + 0.05f * normal(rng);
    }
  }
  for (float& w : weight) w = (0.5f + unit(rng)) / static_cast<float>(levels * points);

  DeviceTensor t_value, t_shapes, t_starts, t_location, t_weight, t_output, t_grad_output,
      t_grad_value, t_grad_location, t_grad_weight, t_probe_value, t_probe_weight;
  std::vector<DeviceTensor*> all = {&t_value,       &t_shapes,       &t_starts,
                                    &t_location,    &t_weight,       &t_output,
                                    &t_grad_output, &t_grad_value,   &t_grad_location,
                                    &t_grad_weight, &t_probe_value,  &t_probe_weight};
  struct Cleanup {
    std::vector<DeviceTensor*>* tensors;
    Workspace* workspace;
    ~Cleanup() {
      for (DeviceTensor* t : *tensors) t->Destroy();
      if (workspace->device != nullptr) aclrtFree(workspace->device);
    }
  };
  Workspace workspace;
  Cleanup cleanup{&all, &workspace};

  const std::vector<int64_t> value_shape = {batch, keys, heads, dims};
  const std::vector<int64_t> location_shape = {batch, queries, heads, levels, points, 2};
  const std::vector<int64_t> weight_shape = {batch, queries, heads, levels, points};
  const std::vector<int64_t> output_shape = {batch, queries, heads * dims};
  if (!t_value.Create(value_shape, ACL_FLOAT, 4) ||
      !t_shapes.Create({levels, 2}, ACL_INT64, 8) || !t_starts.Create({levels}, ACL_INT64, 8) ||
      !t_location.Create(location_shape, ACL_FLOAT, 4) ||
      !t_weight.Create(weight_shape, ACL_FLOAT, 4) ||
      !t_output.Create(output_shape, ACL_FLOAT, 4) ||
      !t_grad_output.Create(output_shape, ACL_FLOAT, 4) ||
      !t_grad_value.Create(value_shape, ACL_FLOAT, 4) ||
      !t_grad_location.Create(location_shape, ACL_FLOAT, 4) ||
      !t_grad_weight.Create(weight_shape, ACL_FLOAT, 4) ||
      !t_probe_value.Create(value_shape, ACL_FLOAT, 4) ||
      !t_probe_weight.Create(weight_shape, ACL_FLOAT, 4)) {
    return false;
  }
  if (!t_shapes.Upload(level_shapes) || !t_starts.Upload(level_starts)) return false;

  // The two-stage calls, each followed by a wait on the stream. The forward reads
  // `in_value` and `in_weight` and writes t_output; the backward reads t_grad_output and
  // writes the three gradients.
  std::vector<float> output, grad_output(target.size()), grad_value, grad_location, grad_weight;
  auto forward = [&](const DeviceTensor& in_value, const DeviceTensor& in_weight) {
    uint64_t workspace_size = 0;
    aclOpExecutor* executor = nullptr;
    CHECK_ACL(aclnnMultiScaleDeformableAttnFuncV2GetWorkspaceSize(
        in_value.tensor, t_shapes.tensor, t_starts.tensor, t_location.tensor, in_weight.tensor,
        t_output.tensor, &workspace_size, &executor));
    if (!workspace.Reserve(workspace_size)) return false;
    CHECK_ACL(aclnnMultiScaleDeformableAttnFuncV2(workspace.device, workspace_size, executor,
                                                  stream));
    CHECK_ACL(aclrtSynchronizeStream(stream));
    return t_output.Download(&output);
  };
  auto backward = [&](const DeviceTensor& in_value, const DeviceTensor& in_weight) {
    uint64_t workspace_size = 0;
    aclOpExecutor* executor = nullptr;
    CHECK_ACL(aclnnMultiScaleDeformableAttnGradV2GetWorkspaceSize(
        in_value.tensor, t_shapes.tensor, t_starts.tensor, t_location.tensor, in_weight.tensor,
        t_grad_output.tensor, t_grad_value.tensor, t_grad_location.tensor, t_grad_weight.tensor,
        &workspace_size, &executor));
    if (!workspace.Reserve(workspace_size)) return false;
    CHECK_ACL(aclnnMultiScaleDeformableAttnGradV2(workspace.device, workspace_size, executor,
                                                  stream));
    CHECK_ACL(aclrtSynchronizeStream(stream));
    return t_grad_value.Download(&grad_value) && t_grad_location.Download(&grad_location) &&
           t_grad_weight.Download(&grad_weight);
  };

  // The target is a teacher layer's output: another random value map and weights over the
  // same locations, so the student can reach it for every query count.
  std::vector<float> probe_value(value.size()), probe_weight(weight.size());
  for (float& v : probe_value) v = normal(rng);
  for (float& w : probe_weight) w = (0.5f + unit(rng)) / static_cast<float>(levels * points);
  if (!t_probe_value.Upload(probe_value) || !t_probe_weight.Upload(probe_weight) ||
      !t_location.Upload(location) || !forward(t_probe_value, t_probe_weight)) {
    return false;
  }
  target = output;

  // MSE over n outputs: its gradient is 2 (out - target) / n. Plain SGD is stable while each
  // rate times the curvature it meets stays below 2, and that curvature grows with the query
  // count (every query reads the 4x4 level) and with the values (a weight scales them), so
  // each epoch bounds it with probe calls of the operator and gives every parameter the rate
  // 1/2 / bound (values and weights together stay below 2):
  // - value: out = J value with J >= 0, curvature (2 / n) J^T J, bounded per row by
  //   (2 / n) (J^T J 1)_i (Gershgorin): the forward of an all-ones value with weights |w| is
  //   J 1, the gradient of that J^T J 1;
  // - weights: block diagonal per (query, head), each block (2 / n) S^T S for its samples S,
  //   bounded by the trace, which the forward of value^2 with all-one weights bounds (a
  //   sample is a convex combination of values);
  // - locations move in normalised units, where a step of 1 crosses the whole map, at a
  //   small fixed rate.
  const double n = static_cast<double>(target.size());
  const double scale = 0.5;
  const float location_lr = static_cast<float>(0.25e-5 * n / dims);
  std::vector<float> value_lr(value.size()), weight_lr(weight.size());
  auto choose_rates = [&]() {
    for (float& v : probe_value) v = 1.0f;
    for (size_t i = 0; i < weight.size(); ++i) probe_weight[i] = std::fabs(weight[i]);
    if (!t_probe_value.Upload(probe_value) || !t_probe_weight.Upload(probe_weight) ||
        !forward(t_probe_value, t_probe_weight) || !t_grad_output.Upload(output) ||
        !backward(t_probe_value, t_probe_weight)) {
      return false;
    }
    for (size_t i = 0; i < value.size(); ++i) {
      value_lr[i] = grad_value[i] > 0 ? static_cast<float>(scale * n / (2.0 * grad_value[i])) : 0;
    }
    for (size_t i = 0; i < value.size(); ++i) probe_value[i] = value[i] * value[i];
    for (float& w : probe_weight) w = 1.0f;
    if (!t_probe_value.Upload(probe_value) || !t_probe_weight.Upload(probe_weight) ||
        !forward(t_probe_value, t_probe_weight)) {
      return false;
    }
    const size_t block = static_cast<size_t>(levels * points);
    for (size_t qh = 0; qh < static_cast<size_t>(batch * queries * heads); ++qh) {
      double trace = 0;
      for (size_t d = 0; d < static_cast<size_t>(dims); ++d) trace += output[qh * dims + d];
      const float rate = trace > 0 ? static_cast<float>(scale * n / (2.0 * trace)) : 0.0f;
      for (size_t i = 0; i < block; ++i) weight_lr[qh * block + i] = rate;
    }
    return true;
  };

  std::printf("aclnn_one_layer: bs=%lld queries=%lld heads=%lld dims=%lld levels=%lld "
              "points=%lld keys=%lld\n",
              static_cast<long long>(batch), static_cast<long long>(queries),
              static_cast<long long>(heads), static_cast<long long>(dims),
              static_cast<long long>(levels), static_cast<long long>(points),
              static_cast<long long>(keys));
  double first_loss = 0, previous_loss = 0, loss = 0;
  int falls = 0;
  for (int epoch = 0; epoch < o.epochs; ++epoch) {
    if (!choose_rates()) return false;
    if (!t_value.Upload(value) || !t_location.Upload(location) || !t_weight.Upload(weight) ||
        !forward(t_value, t_weight)) {
      return false;
    }
    loss = 0;
    for (size_t i = 0; i < output.size(); ++i) {
      const double diff = static_cast<double>(output[i]) - target[i];
      loss += diff * diff;
      grad_output[i] = static_cast<float>(2.0 * diff / n);
    }
    loss /= n;
    if (!t_grad_output.Upload(grad_output) || !backward(t_value, t_weight)) return false;

    // SGD.
    for (size_t i = 0; i < value.size(); ++i) value[i] -= value_lr[i] * grad_value[i];
    for (size_t i = 0; i < weight.size(); ++i) weight[i] -= weight_lr[i] * grad_weight[i];
    for (size_t i = 0; i < location.size(); ++i) location[i] -= location_lr * grad_location[i];

    std::printf("epoch %3d  loss %.6f\n", epoch, loss);
    if (epoch == 0) first_loss = loss;
    if (epoch > 0 && loss < previous_loss) ++falls;
    previous_loss = loss;
  }

  const int steps = o.epochs - 1;
  std::printf("loss %.6f -> %.6f, falling in %d of %d epochs\n", first_loss, loss, falls, steps);
  if (2 * falls <= steps || !(loss < 0.5 * first_loss)) {
    std::fprintf(stderr, "FAILED: the loss must fall in most epochs and end below half its "
                         "first value\n");
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--epochs") {
      o.epochs = std::atoi(argv[i + 1]);
    } else if (flag == "--queries") {
      o.queries = std::atoll(argv[i + 1]);
    } else {
      std::fprintf(stderr, "usage: %s [--epochs N] [--queries N]\n", argv[0]);
      return 2;
    }
  }
  if (o.epochs < 2 || o.queries < 1) {
    std::fprintf(stderr, "epochs must be >= 2 and queries >= 1\n");
    return 2;
  }

  // The AscendCL lifecycle: init, device, stream; the reverse at the end.
  const int32_t device_id = 0;
  aclrtStream stream = nullptr;
  if (aclInit(nullptr) != ACL_SUCCESS || aclrtSetDevice(device_id) != ACL_SUCCESS ||
      aclrtCreateStream(&stream) != ACL_SUCCESS) {
    std::fprintf(stderr, "AscendCL setup failed: %s\n", aclGetRecentErrMsg());
    return 1;
  }
  const bool ok = Train(o, stream);
  aclrtDestroyStream(stream);
  aclrtResetDevice(device_id);
  aclFinalize();
  return ok ? 0 : 1;
}
