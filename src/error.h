// The thread-local last error message behind msdaGetLastErrorMessage.
#ifndef MSDA_SRC_ERROR_H_
#define MSDA_SRC_ERROR_H_

#include <string>

#include "msda/msda.h"

namespace msda {

// Records the message for this thread and returns status, so refusals read
// `return Refuse(MSDA_ERROR_..., "tensor: rule")`.
msdaStatus Refuse(msdaStatus status, std::string message);
void ClearError();
const char* LastErrorMessage();

}  // namespace msda

#endif  // MSDA_SRC_ERROR_H_
