// Checks for CUDA runtime and cuBLAS return codes. A failing CUDA call inside an operator is an
// internal error (bad launch configuration, device fault), so it aborts with the call, the error name
// and the location, like ZCHECK. Code that can fail for user reasons (no device) returns absl::Status.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "kernels/check.h"

#define ZCUDA_CHECK(call)                                                                          \
  do {                                                                                             \
    const cudaError_t zcuda_error = (call);                                                        \
    ZCHECK_MSG(zcuda_error == cudaSuccess,                                                         \
               #call << ": " << cudaGetErrorName(zcuda_error) << " (" << cudaGetErrorString(zcuda_error) << ")"); \
  } while (0)

// After a kernel launch: catches invalid configurations (grid, shared memory) at the launch site.
#define ZCUDA_CHECK_LAUNCH() ZCUDA_CHECK(cudaGetLastError())

#define ZCUBLAS_CHECK(call)                                                                        \
  do {                                                                                             \
    const cublasStatus_t zcublas_status = (call);                                                  \
    ZCHECK_MSG(zcublas_status == CUBLAS_STATUS_SUCCESS,                                            \
               #call << ": cuBLAS status " << static_cast<int>(zcublas_status) << " ("             \
                     << cublasLtGetStatusString(zcublas_status) << ")");                          \
  } while (0)
