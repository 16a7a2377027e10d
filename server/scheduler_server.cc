#include "server/scheduler_server.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "server/tls_config.h"

namespace zoetrope::server {

absl::StatusOr<std::unique_ptr<SchedulerServer>> SchedulerServer::Start(SchedulerServerOptions options) {
  std::unique_ptr<SchedulerServer> server(new SchedulerServer());
  server->options_ = options;
  // Security first: a configuration that would expose an open API fails before anything listens.
  if (!options.tokens_file.empty()) {
    absl::StatusOr<TokenRegistry> tokens = TokenRegistry::LoadFile(options.tokens_file);
    if (!tokens.ok()) return tokens.status();
    server->tokens_ = std::make_unique<TokenRegistry>(std::move(*tokens));
  }
  const bool clients_authenticated = server->tokens_ != nullptr && server->tokens_->has_client_tokens();
  const bool workers_authenticated = server->tokens_ != nullptr && server->tokens_->has_worker_tokens();
  const bool separate_worker_port = !options.worker_listen_address.empty();
  if (server->tokens_ != nullptr && !separate_worker_port) {
    return absl::InvalidArgumentError(
        "with a tokens file the worker API needs its own port: set the worker listen address (--worker_listen)");
  }
  if (!options.allow_unauthenticated_remote) {
    auto refuse = [](const std::string& address, const char* api) {
      return absl::FailedPreconditionError(absl::StrCat(
          "refusing to serve the ", api, " without tokens on ", address,
          ": bind a loopback address (127.0.0.1), configure tokens (--tokens_file), or pass "
          "--allow_unauthenticated_remote"));
    };
    if (!clients_authenticated && !IsLoopbackListenAddress(options.listen_address)) {
      return refuse(options.listen_address, "public API");
    }
    const std::string& worker_address = separate_worker_port ? options.worker_listen_address : options.listen_address;
    if (!workers_authenticated && !IsLoopbackListenAddress(worker_address)) return refuse(worker_address, "worker API");
  }
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> public_credentials =
      MakeServerCredentials(options.tls_cert_file, options.tls_key_file, "");
  if (!public_credentials.ok()) return public_credentials.status();
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> worker_credentials =
      MakeServerCredentials(options.tls_cert_file, options.tls_key_file, options.worker_client_ca_file);
  if (!worker_credentials.ok()) return worker_credentials.status();
  if (!options.worker_client_ca_file.empty() && !separate_worker_port) {
    return absl::InvalidArgumentError("client certificates (mTLS) apply to the worker port: set --worker_listen");
  }
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
  if (clients_authenticated) server->video_service_->EnableAuthentication(server->tokens_.get());
  if (workers_authenticated) server->worker_service_->RequireWorkerToken(server->tokens_.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen_address, *public_credentials, &server->port_);
  builder.RegisterService(server->video_service_.get());
  if (!separate_worker_port) builder.RegisterService(server->worker_service_.get());
  // Workers keep their stream open for hours and may ping it; allow pings every 10 s.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen_address,
                                               " (address in use or not valid)"));
  }
  if (separate_worker_port) {
    grpc::ServerBuilder worker_builder;
    worker_builder.AddListeningPort(options.worker_listen_address, *worker_credentials, &server->worker_port_);
    worker_builder.RegisterService(server->worker_service_.get());
    worker_builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
    worker_builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    server->worker_server_ = worker_builder.BuildAndStart();
    if (server->worker_server_ == nullptr || server->worker_port_ == 0) {
      return absl::UnavailableError(absl::StrCat("cannot listen on ", options.worker_listen_address,
                                                 " (address in use or not valid)"));
    }
    if (grpc::HealthCheckServiceInterface* health = server->worker_server_->GetHealthCheckService()) {
      health->SetServingStatus(true);
      health->SetServingStatus("zoetrope.v1.WorkerService", true);
    }
  }
  grpc::HealthCheckServiceInterface* health = server->server_->GetHealthCheckService();
  if (health != nullptr) {
    health->SetServingStatus(true);
    health->SetServingStatus("zoetrope.v1.VideoService", true);
    health->SetServingStatus("zoetrope.v1.WorkerService", true);
  }
  Log("scheduler", "serving zoetrope.v1.VideoService on port ", server->port_,
      separate_worker_port ? absl::StrCat(", zoetrope.v1.WorkerService on port ", server->worker_port_) : "",
      clients_authenticated ? " (client tokens required)" : " (no client tokens)",
      options.tls_cert_file.empty() ? "" : " over TLS",
      server->metrics_ != nullptr ? absl::StrCat(", /metrics on port ", server->metrics_->port()) : "");
  return server;
}

SchedulerServer::~SchedulerServer() {
  Shutdown(absl::ZeroDuration());
  // The scheduler goes before the services that call it are destroyed, after the server stopped.
  scheduler_.reset();
}

std::shared_ptr<grpc::Channel> SchedulerServer::InProcessChannel() {
  grpc::Server& target = worker_server_ != nullptr ? *worker_server_ : *server_;
  return target.InProcessChannel(grpc::ChannelArguments());
}

void SchedulerServer::Drain() {
  if (grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService(); health != nullptr) {
    // Shutdown turns every service NOT_SERVING and ignores later changes.
    health->Shutdown();
  }
  if (worker_server_ != nullptr) {
    if (grpc::HealthCheckServiceInterface* health = worker_server_->GetHealthCheckService()) health->Shutdown();
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
  if (worker_server_ != nullptr) {
    worker_server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
    worker_server_->Wait();
  }
  Log("scheduler", "stopped");
}

}  // namespace zoetrope::server
