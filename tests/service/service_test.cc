// The service with real processes on 127.0.0.1: zoetrope-scheduler, zoetrope-worker (tiny random weights,
// CPU, one thread each) and the zoetrope CLI. Every wait is bounded.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/sha256.h"
#include "tests/service/service_harness.h"

namespace zoetrope::testing {
namespace {

namespace v1 = zoetrope::v1;

constexpr absl::Duration kJobTimeout = absl::Seconds(90);

std::string ReadFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::stringstream content;
  content << file.rdbuf();
  return content.str();
}

// Runs a command line (stdout captured, stderr to `stderr_path` when given); returns the exit code.
int RunCommand(const std::string& command, std::string* output, const std::string& stderr_path = "/dev/null") {
  const std::string full = absl::StrCat(command, " 2>>", stderr_path);
  FILE* pipe = ::popen(full.c_str(), "r");
  if (pipe == nullptr) return -1;
  char buffer[4096];
  size_t count = 0;
  while ((count = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) {
    if (output != nullptr) output->append(buffer, count);
  }
  const int status = ::pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int WorkerMetricsPort(const std::string& worker_log) {
  const std::string marker = "/metrics on port ";
  const size_t at = worker_log.find(marker);
  return at == std::string::npos ? 0 : std::atoi(worker_log.c_str() + at + marker.size());
}

// ---------------------------------------------------------------------------------------------------

TEST(ServiceTest, LifecycleSubmitWatchGetFetchList) {
  ServiceCluster cluster("lifecycle");
  ASSERT_TRUE(cluster.StartScheduler());
  v1::VideoService::Stub& stub = cluster.stub();

  // Raw frames (lossless, ~1 MB: several chunks) of 5 frames.
  v1::SubmitJobRequest request = SmallRequest(3, "a paper boat drifting");
  request.set_frames(5);
  request.set_output_format(v1::OUTPUT_FORMAT_RAW_SAFETENSORS);
  v1::Job job;
  ASSERT_TRUE(Submit(stub, request, &job).ok());
  EXPECT_EQ(job.state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(job.queue_position(), 1);
  EXPECT_EQ(job.request().fps(), 16) << "defaults are filled in";
  EXPECT_EQ(job.request().guidance(), 5.0);
  EXPECT_EQ(job.request().sampler(), v1::SAMPLER_UNIPC);

  // Watch from before the worker exists, so that every event is seen.
  grpc::Status watch_status;
  std::vector<v1::JobEvent> events;
  std::thread watcher([&] { events = WatchAll(stub, job.id(), kJobTimeout, &watch_status); });
  ASSERT_TRUE(WaitFor([&] { return MetricValue(ScrapeMetrics(cluster.metrics_port()), "zoetrope_job_watchers") == 1; },
                      absl::Seconds(10)));
  ASSERT_TRUE(cluster.StartWorker("w1"));
  watcher.join();
  ASSERT_TRUE(watch_status.ok()) << watch_status.error_message();
  ASSERT_FALSE(events.empty());
  EXPECT_TRUE(events.front().has_queued());
  EXPECT_EQ(events.front().queued().position(), 1);
  // Events in order: queued, started, steps 1..3, finished.
  std::vector<int> steps;
  bool started = false;
  for (const v1::JobEvent& event : events) {
    if (event.has_started()) started = true;
    if (event.has_step()) {
      EXPECT_TRUE(started);
      EXPECT_EQ(event.step().total_steps(), 3);
      EXPECT_GT(event.step().step_seconds(), 0.0);
      steps.push_back(event.step().step());
    }
  }
  EXPECT_EQ(steps, (std::vector<int>{1, 2, 3}));
  ASSERT_TRUE(events.back().has_finished());
  EXPECT_EQ(events.back().finished().state(), v1::JOB_STATE_SUCCEEDED);

  absl::StatusOr<v1::Job> done = GetJob(stub, job.id());
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done->attempt(), 1);
  EXPECT_EQ(done->worker_id(), "w1");
  EXPECT_GT(done->measurements().run_seconds(), 0.0);
  EXPECT_GE(done->measurements().queue_seconds(), 0.0);
  EXPECT_TRUE(done->result_available());
  EXPECT_EQ(done->result_media_type(), "application/x-safetensors");
  EXPECT_TRUE(done->has_start_time() && done->has_end_time());

  // The result in chunks of at most 64 KiB, contiguous, with the right SHA-256.
  std::string result;
  std::vector<v1::ResultChunk> chunks;
  ASSERT_TRUE(Fetch(stub, job.id(), 0, &result, &chunks).ok());
  ASSERT_EQ(static_cast<int64_t>(result.size()), done->result_size_bytes());
  ASSERT_GE(chunks.size(), 10u) << "5 raw frames of 128×128 are about 1 MB";
  int64_t offset = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    EXPECT_EQ(chunks[i].offset(), offset);
    EXPECT_EQ(chunks[i].last(), i + 1 == chunks.size());
    offset = i + 1 < chunks.size() ? chunks[i + 1].offset() : static_cast<int64_t>(result.size());
    EXPECT_LE(offset - chunks[i].offset(), 64 * 1024);
  }
  Sha256 hash;
  hash.Update(result);
  EXPECT_EQ(hash.FinishHex(), chunks.front().sha256());

  // Resume from the middle, and the edge cases of the offset.
  std::string tail;
  const int64_t middle = static_cast<int64_t>(result.size()) / 2 + 7;
  ASSERT_TRUE(Fetch(stub, job.id(), middle, &tail).ok());
  EXPECT_EQ(tail, result.substr(middle));
  std::string small_chunks;
  std::vector<v1::ResultChunk> small_metadata;
  ASSERT_TRUE(Fetch(stub, job.id(), 0, &small_chunks, &small_metadata, 10000).ok());
  EXPECT_EQ(small_chunks, result);
  EXPECT_EQ(small_metadata.size(), (result.size() + 9999) / 10000);
  std::string nothing;
  std::vector<v1::ResultChunk> end_chunks;
  ASSERT_TRUE(Fetch(stub, job.id(), static_cast<int64_t>(result.size()), &nothing, &end_chunks).ok());
  EXPECT_TRUE(nothing.empty());
  ASSERT_EQ(end_chunks.size(), 1u);
  EXPECT_TRUE(end_chunks[0].last());
  EXPECT_EQ(Fetch(stub, job.id(), static_cast<int64_t>(result.size()) + 1, &nothing).error_code(),
            grpc::StatusCode::OUT_OF_RANGE);
  EXPECT_EQ(Fetch(stub, job.id(), 0, &nothing, nullptr, 100000).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Fetch(stub, job.id(), -1, &nothing).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  // The service runs exactly what `zoetrope generate` runs: the same bytes.
  const std::string local = cluster.directory() + "/local.safetensors";
  const std::string generate =
      absl::StrCat(CliBinary(), " generate --model ", cluster.model_directory(),
                   " --prompt 'a paper boat drifting' --width 128 --height 128 --frames 5 --steps 3 --threads 1",
                   " --output ", local);
  ASSERT_EQ(RunCommand(generate, nullptr), 0);
  EXPECT_TRUE(ReadFile(local) == result) << "service result differs from zoetrope generate";

  // Listing, a finished job's watch, errors of unknown and finished jobs.
  const std::vector<v1::Job> listed = ListAll(stub);
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].id(), job.id());
  const std::vector<v1::JobEvent> replay = WatchAll(stub, job.id(), absl::Seconds(10), &watch_status);
  EXPECT_TRUE(watch_status.ok());
  ASSERT_EQ(replay.size(), 1u);
  EXPECT_EQ(replay[0].finished().state(), v1::JOB_STATE_SUCCEEDED);
  v1::Job ignored;
  EXPECT_EQ(Cancel(stub, job.id(), &ignored).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(GetJob(stub, "job-unknown").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Cancel(stub, "job-unknown", &ignored).error_code(), grpc::StatusCode::NOT_FOUND);
  WatchAll(stub, "job-unknown", absl::Seconds(10), &watch_status);
  EXPECT_EQ(watch_status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Fetch(stub, "job-unknown", 0, &nothing).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST(ServiceTest, GenerateSubmitsAndStreamsInOneCall) {
  ServiceCluster cluster("generate");
  ASSERT_TRUE(cluster.StartScheduler());
  ASSERT_TRUE(cluster.StartWorker("w1"));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + kJobTimeout));
  std::unique_ptr<grpc::ClientReader<v1::JobEvent>> reader = cluster.stub().Generate(&context, SmallRequest(2));
  std::vector<v1::JobEvent> events;
  v1::JobEvent event;
  while (reader->Read(&event)) events.push_back(event);
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_GE(events.size(), 4u);  // queued or started, 2 steps, finished
  EXPECT_TRUE(events.front().has_queued() || events.front().has_started());
  EXPECT_EQ(events.back().finished().state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(GetJob(cluster.stub(), events.back().job().id())->state(), v1::JOB_STATE_SUCCEEDED);

  // A bad request fails the stream at once with INVALID_ARGUMENT.
  grpc::ClientContext bad_context;
  v1::SubmitJobRequest bad = SmallRequest(2);
  bad.set_frames(18);
  std::unique_ptr<grpc::ClientReader<v1::JobEvent>> bad_reader = cluster.stub().Generate(&bad_context, bad);
  EXPECT_FALSE(bad_reader->Read(&event));
  const grpc::Status status = bad_reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message().rfind("frames:", 0), 0u) << status.error_message();
}

TEST(ServiceTest, EveryBadInputIsInvalidArgumentNamingTheFieldAndChangesNothing) {
  ServiceCluster cluster("validation");
  ASSERT_TRUE(cluster.StartScheduler({"--models=tiny"}));
  v1::VideoService::Stub& stub = cluster.stub();
  struct Case {
    std::string field;
    std::function<void(v1::SubmitJobRequest&)> mutate;
  };
  const std::vector<Case> cases = {
      {"model", [](auto& r) { r.set_model("no-such-model"); }},
      {"model", [](auto& r) { r.set_model(std::string(200, 'm')); }},
      {"prompt", [](auto& r) { r.set_prompt(""); }},
      {"prompt", [](auto& r) { r.set_prompt(" \t\n "); }},
      // Unicode White_Space only: U+3000 ideographic space, U+00A0 no-break space, U+2003 em space, and the rest
      // (U+0085, U+1680, U+2000..U+200A, U+2028, U+2029, U+202F, U+205F) mixed with ASCII.
      {"prompt", [](auto& r) { r.set_prompt("\u3000"); }},
      {"prompt", [](auto& r) { r.set_prompt("\u00A0\u00A0"); }},
      {"prompt", [](auto& r) { r.set_prompt("\u2003"); }},
      {"prompt", [](auto& r) {
         r.set_prompt(" \u0085\u1680\u2000\u2001\u2002\u2004\u2005\u2006\u2007\u2008\u2009\u200A\u2028\u2029\u202F"
                      "\u205F\u3000\t\v\f\r");
       }},
      {"prompt", [](auto& r) { r.set_prompt(std::string(2001, 'a')); }},
      {"prompt", [](auto& r) { r.set_prompt(std::string("nul\0inside", 10)); }},
      {"negative_prompt", [](auto& r) { r.set_negative_prompt(std::string(2001, 'b')); }},
      {"width", [](auto& r) { r.set_width(100); }},
      {"width", [](auto& r) { r.set_width(-16); }},
      {"width", [](auto& r) { r.set_width(4096); }},
      {"height", [](auto& r) { r.set_height(8); }},
      {"height", [](auto& r) { r.set_height(130); }},
      {"frames", [](auto& r) { r.set_frames(18); }},
      {"frames", [](auto& r) { r.set_frames(-3); }},
      {"frames", [](auto& r) { r.set_frames(261); }},
      {"fps", [](auto& r) { r.set_fps(-1); }},
      {"fps", [](auto& r) { r.set_fps(500); }},
      {"steps", [](auto& r) { r.set_steps(-3); }},
      {"steps", [](auto& r) { r.set_steps(201); }},
      {"width, height, frames", [](auto& r) {
         r.set_width(2048);
         r.set_height(2048);
         r.set_frames(257);
       }},
      {"guidance", [](auto& r) { r.set_guidance(std::nan("")); }},
      {"guidance", [](auto& r) { r.set_guidance(-1.0); }},
      {"guidance", [](auto& r) { r.set_guidance(31.0); }},
      {"guidance", [](auto& r) { r.set_guidance(INFINITY); }},
      {"shift", [](auto& r) { r.set_shift(-0.5); }},
      {"shift", [](auto& r) { r.set_shift(101.0); }},
      {"shift", [](auto& r) { r.set_shift(std::nan("")); }},
      {"sampler", [](auto& r) { r.set_sampler(static_cast<v1::Sampler>(42)); }},
      {"priority", [](auto& r) { r.set_priority(static_cast<v1::Priority>(9)); }},
      {"output_format", [](auto& r) { r.set_output_format(static_cast<v1::OutputFormat>(7)); }},
      {"deadline", [](auto& r) { r.mutable_deadline()->set_seconds(-5); }},
      {"deadline", [](auto& r) { r.mutable_deadline()->set_seconds(8 * 24 * 3600); }},
      {"deadline", [](auto& r) { r.mutable_deadline()->set_nanos(-1); }},
      {"deadline", [](auto& r) { r.mutable_deadline(); }},  // zero
      {"client_request_id", [](auto& r) { r.set_client_request_id("has space"); }},
      {"client_request_id", [](auto& r) { r.set_client_request_id(std::string(129, 'k')); }},
      {"attention", [](auto& r) { r.set_attention("fastest"); }},
      {"attention", [](auto& r) { r.set_attention("rules:\n  - mode: radial\n    decay: -1\n"); }},
      {"attention", [](auto& r) { r.set_attention("rules:\n  - steps: [0, 40]\n    mode: dense\n"); }},  // > steps
      {"attention", [](auto& r) { r.set_attention(std::string(70000, '#')); }},
  };
  for (const Case& bad : cases) {
    v1::SubmitJobRequest request = SmallRequest(2);
    bad.mutate(request);
    v1::Job job;
    const grpc::Status status = Submit(stub, request, &job);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << request.ShortDebugString();
    EXPECT_EQ(status.error_message().rfind(bad.field + ":", 0), 0u)
        << "message must start with the field \"" << bad.field << "\": " << status.error_message();
  }
  {
    v1::SubmitJobRequest request = SmallRequest(2);
    request.set_prompt("\u3000 \u00A0");
    v1::Job job;
    const grpc::Status status = Submit(stub, request, &job);
    EXPECT_EQ(status.error_message(), "prompt: is required and must not be only whitespace");
  }

  // Text that is not UTF-8: sent as raw bytes (protobuf would not build such a message for us).
  for (const auto& [field, number] : std::vector<std::pair<std::string, int>>{
           {"prompt", 2}, {"negative_prompt", 3}, {"model", 1}}) {
    v1::SubmitJobRequest request = SmallRequest(2);
    if (field == "prompt") request.clear_prompt();
    if (field == "model") request.clear_model();
    std::string bytes = request.SerializeAsString();
    const std::string bad_text = "caf\xC3 \xFF";
    bytes.push_back(static_cast<char>((number << 3) | 2));
    bytes.push_back(static_cast<char>(bad_text.size()));
    bytes += bad_text;
    const grpc::Status status =
        RawUnaryCall(cluster.channel(), "/zoetrope.v1.VideoService/SubmitJob", bytes, nullptr);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << field;
    EXPECT_EQ(status.error_message().rfind(field + ": must be valid UTF-8", 0), 0u) << status.error_message();
  }
  // A message that is not a request at all: every method answers INVALID_ARGUMENT with a message (the
  // server-streaming ones too: a unary call reads their final status).
  for (const char* method : {"SubmitJob", "Generate", "GetJob", "CancelJob", "ListJobs", "WatchJob", "FetchResult"}) {
    const grpc::Status status =
        RawUnaryCall(cluster.channel(), absl::StrCat("/zoetrope.v1.VideoService/", method), "\xFF\xFF\xFF", nullptr);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method;
    EXPECT_EQ(status.error_message().rfind("request: not a valid zoetrope.v1.", 0), 0u)
        << method << ": " << status.error_message();
  }
  // A job id that is not UTF-8 is named as such.
  for (const char* method : {"GetJob", "CancelJob", "WatchJob", "FetchResult"}) {
    const std::string bad_id = "job-\xFF";
    const std::string bytes = std::string(1, static_cast<char>((1 << 3) | 2)) +
                              static_cast<char>(bad_id.size()) + bad_id;
    const grpc::Status status =
        RawUnaryCall(cluster.channel(), absl::StrCat("/zoetrope.v1.VideoService/", method), bytes, nullptr);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method;
    EXPECT_EQ(status.error_message().rfind("id: must be valid UTF-8", 0), 0u)
        << method << ": " << status.error_message();
  }

  // Bad list requests.
  for (const auto& mutate : std::vector<std::function<void(v1::ListJobsRequest&)>>{
           [](auto& r) { r.set_page_size(5000); }, [](auto& r) { r.set_page_size(-1); },
           [](auto& r) { r.set_page_token("not-a-token"); },
           [](auto& r) { r.add_states(static_cast<v1::JobState>(77)); }}) {
    v1::ListJobsRequest request;
    mutate(request);
    grpc::ClientContext context;
    v1::ListJobsResponse response;
    EXPECT_EQ(stub.ListJobs(&context, request, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }

  // Nothing was stored, nothing counted as submitted; a good request still works.
  EXPECT_TRUE(ListAll(stub).empty());
  const std::string scrape = ScrapeMetrics(cluster.metrics_port());
  // The configured model's series exist from the start (at 0), and nothing was counted in them.
  EXPECT_EQ(MetricValue(scrape, "zoetrope_jobs_submitted_total{model=\"tiny\",priority=\"normal\"}"), 0.0);
  EXPECT_GE(MetricValue(scrape, "zoetrope_api_requests_total{code=\"INVALID_ARGUMENT\",method=\"SubmitJob\"}"),
            static_cast<double>(cases.size()));
  v1::Job job;
  EXPECT_TRUE(Submit(stub, SmallRequest(2), &job).ok());
  EXPECT_EQ(ListAll(stub).size(), 1u);
  // The output format left unspecified comes back as the one that applies.
  EXPECT_EQ(job.request().output_format(), v1::OUTPUT_FORMAT_MP4);
  EXPECT_EQ(GetJob(stub, job.id())->request().output_format(), v1::OUTPUT_FORMAT_MP4);
}

TEST(ServiceTest, IdempotencyByClientRequestId) {
  ServiceCluster cluster("idempotency");
  ASSERT_TRUE(cluster.StartScheduler({"--models=tiny", "--queue_limit=1"}));
  v1::SubmitJobRequest request = SmallRequest(2);
  request.set_client_request_id("order-1234");
  v1::Job first, second, third;
  ASSERT_TRUE(Submit(cluster.stub(), request, &first).ok());
  // The retry returns the same job even though the queue (limit 1) is now full.
  ASSERT_TRUE(Submit(cluster.stub(), request, &second).ok());
  EXPECT_EQ(first.id(), second.id());
  request.set_prompt("a different prompt");
  const grpc::Status status = Submit(cluster.stub(), request, &third);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(status.error_message().rfind("client_request_id:", 0), 0u);
  EXPECT_EQ(ListAll(cluster.stub()).size(), 1u);
}

TEST(ServiceTest, ListFiltersAndPagination) {
  ServiceCluster cluster("list");
  ASSERT_TRUE(cluster.StartScheduler({"--models=tiny,other"}));
  std::set<std::string> ids;
  for (int i = 0; i < 7; ++i) {
    v1::Job job;
    v1::SubmitJobRequest request = SmallRequest(2, absl::StrCat("job ", i));
    if (i == 6) request.set_model("other");
    ASSERT_TRUE(Submit(cluster.stub(), request, &job).ok());
    ids.insert(job.id());
  }
  v1::Job cancelled;
  ASSERT_TRUE(Cancel(cluster.stub(), *ids.begin(), &cancelled).ok());
  EXPECT_EQ(cancelled.state(), v1::JOB_STATE_CANCELLED);

  // Pages of 3: every job exactly once, newest first.
  std::vector<std::string> seen;
  v1::ListJobsRequest request;
  request.set_page_size(3);
  int pages = 0;
  for (; pages < 10; ++pages) {
    grpc::ClientContext context;
    v1::ListJobsResponse response;
    ASSERT_TRUE(cluster.stub().ListJobs(&context, request, &response).ok());
    EXPECT_LE(response.jobs_size(), 3);
    for (const v1::Job& job : response.jobs()) seen.push_back(job.id());
    if (response.next_page_token().empty()) break;
    request.set_page_token(response.next_page_token());
  }
  EXPECT_EQ(pages, 2);
  EXPECT_EQ(seen.size(), 7u);
  EXPECT_EQ(std::set<std::string>(seen.begin(), seen.end()), ids);
  std::vector<int64_t> created;
  for (const v1::Job& job : ListAll(cluster.stub())) created.push_back(job.create_time().seconds() * 1000000000 + job.create_time().nanos());
  EXPECT_TRUE(std::is_sorted(created.rbegin(), created.rend()));

  v1::ListJobsRequest by_state;
  by_state.add_states(v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(ListAll(cluster.stub(), by_state).size(), 1u);
  by_state.add_states(v1::JOB_STATE_QUEUED);
  EXPECT_EQ(ListAll(cluster.stub(), by_state).size(), 7u);
  v1::ListJobsRequest by_model;
  by_model.set_model("other");
  ASSERT_EQ(ListAll(cluster.stub(), by_model).size(), 1u);
  v1::ListJobsRequest later;
  *later.mutable_created_after() = ListAll(cluster.stub(), by_model)[0].create_time();
  EXPECT_EQ(ListAll(cluster.stub(), later).size(), 1u);
}

TEST(ServiceTest, FullQueueIsResourceExhausted) {
  ServiceCluster cluster("queue-full");
  ASSERT_TRUE(cluster.StartScheduler({"--models=tiny", "--queue_limit=3"}));
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    v1::Job job;
    ASSERT_TRUE(Submit(cluster.stub(), SmallRequest(2), &job).ok());
    ids.push_back(job.id());
  }
  v1::Job job;
  const grpc::Status full = Submit(cluster.stub(), SmallRequest(2), &job);
  EXPECT_EQ(full.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << full.error_message();
  EXPECT_EQ(ListAll(cluster.stub()).size(), 3u);
  ASSERT_TRUE(Cancel(cluster.stub(), ids[0], &job).ok());
  EXPECT_TRUE(Submit(cluster.stub(), SmallRequest(2), &job).ok()) << "a cancelled job frees its place";
}

TEST(ServiceTest, PriorityClassesThenFifo) {
  ServiceCluster cluster("priority");
  ASSERT_TRUE(cluster.StartScheduler({"--models=tiny"}));
  const std::vector<std::pair<std::string, v1::Priority>> order = {{"low", v1::PRIORITY_LOW},
                                                                   {"normal-1", v1::PRIORITY_NORMAL},
                                                                   {"high", v1::PRIORITY_HIGH},
                                                                   {"normal-2", v1::PRIORITY_UNSPECIFIED}};
  std::map<std::string, std::string> id_of;
  for (const auto& [name, priority] : order) {
    v1::SubmitJobRequest request = SmallRequest(1, name);
    request.set_priority(priority);
    v1::Job job;
    ASSERT_TRUE(Submit(cluster.stub(), request, &job).ok());
    id_of[name] = job.id();
  }
  EXPECT_EQ(GetJob(cluster.stub(), id_of["high"])->queue_position(), 1);
  EXPECT_EQ(GetJob(cluster.stub(), id_of["normal-1"])->queue_position(), 2);
  EXPECT_EQ(GetJob(cluster.stub(), id_of["normal-2"])->queue_position(), 3);
  EXPECT_EQ(GetJob(cluster.stub(), id_of["low"])->queue_position(), 4);
  ASSERT_TRUE(cluster.StartWorker("w1"));
  std::vector<std::pair<int64_t, std::string>> started;
  for (const auto& [name, id] : id_of) {
    const v1::Job job = WaitForTerminal(cluster.stub(), id, kJobTimeout);
    ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << name;
    started.emplace_back(job.start_time().seconds() * 1000000000 + job.start_time().nanos(), name);
  }
  std::sort(started.begin(), started.end());
  std::vector<std::string> names;
  for (const auto& [time, name] : started) names.push_back(name);
  EXPECT_EQ(names, (std::vector<std::string>{"high", "normal-1", "normal-2", "low"}));
}

// A request's sparsity plan reaches the worker, runs, and its block density comes back in the job; a
// request without one gets the worker's default plan (--attention).
TEST(ServiceTest, AttentionPlanRunsAndReportsItsDensity) {
  ServiceCluster cluster("attention");
  ASSERT_TRUE(cluster.StartScheduler());
  ASSERT_TRUE(cluster.StartWorker("w1", {"--attention=attention-tile"}));
  // 33 frames at 256×256: 2,304 tokens in 18 blocks, enough for the sparse presets to skip blocks.
  std::map<std::string, std::string> id_of;
  for (const std::string attention : {"radial", "dense", ""}) {
    v1::SubmitJobRequest request = SmallRequest(3, "a paper boat in the rain");
    request.set_width(256);
    request.set_height(256);
    request.set_frames(33);
    request.set_attention(attention);
    v1::Job job;
    ASSERT_TRUE(Submit(cluster.stub(), request, &job).ok()) << attention;
    EXPECT_EQ(job.request().attention(), attention);
    id_of[attention] = job.id();
  }
  std::map<std::string, double> density;
  for (const auto& [attention, id] : id_of) {
    const v1::Job job = WaitForTerminal(cluster.stub(), id, kJobTimeout);
    ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << attention << ": " << job.error().message();
    density[attention] = job.measurements().attention_density();
  }
  EXPECT_EQ(density["dense"], 1.0);
  EXPECT_GT(density["radial"], 0.0);
  EXPECT_LT(density["radial"], 1.0);
  EXPECT_GT(density[""], 0.0);
  EXPECT_LT(density[""], 1.0) << "the worker's default, attention tile";
  EXPECT_NE(density[""], density["radial"]);
}

TEST(ServiceTest, DeadlineExpiresQueuedJob) {
  ServiceCluster cluster("deadline");
  ASSERT_TRUE(cluster.StartScheduler({"--models=tiny"}));
  v1::SubmitJobRequest request = SmallRequest(2);
  request.mutable_deadline()->set_nanos(300'000'000);
  v1::Job job;
  ASSERT_TRUE(Submit(cluster.stub(), request, &job).ok());
  EXPECT_TRUE(job.has_deadline_time());
  const std::vector<v1::JobEvent> events = WatchAll(cluster.stub(), job.id(), absl::Seconds(10));
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().finished().state(), v1::JOB_STATE_EXPIRED);
  const v1::Job expired = *GetJob(cluster.stub(), job.id());
  EXPECT_EQ(expired.state(), v1::JOB_STATE_EXPIRED);
  EXPECT_EQ(expired.error().code_name(), "DEADLINE_EXCEEDED");
}

TEST(ServiceTest, DeadlineStopsRunningJob) {
  ServiceCluster cluster("deadline-running");
  ASSERT_TRUE(cluster.StartScheduler());
  ASSERT_TRUE(cluster.StartWorker("w1"));
  v1::SubmitJobRequest request = SlowStepRequest(200);
  request.mutable_deadline()->set_seconds(2);
  v1::Job job;
  ASSERT_TRUE(Submit(cluster.stub(), request, &job).ok());
  const v1::Job final_job = WaitForTerminal(cluster.stub(), job.id(), absl::Seconds(60));
  EXPECT_EQ(final_job.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(final_job.error().code_name(), "DEADLINE_EXCEEDED");
  EXPECT_GE(final_job.progress().step(), 1);
  EXPECT_LT(final_job.progress().step(), 200);
  // The worker stopped and is free for the next job.
  v1::Job next;
  ASSERT_TRUE(Submit(cluster.stub(), SmallRequest(1), &next).ok());
  EXPECT_EQ(WaitForTerminal(cluster.stub(), next.id(), kJobTimeout).state(), v1::JOB_STATE_SUCCEEDED);
}

TEST(ServiceTest, CancelQueuedJobAtOnce) {
  ServiceCluster cluster("cancel-queued");
  ASSERT_TRUE(cluster.StartScheduler({"--models=tiny"}));
  v1::Job job, cancelled;
  ASSERT_TRUE(Submit(cluster.stub(), SmallRequest(2), &job).ok());
  std::vector<v1::JobEvent> events;
  std::thread watcher([&] { events = WatchAll(cluster.stub(), job.id(), absl::Seconds(20)); });
  absl::SleepFor(absl::Milliseconds(200));
  ASSERT_TRUE(Cancel(cluster.stub(), job.id(), &cancelled).ok());
  EXPECT_EQ(cancelled.state(), v1::JOB_STATE_CANCELLED);
  watcher.join();
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().finished().state(), v1::JOB_STATE_CANCELLED);
  // A worker that connects later never sees it.
  ASSERT_TRUE(cluster.StartWorker("w1"));
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_EQ(GetJob(cluster.stub(), job.id())->attempt(), 0);
}

TEST(ServiceTest, CancelRunningJobStopsWithinAStep) {
  ServiceCluster cluster("cancel-running");
  ASSERT_TRUE(cluster.StartScheduler());
  ASSERT_TRUE(cluster.StartWorker("w1"));
  v1::Job job;
  ASSERT_TRUE(Submit(cluster.stub(), SlowStepRequest(200), &job).ok());
  v1::Job running;
  ASSERT_TRUE(WaitFor(
      [&] {
        running = *GetJob(cluster.stub(), job.id());
        return running.progress().step() >= 2;
      },
      absl::Seconds(60)));
  const int step_at_cancel = running.progress().step();
  const double step_seconds = running.progress().step_seconds();
  const absl::Time cancelled_at = absl::Now();
  v1::Job answer;
  ASSERT_TRUE(Cancel(cluster.stub(), job.id(), &answer).ok());
  EXPECT_EQ(answer.state(), v1::JOB_STATE_RUNNING);
  EXPECT_TRUE(answer.cancel_requested());
  const v1::Job final_job = WaitForTerminal(cluster.stub(), job.id(), absl::Seconds(60));
  const double seconds = absl::ToDoubleSeconds(absl::Now() - cancelled_at);
  EXPECT_EQ(final_job.state(), v1::JOB_STATE_CANCELLED);
  // Stopped at the next step: at most the step in flight (and one that ended while we asked) completed.
  EXPECT_LE(final_job.progress().step(), step_at_cancel + 2);
  EXPECT_LT(seconds, 3 * step_seconds + 2.0) << "step " << step_seconds << " s";
  EXPECT_FALSE(final_job.result_available());
  // The worker is free again at once.
  v1::Job next;
  ASSERT_TRUE(Submit(cluster.stub(), SmallRequest(1), &next).ok());
  EXPECT_EQ(WaitForTerminal(cluster.stub(), next.id(), kJobTimeout).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_NE(cluster.worker("w1").Log().find("cancelled"), std::string::npos);
}

TEST(ServiceTest, QueuedJobsSurviveSchedulerKill9AndFinishExactlyOnce) {
  ServiceCluster cluster("kill9");
  ASSERT_TRUE(cluster.StartScheduler({"--worker_grace=5s"}));
  ASSERT_TRUE(cluster.StartWorker("w1"));
  constexpr int kJobs = 50;
  std::vector<std::string> ids;
  for (int i = 0; i < kJobs; ++i) {
    v1::Job job;
    ASSERT_TRUE(Submit(cluster.stub(), SmallRequest(1, absl::StrCat("durable ", i)), &job).ok());
    ids.push_back(job.id());
  }
  // Kill the scheduler while jobs run and most are queued.
  ASSERT_TRUE(WaitFor([&] { return GetJob(cluster.stub(), ids[1])->state() != v1::JOB_STATE_QUEUED; },
                      absl::Seconds(60)));
  int queued_at_kill = 0;
  for (const v1::Job& job : ListAll(cluster.stub())) queued_at_kill += job.state() == v1::JOB_STATE_QUEUED;
  cluster.KillScheduler();
  EXPECT_GE(queued_at_kill, kJobs / 2) << "most jobs were still queued at the kill";
  ASSERT_TRUE(cluster.StartScheduler());
  EXPECT_TRUE(WaitFor([&] { return ListAll(cluster.stub()).size() == static_cast<size_t>(kJobs); },
                      absl::Seconds(10)));
  ASSERT_TRUE(cluster.StartWorker("w2"));
  for (const std::string& id : ids) {
    const v1::Job job = WaitForTerminal(cluster.stub(), id, kJobTimeout);
    EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << id;
    EXPECT_EQ(job.attempt(), 1) << id << " ran more than once";
    EXPECT_TRUE(job.result_available());
  }
  EXPECT_EQ(ListAll(cluster.stub()).size(), static_cast<size_t>(kJobs));
  // Exactly once: every job finished on exactly one worker, once.
  const std::string logs = cluster.AllWorkerLogs();
  for (const std::string& id : ids) EXPECT_EQ(CountOccurrences(logs, absl::StrCat("job ", id, " succeeded")), 1) << id;
}

TEST(ServiceTest, WorkerKilledMidJobRunsAgainOnAnotherWorker) {
  ServiceCluster cluster("worker-kill");
  ASSERT_TRUE(cluster.StartScheduler({"--worker_grace=1s"}));
  ASSERT_TRUE(cluster.StartWorker("a"));
  v1::Job job;
  ASSERT_TRUE(Submit(cluster.stub(), LongRequest(150), &job).ok());
  std::vector<v1::JobEvent> events;
  std::thread watcher([&] { events = WatchAll(cluster.stub(), job.id(), kJobTimeout); });
  ASSERT_TRUE(WaitFor([&] { return GetJob(cluster.stub(), job.id())->progress().step() >= 1; }, absl::Seconds(60)));
  ASSERT_TRUE(cluster.StartWorker("b"));
  cluster.KillWorker("a");
  const v1::Job final_job = WaitForTerminal(cluster.stub(), job.id(), kJobTimeout);
  watcher.join();
  EXPECT_EQ(final_job.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(final_job.attempt(), 2);
  EXPECT_EQ(final_job.worker_id(), "b");
  // The watcher saw it start on a, return to the queue, and start on b.
  std::vector<std::string> story;
  for (const v1::JobEvent& event : events) {
    if (event.has_started()) story.push_back(absl::StrCat("started:", event.started().worker_id()));
    if (event.has_queued() && !story.empty()) story.push_back("queued");
  }
  EXPECT_EQ(story, (std::vector<std::string>{"started:a", "queued", "started:b"}));
  EXPECT_EQ(MetricValue(ScrapeMetrics(cluster.metrics_port()),
                        "zoetrope_jobs_requeued_total{model=\"tiny\",reason=\"worker_lost\"}"),
            1.0);
}

TEST(ServiceTest, JobFailsAfterTooManyWorkerLosses) {
  ServiceCluster cluster("losses");
  ASSERT_TRUE(cluster.StartScheduler({"--worker_grace=500ms", "--max_worker_losses=1"}));
  ASSERT_TRUE(cluster.StartWorker("a"));
  v1::Job job;
  ASSERT_TRUE(Submit(cluster.stub(), SlowStepRequest(200), &job).ok());
  ASSERT_TRUE(WaitFor([&] { return GetJob(cluster.stub(), job.id())->progress().step() >= 1; }, absl::Seconds(60)));
  cluster.KillWorker("a");
  const v1::Job final_job = WaitForTerminal(cluster.stub(), job.id(), absl::Seconds(20));
  EXPECT_EQ(final_job.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(final_job.error().code_name(), "UNAVAILABLE");
}

TEST(ServiceTest, SchedulerDrainsOnSigterm) {
  ServiceCluster cluster("drain-scheduler");
  ASSERT_TRUE(cluster.StartScheduler());
  ASSERT_TRUE(cluster.StartWorker("w1"));
  v1::Job running, queued;
  ASSERT_TRUE(Submit(cluster.stub(), LongRequest(100), &running).ok());
  ASSERT_TRUE(WaitFor([&] { return GetJob(cluster.stub(), running.id())->state() == v1::JOB_STATE_RUNNING; },
                      absl::Seconds(20)));
  ASSERT_TRUE(Submit(cluster.stub(), SmallRequest(1), &queued).ok());
  EXPECT_EQ(HealthStatus(cluster.channel()), 1);
  EXPECT_EQ(HealthStatus(cluster.channel(), "zoetrope.v1.VideoService"), 1);
  // A watcher of the running job keeps its stream through the drain and sees the job finish.
  std::vector<v1::JobEvent> events;
  grpc::Status watch_status;
  std::thread watcher([&] { events = WatchAll(cluster.stub(), running.id(), kJobTimeout, &watch_status); });
  ASSERT_TRUE(WaitFor([&] { return MetricValue(ScrapeMetrics(cluster.metrics_port()), "zoetrope_job_watchers") == 1; },
                      absl::Seconds(10)));

  cluster.scheduler().Signal(SIGTERM);
  EXPECT_TRUE(WaitFor([&] { return HealthStatus(cluster.channel()) == 2; }, absl::Seconds(5))) << "NOT_SERVING";
  v1::Job rejected;
  const grpc::Status status = Submit(cluster.stub(), SmallRequest(1), &rejected);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  // The running job finishes (new calls are refused once nothing runs, open streams get their last
  // events); the queued one is not started; then the process exits 0.
  watcher.join();
  EXPECT_TRUE(watch_status.ok()) << watch_status.error_message();
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().finished().state(), v1::JOB_STATE_SUCCEEDED);
  int exit_code = -1;
  ASSERT_TRUE(cluster.scheduler().WaitForExit(absl::Seconds(30), &exit_code));
  EXPECT_EQ(exit_code, 0);
  // The next scheduler finds the queued job and runs it.
  ASSERT_TRUE(cluster.StartScheduler());
  EXPECT_EQ(WaitForTerminal(cluster.stub(), queued.id(), kJobTimeout).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(GetJob(cluster.stub(), running.id())->state(), v1::JOB_STATE_SUCCEEDED);
}

TEST(ServiceTest, WorkerDrainsOnSigterm) {
  ServiceCluster cluster("drain-worker");
  ASSERT_TRUE(cluster.StartScheduler());
  ASSERT_TRUE(cluster.StartWorker("w1"));
  v1::Job running, waiting;
  ASSERT_TRUE(Submit(cluster.stub(), LongRequest(100), &running).ok());
  ASSERT_TRUE(WaitFor([&] { return GetJob(cluster.stub(), running.id())->progress().step() >= 1; },
                      absl::Seconds(60)));
  cluster.worker("w1").Signal(SIGTERM);
  ASSERT_TRUE(WaitFor([&] { return cluster.scheduler().Log().find("worker w1 is draining") != std::string::npos; },
                      absl::Seconds(10)));
  ASSERT_TRUE(Submit(cluster.stub(), SmallRequest(1), &waiting).ok());
  EXPECT_EQ(WaitForTerminal(cluster.stub(), running.id(), kJobTimeout).state(), v1::JOB_STATE_SUCCEEDED);
  int exit_code = -1;
  ASSERT_TRUE(cluster.worker("w1").WaitForExit(absl::Seconds(30), &exit_code));
  EXPECT_EQ(exit_code, 0);
  EXPECT_EQ(GetJob(cluster.stub(), waiting.id())->state(), v1::JOB_STATE_QUEUED) << "a draining worker takes no job";
  ASSERT_TRUE(cluster.StartWorker("w2"));
  const v1::Job done = WaitForTerminal(cluster.stub(), waiting.id(), kJobTimeout);
  EXPECT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done.worker_id(), "w2");
}

TEST(ServiceTest, DrainingWorkerHandsBackAJobThatRunsTooLong) {
  ServiceCluster cluster("handback");
  ASSERT_TRUE(cluster.StartScheduler());
  ASSERT_TRUE(cluster.StartWorker("w1", {"--drain_timeout=1s"}));
  v1::Job job;
  ASSERT_TRUE(Submit(cluster.stub(), SlowStepRequest(200), &job).ok());
  ASSERT_TRUE(WaitFor([&] { return GetJob(cluster.stub(), job.id())->progress().step() >= 1; }, absl::Seconds(60)));
  cluster.worker("w1").Signal(SIGTERM);
  int exit_code = -1;
  ASSERT_TRUE(cluster.worker("w1").WaitForExit(absl::Seconds(30), &exit_code));
  EXPECT_EQ(exit_code, 0);
  const v1::Job handed_back = *GetJob(cluster.stub(), job.id());
  EXPECT_EQ(handed_back.state(), v1::JOB_STATE_QUEUED) << "handed back, not failed";
  EXPECT_EQ(handed_back.attempt(), 1);
  EXPECT_EQ(MetricValue(ScrapeMetrics(cluster.metrics_port()),
                        "zoetrope_jobs_requeued_total{model=\"tiny\",reason=\"handed_back\"}"),
            1.0);
}

TEST(ServiceTest, HundredConcurrentWatchers) {
  ServiceCluster cluster("watchers");
  ASSERT_TRUE(cluster.StartScheduler({"--models=tiny"}));
  v1::Job job;
  ASSERT_TRUE(Submit(cluster.stub(), SmallRequest(3), &job).ok());
  constexpr int kWatchers = 100;
  std::vector<std::vector<v1::JobEvent>> seen(kWatchers);
  std::vector<grpc::Status> statuses(kWatchers);
  std::vector<std::thread> threads;
  for (int i = 0; i < kWatchers; ++i) {
    threads.emplace_back([&, i] { seen[i] = WatchAll(cluster.stub(), job.id(), kJobTimeout, &statuses[i]); });
  }
  EXPECT_TRUE(WaitFor([&] {
    return MetricValue(ScrapeMetrics(cluster.metrics_port()), "zoetrope_job_watchers") == kWatchers;
  }, absl::Seconds(30)));
  ASSERT_TRUE(cluster.StartWorker("w1"));
  for (std::thread& thread : threads) thread.join();
  for (int i = 0; i < kWatchers; ++i) {
    ASSERT_TRUE(statuses[i].ok()) << i << ": " << statuses[i].error_message();
    const std::vector<v1::JobEvent>& events = seen[i];
    ASSERT_GE(events.size(), 5u) << i;
    EXPECT_TRUE(events.front().has_queued()) << i;
    std::vector<int> steps;
    for (const v1::JobEvent& event : events) {
      if (event.has_step()) steps.push_back(event.step().step());
    }
    EXPECT_EQ(steps, (std::vector<int>{1, 2, 3})) << i;
    EXPECT_EQ(events.back().finished().state(), v1::JOB_STATE_SUCCEEDED) << i;
  }
  EXPECT_TRUE(WaitFor([&] {
    return MetricValue(ScrapeMetrics(cluster.metrics_port()), "zoetrope_job_watchers") == 0;
  }, absl::Seconds(10)));
}

TEST(ServiceTest, MetricsOfSchedulerAndWorker) {
  ServiceCluster cluster("metrics");
  ASSERT_TRUE(cluster.StartScheduler());
  // A fresh scheduler already exports every method × code at 0, so rate() and alerts see the series at once.
  const std::string fresh = ScrapeMetrics(cluster.metrics_port());
  for (const char* method : {"SubmitJob", "Generate", "GetJob", "WatchJob", "CancelJob", "ListJobs", "FetchResult"}) {
    for (const char* code : {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "UNAVAILABLE"}) {
      EXPECT_EQ(MetricValue(fresh, absl::StrCat("zoetrope_api_requests_total{code=\"", code, "\",method=\"", method,
                                                "\"}")),
                0.0)
          << method << " " << code;
    }
  }
  ASSERT_TRUE(cluster.StartWorker("w1"));
  v1::Job job;
  ASSERT_TRUE(Submit(cluster.stub(), SmallRequest(3), &job).ok());
  ASSERT_EQ(WaitForTerminal(cluster.stub(), job.id(), kJobTimeout).state(), v1::JOB_STATE_SUCCEEDED);
  const std::string scheduler = ScrapeMetrics(cluster.metrics_port());
  EXPECT_EQ(MetricValue(scheduler, "zoetrope_jobs_finished_total{model=\"tiny\",state=\"succeeded\"}"), 1.0);
  EXPECT_EQ(MetricValue(scheduler, "zoetrope_jobs_submitted_total{model=\"tiny\",priority=\"normal\"}"), 1.0);
  // The model's other known label values are there at 0 from its first job on.
  EXPECT_EQ(MetricValue(scheduler, "zoetrope_jobs_submitted_total{model=\"tiny\",priority=\"high\"}"), 0.0);
  EXPECT_EQ(MetricValue(scheduler, "zoetrope_queue_depth{model=\"tiny\",priority=\"low\"}"), 0.0);
  for (const char* state : {"failed", "cancelled", "expired"}) {
    const std::string series = absl::StrCat("zoetrope_jobs_finished_total{model=\"tiny\",state=\"", state, "\"}");
    EXPECT_EQ(MetricValue(scheduler, series), 0.0) << series;
  }
  EXPECT_EQ(MetricValue(scheduler, "zoetrope_jobs_requeued_total{model=\"tiny\",reason=\"worker_lost\"}"), 0.0);
  EXPECT_EQ(MetricValue(scheduler, "zoetrope_jobs_requeued_total{model=\"tiny\",reason=\"handed_back\"}"), 0.0);
  EXPECT_EQ(MetricValue(scheduler, "zoetrope_queue_depth{model=\"tiny\",priority=\"normal\"}"), 0.0);
  EXPECT_EQ(MetricValue(scheduler, "zoetrope_jobs_running{model=\"tiny\"}"), 0.0);
  EXPECT_EQ(MetricValue(scheduler, "zoetrope_workers{state=\"idle\"}"), 1.0);
  EXPECT_EQ(MetricValue(scheduler, "zoetrope_job_run_duration_seconds_count{model=\"tiny\"}"), 1.0);
  EXPECT_EQ(MetricValue(scheduler, "zoetrope_job_end_to_end_duration_seconds_count{model=\"tiny\"}"), 1.0);
  EXPECT_EQ(MetricValue(scheduler, "zoetrope_denoise_step_duration_seconds_count{model=\"tiny\"}"), 3.0);
  EXPECT_EQ(MetricValue(scheduler, "zoetrope_job_queue_duration_seconds_bucket{model=\"tiny\",le=\"3600\"}"), 1.0);
  EXPECT_GT(MetricValue(scheduler, "zoetrope_result_store_bytes"), 0.0);
  EXPECT_EQ(scheduler.find(job.id()), std::string::npos) << "no job ids in labels";
  const int worker_port = WorkerMetricsPort(cluster.worker("w1").Log());
  ASSERT_GT(worker_port, 0);
  // The worker is idle once the scheduler acknowledged the completion (just after SUCCEEDED).
  EXPECT_TRUE(WaitFor([&] { return MetricValue(ScrapeMetrics(worker_port), "zoetrope_worker_busy") == 0; },
                      absl::Seconds(10)));
  const std::string worker = ScrapeMetrics(worker_port);
  EXPECT_EQ(MetricValue(worker, "zoetrope_worker_jobs_total{model=\"tiny\",status=\"succeeded\"}"), 1.0);
  EXPECT_EQ(MetricValue(worker, "zoetrope_worker_step_duration_seconds_count{model=\"tiny\"}"), 3.0);
  EXPECT_EQ(MetricValue(worker, "zoetrope_worker_connected"), 1.0);
  EXPECT_EQ(MetricValue(worker, "zoetrope_worker_busy"), 0.0);
  EXPECT_GT(MetricValue(worker, "zoetrope_worker_upload_bytes_total"), 0.0);
}

TEST(ServiceTest, ResultRetentionDeletesOldResults) {
  ServiceCluster cluster("retention");
  ASSERT_TRUE(cluster.StartScheduler({"--result_retention=1s"}));
  ASSERT_TRUE(cluster.StartWorker("w1"));
  v1::Job job;
  ASSERT_TRUE(Submit(cluster.stub(), SmallRequest(1), &job).ok());
  ASSERT_EQ(WaitForTerminal(cluster.stub(), job.id(), kJobTimeout).state(), v1::JOB_STATE_SUCCEEDED);
  ASSERT_TRUE(WaitFor([&] { return !GetJob(cluster.stub(), job.id())->result_available(); }, absl::Seconds(10)));
  std::string data;
  EXPECT_EQ(Fetch(cluster.stub(), job.id(), 0, &data).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_FALSE(std::filesystem::exists(cluster.directory() + "/data/results/" + job.id() + ".result"));
}

TEST(ServiceTest, CommandLineClient) {
  ServiceCluster cluster("cli");
  ASSERT_TRUE(cluster.StartScheduler());
  ASSERT_TRUE(cluster.StartWorker("w1"));
  const std::string cli = absl::StrCat(CliBinary(), " ");
  const std::string server = absl::StrCat(" --server ", cluster.address());
  const std::string errors = cluster.directory() + "/cli-stderr.txt";
  std::string output;
  ASSERT_EQ(RunCommand(absl::StrCat(cli, "submit", server, " --model ", cluster.model_directory(),
                                    " --prompt 'a lighthouse at dusk' --width 128 --height 128 --frames 1",
                                    " --steps 2 --seed 7 --watch"),
                       &output, errors),
            0)
      << ReadFile(errors);
  const std::string id = std::string(absl::StripAsciiWhitespace(output.substr(0, output.find('\n'))));
  EXPECT_EQ(id.rfind("job-", 0), 0u) << output;
  EXPECT_NE(output.find(id + " SUCCEEDED"), std::string::npos) << output;
  // submit --watch goes through Generate, so even a fast job shows every step.
  const std::string watch_lines = ReadFile(errors);
  EXPECT_NE(watch_lines.find("2/2 steps"), std::string::npos) << "plain progress lines off a terminal:\n" << watch_lines;

  output.clear();
  ASSERT_EQ(RunCommand(absl::StrCat(cli, "get ", id, server, " --json"), &output, errors), 0);
  EXPECT_NE(output.find("\"JOB_STATE_SUCCEEDED\""), std::string::npos) << output;
  output.clear();
  ASSERT_EQ(RunCommand(absl::StrCat(cli, "list", server, " --state succeeded"), &output, errors), 0);
  EXPECT_NE(output.find(id), std::string::npos) << output;
  output.clear();
  const std::string fetched = cluster.directory() + "/fetched.mp4";
  ASSERT_EQ(RunCommand(absl::StrCat(cli, "fetch ", id, server, " --output ", fetched), &output, errors), 0)
      << ReadFile(errors);
  const std::string local = cluster.directory() + "/local.mp4";
  ASSERT_EQ(RunCommand(absl::StrCat(cli, "generate --model ", cluster.model_directory(),
                                    " --prompt 'a lighthouse at dusk' --width 128 --height 128 --frames 1",
                                    " --steps 2 --seed 7 --threads 1 --output ", local),
                       nullptr),
            0);
  EXPECT_TRUE(ReadFile(fetched) == ReadFile(local));
  // Resume: a partial download continues where it stopped.
  const std::string resumed = cluster.directory() + "/resumed.mp4";
  {
    std::ofstream partial(resumed + ".partial", std::ios::binary);
    const std::string content = ReadFile(local);
    partial.write(content.data(), static_cast<std::streamsize>(content.size() / 3));
  }
  ASSERT_EQ(RunCommand(absl::StrCat(cli, "fetch ", id, server, " --output ", resumed), nullptr, errors), 0);
  EXPECT_TRUE(ReadFile(resumed) == ReadFile(local));
  EXPECT_NE(ReadFile(errors).find("resuming at byte"), std::string::npos);
  EXPECT_EQ(RunCommand(absl::StrCat(cli, "cancel ", id, server), nullptr, errors), 1) << "finished: cannot cancel";
  EXPECT_NE(ReadFile(errors).find("FAILED_PRECONDITION"), std::string::npos);
  EXPECT_EQ(RunCommand(absl::StrCat(cli, "submit", server, " --width 100"), nullptr, errors), 1);
  EXPECT_NE(ReadFile(errors).find("INVALID_ARGUMENT: width:"), std::string::npos);
}

TEST(ServiceTest, EmbeddedServe) {
  const std::string directory = MakeTempDirectory("zoetrope-embedded");
  const std::string model = TinyModel(directory);
  ASSERT_FALSE(model.empty());
  const int port = FreePort();
  absl::StatusOr<std::unique_ptr<ChildProcess>> serve = ChildProcess::Start(
      {CliBinary(), "serve", "--embedded", "--model", model, "--listen", absl::StrCat("127.0.0.1:", port),
       "--data_dir", directory + "/data", "--metrics_port=-1", "--threads=1"},
      directory + "/serve.log");
  ASSERT_TRUE(serve.ok());
  ASSERT_TRUE(WaitFor([&] { return (*serve)->Log().find("listening on port") != std::string::npos; },
                      absl::Seconds(20)))
      << (*serve)->Log();
  std::string output;
  EXPECT_EQ(RunCommand(absl::StrCat(CliBinary(), " submit --server 127.0.0.1:", port,
                                    " --prompt 'an embedded boat' --width 128 --height 128 --frames 1 --steps 2",
                                    " --watch"),
                       &output),
            0)
      << (*serve)->Log();
  EXPECT_NE(output.find("SUCCEEDED"), std::string::npos);
  (*serve)->Signal(SIGTERM);
  int exit_code = -1;
  ASSERT_TRUE((*serve)->WaitForExit(absl::Seconds(30), &exit_code)) << (*serve)->Log();
  EXPECT_EQ(exit_code, 0);
}

// A worker process running a CPU group of 2 × 2 ranks (sequence- and CFG-parallel) beside a one-device
// worker with a small token limit: the job that fits both goes to the best fit (the smaller worker), the
// large one to the group, and each job records the degrees it ran with.
TEST(ServiceTest, ParallelWorkerGroupRunsJobsAndRecordsItsDegrees) {
  ServiceCluster cluster("parallel");
  ASSERT_TRUE(cluster.StartScheduler());
  ASSERT_TRUE(cluster.StartWorker("group", {"--sp=2", "--cfg_parallel", "--threads=2"}));
  ASSERT_TRUE(cluster.StartWorker("single", {"--max_tokens=1000"}));
  const v1::SubmitJobRequest small = SmallRequest(2, "a paper boat, small");  // 64 tokens
  v1::SubmitJobRequest large = SmallRequest(2, "a paper boat, large");
  large.set_width(256);
  large.set_height(256);
  large.set_frames(33);  // 2,304 tokens: more than the single worker accepts
  v1::Job small_job, large_job;
  ASSERT_TRUE(Submit(cluster.stub(), small, &small_job).ok());
  ASSERT_TRUE(Submit(cluster.stub(), large, &large_job).ok());
  small_job = WaitForTerminal(cluster.stub(), small_job.id(), kJobTimeout);
  large_job = WaitForTerminal(cluster.stub(), large_job.id(), kJobTimeout);
  ASSERT_EQ(small_job.state(), v1::JOB_STATE_SUCCEEDED) << small_job.error().message();
  ASSERT_EQ(large_job.state(), v1::JOB_STATE_SUCCEEDED) << large_job.error().message() << cluster.AllWorkerLogs();
  EXPECT_EQ(small_job.worker_id(), "single");
  EXPECT_EQ(small_job.measurements().sequence_parallel_degree(), 1);
  EXPECT_EQ(small_job.measurements().cfg_parallel_degree(), 1);
  EXPECT_EQ(large_job.worker_id(), "group");
  EXPECT_EQ(large_job.measurements().sequence_parallel_degree(), 2);
  EXPECT_EQ(large_job.measurements().cfg_parallel_degree(), 2);
  EXPECT_EQ(large_job.measurements().gpus(), 0) << "CPU ranks are not GPUs";
}

// Impossible parallel configurations stop the worker at start with the flag named.
TEST(ServiceTest, ImpossibleParallelWorkerConfigurationsFailAtStart) {
  ServiceCluster cluster("parallel-bad");
  ASSERT_TRUE(cluster.StartScheduler());
  EXPECT_FALSE(cluster.StartWorker("gpus-on-cpu", {"--sp=2", "--gpus=0,1"}));
  EXPECT_NE(cluster.worker("gpus-on-cpu").Log().find("--gpus"), std::string::npos) << cluster.worker("gpus-on-cpu").Log();
  EXPECT_FALSE(cluster.StartWorker("bad-list", {"--gpus=0,0"}));
  EXPECT_NE(cluster.worker("bad-list").Log().find("listed twice"), std::string::npos) << cluster.worker("bad-list").Log();
}

// Admission by memory (issue 12, item 2) with a real worker: it announces its device memory and peak-memory
// model; a request whose estimate exceeds it (2048 × 2048, one frame: the VAE's full-resolution stage) is
// FAILED_PRECONDITION at submit naming the worker and the memory, and is never queued; a small one runs.
TEST(ServiceTest, AdmissionRefusesARequestOverEveryWorkersMemory) {
  ServiceCluster cluster("admission");
  ASSERT_TRUE(cluster.StartScheduler());
  ASSERT_TRUE(cluster.StartWorker("one-gib", {"--device_memory_gib=1"}));
  v1::SubmitJobRequest huge = SmallRequest(2);
  huge.set_width(2048);
  huge.set_height(2048);
  huge.set_frames(1);
  v1::Job job;
  const grpc::Status refused = Submit(cluster.stub(), huge, &job);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << refused.error_message();
  EXPECT_NE(refused.error_message().find("worker one-gib: the estimated peak memory"), std::string::npos)
      << refused.error_message();
  EXPECT_NE(refused.error_message().find("exceeds its device memory 1.00 GiB"), std::string::npos)
      << refused.error_message();
  EXPECT_TRUE(ListAll(cluster.stub()).empty());
  ASSERT_TRUE(Submit(cluster.stub(), SmallRequest(2), &job).ok());
  EXPECT_EQ(WaitForTerminal(cluster.stub(), job.id(), kJobTimeout).state(), v1::JOB_STATE_SUCCEEDED);
}

}  // namespace
}  // namespace zoetrope::testing
