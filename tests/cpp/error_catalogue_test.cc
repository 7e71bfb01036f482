// Rows of docs/errors.md that the other suites do not reach: each triggers one rule and checks
// its status and the name in its message. (Rows are named by their id in the catalogue.)
#include <gtest/gtest.h>
#include <msda/msda.h>

#include <cstdint>
#include <string>
#include <vector>

namespace {

msdaTensor* View(std::vector<int64_t> dims, msdaDataType dtype, void* data) {
  return msdaCreateTensor(dims.data(), dims.size(), dtype, nullptr, 0, MSDA_DEVICE_CPU, 0, data);
}

void ExpectMessageNames(const char* name) {
  EXPECT_EQ(std::string(msdaGetLastErrorMessage()).rfind(name, 0), 0u)
      << "message: " << msdaGetLastErrorMessage();
}

TEST(ErrorCatalogue, C6_NegativeDim) {
  const int64_t dims[2] = {3, -1};
  float data[4];
  EXPECT_EQ(msdaCreateTensor(dims, 2, MSDA_FLOAT32, nullptr, 0, MSDA_DEVICE_CPU, 0, data), nullptr);
  ExpectMessageNames("tensor: dim 1 must be >= 0");
}

// Views whose shapes are checked before any byte is read: the data pointers are dummies.
struct Call {
  float dummy[64] = {};
  int64_t shapes[2] = {2, 2}, starts[1] = {0};
  float out[64] = {};
};

TEST(ErrorCatalogue, V16_HeadsTimesEmbedDimsOverflow) {
  Call c;
  const int64_t huge = int64_t{1} << 32;
  msdaTensor* value = View({1, 4, huge, huge}, MSDA_FLOAT32, c.dummy);
  msdaTensor* shapes = View({1, 2}, MSDA_INT64, c.shapes);
  msdaTensor* starts = View({1}, MSDA_INT64, c.starts);
  msdaTensor* loc = View({1, 1, huge, 1, 1, 2}, MSDA_FLOAT32, c.dummy);
  msdaTensor* attn = View({1, 1, huge, 1, 1}, MSDA_FLOAT32, c.dummy);
  msdaTensor* out = View({1, 1, 8}, MSDA_FLOAT32, c.out);
  uint64_t size = 1;
  msdaExecutor* e = reinterpret_cast<msdaExecutor*>(&size);
  EXPECT_EQ(msdaForwardGetWorkspaceSize(value, shapes, starts, loc, attn, out, &size, &e),
            MSDA_ERROR_LIMIT_EXCEEDED);
  ExpectMessageNames("value: heads * embed_dims overflows int64");
  EXPECT_EQ(e, nullptr);
  EXPECT_EQ(size, 0u);
  for (msdaTensor* t : {value, shapes, starts, loc, attn, out}) msdaDestroyTensor(t);
}

TEST(ErrorCatalogue, V23_KeysOverflow) {
  Call c;
  c.shapes[0] = int64_t{1} << 62;
  c.shapes[1] = 8;
  msdaTensor* value = View({1, 4, 1, 2}, MSDA_FLOAT32, c.dummy);
  msdaTensor* shapes = View({1, 2}, MSDA_INT64, c.shapes);
  msdaTensor* starts = View({1}, MSDA_INT64, c.starts);
  msdaTensor* loc = View({1, 1, 1, 1, 1, 2}, MSDA_FLOAT32, c.dummy + 16);
  msdaTensor* attn = View({1, 1, 1, 1, 1}, MSDA_FLOAT32, c.dummy + 24);
  msdaTensor* out = View({1, 1, 2}, MSDA_FLOAT32, c.out);
  uint64_t size = 1;
  msdaExecutor* e = nullptr;
  EXPECT_EQ(msdaForwardGetWorkspaceSize(value, shapes, starts, loc, attn, out, &size, &e),
            MSDA_ERROR_LIMIT_EXCEEDED);
  ExpectMessageNames("spatial_shapes: level 0 makes the number of keys overflow int64");
  EXPECT_EQ(c.out[0], 0.0f);
  for (msdaTensor* t : {value, shapes, starts, loc, attn, out}) msdaDestroyTensor(t);
}

TEST(ErrorCatalogue, R1_ForeignExecutorIsRefusedWithoutBeingTouched) {
  // Bytes that were never an executor: the registry check refuses them before any read.
  std::vector<unsigned char> fake(256, 0x5A);
  msdaExecutor* e = reinterpret_cast<msdaExecutor*>(fake.data());
  EXPECT_EQ(msdaForward(nullptr, 0, e, nullptr), MSDA_ERROR_INVALID_EXECUTOR);
  ExpectMessageNames("executor: not a live executor");
  EXPECT_EQ(msdaBackward(nullptr, 0, e, nullptr), MSDA_ERROR_INVALID_EXECUTOR);
  EXPECT_EQ(msdaSetExecutorRepeatable(e), MSDA_ERROR_INVALID_EXECUTOR);
  EXPECT_EQ(msdaDestroyExecutor(e), MSDA_ERROR_INVALID_EXECUTOR);
  ExpectMessageNames("executor: not a live executor");
  EXPECT_EQ(msdaExecutorDescribe(e, nullptr, 0), -1);
  EXPECT_EQ(fake, std::vector<unsigned char>(256, 0x5A));
}

}  // namespace
