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
#pragma once

#include <memory>
#include <string>

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

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

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& jobs_;
  prometheus::Family<prometheus::Histogram>& step_duration_;
  prometheus::Family<prometheus::Histogram>& job_duration_;
  prometheus::Family<prometheus::Gauge>& model_load_;
  prometheus::Family<prometheus::Histogram>& attention_density_;
  prometheus::Gauge& busy_;
  prometheus::Gauge& connected_;
  prometheus::Counter& reconnects_;
  prometheus::Counter& upload_bytes_;
};

}  // namespace zoetrope
