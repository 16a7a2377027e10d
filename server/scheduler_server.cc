#include "server/scheduler_server.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"

namespace zoetrope::server {

absl::StatusOr<std::unique_ptr<SchedulerServer>> SchedulerServer::Start(SchedulerServerOptions options) {
  std::unique_ptr<SchedulerServer> server(new SchedulerServer());
  server->options_ = options;
  server->scheduler_metrics_ = std::make_unique<SchedulerMetrics>();
  if (!options.metrics_address.empty()) {
    absl::StatusOr<std::unique_ptr<MetricsEndpoint>> endpoint = MetricsEndpoint::Start(options.metrics_address);
    if (!endpoint.ok()) return endpoint.status();
    server->metrics_ = std::move(*endpoint);
    server->metrics_->Register(server->scheduler_metrics_->registry());
  }
  absl::StatusOr<std::unique_ptr<Scheduler>> scheduler =
      Scheduler::Create(options.scheduler, server->scheduler_metrics_.get());
  if (!scheduler.ok()) return scheduler.status();
  server->scheduler_ = std::move(*scheduler);
  server->video_service_ = std::make_unique<VideoServiceImpl>(*server->scheduler_, server->scheduler_metrics_.get());
  server->worker_service_ = std::make_unique<WorkerServiceImpl>(*server->scheduler_);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen_address, grpc::InsecureServerCredentials(), &server->port_);
  builder.RegisterService(server->video_service_.get());
  builder.RegisterService(server->worker_service_.get());
  // Workers keep their stream open for hours and may ping it; allow pings every 10 s.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen_address,
                                               " (address in use or not valid)"));
  }
  grpc::HealthCheckServiceInterface* health = server->server_->GetHealthCheckService();
  if (health != nullptr) {
    health->SetServingStatus(true);
    health->SetServingStatus("zoetrope.v1.VideoService", true);
    health->SetServingStatus("zoetrope.v1.WorkerService", true);
  }
  Log("scheduler", "serving zoetrope.v1.VideoService on port ", server->port_,
      server->metrics_ != nullptr ? absl::StrCat(", /metrics on port ", server->metrics_->port()) : "");
  return server;
}

SchedulerServer::~SchedulerServer() {
  Shutdown(absl::ZeroDuration());
  // The scheduler goes before the services that call it are destroyed, after the server stopped.
  scheduler_.reset();
}

std::shared_ptr<grpc::Channel> SchedulerServer::InProcessChannel() {
  return server_->InProcessChannel(grpc::ChannelArguments());
}

void SchedulerServer::Drain() {
  if (grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService(); health != nullptr) {
    // Shutdown turns every service NOT_SERVING and ignores later changes.
    health->Shutdown();
  }
  scheduler_->BeginDrain();
  const absl::Time give_up = absl::Now() + options_.drain_timeout;
  int running = scheduler_->running_jobs();
  while (running > 0 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(50));
    running = scheduler_->running_jobs();
  }
  if (running > 0) {
    Log("scheduler", "drain timeout: ", running,
        " jobs still running; their workers hand them to the next scheduler when they reconnect");
  } else {
    Log("scheduler", "drained: no job running");
  }
  Shutdown(absl::Seconds(1));
}

void SchedulerServer::Shutdown(absl::Duration grace) {
  {
    absl::MutexLock lock(&mutex_);
    if (stopped_) return;
    stopped_ = true;
  }
  if (server_ != nullptr) {
    server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
    server_->Wait();
  }
  Log("scheduler", "stopped");
}

}  // namespace zoetrope::server
