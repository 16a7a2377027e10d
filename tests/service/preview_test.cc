// Live previews through the service (issue 15), with real scheduler, worker and CLI processes on 127.0.0.1:
// a watcher that never reads does not stall the job or the other watchers and loses previews, never steps;
// previews are not in GetJob, ListJobs or the job store; the request rule; the worker's cap; the CLI's files.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "tests/service/service_harness.h"

namespace zoetrope::testing {
namespace {

namespace v1 = zoetrope::v1;

constexpr absl::Duration kJobTimeout = absl::Seconds(120);

// 256×256, 5 frames (2 latent frames, two tiles per preview): a few tens of ms per step on one CPU thread.
v1::SubmitJobRequest PreviewRequest(int steps, int preview_every) {
  v1::SubmitJobRequest request = SmallRequest(steps, "a paper boat in the rain");
  request.set_width(256);
  request.set_height(256);
  request.set_frames(5);
  request.set_preview_every(preview_every);
  return request;
}

std::string ReadFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::stringstream content;
  content << file.rdbuf();
  return content.str();
}

bool LooksLikeJpeg(const std::string& data) {
  return data.size() > 4 && static_cast<uint8_t>(data[0]) == 0xFF && static_cast<uint8_t>(data[1]) == 0xD8 &&
         static_cast<uint8_t>(data[data.size() - 2]) == 0xFF && static_cast<uint8_t>(data[data.size() - 1]) == 0xD9;
}

std::vector<int> StepsOf(const std::vector<v1::JobEvent>& events) {
  std::vector<int> steps;
  for (const v1::JobEvent& event : events) {
    if (event.has_step()) steps.push_back(event.step().step());
  }
  return steps;
}

std::vector<int> PreviewStepsOf(const std::vector<v1::JobEvent>& events) {
  std::vector<int> steps;
  for (const v1::JobEvent& event : events) {
    if (event.has_preview()) steps.push_back(event.preview().step());
  }
  return steps;
}

std::vector<int> Range(int first, int last) {
  std::vector<int> values;
  for (int v = first; v <= last; ++v) values.push_back(v);
  return values;
}

TEST(PreviewTest, StalledWatcherStallsNothingAndLosesOnlyPreviews) {
  ServiceCluster cluster("preview-stalled");
  ASSERT_TRUE(cluster.StartScheduler({"--models=tiny"}));
  constexpr int kSteps = 40;
  v1::Job job;
  ASSERT_TRUE(Submit(cluster.stub(), PreviewRequest(kSteps, 1), &job).ok());
  EXPECT_EQ(job.request().preview_every(), 1);

  // A watcher on its own connection whose receive window is tiny and never grows: once a few KiB are in
  // flight the scheduler cannot write to it any more. It reads nothing until the job has ended.
  grpc::ChannelArguments arguments;
  arguments.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 1024);
  arguments.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  std::shared_ptr<grpc::Channel> stalled_channel =
      grpc::CreateCustomChannel(cluster.address(), grpc::InsecureChannelCredentials(), arguments);
  std::unique_ptr<v1::VideoService::Stub> stalled_stub = v1::VideoService::NewStub(stalled_channel);
  grpc::ClientContext stalled_context;
  stalled_context.set_deadline(absl::ToChronoTime(absl::Now() + kJobTimeout * 2));
  v1::WatchJobRequest watch;
  watch.set_id(job.id());
  std::unique_ptr<grpc::ClientReader<v1::JobEvent>> stalled = stalled_stub->WatchJob(&stalled_context, watch);

  // Two watchers that read, from before the worker exists.
  std::vector<v1::JobEvent> seen[2];
  grpc::Status statuses[2];
  std::vector<std::thread> readers;
  for (int i = 0; i < 2; ++i) {
    readers.emplace_back([&, i] { seen[i] = WatchAll(cluster.stub(), job.id(), kJobTimeout, &statuses[i]); });
  }
  ASSERT_TRUE(WaitFor([&] { return MetricValue(ScrapeMetrics(cluster.metrics_port()), "zoetrope_job_watchers") == 3; },
                      absl::Seconds(10)));
  const absl::Time start = absl::Now();
  ASSERT_TRUE(cluster.StartWorker("w1"));
  for (std::thread& reader : readers) reader.join();
  const v1::Job done = WaitForTerminal(cluster.stub(), job.id(), kJobTimeout);
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << cluster.AllWorkerLogs();
  EXPECT_LT(absl::Now() - start, kJobTimeout);

  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(statuses[i].ok()) << statuses[i].error_message();
    EXPECT_EQ(StepsOf(seen[i]), Range(1, kSteps)) << i;
    // A reading watcher may still lose a preview to its own pace, but gets most of them, in order.
    const std::vector<int> previews = PreviewStepsOf(seen[i]);
    EXPECT_GE(previews.size(), static_cast<size_t>(kSteps / 2)) << i;
    EXPECT_TRUE(std::is_sorted(previews.begin(), previews.end())) << i;
    for (int step : previews) EXPECT_TRUE(step >= 1 && step < kSteps) << "no preview after the last step: " << step;
    for (const v1::JobEvent& event : seen[i]) {
      if (!event.has_preview()) continue;
      const v1::JobEvent::Preview& preview = event.preview();
      EXPECT_EQ(preview.media_type(), "image/jpeg");
      EXPECT_TRUE(LooksLikeJpeg(preview.data()));
      EXPECT_LE(preview.data().size(), 65536u);
      EXPECT_EQ(preview.total_steps(), kSteps);
      EXPECT_EQ(preview.frame_count(), 2);
      EXPECT_EQ(preview.frame_indices_size(), 2);
      EXPECT_EQ(preview.columns() * preview.rows() >= preview.frame_count(), true);
      EXPECT_GT(preview.width(), 0);
    }
    ASSERT_TRUE(seen[i].back().has_finished());
  }

  // Now the stalled watcher reads: every step and the end are there; previews were dropped.
  std::vector<v1::JobEvent> late;
  v1::JobEvent event;
  while (stalled->Read(&event)) late.push_back(event);
  EXPECT_TRUE(stalled->Finish().ok());
  EXPECT_EQ(StepsOf(late), Range(1, kSteps));
  ASSERT_FALSE(late.empty());
  EXPECT_TRUE(late.back().has_finished());
  const std::vector<int> late_previews = PreviewStepsOf(late);
  EXPECT_LT(late_previews.size(), PreviewStepsOf(seen[0]).size()) << "the stalled watcher kept every preview";
  EXPECT_TRUE(std::is_sorted(late_previews.begin(), late_previews.end()));

  // Never stored: not in GetJob, ListJobs, nor the SQLite files.
  absl::StatusOr<v1::Job> fetched = GetJob(cluster.stub(), job.id());
  ASSERT_TRUE(fetched.ok());
  EXPECT_EQ(fetched->SerializeAsString().find("JFIF"), std::string::npos);
  for (const v1::Job& listed : ListAll(cluster.stub())) {
    EXPECT_EQ(listed.SerializeAsString().find("JFIF"), std::string::npos);
  }
  int database_files = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(cluster.directory())) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file() || name.find(".db") == std::string::npos) continue;
    ++database_files;
    EXPECT_EQ(ReadFile(entry.path().string()).find("JFIF"), std::string::npos) << entry.path();
  }
  EXPECT_GT(database_files, 0);
}

TEST(PreviewTest, RequestRuleWorkerCapAndNoPreviewsByDefault) {
  ServiceCluster cluster("preview-rules");
  ASSERT_TRUE(cluster.StartScheduler({"--models=tiny"}));
  v1::Job job;
  grpc::Status status = Submit(cluster.stub(), PreviewRequest(4, 5), &job);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message().rfind("preview_every: ", 0), 0u) << status.error_message();
  status = Submit(cluster.stub(), PreviewRequest(4, -1), &job);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  // The worker sends previews no more often than every 2 steps, whatever the request asks.
  ASSERT_TRUE(cluster.StartWorker("w1", {"--min_preview_every=2"}));
  v1::Job capped;
  ASSERT_TRUE(Submit(cluster.stub(), PreviewRequest(7, 1), &capped).ok());
  std::vector<v1::JobEvent> events = WatchAll(cluster.stub(), capped.id(), kJobTimeout);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().finished().state(), v1::JOB_STATE_SUCCEEDED);
  for (int step : PreviewStepsOf(events)) EXPECT_EQ(step % 2, 0) << step;

  // Off by default.
  v1::Job plain;
  ASSERT_TRUE(Submit(cluster.stub(), PreviewRequest(4, 0), &plain).ok());
  events = WatchAll(cluster.stub(), plain.id(), kJobTimeout);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().finished().state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_TRUE(PreviewStepsOf(events).empty());
}

TEST(PreviewTest, CommandLineSavesPreviewFiles) {
  ServiceCluster cluster("preview-cli");
  ASSERT_TRUE(cluster.StartScheduler());
  ASSERT_TRUE(cluster.StartWorker("w1"));
  const std::string previews = cluster.directory() + "/previews";
  const std::string errors = cluster.directory() + "/cli-stderr.txt";
  // submit --watch goes through Generate: every preview of the job reaches it.
  const std::string command =
      absl::StrCat(CliBinary(), " submit --server ", cluster.address(), " --model ", cluster.model_directory(),
                   " --prompt 'a lighthouse at dusk' --width 128 --height 128 --frames 5 --steps 4",
                   " --preview_every 1 --watch --preview ", previews, " >/dev/null 2>>", errors);
  ASSERT_EQ(std::system(command.c_str()), 0) << ReadFile(errors);
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(previews)) names.push_back(entry.path().filename());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"step-001.jpg", "step-002.jpg", "step-003.jpg"}));
  for (const std::string& name : names) EXPECT_TRUE(LooksLikeJpeg(ReadFile(previews + "/" + name))) << name;

  // The same locally: zoetrope generate --preview.
  const std::string local = cluster.directory() + "/local-previews";
  const std::string generate =
      absl::StrCat(CliBinary(), " generate --model ", cluster.model_directory(), " --threads 1",
                   " --width 128 --height 128 --frames 5 --steps 4 --preview_every 2 --preview ", local, " --output ",
                   cluster.directory(), "/local.mp4 >/dev/null 2>>", errors);
  ASSERT_EQ(std::system(generate.c_str()), 0) << ReadFile(errors);
  EXPECT_TRUE(LooksLikeJpeg(ReadFile(local + "/step-002.jpg")));
  EXPECT_FALSE(std::filesystem::exists(local + "/step-004.jpg")) << "never after the last step";
}

}  // namespace
}  // namespace zoetrope::testing
