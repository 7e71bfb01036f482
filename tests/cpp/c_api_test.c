/* Compiled as C99: the public header must be plain C. It also hands the C++ tests calls that
 * only C can make without undefined behaviour: an enum parameter holding a value that is not
 * one of its enumerators (in C an enum is just an int). */
#include <stddef.h>
#include <stdint.h>

#include "msda/msda.h"

msdaTensor* msda_test_create_tensor_raw_enums(const int64_t* dims, uint64_t ndim, int dtype,
                                              int device, void* data) {
  return msdaCreateTensor(dims, ndim, (msdaDataType)dtype, NULL, 0, (msdaDeviceType)device, 0,
                          data);
}

const char* msda_test_status_string_raw(int status) {
  return msdaStatusString((msdaStatus)status);
}

int64_t msda_test_dtype_size_raw(int dtype) { return msdaDataTypeSize((msdaDataType)dtype); }

/* The whole API is callable from C. */
int msda_test_c_smoke(void) {
  uint64_t ws = 0;
  msdaExecutor* ex = NULL;
  if (msdaGetVersion() != MSDA_VERSION) return 1;
  if (msdaForwardGetWorkspaceSize(NULL, NULL, NULL, NULL, NULL, NULL, &ws, &ex) !=
      MSDA_ERROR_NULL_POINTER) {
    return 2;
  }
  if (ex != NULL || ws != 0) return 3;
  if (msdaDestroyTensor(NULL) != MSDA_SUCCESS) return 4;
  return 0;
}
