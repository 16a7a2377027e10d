// zoetrope-dit-bench: times one Wan2.1 DiT forward pass (worker/engine/wan_dit.h) on a backend.
//
//   zoetrope-dit-bench --config wan2.1-t2v-1.3b --device cuda --latent 16,21,60,104 --workdir /tmp/w
// Writes deterministic random weights (bf16) into --workdir unless --weights names a checkpoint, encodes
// a random prompt once, then runs --warmup + --iterations forwards (each at a new timestep, as the
// denoising loop does) and prints one JSON object: median seconds per forward, the analytic FLOPs of
// spec/wan21.md §7, TFLOP/s, and on CUDA the allocator's cudaMalloc count during the timed forwards.
// With --sp N the forward runs on a sequence-parallel group (worker/engine/dit_group.h: N CPU threads, the
// GPUs of --gpus, or N loopback ranks on one GPU), prompt encoding and the output gather included; --sp 1
// is the group path on one rank, the baseline of its overhead.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/profiling_backend.h"
#include "kernels/backend_factory.h"
#include "parallel/planned_attention.h"
#include "parallel/sequence_attention.h"
#include "parallel/sparsity_plan.h"
#include "worker/engine/dit_group.h"
#include "worker/engine/pipeline_devices.h"
#include "worker/engine/wan_dit.h"
#include "worker/engine/wan_random_weights.h"
#ifdef ZOETROPE_HAS_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

ABSL_FLAG(std::string, config, "wan2.1-t2v-1.3b", "model config preset (random weights)");
ABSL_FLAG(std::string, weights, "", "checkpoint to load instead of random weights");
ABSL_FLAG(std::string, workdir, "/tmp/zoetrope-dit-bench", "where random weights are written");
ABSL_FLAG(std::string, device, "cuda", "backend: cpu, cuda, cuda:N");
ABSL_FLAG(std::string, latent, "16,21,60,104", "latent shape C,F,H,W (480p/81 frames by default)");
ABSL_FLAG(int, text_tokens, 128, "prompt tokens before padding to text_len");
ABSL_FLAG(int, warmup, 1, "untimed forwards");
ABSL_FLAG(int, iterations, 3, "timed forwards");
ABSL_FLAG(bool, reuse_weights, false, "keep random weights already in --workdir from an earlier run");
ABSL_FLAG(std::string, attention, "dense", "sparsity plan: a preset or a plan YAML file (parallel/sparsity_plan.h)");
ABSL_FLAG(int, step, 20, "denoising step every timed forward stands for (selects the plan's mode)");
ABSL_FLAG(int, steps, 50, "steps of the schedule the plan is scaled to");
ABSL_FLAG(bool, profile, false, "after timing, one more forward with per-operator times (to stderr)");
ABSL_FLAG(int, sp, 0, "sequence-parallel ranks (0: the plain one-device forward; 1: the group path on one rank)");
ABSL_FLAG(std::string, gpus, "", "CUDA: the GPUs of the group, e.g. 0,1");
ABSL_FLAG(bool, loopback, false, "CUDA: every rank on the first GPU");
ABSL_FLAG(int32_t, ulysses_chunks, 1,
          "with --sp > 1: head chunks whose all-to-alls overlap the attention of the previous chunk (1 = no overlap)");

namespace {

using namespace zoetrope;

// spec/wan21.md §7: matmul FLOPs of one forward (2 per multiply-add).
double ForwardFlops(const WanDitConfig& config, double tokens) {
  const double d = static_cast<double>(config.dim), f = static_cast<double>(config.ffn_dim);
  const double text = static_cast<double>(config.text_len);
  const double per_block = 8 * tokens * d * d + 4 * tokens * tokens * d + 4 * tokens * d * d + 4 * text * d * d +
                           4 * tokens * text * d + 4 * tokens * d * f;
  const double embeddings = 2 * tokens * 64 * d + 2 * text * config.text_dim * d + 2 * text * d * d +
                            2 * tokens * d * 64;
  return per_block * static_cast<double>(config.num_layers) + embeddings;
}

absl::Status Run() {
  std::vector<int64_t> latent_shape;
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_latent), ',')) {
    int64_t value = 0;
    if (!absl::SimpleAtoi(part, &value)) return absl::InvalidArgumentError("--latent must be C,F,H,W");
    latent_shape.push_back(value);
  }
  const int sequence_ranks = absl::GetFlag(FLAGS_sp);
  DeviceRequest request;
  request.device = absl::GetFlag(FLAGS_device);
  request.sequence_parallel = std::max(1, sequence_ranks);
  request.loopback = absl::GetFlag(FLAGS_loopback);
  absl::StatusOr<std::vector<int>> gpus = ParseGpuList(absl::GetFlag(FLAGS_gpus));
  if (!gpus.ok()) return gpus.status();
  request.gpus = *gpus;
  absl::StatusOr<PipelineDevices> devices = CreatePipelineDevices(request);
  if (!devices.ok()) return devices.status();
  std::unique_ptr<Backend>* backend = &devices->backends[0];

  std::string weights = absl::GetFlag(FLAGS_weights);
  if (weights.empty()) {
    absl::StatusOr<WanDitConfig> config = WanDitConfigByName(absl::GetFlag(FLAGS_config));
    if (!config.ok()) return config.status();
    std::filesystem::create_directories(absl::GetFlag(FLAGS_workdir));
    weights = absl::GetFlag(FLAGS_workdir) + "/" + config->name + ".safetensors";
  }
  if (absl::GetFlag(FLAGS_weights).empty() && !(absl::GetFlag(FLAGS_reuse_weights) && std::filesystem::exists(weights))) {
    absl::StatusOr<WanDitConfig> config = WanDitConfigByName(absl::GetFlag(FLAGS_config));
    RandomWeightsOptions options;
    options.dtype = DType::kBF16;
    const auto start = std::chrono::steady_clock::now();
    if (absl::Status status = WriteRandomWanDitWeights(*config, options, weights); !status.ok()) return status;
    std::fprintf(stderr, "random weights written in %.1f s\n",
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  ProfilingBackend profiler(**backend);
  profiler.set_enabled(false);
  // --profile covers the plain forward only; a group's rank 0 runs on the backend itself, because the CUDA
  // communicators order their streams against the backend's own stream (a wrapper has none).
  auto model = WanDit::Load(weights, sequence_ranks >= 1 ? static_cast<Backend&>(**backend) : profiler);
  if (!model.ok()) return model.status();
  const WanDitConfig& config = (*model)->config();
  if (absl::Status valid = (*model)->ValidateLatentShape(latent_shape); !valid.ok()) return valid;

  std::mt19937 generator(1);
  std::normal_distribution<float> normal;
  Tensor latent = Tensor::Host(latent_shape, DType::kF32);
  for (int64_t i = 0; i < latent.numel(); ++i) latent.data<float>()[i] = normal(generator);
  Tensor context = Tensor::Host({absl::GetFlag(FLAGS_text_tokens), config.text_dim}, DType::kF32);
  for (int64_t i = 0; i < context.numel(); ++i) context.data<float>()[i] = normal(generator);
  auto prompt = (*model)->EncodePrompt(context);
  if (!prompt.ok()) return prompt.status();
  const Tensor device_latent = (*backend)->Upload(latent, DType::kF32);
  absl::StatusOr<SparsityPlan> plan = SparsityPlanFromPresetOrFile(absl::GetFlag(FLAGS_attention));
  if (!plan.ok()) return plan.status();
  const int steps = absl::GetFlag(FLAGS_steps), step = absl::GetFlag(FLAGS_step);
  if (step < 0 || step >= steps) return absl::InvalidArgumentError("--step must be in [0, --steps)");
  if (absl::Status fits =
          plan->Validate(static_cast<int>(config.num_layers), static_cast<int>(config.num_heads), steps);
      !fits.ok()) {
    return fits;
  }
  PlannedAttention attention(*plan, steps);
  std::unique_ptr<DitGroup> group;
  if (sequence_ranks >= 1) {
    const PipelineGroup ranks = devices->group();
    absl::StatusOr<std::unique_ptr<DitGroup>> created =
        DitGroup::Create(**model, weights, "", ranks.backends, ranks.degrees, ranks.communicators);
    if (!created.ok()) return created.status();
    group = *std::move(created);
    if (absl::GetFlag(FLAGS_ulysses_chunks) < 1) return absl::InvalidArgumentError("--ulysses_chunks must be ≥ 1");
    group->set_ulysses_chunks(absl::GetFlag(FLAGS_ulysses_chunks));
  }
  // One forward, finished on every device.
  double group_density = 1.0;
  auto forward = [&](double at) -> absl::Status {
    if (group != nullptr) {
      absl::StatusOr<Tensor> velocity = group->Forward(latent, at, context, *plan, steps, step, &group_density);
      if (!velocity.ok()) return velocity.status();
    } else {
      (*model)->Forward(device_latent, (*model)->EmbedTimestep(at), *prompt, attention, step);
    }
    for (std::unique_ptr<Backend>& rank_backend : devices->backends) rank_backend->Synchronize();
    return absl::OkStatus();
  };

  double timestep = 999.0;
  for (int i = 0; i < absl::GetFlag(FLAGS_warmup); ++i) {
    if (absl::Status status = forward(timestep); !status.ok()) return status;
    timestep -= 20.0;
  }
#ifdef ZOETROPE_HAS_CUDA
  const bool on_cuda = !(*backend)->device().is_cpu();
  const CudaMemoryStats before = on_cuda ? CudaBackendMemoryStats(**backend) : CudaMemoryStats{};
#endif
  std::vector<double> seconds;
  for (int i = 0; i < std::max(1, absl::GetFlag(FLAGS_iterations)); ++i) {
    const auto start = std::chrono::steady_clock::now();
    if (absl::Status status = forward(timestep); !status.ok()) return status;
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    timestep -= 20.0;
  }
  const std::vector<double> samples = seconds;  // in run order
  std::sort(seconds.begin(), seconds.end());
  long long allocations = -1;
  double peak_gib = -1.0;
#ifdef ZOETROPE_HAS_CUDA
  if (on_cuda) {
    const CudaMemoryStats after = CudaBackendMemoryStats(**backend);
    allocations = after.device_allocations - before.device_allocations;
    peak_gib = static_cast<double>(after.peak_bytes_in_use) / (1 << 30);
  }
#endif
  if (absl::GetFlag(FLAGS_profile) && group == nullptr) {
    profiler.set_enabled(true);
    (*model)->Forward(device_latent, (*model)->EmbedTimestep(timestep), *prompt, attention, step);
    profiler.Report(stderr);
  }
  const double median = seconds[seconds.size() / 2];
  const double tokens = static_cast<double>((*model)->GridOf(latent_shape).tokens());
  const double flops = ForwardFlops(config, tokens);
  std::string sample_list;
  for (double sample : samples)
    absl::StrAppend(&sample_list, sample_list.empty() ? "" : ", ", absl::StrFormat("%.4f", sample));
  // tflop/tflops count dense attention FLOPs: for a sparse plan they are "dense-equivalent" rates.
  std::printf(
      "{\"benchmark\": \"dit_forward\", \"config\": \"%s\", \"device\": \"%s\", \"tokens\": %.0f, \"layers\": %lld, "
      "\"attention\": \"%s\", \"step\": %d, \"steps\": %d, \"block_density\": %.4f, \"sequence_parallel\": %d, "
      "\"loopback\": %s, \"ulysses_chunks\": %d, "
      "\"median_s\": %.4f, \"min_s\": %.4f, \"max_s\": %.4f, \"samples_s\": [%s], \"tflop\": %.1f, \"tflops\": %.1f, "
      "\"timed_forward_cuda_mallocs\": %lld, \"peak_gib\": %.2f}\n",
      config.name.c_str(), (*backend)->name().c_str(), tokens, static_cast<long long>(config.num_layers),
      absl::GetFlag(FLAGS_attention).c_str(), step, steps, group != nullptr ? group_density : attention.mean_block_density(), sequence_ranks,
      absl::GetFlag(FLAGS_loopback) ? "true" : "false", absl::GetFlag(FLAGS_ulysses_chunks), median, seconds.front(),
      seconds.back(), sample_list.c_str(), flops / 1e12, flops / median / 1e12, allocations, peak_gib);
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Times one Wan2.1 DiT forward: --config NAME --device cuda --latent C,F,H,W");
  absl::ParseCommandLine(argc, argv);
  if (absl::Status status = Run(); !status.ok()) {
    std::fprintf(stderr, "zoetrope-dit-bench: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
