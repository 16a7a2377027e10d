// The quote at submission and the accounting at the end (docs/energy.md): which configuration will run a
// job, its estimate (queue wait, run, energy, cost), its cost once it ran, the prediction error, and what
// the estimator learns from it.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "absl/time/clock.h"
#include "common/log.h"
#include "common/time_util.h"
#include "server/scheduler.h"

namespace zoetrope::server {
namespace {

namespace v1 = zoetrope::v1;

// The queue's order of priority classes (UNSPECIFIED is NORMAL).
int PriorityRank(v1::Priority priority) {
  return priority == v1::PRIORITY_UNSPECIFIED ? static_cast<int>(v1::PRIORITY_NORMAL) : static_cast<int>(priority);
}

bool Serves(const v1::WorkerCapabilities& capabilities, const std::string& model) {
  return std::find(capabilities.models().begin(), capabilities.models().end(), model) != capabilities.models().end();
}

EstimateConfiguration FromCapabilities(const v1::SubmitJobRequest& request, const v1::WorkerCapabilities& capabilities) {
  EstimateConfiguration configuration;
  configuration.model = request.model();
  configuration.attention = AttentionModeOf(request.attention());
  configuration.gpu_kind = !capabilities.gpu_kind().empty() ? capabilities.gpu_kind()
                           : capabilities.backend() == "cpu" ? "cpu"
                                                             : "unknown";
  configuration.gpus = capabilities.gpus();
  configuration.sequence_parallel = std::max(1, capabilities.sequence_parallel_degree());
  configuration.cfg_parallel = std::max(1, capabilities.cfg_parallel_degree());
  return configuration;
}

}  // namespace

EstimateConfiguration Scheduler::ConfigurationLocked(const v1::SubmitJobRequest& request,
                                                     const WorkerState* worker) const {
  if (worker != nullptr) return FromCapabilities(request, worker->capabilities);
  // The worker that would take it: among those connected that serve the model, the one dispatch prefers
  // when all are idle (fewest GPUs).
  const WorkerState* best = nullptr;
  for (const auto& [connection, candidate] : workers_) {
    if (candidate.draining || !Serves(candidate.capabilities, request.model())) continue;
    if (best == nullptr || candidate.capabilities.gpus() < best->capabilities.gpus()) best = &candidate;
  }
  if (best != nullptr) return FromCapabilities(request, best->capabilities);
  if (auto last = capabilities_by_model_.find(request.model()); last != capabilities_by_model_.end()) {
    return FromCapabilities(request, last->second);
  }
  EstimateConfiguration unknown;
  unknown.model = request.model();
  unknown.attention = AttentionModeOf(request.attention());
  return unknown;
}

void Scheduler::EstimateLocked(LiveJob& live) {
  const v1::SubmitJobRequest& request = live.job.request();
  live.configuration = ConfigurationLocked(request, nullptr);
  v1::Estimate& estimate = *live.job.mutable_estimate();
  if (estimator_ != nullptr) {
    const Prediction prediction = estimator_->Predict(request, live.configuration);
    estimate.set_run_seconds(prediction.run_seconds);
    estimate.set_gpu_energy_joules(prediction.gpu_energy_joules);
    estimate.set_tera_flops(prediction.tera_flops);
    estimate.set_calibration_jobs(prediction.calibration_jobs);
  }
  estimate.set_configuration(live.configuration.Key());
  double price = options_.price_per_gpu_hour;
  int servers = 0;
  for (const auto& [connection, worker] : workers_) {
    if (worker.draining || !Serves(worker.capabilities, request.model())) continue;
    ++servers;
    if (worker.capabilities.price_per_gpu_hour() > 0 && FromCapabilities(request, worker.capabilities).Key() ==
                                                            live.configuration.Key()) {
      price = worker.capabilities.price_per_gpu_hour();
    }
  }
  estimate.set_cost_usd(live.configuration.gpus * estimate.run_seconds() / 3600.0 * price +
                        estimate.gpu_energy_joules() / 3.6e6 * options_.power_usage_effectiveness *
                            options_.price_per_kwh);

  // Queue wait: the work ahead of it (queued jobs of its model in classes that start first or with it,
  // and what the running ones have left), shared by the workers that serve the model.
  const absl::Time now = absl::Now();
  double ahead = 0.0;
  for (const auto& [id, other] : live_) {
    if (id == live.job.id() || other.job.request().model() != request.model()) continue;
    if (other.job.state() == v1::JOB_STATE_QUEUED &&
        PriorityRank(other.job.request().priority()) >= PriorityRank(request.priority())) {
      ahead += other.job.estimate().run_seconds();
    } else if (other.job.state() == v1::JOB_STATE_RUNNING) {
      const double elapsed = absl::ToDoubleSeconds(now - FromTimestamp(other.job.start_time()));
      ahead += std::max(0.0, other.job.estimate().run_seconds() - elapsed);
    }
  }
  estimate.set_queue_seconds(ahead / std::max(1, servers));
}

void Scheduler::CostLocked(LiveJob& live) const {
  v1::Measurements& measurements = *live.job.mutable_measurements();
  const double price = live.price_per_gpu_hour > 0 ? live.price_per_gpu_hour : options_.price_per_gpu_hour;
  const double gpu_time = measurements.gpus() * measurements.run_seconds() / 3600.0 * price;
  // Energy is billed only where it was measured; "unavailable" is not 0 J.
  const bool measured = !measurements.energy_source().empty() && measurements.energy_source() != "unavailable";
  const double energy = measured ? measurements.gpu_energy_joules() / 3.6e6 * options_.power_usage_effectiveness *
                                       options_.price_per_kwh
                                 : 0.0;
  measurements.set_gpu_time_cost_usd(gpu_time);
  measurements.set_energy_cost_usd(energy);
  measurements.set_cost_usd(gpu_time + energy);
}

void Scheduler::AccountFinishedLocked(LiveJob& live, v1::JobState state) {
  const v1::SubmitJobRequest& request = live.job.request();
  const v1::Measurements& measurements = live.job.measurements();
  const std::string resolution = SchedulerMetrics::ResolutionClass(request.width(), request.height());
  const bool energy_measured =
      !measurements.energy_source().empty() && measurements.energy_source() != "unavailable";
  if (metrics_ != nullptr) {
    metrics_->JobAccounted(request.model(), resolution, energy_measured, measurements.gpu_energy_joules(),
                           measurements.cost_usd());
  }
  if (state != v1::JOB_STATE_SUCCEEDED || measurements.run_seconds() <= 0) return;
  const v1::Estimate& estimate = live.job.estimate();
  if (metrics_ != nullptr && estimate.run_seconds() > 0) {
    const double video_seconds = static_cast<double>(request.frames()) / std::max(1, request.fps());
    const double energy_error =
        energy_measured && measurements.gpu_energy_joules() > 0 && estimate.gpu_energy_joules() > 0
            ? (estimate.gpu_energy_joules() - measurements.gpu_energy_joules()) / measurements.gpu_energy_joules()
            : std::numeric_limits<double>::quiet_NaN();
    metrics_->JobPredicted(request.model(), resolution, measurements.run_seconds() / video_seconds,
                           estimate.run_seconds(), measurements.run_seconds(),
                           (estimate.run_seconds() - measurements.run_seconds()) / measurements.run_seconds(),
                           energy_error);
  }
  // A job recovered after a restart has no configuration: its worker's is unknown, so it teaches nothing.
  if (estimator_ == nullptr || live.configuration.model.empty()) return;
  if (absl::Status learned = estimator_->Observe(request, live.configuration, measurements); !learned.ok()) {
    Log("scheduler", "calibration of ", live.configuration.Key(), " not saved: ", learned.message());
  }
  if (metrics_ != nullptr && live.configuration.gpus > 1) {
    if (const double efficiency = estimator_->ParallelEfficiency(live.configuration); efficiency > 0) {
      metrics_->SetParallelEfficiency(request.model(), live.configuration.gpus, efficiency);
    }
  }
}

}  // namespace zoetrope::server
