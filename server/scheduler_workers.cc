// The worker side of the scheduler (proto/zoetrope/v1/worker_service.proto): a worker attaching (and
// claiming a job it kept across a broken stream), its messages (progress, result chunks, completion,
// draining) and its detaching. Every message is checked against the job's current (attempt, connection)
// here, which is what fences a worker that comes back late; keeping the protocol in one file keeps that
// rule in one place.
#include <algorithm>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/time_util.h"
#include "server/scheduler.h"
#include "server/scheduler_internal.h"

namespace zoetrope::server {
namespace {

namespace v1 = zoetrope::v1;

}  // namespace

void SendCancel(WorkerChannel& channel, const std::string& job_id, int attempt, int code, absl::string_view reason) {
  v1::SchedulerMessage message;
  v1::CancelAssignment* cancel = message.mutable_cancel();
  cancel->set_job_id(job_id);
  cancel->set_attempt(attempt);
  cancel->set_code(code);
  cancel->set_reason(std::string(reason));
  channel.Send(message);
}

absl::StatusOr<uint64_t> Scheduler::AttachWorker(const v1::WorkerHello& hello, std::shared_ptr<WorkerChannel> channel) {
  if (hello.worker_id().empty()) return absl::InvalidArgumentError("hello.worker_id: is required");
  if (hello.capabilities().models().empty()) {
    return absl::InvalidArgumentError("hello.capabilities.models: a worker must announce at least one model");
  }
  absl::MutexLock lock(&mutex_);
  if (stopping_) return absl::UnavailableError("the scheduler is shutting down");
  const absl::Time now = absl::Now();
  auto previous = connection_of_worker_.find(hello.worker_id());
  if (previous != connection_of_worker_.end()) {
    // A reconnect whose old stream we have not seen end yet: the new stream wins.
    const uint64_t old_connection = previous->second;
    auto old = workers_.find(old_connection);
    if (old != workers_.end()) old->second.channel->Close();
    DetachLocked(old_connection);
  }
  for (const std::string& model : hello.capabilities().models()) {
    if (std::find(announced_models_.begin(), announced_models_.end(), model) == announced_models_.end()) {
      announced_models_.push_back(model);
      if (metrics_ != nullptr) metrics_->InitializeModel(model);
    }
  }
  departed_workers_.erase(hello.worker_id());
  const uint64_t connection = next_connection_++;
  WorkerState& worker = workers_[connection];
  worker.connection = connection;
  worker.id = hello.worker_id();
  worker.capabilities = hello.capabilities();
  worker.channel = std::move(channel);
  worker.draining = hello.draining();
  worker.last_seen = now;
  worker.idle_since = now;
  connection_of_worker_[worker.id] = connection;

  v1::SchedulerMessage welcome;
  *welcome.mutable_welcome()->mutable_heartbeat_interval() = ToDurationProto(options_.heartbeat_interval);
  worker.channel->Send(welcome);

  std::string held_summary;
  if (!hello.held_job().job_id().empty()) {
    const v1::HeldJob& held = hello.held_job();
    auto found = live_.find(held.job_id());
    v1::SchedulerMessage answer;
    if (found != live_.end() && found->second.job.state() == v1::JOB_STATE_RUNNING &&
        found->second.job.attempt() == held.attempt() && found->second.job.worker_id() == worker.id) {
      LiveJob& live = found->second;
      live.connection = connection;
      live.orphaned_until = absl::InfiniteFuture();
      live.interrupted_by_restart = false;
      worker.job_id = live.job.id();
      answer.mutable_adopted()->set_job_id(held.job_id());
      answer.mutable_adopted()->set_attempt(held.attempt());
      worker.channel->Send(answer);
      if (live.cancel_sent) {
        SendCancel(*worker.channel, held.job_id(), held.attempt(),
                   live.cancel_code != 0 ? live.cancel_code : kCodeCancelled, "cancelled while the worker was away");
      }
      held_summary = absl::StrCat(", took back job ", held.job_id(), " attempt ", held.attempt());
    } else if (held.finished()) {
      answer.mutable_completion_ack()->set_job_id(held.job_id());
      answer.mutable_completion_ack()->set_attempt(held.attempt());
      worker.channel->Send(answer);
      held_summary = absl::StrCat(", told to drop finished job ", held.job_id(), " (no longer its)");
    } else {
      worker.stale_job = held.job_id();
      SendCancel(*worker.channel, held.job_id(), held.attempt(), kCodeCancelled,
                 "the job was given to another worker or ended while this worker was away");
      held_summary = absl::StrCat(", told to stop job ", held.job_id(), " (no longer its)");
    }
  }
  Log("scheduler", "worker ", worker.id, " connected (", absl::StrJoin(worker.capabilities.models(), ", "), ", ",
      worker.capabilities.backend(), ", max ", worker.capabilities.max_tokens(), " tokens, device memory ",
      worker.capabilities.device_memory_bytes() >> 20, " MiB, peak memory ",
      worker.capabilities.resident_memory_bytes() >> 20, " MiB + ", worker.capabilities.denoise_memory_bytes_per_token(),
      " B/token or ", worker.capabilities.decode_memory_bytes_per_pixel(), " B/pixel)", held_summary);
  PublishWorkersLocked();
  DispatchLocked();
  return connection;
}

Scheduler::LiveJob* Scheduler::FindCurrentAttemptLocked(const WorkerState& worker, const std::string& job_id,
                                                        int attempt) {
  auto found = live_.find(job_id);
  if (found == live_.end()) return nullptr;
  LiveJob& live = found->second;
  if (live.job.state() != v1::JOB_STATE_RUNNING || live.job.attempt() != attempt ||
      live.connection != worker.connection) {
    return nullptr;
  }
  return &live;
}

void Scheduler::OnWorkerMessage(uint64_t connection, const v1::WorkerMessage& message) {
  // Result bytes and their commit are disk I/O: handled outside the global lock.
  if (message.kind_case() == v1::WorkerMessage::kUpload) return HandleUpload(connection, message.upload());
  if (message.kind_case() == v1::WorkerMessage::kCompletion && message.completion().code() == kCodeOk) {
    return HandleSucceededCompletion(connection, message.completion());
  }
  absl::MutexLock lock(&mutex_);
  auto found = workers_.find(connection);
  if (found == workers_.end()) return;  // a replaced or timed-out stream
  WorkerState& worker = found->second;
  worker.last_seen = absl::Now();
  switch (message.kind_case()) {
    case v1::WorkerMessage::kHeartbeat:
      break;
    case v1::WorkerMessage::kProgress:
      HandleProgressLocked(worker, message.progress());
      break;
    case v1::WorkerMessage::kPreview:
      HandlePreviewLocked(worker, message.preview());
      break;
    case v1::WorkerMessage::kUpload:
      break;  // handled above
    case v1::WorkerMessage::kCompletion:
      HandleCompletionLocked(worker, message.completion());
      break;
    case v1::WorkerMessage::kDraining:
      if (!worker.draining) Log("scheduler", "worker ", worker.id, " is draining");
      worker.draining = true;
      PublishWorkersLocked();
      break;
    case v1::WorkerMessage::kHello:
    case v1::WorkerMessage::KIND_NOT_SET:
      break;
  }
}

void Scheduler::HandleProgressLocked(WorkerState& worker, const v1::JobProgress& progress) {
  LiveJob* live = FindCurrentAttemptLocked(worker, progress.job_id(), progress.attempt());
  if (live == nullptr) return;
  v1::Progress& current = *live->job.mutable_progress();
  if (progress.phase() != v1::PHASE_UNSPECIFIED && progress.phase() != current.phase()) {
    current.set_phase(progress.phase());
    v1::JobEvent event;
    event.mutable_phase_changed()->set_phase(progress.phase());
    EmitLocked(*live, std::move(event), false);
  }
  if (progress.step() > 0) {
    live->step_seconds_sum += progress.step_seconds();
    ++live->steps_reported;
    const double mean = live->step_seconds_sum / live->steps_reported;
    current.set_step(progress.step());
    current.set_total_steps(progress.total_steps());
    current.set_step_seconds(progress.step_seconds());
    current.set_eta_seconds(mean * std::max(0, progress.total_steps() - progress.step()));
    if (metrics_ != nullptr) metrics_->StepCompleted(live->job.request().model(), progress.step_seconds());
    v1::JobEvent event;
    v1::JobEvent::StepCompleted* step = event.mutable_step();
    step->set_step(progress.step());
    step->set_total_steps(progress.total_steps());
    step->set_step_seconds(progress.step_seconds());
    step->set_eta_seconds(current.eta_seconds());
    EmitLocked(*live, std::move(event), false);
  }
}

void Scheduler::HandlePreviewLocked(WorkerState& worker, const v1::JobPreview& preview) {
  LiveJob* live = FindCurrentAttemptLocked(worker, preview.job_id(), preview.attempt());
  // Nobody watching: the preview goes nowhere (it is never kept for a later watcher or the store).
  if (live == nullptr || live->watchers.empty()) return;
  // The API promises at most 64 KiB per preview; a worker that sends more is out of contract.
  if (preview.preview().data().size() > kMaxPreviewBytes) return;
  v1::JobEvent event;
  *event.mutable_preview() = preview.preview();
  EmitLocked(*live, std::move(event), false);
}

bool Scheduler::AttemptOverLocked(const std::string& job_id, int attempt) const {
  auto found = live_.find(job_id);
  return found == live_.end() || found->second.job.state() != v1::JOB_STATE_RUNNING ||
         found->second.job.attempt() != attempt;
}

void Scheduler::HandleUpload(uint64_t connection, const v1::ResultUpload& upload) {
  ResultStore* results = nullptr;
  {
    absl::MutexLock lock(&mutex_);
    auto found = workers_.find(connection);
    if (found == workers_.end()) return;  // a replaced or timed-out stream
    found->second.last_seen = absl::Now();
    if (FindCurrentAttemptLocked(found->second, upload.job_id(), upload.attempt()) == nullptr) return;
    results = results_.get();  // never replaced while the scheduler lives
  }
  const absl::Status appended = results->Append(upload.job_id(), upload.attempt(), upload.offset(), upload.data());
  absl::MutexLock lock(&mutex_);
  auto found = workers_.find(connection);
  LiveJob* live =
      found == workers_.end() ? nullptr : FindCurrentAttemptLocked(found->second, upload.job_id(), upload.attempt());
  if (live == nullptr) {
    // The attempt ended while its chunk was written (cancelled, deadline, lost): drop what it left, unless
    // the attempt goes on on another stream of the same worker.
    if (AttemptOverLocked(upload.job_id(), upload.attempt())) results_->Abort(upload.job_id(), upload.attempt());
    return;
  }
  if (appended.ok()) return;
  // A broken upload cannot be repaired chunk by chunk: fail the job and tell the worker to stop.
  WorkerState& worker = found->second;
  SendCancel(*worker.channel, upload.job_id(), upload.attempt(), kCodeDataLoss, appended.message());
  worker.stale_job = upload.job_id();
  FinishLocked(*live, v1::JOB_STATE_FAILED, static_cast<int>(appended.code()),
               absl::StrCat("result upload: ", appended.message()));
  DispatchLocked();
}

void Scheduler::HandleSucceededCompletion(uint64_t connection, const v1::JobCompletion& completion) {
  ResultStore* results = nullptr;
  {
    absl::MutexLock lock(&mutex_);
    auto found = workers_.find(connection);
    if (found == workers_.end()) return;
    WorkerState& worker = found->second;
    worker.last_seen = absl::Now();
    if (FindCurrentAttemptLocked(worker, completion.job_id(), completion.attempt()) == nullptr) {
      HandleCompletionLocked(worker, completion);  // not ours any more: acknowledged, nothing committed
      return;
    }
    results = results_.get();
  }
  // Size and SHA-256 checked, fsync, rename, fsync of the folder.
  const absl::StatusOr<StoredResult> committed = results->Commit(completion.job_id(), completion.attempt(),
                                                                 completion.result_size_bytes(),
                                                                 completion.result_sha256());
  absl::MutexLock lock(&mutex_);
  auto found = workers_.find(connection);
  LiveJob* live = found == workers_.end()
                      ? nullptr
                      : FindCurrentAttemptLocked(found->second, completion.job_id(), completion.attempt());
  if (live == nullptr && committed.ok() && AttemptOverLocked(completion.job_id(), completion.attempt())) {
    // The attempt ended while its result was committed: unless the job succeeded (on another stream of the
    // same attempt), the file belongs to no job.
    absl::StatusOr<std::optional<StoredJob>> stored = store_->Get(completion.job_id());
    const bool succeeded = stored.ok() && stored->has_value() && (**stored).job.state() == v1::JOB_STATE_SUCCEEDED;
    if (!succeeded) (void)results_->Delete(completion.job_id());
  }
  if (found == workers_.end()) return;
  HandleCompletionLocked(found->second, completion, &committed);
}

void Scheduler::HandleCompletionLocked(WorkerState& worker, const v1::JobCompletion& completion,
                                       const absl::StatusOr<StoredResult>* committed) {
  // The worker may forget the job whatever happens below: the outcome is recorded or no longer matters.
  v1::SchedulerMessage ack;
  ack.mutable_completion_ack()->set_job_id(completion.job_id());
  ack.mutable_completion_ack()->set_attempt(completion.attempt());
  if (worker.stale_job == completion.job_id()) worker.stale_job.clear();

  LiveJob* live = FindCurrentAttemptLocked(worker, completion.job_id(), completion.attempt());
  if (live == nullptr) {
    worker.channel->Send(ack);
    PublishWorkersLocked();
    DispatchLocked();
    return;
  }
  live->job.mutable_measurements()->set_gpu_energy_joules(completion.measurements().gpu_energy_joules());
  live->job.mutable_measurements()->set_denoise_seconds(completion.measurements().denoise_seconds());
  live->job.mutable_measurements()->set_attention_density(completion.measurements().attention_density());
  CopyWorkerMeasurements(completion.measurements(), *live->job.mutable_measurements());
  if (completion.measurements().gpus() > 0) {
    live->job.mutable_measurements()->set_gpus(completion.measurements().gpus());
  }
  const int code = completion.code();
  if (code == kCodeOk) {
    const absl::StatusOr<StoredResult> stored =
        committed != nullptr ? *committed
                             : results_->Commit(completion.job_id(), completion.attempt(),
                                                completion.result_size_bytes(), completion.result_sha256());
    if (stored.ok()) {
      live->job.set_result_size_bytes(stored->size_bytes);
      live->job.set_result_sha256(stored->sha256);
      live->job.set_result_media_type(completion.media_type());
      live->job.set_result_available(true);
      FinishLocked(*live, v1::JOB_STATE_SUCCEEDED, kCodeOk, "");
    } else {
      FinishLocked(*live, v1::JOB_STATE_FAILED, static_cast<int>(stored.status().code()),
                   std::string(stored.status().message()));
    }
  } else if (code == kCodeCancelled) {
    FinishLocked(*live, v1::JOB_STATE_CANCELLED, kCodeCancelled,
                 completion.message().empty() ? "cancelled" : completion.message());
  } else if (code == kCodeUnavailable && !live->job.cancel_requested()) {
    // Handed back by a draining worker: not the job's fault, so no retry is used up.
    RequeueLocked(*live, "handed_back");
  } else if (code == kCodeUnavailable) {
    FinishCancelledByRequestLocked(*live, "");
  } else {
    FinishLocked(*live, v1::JOB_STATE_FAILED, code, completion.message());
  }
  worker.channel->Send(ack);
  DispatchLocked();
}

void Scheduler::DetachWorker(uint64_t connection) {
  absl::MutexLock lock(&mutex_);
  // While the scheduler stops it closes the streams itself: that is a restart, not a lost worker.
  DetachLocked(connection, /*stream_closed=*/!stopping_);
}

void Scheduler::DetachLocked(uint64_t connection, bool stream_closed) {
  auto found = workers_.find(connection);
  if (found == workers_.end()) return;
  WorkerState worker = std::move(found->second);
  workers_.erase(found);
  auto by_id = connection_of_worker_.find(worker.id);
  if (by_id != connection_of_worker_.end() && by_id->second == connection) connection_of_worker_.erase(by_id);
  const absl::Time now = absl::Now();
  // Remembered for admission while it may come back (a replaced stream is re-added by AttachWorker).
  departed_workers_[worker.id] = {worker.capabilities, now};
  std::string running;
  if (!worker.job_id.empty()) {
    auto live = live_.find(worker.job_id);
    if (live != live_.end() && live->second.connection == connection) {
      // (Both calls below may finish the job, which erases it from live_: `live` is not used after them.)
      if (stream_closed && !live->second.job.cancel_requested()) {
        running = absl::StrCat("; its stream closed, so job ", worker.job_id, " is lost at once");
        live->second.connection = 0;
        JobWorkerLostLocked(live->second);
      } else {
        running = absl::StrCat("; job ", worker.job_id, " waits ", absl::FormatDuration(options_.worker_grace),
                               " for it to come back");
        OrphanJobLocked(live->second, now);
      }
    }
  }
  Log("scheduler", "worker ", worker.id, " disconnected", running);
  PublishWorkersLocked();
}

}  // namespace zoetrope::server
