// Harness for the service tests: real zoetrope-scheduler and zoetrope-worker processes on 127.0.0.1,
// tiny random weights made with zoetrope-mkweights, and small helpers around the gRPC client.
//
// Every wait is bounded (WaitFor returns false after its timeout) so a broken service fails a test
// instead of hanging it. Child processes are killed when their handle goes out of scope.
#pragma once

#include <gtest/gtest.h>
#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "zoetrope/v1/video_service.grpc.pb.h"

namespace zoetrope::testing {

// Binary paths, passed by tests/CMakeLists.txt.
std::string SchedulerBinary();
std::string WorkerBinary();
std::string CliBinary();
std::string MkweightsBinary();

// A child process with stdout and stderr in a log file.
class ChildProcess {
 public:
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Start(const std::vector<std::string>& argv,
                                                             const std::string& log_path);
  ~ChildProcess();  // SIGKILL when still running

  pid_t pid() const { return pid_; }
  void Signal(int signal_number);
  void Kill();  // SIGKILL and reap
  // Waits for the exit; false on timeout. `exit_code` gets the status (128+signal when killed).
  bool WaitForExit(absl::Duration timeout, int* exit_code = nullptr);
  bool running();
  std::string Log() const;
  const std::string& log_path() const { return log_path_; }

 private:
  ChildProcess(pid_t pid, std::string log_path) : pid_(pid), log_path_(std::move(log_path)) {}
  pid_t pid_;
  std::string log_path_;
  bool exited_ = false;
  int exit_code_ = 0;
};

// Polls `condition` every 20 ms until it holds or `timeout` passes.
bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout);

// A free TCP port on 127.0.0.1 (bound and released; good enough on a test machine).
int FreePort();

// A fresh folder under the test temp folder (TEST_TMPDIR or /tmp).
std::string MakeTempDirectory(const std::string& prefix);

// A complete tiny random model (scripts/make-model.sh: DiT, umT5, VAE, tokenizer), shared by the tests,
// linked as DIR/tiny so that workers announce it as "tiny". Empty when it cannot be made.
std::string TinyModel(const std::string& directory);

// Counts how often `needle` occurs in `text`.
int CountOccurrences(const std::string& text, const std::string& needle);

// One scheduler + workers in a temp folder.
class ServiceCluster {
 public:
  explicit ServiceCluster(const std::string& name);
  ~ServiceCluster();

  // Starts (or restarts, on the same port and store) the scheduler and waits until it serves.
  ::testing::AssertionResult StartScheduler(const std::vector<std::string>& extra_flags = {});
  // Starts a worker with this id and waits until the scheduler knows it.
  ::testing::AssertionResult StartWorker(const std::string& id, const std::vector<std::string>& extra_flags = {});

  ChildProcess& scheduler() { return *scheduler_; }
  ChildProcess& worker(const std::string& id);
  void KillScheduler() { scheduler_->Kill(); }
  void KillWorker(const std::string& id);
  std::string AllWorkerLogs() const;

  const std::string& directory() const { return directory_; }
  const std::string& model_directory() const { return model_; }
  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  std::string address() const;
  std::shared_ptr<grpc::Channel> channel();
  zoetrope::v1::VideoService::Stub& stub();

 private:
  std::string directory_;
  std::string model_;
  int port_ = 0;
  int metrics_port_ = 0;
  std::vector<std::string> scheduler_flags_;
  std::unique_ptr<ChildProcess> scheduler_;
  std::vector<std::pair<std::string, std::unique_ptr<ChildProcess>>> workers_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<zoetrope::v1::VideoService::Stub> stub_;
  int scheduler_starts_ = 0;
};

// A small job: one 128×128 frame (milliseconds per step, ~0.1 s to decode).
zoetrope::v1::SubmitJobRequest SmallRequest(int steps = 2, const std::string& prompt = "a paper boat");
// One 256×256 frame: ~10 ms per step, cheap to decode; many steps make a job that runs a while.
zoetrope::v1::SubmitJobRequest LongRequest(int steps);
// 256×256×17: ~0.1 s per step (and seconds to decode): for jobs that are stopped before they end.
zoetrope::v1::SubmitJobRequest SlowStepRequest(int steps);

grpc::Status Submit(zoetrope::v1::VideoService::Stub& stub, const zoetrope::v1::SubmitJobRequest& request,
                    zoetrope::v1::Job* job);
absl::StatusOr<zoetrope::v1::Job> GetJob(zoetrope::v1::VideoService::Stub& stub, const std::string& id);
grpc::Status Cancel(zoetrope::v1::VideoService::Stub& stub, const std::string& id, zoetrope::v1::Job* job);
// All jobs (following pages).
std::vector<zoetrope::v1::Job> ListAll(zoetrope::v1::VideoService::Stub& stub,
                                       const zoetrope::v1::ListJobsRequest& filter = {});
// Waits until the job is in a terminal state; returns it (or the last state seen on timeout).
zoetrope::v1::Job WaitForTerminal(zoetrope::v1::VideoService::Stub& stub, const std::string& id,
                                  absl::Duration timeout);
// Reads a whole WatchJob stream (bounded by `timeout`); `status` gets the stream's end.
std::vector<zoetrope::v1::JobEvent> WatchAll(zoetrope::v1::VideoService::Stub& stub, const std::string& id,
                                             absl::Duration timeout, grpc::Status* status = nullptr);
// Downloads a result from `offset`; `chunks` (may be null) gets each chunk's metadata.
grpc::Status Fetch(zoetrope::v1::VideoService::Stub& stub, const std::string& id, int64_t offset, std::string* data,
                   std::vector<zoetrope::v1::ResultChunk>* chunks = nullptr, int chunk_size = 0);
// Sends raw bytes as a unary call (requests protobuf would refuse to build, health checks).
grpc::Status RawUnaryCall(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                          const std::string& request, std::string* response);
// grpc.health.v1 status of a service ("" = the server): 1 SERVING, 2 NOT_SERVING; -1 on error.
int HealthStatus(const std::shared_ptr<grpc::Channel>& channel, const std::string& service = "");
// GET http://127.0.0.1:port/metrics; empty on error.
std::string ScrapeMetrics(int port);
// Value of one series line "name{labels} value" in a scrape; NaN when absent.
double MetricValue(const std::string& scrape, const std::string& series);

}  // namespace zoetrope::testing
