// Makes `device` the calling thread's current CUDA device for a scope and restores the previous one. The
// current device is per thread, and a backend, allocator or communicator may be called from any thread
// (rank threads of a group, a tensor dying on another thread). A failing cudaGetDevice/cudaSetDevice is
// an internal error (ZCUDA_CHECK).
#pragma once

#include <cuda_runtime.h>

#include "kernels/cuda/cuda_check.h"

namespace zoetrope {

class CudaDeviceScope {
 public:
  explicit CudaDeviceScope(int device) {
    ZCUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) ZCUDA_CHECK(cudaSetDevice(device));
    restore_ = previous_ != device;
  }
  ~CudaDeviceScope() {
    if (restore_) cudaSetDevice(previous_);
  }
  CudaDeviceScope(const CudaDeviceScope&) = delete;
  CudaDeviceScope& operator=(const CudaDeviceScope&) = delete;

 private:
  int previous_ = 0;
  bool restore_ = false;
};

}  // namespace zoetrope
