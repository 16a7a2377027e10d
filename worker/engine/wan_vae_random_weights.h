// Deterministic random Wan2.1 VAE decoder weights (`conv2` + `decoder.*`) for any VAE config, so tests,
// benchmarks and the quick start need no downloads. Scales keep activations in a sane range through
// every layer and put most output pixels inside [−1, 1] (a few are clamped).
#pragma once

#include <string>

#include "absl/status/status.h"
#include "worker/engine/wan_random_weights.h"
#include "worker/engine/wan_vae.h"

namespace zoetrope {

// Writes `weights_path` (safetensors). Values depend only on (seed, original key), so both namings
// (options.naming) hold identical tensors. options.dtype: F32 (as released), BF16 or F16.
absl::Status WriteRandomWanVaeWeights(const WanVaeConfig& config, const RandomWeightsOptions& options,
                                      const std::string& weights_path);

}  // namespace zoetrope
