#include <gtest/gtest.h>

#include "tests/service/service_harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/impl/client_unary_call.h"
#include "grpcpp/impl/rpc_method.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/byte_buffer.h"

namespace zoetrope::testing {

namespace v1 = zoetrope::v1;

std::string SchedulerBinary() { return ZOETROPE_SCHEDULER_BINARY; }
std::string WorkerBinary() { return ZOETROPE_WORKER_BINARY; }
std::string CliBinary() { return ZOETROPE_CLI_BINARY; }
std::string MkweightsBinary() { return ZOETROPE_MKWEIGHTS_BINARY; }

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Start(const std::vector<std::string>& argv,
                                                                   const std::string& log_path) {
  const int log = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log < 0) return absl::InternalError(absl::StrCat("cannot open ", log_path));
  std::vector<char*> arguments;
  for (const std::string& argument : argv) arguments.push_back(const_cast<char*>(argument.c_str()));
  arguments.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(log);
    return absl::InternalError("fork failed");
  }
  if (pid == 0) {
    ::dup2(log, STDOUT_FILENO);
    ::dup2(log, STDERR_FILENO);
    // The test process may block signals in its threads; children start with a clean mask.
    sigset_t empty;
    sigemptyset(&empty);
    ::sigprocmask(SIG_SETMASK, &empty, nullptr);
    ::execv(arguments[0], arguments.data());
    ::_exit(127);
  }
  ::close(log);
  return std::unique_ptr<ChildProcess>(new ChildProcess(pid, log_path));
}

ChildProcess::~ChildProcess() {
  if (!exited_) Kill();
}

void ChildProcess::Signal(int signal_number) {
  if (!exited_) ::kill(pid_, signal_number);
}

void ChildProcess::Kill() {
  if (exited_) return;
  ::kill(pid_, SIGKILL);
  WaitForExit(absl::Seconds(10));
}

bool ChildProcess::running() {
  if (exited_) return false;
  int status = 0;
  const pid_t reaped = ::waitpid(pid_, &status, WNOHANG);
  if (reaped == pid_) {
    exited_ = true;
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return false;
  }
  return true;
}

bool ChildProcess::WaitForExit(absl::Duration timeout, int* exit_code) {
  const bool exited = WaitFor([this] { return !running(); }, timeout);
  if (exited && exit_code != nullptr) *exit_code = exit_code_;
  return exited;
}

std::string ChildProcess::Log() const {
  std::ifstream file(log_path_);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout) {
  const absl::Time give_up = absl::Now() + timeout;
  while (true) {
    if (condition()) return true;
    if (absl::Now() >= give_up) return false;
    absl::SleepFor(absl::Milliseconds(20));
  }
}

int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  socklen_t length = sizeof(address);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  const int port = ntohs(address.sin_port);
  ::close(fd);
  return port;
}

std::string MakeTempDirectory(const std::string& prefix) {
  const char* root = std::getenv("TEST_TMPDIR");
  std::string pattern = absl::StrCat(root != nullptr ? root : "/tmp", "/", prefix, "-XXXXXX");
  std::vector<char> buffer(pattern.begin(), pattern.end());
  buffer.push_back('\0');
  const char* made = ::mkdtemp(buffer.data());
  return made != nullptr ? made : "";
}

std::string SharedTinyModel() {
  static const std::string* folder = [] {
    // Under ctest the tiny_models fixture has written it; run by hand, make one (a few seconds).
    std::string made = absl::StrCat(ZOETROPE_TEST_MODEL_DIR, "/diffusers");
    if (!std::filesystem::exists(made + "/transformer")) {
      made = MakeTempDirectory("zoetrope-model") + "/diffusers";
      const std::string build = std::filesystem::path(MkweightsBinary()).parent_path().parent_path().string();
      const std::string command =
          absl::StrCat(ZOETROPE_MAKE_MODEL_SCRIPT, " --build-dir ", build, " ", made, " >/dev/null 2>&1");
      if (std::system(command.c_str()) != 0) made.clear();
    }
    return new std::string(made);
  }();
  return *folder;
}

std::string TinyModel(const std::string& directory) {
  // A link named "tiny", so that workers announce the model "tiny" (the folder's name).
  const std::string shared = SharedTinyModel();
  if (shared.empty()) return "";
  const std::string folder = directory + "/tiny";
  std::error_code error;
  if (!std::filesystem::exists(folder)) std::filesystem::create_directory_symlink(shared, folder, error);
  return error ? "" : folder;
}

int CountOccurrences(const std::string& text, const std::string& needle) {
  int count = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + needle.size())) ++count;
  return count;
}

// ---------------------------------------------------------------------------------------------------

ServiceCluster::ServiceCluster(const std::string& name)
    : directory_(MakeTempDirectory(absl::StrCat("zoetrope-", name))),
      model_(TinyModel(directory_)),
      port_(FreePort()) {}

ServiceCluster::~ServiceCluster() {
  workers_.clear();
  scheduler_.reset();
  std::error_code error;
  if (!::testing::Test::HasFailure()) std::filesystem::remove_all(directory_, error);
}

std::string ServiceCluster::address() const { return absl::StrCat("127.0.0.1:", port_); }

::testing::AssertionResult ServiceCluster::StartScheduler(const std::vector<std::string>& extra_flags) {
  if (model_.empty()) return ::testing::AssertionFailure() << "no tiny model (scripts/make-model.sh failed)";
  if (!extra_flags.empty() || scheduler_flags_.empty()) {
    scheduler_flags_ = {"--models=tiny", "--heartbeat_interval=200ms", "--worker_timeout=3s", "--worker_grace=2s"};
    scheduler_flags_.insert(scheduler_flags_.end(), extra_flags.begin(), extra_flags.end());
  }
  const std::string ready = absl::StrCat(directory_, "/scheduler.ready");
  std::error_code error;
  std::filesystem::remove(ready, error);
  std::vector<std::string> argv = {SchedulerBinary(),
                                   absl::StrCat("--listen=", address()),
                                   absl::StrCat("--db=", directory_, "/data/jobs.db"),
                                   absl::StrCat("--results_dir=", directory_, "/data/results"),
                                   "--metrics_host=127.0.0.1",
                                   "--metrics_port=0",
                                   absl::StrCat("--ready_file=", ready)};
  argv.insert(argv.end(), scheduler_flags_.begin(), scheduler_flags_.end());
  absl::StatusOr<std::unique_ptr<ChildProcess>> started =
      ChildProcess::Start(argv, absl::StrCat(directory_, "/scheduler-", scheduler_starts_++, ".log"));
  if (!started.ok()) return ::testing::AssertionFailure() << started.status().message();
  scheduler_ = std::move(*started);
  if (!WaitFor([&] { return std::filesystem::exists(ready) || !scheduler_->running(); }, absl::Seconds(20)) ||
      !scheduler_->running()) {
    return ::testing::AssertionFailure() << "the scheduler did not start:\n" << scheduler_->Log();
  }
  std::ifstream(ready) >> port_ >> metrics_port_;
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult ServiceCluster::StartWorker(const std::string& id,
                                                       const std::vector<std::string>& extra_flags) {
  std::vector<std::string> argv = {WorkerBinary(),
                                   absl::StrCat("--scheduler=", address()),
                                   absl::StrCat("--model=", model_),
                                   absl::StrCat("--worker_id=", id),
                                   absl::StrCat("--work_dir=", directory_, "/work-", id),
                                   "--threads=1",
                                   "--metrics_host=127.0.0.1",
                                   "--metrics_port=0",
                                   "--reconnect_max_backoff=300ms"};
  argv.insert(argv.end(), extra_flags.begin(), extra_flags.end());
  absl::StatusOr<std::unique_ptr<ChildProcess>> started =
      ChildProcess::Start(argv, absl::StrCat(directory_, "/worker-", id, ".log"));
  if (!started.ok()) return ::testing::AssertionFailure() << started.status().message();
  ChildProcess& process = **started;
  workers_.emplace_back(id, std::move(*started));
  const std::string connected = absl::StrCat("worker ", id, " connected");
  if (!WaitFor([&] { return scheduler_->Log().find(connected) != std::string::npos || !process.running(); },
               absl::Seconds(20)) ||
      !process.running()) {
    return ::testing::AssertionFailure() << "worker " << id << " did not connect:\n" << process.Log();
  }
  return ::testing::AssertionSuccess();
}

ChildProcess& ServiceCluster::worker(const std::string& id) {
  for (auto& [name, process] : workers_) {
    if (name == id) return *process;
  }
  ADD_FAILURE() << "no worker " << id;
  std::abort();
}

void ServiceCluster::KillWorker(const std::string& id) { worker(id).Kill(); }

std::string ServiceCluster::AllWorkerLogs() const {
  std::string logs;
  for (const auto& [name, process] : workers_) logs += process->Log();
  return logs;
}

std::shared_ptr<grpc::Channel> ServiceCluster::channel() {
  if (channel_ == nullptr) {
    grpc::ChannelArguments arguments;
    arguments.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    arguments.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
    arguments.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
    channel_ = grpc::CreateCustomChannel(address(), grpc::InsecureChannelCredentials(), arguments);
  }
  return channel_;
}

v1::VideoService::Stub& ServiceCluster::stub() {
  if (stub_ == nullptr) stub_ = v1::VideoService::NewStub(channel());
  return *stub_;
}

// ---------------------------------------------------------------------------------------------------

v1::SubmitJobRequest SmallRequest(int steps, const std::string& prompt) {
  v1::SubmitJobRequest request;
  request.set_model("tiny");
  request.set_prompt(prompt);
  request.set_width(128);
  request.set_height(128);
  request.set_frames(1);
  request.set_steps(steps);
  return request;
}

v1::SubmitJobRequest LongRequest(int steps) {
  v1::SubmitJobRequest request = SmallRequest(steps, "a long paper boat");
  request.set_width(256);
  request.set_height(256);
  return request;
}

v1::SubmitJobRequest SlowStepRequest(int steps) {
  v1::SubmitJobRequest request = SmallRequest(steps, "a slow paper boat");
  request.set_width(256);
  request.set_height(256);
  request.set_frames(17);
  return request;
}

namespace {
void Deadline(grpc::ClientContext& context, absl::Duration timeout = absl::Seconds(20)) {
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}
}  // namespace

grpc::Status Submit(v1::VideoService::Stub& stub, const v1::SubmitJobRequest& request, v1::Job* job) {
  grpc::ClientContext context;
  Deadline(context);
  return stub.SubmitJob(&context, request, job);
}

absl::StatusOr<v1::Job> GetJob(v1::VideoService::Stub& stub, const std::string& id) {
  grpc::ClientContext context;
  Deadline(context);
  v1::GetJobRequest request;
  request.set_id(id);
  v1::Job job;
  grpc::Status status = stub.GetJob(&context, request, &job);
  if (!status.ok()) return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
  return job;
}

grpc::Status Cancel(v1::VideoService::Stub& stub, const std::string& id, v1::Job* job) {
  grpc::ClientContext context;
  Deadline(context);
  v1::CancelJobRequest request;
  request.set_id(id);
  return stub.CancelJob(&context, request, job);
}

std::vector<v1::Job> ListAll(v1::VideoService::Stub& stub, const v1::ListJobsRequest& filter) {
  std::vector<v1::Job> jobs;
  v1::ListJobsRequest request = filter;
  request.set_page_size(1000);
  for (int page = 0; page < 100; ++page) {
    grpc::ClientContext context;
    Deadline(context);
    v1::ListJobsResponse response;
    if (!stub.ListJobs(&context, request, &response).ok()) break;
    jobs.insert(jobs.end(), response.jobs().begin(), response.jobs().end());
    if (response.next_page_token().empty()) break;
    request.set_page_token(response.next_page_token());
  }
  return jobs;
}

v1::Job WaitForTerminal(v1::VideoService::Stub& stub, const std::string& id, absl::Duration timeout) {
  v1::Job last;
  WaitFor(
      [&] {
        absl::StatusOr<v1::Job> job = GetJob(stub, id);
        if (!job.ok()) return false;
        last = *job;
        return job->state() != v1::JOB_STATE_QUEUED && job->state() != v1::JOB_STATE_RUNNING;
      },
      timeout);
  return last;
}

std::vector<v1::JobEvent> WatchAll(v1::VideoService::Stub& stub, const std::string& id, absl::Duration timeout,
                                   grpc::Status* status) {
  grpc::ClientContext context;
  Deadline(context, timeout);
  v1::WatchJobRequest request;
  request.set_id(id);
  std::unique_ptr<grpc::ClientReader<v1::JobEvent>> reader = stub.WatchJob(&context, request);
  std::vector<v1::JobEvent> events;
  v1::JobEvent event;
  while (reader->Read(&event)) events.push_back(event);
  grpc::Status finished = reader->Finish();
  if (status != nullptr) *status = finished;
  return events;
}

grpc::Status Fetch(v1::VideoService::Stub& stub, const std::string& id, int64_t offset, std::string* data,
                   std::vector<v1::ResultChunk>* chunks, int chunk_size) {
  grpc::ClientContext context;
  Deadline(context);
  v1::FetchResultRequest request;
  request.set_id(id);
  request.set_offset(offset);
  request.set_chunk_size(chunk_size);
  std::unique_ptr<grpc::ClientReader<v1::ResultChunk>> reader = stub.FetchResult(&context, request);
  v1::ResultChunk chunk;
  while (reader->Read(&chunk)) {
    data->append(chunk.data());
    if (chunks != nullptr) {
      chunk.clear_data();
      chunk.set_offset(chunk.offset());
      chunks->push_back(chunk);
    }
  }
  return reader->Finish();
}

grpc::Status RawUnaryCall(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                          const std::string& request, std::string* response) {
  grpc::ClientContext context;
  Deadline(context, absl::Seconds(5));
  grpc::Slice slice(request);
  grpc::ByteBuffer request_buffer(&slice, 1);
  grpc::ByteBuffer response_buffer;
  const grpc::internal::RpcMethod rpc(method.c_str(), grpc::internal::RpcMethod::NORMAL_RPC);
  grpc::Status status = grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
      channel.get(), rpc, &context, request_buffer, &response_buffer);
  if (status.ok() && response != nullptr) {
    std::vector<grpc::Slice> slices;
    (void)response_buffer.Dump(&slices);
    response->clear();
    for (const grpc::Slice& part : slices) response->append(reinterpret_cast<const char*>(part.begin()), part.size());
  }
  return status;
}

int HealthStatus(const std::shared_ptr<grpc::Channel>& channel, const std::string& service) {
  // HealthCheckRequest { string service = 1; } and HealthCheckResponse { ServingStatus status = 1; },
  // encoded by hand: the test needs no copy of health.proto.
  std::string request;
  if (!service.empty()) {
    request.push_back(0x0A);
    request.push_back(static_cast<char>(service.size()));
    request += service;
  }
  std::string response;
  if (!RawUnaryCall(channel, "/grpc.health.v1.Health/Check", request, &response).ok()) return -1;
  if (response.size() == 2 && response[0] == 0x08) return response[1];
  return response.empty() ? 0 : -1;
}

std::string ScrapeMetrics(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<uint16_t>(port));
  timeval timeout{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    ::close(fd);
    return "";
  }
  const std::string request = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  (void)::write(fd, request.data(), request.size());
  std::string response;
  char buffer[4096];
  ssize_t count = 0;
  while ((count = ::read(fd, buffer, sizeof(buffer))) > 0) response.append(buffer, static_cast<size_t>(count));
  ::close(fd);
  const size_t body = response.find("\r\n\r\n");
  return body == std::string::npos ? "" : response.substr(body + 4);
}

double MetricValue(const std::string& scrape, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(scrape, '\n')) {
    if (line.size() > series.size() && line.substr(0, series.size()) == series && line[series.size()] == ' ') {
      double value = 0;
      if (absl::SimpleAtod(line.substr(series.size() + 1), &value)) return value;
    }
  }
  return std::nan("");
}

}  // namespace zoetrope::testing
