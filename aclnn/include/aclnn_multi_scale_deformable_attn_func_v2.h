/*
 * MultiScale Deformable Attention V2, forward, as the msda_v2 spec declares it, computed on
 * the host CPU by msda. Shapes (bs batch, num_keys keys, num_heads heads, embed_dims dims,
 * num_queries queries, num_levels levels, num_points points):
 *   value            [bs, num_keys, num_heads, embed_dims]       FLOAT, FLOAT16, BF16, DOUBLE
 *   spatialShape     [num_levels, 2]  rows (H_l, W_l)            INT32, INT64
 *   levelStartIndex  [num_levels]     prefix sums of H_l * W_l   INT32, INT64
 *   location         [bs, num_queries, num_heads, num_levels, num_points, 2], last dim (x, y)
 *   attnWeight       [bs, num_queries, num_heads, num_levels, num_points]
 *   output           [bs, num_queries, num_heads * embed_dims]
 * Every tensor is ND and may be a strided view with an offset. The executor records the data
 * pointers and the contents of spatialShape and levelStartIndex (read here).
 */
#ifndef MSDA_ACLNN_ACLNN_MULTI_SCALE_DEFORMABLE_ATTN_FUNC_V2_H_
#define MSDA_ACLNN_ACLNN_MULTI_SCALE_DEFORMABLE_ATTN_FUNC_V2_H_

#include "aclnn/acl_meta.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Validates and plans the forward; returns the workspace size and an executor. On a refusal
 * *workspaceSize is 0 and *executor NULL, and no output is touched. */
ACL_FUNC_VISIBILITY aclnnStatus aclnnMultiScaleDeformableAttnFuncV2GetWorkspaceSize(
    const aclTensor* value, const aclTensor* spatialShape, const aclTensor* levelStartIndex,
    const aclTensor* location, const aclTensor* attnWeight, const aclTensor* output,
    uint64_t* workspaceSize, aclOpExecutor** executor);

/* Runs the forward on workspace (at least workspaceSize bytes, any contents; NULL when the
 * size is 0). It has finished when the call returns; the executor is released unless it was
 * made repeatable. */
ACL_FUNC_VISIBILITY aclnnStatus aclnnMultiScaleDeformableAttnFuncV2(void* workspace,
                                                                    uint64_t workspaceSize,
                                                                    aclOpExecutor* executor,
                                                                    aclrtStream stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MSDA_ACLNN_ACLNN_MULTI_SCALE_DEFORMABLE_ATTN_FUNC_V2_H_ */
