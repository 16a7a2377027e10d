// The quote before the GPU is spent (docs/energy.md): the "Video Killed the Energy Budget" model on our
// pipeline. Each phase's work is analytic (matmul FLOPs of spec/wan21.md §7 for the text encoder, the DiT
// and the VAE decoder; pixel-frames for the video encoder), and its time is work / (μ·Θ), its energy P̄·time.
// The effective throughput μ·Θ and the mean power P̄ of every phase are calibrated online from finished
// jobs, per configuration (model, GPU kind, attention mode, GPUs, parallel degrees), as ratio estimators
// over the jobs seen (Σ work / Σ seconds, Σ joules / Σ seconds) with an exponential decay so that they
// follow a changed machine. The job's time outside the phases (assignment, load, upload) is calibrated as
// its mean. Until a configuration has finished a job the priors below apply (expect a large error).
//
// Calibrations are kept in the job database's own table (CalibrationStore) so that a restarted scheduler
// quotes as well as before.
//
// Not thread-safe: the scheduler serializes calls.
#pragma once

#include <array>
#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "zoetrope/v1/video_service.pb.h"

struct sqlite3;

namespace zoetrope::server {

// What runs a job, as far as its speed and power are concerned.
struct EstimateConfiguration {
  std::string model;
  std::string gpu_kind = "unknown";  // "NVIDIA H200", "cpu"
  std::string attention = "dense";   // preset name, or "custom" for plan text
  int gpus = 1;
  int sequence_parallel = 1;
  int cfg_parallel = 1;
  std::string Key() const;
};

// The attention mode of a request's `attention` field: "dense" when empty (the worker default is assumed
// dense), the preset's name, or "custom" for plan text.
std::string AttentionModeOf(const std::string& attention);

// The phases the model times separately.
enum class WorkPhase { kText = 0, kDenoise = 1, kDecode = 2, kVideoEncode = 3 };
inline constexpr int kWorkPhases = 4;

// Analytic work of one request per phase: FLOPs for text, denoise and decode, pixel-frames for the video
// encoder. The denoise term counts the self-attention's score and value products at `density`.
struct JobWork {
  std::array<double, kWorkPhases> work{};
  double denoise_attention_dense = 0.0;  // the attention part of work[kDenoise] at density 1
  double TeraFlops() const;              // text + denoise + decode
};
JobWork AnalyticWork(const zoetrope::v1::SubmitJobRequest& request, double attention_density);

struct Prediction {
  double run_seconds = 0.0;
  double gpu_energy_joules = 0.0;
  double tera_flops = 0.0;
  int calibration_jobs = 0;
  std::array<double, kWorkPhases> phase_seconds{};
};

// Decayed sums of one configuration (the persistent state).
struct Calibration {
  std::array<double, kWorkPhases> work{};
  std::array<double, kWorkPhases> seconds{};
  std::array<double, kWorkPhases> joules{};
  double overhead_seconds = 0.0;  // Σ (run − phases)
  double residual_joules = 0.0;   // Σ (energy − phase energies)
  double density = 0.0;           // Σ attention density
  double weight = 0.0;            // Σ decayed job weights
  int jobs = 0;
  bool energy_measured = false;

  std::string Serialize() const;
  static absl::StatusOr<Calibration> Parse(const std::string& text);
};

// The calibration table in the job database (its own table; a separate connection to the same file).
class CalibrationStore {
 public:
  static absl::StatusOr<std::unique_ptr<CalibrationStore>> Open(const std::string& database_path);
  ~CalibrationStore();
  absl::StatusOr<std::map<std::string, Calibration>> LoadAll();
  absl::Status Put(const std::string& key, const Calibration& calibration);

 private:
  explicit CalibrationStore(sqlite3* database) : database_(database) {}
  sqlite3* database_ = nullptr;
};

// Copies what only the worker measures (energy source, phase seconds and energies, upload time) from a
// completion into the job's measurements.
void CopyWorkerMeasurements(const zoetrope::v1::Measurements& from, zoetrope::v1::Measurements& to);

class Estimator {
 public:
  // Weight of the past per new job: 0.9 keeps about the last ten jobs in view.
  static constexpr double kDecay = 0.9;

  // `store` may be null (nothing persists).
  static absl::StatusOr<std::unique_ptr<Estimator>> Create(std::unique_ptr<CalibrationStore> store);
  // With the calibration table of the job database at `database_path`.
  static absl::StatusOr<std::unique_ptr<Estimator>> Open(const std::string& database_path);

  Prediction Predict(const zoetrope::v1::SubmitJobRequest& request, const EstimateConfiguration& configuration) const;
  // Learns from a SUCCEEDED job's measurements (run and phase seconds, energies, attention density).
  absl::Status Observe(const zoetrope::v1::SubmitJobRequest& request, const EstimateConfiguration& configuration,
                       const zoetrope::v1::Measurements& measurements);
  // Denoise throughput per GPU of this configuration relative to the same model, GPU kind and attention
  // on one GPU without parallelism (sequence-parallel efficiency); 0 when either is not calibrated.
  double ParallelEfficiency(const EstimateConfiguration& configuration) const;

  const std::map<std::string, Calibration>& calibrations() const { return calibrations_; }

 private:
  explicit Estimator(std::unique_ptr<CalibrationStore> store) : store_(std::move(store)) {}
  std::unique_ptr<CalibrationStore> store_;
  std::map<std::string, Calibration> calibrations_;
};

}  // namespace zoetrope::server
