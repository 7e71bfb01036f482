/*
 * MultiScale Deformable Attention V2, gradient, as the msda_v2 spec declares it, computed on
 * the host CPU by msda. The inputs are the forward's; gradOutput has the output's shape,
 * gradValueOut value's, gradSamplingLocOut location's and gradAttnWeightOut attnWeight's
 * (with their dtypes). The three gradients are required and are overwritten, not accumulated;
 * the result is bitwise the same for every run and thread count.
 */
#ifndef MSDA_ACLNN_ACLNN_MULTI_SCALE_DEFORMABLE_ATTN_GRAD_V2_H_
#define MSDA_ACLNN_ACLNN_MULTI_SCALE_DEFORMABLE_ATTN_GRAD_V2_H_

#include "aclnn/acl_meta.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Validates and plans the gradient; returns the workspace size and an executor. On a refusal
 * *workspaceSize is 0 and *executor NULL, and no output is touched. */
ACL_FUNC_VISIBILITY aclnnStatus aclnnMultiScaleDeformableAttnGradV2GetWorkspaceSize(
    const aclTensor* value, const aclTensor* spatialShape, const aclTensor* levelStartIndex,
    const aclTensor* location, const aclTensor* attnWeight, const aclTensor* gradOutput,
    const aclTensor* gradValueOut, const aclTensor* gradSamplingLocOut,
    const aclTensor* gradAttnWeightOut, uint64_t* workspaceSize, aclOpExecutor** executor);

/* Runs the gradient; same rules as aclnnMultiScaleDeformableAttnFuncV2. */
ACL_FUNC_VISIBILITY aclnnStatus aclnnMultiScaleDeformableAttnGradV2(void* workspace,
                                                                    uint64_t workspaceSize,
                                                                    aclOpExecutor* executor,
                                                                    aclrtStream stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MSDA_ACLNN_ACLNN_MULTI_SCALE_DEFORMABLE_ATTN_GRAD_V2_H_ */
