#include "parallel/nccl_communicator.h"

#include <set>
#include <utility>

#include "absl/strings/str_cat.h"

#if ZOETROPE_HAS_NCCL
#include <cuda_runtime.h>
#include <nccl.h>

#include "kernels/cuda/cuda_backend.h"
#include "parallel/cuda_collective_stream.h"
#endif

namespace zoetrope {

#if ZOETROPE_HAS_NCCL

bool BuiltWithNccl() { return true; }

struct NcclCommunicator::Handle {
  ncclComm_t communicator = nullptr;
  float* barrier_scratch = nullptr;  // one float on the rank's GPU
};

namespace {

absl::Status NcclStatus(ncclResult_t result, const char* what) {
  if (result == ncclSuccess) return absl::OkStatus();
  const std::string message = absl::StrCat(what, ": ", ncclGetErrorString(result));
  if (result == ncclSystemError || result == ncclRemoteError) return absl::UnavailableError(message);
  if (result == ncclInvalidArgument || result == ncclInvalidUsage) return absl::InvalidArgumentError(message);
  return absl::InternalError(message);
}

// This rank's own checks (the peers' arguments are out of sight): counts and devices.
absl::Status CheckLocal(const char* operation, const std::vector<Tensor>& tensors, const char* role, int expected_count,
                        const Device& device) {
  if (static_cast<int>(tensors.size()) != expected_count) {
    return absl::InvalidArgumentError(absl::StrCat(operation, ": ", role, " holds ", tensors.size(),
                                                   " tensors, the group has ", expected_count, " ranks"));
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i].defined() && tensors[i].device() != device) {
      return absl::InvalidArgumentError(absl::StrCat(operation, ": ", role, "[", i, "] is ", tensors[i].DebugString(),
                                                     ", not on ", device.ToString()));
    }
  }
  return absl::OkStatus();
}

size_t BytesOf(const Tensor& tensor) { return tensor.defined() ? tensor.nbytes() : 0; }

// One NCCL group of point-to-point transfers: send[p] to p and receive[p] from p, zero bytes skipped.
absl::Status SendReceive(ncclComm_t communicator, cudaStream_t stream, const std::vector<const Tensor*>& send,
                         const std::vector<const Tensor*>& receive) {
  absl::Status status = NcclStatus(ncclGroupStart(), "ncclGroupStart");
  if (!status.ok()) return status;
  for (size_t p = 0; p < send.size() && status.ok(); ++p) {
    if (BytesOf(*send[p]) > 0) {
      status = NcclStatus(ncclSend(send[p]->raw_data(), BytesOf(*send[p]), ncclUint8, static_cast<int>(p),
                                   communicator, stream),
                          "ncclSend");
    }
    if (status.ok() && BytesOf(*receive[p]) > 0) {
      status = NcclStatus(ncclRecv(receive[p]->raw_data(), BytesOf(*receive[p]), ncclUint8, static_cast<int>(p),
                                   communicator, stream),
                          "ncclRecv");
    }
  }
  // The group is always closed, even after an error, so the communicator stays usable.
  absl::Status ended = NcclStatus(ncclGroupEnd(), "ncclGroupEnd");
  return status.ok() ? ended : status;
}

}  // namespace

absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> NcclCommunicator::CreateGroup(
    const std::vector<int>& devices) {
  if (devices.empty()) return absl::InvalidArgumentError("an NCCL group needs at least one GPU");
  std::set<int> distinct;
  for (int device : devices) {
    if (device < 0 || !distinct.insert(device).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "NCCL groups need distinct GPU indices ≥ 0 (got GPU ", device,
          " twice or negative); several ranks on one GPU need the loopback communicator"));
    }
  }
  const int size = static_cast<int>(devices.size());
  std::vector<ncclComm_t> communicators(size, nullptr);
  if (absl::Status status = NcclStatus(ncclCommInitAll(communicators.data(), size, devices.data()),
                                       "ncclCommInitAll");
      !status.ok()) {
    return status;
  }
  std::vector<std::unique_ptr<Communicator>> members;
  absl::Status status;
  for (int rank = 0; rank < size; ++rank) {
    auto handle = std::make_unique<Handle>();
    handle->communicator = communicators[rank];
    communicators[rank] = nullptr;
    CudaDeviceScope scope(devices[rank]);
    absl::StatusOr<std::unique_ptr<CollectiveStream>> stream = CollectiveStream::Create(devices[rank]);
    if (stream.ok()) {
      status = CudaStatus(cudaMalloc(&handle->barrier_scratch, sizeof(float)), "cudaMalloc (barrier scratch)");
    } else {
      status = stream.status();
    }
    if (!status.ok()) {
      ncclCommDestroy(handle->communicator);
      break;
    }
    members.emplace_back(new NcclCommunicator(rank, size, std::move(handle), *std::move(stream)));
  }
  if (!status.ok()) {
    for (ncclComm_t left : communicators) {
      if (left != nullptr) ncclCommDestroy(left);
    }
    return status;
  }
  return members;
}

NcclCommunicator::NcclCommunicator(int rank, int size, std::unique_ptr<Handle> handle,
                                   std::unique_ptr<CollectiveStream> stream)
    : rank_(rank), size_(size), handle_(std::move(handle)), stream_(std::move(stream)) {}

NcclCommunicator::~NcclCommunicator() {
  CudaDeviceScope scope(stream_->device());
  cudaStreamSynchronize(stream_->stream());
  ncclCommDestroy(handle_->communicator);
  cudaFree(handle_->barrier_scratch);
}

absl::StatusOr<std::unique_ptr<PendingCollective>> NcclCommunicator::StartAllToAll(
    Backend& backend, const std::vector<Tensor>& send, const std::vector<Tensor>& receive) {
  const Device device = Device::Cuda(stream_->device());
  if (absl::Status s = CheckLocal("AllToAll", send, "send", size_, device); !s.ok()) return s;
  if (absl::Status s = CheckLocal("AllToAll", receive, "receive", size_, device); !s.ok()) return s;
  if (BytesOf(send[rank_]) != BytesOf(receive[rank_])) {
    return absl::InvalidArgumentError(absl::StrCat("AllToAll: rank ", rank_, " sends itself ", BytesOf(send[rank_]),
                                                   " bytes and receives ", BytesOf(receive[rank_])));
  }
  CudaDeviceScope scope(stream_->device());
  if (absl::Status s = stream_->Begin(backend); !s.ok()) return s;
  std::vector<const Tensor*> sends, receives;
  for (int p = 0; p < size_; ++p) {
    sends.push_back(&send[p]);
    receives.push_back(&receive[p]);
  }
  absl::Status status = SendReceive(handle_->communicator, stream_->stream(), sends, receives);
  stream_->UseBuffers(backend, send);
  stream_->UseBuffers(backend, receive);
  if (!status.ok()) return status;
  return stream_->Finish();
}

absl::Status NcclCommunicator::AllToAll(Backend& backend, const std::vector<Tensor>& send,
                                        const std::vector<Tensor>& receive) {
  absl::StatusOr<std::unique_ptr<PendingCollective>> pending = StartAllToAll(backend, send, receive);
  if (!pending.ok()) return pending.status();
  return (*pending)->Wait(backend);
}

absl::Status NcclCommunicator::AllGather(Backend& backend, const Tensor& send, const std::vector<Tensor>& receive) {
  const Device device = Device::Cuda(stream_->device());
  if (absl::Status s = CheckLocal("AllGather", {send}, "send", 1, device); !s.ok()) return s;
  if (absl::Status s = CheckLocal("AllGather", receive, "receive", size_, device); !s.ok()) return s;
  if (BytesOf(send) != BytesOf(receive[rank_])) {
    return absl::InvalidArgumentError(absl::StrCat("AllGather: rank ", rank_, " sends ", BytesOf(send),
                                                   " bytes and receives ", BytesOf(receive[rank_]), " from itself"));
  }
  CudaDeviceScope scope(stream_->device());
  if (absl::Status s = stream_->Begin(backend); !s.ok()) return s;
  std::vector<const Tensor*> sends(size_, &send), receives;
  for (const Tensor& tensor : receive) receives.push_back(&tensor);
  absl::Status status = SendReceive(handle_->communicator, stream_->stream(), sends, receives);
  stream_->UseBuffers(backend, {send});
  stream_->UseBuffers(backend, receive);
  if (!status.ok()) return status;
  return stream_->FinishAndWait(backend);
}

absl::Status NcclCommunicator::AllReduceSum(Backend& backend, const Tensor& buffer) {
  if (buffer.defined() && buffer.dtype() != DType::kF32) {
    return absl::InvalidArgumentError(
        absl::StrCat("AllReduceSum: rank ", rank_, " passes ", DTypeName(buffer.dtype()), ", only F32 is summed"));
  }
  if (!buffer.defined() || buffer.numel() == 0) return Barrier();
  // Rank-order sum: gather every buffer, then one kernel adds the rows in order on every rank.
  Tensor gathered = backend.Empty({size_, buffer.numel()}, DType::kF32);
  std::vector<Tensor> rows;
  for (int p = 0; p < size_; ++p) rows.push_back(gathered.Rows(p, 1).View(buffer.shape()));
  if (absl::Status s = AllGather(backend, buffer, rows); !s.ok()) return s;
  std::vector<Term> terms;
  for (const Tensor& row : rows) terms.push_back({1.0, &row});
  backend.CopyInto(buffer, backend.Combine(terms));
  return absl::OkStatus();
}

absl::Status NcclCommunicator::Broadcast(Backend& backend, const Tensor& buffer, int root) {
  if (root < 0 || root >= size_) {
    return absl::InvalidArgumentError(absl::StrCat("Broadcast: root ", root, " outside the group of ", size_));
  }
  if (absl::Status s = CheckLocal("Broadcast", {buffer}, "buffer", 1, Device::Cuda(stream_->device())); !s.ok()) {
    return s;
  }
  CudaDeviceScope scope(stream_->device());
  if (absl::Status s = stream_->Begin(backend); !s.ok()) return s;
  absl::Status status;
  if (BytesOf(buffer) > 0) {
    status = NcclStatus(ncclBroadcast(buffer.raw_data(), buffer.raw_data(), BytesOf(buffer), ncclUint8, root,
                                      handle_->communicator, stream_->stream()),
                        "ncclBroadcast");
  }
  stream_->UseBuffers(backend, {buffer});
  if (!status.ok()) return status;
  return stream_->FinishAndWait(backend);
}

absl::Status NcclCommunicator::Barrier() {
  CudaDeviceScope scope(stream_->device());
  if (absl::Status s = NcclStatus(ncclAllReduce(handle_->barrier_scratch, handle_->barrier_scratch, 1, ncclFloat32,
                                                ncclSum, handle_->communicator, stream_->stream()),
                                  "ncclAllReduce (barrier)");
      !s.ok()) {
    return s;
  }
  return CudaStatus(cudaStreamSynchronize(stream_->stream()), "cudaStreamSynchronize (barrier)");
}

#else  // no NCCL in this build

bool BuiltWithNccl() { return false; }

struct NcclCommunicator::Handle {};

absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> NcclCommunicator::CreateGroup(const std::vector<int>&) {
  return absl::UnimplementedError(
      "this build has no NCCL (a CUDA toolkit with nccl.h and libnccl is needed at configure time); several ranks "
      "on one GPU can use the loopback communicator (--loopback)");
}

#endif

}  // namespace zoetrope
