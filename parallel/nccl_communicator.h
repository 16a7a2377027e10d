// A Communicator over NCCL: one rank per GPU, all GPUs of the group driven by threads of this process
// (a worker owns every GPU of its group). Each rank enqueues its transfers on its own communication
// stream, ordered against its backend's compute stream with events (parallel/cuda_collective_stream.h),
// so the host never waits for a collective and StartAllToAll overlaps compute.
//
// Transfers are point-to-point sends and receives in one NCCL group per collective (all-to-all and
// all-gather with a size per peer, zero-byte pairs skipped); AllReduceSum gathers every rank's buffer and
// sums in rank order with one kernel (bitwise the same on every rank, unlike a ring all-reduce), Broadcast
// is ncclBroadcast and Barrier a one-element all-reduce the host waits for.
//
// Unlike the in-process communicators, a rank cannot see its peers' arguments: it checks its own (counts,
// devices, its self-pair) and relies on the group calling matching collectives (communicator.h's rule);
// the same Ulysses and CFG code runs checked on the thread and loopback communicators in the tests.
// NCCL refuses two ranks on one GPU: use CudaLoopbackCommunicator there.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace zoetrope {

class CollectiveStream;

// Whether this build links NCCL (the CUDA toolkit's nccl.h and libnccl were found at configure time).
bool BuiltWithNccl();

class NcclCommunicator final : public Communicator {
 public:
  // One communicator per GPU of `devices` (distinct indices), made together (ncclCommInitAll); element i
  // is rank i on devices[i]. Errors: InvalidArgument for a repeated or negative device, Unimplemented in
  // a build without NCCL, Internal/Unavailable from NCCL or CUDA.
  static absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> CreateGroup(const std::vector<int>& devices);
  ~NcclCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  absl::Status AllToAll(Backend& backend, const std::vector<Tensor>& send, const std::vector<Tensor>& receive) override;
  absl::StatusOr<std::unique_ptr<PendingCollective>> StartAllToAll(Backend& backend, const std::vector<Tensor>& send,
                                                                   const std::vector<Tensor>& receive) override;
  absl::Status AllGather(Backend& backend, const Tensor& send, const std::vector<Tensor>& receive) override;
  absl::Status AllReduceSum(Backend& backend, const Tensor& buffer) override;
  absl::Status Broadcast(Backend& backend, const Tensor& buffer, int root) override;
  absl::Status Barrier() override;

  struct Handle;  // the NCCL communicator and the barrier's scratch (nccl_communicator.cc)

 private:
  NcclCommunicator(int rank, int size, std::unique_ptr<Handle> handle, std::unique_ptr<CollectiveStream> stream);

  const int rank_;
  const int size_;
  std::unique_ptr<Handle> handle_;
  std::unique_ptr<CollectiveStream> stream_;
};

}  // namespace zoetrope
