#include "parallel/cuda_collective_stream.h"

#include <cuda_runtime.h>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_backend.h"

namespace zoetrope {

absl::Status CudaStatus(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return absl::OkStatus();
  const std::string message = absl::StrCat(what, ": ", cudaGetErrorName(error), " (", cudaGetErrorString(error), ")");
  if (error == cudaErrorDevicesUnavailable || error == cudaErrorNoDevice) return absl::UnavailableError(message);
  return absl::InternalError(message);
}

namespace {

// Makes the compute stream wait for the communication stream's event, once, then frees the event (legal
// while the wait is pending: the wait keeps what it needs).
class CudaPendingCollective final : public PendingCollective {
 public:
  CudaPendingCollective(int device, cudaEvent_t done) : device_(device), done_(done) {}
  ~CudaPendingCollective() override {
    if (done_ != nullptr) cudaEventDestroy(done_);
  }

  absl::Status Wait(Backend& backend) override {
    if (done_ == nullptr) return absl::FailedPreconditionError("a pending collective was waited on twice");
    CudaDeviceScope scope(device_);
    absl::Status status = CudaStatus(cudaStreamWaitEvent(CudaBackendStream(backend), done_, 0),
                                     "cudaStreamWaitEvent (compute after communication)");
    cudaEventDestroy(done_);
    done_ = nullptr;
    return status;
  }

 private:
  const int device_;
  cudaEvent_t done_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<CollectiveStream>> CollectiveStream::Create(int device) {
  CudaDeviceScope scope(device);
  cudaStream_t stream = nullptr;
  if (absl::Status status = CudaStatus(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking),
                                       "cudaStreamCreate (communication stream)");
      !status.ok()) {
    return status;
  }
  cudaEvent_t events[2] = {nullptr, nullptr};
  for (cudaEvent_t& event : events) {
    if (absl::Status status =
            CudaStatus(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreate (communication)");
        !status.ok()) {
      for (cudaEvent_t made : events) {
        if (made != nullptr) cudaEventDestroy(made);
      }
      cudaStreamDestroy(stream);
      return status;
    }
  }
  return std::unique_ptr<CollectiveStream>(new CollectiveStream(device, stream, events[0], events[1]));
}

CollectiveStream::~CollectiveStream() {
  CudaDeviceScope scope(device_);
  cudaStreamSynchronize(stream_);
  cudaEventDestroy(compute_ready_);
  cudaEventDestroy(transfers_done_);
  cudaStreamDestroy(stream_);
}

absl::Status CollectiveStream::Begin(Backend& backend) {
  // The events order the communication stream against the backend's own stream, which only the CUDA
  // backend itself has (a wrapper such as a profiler has none).
  if (!IsCudaBackend(backend)) {
    return absl::InvalidArgumentError(absl::StrCat("a CUDA communicator needs the CUDA backend itself, got ",
                                                   backend.name()));
  }
  if (backend.device() != Device::Cuda(device_)) {
    return absl::InvalidArgumentError(
        absl::StrCat("a communicator of cuda:", device_, " was called with the backend of ", backend.name()));
  }
  if (absl::Status status = CudaStatus(cudaEventRecord(compute_ready_, CudaBackendStream(backend)),
                                       "cudaEventRecord (compute ready)");
      !status.ok()) {
    return status;
  }
  return CudaStatus(cudaStreamWaitEvent(stream_, compute_ready_, 0), "cudaStreamWaitEvent (communication after compute)");
}

void CollectiveStream::UseBuffers(Backend& backend, const std::vector<Tensor>& tensors) {
  for (const Tensor& tensor : tensors) {
    if (tensor.defined()) CudaBackendRecordStreamUse(backend, tensor, stream_);
  }
}

absl::Status CollectiveStream::RecordTransfersDone() {
  return CudaStatus(cudaEventRecord(transfers_done_, stream_), "cudaEventRecord (transfers done)");
}

absl::StatusOr<std::unique_ptr<PendingCollective>> CollectiveStream::Finish() {
  cudaEvent_t done = nullptr;
  if (absl::Status status =
          CudaStatus(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "cudaEventCreate (collective done)");
      !status.ok()) {
    return status;
  }
  if (absl::Status status = CudaStatus(cudaEventRecord(done, stream_), "cudaEventRecord (collective done)");
      !status.ok()) {
    cudaEventDestroy(done);
    return status;
  }
  return std::make_unique<CudaPendingCollective>(device_, done);
}

absl::Status CollectiveStream::FinishAndWait(Backend& backend) {
  absl::StatusOr<std::unique_ptr<PendingCollective>> pending = Finish();
  if (!pending.ok()) return pending.status();
  return (*pending)->Wait(backend);
}

}  // namespace zoetrope
