#include "server/scheduler_metrics.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/status/status.h"
#include "common/metrics_endpoint.h"

namespace zoetrope::server {
namespace {

// The VideoService methods (as video_service.cc names them) and the label values the scheduler uses
// (PriorityName, JobStateName of final states, RequeueLocked reasons in server/scheduler*.cc).
constexpr const char* kApiMethods[] = {"SubmitJob", "Generate",  "GetJob",     "WatchJob",
                                       "CancelJob", "ListJobs", "FetchResult"};
constexpr const char* kPriorities[] = {"low", "normal", "high"};
constexpr const char* kFinalStates[] = {"succeeded", "failed", "cancelled", "expired"};
constexpr const char* kRequeueReasons[] = {"worker_lost", "handed_back", "scheduler_restart"};
// gRPC status codes are 0 (OK) … 16 (UNAUTHENTICATED); absl::StatusCode has the same numbers and names.
constexpr int kStatusCodes = 17;

}  // namespace

SchedulerMetrics::SchedulerMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      api_requests_(prometheus::BuildCounter()
                        .Name("zoetrope_api_requests_total")
                        .Help("VideoService calls by method and gRPC status code")
                        .Register(*registry_)),
      jobs_submitted_(prometheus::BuildCounter()
                          .Name("zoetrope_jobs_submitted_total")
                          .Help("Jobs accepted into the queue")
                          .Register(*registry_)),
      jobs_finished_(prometheus::BuildCounter()
                         .Name("zoetrope_jobs_finished_total")
                         .Help("Jobs by final state: succeeded, failed, cancelled, expired")
                         .Register(*registry_)),
      jobs_requeued_(prometheus::BuildCounter()
                         .Name("zoetrope_jobs_requeued_total")
                         .Help("Running jobs queued again: worker_lost, handed_back, scheduler_restart")
                         .Register(*registry_)),
      queue_depth_(prometheus::BuildGauge()
                       .Name("zoetrope_queue_depth")
                       .Help("Jobs waiting in the queue")
                       .Register(*registry_)),
      jobs_running_(prometheus::BuildGauge()
                        .Name("zoetrope_jobs_running")
                        .Help("Jobs running on a worker")
                        .Register(*registry_)),
      workers_(prometheus::BuildGauge()
                   .Name("zoetrope_workers")
                   .Help("Connected workers by state: idle, busy, draining")
                   .Register(*registry_)),
      queue_duration_(prometheus::BuildHistogram()
                          .Name("zoetrope_job_queue_duration_seconds")
                          .Help("Time from acceptance to start on a worker")
                          .Register(*registry_)),
      run_duration_(prometheus::BuildHistogram()
                        .Name("zoetrope_job_run_duration_seconds")
                        .Help("Time from start on a worker to the end of the job")
                        .Register(*registry_)),
      end_to_end_duration_(prometheus::BuildHistogram()
                               .Name("zoetrope_job_end_to_end_duration_seconds")
                               .Help("Time from acceptance to the end of the job")
                               .Register(*registry_)),
      step_duration_(prometheus::BuildHistogram()
                         .Name("zoetrope_denoise_step_duration_seconds")
                         .Help("Duration of one denoising step as reported by workers")
                         .Register(*registry_)),
      job_energy_(prometheus::BuildHistogram()
                      .Name("zoetrope_job_gpu_energy_joules")
                      .Help("GPU energy of one job over every GPU of its worker group")
                      .Register(*registry_)),
      energy_total_(prometheus::BuildCounter()
                        .Name("zoetrope_gpu_energy_joules_total")
                        .Help("GPU energy of all finished jobs")
                        .Register(*registry_)),
      job_cost_(prometheus::BuildHistogram()
                    .Name("zoetrope_job_cost_dollars")
                    .Help("Cost of one video: GPUs x wall time x price per GPU-hour (+ energy where configured)")
                    .Register(*registry_)),
      real_time_factor_(prometheus::BuildHistogram()
                            .Name("zoetrope_job_real_time_factor")
                            .Help("Run seconds per second of video of a succeeded job (compute time / video length)")
                            .Register(*registry_)),
      estimate_error_(prometheus::BuildHistogram()
                          .Name("zoetrope_job_estimate_error_ratio")
                          .Help("(estimate - actual) / actual of a succeeded job: quantity run_seconds or gpu_energy")
                          .Register(*registry_)),
      estimated_run_(prometheus::BuildCounter()
                         .Name("zoetrope_job_estimated_run_seconds_total")
                         .Help("Run seconds estimated at submission, summed over succeeded jobs")
                         .Register(*registry_)),
      measured_run_(prometheus::BuildCounter()
                        .Name("zoetrope_job_measured_run_seconds_total")
                        .Help("Run seconds measured, summed over the succeeded jobs of the estimated total")
                        .Register(*registry_)),
      parallel_efficiency_(prometheus::BuildGauge()
                               .Name("zoetrope_sequence_parallel_efficiency")
                               .Help("Denoise throughput per GPU of a worker group over that of one GPU (same model, "
                                     "GPU kind, attention), from calibrated finished jobs")
                               .Register(*registry_)),
      result_store_bytes_(prometheus::BuildGauge()
                              .Name("zoetrope_result_store_bytes")
                              .Help("Bytes of results in the result store")
                              .Register(*registry_)
                              .Add({})),
      results_deleted_(prometheus::BuildCounter()
                           .Name("zoetrope_results_deleted_total")
                           .Help("Results deleted after the retention time")
                           .Register(*registry_)
                           .Add({})),
      watchers_(prometheus::BuildGauge()
                    .Name("zoetrope_job_watchers")
                    .Help("Open WatchJob and Generate streams")
                    .Register(*registry_)
                    .Add({})),
      draining_(prometheus::BuildGauge()
                    .Name("zoetrope_draining")
                    .Help("1 while the scheduler drains after SIGTERM")
                    .Register(*registry_)
                    .Add({})) {
  SetWorkers(0, 0, 0);
  for (const char* method : kApiMethods) {
    for (int code = 0; code < kStatusCodes; ++code) {
      api_requests_.Add({{"method", method}, {"code", absl::StatusCodeToString(static_cast<absl::StatusCode>(code))}});
    }
  }
}

void SchedulerMetrics::InitializeModel(const std::string& model) {
  {
    absl::MutexLock lock(&models_mutex_);
    if (!initialized_models_.insert(model).second) return;
  }
  // Add() returns the existing series untouched when it exists, so racing with a real update is harmless.
  for (const char* priority : kPriorities) {
    jobs_submitted_.Add({{"model", model}, {"priority", priority}});
    queue_depth_.Add({{"model", model}, {"priority", priority}});
  }
  for (const char* state : kFinalStates) jobs_finished_.Add({{"model", model}, {"state", state}});
  for (const char* reason : kRequeueReasons) jobs_requeued_.Add({{"model", model}, {"reason", reason}});
  jobs_running_.Add({{"model", model}});
  energy_total_.Add({{"model", model}});
}

void SchedulerMetrics::ApiRequest(const std::string& method, const std::string& code) {
  api_requests_.Add({{"method", method}, {"code", code}}).Increment();
}

void SchedulerMetrics::JobSubmitted(const std::string& model, const std::string& priority) {
  InitializeModel(model);
  jobs_submitted_.Add({{"model", model}, {"priority", priority}}).Increment();
}

void SchedulerMetrics::JobStarted(const std::string& model, double queue_seconds) {
  InitializeModel(model);
  queue_duration_.Add({{"model", model}}, DurationBuckets()).Observe(queue_seconds);
}

void SchedulerMetrics::JobFinished(const std::string& model, const std::string& state, double run_seconds,
                                   double end_to_end_seconds, double gpu_energy_joules, double cost_dollars, bool ran) {
  InitializeModel(model);
  jobs_finished_.Add({{"model", model}, {"state", state}}).Increment();
  end_to_end_duration_.Add({{"model", model}}, DurationBuckets()).Observe(end_to_end_seconds);
  if (ran) {
    run_duration_.Add({{"model", model}}, DurationBuckets()).Observe(run_seconds);
    energy_total_.Add({{"model", model}}).Increment(gpu_energy_joules);
  }
}

void SchedulerMetrics::JobAccounted(const std::string& model, const std::string& resolution, bool energy_measured,
                                    double gpu_energy_joules, double cost_dollars) {
  // A job without an energy measurement (CPU workers) is left out rather than counted as 0 J.
  if (energy_measured) {
    job_energy_.Add({{"model", model}, {"resolution", resolution}}, EnergyBuckets()).Observe(gpu_energy_joules);
  }
  job_cost_.Add({{"model", model}, {"resolution", resolution}}, CostBuckets()).Observe(cost_dollars);
}

void SchedulerMetrics::JobPredicted(const std::string& model, const std::string& resolution, double real_time_factor,
                                    double estimated_run_seconds, double run_seconds, double run_error,
                                    double energy_error) {
  // Real-time factors run from below 1 (faster than playback) to thousands (CPU).
  static const prometheus::Histogram::BucketBoundaries kFactorBuckets = {0.5, 1, 2, 5, 10, 20, 50, 100, 200,
                                                                         500, 1000, 5000};
  // Signed relative error: the quote's bias and spread (the paper's model errs by 6-14 %).
  static const prometheus::Histogram::BucketBoundaries kErrorBuckets = {-1, -0.5, -0.2, -0.1, -0.05, -0.02, 0,
                                                                        0.02, 0.05, 0.1, 0.2, 0.5, 1, 2};
  real_time_factor_.Add({{"model", model}, {"resolution", resolution}}, kFactorBuckets).Observe(real_time_factor);
  estimate_error_.Add({{"model", model}, {"quantity", "run_seconds"}}, kErrorBuckets).Observe(run_error);
  if (!std::isnan(energy_error)) {
    estimate_error_.Add({{"model", model}, {"quantity", "gpu_energy"}}, kErrorBuckets).Observe(energy_error);
  }
  estimated_run_.Add({{"model", model}}).Increment(std::max(0.0, estimated_run_seconds));
  measured_run_.Add({{"model", model}}).Increment(std::max(0.0, run_seconds));
}

void SchedulerMetrics::SetParallelEfficiency(const std::string& model, int gpus, double efficiency) {
  parallel_efficiency_.Add({{"model", model}, {"gpus", std::to_string(gpus)}}).Set(efficiency);
}

std::string SchedulerMetrics::ResolutionClass(int width, int height) {
  const int short_side = std::min(width, height);
  if (short_side <= 240) return "240p";
  if (short_side <= 480) return "480p";
  if (short_side <= 720) return "720p";
  return "1080p";
}

void SchedulerMetrics::JobRequeued(const std::string& model, const std::string& reason) {
  InitializeModel(model);
  jobs_requeued_.Add({{"model", model}, {"reason", reason}}).Increment();
}

void SchedulerMetrics::StepCompleted(const std::string& model, double seconds) {
  InitializeModel(model);
  step_duration_.Add({{"model", model}}, DurationBuckets()).Observe(seconds);
}

void SchedulerMetrics::SetQueueDepth(const std::string& model, const std::string& priority, double depth) {
  InitializeModel(model);
  queue_depth_.Add({{"model", model}, {"priority", priority}}).Set(depth);
}

void SchedulerMetrics::SetRunning(const std::string& model, double running) {
  InitializeModel(model);
  jobs_running_.Add({{"model", model}}).Set(running);
}

void SchedulerMetrics::SetWorkers(double idle, double busy, double draining) {
  workers_.Add({{"state", "idle"}}).Set(idle);
  workers_.Add({{"state", "busy"}}).Set(busy);
  workers_.Add({{"state", "draining"}}).Set(draining);
}

void SchedulerMetrics::SetResultStoreBytes(double bytes) { result_store_bytes_.Set(bytes); }
void SchedulerMetrics::ResultsDeleted(double count) { results_deleted_.Increment(count); }
void SchedulerMetrics::WatchersChanged(double delta) { watchers_.Increment(delta); }
void SchedulerMetrics::SetDraining(bool draining) { draining_.Set(draining ? 1 : 0); }

}  // namespace zoetrope::server
