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
// threads (at::parallel_for as msda's parallel runner). Anything the C API refuses is handed to
// the public ops through the dispatcher, whose Python kernels raise the error the Python path
// raises (ValueError / TypeError naming the argument, MemoryError with the bytes); so does a
// backward with create_graph=True, which then records the backward op as the Python node does.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <msda/msda.h>
#include <torch/autograd.h>
#include <torch/library.h>

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
void TorchRunner(msdaParallelWork work, void* context, int32_t num_threads, void*) {
  at::parallel_for(0, num_threads, 1, [&](int64_t begin, int64_t end) {
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

// Plans and runs one call through `get` (a GetWorkspaceSize call) and `run`; false if the C
// API refused any step (nothing was written then, except by a run that failed part way, which
// the C API does not do for a planned call).
template <typename Get, typename Run>
bool Execute(Get get, Run run) {
  CallScope scope;
  uint64_t bytes = 0;
  msdaExecutor* executor = nullptr;
  if (get(&bytes, &executor) != MSDA_SUCCESS) return false;
  void* workspace = msda_python::ThreadWorkspace(bytes);
  if (bytes > 0 && workspace == nullptr) {
    msdaDestroyExecutor(executor);
    return false;
  }
  return run(workspace, bytes, executor) == MSDA_SUCCESS;  // The run releases the executor.
}

// The forward on the C API; an undefined tensor if it refused the call.
at::Tensor ForwardCore(const at::Tensor& value, const at::Tensor& spatial_shapes,
                       const at::Tensor& level_start_index, const at::Tensor& locations,
                       const at::Tensor& weights) {
  if (value.dim() != 4 || locations.dim() != 6) return at::Tensor();
  at::Tensor out =
      at::empty({value.size(0), locations.size(1), value.size(2) * value.size(3)}, value.options());
  TensorPtr v = View(value), s = View(spatial_shapes), l = View(level_start_index),
            loc = View(locations), a = View(weights), o = View(out);
  if (!v || !s || !l || !loc || !a || !o) return at::Tensor();
  const bool ok = Execute(
      [&](uint64_t* bytes, msdaExecutor** e) {
        return msdaForwardGetWorkspaceSize(v.get(), s.get(), l.get(), loc.get(), a.get(), o.get(),
                                           bytes, e);
      },
      [](void* ws, uint64_t bytes, msdaExecutor* e) { return msdaForward(ws, bytes, e, nullptr); });
  return ok ? out : at::Tensor();
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
  TensorPtr views[3];
  for (int i = 0; i < 3; ++i) {
    if (!needs[i]) continue;
    (*grads)[i] = at::empty_like(*likes[i], at::MemoryFormat::Contiguous);
    views[i] = View((*grads)[i]);
    if (!views[i]) return false;
  }
  TensorPtr v = View(saved[0]), s = View(saved[1]), l = View(saved[2]), loc = View(saved[3]),
            a = View(saved[4]), g = View(grad_output);
  if (!v || !s || !l || !loc || !a || !g) return false;
  return Execute(
      [&](uint64_t* bytes, msdaExecutor** e) {
        return msdaBackwardGetWorkspaceSize(v.get(), s.get(), l.get(), loc.get(), a.get(), g.get(),
                                            views[0].get(), views[1].get(), views[2].get(), bytes,
                                            e);
      },
      [](void* ws, uint64_t bytes, msdaExecutor* e) {
        return msdaBackward(ws, bytes, e, nullptr);
      });
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

}  // namespace

TORCH_LIBRARY_FRAGMENT(msda, m) {
  m.def(
      "_ms_deform_attn_eager(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) -> Tensor");
}

// Above autograd: the kernel makes the node itself. The op is called only on CPU tensors with
// no mode or transform active (msda.ops' direct path).
TORCH_LIBRARY_IMPL(msda, CompositeImplicitAutograd, m) {
  m.impl("_ms_deform_attn_eager", &MsDeformAttnEager);
}
