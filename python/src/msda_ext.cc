// msda._C: a thin nanobind binding of the msda C API.
//
// Arrays cross as nb::ndarray (DLPack or the buffer protocol), so NumPy arrays and PyTorch
// tensors are read and written in place, with their strides; nothing here depends on libtorch.
// The Python side allocates every output and passes it in. Statuses become Python exceptions
// whose text is msdaGetLastErrorMessage() (it starts with the argument's name).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#if defined(__linux__)
#include <dlfcn.h>
#include <link.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "msda/msda.h"
#include "thread_workspace.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

// Inputs may be read-only (e.g. a NumPy array with writeable=False); outputs must not be.
using InArray = nb::ndarray<nb::ro>;
using OutArray = nb::ndarray<>;

struct TensorDeleter {
  void operator()(msdaTensor* t) const { msdaDestroyTensor(t); }
};
using TensorPtr = std::unique_ptr<msdaTensor, TensorDeleter>;

struct ExecutorDeleter {
  void operator()(msdaExecutor* e) const { msdaDestroyExecutor(e); }
};

[[noreturn]] void RaiseStatus(msdaStatus status, const std::string& message) {
  const std::string text = message + " [" + msdaStatusString(status) + "]";
  switch (status) {
    case MSDA_ERROR_INVALID_DTYPE:
      throw nb::type_error(text.c_str());
    case MSDA_ERROR_NULL_POINTER:
    case MSDA_ERROR_INVALID_RANK:
    case MSDA_ERROR_SHAPE_MISMATCH:
    case MSDA_ERROR_INVALID_DEVICE:
    case MSDA_ERROR_INVALID_LAYOUT:
    case MSDA_ERROR_INVALID_VALUE:
    case MSDA_ERROR_LIMIT_EXCEEDED:
      throw nb::value_error(text.c_str());
    case MSDA_ERROR_OUT_OF_MEMORY:
      // MemoryError with the message (std::bad_alloc would lose it). The GIL is held here.
      PyErr_SetString(PyExc_MemoryError, text.c_str());
      throw nb::python_error();
    default:
      throw std::runtime_error(text);  // RuntimeError: workspace, executor, internal.
  }
}

// DLPack dtype -> msda dtype; raises TypeError naming the argument for anything else.
msdaDataType MapDtype(const char* name, nb::dlpack::dtype dt) {
  using code = nb::dlpack::dtype_code;
  if (dt.lanes == 1) {
    const auto c = static_cast<code>(dt.code);
    if (c == code::Float && dt.bits == 32) return MSDA_FLOAT32;
    if (c == code::Float && dt.bits == 16) return MSDA_FLOAT16;
    if (c == code::Float && dt.bits == 64) return MSDA_FLOAT64;
    if (c == code::Bfloat && dt.bits == 16) return MSDA_BFLOAT16;
    if (c == code::Int && dt.bits == 32) return MSDA_INT32;
    if (c == code::Int && dt.bits == 64) return MSDA_INT64;
  }
  static const char* const kCodes[] = {"int",    "uint",    "float", "opaque",
                                       "bfloat", "complex", "bool"};
  const std::string code_name = dt.code < sizeof(kCodes) / sizeof(kCodes[0])
                                    ? kCodes[dt.code]
                                    : "code" + std::to_string(dt.code);
  throw nb::type_error((std::string(name) + ": dtype " + code_name + std::to_string(dt.bits) +
                        (dt.lanes != 1 ? "x" + std::to_string(dt.lanes) : std::string()) +
                        " is not supported (msda takes float32, float16, bfloat16, float64 "
                        "and, for spatial_shapes / level_start_index, int32 or int64)")
                           .c_str());
}

// Arrays arrive as plain objects and are converted here, so that a refusal names the
// argument and the rule instead of listing the signature.
std::string TypeName(nb::handle h) { return Py_TYPE(h.ptr())->tp_name; }

std::string ArrayRefusal(const char* name, nb::handle h) {
  if (nb::hasattr(h, "dtype")) {
    nb::object dtype = nb::getattr(h, "dtype");
    if (nb::hasattr(dtype, "byteorder") && nb::hasattr(dtype, "str")) {
      const std::string order = std::string(nb::str(nb::getattr(dtype, "byteorder")).c_str());
      if (order == ">" || order == "<") {  // Not native ('=' or '|') on this machine.
        return std::string(name) + ": byte order of dtype " +
               std::string(nb::str(nb::getattr(dtype, "str")).c_str()) +
               " is not this machine's; msda reads native-endian arrays (convert with "
               "a.astype(a.dtype.newbyteorder('=')))";
      }
    }
  }
  return std::string(name) +
         ": expected an array (a NumPy array, a CPU tensor, or an object with "
         "__dlpack__ or the buffer protocol) of a supported dtype, got " +
         TypeName(h);
}

InArray Input(const char* name, nb::handle h) {
  InArray a;
  if (!nb::try_cast(h, a, false)) throw nb::type_error(ArrayRefusal(name, h).c_str());
  return a;
}

// None gives an invalid array (a gradient not asked for) where none_ok.
OutArray Output(const char* name, nb::handle h, bool none_ok = false) {
  OutArray a;
  if (none_ok && h.is_none()) return a;
  if (nb::try_cast(h, a, false)) return a;
  InArray read_only;
  if (nb::try_cast(h, read_only, false)) {
    throw nb::value_error((std::string(name) +
                           ": is read-only (msda writes the result into it); pass a writeable "
                           "array")
                              .c_str());
  }
  throw nb::type_error(ArrayRefusal(name, h).c_str());
}

int ThreadCount(nb::handle h) {
  if (!PyLong_Check(h.ptr()) || PyBool_Check(h.ptr())) {
    throw nb::type_error(("num_threads: must be an int, got " + TypeName(h)).c_str());
  }
  int overflow = 0;
  const long long n = PyLong_AsLongLongAndOverflow(h.ptr(), &overflow);
  if (overflow != 0 || n < 0 || n > MSDA_MAX_NUM_THREADS) {
    throw nb::value_error(("num_threads: must be in [0, " + std::to_string(MSDA_MAX_NUM_THREADS) +
                           "] (0 = msda's default), got " + std::string(nb::str(h).c_str()))
                              .c_str());
  }
  return static_cast<int>(n);
}

// A msdaTensor view of an ndarray (shape and strides are in elements in both). Refusals by
// msdaCreateTensor name "tensor"; they are re-raised with the argument's name instead.
template <typename Array>
TensorPtr MakeTensor(const char* name, const Array& a) {
  if (a.device_type() != nb::device::cpu::value) {
    throw nb::value_error((std::string(name) +
                           ": must be a CPU array/tensor (msda's Python package has only the "
                           "CPU backend), got DLPack device type " +
                           std::to_string(a.device_type()))
                              .c_str());
  }
  const msdaDataType dtype = MapDtype(name, a.dtype());
  const uint64_t ndim = a.ndim();
  // The stride of a dim of size 0 or 1 never moves the pointer, and NumPy leaves a negative
  // one there after a reversal (a[::-1] of one element) while calling the array contiguous:
  // normalise such strides to 0 instead of refusing them.
  std::vector<int64_t> strides(a.stride_ptr(), a.stride_ptr() + ndim);
  for (uint64_t i = 0; i < ndim; ++i) {
    if (a.shape(i) <= 1) strides[i] = 0;
  }
  // The data pointer already includes DLPack's byte_offset; the msda offset stays 0.
  msdaTensor* t = msdaCreateTensor(a.shape_ptr(), ndim, dtype, strides.data(), 0, MSDA_DEVICE_CPU,
                                   0, const_cast<void*>(static_cast<const void*>(a.data())));
  if (t == nullptr) {
    const msdaStatus status = msdaGetLastErrorStatus();
    std::string message = msdaGetLastErrorMessage();
    const std::string prefix = "tensor: ";
    if (message.compare(0, prefix.size(), prefix) == 0) message = message.substr(prefix.size());
    RaiseStatus(status, std::string(name) + ": " + message);  // MemoryError when out of memory.
  }
  return TensorPtr(t);
}

// The OpenMP runtime already loaded into the process (PyTorch's, whose intra-op threads are an
// OpenMP team), found by its GNU entry points, which libgomp, LLVM's libomp and Intel's
// libiomp5 all export. Running msda's parallel sections on that team instead of msda's own
// pool keeps the two from competing for the cores: after each parallel op the team's threads
// spin for a while, and a pool thread woken next to one gets a fraction of its core (a 2-ms
// call then ran no faster on 2 threads than on 1). Linux only; elsewhere msda's pool.
struct OpenMP {
  void (*parallel)(void (*)(void*), void*, unsigned, unsigned) = nullptr;  // GOMP_parallel
  int (*thread_num)() = nullptr;                                           // omp_get_thread_num
  std::string path;
};

#if defined(__linux__)
// The loaded objects that may lead to PyTorch's OpenMP runtime: libtorch_cpu first (a lookup
// through its handle finds the runtime it binds to, wherever the build put it: torch/lib,
// torch.libs, a conda prefix), then OpenMP runtimes by name, PyTorch's own (under torch)
// before others.
int CollectCandidates(dl_phdr_info* info, size_t, void* data) {
  const char* name = info->dlpi_name;
  if (name == nullptr) return 0;
  int rank = -1;
  if (std::strstr(name, "libtorch_cpu") != nullptr) {
    rank = 0;
  } else if (std::strstr(name, "libgomp") != nullptr || std::strstr(name, "libiomp") != nullptr ||
             std::strstr(name, "libomp") != nullptr) {
    rank = std::strstr(name, "torch") != nullptr ? 1 : 2;
  }
  if (rank >= 0) {
    static_cast<std::vector<std::pair<int, std::string>>*>(data)->emplace_back(rank, name);
  }
  return 0;
}
#endif

OpenMP FindOpenMP() {
  OpenMP omp;
#if defined(__linux__)
  std::vector<std::pair<int, std::string>> candidates;
  dl_iterate_phdr(&CollectCandidates, &candidates);
  std::stable_sort(candidates.begin(), candidates.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  for (const auto& candidate : candidates) {
    // RTLD_NOLOAD: never loads anything. dlsym through a handle searches the object and
    // its dependencies, so libtorch_cpu's handle gives the runtime it was linked with.
    void* handle = dlopen(candidate.second.c_str(), RTLD_LAZY | RTLD_NOLOAD);
    if (handle == nullptr) continue;
    auto parallel = reinterpret_cast<decltype(omp.parallel)>(dlsym(handle, "GOMP_parallel"));
    auto thread_num =
        reinterpret_cast<decltype(omp.thread_num)>(dlsym(handle, "omp_get_thread_num"));
    Dl_info info;
    if (parallel != nullptr && thread_num != nullptr &&
        dladdr(reinterpret_cast<void*>(parallel), &info) != 0 && info.dli_fname != nullptr) {
      omp.parallel = parallel;
      omp.thread_num = thread_num;
      omp.path = info.dli_fname;
      break;  // The handle stays open: the runtime is in use for the process's life.
    }
    dlclose(handle);
  }
#endif
  return omp;
}

// Looked up at the first call that asks for it, and again until one is found (a call made
// before torch was imported finds none).
const OpenMP& LoadedOpenMP() {
  static std::mutex mutex;
  static OpenMP found;
  std::lock_guard<std::mutex> lock(mutex);
  if (found.parallel == nullptr) found = FindOpenMP();  // Never changed once found.
  return found;
}

// Sections run on the OpenMP team so far (for the tests: the path was really taken).
std::atomic<int64_t> openmp_sections{0};

struct OpenMPSection {
  msdaParallelWork work;
  void* context;
  int (*thread_num)();
};

// msdaParallelRunner on the OpenMP team: each team member (the caller is member 0) runs
// work with its member number; GOMP_parallel returns after the team's closing barrier.
void OpenMPRunner(msdaParallelWork work, void* context, int32_t num_threads, void* user) {
  const OpenMP& omp = *static_cast<const OpenMP*>(user);
  openmp_sections.fetch_add(1, std::memory_order_relaxed);
  OpenMPSection section{work, context, omp.thread_num};
  omp.parallel(
      [](void* data) {
        const auto* s = static_cast<const OpenMPSection*>(data);
        s->work(s->context, s->thread_num());
      },
      &section, static_cast<unsigned>(num_threads), 0);
}

// Sets the calling thread's runner for the scope of one call.
class RunnerScope {
 public:
  explicit RunnerScope(bool openmp) {
    if (!openmp) return;  // Not looked up before a call asks: torch may be imported later.
    const OpenMP& omp = LoadedOpenMP();
    active_ = omp.parallel != nullptr;
    if (active_) msdaSetParallelRunner(&OpenMPRunner, const_cast<OpenMP*>(&omp));
  }
  ~RunnerScope() {
    if (active_) msdaSetParallelRunner(nullptr, nullptr);
  }
  RunnerScope(const RunnerScope&) = delete;
  RunnerScope& operator=(const RunnerScope&) = delete;

 private:
  bool active_ = false;
};

// The two stages of one call with the GIL released: plan (GetWorkspaceSize), take the
// thread's workspace, run. The run call releases the executor (it is not repeatable),
// whatever the outcome. Raises the status as a Python exception.
template <typename PlanFn>
void PlanAndRun(PlanFn plan, msdaStatus (*run)(void*, uint64_t, msdaExecutor*, msdaStream),
                bool openmp) {
  msdaStatus status;
  std::string error;
  {
    nb::gil_scoped_release release;
    const RunnerScope runner(openmp);
    uint64_t bytes = 0;
    msdaExecutor* raw = nullptr;
    status = plan(&bytes, &raw);
    if (status == MSDA_SUCCESS) {
      std::unique_ptr<msdaExecutor, ExecutorDeleter> executor(raw);
      void* workspace = msda_python::ThreadWorkspace(bytes);
      if (bytes > 0 && workspace == nullptr) {
        status = MSDA_ERROR_OUT_OF_MEMORY;
        error = "workspace: could not allocate " + std::to_string(bytes) + " bytes";
      }
      if (status == MSDA_SUCCESS) status = run(workspace, bytes, executor.release(), nullptr);
    }
    if (status != MSDA_SUCCESS && error.empty()) error = msdaGetLastErrorMessage();
  }
  if (status != MSDA_SUCCESS) RaiseStatus(status, error);
}

void SetThreads(nb::handle num_threads) {
  const int n = ThreadCount(num_threads);
  const msdaStatus s = msdaSetNumThreads(n);
  if (s != MSDA_SUCCESS) RaiseStatus(s, std::string("num_threads: ") + msdaGetLastErrorMessage());
}

using PointCounts = std::optional<std::vector<int64_t>>;

// The variant options of a call (msdaOptions); num_points_list must outlive the call.
msdaOptions MakeOptions(const PointCounts& num_points_list, bool discrete) {
  msdaOptions o;
  msdaOptionsInit(&o);
  o.samplingMethod = discrete ? MSDA_SAMPLING_DISCRETE : MSDA_SAMPLING_BILINEAR;
  if (num_points_list.has_value()) {
    // A non-NULL pointer even for an empty list, which the library then refuses.
    static const int64_t kNone = 0;
    o.numPointsList = num_points_list->empty() ? &kNone : num_points_list->data();
    o.numLevels = num_points_list->size();
  }
  return o;
}

TensorPtr InputTensor(const char* name, nb::handle h) { return MakeTensor(name, Input(name, h)); }

// None gives no tensor (a gradient not asked for) where none_ok.
TensorPtr OutputTensor(const char* name, nb::handle h, bool none_ok = false) {
  const OutArray a = Output(name, h, none_ok);
  return a.is_valid() ? MakeTensor(name, a) : nullptr;
}

// The five tensors both directions read, each refusal naming its argument.
struct Inputs {
  Inputs(nb::handle value, nb::handle spatial_shapes, nb::handle level_start_index,
         nb::handle sampling_locations, nb::handle attention_weights)
      : v(InputTensor("value", value)),
        ss(InputTensor("spatial_shapes", spatial_shapes)),
        lsi(InputTensor("level_start_index", level_start_index)),
        loc(InputTensor("sampling_locations", sampling_locations)),
        attn(InputTensor("attention_weights", attention_weights)) {}
  TensorPtr v, ss, lsi, loc, attn;
};

void Forward(nb::handle value, nb::handle spatial_shapes, nb::handle level_start_index,
             nb::handle sampling_locations, nb::handle attention_weights, nb::handle output,
             nb::handle num_threads, const PointCounts& num_points_list, bool discrete,
             bool openmp) {
  const Inputs in(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const TensorPtr out = OutputTensor("output", output);
  SetThreads(num_threads);
  const msdaOptions options = MakeOptions(num_points_list, discrete);

  PlanAndRun(
      [&](uint64_t* bytes, msdaExecutor** executor) {
        return msdaForwardGetWorkspaceSizeEx(in.v.get(), in.ss.get(), in.lsi.get(), in.loc.get(),
                                             in.attn.get(), out.get(), &options, bytes, executor);
      },
      msdaForward, openmp);
}

void Backward(nb::handle value, nb::handle spatial_shapes, nb::handle level_start_index,
              nb::handle sampling_locations, nb::handle attention_weights, nb::handle grad_output,
              nb::handle grad_value, nb::handle grad_sampling_locations,
              nb::handle grad_attention_weights, nb::handle num_threads,
              const PointCounts& num_points_list, bool discrete, bool openmp) {
  const Inputs in(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const TensorPtr g = InputTensor("grad_output", grad_output);
  // None skips that gradient.
  const TensorPtr gv = OutputTensor("grad_value", grad_value, true);
  const TensorPtr gl = OutputTensor("grad_sampling_locations", grad_sampling_locations, true);
  const TensorPtr ga = OutputTensor("grad_attention_weights", grad_attention_weights, true);
  SetThreads(num_threads);
  const msdaOptions options = MakeOptions(num_points_list, discrete);

  PlanAndRun(
      [&](uint64_t* bytes, msdaExecutor** executor) {
        return msdaBackwardGetWorkspaceSizeEx(in.v.get(), in.ss.get(), in.lsi.get(), in.loc.get(),
                                              in.attn.get(), g.get(), gv.get(), gl.get(), ga.get(),
                                              &options, bytes, executor);
      },
      msdaBackward, openmp);
}

}  // namespace

NB_MODULE(_C, m) {
  m.doc() = "Thin binding of the msda C API (MultiScale Deformable Attention, CPU).";

  m.attr("MAX_NUM_THREADS") = MSDA_MAX_NUM_THREADS;

  m.def("forward", &Forward, "value"_a, "spatial_shapes"_a, "level_start_index"_a,
        "sampling_locations"_a, "attention_weights"_a, "output"_a, "num_threads"_a = 0,
        "num_points_list"_a = nb::none(), "discrete"_a = false, "openmp"_a = false,
        "Writes the forward result into `output` ([B, Q, H*D], value's dtype). num_threads = 0 "
        "uses msda's default (MSDA_NUM_THREADS, else every hardware thread). num_points_list "
        "(per-level point counts, flat point layout) and discrete are the msdaOptions. openmp: "
        "run on the threads of the OpenMP runtime loaded in the process (PyTorch's) instead of "
        "msda's pool, where one is found (openmp_runtime()).");

  m.def("backward", &Backward, "value"_a, "spatial_shapes"_a, "level_start_index"_a,
        "sampling_locations"_a, "attention_weights"_a, "grad_output"_a, "grad_value"_a.none(),
        "grad_sampling_locations"_a.none(), "grad_attention_weights"_a.none(), "num_threads"_a = 0,
        "num_points_list"_a = nb::none(), "discrete"_a = false, "openmp"_a = false,
        "Writes the requested gradients (None skips one) in place; they are overwritten, not "
        "accumulated. openmp as for forward.");

  m.def(
      "openmp_runtime",
      []() -> std::optional<std::string> {
        const OpenMP& omp = LoadedOpenMP();
        if (omp.parallel == nullptr) return std::nullopt;
        return omp.path;
      },
      "The path of the OpenMP runtime that openmp=True calls run on (PyTorch's), or None if no "
      "runtime with GOMP_parallel is loaded (then msda's own pool runs them).");
  m.def(
      "_openmp_sections", [] { return openmp_sections.load(std::memory_order_relaxed); },
      "Parallel sections run on the OpenMP team so far (for tests).");

  m.def("version", &msdaGetVersion,
        "The msda library version, encoded as major*10000 + minor*100 + patch.");
  m.def(
      "default_num_threads",
      [] {
        msdaSetNumThreads(0);
        return msdaGetNumThreads();
      },
      "The thread count msda uses when num_threads is 0.");
}
