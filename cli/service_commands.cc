#include "cli/service_commands.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cli/client_channel.h"
#include "cli/preview_files.h"
#include "cli/service_flags.h"
#include "common/progress_bar.h"
#include "common/sha256.h"
#include "common/time_util.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "parallel/sparsity_plan.h"
#include "zoetrope/v1/video_service.grpc.pb.h"

// Shared with `zoetrope generate` (cli/generate_command.cc defines them).
ABSL_DECLARE_FLAG(std::string, model);
ABSL_DECLARE_FLAG(std::string, prompt);
ABSL_DECLARE_FLAG(int64_t, width);
ABSL_DECLARE_FLAG(int64_t, height);
ABSL_DECLARE_FLAG(int64_t, frames);
ABSL_DECLARE_FLAG(int32_t, steps);
ABSL_DECLARE_FLAG(double, guidance);
ABSL_DECLARE_FLAG(double, shift);
ABSL_DECLARE_FLAG(std::string, sampler);
ABSL_DECLARE_FLAG(uint64_t, seed);
ABSL_DECLARE_FLAG(std::string, output);
ABSL_DECLARE_FLAG(std::string, attention);
ABSL_DECLARE_FLAG(std::string, preview);
ABSL_DECLARE_FLAG(int32_t, preview_every);

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "scheduler address (host:port); $ZOETROPE_SERVER overrides the default");
ABSL_FLAG(std::string, token, "", "bearer token of your tenant (docs/security.md); $ZOETROPE_TOKEN when not given");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA of the scheduler's TLS certificate (empty: plaintext); $ZOETROPE_TLS_CA");
ABSL_FLAG(std::string, negative_prompt, "", "what the video should not show");
ABSL_FLAG(int32_t, fps, 16, "frames per second of the video");
ABSL_FLAG(std::string, priority, "normal", "priority class: low, normal or high");
ABSL_FLAG(absl::Duration, deadline, absl::ZeroDuration(),
          "the job must be done this long after submission (e.g. 10m; 0: no deadline)");
ABSL_FLAG(std::string, client_request_id, "", "idempotency key: resubmitting with the same key returns the same job");
ABSL_FLAG(std::string, output_format, "native", "result format: native (mp4), mp4 or raw (F32 frames, safetensors)");
ABSL_FLAG(bool, watch, false, "submit: then watch the job until it finishes");
ABSL_FLAG(bool, json, false, "print jobs as JSON");
ABSL_FLAG(std::vector<std::string>, state, {}, "list: only jobs in these states (queued,running,succeeded,...)");
ABSL_FLAG(int32_t, page_size, 20, "list: jobs per page (≤ 1000)");
ABSL_FLAG(std::string, page_token, "", "list: the page to show (printed by the previous list)");
ABSL_FLAG(bool, all, false, "list: follow every page");
ABSL_FLAG(absl::Duration, rpc_timeout, absl::Seconds(30), "deadline of each call that is not a stream");
ABSL_FLAG(absl::Duration, reconnect_for, absl::Minutes(2),
          "watch/fetch: how long to keep retrying while the scheduler is unreachable");

namespace zoetrope {
namespace {

namespace v1 = zoetrope::v1;

// True when the flag's value differs from its default (this abseil keeps "specified" private).
bool Specified(const char* name) {
  const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
  return flag != nullptr && flag->CurrentValue() != flag->DefaultValue();
}

std::string ServerAddress() {
  if (!Specified("server")) {
    if (const char* environment = std::getenv("ZOETROPE_SERVER"); environment != nullptr && *environment) {
      return environment;
    }
  }
  return absl::GetFlag(FLAGS_server);
}

// The flag, else the environment variable (a token in a flag shows in `ps`: prefer the variable).
std::string FlagOrEnvironment(const char* flag, const std::string& value, const char* variable) {
  if (Specified(flag)) return value;
  const char* environment = std::getenv(variable);
  return environment != nullptr ? environment : "";
}

// Null, after printing why, when the TLS CA cannot be read.
std::unique_ptr<v1::VideoService::Stub> Connect() {
  ClientSecurity security;
  security.token = FlagOrEnvironment("token", absl::GetFlag(FLAGS_token), "ZOETROPE_TOKEN");
  security.tls_ca_file = FlagOrEnvironment("tls_ca", absl::GetFlag(FLAGS_tls_ca), "ZOETROPE_TLS_CA");
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = MakeClientChannel(ServerAddress(), security);
  if (!channel.ok()) {
    std::fprintf(stderr, "zoetrope: %s\n", std::string(channel.status().message()).c_str());
    return nullptr;
  }
  return v1::VideoService::NewStub(*channel);
}

void SetCallDeadline(grpc::ClientContext& context) {
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::GetFlag(FLAGS_rpc_timeout)));
}

int Fail(const char* command, const grpc::Status& status) {
  std::fprintf(stderr, "zoetrope %s: %s: %s\n", command,
               absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())).c_str(),
               status.error_message().c_str());
  return 1;
}

int Usage(const char* command, const char* usage) {
  std::fprintf(stderr, "usage: zoetrope %s %s\n", command, usage);
  return 2;
}

std::string StateName(v1::JobState state) {
  const std::string& full = v1::JobState_Name(state);
  absl::string_view name = full;
  absl::ConsumePrefix(&name, "JOB_STATE_");
  return std::string(name);
}

std::string PhaseName(v1::Phase phase) {
  const std::string lower = absl::AsciiStrToLower(v1::Phase_Name(phase));
  absl::string_view name = lower;
  absl::ConsumePrefix(&name, "phase_");
  return absl::StrReplaceAll(name, {{"_", " "}});
}

std::string Seconds(double seconds) { return absl::StrFormat("%.2f s", seconds); }

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  std::string json;
  if (!google::protobuf::util::MessageToJsonString(message, &json, options).ok()) return "{}";
  return json;
}

std::string ProgressSummary(const v1::Job& job) {
  switch (job.state()) {
    case v1::JOB_STATE_QUEUED:
      return absl::StrCat("position ", job.queue_position());
    case v1::JOB_STATE_RUNNING:
      if (job.progress().phase() == v1::PHASE_DENOISING && job.progress().step() > 0) {
        return absl::StrFormat("step %d/%d, ETA %.1f s", job.progress().step(), job.progress().total_steps(),
                               job.progress().eta_seconds());
      }
      return PhaseName(job.progress().phase());
    case v1::JOB_STATE_SUCCEEDED:
      return absl::StrFormat("%.1f s run", job.measurements().run_seconds());
    default:
      return job.error().message();
  }
}

void PrintJob(const v1::Job& job) {
  const v1::SubmitJobRequest& request = job.request();
  std::printf("id:        %s\n", job.id().c_str());
  std::printf("state:     %s%s\n", StateName(job.state()).c_str(), job.cancel_requested() ? " (cancel requested)" : "");
  if (job.state() == v1::JOB_STATE_QUEUED) std::printf("position:  %d\n", job.queue_position());
  if (job.state() == v1::JOB_STATE_RUNNING) {
    std::printf("progress:  %s (%s)\n", PhaseName(job.progress().phase()).c_str(), ProgressSummary(job).c_str());
  }
  std::printf("model:     %s\n", request.model().c_str());
  std::printf("prompt:    %s\n", request.prompt().c_str());
  std::printf("video:     %d×%d, %d frames at %d fps, %d steps, guidance %g, shift %g, seed %llu\n", request.width(),
              request.height(), request.frames(), request.fps(), request.steps(), request.guidance(), request.shift(),
              static_cast<unsigned long long>(request.seed()));
  std::printf("created:   %s\n",
              absl::FormatTime(absl::RFC3339_sec, FromTimestamp(job.create_time()), absl::LocalTimeZone())
                  .c_str());
  if (job.attempt() > 0) std::printf("attempt:   %d on %s\n", job.attempt(), job.worker_id().c_str());
  if (job.state() != v1::JOB_STATE_QUEUED && job.state() != v1::JOB_STATE_RUNNING) {
    std::printf("times:     queue %s, run %s\n", Seconds(job.measurements().queue_seconds()).c_str(),
                Seconds(job.measurements().run_seconds()).c_str());
  }
  if (job.error().code() != 0) {
    std::printf("error:     %s: %s\n", job.error().code_name().c_str(), job.error().message().c_str());
  }
  if (job.state() == v1::JOB_STATE_SUCCEEDED) {
    std::printf("result:    %lld bytes, %s%s\n", static_cast<long long>(job.result_size_bytes()),
                job.result_media_type().c_str(), job.result_available() ? "" : " (deleted after retention)");
  }
}

// Follows a job's events until it finishes; returns 0 when it SUCCEEDED. With `submit`, the job is first
// submitted through Generate (submission and events in one call, so no early step is missed) and its id
// printed on stdout; a broken stream is then resumed with WatchJob.
int WatchUntilDone(v1::VideoService::Stub& stub, std::string id, const v1::SubmitJobRequest* submit = nullptr) {
  std::unique_ptr<ProgressBar> bar;
  v1::JobState final_state = v1::JOB_STATE_UNSPECIFIED;
  v1::Job last;
  int last_position = -1;
  int previews_saved = 0;
  bool preview_failed = false;
  const absl::Time give_up_after = absl::Now() + absl::GetFlag(FLAGS_reconnect_for);
  absl::Duration backoff = absl::Milliseconds(200);
  while (true) {
    grpc::ClientContext context;
    std::unique_ptr<grpc::ClientReader<v1::JobEvent>> reader;
    if (id.empty()) {
      reader = stub.Generate(&context, *submit);
    } else {
      v1::WatchJobRequest request;
      request.set_id(id);
      reader = stub.WatchJob(&context, request);
    }
    v1::JobEvent event;
    while (reader->Read(&event)) {
      last = event.job();
      if (id.empty()) {
        id = event.job().id();
        std::printf("%s\n", id.c_str());
        std::fflush(stdout);
      }
      switch (event.kind_case()) {
        case v1::JobEvent::kQueued:
          if (event.queued().position() != last_position) {
            last_position = event.queued().position();
            std::fprintf(stderr, "%s: queued, position %d\n", id.c_str(), last_position);
          }
          bar.reset();
          break;
        case v1::JobEvent::kStarted:
          last_position = -1;
          std::fprintf(stderr, "%s: running on %s (attempt %d)\n", id.c_str(), event.started().worker_id().c_str(),
                       event.started().attempt());
          break;
        case v1::JobEvent::kStep: {
          const v1::JobEvent::StepCompleted& step = event.step();
          if (bar == nullptr) bar = std::make_unique<ProgressBar>(id, step.total_steps(), "steps");
          bar->Update(step.step(),
                      absl::StrFormat("%.3f s/step  ETA %.1f s", step.step_seconds(), step.eta_seconds()));
          break;
        }
        case v1::JobEvent::kPhaseChanged:
          if (bar == nullptr) {
            std::fprintf(stderr, "%s: %s\n", id.c_str(), PhaseName(event.phase_changed().phase()).c_str());
          }
          break;
        case v1::JobEvent::kFinished: {
          final_state = event.finished().state();
          if (bar != nullptr && final_state == v1::JOB_STATE_SUCCEEDED) bar->Finish();
          bar.reset();
          const v1::Measurements& measured = event.finished().measurements();
          if (final_state == v1::JOB_STATE_SUCCEEDED) {
            std::fprintf(stderr, "%s: SUCCEEDED (queue %s, run %s, %lld bytes)\n", id.c_str(),
                         Seconds(measured.queue_seconds()).c_str(), Seconds(measured.run_seconds()).c_str(),
                         static_cast<long long>(event.job().result_size_bytes()));
          } else {
            std::fprintf(stderr, "%s: %s: %s\n", id.c_str(), StateName(final_state).c_str(),
                         event.finished().error().message().c_str());
          }
          break;
        }
        case v1::JobEvent::kPreview: {
          // Only with --preview: a failed write is reported once and the watch goes on.
          const std::string directory = absl::GetFlag(FLAGS_preview);
          if (directory.empty() || preview_failed) break;
          absl::StatusOr<std::string> path = WritePreviewFile(directory, event.preview().step(),
                                                              event.preview().media_type(), event.preview().data());
          if (!path.ok()) {
            preview_failed = true;
            std::fprintf(stderr, "%s: preview not saved: %s\n", id.c_str(), std::string(path.status().message()).c_str());
          } else {
            ++previews_saved;
          }
          break;
        }
        case v1::JobEvent::KIND_NOT_SET:
          break;
      }
    }
    const grpc::Status status = reader->Finish();
    if (final_state != v1::JOB_STATE_UNSPECIFIED) break;
    // Before the job id is known the submission may not have happened: do not submit twice.
    if (id.empty()) return Fail("submit", status);
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE && absl::Now() < give_up_after) {
      // The scheduler restarts or drains: the job is durable, so wait for it to come back.
      std::fprintf(stderr, "%s: scheduler unavailable (%s); retrying\n", id.c_str(), status.error_message().c_str());
      absl::SleepFor(backoff);
      backoff = std::min(backoff * 2, absl::Seconds(5));
      continue;
    }
    return Fail("watch", status);
  }
  if (!absl::GetFlag(FLAGS_preview).empty()) {
    std::fprintf(stderr, "%s: %d preview(s) saved in %s\n", id.c_str(), previews_saved,
                 absl::GetFlag(FLAGS_preview).c_str());
  }
  std::printf("%s %s\n", id.c_str(), StateName(final_state).c_str());
  return final_state == v1::JOB_STATE_SUCCEEDED ? 0 : 1;
}

absl::StatusOr<v1::SubmitJobRequest> RequestFromFlags() {
  v1::SubmitJobRequest request;
  // A path names the model by its folder, so the same --model works for generate and submit.
  std::filesystem::path model(absl::GetFlag(FLAGS_model));
  while (!model.empty() && model.filename().empty()) model = model.parent_path();
  request.set_model(model.filename().string());
  request.set_prompt(absl::GetFlag(FLAGS_prompt));
  request.set_negative_prompt(absl::GetFlag(FLAGS_negative_prompt));
  request.set_width(static_cast<int32_t>(absl::GetFlag(FLAGS_width)));
  request.set_height(static_cast<int32_t>(absl::GetFlag(FLAGS_height)));
  request.set_frames(static_cast<int32_t>(absl::GetFlag(FLAGS_frames)));
  request.set_fps(absl::GetFlag(FLAGS_fps));
  request.set_steps(absl::GetFlag(FLAGS_steps));
  request.set_guidance(absl::GetFlag(FLAGS_guidance));
  request.set_shift(absl::GetFlag(FLAGS_shift));
  request.set_seed(absl::GetFlag(FLAGS_seed));
  const std::string sampler = absl::GetFlag(FLAGS_sampler);
  if (sampler == "unipc") {
    request.set_sampler(v1::SAMPLER_UNIPC);
  } else if (sampler == "dpm++" || sampler == "dpmpp") {
    request.set_sampler(v1::SAMPLER_DPMPP_2M);
  } else if (sampler == "euler") {
    request.set_sampler(v1::SAMPLER_EULER);
  } else {
    return absl::InvalidArgumentError(absl::StrCat("--sampler must be unipc, dpm++ or euler (got \"", sampler, "\")"));
  }
  const std::string priority = absl::GetFlag(FLAGS_priority);
  if (priority == "low") {
    request.set_priority(v1::PRIORITY_LOW);
  } else if (priority == "normal") {
    request.set_priority(v1::PRIORITY_NORMAL);
  } else if (priority == "high") {
    request.set_priority(v1::PRIORITY_HIGH);
  } else {
    return absl::InvalidArgumentError(absl::StrCat("--priority must be low, normal or high (got \"", priority, "\")"));
  }
  const std::string format = absl::GetFlag(FLAGS_output_format);
  if (format == "native") {
    request.set_output_format(v1::OUTPUT_FORMAT_UNSPECIFIED);
  } else if (format == "mp4") {
    request.set_output_format(v1::OUTPUT_FORMAT_MP4);
  } else if (format == "raw") {
    request.set_output_format(v1::OUTPUT_FORMAT_RAW_SAFETENSORS);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--output_format must be native, mp4 or raw (got \"", format, "\")"));
  }
  if (const absl::Duration deadline = absl::GetFlag(FLAGS_deadline); deadline != absl::ZeroDuration()) {
    *request.mutable_deadline() = ToDurationProto(deadline);
  }
  request.set_client_request_id(absl::GetFlag(FLAGS_client_request_id));
  int preview_every = absl::GetFlag(FLAGS_preview_every);
  if (preview_every == 0 && !absl::GetFlag(FLAGS_preview).empty()) {
    // The implicit interval must not ask for more than the job's steps (the API's rule).
    preview_every = std::max(1, std::min(kDefaultPreviewEvery, request.steps() > 0 ? request.steps() : 50));
  }
  request.set_preview_every(preview_every);
  // Left out, the worker's default plan applies; a plan file travels as its text.
  if (!absl::GetFlag(FLAGS_attention).empty()) {
    absl::StatusOr<SparsityPlanText> attention = ReadSparsityPlanText(absl::GetFlag(FLAGS_attention));
    if (!attention.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--attention: ", attention.status().message()));
    }
    request.set_attention(attention->text);
  }
  return request;
}

std::string SingleJobId(const std::vector<char*>& positional, const char* command) {
  if (positional.size() != 2) {
    Usage(command, "JOB_ID [--flags]");
    return "";
  }
  return positional[1];
}

absl::StatusOr<v1::JobState> ParseState(const std::string& text) {
  std::string name = absl::AsciiStrToUpper(text);
  if (name.rfind("JOB_STATE_", 0) != 0) name = "JOB_STATE_" + name;
  v1::JobState state;
  if (!v1::JobState_Parse(name, &state) || state == v1::JOB_STATE_UNSPECIFIED) {
    return absl::InvalidArgumentError(
        absl::StrCat("--state: unknown state \"", text, "\" (queued, running, succeeded, failed, cancelled, expired)"));
  }
  return state;
}

}  // namespace

int RunSubmitCommand(int argc, char** argv) {
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() != 1) return Usage("submit", "--prompt TEXT [--flags]  (zoetrope submit --helpfull)");
  absl::StatusOr<v1::SubmitJobRequest> request = RequestFromFlags();
  if (!request.ok()) {
    std::fprintf(stderr, "zoetrope submit: %s\n", std::string(request.status().message()).c_str());
    return 2;
  }
  std::unique_ptr<v1::VideoService::Stub> stub = Connect();
  if (stub == nullptr) return 2;
  if (absl::GetFlag(FLAGS_watch) && !absl::GetFlag(FLAGS_json)) return WatchUntilDone(*stub, "", &*request);
  grpc::ClientContext context;
  SetCallDeadline(context);
  v1::Job job;
  if (grpc::Status status = stub->SubmitJob(&context, *request, &job); !status.ok()) return Fail("submit", status);
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("%s\n", ToJson(job).c_str());
  } else {
    std::printf("%s\n", job.id().c_str());
    std::fprintf(stderr, "%s: %s%s\n", job.id().c_str(), StateName(job.state()).c_str(),
                 job.state() == v1::JOB_STATE_QUEUED ? absl::StrCat(", position ", job.queue_position()).c_str() : "");
  }
  std::fflush(stdout);
  if (!absl::GetFlag(FLAGS_watch)) return 0;
  return WatchUntilDone(*stub, job.id());
}

int RunWatchCommand(int argc, char** argv) {
  const std::string id = SingleJobId(absl::ParseCommandLine(argc, argv), "watch");
  if (id.empty()) return 2;
  std::unique_ptr<v1::VideoService::Stub> stub = Connect();
  if (stub == nullptr) return 2;
  return WatchUntilDone(*stub, id);
}

int RunGetCommand(int argc, char** argv) {
  const std::string id = SingleJobId(absl::ParseCommandLine(argc, argv), "get");
  if (id.empty()) return 2;
  std::unique_ptr<v1::VideoService::Stub> stub = Connect();
  if (stub == nullptr) return 2;
  grpc::ClientContext context;
  SetCallDeadline(context);
  v1::GetJobRequest request;
  request.set_id(id);
  v1::Job job;
  if (grpc::Status status = stub->GetJob(&context, request, &job); !status.ok()) return Fail("get", status);
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("%s\n", ToJson(job).c_str());
  } else {
    PrintJob(job);
  }
  return 0;
}

int RunListCommand(int argc, char** argv) {
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() != 1) return Usage("list", "[--state queued,running] [--model M] [--page_size N] [--all]");
  v1::ListJobsRequest request;
  for (const std::string& text : absl::GetFlag(FLAGS_state)) {
    absl::StatusOr<v1::JobState> state = ParseState(text);
    if (!state.ok()) {
      std::fprintf(stderr, "zoetrope list: %s\n", std::string(state.status().message()).c_str());
      return 2;
    }
    request.add_states(*state);
  }
  if (Specified("model")) request.set_model(std::filesystem::path(absl::GetFlag(FLAGS_model)).filename().string());
  request.set_page_size(absl::GetFlag(FLAGS_page_size));
  request.set_page_token(absl::GetFlag(FLAGS_page_token));
  std::unique_ptr<v1::VideoService::Stub> stub = Connect();
  if (stub == nullptr) return 2;
  const bool json = absl::GetFlag(FLAGS_json);
  if (!json) std::printf("%-29s %-10s %-16s %-26s %s\n", "ID", "STATE", "MODEL", "PROGRESS", "PROMPT");
  v1::ListJobsResponse all_pages;
  while (true) {
    grpc::ClientContext context;
    SetCallDeadline(context);
    v1::ListJobsResponse page;
    if (grpc::Status status = stub->ListJobs(&context, request, &page); !status.ok()) return Fail("list", status);
    for (const v1::Job& job : page.jobs()) {
      if (json) {
        *all_pages.add_jobs() = job;
        continue;
      }
      std::string prompt = job.request().prompt();
      if (prompt.size() > 48) prompt = prompt.substr(0, 45) + "...";
      std::printf("%-29s %-10s %-16s %-26s %s\n", job.id().c_str(), StateName(job.state()).c_str(),
                  job.request().model().c_str(), ProgressSummary(job).substr(0, 26).c_str(), prompt.c_str());
    }
    if (page.next_page_token().empty()) break;
    if (!absl::GetFlag(FLAGS_all)) {
      if (json) {
        all_pages.set_next_page_token(page.next_page_token());
      } else {
        std::fprintf(stderr, "more: zoetrope list --page_token %s (or --all)\n", page.next_page_token().c_str());
      }
      break;
    }
    request.set_page_token(page.next_page_token());
  }
  if (json) std::printf("%s\n", ToJson(all_pages).c_str());
  return 0;
}

int RunCancelCommand(int argc, char** argv) {
  const std::string id = SingleJobId(absl::ParseCommandLine(argc, argv), "cancel");
  if (id.empty()) return 2;
  std::unique_ptr<v1::VideoService::Stub> stub = Connect();
  if (stub == nullptr) return 2;
  grpc::ClientContext context;
  SetCallDeadline(context);
  v1::CancelJobRequest request;
  request.set_id(id);
  v1::Job job;
  if (grpc::Status status = stub->CancelJob(&context, request, &job); !status.ok()) return Fail("cancel", status);
  std::printf("%s %s%s\n", job.id().c_str(), StateName(job.state()).c_str(),
              job.cancel_requested() && job.state() == v1::JOB_STATE_RUNNING ? " (stops at the next step)" : "");
  return 0;
}

int RunFetchCommand(int argc, char** argv) {
  const std::string id = SingleJobId(absl::ParseCommandLine(argc, argv), "fetch");
  if (id.empty()) return 2;
  std::unique_ptr<v1::VideoService::Stub> stub = Connect();
  if (stub == nullptr) return 2;
  v1::Job job;
  {
    grpc::ClientContext context;
    SetCallDeadline(context);
    v1::GetJobRequest request;
    request.set_id(id);
    if (grpc::Status status = stub->GetJob(&context, request, &job); !status.ok()) return Fail("fetch", status);
  }
  std::string output = absl::GetFlag(FLAGS_output);
  if (!Specified("output")) {
    output = id + (job.result_media_type() == "video/mp4" ? ".mp4" : ".safetensors");
  }
  const std::string partial = output + ".partial";
  std::error_code error;
  int64_t offset = std::filesystem::exists(partial, error)
                       ? static_cast<int64_t>(std::filesystem::file_size(partial, error))
                       : 0;
  if (offset > 0) std::fprintf(stderr, "%s: resuming at byte %lld\n", partial.c_str(), static_cast<long long>(offset));
  std::ofstream file(partial, std::ios::binary | std::ios::app);
  if (!file) {
    std::fprintf(stderr, "zoetrope fetch: cannot write %s\n", partial.c_str());
    return 1;
  }
  std::string expected_sha256;
  int64_t total = job.result_size_bytes();
  std::unique_ptr<ProgressBar> bar;
  const absl::Time give_up_after = absl::Now() + absl::GetFlag(FLAGS_reconnect_for);
  bool done = false;
  while (!done) {
    grpc::ClientContext context;
    v1::FetchResultRequest request;
    request.set_id(id);
    request.set_offset(offset);
    std::unique_ptr<grpc::ClientReader<v1::ResultChunk>> reader = stub->FetchResult(&context, request);
    v1::ResultChunk chunk;
    while (reader->Read(&chunk)) {
      if (chunk.offset() != offset) {
        std::fprintf(stderr, "zoetrope fetch: chunk at offset %lld, expected %lld\n",
                     static_cast<long long>(chunk.offset()), static_cast<long long>(offset));
        return 1;
      }
      file.write(chunk.data().data(), static_cast<std::streamsize>(chunk.data().size()));
      offset += static_cast<int64_t>(chunk.data().size());
      total = chunk.total_size();
      expected_sha256 = chunk.sha256();
      if (bar == nullptr) bar = std::make_unique<ProgressBar>("fetch " + id, std::max<int64_t>(total / 1024, 1), "KiB");
      bar->Update(offset / 1024);
      done = chunk.last();
    }
    const grpc::Status status = reader->Finish();
    if (done && status.ok()) break;
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE && absl::Now() < give_up_after) {
      file.flush();
      std::fprintf(stderr, "zoetrope fetch: scheduler unavailable; resuming at byte %lld\n",
                   static_cast<long long>(offset));
      absl::SleepFor(absl::Seconds(1));
      continue;
    }
    if (!status.ok()) return Fail("fetch", status);
    done = true;
  }
  file.close();
  if (bar != nullptr) bar->Finish();
  if (!expected_sha256.empty() && Sha256OfFile(partial) != expected_sha256) {
    std::fprintf(stderr, "zoetrope fetch: %s does not match the result's SHA-256; deleting it\n", partial.c_str());
    std::filesystem::remove(partial, error);
    return 1;
  }
  std::filesystem::rename(partial, output, error);
  if (error) {
    std::fprintf(stderr, "zoetrope fetch: rename %s: %s\n", partial.c_str(), error.message().c_str());
    return 1;
  }
  std::printf("%s\n", output.c_str());
  return 0;
}

}  // namespace zoetrope
