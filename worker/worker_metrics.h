// The worker's Prometheus metrics (naming rules in server/metrics.h). Prefixed zoetrope_worker_ so that
// `zoetrope serve --embedded` can expose scheduler and worker metrics on one endpoint.
//
//   zoetrope_worker_jobs_total{model,status}                 succeeded, failed, cancelled, handed_back
//   zoetrope_worker_busy                                      1 while a job runs
//   zoetrope_worker_connected                                 1 while the scheduler stream is up
//   zoetrope_worker_reconnects_total                          streams opened after the first
//   zoetrope_worker_step_duration_seconds{model}              one denoising step
//   zoetrope_worker_job_duration_seconds{model}               one job, start to result file
//   zoetrope_worker_upload_bytes_total                        result bytes sent to the scheduler
//   zoetrope_worker_model_load_duration_seconds{model}        time the model took to load
//   zoetrope_worker_attention_density{model}                  mean block density of a succeeded job's attention
//   zoetrope_worker_gpu_energy_joules_total{gpu}              GPU energy of succeeded jobs, per GPU (NVML counter)
//   zoetrope_worker_phase_duration_seconds{model,phase}       text, denoise, decode, video_encode, upload
//   zoetrope_worker_phase_energy_joules_total{model,phase}    GPU energy per phase (text, denoise, decode, video_encode)
//   zoetrope_worker_energy_source{source}                     1 for the way this worker measures energy:
//                                                             nvml_energy_counter, nvml_power_samples, unavailable
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "worker/job_runner.h"

namespace zoetrope {

class WorkerMetrics {
 public:
  WorkerMetrics();

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  void JobFinished(const std::string& model, const std::string& status, double seconds);
  void StepCompleted(const std::string& model, double seconds);
  void SetBusy(bool busy);
  void SetConnected(bool connected);
  void Reconnected();
  void Uploaded(double bytes);
  void ModelLoaded(const std::string& model, double seconds);
  void AttentionDensity(const std::string& model, double density);
  // A succeeded job's phase durations and energies (JobOutput from the runner).
  void JobMeasured(const std::string& model, const JobOutput& output);
  void UploadFinished(const std::string& model, double seconds);
  // Exports the energy source (one series at 1, the others at 0) and each measured GPU's energy counter
  // at 0, so that rate() sees the series before the first job.
  void SetEnergySource(const std::string& source, const std::vector<std::string>& gpu_labels);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& jobs_;
  prometheus::Family<prometheus::Histogram>& step_duration_;
  prometheus::Family<prometheus::Histogram>& job_duration_;
  prometheus::Family<prometheus::Gauge>& model_load_;
  prometheus::Family<prometheus::Histogram>& attention_density_;
  prometheus::Family<prometheus::Counter>& gpu_energy_;
  prometheus::Family<prometheus::Histogram>& phase_duration_;
  prometheus::Family<prometheus::Counter>& phase_energy_;
  prometheus::Family<prometheus::Gauge>& energy_source_;
  prometheus::Gauge& busy_;
  prometheus::Gauge& connected_;
  prometheus::Counter& reconnects_;
  prometheus::Counter& upload_bytes_;
};

}  // namespace zoetrope
