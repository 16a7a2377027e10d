// zoetrope-mkweights-text: deterministic random umT5 text-encoder weights for any config.
//
//   zoetrope-mkweights-text --config tiny --seed 0 -o models/tiny/text_encoder.safetensors
//   zoetrope-mkweights-text --config umt5-xxl --dtype bf16 --hf-names -o /data/wan/text_encoder/model.safetensors
//
// The stand-in tokenizer that goes with the tiny config: scripts/build-tokenizer.sh OUT_DIR.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "worker/engine/umt5_random_weights.h"
#include "worker/tools/weights_tool.h"

ABSL_FLAG(std::string, config, "tiny", "text encoder config: tiny or umt5-xxl");
ABSL_FLAG(uint64_t, seed, 0, "random seed; the same seed gives the same weights everywhere");
ABSL_FLAG(std::string, o, "", "output .safetensors path");
ABSL_FLAG(bool, hf_names, false, "use HF UMT5EncoderModel key names instead of Wan's T5Encoder ones");
ABSL_FLAG(std::string, dtype, "f32", "stored dtype: f32, bf16 or f16");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Writes deterministic random umT5 encoder weights: --config tiny|umt5-xxl --seed S -o FILE [--hf-names]");
  // Abseil flag names cannot contain '-': accept the documented spelling --hf-names for --hf_names.
  std::vector<std::string> arguments(argv, argv + argc);
  std::vector<char*> rewritten;
  for (std::string& argument : arguments) {
    if (argument.rfind("--", 0) == 0) {
      for (size_t i = 2; i < argument.size() && argument[i] != '='; ++i) {
        if (argument[i] == '-') argument[i] = '_';
      }
    }
    rewritten.push_back(argument.data());
  }
  absl::ParseCommandLine(static_cast<int>(rewritten.size()), rewritten.data());
  constexpr absl::string_view kTool = "zoetrope-mkweights-text";
  absl::StatusOr<zoetrope::Umt5Config> config = zoetrope::Umt5ConfigByName(absl::GetFlag(FLAGS_config));
  if (!config.ok()) return zoetrope::ReportToolError(kTool, config.status(), 2, "--config");
  const std::string output = absl::GetFlag(FLAGS_o);
  return zoetrope::RunWeightsWriter(
      kTool, absl::StrCat("mkweights-text ", config->name), output, absl::GetFlag(FLAGS_dtype),
      [&](zoetrope::DType dtype, const zoetrope::WeightsProgress& progress) {
        zoetrope::Umt5RandomWeightsOptions options;
        options.seed = absl::GetFlag(FLAGS_seed);
        options.naming =
            absl::GetFlag(FLAGS_hf_names) ? zoetrope::Umt5Naming::kHuggingFace : zoetrope::Umt5Naming::kWan;
        options.dtype = dtype;
        return zoetrope::WriteRandomUmt5Weights(*config, options, output, progress);
      });
}
