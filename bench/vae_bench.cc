// zoetrope-vae-bench: times the Wan2.1 VAE decode (worker/engine/wan_vae.h) of one latent on a backend.
//
//   zoetrope-vae-bench --device cuda --latent 16,21,60,104 --workdir /tmp/w [--save frames.safetensors]
// Writes deterministic random F32 VAE weights (zoetrope-mkweights-vae's, seed 0) and a random latent
// (normal, --seed) into --workdir unless they are there from an earlier run, then runs --warmup +
// --iterations decodes, each from the host latent to the host frames (what the pipeline times as its
// decode), chunked in time as the pipeline decodes (--chunk_frames latent frames per chunk), and prints one
// JSON object: every timed decode in seconds, their median, and on CUDA the allocator's peak bytes.
// --save writes the last decode's frames (F32 [T, 3, H, W], key "video") for an accuracy comparison; the
// CUDA backend's Conv3d precision comes from ZOETROPE_CONV_PRECISION (bf16, tf32 or fp32).
#include <algorithm>
#include <chrono>
#include <cstdlib>
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
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "kernels/backend_factory.h"
#include "worker/engine/safetensors.h"
#include "worker/engine/video_writer.h"
#include "worker/engine/wan_vae.h"
#include "worker/engine/wan_vae_random_weights.h"
#ifdef ZOETROPE_HAS_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

ABSL_FLAG(std::string, weights, "", "VAE checkpoint to load instead of random weights");
ABSL_FLAG(std::string, workdir, "/tmp/zoetrope-vae-bench", "where random weights and the latent are written");
ABSL_FLAG(std::string, device, "cuda", "backend: cpu, cuda, cuda:N");
ABSL_FLAG(std::string, latent, "16,21,60,104", "latent shape C,F,H,W (832x480, 81 frames by default)");
ABSL_FLAG(uint32_t, seed, 0, "seed of the random latent");
ABSL_FLAG(int64_t, chunk_frames, 1, "latent frames per VAE chunk (the pipeline's default is 1); 0 = all");
ABSL_FLAG(int, warmup, 1, "untimed decodes");
ABSL_FLAG(int, iterations, 3, "timed decodes");
ABSL_FLAG(std::string, save, "", "write the last decode's frames here (safetensors, key \"video\")");

namespace {

using namespace zoetrope;

absl::Status Run() {
  std::vector<int64_t> shape;
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_latent), ',')) {
    int64_t value = 0;
    if (!absl::SimpleAtoi(part, &value) || value < 1) {
      return absl::InvalidArgumentError(absl::StrCat("--latent: expected C,F,H,W positive, got ",
                                                     absl::GetFlag(FLAGS_latent)));
    }
    shape.push_back(value);
  }
  if (shape.size() != 4) return absl::InvalidArgumentError("--latent needs four numbers C,F,H,W");
  const std::filesystem::path workdir = absl::GetFlag(FLAGS_workdir);
  std::filesystem::create_directories(workdir);
  std::string weights = absl::GetFlag(FLAGS_weights);
  if (weights.empty()) {
    weights = (workdir / "vae.safetensors").string();
    if (!std::filesystem::exists(weights)) {
      absl::StatusOr<WanVaeConfig> config = WanVaeConfigByName("wan2.1-vae");
      if (!config.ok()) return config.status();
      RandomWeightsOptions options;  // seed 0, original names, F32: zoetrope-mkweights-vae's defaults
      if (absl::Status written = WriteRandomWanVaeWeights(*config, options, weights); !written.ok()) return written;
    }
  }
  // The latent is written next to the weights so that the PyTorch baseline decodes the same one.
  Tensor latent = Tensor::Host(shape, DType::kF32);
  std::mt19937 generator(absl::GetFlag(FLAGS_seed));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t i = 0; i < latent.numel(); ++i) latent.data<float>()[i] = normal(generator);
  const std::string latent_path = (workdir / "latent.safetensors").string();
  if (absl::Status written = WriteSafetensors(latent_path, {{"latent", latent}}); !written.ok()) return written;

  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateBackend(absl::GetFlag(FLAGS_device));
  if (!backend.ok()) return backend.status();
  absl::StatusOr<std::unique_ptr<WanVae>> vae = WanVae::Load(weights, **backend);
  if (!vae.ok()) return vae.status();
  const int warmup = absl::GetFlag(FLAGS_warmup), iterations = absl::GetFlag(FLAGS_iterations);
  if (warmup < 0 || iterations < 1) return absl::InvalidArgumentError("--warmup ≥ 0 and --iterations ≥ 1");
  std::vector<double> seconds;
  Tensor frames;
  for (int run = 0; run < warmup + iterations; ++run) {
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<Tensor> decoded = (*vae)->Decode(latent, absl::GetFlag(FLAGS_chunk_frames));
    if (!decoded.ok()) return decoded.status();
    frames = (*backend)->ToHost(*decoded);  // synchronises
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (run >= warmup) seconds.push_back(elapsed);
    std::fprintf(stderr, "decode %d: %.3f s%s\n", run, elapsed, run < warmup ? " (warm-up)" : "");
  }
  if (!absl::GetFlag(FLAGS_save).empty()) {
    VideoOutputOptions output;
    output.format = VideoFormat::kRaw;
    output.path = absl::GetFlag(FLAGS_save);
    if (absl::Status written = WriteVideo(frames, output); !written.ok()) return written;
  }
  std::vector<double> sorted = seconds;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted.size() % 2 == 1 ? sorted[sorted.size() / 2]
                                               : 0.5 * (sorted[sorted.size() / 2 - 1] + sorted[sorted.size() / 2]);
  std::string peak = "null";
#ifdef ZOETROPE_HAS_CUDA
  if (!(*backend)->device().is_cpu()) peak = absl::StrCat(CudaBackendMemoryStats(**backend).peak_bytes_in_use);
#endif
  const char* precision = std::getenv("ZOETROPE_CONV_PRECISION");
  std::printf(
      "{\"device\": \"%s\", \"latent\": [%s], \"frames\": [%s], \"chunk_frames\": %lld, \"conv_precision\": \"%s\", "
      "\"samples\": [%s], \"median_s\": %.6f, \"peak_device_bytes\": %s, \"latent_file\": \"%s\", "
      "\"weights\": \"%s\"}\n",
      (*backend)->name().c_str(), absl::StrJoin(shape, ", ").c_str(), absl::StrJoin(frames.shape(), ", ").c_str(),
      static_cast<long long>(absl::GetFlag(FLAGS_chunk_frames)),
      precision != nullptr && *precision != '\0' ? precision : "default", absl::StrJoin(seconds, ", ").c_str(), median,
      peak.c_str(), latent_path.c_str(), weights.c_str());
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Times the Wan2.1 VAE decode: --device cuda --latent C,F,H,W");
  absl::ParseCommandLine(argc, argv);
  const absl::Status status = Run();
  if (!status.ok()) {
    std::fprintf(stderr, "zoetrope-vae-bench: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
