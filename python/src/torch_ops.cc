// msda/_torch_ops.so: the eager torch op's autograd node in C++, loaded by msda.ops with
// torch.ops.load_library where it was built against the torch that is imported (see
// python/CMakeLists.txt). It registers one private op,
//
//   msda::_ms_deform_attn_eager(Tensor value, Tensor spatial_shapes, Tensor level_start_index,
//                               Tensor sampling_locations, Tensor attention_weights) -> Tensor
//
// which msda.ms_deform_attn calls on its direct path only (plain dense CPU tensors, default
// variant, no compile, mode, transform, profiler or autocast watching, a gradient wanted): there
// a Python autograd.Function costs more than the whole call otherwise (its node, its Python
// backward and their argument handling). The public op msda::ms_deform_attn and its Python
// registrations serve every other call.
//
// The forward and backward run the C API on the tensors' memory, on PyTorch's intra-op
// threads (at::parallel_for as msda's parallel runner). Each thread keeps the repeatable
// executors of its recent call layouts and points them at a new call's memory
// (msdaExecutorSetData) instead of validating and planning again (ExecutorCache). Anything the C
// API refuses is handed to the public ops through the dispatcher, whose Python kernels raise the
// error the Python path raises (ValueError / TypeError naming the argument, MemoryError with the
// bytes); so does a backward with create_graph=True, which then records the backward op as the
// Python node does.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <msda/msda.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <tuple>
#include <vector>

#include "thread_workspace.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct TensorDeleter {
  void operator()(msdaTensor* t) const { msdaDestroyTensor(t); }
};
using TensorPtr = std::unique_ptr<msdaTensor, TensorDeleter>;

bool MapDtype(at::ScalarType type, msdaDataType* out) {
  switch (type) {
    case at::kFloat:
      *out = MSDA_FLOAT32;
      return true;
    case at::kDouble:
      *out = MSDA_FLOAT64;
      return true;
    case at::kHalf:
      *out = MSDA_FLOAT16;
      return true;
    case at::kBFloat16:
      *out = MSDA_BFLOAT16;
      return true;
    case at::kLong:
      *out = MSDA_INT64;
      return true;
    case at::kInt:
      *out = MSDA_INT32;
      return true;
    default:
      return false;
  }
}

// A view of t for the C API, or null for a tensor it cannot describe (the caller then hands
// the call to the Python kernels, which name the argument and the rule).
TensorPtr View(const at::Tensor& t) {
  msdaDataType dtype;
  if (!t.defined() || !t.is_cpu() || t.layout() != at::kStrided || t.dim() > 8 ||
      !MapDtype(t.scalar_type(), &dtype)) {
    return nullptr;
  }
  int64_t dims[8], strides[8];
  for (int64_t i = 0; i < t.dim(); ++i) {
    dims[i] = t.size(i);
    // A dim of size 0 or 1 never moves the pointer: any stride there (torch allows negative
    // ones after flips) is described as 0.
    strides[i] = dims[i] <= 1 ? 0 : t.stride(i);
    if (strides[i] < 0) return nullptr;
  }
  return TensorPtr(msdaCreateTensor(dims, static_cast<uint64_t>(t.dim()), dtype, strides, 0,
                                    MSDA_DEVICE_CPU, 0, const_cast<void*>(t.const_data_ptr())));
}

// msdaParallelRunner on PyTorch's intra-op threads: its OpenMP team or native pool, whichever
// this torch build uses. Each chunk at::parallel_for makes runs work with its indices.
// Chunks run on a thread other than the caller (for the tests: the team really ran).
std::atomic<int64_t> worker_chunks{0};

void TorchRunner(msdaParallelWork work, void* context, int32_t num_threads, void*) {
  at::parallel_for(0, num_threads, 1, [&](int64_t begin, int64_t end) {
    if (at::get_thread_num() != 0) worker_chunks.fetch_add(1, std::memory_order_relaxed);
    for (int64_t i = begin; i < end; ++i) work(context, static_cast<int32_t>(i));
  });
}

// Plans on PyTorch's thread count with the torch runner set for the scope of one call.
class CallScope {
 public:
  CallScope() : threads_(at::get_num_threads()) {
    msdaSetNumThreads(threads_);
    if (threads_ > 1) msdaSetParallelRunner(&TorchRunner, nullptr);
  }
  ~CallScope() {
    if (threads_ > 1) msdaSetParallelRunner(nullptr, nullptr);
    msdaSetNumThreads(0);
  }
  CallScope(const CallScope&) = delete;
  CallScope& operator=(const CallScope&) = delete;

 private:
  int threads_;
};

// A thread's executors of its recent calls, made repeatable and pointed at each new call's
// memory with msdaExecutorSetData: a call whose tensors have the dims, dtypes and strides of
// an earlier one (and the same level tables and thread count, everything a plan depends on)
// skips validation and planning, which cost more than a one-query call's kernels.
class ExecutorCache {
 public:
  static constexpr size_t kEntries = 16;
  ~ExecutorCache() {
    for (Entry& e : entries_) msdaDestroyExecutor(e.executor);
  }
  // The executor planned for `key`, or null; a hit becomes the most recent entry.
  msdaExecutor* Find(const std::vector<int64_t>& key, uint64_t* bytes) {
    for (size_t i = entries_.size(); i-- > 0;) {
      if (entries_[i].key != key) continue;
      std::rotate(entries_.begin() + i, entries_.begin() + i + 1, entries_.end());
      *bytes = entries_.back().bytes;
      return entries_.back().executor;
    }
    return nullptr;
  }
  void Add(const std::vector<int64_t>& key, msdaExecutor* executor, uint64_t bytes) {
    if (entries_.size() == kEntries) {
      msdaDestroyExecutor(entries_.front().executor);
      entries_.erase(entries_.begin());
    }
    entries_.push_back(Entry{key, executor, bytes});
  }
  int64_t hits = 0, misses = 0;

 private:
  struct Entry {
    std::vector<int64_t> key;
    msdaExecutor* executor;
    uint64_t bytes;
  };
  std::vector<Entry> entries_;
};

ExecutorCache& ThreadCache() {
  thread_local ExecutorCache cache;
  return cache;
}

// Appends what a plan depends on of one tensor argument: its dtype, dims and strides (as View
// describes them), or a marker for an absent one.
void AppendTensor(const at::Tensor& t, std::vector<int64_t>* key) {
  if (!t.defined()) {
    key->push_back(-1);
    return;
  }
  key->push_back(static_cast<int64_t>(t.scalar_type()));
  key->push_back(t.is_cpu() && t.layout() == at::kStrided ? t.dim() : -2);  // View refuses.
  key->push_back(t.dim());
  for (int64_t i = 0; i < t.dim(); ++i) {
    key->push_back(t.size(i));
    key->push_back(t.size(i) <= 1 ? 0 : t.stride(i));
  }
}

// Appends an index tensor's values (the level tables, which the plan reads); false for one
// that is not a CPU int32 / int64 tensor.
bool AppendValues(const at::Tensor& t, std::vector<int64_t>* key) {
  if (!t.defined() || !t.is_cpu() || t.dim() > 2 ||
      (t.scalar_type() != at::kLong && t.scalar_type() != at::kInt)) {
    return false;
  }
  const int64_t rows = t.dim() > 0 ? t.size(0) : 1, cols = t.dim() > 1 ? t.size(1) : 1;
  const int64_t row_stride = t.dim() > 0 ? t.stride(0) : 0;
  const int64_t col_stride = t.dim() > 1 ? t.stride(1) : 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t at = r * row_stride + c * col_stride;
      key->push_back(t.scalar_type() == at::kLong ? t.const_data_ptr<int64_t>()[at]
                                                  : t.const_data_ptr<int32_t>()[at]);
    }
  }
  return true;
}

// One call on the C API: the forward (6 tensors: value, spatial_shapes, level_start_index,
// sampling_locations, attention_weights, output) or the backward (9: the five inputs,
// grad_output, grad_value, grad_sampling_locations, grad_attention_weights, undefined for a
// gradient not computed), through the thread's cached executor for such a call or a new one.
// False if the C API refused the call (nothing written then).
bool Run(bool forward, const at::Tensor* const* tensors, int count) {
  CallScope scope;
  thread_local std::vector<int64_t> key;
  key.clear();
  key.push_back(forward ? 1 : 2);
  key.push_back(at::get_num_threads());
  for (int i = 0; i < count; ++i) AppendTensor(*tensors[i], &key);
  const bool cacheable = AppendValues(*tensors[1], &key) && AppendValues(*tensors[2], &key);
  auto run = [forward](void* ws, uint64_t bytes, msdaExecutor* e) {
    return forward ? msdaForward(ws, bytes, e, nullptr) : msdaBackward(ws, bytes, e, nullptr);
  };
  ExecutorCache& cache = ThreadCache();
  uint64_t bytes = 0;
  msdaExecutor* executor = cacheable ? cache.Find(key, &bytes) : nullptr;
  if (executor != nullptr) {
    void* data[9] = {};
    const int first_output = forward ? 5 : 6;
    for (int i = 0; i < count; ++i) {
      const at::Tensor& t = *tensors[i];
      if (i == 1 || i == 2 || !t.defined()) continue;  // The level tables: read at planning.
      data[i] = i < first_output ? const_cast<void*>(t.const_data_ptr()) : t.mutable_data_ptr();
    }
    if (msdaExecutorSetData(executor, data, static_cast<uint64_t>(count)) == MSDA_SUCCESS) {
      void* workspace = msda_python::ThreadWorkspace(bytes);
      if (bytes > 0 && workspace == nullptr) return false;
      ++cache.hits;
      return run(workspace, bytes, executor) == MSDA_SUCCESS;
    }
    // Refused (outputs on inputs' memory): planning refuses it too, naming the rule.
  }
  TensorPtr views[9];
  for (int i = 0; i < count; ++i) {
    if (!tensors[i]->defined()) continue;
    views[i] = View(*tensors[i]);
    if (!views[i]) return false;
  }
  const msdaStatus planned =
      forward
          ? msdaForwardGetWorkspaceSize(views[0].get(), views[1].get(), views[2].get(),
                                        views[3].get(), views[4].get(), views[5].get(), &bytes,
                                        &executor)
          : msdaBackwardGetWorkspaceSize(
                views[0].get(), views[1].get(), views[2].get(), views[3].get(), views[4].get(),
                views[5].get(), views[6].get(), views[7].get(), views[8].get(), &bytes, &executor);
  if (planned != MSDA_SUCCESS) return false;
  if (cacheable) msdaSetExecutorRepeatable(executor);  // Kept: runs do not release it.
  void* workspace = msda_python::ThreadWorkspace(bytes);
  const bool ok =
      (bytes == 0 || workspace != nullptr) && run(workspace, bytes, executor) == MSDA_SUCCESS;
  if (!cacheable) {
    if (bytes > 0 && workspace == nullptr) msdaDestroyExecutor(executor);  // Not run: not freed.
    return ok;
  }
  if (ok) {
    ++cache.misses;
    cache.Add(key, executor, bytes);
  } else {
    msdaDestroyExecutor(executor);
  }
  return ok;
}

// The forward on the C API; an undefined tensor if it refused the call.
at::Tensor ForwardCore(const at::Tensor& value, const at::Tensor& spatial_shapes,
                       const at::Tensor& level_start_index, const at::Tensor& locations,
                       const at::Tensor& weights) {
  if (value.dim() != 4 || locations.dim() != 6) return at::Tensor();
  at::Tensor out =
      at::empty({value.size(0), locations.size(1), value.size(2) * value.size(3)}, value.options());
  const at::Tensor* tensors[6] = {&value,     &spatial_shapes, &level_start_index,
                                  &locations, &weights,        &out};
  return Run(/*forward=*/true, tensors, 6) ? out : at::Tensor();
}

// The public ops, for everything the C API path does not take.
at::Tensor PublicForward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                         const at::Tensor& level_start_index, const at::Tensor& locations,
                         const at::Tensor& weights) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("msda::ms_deform_attn", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&, at::OptionalSymIntArrayRef,
                            c10::string_view)>();
  return op.call(value, spatial_shapes, level_start_index, locations, weights, c10::nullopt,
                 "default");
}

std::vector<at::Tensor> PublicBackward(const at::Tensor& grad_output,
                                       const std::vector<at::Tensor>& saved, bool need_value,
                                       bool need_locations, bool need_weights) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("msda::ms_deform_attn_backward", "")
                             .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                                 const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 const at::Tensor&, const at::Tensor&, const at::Tensor&, bool,
                                 bool, bool, at::OptionalSymIntArrayRef, c10::string_view)>();
  auto grads = op.call(grad_output, saved[0], saved[1], saved[2], saved[3], saved[4], need_value,
                       need_locations, need_weights, c10::nullopt, "default");
  return {std::get<0>(grads), std::get<1>(grads), std::get<2>(grads)};
}

// The backward on the C API: grads of the inputs asked for (undefined where not); false if
// the C API refused the call.
bool BackwardCore(const at::Tensor& grad_output, const std::vector<at::Tensor>& saved,
                  const bool needs[3], std::vector<at::Tensor>* grads) {
  const at::Tensor* likes[3] = {&saved[0], &saved[3], &saved[4]};
  grads->assign(3, at::Tensor());
  for (int i = 0; i < 3; ++i) {
    if (needs[i]) (*grads)[i] = at::empty_like(*likes[i], at::MemoryFormat::Contiguous);
  }
  const at::Tensor* tensors[9] = {&saved[0],    &saved[1],    &saved[2],    &saved[3],   &saved[4],
                                  &grad_output, &(*grads)[0], &(*grads)[1], &(*grads)[2]};
  return Run(/*forward=*/false, tensors, 9);
}

class MsDeformAttnFunction : public torch::autograd::Function<MsDeformAttnFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& value,
                            const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                            const at::Tensor& locations, const at::Tensor& weights) {
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      out = ForwardCore(value, spatial_shapes, level_start_index, locations, weights);
      if (!out.defined()) {  // Raises what the Python kernel raises (or computes the result).
        out = PublicForward(value, spatial_shapes, level_start_index, locations, weights);
      }
    }
    ctx->save_for_backward({value, spatial_shapes, level_start_index, locations, weights});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const std::vector<at::Tensor> saved = ctx->get_saved_variables();
    const bool needs[3] = {ctx->needs_input_grad(0), ctx->needs_input_grad(3),
                           ctx->needs_input_grad(4)};
    variable_list result(5);
    if (!(needs[0] || needs[1] || needs[2])) return result;
    at::Tensor grad_output = grad_outputs[0];
    if (grad_output.scalar_type() != saved[0].scalar_type()) {
      grad_output = grad_output.to(saved[0].scalar_type());
    }
    std::vector<at::Tensor> grads;
    // With create_graph the backward op records its own node (the public op's autograd).
    if (at::GradMode::is_enabled() || !BackwardCore(grad_output, saved, needs, &grads)) {
      grads = PublicBackward(grad_output, saved, needs[0], needs[1], needs[2]);
    }
    result[0] = needs[0] ? grads[0] : at::Tensor();
    result[3] = needs[1] ? grads[1] : at::Tensor();
    result[4] = needs[2] ? grads[2] : at::Tensor();
    return result;
  }
};

at::Tensor MsDeformAttnEager(const at::Tensor& value, const at::Tensor& spatial_shapes,
                             const at::Tensor& level_start_index, const at::Tensor& locations,
                             const at::Tensor& weights) {
  return MsDeformAttnFunction::apply(value, spatial_shapes, level_start_index, locations, weights);
}

// The calling thread's executor cache hits and misses, and the chunks of parallel sections
// run on PyTorch's worker threads so far (for the tests).
std::vector<int64_t> Stats() {
  const ExecutorCache& cache = ThreadCache();
  return {cache.hits, cache.misses, worker_chunks.load(std::memory_order_relaxed)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(msda, m) {
  m.def(
      "_ms_deform_attn_eager(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) -> Tensor");
  m.def("_eager_stats() -> int[]", &Stats);
}

// Above autograd: the kernel makes the node itself. The op is called only on CPU tensors with
// no mode or transform active (msda.ops' direct path).
TORCH_LIBRARY_IMPL(msda, CompositeImplicitAutograd, m) {
  m.impl("_ms_deform_attn_eager", &MsDeformAttnEager);
}
