// zoetrope-alltoall-bench: the all-to-all of Ulysses attention on the CUDA communicators, at the shapes a
// model uses, against a plain device-to-device copy of the same bytes (the copy bandwidth one GPU offers,
// the ceiling of the loopback).
//
//   zoetrope-alltoall-bench --communicator loopback --ranks 4 [--gpu 0]
//   zoetrope-alltoall-bench --communicator nccl --gpus 0,1,2,3
//       [--tokens 32760 --heads 12 --head_dim 128] [--warmup 3 --iterations 20]
// Each rank holds its token shard [L/P, H, d] in bf16 and sends head group p's slice to rank p (the
// inbound all-to-all of docs/parallel.md; the outbound one moves the same bytes back). One timed
// iteration: a host barrier, the all-to-all, every rank's stream synchronised, a host barrier; rank 0's
// wall time. Prints one JSON object: shape, bytes moved between ranks (self copies excluded), median /
// min / max milliseconds and every sample, GB/s of those bytes, and the copy baseline's median and GB/s.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_join.h"
#include "kernels/backend_factory.h"
#include "parallel/cuda_loopback_communicator.h"
#include "parallel/nccl_communicator.h"
#include "parallel/ulysses_attention.h"
#include "worker/engine/pipeline_devices.h"

ABSL_FLAG(std::string, communicator, "loopback", "loopback (ranks on one GPU) or nccl (one GPU per rank)");
ABSL_FLAG(int, ranks, 2, "loopback ranks");
ABSL_FLAG(int, gpu, 0, "the loopback's GPU");
ABSL_FLAG(std::string, gpus, "0", "NCCL: the GPUs, one rank each");
ABSL_FLAG(int64_t, tokens, 32760, "sequence length L (1.3B 480p: 32,760)");
ABSL_FLAG(int, heads, 12, "attention heads H");
ABSL_FLAG(int, head_dim, 128, "head width d");
ABSL_FLAG(int, warmup, 3, "untimed iterations");
ABSL_FLAG(int, iterations, 20, "timed iterations");

namespace zoetrope {
namespace {

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "zoetrope-alltoall-bench: %s\n", status.ToString().c_str());
  return 1;
}

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values.empty() ? 0.0 : values[values.size() / 2];
}

int Run() {
  const std::string kind = absl::GetFlag(FLAGS_communicator);
  std::vector<int> devices;
  absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> group;
  if (kind == "loopback") {
    devices.assign(absl::GetFlag(FLAGS_ranks), absl::GetFlag(FLAGS_gpu));
    group = CudaLoopbackCommunicator::CreateGroup(absl::GetFlag(FLAGS_gpu), absl::GetFlag(FLAGS_ranks));
  } else if (kind == "nccl") {
    absl::StatusOr<std::vector<int>> parsed = ParseGpuList(absl::GetFlag(FLAGS_gpus));
    if (!parsed.ok()) return Fail(parsed.status());
    devices = *parsed;
    group = NcclCommunicator::CreateGroup(devices);
  } else {
    return Fail(absl::InvalidArgumentError("--communicator must be loopback or nccl"));
  }
  if (!group.ok()) return Fail(group.status());
  const int ranks = static_cast<int>(devices.size());
  std::vector<std::unique_ptr<Backend>> backends;
  for (int device : devices) {
    absl::StatusOr<std::unique_ptr<Backend>> backend = CreateBackend("cuda:" + std::to_string(device));
    if (!backend.ok()) return Fail(backend.status());
    backends.push_back(*std::move(backend));
  }
  const int64_t tokens = absl::GetFlag(FLAGS_tokens);
  const int heads = absl::GetFlag(FLAGS_heads), head_dim = absl::GetFlag(FLAGS_head_dim);
  const int warmup = absl::GetFlag(FLAGS_warmup), iterations = absl::GetFlag(FLAGS_iterations);
  auto message_elements = [&](int from, int to) {
    return TokenShard(tokens, ranks, from).count * HeadShard(heads, ranks, to).count * head_dim;
  };
  int64_t bytes_between_ranks = 0, bytes_all = 0;
  for (int from = 0; from < ranks; ++from) {
    for (int to = 0; to < ranks; ++to) {
      bytes_all += message_elements(from, to) * 2;
      if (from != to) bytes_between_ranks += message_elements(from, to) * 2;
    }
  }
  std::vector<double> samples;
  absl::Status failure;
  std::vector<std::thread> threads;
  for (int rank = 0; rank < ranks; ++rank) {
    threads.emplace_back([&, rank] {
      Communicator& communicator = *(*group)[rank];
      Backend& backend = *backends[rank];
      std::vector<Tensor> send, receive;
      for (int p = 0; p < ranks; ++p) {
        send.push_back(backend.Empty({message_elements(rank, p)}, DType::kBF16));
        receive.push_back(backend.Empty({message_elements(p, rank)}, DType::kBF16));
      }
      backend.Synchronize();
      for (int iteration = 0; iteration < warmup + iterations; ++iteration) {
        (void)communicator.Barrier();
        const auto start = std::chrono::steady_clock::now();
        absl::Status status = communicator.AllToAll(backend, send, receive);
        backend.Synchronize();
        (void)communicator.Barrier();
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (!status.ok() && rank == 0) failure = status;
        if (rank == 0 && iteration >= warmup) samples.push_back(seconds * 1e3);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  if (!failure.ok()) return Fail(failure);

  // The baseline: one device-to-device copy of every byte the all-to-all moves, on one stream.
  std::vector<double> copy_samples;
  {
    Backend& backend = *backends[0];
    Tensor from = backend.Empty({bytes_all / 2}, DType::kBF16), to = backend.Empty({bytes_all / 2}, DType::kBF16);
    backend.Synchronize();
    cudaStream_t stream = nullptr;
    cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
    cudaEvent_t start = nullptr, stop = nullptr;
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    for (int iteration = 0; iteration < warmup + iterations; ++iteration) {
      cudaEventRecord(start, stream);
      cudaMemcpyAsync(to.raw_data(), from.raw_data(), static_cast<size_t>(bytes_all), cudaMemcpyDeviceToDevice, stream);
      cudaEventRecord(stop, stream);
      cudaEventSynchronize(stop);
      float milliseconds = 0;
      cudaEventElapsedTime(&milliseconds, start, stop);
      if (iteration >= warmup) copy_samples.push_back(milliseconds);
    }
    if (cudaError_t error = cudaGetLastError(); error != cudaSuccess) {
      return Fail(absl::InternalError(std::string("copy baseline: ") + cudaGetErrorString(error)));
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    cudaStreamDestroy(stream);
  }
  const double median = Median(samples), copy_median = Median(copy_samples);
  std::printf(
      "{\"communicator\": \"%s\", \"ranks\": %d, \"gpus\": [%s], \"tokens\": %lld, \"heads\": %d, \"head_dim\": %d, "
      "\"dtype\": \"bf16\", \"bytes_between_ranks\": %lld, \"bytes_with_self_copies\": %lld, \"median_ms\": %.4f, "
      "\"min_ms\": %.4f, \"max_ms\": %.4f, \"samples_ms\": [%s], \"gbytes_per_s\": %.2f, "
      "\"copy_baseline_median_ms\": %.4f, \"copy_baseline_gbytes_per_s\": %.2f, \"iterations\": %d}\n",
      kind.c_str(), ranks, absl::StrJoin(devices, ", ").c_str(), static_cast<long long>(tokens), heads, head_dim,
      static_cast<long long>(bytes_between_ranks), static_cast<long long>(bytes_all), median,
      *std::min_element(samples.begin(), samples.end()), *std::max_element(samples.begin(), samples.end()),
      absl::StrJoin(samples, ", ", [](std::string* out, double v) { out->append(std::to_string(v)); }).c_str(),
      bytes_all / (median * 1e-3) / 1e9, copy_median, bytes_all / (copy_median * 1e-3) / 1e9, iterations);
  return 0;
}

}  // namespace
}  // namespace zoetrope

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Times the Ulysses all-to-all on the CUDA communicators against a plain copy.");
  absl::ParseCommandLine(argc, argv);
  return zoetrope::Run();
}
