// The scheduler's timer thread: every tick it ends jobs whose deadline passed (EXPIRED in the queue; asked
// to stop, or FAILED when their worker is gone, while running), queues again or fails jobs whose worker
// stayed away past the grace time, fails queued jobs no known worker can run (--unrunnable_grace),
// disconnects silent workers, and deletes results past their retention.
// Everything here is driven by time rather than by a request or a worker message, which is why it is
// apart from the API and the worker protocol.
#include <algorithm>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "server/scheduler.h"
#include "server/scheduler_internal.h"

namespace zoetrope::server {
namespace {

namespace v1 = zoetrope::v1;

}  // namespace

void Scheduler::TimerLoop() {
  absl::MutexLock lock(&mutex_);
  while (!stopping_) {
    mutex_.AwaitWithTimeout(absl::Condition(&stopping_), options_.tick_interval);
    if (stopping_) break;
    TickLocked(absl::Now());
  }
}

void Scheduler::TickLocked(absl::Time now) {
  if (!unpersisted_.empty()) RetryUnpersistedLocked();
  // Deadlines and lost workers of live jobs. Collect first: finishing a job erases it from live_.
  std::vector<std::string> expired, overdue, lost;
  for (auto& [id, live] : live_) {
    if (live.job.state() == v1::JOB_STATE_QUEUED) {
      if (live.deadline <= now) expired.push_back(id);
    } else {
      // A deadline cancel already sent is not sent again while the worker winds down.
      if (live.deadline <= now && !(live.cancel_sent && live.cancel_code == kCodeDeadlineExceeded)) {
        overdue.push_back(id);
      }
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
    const std::string reason = "the deadline passed while the job was running";
    if (live.connection == 0 || !workers_.contains(live.connection)) {
      FinishLocked(live, v1::JOB_STATE_FAILED, kCodeDeadlineExceeded, reason);
      continue;
    }
    CancelRunningLocked(live, kCodeDeadlineExceeded, reason);
  }
  for (const std::string& id : lost) {
    auto found = live_.find(id);
    if (found == live_.end() || found->second.connection != 0) continue;
    LiveJob& live = found->second;
    if (live.job.cancel_requested()) {
      FinishCancelledByRequestLocked(live, "; its worker did not come back");
      continue;
    }
    JobWorkerLostLocked(live);
  }

  // Workers that went silent.
  std::vector<uint64_t> silent;
  for (const auto& [connection, worker] : workers_) {
    if (now - worker.last_seen > options_.worker_timeout) silent.push_back(connection);
  }
  for (uint64_t connection : silent) {
    auto found = workers_.find(connection);
    Log("scheduler", "worker ", found->second.id, " silent for more than ",
        absl::FormatDuration(options_.worker_timeout), ": disconnecting it");
    found->second.channel->Close();
    DetachLocked(connection);
  }

  if (now >= next_result_sweep_) SweepResultsLocked(now);
  if (now >= next_admission_check_) FailUnrunnableLocked(now);
  DispatchLocked();
}

void Scheduler::FailUnrunnableLocked(absl::Time now) {
  // Once a second is enough for a grace of minutes, and keeps the queue scan off most ticks.
  next_admission_check_ = now + std::min(absl::Seconds(1), options_.unrunnable_grace / 4);
  for (auto it = departed_workers_.begin(); it != departed_workers_.end();) {
    it = now - it->second.second > options_.unrunnable_grace ? departed_workers_.erase(it) : std::next(it);
  }
  std::vector<std::pair<std::string, std::string>> unrunnable;  // job id, why
  for (const JobQueue::Entry& entry : queue_) {
    LiveJob& live = live_.at(entry.job_id);
    bool known = false;
    const absl::Status runnable = RunnableLocked(live.job.request(), &known);
    if (runnable.ok()) {
      live.unrunnable_since = absl::InfiniteFuture();
      continue;
    }
    if (live.unrunnable_since == absl::InfiniteFuture()) live.unrunnable_since = now;
    if (now - live.unrunnable_since >= options_.unrunnable_grace) {
      unrunnable.emplace_back(entry.job_id, std::string(runnable.message()));
    }
  }
  for (const auto& [id, why] : unrunnable) {
    auto found = live_.find(id);
    if (found == live_.end()) continue;
    FinishLocked(found->second, v1::JOB_STATE_FAILED, static_cast<int>(absl::StatusCode::kFailedPrecondition),
                 absl::StrCat(why, " for ", absl::FormatDuration(options_.unrunnable_grace),
                              " (--unrunnable_grace)"));
  }
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

void Scheduler::JobWorkerLostLocked(LiveJob& live) {
  if (live.interrupted_by_restart) {
    // The scheduler restarted under it and its worker did not come back within the grace: the restart
    // is not evidence that the job crashes workers, so it costs no worker loss.
    live.interrupted_by_restart = false;
    RequeueLocked(live, "scheduler_restart");
    return;
  }
  ++live.worker_losses;
  if (live.worker_losses >= options_.max_worker_losses) {
    // A job that took down this many workers is most likely the cause (say it needs more memory than the
    // device has): fail it with a clear error instead of queueing it for the next worker to crash on.
    FinishLocked(live, v1::JOB_STATE_FAILED, kCodeUnavailable,
                 absl::StrCat("the job's worker was lost ", live.worker_losses, " times (last: ", live.job.worker_id(),
                              "); it is not retried again (--max_worker_losses=", options_.max_worker_losses, ")"));
  } else {
    RequeueLocked(live, "worker_lost");
  }
}

void Scheduler::RetryUnpersistedLocked() {
  for (auto it = unpersisted_.begin(); it != unpersisted_.end();) {
    const absl::Status status = store_->Update(it->second.first, it->second.second);
    if (!status.ok()) return;  // the store still fails: try again next tick, in the same order
    Log("scheduler", "job ", it->first, ": its state is written now");
    it = unpersisted_.erase(it);
  }
}

}  // namespace zoetrope::server
