// The scheduler process minus its flags: the Scheduler behind a gRPC server with VideoService,
// WorkerService, grpc.health.v1 and server reflection, plus the /metrics endpoint. Used by
// zoetrope-scheduler and by `zoetrope serve --embedded`.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/metrics_endpoint.h"
#include "grpcpp/channel.h"
#include "grpcpp/server.h"
#include "server/auth.h"
#include "server/scheduler.h"
#include "server/scheduler_metrics.h"
#include "server/video_service.h"
#include "server/worker_service.h"

namespace zoetrope::server {

struct SchedulerServerOptions {
  // gRPC listen address; port 0 picks a free port (see port()).
  std::string listen_address = "0.0.0.0:50051";
  // /metrics listen address; empty disables the endpoint; port 0 picks a free port.
  std::string metrics_address = "0.0.0.0:9464";
  SchedulerOptions scheduler;
  // Security (docs/security.md). The tokens file (server/auth.h); empty: no tokens, and then an API
  // without tokens may only listen on loopback unless `allow_unauthenticated_remote`.
  std::string tokens_file;
  bool allow_unauthenticated_remote = false;
  // WorkerService's own listen address; empty: it shares `listen_address` (allowed only without tokens).
  std::string worker_listen_address;
  // TLS on both ports when set (PEM files); `worker_client_ca_file` also requires workers to present a
  // certificate signed by that CA (mTLS).
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string worker_client_ca_file;
  // How long a drain waits for running jobs before stopping anyway (they are then queued again by the next
  // scheduler when their workers do not come back to it).
  absl::Duration drain_timeout = absl::Minutes(10);
};

class SchedulerServer {
 public:
  static absl::StatusOr<std::unique_ptr<SchedulerServer>> Start(SchedulerServerOptions options);
  ~SchedulerServer();  // Shutdown(0) when not stopped yet

  int port() const { return port_; }
  // The worker port: port() when WorkerService shares the public port.
  int worker_port() const { return worker_server_ != nullptr ? worker_port_ : port_; }
  int metrics_port() const { return metrics_ != nullptr ? metrics_->port() : 0; }
  Scheduler& scheduler() { return *scheduler_; }
  SchedulerMetrics& metrics() { return *scheduler_metrics_; }
  MetricsEndpoint* metrics_endpoint() { return metrics_.get(); }
  // A channel to this server that skips the network (the embedded worker uses it).
  std::shared_ptr<grpc::Channel> InProcessChannel();

  // SIGTERM: health NOT_SERVING, UNAVAILABLE for new submissions, no job started; waits up to the drain
  // timeout for running jobs to finish, then stops the server. Returns when it has stopped.
  void Drain();
  // Stops serving: open calls get `grace` to finish, then they are cancelled. Idempotent.
  void Shutdown(absl::Duration grace);

 private:
  SchedulerServer() = default;

  SchedulerServerOptions options_;
  std::unique_ptr<SchedulerMetrics> scheduler_metrics_;
  std::unique_ptr<MetricsEndpoint> metrics_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<VideoServiceImpl> video_service_;
  std::unique_ptr<WorkerServiceImpl> worker_service_;
  std::unique_ptr<TokenRegistry> tokens_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::Server> worker_server_;  // null when WorkerService shares server_
  int port_ = 0;
  int worker_port_ = 0;
  absl::Mutex mutex_;
  bool stopped_ ABSL_GUARDED_BY(mutex_) = false;
};

}  // namespace zoetrope::server
