/*
 * msda::aclnn: the aclnn tensor and executor types and status codes, with CANN's names,
 * signatures and values (docs/aclnn.md maps each status to the msda refusal behind it).
 */
#ifndef MSDA_ACLNN_ACLNN_ACL_META_H_
#define MSDA_ACLNN_ACLNN_ACL_META_H_

#include "acl/acl_base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef int32_t aclnnStatus;

#define ACLNN_SUCCESS 0
#define ACLNN_ERR_PARAM_NULLPTR 161001 /* A required tensor, pointer or out-parameter is NULL. */
#define ACLNN_ERR_PARAM_INVALID 161002 /* Any other broken rule (aclGetRecentErrMsg says which). */
#define ACLNN_ERR_RUNTIME_ERROR 361001 /* Host memory could not be allocated. */
#define ACLNN_ERR_INNER 561000         /* A bug in msda: please report it. */

/* A view of caller memory: view dims, strides and offset in elements, a format and the
 * storage dims the view lies in. It never owns the data. */
typedef struct aclTensor aclTensor;
/* The plan of one operator call, made by a GetWorkspaceSize call and released by the run. */
typedef struct aclOpExecutor aclOpExecutor;

/* Creates a tensor view. viewDims has viewDimsNum entries (at most 8), each >= 0; stride has
 * viewDimsNum entries, each >= 0, or is NULL for row-major; offset >= 0. storageDims (may be
 * NULL when storageDimsNum is 0) is the shape of the memory the view lies in: the view must
 * stay within its element count. Any dataType and format is accepted here; the operator
 * refuses those it does not take. Returns NULL on bad arguments (aclGetRecentErrMsg). */
ACL_FUNC_VISIBILITY aclTensor* aclCreateTensor(const int64_t* viewDims, uint64_t viewDimsNum,
                                               aclDataType dataType, const int64_t* stride,
                                               int64_t offset, aclFormat format,
                                               const int64_t* storageDims, uint64_t storageDimsNum,
                                               void* tensorData);
/* Frees the view, not the data. NULL is accepted. */
ACL_FUNC_VISIBILITY aclnnStatus aclDestroyTensor(const aclTensor* tensor);

/* Keeps the executor past its run calls, so that it may run again on the same memory; free it
 * with aclDestroyAclOpExecutor. */
ACL_FUNC_VISIBILITY aclnnStatus aclSetAclOpExecutorRepeatable(aclOpExecutor* executor);
ACL_FUNC_VISIBILITY aclnnStatus aclDestroyAclOpExecutor(aclOpExecutor* executor);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MSDA_ACLNN_ACLNN_ACL_META_H_ */
