#include "worker/worker_metrics.h"

#include "common/metrics_endpoint.h"

namespace zoetrope {

WorkerMetrics::WorkerMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      jobs_(prometheus::BuildCounter()
                .Name("zoetrope_worker_jobs_total")
                .Help("Jobs this worker ran, by outcome: succeeded, failed, cancelled, handed_back")
                .Register(*registry_)),
      step_duration_(prometheus::BuildHistogram()
                         .Name("zoetrope_worker_step_duration_seconds")
                         .Help("Duration of one denoising step")
                         .Register(*registry_)),
      job_duration_(prometheus::BuildHistogram()
                        .Name("zoetrope_worker_job_duration_seconds")
                        .Help("Duration of one job from assignment to result file")
                        .Register(*registry_)),
      model_load_(prometheus::BuildGauge()
                      .Name("zoetrope_worker_model_load_duration_seconds")
                      .Help("Time the model took to load")
                      .Register(*registry_)),
      attention_density_(prometheus::BuildHistogram()
                             .Name("zoetrope_worker_attention_density")
                             .Help("Mean block density of a job's self-attention (1 = dense), per succeeded job")
                             .Register(*registry_)),
      busy_(prometheus::BuildGauge()
                .Name("zoetrope_worker_busy")
                .Help("1 while a job runs on this worker")
                .Register(*registry_)
                .Add({})),
      connected_(prometheus::BuildGauge()
                     .Name("zoetrope_worker_connected")
                     .Help("1 while the stream to the scheduler is up")
                     .Register(*registry_)
                     .Add({})),
      reconnects_(prometheus::BuildCounter()
                      .Name("zoetrope_worker_reconnects_total")
                      .Help("Streams to the scheduler opened after the first")
                      .Register(*registry_)
                      .Add({})),
      upload_bytes_(prometheus::BuildCounter()
                        .Name("zoetrope_worker_upload_bytes_total")
                        .Help("Result bytes sent to the scheduler")
                        .Register(*registry_)
                        .Add({})) {}

void WorkerMetrics::JobFinished(const std::string& model, const std::string& status, double seconds) {
  jobs_.Add({{"model", model}, {"status", status}}).Increment();
  job_duration_.Add({{"model", model}}, DurationBuckets()).Observe(seconds);
}

void WorkerMetrics::StepCompleted(const std::string& model, double seconds) {
  step_duration_.Add({{"model", model}}, DurationBuckets()).Observe(seconds);
}

void WorkerMetrics::SetBusy(bool busy) { busy_.Set(busy ? 1 : 0); }
void WorkerMetrics::SetConnected(bool connected) { connected_.Set(connected ? 1 : 0); }
void WorkerMetrics::Reconnected() { reconnects_.Increment(); }
void WorkerMetrics::Uploaded(double bytes) { upload_bytes_.Increment(bytes); }
void WorkerMetrics::ModelLoaded(const std::string& model, double seconds) {
  model_load_.Add({{"model", model}}).Set(seconds);
}

void WorkerMetrics::AttentionDensity(const std::string& model, double density) {
  // Densities of the presets at Wan resolutions lie between 0.1 and 0.4; dense is 1.
  static const prometheus::Histogram::BucketBoundaries kBuckets = {0.05, 0.1, 0.15, 0.2, 0.25, 0.3,
                                                                   0.35, 0.4, 0.5, 0.6, 0.8, 1.0};
  attention_density_.Add({{"model", model}}, kBuckets).Observe(density);
}

}  // namespace zoetrope
