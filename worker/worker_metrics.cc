#include "worker/worker_metrics.h"

#include <algorithm>
#include <utility>

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
      gpu_energy_(prometheus::BuildCounter()
                      .Name("zoetrope_worker_gpu_energy_joules_total")
                      .Help("GPU energy of succeeded jobs per GPU, from the NVML energy counter (or integrated power)")
                      .Register(*registry_)),
      phase_duration_(prometheus::BuildHistogram()
                          .Name("zoetrope_worker_phase_duration_seconds")
                          .Help("Wall time of one phase of a succeeded job: text, denoise, decode, video_encode, upload")
                          .Register(*registry_)),
      phase_energy_(prometheus::BuildCounter()
                        .Name("zoetrope_worker_phase_energy_joules_total")
                        .Help("GPU energy of succeeded jobs by phase: text, denoise, decode, video_encode")
                        .Register(*registry_)),
      energy_source_(prometheus::BuildGauge()
                         .Name("zoetrope_worker_energy_source")
                         .Help("1 for how this worker measures GPU energy: nvml_energy_counter, nvml_power_samples, "
                               "unavailable")
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

void WorkerMetrics::JobMeasured(const std::string& model, const JobOutput& output) {
  const std::pair<const char*, double> durations[] = {{"text", output.text_seconds},
                                                      {"denoise", output.denoise_seconds},
                                                      {"decode", output.decode_seconds},
                                                      {"video_encode", output.video_encode_seconds}};
  for (const auto& [phase, seconds] : durations) {
    phase_duration_.Add({{"model", model}, {"phase", phase}}, DurationBuckets()).Observe(seconds);
  }
  if (output.energy_source == "unavailable") return;  // no energy is not 0 J
  const std::pair<const char*, double> energies[] = {{"text", output.text_energy_joules},
                                                     {"denoise", output.denoise_energy_joules},
                                                     {"decode", output.decode_energy_joules},
                                                     {"video_encode", output.video_encode_energy_joules}};
  for (const auto& [phase, joules] : energies) {
    phase_energy_.Add({{"model", model}, {"phase", phase}}).Increment(std::max(0.0, joules));
  }
  for (const auto& [gpu, joules] : output.energy_per_gpu) {
    gpu_energy_.Add({{"gpu", gpu}}).Increment(std::max(0.0, joules));
  }
}

void WorkerMetrics::UploadFinished(const std::string& model, double seconds) {
  phase_duration_.Add({{"model", model}, {"phase", "upload"}}, DurationBuckets()).Observe(seconds);
}

void WorkerMetrics::SetEnergySource(const std::string& source, const std::vector<std::string>& gpu_labels) {
  for (const char* name : {"nvml_energy_counter", "nvml_power_samples", "unavailable"}) {
    energy_source_.Add({{"source", name}}).Set(source == name ? 1 : 0);
  }
  for (const std::string& gpu : gpu_labels) gpu_energy_.Add({{"gpu", gpu}});
}

}  // namespace zoetrope
