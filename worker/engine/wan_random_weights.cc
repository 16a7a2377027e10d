#include "worker/engine/wan_random_weights.h"

#include <cmath>
#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "worker/engine/random.h"
#include "worker/engine/safetensors.h"
#include "worker/engine/wan_weights.h"

namespace zoetrope {
namespace {

// Standard deviation and mean of one parameter's values. Linear weights keep the activation variance
// (1/√fan_in); the time projection is damped so modulation scales and gates stay near their trained
// magnitude (well below 1) and 30–40 residual blocks do not blow up; norm weights sit around 1.
struct Distribution {
  double mean = 0.0;
  double std = 0.0;
};

Distribution DistributionFor(const ParameterSpec& spec) {
  const std::string& name = spec.name;
  const int64_t fan_in = spec.shape.size() >= 2 ? NumElements(spec.shape) / spec.shape[0] : 1;
  if (absl::EndsWith(name, ".bias")) return {0.0, 0.02};
  if (absl::StrContains(name, "norm")) return {1.0, 0.05};  // RMSNorm and norm3 weights
  if (absl::EndsWith(name, "modulation")) return {0.0, 0.5 / std::sqrt(static_cast<double>(spec.shape.back()))};
  if (absl::StartsWith(name, "time_projection")) return {0.0, 0.1 / std::sqrt(static_cast<double>(fan_in))};
  return {0.0, 1.0 / std::sqrt(static_cast<double>(fan_in))};
}

}  // namespace

absl::Status WriteRandomWanDitWeights(const WanDitConfig& config, const RandomWeightsOptions& options,
                                      const std::string& weights_path,
                                      const std::function<void(size_t, size_t)>& progress) {
  if (absl::Status valid = config.Validate(); !valid.ok()) return valid;
  if (options.dtype != DType::kF32 && options.dtype != DType::kBF16 && options.dtype != DType::kF16) {
    return absl::InvalidArgumentError("random weights dtype must be F32, BF16 or F16");
  }
  const std::vector<ParameterSpec> specs = WanDitParameters(config);
  auto key_of = [&](const ParameterSpec& spec) {
    return options.naming == WeightNaming::kDiffusers ? DiffusersName(spec.name) : spec.name;
  };
  std::vector<SafetensorsWriter::Entry> entries;
  for (const ParameterSpec& spec : specs) entries.push_back({key_of(spec), options.dtype, spec.shape});
  absl::StatusOr<std::unique_ptr<SafetensorsWriter>> writer = SafetensorsWriter::Create(
      weights_path, std::move(entries), {{"format", "pt"}, {"generator", "zoetrope-mkweights"},
                                         {"seed", absl::StrCat(options.seed)}, {"config", config.name}});
  if (!writer.ok()) return writer.status();
  for (size_t i = 0; i < specs.size(); ++i) {
    const ParameterSpec& spec = specs[i];
    Tensor values = Tensor::Host(spec.shape, DType::kF32);
    // The stream is keyed by the original name, so both namings hold identical values.
    FillStandardNormal(StreamKey(options.seed, spec.name), 0, values.data<float>(), values.numel());
    const Distribution distribution = DistributionFor(spec);
    float* data = values.data<float>();
    for (int64_t j = 0; j < values.numel(); ++j) {
      data[j] = static_cast<float>(distribution.mean + distribution.std * data[j]);
    }
    absl::Status written = (*writer)->Write(key_of(spec), ConvertHost(values, options.dtype));
    if (!written.ok()) return written;
    if (progress) progress(i + 1, specs.size());
  }
  if (absl::Status finished = (*writer)->Finish(); !finished.ok()) return finished;

  const std::filesystem::path config_path = std::filesystem::path(weights_path).parent_path() / "config.json";
  const std::string temporary = config_path.string() + ".tmp";
  {
    std::ofstream file(temporary, std::ios::trunc);
    file << WanDitConfigToJson(config, options.naming);
    if (!file) return absl::InternalError(absl::StrCat(temporary, ": cannot write config"));
  }
  std::error_code error;
  std::filesystem::rename(temporary, config_path, error);
  if (error) return absl::InternalError(absl::StrCat(config_path.string(), ": ", error.message()));
  return absl::OkStatus();
}

}  // namespace zoetrope
