#include "worker/engine/pipeline_devices.h"

#include <algorithm>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "kernels/backend_factory.h"
#include "parallel/nccl_communicator.h"
#include "parallel/thread_communicator.h"
#if ZOETROPE_HAS_CUDA
#include "parallel/cuda_loopback_communicator.h"
#endif

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

// The GPU `device` names ("cuda" is GPU 0).
absl::StatusOr<int> GpuOfDevice(const std::string& device) {
  if (device == "cuda") return 0;
  int index = -1;
  absl::string_view rest = device;
  if (absl::ConsumePrefix(&rest, "cuda:") && absl::SimpleAtoi(rest, &index) && index >= 0) return index;
  return absl::InvalidArgumentError(absl::StrCat("--device \"", device, "\" is not cpu, cuda or cuda:N"));
}

// CUDA groups: one rank per listed GPU joined by NCCL, or (loopback) every rank on one GPU, each with its
// own backend (compute stream and memory) and the same-GPU loopback communicator.
absl::StatusOr<PipelineDevices> CreateCudaGroupDevices(const DeviceRequest& request, const ParallelDegrees& degrees) {
  const int ranks = degrees.ranks();
  std::vector<int> rank_gpus;
  if (request.loopback) {
    if (request.gpus.size() > 1) {
      return absl::InvalidArgumentError("--loopback runs every rank on one GPU: give at most one GPU in --gpus");
    }
    absl::StatusOr<int> gpu = request.gpus.empty() ? GpuOfDevice(request.device) : absl::StatusOr<int>(request.gpus[0]);
    if (!gpu.ok()) return gpu.status();
    rank_gpus.assign(ranks, *gpu);
  } else {
    if (static_cast<int>(request.gpus.size()) != ranks) {
      return absl::InvalidArgumentError(absl::StrCat(
          "parallel degrees ", degrees.ToString(), " need ", ranks, " GPUs, one per rank: list them in --gpus (got ",
          request.gpus.size(), "), or run every rank on one GPU with --loopback"));
    }
    rank_gpus = request.gpus;
  }
#if ZOETROPE_HAS_CUDA
  PipelineDevices devices;
  devices.degrees = degrees;
  devices.gpus = rank_gpus;
  for (int gpu : rank_gpus) {
    absl::StatusOr<std::unique_ptr<Backend>> backend = CreateBackend(absl::StrCat("cuda:", gpu), request.cpu_threads);
    if (!backend.ok()) return backend.status();
    devices.backends.push_back(*std::move(backend));
  }
  if (request.loopback) {
    const int gpu = rank_gpus[0];
    devices.communicators = [gpu](const std::vector<int>& members) {
      return CudaLoopbackCommunicator::CreateGroup(gpu, static_cast<int>(members.size()));
    };
  } else {
    devices.communicators = [rank_gpus](const std::vector<int>& members) {
      std::vector<int> member_gpus;
      for (int member : members) member_gpus.push_back(rank_gpus[member]);
      return NcclCommunicator::CreateGroup(member_gpus);
    };
  }
  return devices;
#else
  return absl::UnimplementedError(absl::StrCat("parallel degrees ", degrees.ToString(), " on ", request.device,
                                               ": this build has no CUDA backend"));
#endif
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
