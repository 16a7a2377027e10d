// A Communicator for ranks that are threads of one process, over host memory (the CPU backend, tests of
// sequence parallelism without GPUs). Exact: it copies bytes (and sums F32 in rank order).
//
// Every collective is a rendezvous of the group: each rank posts its buffers to the shared group state,
// waits until all ranks have posted, then copies what it receives straight out of the senders' buffers
// (no staging copy) and waits again until every rank is done reading, so no rank returns (and reuses or
// frees its send buffers) while another still reads them. Every rank checks every rank's posted arguments
// with the same rules, so a mismatch (another collective, wrong sizes or dtypes, a non-host buffer) gives
// every rank the same error instead of a hang or a partial copy; as long as every rank calls the same
// collectives in the same order nothing deadlocks, any number of rounds in a row.
#pragma once

#include <memory>
#include <vector>

#include "parallel/communicator.h"

namespace zoetrope {

class ThreadCommunicator final : public Communicator {
 public:
  // A group of `size` ≥ 1 ranks; element r is rank r. Hand each to its own thread. The group state is
  // shared by the members and lives as long as any of them.
  static std::vector<std::unique_ptr<Communicator>> CreateThreadGroup(int size);

  int rank() const override { return rank_; }
  int size() const override;

  // Tensors must be host memory (Device::Cpu()); `backend` is synchronised first so that work it has
  // issued into the send buffers is complete.
  absl::Status AllToAll(Backend& backend, const std::vector<Tensor>& send, const std::vector<Tensor>& receive) override;
  absl::Status AllGather(Backend& backend, const Tensor& send, const std::vector<Tensor>& receive) override;
  absl::Status AllReduceSum(Backend& backend, const Tensor& buffer) override;
  absl::Status Broadcast(Backend& backend, const Tensor& buffer, int root) override;
  absl::Status Barrier() override;

  struct Group;  // the shared rendezvous state (thread_communicator.cc)

 private:
  ThreadCommunicator(std::shared_ptr<Group> group, int rank) : group_(std::move(group)), rank_(rank) {}

  std::shared_ptr<Group> group_;
  const int rank_;
};

}  // namespace zoetrope
