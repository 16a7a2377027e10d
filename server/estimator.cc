#include "server/estimator.h"

#include <sqlite3.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "parallel/sparsity_plan.h"

namespace zoetrope::server {
namespace {

namespace v1 = zoetrope::v1;

// DiT shapes of spec/wan21.md §1: hidden size, FFN size, blocks. A model the table does not know is
// costed with the 1.3B shapes: its calibration absorbs the scale, only the balance of attention and linear
// work across resolutions is then approximate.
struct DitShape {
  double dim;
  double ffn;
  double layers;
};
DitShape DitShapeOf(const std::string& model) {
  if (absl::StrContains(absl::AsciiStrToLower(model), "14b")) return {5120, 13824, 40};
  return {1536, 8960, 30};
}

constexpr double kTextTokens = 512;
// umT5-XXL encoder over 512 tokens (spec §7).
constexpr double kTextFlopsPerPrompt = 4.8e12;
// The VAE decode at 832×480×81 (spec §7), scaled by pixel-frames.
constexpr double kDecodeFlopsAt480p81 = 275e12;
constexpr double kPixelFrames480p81 = 832.0 * 480.0 * 81.0;

// Priors before a configuration has finished a job. GPUs: dense bf16 peak of the H100/H200 class with μ
// of the paper for the DiT (0.456), a lower one for the text encoder, the VAE as measured in our pipeline
// on the H200 (275 TFLOP in 19 s), the MP4 encoder likewise (81×480×832 in 2.2 s), 650 W per GPU
// (ML.ENERGY's 64.7 kJ over 95.4 s on one H100). CPU: a few tens of GFLOP/s and no energy.
constexpr double kGpuPeakFlops = 989e12;
constexpr std::array<double, kWorkPhases> kGpuMu = {0.3, 0.456, 0.0147, 0.0};
constexpr double kGpuVideoPixelsPerSecond = kPixelFrames480p81 / 2.2;
constexpr double kGpuWatts = 650;
constexpr double kCpuFlops = 3e10;
constexpr double kCpuVideoPixelsPerSecond = 5e6;
constexpr double kPriorOverheadSeconds = 1.0;

bool IsCpu(const EstimateConfiguration& configuration) { return configuration.gpu_kind == "cpu"; }

double PriorRate(const EstimateConfiguration& configuration, int phase) {
  const bool cpu = IsCpu(configuration);
  if (phase == static_cast<int>(WorkPhase::kVideoEncode)) return cpu ? kCpuVideoPixelsPerSecond : kGpuVideoPixelsPerSecond;
  if (cpu) return kCpuFlops;
  return kGpuMu[phase] * kGpuPeakFlops * std::max(1, configuration.gpus);
}

}  // namespace

std::string EstimateConfiguration::Key() const {
  return absl::StrCat(model, "|", gpu_kind, "|", attention, "|gpus", gpus, "|sp", sequence_parallel, "|cfg",
                      cfg_parallel);
}

std::string AttentionModeOf(const std::string& attention) {
  const std::string trimmed(absl::StripAsciiWhitespace(attention));
  if (trimmed.empty()) return "dense";
  for (const std::string& preset : SparsityPlanPresetNames()) {
    if (trimmed == preset) return preset;
  }
  return "custom";
}

double JobWork::TeraFlops() const {
  return (work[static_cast<int>(WorkPhase::kText)] + work[static_cast<int>(WorkPhase::kDenoise)] +
          work[static_cast<int>(WorkPhase::kDecode)]) *
         1e-12;
}

JobWork AnalyticWork(const v1::SubmitJobRequest& request, double attention_density) {
  JobWork job;
  const DitShape shape = DitShapeOf(request.model());
  const double width = request.width(), height = request.height(), frames = request.frames();
  const double latent_frames = std::floor((frames - 1) / 4) + 1;
  const double tokens = latent_frames * std::floor(height / 16) * std::floor(width / 16);
  const double d = shape.dim;
  const bool cfg = request.guidance() != 1.0;
  const double forwards = static_cast<double>(request.steps()) * (cfg ? 2 : 1);
  // Per block (spec §7): self q,k,v,o 8LD², cross q,o 4LD², cross k,v 4·512·D², cross attention 4·L·512·D,
  // FFN 4LDF; self attention QKᵀ and PV 4L²D, of which the plan computes `density`.
  const double linear = 12 * tokens * d * d + 4 * kTextTokens * d * d + 4 * tokens * kTextTokens * d +
                        4 * tokens * d * shape.ffn;
  const double attention = 4 * tokens * tokens * d;
  const double density = attention_density > 0 ? std::min(attention_density, 1.0) : 1.0;
  job.denoise_attention_dense = forwards * shape.layers * attention;
  job.work[static_cast<int>(WorkPhase::kDenoise)] = forwards * shape.layers * (linear + density * attention);
  job.work[static_cast<int>(WorkPhase::kText)] = kTextFlopsPerPrompt * (cfg ? 2 : 1);
  const double pixel_frames = width * height * frames;
  job.work[static_cast<int>(WorkPhase::kDecode)] = kDecodeFlopsAt480p81 * pixel_frames / kPixelFrames480p81;
  job.work[static_cast<int>(WorkPhase::kVideoEncode)] = pixel_frames;
  return job;
}

std::string Calibration::Serialize() const {
  std::string text = absl::StrFormat("v1 %d %.17g %.17g %.17g %.17g %d", jobs, weight, overhead_seconds,
                                     residual_joules, density, energy_measured ? 1 : 0);
  for (const auto* values : {&work, &seconds, &joules}) {
    for (double value : *values) absl::StrAppend(&text, absl::StrFormat(" %.17g", value));
  }
  return text;
}

absl::StatusOr<Calibration> Calibration::Parse(const std::string& text) {
  const std::vector<std::string> fields = absl::StrSplit(text, ' ', absl::SkipEmpty());
  if (fields.size() != 7 + 3 * kWorkPhases || fields[0] != "v1") {
    return absl::DataLossError(absl::StrCat("calibration: expected \"v1\" and ", 6 + 3 * kWorkPhases,
                                            " numbers, got \"", text, "\""));
  }
  Calibration calibration;
  int energy = 0;
  bool ok = absl::SimpleAtoi(fields[1], &calibration.jobs) && absl::SimpleAtod(fields[2], &calibration.weight) &&
            absl::SimpleAtod(fields[3], &calibration.overhead_seconds) &&
            absl::SimpleAtod(fields[4], &calibration.residual_joules) &&
            absl::SimpleAtod(fields[5], &calibration.density) && absl::SimpleAtoi(fields[6], &energy);
  size_t next = 7;
  for (auto* values : {&calibration.work, &calibration.seconds, &calibration.joules}) {
    for (double& value : *values) ok = ok && absl::SimpleAtod(fields[next++], &value);
  }
  if (!ok) return absl::DataLossError(absl::StrCat("calibration: a field is not a number in \"", text, "\""));
  calibration.energy_measured = energy != 0;
  return calibration;
}

absl::StatusOr<std::unique_ptr<CalibrationStore>> CalibrationStore::Open(const std::string& database_path) {
  sqlite3* database = nullptr;
  if (sqlite3_open_v2(database_path.c_str(), &database, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) !=
      SQLITE_OK) {
    std::string message = database != nullptr ? sqlite3_errmsg(database) : "out of memory";
    sqlite3_close(database);
    return absl::UnavailableError(absl::StrCat(database_path, ": calibration table: ", message));
  }
  std::unique_ptr<CalibrationStore> store(new CalibrationStore(database));
  sqlite3_busy_timeout(database, 5000);
  char* error = nullptr;
  if (sqlite3_exec(database, "CREATE TABLE IF NOT EXISTS calibration (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
                   nullptr, nullptr, &error) != SQLITE_OK) {
    std::string message = error != nullptr ? error : "unknown error";
    sqlite3_free(error);
    return absl::UnavailableError(absl::StrCat(database_path, ": creating the calibration table: ", message));
  }
  return store;
}

CalibrationStore::~CalibrationStore() { sqlite3_close(database_); }

absl::StatusOr<std::map<std::string, Calibration>> CalibrationStore::LoadAll() {
  sqlite3_stmt* statement = nullptr;
  if (sqlite3_prepare_v2(database_, "SELECT key, value FROM calibration", -1, &statement, nullptr) != SQLITE_OK) {
    return absl::UnavailableError(absl::StrCat("calibration table: ", sqlite3_errmsg(database_)));
  }
  std::map<std::string, Calibration> calibrations;
  int step;
  while ((step = sqlite3_step(statement)) == SQLITE_ROW) {
    const std::string key(reinterpret_cast<const char*>(sqlite3_column_text(statement, 0)));
    const std::string value(reinterpret_cast<const char*>(sqlite3_column_text(statement, 1)));
    absl::StatusOr<Calibration> calibration = Calibration::Parse(value);
    if (!calibration.ok()) {
      sqlite3_finalize(statement);
      return absl::DataLossError(absl::StrCat("calibration of \"", key, "\": ", calibration.status().message()));
    }
    calibrations[key] = *calibration;
  }
  sqlite3_finalize(statement);
  if (step != SQLITE_DONE) return absl::UnavailableError(absl::StrCat("calibration table: ", sqlite3_errmsg(database_)));
  return calibrations;
}

absl::Status CalibrationStore::Put(const std::string& key, const Calibration& calibration) {
  sqlite3_stmt* statement = nullptr;
  if (sqlite3_prepare_v2(database_, "INSERT OR REPLACE INTO calibration (key, value) VALUES (?, ?)", -1, &statement,
                         nullptr) != SQLITE_OK) {
    return absl::UnavailableError(absl::StrCat("calibration table: ", sqlite3_errmsg(database_)));
  }
  const std::string value = calibration.Serialize();
  sqlite3_bind_text(statement, 1, key.data(), static_cast<int>(key.size()), SQLITE_TRANSIENT);
  sqlite3_bind_text(statement, 2, value.data(), static_cast<int>(value.size()), SQLITE_TRANSIENT);
  const int step = sqlite3_step(statement);
  sqlite3_finalize(statement);
  if (step != SQLITE_DONE) return absl::UnavailableError(absl::StrCat("calibration table: ", sqlite3_errmsg(database_)));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Estimator>> Estimator::Create(std::unique_ptr<CalibrationStore> store) {
  std::unique_ptr<Estimator> estimator(new Estimator(std::move(store)));
  if (estimator->store_ != nullptr) {
    absl::StatusOr<std::map<std::string, Calibration>> loaded = estimator->store_->LoadAll();
    if (!loaded.ok()) return loaded.status();
    estimator->calibrations_ = *std::move(loaded);
  }
  return estimator;
}

Prediction Estimator::Predict(const v1::SubmitJobRequest& request, const EstimateConfiguration& configuration) const {
  auto found = calibrations_.find(configuration.Key());
  const Calibration* calibration = found != calibrations_.end() && found->second.weight > 0 ? &found->second : nullptr;
  const double density = calibration != nullptr ? calibration->density / calibration->weight
                                                : 1.0;  // no observed density yet: cost the attention as dense
  const JobWork work = AnalyticWork(request, density);
  Prediction prediction;
  prediction.tera_flops = work.TeraFlops();
  prediction.calibration_jobs = calibration != nullptr ? calibration->jobs : 0;
  prediction.run_seconds = calibration != nullptr ? calibration->overhead_seconds / calibration->weight
                                                  : kPriorOverheadSeconds;
  const bool gpu = !IsCpu(configuration);
  if (calibration != nullptr && calibration->energy_measured) {
    prediction.gpu_energy_joules = calibration->residual_joules / calibration->weight;
  }
  for (int phase = 0; phase < kWorkPhases; ++phase) {
    const bool calibrated = calibration != nullptr && calibration->seconds[phase] > 0 && calibration->work[phase] > 0;
    const double rate = calibrated ? calibration->work[phase] / calibration->seconds[phase]
                                   : PriorRate(configuration, phase);
    const double seconds = work.work[phase] / rate;
    prediction.phase_seconds[phase] = seconds;
    prediction.run_seconds += seconds;
    if (calibration != nullptr && calibration->energy_measured && calibrated) {
      prediction.gpu_energy_joules += seconds * calibration->joules[phase] / calibration->seconds[phase];
    } else if (gpu) {
      prediction.gpu_energy_joules += seconds * kGpuWatts * std::max(1, configuration.gpus);
    }
  }
  return prediction;
}

absl::Status Estimator::Observe(const v1::SubmitJobRequest& request, const EstimateConfiguration& configuration,
                                const v1::Measurements& measurements) {
  const double density = measurements.attention_density() > 0 ? measurements.attention_density() : 1.0;
  const JobWork work = AnalyticWork(request, density);
  const std::array<double, kWorkPhases> seconds = {measurements.text_seconds(), measurements.denoise_seconds(),
                                                   measurements.decode_seconds(), measurements.video_encode_seconds()};
  const std::array<double, kWorkPhases> joules = {
      measurements.text_energy_joules(), measurements.denoise_energy_joules(), measurements.decode_energy_joules(),
      measurements.video_encode_energy_joules()};
  const bool energy = !measurements.energy_source().empty() && measurements.energy_source() != "unavailable";
  Calibration& calibration = calibrations_[configuration.Key()];
  double phase_seconds = 0, phase_joules = 0;
  for (int phase = 0; phase < kWorkPhases; ++phase) {
    calibration.work[phase] = kDecay * calibration.work[phase] + (seconds[phase] > 0 ? work.work[phase] : 0);
    calibration.seconds[phase] = kDecay * calibration.seconds[phase] + std::max(0.0, seconds[phase]);
    calibration.joules[phase] = kDecay * calibration.joules[phase] + (energy ? std::max(0.0, joules[phase]) : 0);
    phase_seconds += std::max(0.0, seconds[phase]);
    phase_joules += std::max(0.0, joules[phase]);
  }
  calibration.overhead_seconds =
      kDecay * calibration.overhead_seconds + std::max(0.0, measurements.run_seconds() - phase_seconds);
  calibration.residual_joules =
      kDecay * calibration.residual_joules + (energy ? std::max(0.0, measurements.gpu_energy_joules() - phase_joules) : 0);
  calibration.density = kDecay * calibration.density + density;
  calibration.weight = kDecay * calibration.weight + 1;
  calibration.energy_measured = calibration.energy_measured || energy;
  ++calibration.jobs;
  return store_ != nullptr ? store_->Put(configuration.Key(), calibration) : absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Estimator>> Estimator::Open(const std::string& database_path) {
  absl::StatusOr<std::unique_ptr<CalibrationStore>> store = CalibrationStore::Open(database_path);
  if (!store.ok()) return store.status();
  return Create(std::move(*store));
}

void CopyWorkerMeasurements(const v1::Measurements& from, v1::Measurements& to) {
  to.set_energy_source(from.energy_source());
  to.set_text_seconds(from.text_seconds());
  to.set_decode_seconds(from.decode_seconds());
  to.set_video_encode_seconds(from.video_encode_seconds());
  to.set_upload_seconds(from.upload_seconds());
  to.set_text_energy_joules(from.text_energy_joules());
  to.set_denoise_energy_joules(from.denoise_energy_joules());
  to.set_decode_energy_joules(from.decode_energy_joules());
  to.set_video_encode_energy_joules(from.video_encode_energy_joules());
}

double Estimator::ParallelEfficiency(const EstimateConfiguration& configuration) const {
  EstimateConfiguration single = configuration;
  single.gpus = 1;
  single.sequence_parallel = 1;
  single.cfg_parallel = 1;
  auto group = calibrations_.find(configuration.Key());
  auto one = calibrations_.find(single.Key());
  constexpr int kDenoise = static_cast<int>(WorkPhase::kDenoise);
  if (group == calibrations_.end() || one == calibrations_.end() || group->second.seconds[kDenoise] <= 0 ||
      one->second.seconds[kDenoise] <= 0 || one->second.work[kDenoise] <= 0) {
    return 0.0;
  }
  const double group_rate = group->second.work[kDenoise] / group->second.seconds[kDenoise];
  const double one_rate = one->second.work[kDenoise] / one->second.seconds[kDenoise];
  return group_rate / (one_rate * std::max(1, configuration.gpus));
}

}  // namespace zoetrope::server
