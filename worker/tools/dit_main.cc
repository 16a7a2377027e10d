// zoetrope-dit: one Wan2.1 DiT forward from tensors in a safetensors file, for checking weights and
// numerics against a reference.
//
//   zoetrope-dit --weights W --inputs IN.safetensors -o OUT.safetensors
// IN: `latent` F32 [16, F, H, W], `timestep` [1] (F32 or I64), `context` F32 [Lc, text_dim] (unpadded).
// OUT: `velocity` F32 [16, F, H, W].
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "kernels/backend_factory.h"
#include "parallel/sequence_attention.h"
#include "worker/engine/safetensors.h"
#include "worker/engine/wan_dit.h"

ABSL_FLAG(std::string, weights, "", "DiT checkpoint: .safetensors file, index.json or directory");
ABSL_FLAG(std::string, inputs, "", "safetensors file with latent, timestep and context");
ABSL_FLAG(std::string, o, "", "output safetensors file (velocity)");
ABSL_FLAG(std::string, config, "", "config preset to use when there is no config.json beside the weights");
ABSL_FLAG(std::string, device, "cpu", "compute device: cpu, cuda or cuda:N");

namespace {

absl::Status Run() {
  using namespace zoetrope;
  if (absl::GetFlag(FLAGS_weights).empty() || absl::GetFlag(FLAGS_inputs).empty() || absl::GetFlag(FLAGS_o).empty()) {
    return absl::InvalidArgumentError("--weights, --inputs and -o are required");
  }
  absl::StatusOr<std::unique_ptr<Backend>> created = CreateBackend(absl::GetFlag(FLAGS_device));
  if (!created.ok()) return absl::InvalidArgumentError(absl::StrCat("--device: ", created.status().message()));
  Backend* backend = created->get();
  absl::StatusOr<std::unique_ptr<WanDit>> model =
      WanDit::Load(absl::GetFlag(FLAGS_weights), *backend, absl::GetFlag(FLAGS_config));
  if (!model.ok()) return model.status();

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

  absl::StatusOr<WanDit::PromptConditioning> prompt = (*model)->EncodePrompt(*context);
  if (!prompt.ok()) return absl::InvalidArgumentError(absl::StrCat(inputs_path, ": \"context\": ", prompt.status().message()));
  LocalDenseAttention attention;
  const Tensor latent_on_device = backend->Upload(*latent, DType::kF32);
  const Tensor velocity =
      (*model)->Forward(latent_on_device, (*model)->EmbedTimestep(t), *prompt, attention, /*step=*/0);
  return WriteSafetensors(absl::GetFlag(FLAGS_o), {{"velocity", backend->ToHost(velocity)}});
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
