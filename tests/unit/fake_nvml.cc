// A stand-in libnvidia-ml.so.1 for nvml_loader_test: the few NVML entry points worker/energy_meter.cc
// resolves with dlsym, over four scripted GPUs. GPU i's energy counter advances by (i + 1) J per read and its
// power is 100·(i + 1) W; GPU 3 has no energy counter (NOT_SUPPORTED), like a pre-Volta board. UUIDs are
// "GPU-fake-<i>"; GPU i has (i + 1) · 80 GiB of memory. It lets the CPU CI exercise the dlopen path, the symbol lookup, the unit conversions and
// the CUDA_VISIBLE_DEVICES mapping that the GPU machine's driver otherwise answers.
#include <cstdio>
#include <cstring>

namespace {
struct FakeDevice {
  unsigned int index;
  unsigned long long millijoules;
};
FakeDevice devices[4] = {{0, 5000}, {1, 5000}, {2, 5000}, {3, 5000}};
bool initialized = false;
constexpr int kSuccess = 0, kUninitialized = 1, kInvalidArgument = 2, kNotSupported = 3, kNotFound = 6;
}  // namespace

extern "C" {
int nvmlInit_v2() {
  initialized = true;
  return kSuccess;
}
int nvmlShutdown() {
  initialized = false;
  return kSuccess;
}
const char* nvmlErrorString(int result) { return result == kNotFound ? "Not Found" : "Fake NVML error"; }
int nvmlDeviceGetHandleByIndex_v2(unsigned int index, FakeDevice** device) {
  if (!initialized) return kUninitialized;
  if (index >= 4) return kInvalidArgument;
  *device = &devices[index];
  return kSuccess;
}
int nvmlDeviceGetHandleByUUID(const char* uuid, FakeDevice** device) {
  if (!initialized) return kUninitialized;
  for (FakeDevice& candidate : devices) {
    char name[32];
    std::snprintf(name, sizeof(name), "GPU-fake-%u", candidate.index);
    if (std::strcmp(uuid, name) == 0) {
      *device = &candidate;
      return kSuccess;
    }
  }
  return kNotFound;
}
int nvmlDeviceGetTotalEnergyConsumption(FakeDevice* device, unsigned long long* millijoules) {
  if (device->index == 3) return kNotSupported;
  device->millijoules += 1000ull * (device->index + 1);
  *millijoules = device->millijoules;
  return kSuccess;
}
int nvmlDeviceGetPowerUsage(FakeDevice* device, unsigned int* milliwatts) {
  *milliwatts = 100000u * (device->index + 1);
  return kSuccess;
}
struct FakeMemory {  // nvmlMemory_t
  unsigned long long total, free, used;
};
int nvmlDeviceGetMemoryInfo(FakeDevice* device, FakeMemory* memory) {
  memory->total = (device->index + 1ull) * (80ull << 30);
  memory->free = memory->total;
  memory->used = 0;
  return kSuccess;
}
int nvmlDeviceGetName(FakeDevice* device, char* name, unsigned int length) {
  std::snprintf(name, length, "Fake GPU %u", device->index);
  return kSuccess;
}
}
