// The devices a pipeline runs on, made from what a user asks for on a command line (--device, --gpus,
// --sp, --cfg_parallel, --loopback, --threads): one backend per rank and the factory of the mesh's
// communicators. The one place where the CLI, the worker and the tools turn flags into a parallel group.
//
//   CPU:  ranks are threads of this process sharing the cores (--threads is the total, split evenly), with
//         in-process thread communicators.
//   CUDA: one rank per listed GPU, joined by NCCL; or, with loopback, every rank on one GPU with the
//         same-GPU loopback communicator (so every parallel code path runs on a single GPU).
// Impossible configurations are InvalidArgument errors naming the flag, before anything is loaded.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "parallel/parallel_mesh.h"
#include "worker/engine/text_to_video.h"

namespace zoetrope {

struct DeviceRequest {
  std::string device = "cpu";  // "cpu", "cuda" or "cuda:N" (the GPU when `gpus` is empty)
  std::vector<int> gpus;       // CUDA: the group's GPUs, one rank each (empty: the one `device` names)
  int sequence_parallel = 1;   // Ulysses degree
  bool cfg_parallel = false;   // conditional and unconditional passes on two groups
  bool loopback = false;       // CUDA: all ranks on the first GPU
  int cpu_threads = 0;         // CPU: threads in all (0: every core)
};

// Parses "0,1,2,3" (GPU indices, distinct, ≥ 0); empty text gives an empty list.
absl::StatusOr<std::vector<int>> ParseGpuList(const std::string& text);

struct PipelineDevices {
  std::vector<std::unique_ptr<Backend>> backends;  // rank order
  ParallelDegrees degrees;
  CommunicatorFactory communicators;  // null for one rank
  std::vector<int> gpus;              // the GPU of each rank (empty on the CPU)

  // The group to load a pipeline on; the backends stay owned here (keep this alive as long as it).
  PipelineGroup group() const;
  // GPUs in use (distinct), 0 on the CPU.
  int gpu_count() const;
};

absl::StatusOr<PipelineDevices> CreatePipelineDevices(const DeviceRequest& request);

}  // namespace zoetrope
