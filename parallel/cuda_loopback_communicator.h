// A Communicator whose ranks all run on one GPU, as threads of this process: every parallel code path
// (Ulysses, CFG parallelism, their meshes) runs and is tested on a single GPU, which NCCL cannot do (it
// refuses two ranks on one device).
//
// Each rank has its own backend (its own compute stream and memory) on that GPU and its own communication
// stream. A collective is two host rendezvous (parallel/collective_rendezvous.h): the first exchanges the
// buffers and an event marking that each rank's compute stream has produced them; each rank then pulls
// what it receives with device-to-device copies on its communication stream, after the senders' events.
// The second exchanges events marking the end of those copies, and each rank's communication stream waits
// for all of them, so a sender's buffers are never reused (or overwritten in place) while a peer still
// reads them. The host never waits for the device; the compute stream waits for the communication stream
// only where the caller waits (synchronous calls at once, StartAllToAll at PendingCollective::Wait).
//
// Exact: bytes are copied; AllReduceSum gathers every rank's buffer and sums them in rank order with one
// kernel, so every rank gets bitwise the same result. Errors: every rank checks every rank's arguments
// (collective_rendezvous.h), so a mismatch is the same error on every rank; a buffer on another device is
// InvalidArgument.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace zoetrope {

class CollectiveStream;

class CudaLoopbackCommunicator final : public Communicator {
 public:
  // A group of `size` ≥ 1 ranks on GPU `device`; element r is rank r. Drive each from its own thread, with
  // a backend of its own on that device.
  static absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> CreateGroup(int device, int size);
  ~CudaLoopbackCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override;

  absl::Status AllToAll(Backend& backend, const std::vector<Tensor>& send, const std::vector<Tensor>& receive) override;
  absl::StatusOr<std::unique_ptr<PendingCollective>> StartAllToAll(Backend& backend, const std::vector<Tensor>& send,
                                                                   const std::vector<Tensor>& receive) override;
  absl::Status AllGather(Backend& backend, const Tensor& send, const std::vector<Tensor>& receive) override;
  absl::Status AllReduceSum(Backend& backend, const Tensor& buffer) override;
  absl::Status Broadcast(Backend& backend, const Tensor& buffer, int root) override;
  absl::Status Barrier() override;

  struct Group;  // the shared rendezvous (cuda_loopback_communicator.cc)

 private:
  CudaLoopbackCommunicator(std::shared_ptr<Group> group, int rank, std::unique_ptr<CollectiveStream> stream);

  std::shared_ptr<Group> group_;
  const int rank_;
  std::unique_ptr<CollectiveStream> stream_;
};

}  // namespace zoetrope
