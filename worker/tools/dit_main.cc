// zoetrope-dit: one Wan2.1 DiT forward from tensors in a safetensors file, for checking weights and
// numerics against a reference, on one device or on a sequence-parallel group.
//
//   zoetrope-dit --weights W --inputs IN.safetensors -o OUT.safetensors [--sp N [--gpus L | --loopback]]
// IN: `latent` F32 [16, F, H, W], `timestep` [1] (F32 or I64), `context` F32 [Lc, text_dim] (unpadded).
// OUT: `velocity` F32 [16, F, H, W]. The model's config comes from config.json beside the weights (or
// --config). With --sp N the tokens are split over N ranks (CPU threads, GPUs, or loopback ranks on one
// GPU) running Ulysses attention, and the shards' outputs are gathered into one velocity.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "parallel/sparsity_plan.h"
#include "worker/engine/dit_group.h"
#include "worker/engine/pipeline_devices.h"
#include "worker/engine/safetensors.h"
#include "worker/engine/wan_dit.h"

ABSL_FLAG(std::string, weights, "", "DiT checkpoint: .safetensors file, index.json or directory");
ABSL_FLAG(std::string, inputs, "", "safetensors file with latent, timestep and context");
ABSL_FLAG(std::string, o, "", "output safetensors file (velocity)");
ABSL_FLAG(std::string, config, "", "config preset to use when there is no config.json beside the weights");
ABSL_FLAG(std::string, device, "cpu", "compute device: cpu, cuda or cuda:N");
ABSL_FLAG(int32_t, threads, 0, "CPU threads in all (0 = all cores)");
ABSL_FLAG(int32_t, sp, 1, "sequence-parallel ranks (CPU: threads; CUDA: the GPUs of --gpus, or --loopback)");
ABSL_FLAG(std::string, gpus, "", "CUDA: the GPUs of the group, e.g. 0,1");
ABSL_FLAG(bool, loopback, false, "CUDA: every rank on the first GPU");
ABSL_FLAG(int32_t, ulysses_chunks, 1,
          "with --sp > 1: head chunks whose all-to-alls overlap the attention of the previous chunk (1 = no overlap)");
ABSL_FLAG(std::string, attention, "dense", "self-attention plan: a preset (dense, radial, ...) or a plan YAML file");
ABSL_FLAG(int32_t, step, 0, "denoising step the forward stands for (plans choose per step)");
ABSL_FLAG(int32_t, steps, 50, "denoising steps of the run the plan is for");

namespace {

absl::Status Run() {
  using namespace zoetrope;
  if (absl::GetFlag(FLAGS_weights).empty() || absl::GetFlag(FLAGS_inputs).empty() || absl::GetFlag(FLAGS_o).empty()) {
    return absl::InvalidArgumentError("--weights, --inputs and -o are required");
  }
  DeviceRequest request;
  request.device = absl::GetFlag(FLAGS_device);
  request.cpu_threads = absl::GetFlag(FLAGS_threads);
  request.sequence_parallel = absl::GetFlag(FLAGS_sp);
  request.loopback = absl::GetFlag(FLAGS_loopback);
  absl::StatusOr<std::vector<int>> gpus = ParseGpuList(absl::GetFlag(FLAGS_gpus));
  if (!gpus.ok()) return gpus.status();
  request.gpus = *gpus;
  absl::StatusOr<PipelineDevices> devices = CreatePipelineDevices(request);
  if (!devices.ok()) return absl::InvalidArgumentError(absl::StrCat("--device/--sp: ", devices.status().message()));
  absl::StatusOr<SparsityPlan> plan = SparsityPlanFromPresetOrFile(absl::GetFlag(FLAGS_attention));
  if (!plan.ok()) return plan.status();
  Backend* backend = devices->backends[0].get();
  absl::StatusOr<std::unique_ptr<WanDit>> model =
      WanDit::Load(absl::GetFlag(FLAGS_weights), *backend, absl::GetFlag(FLAGS_config));
  if (!model.ok()) return model.status();
  const WanDitConfig& config = (*model)->config();
  if (absl::Status fits = plan->Validate(static_cast<int>(config.num_layers), static_cast<int>(config.num_heads),
                                         absl::GetFlag(FLAGS_steps));
      !fits.ok()) {
    return fits;
  }
  const int step = absl::GetFlag(FLAGS_step);
  if (step < 0 || step >= absl::GetFlag(FLAGS_steps)) {
    return absl::InvalidArgumentError(absl::StrCat("--step must be in [0, --steps) (got ", step, ")"));
  }

  const std::string inputs_path = absl::GetFlag(FLAGS_inputs);
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> inputs = SafetensorsFile::Open(inputs_path);
  if (!inputs.ok()) return inputs.status();
  absl::StatusOr<Tensor> latent = (*inputs)->Get("latent");
  if (!latent.ok()) return latent.status();
  absl::StatusOr<Tensor> timestep = (*inputs)->Get("timestep");
  if (!timestep.ok()) return timestep.status();
  absl::StatusOr<Tensor> context = (*inputs)->Get("context");
  if (!context.ok()) return context.status();
  if (absl::Status valid = (*model)->ValidateLatentShape(latent->shape()); !valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(inputs_path, ": \"latent\": ", valid.message()));
  }
  if (timestep->numel() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(inputs_path, ": \"timestep\" must hold one value, has shape ",
                                                   ShapeToString(timestep->shape())));
  }
  const double t = timestep->dtype() == DType::kI64 ? static_cast<double>(timestep->data<int64_t>()[0])
                                                     : static_cast<double>(ToFloatVector(*timestep)[0]);

  if (absl::Status valid = (*model)->EncodePrompt(*context).status(); !valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(inputs_path, ": \"context\": ", valid.message()));
  }
  const PipelineGroup ranks = devices->group();
  absl::StatusOr<std::unique_ptr<DitGroup>> group = DitGroup::Create(
      **model, absl::GetFlag(FLAGS_weights), absl::GetFlag(FLAGS_config), ranks.backends, ranks.degrees,
      ranks.communicators);
  if (!group.ok()) return group.status();
  if (absl::GetFlag(FLAGS_ulysses_chunks) < 1) return absl::InvalidArgumentError("--ulysses_chunks must be ≥ 1");
  (*group)->set_ulysses_chunks(absl::GetFlag(FLAGS_ulysses_chunks));
  absl::StatusOr<Tensor> forward = (*group)->Forward(*latent, t, *context, *plan, absl::GetFlag(FLAGS_steps), step);
  if (!forward.ok()) return forward.status();
  const Tensor velocity = backend->ToHost(*forward);
  return WriteSafetensors(absl::GetFlag(FLAGS_o), {{"velocity", velocity}});
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("One Wan2.1 DiT forward: --weights W --inputs IN.safetensors -o OUT.safetensors");
  absl::ParseCommandLine(argc, argv);
  if (absl::Status status = Run(); !status.ok()) {
    std::fprintf(stderr, "zoetrope-dit: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
