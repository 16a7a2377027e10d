// The scheduler's Prometheus metrics (see server/metrics.h for the naming rules).
//
//   zoetrope_api_requests_total{method,code}           every VideoService call by gRPC status
//   zoetrope_jobs_submitted_total{model,priority}      jobs accepted
//   zoetrope_jobs_finished_total{model,state}          jobs by final state (succeeded, failed, cancelled, expired)
//   zoetrope_jobs_requeued_total{model,reason}         worker_lost, handed_back, scheduler_restart
//   zoetrope_queue_depth{model,priority}               queued jobs
//   zoetrope_jobs_running{model}                       jobs on a worker
//   zoetrope_workers{state}                            connected workers: idle, busy, draining
//   zoetrope_job_queue_duration_seconds{model}         accepted → started, per attempt
//   zoetrope_job_run_duration_seconds{model}           started → finished
//   zoetrope_job_end_to_end_duration_seconds{model}    accepted → finished
//   zoetrope_denoise_step_duration_seconds{model}      per denoising step, as workers report them
//   zoetrope_job_gpu_energy_joules{model,resolution}   GPU energy per finished job (jobs whose energy was measured)
//   zoetrope_gpu_energy_joules_total{model}            GPU energy of all jobs (per GPU: zoetrope_worker_gpu_energy_joules_total)
//   zoetrope_job_cost_dollars{model,resolution}        cost per video; resolution: the short side's class
//                                                      (240p, 480p, 720p, 1080p: at most that many pixels)
//   zoetrope_job_real_time_factor{model,resolution}    run seconds per second of video, succeeded jobs
//   zoetrope_job_estimate_error_ratio{model,quantity}  (estimate − actual) / actual of succeeded jobs,
//                                                      quantity run_seconds or gpu_energy
//   zoetrope_job_estimated_run_seconds_total{model}    Σ estimates and Σ actual run seconds of succeeded jobs,
//   zoetrope_job_measured_run_seconds_total{model}     for predicted-vs-actual over a window
//   zoetrope_sequence_parallel_efficiency{model,gpus}  denoise throughput per GPU of a group over that of one GPU
//                                                      (same model, GPU kind, attention), from the calibration
//   zoetrope_result_store_bytes                        bytes of stored results
//   zoetrope_results_deleted_total                     results removed by retention
//   zoetrope_job_watchers                              open WatchJob/Generate streams
//   zoetrope_draining                                  1 while draining after SIGTERM
//
// Label combinations known in advance are exported at 0 before their first use, so that a dashboard or an
// alert (rate(), absent()) sees the series from the first scrape rather than from the first event: every
// method × gRPC code of zoetrope_api_requests_total from the start, and for each model, as soon as the
// scheduler first knows it (configured with --models, announced by a worker, or first reported), every
// priority, final state and requeue reason. All of these
// sets are small and fixed (7 × 17 API series; 3 + 4 + 2 + 3 + 1 + 1 per model).
#pragma once

#include <memory>
#include <set>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace zoetrope::server {

class SchedulerMetrics {
 public:
  SchedulerMetrics();

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  void ApiRequest(const std::string& method, const std::string& code);
  void JobSubmitted(const std::string& model, const std::string& priority);
  void JobStarted(const std::string& model, double queue_seconds);
  void JobFinished(const std::string& model, const std::string& state, double run_seconds, double end_to_end_seconds,
                   double gpu_energy_joules, double cost_dollars, bool ran);
  // A finished job that ran: its energy (when measured) and cost by resolution class.
  void JobAccounted(const std::string& model, const std::string& resolution, bool energy_measured,
                    double gpu_energy_joules, double cost_dollars);
  // A succeeded job against its estimate. `energy_error` is ignored when NaN (energy not measured).
  void JobPredicted(const std::string& model, const std::string& resolution, double real_time_factor,
                    double estimated_run_seconds, double run_seconds, double run_error, double energy_error);
  void SetParallelEfficiency(const std::string& model, int gpus, double efficiency);
  void JobRequeued(const std::string& model, const std::string& reason);
  void StepCompleted(const std::string& model, double seconds);
  void SetQueueDepth(const std::string& model, const std::string& priority, double depth);
  void SetRunning(const std::string& model, double running);
  void SetWorkers(double idle, double busy, double draining);
  void SetResultStoreBytes(double bytes);
  void ResultsDeleted(double count);
  void WatchersChanged(double delta);
  void SetDraining(bool draining);
  // "240p", "480p", "720p", "1080p": the class of a video's short side.
  static std::string ResolutionClass(int width, int height);
  // Creates the model's series of the known label values at 0, once per model. The scheduler calls it for
  // its --models at start and for every model a worker announces, so that they are exported before first use.
  void InitializeModel(const std::string& model);

 private:

  absl::Mutex models_mutex_;
  std::set<std::string> initialized_models_ ABSL_GUARDED_BY(models_mutex_);
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& api_requests_;
  prometheus::Family<prometheus::Counter>& jobs_submitted_;
  prometheus::Family<prometheus::Counter>& jobs_finished_;
  prometheus::Family<prometheus::Counter>& jobs_requeued_;
  prometheus::Family<prometheus::Gauge>& queue_depth_;
  prometheus::Family<prometheus::Gauge>& jobs_running_;
  prometheus::Family<prometheus::Gauge>& workers_;
  prometheus::Family<prometheus::Histogram>& queue_duration_;
  prometheus::Family<prometheus::Histogram>& run_duration_;
  prometheus::Family<prometheus::Histogram>& end_to_end_duration_;
  prometheus::Family<prometheus::Histogram>& step_duration_;
  prometheus::Family<prometheus::Histogram>& job_energy_;
  prometheus::Family<prometheus::Counter>& energy_total_;
  prometheus::Family<prometheus::Histogram>& job_cost_;
  prometheus::Family<prometheus::Histogram>& real_time_factor_;
  prometheus::Family<prometheus::Histogram>& estimate_error_;
  prometheus::Family<prometheus::Counter>& estimated_run_;
  prometheus::Family<prometheus::Counter>& measured_run_;
  prometheus::Family<prometheus::Gauge>& parallel_efficiency_;
  prometheus::Gauge& result_store_bytes_;
  prometheus::Counter& results_deleted_;
  prometheus::Gauge& watchers_;
  prometheus::Gauge& draining_;
};

}  // namespace zoetrope::server
