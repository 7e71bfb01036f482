// What the aclnn layer's files share: the aclTensor behind the opaque handle, the thread-local
// message behind aclGetRecentErrMsg, and the names of aclnn's enums for messages.
#ifndef MSDA_ACLNN_SRC_INTERNAL_H_
#define MSDA_ACLNN_SRC_INTERNAL_H_

#include <msda/msda.h>

#include <string>

#include "acl/acl_base.h"
#include "aclnn/acl_meta.h"

// An aclTensor is an msda view plus the two facts msda has no field for. A dtype msda does not
// know keeps its view (made with a stand-in dtype, so that msda still checks the layout) only
// so that the operator can refuse it by name.
struct aclTensor {
  msdaTensor* view = nullptr;
  aclDataType dtype = ACL_DT_UNDEFINED;
  bool dtype_known_to_msda = false;
  aclFormat format = ACL_FORMAT_ND;
};

namespace msda_aclnn {

// Sets the message aclGetRecentErrMsg returns on this thread.
void SetRecentError(std::string message);

// The msda dtype of an aclDataType; false for one msda has no counterpart for.
bool ToMsdaDataType(aclDataType dtype, msdaDataType* out);

// "ACL_FLOAT", "ACL_FORMAT_NCHW", ...; a number for values outside the enums.
std::string DataTypeName(aclDataType dtype);
std::string FormatName(aclFormat format);

}  // namespace msda_aclnn

#endif  // MSDA_ACLNN_SRC_INTERNAL_H_
