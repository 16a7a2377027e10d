// Collective communication for one rank of a group of devices (sequence parallelism, CFG parallelism).
//
// A Communicator is one rank's handle on a group of `size()` ranks. Every rank of the group must call the
// same collectives in the same order with matching arguments (the NCCL/MPI rule): collectives are matched
// by their position in each rank's call sequence, never by tags. A rank that skips a collective or calls
// another one leaves the group waiting (or, where an implementation can see the mismatch, every rank gets
// the same error).
//
// Buffers: the caller owns every tensor it passes, allocates the receive buffers before the call and
// keeps all of them alive until the call returns (implementations do not retain tensors). Tensors are
// contiguous (a Rows() view is fine) and live on the device of `backend`, the rank's own backend; send
// and receive buffers must not overlap, except where a call works in place. A tensor of 0 elements may be
// undefined (a rank with nothing to send or receive still takes part). Sizes are compared in bytes and
// dtypes must agree between the matched buffers; shapes only need the same element count.
//
// Ordering: a collective is ordered after the work already issued on `backend` that produced its send
// buffers, and work issued after the call sees the received data (a CUDA implementation enqueues on the
// backend's stream; the in-process CPU one completes before returning).
//
// Errors are absl::Status: InvalidArgument for buffers that do not match the contract (when an
// implementation can see every rank's arguments, all ranks return the same error, so no rank hangs),
// Unavailable/Internal for a broken transport. Not thread-safe per rank: one thread drives each rank.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace zoetrope {

// A collective that has been started and may still be in flight (Communicator::StartAllToAll).
class PendingCollective {
 public:
  virtual ~PendingCollective() = default;
  // Orders the work issued on `backend` after this call behind the collective (a stream wait on CUDA;
  // nothing for a collective that already completed) and returns its status. Call it exactly once, with
  // the backend the collective was started on. The caller keeps the buffers alive until then.
  virtual absl::Status Wait(Backend& backend) = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  // This rank's index in [0, size()) and the number of ranks of the group (≥ 1).
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // All-to-all with a variable size per peer (MPI_Alltoallv): send[p] goes to rank p, receive[p] gets
  // what rank p sent to this rank. Both vectors hold size() tensors (send[rank()] → receive[rank()] is a
  // local copy). The byte size and dtype of send[p] on rank r must equal those of receive[r] on rank p.
  virtual absl::Status AllToAll(Backend& backend, const std::vector<Tensor>& send,
                                const std::vector<Tensor>& receive) = 0;

  // The same all-to-all, started so that independent compute can overlap it: the collective is ordered
  // after the work already issued on `backend`, but work issued after this call is NOT ordered after it
  // until PendingCollective::Wait. Collectives started on one rank complete in the order they were
  // started. The default runs AllToAll to completion and returns a finished handle (communicators without
  // a separate communication stream); the CUDA communicators enqueue on their own stream.
  virtual absl::StatusOr<std::unique_ptr<PendingCollective>> StartAllToAll(Backend& backend,
                                                                           const std::vector<Tensor>& send,
                                                                           const std::vector<Tensor>& receive);

  // All-gather with a variable size per rank (MPI_Allgatherv): receive[p] gets rank p's `send`, on every
  // rank; receive holds size() tensors, receive[p] the byte size and dtype of rank p's send.
  virtual absl::Status AllGather(Backend& backend, const Tensor& send, const std::vector<Tensor>& receive) = 0;

  // In place: buffer (F32, the same element count on every rank) becomes the element-wise sum over the
  // ranks. The sum is taken in rank order 0, 1, …, size() − 1 on every rank, so every rank gets bitwise
  // the same result and repeated runs are deterministic.
  virtual absl::Status AllReduceSum(Backend& backend, const Tensor& buffer) = 0;

  // In place: every rank's buffer becomes rank `root`'s buffer (same byte size and dtype on every rank).
  virtual absl::Status Broadcast(Backend& backend, const Tensor& buffer, int root) = 0;

  // Returns once every rank of the group has entered the barrier.
  virtual absl::Status Barrier() = 0;
};

}  // namespace zoetrope
