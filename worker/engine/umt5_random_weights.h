// Deterministic random umT5 encoder weights for any config (tests, benchmarks and the quick start need
// no downloads), in Wan's or HF's key names. Values depend only on (seed, Wan parameter name, element
// index) (worker/engine/random.h), so both namings and every dtype hold the same numbers.
//
// Scales: embedding N(0, 1); q and k N(0, 1/(d_model·√head_dim)) so the unscaled logits q·k have unit
// spread (trained T5 folds the 1/√d into q); v N(0, 1/d_model), o N(0, 1/attention_dim), the FFN
// 1/fan_in; position-bias tables N(0, 1) so the bias matters as much as the content term; norm weights
// 1 + N(0, 0.05²). No config.json is written: the loader infers the config from the shapes, and a
// config.json beside a DiT's weights must not be overwritten.
#pragma once

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "kernels/dtype.h"
#include "worker/engine/umt5_weights.h"

namespace zoetrope {

struct Umt5RandomWeightsOptions {
  uint64_t seed = 0;
  Umt5Naming naming = Umt5Naming::kWan;
  DType dtype = DType::kF32;  // F32, BF16 or F16
};

// Writes `weights_path` (safetensors, streamed tensor by tensor). `progress` (optional) is called after
// each tensor with (tensors written, total).
absl::Status WriteRandomUmt5Weights(const Umt5Config& config, const Umt5RandomWeightsOptions& options,
                                    const std::string& weights_path,
                                    const std::function<void(size_t, size_t)>& progress = nullptr);

}  // namespace zoetrope
