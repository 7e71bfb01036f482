// The SIMD target in use and workspace alignment. ctest runs the whole msda_tests binary once
// per available target with MSDA_SIMD_TARGET set; the first test proves the choice took effect,
// so a target that silently fell back to another would be caught.
#include <gtest/gtest.h>
#include <msda/msda.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Call {
  // One level 2x3, B=1, Q=2, H=1, D=5, P=1: small enough to check by hand.
  std::vector<float> value = std::vector<float>(6 * 5);
  std::vector<int64_t> shapes = {2, 3}, starts = {0};
  std::vector<float> loc = {0.5f, 0.5f, 0.2f, 0.9f};
  std::vector<float> attn = {1.0f, 2.0f};
  std::vector<float> out = std::vector<float>(2 * 5, -7.0f);
  msdaTensor* t[6] = {};
  Call() {
    for (size_t i = 0; i < value.size(); ++i) value[i] = static_cast<float>(i % 7) - 3.0f;
    const int64_t vd[4] = {1, 6, 1, 5}, sd[2] = {1, 2}, ld[1] = {1};
    const int64_t pd[6] = {1, 2, 1, 1, 1, 2}, ad[5] = {1, 2, 1, 1, 1}, od[3] = {1, 2, 5};
    t[0] = msdaCreateTensor(vd, 4, MSDA_FLOAT32, nullptr, 0, MSDA_DEVICE_CPU, 0, value.data());
    t[1] = msdaCreateTensor(sd, 2, MSDA_INT64, nullptr, 0, MSDA_DEVICE_CPU, 0, shapes.data());
    t[2] = msdaCreateTensor(ld, 1, MSDA_INT64, nullptr, 0, MSDA_DEVICE_CPU, 0, starts.data());
    t[3] = msdaCreateTensor(pd, 6, MSDA_FLOAT32, nullptr, 0, MSDA_DEVICE_CPU, 0, loc.data());
    t[4] = msdaCreateTensor(ad, 5, MSDA_FLOAT32, nullptr, 0, MSDA_DEVICE_CPU, 0, attn.data());
    t[5] = msdaCreateTensor(od, 3, MSDA_FLOAT32, nullptr, 0, MSDA_DEVICE_CPU, 0, out.data());
  }
  ~Call() {
    for (msdaTensor* x : t) msdaDestroyTensor(x);
  }
  msdaExecutor* Plan(uint64_t* size) {
    msdaExecutor* e = nullptr;
    EXPECT_EQ(msdaForwardGetWorkspaceSize(t[0], t[1], t[2], t[3], t[4], t[5], size, &e),
              MSDA_SUCCESS)
        << msdaGetLastErrorMessage();
    return e;
  }
};

std::string Describe(msdaExecutor* e) {
  const int64_t n = msdaExecutorDescribe(e, nullptr, 0);
  std::string text(static_cast<size_t>(n) + 1, '\0');
  msdaExecutorDescribe(e, text.data(), text.size());
  text.resize(static_cast<size_t>(n));
  return text;
}

TEST(SimdTarget, TheRequestedTargetIsTheOneInUse) {
  Call call;
  uint64_t size = 0;
  msdaExecutor* e = call.Plan(&size);
  ASSERT_NE(e, nullptr);
  const std::string text = Describe(e);
  EXPECT_NE(text.find("simd target: "), std::string::npos) << text;
  const char* wanted = std::getenv("MSDA_SIMD_TARGET");
  if (wanted != nullptr && *wanted != '\0') {
    EXPECT_NE(text.find(std::string("simd target: ") + wanted + " "), std::string::npos)
        << "MSDA_SIMD_TARGET=" << wanted << " but the plan says:\n"
        << text;
  }
  EXPECT_EQ(msdaDestroyExecutor(e), MSDA_SUCCESS);
}

TEST(Workspace, AnyAlignmentIsAccepted) {
  std::vector<float> first;
  for (size_t shift = 0; shift < 64; shift += 7) {
    Call call;
    uint64_t size = 0;
    msdaExecutor* e = call.Plan(&size);
    ASSERT_NE(e, nullptr);
    std::vector<unsigned char> buffer(size + 64, 0xAB);
    ASSERT_EQ(msdaForward(size ? buffer.data() + shift : nullptr, size, e, nullptr), MSDA_SUCCESS)
        << msdaGetLastErrorMessage();
    if (first.empty()) first = call.out;
    EXPECT_EQ(std::memcmp(first.data(), call.out.data(), first.size() * sizeof(float)), 0)
        << "shift " << shift;
  }
  // Query 0 samples the centre of the 2x3 map: (h_im, w_im) = (0.5, 1.0), so rows 1 and 4
  // weigh 1/2 each.
  for (int d = 0; d < 5; ++d) {
    const float v1 = static_cast<float>((1 * 5 + d) % 7) - 3.0f;
    const float v4 = static_cast<float>((4 * 5 + d) % 7) - 3.0f;
    EXPECT_FLOAT_EQ(first[d], 0.5f * v1 + 0.5f * v4) << "d " << d;
  }
}

}  // namespace
