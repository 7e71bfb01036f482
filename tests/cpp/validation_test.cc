// Every rule a caller can break is refused at GetWorkspaceSize with its specific status, a
// message naming the tensor, *executor == NULL, *workspaceSize == 0, and no byte of any tensor
// written. Input rules are checked through both the forward and the backward entry points.
#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "msda/msda.h"
#include "reference.h"
#include "tester.h"

// From c_api_test.c: msdaCreateTensor with raw integers for the enums.
extern "C" msdaTensor* msda_test_create_tensor_raw_enums(const int64_t* dims, uint64_t ndim,
                                                         int dtype, int device, void* data);

namespace msda_test {
namespace {

constexpr unsigned char kSentinel = 0xA5;

enum class Direction { kForward, kBackward };

struct Call {
  const msdaTensor* value = nullptr;
  const msdaTensor* shapes = nullptr;
  const msdaTensor* starts = nullptr;
  const msdaTensor* loc = nullptr;
  const msdaTensor* attn = nullptr;
  msdaTensor* out = nullptr;
  const msdaTensor* grad_out = nullptr;
  msdaTensor* grad_value = nullptr;
  msdaTensor* grad_loc = nullptr;
  msdaTensor* grad_attn = nullptr;
};

class Validation : public ::testing::Test {
 protected:
  void SetUp() override {
    p_.batch = 2;
    p_.queries = 3;
    p_.heads = 2;
    p_.dims = 4;
    p_.points = 2;
    p_.levels = {{3, 4}, {2, 2}};  // K = 16
  }

  // A tensor kept alive for the test; storage filled with the sentinel.
  HostTensor* Make(std::vector<int64_t> dims, msdaDataType dtype, const Layout& layout = Layout(),
                   msdaDeviceType device = MSDA_DEVICE_CPU, int32_t device_id = 0) {
    keep_.emplace_back(
        new HostTensor(std::move(dims), dtype, layout, kSentinel, device, device_id));
    return keep_.back().get();
  }
  // spatial_shapes and level_start_index with the given contents.
  HostTensor* Shapes(const std::vector<std::array<int64_t, 2>>& levels,
                     msdaDataType dtype = MSDA_INT64) {
    HostTensor* t = Make({static_cast<int64_t>(levels.size()), 2}, dtype);
    for (size_t l = 0; l < levels.size(); ++l) {
      t->Set(2 * l, static_cast<double>(levels[l][0]));
      t->Set(2 * l + 1, static_cast<double>(levels[l][1]));
    }
    return t;
  }
  HostTensor* Starts(const std::vector<int64_t>& starts, msdaDataType dtype = MSDA_INT64) {
    HostTensor* t = Make({static_cast<int64_t>(starts.size())}, dtype);
    for (size_t l = 0; l < starts.size(); ++l) t->Set(l, static_cast<double>(starts[l]));
    return t;
  }

  // A valid call (value dtype vt, locations lt) on fresh tensors.
  Call Valid(msdaDataType vt = MSDA_FLOAT32, msdaDataType lt = MSDA_FLOAT32) {
    Call c;
    c.value = Make(p_.value_dims(), vt)->get();
    c.shapes = Shapes(p_.levels)->get();
    c.starts = Starts(p_.level_start())->get();
    c.loc = Make(p_.loc_dims(), lt)->get();
    c.attn = Make(p_.attn_dims(), vt)->get();
    c.out = Make(p_.out_dims(), vt)->get();
    c.grad_out = Make(p_.out_dims(), vt)->get();
    c.grad_value = Make(p_.value_dims(), vt)->get();
    c.grad_loc = Make(p_.loc_dims(), lt)->get();
    c.grad_attn = Make(p_.attn_dims(), vt)->get();
    return c;
  }

  std::vector<std::vector<unsigned char>> Snapshot() const {
    std::vector<std::vector<unsigned char>> s;
    for (const auto& t : keep_) s.push_back(t->AllBytes());
    return s;
  }

  msdaStatus Plan(Direction dir, const Call& c, uint64_t* ws, msdaExecutor** ex) {
    return dir == Direction::kForward ? msdaForwardGetWorkspaceSize(c.value, c.shapes, c.starts,
                                                                    c.loc, c.attn, c.out, ws, ex)
                                      : msdaBackwardGetWorkspaceSize(
                                            c.value, c.shapes, c.starts, c.loc, c.attn, c.grad_out,
                                            c.grad_value, c.grad_loc, c.grad_attn, ws, ex);
  }

  // Expects the call refused with `want`, a message containing every entry of `names`, the
  // out-params reset and nothing written.
  void ExpectRefused(Direction dir, const Call& c, msdaStatus want,
                     const std::vector<std::string>& names) {
    const auto before = Snapshot();
    uint64_t ws = 12345;
    int dummy = 0;
    msdaExecutor* ex = reinterpret_cast<msdaExecutor*>(&dummy);
    const msdaStatus s = Plan(dir, c, &ws, &ex);
    const std::string msg = msdaGetLastErrorMessage();
    const char* where = dir == Direction::kForward ? "forward" : "backward";
    EXPECT_EQ(s, want) << where << ": got " << msdaStatusString(s) << " (" << msg << ")";
    if (s == MSDA_SUCCESS) {
      msdaDestroyExecutor(ex);
      return;
    }
    EXPECT_EQ(ex, nullptr) << where << ": *executor not reset on refusal";
    EXPECT_EQ(ws, 0u) << where << ": *workspaceSize not reset on refusal";
    for (const std::string& name : names) {
      EXPECT_NE(msg.find(name), std::string::npos)
          << where << ": message \"" << msg << "\" does not name " << name;
    }
    EXPECT_TRUE(Snapshot() == before) << where << ": a refused call wrote to a tensor";
  }
  // Both directions (the rule is about an input both share).
  void ExpectBothRefused(const std::function<void(Call*)>& mutate, msdaStatus want,
                         const std::vector<std::string>& names) {
    for (Direction dir : {Direction::kForward, Direction::kBackward}) {
      Call c = Valid();
      mutate(&c);
      ExpectRefused(dir, c, want, names);
    }
  }
  void ExpectAccepted(Direction dir, const Call& c) {
    uint64_t ws = 0;
    msdaExecutor* ex = nullptr;
    const msdaStatus s = Plan(dir, c, &ws, &ex);
    EXPECT_EQ(s, MSDA_SUCCESS) << msdaGetLastErrorMessage();
    EXPECT_NE(ex, nullptr);
    EXPECT_STREQ(msdaGetLastErrorMessage(), "");
    msdaDestroyExecutor(ex);
  }

  // Expects both directions planned and run without error (empty tensors need no memory).
  void ExpectPlannedAndRun(const Call& c) {
    for (Direction dir : {Direction::kForward, Direction::kBackward}) {
      uint64_t ws = 0;
      msdaExecutor* ex = nullptr;
      ASSERT_EQ(Plan(dir, c, &ws, &ex), MSDA_SUCCESS) << msdaGetLastErrorMessage();
      Workspace w(ws);
      EXPECT_EQ(dir == Direction::kForward ? msdaForward(w.data(), ws, ex, nullptr)
                                           : msdaBackward(w.data(), ws, ex, nullptr),
                MSDA_SUCCESS)
          << msdaGetLastErrorMessage();
    }
  }
  // A float tensor without data; unit strides where contiguous ones would overflow int64.
  msdaTensor* EmptyTensor(const std::vector<int64_t>& dims, bool unit_strides) {
    const std::vector<int64_t> strides(dims.size(), 1);
    msdaTensor* t =
        msdaCreateTensor(dims.data(), dims.size(), MSDA_FLOAT32,
                         unit_strides ? strides.data() : nullptr, 0, MSDA_DEVICE_CPU, 0, nullptr);
    EXPECT_NE(t, nullptr) << msdaGetLastErrorMessage();
    handles_.emplace_back(t);
    return t;
  }

  Problem p_;
  std::vector<std::unique_ptr<HostTensor>> keep_;
  std::vector<TensorPtr> handles_;  // Views made directly with msdaCreateTensor.
};

TEST_F(Validation, ValidCallsAreAccepted) {
  ExpectAccepted(Direction::kForward, Valid());
  ExpectAccepted(Direction::kBackward, Valid());
  // Every gradient optional.
  Call c = Valid();
  c.grad_value = c.grad_loc = c.grad_attn = nullptr;
  ExpectAccepted(Direction::kBackward, c);
  // INT32 index tensors, mixed with INT64.
  c = Valid();
  c.shapes = Shapes(p_.levels, MSDA_INT32)->get();
  ExpectAccepted(Direction::kForward, c);
  c.starts = Starts(p_.level_start(), MSDA_INT32)->get();
  ExpectAccepted(Direction::kBackward, c);
}

TEST_F(Validation, AcceptedDtypeCombinations) {
  for (msdaDataType vt : {MSDA_FLOAT32, MSDA_FLOAT16, MSDA_BFLOAT16, MSDA_FLOAT64}) {
    for (msdaDataType lt : {vt, MSDA_FLOAT32}) {
      SCOPED_TRACE(std::string(DtypeName(vt)) + " loc " + DtypeName(lt));
      ExpectAccepted(Direction::kForward, Valid(vt, lt));
      ExpectAccepted(Direction::kBackward, Valid(vt, lt));
    }
  }
}

TEST_F(Validation, NullTensors) {
  const struct {
    const char* name;
    std::function<void(Call*)> mutate;
  } inputs[] = {
      {"value", [](Call* c) { c->value = nullptr; }},
      {"spatial_shapes", [](Call* c) { c->shapes = nullptr; }},
      {"level_start_index", [](Call* c) { c->starts = nullptr; }},
      {"sampling_locations", [](Call* c) { c->loc = nullptr; }},
      {"attention_weights", [](Call* c) { c->attn = nullptr; }},
  };
  for (const auto& input : inputs) {
    SCOPED_TRACE(input.name);
    ExpectBothRefused(input.mutate, MSDA_ERROR_NULL_POINTER, {input.name});
  }
  Call c = Valid();
  c.out = nullptr;
  ExpectRefused(Direction::kForward, c, MSDA_ERROR_NULL_POINTER, {"output"});
  c = Valid();
  c.grad_out = nullptr;
  ExpectRefused(Direction::kBackward, c, MSDA_ERROR_NULL_POINTER, {"grad_output"});
}

TEST_F(Validation, NullDataWithElements) {
  auto null_data = [&](const std::vector<int64_t>& dims, msdaDataType dtype) {
    msdaTensor* t =
        msdaCreateTensor(dims.data(), dims.size(), dtype, nullptr, 0, MSDA_DEVICE_CPU, 0, nullptr);
    EXPECT_NE(t, nullptr);
    handles_.emplace_back(t);
    return t;
  };
  ExpectBothRefused([&](Call* c) { c->value = null_data(p_.value_dims(), MSDA_FLOAT32); },
                    MSDA_ERROR_NULL_POINTER, {"value"});
  ExpectBothRefused([&](Call* c) { c->loc = null_data(p_.loc_dims(), MSDA_FLOAT32); },
                    MSDA_ERROR_NULL_POINTER, {"sampling_locations"});
  ExpectBothRefused(
      [&](Call* c) {
        c->shapes = null_data({2, 2}, MSDA_INT64);
      },
      MSDA_ERROR_NULL_POINTER, {"spatial_shapes"});
  Call c = Valid();
  c.out = null_data(p_.out_dims(), MSDA_FLOAT32);
  ExpectRefused(Direction::kForward, c, MSDA_ERROR_NULL_POINTER, {"output"});
  c = Valid();
  c.grad_value = null_data(p_.value_dims(), MSDA_FLOAT32);
  ExpectRefused(Direction::kBackward, c, MSDA_ERROR_NULL_POINTER, {"grad_value"});
  c = Valid();
  c.grad_out = null_data(p_.out_dims(), MSDA_FLOAT32);
  ExpectRefused(Direction::kBackward, c, MSDA_ERROR_NULL_POINTER, {"grad_output"});
}

TEST_F(Validation, NullDataIsFineForEmptyTensors) {
  // Batch 0: value, locations, weights and output have no elements and need no memory.
  p_.batch = 0;
  auto empty = [&](const std::vector<int64_t>& dims) { return EmptyTensor(dims, false); };
  Call c = Valid();
  c.value = empty(p_.value_dims());
  c.loc = empty(p_.loc_dims());
  c.attn = empty(p_.attn_dims());
  c.out = empty(p_.out_dims());
  c.grad_out = empty(p_.out_dims());
  c.grad_value = empty(p_.value_dims());
  c.grad_loc = empty(p_.loc_dims());
  c.grad_attn = empty(p_.attn_dims());
  ExpectPlannedAndRun(c);
}

TEST_F(Validation, EmptyCallsWithHugeSizesArePlannedOrRefusedNotOverflowed) {
  // Batch 0 (or queries 0) makes the tensors empty, so no size check on the tensors stops a
  // point or query count whose products in planning pass int64. Under UBSan an unchecked
  // product is reported as signed overflow.
  auto empty = [&](const std::vector<int64_t>& dims) { return EmptyTensor(dims, true); };
  auto empty_call = [&]() {
    Call c;
    c.shapes = Shapes(p_.levels)->get();
    c.starts = Starts(p_.level_start())->get();
    c.value = empty(p_.value_dims());
    c.loc = empty(p_.loc_dims());
    c.attn = empty(p_.attn_dims());
    c.out = empty(p_.out_dims());
    c.grad_out = empty(p_.out_dims());
    c.grad_value = empty(p_.value_dims());
    c.grad_loc = empty(p_.loc_dims());
    c.grad_attn = empty(p_.attn_dims());
    return c;
  };
  const int64_t kMax = std::numeric_limits<int64_t>::max();
  const int64_t huge_counts[][2] = {{int64_t{1} << 61, 3},  // points, queries
                                    {(int64_t{1} << 62) + 1, 3}, {kMax, 3}, {int64_t{1} << 59, 3},
                                    {int64_t{1} << 59, kMax},    {2, 4096}, {2, kMax}};
  // No batch item: nothing to do, so planned with no workspace (and no head-major copy of an
  // empty value) and run.
  p_.batch = 0;
  for (const auto& counts : huge_counts) {
    p_.points = counts[0];
    p_.queries = counts[1];
    SCOPED_TRACE("points " + std::to_string(counts[0]) + ", queries " + std::to_string(counts[1]));
    const Call c = empty_call();
    for (Direction dir : {Direction::kForward, Direction::kBackward}) {
      uint64_t ws = 1;
      msdaExecutor* ex = nullptr;
      ASSERT_EQ(Plan(dir, c, &ws, &ex), MSDA_SUCCESS) << msdaGetLastErrorMessage();
      EXPECT_EQ(ws, 0u);
      EXPECT_EQ(dir == Direction::kForward ? msdaForward(nullptr, 0, ex, nullptr)
                                           : msdaBackward(nullptr, 0, ex, nullptr),
                MSDA_SUCCESS)
          << msdaGetLastErrorMessage();
    }
  }
  // One batch item and no query: the forward has nothing to do; the backward zeroes
  // grad_value but plans its per-query buffers for a point count past int64, and refuses it.
  p_.batch = 1;
  p_.queries = 0;
  for (int64_t points : {int64_t{1} << 61, kMax}) {
    p_.points = points;
    SCOPED_TRACE("points " + std::to_string(points));
    Call c = empty_call();
    c.value = Make(p_.value_dims(), MSDA_FLOAT32)->get();
    c.grad_value = Make(p_.value_dims(), MSDA_FLOAT32)->get();
    uint64_t ws = 1;
    msdaExecutor* ex = nullptr;
    ASSERT_EQ(Plan(Direction::kForward, c, &ws, &ex), MSDA_SUCCESS) << msdaGetLastErrorMessage();
    EXPECT_EQ(ws, 0u);
    EXPECT_EQ(msdaForward(nullptr, 0, ex, nullptr), MSDA_SUCCESS) << msdaGetLastErrorMessage();
    ExpectRefused(Direction::kBackward, c, MSDA_ERROR_LIMIT_EXCEEDED, {"workspace"});
  }
}

TEST_F(Validation, NullOutParams) {
  for (Direction dir : {Direction::kForward, Direction::kBackward}) {
    const Call c = Valid();
    uint64_t ws = 0;
    msdaExecutor* ex = nullptr;
    EXPECT_EQ(Plan(dir, c, nullptr, &ex), MSDA_ERROR_NULL_POINTER);
    EXPECT_NE(std::string(msdaGetLastErrorMessage()).find("workspaceSize"), std::string::npos)
        << msdaGetLastErrorMessage();
    EXPECT_EQ(ex, nullptr);
    EXPECT_EQ(Plan(dir, c, &ws, nullptr), MSDA_ERROR_NULL_POINTER);
    EXPECT_NE(std::string(msdaGetLastErrorMessage()).find("executor"), std::string::npos)
        << msdaGetLastErrorMessage();
  }
}

TEST_F(Validation, WrongRanks) {
  const int64_t B = p_.batch, Q = p_.queries, H = p_.heads, D = p_.dims, P = p_.points;
  const int64_t K = p_.keys(), L = p_.num_levels();
  ExpectBothRefused(
      [&](Call* c) {
        c->value = Make({B, K, H * D}, MSDA_FLOAT32)->get();
      },
      MSDA_ERROR_INVALID_RANK, {"value"});
  ExpectBothRefused([&](Call* c) { c->shapes = Make({2 * L}, MSDA_INT64)->get(); },
                    MSDA_ERROR_INVALID_RANK, {"spatial_shapes"});
  ExpectBothRefused(
      [&](Call* c) {
        c->starts = Make({L, 1}, MSDA_INT64)->get();
      },
      MSDA_ERROR_INVALID_RANK, {"level_start_index"});
  ExpectBothRefused(
      [&](Call* c) {
        c->loc = Make({B, Q, H, L, P * 2}, MSDA_FLOAT32)->get();
      },
      MSDA_ERROR_INVALID_RANK, {"sampling_locations"});
  ExpectBothRefused(
      [&](Call* c) {
        c->attn = Make({B, Q, H, L * P}, MSDA_FLOAT32)->get();
      },
      MSDA_ERROR_INVALID_RANK, {"attention_weights"});
  Call c = Valid();
  c.out = Make({B, Q * H * D}, MSDA_FLOAT32)->get();
  ExpectRefused(Direction::kForward, c, MSDA_ERROR_INVALID_RANK, {"output"});
  c = Valid();
  c.grad_out = Make({B, Q, H, D}, MSDA_FLOAT32)->get();
  ExpectRefused(Direction::kBackward, c, MSDA_ERROR_INVALID_RANK, {"grad_output"});
  c = Valid();
  c.grad_value = Make({B, K, H * D}, MSDA_FLOAT32)->get();
  ExpectRefused(Direction::kBackward, c, MSDA_ERROR_INVALID_RANK, {"grad_value"});
  c = Valid();
  c.grad_loc = Make({B, Q, H, L, P * 2}, MSDA_FLOAT32)->get();
  ExpectRefused(Direction::kBackward, c, MSDA_ERROR_INVALID_RANK, {"grad_sampling_locations"});
  c = Valid();
  c.grad_attn = Make({B, Q, H, L, P, 1}, MSDA_FLOAT32)->get();
  ExpectRefused(Direction::kBackward, c, MSDA_ERROR_INVALID_RANK, {"grad_attention_weights"});
}

TEST_F(Validation, MismatchedDims) {
  const int64_t B = p_.batch, Q = p_.queries, H = p_.heads, D = p_.dims, P = p_.points;
  const int64_t K = p_.keys(), L = p_.num_levels();
  const msdaDataType f = MSDA_FLOAT32;
  const struct {
    const char* what;
    const char* name;
    std::function<void(Call*)> mutate;
  } cases[] = {
      {"locations batch", "sampling_locations",
       [&](Call* c) {
         c->loc = Make({B + 1, Q, H, L, P, 2}, f)->get();
       }},
      {"locations heads", "sampling_locations",
       [&](Call* c) {
         c->loc = Make({B, Q, H + 1, L, P, 2}, f)->get();
       }},
      {"locations levels", "sampling_locations",
       [&](Call* c) {
         c->loc = Make({B, Q, H, L + 1, P, 2}, f)->get();
       }},
      {"locations last dim 3", "sampling_locations",
       [&](Call* c) {
         c->loc = Make({B, Q, H, L, P, 3}, f)->get();
       }},
      {"locations last dim 1", "sampling_locations",
       [&](Call* c) {
         c->loc = Make({B, Q, H, L, P, 1}, f)->get();
       }},
      {"weights batch", "attention_weights",
       [&](Call* c) {
         c->attn = Make({B + 1, Q, H, L, P}, f)->get();
       }},
      {"weights queries", "attention_weights",
       [&](Call* c) {
         c->attn = Make({B, Q + 1, H, L, P}, f)->get();
       }},
      {"weights heads", "attention_weights",
       [&](Call* c) {
         c->attn = Make({B, Q, H - 1, L, P}, f)->get();
       }},
      {"weights levels", "attention_weights",
       [&](Call* c) {
         c->attn = Make({B, Q, H, L + 1, P}, f)->get();
       }},
      {"weights points", "attention_weights",
       [&](Call* c) {
         c->attn = Make({B, Q, H, L, P + 1}, f)->get();
       }},
      {"spatial_shapes [L, 3]", "spatial_shapes",
       [&](Call* c) {
         c->shapes = Make({L, 3}, MSDA_INT64)->get();
       }},
      {"level_start_index [L + 1]", "level_start_index",
       [&](Call* c) {
         c->starts = Starts({0, 12, 16})->get();
       }},
      {"zero heads", "value",
       [&](Call* c) {
         c->value = Make({B, K, 0, D}, f)->get();
       }},
      {"zero embed dims", "value",
       [&](Call* c) {
         c->value = Make({B, K, H, 0}, f)->get();
       }},
      {"zero points", "sampling_locations",
       [&](Call* c) {
         c->loc = Make({B, Q, H, L, 0, 2}, f)->get();
         c->attn = Make({B, Q, H, L, 0}, f)->get();
       }},
  };
  for (const auto& k : cases) {
    SCOPED_TRACE(k.what);
    ExpectBothRefused(k.mutate, MSDA_ERROR_SHAPE_MISMATCH, {k.name});
  }
  // No levels at all.
  ExpectBothRefused(
      [&](Call* c) {
        c->shapes = Make({0, 2}, MSDA_INT64)->get();
        c->starts = Make({0}, MSDA_INT64)->get();
        c->loc = Make({B, Q, H, 0, P, 2}, f)->get();
        c->attn = Make({B, Q, H, 0, P}, f)->get();
      },
      MSDA_ERROR_SHAPE_MISMATCH, {"spatial_shapes"});

  const struct {
    const char* what;
    const char* name;
    Direction dir;
    std::function<void(Call*)> mutate;
  } outputs[] = {
      {"output channels H*D + 1", "output", Direction::kForward,
       [&](Call* c) {
         c->out = Make({B, Q, H * D + 1}, f)->get();
       }},
      {"output channels D", "output", Direction::kForward,
       [&](Call* c) {
         c->out = Make({B, Q, D}, f)->get();
       }},
      {"output queries", "output", Direction::kForward,
       [&](Call* c) {
         c->out = Make({B, Q + 1, H * D}, f)->get();
       }},
      {"output batch", "output", Direction::kForward,
       [&](Call* c) {
         c->out = Make({B + 1, Q, H * D}, f)->get();
       }},
      {"grad_output channels", "grad_output", Direction::kBackward,
       [&](Call* c) {
         c->grad_out = Make({B, Q, H * D - 1}, f)->get();
       }},
      {"grad_output queries", "grad_output", Direction::kBackward,
       [&](Call* c) {
         c->grad_out = Make({B, Q - 1, H * D}, f)->get();
       }},
      {"grad_value keys", "grad_value", Direction::kBackward,
       [&](Call* c) {
         c->grad_value = Make({B, K + 1, H, D}, f)->get();
       }},
      {"grad_value dims", "grad_value", Direction::kBackward,
       [&](Call* c) {
         c->grad_value = Make({B, K, H, D + 1}, f)->get();
       }},
      {"grad_sampling_locations points", "grad_sampling_locations", Direction::kBackward,
       [&](Call* c) {
         c->grad_loc = Make({B, Q, H, L, P + 1, 2}, f)->get();
       }},
      {"grad_sampling_locations last dim", "grad_sampling_locations", Direction::kBackward,
       [&](Call* c) {
         c->grad_loc = Make({B, Q, H, L, P, 1}, f)->get();
       }},
      {"grad_attention_weights points", "grad_attention_weights", Direction::kBackward,
       [&](Call* c) {
         c->grad_attn = Make({B, Q, H, L, P - 1}, f)->get();
       }},
      {"grad_attention_weights batch", "grad_attention_weights", Direction::kBackward,
       [&](Call* c) {
         c->grad_attn = Make({B + 1, Q, H, L, P}, f)->get();
       }},
  };
  for (const auto& k : outputs) {
    SCOPED_TRACE(k.what);
    Call c = Valid();
    k.mutate(&c);
    ExpectRefused(k.dir, c, MSDA_ERROR_SHAPE_MISMATCH, {k.name});
  }
}

TEST_F(Validation, BadDtypes) {
  const msdaDataType f32 = MSDA_FLOAT32;
  ExpectBothRefused([&](Call* c) { c->value = Make(p_.value_dims(), MSDA_INT32)->get(); },
                    MSDA_ERROR_INVALID_DTYPE, {"value"});
  ExpectBothRefused([&](Call* c) { c->value = Make(p_.value_dims(), MSDA_INT64)->get(); },
                    MSDA_ERROR_INVALID_DTYPE, {"value"});
  ExpectBothRefused(
      [&](Call* c) {
        c->shapes = Make({2, 2}, f32)->get();
      },
      MSDA_ERROR_INVALID_DTYPE, {"spatial_shapes"});
  ExpectBothRefused([&](Call* c) { c->starts = Make({2}, MSDA_FLOAT64)->get(); },
                    MSDA_ERROR_INVALID_DTYPE, {"level_start_index"});
  // Locations: value's dtype or FLOAT32, nothing else.
  const struct {
    msdaDataType value, loc;
  } bad_locs[] = {
      {MSDA_FLOAT32, MSDA_FLOAT16},  {MSDA_FLOAT32, MSDA_BFLOAT16}, {MSDA_FLOAT32, MSDA_FLOAT64},
      {MSDA_FLOAT16, MSDA_BFLOAT16}, {MSDA_FLOAT16, MSDA_FLOAT64},  {MSDA_BFLOAT16, MSDA_FLOAT16},
      {MSDA_FLOAT64, MSDA_FLOAT16},  {MSDA_FLOAT32, MSDA_INT32},
  };
  for (const auto& k : bad_locs) {
    SCOPED_TRACE(std::string("value ") + DtypeName(k.value) + " loc " + DtypeName(k.loc));
    for (Direction dir : {Direction::kForward, Direction::kBackward}) {
      Call c = Valid(k.value, k.value);
      c.loc = Make(p_.loc_dims(), k.loc)->get();
      c.grad_loc = nullptr;
      ExpectRefused(dir, c, MSDA_ERROR_INVALID_DTYPE, {"sampling_locations"});
    }
  }
  // Weights, output and value-shaped gradients: exactly value's dtype.
  ExpectBothRefused([&](Call* c) { c->attn = Make(p_.attn_dims(), MSDA_FLOAT16)->get(); },
                    MSDA_ERROR_INVALID_DTYPE, {"attention_weights"});
  Call c = Valid();
  c.out = Make(p_.out_dims(), MSDA_FLOAT64)->get();
  ExpectRefused(Direction::kForward, c, MSDA_ERROR_INVALID_DTYPE, {"output"});
  c = Valid(MSDA_BFLOAT16);
  c.out = Make(p_.out_dims(), MSDA_FLOAT16)->get();
  ExpectRefused(Direction::kForward, c, MSDA_ERROR_INVALID_DTYPE, {"output"});
  c = Valid();
  c.grad_out = Make(p_.out_dims(), MSDA_FLOAT16)->get();
  ExpectRefused(Direction::kBackward, c, MSDA_ERROR_INVALID_DTYPE, {"grad_output"});
  c = Valid();
  c.grad_value = Make(p_.value_dims(), MSDA_BFLOAT16)->get();
  ExpectRefused(Direction::kBackward, c, MSDA_ERROR_INVALID_DTYPE, {"grad_value"});
  c = Valid();
  c.grad_attn = Make(p_.attn_dims(), MSDA_FLOAT64)->get();
  ExpectRefused(Direction::kBackward, c, MSDA_ERROR_INVALID_DTYPE, {"grad_attention_weights"});
  // grad_sampling_locations follows the locations' dtype, not value's.
  c = Valid(MSDA_FLOAT16, MSDA_FLOAT32);
  c.grad_loc = Make(p_.loc_dims(), MSDA_FLOAT16)->get();
  ExpectRefused(Direction::kBackward, c, MSDA_ERROR_INVALID_DTYPE, {"grad_sampling_locations"});
  c = Valid(MSDA_BFLOAT16, MSDA_BFLOAT16);
  c.grad_loc = Make(p_.loc_dims(), MSDA_FLOAT32)->get();
  ExpectRefused(Direction::kBackward, c, MSDA_ERROR_INVALID_DTYPE, {"grad_sampling_locations"});
  c = Valid(MSDA_FLOAT16, MSDA_FLOAT32);
  ExpectAccepted(Direction::kBackward, c);
}

TEST_F(Validation, Devices) {
  const msdaDataType f = MSDA_FLOAT32;
  ExpectBothRefused(
      [&](Call* c) { c->value = Make(p_.value_dims(), f, Layout(), MSDA_DEVICE_CUDA)->get(); },
      MSDA_ERROR_INVALID_DEVICE, {"value", "CUDA"});
  ExpectBothRefused(
      [&](Call* c) { c->loc = Make(p_.loc_dims(), f, Layout(), MSDA_DEVICE_CUDA)->get(); },
      MSDA_ERROR_INVALID_DEVICE, {"sampling_locations"});
  ExpectBothRefused(
      [&](Call* c) {
        c->shapes = Make({2, 2}, MSDA_INT64, Layout(), MSDA_DEVICE_CUDA)->get();
      },
      MSDA_ERROR_INVALID_DEVICE, {"spatial_shapes"});
  // A device id other than value's.
  ExpectBothRefused(
      [&](Call* c) { c->attn = Make(p_.attn_dims(), f, Layout(), MSDA_DEVICE_CPU, 1)->get(); },
      MSDA_ERROR_INVALID_DEVICE, {"attention_weights"});
  Call c = Valid();
  c.out = Make(p_.out_dims(), f, Layout(), MSDA_DEVICE_CUDA)->get();
  ExpectRefused(Direction::kForward, c, MSDA_ERROR_INVALID_DEVICE, {"output"});
  c = Valid();
  c.grad_attn = Make(p_.attn_dims(), f, Layout(), MSDA_DEVICE_CUDA)->get();
  ExpectRefused(Direction::kBackward, c, MSDA_ERROR_INVALID_DEVICE, {"grad_attention_weights"});
  c = Valid();
  c.grad_out = Make(p_.out_dims(), f, Layout(), MSDA_DEVICE_CUDA)->get();
  ExpectRefused(Direction::kBackward, c, MSDA_ERROR_INVALID_DEVICE, {"grad_output"});
}

TEST_F(Validation, CreateTensorRefusesBadLayouts) {
  float data[64];
  const int64_t dims[3] = {2, 3, 4};
  const struct {
    const char* what;
    const int64_t* dims;
    uint64_t ndim;
    msdaDataType dtype;
    std::vector<int64_t> strides;
    int64_t offset;
    const char* word;
    msdaStatus status;
  } cases[] = {
      {"negative stride",
       dims,
       3,
       MSDA_FLOAT32,
       {12, -4, 1},
       0,
       "stride",
       MSDA_ERROR_INVALID_LAYOUT},
      {"negative offset", dims, 3, MSDA_FLOAT32, {}, -1, "offset", MSDA_ERROR_INVALID_LAYOUT},
      {"too many dims", dims, 9, MSDA_FLOAT32, {}, 0, "ndim", MSDA_ERROR_INVALID_RANK},
      {"dims NULL", nullptr, 3, MSDA_FLOAT32, {}, 0, "dims", MSDA_ERROR_NULL_POINTER},
  };
  for (const auto& k : cases) {
    SCOPED_TRACE(k.what);
    msdaTensor* t =
        msdaCreateTensor(k.dims, k.ndim, k.dtype, k.strides.empty() ? nullptr : k.strides.data(),
                         k.offset, MSDA_DEVICE_CPU, 0, data);
    EXPECT_EQ(t, nullptr);
    EXPECT_NE(std::string(msdaGetLastErrorMessage()).find(k.word), std::string::npos)
        << msdaGetLastErrorMessage();
    // The NULL says which rule through the last status as well.
    EXPECT_EQ(msdaGetLastErrorStatus(), k.status) << msdaStatusString(msdaGetLastErrorStatus());
    msdaDestroyTensor(t);
    EXPECT_EQ(msdaGetLastErrorStatus(), MSDA_SUCCESS);  // Every call starts afresh.
  }
  // Integers that are no dtype or device enumerator (CUDA views can be made; they are
  // refused at planning).
  for (int dtype : {-1, 6, 42}) {
    EXPECT_EQ(msda_test_create_tensor_raw_enums(dims, 3, dtype, MSDA_DEVICE_CPU, data), nullptr);
    EXPECT_NE(std::string(msdaGetLastErrorMessage()).find("dtype"), std::string::npos)
        << msdaGetLastErrorMessage();
  }
  for (int device : {-1, 2, 7}) {
    EXPECT_EQ(msda_test_create_tensor_raw_enums(dims, 3, MSDA_FLOAT32, device, data), nullptr);
    EXPECT_NE(std::string(msdaGetLastErrorMessage()).find("device"), std::string::npos)
        << msdaGetLastErrorMessage();
  }
  const int64_t negative[3] = {2, -3, 4};
  EXPECT_EQ(msdaCreateTensor(negative, 3, MSDA_FLOAT32, nullptr, 0, MSDA_DEVICE_CPU, 0, data),
            nullptr);
  EXPECT_NE(std::string(msdaGetLastErrorMessage()).find("dim"), std::string::npos);
  // Zero strides, zero dims and rank 0 are all valid views.
  const int64_t zero_strides[3] = {0, 0, 0};
  msdaTensor* t =
      msdaCreateTensor(dims, 3, MSDA_FLOAT32, zero_strides, 5, MSDA_DEVICE_CPU, 0, data);
  EXPECT_NE(t, nullptr) << msdaGetLastErrorMessage();
  EXPECT_STREQ(msdaGetLastErrorMessage(), "");
  msdaDestroyTensor(t);
  t = msdaCreateTensor(nullptr, 0, MSDA_FLOAT32, nullptr, 0, MSDA_DEVICE_CPU, 0, data);
  EXPECT_NE(t, nullptr) << msdaGetLastErrorMessage();
  msdaDestroyTensor(t);
  EXPECT_EQ(msdaDestroyTensor(nullptr), MSDA_SUCCESS);
}

TEST_F(Validation, OutputsMustNotOverlapInputsOrEachOther) {
  const int64_t B = p_.batch, Q = p_.queries, H = p_.heads, D = p_.dims;
  // A view of `count` FLOAT32 elements laid out row-major at `data`.
  auto view = [&](const std::vector<int64_t>& dims, void* data, int64_t offset = 0,
                  const int64_t* strides = nullptr) {
    msdaTensor* t = msdaCreateTensor(dims.data(), dims.size(), MSDA_FLOAT32, strides, offset,
                                     MSDA_DEVICE_CPU, 0, data);
    EXPECT_NE(t, nullptr);
    handles_.emplace_back(t);
    return t;
  };
  // Output on top of value, of the locations (partially: from their middle) and of the
  // weights. Every view lies inside one buffer, so that it overlaps nothing else.
  HostTensor* value = Make(p_.value_dims(), MSDA_FLOAT32);
  const int64_t n_loc = NumElements(p_.loc_dims()), n_out = NumElements(p_.out_dims());
  const int64_t n_attn = NumElements(p_.attn_dims());
  Call c = Valid();
  c.value = value->get();
  c.out = view(p_.out_dims(), value->data());
  ExpectRefused(Direction::kForward, c, MSDA_ERROR_INVALID_LAYOUT, {"output", "value"});
  HostTensor* loc_buffer = Make({n_loc + n_out}, MSDA_FLOAT32);
  c = Valid();
  c.loc = view(p_.loc_dims(), loc_buffer->data());
  c.out = view(p_.out_dims(), loc_buffer->data(), n_loc - 5);
  ExpectRefused(Direction::kForward, c, MSDA_ERROR_INVALID_LAYOUT,
                {"output", "sampling_locations"});
  HostTensor* attn_buffer = Make({n_attn + n_out}, MSDA_FLOAT32);
  c = Valid();
  c.attn = view(p_.attn_dims(), attn_buffer->data());
  c.out = view(p_.out_dims(), attn_buffer->data(), 3);
  ExpectRefused(Direction::kForward, c, MSDA_ERROR_INVALID_LAYOUT, {"output", "attention_weights"});
  // An output that overlaps itself: a zero stride, or rows closer than their length.
  const int64_t zero_channel[3] = {Q * H * D, H * D, 0};
  c = Valid();
  c.out = view(p_.out_dims(), Make({B * Q * H * D}, MSDA_FLOAT32)->data(), 0, zero_channel);
  ExpectRefused(Direction::kForward, c, MSDA_ERROR_INVALID_LAYOUT, {"output"});
  const int64_t short_rows[3] = {Q * H * D, H * D - 1, 1};
  c = Valid();
  c.out = view(p_.out_dims(), Make({B * Q * H * D}, MSDA_FLOAT32)->data(), 0, short_rows);
  ExpectRefused(Direction::kForward, c, MSDA_ERROR_INVALID_LAYOUT, {"output"});
  // Gradients: on grad_output, on another gradient, on value, and overlapping themselves.
  HostTensor* grad_out = Make(p_.out_dims(), MSDA_FLOAT32);
  c = Valid();
  c.grad_out = grad_out->get();
  c.grad_attn = view(p_.attn_dims(), grad_out->data());
  ExpectRefused(Direction::kBackward, c, MSDA_ERROR_INVALID_LAYOUT,
                {"grad_attention_weights", "grad_output"});
  HostTensor* grads_buffer = Make({n_attn + n_loc + 4}, MSDA_FLOAT32);
  c = Valid();
  c.grad_attn = view(p_.attn_dims(), grads_buffer->data());
  c.grad_loc = view(p_.loc_dims(), grads_buffer->data(), 4);
  ExpectRefused(Direction::kBackward, c, MSDA_ERROR_INVALID_LAYOUT,
                {"grad_sampling_locations", "grad_attention_weights"});
  c = Valid();
  c.value = value->get();
  c.grad_value = view(p_.value_dims(), value->data());
  ExpectRefused(Direction::kBackward, c, MSDA_ERROR_INVALID_LAYOUT, {"grad_value"});
  const int64_t zero_batch[4] = {0, p_.heads * p_.dims, p_.dims, 1};
  c = Valid();
  c.grad_value =
      view(p_.value_dims(), Make({p_.keys() * H * D}, MSDA_FLOAT32)->data(), 0, zero_batch);
  ExpectRefused(Direction::kBackward, c, MSDA_ERROR_INVALID_LAYOUT, {"grad_value"});
}

TEST_F(Validation, InputsMayOverlap) {
  // Inputs are only read: value broadcast over the batch (stride 0), and locations and
  // weights sharing one buffer, are fine.
  const int64_t zero_batch[4] = {0, p_.heads * p_.dims, p_.dims, 1};
  HostTensor* shared = Make({NumElements(p_.loc_dims())}, MSDA_FLOAT32);
  Call c = Valid();
  c.value =
      Make(p_.value_dims(), MSDA_FLOAT32, Strided(std::vector<int64_t>(zero_batch, zero_batch + 4)))
          ->get();
  c.loc = shared->get();
  msdaTensor* loc = msdaCreateTensor(p_.loc_dims().data(), 6, MSDA_FLOAT32, nullptr, 0,
                                     MSDA_DEVICE_CPU, 0, shared->data());
  msdaTensor* attn = msdaCreateTensor(p_.attn_dims().data(), 5, MSDA_FLOAT32, nullptr, 0,
                                      MSDA_DEVICE_CPU, 0, shared->data());
  handles_.emplace_back(loc);
  handles_.emplace_back(attn);
  c.loc = loc;
  c.attn = attn;
  ExpectAccepted(Direction::kForward, c);
  ExpectAccepted(Direction::kBackward, c);
}

TEST_F(Validation, LevelTableContents) {
  const int64_t B = p_.batch, H = p_.heads, D = p_.dims;
  const int64_t K = p_.keys();
  // A level of height 0, or a negative width.
  ExpectBothRefused(
      [&](Call* c) {
        c->shapes = Shapes({{0, 4}, {2, 2}})->get();
      },
      MSDA_ERROR_INVALID_VALUE, {"spatial_shapes"});
  ExpectBothRefused(
      [&](Call* c) {
        c->shapes = Shapes({{3, 4}, {2, -2}})->get();
      },
      MSDA_ERROR_INVALID_VALUE, {"spatial_shapes"});
  // level_start_index not the prefix sums.
  ExpectBothRefused(
      [&](Call* c) {
        c->starts = Starts({0, 11})->get();
      },
      MSDA_ERROR_INVALID_VALUE, {"level_start_index"});
  ExpectBothRefused(
      [&](Call* c) {
        c->starts = Starts({1, 13})->get();
      },
      MSDA_ERROR_INVALID_VALUE, {"level_start_index"});
  // (The right prefix sums in INT32 are accepted.)
  ExpectBothRefused(
      [&](Call* c) {
        c->starts = Starts({0, 12}, MSDA_INT32)->get();
      },
      MSDA_SUCCESS, {});
  // The levels' areas do not add up to value's keys.
  for (Direction dir : {Direction::kForward, Direction::kBackward}) {
    Call c = Valid();
    c.value = Make({B, K + 1, H, D}, MSDA_FLOAT32)->get();
    c.grad_value = Make({B, K + 1, H, D}, MSDA_FLOAT32)->get();
    ExpectRefused(dir, c, MSDA_ERROR_INVALID_VALUE, {"spatial_shapes"});
    c.shapes = Shapes({{3, 4}, {1, 3}})->get();
    ExpectRefused(dir, c, MSDA_ERROR_INVALID_VALUE, {"spatial_shapes"});
  }
  // Areas that overflow int64.
  ExpectBothRefused(
      [&](Call* c) {
        c->shapes = Shapes({{int64_t{1} << 32, int64_t{1} << 32}, {2, 2}})->get();
      },
      MSDA_ERROR_LIMIT_EXCEEDED, {"spatial_shapes"});
}

TEST_F(Validation, SizesPastInt64) {
  // An output stride whose byte span overflows int64.
  const int64_t huge[3] = {std::numeric_limits<int64_t>::max() / 2, p_.heads * p_.dims, 1};
  HostTensor* storage = Make({p_.queries * p_.heads * p_.dims}, MSDA_FLOAT32);
  msdaTensor* out = msdaCreateTensor(p_.out_dims().data(), 3, MSDA_FLOAT32, huge, 0,
                                     MSDA_DEVICE_CPU, 0, storage->data());
  ASSERT_NE(out, nullptr);
  handles_.emplace_back(out);
  Call c = Valid();
  c.out = out;
  ExpectRefused(Direction::kForward, c, MSDA_ERROR_LIMIT_EXCEEDED, {"output"});
}

TEST_F(Validation, ErrorMessageIsClearedBySuccessAndIsThreadLocal) {
  Call bad = Valid();
  bad.value = nullptr;
  ExpectRefused(Direction::kForward, bad, MSDA_ERROR_NULL_POINTER, {"value"});
  std::string other_thread = "unset";
  std::thread([&] { other_thread = msdaGetLastErrorMessage(); }).join();
  EXPECT_EQ(other_thread, "");
  EXPECT_NE(std::string(msdaGetLastErrorMessage()), "");
  ExpectAccepted(Direction::kForward, Valid());
}

}  // namespace
}  // namespace msda_test
