#include "cli/serve_command.h"

#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/log.h"
#include "common/signals.h"
#include "parallel/sparsity_plan.h"
#include "server/scheduler_server.h"
#include "worker/pipeline_job_runner.h"
#include "worker/worker_agent.h"
#include "worker/worker_metrics.h"

// Shared with `zoetrope generate` (cli/generate_command.cc defines them).
ABSL_DECLARE_FLAG(std::string, model);
ABSL_DECLARE_FLAG(int32_t, threads);
ABSL_DECLARE_FLAG(std::string, device);
ABSL_DECLARE_FLAG(int64_t, vae_chunk_frames);
ABSL_DECLARE_FLAG(std::string, attention);

ABSL_FLAG(bool, embedded, false, "serve: run the scheduler and one local worker in this process");
ABSL_FLAG(std::string, listen, "127.0.0.1:50051", "serve: gRPC listen address (port 0 picks a free one)");
ABSL_FLAG(std::string, data_dir, "zoetrope-data", "serve: folder of the job store, results and work files");
ABSL_FLAG(int32_t, queue_limit, 1000, "serve: most queued jobs");
ABSL_FLAG(int32_t, metrics_port, 9464, "serve: port of /metrics on 127.0.0.1 (0 picks one, -1 disables it)");
ABSL_FLAG(absl::Duration, drain_timeout, absl::Minutes(10), "serve: how long a drain waits for the running job");

namespace zoetrope {

int RunServeCommand(int argc, char** argv) {
  BlockTerminationSignals();
  absl::ParseCommandLine(argc, argv);
  if (!absl::GetFlag(FLAGS_embedded)) {
    std::fprintf(stderr,
                 "zoetrope serve: only --embedded is available here; run zoetrope-scheduler and zoetrope-worker "
                 "for a deployment\n");
    return 2;
  }
  const std::filesystem::path data = absl::GetFlag(FLAGS_data_dir);

  PipelineOptions pipeline;
  pipeline.model_path = absl::GetFlag(FLAGS_model);
  pipeline.threads = absl::GetFlag(FLAGS_threads);
  pipeline.device = absl::GetFlag(FLAGS_device);
  pipeline.vae_chunk_frames = absl::GetFlag(FLAGS_vae_chunk_frames);
  const std::string attention_flag = absl::GetFlag(FLAGS_attention);
  absl::StatusOr<SparsityPlanText> attention = ReadSparsityPlanText(attention_flag.empty() ? "dense" : attention_flag);
  if (!attention.ok()) {
    std::fprintf(stderr, "zoetrope serve: --attention: %s\n", std::string(attention.status().message()).c_str());
    return 2;
  }
  pipeline.default_attention = attention->text;
  absl::StatusOr<std::unique_ptr<PipelineJobRunner>> runner = PipelineJobRunner::Create(pipeline);
  if (!runner.ok()) {
    std::fprintf(stderr, "zoetrope serve: %s\n", std::string(runner.status().message()).c_str());
    return 1;
  }
  const std::string model_name = (*runner)->capabilities().models.front();

  server::SchedulerServerOptions options;
  options.listen_address = absl::GetFlag(FLAGS_listen);
  const int metrics_port = absl::GetFlag(FLAGS_metrics_port);
  options.metrics_address = metrics_port < 0 ? "" : absl::StrCat("127.0.0.1:", metrics_port);
  options.scheduler.database_path = (data / "jobs.db").string();
  options.scheduler.results_directory = (data / "results").string();
  options.scheduler.queue_limit = absl::GetFlag(FLAGS_queue_limit);
  options.scheduler.models = {model_name};
  options.scheduler.default_model = model_name;
  options.scheduler.max_tokens = (*runner)->capabilities().max_tokens;
  options.drain_timeout = absl::GetFlag(FLAGS_drain_timeout);
  absl::StatusOr<std::unique_ptr<server::SchedulerServer>> server = server::SchedulerServer::Start(options);
  if (!server.ok()) {
    std::fprintf(stderr, "zoetrope serve: %s\n", std::string(server.status().message()).c_str());
    return 1;
  }
  WorkerMetrics worker_metrics;
  worker_metrics.ModelLoaded(model_name, (*runner)->load_seconds());
  if ((*server)->metrics_endpoint() != nullptr) (*server)->metrics_endpoint()->Register(worker_metrics.registry());

  WorkerAgentOptions agent_options;
  agent_options.channel = (*server)->InProcessChannel();
  agent_options.scheduler_address = "in-process";
  agent_options.worker_id = "embedded";
  agent_options.work_directory = (data / "work").string();
  agent_options.drain_timeout = options.drain_timeout;
  std::error_code error;
  std::filesystem::create_directories(agent_options.work_directory, error);
  WorkerAgent agent(agent_options, **runner, &worker_metrics);
  std::thread agent_thread([&agent] { agent.Run(); });

  std::fprintf(stderr,
               "zoetrope serve: model %s, listening on port %d%s\n"
               "  try: zoetrope submit --server 127.0.0.1:%d --prompt \"a paper boat\" --watch\n",
               model_name.c_str(), (*server)->port(),
               (*server)->metrics_port() > 0 ? absl::StrFormat(", /metrics on port %d", (*server)->metrics_port()).c_str()
                                             : "",
               (*server)->port());
  absl::Notification terminate;
  WatchTerminationSignals([&terminate](int) { terminate.Notify(); });
  terminate.WaitForNotification();
  agent.Drain();
  (*server)->Drain();
  agent.Stop();
  agent_thread.join();
  server->reset();
  return 0;
}

}  // namespace zoetrope
