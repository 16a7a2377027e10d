#include "server/scheduler.h"

#include <algorithm>
#include <cmath>
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

namespace zoetrope::server {
namespace {

namespace v1 = zoetrope::v1;

constexpr int kCodeOk = 0;
constexpr int kCodeCancelled = static_cast<int>(absl::StatusCode::kCancelled);
constexpr int kCodeDeadlineExceeded = static_cast<int>(absl::StatusCode::kDeadlineExceeded);
constexpr int kCodeUnavailable = static_cast<int>(absl::StatusCode::kUnavailable);
constexpr int kCodeDataLoss = static_cast<int>(absl::StatusCode::kDataLoss);
constexpr int kDefaultPageSize = 50;
constexpr int kMaxPageSize = 1000;
constexpr const char* kPageTokenPrefix = "zoetrope.v1.list:";

std::string NewJobId() {
  static absl::Mutex mutex(absl::kConstInit);
  static absl::BitGen* generator = new absl::BitGen();
  absl::MutexLock lock(&mutex);
  return absl::StrFormat("job-%016x%08x", absl::Uniform<uint64_t>(*generator), absl::Uniform<uint32_t>(*generator));
}

void SetError(v1::Job& job, int code, const std::string& message) {
  v1::JobError* error = job.mutable_error();
  error->set_code(code);
  error->set_code_name(absl::StatusCodeToString(static_cast<absl::StatusCode>(code)));
  error->set_message(message);
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
  std::unique_ptr<Scheduler> scheduler(
      new Scheduler(std::move(options), metrics, std::move(*store), std::move(*results)));
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
      job.cancel_sent = job.job.cancel_requested();
      job.cancel_code = kCodeCancelled;
      ++running_by_model_[job.job.request().model()];
      PublishRunningLocked(job.job.request().model());
      ++running;
    }
  }
  next_result_sweep_ = now;
  if (metrics_ != nullptr) metrics_->SetResultStoreBytes(static_cast<double>(results_->stored_bytes()));
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
  const QueueKey key{-static_cast<int>(live.job.request().priority()), live.sequence, live.job.id()};
  int position = 1;
  for (const QueueKey& entry : queue_) {
    if (entry == key) return position;
    ++position;
  }
  return 0;
}

v1::Job Scheduler::SnapshotLocked(const LiveJob& live) const {
  v1::Job job = live.job;
  job.set_queue_position(QueuePositionLocked(live));
  return job;
}

absl::Status Scheduler::PersistLocked(const LiveJob& live) {
  absl::Status status = store_->Update(live.job, live.worker_losses);
  if (!status.ok()) Log("scheduler", "job ", live.job.id(), ": ", status.message());
  return status;
}

void Scheduler::QueueInsertLocked(LiveJob& live) {
  queue_.emplace(-static_cast<int>(live.job.request().priority()), live.sequence, live.job.id());
  const auto key = std::make_pair(live.job.request().model(), static_cast<int>(live.job.request().priority()));
  const int depth = ++queued_by_model_priority_[key];
  if (metrics_ != nullptr) {
    metrics_->SetQueueDepth(key.first, PriorityName(live.job.request().priority()), depth);
  }
}

void Scheduler::QueueEraseLocked(const LiveJob& live) {
  const size_t erased =
      queue_.erase(QueueKey{-static_cast<int>(live.job.request().priority()), live.sequence, live.job.id()});
  if (erased == 0) return;
  const auto key = std::make_pair(live.job.request().model(), static_cast<int>(live.job.request().priority()));
  const int depth = --queued_by_model_priority_[key];
  if (metrics_ != nullptr) {
    metrics_->SetQueueDepth(key.first, PriorityName(live.job.request().priority()), depth);
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
  if (live.watchers.empty()) return;
  *event.mutable_job() = SnapshotLocked(live);
  *event.mutable_time() = ToTimestamp(absl::Now());
  std::vector<std::shared_ptr<JobEventSink>> open;
  open.reserve(live.watchers.size());
  for (std::shared_ptr<JobEventSink>& sink : live.watchers) {
    if (!sink->IsOpen()) continue;
    sink->OnEvent(event, final);
    if (!final) open.push_back(std::move(sink));
  }
  live.watchers = std::move(open);
}

void Scheduler::EmitQueuedLocked(LiveJob& live) {
  const int position = QueuePositionLocked(live);
  live.last_sent_position = position;
  v1::JobEvent event;
  event.mutable_queued()->set_position(position);
  EmitLocked(live, std::move(event), false);
}

void Scheduler::UpdatePositionsLocked() {
  int position = 0;
  for (const QueueKey& key : queue_) {
    ++position;
    auto found = live_.find(std::get<2>(key));
    if (found == live_.end() || found->second.watchers.empty()) continue;
    if (found->second.last_sent_position != position) EmitQueuedLocked(found->second);
  }
}

// ---------------------------------------------------------------------------------------------------
// The public API

absl::StatusOr<v1::Job> Scheduler::Submit(const v1::SubmitJobRequest& request) {
  absl::MutexLock lock(&mutex_);
  std::string id;
  return SubmitLocked(request, &id);
}

absl::StatusOr<v1::Job> Scheduler::SubmitAndWatch(const v1::SubmitJobRequest& request,
                                                  std::shared_ptr<JobEventSink> sink) {
  absl::MutexLock lock(&mutex_);
  std::string id;
  absl::StatusOr<v1::Job> job = SubmitLocked(request, &id);
  if (!job.ok()) return job;
  if (absl::Status watched = WatchLocked(id, std::move(sink)); !watched.ok()) return watched;
  return job;
}

absl::StatusOr<v1::Job> Scheduler::SubmitLocked(const v1::SubmitJobRequest& request, std::string* id) {
  ValidationContext context;
  context.default_model = DefaultModelLocked();
  context.is_known_model = [this](const std::string& model) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return IsKnownModelLocked(model);
  };
  context.known_models = [this]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return KnownModelsLocked(); };
  context.max_tokens = options_.max_tokens;
  absl::StatusOr<v1::SubmitJobRequest> resolved = ValidateAndResolve(request, context);
  if (!resolved.ok()) return resolved.status();

  // Idempotency comes first: a retry of an accepted submission succeeds even when the queue is full or
  // the server drains.
  const std::string fingerprint = request.SerializeAsString();
  if (!request.client_request_id().empty()) {
    absl::StatusOr<std::optional<StoredJob>> existing = store_->GetByClientRequestId(request.client_request_id());
    if (!existing.ok()) return existing.status();
    if (existing->has_value()) {
      const StoredJob& stored = **existing;
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
  if (draining_) return absl::UnavailableError("the server is draining (shutting down): submit to another replica");
  if (static_cast<int>(queue_.size()) >= options_.queue_limit) {
    return absl::ResourceExhaustedError(absl::StrCat("the queue is full (", queue_.size(), " of ",
                                                     options_.queue_limit, " jobs queued): retry later"));
  }

  const absl::Time now = absl::Now();
  LiveJob live;
  live.job.set_id(NewJobId());
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
    v1::JobEvent event;
    *event.mutable_job() = job;
    *event.mutable_time() = ToTimestamp(absl::Now());
    event.mutable_finished()->set_state(job.state());
    *event.mutable_finished()->mutable_error() = job.error();
    *event.mutable_finished()->mutable_measurements() = job.measurements();
    sink->OnEvent(event, true);
    return absl::OkStatus();
  }
  LiveJob& live = found->second;
  v1::JobEvent event;
  *event.mutable_job() = SnapshotLocked(live);
  *event.mutable_time() = ToTimestamp(absl::Now());
  if (live.job.state() == v1::JOB_STATE_QUEUED) {
    event.mutable_queued()->set_position(event.job().queue_position());
    live.last_sent_position = event.job().queue_position();
  } else {
    event.mutable_started()->set_worker_id(live.job.worker_id());
    event.mutable_started()->set_attempt(live.job.attempt());
  }
  sink->OnEvent(event, false);
  live.watchers.push_back(std::move(sink));
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
  if (live.job.state() == v1::JOB_STATE_QUEUED) {
    return FinishLocked(live, v1::JOB_STATE_CANCELLED, kCodeCancelled, "cancelled by request while queued");
  }
  // Running: the worker stops at its next denoising step; without a worker there is nothing to wait for.
  if (live.connection == 0) {
    return FinishLocked(live, v1::JOB_STATE_CANCELLED, kCodeCancelled,
                        "cancelled by request while its worker was away");
  }
  if (!live.job.cancel_requested()) {
    live.job.set_cancel_requested(true);
    (void)PersistLocked(live);
  }
  if (!live.cancel_sent) {
    live.cancel_sent = true;
    live.cancel_code = kCodeCancelled;
    auto worker = workers_.find(live.connection);
    if (worker != workers_.end()) {
      v1::SchedulerMessage message;
      message.mutable_cancel()->set_job_id(id);
      message.mutable_cancel()->set_attempt(live.job.attempt());
      message.mutable_cancel()->set_code(kCodeCancelled);
      message.mutable_cancel()->set_reason("cancelled by request");
      worker->second.channel->Send(message);
    }
  }
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
  if (request.has_created_after()) query.created_after_unix_nanos = absl::ToUnixNanos(FromTimestamp(request.created_after()));
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
// Dispatch and the job lifecycle

bool Scheduler::CanRunLocked(const WorkerState& worker, const LiveJob& live) const {
  const v1::WorkerCapabilities& capabilities = worker.capabilities;
  const v1::SubmitJobRequest& request = live.job.request();
  if (std::find(capabilities.models().begin(), capabilities.models().end(), request.model()) ==
      capabilities.models().end()) {
    return false;
  }
  if (capabilities.max_tokens() > 0 && live.tokens > capabilities.max_tokens()) return false;
  if (request.output_format() != v1::OUTPUT_FORMAT_UNSPECIFIED &&
      std::find(capabilities.output_formats().begin(), capabilities.output_formats().end(),
                request.output_format()) == capabilities.output_formats().end()) {
    return false;
  }
  return true;
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
  bool assigned = false;
  for (WorkerState* worker : idle) {
    for (const QueueKey& key : queue_) {
      LiveJob& live = live_.at(std::get<2>(key));
      if (!CanRunLocked(*worker, live)) continue;
      AssignLocked(*worker, live);
      assigned = true;
      break;
    }
    if (queue_.empty()) break;
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

  v1::JobEvent event;
  event.mutable_started()->set_worker_id(worker.id);
  event.mutable_started()->set_attempt(live.job.attempt());
  EmitLocked(live, std::move(event), false);
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
    const double gpu_hours = measurements.gpus() * measurements.run_seconds() / 3600.0;
    const double kilowatt_hours = measurements.gpu_energy_joules() / 3.6e6;
    measurements.set_cost_usd(gpu_hours * options_.price_per_gpu_hour +
                              kilowatt_hours * options_.power_usage_effectiveness * options_.price_per_kwh);
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

  v1::JobEvent event;
  event.mutable_finished()->set_state(state);
  *event.mutable_finished()->mutable_error() = live.job.error();
  *event.mutable_finished()->mutable_measurements() = measurements;
  EmitLocked(live, std::move(event), true);
  v1::Job final_job = std::move(live.job);
  live_.erase(final_job.id());
  if (previous == v1::JOB_STATE_QUEUED) UpdatePositionsLocked();
  PublishWorkersLocked();
  return final_job;
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
    FinishLocked(live, v1::JOB_STATE_CANCELLED, kCodeCancelled, "cancelled by request; its worker went away");
    return;
  }
  live.orphaned_until = now + options_.worker_grace;
}

// ---------------------------------------------------------------------------------------------------
// Workers

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
    }
  }
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
      worker.job_id = live.job.id();
      answer.mutable_adopted()->set_job_id(held.job_id());
      answer.mutable_adopted()->set_attempt(held.attempt());
      worker.channel->Send(answer);
      if (live.cancel_sent) {
        v1::SchedulerMessage cancel;
        cancel.mutable_cancel()->set_job_id(held.job_id());
        cancel.mutable_cancel()->set_attempt(held.attempt());
        cancel.mutable_cancel()->set_code(live.cancel_code != 0 ? live.cancel_code : kCodeCancelled);
        cancel.mutable_cancel()->set_reason("cancelled while the worker was away");
        worker.channel->Send(cancel);
      }
      held_summary = absl::StrCat(", took back job ", held.job_id(), " attempt ", held.attempt());
    } else if (held.finished()) {
      answer.mutable_completion_ack()->set_job_id(held.job_id());
      answer.mutable_completion_ack()->set_attempt(held.attempt());
      worker.channel->Send(answer);
      held_summary = absl::StrCat(", told to drop finished job ", held.job_id(), " (no longer its)");
    } else {
      worker.stale_job = held.job_id();
      answer.mutable_cancel()->set_job_id(held.job_id());
      answer.mutable_cancel()->set_attempt(held.attempt());
      answer.mutable_cancel()->set_code(kCodeCancelled);
      answer.mutable_cancel()->set_reason("the job was given to another worker or ended while this worker was away");
      worker.channel->Send(answer);
      held_summary = absl::StrCat(", told to stop job ", held.job_id(), " (no longer its)");
    }
  }
  Log("scheduler", "worker ", worker.id, " connected (", absl::StrJoin(worker.capabilities.models(), ", "), ", ",
      worker.capabilities.backend(), ", max ", worker.capabilities.max_tokens(), " tokens)", held_summary);
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
    case v1::WorkerMessage::kUpload:
      HandleUploadLocked(worker, message.upload());
      break;
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

void Scheduler::HandleUploadLocked(WorkerState& worker, const v1::ResultUpload& upload) {
  LiveJob* live = FindCurrentAttemptLocked(worker, upload.job_id(), upload.attempt());
  if (live == nullptr) return;
  absl::Status appended = results_->Append(upload.job_id(), upload.attempt(), upload.offset(), upload.data());
  if (appended.ok()) return;
  // A broken upload cannot be repaired chunk by chunk: fail the job and tell the worker to stop.
  v1::SchedulerMessage cancel;
  cancel.mutable_cancel()->set_job_id(upload.job_id());
  cancel.mutable_cancel()->set_attempt(upload.attempt());
  cancel.mutable_cancel()->set_code(kCodeDataLoss);
  cancel.mutable_cancel()->set_reason(std::string(appended.message()));
  worker.channel->Send(cancel);
  worker.stale_job = upload.job_id();
  FinishLocked(*live, v1::JOB_STATE_FAILED, static_cast<int>(appended.code()),
               absl::StrCat("result upload: ", appended.message()));
  DispatchLocked();
}

void Scheduler::HandleCompletionLocked(WorkerState& worker, const v1::JobCompletion& completion) {
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
  if (completion.measurements().gpus() > 0) live->job.mutable_measurements()->set_gpus(completion.measurements().gpus());
  const int code = completion.code();
  if (code == kCodeOk) {
    absl::StatusOr<StoredResult> stored = results_->Commit(completion.job_id(), completion.attempt(),
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
    FinishLocked(*live, v1::JOB_STATE_CANCELLED, kCodeCancelled, "cancelled by request");
  } else {
    FinishLocked(*live, v1::JOB_STATE_FAILED, code, completion.message());
  }
  worker.channel->Send(ack);
  DispatchLocked();
}

void Scheduler::DetachWorker(uint64_t connection) {
  absl::MutexLock lock(&mutex_);
  DetachLocked(connection);
}

void Scheduler::DetachLocked(uint64_t connection) {
  auto found = workers_.find(connection);
  if (found == workers_.end()) return;
  WorkerState worker = std::move(found->second);
  workers_.erase(found);
  auto by_id = connection_of_worker_.find(worker.id);
  if (by_id != connection_of_worker_.end() && by_id->second == connection) connection_of_worker_.erase(by_id);
  const absl::Time now = absl::Now();
  std::string running;
  if (!worker.job_id.empty()) {
    auto live = live_.find(worker.job_id);
    if (live != live_.end() && live->second.connection == connection) {
      running = absl::StrCat("; job ", worker.job_id, " waits ", absl::FormatDuration(options_.worker_grace),
                             " for it to come back");
      OrphanJobLocked(live->second, now);
    }
  }
  Log("scheduler", "worker ", worker.id, " disconnected", running);
  PublishWorkersLocked();
}

// ---------------------------------------------------------------------------------------------------
// Drain and the timer

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

void Scheduler::TimerLoop() {
  absl::MutexLock lock(&mutex_);
  while (!stopping_) {
    mutex_.AwaitWithTimeout(absl::Condition(&stopping_), options_.tick_interval);
    if (stopping_) break;
    TickLocked(absl::Now());
  }
}

void Scheduler::TickLocked(absl::Time now) {
  // Deadlines and lost workers of live jobs. Collect first: finishing a job erases it from live_.
  std::vector<std::string> expired, overdue, lost;
  for (auto& [id, live] : live_) {
    if (live.job.state() == v1::JOB_STATE_QUEUED) {
      if (live.deadline <= now) expired.push_back(id);
    } else {
      if (live.deadline <= now && !(live.cancel_sent && live.cancel_code == kCodeDeadlineExceeded)) overdue.push_back(id);
      if (live.connection == 0 && live.orphaned_until <= now) lost.push_back(id);
    }
  }
  for (const std::string& id : expired) {
    auto found = live_.find(id);
    if (found != live_.end()) {
      FinishLocked(found->second, v1::JOB_STATE_EXPIRED, kCodeDeadlineExceeded,
                   "the deadline passed while the job was queued");
    }
  }
  for (const std::string& id : overdue) {
    auto found = live_.find(id);
    if (found == live_.end()) continue;
    LiveJob& live = found->second;
    auto worker = workers_.find(live.connection);
    if (live.connection == 0 || worker == workers_.end()) {
      FinishLocked(live, v1::JOB_STATE_FAILED, kCodeDeadlineExceeded, "the deadline passed while the job was running");
      continue;
    }
    live.cancel_sent = true;
    live.cancel_code = kCodeDeadlineExceeded;
    v1::SchedulerMessage cancel;
    cancel.mutable_cancel()->set_job_id(id);
    cancel.mutable_cancel()->set_attempt(live.job.attempt());
    cancel.mutable_cancel()->set_code(kCodeDeadlineExceeded);
    cancel.mutable_cancel()->set_reason("the deadline passed while the job was running");
    worker->second.channel->Send(cancel);
  }
  for (const std::string& id : lost) {
    auto found = live_.find(id);
    if (found == live_.end() || found->second.connection != 0) continue;
    LiveJob& live = found->second;
    if (live.job.cancel_requested()) {
      FinishLocked(live, v1::JOB_STATE_CANCELLED, kCodeCancelled, "cancelled by request; its worker did not come back");
      continue;
    }
    ++live.worker_losses;
    if (live.worker_losses >= options_.max_worker_losses) {
      FinishLocked(live, v1::JOB_STATE_FAILED, kCodeUnavailable,
                   absl::StrCat("the job's worker was lost ", live.worker_losses, " times (last: ",
                                live.job.worker_id(), ")"));
    } else {
      RequeueLocked(live, "worker_lost");
    }
  }

  // Workers that went silent.
  std::vector<uint64_t> silent;
  for (const auto& [connection, worker] : workers_) {
    if (now - worker.last_seen > options_.worker_timeout) silent.push_back(connection);
  }
  for (uint64_t connection : silent) {
    auto found = workers_.find(connection);
    Log("scheduler", "worker ", found->second.id, " silent for more than ", absl::FormatDuration(options_.worker_timeout),
        ": disconnecting it");
    found->second.channel->Close();
    DetachLocked(connection);
  }

  if (now >= next_result_sweep_) SweepResultsLocked(now);
  DispatchLocked();
}

void Scheduler::SweepResultsLocked(absl::Time now) {
  next_result_sweep_ = now + std::clamp(options_.result_retention / 10, absl::Milliseconds(200), absl::Minutes(1));
  absl::StatusOr<std::vector<StoredJob>> old =
      store_->ResultsEndedBefore(absl::ToUnixNanos(now - options_.result_retention), 1000);
  if (!old.ok()) {
    Log("scheduler", "result retention: ", old.status().message());
    return;
  }
  int deleted = 0;
  for (StoredJob& stored : *old) {
    if (absl::Status removed = results_->Delete(stored.job.id()); !removed.ok()) {
      Log("scheduler", "result retention: ", removed.message());
      continue;
    }
    stored.job.set_result_available(false);
    if (store_->Update(stored.job, stored.worker_losses).ok()) ++deleted;
  }
  if (deleted > 0 && metrics_ != nullptr) {
    metrics_->ResultsDeleted(deleted);
    metrics_->SetResultStoreBytes(static_cast<double>(results_->stored_bytes()));
  }
}

}  // namespace zoetrope::server
