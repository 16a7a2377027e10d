// zoetrope-attention-fidelity: how far a sparsity plan moves a generation from dense attention.
//
//   zoetrope-attention-fidelity --model DIR --plan radial [--prompt … --seed S --width W --height H
//                               --frames F --steps N --guidance G --device cpu|cuda] -o report.json
//
// Runs the same request twice on the same model: once dense, once with the plan. During the planned run
// every self-attention call also computes dense attention on the same q, k, v, so each (step, block) gets
// the relative L2 of the plan's attention output against dense on identical inputs (the error the plan
// adds at that call, not accumulated drift). The report also has the final-latent relative L2 of the
// planned run against the dense run (the accumulated effect), and the block density that ran.
//
// Rows compared per call: all of them up to 4,096 tokens; beyond, 16 evenly spaced runs of 256 rows
// (4,096 rows), so a full-size model does not copy every attention output to the host.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "common/progress_bar.h"
#include "kernels/backend_factory.h"
#include "parallel/planned_attention.h"
#include "parallel/sparsity_plan.h"
#include "worker/engine/text_to_video.h"
#include "worker/tools/weights_tool.h"

ABSL_FLAG(std::string, model, "", "model folder: DiT, text encoder, VAE and tokenizer");
ABSL_FLAG(std::string, plan, "radial",
          "sparsity plan: a preset (radial, attention-tile, sliding-tile, dense) or a file");
ABSL_FLAG(std::string, prompt, "a paper boat drifting down a rainy street", "text prompt");
ABSL_FLAG(uint64_t, seed, 0, "noise seed");
ABSL_FLAG(int64_t, width, 832, "video width in pixels (multiple of 16)");
ABSL_FLAG(int64_t, height, 480, "video height in pixels (multiple of 16)");
ABSL_FLAG(int64_t, frames, 81, "frames (4n+1)");
ABSL_FLAG(int32_t, steps, 50, "denoising steps");
ABSL_FLAG(double, guidance, 5.0, "classifier-free guidance scale");
ABSL_FLAG(std::string, device, "cpu", "compute device: cpu, cuda or cuda:N");
ABSL_FLAG(int32_t, threads, 0, "CPU threads for the cpu device (0 = all cores)");
ABSL_FLAG(std::string, o, "", "output JSON report");

namespace zoetrope {
namespace {

constexpr int64_t kCompareRows = 4096;
constexpr int64_t kCompareRuns = 16;

// The rows of a [L, H, d] tensor that the report compares, on the host as F32.
std::vector<float> SampledRows(Backend& backend, const Tensor& x) {
  const int64_t tokens = x.dim(0);
  if (tokens <= kCompareRows) return ToFloatVector(backend.ToHost(x));
  const int64_t run = kCompareRows / kCompareRuns;
  std::vector<float> values;
  for (int64_t index = 0; index < kCompareRuns; ++index) {
    const int64_t begin = (tokens - run) * index / (kCompareRuns - 1);
    const std::vector<float> part = ToFloatVector(backend.ToHost(x.Rows(begin, run)));
    values.insert(values.end(), part.begin(), part.end());
  }
  return values;
}

double RelativeL2(const std::vector<float>& reference, const std::vector<float>& actual) {
  double difference = 0.0, norm = 0.0;
  for (size_t i = 0; i < reference.size(); ++i) {
    const double d = static_cast<double>(actual[i]) - reference[i];
    difference += d * d;
    norm += static_cast<double>(reference[i]) * reference[i];
  }
  // NaN stays NaN (and reaches the report as null): never reported as a small error.
  return norm > 0.0 ? std::sqrt(difference / norm) : std::sqrt(difference);
}

// The plan's attention, with dense attention on the same inputs beside it for the report.
class ComparingAttention final : public SequenceAttention {
 public:
  ComparingAttention(SparsityPlan plan, int steps, int blocks)
      : planned_(std::move(plan), steps),
        worst_(static_cast<size_t>(steps), std::vector<double>(static_cast<size_t>(blocks), 0.0)) {}

  Tensor Attend(Backend& backend, const Tensor& q, const Tensor& k, const Tensor& v,
                const AttentionSite& site) override {
    const Tensor out = planned_.Attend(backend, q, k, v, site);
    const Tensor dense = backend.Attention(q, k, v, site.scale, /*layout=*/nullptr);
    const double error = RelativeL2(SampledRows(backend, dense), SampledRows(backend, out));
    double& worst = worst_[static_cast<size_t>(site.step)][static_cast<size_t>(site.block)];
    // The conditional and unconditional passes both visit a site: keep the larger error (NaN sticks).
    worst = std::isnan(error) || std::isnan(worst) ? NAN : std::max(worst, error);
    return out;
  }
  double mean_block_density() const override { return planned_.mean_block_density(); }
  const std::vector<std::vector<double>>& worst() const { return worst_; }

 private:
  PlannedAttention planned_;
  std::vector<std::vector<double>> worst_;  // [step][block]
};

nlohmann::json Number(double value) { return std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(); }

absl::Status Run() {
  const std::string output = absl::GetFlag(FLAGS_o);
  if (output.empty()) return absl::InvalidArgumentError("-o REPORT.json is required");
  if (absl::GetFlag(FLAGS_model).empty()) return absl::InvalidArgumentError("--model is required");
  absl::StatusOr<SparsityPlanText> plan_text = ReadSparsityPlanText(absl::GetFlag(FLAGS_plan));
  if (!plan_text.ok()) return absl::InvalidArgumentError(absl::StrCat("--plan: ", plan_text.status().message()));

  absl::StatusOr<std::unique_ptr<Backend>> backend =
      CreateBackend(absl::GetFlag(FLAGS_device), absl::GetFlag(FLAGS_threads));
  if (!backend.ok()) return absl::InvalidArgumentError(absl::StrCat("--device: ", backend.status().message()));
  absl::StatusOr<std::unique_ptr<TextToVideoPipeline>> pipeline =
      TextToVideoPipeline::Load(absl::GetFlag(FLAGS_model), **backend);
  if (!pipeline.ok()) return pipeline.status();
  const WanDitConfig& config = (*pipeline)->transformer().config();

  GenerationParameters parameters;
  parameters.prompt = absl::GetFlag(FLAGS_prompt);
  parameters.seed = absl::GetFlag(FLAGS_seed);
  parameters.width = absl::GetFlag(FLAGS_width);
  parameters.height = absl::GetFlag(FLAGS_height);
  parameters.frames = absl::GetFlag(FLAGS_frames);
  parameters.steps = absl::GetFlag(FLAGS_steps);
  parameters.guidance = absl::GetFlag(FLAGS_guidance);
  parameters.decode = false;  // fidelity is measured on the latent

  parameters.attention = "dense";
  auto run = [&](const char* label, SequenceAttention* attention) {
    ProgressBar bar(label, parameters.steps, "steps");
    absl::StatusOr<GenerationResult> result = (*pipeline)->Generate(
        parameters,
        [&](const GenerationProgress& progress) {
          if (progress.phase == GenerationPhase::kDenoising && progress.denoise.step > 0) {
            bar.Update(progress.denoise.step);
          }
        },
        nullptr, attention);
    bar.Finish();
    return result;
  };
  absl::StatusOr<GenerationResult> dense = run("dense", nullptr);
  if (!dense.ok()) return dense.status();

  parameters.attention = plan_text->text;
  parameters.attention_source = plan_text->source;
  absl::StatusOr<SparsityPlan> plan = SparsityPlanFromPresetOrText(plan_text->text, plan_text->source);
  if (!plan.ok()) return plan.status();
  ComparingAttention comparing(*plan, parameters.steps, static_cast<int>(config.num_layers));
  absl::StatusOr<GenerationResult> sparse = run("planned", &comparing);
  if (!sparse.ok()) return sparse.status();

  nlohmann::json report;
  report["model"] = absl::GetFlag(FLAGS_model);
  report["dit"] = config.name;
  report["plan"] = plan_text->source;
  report["plan_yaml"] = plan->ToYaml();
  report["backend"] = (*backend)->name();
  report["request"] = {{"width", parameters.width},  {"height", parameters.height},     {"frames", parameters.frames},
                       {"steps", parameters.steps},  {"guidance", parameters.guidance}, {"seed", parameters.seed},
                       {"prompt", parameters.prompt}};
  const Shape& latent_shape = dense->latent.shape();
  const TokenGrid grid{latent_shape[1], latent_shape[2] / config.patch_h, latent_shape[3] / config.patch_w};
  report["grid_tokens"] = {grid.frames, grid.height, grid.width};
  report["block_density"] = sparse->attention_density;
  report["final_latent_relative_l2"] = Number(RelativeL2(ToFloatVector(dense->latent), ToFloatVector(sparse->latent)));
  report["denoise_seconds"] = {{"dense", dense->denoise_seconds}, {"planned_with_comparison", sparse->denoise_seconds}};
  nlohmann::json per_site = nlohmann::json::array();
  std::vector<double> per_block(static_cast<size_t>(config.num_layers), 0.0);
  double worst_overall = 0.0;
  for (const std::vector<double>& step : comparing.worst()) {
    nlohmann::json row = nlohmann::json::array();
    for (size_t block = 0; block < step.size(); ++block) {
      row.push_back(Number(step[block]));
      per_block[block] = std::isnan(step[block]) ? NAN : std::max(per_block[block], step[block]);
      worst_overall = std::isnan(step[block]) ? NAN : std::max(worst_overall, step[block]);
    }
    per_site.push_back(row);
  }
  nlohmann::json per_step = nlohmann::json::array();
  for (const std::vector<double>& step : comparing.worst()) {
    double worst = 0.0;
    for (double error : step) worst = std::isnan(error) ? NAN : std::max(worst, error);
    per_step.push_back(Number(worst));
  }
  nlohmann::json blocks = nlohmann::json::array();
  for (double error : per_block) blocks.push_back(Number(error));
  report["attention_relative_l2"] = {{"worst", Number(worst_overall)},
                                     {"per_step", per_step},
                                     {"per_block", blocks},
                                     {"per_step_block", per_site},
                                     {"rows_compared_per_call", std::min(kCompareRows, grid.tokens())}};
  if (absl::Status created = CreateParentDirectory(output); !created.ok()) return created;
  std::ofstream file(output);
  file << report.dump(1) << "\n";
  if (!file) return absl::InternalError(absl::StrCat(output, ": cannot write the report"));
  std::fprintf(stderr, "%s: block density %.4f, worst attention relative L2 %.3g, final latent relative L2 %.3g\n",
               plan_text->source.c_str(), sparse->attention_density, worst_overall,
               report["final_latent_relative_l2"].is_null() ? NAN : report["final_latent_relative_l2"].get<double>());
  std::printf("%s\n", output.c_str());
  return absl::OkStatus();
}

}  // namespace
}  // namespace zoetrope

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Attention fidelity of a sparsity plan against dense: --model DIR --plan PRESET|FILE -o REPORT.json");
  absl::ParseCommandLine(argc, argv);
  if (absl::Status status = zoetrope::Run(); !status.ok()) {
    std::fprintf(stderr, "zoetrope-attention-fidelity: %s\n", std::string(status.message()).c_str());
    return absl::IsInvalidArgument(status) ? 2 : 1;
  }
  return 0;
}
