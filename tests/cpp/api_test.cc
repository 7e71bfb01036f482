// The rest of the C API: version, status names, executor lifecycle (repeatable executors,
// wrong-direction and NULL executors, workspace checks at run time), plan descriptions and
// the thread-count settings.
#include <gtest/gtest.h>

#ifdef __linux__
#include <dirent.h>
#endif

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "msda/msda.h"
#include "reference.h"
#include "tester.h"
#include "testing.h"

// From c_api_test.c.
extern "C" {
const char* msda_test_status_string_raw(int status);
int64_t msda_test_dtype_size_raw(int dtype);
int msda_test_c_smoke(void);
}

namespace msda_test {
namespace {

constexpr unsigned char kSentinel = 0xA5;

TEST(Api, Version) {
  EXPECT_EQ(msdaGetVersion(), MSDA_VERSION);
  EXPECT_EQ(MSDA_VERSION,
            MSDA_VERSION_ENCODE(MSDA_VERSION_MAJOR, MSDA_VERSION_MINOR, MSDA_VERSION_PATCH));
  EXPECT_EQ(MSDA_VERSION_ENCODE(1, 2, 3), 10203);
}

TEST(Api, DataTypeSizes) {
  EXPECT_EQ(msdaDataTypeSize(MSDA_FLOAT32), 4);
  EXPECT_EQ(msdaDataTypeSize(MSDA_FLOAT16), 2);
  EXPECT_EQ(msdaDataTypeSize(MSDA_BFLOAT16), 2);
  EXPECT_EQ(msdaDataTypeSize(MSDA_FLOAT64), 8);
  EXPECT_EQ(msdaDataTypeSize(MSDA_INT32), 4);
  EXPECT_EQ(msdaDataTypeSize(MSDA_INT64), 8);
  // Values that are no enumerator (made in C, where that is well defined).
  for (int raw : {-1, 6, 1 << 20}) EXPECT_EQ(msda_test_dtype_size_raw(raw), 0) << raw;
}

TEST(Api, CallableFromC) { EXPECT_EQ(msda_test_c_smoke(), 0); }

TEST(Api, StatusStrings) {
  const struct {
    msdaStatus status;
    const char* name;
  } names[] = {
      {MSDA_SUCCESS, "MSDA_SUCCESS"},
      {MSDA_ERROR_NULL_POINTER, "MSDA_ERROR_NULL_POINTER"},
      {MSDA_ERROR_INVALID_RANK, "MSDA_ERROR_INVALID_RANK"},
      {MSDA_ERROR_SHAPE_MISMATCH, "MSDA_ERROR_SHAPE_MISMATCH"},
      {MSDA_ERROR_INVALID_DTYPE, "MSDA_ERROR_INVALID_DTYPE"},
      {MSDA_ERROR_INVALID_DEVICE, "MSDA_ERROR_INVALID_DEVICE"},
      {MSDA_ERROR_INVALID_LAYOUT, "MSDA_ERROR_INVALID_LAYOUT"},
      {MSDA_ERROR_INVALID_VALUE, "MSDA_ERROR_INVALID_VALUE"},
      {MSDA_ERROR_LIMIT_EXCEEDED, "MSDA_ERROR_LIMIT_EXCEEDED"},
      {MSDA_ERROR_WORKSPACE_TOO_SMALL, "MSDA_ERROR_WORKSPACE_TOO_SMALL"},
      {MSDA_ERROR_INVALID_EXECUTOR, "MSDA_ERROR_INVALID_EXECUTOR"},
      {MSDA_ERROR_OUT_OF_MEMORY, "MSDA_ERROR_OUT_OF_MEMORY"},
      {MSDA_ERROR_INTERNAL, "MSDA_ERROR_INTERNAL"},
  };
  for (const auto& n : names) EXPECT_STREQ(msdaStatusString(n.status), n.name);
  // A status that is no enumerator (made in C, where that is well defined).
  const char* unknown = msda_test_status_string_raw(99);
  ASSERT_NE(unknown, nullptr);
  EXPECT_GT(std::strlen(unknown), 0u);
}

// ---------------------------------------------------------------------------------------------
// Hand-driven calls on the tester's tensors.

MsdaTester SmallProblem() {
  MsdaTester t;
  t.Batch(2).Queries(6).Heads(2).Dims(4).Points(3).LevelShapes({{4, 5}, {2, 3}});
  return t;
}

// The inputs the tensors hold now.
Inputs Current(const MsdaTester::InputTensors& t, const HostTensor* grad_out = nullptr) {
  Inputs in;
  in.value = t.value.GetAll();
  in.loc = t.loc.GetAll();
  in.attn = t.attn.GetAll();
  if (grad_out != nullptr) in.grad_out = grad_out->GetAll();
  return in;
}

struct ForwardCall {
  explicit ForwardCall(MsdaTester tester)
      : t(std::move(tester)),
        inputs(t.MakeInputTensors(t.MakeInputs())),
        out(t.problem().out_dims(), t.value_dtype(), Layout(), kSentinel) {}

  msdaStatus Plan(uint64_t* ws, msdaExecutor** ex) {
    return msdaForwardGetWorkspaceSize(inputs->value.get(), inputs->shapes.get(),
                                       inputs->starts.get(), inputs->loc.get(), inputs->attn.get(),
                                       out.get(), ws, ex);
  }
  void ExpectCorrect() {
    const ForwardResult ref =
        ReferenceForward(t.problem(), Current(*inputs), ArithmeticRoundoff(t.value_dtype()));
    ExpectClose("output", out.GetAll(), ref.out, ref.bound, t.value_dtype(),
                t.problem().out_dims());
  }
  bool Untouched() const { return out.AllBytesAre(kSentinel); }

  MsdaTester t;
  std::unique_ptr<MsdaTester::InputTensors> inputs;
  HostTensor out;
};

struct BackwardCall {
  explicit BackwardCall(MsdaTester tester)
      : t(std::move(tester)),
        in(t.MakeInputs()),
        inputs(t.MakeInputTensors(in)),
        grad_out(t.problem().out_dims(), t.value_dtype()),
        grad_value(t.problem().value_dims(), t.value_dtype(), Layout(), kSentinel),
        grad_loc(t.problem().loc_dims(), t.loc_dtype(), Layout(), kSentinel),
        grad_attn(t.problem().attn_dims(), t.value_dtype(), Layout(), kSentinel) {
    grad_out.SetAll(in.grad_out);
  }

  msdaStatus Plan(uint64_t* ws, msdaExecutor** ex) {
    return msdaBackwardGetWorkspaceSize(inputs->value.get(), inputs->shapes.get(),
                                        inputs->starts.get(), inputs->loc.get(), inputs->attn.get(),
                                        grad_out.get(), grad_value.get(), grad_loc.get(),
                                        grad_attn.get(), ws, ex);
  }
  void ExpectCorrect() {
    const Problem& p = t.problem();
    const BackwardResult ref =
        ReferenceBackward(p, Current(*inputs, &grad_out), ArithmeticRoundoff(t.value_dtype()));
    ExpectClose("grad_value", grad_value.GetAll(), ref.grad_value, ref.bound_value, t.value_dtype(),
                p.value_dims());
    ExpectClose("grad_sampling_locations", grad_loc.GetAll(), ref.grad_loc, ref.bound_loc,
                t.loc_dtype(), p.loc_dims());
    ExpectClose("grad_attention_weights", grad_attn.GetAll(), ref.grad_attn, ref.bound_attn,
                t.value_dtype(), p.attn_dims());
  }
  bool Untouched() const {
    return grad_value.AllBytesAre(kSentinel) && grad_loc.AllBytesAre(kSentinel) &&
           grad_attn.AllBytesAre(kSentinel);
  }

  MsdaTester t;
  Inputs in;
  std::unique_ptr<MsdaTester::InputTensors> inputs;
  HostTensor grad_out, grad_value, grad_loc, grad_attn;
};

// New random contents for value, locations, weights (and grad_output), in place.
void ChangeInputs(MsdaTester::InputTensors* t, HostTensor* grad_out, uint64_t seed,
                  const MsdaTester& tester) {
  const Inputs fresh = MsdaTester(tester).Seed(seed).MakeInputs();
  t->value.SetAll(fresh.value);
  t->loc.SetAll(fresh.loc);
  t->attn.SetAll(fresh.attn);
  if (grad_out != nullptr) grad_out->SetAll(fresh.grad_out);
}

TEST(Executor, RepeatableForwardSeesNewInputs) {
  ForwardCall call(SmallProblem());
  uint64_t ws = 0;
  msdaExecutor* ex = nullptr;
  ASSERT_EQ(call.Plan(&ws, &ex), MSDA_SUCCESS) << msdaGetLastErrorMessage();
  ASSERT_EQ(msdaSetExecutorRepeatable(ex), MSDA_SUCCESS);
  Workspace w(ws);
  ASSERT_EQ(msdaForward(w.data(), ws, ex, nullptr), MSDA_SUCCESS) << msdaGetLastErrorMessage();
  call.ExpectCorrect();
  const std::vector<double> first = call.out.GetAll();

  // New contents in the same memory: the second run reads them.
  ChangeInputs(call.inputs.get(), nullptr, 99, call.t);
  call.out.Fill(kSentinel);
  w.Scramble();
  ASSERT_EQ(msdaForward(w.data(), ws, ex, nullptr), MSDA_SUCCESS) << msdaGetLastErrorMessage();
  call.ExpectCorrect();
  EXPECT_NE(call.out.GetAll(), first);

  // A refused run does not release a repeatable executor and writes nothing.
  call.out.Fill(kSentinel);
  EXPECT_EQ(msdaForward(w.data(), ws - 1, ex, nullptr), MSDA_ERROR_WORKSPACE_TOO_SMALL);
  EXPECT_TRUE(call.Untouched());
  w.Scramble();
  ASSERT_EQ(msdaForward(w.data(), ws, ex, nullptr), MSDA_SUCCESS) << msdaGetLastErrorMessage();
  call.ExpectCorrect();
  EXPECT_EQ(msdaDestroyExecutor(ex), MSDA_SUCCESS);
}

TEST(Executor, RepeatableBackwardSeesNewInputs) {
  BackwardCall call(SmallProblem().Dtype(MSDA_BFLOAT16));
  uint64_t ws = 0;
  msdaExecutor* ex = nullptr;
  ASSERT_EQ(call.Plan(&ws, &ex), MSDA_SUCCESS) << msdaGetLastErrorMessage();
  ASSERT_EQ(msdaSetExecutorRepeatable(ex), MSDA_SUCCESS);
  Workspace w(ws);
  ASSERT_EQ(msdaBackward(w.data(), ws, ex, nullptr), MSDA_SUCCESS) << msdaGetLastErrorMessage();
  call.ExpectCorrect();
  const std::vector<double> first = call.grad_value.GetAll();
  for (uint64_t seed : {7u, 8u}) {
    ChangeInputs(call.inputs.get(), &call.grad_out, seed, call.t);
    // Gradients are overwritten, never accumulated: leave the previous results in place.
    w.Scramble();
    ASSERT_EQ(msdaBackward(w.data(), ws, ex, nullptr), MSDA_SUCCESS) << msdaGetLastErrorMessage();
    call.ExpectCorrect();
  }
  EXPECT_NE(call.grad_value.GetAll(), first);
  EXPECT_EQ(msdaDestroyExecutor(ex), MSDA_SUCCESS);
}

// msdaExecutorSetData: a repeatable executor planned on one call's tensors, pointed at another
// call's memory (same dims, dtypes, strides and offsets), computes that call's result, the
// same bits as a fresh plan on it, and leaves the first call's memory alone.
TEST(Executor, SetDataPointsARepeatableForwardAtNewMemory) {
  ForwardCall a(SmallProblem()), b(MsdaTester(SmallProblem()).Seed(5)), fresh(SmallProblem());
  uint64_t ws = 0;
  msdaExecutor* ex = nullptr;
  ASSERT_EQ(a.Plan(&ws, &ex), MSDA_SUCCESS) << msdaGetLastErrorMessage();
  ASSERT_EQ(msdaSetExecutorRepeatable(ex), MSDA_SUCCESS);
  Workspace w(ws);
  ASSERT_EQ(msdaForward(w.data(), ws, ex, nullptr), MSDA_SUCCESS) << msdaGetLastErrorMessage();
  a.ExpectCorrect();
  const std::vector<double> first = a.out.GetAll();
  // spatialShapes and levelStartIndex are ignored: NULL for one of them here.
  void* data[] = {b.inputs->value.data(), b.inputs->shapes.data(), nullptr,
                  b.inputs->loc.data(),   b.inputs->attn.data(),   b.out.data()};
  ASSERT_EQ(msdaExecutorSetData(ex, data, 6), MSDA_SUCCESS) << msdaGetLastErrorMessage();
  w.Scramble();
  ASSERT_EQ(msdaForward(w.data(), ws, ex, nullptr), MSDA_SUCCESS) << msdaGetLastErrorMessage();
  b.ExpectCorrect();
  EXPECT_EQ(a.out.GetAll(), first);
  // The same bits as planning b afresh.
  ChangeInputs(fresh.inputs.get(), nullptr, 5, fresh.t);
  ASSERT_EQ(Current(*fresh.inputs).value, Current(*b.inputs).value);
  uint64_t ws2 = 0;
  msdaExecutor* ex2 = nullptr;
  ASSERT_EQ(fresh.Plan(&ws2, &ex2), MSDA_SUCCESS) << msdaGetLastErrorMessage();
  Workspace w2(ws2);
  ASSERT_EQ(msdaForward(w2.data(), ws2, ex2, nullptr), MSDA_SUCCESS);
  EXPECT_EQ(fresh.out.GetAll(), b.out.GetAll());
  EXPECT_EQ(msdaDestroyExecutor(ex), MSDA_SUCCESS);
}

TEST(Executor, SetDataPointsARepeatableBackwardAtNewMemory) {
  // An offset and padding on value: the executor adds the planned offset to the new data.
  const MsdaTester base = MsdaTester(SmallProblem()).Dtype(MSDA_BFLOAT16).ValueLayout(Padded(3, 5));
  BackwardCall a(base), b(MsdaTester(base).Seed(11));
  uint64_t ws = 0;
  msdaExecutor* ex = nullptr;
  ASSERT_EQ(a.Plan(&ws, &ex), MSDA_SUCCESS) << msdaGetLastErrorMessage();
  ASSERT_EQ(msdaSetExecutorRepeatable(ex), MSDA_SUCCESS);
  Workspace w(ws);
  ASSERT_EQ(msdaBackward(w.data(), ws, ex, nullptr), MSDA_SUCCESS) << msdaGetLastErrorMessage();
  a.ExpectCorrect();
  const std::vector<double> first = a.grad_value.GetAll();
  void* data[] = {b.inputs->value.data(),
                  nullptr,
                  nullptr,
                  b.inputs->loc.data(),
                  b.inputs->attn.data(),
                  b.grad_out.data(),
                  b.grad_value.data(),
                  b.grad_loc.data(),
                  b.grad_attn.data()};
  ASSERT_EQ(msdaExecutorSetData(ex, data, 9), MSDA_SUCCESS) << msdaGetLastErrorMessage();
  w.Scramble();
  ASSERT_EQ(msdaBackward(w.data(), ws, ex, nullptr), MSDA_SUCCESS) << msdaGetLastErrorMessage();
  b.ExpectCorrect();
  EXPECT_EQ(a.grad_value.GetAll(), first);
  EXPECT_EQ(msdaDestroyExecutor(ex), MSDA_SUCCESS);
}

TEST(Executor, SetDataRefusalsLeaveTheExecutorAsItWas) {
  ForwardCall a(SmallProblem()), b(MsdaTester(SmallProblem()).Seed(5));
  uint64_t ws = 0;
  msdaExecutor* ex = nullptr;
  ASSERT_EQ(a.Plan(&ws, &ex), MSDA_SUCCESS) << msdaGetLastErrorMessage();
  void* data[] = {b.inputs->value.data(), nullptr,     nullptr, b.inputs->loc.data(),
                  b.inputs->attn.data(),  b.out.data()};
  auto expect_refused = [&](msdaStatus status, const char* names) {
    EXPECT_NE(std::string(msdaGetLastErrorMessage()).find(names), std::string::npos)
        << msdaGetLastErrorMessage();
    (void)status;
  };
  // Not repeatable: a run would release it.
  EXPECT_EQ(msdaExecutorSetData(ex, data, 6), MSDA_ERROR_INVALID_EXECUTOR);
  expect_refused(MSDA_ERROR_INVALID_EXECUTOR, "repeatable");
  ASSERT_EQ(msdaSetExecutorRepeatable(ex), MSDA_SUCCESS);
  EXPECT_EQ(msdaExecutorSetData(nullptr, data, 6), MSDA_ERROR_INVALID_EXECUTOR);
  EXPECT_EQ(msdaExecutorSetData(ex, data, 9), MSDA_ERROR_INVALID_VALUE);
  expect_refused(MSDA_ERROR_INVALID_VALUE, "count");
  EXPECT_EQ(msdaExecutorSetData(ex, nullptr, 6), MSDA_ERROR_NULL_POINTER);
  void* no_value[] = {nullptr, nullptr, nullptr, data[3], data[4], data[5]};
  EXPECT_EQ(msdaExecutorSetData(ex, no_value, 6), MSDA_ERROR_NULL_POINTER);
  expect_refused(MSDA_ERROR_NULL_POINTER, "value");
  // The output on an input's memory, and on the inputs of the first call.
  void* aliased[] = {data[0], nullptr, nullptr, data[3], data[4], data[0]};
  EXPECT_EQ(msdaExecutorSetData(ex, aliased, 6), MSDA_ERROR_INVALID_LAYOUT);
  expect_refused(MSDA_ERROR_INVALID_LAYOUT, "output memory overlaps value");
  // Every refusal left the executor on a's memory.
  Workspace w(ws);
  ASSERT_EQ(msdaForward(w.data(), ws, ex, nullptr), MSDA_SUCCESS) << msdaGetLastErrorMessage();
  a.ExpectCorrect();
  EXPECT_TRUE(b.Untouched());
  EXPECT_EQ(msdaDestroyExecutor(ex), MSDA_SUCCESS);

  // A gradient skipped at planning stays skipped.
  BackwardCall g(SmallProblem());
  ASSERT_EQ(msdaBackwardGetWorkspaceSize(g.inputs->value.get(), g.inputs->shapes.get(),
                                         g.inputs->starts.get(), g.inputs->loc.get(),
                                         g.inputs->attn.get(), g.grad_out.get(), nullptr,
                                         g.grad_loc.get(), g.grad_attn.get(), &ws, &ex),
            MSDA_SUCCESS)
      << msdaGetLastErrorMessage();
  ASSERT_EQ(msdaSetExecutorRepeatable(ex), MSDA_SUCCESS);
  void* grads[] = {g.inputs->value.data(),
                   nullptr,
                   nullptr,
                   g.inputs->loc.data(),
                   g.inputs->attn.data(),
                   g.grad_out.data(),
                   g.grad_value.data(),
                   g.grad_loc.data(),
                   g.grad_attn.data()};
  EXPECT_EQ(msdaExecutorSetData(ex, grads, 9), MSDA_ERROR_INVALID_VALUE);
  expect_refused(MSDA_ERROR_INVALID_VALUE, "gradValue");
  grads[6] = nullptr;
  EXPECT_EQ(msdaExecutorSetData(ex, grads, 9), MSDA_SUCCESS) << msdaGetLastErrorMessage();
  EXPECT_EQ(msdaDestroyExecutor(ex), MSDA_SUCCESS);
}

TEST(Executor, TensorsMayBeDestroyedBeforeTheRun) {
  // Only the memory must stay valid until the run; the views are recorded.
  ForwardCall call(SmallProblem());
  auto view = [](const HostTensor& t, void* data) {
    return msdaCreateTensor(t.dims().data(), t.dims().size(), t.dtype(), t.strides().data(),
                            t.offset(), MSDA_DEVICE_CPU, 0, data);
  };
  msdaTensor* value = view(call.inputs->value, call.inputs->value.data());
  msdaTensor* shapes = view(call.inputs->shapes, call.inputs->shapes.data());
  msdaTensor* starts = view(call.inputs->starts, call.inputs->starts.data());
  msdaTensor* loc = view(call.inputs->loc, call.inputs->loc.data());
  msdaTensor* attn = view(call.inputs->attn, call.inputs->attn.data());
  msdaTensor* out = view(call.out, call.out.data());
  uint64_t ws = 0;
  msdaExecutor* ex = nullptr;
  ASSERT_EQ(msdaForwardGetWorkspaceSize(value, shapes, starts, loc, attn, out, &ws, &ex),
            MSDA_SUCCESS)
      << msdaGetLastErrorMessage();
  for (msdaTensor* t : {value, shapes, starts, loc, attn, out}) msdaDestroyTensor(t);
  Workspace w(ws);
  ASSERT_EQ(msdaForward(w.data(), ws, ex, nullptr), MSDA_SUCCESS) << msdaGetLastErrorMessage();
  call.ExpectCorrect();
}

TEST(Executor, ForwardExecutorRefusedByBackwardAndStillUsable) {
  ForwardCall call(SmallProblem());
  uint64_t ws = 0;
  msdaExecutor* ex = nullptr;
  ASSERT_EQ(call.Plan(&ws, &ex), MSDA_SUCCESS) << msdaGetLastErrorMessage();
  Workspace w(ws);
  EXPECT_EQ(msdaBackward(w.data(), ws, ex, nullptr), MSDA_ERROR_INVALID_EXECUTOR);
  EXPECT_NE(std::string(msdaGetLastErrorMessage()).find("executor"), std::string::npos)
      << msdaGetLastErrorMessage();
  EXPECT_TRUE(call.Untouched());
  // Refused with INVALID_EXECUTOR, so not released: it still runs (and is released then).
  w.Scramble();
  ASSERT_EQ(msdaForward(w.data(), ws, ex, nullptr), MSDA_SUCCESS) << msdaGetLastErrorMessage();
  call.ExpectCorrect();
}

TEST(Executor, BackwardExecutorRefusedByForwardAndStillUsable) {
  BackwardCall call(SmallProblem());
  uint64_t ws = 0;
  msdaExecutor* ex = nullptr;
  ASSERT_EQ(call.Plan(&ws, &ex), MSDA_SUCCESS) << msdaGetLastErrorMessage();
  Workspace w(ws);
  EXPECT_EQ(msdaForward(w.data(), ws, ex, nullptr), MSDA_ERROR_INVALID_EXECUTOR);
  EXPECT_NE(std::string(msdaGetLastErrorMessage()).find("executor"), std::string::npos);
  EXPECT_TRUE(call.Untouched());
  w.Scramble();
  ASSERT_EQ(msdaBackward(w.data(), ws, ex, nullptr), MSDA_SUCCESS) << msdaGetLastErrorMessage();
  call.ExpectCorrect();
}

TEST(Executor, NullExecutor) {
  unsigned char ws[64];
  EXPECT_EQ(msdaForward(ws, sizeof(ws), nullptr, nullptr), MSDA_ERROR_INVALID_EXECUTOR);
  EXPECT_NE(std::string(msdaGetLastErrorMessage()).find("executor"), std::string::npos);
  EXPECT_EQ(msdaBackward(ws, sizeof(ws), nullptr, nullptr), MSDA_ERROR_INVALID_EXECUTOR);
  EXPECT_EQ(msdaSetExecutorRepeatable(nullptr), MSDA_ERROR_INVALID_EXECUTOR);
  EXPECT_EQ(msdaDestroyExecutor(nullptr), MSDA_SUCCESS);
  EXPECT_EQ(msdaExecutorDescribe(nullptr, nullptr, 0), -1);
}

TEST(Executor, DestroyWithoutRunning) {
  ForwardCall call(SmallProblem());
  uint64_t ws = 0;
  msdaExecutor* ex = nullptr;
  ASSERT_EQ(call.Plan(&ws, &ex), MSDA_SUCCESS);
  EXPECT_EQ(msdaDestroyExecutor(ex), MSDA_SUCCESS);
  EXPECT_TRUE(call.Untouched());
}

TEST(Workspace, NullOrTooSmallIsRefusedAndWritesNothing) {
  for (int mode = 0; mode < 3; ++mode) {
    SCOPED_TRACE(mode == 0 ? "NULL workspace" : mode == 1 ? "one byte short" : "size 0");
    {
      ForwardCall call(SmallProblem());
      uint64_t ws = 0;
      msdaExecutor* ex = nullptr;
      ASSERT_EQ(call.Plan(&ws, &ex), MSDA_SUCCESS);
      ASSERT_GT(ws, 0u);
      Workspace w(ws);
      void* ptr = mode == 0 ? nullptr : w.data();
      const uint64_t size = mode == 0 ? ws : mode == 1 ? ws - 1 : 0;
      EXPECT_EQ(msdaForward(ptr, size, ex, nullptr), MSDA_ERROR_WORKSPACE_TOO_SMALL);
      EXPECT_NE(std::string(msdaGetLastErrorMessage()).find("workspace"), std::string::npos)
          << msdaGetLastErrorMessage();
      EXPECT_TRUE(call.Untouched()) << "forward output written by a refused run";
      // The executor was released by the refused run (it was not repeatable).
    }
    {
      BackwardCall call(SmallProblem());
      uint64_t ws = 0;
      msdaExecutor* ex = nullptr;
      ASSERT_EQ(call.Plan(&ws, &ex), MSDA_SUCCESS);
      ASSERT_GT(ws, 0u);
      Workspace w(ws);
      void* ptr = mode == 0 ? nullptr : w.data();
      const uint64_t size = mode == 0 ? ws : mode == 1 ? ws - 1 : 0;
      EXPECT_EQ(msdaBackward(ptr, size, ex, nullptr), MSDA_ERROR_WORKSPACE_TOO_SMALL);
      EXPECT_NE(std::string(msdaGetLastErrorMessage()).find("workspace"), std::string::npos);
      EXPECT_TRUE(call.Untouched()) << "gradients written by a refused run";
    }
  }
}

TEST(Workspace, LargerThanNeededIsFine) {
  ForwardCall call(SmallProblem());
  uint64_t ws = 0;
  msdaExecutor* ex = nullptr;
  ASSERT_EQ(call.Plan(&ws, &ex), MSDA_SUCCESS);
  Workspace w(ws + 4096);
  ASSERT_EQ(msdaForward(w.data(), ws + 4096, ex, nullptr), MSDA_SUCCESS);
  call.ExpectCorrect();
}

TEST(Backward, NoGradientsRequestedIsANoOp) {
  BackwardCall call(SmallProblem());
  uint64_t ws = 0;
  msdaExecutor* ex = nullptr;
  ASSERT_EQ(msdaBackwardGetWorkspaceSize(call.inputs->value.get(), call.inputs->shapes.get(),
                                         call.inputs->starts.get(), call.inputs->loc.get(),
                                         call.inputs->attn.get(), call.grad_out.get(), nullptr,
                                         nullptr, nullptr, &ws, &ex),
            MSDA_SUCCESS)
      << msdaGetLastErrorMessage();
  Workspace w(ws);
  EXPECT_EQ(msdaBackward(w.data(), ws, ex, nullptr), MSDA_SUCCESS);
  EXPECT_TRUE(w.GuardsIntact());
}

// ---------------------------------------------------------------------------------------------
// Descriptions.

TEST(Describe, ForwardAndBackwardPlans) {
  ForwardCall fwd(SmallProblem());
  BackwardCall bwd(SmallProblem());
  uint64_t ws = 0;
  msdaExecutor* f = nullptr;
  msdaExecutor* b = nullptr;
  ASSERT_EQ(fwd.Plan(&ws, &f), MSDA_SUCCESS);
  ASSERT_EQ(bwd.Plan(&ws, &b), MSDA_SUCCESS);
  for (msdaExecutor* ex : {f, b}) {
    const int64_t n = msdaExecutorDescribe(ex, nullptr, 0);
    ASSERT_GT(n, 0);
    std::vector<char> full(static_cast<size_t>(n) + 1, 'x');
    EXPECT_EQ(msdaExecutorDescribe(ex, full.data(), full.size()), n);
    EXPECT_EQ(std::strlen(full.data()), static_cast<size_t>(n));
    const std::string text(full.data());
    EXPECT_NE(text.find(ex == f ? "forward" : "backward"), std::string::npos) << text;
    // Truncated to the buffer, NUL-terminated, same prefix, still the full length returned.
    char small[8];
    std::memset(small, 'x', sizeof(small));
    EXPECT_EQ(msdaExecutorDescribe(ex, small, sizeof(small)), n);
    EXPECT_EQ(std::strlen(small), std::min<size_t>(7, static_cast<size_t>(n)));
    EXPECT_EQ(std::string(small), text.substr(0, std::strlen(small)));
    char one = 'x';
    EXPECT_EQ(msdaExecutorDescribe(ex, &one, 1), n);
    EXPECT_EQ(one, '\0');
  }
  EXPECT_EQ(msdaDestroyExecutor(f), MSDA_SUCCESS);
  EXPECT_EQ(msdaDestroyExecutor(b), MSDA_SUCCESS);
}

// ---------------------------------------------------------------------------------------------
// Threads.

class ThreadSetting : public ::testing::Test {
 protected:
  void TearDown() override { msdaSetNumThreads(0); }
};

TEST_F(ThreadSetting, SetAndGet) {
  EXPECT_EQ(msdaSetNumThreads(3), MSDA_SUCCESS);
  EXPECT_EQ(msdaGetNumThreads(), 3);
  EXPECT_EQ(msdaSetNumThreads(1), MSDA_SUCCESS);
  EXPECT_EQ(msdaGetNumThreads(), 1);
  EXPECT_EQ(msdaSetNumThreads(-1), MSDA_ERROR_INVALID_VALUE);
  EXPECT_NE(std::string(msdaGetLastErrorMessage()).find("numThreads"), std::string::npos);
  EXPECT_EQ(msdaGetNumThreads(), 1);
  EXPECT_EQ(msdaSetNumThreads(0), MSDA_SUCCESS);
  EXPECT_GE(msdaGetNumThreads(), 1);
  // The documented cap: accepted up to it, refused above it, naming the setting.
  EXPECT_EQ(msdaSetNumThreads(MSDA_MAX_NUM_THREADS), MSDA_SUCCESS);
  EXPECT_EQ(msdaGetNumThreads(), MSDA_MAX_NUM_THREADS);
  EXPECT_EQ(msdaSetNumThreads(MSDA_MAX_NUM_THREADS + 1), MSDA_ERROR_INVALID_VALUE);
  EXPECT_NE(std::string(msdaGetLastErrorMessage()).find("numThreads: must be in [0, 1024]"),
            std::string::npos)
      << msdaGetLastErrorMessage();
  EXPECT_EQ(msdaGetNumThreads(), MSDA_MAX_NUM_THREADS);
}

TEST_F(ThreadSetting, EnvironmentAboveTheCapIsClamped) {
  const char* old = std::getenv("MSDA_NUM_THREADS");
  const std::string saved = old != nullptr ? old : "";
  ASSERT_EQ(msdaSetNumThreads(0), MSDA_SUCCESS);
  setenv("MSDA_NUM_THREADS", "100000", 1);
  EXPECT_EQ(msdaGetNumThreads(), MSDA_MAX_NUM_THREADS);
  if (old != nullptr) {
    setenv("MSDA_NUM_THREADS", saved.c_str(), 1);
  } else {
    unsetenv("MSDA_NUM_THREADS");
  }
}

// The pool's settings are process-wide: each test restores the defaults.
class Pool : public ::testing::Test {
 protected:
  void TearDown() override {
    msdaTestingSetPoolOptions(-1, -1);
    msdaSetNumThreads(0);
    msdaSetParallelRunner(nullptr, nullptr);
  }
  // Waits up to 10 s for the idle workers to exit.
  static bool WorkersExit() {
    for (int i = 0; i < 1000 && msdaTestingPoolWorkers() > 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return msdaTestingPoolWorkers() == 0;
  }
  static MsdaTester ManyTasks(int threads) {
    MsdaTester t = SmallProblem();
    t.Queries(3000).Threads(threads);
    return t;
  }
};

#ifdef __linux__
// Threads of this process, as the kernel counts them.
int ProcessThreads() {
  int n = 0;
  if (DIR* dir = opendir("/proc/self/task")) {
    while (const dirent* e = readdir(dir)) n += e->d_name[0] != '.';
    closedir(dir);
  }
  return n;
}
#endif

TEST_F(Pool, IdleWorkersExit) {
  msdaTestingSetPoolOptions(300, -1);
  ASSERT_TRUE(WorkersExit());
#ifdef __linux__
  const int before = ProcessThreads();
#endif
  {
    ForwardCall call(ManyTasks(8));
    ASSERT_EQ(msdaSetNumThreads(8), MSDA_SUCCESS);
    uint64_t ws = 0;
    msdaExecutor* ex = nullptr;
    ASSERT_EQ(call.Plan(&ws, &ex), MSDA_SUCCESS);
    Workspace w(ws);
    ASSERT_EQ(msdaForward(w.data(), ws, ex, nullptr), MSDA_SUCCESS);
    const int workers = msdaTestingPoolWorkers();  // Within 300 ms of the call's end.
    EXPECT_GE(workers, 1);
    EXPECT_LE(workers, 7);
    call.ExpectCorrect();
  }
  ASSERT_TRUE(WorkersExit()) << msdaTestingPoolWorkers() << " workers still alive";
#ifdef __linux__
  // Exited for real, not parked: the kernel's count falls back (a worker leaves the count
  // just before its thread ends, hence the wait).
  int after = ProcessThreads();
  for (int i = 0; i < 500 && after > before; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    after = ProcessThreads();
  }
  EXPECT_LE(after, before);
#endif
  // And the next call starts workers again.
  ManyTasks(3).TestBackward();
}

TEST_F(Pool, RefusedThreadCreationFallsBackToTheCaller) {
  msdaTestingSetPoolOptions(1, -1);
  ASSERT_TRUE(WorkersExit());
  msdaTestingSetPoolOptions(-1, 0);  // Every new thread refused, as by EAGAIN.
  MsdaTester t = ManyTasks(4);
  t.TestForward();
  t.TestBackward();
  EXPECT_EQ(msdaTestingPoolWorkers(), 0);
  msdaTestingSetPoolOptions(-1, 2);  // Two more, then refused: a 6-thread call runs on 3.
  t.Threads(6).Seed(7);
  t.TestForward();
  t.TestBackward();
  EXPECT_LE(msdaTestingPoolWorkers(), 2);
}

// Parallel runners (msdaSetParallelRunner) and what they saw.
struct RunnerLog {
  std::atomic<int> sections{0};
  std::atomic<int> calls{0};
  std::atomic<int> num_threads{0};
};

// The contract's full form: work on numThreads threads, index i on the i-th.
void ThreadsRunner(msdaParallelWork work, void* context, int32_t n, void* user) {
  auto* log = static_cast<RunnerLog*>(user);
  ++log->sections;
  log->num_threads = n;
  std::vector<std::thread> threads;
  for (int32_t i = 1; i < n; ++i) threads.emplace_back([=] { work(context, i); });
  work(context, 0);
  for (std::thread& t : threads) t.join();
  log->calls += n;
}

// One call, on the last index only: every task on it.
void OneCallRunner(msdaParallelWork work, void* context, int32_t n, void* user) {
  ++static_cast<RunnerLog*>(user)->sections;
  work(context, n - 1);
}

// Calls outside [0, numThreads) and none inside: msda runs every task on the caller.
void BadIndexRunner(msdaParallelWork work, void* context, int32_t n, void* user) {
  ++static_cast<RunnerLog*>(user)->sections;
  work(context, -1);
  work(context, n);
}

// Index 0 on every thread, and more threads than asked for: msda still gives each call its
// own scratch, and the calls past the numThreads-th take no task.
void SameIndexRunner(msdaParallelWork work, void* context, int32_t n, void* user) {
  ++static_cast<RunnerLog*>(user)->sections;
  std::vector<std::thread> threads;
  for (int32_t i = 0; i < n + 2; ++i) threads.emplace_back([=] { work(context, 0); });
  for (std::thread& t : threads) t.join();
}

TEST_F(Pool, ParallelRunnerRunsEverySection) {
  msdaTestingSetPoolOptions(1, -1);
  ASSERT_TRUE(WorkersExit());
  // A pool worker started now would live a minute: none must be.
  msdaTestingSetPoolOptions(60000, -1);
  for (msdaParallelRunner runner :
       {&ThreadsRunner, &OneCallRunner, &BadIndexRunner, &SameIndexRunner}) {
    RunnerLog log;
    ASSERT_EQ(msdaSetParallelRunner(runner, &log), MSDA_SUCCESS);
    MsdaTester t = ManyTasks(3);
    t.TestForward();
    t.TestBackward();
    EXPECT_GT(log.sections.load(), 0);
    if (runner == &ThreadsRunner) {
      EXPECT_EQ(log.num_threads.load(), 3);
    }
    EXPECT_EQ(msdaTestingPoolWorkers(), 0);  // msda's own pool was not used.
  }
  msdaTestingSetPoolOptions(1, -1);  // The pool runs below: let its workers go at once.
  // One thread: no section is handed to the runner.
  RunnerLog log;
  ASSERT_EQ(msdaSetParallelRunner(&ThreadsRunner, &log), MSDA_SUCCESS);
  ManyTasks(1).TestForward();
  EXPECT_EQ(log.sections.load(), 0);
  // The setting is the calling thread's: another thread's calls use the pool.
  std::thread([] { ManyTasks(3).TestForward(); }).join();
  EXPECT_EQ(log.sections.load(), 0);
  // NULL restores the pool.
  ASSERT_EQ(msdaSetParallelRunner(nullptr, nullptr), MSDA_SUCCESS);
  ManyTasks(3).TestForward();
  EXPECT_EQ(log.sections.load(), 0);
}

TEST_F(ThreadSetting, IsThreadLocal) {
  ASSERT_EQ(msdaSetNumThreads(0), MSDA_SUCCESS);
  const int32_t default_count = msdaGetNumThreads();
  ASSERT_EQ(msdaSetNumThreads(default_count + 5), MSDA_SUCCESS);
  int32_t seen = -1;
  std::thread([&] { seen = msdaGetNumThreads(); }).join();
  EXPECT_EQ(seen, default_count);
  EXPECT_EQ(msdaGetNumThreads(), default_count + 5);
}

TEST_F(ThreadSetting, DefaultFollowsTheEnvironment) {
  const char* old = std::getenv("MSDA_NUM_THREADS");
  const std::string saved = old != nullptr ? old : "";
  ASSERT_EQ(msdaSetNumThreads(0), MSDA_SUCCESS);
  setenv("MSDA_NUM_THREADS", "3", 1);
  EXPECT_EQ(msdaGetNumThreads(), 3);
  // An explicit setting wins over the environment.
  ASSERT_EQ(msdaSetNumThreads(2), MSDA_SUCCESS);
  EXPECT_EQ(msdaGetNumThreads(), 2);
  if (old != nullptr) {
    setenv("MSDA_NUM_THREADS", saved.c_str(), 1);
  } else {
    unsetenv("MSDA_NUM_THREADS");
  }
}

TEST_F(ThreadSetting, PlanOnOneThreadRunOnAnother) {
  ForwardCall call(SmallProblem());
  ASSERT_EQ(msdaSetNumThreads(3), MSDA_SUCCESS);
  uint64_t ws = 0;
  msdaExecutor* ex = nullptr;
  ASSERT_EQ(call.Plan(&ws, &ex), MSDA_SUCCESS);
  Workspace w(ws);
  msdaStatus status = MSDA_ERROR_INTERNAL;
  std::thread([&] { status = msdaForward(w.data(), ws, ex, nullptr); }).join();
  EXPECT_EQ(status, MSDA_SUCCESS);
  call.ExpectCorrect();
}

TEST_F(ThreadSetting, DistinctExecutorsRunConcurrently) {
  // Several caller threads, each with its own thread count and problem, at the same time.
  std::vector<std::thread> callers;
  for (int i = 0; i < 4; ++i) {
    callers.emplace_back([i] {
      MsdaTester t = SmallProblem();
      t.Queries(50 + 10 * i).Threads(i + 1).Seed(100 + static_cast<uint64_t>(i));
      for (int rep = 0; rep < 3; ++rep) {
        t.TestForward();
        t.TestBackward();
      }
    });
  }
  for (std::thread& c : callers) c.join();
}

}  // namespace
}  // namespace msda_test
