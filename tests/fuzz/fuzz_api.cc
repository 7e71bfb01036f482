// libFuzzer harness over the whole C API, built with ASan and UBSan (scripts/fuzz.sh).
//
// The input bytes choose a problem (ranks, dims, strides, offsets, dtypes, devices, NULLs,
// level tables, aliasing between outputs and inputs, workspace sizes) and the contents of every
// tensor (any bit pattern: NaN, infinities, denormals, huge and negative numbers). Every buffer
// is allocated to exactly the bytes its view can reach, so any read or write past it is an ASan
// finding. The harness itself checks the API's promises:
//   - every call returns a known status, and a refusal comes with a message;
//   - a refused call writes nothing to any output;
//   - a run never fails once planning succeeded and the workspace is large enough.
#include <fuzzer/FuzzedDataProvider.h>
#include <msda/msda.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace {

constexpr int64_t kMaxBufferBytes = 1 << 20;

void Require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_api: broken promise: %s (last message: %s)\n", what,
                 msdaGetLastErrorMessage());
    std::abort();
  }
}

// MSDA_FUZZ_TRACE=1 prints what each input reached (plans made, runs done): a harness whose
// inputs are all refused early would test nothing, and this is how to see it.
void Trace(const char* what, int kind, const char* text) {
  static const bool enabled = std::getenv("MSDA_FUZZ_TRACE") != nullptr;
  if (enabled) std::fprintf(stderr, "%s %d %s\n", what, kind, text);
}

void CheckStatus(msdaStatus s) {
  Require(s >= MSDA_SUCCESS && s <= MSDA_ERROR_INTERNAL, "status out of range");
  Require(s != MSDA_ERROR_INTERNAL, "internal error");
  if (s != MSDA_SUCCESS) {
    Require(std::strlen(msdaGetLastErrorMessage()) > 0, "refusal without a message");
    Require(std::strcmp(msdaStatusString(s), "") != 0, "status without a name");
  }
}

// Bytes per element for the storage; 4 for the bad dtypes the fuzzer also makes (the library
// says 0 for them, and refuses them).
int64_t ElementBytes(int dtype) {
  const int64_t bytes = msdaDataTypeSize(static_cast<msdaDataType>(dtype));
  return bytes > 0 ? bytes : 4;
}

// One tensor: its view and the buffer behind it.
struct FuzzTensor {
  std::vector<int64_t> dims, strides;
  int64_t offset = 0;
  int dtype = MSDA_FLOAT32;
  int device = MSDA_DEVICE_CPU;
  std::vector<unsigned char> storage;  // Exactly the reachable bytes (or aliasing another).
  unsigned char* data = nullptr;
  msdaTensor* view = nullptr;
  ~FuzzTensor() { msdaDestroyTensor(view); }
};

// The element span [0, end) a view can reach, or -1 when it is too large to allocate.
int64_t ReachableElements(const std::vector<int64_t>& dims, const std::vector<int64_t>& strides,
                          int64_t offset) {
  int64_t last = offset;
  for (size_t i = 0; i < dims.size(); ++i) {
    if (dims[i] == 0) return 0;
    if (dims[i] > 1 && strides[i] > kMaxBufferBytes) return -1;
    int64_t step = 0;  // Huge dims (a fuzzed shape) overflow int64 here: too large as well.
    if (__builtin_mul_overflow(dims[i] - 1, strides[i], &step) ||
        __builtin_add_overflow(last, step, &last) || last > kMaxBufferBytes) {
      return -1;
    }
  }
  return last + 1;
}

// Builds a tensor whose intended shape is `want`, then lets the fuzzer break it.
void MakeTensor(FuzzedDataProvider& in, std::vector<int64_t> want, int dtype, FuzzTensor* t) {
  t->dtype = dtype;
  const uint8_t mutation = in.ConsumeIntegral<uint8_t>();
  if (mutation == 1) t->dtype = in.ConsumeIntegralInRange<int>(-1, 7);  // Any dtype, bad ones too.
  if (mutation == 2 && !want.empty()) want.pop_back();                  // Wrong rank.
  if (mutation == 3) want.push_back(in.ConsumeIntegralInRange<int64_t>(0, 3));
  if (mutation == 4 && !want.empty()) {  // Wrong dim.
    want[in.ConsumeIntegralInRange<size_t>(0, want.size() - 1)] =
        in.ConsumeIntegralInRange<int64_t>(0, 5);
  }
  if (mutation == 5) t->device = MSDA_DEVICE_CUDA;
  if (mutation == 7 && !want.empty()) want[0] = -in.ConsumeIntegralInRange<int64_t>(1, 3);
  for (int64_t d : want) {
    if (d < 0) {  // msdaCreateTensor must refuse a negative dim with a message.
      t->dims = want;
      t->view = msdaCreateTensor(want.data(), want.size(), static_cast<msdaDataType>(dtype),
                                 nullptr, 0, MSDA_DEVICE_CPU, 0, nullptr);
      Require(t->view == nullptr && std::strlen(msdaGetLastErrorMessage()) > 0, "negative dim");
      return;
    }
  }
  t->dims = want;
  const int64_t bytes = ElementBytes(t->dtype);
  // Strides: contiguous, or each one any of 0, contiguous, padded, transposed-ish or huge.
  // Bytes past the end of the input read as zeros, so zero always means "valid" here: short
  // inputs make well-formed calls that reach the kernels.
  t->strides.assign(want.size(), 0);
  int64_t running = 1;
  const bool odd_strides = in.ConsumeIntegral<uint8_t>() >= 192;
  for (size_t i = want.size(); i-- > 0;) {
    t->strides[i] = running;
    if (odd_strides) {
      switch (in.ConsumeIntegralInRange<int>(0, 4)) {
        case 0:
          t->strides[i] = 0;
          break;
        case 1:
          t->strides[i] = running + in.ConsumeIntegralInRange<int64_t>(0, 7);
          break;
        case 2:
          t->strides[i] = in.ConsumeIntegralInRange<int64_t>(1, 64);
          break;
        case 3:
          t->strides[i] = int64_t{1} << in.ConsumeIntegralInRange<int>(20, 62);
          break;
        default:
          break;
      }
    }
    if (__builtin_mul_overflow(t->strides[i], std::max<int64_t>(want[i], 1), &running) ||
        running > kMaxBufferBytes) {
      running = kMaxBufferBytes;
    }
  }
  t->offset = in.ConsumeBool() ? in.ConsumeIntegralInRange<int64_t>(0, 9) : 0;
  const int64_t elements = ReachableElements(t->dims, t->strides, t->offset);
  if (elements < 0) {
    // Too large to back with memory: keep the shape but make it empty, so that the library
    // must not touch it (or refuse it).
    if (!t->dims.empty()) t->dims[0] = 0;
  }
  const int64_t n = std::max<int64_t>(ReachableElements(t->dims, t->strides, t->offset), 0);
  t->storage.resize(static_cast<size_t>(n * bytes));
  // Contents: raw fuzzer bytes, so every bit pattern (NaN, Inf, denormals, 1e30) shows up.
  for (auto& byte : t->storage) byte = in.ConsumeIntegral<uint8_t>();
  t->data = t->storage.empty() ? (in.ConsumeBool() ? nullptr : t->storage.data())
                               : (mutation == 6 ? nullptr : t->storage.data());
  const bool null_strides = !odd_strides && in.ConsumeBool();
  t->view = msdaCreateTensor(t->dims.data(), t->dims.size(), static_cast<msdaDataType>(t->dtype),
                             null_strides ? nullptr : t->strides.data(), t->offset,
                             static_cast<msdaDeviceType>(t->device), 0, t->data);
  if (t->view == nullptr) CheckStatus(MSDA_ERROR_INVALID_VALUE);  // A message must be set.
}

// Index tensors are small and usually right: the level table the fuzzer picked, or a broken one.
void MakeIndex(FuzzedDataProvider& in, const std::vector<int64_t>& values,
               std::vector<int64_t> dims, FuzzTensor* t) {
  t->dtype = in.ConsumeBool() ? MSDA_INT32 : MSDA_INT64;
  if (in.ConsumeIntegral<uint8_t>() == 255) t->dtype = MSDA_FLOAT32;
  t->dims = dims;
  t->strides.assign(dims.size(), 1);
  for (size_t i = dims.size(); i-- > 1;) t->strides[i - 1] = t->strides[i] * dims[i];
  const size_t n = values.size();
  t->storage.resize(n * ElementBytes(t->dtype));
  for (size_t i = 0; i < n; ++i) {
    int64_t v = values[i];
    if (in.ConsumeIntegral<uint8_t>() == 255) v = in.ConsumeIntegral<int64_t>();
    if (t->dtype == MSDA_INT64) {
      std::memcpy(&t->storage[i * 8], &v, 8);
    } else {
      const int32_t w = static_cast<int32_t>(v);
      std::memcpy(&t->storage[i * 4], &w, 4);
    }
  }
  t->data = t->storage.data();
  t->view = msdaCreateTensor(t->dims.data(), t->dims.size(), static_cast<msdaDataType>(t->dtype),
                             nullptr, 0, MSDA_DEVICE_CPU, 0, t->data);
}

// Runs a planned executor with a workspace that is right, too small or NULL.
void Run(FuzzedDataProvider& in, bool backward, uint64_t size, msdaExecutor* executor) {
  const int choice = in.ConsumeIntegralInRange<int>(0, 5);
  uint64_t given = size;
  if (choice == 4 && size > 0) given = size - 1;
  // Past 1 GiB (huge counts with no query) only the refusals are tried.
  if (choice == 5 || given > (uint64_t{1} << 30)) given = 0;
  std::unique_ptr<unsigned char[]> workspace(given ? new unsigned char[given] : nullptr);
  if (given) std::memset(workspace.get(), in.ConsumeIntegral<uint8_t>(), given);
  if (in.ConsumeBool()) Require(msdaSetExecutorRepeatable(executor) == MSDA_SUCCESS, "repeatable");
  const msdaStatus s = backward ? msdaBackward(workspace.get(), given, executor, nullptr)
                                : msdaForward(workspace.get(), given, executor, nullptr);
  CheckStatus(s);
  if (given >= size) Require(s == MSDA_SUCCESS, "a planned run with enough workspace failed");
  Trace("RUN", backward, msdaStatusString(s));
  // A repeatable executor is still live and is freed here; a released one is refused by its
  // (now unregistered) address, without being touched.
  const msdaStatus d = msdaDestroyExecutor(executor);
  Require(d == MSDA_SUCCESS || d == MSDA_ERROR_INVALID_EXECUTOR, "destroy");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  const int call = in.ConsumeIntegralInRange<int>(0, 2);  // Forward, backward, or NULL handles.
  msdaSetNumThreads(in.ConsumeIntegralInRange<int32_t>(0, 3));

  const int64_t B = in.ConsumeIntegralInRange<int64_t>(0, 2);
  const int64_t Q = in.ConsumeIntegralInRange<int64_t>(0, 9);
  const int64_t H = in.ConsumeIntegralInRange<int64_t>(1, 3);
  const int64_t D = in.ConsumeIntegralInRange<int64_t>(1, 20);
  const int64_t L = in.ConsumeIntegralInRange<int64_t>(1, 3);
  // The byte that picks P in 1..3; with batch 0 (every tensor empty), 255 picks any positive
  // count instead, so that the planner's size products can pass int64.
  const uint8_t points_byte = in.ConsumeIntegral<uint8_t>();
  const int64_t P = B == 0 && points_byte == 255
                        ? in.ConsumeIntegralInRange<int64_t>(1, INT64_MAX)
                        : 1 + points_byte % 3;
  std::vector<int64_t> shapes, starts;
  int64_t K = 0;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t h = in.ConsumeIntegralInRange<int64_t>(1, 6);
    const int64_t w = in.ConsumeIntegralInRange<int64_t>(1, 6);
    shapes.push_back(h);
    shapes.push_back(w);
    starts.push_back(K);
    K += h * w;
  }
  if (in.ConsumeIntegral<uint8_t>() == 255) K += in.ConsumeIntegralInRange<int64_t>(-2, 2);
  K = std::max<int64_t>(K, 0);

  const int dtypes[] = {MSDA_FLOAT32, MSDA_FLOAT16, MSDA_BFLOAT16, MSDA_FLOAT64};
  const int dtype = dtypes[in.ConsumeIntegralInRange<int>(0, 3)];
  const int loc_dtype = in.ConsumeBool() ? MSDA_FLOAT32 : dtype;

  FuzzTensor value, spatial, level_start, loc, attn, out, grad_out, grad_value, grad_loc, grad_attn;
  MakeTensor(in, {B, K, H, D}, dtype, &value);
  MakeIndex(in, shapes, {L, 2}, &spatial);
  MakeIndex(in, starts, {L}, &level_start);
  MakeTensor(in, {B, Q, H, L, P, 2}, loc_dtype, &loc);
  MakeTensor(in, {B, Q, H, L, P}, dtype, &attn);
  MakeTensor(in, {B, Q, H * D}, dtype, &out);
  MakeTensor(in, {B, Q, H * D}, dtype, &grad_out);
  MakeTensor(in, {B, K, H, D}, dtype, &grad_value);
  MakeTensor(in, {B, Q, H, L, P, 2}, loc_dtype, &grad_loc);
  MakeTensor(in, {B, Q, H, L, P}, dtype, &grad_attn);

  // Sometimes an output aliases an input: it must be refused, never written.
  FuzzTensor* outputs[] = {&out, &grad_value, &grad_loc, &grad_attn};
  if (in.ConsumeIntegral<uint8_t>() >= 240) {
    FuzzTensor* victim = outputs[in.ConsumeIntegralInRange<int>(0, 3)];
    FuzzTensor* source = in.ConsumeBool() ? &value : &attn;
    if (victim->view != nullptr && !source->storage.empty()) {
      msdaDestroyTensor(victim->view);
      victim->view = msdaCreateTensor(
          victim->dims.data(), victim->dims.size(), static_cast<msdaDataType>(victim->dtype),
          victim->strides.data(), 0, MSDA_DEVICE_CPU, 0, source->storage.data());
      victim->storage.clear();  // Its bytes now belong to the source: nothing to compare.
    }
  }
  std::vector<std::vector<unsigned char>> before;
  for (FuzzTensor* t : outputs) before.push_back(t->storage);

  auto untouched = [&]() {
    for (size_t i = 0; i < 4; ++i) {
      Require(outputs[i]->storage == before[i], "a refused call wrote to an output");
    }
  };

  uint64_t ws = 12345;
  msdaExecutor* executor = reinterpret_cast<msdaExecutor*>(0x1);
  if (call == 0) {
    const msdaStatus s = msdaForwardGetWorkspaceSize(value.view, spatial.view, level_start.view,
                                                     loc.view, attn.view, out.view, &ws, &executor);
    CheckStatus(s);
    Trace("PLAN", call, msdaGetLastErrorMessage());
    if (s != MSDA_SUCCESS) {
      Require(executor == nullptr && ws == 0, "a refusal left an executor or a size");
      untouched();
      return 0;
    }
    const bool wrong_direction = in.ConsumeIntegral<uint8_t>() == 255;
    if (wrong_direction) {
      Require(msdaBackward(nullptr, 0, executor, nullptr) == MSDA_ERROR_INVALID_EXECUTOR,
              "a forward executor ran backward");
      untouched();
    }
    Run(in, false, ws, executor);
  } else if (call == 1) {
    msdaTensor* gv = in.ConsumeBool() ? grad_value.view : nullptr;
    msdaTensor* gl = in.ConsumeBool() ? grad_loc.view : nullptr;
    msdaTensor* ga = in.ConsumeBool() ? grad_attn.view : nullptr;
    const msdaStatus s =
        msdaBackwardGetWorkspaceSize(value.view, spatial.view, level_start.view, loc.view,
                                     attn.view, grad_out.view, gv, gl, ga, &ws, &executor);
    CheckStatus(s);
    Trace("PLAN", call, msdaGetLastErrorMessage());
    if (s != MSDA_SUCCESS) {
      Require(executor == nullptr && ws == 0, "a refusal left an executor or a size");
      untouched();
      return 0;
    }
    Run(in, true, ws, executor);
  } else {
    // Calls with NULL or bogus handles.
    CheckStatus(msdaForward(nullptr, 0, nullptr, nullptr));
    CheckStatus(msdaBackward(nullptr, 0, nullptr, nullptr));
    CheckStatus(msdaSetExecutorRepeatable(nullptr));
    CheckStatus(msdaDestroyExecutor(nullptr));
    CheckStatus(msdaForwardGetWorkspaceSize(value.view, spatial.view, level_start.view, loc.view,
                                            attn.view, out.view, nullptr, nullptr));
    char text[64];
    Require(msdaExecutorDescribe(nullptr, text, sizeof text) == -1, "described a NULL executor");
    untouched();
  }
  return 0;
}
