/* A C program written for the Ascend spec, built against the installed msda::aclnn: one tiny
 * forward and gradient call through AscendCL and the aclnn headers, checked by hand. */
#include <math.h>
#include <stdio.h>

#include "acl/acl.h"
#include "aclnn_multi_scale_deformable_attn_func_v2.h"
#include "aclnn_multi_scale_deformable_attn_grad_v2.h"

static int Near(float got, float want) { return fabsf(got - want) <= 1e-5f * (1 + fabsf(want)); }

int main(void) {
  /* One 2x2 level, one head, two channels; the query samples the middle of the map, where
   * each corner weighs 1/4. */
  float value[8] = {1, 10, 2, 20, 3, 30, 4, 40}; /* [1, 4, 1, 2] */
  int64_t shapes[2] = {2, 2};
  int64_t starts[1] = {0};
  float location[2] = {0.5f, 0.5f}; /* [1, 1, 1, 1, 1, 2] */
  float weight[1] = {2.0f};         /* [1, 1, 1, 1, 1] */
  float output[2] = {0, 0};         /* [1, 1, 2] */
  float grad_output[2] = {1, 1};
  float grad_value[8], grad_location[2], grad_weight[1];

  const int64_t value_dims[4] = {1, 4, 1, 2}, shape_dims[2] = {1, 2}, start_dims[1] = {1};
  const int64_t location_dims[6] = {1, 1, 1, 1, 1, 2}, weight_dims[5] = {1, 1, 1, 1, 1};
  const int64_t output_dims[3] = {1, 1, 2};
  aclTensor* t[10];
  t[0] = aclCreateTensor(value_dims, 4, ACL_FLOAT, NULL, 0, ACL_FORMAT_ND, NULL, 0, value);
  t[1] = aclCreateTensor(shape_dims, 2, ACL_INT64, NULL, 0, ACL_FORMAT_ND, NULL, 0, shapes);
  t[2] = aclCreateTensor(start_dims, 1, ACL_INT64, NULL, 0, ACL_FORMAT_ND, NULL, 0, starts);
  t[3] = aclCreateTensor(location_dims, 6, ACL_FLOAT, NULL, 0, ACL_FORMAT_ND, NULL, 0, location);
  t[4] = aclCreateTensor(weight_dims, 5, ACL_FLOAT, NULL, 0, ACL_FORMAT_ND, NULL, 0, weight);
  t[5] = aclCreateTensor(output_dims, 3, ACL_FLOAT, NULL, 0, ACL_FORMAT_ND, NULL, 0, output);
  t[6] = aclCreateTensor(output_dims, 3, ACL_FLOAT, NULL, 0, ACL_FORMAT_ND, NULL, 0, grad_output);
  t[7] = aclCreateTensor(value_dims, 4, ACL_FLOAT, NULL, 0, ACL_FORMAT_ND, NULL, 0, grad_value);
  t[8] = aclCreateTensor(location_dims, 6, ACL_FLOAT, NULL, 0, ACL_FORMAT_ND, NULL, 0,
                         grad_location);
  t[9] = aclCreateTensor(weight_dims, 5, ACL_FLOAT, NULL, 0, ACL_FORMAT_ND, NULL, 0, grad_weight);

  aclrtStream stream = NULL;
  static unsigned char workspace[1 << 16];
  uint64_t workspace_size = 0;
  aclOpExecutor* executor = NULL;
  aclnnStatus status = aclInit(NULL);
  if (status == ACL_SUCCESS) status = aclrtSetDevice(0);
  if (status == ACL_SUCCESS) status = aclrtCreateStream(&stream);
  if (status == ACL_SUCCESS) {
    status = aclnnMultiScaleDeformableAttnFuncV2GetWorkspaceSize(t[0], t[1], t[2], t[3], t[4],
                                                                  t[5], &workspace_size, &executor);
  }
  if (status == ACLNN_SUCCESS && workspace_size > sizeof workspace) status = ACLNN_ERR_INNER;
  if (status == ACLNN_SUCCESS) {
    status = aclnnMultiScaleDeformableAttnFuncV2(workspace, workspace_size, executor, stream);
  }
  if (status == ACLNN_SUCCESS) {
    status = aclnnMultiScaleDeformableAttnGradV2GetWorkspaceSize(
        t[0], t[1], t[2], t[3], t[4], t[6], t[7], t[8], t[9], &workspace_size, &executor);
  }
  if (status == ACLNN_SUCCESS && workspace_size > sizeof workspace) status = ACLNN_ERR_INNER;
  if (status == ACLNN_SUCCESS) {
    status = aclnnMultiScaleDeformableAttnGradV2(workspace, workspace_size, executor, stream);
  }
  if (status == ACLNN_SUCCESS) status = aclrtSynchronizeStream(stream);
  for (int i = 0; i < 10; ++i) aclDestroyTensor(t[i]);
  if (stream != NULL) aclrtDestroyStream(stream);
  aclrtResetDevice(0);
  aclFinalize();
  if (status != ACLNN_SUCCESS) {
    fprintf(stderr, "aclnn failed: %d: %s\n", (int)status, aclGetRecentErrMsg());
    return 1;
  }
  /* Forward: 2 * mean(1,2,3,4) = 5 and 2 * mean(10,20,30,40) = 50. Gradient with ones:
   * every value element gets 2 / 4; the weight gets 5 / 2 + 50 / 2; the location gets
   * 2 * (W * dsample/dw_im summed over channels) = 2 * 2 * (1 + 10) in x, twice that in y. */
  int ok = Near(output[0], 5) && Near(output[1], 50) && Near(grad_weight[0], 27.5f) &&
           Near(grad_location[0], 44) && Near(grad_location[1], 88);
  for (int i = 0; i < 8; ++i) ok = ok && Near(grad_value[i], 0.5f);
  if (!ok) {
    fprintf(stderr, "wrong result: output %g %g, grad_weight %g, grad_location %g %g\n",
            output[0], output[1], grad_weight[0], grad_location[0], grad_location[1]);
    return 1;
  }
  printf("msda::aclnn consumer: output %g %g, grad_location %g %g\n", output[0], output[1],
         grad_location[0], grad_location[1]);
  return 0;
}
