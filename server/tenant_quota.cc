#include "server/tenant_quota.h"

#include "absl/strings/str_cat.h"

namespace zoetrope::server {

namespace v1 = zoetrope::v1;

TenantQuotaGate::TenantState& TenantQuotaGate::StateOf(const std::string& tenant) {
  absl::MutexLock lock(&mutex_);
  std::unique_ptr<TenantState>& state = tenants_[tenant];
  if (state == nullptr) state = std::make_unique<TenantState>();
  return *state;
}

absl::StatusOr<int> TenantQuotaGate::CountJobs(const std::string& tenant, v1::JobState state) {
  // The job store has no tenant column: page through the jobs in `state` (bounded by the queue limit
  // for QUEUED, by the workers for RUNNING) and count the tenant's.
  v1::ListJobsRequest request;
  request.add_states(state);
  request.set_page_size(1000);
  int count = 0;
  while (true) {
    absl::StatusOr<v1::ListJobsResponse> page = scheduler_.ListJobs(request);
    if (!page.ok()) return page.status();
    for (const v1::Job& job : page->jobs()) count += job.tenant() == tenant ? 1 : 0;
    if (page->next_page_token().empty()) return count;
    request.set_page_token(page->next_page_token());
  }
}

absl::StatusOr<v1::Job> TenantQuotaGate::Admit(const Tenant& tenant,
                                               absl::FunctionRef<absl::StatusOr<v1::Job>()> submit) {
  TenantState& state = StateOf(tenant.name);
  absl::MutexLock lock(&state.mutex);
  const TenantQuota& quota = tenant.quota;
  const absl::Time now = now_();
  while (!state.accepted.empty() && state.accepted.front() <= now - absl::Minutes(1)) state.accepted.pop_front();
  if (quota.submits_per_minute > 0 && static_cast<int>(state.accepted.size()) >= quota.submits_per_minute) {
    return absl::ResourceExhaustedError(absl::StrCat("quota submits_per_minute of tenant \"", tenant.name, "\": ",
                                                     quota.submits_per_minute,
                                                     " submissions in the last minute; retry later"));
  }
  // Only this tenant's submissions add queued jobs and they are serialized here, so the counts cannot
  // grow between the check and the submission (dispatch only moves jobs from queued to running).
  if (quota.max_queued > 0) {
    absl::StatusOr<int> queued = CountJobs(tenant.name, v1::JOB_STATE_QUEUED);
    if (!queued.ok()) return queued.status();
    if (*queued >= quota.max_queued) {
      return absl::ResourceExhaustedError(absl::StrCat("quota max_queued of tenant \"", tenant.name, "\": ", *queued,
                                                       " of ", quota.max_queued, " jobs queued; retry later"));
    }
  }
  if (quota.max_running > 0) {
    // Checked at submission only: dispatch does not hold a tenant's queued jobs back (docs/security.md).
    absl::StatusOr<int> running = CountJobs(tenant.name, v1::JOB_STATE_RUNNING);
    if (!running.ok()) return running.status();
    if (*running >= quota.max_running) {
      return absl::ResourceExhaustedError(absl::StrCat("quota max_running of tenant \"", tenant.name, "\": ",
                                                       *running, " of ", quota.max_running,
                                                       " jobs running; retry when one finishes"));
    }
  }
  absl::StatusOr<v1::Job> job = submit();
  if (job.ok()) state.accepted.push_back(now);
  return job;
}

}  // namespace zoetrope::server
