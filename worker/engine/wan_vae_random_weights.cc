#include "worker/engine/wan_vae_random_weights.h"

#include <cmath>
#include <memory>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "worker/engine/random.h"
#include "worker/engine/safetensors.h"

namespace zoetrope {
namespace {

struct Distribution {
  double mean = 0.0;
  double std = 0.0;
};

// Every conv input is either RMS-normalised (then SiLU) or the residual stream, so 1/√fan_in keeps
// the variance; the second conv of each residual block is halved so that the residual stream grows
// slowly over the 11 blocks, and the head at 0.8/√fan_in leaves output pixels at std ≈ 0.5.
Distribution DistributionFor(const WanVaeParameterSpec& spec) {
  const std::string& name = spec.name;
  const int64_t fan_in = spec.shape.size() >= 2 ? NumElements(spec.shape) / spec.shape[0] : 1;
  const double unit = 1.0 / std::sqrt(static_cast<double>(fan_in));
  if (absl::EndsWith(name, ".gamma")) return {1.0, 0.1};
  if (absl::EndsWith(name, ".bias")) return {0.0, 0.02};
  if (absl::StrContains(name, ".residual.6.")) return {0.0, 0.5 * unit};
  if (absl::StartsWith(name, "decoder.head.")) return {0.0, 0.8 * unit};
  return {0.0, unit};
}

}  // namespace

absl::Status WriteRandomWanVaeWeights(const WanVaeConfig& config, const RandomWeightsOptions& options,
                                      const std::string& weights_path) {
  if (absl::Status valid = config.Validate(); !valid.ok()) return valid;
  if (options.dtype != DType::kF32 && options.dtype != DType::kBF16 && options.dtype != DType::kF16) {
    return absl::InvalidArgumentError("random VAE weights dtype must be F32, BF16 or F16");
  }
  const std::vector<WanVaeParameterSpec> specs = WanVaeDecoderParameters(config);
  auto key_of = [&](const WanVaeParameterSpec& spec) {
    return options.naming == WeightNaming::kDiffusers ? spec.diffusers_name : spec.name;
  };
  std::vector<SafetensorsWriter::Entry> entries;
  for (const WanVaeParameterSpec& spec : specs) entries.push_back({key_of(spec), options.dtype, spec.shape});
  absl::StatusOr<std::unique_ptr<SafetensorsWriter>> writer =
      SafetensorsWriter::Create(weights_path, std::move(entries),
                                {{"format", "pt"},
                                 {"generator", "zoetrope-mkweights-vae"},
                                 {"seed", absl::StrCat(options.seed)},
                                 {"config", config.name}});
  if (!writer.ok()) return writer.status();
  for (const WanVaeParameterSpec& spec : specs) {
    Tensor values = Tensor::Host(spec.shape, DType::kF32);
    FillStandardNormal(StreamKey(options.seed, spec.name), 0, values.data<float>(), values.numel());
    const Distribution distribution = DistributionFor(spec);
    float* data = values.data<float>();
    for (int64_t j = 0; j < values.numel(); ++j) {
      data[j] = static_cast<float>(distribution.mean + distribution.std * data[j]);
    }
    if (absl::Status written = (*writer)->Write(key_of(spec), ConvertHost(values, options.dtype)); !written.ok()) {
      return written;
    }
  }
  return (*writer)->Finish();
}

}  // namespace zoetrope
