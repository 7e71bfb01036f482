// Many caller threads, each with its own executors and thread count, running at the same time
// on shared read-only inputs: every result is bitwise the result of a single-threaded run.
// scripts/sanitize.sh thread runs this under TSan.
#include <gtest/gtest.h>
#include <msda/msda.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

namespace {

struct Problem {
  int64_t B = 2, Q = 120, H = 4, L = 2, P = 3, D = 12;
  std::vector<int64_t> shapes = {9, 11, 4, 5}, starts = {0, 99};
  int64_t K = 119;
  std::vector<float> value, loc, attn, grad_out;
  Problem() {
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f), l(-0.1f, 1.1f);
    value.resize(B * K * H * D);
    loc.resize(B * Q * H * L * P * 2);
    attn.resize(B * Q * H * L * P);
    grad_out.resize(B * Q * H * D);
    for (float& v : value) v = u(rng);
    for (float& v : loc) v = l(rng);
    for (float& v : attn) v = u(rng);
    for (float& v : grad_out) v = u(rng);
  }
};

struct Results {
  std::vector<float> out, grad_value, grad_loc, grad_attn;
  bool operator==(const Results& o) const {
    auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
      return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
    };
    return same(out, o.out) && same(grad_value, o.grad_value) && same(grad_loc, o.grad_loc) &&
           same(grad_attn, o.grad_attn);
  }
};

// Runs forward and backward with this thread's thread count; false on any failure.
bool RunBoth(const Problem& pr, Results* r) {
  Problem& p = const_cast<Problem&>(pr);  // Inputs are only read; the API takes void*.
  r->out.assign(p.B * p.Q * p.H * p.D, 0.0f);
  r->grad_value.assign(p.value.size(), 0.0f);
  r->grad_loc.assign(p.loc.size(), 0.0f);
  r->grad_attn.assign(p.attn.size(), 0.0f);
  auto make = [](std::vector<int64_t> dims, msdaDataType t, void* data) {
    return msdaCreateTensor(dims.data(), dims.size(), t, nullptr, 0, MSDA_DEVICE_CPU, 0, data);
  };
  msdaTensor* value = make({p.B, p.K, p.H, p.D}, MSDA_FLOAT32, p.value.data());
  msdaTensor* shapes = make({p.L, 2}, MSDA_INT64, p.shapes.data());
  msdaTensor* starts = make({p.L}, MSDA_INT64, p.starts.data());
  msdaTensor* loc = make({p.B, p.Q, p.H, p.L, p.P, 2}, MSDA_FLOAT32, p.loc.data());
  msdaTensor* attn = make({p.B, p.Q, p.H, p.L, p.P}, MSDA_FLOAT32, p.attn.data());
  msdaTensor* out = make({p.B, p.Q, p.H * p.D}, MSDA_FLOAT32, r->out.data());
  msdaTensor* grad_out = make({p.B, p.Q, p.H * p.D}, MSDA_FLOAT32, p.grad_out.data());
  msdaTensor* grad_value = make({p.B, p.K, p.H, p.D}, MSDA_FLOAT32, r->grad_value.data());
  msdaTensor* grad_loc = make({p.B, p.Q, p.H, p.L, p.P, 2}, MSDA_FLOAT32, r->grad_loc.data());
  msdaTensor* grad_attn = make({p.B, p.Q, p.H, p.L, p.P}, MSDA_FLOAT32, r->grad_attn.data());
  bool ok = true;
  uint64_t size = 0;
  msdaExecutor* e = nullptr;
  std::vector<unsigned char> workspace;
  ok = ok && msdaForwardGetWorkspaceSize(value, shapes, starts, loc, attn, out, &size, &e) ==
                 MSDA_SUCCESS;
  if (ok) {
    workspace.assign(size, 0xCD);
    ok = msdaForward(workspace.data(), size, e, nullptr) == MSDA_SUCCESS;
  }
  ok = ok && msdaBackwardGetWorkspaceSize(value, shapes, starts, loc, attn, grad_out, grad_value,
                                          grad_loc, grad_attn, &size, &e) == MSDA_SUCCESS;
  if (ok) {
    workspace.assign(size, 0xCD);
    ok = msdaBackward(workspace.data(), size, e, nullptr) == MSDA_SUCCESS;
  }
  for (msdaTensor* t :
       {value, shapes, starts, loc, attn, out, grad_out, grad_value, grad_loc, grad_attn}) {
    msdaDestroyTensor(t);
  }
  return ok;
}

TEST(Concurrency, ManyCallersMatchOneThreadBitwise) {
  const Problem problem;
  ASSERT_EQ(msdaSetNumThreads(1), MSDA_SUCCESS);
  Results baseline;
  ASSERT_TRUE(RunBoth(problem, &baseline)) << msdaGetLastErrorMessage();
  ASSERT_EQ(msdaSetNumThreads(0), MSDA_SUCCESS);

  constexpr int kCallers = 8, kRounds = 4;
  std::vector<int> mismatches(kCallers, 0), failures(kCallers, 0);
  std::vector<std::thread> callers;
  for (int i = 0; i < kCallers; ++i) {
    callers.emplace_back([&, i] {
      msdaSetNumThreads(1 + i % 3);  // Thread-local: 1, 2 or 3 workers per caller.
      for (int round = 0; round < kRounds; ++round) {
        Results r;
        if (!RunBoth(problem, &r)) {
          ++failures[i];
        } else if (!(r == baseline)) {
          ++mismatches[i];
        }
      }
    });
  }
  for (std::thread& c : callers) c.join();
  for (int i = 0; i < kCallers; ++i) {
    EXPECT_EQ(failures[i], 0) << "caller " << i;
    EXPECT_EQ(mismatches[i], 0) << "caller " << i;
  }
}

}  // namespace
