/* A C program against the installed msda: one tiny forward call checked by hand. */
#include <math.h>
#include <msda/msda.h>
#include <stdio.h>

int main(void) {
  /* One 2x2 level, one head, two channels; the query samples the middle of the map, where
   * each corner weighs 1/4. */
  float value[4 * 2] = {1, 10, 2, 20, 3, 30, 4, 40}; /* [1, 4, 1, 2] */
  int32_t shapes[2] = {2, 2};
  int32_t starts[1] = {0};
  float locations[2] = {0.5f, 0.5f}; /* [1, 1, 1, 1, 1, 2] */
  float weights[1] = {2.0f};         /* [1, 1, 1, 1, 1] */
  float output[2] = {0, 0};          /* [1, 1, 2] */

  const int64_t value_dims[4] = {1, 4, 1, 2}, shape_dims[2] = {1, 2}, start_dims[1] = {1};
  const int64_t location_dims[6] = {1, 1, 1, 1, 1, 2}, weight_dims[5] = {1, 1, 1, 1, 1};
  const int64_t output_dims[3] = {1, 1, 2};
  msdaTensor* t_value =
      msdaCreateTensor(value_dims, 4, MSDA_FLOAT32, NULL, 0, MSDA_DEVICE_CPU, 0, value);
  msdaTensor* t_shapes =
      msdaCreateTensor(shape_dims, 2, MSDA_INT32, NULL, 0, MSDA_DEVICE_CPU, 0, shapes);
  msdaTensor* t_starts =
      msdaCreateTensor(start_dims, 1, MSDA_INT32, NULL, 0, MSDA_DEVICE_CPU, 0, starts);
  msdaTensor* t_loc =
      msdaCreateTensor(location_dims, 6, MSDA_FLOAT32, NULL, 0, MSDA_DEVICE_CPU, 0, locations);
  msdaTensor* t_w =
      msdaCreateTensor(weight_dims, 5, MSDA_FLOAT32, NULL, 0, MSDA_DEVICE_CPU, 0, weights);
  msdaTensor* t_out =
      msdaCreateTensor(output_dims, 3, MSDA_FLOAT32, NULL, 0, MSDA_DEVICE_CPU, 0, output);

  uint64_t workspace_size = 0;
  msdaExecutor* executor = NULL;
  msdaStatus status = msdaForwardGetWorkspaceSize(t_value, t_shapes, t_starts, t_loc, t_w, t_out,
                                                  &workspace_size, &executor);
  static unsigned char workspace[1 << 16];
  if (status == MSDA_SUCCESS && workspace_size > sizeof workspace) status = MSDA_ERROR_INTERNAL;
  if (status == MSDA_SUCCESS) status = msdaForward(workspace, workspace_size, executor, NULL);
  msdaDestroyTensor(t_value);
  msdaDestroyTensor(t_shapes);
  msdaDestroyTensor(t_starts);
  msdaDestroyTensor(t_loc);
  msdaDestroyTensor(t_w);
  msdaDestroyTensor(t_out);
  if (status != MSDA_SUCCESS) {
    fprintf(stderr, "msda failed: %s: %s\n", msdaStatusString(status), msdaGetLastErrorMessage());
    return 1;
  }
  /* 2 * mean(1,2,3,4) = 5 and 2 * mean(10,20,30,40) = 50. */
  if (fabsf(output[0] - 5.0f) > 1e-5f || fabsf(output[1] - 50.0f) > 1e-5f) {
    fprintf(stderr, "wrong output: %g %g (want 5 50)\n", output[0], output[1]);
    return 1;
  }
  printf("msda %d consumer: output %g %g\n", msdaGetVersion(), output[0], output[1]);
  return 0;
}
