/*
 * msda::aclnn: AscendCL's main header, reduced to what MultiScale Deformable Attention host
 * code calls (docs/aclnn.md lists it), implemented on the host CPU by msda.
 */
#ifndef MSDA_ACLNN_ACL_ACL_H_
#define MSDA_ACLNN_ACL_ACL_H_

#include "acl/acl_base.h"
#include "acl/acl_rt.h"

#ifdef __cplusplus
extern "C" {
#endif

/* configPath may be NULL; it is not read. A second aclInit without aclFinalize gets
 * ACL_ERROR_REPEAT_INITIALIZE, an aclFinalize without aclInit ACL_ERROR_UNINITIALIZE. */
ACL_FUNC_VISIBILITY aclError aclInit(const char* configPath);
ACL_FUNC_VISIBILITY aclError aclFinalize(void);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MSDA_ACLNN_ACL_ACL_H_ */
