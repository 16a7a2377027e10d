// Dispatch and the job lifecycle: which queued job goes to which idle worker, and every transition of a
// live job after acceptance (started, finished in any state, queued again, orphaned by its worker,
// cancelled). These are the only places that move a job between the queue, the running counts and the
// store, so they are kept together where their bookkeeping can be checked against each other.
#include <algorithm>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/time_util.h"
#include "server/scheduler.h"
#include "server/scheduler_internal.h"

namespace zoetrope::server {
namespace {

namespace v1 = zoetrope::v1;

void SetError(v1::Job& job, int code, const std::string& message) {
  v1::JobError* error = job.mutable_error();
  error->set_code(code);
  error->set_code_name(absl::StatusCodeToString(static_cast<absl::StatusCode>(code)));
  error->set_message(message);
}

}  // namespace

PeakMemoryModel MemoryModelOf(const v1::WorkerCapabilities& capabilities) {
  PeakMemoryModel model;
  model.resident_bytes = capabilities.resident_memory_bytes();
  model.denoise_bytes_per_token = capabilities.denoise_memory_bytes_per_token();
  model.decode_bytes_per_pixel = capabilities.decode_memory_bytes_per_pixel();
  model.sequence_parallel = std::max(1, capabilities.sequence_parallel_degree());
  return model;
}

std::string WhyCannotRun(const v1::WorkerCapabilities& capabilities, const v1::SubmitJobRequest& request) {
  if (std::find(capabilities.models().begin(), capabilities.models().end(), request.model()) ==
      capabilities.models().end()) {
    return absl::StrCat("it does not serve model \"", request.model(), "\"");
  }
  const int64_t tokens = LatentTokenCount(request.width(), request.height(), request.frames());
  if (capabilities.max_tokens() > 0 && tokens > capabilities.max_tokens()) {
    return absl::StrCat("the request's ", tokens, " latent tokens exceed its limit of ", capabilities.max_tokens());
  }
  if (request.output_format() != v1::OUTPUT_FORMAT_UNSPECIFIED &&
      std::find(capabilities.output_formats().begin(), capabilities.output_formats().end(), request.output_format()) ==
          capabilities.output_formats().end()) {
    return absl::StrCat("it does not write ", v1::OutputFormat_Name(request.output_format()));
  }
  const int64_t peak = EstimatePeakMemoryBytes(MemoryModelOf(capabilities), request.width(), request.height(),
                                               request.frames());
  if (capabilities.device_memory_bytes() > 0 && peak > capabilities.device_memory_bytes()) {
    return absl::StrFormat("the estimated peak memory %.2f GiB exceeds its device memory %.2f GiB",
                           static_cast<double>(peak) / (1 << 30),
                           static_cast<double>(capabilities.device_memory_bytes()) / (1 << 30));
  }
  return "";
}

bool Scheduler::CanRunLocked(const WorkerState& worker, const LiveJob& live) const {
  return WhyCannotRun(worker.capabilities, live.job.request()).empty();
}

absl::Status Scheduler::RunnableLocked(const v1::SubmitJobRequest& request, bool* known) const {
  *known = false;
  std::vector<std::string> reasons;
  auto consider = [&](const std::string& worker_id, const v1::WorkerCapabilities& capabilities) {
    if (std::find(capabilities.models().begin(), capabilities.models().end(), request.model()) ==
        capabilities.models().end()) {
      return false;
    }
    *known = true;
    const std::string why = WhyCannotRun(capabilities, request);
    if (why.empty()) return true;
    reasons.push_back(absl::StrCat("worker ", worker_id, ": ", why));
    return false;
  };
  for (const auto& [connection, worker] : workers_) {
    if (consider(worker.id, worker.capabilities)) return absl::OkStatus();
  }
  for (const auto& [worker_id, departed] : departed_workers_) {
    if (consider(worker_id, departed.first)) return absl::OkStatus();
  }
  if (!*known) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat("no worker serving model \"", request.model(),
                                                    "\" can run this job (", absl::StrJoin(reasons, "; "), ")"));
}

void Scheduler::DispatchLocked() {
  if (draining_ || stopping_ || queue_.empty()) return;
  std::vector<WorkerState*> idle;
  for (auto& [connection, worker] : workers_) {
    if (!worker.draining && worker.job_id.empty() && worker.stale_job.empty()) idle.push_back(&worker);
  }
  if (idle.empty()) return;
  std::sort(idle.begin(), idle.end(),
            [](const WorkerState* a, const WorkerState* b) { return a->idle_since < b->idle_since; });
  // Jobs in queue order; each takes the best-fitting idle worker that can run it: the smallest announced
  // token limit, then the fewest GPUs (so a multi-GPU group stays free for the jobs only it can run), then
  // the longest idle.
  auto better_fit = [](const WorkerState* a, const WorkerState* b) {
    const int64_t a_tokens = a->capabilities.max_tokens() > 0 ? a->capabilities.max_tokens() : std::numeric_limits<int64_t>::max();
    const int64_t b_tokens = b->capabilities.max_tokens() > 0 ? b->capabilities.max_tokens() : std::numeric_limits<int64_t>::max();
    if (a_tokens != b_tokens) return a_tokens < b_tokens;
    return a->capabilities.gpus() < b->capabilities.gpus();
  };
  bool assigned = false;
  std::vector<std::string> queued;
  for (const JobQueue::Entry& entry : queue_) queued.push_back(entry.job_id);
  for (const std::string& job_id : queued) {
    if (idle.empty()) break;
    LiveJob& live = live_.at(job_id);
    auto best = idle.end();
    for (auto candidate = idle.begin(); candidate != idle.end(); ++candidate) {
      if (!CanRunLocked(**candidate, live)) continue;
      if (best == idle.end() || better_fit(*candidate, *best)) best = candidate;
    }
    if (best == idle.end()) continue;
    AssignLocked(**best, live);
    idle.erase(best);
    assigned = true;
  }
  if (assigned) {
    UpdatePositionsLocked();
    PublishWorkersLocked();
  }
}

void Scheduler::AssignLocked(WorkerState& worker, LiveJob& live) {
  const absl::Time now = absl::Now();
  QueueEraseLocked(live);
  live.job.set_state(v1::JOB_STATE_RUNNING);
  live.job.set_attempt(live.job.attempt() + 1);
  live.job.set_worker_id(worker.id);
  *live.job.mutable_start_time() = ToTimestamp(now);
  live.job.clear_end_time();
  live.job.mutable_progress()->set_phase(v1::PHASE_LOADING);
  live.job.mutable_progress()->set_step(0);
  live.job.mutable_progress()->set_step_seconds(0);
  live.job.mutable_progress()->set_eta_seconds(0);
  const double queue_seconds = absl::ToDoubleSeconds(now - FromTimestamp(live.job.create_time()));
  live.job.mutable_measurements()->set_queue_seconds(queue_seconds);
  live.job.mutable_measurements()->set_gpus(worker.capabilities.gpus());
  live.job.mutable_measurements()->set_sequence_parallel_degree(std::max(1, worker.capabilities.sequence_parallel_degree()));
  live.job.mutable_measurements()->set_cfg_parallel_degree(std::max(1, worker.capabilities.cfg_parallel_degree()));
  live.configuration = ConfigurationLocked(live.job.request(), &worker);
  live.price_per_gpu_hour = worker.capabilities.price_per_gpu_hour();
  capabilities_by_model_[live.job.request().model()] = worker.capabilities;
  live.connection = worker.connection;
  live.orphaned_until = absl::InfiniteFuture();
  live.cancel_sent = false;
  live.step_seconds_sum = 0;
  live.steps_reported = 0;
  (void)PersistLocked(live);
  worker.job_id = live.job.id();
  ++running_by_model_[live.job.request().model()];
  PublishRunningLocked(live.job.request().model());
  if (metrics_ != nullptr) metrics_->JobStarted(live.job.request().model(), queue_seconds);

  v1::SchedulerMessage message;
  v1::JobAssignment* assignment = message.mutable_assignment();
  assignment->set_job_id(live.job.id());
  assignment->set_attempt(live.job.attempt());
  *assignment->mutable_request() = live.job.request();
  if (live.deadline != absl::InfiniteFuture()) {
    *assignment->mutable_time_left() = ToDurationProto(std::max(live.deadline - now, absl::ZeroDuration()));
  }
  worker.channel->Send(message);

  EmitLocked(live, StartedEvent(worker.id, live.job.attempt()), false);
}

v1::Job Scheduler::FinishLocked(LiveJob& live, v1::JobState state, int error_code, const std::string& error_message) {
  const absl::Time now = absl::Now();
  const v1::JobState previous = live.job.state();
  if (previous == v1::JOB_STATE_QUEUED) QueueEraseLocked(live);
  const bool ran = previous == v1::JOB_STATE_RUNNING;
  if (ran) {
    --running_by_model_[live.job.request().model()];
    PublishRunningLocked(live.job.request().model());
    auto worker = workers_.find(live.connection);
    if (worker != workers_.end() && worker->second.job_id == live.job.id()) {
      worker->second.job_id.clear();
      worker->second.idle_since = now;
    }
    results_->Abort(live.job.id());
  }
  live.job.set_state(state);
  *live.job.mutable_end_time() = ToTimestamp(now);
  live.job.set_queue_position(0);
  live.job.mutable_progress()->set_phase(v1::PHASE_DONE);
  live.job.mutable_progress()->set_eta_seconds(0);
  if (error_code != kCodeOk) SetError(live.job, error_code, error_message);
  v1::Measurements& measurements = *live.job.mutable_measurements();
  if (ran) {
    measurements.set_run_seconds(absl::ToDoubleSeconds(now - FromTimestamp(live.job.start_time())));
    CostLocked(live);
    AccountFinishedLocked(live, state);
  } else if (previous == v1::JOB_STATE_QUEUED) {
    measurements.set_queue_seconds(absl::ToDoubleSeconds(now - FromTimestamp(live.job.create_time())));
  }
  (void)PersistLocked(live);
  if (metrics_ != nullptr) {
    metrics_->JobFinished(live.job.request().model(), JobStateName(state), measurements.run_seconds(),
                          absl::ToDoubleSeconds(now - FromTimestamp(live.job.create_time())),
                          measurements.gpu_energy_joules(), measurements.cost_usd(), ran);
    if (state == v1::JOB_STATE_SUCCEEDED) metrics_->SetResultStoreBytes(static_cast<double>(results_->stored_bytes()));
  }
  Log("scheduler", "job ", live.job.id(), " ", JobStateName(state), " (attempt ", live.job.attempt(), ")",
      error_code != kCodeOk ? absl::StrCat(": ", error_message) : "");

  EmitLocked(live, FinishedEvent(live.job), true);
  v1::Job final_job = std::move(live.job);
  live_.erase(final_job.id());
  if (previous == v1::JOB_STATE_QUEUED) UpdatePositionsLocked();
  PublishWorkersLocked();
  return final_job;
}

v1::Job Scheduler::FinishCancelledByRequestLocked(LiveJob& live, absl::string_view circumstance) {
  return FinishLocked(live, v1::JOB_STATE_CANCELLED, kCodeCancelled,
                      absl::StrCat("cancelled by request", circumstance));
}

void Scheduler::CancelRunningLocked(LiveJob& live, int code, absl::string_view reason) {
  live.cancel_sent = true;
  live.cancel_code = code;
  auto worker = workers_.find(live.connection);
  if (worker != workers_.end()) SendCancel(*worker->second.channel, live.job.id(), live.job.attempt(), code, reason);
}

void Scheduler::RequeueLocked(LiveJob& live, const std::string& reason) {
  --running_by_model_[live.job.request().model()];
  PublishRunningLocked(live.job.request().model());
  auto worker = workers_.find(live.connection);
  if (worker != workers_.end() && worker->second.job_id == live.job.id()) {
    worker->second.job_id.clear();
    worker->second.idle_since = absl::Now();
  }
  results_->Abort(live.job.id());
  live.job.set_state(v1::JOB_STATE_QUEUED);
  live.job.clear_worker_id();
  live.job.clear_start_time();
  live.job.mutable_progress()->set_phase(v1::PHASE_QUEUED);
  live.job.mutable_progress()->set_step(0);
  live.job.mutable_progress()->set_step_seconds(0);
  live.job.mutable_progress()->set_eta_seconds(0);
  live.connection = 0;
  live.orphaned_until = absl::InfiniteFuture();
  live.cancel_sent = false;
  (void)PersistLocked(live);
  QueueInsertLocked(live);
  if (metrics_ != nullptr) metrics_->JobRequeued(live.job.request().model(), reason);
  Log("scheduler", "job ", live.job.id(), " queued again after attempt ", live.job.attempt(), " (", reason, ")");
  // Position 0 is never a real position: the update below tells its watchers where it stands now.
  live.last_sent_position = 0;
  UpdatePositionsLocked();
}

void Scheduler::OrphanJobLocked(LiveJob& live, absl::Time now) {
  live.connection = 0;
  if (live.job.cancel_requested()) {
    FinishCancelledByRequestLocked(live, "; its worker went away");
    return;
  }
  live.orphaned_until = now + options_.worker_grace;
}

}  // namespace zoetrope::server
