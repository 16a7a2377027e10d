// The Scheduler's creation and recovery, the public API (submit, watch, get, cancel, list, results, drain),
// and what every other part leans on: known models, job snapshots, persistence, queue membership with its
// gauges, and event emission. Dispatch, the worker protocol and the timer live in scheduler_dispatch.cc,
// scheduler_workers.cc and scheduler_timer.cc, so that each file reads as one responsibility.
#include "server/scheduler.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/time_util.h"
#include "server/request_validation.h"
#include "server/scheduler_internal.h"

namespace zoetrope::server {
namespace {

namespace v1 = zoetrope::v1;

constexpr int kDefaultPageSize = 50;
constexpr int kMaxPageSize = 1000;
constexpr const char* kPageTokenPrefix = "zoetrope.v1.list:";

std::string NewJobId() {
  static absl::Mutex mutex(absl::kConstInit);
  static absl::BitGen* generator = new absl::BitGen();
  absl::MutexLock lock(&mutex);
  return absl::StrFormat("job-%016x%08x", absl::Uniform<uint64_t>(*generator), absl::Uniform<uint32_t>(*generator));
}

std::string EncodePageToken(int64_t sequence) {
  return absl::WebSafeBase64Escape(absl::StrCat(kPageTokenPrefix, sequence));
}

absl::StatusOr<int64_t> DecodePageToken(const std::string& token) {
  std::string decoded;
  int64_t sequence = 0;
  bool valid = absl::WebSafeBase64Unescape(token, &decoded);
  absl::string_view rest = decoded;
  valid = valid && absl::ConsumePrefix(&rest, kPageTokenPrefix) && absl::SimpleAtoi(rest, &sequence);
  if (!valid || sequence <= 0) {
    return absl::InvalidArgumentError("page_token: must be the next_page_token of a previous ListJobs answer");
  }
  return sequence;
}

}  // namespace

std::string JobStateName(v1::JobState state) {
  switch (state) {
    case v1::JOB_STATE_QUEUED: return "queued";
    case v1::JOB_STATE_RUNNING: return "running";
    case v1::JOB_STATE_SUCCEEDED: return "succeeded";
    case v1::JOB_STATE_FAILED: return "failed";
    case v1::JOB_STATE_CANCELLED: return "cancelled";
    case v1::JOB_STATE_EXPIRED: return "expired";
    default: return "unspecified";
  }
}

std::string PriorityName(v1::Priority priority) {
  switch (priority) {
    case v1::PRIORITY_LOW: return "low";
    case v1::PRIORITY_HIGH: return "high";
    default: return "normal";
  }
}

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(SchedulerOptions options, SchedulerMetrics* metrics) {
  if (options.queue_limit < 0) return absl::InvalidArgumentError("queue_limit: must be ≥ 0");
  absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open(options.database_path, options.database_sync);
  if (!store.ok()) return store.status();
  absl::StatusOr<std::unique_ptr<ResultStore>> results = ResultStore::Open(options.results_directory);
  if (!results.ok()) return results.status();
  // The estimator's calibrations live in the same database (their own table).
  absl::StatusOr<std::unique_ptr<Estimator>> estimator = Estimator::Open(options.database_path);
  if (!estimator.ok()) return estimator.status();
  std::unique_ptr<Scheduler> scheduler(
      new Scheduler(std::move(options), metrics, std::move(*store), std::move(*results)));
  {
    absl::MutexLock lock(&scheduler->mutex_);
    scheduler->estimator_ = std::move(*estimator);
  }
  if (absl::Status recovered = scheduler->Recover(); !recovered.ok()) return recovered;
  scheduler->timer_ = std::thread([raw = scheduler.get()] { raw->TimerLoop(); });
  return scheduler;
}

Scheduler::Scheduler(SchedulerOptions options, SchedulerMetrics* metrics, std::unique_ptr<JobStore> store,
                     std::unique_ptr<ResultStore> results)
    : options_(std::move(options)), metrics_(metrics), store_(std::move(store)), results_(std::move(results)) {}

Scheduler::~Scheduler() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
    for (auto& [connection, worker] : workers_) worker.channel->Close();
  }
  if (timer_.joinable()) timer_.join();
}

absl::Status Scheduler::Recover() {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<std::vector<StoredJob>> unfinished = store_->LoadUnfinished();
  if (!unfinished.ok()) return unfinished.status();
  const absl::Time now = absl::Now();
  int queued = 0, running = 0;
  for (StoredJob& stored : *unfinished) {
    LiveJob live;
    live.job = std::move(stored.job);
    live.sequence = stored.sequence;
    live.worker_losses = stored.worker_losses;
    live.tokens = LatentTokens(live.job.request().width(), live.job.request().height(), live.job.request().frames());
    if (live.job.has_deadline_time()) live.deadline = FromTimestamp(live.job.deadline_time());
    const std::string id = live.job.id();
    auto [entry, inserted] = live_.emplace(id, std::move(live));
    LiveJob& job = entry->second;
    if (job.job.state() == v1::JOB_STATE_QUEUED) {
      QueueInsertLocked(job);
      ++queued;
    } else {
      // Its worker may still be running it: give it the grace time to reconnect and claim it.
      job.connection = 0;
      job.orphaned_until = now + options_.worker_grace;
      job.interrupted_by_restart = true;
      job.cancel_sent = job.job.cancel_requested();
      job.cancel_code = kCodeCancelled;
      ++running_by_model_[job.job.request().model()];
      PublishRunningLocked(job.job.request().model());
      ++running;
    }
  }
  next_result_sweep_ = now;
  if (metrics_ != nullptr) {
    metrics_->SetResultStoreBytes(static_cast<double>(results_->stored_bytes()));
    for (const std::string& model : options_.models) metrics_->InitializeModel(model);
  }
  Log("scheduler", "job store ", store_->path(), ": recovered ", queued, " queued and ", running,
      " running jobs; results in ", results_->directory());
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------------
// Models

bool Scheduler::IsKnownModelLocked(const std::string& model) const {
  return std::find(options_.models.begin(), options_.models.end(), model) != options_.models.end() ||
         std::find(announced_models_.begin(), announced_models_.end(), model) != announced_models_.end();
}

std::string Scheduler::KnownModelsLocked() const {
  std::vector<std::string> names = options_.models;
  for (const std::string& model : announced_models_) {
    if (std::find(names.begin(), names.end(), model) == names.end()) names.push_back(model);
  }
  return names.empty() ? "none yet: no worker has connected" : absl::StrJoin(names, ", ");
}

std::string Scheduler::DefaultModelLocked() const {
  if (!options_.default_model.empty()) return options_.default_model;
  if (!options_.models.empty()) return options_.models.front();
  if (!announced_models_.empty()) return announced_models_.front();
  return "";
}

// ---------------------------------------------------------------------------------------------------
// Snapshots, persistence, queue bookkeeping

int Scheduler::QueuePositionLocked(const LiveJob& live) const {
  if (live.job.state() != v1::JOB_STATE_QUEUED) return 0;
  return queue_.PositionOf(live.job.id(), live.job.request().priority(), live.sequence);
}

v1::Job Scheduler::SnapshotLocked(const LiveJob& live) const {
  v1::Job job = live.job;
  job.set_queue_position(QueuePositionLocked(live));
  return job;
}

absl::Status Scheduler::PersistLocked(const LiveJob& live) {
  absl::Status status = store_->Update(live.job, live.worker_losses);
  if (status.ok()) {
    unpersisted_.erase(live.job.id());
    return status;
  }
  // Memory has moved on but the store has not: keep the state and write it again each tick (a restart
  // before then would still see the older state, so SubmitJob refuses work until it is written).
  Log("scheduler", "job ", live.job.id(), ": writing its state failed (retrying every tick): ", status.message());
  unpersisted_[live.job.id()] = {live.job, live.worker_losses};
  return status;
}

void Scheduler::QueueInsertLocked(LiveJob& live) {
  const v1::SubmitJobRequest& request = live.job.request();
  const int depth = queue_.Insert(live.job.id(), request.model(), request.priority(), live.sequence);
  if (metrics_ != nullptr) metrics_->SetQueueDepth(request.model(), PriorityName(request.priority()), depth);
}

void Scheduler::QueueEraseLocked(const LiveJob& live) {
  const v1::SubmitJobRequest& request = live.job.request();
  const std::optional<int> depth = queue_.Erase(live.job.id(), request.model(), request.priority(), live.sequence);
  if (depth.has_value() && metrics_ != nullptr) {
    metrics_->SetQueueDepth(request.model(), PriorityName(request.priority()), *depth);
  }
}

void Scheduler::PublishRunningLocked(const std::string& model) {
  if (metrics_ != nullptr) metrics_->SetRunning(model, running_by_model_[model]);
}

void Scheduler::PublishWorkersLocked() {
  if (metrics_ == nullptr) return;
  int idle = 0, busy = 0, draining = 0;
  for (const auto& [connection, worker] : workers_) {
    if (worker.draining) {
      ++draining;
    } else if (!worker.job_id.empty() || !worker.stale_job.empty()) {
      ++busy;
    } else {
      ++idle;
    }
  }
  metrics_->SetWorkers(idle, busy, draining);
}

// ---------------------------------------------------------------------------------------------------
// Events

void Scheduler::EmitLocked(LiveJob& live, v1::JobEvent event, bool final) {
  // Without watchers the snapshot would be built for nobody.
  if (live.watchers.empty()) return;
  *event.mutable_job() = SnapshotLocked(live);
  *event.mutable_time() = ToTimestamp(absl::Now());
  live.watchers.Publish(event, final);
}

void Scheduler::EmitQueuedLocked(LiveJob& live) {
  const int position = QueuePositionLocked(live);
  live.last_sent_position = position;
  EmitLocked(live, QueuedEvent(position), false);
}

void Scheduler::UpdatePositionsLocked() {
  int position = 0;
  for (const JobQueue::Entry& entry : queue_) {
    ++position;
    auto found = live_.find(entry.job_id);
    if (found == live_.end() || found->second.watchers.empty()) continue;
    if (found->second.last_sent_position != position) EmitQueuedLocked(found->second);
  }
}

// ---------------------------------------------------------------------------------------------------
// The public API

absl::StatusOr<v1::Job> Scheduler::Submit(const v1::SubmitJobRequest& request, const std::string& tenant) {
  absl::MutexLock lock(&mutex_);
  std::string id;
  return SubmitLocked(request, &id, tenant);
}

absl::StatusOr<v1::Job> Scheduler::SubmitAndWatch(const v1::SubmitJobRequest& request,
                                                  std::shared_ptr<JobEventSink> sink, const std::string& tenant) {
  absl::MutexLock lock(&mutex_);
  std::string id;
  absl::StatusOr<v1::Job> job = SubmitLocked(request, &id, tenant);
  if (!job.ok()) return job;
  if (absl::Status watched = WatchLocked(id, std::move(sink)); !watched.ok()) return watched;
  return job;
}

absl::StatusOr<v1::Job> Scheduler::SubmitLocked(const v1::SubmitJobRequest& request, std::string* id,
                                                const std::string& tenant) {
  // Idempotency comes first, before validation: a retry of an accepted submission succeeds even when the
  // queue is full, the server drains, or (right after a restart) no worker has announced its model yet.
  const std::string fingerprint = DeterministicFingerprint(request);
  if (!request.client_request_id().empty()) {
    absl::StatusOr<std::optional<StoredJob>> existing = store_->GetByClientRequestId(request.client_request_id());
    if (!existing.ok()) return existing.status();
    if (existing->has_value()) {
      const StoredJob& stored = **existing;
      if (stored.job.tenant() != tenant) {
        // Another tenant's key: say nothing about its job (docs/security.md).
        return absl::AlreadyExistsError(absl::StrCat("client_request_id: \"", request.client_request_id(),
                                                     "\" is taken: choose another"));
      }
      if (stored.request_fingerprint != fingerprint) {
        return absl::AlreadyExistsError(absl::StrCat("client_request_id: \"", request.client_request_id(),
                                                     "\" was already used by job ", stored.job.id(),
                                                     " with a different request"));
      }
      *id = stored.job.id();
      auto live = live_.find(stored.job.id());
      return live != live_.end() ? SnapshotLocked(live->second) : stored.job;
    }
  }

  ValidationContext context;
  context.default_model = DefaultModelLocked();
  context.is_known_model = [this](const std::string& model) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return IsKnownModelLocked(model);
  };
  context.known_models = [this]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return KnownModelsLocked(); };
  context.max_tokens = options_.max_tokens;
  // With --models configured the operator named what is served; without, an unknown model is only
  // "not yet" while no worker is connected.
  context.workers_connected = !workers_.empty() || !options_.models.empty();
  absl::StatusOr<v1::SubmitJobRequest> resolved = ValidateAndResolve(request, context);
  if (!resolved.ok()) return resolved.status();
  // Admission: a job that no known worker for its model can run (tokens, format, estimated peak memory)
  // would wait forever or crash the worker that takes it; refuse it now.
  bool workers_known = false;
  if (absl::Status runnable = RunnableLocked(*resolved, &workers_known); !runnable.ok()) return runnable;
  if (!unpersisted_.empty()) {
    return absl::UnavailableError(absl::StrCat("the job store failed to record ", unpersisted_.size(),
                                               " job state change(s) and is retrying: submit again later"));
  }
  if (draining_) return absl::UnavailableError("the server is draining (shutting down): submit to another replica");
  if (static_cast<int>(queue_.size()) >= options_.queue_limit) {
    return absl::ResourceExhaustedError(absl::StrCat("the queue is full (", queue_.size(), " of ",
                                                     options_.queue_limit, " jobs queued): retry later"));
  }

  const absl::Time now = absl::Now();
  LiveJob live;
  live.job.set_id(NewJobId());
  live.job.set_tenant(tenant);
  *live.job.mutable_request() = *resolved;
  live.job.set_state(v1::JOB_STATE_QUEUED);
  live.job.mutable_progress()->set_phase(v1::PHASE_QUEUED);
  live.job.mutable_progress()->set_total_steps(resolved->steps());
  *live.job.mutable_create_time() = ToTimestamp(now);
  if (resolved->has_deadline()) {
    live.deadline = now + FromDurationProto(resolved->deadline());
    *live.job.mutable_deadline_time() = ToTimestamp(live.deadline);
  }
  live.tokens = LatentTokens(resolved->width(), resolved->height(), resolved->frames());
  EstimateLocked(live);
  absl::StatusOr<int64_t> sequence = store_->Insert(live.job, fingerprint);
  if (!sequence.ok()) {
    if (absl::IsAlreadyExists(sequence.status())) {
      return absl::AbortedError("job id collision or concurrent submission with the same client_request_id: retry");
    }
    return sequence.status();
  }
  live.sequence = *sequence;
  *id = live.job.id();
  auto [entry, inserted] = live_.emplace(live.job.id(), std::move(live));
  LiveJob& job = entry->second;
  QueueInsertLocked(job);
  if (metrics_ != nullptr) {
    metrics_->JobSubmitted(job.job.request().model(), PriorityName(job.job.request().priority()));
  }
  v1::Job accepted = SnapshotLocked(job);
  DispatchLocked();
  return accepted;
}

absl::StatusOr<v1::Job> Scheduler::GetJob(const std::string& id) {
  absl::MutexLock lock(&mutex_);
  auto live = live_.find(id);
  if (live != live_.end()) return SnapshotLocked(live->second);
  absl::StatusOr<std::optional<StoredJob>> stored = store_->Get(id);
  if (!stored.ok()) return stored.status();
  if (!stored->has_value()) return absl::NotFoundError(absl::StrCat("id: no job \"", id, "\""));
  return (*stored)->job;
}

absl::Status Scheduler::Watch(const std::string& id, std::shared_ptr<JobEventSink> sink) {
  absl::MutexLock lock(&mutex_);
  return WatchLocked(id, std::move(sink));
}

absl::Status Scheduler::WatchLocked(const std::string& id, std::shared_ptr<JobEventSink> sink) {
  auto found = live_.find(id);
  if (found == live_.end()) {
    absl::StatusOr<std::optional<StoredJob>> stored = store_->Get(id);
    if (!stored.ok()) return stored.status();
    if (!stored->has_value()) return absl::NotFoundError(absl::StrCat("id: no job \"", id, "\""));
    const v1::Job& job = (*stored)->job;
    v1::JobEvent event = FinishedEvent(job);
    *event.mutable_job() = job;
    *event.mutable_time() = ToTimestamp(absl::Now());
    sink->OnEvent(event, true);
    return absl::OkStatus();
  }
  LiveJob& live = found->second;
  v1::Job snapshot = SnapshotLocked(live);
  v1::JobEvent event;
  if (live.job.state() == v1::JOB_STATE_QUEUED) {
    event = QueuedEvent(snapshot.queue_position());
    live.last_sent_position = snapshot.queue_position();
  } else {
    event = StartedEvent(live.job.worker_id(), live.job.attempt());
  }
  *event.mutable_job() = std::move(snapshot);
  *event.mutable_time() = ToTimestamp(absl::Now());
  sink->OnEvent(event, false);
  live.watchers.Add(std::move(sink));
  return absl::OkStatus();
}

absl::StatusOr<v1::Job> Scheduler::CancelJob(const std::string& id) {
  absl::MutexLock lock(&mutex_);
  auto found = live_.find(id);
  if (found == live_.end()) {
    absl::StatusOr<std::optional<StoredJob>> stored = store_->Get(id);
    if (!stored.ok()) return stored.status();
    if (!stored->has_value()) return absl::NotFoundError(absl::StrCat("id: no job \"", id, "\""));
    return absl::FailedPreconditionError(absl::StrCat("job ", id, " already finished (",
                                                      JobStateName((*stored)->job.state()), "): nothing to cancel"));
  }
  LiveJob& live = found->second;
  if (live.job.state() == v1::JOB_STATE_QUEUED) return FinishCancelledByRequestLocked(live, " while queued");
  // Running: the worker stops at its next denoising step; without a worker there is nothing to wait for.
  if (live.connection == 0) return FinishCancelledByRequestLocked(live, " while its worker was away");
  if (!live.job.cancel_requested()) {
    live.job.set_cancel_requested(true);
    (void)PersistLocked(live);
  }
  if (!live.cancel_sent) CancelRunningLocked(live, kCodeCancelled, "cancelled by request");
  return SnapshotLocked(live);
}

absl::StatusOr<v1::ListJobsResponse> Scheduler::ListJobs(const v1::ListJobsRequest& request) {
  if (request.page_size() < 0 || request.page_size() > kMaxPageSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size: must be in [0, ", kMaxPageSize, "] (got ", request.page_size(), ")"));
  }
  JobListQuery query;
  for (int state : request.states()) {
    if (!v1::JobState_IsValid(state) || state == v1::JOB_STATE_UNSPECIFIED) {
      return absl::InvalidArgumentError(absl::StrCat("states: unknown job state ", state));
    }
    query.states.push_back(state);
  }
  if (!IsValidUtf8(request.model())) return absl::InvalidArgumentError("model: must be valid UTF-8");
  query.model = request.model();
  if (request.has_created_after()) {
    query.created_after_unix_nanos = absl::ToUnixNanos(FromTimestamp(request.created_after()));
  }
  if (request.has_created_before()) {
    query.created_before_unix_nanos = absl::ToUnixNanos(FromTimestamp(request.created_before()));
  }
  if (!request.page_token().empty()) {
    absl::StatusOr<int64_t> sequence = DecodePageToken(request.page_token());
    if (!sequence.ok()) return sequence.status();
    query.before_sequence = *sequence;
  }
  const int page_size = request.page_size() == 0 ? kDefaultPageSize : request.page_size();
  query.limit = page_size + 1;

  absl::MutexLock lock(&mutex_);
  absl::StatusOr<std::vector<StoredJob>> rows = store_->List(query);
  if (!rows.ok()) return rows.status();
  v1::ListJobsResponse response;
  const bool more = static_cast<int>(rows->size()) > page_size;
  if (more) rows->resize(page_size);
  for (StoredJob& row : *rows) {
    auto live = live_.find(row.job.id());
    *response.add_jobs() = live != live_.end() ? SnapshotLocked(live->second) : std::move(row.job);
  }
  if (more && !rows->empty()) response.set_next_page_token(EncodePageToken(rows->back().sequence));
  return response;
}

absl::StatusOr<ResultLocation> Scheduler::GetResult(const std::string& id) {
  absl::StatusOr<v1::Job> job = GetJob(id);
  if (!job.ok()) return job.status();
  if (job->state() != v1::JOB_STATE_SUCCEEDED) {
    return absl::FailedPreconditionError(absl::StrCat("job ", id, " is ", JobStateName(job->state()),
                                                      ": only a succeeded job has a result"));
  }
  if (!job->result_available()) {
    return absl::NotFoundError(absl::StrCat("the result of job ", id, " was deleted after the retention time"));
  }
  absl::MutexLock lock(&mutex_);
  ResultLocation location;
  location.path = results_->PathOf(id);
  location.size_bytes = job->result_size_bytes();
  location.sha256 = job->result_sha256();
  location.media_type = job->result_media_type();
  return location;
}

// ---------------------------------------------------------------------------------------------------
// Drain

void Scheduler::BeginDrain() {
  absl::MutexLock lock(&mutex_);
  if (draining_) return;
  draining_ = true;
  if (metrics_ != nullptr) metrics_->SetDraining(true);
  int running = 0;
  for (const auto& [model, count] : running_by_model_) running += count;
  Log("scheduler", "draining: no new jobs are accepted or started; ", running, " running, ", queue_.size(),
      " queued (they stay queued in the store)");
}

bool Scheduler::draining() const {
  absl::MutexLock lock(&mutex_);
  return draining_;
}

int Scheduler::running_jobs() const {
  absl::MutexLock lock(&mutex_);
  int running = 0;
  for (const auto& [model, count] : running_by_model_) running += count;
  return running;
}

int Scheduler::queued_jobs() const {
  absl::MutexLock lock(&mutex_);
  return static_cast<int>(queue_.size());
}

int Scheduler::connected_workers() const {
  absl::MutexLock lock(&mutex_);
  return static_cast<int>(workers_.size());
}

}  // namespace zoetrope::server
