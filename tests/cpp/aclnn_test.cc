// msda::aclnn against msda itself: the spec's aclnn entry points give bitwise msda's results on
// the same inputs and layouts, and every refusal returns the aclnn status docs/aclnn.md names,
// with msda's message where msda made the refusal.
#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "acl/acl.h"
#include "aclnn_multi_scale_deformable_attn_func_v2.h"
#include "aclnn_multi_scale_deformable_attn_grad_v2.h"
#include "msda/msda.h"
#include "tester.h"

namespace msda_test {
namespace {

struct AclTensorDeleter {
  void operator()(aclTensor* t) const { aclDestroyTensor(t); }
};
using AclTensorPtr = std::unique_ptr<aclTensor, AclTensorDeleter>;

aclDataType ToAcl(msdaDataType dtype) {
  switch (dtype) {
    case MSDA_FLOAT32:
      return ACL_FLOAT;
    case MSDA_FLOAT16:
      return ACL_FLOAT16;
    case MSDA_BFLOAT16:
      return ACL_BF16;
    case MSDA_FLOAT64:
      return ACL_DOUBLE;
    case MSDA_INT32:
      return ACL_INT32;
    case MSDA_INT64:
      return ACL_INT64;
  }
  return ACL_DT_UNDEFINED;
}

// An aclTensor over a HostTensor's memory, with the same dims, strides and offset; its storage
// dims are the storage's element count, as a device allocation of that size would have.
AclTensorPtr AclView(HostTensor& t, aclFormat format = ACL_FORMAT_ND) {
  const int64_t storage = static_cast<int64_t>(t.storage_bytes()) / ElementBytes(t.dtype());
  AclTensorPtr view(aclCreateTensor(t.dims().data(), t.dims().size(), ToAcl(t.dtype()),
                                    t.strides().data(), t.offset(), format, &storage, 1, t.data()));
  EXPECT_NE(view, nullptr) << aclGetRecentErrMsg();
  return view;
}

// The problem every test here runs: three levels of unequal shapes, 1x1 included.
struct Shape {
  int64_t batch = 2, queries = 7, heads = 2, dims = 8, points = 3;
  std::vector<std::array<int64_t, 2>> levels = {{4, 5}, {2, 3}, {1, 1}};
  int64_t keys() const {
    int64_t k = 0;
    for (const auto& l : levels) k += l[0] * l[1];
    return k;
  }
  int64_t num_levels() const { return static_cast<int64_t>(levels.size()); }
};

// The layouts of the nine tensors: row-major, or strided views with offsets and gaps.
struct Layouts {
  Layout value, shapes, starts, locations, weights, output, grad_output, grad_value, grad_locations,
      grad_weights;
};

Layouts RowMajorLayouts() { return Layouts(); }
Layouts StridedLayouts(int64_t levels) {
  Layouts l;
  l.value = Permuted({0, 2, 1, 3}, 1, 3);
  l.shapes = Strided({1, levels + 1}, 2);  // Column-major with a gap.
  l.starts = Strided({2}, 1);
  l.locations = Padded(1, 5);
  l.weights = Permuted({0, 2, 1, 3, 4}, 2, 1);
  l.output = Permuted({1, 0, 2}, 1, 2);
  l.grad_output = Padded(2, 7);
  l.grad_value = Permuted({2, 0, 1, 3}, 1, 4);
  l.grad_locations = Padded(1, 3);
  l.grad_weights = Padded(3, 0);
  return l;
}

// Every tensor of one forward + gradient call, filled from a seed, so that two instances hold
// the same bytes in the same layouts.
struct Call {
  HostTensor value, shapes, starts, locations, weights, output, grad_output, grad_value,
      grad_locations, grad_weights;

  // loc_dtype is the locations' (and their gradient's) dtype; by default value's.
  Call(const Shape& s, msdaDataType dtype, msdaDataType index_dtype, const Layouts& l,
       int loc_dtype = -1)
      : value({s.batch, s.keys(), s.heads, s.dims}, dtype, l.value),
        shapes({s.num_levels(), 2}, index_dtype, l.shapes),
        starts({s.num_levels()}, index_dtype, l.starts),
        locations({s.batch, s.queries, s.heads, s.num_levels(), s.points, 2},
                  loc_dtype < 0 ? dtype : static_cast<msdaDataType>(loc_dtype), l.locations),
        weights({s.batch, s.queries, s.heads, s.num_levels(), s.points}, dtype, l.weights),
        output({s.batch, s.queries, s.heads * s.dims}, dtype, l.output),
        grad_output({s.batch, s.queries, s.heads * s.dims}, dtype, l.grad_output),
        grad_value({s.batch, s.keys(), s.heads, s.dims}, dtype, l.grad_value),
        grad_locations({s.batch, s.queries, s.heads, s.num_levels(), s.points, 2},
                       locations.dtype(), l.grad_locations),
        grad_weights({s.batch, s.queries, s.heads, s.num_levels(), s.points}, dtype,
                     l.grad_weights) {
    std::mt19937_64 rng(19);
    std::normal_distribution<double> normal(0.0, 1.0);
    std::uniform_real_distribution<double> loc(-0.1, 1.1), weight(0.0, 1.0);
    int64_t start = 0;
    for (int64_t l = 0; l < s.num_levels(); ++l) {
      shapes.Set(2 * l, static_cast<double>(s.levels[l][0]));
      shapes.Set(2 * l + 1, static_cast<double>(s.levels[l][1]));
      starts.Set(l, static_cast<double>(start));
      start += s.levels[l][0] * s.levels[l][1];
    }
    for (int64_t i = 0; i < value.numel(); ++i) value.Set(i, normal(rng));
    for (int64_t i = 0; i < locations.numel(); ++i) locations.Set(i, loc(rng));
    for (int64_t i = 0; i < weights.numel(); ++i) weights.Set(i, weight(rng));
    for (int64_t i = 0; i < grad_output.numel(); ++i) grad_output.Set(i, normal(rng));
  }
};

// The acl views of a Call.
struct AclCall {
  AclTensorPtr value, shapes, starts, locations, weights, output, grad_output, grad_value,
      grad_locations, grad_weights;
  explicit AclCall(Call& c)
      : value(AclView(c.value)),
        shapes(AclView(c.shapes)),
        starts(AclView(c.starts)),
        locations(AclView(c.locations)),
        weights(AclView(c.weights)),
        output(AclView(c.output)),
        grad_output(AclView(c.grad_output)),
        grad_value(AclView(c.grad_value)),
        grad_locations(AclView(c.grad_locations)),
        grad_weights(AclView(c.grad_weights)) {}

  aclnnStatus PlanForward(uint64_t* size, aclOpExecutor** executor) const {
    return aclnnMultiScaleDeformableAttnFuncV2GetWorkspaceSize(
        value.get(), shapes.get(), starts.get(), locations.get(), weights.get(), output.get(), size,
        executor);
  }
  aclnnStatus PlanGrad(uint64_t* size, aclOpExecutor** executor) const {
    return aclnnMultiScaleDeformableAttnGradV2GetWorkspaceSize(
        value.get(), shapes.get(), starts.get(), locations.get(), weights.get(), grad_output.get(),
        grad_value.get(), grad_locations.get(), grad_weights.get(), size, executor);
  }
};

void RunMsda(Call& c) {
  uint64_t size = 0;
  msdaExecutor* executor = nullptr;
  ASSERT_EQ(
      msdaForwardGetWorkspaceSize(c.value.get(), c.shapes.get(), c.starts.get(), c.locations.get(),
                                  c.weights.get(), c.output.get(), &size, &executor),
      MSDA_SUCCESS)
      << LastError();
  Workspace forward_workspace(size);
  ASSERT_EQ(msdaForward(forward_workspace.data(), size, executor, nullptr), MSDA_SUCCESS);
  ASSERT_EQ(
      msdaBackwardGetWorkspaceSize(c.value.get(), c.shapes.get(), c.starts.get(), c.locations.get(),
                                   c.weights.get(), c.grad_output.get(), c.grad_value.get(),
                                   c.grad_locations.get(), c.grad_weights.get(), &size, &executor),
      MSDA_SUCCESS)
      << LastError();
  Workspace backward_workspace(size);
  ASSERT_EQ(msdaBackward(backward_workspace.data(), size, executor, nullptr), MSDA_SUCCESS);
}

void RunAclnn(Call& c) {
  AclCall acl(c);
  aclrtStream stream = nullptr;
  ASSERT_EQ(aclrtCreateStream(&stream), ACL_SUCCESS);
  uint64_t size = 0;
  aclOpExecutor* executor = nullptr;
  ASSERT_EQ(acl.PlanForward(&size, &executor), ACLNN_SUCCESS) << aclGetRecentErrMsg();
  Workspace forward_workspace(size);
  ASSERT_EQ(aclnnMultiScaleDeformableAttnFuncV2(forward_workspace.data(), size, executor, stream),
            ACLNN_SUCCESS)
      << aclGetRecentErrMsg();
  ASSERT_EQ(acl.PlanGrad(&size, &executor), ACLNN_SUCCESS) << aclGetRecentErrMsg();
  Workspace grad_workspace(size);
  ASSERT_EQ(aclnnMultiScaleDeformableAttnGradV2(grad_workspace.data(), size, executor, stream),
            ACLNN_SUCCESS)
      << aclGetRecentErrMsg();
  EXPECT_EQ(aclrtSynchronizeStream(stream), ACL_SUCCESS);
  EXPECT_EQ(aclrtDestroyStream(stream), ACL_SUCCESS);
}

// Value dtype, index dtype, strided views.
class AclnnMatchesMsda
    : public ::testing::TestWithParam<std::tuple<msdaDataType, msdaDataType, bool>> {};

TEST_P(AclnnMatchesMsda, ForwardAndGradientBitwise) {
  const auto [dtype, index_dtype, strided] = GetParam();
  const Shape shape;
  const Layouts layouts = strided ? StridedLayouts(shape.num_levels()) : RowMajorLayouts();
  Call direct(shape, dtype, index_dtype, layouts);
  Call through_aclnn(shape, dtype, index_dtype, layouts);
  RunMsda(direct);
  RunAclnn(through_aclnn);
  // Whole storage, gaps included: the same bytes written, and nothing outside the views.
  EXPECT_EQ(through_aclnn.output.AllBytes(), direct.output.AllBytes());
  EXPECT_EQ(through_aclnn.grad_value.AllBytes(), direct.grad_value.AllBytes());
  EXPECT_EQ(through_aclnn.grad_locations.AllBytes(), direct.grad_locations.AllBytes());
  EXPECT_EQ(through_aclnn.grad_weights.AllBytes(), direct.grad_weights.AllBytes());
  EXPECT_TRUE(through_aclnn.output.GapsIntact());
  EXPECT_TRUE(through_aclnn.grad_value.GapsIntact());
  // The run computed something: not every output byte kept its fill.
  EXPECT_FALSE(through_aclnn.output.AllBytesAre(0xFF));
}

INSTANTIATE_TEST_SUITE_P(
    EveryDtype, AclnnMatchesMsda,
    ::testing::Combine(::testing::Values(MSDA_FLOAT32, MSDA_FLOAT16, MSDA_BFLOAT16, MSDA_FLOAT64),
                       ::testing::Values(MSDA_INT32, MSDA_INT64), ::testing::Bool()),
    [](const auto& info) {
      return std::string(DtypeName(std::get<0>(info.param))) + "_" +
             DtypeName(std::get<1>(info.param)) +
             (std::get<2>(info.param) ? "_strided" : "_contiguous");
    });

// Half values with fp32 locations, which msda and the spec both accept.
TEST(AclnnMatchesMsdaMixed, HalfValuesWithFloatLocations) {
  for (msdaDataType dtype : {MSDA_FLOAT16, MSDA_BFLOAT16}) {
    const Shape shape;
    const Layouts layouts = StridedLayouts(shape.num_levels());
    Call direct(shape, dtype, MSDA_INT32, layouts, MSDA_FLOAT32);
    Call through_aclnn(shape, dtype, MSDA_INT32, layouts, MSDA_FLOAT32);
    RunMsda(direct);
    RunAclnn(through_aclnn);
    EXPECT_EQ(through_aclnn.output.AllBytes(), direct.output.AllBytes()) << DtypeName(dtype);
    EXPECT_EQ(through_aclnn.grad_value.AllBytes(), direct.grad_value.AllBytes());
    EXPECT_EQ(through_aclnn.grad_locations.AllBytes(), direct.grad_locations.AllBytes());
    EXPECT_EQ(through_aclnn.grad_weights.AllBytes(), direct.grad_weights.AllBytes());
  }
}

// A refused planning call: the status, *workspaceSize 0, *executor NULL, no output written.
class AclnnRefusals : public ::testing::Test {
 protected:
  AclnnRefusals() : call_(shape_, MSDA_FLOAT32, MSDA_INT64, RowMajorLayouts()), acl_(call_) {}

  void ExpectForwardRefused(aclnnStatus expected, const std::string& message_part) {
    uint64_t size = 12345;
    aclOpExecutor* executor = reinterpret_cast<aclOpExecutor*>(&size);
    EXPECT_EQ(acl_.PlanForward(&size, &executor), expected) << aclGetRecentErrMsg();
    EXPECT_EQ(size, 0u);
    EXPECT_EQ(executor, nullptr);
    EXPECT_NE(std::string(aclGetRecentErrMsg()).find(message_part), std::string::npos)
        << aclGetRecentErrMsg();
    EXPECT_TRUE(call_.output.AllBytesAre(0xFF));
  }
  void ExpectGradRefused(aclnnStatus expected, const std::string& message_part) {
    uint64_t size = 12345;
    aclOpExecutor* executor = reinterpret_cast<aclOpExecutor*>(&size);
    EXPECT_EQ(acl_.PlanGrad(&size, &executor), expected) << aclGetRecentErrMsg();
    EXPECT_EQ(size, 0u);
    EXPECT_EQ(executor, nullptr);
    EXPECT_NE(std::string(aclGetRecentErrMsg()).find(message_part), std::string::npos)
        << aclGetRecentErrMsg();
    EXPECT_TRUE(call_.grad_value.AllBytesAre(0xFF));
    EXPECT_TRUE(call_.grad_locations.AllBytesAre(0xFF));
    EXPECT_TRUE(call_.grad_weights.AllBytesAre(0xFF));
  }
  // Plans and returns a forward executor and its workspace size.
  aclOpExecutor* PlanForward(uint64_t* size) {
    aclOpExecutor* executor = nullptr;
    EXPECT_EQ(acl_.PlanForward(size, &executor), ACLNN_SUCCESS) << aclGetRecentErrMsg();
    EXPECT_GT(*size, 0u);
    return executor;
  }

  Shape shape_;
  Call call_;
  AclCall acl_;
};

TEST_F(AclnnRefusals, NullOutParameters) {
  uint64_t size = 0;
  aclOpExecutor* executor = nullptr;
  EXPECT_EQ(acl_.PlanForward(nullptr, &executor), ACLNN_ERR_PARAM_NULLPTR);
  EXPECT_STREQ(aclGetRecentErrMsg(), "workspaceSize: is NULL");
  EXPECT_EQ(acl_.PlanForward(&size, nullptr), ACLNN_ERR_PARAM_NULLPTR);
  EXPECT_EQ(acl_.PlanGrad(nullptr, &executor), ACLNN_ERR_PARAM_NULLPTR);
  EXPECT_EQ(acl_.PlanGrad(&size, nullptr), ACLNN_ERR_PARAM_NULLPTR);
}

TEST_F(AclnnRefusals, NullTensors) {
  acl_.locations.reset();
  ExpectForwardRefused(ACLNN_ERR_PARAM_NULLPTR, "sampling_locations: tensor is NULL");
  ExpectGradRefused(ACLNN_ERR_PARAM_NULLPTR, "sampling_locations: tensor is NULL");
}

TEST_F(AclnnRefusals, NullOutputs) {
  acl_.output.reset();
  ExpectForwardRefused(ACLNN_ERR_PARAM_NULLPTR, "output: tensor is NULL");
  // msda would skip a NULL gradient; the spec makes all three required.
  acl_.grad_locations.reset();
  ExpectGradRefused(ACLNN_ERR_PARAM_NULLPTR, "grad_sampling_locations: tensor is NULL");
}

TEST_F(AclnnRefusals, FormatOtherThanNd) {
  acl_.value = AclView(call_.value, ACL_FORMAT_NCHW);
  ExpectForwardRefused(ACLNN_ERR_PARAM_INVALID,
                       "value: format must be ACL_FORMAT_ND, got ACL_FORMAT_NCHW");
  acl_.value = AclView(call_.value);
  acl_.grad_weights = AclView(call_.grad_weights, ACL_FORMAT_FRACTAL_NZ);
  ExpectGradRefused(ACLNN_ERR_PARAM_INVALID, "grad_attention_weights: format must be");
}

TEST_F(AclnnRefusals, DtypeMsdaHasNoCounterpartFor) {
  const int64_t dims[4] = {shape_.batch, shape_.keys(), shape_.heads, shape_.dims};
  acl_.value.reset(aclCreateTensor(dims, 4, ACL_INT8, nullptr, 0, ACL_FORMAT_ND, nullptr, 0,
                                   call_.value.data()));
  ASSERT_NE(acl_.value, nullptr) << aclGetRecentErrMsg();
  ExpectForwardRefused(ACLNN_ERR_PARAM_INVALID, "value: dtype ACL_INT8 is not supported");
}

// Refusals msda makes: the same message as a direct msda call, mapped to PARAM_INVALID.
TEST_F(AclnnRefusals, MsdaRulesKeepMsdaMessages) {
  // Wrong dtype for the output (V8).
  HostTensor half_output(call_.output.dims(), MSDA_FLOAT16);
  uint64_t size = 0;
  msdaExecutor* direct = nullptr;
  EXPECT_EQ(msdaForwardGetWorkspaceSize(call_.value.get(), call_.shapes.get(), call_.starts.get(),
                                        call_.locations.get(), call_.weights.get(),
                                        half_output.get(), &size, &direct),
            MSDA_ERROR_INVALID_DTYPE);
  const std::string msda_message = LastError();
  acl_.output = AclView(half_output);
  ExpectForwardRefused(ACLNN_ERR_PARAM_INVALID, msda_message);
  EXPECT_EQ(aclGetRecentErrMsg(), msda_message);
}

TEST_F(AclnnRefusals, BadShapes) {
  // One query too many in the weights (V15), and a rank-5 value (V9).
  HostTensor weights(
      {shape_.batch, shape_.queries + 1, shape_.heads, shape_.num_levels(), shape_.points},
      MSDA_FLOAT32);
  acl_.weights = AclView(weights);
  ExpectForwardRefused(ACLNN_ERR_PARAM_INVALID, "attention_weights: dim 1 (queries");
  acl_.weights = AclView(call_.weights);
  HostTensor value({1, shape_.batch, shape_.keys(), shape_.heads, shape_.dims}, MSDA_FLOAT32);
  acl_.value = AclView(value);
  ExpectGradRefused(ACLNN_ERR_PARAM_INVALID, "value: must have rank 4");
}

TEST_F(AclnnRefusals, BadLevelTable) {
  call_.starts.Set(1, 19.0);  // Should be 20 (V24).
  ExpectForwardRefused(ACLNN_ERR_PARAM_INVALID, "level_start_index: entry 1 must be 20");
}

TEST_F(AclnnRefusals, OutputOverlappingAnInput) {
  // grad_value over value's memory (V21).
  acl_.grad_value = AclView(call_.value);
  ExpectGradRefused(ACLNN_ERR_PARAM_INVALID, "grad_value: output memory overlaps value");
}

TEST_F(AclnnRefusals, WorkspaceTooSmallOrNull) {
  uint64_t size = 0;
  aclOpExecutor* executor = PlanForward(&size);
  Workspace workspace(size);
  ASSERT_EQ(aclSetAclOpExecutorRepeatable(executor), ACLNN_SUCCESS);
  EXPECT_EQ(aclnnMultiScaleDeformableAttnFuncV2(workspace.data(), size - 1, executor, nullptr),
            ACLNN_ERR_PARAM_INVALID);
  EXPECT_NE(std::string(aclGetRecentErrMsg()).find("workspace: workspaceSize is"),
            std::string::npos)
      << aclGetRecentErrMsg();
  EXPECT_EQ(aclnnMultiScaleDeformableAttnFuncV2(nullptr, size, executor, nullptr),
            ACLNN_ERR_PARAM_NULLPTR);
  EXPECT_TRUE(call_.output.AllBytesAre(0xFF));
  EXPECT_EQ(aclnnMultiScaleDeformableAttnFuncV2(workspace.data(), size, executor, nullptr),
            ACLNN_SUCCESS);
  EXPECT_EQ(aclDestroyAclOpExecutor(executor), ACLNN_SUCCESS);
}

TEST_F(AclnnRefusals, ExecutorReuseAndMisuse) {
  uint64_t size = 0;
  aclOpExecutor* executor = PlanForward(&size);
  Workspace workspace(size);
  // A forward executor given to the gradient run is refused and stays usable.
  EXPECT_EQ(aclnnMultiScaleDeformableAttnGradV2(workspace.data(), size, executor, nullptr),
            ACLNN_ERR_PARAM_INVALID);
  EXPECT_NE(std::string(aclGetRecentErrMsg()).find("msdaForward"), std::string::npos);
  EXPECT_EQ(aclnnMultiScaleDeformableAttnFuncV2(workspace.data(), size, executor, nullptr),
            ACLNN_SUCCESS);
  // The run released it, as aclnn does: a second run is refused.
  EXPECT_EQ(aclnnMultiScaleDeformableAttnFuncV2(workspace.data(), size, executor, nullptr),
            ACLNN_ERR_PARAM_INVALID);
  EXPECT_NE(std::string(aclGetRecentErrMsg()).find("not a live executor"), std::string::npos);
  EXPECT_EQ(aclDestroyAclOpExecutor(executor), ACLNN_ERR_PARAM_INVALID);
  EXPECT_EQ(aclnnMultiScaleDeformableAttnFuncV2(workspace.data(), size, nullptr, nullptr),
            ACLNN_ERR_PARAM_NULLPTR);
  EXPECT_EQ(aclnnMultiScaleDeformableAttnGradV2(workspace.data(), size, nullptr, nullptr),
            ACLNN_ERR_PARAM_NULLPTR);
  EXPECT_EQ(aclSetAclOpExecutorRepeatable(nullptr), ACLNN_ERR_PARAM_NULLPTR);
  EXPECT_EQ(aclDestroyAclOpExecutor(nullptr), ACLNN_SUCCESS);
}

TEST_F(AclnnRefusals, RepeatableExecutorRunsAgain) {
  uint64_t size = 0;
  aclOpExecutor* executor = PlanForward(&size);
  Workspace workspace(size);
  ASSERT_EQ(aclSetAclOpExecutorRepeatable(executor), ACLNN_SUCCESS);
  ASSERT_EQ(aclnnMultiScaleDeformableAttnFuncV2(workspace.data(), size, executor, nullptr),
            ACLNN_SUCCESS);
  const std::vector<unsigned char> first = call_.output.AllBytes();
  call_.output.Fill(0xFF);
  workspace.Scramble();
  ASSERT_EQ(aclnnMultiScaleDeformableAttnFuncV2(workspace.data(), size, executor, nullptr),
            ACLNN_SUCCESS);
  EXPECT_EQ(call_.output.AllBytes(), first);
  EXPECT_EQ(aclDestroyAclOpExecutor(executor), ACLNN_SUCCESS);
}

TEST(AclCreateTensor, RefusesBadViews) {
  std::vector<float> data(64);
  const int64_t dims[2] = {4, 4};
  const int64_t negative[2] = {4, -1};
  EXPECT_EQ(
      aclCreateTensor(dims, 2, ACL_FLOAT, negative, 0, ACL_FORMAT_ND, nullptr, 0, data.data()),
      nullptr);
  EXPECT_STREQ(aclGetRecentErrMsg(), "tensor: stride 1 must be >= 0, got -1");
  EXPECT_EQ(
      aclCreateTensor(dims, 2, ACL_FLOAT, nullptr, -1, ACL_FORMAT_ND, nullptr, 0, data.data()),
      nullptr);
  EXPECT_EQ(aclCreateTensor(dims, 9, ACL_FLOAT, nullptr, 0, ACL_FORMAT_ND, nullptr, 0, data.data()),
            nullptr);
  // The view must lie within its storage dims: 3 + 16 elements do not fit in 18.
  const int64_t storage = 18;
  EXPECT_EQ(
      aclCreateTensor(dims, 2, ACL_FLOAT, nullptr, 3, ACL_FORMAT_ND, &storage, 1, data.data()),
      nullptr);
  EXPECT_NE(std::string(aclGetRecentErrMsg()).find("reaches storage element 18"), std::string::npos)
      << aclGetRecentErrMsg();
  EXPECT_EQ(aclCreateTensor(dims, 2, ACL_FLOAT, nullptr, 0, ACL_FORMAT_ND, nullptr, 1, data.data()),
            nullptr);
  // Strided: rows 8 apart, offset 2: the last element is 2 + 3 * 8 + 3 = 29.
  const int64_t strides[2] = {8, 1};
  const int64_t storage_dims[2] = {6, 5};
  aclTensor* fits =
      aclCreateTensor(dims, 2, ACL_FLOAT, strides, 2, ACL_FORMAT_ND, storage_dims, 2, data.data());
  EXPECT_NE(fits, nullptr) << aclGetRecentErrMsg();
  EXPECT_EQ(aclDestroyTensor(fits), ACLNN_SUCCESS);
  EXPECT_EQ(aclDestroyTensor(nullptr), ACLNN_SUCCESS);
}

TEST(AclRuntime, InitDevicesStreams) {
  ASSERT_EQ(aclInit(nullptr), ACL_SUCCESS);
  EXPECT_EQ(aclInit(nullptr), ACL_ERROR_REPEAT_INITIALIZE);
  uint32_t count = 0;
  EXPECT_EQ(aclrtGetDeviceCount(&count), ACL_SUCCESS);
  EXPECT_EQ(count, 1u);
  EXPECT_EQ(aclrtGetDeviceCount(nullptr), ACL_ERROR_INVALID_PARAM);
  EXPECT_EQ(aclrtSetDevice(0), ACL_SUCCESS);
  EXPECT_EQ(aclrtSetDevice(1), ACL_ERROR_RT_INVALID_DEVICEID);
  EXPECT_EQ(aclrtResetDevice(-1), ACL_ERROR_RT_INVALID_DEVICEID);
  aclrtStream stream = nullptr;
  EXPECT_EQ(aclrtCreateStream(nullptr), ACL_ERROR_INVALID_PARAM);
  ASSERT_EQ(aclrtCreateStream(&stream), ACL_SUCCESS);
  EXPECT_NE(stream, nullptr);
  EXPECT_EQ(aclrtSynchronizeStream(stream), ACL_SUCCESS);
  EXPECT_EQ(aclrtSynchronizeStream(nullptr), ACL_SUCCESS);
  EXPECT_EQ(aclrtDestroyStream(stream), ACL_SUCCESS);
  EXPECT_EQ(aclrtDestroyStream(nullptr), ACL_ERROR_INVALID_PARAM);
  EXPECT_EQ(aclrtResetDevice(0), ACL_SUCCESS);
  EXPECT_EQ(aclFinalize(), ACL_SUCCESS);
  EXPECT_EQ(aclFinalize(), ACL_ERROR_UNINITIALIZE);
}

TEST(AclRuntime, MemoryIsHostMemory) {
  void* device = nullptr;
  EXPECT_EQ(aclrtMalloc(&device, 0, ACL_MEM_MALLOC_HUGE_FIRST), ACL_ERROR_INVALID_PARAM);
  // 7 is no policy, but within the enum's range: a valid C++ value to pass.
  EXPECT_EQ(aclrtMalloc(&device, 16, static_cast<aclrtMemMallocPolicy>(7)),
            ACL_ERROR_INVALID_PARAM);
  ASSERT_EQ(aclrtMalloc(&device, 100, ACL_MEM_MALLOC_NORMAL_ONLY), ACL_SUCCESS);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(device) % 64, 0u);
  const char text[] = "msda on the host";
  EXPECT_EQ(aclrtMemcpy(device, 100, text, sizeof text, ACL_MEMCPY_HOST_TO_DEVICE), ACL_SUCCESS);
  char back[sizeof text] = {};
  EXPECT_EQ(aclrtMemcpy(back, sizeof back, device, sizeof text, ACL_MEMCPY_DEVICE_TO_HOST),
            ACL_SUCCESS);
  EXPECT_STREQ(back, text);
  EXPECT_EQ(aclrtMemcpy(back, 4, device, sizeof text, ACL_MEMCPY_DEVICE_TO_HOST),
            ACL_ERROR_INVALID_PARAM);
  EXPECT_NE(std::string(aclGetRecentErrMsg()).find("destMax"), std::string::npos);
  EXPECT_EQ(aclrtMemset(device, 100, 0, 100), ACL_SUCCESS);
  EXPECT_EQ(static_cast<unsigned char*>(device)[99], 0);
  EXPECT_EQ(aclrtMemset(device, 100, 0, 101), ACL_ERROR_INVALID_PARAM);
  EXPECT_EQ(aclrtFree(device), ACL_SUCCESS);
  EXPECT_EQ(aclrtFree(nullptr), ACL_ERROR_INVALID_PARAM);
  void* host = nullptr;
  ASSERT_EQ(aclrtMallocHost(&host, 8), ACL_SUCCESS);
  EXPECT_EQ(aclrtFreeHost(host), ACL_SUCCESS);
  EXPECT_EQ(aclDataTypeSize(ACL_BF16), 2u);
  EXPECT_EQ(aclDataTypeSize(ACL_DOUBLE), 8u);
  EXPECT_EQ(aclDataTypeSize(ACL_STRING), 0u);
}

// The enumerators keep CANN's values, so that code built here and data exchanged with a device
// build agree.
TEST(AclHeaders, ValuesAreCanns) {
  EXPECT_EQ(ACL_FLOAT, 0);
  EXPECT_EQ(ACL_FLOAT16, 1);
  EXPECT_EQ(ACL_INT32, 3);
  EXPECT_EQ(ACL_INT64, 9);
  EXPECT_EQ(ACL_DOUBLE, 11);
  EXPECT_EQ(ACL_BF16, 27);
  EXPECT_EQ(ACL_FORMAT_ND, 2);
  EXPECT_EQ(ACL_MEMCPY_DEVICE_TO_HOST, 2);
  EXPECT_EQ(ACL_MEM_MALLOC_HUGE_FIRST, 0);
  EXPECT_EQ(ACLNN_ERR_PARAM_NULLPTR, 161001);
  EXPECT_EQ(ACLNN_ERR_PARAM_INVALID, 161002);
  EXPECT_EQ(ACLNN_ERR_RUNTIME_ERROR, 361001);
  EXPECT_EQ(ACLNN_ERR_INNER, 561000);
}

}  // namespace
}  // namespace msda_test
