// 64-bit indexing: element offsets past 2^31 must be computed in int64. The tensors are
// reserved with mmap(MAP_NORESERVE), so the untouched pages of a multi-GB view cost nothing;
// the test writes and reads only the few pages the sampled corners live on.
#include <gtest/gtest.h>
#include <msda/msda.h>
#include <sys/mman.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

// A lazily backed anonymous mapping of `bytes` bytes, or nullptr if the system refuses it.
struct Reserved {
  void* data = nullptr;
  size_t bytes = 0;
  explicit Reserved(size_t n) : bytes(n) {
    void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    data = p == MAP_FAILED ? nullptr : p;
  }
  ~Reserved() {
    if (data != nullptr) munmap(data, bytes);
  }
  float* f() const { return static_cast<float*>(data); }
};

msdaTensor* Tensor(std::vector<int64_t> dims, msdaDataType dtype, void* data,
                   const int64_t* strides = nullptr) {
  return msdaCreateTensor(dims.data(), dims.size(), dtype, strides, 0, MSDA_DEVICE_CPU, 0, data);
}

// One level of H x W = 65536 x 32769 keys (more than 2^31), one head, one channel: key rows
// themselves pass 2^31, so the row arithmetic (start + h0 * W + w0) must be 64-bit.
TEST(LargeIndex, KeyRowsPastTwoToThe31) {
  const int64_t height = 65536, width = 32769, keys = height * width;
  ASSERT_GT(keys, int64_t{1} << 31);
  Reserved value(static_cast<size_t>(keys) * sizeof(float));
  if (value.data == nullptr) GTEST_SKIP() << "mmap of " << value.bytes << " bytes refused";

  // Sample near the bottom-right corner: pixel (h, w) = (65534.5, 32767.5) in image
  // coordinates, i.e. the centre of the 2x2 block of keys (65534..65535) x (32767..32768).
  const double y = (65535.0) / height, x = (32768.0) / width;
  const int64_t rows[4] = {65534 * width + 32767, 65534 * width + 32768, 65535 * width + 32767,
                           65535 * width + 32768};
  const float corner_values[4] = {1.0f, 2.0f, 4.0f, 8.0f};
  for (int c = 0; c < 4; ++c) value.f()[rows[c]] = corner_values[c];

  std::vector<int64_t> shapes = {height, width}, starts = {0};
  std::vector<float> loc = {static_cast<float>(x), static_cast<float>(y)};
  std::vector<float> attn = {1.0f};
  std::vector<float> out = {-1.0f};
  msdaTensor* t_value = Tensor({1, keys, 1, 1}, MSDA_FLOAT32, value.data);
  msdaTensor* t_shapes = Tensor({1, 2}, MSDA_INT64, shapes.data());
  msdaTensor* t_starts = Tensor({1}, MSDA_INT64, starts.data());
  msdaTensor* t_loc = Tensor({1, 1, 1, 1, 1, 2}, MSDA_FLOAT32, loc.data());
  msdaTensor* t_attn = Tensor({1, 1, 1, 1, 1}, MSDA_FLOAT32, attn.data());
  msdaTensor* t_out = Tensor({1, 1, 1}, MSDA_FLOAT32, out.data());
  uint64_t size = 0;
  msdaExecutor* e = nullptr;
  ASSERT_EQ(
      msdaForwardGetWorkspaceSize(t_value, t_shapes, t_starts, t_loc, t_attn, t_out, &size, &e),
      MSDA_SUCCESS)
      << msdaGetLastErrorMessage();
  std::vector<unsigned char> workspace(size, 0xFF);
  ASSERT_EQ(msdaForward(workspace.data(), size, e, nullptr), MSDA_SUCCESS);

  // The fp64 reference from the same fp32 inputs: bilinear weights of the rounded location.
  const double h_im = static_cast<double>(loc[1]) * height - 0.5;
  const double w_im = static_cast<double>(loc[0]) * width - 0.5;
  const double lh = h_im - std::floor(h_im), lw = w_im - std::floor(w_im);
  ASSERT_EQ(std::floor(h_im), 65534.0);
  ASSERT_EQ(std::floor(w_im), 32767.0);
  const double want = (1 - lh) * (1 - lw) * 1 + (1 - lh) * lw * 2 + lh * (1 - lw) * 4 + lh * lw * 8;
  // The coordinate is rounded in fp32 inside the library: h_im carries up to 2^-24 * 2 * H of
  // error, which moves the result by at most (8 - 1) times that.
  const double tolerance = 7.0 * (2.0 * height + 4.0) * std::ldexp(1.0, -24) + 1e-6 * want;
  EXPECT_NEAR(out[0], want, tolerance);

  for (msdaTensor* t : {t_value, t_shapes, t_starts, t_loc, t_attn, t_out}) msdaDestroyTensor(t);
}

// A small map whose value view has a keys stride of 2^30 elements: element offsets reach
// 3 * 2^30 > 2^31 although every key row index is tiny. Forward and backward.
TEST(LargeIndex, ElementOffsetsPastTwoToThe31) {
  const int64_t key_stride = int64_t{1} << 30, keys = 4, dims = 3;
  const size_t bytes = static_cast<size_t>((keys - 1) * key_stride + dims) * sizeof(float);
  Reserved value(bytes);
  if (value.data == nullptr) GTEST_SKIP() << "mmap of " << bytes << " bytes refused";
  // value[0, k, 0, d] = 10 k + d, a 2x2 map.
  for (int64_t k = 0; k < keys; ++k) {
    for (int64_t d = 0; d < dims; ++d)
      value.f()[k * key_stride + d] = static_cast<float>(10 * k + d);
  }
  const int64_t value_strides[4] = {keys * key_stride, key_stride, dims, 1};
  std::vector<int64_t> shapes = {2, 2}, starts = {0};
  std::vector<float> loc = {0.5f, 0.5f, 0.75f, 0.25f};  // Two queries.
  std::vector<float> attn = {1.0f, 2.0f};
  std::vector<float> out(2 * dims, -1.0f);
  msdaTensor* t_value = Tensor({1, keys, 1, dims}, MSDA_FLOAT32, value.data, value_strides);
  msdaTensor* t_shapes = Tensor({1, 2}, MSDA_INT64, shapes.data());
  msdaTensor* t_starts = Tensor({1}, MSDA_INT64, starts.data());
  msdaTensor* t_loc = Tensor({1, 2, 1, 1, 1, 2}, MSDA_FLOAT32, loc.data());
  msdaTensor* t_attn = Tensor({1, 2, 1, 1, 1}, MSDA_FLOAT32, attn.data());
  msdaTensor* t_out = Tensor({1, 2, dims}, MSDA_FLOAT32, out.data());
  uint64_t size = 0;
  msdaExecutor* e = nullptr;
  ASSERT_EQ(
      msdaForwardGetWorkspaceSize(t_value, t_shapes, t_starts, t_loc, t_attn, t_out, &size, &e),
      MSDA_SUCCESS)
      << msdaGetLastErrorMessage();
  std::vector<unsigned char> workspace(size, 0xFF);
  ASSERT_EQ(msdaForward(workspace.data(), size, e, nullptr), MSDA_SUCCESS);
  // Query 0 at the centre: the mean of the four keys. Query 1 at (x, y) = (0.75, 0.25):
  // (h_im, w_im) = (0, 1), exactly key 1.
  for (int64_t d = 0; d < dims; ++d) {
    EXPECT_FLOAT_EQ(out[d], 15.0f + d) << d;
    EXPECT_FLOAT_EQ(out[dims + d], 2.0f * (10.0f + d)) << d;
  }

  // Backward: grad_value is a small contiguous tensor, the value view stays huge.
  std::vector<float> grad_out(2 * dims, 1.0f), grad_value(keys * dims, -5.0f), grad_attn(2, -5.0f);
  msdaTensor* t_grad_out = Tensor({1, 2, dims}, MSDA_FLOAT32, grad_out.data());
  msdaTensor* t_grad_value = Tensor({1, keys, 1, dims}, MSDA_FLOAT32, grad_value.data());
  msdaTensor* t_grad_attn = Tensor({1, 2, 1, 1, 1}, MSDA_FLOAT32, grad_attn.data());
  ASSERT_EQ(msdaBackwardGetWorkspaceSize(t_value, t_shapes, t_starts, t_loc, t_attn, t_grad_out,
                                         t_grad_value, nullptr, t_grad_attn, &size, &e),
            MSDA_SUCCESS)
      << msdaGetLastErrorMessage();
  workspace.assign(size, 0xFF);
  ASSERT_EQ(msdaBackward(workspace.data(), size, e, nullptr), MSDA_SUCCESS);
  // Query 0 spreads 1/4 to every key; query 1 puts its weight 2 on key 1.
  for (int64_t d = 0; d < dims; ++d) {
    EXPECT_FLOAT_EQ(grad_value[0 * dims + d], 0.25f);
    EXPECT_FLOAT_EQ(grad_value[1 * dims + d], 0.25f + 2.0f);
    EXPECT_FLOAT_EQ(grad_value[2 * dims + d], 0.25f);
    EXPECT_FLOAT_EQ(grad_value[3 * dims + d], 0.25f);
  }
  EXPECT_FLOAT_EQ(grad_attn[0], 15.0f + 16.0f + 17.0f);  // sum_d g * sample
  EXPECT_FLOAT_EQ(grad_attn[1], 10.0f + 11.0f + 12.0f);

  for (msdaTensor* t :
       {t_value, t_shapes, t_starts, t_loc, t_attn, t_out, t_grad_out, t_grad_value, t_grad_attn}) {
    msdaDestroyTensor(t);
  }
}

}  // namespace
