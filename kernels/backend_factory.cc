#include "kernels/backend_factory.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "kernels/cpu/cpu_backend.h"

#ifdef ZOETROPE_HAS_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace zoetrope {

bool BuiltWithCuda() {
#ifdef ZOETROPE_HAS_CUDA
  return true;
#else
  return false;
#endif
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(absl::string_view device, int cpu_threads) {
  if (device == "cpu") return CreateCpuBackend(cpu_threads);
  absl::string_view rest = device;
  if (absl::ConsumePrefix(&rest, "cuda")) {
    int index = 0;
    if (!rest.empty()) {
      if (!absl::ConsumePrefix(&rest, ":") || !absl::SimpleAtoi(rest, &index) || index < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("device \"", device, "\": expected \"cuda\" or \"cuda:N\" with N a device index"));
      }
    }
#ifdef ZOETROPE_HAS_CUDA
    return CreateCudaBackend(index);
#else
    return absl::UnimplementedError(absl::StrCat("device \"", device,
                                                 "\": this build has no CUDA backend (configure with nvcc available "
                                                 "and ZOETROPE_CUDA=ON to build it)"));
#endif
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown device \"", device, "\" (accepted: cpu, cuda, cuda:N)"));
}

}  // namespace zoetrope
