// The thread-local last error (message and status), and the status names.
#include "error.h"

#include <cstdint>
#include <cstring>
#include <string>

#include "msda/msda.h"

namespace msda {
namespace {

thread_local std::string tls_error;
thread_local msdaStatus tls_status = MSDA_SUCCESS;

}  // namespace

msdaStatus Refuse(msdaStatus status, std::string message) {
  tls_error = std::move(message);
  tls_status = status;
  return status;
}
void ClearError() {
  tls_error.clear();
  tls_status = MSDA_SUCCESS;
}
const char* LastErrorMessage() { return tls_error.c_str(); }

}  // namespace msda

extern "C" {

const char* msdaGetLastErrorMessage(void) { return msda::LastErrorMessage(); }

msdaStatus msdaGetLastErrorStatus(void) { return msda::tls_status; }

const char* msdaStatusString(msdaStatus status) {
  // Any integer may arrive from C; switch on it as an integer (see msdaCreateTensor).
  int32_t raw;
  static_assert(sizeof(status) == sizeof(raw), "C enums are int-sized");
  std::memcpy(&raw, &status, sizeof raw);
  switch (raw) {
    case MSDA_SUCCESS:
      return "MSDA_SUCCESS";
    case MSDA_ERROR_NULL_POINTER:
      return "MSDA_ERROR_NULL_POINTER";
    case MSDA_ERROR_INVALID_RANK:
      return "MSDA_ERROR_INVALID_RANK";
    case MSDA_ERROR_SHAPE_MISMATCH:
      return "MSDA_ERROR_SHAPE_MISMATCH";
    case MSDA_ERROR_INVALID_DTYPE:
      return "MSDA_ERROR_INVALID_DTYPE";
    case MSDA_ERROR_INVALID_DEVICE:
      return "MSDA_ERROR_INVALID_DEVICE";
    case MSDA_ERROR_INVALID_LAYOUT:
      return "MSDA_ERROR_INVALID_LAYOUT";
    case MSDA_ERROR_INVALID_VALUE:
      return "MSDA_ERROR_INVALID_VALUE";
    case MSDA_ERROR_LIMIT_EXCEEDED:
      return "MSDA_ERROR_LIMIT_EXCEEDED";
    case MSDA_ERROR_WORKSPACE_TOO_SMALL:
      return "MSDA_ERROR_WORKSPACE_TOO_SMALL";
    case MSDA_ERROR_INVALID_EXECUTOR:
      return "MSDA_ERROR_INVALID_EXECUTOR";
    case MSDA_ERROR_OUT_OF_MEMORY:
      return "MSDA_ERROR_OUT_OF_MEMORY";
    case MSDA_ERROR_INTERNAL:
      return "MSDA_ERROR_INTERNAL";
  }
  return "MSDA_ERROR_UNKNOWN";
}

}  // extern "C"
