// The four operator entry points of the msda_v2 spec, on msda's public API: the aclnn layer
// checks what msda has no notion of (required gradients msda would skip when NULL, formats,
// dtypes outside msda's six; NULL checks come first, worded as msda's), then hands every other
// rule to msda and maps its status.
#include <msda/msda.h>

#include <initializer_list>
#include <string>
#include <utility>

#include "aclnn/acl_meta.h"
#include "aclnn_multi_scale_deformable_attn_func_v2.h"
#include "aclnn_multi_scale_deformable_attn_grad_v2.h"
#include "internal.h"

namespace msda_aclnn {
namespace {

// The table in docs/aclnn.md.
aclnnStatus ToAclnnStatus(msdaStatus status) {
  switch (status) {
    case MSDA_SUCCESS:
      return ACLNN_SUCCESS;
    case MSDA_ERROR_NULL_POINTER:
      return ACLNN_ERR_PARAM_NULLPTR;
    case MSDA_ERROR_INVALID_RANK:
    case MSDA_ERROR_SHAPE_MISMATCH:
    case MSDA_ERROR_INVALID_DTYPE:
    case MSDA_ERROR_INVALID_DEVICE:
    case MSDA_ERROR_INVALID_LAYOUT:
    case MSDA_ERROR_INVALID_VALUE:
    case MSDA_ERROR_LIMIT_EXCEEDED:
    case MSDA_ERROR_WORKSPACE_TOO_SMALL:
    case MSDA_ERROR_INVALID_EXECUTOR:
      return ACLNN_ERR_PARAM_INVALID;
    case MSDA_ERROR_OUT_OF_MEMORY:
      return ACLNN_ERR_RUNTIME_ERROR;
    case MSDA_ERROR_INTERNAL:
      break;
  }
  return ACLNN_ERR_INNER;
}

aclnnStatus Refuse(aclnnStatus status, std::string message) {
  SetRecentError(std::move(message));
  return status;
}

aclnnStatus MapStatus(msdaStatus status) {
  if (status != MSDA_SUCCESS) SetRecentError(msdaGetLastErrorMessage());
  return ToAclnnStatus(status);
}

struct Named {
  const char* name;  // msda's name, so that these messages read like msda's own.
  const aclTensor* tensor;
};

// The aclnn layer's own rules, checked in this order before msda's (docs/aclnn.md, A1-A4).
aclnnStatus CheckCall(std::initializer_list<Named> tensors, uint64_t* workspace_size,
                      aclOpExecutor** executor) {
  if (workspace_size == nullptr) return Refuse(ACLNN_ERR_PARAM_NULLPTR, "workspaceSize: is NULL");
  if (executor == nullptr) return Refuse(ACLNN_ERR_PARAM_NULLPTR, "executor: is NULL");
  *workspace_size = 0;
  *executor = nullptr;
  for (const Named& t : tensors) {
    if (t.tensor == nullptr) {
      return Refuse(ACLNN_ERR_PARAM_NULLPTR, std::string(t.name) + ": tensor is NULL");
    }
  }
  for (const Named& t : tensors) {
    if (t.tensor->format != ACL_FORMAT_ND) {
      return Refuse(ACLNN_ERR_PARAM_INVALID, std::string(t.name) + ": format must be " +
                                                 "ACL_FORMAT_ND, got " +
                                                 FormatName(t.tensor->format));
    }
  }
  for (const Named& t : tensors) {
    if (!t.tensor->dtype_known_to_msda) {
      return Refuse(ACLNN_ERR_PARAM_INVALID,
                    std::string(t.name) + ": dtype " + DataTypeName(t.tensor->dtype) +
                        " is not supported (ACL_FLOAT, ACL_FLOAT16, ACL_BF16, ACL_DOUBLE for " +
                        "values, ACL_INT32, ACL_INT64 for indices)");
    }
  }
  return ACLNN_SUCCESS;
}

// An aclOpExecutor is an msda executor under another name; msda's registry of live executors
// refuses released and foreign ones without dereferencing them.
msdaExecutor* AsMsda(aclOpExecutor* executor) {
  return reinterpret_cast<msdaExecutor*>(executor);
}
aclOpExecutor* AsAcl(msdaExecutor* executor) {
  return reinterpret_cast<aclOpExecutor*>(executor);
}

using RunFunction = msdaStatus (*)(void*, uint64_t, msdaExecutor*, msdaStream);

aclnnStatus Run(RunFunction run, void* workspace, uint64_t workspace_size,
                aclOpExecutor* executor, aclrtStream stream) {
  if (executor == nullptr) return Refuse(ACLNN_ERR_PARAM_NULLPTR, "executor: is NULL");
  // The stream is only a handle: the run is synchronous, so it has finished on any stream.
  const msdaStatus status = run(workspace, workspace_size, AsMsda(executor), stream);
  const aclnnStatus mapped = MapStatus(status);
  // msda has one status for a NULL and a small workspace; aclnn tells a NULL apart.
  if (status == MSDA_ERROR_WORKSPACE_TOO_SMALL && workspace == nullptr) {
    return ACLNN_ERR_PARAM_NULLPTR;
  }
  return mapped;
}

}  // namespace
}  // namespace msda_aclnn

extern "C" {

aclnnStatus aclnnMultiScaleDeformableAttnFuncV2GetWorkspaceSize(
    const aclTensor* value, const aclTensor* spatialShape, const aclTensor* levelStartIndex,
    const aclTensor* location, const aclTensor* attnWeight, const aclTensor* output,
    uint64_t* workspaceSize, aclOpExecutor** executor) {
  using namespace msda_aclnn;
  const aclnnStatus checked = CheckCall({{"value", value},
                                         {"spatial_shapes", spatialShape},
                                         {"level_start_index", levelStartIndex},
                                         {"sampling_locations", location},
                                         {"attention_weights", attnWeight},
                                         {"output", output}},
                                        workspaceSize, executor);
  if (checked != ACLNN_SUCCESS) return checked;
  msdaExecutor* planned = nullptr;
  const msdaStatus status =
      msdaForwardGetWorkspaceSize(value->view, spatialShape->view, levelStartIndex->view,
                                  location->view, attnWeight->view, output->view, workspaceSize,
                                  &planned);
  *executor = AsAcl(planned);
  return MapStatus(status);
}

aclnnStatus aclnnMultiScaleDeformableAttnFuncV2(void* workspace, uint64_t workspaceSize,
                                                aclOpExecutor* executor, aclrtStream stream) {
  return msda_aclnn::Run(msdaForward, workspace, workspaceSize, executor, stream);
}

aclnnStatus aclnnMultiScaleDeformableAttnGradV2GetWorkspaceSize(
    const aclTensor* value, const aclTensor* spatialShape, const aclTensor* levelStartIndex,
    const aclTensor* location, const aclTensor* attnWeight, const aclTensor* gradOutput,
    const aclTensor* gradValueOut, const aclTensor* gradSamplingLocOut,
    const aclTensor* gradAttnWeightOut, uint64_t* workspaceSize, aclOpExecutor** executor) {
  using namespace msda_aclnn;
  const aclnnStatus checked = CheckCall({{"value", value},
                                         {"spatial_shapes", spatialShape},
                                         {"level_start_index", levelStartIndex},
                                         {"sampling_locations", location},
                                         {"attention_weights", attnWeight},
                                         {"grad_output", gradOutput},
                                         {"grad_value", gradValueOut},
                                         {"grad_sampling_locations", gradSamplingLocOut},
                                         {"grad_attention_weights", gradAttnWeightOut}},
                                        workspaceSize, executor);
  if (checked != ACLNN_SUCCESS) return checked;
  msdaExecutor* planned = nullptr;
  const msdaStatus status = msdaBackwardGetWorkspaceSize(
      value->view, spatialShape->view, levelStartIndex->view, location->view, attnWeight->view,
      gradOutput->view, gradValueOut->view, gradSamplingLocOut->view, gradAttnWeightOut->view,
      workspaceSize, &planned);
  *executor = AsAcl(planned);
  return MapStatus(status);
}

aclnnStatus aclnnMultiScaleDeformableAttnGradV2(void* workspace, uint64_t workspaceSize,
                                                aclOpExecutor* executor, aclrtStream stream) {
  return msda_aclnn::Run(msdaBackward, workspace, workspaceSize, executor, stream);
}

aclnnStatus aclSetAclOpExecutorRepeatable(aclOpExecutor* executor) {
  if (executor == nullptr) {
    return msda_aclnn::Refuse(ACLNN_ERR_PARAM_NULLPTR, "executor: is NULL");
  }
  return msda_aclnn::MapStatus(msdaSetExecutorRepeatable(msda_aclnn::AsMsda(executor)));
}

aclnnStatus aclDestroyAclOpExecutor(aclOpExecutor* executor) {
  return msda_aclnn::MapStatus(msdaDestroyExecutor(msda_aclnn::AsMsda(executor)));
}

}  // extern "C"
