/* msda::aclnn: CANN's aclnn base header, which here only gathers the meta types. */
#ifndef MSDA_ACLNN_ACLNN_ACLNN_BASE_H_
#define MSDA_ACLNN_ACLNN_ACLNN_BASE_H_

#include "aclnn/acl_meta.h"

#endif /* MSDA_ACLNN_ACLNN_ACLNN_BASE_H_ */
