#include "worker/worker_agent.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/sha256.h"
#include "common/time_util.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

namespace zoetrope {
namespace {

namespace v1 = zoetrope::v1;

constexpr int kCodeOk = 0;
constexpr int kCodeCancelled = static_cast<int>(absl::StatusCode::kCancelled);
constexpr int kCodeUnavailable = static_cast<int>(absl::StatusCode::kUnavailable);
constexpr size_t kUploadChunkBytes = 64 * 1024;

std::string DefaultWorkerId() {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) std::snprintf(host, sizeof(host), "worker");
  return absl::StrCat(host, "-", getpid());
}

v1::OutputFormat ToProto(ResultFormat format) {
  switch (format) {
    case ResultFormat::kMp4: return v1::OUTPUT_FORMAT_MP4;
    case ResultFormat::kRawSafetensors: return v1::OUTPUT_FORMAT_RAW_SAFETENSORS;
    default: return v1::OUTPUT_FORMAT_UNSPECIFIED;
  }
}

ResultFormat FromProto(v1::OutputFormat format) {
  switch (format) {
    case v1::OUTPUT_FORMAT_MP4: return ResultFormat::kMp4;
    case v1::OUTPUT_FORMAT_RAW_SAFETENSORS: return ResultFormat::kRawSafetensors;
    default: return ResultFormat::kNative;
  }
}

SamplerKind FromProto(v1::Sampler sampler) {
  switch (sampler) {
    case v1::SAMPLER_DPMPP_2M: return SamplerKind::kDpmPlusPlus2M;
    case v1::SAMPLER_EULER: return SamplerKind::kEuler;
    default: return SamplerKind::kUniPC;
  }
}

v1::Phase ToProto(JobPhase phase) {
  switch (phase) {
    case JobPhase::kLoading: return v1::PHASE_LOADING;
    case JobPhase::kEncodingText: return v1::PHASE_ENCODING_TEXT;
    case JobPhase::kDenoising: return v1::PHASE_DENOISING;
    case JobPhase::kDecoding: return v1::PHASE_DECODING;
    case JobPhase::kEncodingVideo: return v1::PHASE_ENCODING_VIDEO;
  }
  return v1::PHASE_UNSPECIFIED;
}

// The energy source and the per-phase figures of a finished job.
void SetPhaseMeasurements(const JobOutput& output, v1::Measurements& measurements) {
  measurements.set_energy_source(output.energy_source);
  measurements.set_text_seconds(output.text_seconds);
  measurements.set_decode_seconds(output.decode_seconds);
  measurements.set_video_encode_seconds(output.video_encode_seconds);
  measurements.set_text_energy_joules(output.text_energy_joules);
  measurements.set_denoise_energy_joules(output.denoise_energy_joules);
  measurements.set_decode_energy_joules(output.decode_energy_joules);
  measurements.set_video_encode_energy_joules(output.video_encode_energy_joules);
}

}  // namespace

// One stream to the scheduler. Writes come from several threads (reader, job, heartbeat) and gRPC allows
// one at a time.
struct WorkerAgent::Session {
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReaderWriter<v1::WorkerMessage, v1::SchedulerMessage>> stream;
  absl::Mutex write_mutex;
  bool broken ABSL_GUARDED_BY(write_mutex) = false;

  bool Write(const v1::WorkerMessage& message) {
    absl::MutexLock lock(&write_mutex);
    if (broken) return false;
    if (!stream->Write(message)) broken = true;
    return !broken;
  }
};

// The job this worker holds, from assignment until the scheduler acknowledged its completion.
struct WorkerAgent::HeldJob {
  std::string job_id;
  int attempt = 0;
  std::string model;
  GenerationRequest request;
  std::atomic<bool> cancelled{false};
  // Guarded by the agent's mutex:
  int cancel_code = kCodeCancelled;
  std::string cancel_reason;
  bool finished = false;
  v1::JobCompletion completion;  // valid when finished
  std::string result_path;       // valid when finished with a result
  bool confirmed = false;        // the current session's scheduler knows we hold it
  bool delivered = false;        // completion sent on the current session; waiting for the ack
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
};

// Forwards the runner's progress on whatever session is current (dropped while disconnected).
class WorkerAgent::StepReporter final : public ProgressSink {
 public:
  StepReporter(WorkerAgent& agent, const HeldJob& job) : agent_(agent), job_(job) {}
  void OnPhase(JobPhase phase) override {
    v1::WorkerMessage message;
    v1::JobProgress* progress = message.mutable_progress();
    progress->set_job_id(job_.job_id);
    progress->set_attempt(job_.attempt);
    progress->set_phase(ToProto(phase));
    agent_.SendOnCurrentSession(message);
  }
  void OnStep(const StepProgress& step) override {
    if (agent_.metrics_ != nullptr) agent_.metrics_->StepCompleted(job_.model, step.step_seconds);
    v1::WorkerMessage message;
    v1::JobProgress* progress = message.mutable_progress();
    progress->set_job_id(job_.job_id);
    progress->set_attempt(job_.attempt);
    progress->set_phase(v1::PHASE_DENOISING);
    progress->set_step(step.step);
    progress->set_total_steps(step.steps);
    progress->set_step_seconds(step.step_seconds);
    agent_.SendOnCurrentSession(message);
  }
  void OnPreview(const PreviewUpdate& update) override {
    v1::WorkerMessage message;
    v1::JobPreview* preview = message.mutable_preview();
    preview->set_job_id(job_.job_id);
    preview->set_attempt(job_.attempt);
    v1::JobEvent::Preview* image = preview->mutable_preview();
    image->set_step(update.step);
    image->set_total_steps(update.steps);
    image->set_frame_count(static_cast<int>(update.frame_indices.size()));
    image->set_media_type(update.media_type);
    image->set_data(update.data);
    image->set_width(update.width);
    image->set_height(update.height);
    image->set_columns(update.columns);
    image->set_rows(update.rows);
    for (int frame : update.frame_indices) image->add_frame_indices(frame);
    agent_.OfferPreview(std::move(message));
  }

 private:
  WorkerAgent& agent_;
  const HeldJob& job_;
};

WorkerAgent::WorkerAgent(WorkerAgentOptions options, JobRunner& runner, WorkerMetrics* metrics)
    : options_(std::move(options)), runner_(runner), metrics_(metrics), capabilities_(runner.capabilities()) {
  if (options_.worker_id.empty()) options_.worker_id = DefaultWorkerId();
  if (metrics_ != nullptr) metrics_->SetEnergySource(capabilities_.energy_source, capabilities_.energy_gpu_labels);
  if (options_.channel != nullptr) {
    channel_ = options_.channel;
  } else {
    grpc::ChannelArguments arguments;
    // Reconnect quickly after a scheduler restart; our own backoff paces the attempts.
    arguments.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    arguments.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
    arguments.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
                     static_cast<int>(absl::ToInt64Milliseconds(options_.reconnect_max_backoff)));
    // Notice a scheduler that vanished without closing the connection (network partition).
    arguments.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
    arguments.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
    channel_ = grpc::CreateCustomChannel(
        options_.scheduler_address,
        options_.credentials != nullptr ? options_.credentials : grpc::InsecureChannelCredentials(), arguments);
  }
  stub_ = v1::WorkerService::NewStub(channel_);
  heartbeat_thread_ = std::thread([this] { HeartbeatLoop(); });
  preview_thread_ = std::thread([this] { PreviewLoop(); });
}

WorkerAgent::~WorkerAgent() {
  Stop();
  if (job_thread_.joinable()) job_thread_.join();
  if (heartbeat_thread_.joinable()) heartbeat_thread_.join();
  {
    absl::MutexLock lock(&preview_mutex_);
    preview_stop_ = true;
  }
  if (preview_thread_.joinable()) preview_thread_.join();
}

void WorkerAgent::OfferPreview(v1::WorkerMessage message) {
  absl::MutexLock lock(&preview_mutex_);
  preview_slot_ = std::make_unique<v1::WorkerMessage>(std::move(message));
}

void WorkerAgent::PreviewLoop() {
  while (true) {
    std::unique_ptr<v1::WorkerMessage> message;
    {
      absl::MutexLock lock(&preview_mutex_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(preview_mutex_) {
        return preview_stop_ || preview_slot_ != nullptr;
      };
      preview_mutex_.Await(absl::Condition(&ready));
      if (preview_stop_) return;
      message = std::move(preview_slot_);
    }
    // Only for the job held now, on a session whose scheduler knows it (else dropped, like progress).
    {
      absl::MutexLock lock(&mutex_);
      if (held_ == nullptr || held_->job_id != message->preview().job_id() ||
          held_->attempt != message->preview().attempt()) {
        continue;
      }
    }
    SendOnCurrentSession(*message);
  }
}

void WorkerAgent::Drain() {
  std::shared_ptr<Session> session;
  {
    absl::MutexLock lock(&mutex_);
    if (draining_) return;
    draining_ = true;
    drain_deadline_ = absl::Now() + options_.drain_timeout;
    session = session_;
    Log("worker", "draining: no new jobs", held_ != nullptr ? absl::StrCat("; finishing job ", held_->job_id) : "");
    if (held_ == nullptr && session != nullptr) session->context.TryCancel();
  }
  if (session != nullptr) {
    v1::WorkerMessage message;
    message.mutable_draining();
    session->Write(message);
  }
}

void WorkerAgent::Stop() {
  absl::MutexLock lock(&mutex_);
  stopping_ = true;
  if (held_ != nullptr) held_->cancelled = true;
  if (session_ != nullptr) session_->context.TryCancel();
}

bool WorkerAgent::DoneLocked() const { return stopping_ || (draining_ && held_ == nullptr); }

v1::WorkerHello WorkerAgent::HelloLocked() const {
  v1::WorkerHello hello;
  hello.set_worker_id(options_.worker_id);
  hello.set_version("zoetrope 0.1");
  hello.set_draining(draining_);
  v1::WorkerCapabilities* capabilities = hello.mutable_capabilities();
  for (const std::string& model : capabilities_.models) capabilities->add_models(model);
  capabilities->set_backend(capabilities_.backend);
  capabilities->set_gpus(capabilities_.gpus);
  capabilities->set_sequence_parallel_degree(capabilities_.sequence_parallel_degree);
  capabilities->set_cfg_parallel_degree(capabilities_.cfg_parallel_degree);
  capabilities->set_price_per_gpu_hour(options_.price_per_gpu_hour);
  capabilities->set_gpu_kind(capabilities_.gpu_kind);
  capabilities->set_device_memory_bytes(capabilities_.device_memory_bytes);
  capabilities->set_resident_memory_bytes(capabilities_.memory.resident_bytes);
  capabilities->set_denoise_memory_bytes_per_token(capabilities_.memory.denoise_bytes_per_token);
  capabilities->set_decode_memory_bytes_per_pixel(capabilities_.memory.decode_bytes_per_pixel);
  capabilities->set_max_tokens(capabilities_.max_tokens);
  for (ResultFormat format : capabilities_.formats) capabilities->add_output_formats(ToProto(format));
  capabilities->set_device_name(capabilities_.device_name);
  if (held_ != nullptr) {
    hello.mutable_held_job()->set_job_id(held_->job_id);
    hello.mutable_held_job()->set_attempt(held_->attempt);
    hello.mutable_held_job()->set_finished(held_->finished);
  }
  return hello;
}

std::shared_ptr<WorkerAgent::Session> WorkerAgent::Connect() {
  auto session = std::make_shared<Session>();
  if (!options_.token.empty()) session->context.AddMetadata("authorization", absl::StrCat("Bearer ", options_.token));
  session->stream = stub_->Connect(&session->context);
  v1::WorkerMessage hello;
  {
    absl::MutexLock lock(&mutex_);
    if (DoneLocked()) return nullptr;
    *hello.mutable_hello() = HelloLocked();
    if (held_ != nullptr) {
      held_->confirmed = false;
      held_->delivered = false;
    }
  }
  if (!session->Write(hello)) {
    session->stream->Finish();
    return nullptr;
  }
  return session;
}

void WorkerAgent::Run() {
  absl::Duration backoff = options_.reconnect_initial_backoff;
  absl::BitGen random;
  while (true) {
    {
      absl::MutexLock lock(&mutex_);
      if (DoneLocked()) break;
    }
    std::shared_ptr<Session> session = Connect();
    bool welcomed = false;
    if (session != nullptr) {
      {
        absl::MutexLock lock(&mutex_);
        session_ = session;
        // Stop, or a drain with nothing held, may have come while connecting: their TryCancel missed it.
        if (DoneLocked()) session->context.TryCancel();
      }
      v1::SchedulerMessage first;
      if (session->stream->Read(&first)) {
        welcomed = first.has_welcome();
        if (welcomed) {
          absl::MutexLock lock(&mutex_);
          if (sessions_++ > 0 && metrics_ != nullptr) metrics_->Reconnected();
        }
        if (metrics_ != nullptr) metrics_->SetConnected(true);
        Log("worker", "connected to the scheduler as ", options_.worker_id);
        Handle(session, first);
        Serve(session);
      }
      {
        absl::MutexLock lock(&mutex_);
        if (session_ == session) session_ = nullptr;
        if (held_ != nullptr) held_->confirmed = false;
      }
      {
        absl::MutexLock lock(&session->write_mutex);
        session->broken = true;
        session->stream->WritesDone();
      }
      const grpc::Status status = session->stream->Finish();
      if (metrics_ != nullptr) metrics_->SetConnected(false);
      absl::MutexLock lock(&mutex_);
      if (DoneLocked()) break;
      if (welcomed) {
        Log("worker", "stream to the scheduler ended (", status.error_message().empty() ? "closed" : status.error_message(),
            "); reconnecting");
      } else {
        Log("worker", "cannot connect to the scheduler at ", options_.scheduler_address, ": ",
            status.error_message().empty() ? "no answer" : status.error_message(), "; retrying");
      }
    }
    if (welcomed) backoff = options_.reconnect_initial_backoff;
    // Exponential backoff with ±20 % jitter, so that a fleet does not reconnect in lockstep.
    const absl::Duration wait = backoff * absl::Uniform(random, 0.8, 1.2);
    backoff = std::min(backoff * 2, options_.reconnect_max_backoff);
    absl::MutexLock lock(&mutex_);
    mutex_.AwaitWithTimeout(absl::Condition(
                                +[](WorkerAgent* agent) ABSL_NO_THREAD_SAFETY_ANALYSIS { return agent->DoneLocked(); },
                                this),
                            wait);
  }
  Log("worker", stopping_ ? "stopped" : "drained: exiting");
}

void WorkerAgent::Serve(const std::shared_ptr<Session>& session) {
  v1::SchedulerMessage message;
  while (session->stream->Read(&message)) Handle(session, message);
}

void WorkerAgent::Handle(const std::shared_ptr<Session>& session, const v1::SchedulerMessage& message) {
  if (message.has_assignment()) {
    // The previous job's thread is done with its job (or stopping it); join it without holding the lock,
    // which that thread needs to finish.
    std::thread previous;
    {
      absl::MutexLock lock(&mutex_);
      if (held_ == nullptr) previous = std::move(job_thread_);
    }
    if (previous.joinable()) previous.join();
  }
  absl::MutexLock lock(&mutex_);
  switch (message.kind_case()) {
    case v1::SchedulerMessage::kWelcome:
      if (message.welcome().has_heartbeat_interval()) {
        heartbeat_interval_ = std::max(FromDurationProto(message.welcome().heartbeat_interval()),
                                       absl::Milliseconds(50));
      }
      break;
    case v1::SchedulerMessage::kAssignment:
      StartJob(session, message.assignment());
      break;
    case v1::SchedulerMessage::kCancel: {
      const v1::CancelAssignment& cancel = message.cancel();
      if (held_ == nullptr || held_->job_id != cancel.job_id() || held_->attempt != cancel.attempt()) break;
      // The scheduler knows we hold it and wants a completion for it.
      held_->confirmed = true;
      if (!held_->finished) {
        held_->cancel_code = cancel.code() != 0 ? cancel.code() : kCodeCancelled;
        held_->cancel_reason = cancel.reason();
        held_->cancelled = true;
        Log("worker", "job ", cancel.job_id(), ": cancel (", cancel.reason(), "): stopping at the next step");
      }
      break;
    }
    case v1::SchedulerMessage::kAdopted:
      if (held_ != nullptr && held_->job_id == message.adopted().job_id() &&
          held_->attempt == message.adopted().attempt()) {
        held_->confirmed = true;
        Log("worker", "job ", held_->job_id, ": the scheduler took it back after the reconnect");
      }
      break;
    case v1::SchedulerMessage::kCompletionAck:
      if (held_ != nullptr && held_->job_id == message.completion_ack().job_id() &&
          held_->attempt == message.completion_ack().attempt()) {
        DropHeldLocked();
      }
      break;
    case v1::SchedulerMessage::KIND_NOT_SET:
      break;
  }
}

void WorkerAgent::DropHeldLocked() {
  if (held_ == nullptr) return;
  if (!held_->finished) {
    // Told to drop a job still running (it ended elsewhere): stop it; the job thread cleans up.
    held_->cancelled = true;
  }
  if (!held_->result_path.empty()) {
    std::error_code error;
    std::filesystem::remove(held_->result_path, error);
  }
  held_ = nullptr;
  if (metrics_ != nullptr) metrics_->SetBusy(false);
  if (draining_ && session_ != nullptr) session_->context.TryCancel();
}

void WorkerAgent::StartJob(const std::shared_ptr<Session>& session, const v1::JobAssignment& assignment) {
  if (held_ != nullptr || draining_ || stopping_) {
    // Should not happen (the scheduler assigns only to idle workers): hand it straight back.
    v1::WorkerMessage message;
    v1::JobCompletion* completion = message.mutable_completion();
    completion->set_job_id(assignment.job_id());
    completion->set_attempt(assignment.attempt());
    completion->set_code(kCodeUnavailable);
    completion->set_message(absl::StrCat("worker ", options_.worker_id, " is busy or draining"));
    session->Write(message);
    return;
  }

  auto job = std::make_shared<HeldJob>();
  job->job_id = assignment.job_id();
  job->attempt = assignment.attempt();
  job->confirmed = true;
  const v1::SubmitJobRequest& request = assignment.request();
  job->model = request.model();
  GenerationRequest& generation = job->request;
  generation.job_id = assignment.job_id();
  generation.model = request.model();
  generation.prompt = request.prompt();
  generation.negative_prompt = request.negative_prompt();
  generation.width = request.width();
  generation.height = request.height();
  generation.frames = request.frames();
  generation.fps = request.fps();
  generation.steps = request.steps();
  generation.guidance = request.guidance();
  generation.shift = request.shift();
  generation.sampler = FromProto(request.sampler());
  generation.seed = request.seed();
  generation.attention = request.attention();
  generation.format = FromProto(request.output_format());
  // The worker's cap: previews no more often than every min_preview_every steps (0: none here).
  if (request.preview_every() > 0 && options_.min_preview_every > 0) {
    generation.preview_every = std::max(request.preview_every(), options_.min_preview_every);
  }
  generation.output_path = (std::filesystem::path(options_.work_directory) /
                            absl::StrCat(assignment.job_id(), ".", assignment.attempt()))
                               .string();
  held_ = job;
  if (metrics_ != nullptr) metrics_->SetBusy(true);
  Log("worker", "job ", job->job_id, " attempt ", job->attempt, ": ", request.width(), "×", request.height(), "×",
      request.frames(), ", ", request.steps(), " steps");
  job_thread_ = std::thread([this, job] { RunJob(job); });
}

void WorkerAgent::RunJob(std::shared_ptr<HeldJob> job) {
  StepReporter reporter(*this, *job);
  absl::StatusOr<JobOutput> output = runner_.Run(job->request, reporter, job->cancelled);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - job->started).count();

  v1::JobCompletion completion;
  completion.set_job_id(job->job_id);
  completion.set_attempt(job->attempt);
  std::string status_name;
  {
    absl::MutexLock lock(&mutex_);
    if (output.ok()) {
      completion.set_code(kCodeOk);
      completion.set_result_size_bytes(output->size_bytes);
      completion.set_result_sha256(Sha256OfFile(output->path));
      completion.set_media_type(output->media_type);
      completion.mutable_measurements()->set_denoise_seconds(output->denoise_seconds);
      completion.mutable_measurements()->set_attention_density(output->attention_density);
      if (metrics_ != nullptr) metrics_->AttentionDensity(job->model, output->attention_density);
      completion.mutable_measurements()->set_gpu_energy_joules(output->gpu_energy_joules);
      completion.mutable_measurements()->set_gpus(output->gpus);
      SetPhaseMeasurements(*output, *completion.mutable_measurements());
      if (metrics_ != nullptr) metrics_->JobMeasured(job->model, *output);
      job->result_path = output->path;
      status_name = "succeeded";
    } else if (absl::IsCancelled(output.status()) && job->cancelled) {
      completion.set_code(job->cancel_code);
      completion.set_message(job->cancel_reason.empty() ? std::string(output.status().message()) : job->cancel_reason);
      status_name = job->cancel_code == kCodeUnavailable ? "handed_back" : "cancelled";
    } else {
      completion.set_code(static_cast<int>(output.status().code()));
      completion.set_message(std::string(output.status().message()));
      status_name = "failed";
    }
    job->completion = completion;
    job->finished = true;
  }
  if (metrics_ != nullptr) metrics_->JobFinished(job->model, status_name, seconds);
  Log("worker", "job ", job->job_id, " ", status_name, " in ", absl::StrFormat("%.2f", seconds), " s",
      output.ok() ? "" : absl::StrCat(": ", output.status().message()));
  Deliver(job);
}

void WorkerAgent::Deliver(const std::shared_ptr<HeldJob>& job) {
  while (true) {
    std::shared_ptr<Session> session;
    {
      absl::MutexLock lock(&mutex_);
      // Wait for a session whose scheduler has confirmed the job, unless the job was dropped or we stop.
      auto ready = [this, &job]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
        return stopping_ || held_ != job || (session_ != nullptr && job->confirmed && !job->delivered);
      };
      while (!ready()) mutex_.Await(absl::Condition(&ready));
      if (stopping_ || held_ != job) return;
      session = session_;
      job->delivered = true;
    }
    if (Upload(session, *job)) {
      // Completion sent; the ack (or a later reconnect) ends the wait in the next round.
      absl::MutexLock lock(&mutex_);
      auto acknowledged_or_lost = [this, &job, &session]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
        return stopping_ || held_ != job || session_ != session;
      };
      mutex_.Await(absl::Condition(&acknowledged_or_lost));
      if (stopping_ || held_ != job) return;
    } else {
      absl::MutexLock lock(&mutex_);
      job->delivered = false;
      job->confirmed = false;
      auto next_session = [this, &session]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
        return stopping_ || session_ != session;
      };
      mutex_.Await(absl::Condition(&next_session));
    }
  }
}

bool WorkerAgent::Upload(const std::shared_ptr<Session>& session, const HeldJob& job) {
  const auto upload_start = std::chrono::steady_clock::now();
  if (job.completion.code() == kCodeOk) {
    v1::WorkerMessage phase;
    phase.mutable_progress()->set_job_id(job.job_id);
    phase.mutable_progress()->set_attempt(job.attempt);
    phase.mutable_progress()->set_phase(v1::PHASE_UPLOADING);
    if (!session->Write(phase)) return false;
    std::ifstream file(job.result_path, std::ios::binary);
    if (!file) {
      Log("worker", "job ", job.job_id, ": result ", job.result_path, " is gone");
      v1::WorkerMessage failed;
      *failed.mutable_completion() = job.completion;
      failed.mutable_completion()->set_code(static_cast<int>(absl::StatusCode::kDataLoss));
      failed.mutable_completion()->set_message(absl::StrCat("the worker lost its result file ", job.result_path));
      return session->Write(failed);
    }
    std::vector<char> buffer(kUploadChunkBytes);
    int64_t offset = 0;
    while (file) {
      file.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
      const std::streamsize count = file.gcount();
      if (count <= 0) break;
      v1::WorkerMessage chunk;
      v1::ResultUpload* upload = chunk.mutable_upload();
      upload->set_job_id(job.job_id);
      upload->set_attempt(job.attempt);
      upload->set_offset(offset);
      upload->set_data(buffer.data(), static_cast<size_t>(count));
      if (!session->Write(chunk)) return false;
      offset += count;
      if (metrics_ != nullptr) metrics_->Uploaded(static_cast<double>(count));
    }
  }
  v1::WorkerMessage completion;
  *completion.mutable_completion() = job.completion;
  if (job.completion.code() == kCodeOk) {
    const double upload_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - upload_start).count();
    completion.mutable_completion()->mutable_measurements()->set_upload_seconds(upload_seconds);
    if (metrics_ != nullptr) metrics_->UploadFinished(job.model, upload_seconds);
  }
  return session->Write(completion);
}

void WorkerAgent::SendOnCurrentSession(const v1::WorkerMessage& message) {
  std::shared_ptr<Session> session;
  {
    absl::MutexLock lock(&mutex_);
    if (held_ == nullptr || !held_->confirmed) return;
    session = session_;
  }
  if (session != nullptr) session->Write(message);
}

void WorkerAgent::HeartbeatLoop() {
  absl::MutexLock lock(&mutex_);
  while (!stopping_) {
    mutex_.AwaitWithTimeout(absl::Condition(&stopping_), heartbeat_interval_);
    if (stopping_) break;
    // A job still running when the drain time is up goes back to the scheduler.
    if (draining_ && absl::Now() >= drain_deadline_ && held_ != nullptr && !held_->finished && !held_->cancelled) {
      Log("worker", "drain timeout: handing job ", held_->job_id, " back to the scheduler");
      held_->cancel_code = kCodeUnavailable;
      held_->cancel_reason = "handed back by a draining worker";
      held_->cancelled = true;
    }
    if (draining_ && absl::Now() >= drain_deadline_ + absl::Seconds(30) && held_ != nullptr && session_ == nullptr) {
      // No scheduler to deliver to: give up on the job (the scheduler queues it again after its grace time).
      Log("worker", "drain timeout: no scheduler to deliver job ", held_->job_id, " to; dropping it");
      DropHeldLocked();
    }
    std::shared_ptr<Session> session = session_;
    v1::WorkerMessage heartbeat;
    if (held_ != nullptr) heartbeat.mutable_heartbeat()->set_job_id(held_->job_id);
    else heartbeat.mutable_heartbeat();
    if (session == nullptr) continue;
    mutex_.Unlock();
    session->Write(heartbeat);
    mutex_.Lock();
  }
}

}  // namespace zoetrope
