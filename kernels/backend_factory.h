// Backends by name, the one place where tools and the engine choose a device ("--device").
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/backend.h"

namespace zoetrope {

// "cpu" -> the CPU reference backend on `cpu_threads` threads (0: OMP_NUM_THREADS or all cores);
// "cuda" or "cuda:N" -> the CUDA backend on device N (0 by default; `cpu_threads` does not apply).
// Errors: INVALID_ARGUMENT for any other name (the message lists the accepted ones), UNIMPLEMENTED for
// "cuda" in a build without CUDA, and CreateCudaBackend's errors otherwise.
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(absl::string_view device, int cpu_threads = 0);

// Whether this build contains the CUDA backend.
bool BuiltWithCuda();

}  // namespace zoetrope
