// The scheduler: the job lifecycle, the priority queue, dispatch to workers, and job events.
//
// State lives in two places. The JobStore (SQLite) holds every job and is written at every state change
// (accepted, started, queued again, finished, cancel requested), so a restart loses nothing but live
// progress. Memory holds the live jobs (QUEUED and RUNNING) with their progress, the queue, the
// connected workers and the event subscribers.
//
// Queue: priority classes (HIGH before NORMAL before LOW), FIFO inside a class by acceptance order, at
// most `queue_limit` queued jobs. Dispatch gives the first queued job a worker can run (model, token
// budget, output format) to an idle worker, longest idle first.
//
// Workers: see proto/zoetrope/v1/worker_service.proto for the protocol. A job whose worker's stream
// closed is lost at once; one whose worker went silent (or whose stream a newer one replaced) stays
// RUNNING for `worker_grace` (the worker may reconnect and keep it). A lost job is queued again, or FAILED
// after `max_worker_losses` losses. After a restart every RUNNING job gets the grace, and a job whose
// worker does not come back is queued again without a loss counted (the restart is not the job's fault).
// A state write the store fails (disk full, busy database) is kept and retried every tick; until it
// succeeds SubmitJob answers UNAVAILABLE (fail closed).
//
// Thread-safe: one mutex guards everything. Job store writes happen under it (a submit waits for its own
// commit); result files do not: uploaded chunks and the commit of a result (write, fsync, rename) run
// outside it, checked against the job's current attempt before and after, so a slow disk stalls only the
// worker that uploads. Event sinks are called under it and must not block or call back into the scheduler.
//
// The queue's order is JobQueue's (server/job_queue.h), event delivery JobWatchers' (server/job_events.h).
// The member functions are split by responsibility: scheduler.cc (creation, recovery, the public API,
// snapshots and events), scheduler_dispatch.cc (dispatch and the job lifecycle), scheduler_workers.cc (the
// worker protocol), scheduler_timer.cc (ticks: deadlines, silent workers, grace times, result retention).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/estimator.h"
#include "server/job_events.h"
#include "server/job_queue.h"
#include "server/job_store.h"
#include "server/result_store.h"
#include "server/scheduler_metrics.h"
#include "zoetrope/v1/video_service.pb.h"
#include "zoetrope/v1/worker_service.pb.h"

namespace zoetrope::server {

struct SchedulerOptions {
  std::string database_path = "zoetrope-data/jobs.db";
  JobStore::Sync database_sync = JobStore::Sync::kFull;
  std::string results_directory = "zoetrope-data/results";
  // Most jobs that may wait in the queue; SubmitJob answers RESOURCE_EXHAUSTED beyond it.
  int queue_limit = 1000;
  // Models accepted in requests besides those connected workers announce.
  std::vector<std::string> models;
  // Model of requests that name none; empty: the first of `models`, else the first a worker announced.
  std::string default_model;
  // Largest latent token count a request may ask for (0: no limit besides the workers').
  int64_t max_tokens = 75600;
  absl::Duration heartbeat_interval = absl::Seconds(1);
  // A worker silent this long is disconnected.
  absl::Duration worker_timeout = absl::Seconds(10);
  // How long a running job waits for its lost worker to come back before it is queued again.
  absl::Duration worker_grace = absl::Seconds(10);
  // Worker losses after which a job FAILS instead of being queued again.
  int max_worker_losses = 2;
  // Admission (docs/service.md): a job that no worker serving its model can run (token limit, output
  // format, estimated peak memory over the device's) is FAILED_PRECONDITION at submit when such workers are
  // connected or were within this time; a queued job that none of them can run for this long fails with
  // FAILED_PRECONDITION. Without any worker for the model a job waits (workers may still be starting).
  absl::Duration unrunnable_grace = absl::Minutes(10);
  absl::Duration result_retention = absl::Hours(24);
  // Cost = GPUs × wall time × price per GPU-hour (+ energy × PUE × price per kWh).
  double price_per_gpu_hour = 0.0;
  double price_per_kwh = 0.0;
  double power_usage_effectiveness = 1.0;
  // How often deadlines, worker silence, grace times and retention are checked.
  absl::Duration tick_interval = absl::Milliseconds(50);
};

// How the scheduler sends a worker messages. Implementations queue and return at once.
class WorkerChannel {
 public:
  virtual ~WorkerChannel() = default;
  virtual void Send(const zoetrope::v1::SchedulerMessage& message) = 0;
  // Ends the stream (a worker that went silent, or was replaced by a newer stream of the same id).
  virtual void Close() = 0;
};

struct ResultLocation {
  std::string path;
  int64_t size_bytes = 0;
  std::string sha256;
  std::string media_type;
};

class Scheduler {
 public:
  // Opens the stores, recovers unfinished jobs and starts the timer thread. `metrics` may be null and
  // must outlive the scheduler.
  static absl::StatusOr<std::unique_ptr<Scheduler>> Create(SchedulerOptions options, SchedulerMetrics* metrics);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // The public API (validation included; errors as documented in video_service.proto).
  // `tenant` is recorded in Job.tenant; a client_request_id is looked up within the tenant's jobs.
  absl::StatusOr<zoetrope::v1::Job> Submit(const zoetrope::v1::SubmitJobRequest& request,
                                           const std::string& tenant = "");
  // Submit, then Watch in the same critical section (Generate): the sink sees every event of the job.
  absl::StatusOr<zoetrope::v1::Job> SubmitAndWatch(const zoetrope::v1::SubmitJobRequest& request,
                                                   std::shared_ptr<JobEventSink> sink, const std::string& tenant = "");
  absl::StatusOr<zoetrope::v1::Job> GetJob(const std::string& id);
  absl::StatusOr<zoetrope::v1::Job> CancelJob(const std::string& id);
  absl::StatusOr<zoetrope::v1::ListJobsResponse> ListJobs(const zoetrope::v1::ListJobsRequest& request);
  // Sends the job's current state to `sink` at once, then every change until it finishes.
  absl::Status Watch(const std::string& id, std::shared_ptr<JobEventSink> sink);
  absl::StatusOr<ResultLocation> GetResult(const std::string& id);

  // The worker protocol. AttachWorker takes the stream's first message and returns the connection id the
  // other calls name; messages of a replaced or closed connection are ignored.
  absl::StatusOr<uint64_t> AttachWorker(const zoetrope::v1::WorkerHello& hello, std::shared_ptr<WorkerChannel> channel);
  void OnWorkerMessage(uint64_t connection, const zoetrope::v1::WorkerMessage& message);
  void DetachWorker(uint64_t connection);

  // SIGTERM: new submissions get UNAVAILABLE and no job is started any more; running jobs go on.
  void BeginDrain();
  bool draining() const;
  int running_jobs() const;
  int queued_jobs() const;
  int connected_workers() const;

 private:
  struct LiveJob {
    zoetrope::v1::Job job;
    int64_t sequence = 0;
    int worker_losses = 0;
    absl::Time deadline = absl::InfiniteFuture();
    int64_t tokens = 0;
    // RUNNING: the worker's connection (0 while the worker is gone) and until when it may come back.
    uint64_t connection = 0;
    absl::Time orphaned_until = absl::InfiniteFuture();
    // RUNNING when the scheduler restarted and not yet taken back by its worker: if the worker does not
    // come back, the restart (not a worker crash) interrupted it, so it costs no worker loss.
    bool interrupted_by_restart = false;
    // QUEUED: since when workers serving its model are known and none of them can run it (admission).
    absl::Time unrunnable_since = absl::InfiniteFuture();
    bool cancel_sent = false;
    int cancel_code = 0;
    double step_seconds_sum = 0.0;
    int steps_reported = 0;
    int last_sent_position = 0;
    JobWatchers watchers;
    // What runs it (for the estimate and the calibration) and the price per GPU-hour of its worker's pool
    // (0: options_.price_per_gpu_hour); set at submission and again when a worker takes it.
    EstimateConfiguration configuration;
    double price_per_gpu_hour = 0.0;
  };
  struct WorkerState {
    uint64_t connection = 0;
    std::string id;
    zoetrope::v1::WorkerCapabilities capabilities;
    std::shared_ptr<WorkerChannel> channel;
    std::string job_id;    // the job it runs for us
    std::string stale_job; // a job it still holds that we told it to drop: busy until it reports back
    bool draining = false;
    absl::Time last_seen;
    absl::Time idle_since;
  };
  Scheduler(SchedulerOptions options, SchedulerMetrics* metrics, std::unique_ptr<JobStore> store,
            std::unique_ptr<ResultStore> results);
  // scheduler.cc: recovery, models, snapshots and events.
  absl::Status Recover();
  absl::StatusOr<zoetrope::v1::Job> SubmitLocked(const zoetrope::v1::SubmitJobRequest& request, std::string* id,
                                                 const std::string& tenant)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  absl::Status WatchLocked(const std::string& id, std::shared_ptr<JobEventSink> sink)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  bool IsKnownModelLocked(const std::string& model) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  std::string KnownModelsLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  std::string DefaultModelLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  zoetrope::v1::Job SnapshotLocked(const LiveJob& live) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  int QueuePositionLocked(const LiveJob& live) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  absl::Status PersistLocked(const LiveJob& live) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  // Queue membership with the queue-depth gauge kept in step.
  void QueueInsertLocked(LiveJob& live) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void QueueEraseLocked(const LiveJob& live) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void PublishRunningLocked(const std::string& model) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void PublishWorkersLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  // Event helpers: build the event around the job's snapshot and hand it to every open sink.
  void EmitLocked(LiveJob& live, zoetrope::v1::JobEvent event, bool final) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void EmitQueuedLocked(LiveJob& live) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void UpdatePositionsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  // scheduler_dispatch.cc: dispatch and the job lifecycle.
  bool CanRunLocked(const WorkerState& worker, const LiveJob& live) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Admission: OK when a connected worker, or one gone less than unrunnable_grace ago, that serves the
  // request's model can run it, or when no such worker is known at all (`*known` false); otherwise
  // FAILED_PRECONDITION naming each worker's reason.
  absl::Status RunnableLocked(const zoetrope::v1::SubmitJobRequest& request, bool* known) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Fails queued jobs that have been unrunnable for unrunnable_grace (scheduler_timer.cc).
  void FailUnrunnableLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void DispatchLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void AssignLocked(WorkerState& worker, LiveJob& live) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Ends a live job: persists, counts, notifies, and removes it from memory (`live` is gone afterwards);
  // returns the final job.
  zoetrope::v1::Job FinishLocked(LiveJob& live, zoetrope::v1::JobState state, int error_code,
                                 const std::string& error_message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // FinishLocked as CANCELLED for a cancel request; the message is "cancelled by request" followed by
  // `circumstance` (e.g. " while queued", "; its worker went away").
  zoetrope::v1::Job FinishCancelledByRequestLocked(LiveJob& live, absl::string_view circumstance)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Asks the worker of a running job to stop at its next step (if it is connected now) and records that it
  // did, so that a worker that reconnects is told again and the same cancel is not sent twice.
  void CancelRunningLocked(LiveJob& live, int code, absl::string_view reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void RequeueLocked(LiveJob& live, const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void OrphanJobLocked(LiveJob& live, absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // A RUNNING job whose worker is gone for good: one worker loss (none when a scheduler restart
  // interrupted it), then queued again or, past --max_worker_losses, FAILED.
  void JobWorkerLostLocked(LiveJob& live) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Writes the job states of unpersisted_ again (scheduler_timer.cc).
  void RetryUnpersistedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  // scheduler_workers.cc: the worker protocol.
  // `stream_closed`: the worker's stream ended (the process or its connection is gone), so its job is
  // lost at once; otherwise (a silent worker, a superseded stream) the job waits --worker_grace.
  void DetachLocked(uint64_t connection, bool stream_closed = false) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void HandleProgressLocked(WorkerState& worker, const zoetrope::v1::JobProgress& progress)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // A live preview: handed to the job's open watchers as it is, never stored (docs/previews.md).
  void HandlePreviewLocked(WorkerState& worker, const zoetrope::v1::JobPreview& preview)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // A result chunk, and a completion with code OK (its result committed): the file I/O runs outside the lock.
  void HandleUpload(uint64_t connection, const zoetrope::v1::ResultUpload& upload) ABSL_LOCKS_EXCLUDED(mutex_);
  void HandleSucceededCompletion(uint64_t connection, const zoetrope::v1::JobCompletion& completion)
      ABSL_LOCKS_EXCLUDED(mutex_);
  // `committed`: the result of ResultStore::Commit when code is OK (null: committed here, under the lock).
  void HandleCompletionLocked(WorkerState& worker, const zoetrope::v1::JobCompletion& completion,
                              const absl::StatusOr<StoredResult>* committed = nullptr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // True when (job, attempt) is no longer running: finished, queued again, or a later attempt.
  bool AttemptOverLocked(const std::string& job_id, int attempt) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  LiveJob* FindCurrentAttemptLocked(const WorkerState& worker, const std::string& job_id, int attempt)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  // scheduler_estimates.cc: the quote at submission, cost, and learning from finished jobs (server/estimator.h).
  EstimateConfiguration ConfigurationLocked(const zoetrope::v1::SubmitJobRequest& request,
                                            const WorkerState* worker) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Sets the job's estimate: run, energy and cost from the model, queue wait from the jobs ahead of it.
  void EstimateLocked(LiveJob& live) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Cost of a job that ran (measurements: gpus, run seconds, energy), split into GPU time and energy.
  void CostLocked(LiveJob& live) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // A job that ran: metrics by resolution; when SUCCEEDED, prediction error and the calibration update.
  void AccountFinishedLocked(LiveJob& live, zoetrope::v1::JobState state) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  // scheduler_timer.cc: the timer thread.
  void TimerLoop();
  void TickLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void SweepResultsLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const SchedulerOptions options_;
  SchedulerMetrics* const metrics_;

  mutable absl::Mutex mutex_;
  std::unique_ptr<JobStore> store_ ABSL_GUARDED_BY(mutex_);
  std::unique_ptr<ResultStore> results_ ABSL_GUARDED_BY(mutex_);
  std::unique_ptr<Estimator> estimator_ ABSL_GUARDED_BY(mutex_);
  // The last capabilities announced for each model: what a job submitted while no worker is connected is
  // quoted for.
  std::map<std::string, zoetrope::v1::WorkerCapabilities> capabilities_by_model_ ABSL_GUARDED_BY(mutex_);
  absl::flat_hash_map<std::string, LiveJob> live_ ABSL_GUARDED_BY(mutex_);
  JobQueue queue_ ABSL_GUARDED_BY(mutex_);
  std::map<std::string, int> running_by_model_ ABSL_GUARDED_BY(mutex_);
  std::map<uint64_t, WorkerState> workers_ ABSL_GUARDED_BY(mutex_);
  absl::flat_hash_map<std::string, uint64_t> connection_of_worker_ ABSL_GUARDED_BY(mutex_);
  std::vector<std::string> announced_models_ ABSL_GUARDED_BY(mutex_);
  // Workers that disconnected, by id, with their capabilities and when they went; forgotten after
  // unrunnable_grace (admission counts them: a worker restarting is not a worker gone).
  std::map<std::string, std::pair<zoetrope::v1::WorkerCapabilities, absl::Time>> departed_workers_
      ABSL_GUARDED_BY(mutex_);
  uint64_t next_connection_ ABSL_GUARDED_BY(mutex_) = 1;
  bool draining_ ABSL_GUARDED_BY(mutex_) = false;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  absl::Time next_result_sweep_ ABSL_GUARDED_BY(mutex_);
  absl::Time next_admission_check_ ABSL_GUARDED_BY(mutex_);
  // Job states the store failed to write (disk full, busy database), newest per job, with their worker
  // losses: retried every tick until written. While any is pending the scheduler fails closed: SubmitJob
  // answers UNAVAILABLE, so no new work piles onto a store that may not remember it.
  std::map<std::string, std::pair<zoetrope::v1::Job, int>> unpersisted_ ABSL_GUARDED_BY(mutex_);
  std::thread timer_;
};

// Names used in metrics and messages: "queued", "succeeded", ...; "normal", ...
std::string JobStateName(zoetrope::v1::JobState state);
std::string PriorityName(zoetrope::v1::Priority priority);

}  // namespace zoetrope::server
