// The scheduler's state rules (issue 12, items 2, 4 and 5), in process with fake worker streams:
//   - admission: a job no worker serving its model can run (memory, tokens) is refused at submit, and a
//     queued one that no connected worker can run fails after --unrunnable_grace;
//   - a failed store write fails closed: memory keeps the new state, the write is retried each tick, and
//     SubmitJob answers UNAVAILABLE until the store has it (fault injected by a second SQLite connection
//     holding the write lock: a busy database);
//   - right after a restart, before any worker reconnects, a retry of an accepted job (same
//     client_request_id) finds it by key, and a new job for a not-yet-announced model is UNAVAILABLE;
//   - a worker whose stream closed loses its job at once (no grace), counting one worker loss;
//   - a job that lost max_worker_losses workers fails with a clear error;
//   - a scheduler restart under a running job costs it no worker loss;
//   - result chunks of the current attempt are committed (written outside the lock), a stale attempt's dropped.
#include <sqlite3.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/sha256.h"
#include "gtest/gtest.h"
#include "server/job_store.h"
#include "server/request_validation.h"
#include "server/scheduler.h"

namespace zoetrope::server {
namespace {

namespace v1 = zoetrope::v1;

class FakeChannel : public WorkerChannel {
 public:
  void Send(const v1::SchedulerMessage& message) override {
    absl::MutexLock lock(&mutex_);
    messages_.push_back(message);
  }
  void Close() override {}
  std::vector<v1::SchedulerMessage> messages() {
    absl::MutexLock lock(&mutex_);
    return messages_;
  }
  // The last assignment received, or an empty one.
  v1::JobAssignment LastAssignment() {
    v1::JobAssignment assignment;
    for (const v1::SchedulerMessage& message : messages()) {
      if (message.has_assignment()) assignment = message.assignment();
    }
    return assignment;
  }

 private:
  absl::Mutex mutex_;
  std::vector<v1::SchedulerMessage> messages_;
};

class SchedulerStateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    directory_ = std::filesystem::path(::testing::TempDir()) /
                 ("scheduler-state-" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    std::filesystem::remove_all(directory_);
    options_.database_path = (directory_ / "jobs.db").string();
    options_.results_directory = (directory_ / "results").string();
    options_.models = {"tiny"};
    options_.worker_grace = absl::Milliseconds(300);
    options_.tick_interval = absl::Milliseconds(20);
  }
  void TearDown() override { std::filesystem::remove_all(directory_); }

  std::unique_ptr<Scheduler> Start() {
    absl::StatusOr<std::unique_ptr<Scheduler>> scheduler = Scheduler::Create(options_, nullptr);
    EXPECT_TRUE(scheduler.ok()) << scheduler.status();
    return scheduler.ok() ? std::move(*scheduler) : nullptr;
  }

  static v1::SubmitJobRequest Request(const std::string& key = "") {
    v1::SubmitJobRequest request;
    request.set_model("tiny");
    request.set_prompt("a paper boat");
    request.set_width(128);
    request.set_height(128);
    request.set_frames(1);
    request.set_steps(2);
    request.set_client_request_id(key);
    return request;
  }

  // A worker announcing "tiny"; returns its connection.
  static uint64_t Attach(Scheduler& scheduler, const std::string& id, std::shared_ptr<FakeChannel> channel) {
    v1::WorkerHello hello;
    hello.set_worker_id(id);
    hello.mutable_capabilities()->add_models("tiny");
    hello.mutable_capabilities()->set_backend("cpu");
    hello.mutable_capabilities()->set_max_tokens(1 << 20);
    hello.mutable_capabilities()->add_output_formats(v1::OUTPUT_FORMAT_MP4);
    absl::StatusOr<uint64_t> connection = scheduler.AttachWorker(hello, std::move(channel));
    EXPECT_TRUE(connection.ok()) << connection.status();
    return connection.value_or(0);
  }

  // The state the store holds for `id` (a fresh connection, as a restarted scheduler would read it).
  v1::JobState StoredState(const std::string& id) {
    absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open(options_.database_path);
    EXPECT_TRUE(store.ok()) << store.status();
    if (!store.ok()) return v1::JOB_STATE_UNSPECIFIED;
    absl::StatusOr<std::optional<StoredJob>> job = (*store)->Get(id);
    EXPECT_TRUE(job.ok() && job->has_value());
    return job.ok() && job->has_value() ? (**job).job.state() : v1::JOB_STATE_UNSPECIFIED;
  }

  template <typename Condition>
  static bool WaitFor(Condition condition, absl::Duration timeout = absl::Seconds(10)) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      if (condition()) return true;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return condition();
  }

  std::filesystem::path directory_;
  SchedulerOptions options_;
};

TEST_F(SchedulerStateTest, FailedStateWriteFailsClosedAndIsRetried) {
  std::unique_ptr<Scheduler> scheduler = Start();
  ASSERT_NE(scheduler, nullptr);
  absl::StatusOr<v1::Job> job = scheduler->Submit(Request());
  ASSERT_TRUE(job.ok()) << job.status();

  // A second connection takes the write lock: the scheduler's next write fails (SQLITE_BUSY after the
  // store's busy timeout).
  sqlite3* blocker = nullptr;
  ASSERT_EQ(sqlite3_open(options_.database_path.c_str(), &blocker), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(blocker, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr), SQLITE_OK);
  absl::StatusOr<v1::Job> cancelled = scheduler->CancelJob(job->id());
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->state(), v1::JOB_STATE_CANCELLED);

  // Fail closed: no new work while the store lags behind memory.
  absl::StatusOr<v1::Job> refused = scheduler->Submit(Request());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable) << refused.status();

  // The lock goes away: the retry writes CANCELLED, and submissions are accepted again.
  ASSERT_EQ(sqlite3_exec(blocker, "ROLLBACK", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(blocker);
  EXPECT_TRUE(WaitFor([&] { return scheduler->Submit(Request()).ok(); }, absl::Seconds(20)));
  scheduler.reset();
  EXPECT_EQ(StoredState(job->id()), v1::JOB_STATE_CANCELLED) << "a restart would revive the cancelled job";
}

TEST_F(SchedulerStateTest, RetryAfterRestartFindsTheJobByKeyBeforeAnyWorkerConnects) {
  std::string id;
  {
    std::unique_ptr<Scheduler> scheduler = Start();
    ASSERT_NE(scheduler, nullptr);
    absl::StatusOr<v1::Job> job = scheduler->Submit(Request("key-1"));
    ASSERT_TRUE(job.ok()) << job.status();
    id = job->id();
  }
  // Restarted without --models: "tiny" is known only once a worker announces it.
  options_.models.clear();
  std::unique_ptr<Scheduler> scheduler = Start();
  ASSERT_NE(scheduler, nullptr);
  absl::StatusOr<v1::Job> retry = scheduler->Submit(Request("key-1"));
  ASSERT_TRUE(retry.ok()) << retry.status();
  EXPECT_EQ(retry->id(), id);
  // A new job for the not-yet-announced model: transient, so UNAVAILABLE (not INVALID_ARGUMENT).
  absl::StatusOr<v1::Job> fresh = scheduler->Submit(Request("key-2"));
  EXPECT_EQ(fresh.status().code(), absl::StatusCode::kUnavailable) << fresh.status();
  // With a worker connected, an unknown model is the client's error.
  auto channel = std::make_shared<FakeChannel>();
  Attach(*scheduler, "w1", channel);
  v1::SubmitJobRequest unknown = Request();
  unknown.set_model("nope");
  EXPECT_EQ(scheduler->Submit(unknown).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SchedulerStateTest, FingerprintIsDeterministicSerialization) {
  const v1::SubmitJobRequest request = Request("key");
  EXPECT_EQ(DeterministicFingerprint(request), DeterministicFingerprint(request));
  v1::SubmitJobRequest parsed;
  ASSERT_TRUE(parsed.ParseFromString(DeterministicFingerprint(request)));
  EXPECT_EQ(parsed.SerializeAsString(), request.SerializeAsString());
}

TEST_F(SchedulerStateTest, ClosedStreamLosesTheJobAtOnceAndTooManyLossesFailIt) {
  options_.worker_grace = absl::Hours(1);  // a grace would hold the job far beyond this test
  options_.max_worker_losses = 2;
  std::unique_ptr<Scheduler> scheduler = Start();
  ASSERT_NE(scheduler, nullptr);
  absl::StatusOr<v1::Job> job = scheduler->Submit(Request());
  ASSERT_TRUE(job.ok()) << job.status();

  auto first = std::make_shared<FakeChannel>();
  const uint64_t a = Attach(*scheduler, "a", first);
  ASSERT_TRUE(WaitFor([&] { return first->LastAssignment().job_id() == job->id(); }));
  scheduler->DetachWorker(a);  // the stream closed (the worker process died)
  absl::StatusOr<v1::Job> after = scheduler->GetJob(job->id());
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->state(), v1::JOB_STATE_QUEUED) << "queued again at once, not after the grace";

  auto second = std::make_shared<FakeChannel>();
  const uint64_t b = Attach(*scheduler, "b", second);
  ASSERT_TRUE(WaitFor([&] { return second->LastAssignment().job_id() == job->id(); }));
  scheduler->DetachWorker(b);
  after = scheduler->GetJob(job->id());
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->state(), v1::JOB_STATE_FAILED);
  EXPECT_NE(after->error().message().find("lost 2 times"), std::string::npos) << after->error().message();
}

TEST_F(SchedulerStateTest, RestartIsNotAWorkerLoss) {
  options_.max_worker_losses = 1;  // one counted loss would fail the job
  std::string id;
  {
    std::unique_ptr<Scheduler> scheduler = Start();
    ASSERT_NE(scheduler, nullptr);
    absl::StatusOr<v1::Job> job = scheduler->Submit(Request());
    ASSERT_TRUE(job.ok()) << job.status();
    id = job->id();
    auto channel = std::make_shared<FakeChannel>();
    Attach(*scheduler, "a", channel);
    ASSERT_TRUE(WaitFor([&] { return channel->LastAssignment().job_id() == id; }));
  }  // the scheduler stops with the job RUNNING; worker "a" never comes back
  std::unique_ptr<Scheduler> scheduler = Start();
  ASSERT_NE(scheduler, nullptr);
  EXPECT_EQ(scheduler->GetJob(id)->state(), v1::JOB_STATE_RUNNING);
  ASSERT_TRUE(WaitFor([&] { return scheduler->GetJob(id)->state() != v1::JOB_STATE_RUNNING; }));
  EXPECT_EQ(scheduler->GetJob(id)->state(), v1::JOB_STATE_QUEUED) << scheduler->GetJob(id)->error().message();
  auto channel = std::make_shared<FakeChannel>();
  Attach(*scheduler, "b", channel);
  EXPECT_TRUE(WaitFor([&] { return channel->LastAssignment().job_id() == id; }));
}

// Admission (items 2 and 4): a job that no worker serving its model can run is refused at submit, naming
// each worker's reason (estimated peak memory over its device memory, its token limit); with no worker
// for the model it waits; a worker that just went away still counts (it may be restarting).
TEST_F(SchedulerStateTest, AdmissionRefusesWhatNoWorkerCanRun) {
  std::unique_ptr<Scheduler> scheduler = Start();
  ASSERT_NE(scheduler, nullptr);
  v1::SubmitJobRequest huge = Request();
  huge.set_width(2048);
  huge.set_height(2048);  // one frame, 16,384 tokens: the request
  // No worker yet: queued (workers may still be starting).
  absl::StatusOr<v1::Job> waiting = scheduler->Submit(huge);
  ASSERT_TRUE(waiting.ok()) << waiting.status();
  ASSERT_TRUE(scheduler->CancelJob(waiting->id()).ok());

  // A worker with 256 MiB whose VAE needs 100 bytes per pixel: 2048² needs 400 MiB, 128² about 1.6 MiB.
  auto channel = std::make_shared<FakeChannel>();
  v1::WorkerHello hello;
  hello.set_worker_id("small-memory");
  hello.mutable_capabilities()->add_models("tiny");
  hello.mutable_capabilities()->set_max_tokens(1 << 20);
  hello.mutable_capabilities()->add_output_formats(v1::OUTPUT_FORMAT_MP4);
  hello.mutable_capabilities()->set_device_memory_bytes(int64_t{256} << 20);
  hello.mutable_capabilities()->set_resident_memory_bytes(int64_t{1} << 20);
  hello.mutable_capabilities()->set_denoise_memory_bytes_per_token(1000);
  hello.mutable_capabilities()->set_decode_memory_bytes_per_pixel(100);
  ASSERT_TRUE(scheduler->AttachWorker(hello, channel).ok());
  absl::StatusOr<v1::Job> refused = scheduler->Submit(huge);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_NE(refused.status().message().find("worker small-memory: the estimated peak memory 0.39 GiB exceeds its "
                                            "device memory 0.25 GiB"),
            std::string::npos)
      << refused.status();
  absl::StatusOr<v1::Job> fits = scheduler->Submit(Request());
  EXPECT_TRUE(fits.ok()) << fits.status();

  // A token limit refuses likewise, naming it.
  v1::SubmitJobRequest long_video = Request();
  long_video.set_frames(257);  // 65 · 8 · 8 = 4,160 tokens
  hello.set_worker_id("few-tokens");
  hello.mutable_capabilities()->set_max_tokens(1000);
  hello.mutable_capabilities()->set_device_memory_bytes(0);
  auto second = std::make_shared<FakeChannel>();
  ASSERT_TRUE(scheduler->AttachWorker(hello, second).ok());
  // small-memory can run it (4,160 tokens · 1000 bytes + 1 MiB < 256 MiB): accepted.
  EXPECT_TRUE(scheduler->Submit(long_video).ok());
  long_video.set_width(2048);
  long_video.set_frames(1);
  long_video.set_height(1024);  // 8,192 tokens; 200 MiB of decode + 1 MiB on small-memory: fits there
  EXPECT_TRUE(scheduler->Submit(long_video).ok());
  refused = scheduler->Submit(huge);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("worker few-tokens: the request's 16384 latent tokens exceed its limit "
                                            "of 1000"),
            std::string::npos)
      << refused.status();
}

// A queued job that only a departed worker could run waits --unrunnable_grace for it, then fails with
// FAILED_PRECONDITION; afterwards the same request is refused at submit.
TEST_F(SchedulerStateTest, QueuedJobNoConnectedWorkerCanRunFailsAfterTheGrace) {
  options_.unrunnable_grace = absl::Milliseconds(400);
  std::unique_ptr<Scheduler> scheduler = Start();
  ASSERT_NE(scheduler, nullptr);
  v1::WorkerHello hello;
  hello.mutable_capabilities()->add_models("tiny");
  hello.mutable_capabilities()->add_output_formats(v1::OUTPUT_FORMAT_MP4);
  hello.set_worker_id("big");
  hello.mutable_capabilities()->set_max_tokens(1 << 20);
  absl::StatusOr<uint64_t> big = scheduler->AttachWorker(hello, std::make_shared<FakeChannel>());
  ASSERT_TRUE(big.ok());
  scheduler->DetachWorker(*big);  // restarting, say
  hello.set_worker_id("small");
  hello.mutable_capabilities()->set_max_tokens(16);
  ASSERT_TRUE(scheduler->AttachWorker(hello, std::make_shared<FakeChannel>()).ok());

  absl::StatusOr<v1::Job> job = scheduler->Submit(Request());  // 64 tokens: only "big" can run it
  ASSERT_TRUE(job.ok()) << job.status();
  const absl::Time submitted = absl::Now();
  ASSERT_TRUE(WaitFor([&] { return scheduler->GetJob(job->id())->state() != v1::JOB_STATE_QUEUED; }));
  // "big" is remembered for the grace, then the job waits the grace again before failing.
  EXPECT_GE(absl::Now() - submitted, absl::Milliseconds(400));
  const v1::Job failed = *scheduler->GetJob(job->id());
  EXPECT_EQ(failed.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(failed.error().code(), static_cast<int>(absl::StatusCode::kFailedPrecondition));
  EXPECT_NE(failed.error().message().find("worker small: the request's 64 latent tokens exceed its limit of 16"),
            std::string::npos)
      << failed.error().message();
  EXPECT_EQ(StoredState(job->id()), v1::JOB_STATE_FAILED);
  EXPECT_EQ(scheduler->Submit(Request()).status().code(), absl::StatusCode::kFailedPrecondition);
}

// Result uploads and their commit run outside the scheduler's lock (item 4): the chunks of the current
// attempt become the published result, acknowledged; chunks of an attempt that ended are dropped, leaving
// no partial file behind.
TEST_F(SchedulerStateTest, UploadedResultIsCommittedAndAStaleAttemptLeavesNothing) {
  options_.worker_grace = absl::Hours(1);
  std::unique_ptr<Scheduler> scheduler = Start();
  ASSERT_NE(scheduler, nullptr);
  absl::StatusOr<v1::Job> job = scheduler->Submit(Request());
  ASSERT_TRUE(job.ok()) << job.status();
  auto first = std::make_shared<FakeChannel>();
  const uint64_t a = Attach(*scheduler, "a", first);
  ASSERT_TRUE(WaitFor([&] { return first->LastAssignment().job_id() == job->id(); }));
  const int attempt = first->LastAssignment().attempt();

  // Attempt 1 uploads half its result, then its stream closes: the job is queued again at once.
  const std::string result = "not really an mp4, but bytes all the same";
  v1::WorkerMessage chunk;
  chunk.mutable_upload()->set_job_id(job->id());
  chunk.mutable_upload()->set_attempt(attempt);
  chunk.mutable_upload()->set_offset(0);
  chunk.mutable_upload()->set_data(result.substr(0, 10));
  scheduler->OnWorkerMessage(a, chunk);
  scheduler->DetachWorker(a);
  auto files = [&] {
    std::vector<std::string> names;
    for (const auto& entry : std::filesystem::directory_iterator(options_.results_directory)) {
      names.push_back(entry.path().filename().string());
    }
    return names;
  };
  EXPECT_TRUE(files().empty()) << "the lost attempt's partial upload must be gone";

  // Attempt 2 on another worker uploads everything and completes.
  auto second = std::make_shared<FakeChannel>();
  const uint64_t b = Attach(*scheduler, "b", second);
  ASSERT_TRUE(WaitFor([&] { return second->LastAssignment().job_id() == job->id(); }));
  const int second_attempt = second->LastAssignment().attempt();
  EXPECT_EQ(second_attempt, attempt + 1);
  for (size_t offset = 0; offset < result.size(); offset += 16) {
    chunk.mutable_upload()->set_attempt(second_attempt);
    chunk.mutable_upload()->set_offset(static_cast<int64_t>(offset));
    chunk.mutable_upload()->set_data(result.substr(offset, 16));
    scheduler->OnWorkerMessage(b, chunk);
  }
  // A late chunk of attempt 1 (say from a worker that came back) changes nothing.
  chunk.mutable_upload()->set_attempt(attempt);
  chunk.mutable_upload()->set_offset(0);
  chunk.mutable_upload()->set_data("stale");
  scheduler->OnWorkerMessage(b, chunk);
  Sha256 hash;
  hash.Update(result);
  v1::WorkerMessage completion;
  completion.mutable_completion()->set_job_id(job->id());
  completion.mutable_completion()->set_attempt(second_attempt);
  completion.mutable_completion()->set_code(0);
  completion.mutable_completion()->set_result_size_bytes(static_cast<int64_t>(result.size()));
  completion.mutable_completion()->set_result_sha256(hash.FinishHex());
  completion.mutable_completion()->set_media_type("video/mp4");
  scheduler->OnWorkerMessage(b, completion);

  const v1::Job done = *scheduler->GetJob(job->id());
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.error().message();
  EXPECT_EQ(done.result_size_bytes(), static_cast<int64_t>(result.size()));
  bool acknowledged = false;
  for (const v1::SchedulerMessage& message : second->messages()) {
    acknowledged |= message.has_completion_ack() && message.completion_ack().attempt() == second_attempt;
  }
  EXPECT_TRUE(acknowledged);
  absl::StatusOr<ResultLocation> location = scheduler->GetResult(job->id());
  ASSERT_TRUE(location.ok()) << location.status();
  std::ifstream file(location->path, std::ios::binary);
  const std::string stored((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  EXPECT_EQ(stored, result);
  EXPECT_EQ(files(), std::vector<std::string>{std::filesystem::path(location->path).filename().string()});
  EXPECT_EQ(StoredState(job->id()), v1::JOB_STATE_SUCCEEDED);
}

}  // namespace
}  // namespace zoetrope::server
