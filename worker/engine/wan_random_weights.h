// Deterministic random Wan2.1 DiT weights for any config (tests, benchmarks and the quick start need no
// downloads). Scales follow the reference initialisation closely enough that activations stay in a
// realistic range through every layer.
#pragma once

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "kernels/dtype.h"
#include "worker/engine/wan_config.h"

namespace zoetrope {

struct RandomWeightsOptions {
  uint64_t seed = 0;
  WeightNaming naming = WeightNaming::kOriginal;
  DType dtype = DType::kF32;  // F32, BF16 or F16
};

// Writes `weights_path` (safetensors, streamed tensor by tensor) and config.json beside it.
// `progress` (optional) is called after each tensor with (tensors written, total).
absl::Status WriteRandomWanDitWeights(const WanDitConfig& config, const RandomWeightsOptions& options,
                                      const std::string& weights_path,
                                      const std::function<void(size_t, size_t)>& progress = nullptr);

}  // namespace zoetrope
