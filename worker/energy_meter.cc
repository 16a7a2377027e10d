#include "worker/energy_meter.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <numeric>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

namespace zoetrope {
namespace {

// The NVML ABI we use (nvml.h is not needed: these signatures are stable across driver versions).
using NvmlReturn = int;
using NvmlDevice = struct NvmlDeviceOpaque*;
constexpr NvmlReturn kNvmlSuccess = 0;
using NvmlInitFn = NvmlReturn (*)();
using NvmlShutdownFn = NvmlReturn (*)();
using NvmlErrorStringFn = const char* (*)(NvmlReturn);
using NvmlHandleByIndexFn = NvmlReturn (*)(unsigned int, NvmlDevice*);
using NvmlHandleByUuidFn = NvmlReturn (*)(const char*, NvmlDevice*);
using NvmlTotalEnergyFn = NvmlReturn (*)(NvmlDevice, unsigned long long*);  // millijoules
using NvmlPowerUsageFn = NvmlReturn (*)(NvmlDevice, unsigned int*);         // milliwatts
using NvmlNameFn = NvmlReturn (*)(NvmlDevice, char*, unsigned int);
struct NvmlMemory {  // nvmlMemory_t (v1): bytes
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};
using NvmlMemoryInfoFn = NvmlReturn (*)(NvmlDevice, NvmlMemory*);

class NvmlPowerReader final : public GpuPowerReader {
 public:
  ~NvmlPowerReader() override {
    if (shutdown_ != nullptr) shutdown_();
    if (library_ != nullptr) dlclose(library_);
  }

  static absl::StatusOr<std::unique_ptr<GpuPowerReader>> Open(const std::vector<int>& cuda_ordinals) {
    void* library = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (library == nullptr) return absl::UnavailableError(absl::StrCat("NVML: dlopen libnvidia-ml.so.1: ", dlerror()));
    std::unique_ptr<NvmlPowerReader> reader(new NvmlPowerReader());
    reader->library_ = library;
    auto symbol = [library](const char* name) { return dlsym(library, name); };
    auto init = reinterpret_cast<NvmlInitFn>(symbol("nvmlInit_v2"));
    reader->error_string_ = reinterpret_cast<NvmlErrorStringFn>(symbol("nvmlErrorString"));
    auto by_index = reinterpret_cast<NvmlHandleByIndexFn>(symbol("nvmlDeviceGetHandleByIndex_v2"));
    auto by_uuid = reinterpret_cast<NvmlHandleByUuidFn>(symbol("nvmlDeviceGetHandleByUUID"));
    reader->energy_ = reinterpret_cast<NvmlTotalEnergyFn>(symbol("nvmlDeviceGetTotalEnergyConsumption"));
    reader->power_ = reinterpret_cast<NvmlPowerUsageFn>(symbol("nvmlDeviceGetPowerUsage"));
    auto shutdown = reinterpret_cast<NvmlShutdownFn>(symbol("nvmlShutdown"));
    auto name_of = reinterpret_cast<NvmlNameFn>(symbol("nvmlDeviceGetName"));
    auto memory_of = reinterpret_cast<NvmlMemoryInfoFn>(symbol("nvmlDeviceGetMemoryInfo"));
    if (init == nullptr || shutdown == nullptr || by_index == nullptr || by_uuid == nullptr ||
        reader->power_ == nullptr) {
      return absl::UnavailableError("NVML: libnvidia-ml.so.1 lacks nvmlInit_v2 or the device functions");
    }
    if (NvmlReturn status = init(); status != kNvmlSuccess) {
      return absl::UnavailableError(absl::StrCat("NVML: nvmlInit_v2: ", reader->ErrorText(status)));
    }
    reader->shutdown_ = shutdown;

    // CUDA ordinal -> NVML device, through CUDA_VISIBLE_DEVICES when it renumbers the GPUs.
    std::vector<std::string> visible;
    if (const char* env = std::getenv("CUDA_VISIBLE_DEVICES"); env != nullptr && *env != '\0') {
      visible = absl::StrSplit(env, ',', absl::SkipWhitespace());
    }
    for (int ordinal : cuda_ordinals) {
      NvmlDevice device = nullptr;
      NvmlReturn status;
      std::string name = absl::StrCat(ordinal);
      if (ordinal >= 0 && ordinal < static_cast<int>(visible.size())) {
        const std::string entry(absl::StripAsciiWhitespace(visible[ordinal]));
        unsigned int index = 0;
        if (absl::SimpleAtoi(entry, &index)) {
          status = by_index(index, &device);
        } else {
          status = by_uuid(entry.c_str(), &device);  // "GPU-<uuid>"
        }
        name = absl::StrCat("CUDA_VISIBLE_DEVICES entry ", entry);
      } else {
        status = by_index(static_cast<unsigned int>(ordinal), &device);
      }
      if (status != kNvmlSuccess) {
        return absl::NotFoundError(absl::StrCat("NVML: GPU ", ordinal, " (", name, "): ", reader->ErrorText(status)));
      }
      reader->devices_.push_back(device);
      reader->labels_.push_back(absl::StrCat(ordinal));
    }
    char product[96] = {};
    if (name_of != nullptr && !reader->devices_.empty() &&
        name_of(reader->devices_.front(), product, sizeof(product)) == kNvmlSuccess) {
      reader->kind_ = product;
    }
    // Memory: optional (0 = unknown); the smallest of the group bounds what one rank may use.
    for (NvmlDevice device : reader->devices_) {
      NvmlMemory memory{};
      if (memory_of == nullptr || memory_of(device, &memory) != kNvmlSuccess || memory.total == 0) {
        reader->memory_bytes_ = 0;
        break;
      }
      const auto total = static_cast<int64_t>(memory.total);
      reader->memory_bytes_ = reader->memory_bytes_ == 0 ? total : std::min(reader->memory_bytes_, total);
    }
    // The counter exists on Volta and newer; one GPU without it sends the whole group to power sampling,
    // so that a job's phases are measured one way.
    reader->has_energy_counter_ = reader->energy_ != nullptr && !reader->devices_.empty();
    for (NvmlDevice device : reader->devices_) {
      unsigned long long millijoules = 0;
      if (reader->energy_ == nullptr || reader->energy_(device, &millijoules) != kNvmlSuccess) {
        reader->has_energy_counter_ = false;
      }
    }
    return std::unique_ptr<GpuPowerReader>(std::move(reader));
  }

  int gpu_count() const override { return static_cast<int>(devices_.size()); }
  bool has_energy_counter() const override { return has_energy_counter_; }
  std::string gpu_label(int gpu) const override { return labels_.at(gpu); }
  std::string gpu_kind() const override { return kind_; }
  int64_t gpu_memory_bytes() const override { return memory_bytes_; }

  absl::StatusOr<double> EnergyJoules(int gpu) override {
    unsigned long long millijoules = 0;
    if (energy_ == nullptr) return absl::UnimplementedError("NVML: no nvmlDeviceGetTotalEnergyConsumption");
    if (NvmlReturn status = energy_(devices_.at(gpu), &millijoules); status != kNvmlSuccess) {
      return absl::UnavailableError(absl::StrCat("NVML: energy of GPU ", labels_[gpu], ": ", ErrorText(status)));
    }
    return static_cast<double>(millijoules) * 1e-3;
  }

  absl::StatusOr<double> PowerWatts(int gpu) override {
    unsigned int milliwatts = 0;
    if (NvmlReturn status = power_(devices_.at(gpu), &milliwatts); status != kNvmlSuccess) {
      return absl::UnavailableError(absl::StrCat("NVML: power of GPU ", labels_[gpu], ": ", ErrorText(status)));
    }
    return static_cast<double>(milliwatts) * 1e-3;
  }

 private:
  NvmlPowerReader() = default;
  std::string ErrorText(NvmlReturn status) const {
    if (error_string_ != nullptr) {
      if (const char* text = error_string_(status); text != nullptr) return absl::StrCat(text, " (", status, ")");
    }
    return absl::StrCat("error ", status);
  }

  void* library_ = nullptr;
  NvmlShutdownFn shutdown_ = nullptr;
  NvmlErrorStringFn error_string_ = nullptr;
  NvmlTotalEnergyFn energy_ = nullptr;
  NvmlPowerUsageFn power_ = nullptr;
  std::vector<NvmlDevice> devices_;
  std::vector<std::string> labels_;
  std::string kind_ = "gpu";
  bool has_energy_counter_ = false;
  int64_t memory_bytes_ = 0;
};

EnergySource SourceOf(const GpuPowerReader* reader) {
  if (reader == nullptr || reader->gpu_count() == 0) return EnergySource::kUnavailable;
  return reader->has_energy_counter() ? EnergySource::kEnergyCounter : EnergySource::kPowerSamples;
}

}  // namespace

const char* EnergySourceName(EnergySource source) {
  switch (source) {
    case EnergySource::kEnergyCounter:
      return "nvml_energy_counter";
    case EnergySource::kPowerSamples:
      return "nvml_power_samples";
    case EnergySource::kUnavailable:
      break;
  }
  return "unavailable";
}

absl::StatusOr<std::unique_ptr<GpuPowerReader>> OpenNvmlPowerReader(const std::vector<int>& cuda_ordinals) {
  return NvmlPowerReader::Open(cuda_ordinals);
}

double EnergySnapshot::total() const { return std::accumulate(joules_per_gpu.begin(), joules_per_gpu.end(), 0.0); }

EnergyMeter::EnergyMeter(std::unique_ptr<GpuPowerReader> reader, absl::Duration sample_interval)
    : reader_(std::move(reader)), source_(SourceOf(reader_.get())), sample_interval_(sample_interval) {}

EnergyMeter::~EnergyMeter() { Stop(); }

void EnergyMeter::Start() {
  Stop();
  if (!available()) return;
  absl::MutexLock lock(&mutex_);
  const int gpus = reader_->gpu_count();
  running_ = true;
  if (source_ == EnergySource::kEnergyCounter) {
    start_joules_.assign(gpus, 0.0);
    for (int gpu = 0; gpu < gpus; ++gpu) {
      absl::StatusOr<double> joules = reader_->EnergyJoules(gpu);
      start_joules_[gpu] = joules.ok() ? *joules : 0.0;
    }
    return;
  }
  integrated_.assign(gpus, 0.0);
  last_watts_.assign(gpus, 0.0);
  for (int gpu = 0; gpu < gpus; ++gpu) {
    absl::StatusOr<double> watts = reader_->PowerWatts(gpu);
    last_watts_[gpu] = watts.ok() ? *watts : 0.0;
  }
  last_sample_ = absl::Now();
  sampler_ = std::thread([this] { SampleLoop(); });
}

void EnergyMeter::SampleLocked() {
  const absl::Time now = absl::Now();
  const double seconds = absl::ToDoubleSeconds(now - last_sample_);
  for (int gpu = 0; gpu < reader_->gpu_count(); ++gpu) {
    absl::StatusOr<double> watts = reader_->PowerWatts(gpu);
    // A failed sample repeats the last one (the trapezoid degenerates to a rectangle).
    const double current = watts.ok() ? *watts : last_watts_[gpu];
    integrated_[gpu] += 0.5 * (last_watts_[gpu] + current) * seconds;
    last_watts_[gpu] = current;
  }
  last_sample_ = now;
}

void EnergyMeter::SampleLoop() {
  absl::MutexLock lock(&mutex_);
  while (running_) {
    auto stopped = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return !running_; };
    if (mutex_.AwaitWithTimeout(absl::Condition(&stopped), sample_interval_)) break;
    SampleLocked();
  }
}

EnergySnapshot EnergyMeter::Read() {
  EnergySnapshot snapshot;
  if (!available()) return snapshot;
  absl::MutexLock lock(&mutex_);
  if (source_ == EnergySource::kEnergyCounter) {
    snapshot.joules_per_gpu.assign(start_joules_.size(), 0.0);
    for (size_t gpu = 0; gpu < start_joules_.size(); ++gpu) {
      absl::StatusOr<double> joules = reader_->EnergyJoules(static_cast<int>(gpu));
      snapshot.joules_per_gpu[gpu] = joules.ok() ? *joules - start_joules_[gpu] : 0.0;
    }
    return snapshot;
  }
  if (running_) SampleLocked();
  snapshot.joules_per_gpu = integrated_;
  return snapshot;
}

EnergySnapshot EnergyMeter::Stop() {
  EnergySnapshot last;
  {
    absl::MutexLock lock(&mutex_);
    if (!running_) return last;
  }
  last = Read();
  {
    absl::MutexLock lock(&mutex_);
    running_ = false;
  }
  if (sampler_.joinable()) sampler_.join();
  return last;
}

}  // namespace zoetrope
