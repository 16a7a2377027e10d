// What the scheduler's source files share and nobody else needs: the status codes the worker protocol and
// job errors carry as integers, and the one way to build a CancelAssignment. The Scheduler's member
// functions are split over scheduler.cc, scheduler_dispatch.cc, scheduler_workers.cc and
// scheduler_timer.cc by responsibility; this header keeps those files from each redefining these.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/generation_rules.h"
#include "server/scheduler.h"

namespace zoetrope::server {

inline constexpr int kCodeOk = 0;
inline constexpr int kCodeCancelled = static_cast<int>(absl::StatusCode::kCancelled);
inline constexpr int kCodeDeadlineExceeded = static_cast<int>(absl::StatusCode::kDeadlineExceeded);
inline constexpr int kCodeUnavailable = static_cast<int>(absl::StatusCode::kUnavailable);
inline constexpr int kCodeDataLoss = static_cast<int>(absl::StatusCode::kDataLoss);

// Why a worker with these capabilities cannot run the request ("its max_tokens 4096 < 16384 latent tokens",
// "the estimated peak memory 45.0 GiB exceeds its device memory 24.0 GiB", ...); empty when it can.
std::string WhyCannotRun(const zoetrope::v1::WorkerCapabilities& capabilities,
                         const zoetrope::v1::SubmitJobRequest& request);

// The peak-memory model a worker announced (all zero: unknown).
PeakMemoryModel MemoryModelOf(const zoetrope::v1::WorkerCapabilities& capabilities);

// Tells a worker to stop (job, attempt) at its next denoising step; `code` and `reason` end up in the
// job's error if the worker reports the stop.
void SendCancel(WorkerChannel& channel, const std::string& job_id, int attempt, int code, absl::string_view reason);

}  // namespace zoetrope::server
