// zoetrope-worker: loads a model once, connects to the scheduler, runs one job at a time.
//
//   zoetrope-worker --scheduler scheduler:50051 --model /models/wan2.1-t2v-1.3b --metrics_port 9465
//
// SIGTERM drains: no new jobs, the running job finishes (or is handed back after --drain_timeout), exit 0.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "common/log.h"
#include "common/metrics_endpoint.h"
#include "common/signals.h"
#include "grpcpp/security/credentials.h"
#include "parallel/sparsity_plan.h"
#include "worker/pipeline_job_runner.h"
#include "worker/worker_agent.h"
#include "worker/worker_metrics.h"

ABSL_FLAG(std::string, scheduler, "127.0.0.1:50051", "scheduler's worker address (host:port; its --worker_listen)");
ABSL_FLAG(std::string, token, "", "the scheduler's worker token (docs/security.md); $ZOETROPE_WORKER_TOKEN when not given");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA of the scheduler's TLS certificate (empty: plaintext)");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate for mTLS (with --tls_ca and --tls_key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, model, "models/tiny", "model folder: DiT, text encoder, VAE and tokenizer");
ABSL_FLAG(std::string, model_name, "", "model name announced to the scheduler (default: the folder's name)");
ABSL_FLAG(std::string, worker_id, "", "worker id, stable across reconnects (default: <hostname>-<pid>)");
ABSL_FLAG(std::string, device, "cpu", "compute device: cpu, cuda or cuda:N");
ABSL_FLAG(int32_t, threads, 0, "CPU threads for the cpu device (0 = all cores)");
ABSL_FLAG(std::string, gpus, "",
          "CUDA: the GPUs of this worker's group, one rank each, e.g. 0,1,2,3 (one process, one thread per GPU; "
          "default: --device's GPU)");
ABSL_FLAG(int32_t, sp, 1, "sequence-parallel (Ulysses) degree: ranks per CFG group");
ABSL_FLAG(bool, cfg_parallel, false,
          "conditional and unconditional passes on two groups of --sp ranks at once (--gpus lists 2 x sp GPUs)");
ABSL_FLAG(bool, loopback, false, "CUDA: every rank on the first GPU (testing the parallel paths on one GPU)");
ABSL_FLAG(int32_t, ulysses_chunks, 1,
          "with --sp > 1: head chunks whose all-to-alls overlap the attention of the previous chunk (1 = no overlap)");
ABSL_FLAG(int64_t, vae_chunk_frames, 1, "latent frames per VAE decode chunk (bounds memory; 0 = all at once)");
ABSL_FLAG(std::string, attention, "dense",
          "sparsity plan of requests that name none: a preset (dense, radial, attention-tile, sliding-tile) or a "
          "plan YAML file");
ABSL_FLAG(int64_t, max_tokens, 0, "largest latent token count accepted (0: the backend's default)");
ABSL_FLAG(double, device_memory_gib, 0,
          "memory of one device in GiB, announced so that the scheduler admits only jobs whose estimated peak "
          "fits (0: the physical RAM on the CPU; on CUDA the GPU's memory from NVML, unknown without it)");
ABSL_FLAG(std::string, work_dir, "", "folder for results before upload (default: the system temp folder)");
ABSL_FLAG(int32_t, metrics_port, 9465, "port of /metrics (0 picks a free one, -1 disables it)");
ABSL_FLAG(std::string, metrics_host, "0.0.0.0", "address /metrics listens on");
ABSL_FLAG(absl::Duration, reconnect_max_backoff, absl::Seconds(5), "longest wait between reconnect attempts");
ABSL_FLAG(double, price_per_gpu_hour, 0.0,
          "price of one GPU-hour of this worker's pool in dollars, for the cost of its jobs (0: the scheduler's)");
ABSL_FLAG(std::string, preview_factors, "",
          "live previews: latent-to-RGB factors JSON (zoetrope-fit-preview-factors; default: the Wan2.1 factors)");
ABSL_FLAG(int32_t, min_preview_every, 1,
          "live previews: the fewest denoising steps between two previews of a job (a request asking for more gets "
          "this many; 0 turns previews off on this worker)");
ABSL_FLAG(absl::Duration, drain_timeout, absl::Minutes(10),
          "on SIGTERM, a job still running after this long is handed back to the scheduler");

namespace zoetrope {

absl::StatusOr<std::string> ReadFlagFile(const std::string& path, const char* flag) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return absl::NotFoundError(absl::StrCat(flag, ": cannot read ", path));
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

// Null (plaintext) without --tls_ca; TLS, and mTLS with --tls_cert and --tls_key.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> TlsCredentialsFromFlags() {
  const std::string ca = absl::GetFlag(FLAGS_tls_ca), cert = absl::GetFlag(FLAGS_tls_cert),
                    key = absl::GetFlag(FLAGS_tls_key);
  if (cert.empty() != key.empty()) return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  if (ca.empty()) {
    if (!cert.empty()) return absl::InvalidArgumentError("--tls_cert needs --tls_ca (TLS)");
    return std::shared_ptr<grpc::ChannelCredentials>();
  }
  grpc::SslCredentialsOptions options;
  absl::StatusOr<std::string> ca_pem = ReadFlagFile(ca, "--tls_ca");
  if (!ca_pem.ok()) return ca_pem.status();
  options.pem_root_certs = *ca_pem;
  if (!cert.empty()) {
    absl::StatusOr<std::string> cert_pem = ReadFlagFile(cert, "--tls_cert");
    if (!cert_pem.ok()) return cert_pem.status();
    absl::StatusOr<std::string> key_pem = ReadFlagFile(key, "--tls_key");
    if (!key_pem.ok()) return key_pem.status();
    options.pem_cert_chain = *cert_pem;
    options.pem_private_key = *key_pem;
  }
  return grpc::SslCredentials(options);
}

int WorkerMain() {
  WorkerMetrics metrics;

  PipelineOptions pipeline;
  pipeline.model_path = absl::GetFlag(FLAGS_model);
  pipeline.model_name = absl::GetFlag(FLAGS_model_name);
  pipeline.threads = absl::GetFlag(FLAGS_threads);
  pipeline.device = absl::GetFlag(FLAGS_device);
  pipeline.sequence_parallel = absl::GetFlag(FLAGS_sp);
  pipeline.cfg_parallel = absl::GetFlag(FLAGS_cfg_parallel);
  pipeline.loopback = absl::GetFlag(FLAGS_loopback);
  pipeline.ulysses_chunks = absl::GetFlag(FLAGS_ulysses_chunks);
  absl::StatusOr<std::vector<int>> gpus = ParseGpuList(absl::GetFlag(FLAGS_gpus));
  if (!gpus.ok()) {
    std::fprintf(stderr, "zoetrope-worker: %s\n", std::string(gpus.status().message()).c_str());
    return 2;
  }
  pipeline.gpus = *gpus;
  pipeline.vae_chunk_frames = absl::GetFlag(FLAGS_vae_chunk_frames);
  pipeline.max_tokens = absl::GetFlag(FLAGS_max_tokens);
  pipeline.device_memory_bytes = static_cast<int64_t>(absl::GetFlag(FLAGS_device_memory_gib) * double{1 << 30});
  absl::StatusOr<SparsityPlanText> attention = ReadSparsityPlanText(absl::GetFlag(FLAGS_attention));
  if (!attention.ok()) {
    std::fprintf(stderr, "zoetrope-worker: --attention: %s\n", std::string(attention.status().message()).c_str());
    return 2;
  }
  pipeline.default_attention = attention->text;
  pipeline.preview_factors = absl::GetFlag(FLAGS_preview_factors);
  absl::StatusOr<std::unique_ptr<PipelineJobRunner>> runner = PipelineJobRunner::Create(pipeline);
  if (!runner.ok()) {
    std::fprintf(stderr, "zoetrope-worker: %s\n", std::string(runner.status().message()).c_str());
    return 1;
  }
  // /metrics answers only once the model is loaded: Kubernetes' readiness and startup probes read it, so
  // a pod is ready exactly when it can take a job (deploy/kubernetes/base/worker.yaml).
  std::unique_ptr<MetricsEndpoint> endpoint;
  if (const int port = absl::GetFlag(FLAGS_metrics_port); port >= 0) {
    absl::StatusOr<std::unique_ptr<MetricsEndpoint>> started =
        MetricsEndpoint::Start(absl::StrCat(absl::GetFlag(FLAGS_metrics_host), ":", port));
    if (!started.ok()) {
      std::fprintf(stderr, "zoetrope-worker: %s\n", std::string(started.status().message()).c_str());
      return 1;
    }
    endpoint = std::move(*started);
    endpoint->Register(metrics.registry());
  }
  const RunnerCapabilities capabilities = (*runner)->capabilities();
  metrics.ModelLoaded(capabilities.models.front(), (*runner)->load_seconds());
  Log("worker", "model ", capabilities.models.front(), " loaded from ", pipeline.model_path, " in ",
      absl::StrFormat("%.2f", (*runner)->load_seconds()), " s on ", capabilities.backend, " (",
      capabilities.gpus, " GPUs, energy ", capabilities.energy_source, ", sp=", capabilities.sequence_parallel_degree,
      " cfg=", capabilities.cfg_parallel_degree,
      ")",
      endpoint != nullptr ? absl::StrCat("; /metrics on port ", endpoint->port()) : "");

  WorkerAgentOptions options;
  options.scheduler_address = absl::GetFlag(FLAGS_scheduler);
  options.token = absl::GetFlag(FLAGS_token);
  if (options.token.empty()) {
    if (const char* token = std::getenv("ZOETROPE_WORKER_TOKEN"); token != nullptr) options.token = token;
  }
  if (absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials = TlsCredentialsFromFlags();
      !credentials.ok()) {
    std::fprintf(stderr, "zoetrope-worker: %s\n", std::string(credentials.status().message()).c_str());
    return 2;
  } else {
    options.credentials = *credentials;
  }
  options.worker_id = absl::GetFlag(FLAGS_worker_id);
  options.work_directory = absl::GetFlag(FLAGS_work_dir);
  if (options.work_directory.empty()) options.work_directory = std::filesystem::temp_directory_path().string();
  options.reconnect_max_backoff = absl::GetFlag(FLAGS_reconnect_max_backoff);
  options.drain_timeout = absl::GetFlag(FLAGS_drain_timeout);
  options.price_per_gpu_hour = absl::GetFlag(FLAGS_price_per_gpu_hour);
  options.min_preview_every = std::max(0, absl::GetFlag(FLAGS_min_preview_every));
  std::error_code error;
  std::filesystem::create_directories(options.work_directory, error);
  if (error) {
    std::fprintf(stderr, "zoetrope-worker: --work_dir %s: %s\n", options.work_directory.c_str(),
                 error.message().c_str());
    return 1;
  }
  WorkerAgent agent(options, **runner, &metrics);
  WatchTerminationSignals([&agent](int) { agent.Drain(); });
  agent.Run();
  return 0;
}

}  // namespace zoetrope

int main(int argc, char** argv) {
  zoetrope::BlockTerminationSignals();
  absl::SetProgramUsageMessage("The Zoetrope worker: runs generation jobs it receives from the scheduler.");
  absl::ParseCommandLine(argc, argv);
  return zoetrope::WorkerMain();
}
