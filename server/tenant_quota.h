// Per-tenant quotas on submissions (docs/security.md): queued jobs, running jobs and accepted
// submissions per minute, each answered with RESOURCE_EXHAUSTED naming the quota.
#pragma once

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/auth.h"
#include "server/scheduler.h"

namespace zoetrope::server {

class TenantQuotaGate {
 public:
  // `scheduler` must outlive the gate; `now` is the clock of the per-minute window (tests replace it).
  explicit TenantQuotaGate(Scheduler& scheduler, std::function<absl::Time()> now = [] { return absl::Now(); })
      : scheduler_(scheduler), now_(std::move(now)) {}

  // Runs `submit` when the tenant is within its quotas, else returns RESOURCE_EXHAUSTED naming the quota
  // without calling it (a rejected request changes no state). A tenant's submissions pass one at a time,
  // so two concurrent ones cannot both take the last slot; other tenants are not held up.
  absl::StatusOr<zoetrope::v1::Job> Admit(const Tenant& tenant,
                                          absl::FunctionRef<absl::StatusOr<zoetrope::v1::Job>()> submit);

 private:
  struct TenantState {
    absl::Mutex mutex;
    std::deque<absl::Time> accepted ABSL_GUARDED_BY(mutex);  // accepted submissions of the last minute
  };
  // Jobs of `tenant` in `state`, counted over the job store.
  absl::StatusOr<int> CountJobs(const std::string& tenant, zoetrope::v1::JobState state);
  TenantState& StateOf(const std::string& tenant);

  Scheduler& scheduler_;
  std::function<absl::Time()> now_;
  absl::Mutex mutex_;
  std::map<std::string, std::unique_ptr<TenantState>> tenants_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace zoetrope::server
