// zoetrope-service-bench: the scheduler under load, with real processes on 127.0.0.1.
//
//   1. GetJob latency (p50/p99) and throughput with `--queued` jobs in the queue and `--watchers` open
//      WatchJob streams, from `--client_threads` closed-loop clients for `--duration`.
//   2. Submit→start on an idle worker: the time from the client's Generate call to the event that the
//      worker began the job (its first phase report), and to the scheduler's dispatch (Started event).
//
//   zoetrope-service-bench --scheduler build/bin/zoetrope-scheduler --worker build/bin/zoetrope-worker
//       --model models/tiny --output bench/results/service_cpu.json
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "nlohmann/json.hpp"
#include "zoetrope/v1/video_service.grpc.pb.h"

ABSL_FLAG(std::string, scheduler, "build/bin/zoetrope-scheduler", "zoetrope-scheduler binary");
ABSL_FLAG(std::string, worker, "build/bin/zoetrope-worker", "zoetrope-worker binary");
ABSL_FLAG(std::string, model, "models/tiny", "model folder for the worker (announced as its folder name)");
ABSL_FLAG(int32_t, queued, 1000, "jobs waiting in the queue during the GetJob measurement");
ABSL_FLAG(int32_t, watchers, 100, "open WatchJob streams during the GetJob measurement");
ABSL_FLAG(int32_t, client_threads, 4, "closed-loop GetJob clients");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(10), "length of the GetJob measurement");
ABSL_FLAG(int32_t, start_samples, 100, "submit→start samples on an idle worker");
ABSL_FLAG(std::string, db_sync, "full", "the scheduler's --db_sync");
ABSL_FLAG(std::string, workdir, "", "scratch folder (default: a fresh one under /tmp)");
ABSL_FLAG(std::string, output, "", "JSON result file (default: stdout only)");
ABSL_FLAG(std::string, commit, "", "commit to record (default: git rev-parse --short HEAD)");

namespace {

namespace v1 = zoetrope::v1;
using Clock = std::chrono::steady_clock;

double Milliseconds(Clock::duration duration) { return std::chrono::duration<double, std::milli>(duration).count(); }

struct Child {
  pid_t pid = -1;
  ~Child() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
};

bool Spawn(const std::vector<std::string>& argv, const std::string& log, Child& child) {
  child.pid = fork();
  if (child.pid < 0) return false;
  if (child.pid == 0) {
    FILE* file = std::fopen(log.c_str(), "a");
    if (file != nullptr) {
      dup2(fileno(file), 1);
      dup2(fileno(file), 2);
    }
    std::vector<char*> arguments;
    for (const std::string& argument : argv) arguments.push_back(const_cast<char*>(argument.c_str()));
    arguments.push_back(nullptr);
    execv(arguments[0], arguments.data());
    _exit(127);
  }
  return true;
}

std::string ReadFile(const std::string& path) {
  std::ifstream file(path);
  return std::string(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
}

bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout) {
  const absl::Time give_up = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() > give_up) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return true;
}

nlohmann::json Summary(std::vector<double> milliseconds) {
  nlohmann::json summary;
  if (milliseconds.empty()) return summary;
  std::sort(milliseconds.begin(), milliseconds.end());
  auto at = [&](double quantile) {
    return milliseconds[std::min(milliseconds.size() - 1, static_cast<size_t>(quantile * milliseconds.size()))];
  };
  summary["samples"] = milliseconds.size();
  summary["p50_ms"] = at(0.50);
  summary["p90_ms"] = at(0.90);
  summary["p99_ms"] = at(0.99);
  summary["max_ms"] = milliseconds.back();
  summary["mean_ms"] = std::accumulate(milliseconds.begin(), milliseconds.end(), 0.0) / milliseconds.size();
  return summary;
}

v1::SubmitJobRequest SmallJob(int index) {
  v1::SubmitJobRequest request;
  request.set_model("tiny");
  request.set_prompt(absl::StrCat("bench job ", index));
  request.set_width(128);
  request.set_height(128);
  request.set_frames(1);
  request.set_steps(1);
  return request;
}

std::string CommandOutput(const std::string& command) {
  std::string output;
  if (FILE* pipe = popen(command.c_str(), "r"); pipe != nullptr) {
    char buffer[256];
    while (std::fgets(buffer, sizeof(buffer), pipe) != nullptr) output += buffer;
    pclose(pipe);
  }
  while (!output.empty() && (output.back() == '\n' || output.back() == ' ')) output.pop_back();
  return output;
}

int Run() {
  std::string workdir = absl::GetFlag(FLAGS_workdir);
  if (workdir.empty()) {
    char pattern[] = "/tmp/zoetrope-service-bench-XXXXXX";
    workdir = mkdtemp(pattern);
  }
  std::filesystem::create_directories(workdir);
  // The worker announces the model by its folder name: link it as "tiny".
  std::error_code error;
  std::filesystem::create_directory_symlink(std::filesystem::absolute(absl::GetFlag(FLAGS_model)), workdir + "/tiny",
                                            error);
  const std::string ready = workdir + "/ready";
  Child scheduler;
  if (!Spawn({absl::GetFlag(FLAGS_scheduler), "--listen=127.0.0.1:0", "--metrics_port=-1", "--models=tiny",
              absl::StrCat("--db=", workdir, "/jobs.db"), absl::StrCat("--results_dir=", workdir, "/results"),
              absl::StrCat("--db_sync=", absl::GetFlag(FLAGS_db_sync)), "--queue_limit=100000",
              absl::StrCat("--ready_file=", ready)},
             workdir + "/scheduler.log", scheduler) ||
      !WaitFor([&] { return std::filesystem::exists(ready); }, absl::Seconds(20))) {
    std::fprintf(stderr, "scheduler did not start:\n%s\n", ReadFile(workdir + "/scheduler.log").c_str());
    return 1;
  }
  int port = 0;
  std::ifstream(ready) >> port;
  const std::string address = absl::StrCat("127.0.0.1:", port);
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto stub = v1::VideoService::NewStub(channel);

  // 1. Fill the queue (no worker yet), measuring SubmitJob on the way.
  const int queued = absl::GetFlag(FLAGS_queued);
  std::vector<std::string> ids;
  std::vector<double> submit_ms;
  for (int i = 0; i < queued; ++i) {
    grpc::ClientContext context;
    v1::Job job;
    const auto start = Clock::now();
    const grpc::Status status = stub->SubmitJob(&context, SmallJob(i), &job);
    submit_ms.push_back(Milliseconds(Clock::now() - start));
    if (!status.ok()) {
      std::fprintf(stderr, "SubmitJob: %s\n", status.error_message().c_str());
      return 1;
    }
    ids.push_back(job.id());
  }
  // Watchers on jobs spread over the queue.
  const int watcher_count = absl::GetFlag(FLAGS_watchers);
  std::vector<std::unique_ptr<grpc::ClientContext>> watch_contexts;
  std::vector<std::thread> watchers;
  std::atomic<int> watch_events{0};
  for (int i = 0; i < watcher_count; ++i) {
    watch_contexts.push_back(std::make_unique<grpc::ClientContext>());
    grpc::ClientContext* context = watch_contexts.back().get();
    const std::string id = ids[(static_cast<size_t>(i) * ids.size()) / std::max(watcher_count, 1)];
    watchers.emplace_back([&, context, id] {
      v1::WatchJobRequest request;
      request.set_id(id);
      auto reader = stub->WatchJob(context, request);
      v1::JobEvent event;
      while (reader->Read(&event)) ++watch_events;
      reader->Finish();
    });
  }
  WaitFor([&] { return watch_events.load() >= watcher_count; }, absl::Seconds(30));

  // GetJob, closed loop.
  const int threads = absl::GetFlag(FLAGS_client_threads);
  const auto stop_at = Clock::now() + absl::ToChronoNanoseconds(absl::GetFlag(FLAGS_duration));
  std::vector<std::vector<double>> latencies(threads);
  std::atomic<int> failures{0};
  std::vector<std::thread> clients;
  const auto measure_start = Clock::now();
  for (int t = 0; t < threads; ++t) {
    clients.emplace_back([&, t] {
      size_t next = static_cast<size_t>(t);
      while (Clock::now() < stop_at) {
        v1::GetJobRequest request;
        request.set_id(ids[next % ids.size()]);
        next += 7919;
        grpc::ClientContext context;
        v1::Job job;
        const auto start = Clock::now();
        const grpc::Status status = stub->GetJob(&context, request, &job);
        latencies[t].push_back(Milliseconds(Clock::now() - start));
        if (!status.ok()) ++failures;
      }
    });
  }
  for (std::thread& client : clients) client.join();
  const double measured_seconds = std::chrono::duration<double>(Clock::now() - measure_start).count();
  std::vector<double> get_ms;
  for (const auto& part : latencies) get_ms.insert(get_ms.end(), part.begin(), part.end());

  // Empty the queue (cancel) and close the watchers: their streams end with the cancellation.
  for (const std::string& id : ids) {
    grpc::ClientContext context;
    v1::CancelJobRequest request;
    request.set_id(id);
    v1::Job job;
    stub->CancelJob(&context, request, &job);
  }
  for (std::thread& watcher : watchers) watcher.join();

  // 2. Submit→start on an idle worker.
  Child worker;
  if (!Spawn({absl::GetFlag(FLAGS_worker), absl::StrCat("--scheduler=", address), absl::StrCat("--model=", workdir, "/tiny"),
              "--worker_id=bench", "--threads=1", "--metrics_port=-1", absl::StrCat("--work_dir=", workdir, "/work")},
             workdir + "/worker.log", worker) ||
      !WaitFor([&] { return ReadFile(workdir + "/scheduler.log").find("worker bench connected") != std::string::npos; },
               absl::Seconds(30))) {
    std::fprintf(stderr, "worker did not connect:\n%s\n", ReadFile(workdir + "/worker.log").c_str());
    return 1;
  }
  std::vector<double> dispatch_ms, start_ms, total_ms;
  for (int i = 0; i < absl::GetFlag(FLAGS_start_samples); ++i) {
    grpc::ClientContext context;
    const auto begin = Clock::now();
    auto reader = stub->Generate(&context, SmallJob(queued + i));
    v1::JobEvent event;
    bool dispatched = false, started = false;
    while (reader->Read(&event)) {
      if (!dispatched && (event.has_started() || event.job().state() == v1::JOB_STATE_RUNNING)) {
        dispatch_ms.push_back(Milliseconds(Clock::now() - begin));
        dispatched = true;
      }
      if (!started && event.has_phase_changed()) {
        start_ms.push_back(Milliseconds(Clock::now() - begin));
        started = true;
      }
      if (event.has_finished()) total_ms.push_back(Milliseconds(Clock::now() - begin));
    }
    reader->Finish();
  }

  nlohmann::json result;
  result["benchmark"] = "service";
  std::string commit = absl::GetFlag(FLAGS_commit);
  if (commit.empty()) commit = CommandOutput("git rev-parse --short HEAD 2>/dev/null");
  result["commit"] = commit;
  result["date"] = absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(), absl::UTCTimeZone());
  result["device"] = absl::StrCat(CommandOutput("uname -m"), ", ", std::thread::hardware_concurrency(), " cores");
  result["configuration"] = {{"queued_jobs", queued},
                             {"watchers", watcher_count},
                             {"client_threads", threads},
                             {"duration_s", measured_seconds},
                             {"db_sync", absl::GetFlag(FLAGS_db_sync)},
                             {"store_filesystem", CommandOutput(absl::StrCat("stat -f -c %T ", workdir))},
                             {"job", "tiny, 128x128x1, 1 step"}};
  result["submit_job"] = Summary(submit_ms);
  nlohmann::json get_job = Summary(get_ms);
  get_job["throughput_per_s"] = get_ms.size() / measured_seconds;
  get_job["failures"] = failures.load();
  result["get_job"] = get_job;
  result["submit_to_dispatch"] = Summary(dispatch_ms);
  result["submit_to_worker_start"] = Summary(start_ms);
  result["submit_to_finished"] = Summary(total_ms);
  result["target"] = {{"submit_to_worker_start_p99_ms", 10.0}};
  const std::string text = result.dump(2);
  std::printf("%s\n", text.c_str());
  if (const std::string output = absl::GetFlag(FLAGS_output); !output.empty()) {
    std::ofstream(output) << text << "\n";
  }
  return failures.load() == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Scheduler benchmark: GetJob under load, submit→start latency.");
  absl::ParseCommandLine(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  return Run();
}
