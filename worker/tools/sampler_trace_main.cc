// zoetrope-sampler-trace: runs a sampler on a synthetic, linear "model" and records every step, so the
// samplers can be compared with an independent reference (tests/reference/check_sampler.py).
//
//   zoetrope-sampler-trace --sampler unipc --steps 50 --shift 5 --guidance 5
//       --input in.safetensors --output out.safetensors   (one command line)
//
// IN holds F32 tensors noise, cond_a, cond_b, uncond_a, uncond_b of one shape. At step i, with integer
// timestep t_i and current sample x, the model outputs v_cond = cond_a ⊙ x + cond_b·(t_i/1000) and
// likewise v_uncond; they are guided (ApplyGuidance) and handed to Sampler::Step, starting from
// x = noise. OUT holds timesteps I64 [N], sigmas F32 [N+1], trajectory F32 [N, ...shape] (the sample
// after each step) and final F32 [...shape]. Runs on the CPU backend.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#include "worker/engine/safetensors.h"
#include "worker/engine/sampler.h"

ABSL_FLAG(std::string, sampler, "unipc", "sampler: unipc, dpmpp (or dpm++) or euler");
ABSL_FLAG(int, steps, 50, "number of sampling steps (>= 1)");
ABSL_FLAG(double, shift, 5.0, "flow shift (> 0)");
ABSL_FLAG(double, guidance, 5.0, "classifier-free guidance scale");
ABSL_FLAG(std::string, input, "", "input .safetensors with F32 noise, cond_a, cond_b, uncond_a, uncond_b");
ABSL_FLAG(std::string, output, "", "output .safetensors for timesteps, sigmas, trajectory and final");

namespace zoetrope {
namespace {

constexpr const char* kInputNames[] = {"noise", "cond_a", "cond_b", "uncond_a", "uncond_b"};

struct TraceInputs {
  Shape shape;
  std::map<std::string, std::vector<float>> values;  // by name
};

absl::StatusOr<TraceInputs> ReadInputs(const std::string& path) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  if (!file.ok()) return file.status();
  TraceInputs inputs;
  for (const char* name : kInputNames) {
    if (!(*file)->Contains(name)) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": missing tensor '", name,
                                                     "' (need noise, cond_a, cond_b, uncond_a, uncond_b)"));
    }
    absl::StatusOr<Tensor> tensor = (*file)->Get(name);
    if (!tensor.ok()) return tensor.status();
    if (tensor->dtype() != DType::kF32) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", name, "' is ",
                                                     std::string(DTypeName(tensor->dtype())), ", expected F32"));
    }
    if (inputs.values.empty()) {
      inputs.shape = tensor->shape();
      if (tensor->numel() == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": tensor '", name, "' is empty ", ShapeToString(tensor->shape())));
      }
    } else if (tensor->shape() != inputs.shape) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", name, "' has shape ",
                                                     ShapeToString(tensor->shape()), ", but noise has ",
                                                     ShapeToString(inputs.shape)));
    }
    inputs.values[name] = ToFloatVector(*tensor);  // copies out of the mapping
  }
  return inputs;
}

// a ⊙ x + b·(timestep/1000), on the host (the Backend has no element-wise product; this is a test model).
std::vector<float> SyntheticVelocity(const std::vector<float>& a, const std::vector<float>& b,
                                     const std::vector<float>& x, int64_t timestep) {
  const double time = static_cast<double>(timestep) / 1000.0;
  std::vector<float> velocity(x.size());
  for (size_t j = 0; j < x.size(); ++j) {
    velocity[j] = static_cast<float>(static_cast<double>(a[j]) * x[j] + static_cast<double>(b[j]) * time);
  }
  return velocity;
}

absl::Status RunTrace(SamplerKind kind, int steps, double shift, double guidance, const std::string& input_path,
                      const std::string& output_path) {
  absl::StatusOr<TraceInputs> inputs = ReadInputs(input_path);
  if (!inputs.ok()) return inputs.status();
  absl::StatusOr<std::unique_ptr<Sampler>> sampler = Sampler::Create(kind, steps, shift);
  if (!sampler.ok()) return sampler.status();
  const FlowSchedule& schedule = (*sampler)->schedule();

  std::unique_ptr<Backend> backend = CreateCpuBackend();
  const Shape& shape = inputs->shape;
  auto upload = [&](const std::vector<float>& values) {
    return backend->Upload(HostTensorFromFloats(values, shape), DType::kF32);
  };

  const int64_t count = NumElements(shape);
  std::vector<float> trajectory;
  trajectory.reserve(static_cast<size_t>(count) * steps);
  Tensor sample = upload(inputs->values["noise"]);
  for (int i = 0; i < steps; ++i) {
    const std::vector<float> x = ToFloatVector(backend->ToHost(sample));
    const int64_t timestep = schedule.timesteps[i];
    const Tensor cond = upload(SyntheticVelocity(inputs->values["cond_a"], inputs->values["cond_b"], x, timestep));
    const Tensor uncond =
        upload(SyntheticVelocity(inputs->values["uncond_a"], inputs->values["uncond_b"], x, timestep));
    const Tensor velocity = ApplyGuidance(*backend, cond, uncond, guidance);
    sample = (*sampler)->Step(*backend, i, velocity, sample);
    const std::vector<float> next = ToFloatVector(backend->ToHost(sample));
    trajectory.insert(trajectory.end(), next.begin(), next.end());
  }

  Tensor timesteps = Tensor::Host({steps}, DType::kI64);
  std::memcpy(timesteps.raw_data(), schedule.timesteps.data(), timesteps.nbytes());
  Shape trajectory_shape = {steps};
  trajectory_shape.insert(trajectory_shape.end(), shape.begin(), shape.end());
  const std::map<std::string, std::string> metadata = {
      {"sampler", std::string(SamplerKindName(kind))},
      {"steps", absl::StrCat(steps)},
      {"shift", absl::StrCat(shift)},
      {"guidance", absl::StrCat(guidance)},
  };
  return WriteSafetensors(output_path,
                          {{"timesteps", timesteps},
                           {"sigmas", HostTensorFromFloats(schedule.sigmas, {steps + 1})},
                           {"trajectory", HostTensorFromFloats(trajectory, trajectory_shape)},
                           {"final", backend->ToHost(sample)}},
                          metadata);
}

int Fail(const std::string& message) {
  std::fprintf(stderr, "zoetrope-sampler-trace: %s\n", message.c_str());
  return 1;
}

}  // namespace
}  // namespace zoetrope

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Traces a sampler on a synthetic linear model: --sampler {unipc,dpmpp,euler} --steps N --shift S "
      "--guidance G --input IN.safetensors --output OUT.safetensors");
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() > 1) {
    return zoetrope::Fail(absl::StrCat("unexpected argument '", positional[1], "' (all inputs are flags)"));
  }
  const std::string input = absl::GetFlag(FLAGS_input);
  const std::string output = absl::GetFlag(FLAGS_output);
  if (input.empty()) return zoetrope::Fail("--input IN.safetensors is required");
  if (output.empty()) return zoetrope::Fail("--output OUT.safetensors is required");
  absl::StatusOr<zoetrope::SamplerKind> kind = zoetrope::ParseSamplerKind(absl::GetFlag(FLAGS_sampler));
  if (!kind.ok()) return zoetrope::Fail(absl::StrCat("--sampler: ", kind.status().message()));
  const double guidance = absl::GetFlag(FLAGS_guidance);
  if (!std::isfinite(guidance)) return zoetrope::Fail(absl::StrCat("--guidance must be finite, got ", guidance));

  const absl::Status status = zoetrope::RunTrace(*kind, absl::GetFlag(FLAGS_steps), absl::GetFlag(FLAGS_shift),
                                                 guidance, input, output);
  if (!status.ok()) return zoetrope::Fail(std::string(status.message()));
  return 0;
}
