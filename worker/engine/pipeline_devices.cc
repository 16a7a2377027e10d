#include "worker/engine/pipeline_devices.h"

#include <algorithm>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "kernels/backend_factory.h"
#include "parallel/thread_communicator.h"

namespace zoetrope {

absl::StatusOr<std::vector<int>> ParseGpuList(const std::string& text) {
  std::vector<int> gpus;
  if (text.empty()) return gpus;
  std::set<int> seen;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    int index = -1;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &index) || index < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--gpus: \"", part, "\" is not a GPU index (expected a list like 0,1,2,3)"));
    }
    if (!seen.insert(index).second) {
      return absl::InvalidArgumentError(absl::StrCat("--gpus: GPU ", index, " is listed twice"));
    }
    gpus.push_back(index);
  }
  return gpus;
}

PipelineGroup PipelineDevices::group() const {
  PipelineGroup group;
  for (const std::unique_ptr<Backend>& backend : backends) group.backends.push_back(backend.get());
  group.degrees = degrees;
  group.communicators = communicators;
  return group;
}

int PipelineDevices::gpu_count() const { return static_cast<int>(std::set<int>(gpus.begin(), gpus.end()).size()); }

namespace {

CommunicatorFactory ThreadCommunicatorFactory() {
  return [](const std::vector<int>& members) -> absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> {
    return ThreadCommunicator::CreateThreadGroup(static_cast<int>(members.size()));
  };
}

absl::StatusOr<PipelineDevices> CreateCpuDevices(const DeviceRequest& request, const ParallelDegrees& degrees) {
  if (!request.gpus.empty()) return absl::InvalidArgumentError("--gpus needs a CUDA device (--device cuda)");
  if (request.loopback) return absl::InvalidArgumentError("--loopback is for CUDA devices (CPU ranks are threads)");
  PipelineDevices devices;
  devices.degrees = degrees;
  const int ranks = degrees.ranks();
  // --threads counts the whole process: each rank gets an equal share (at least one).
  const int threads = request.cpu_threads > 0 ? std::max(1, request.cpu_threads / ranks) : 0;
  for (int rank = 0; rank < ranks; ++rank) {
    absl::StatusOr<std::unique_ptr<Backend>> backend = CreateBackend("cpu", threads);
    if (!backend.ok()) return backend.status();
    devices.backends.push_back(*std::move(backend));
  }
  if (ranks > 1) devices.communicators = ThreadCommunicatorFactory();
  return devices;
}

// CUDA groups: NCCL across GPUs or loopback ranks on one GPU (filled in with the CUDA communicators).
absl::StatusOr<PipelineDevices> CreateCudaGroupDevices(const DeviceRequest& request, const ParallelDegrees& degrees) {
  return absl::UnimplementedError(absl::StrCat("parallel degrees ", degrees.ToString(), " on ", request.device,
                                               ": CUDA groups are not wired yet"));
}

}  // namespace

absl::StatusOr<PipelineDevices> CreatePipelineDevices(const DeviceRequest& request) {
  ParallelDegrees degrees;
  degrees.sequence = request.sequence_parallel;
  degrees.cfg = request.cfg_parallel ? 2 : 1;
  if (request.sequence_parallel < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--sp must be ≥ 1 (got ", request.sequence_parallel, ")"));
  }
  if (request.device == "cpu") return CreateCpuDevices(request, degrees);
  if (degrees.ranks() == 1 && request.gpus.size() <= 1) {
    PipelineDevices devices;
    devices.degrees = degrees;
    const std::string device = request.gpus.empty() ? request.device : absl::StrCat("cuda:", request.gpus[0]);
    absl::StatusOr<std::unique_ptr<Backend>> backend = CreateBackend(device, request.cpu_threads);
    if (!backend.ok()) return backend.status();
    devices.gpus = {(*backend)->device().index};
    devices.backends.push_back(*std::move(backend));
    return devices;
  }
  return CreateCudaGroupDevices(request, degrees);
}

}  // namespace zoetrope
