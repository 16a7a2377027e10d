#include "worker/engine/umt5_random_weights.h"

#include <cmath>

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

Distribution DistributionFor(const Umt5Config& config, const ParameterSpec& spec) {
  const std::string& name = spec.name;
  const auto model_dim = static_cast<double>(config.model_dim);
  if (absl::StrContains(name, "norm")) return {1.0, 0.05};
  if (name == "token_embedding.weight") return {0.0, 1.0};
  if (absl::EndsWith(name, "pos_embedding.embedding.weight")) return {0.0, 1.0};
  if (absl::EndsWith(name, "attn.q.weight") || absl::EndsWith(name, "attn.k.weight")) {
    return {0.0, 1.0 / std::sqrt(model_dim * std::sqrt(static_cast<double>(config.head_dim)))};
  }
  const auto fan_in = static_cast<double>(spec.shape.back());
  return {0.0, 1.0 / std::sqrt(fan_in)};
}

}  // namespace

absl::Status WriteRandomUmt5Weights(const Umt5Config& config, const Umt5RandomWeightsOptions& options,
                                    const std::string& weights_path,
                                    const std::function<void(size_t, size_t)>& progress) {
  if (absl::Status valid = config.Validate(); !valid.ok()) return valid;
  if (options.dtype != DType::kF32 && options.dtype != DType::kBF16 && options.dtype != DType::kF16) {
    return absl::InvalidArgumentError("random weights dtype must be F32, BF16 or F16");
  }
  const std::vector<ParameterSpec> specs = Umt5Parameters(config);
  auto key_of = [&](const ParameterSpec& spec) {
    return options.naming == Umt5Naming::kHuggingFace ? Umt5HuggingFaceName(spec.name) : spec.name;
  };
  std::vector<SafetensorsWriter::Entry> entries;
  for (const ParameterSpec& spec : specs) entries.push_back({key_of(spec), options.dtype, spec.shape});
  absl::StatusOr<std::unique_ptr<SafetensorsWriter>> writer = SafetensorsWriter::Create(
      weights_path, std::move(entries),
      {{"format", "pt"}, {"generator", "zoetrope-mkweights-text"}, {"seed", absl::StrCat(options.seed)},
       {"config", config.name}});
  if (!writer.ok()) return writer.status();
  for (size_t i = 0; i < specs.size(); ++i) {
    const ParameterSpec& spec = specs[i];
    Tensor values = Tensor::Host(spec.shape, DType::kF32);
    // Keyed by the Wan name, so both namings hold identical values.
    FillStandardNormal(StreamKey(options.seed, absl::StrCat("umt5/", spec.name)), 0, values.data<float>(),
                       values.numel());
    const Distribution distribution = DistributionFor(config, spec);
    float* data = values.data<float>();
    for (int64_t j = 0; j < values.numel(); ++j) {
      data[j] = static_cast<float>(distribution.mean + distribution.std * data[j]);
    }
    absl::Status written = (*writer)->Write(
        key_of(spec), options.dtype == DType::kF32 ? values : ConvertHost(values, options.dtype));
    if (!written.ok()) return written;
    if (progress) progress(i + 1, specs.size());
  }
  return (*writer)->Finish();
}

}  // namespace zoetrope
