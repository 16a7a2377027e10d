// zoetrope-scheduler: the public API, the durable queue and the worker endpoint in one process.
//
//   zoetrope-scheduler --listen 0.0.0.0:50051 --worker_listen 0.0.0.0:50052 --tokens_file /etc/zoetrope/tokens
//       --db /var/lib/zoetrope/jobs.db --results_dir /var/lib/zoetrope/results --metrics_port 9464
//
// SIGTERM drains (health NOT_SERVING, no new work, running jobs finish within --drain_timeout) and exits 0.
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/log.h"
#include "common/signals.h"
#include "server/scheduler_server.h"

ABSL_FLAG(std::string, listen, "",
          "public gRPC listen address (host:port; port 0 picks a free one); default 0.0.0.0:50051 with client "
          "tokens, else 127.0.0.1:50051");
ABSL_FLAG(std::string, worker_listen, "",
          "WorkerService's own listen address (required with --tokens_file); empty: it shares --listen");
ABSL_FLAG(std::string, tokens_file, "", "client and worker tokens, tenants and quotas (docs/security.md)");
ABSL_FLAG(bool, allow_unauthenticated_remote, false,
          "serve an API that has no tokens on a non-loopback address (trusted networks only)");
ABSL_FLAG(std::string, tls_cert, "", "PEM server certificate (chain): TLS on both ports");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, worker_client_ca, "", "PEM CA that worker client certificates must chain to (mTLS)");
ABSL_FLAG(std::string, db, "zoetrope-data/jobs.db", "SQLite job store (created when missing; WAL mode)");
ABSL_FLAG(std::string, db_sync, "full", "SQLite synchronous mode: full (survives power loss) or normal");
ABSL_FLAG(std::string, results_dir, "zoetrope-data/results", "folder of the result store");
ABSL_FLAG(int32_t, queue_limit, 1000, "most queued jobs; SubmitJob gets RESOURCE_EXHAUSTED beyond");
ABSL_FLAG(int32_t, metrics_port, 9464, "port of /metrics (0 picks a free one, -1 disables it)");
ABSL_FLAG(std::string, metrics_host, "0.0.0.0", "address /metrics listens on");
ABSL_FLAG(std::vector<std::string>, models, {}, "models accepted in requests besides those workers announce");
ABSL_FLAG(std::string, default_model, "", "model of requests that name none (default: first of --models, else of "
                                          "the first worker)");
ABSL_FLAG(int64_t, max_tokens, 75600, "largest latent token count a request may ask for (0: no limit)");
ABSL_FLAG(absl::Duration, heartbeat_interval, absl::Seconds(1), "how often workers send heartbeats");
ABSL_FLAG(absl::Duration, worker_timeout, absl::Seconds(10), "a worker silent this long is disconnected");
ABSL_FLAG(absl::Duration, worker_grace, absl::Seconds(10),
          "how long a running job waits for its lost worker before it is queued again");
ABSL_FLAG(int32_t, max_worker_losses, 2, "worker losses after which a job fails instead of being queued again");
ABSL_FLAG(absl::Duration, unrunnable_grace, absl::Minutes(10),
          "a queued job that no worker serving its model can run (tokens, output format, estimated peak memory) "
          "for this long fails with FAILED_PRECONDITION; such a job is refused at submit while those workers "
          "are connected or were within this time");
ABSL_FLAG(absl::Duration, result_retention, absl::Hours(24), "how long results are kept");
ABSL_FLAG(absl::Duration, drain_timeout, absl::Minutes(10), "how long SIGTERM waits for running jobs");
ABSL_FLAG(double, price_per_gpu_hour, 0.0, "price of one GPU-hour in dollars (cost metrics)");
ABSL_FLAG(double, price_per_kwh, 0.0, "price of one kWh in dollars (cost metrics)");
ABSL_FLAG(double, pue, 1.0, "power usage effectiveness of the data center (cost metrics)");
ABSL_FLAG(std::string, ready_file, "", "written with \"<grpc port> <metrics port>\" once serving (for scripts)");

namespace zoetrope::server {

absl::StatusOr<SchedulerServerOptions> OptionsFromFlags() {
  SchedulerServerOptions options;
  options.tokens_file = absl::GetFlag(FLAGS_tokens_file);
  options.listen_address = absl::GetFlag(FLAGS_listen);
  if (options.listen_address.empty()) {
    options.listen_address = options.tokens_file.empty() ? "127.0.0.1:50051" : "0.0.0.0:50051";
  }
  options.worker_listen_address = absl::GetFlag(FLAGS_worker_listen);
  options.allow_unauthenticated_remote = absl::GetFlag(FLAGS_allow_unauthenticated_remote);
  options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  options.worker_client_ca_file = absl::GetFlag(FLAGS_worker_client_ca);
  const int metrics_port = absl::GetFlag(FLAGS_metrics_port);
  options.metrics_address =
      metrics_port < 0 ? "" : absl::StrCat(absl::GetFlag(FLAGS_metrics_host), ":", metrics_port);
  SchedulerOptions& scheduler = options.scheduler;
  scheduler.database_path = absl::GetFlag(FLAGS_db);
  const std::string sync = absl::GetFlag(FLAGS_db_sync);
  if (sync != "full" && sync != "normal") {
    return absl::InvalidArgumentError(absl::StrCat("--db_sync must be full or normal (got \"", sync, "\")"));
  }
  scheduler.database_sync = sync == "full" ? JobStore::Sync::kFull : JobStore::Sync::kNormal;
  scheduler.results_directory = absl::GetFlag(FLAGS_results_dir);
  scheduler.queue_limit = absl::GetFlag(FLAGS_queue_limit);
  if (scheduler.queue_limit < 0) return absl::InvalidArgumentError("--queue_limit must be ≥ 0");
  scheduler.models = absl::GetFlag(FLAGS_models);
  scheduler.default_model = absl::GetFlag(FLAGS_default_model);
  scheduler.max_tokens = absl::GetFlag(FLAGS_max_tokens);
  scheduler.heartbeat_interval = absl::GetFlag(FLAGS_heartbeat_interval);
  scheduler.worker_timeout = absl::GetFlag(FLAGS_worker_timeout);
  scheduler.worker_grace = absl::GetFlag(FLAGS_worker_grace);
  scheduler.max_worker_losses = absl::GetFlag(FLAGS_max_worker_losses);
  scheduler.unrunnable_grace = absl::GetFlag(FLAGS_unrunnable_grace);
  scheduler.result_retention = absl::GetFlag(FLAGS_result_retention);
  scheduler.price_per_gpu_hour = absl::GetFlag(FLAGS_price_per_gpu_hour);
  scheduler.price_per_kwh = absl::GetFlag(FLAGS_price_per_kwh);
  scheduler.power_usage_effectiveness = absl::GetFlag(FLAGS_pue);
  if (scheduler.heartbeat_interval <= absl::ZeroDuration() || scheduler.worker_timeout <= scheduler.heartbeat_interval) {
    return absl::InvalidArgumentError("--worker_timeout must be longer than --heartbeat_interval (> 0)");
  }
  options.drain_timeout = absl::GetFlag(FLAGS_drain_timeout);
  return options;
}

int Main() {
  absl::StatusOr<SchedulerServerOptions> options = OptionsFromFlags();
  if (!options.ok()) {
    std::fprintf(stderr, "zoetrope-scheduler: %s\n", std::string(options.status().message()).c_str());
    return 2;
  }
  absl::StatusOr<std::unique_ptr<SchedulerServer>> server = SchedulerServer::Start(*options);
  if (!server.ok()) {
    std::fprintf(stderr, "zoetrope-scheduler: %s\n", std::string(server.status().message()).c_str());
    return 1;
  }
  absl::Notification terminate;
  WatchTerminationSignals([&terminate](int) { terminate.Notify(); });
  if (const std::string ready = absl::GetFlag(FLAGS_ready_file); !ready.empty()) {
    const std::string temporary = ready + ".tmp";
    std::ofstream(temporary) << (*server)->port() << " " << (*server)->metrics_port() << "\n";
    std::rename(temporary.c_str(), ready.c_str());
  }
  terminate.WaitForNotification();
  (*server)->Drain();
  server->reset();
  Log("scheduler", "exit");
  return 0;
}

}  // namespace zoetrope::server

int main(int argc, char** argv) {
  zoetrope::BlockTerminationSignals();
  absl::SetProgramUsageMessage("The Zoetrope scheduler: public gRPC API, durable job queue, worker endpoint.");
  absl::ParseCommandLine(argc, argv);
  return zoetrope::server::Main();
}
