// The communication stream of one rank of a CUDA communicator, and the events that order it against the
// rank's compute stream (the backend's). Internal to parallel/: the NCCL and loopback communicators build
// on it.
//
// A collective runs as:
//   Begin(backend)        the communication stream waits for the work already issued on the compute stream
//                         (which produced the send buffers and last used the receive buffers);
//   UseBuffers(...)       the allocator learns that the communication stream touches those tensors, so
//                         their memory is not reused under a collective still in flight even when the
//                         tensors die first (kernels/cuda/cuda_allocator.h);
//   ... enqueue the transfers on stream() ...
//   Finish()              an event after them; its PendingCollective makes the compute stream wait for it.
// A synchronous collective waits on that handle at once, so work issued after the call sees the data
// without the host ever blocking.
#pragma once

#include <cuda_runtime_api.h>

#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/cuda_device_scope.h"
#include "parallel/communicator.h"

namespace zoetrope {

// Internal (or Unavailable for a lost device) naming `what` when `error` is not cudaSuccess.
absl::Status CudaStatus(cudaError_t error, const char* what);

class CollectiveStream {
 public:
  // A non-blocking stream (and its events) on `device`.
  static absl::StatusOr<std::unique_ptr<CollectiveStream>> Create(int device);
  ~CollectiveStream();

  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }

  // The communication stream waits for the work issued on `backend`'s stream so far.
  absl::Status Begin(Backend& backend);
  // Records that the communication stream uses these tensors (undefined ones are skipped). Tensors that
  // `backend` did not allocate (another rank's) are the caller's business.
  void UseBuffers(Backend& backend, const std::vector<Tensor>& tensors);
  // An event after everything enqueued on the communication stream so far; waiting on the handle orders
  // the compute stream after it.
  absl::StatusOr<std::unique_ptr<PendingCollective>> Finish();
  // Finish and wait at once (the synchronous collectives).
  absl::Status FinishAndWait(Backend& backend);

  // An event recorded on the compute stream (Begin's) or the communication stream, reused from call to
  // call: a peer that waits on it must do so before the owner records it again (the loopback's two
  // rendezvous guarantee this).
  cudaEvent_t compute_ready() const { return compute_ready_; }
  absl::Status RecordTransfersDone();
  cudaEvent_t transfers_done() const { return transfers_done_; }

 private:
  CollectiveStream(int device, cudaStream_t stream, cudaEvent_t compute_ready, cudaEvent_t transfers_done)
      : device_(device), stream_(stream), compute_ready_(compute_ready), transfers_done_(transfers_done) {}

  const int device_;
  cudaStream_t stream_;
  cudaEvent_t compute_ready_;
  cudaEvent_t transfers_done_;
};

}  // namespace zoetrope
