#include "parallel/cuda_loopback_communicator.h"

#include <cuda_runtime.h>

#include <functional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_backend.h"
#include "parallel/collective_rendezvous.h"
#include "parallel/cuda_collective_stream.h"

namespace zoetrope {

using collective::Buffer;
using collective::Operation;
using collective::Post;

struct CudaLoopbackCommunicator::Group {
  Group(int device, int size) : device(device), rendezvous(size) {}
  const int device;
  collective::Rendezvous rendezvous;
};

namespace {

absl::Status CopyOnStream(const Buffer& from, const Buffer& to, cudaStream_t stream) {
  if (from.bytes == 0) return absl::OkStatus();
  return CudaStatus(cudaMemcpyAsync(to.data, from.data, from.bytes, cudaMemcpyDeviceToDevice, stream),
                    "cudaMemcpyAsync (loopback collective)");
}

// The copies a rank enqueues once every rank's post has passed the checks.
using EnqueueCopies = std::function<absl::Status(const std::vector<Post>& posts, cudaStream_t stream)>;

}  // namespace

absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> CudaLoopbackCommunicator::CreateGroup(int device,
                                                                                                 int size) {
  if (size < 1) return absl::InvalidArgumentError(absl::StrCat("a loopback group needs ≥ 1 rank, got ", size));
  auto group = std::make_shared<Group>(device, size);
  std::vector<std::unique_ptr<Communicator>> members;
  for (int rank = 0; rank < size; ++rank) {
    absl::StatusOr<std::unique_ptr<CollectiveStream>> stream = CollectiveStream::Create(device);
    if (!stream.ok()) return stream.status();
    members.emplace_back(new CudaLoopbackCommunicator(group, rank, *std::move(stream)));
  }
  return members;
}

CudaLoopbackCommunicator::CudaLoopbackCommunicator(std::shared_ptr<Group> group, int rank,
                                                   std::unique_ptr<CollectiveStream> stream)
    : group_(std::move(group)), rank_(rank), stream_(std::move(stream)) {}

CudaLoopbackCommunicator::~CudaLoopbackCommunicator() = default;

int CudaLoopbackCommunicator::size() const { return group_->rendezvous.size(); }

namespace {

// One collective of rank `rank` (see the header): post, check, pull on the communication stream after the
// senders' compute, second rendezvous, wait for the peers' pulls. `own_tensors` are this rank's buffers
// (for the allocator). Returns the handle that orders the compute stream after it.
absl::StatusOr<std::unique_ptr<PendingCollective>> RunCollective(collective::Rendezvous& rendezvous, int rank,
                                                                 CollectiveStream& stream, Backend& backend,
                                                                 Post post, const std::vector<Tensor>& own_tensors,
                                                                 const EnqueueCopies& enqueue) {
  CudaDeviceScope scope(stream.device());
  if (absl::Status begun = stream.Begin(backend); !begun.ok() && post.error.empty()) {
    post.error = std::string(begun.message());
  }
  post.event = stream.compute_ready();
  const std::vector<Post> posts = rendezvous.Exchange(rank, std::move(post));
  absl::Status status = collective::Check(posts);
  if (status.ok()) {
    for (int p = 0; p < rendezvous.size() && status.ok(); ++p) {
      if (p != rank) {
        status = CudaStatus(cudaStreamWaitEvent(stream.stream(), static_cast<cudaEvent_t>(posts[p].event), 0),
                            "cudaStreamWaitEvent (peer's send buffers)");
      }
    }
    if (status.ok()) status = enqueue(posts, stream.stream());
    stream.UseBuffers(backend, own_tensors);
    if (absl::Status recorded = stream.RecordTransfersDone(); status.ok()) status = recorded;
  }
  Post done;
  done.event = stream.transfers_done();
  const std::vector<Post> finished = rendezvous.Exchange(rank, std::move(done));
  if (!status.ok()) return status;
  for (int p = 0; p < rendezvous.size(); ++p) {
    if (p == rank) continue;
    if (absl::Status waited = CudaStatus(
            cudaStreamWaitEvent(stream.stream(), static_cast<cudaEvent_t>(finished[p].event), 0),
            "cudaStreamWaitEvent (peer's copies)");
        !waited.ok()) {
      return waited;
    }
  }
  return stream.Finish();
}

absl::Status WaitNow(absl::StatusOr<std::unique_ptr<PendingCollective>> pending, Backend& backend) {
  if (!pending.ok()) return pending.status();
  return (*pending)->Wait(backend);
}

}  // namespace

absl::StatusOr<std::unique_ptr<PendingCollective>> CudaLoopbackCommunicator::StartAllToAll(
    Backend& backend, const std::vector<Tensor>& send, const std::vector<Tensor>& receive) {
  const Device device = Device::Cuda(group_->device);
  Post post;
  post.operation = Operation::kAllToAll;
  post.send = collective::BuffersOf(send, "send", size(), device, post.error);
  post.receive = collective::BuffersOf(receive, "receive", size(), device, post.error);
  std::vector<Tensor> own = send;
  own.insert(own.end(), receive.begin(), receive.end());
  const int rank = rank_;
  return RunCollective(group_->rendezvous, rank_, *stream_, backend, std::move(post), own,
                       [rank](const std::vector<Post>& posts, cudaStream_t stream) -> absl::Status {
                         for (size_t p = 0; p < posts.size(); ++p) {
                           if (absl::Status s = CopyOnStream(posts[p].send[rank], posts[rank].receive[p], stream);
                               !s.ok()) {
                             return s;
                           }
                         }
                         return absl::OkStatus();
                       });
}

absl::Status CudaLoopbackCommunicator::AllToAll(Backend& backend, const std::vector<Tensor>& send,
                                                const std::vector<Tensor>& receive) {
  return WaitNow(StartAllToAll(backend, send, receive), backend);
}

absl::Status CudaLoopbackCommunicator::AllGather(Backend& backend, const Tensor& send,
                                                 const std::vector<Tensor>& receive) {
  const Device device = Device::Cuda(group_->device);
  Post post;
  post.operation = Operation::kAllGather;
  post.send.push_back(collective::BufferOf(send, "send", 0, device, post.error));
  post.receive = collective::BuffersOf(receive, "receive", size(), device, post.error);
  std::vector<Tensor> own = receive;
  own.push_back(send);
  const int rank = rank_;
  return WaitNow(RunCollective(group_->rendezvous, rank_, *stream_, backend, std::move(post), own,
                               [rank](const std::vector<Post>& posts, cudaStream_t stream) -> absl::Status {
                                 for (size_t p = 0; p < posts.size(); ++p) {
                                   if (absl::Status s = CopyOnStream(posts[p].send[0], posts[rank].receive[p], stream);
                                       !s.ok()) {
                                     return s;
                                   }
                                 }
                                 return absl::OkStatus();
                               }),
                 backend);
}

absl::Status CudaLoopbackCommunicator::AllReduceSum(Backend& backend, const Tensor& buffer) {
  const Device device = Device::Cuda(group_->device);
  Post post;
  post.operation = Operation::kAllReduceSum;
  post.send.push_back(collective::BufferOf(buffer, "buffer", 0, device, post.error));
  // Every rank's buffer lands in a row of `gathered` (allocated before the collective begins, so the
  // compute stream's earlier users of its memory come first); the sum follows on the compute stream once
  // the peers have finished reading this rank's buffer, which it overwrites.
  const int64_t elements = buffer.defined() ? buffer.numel() : 0;
  Tensor gathered = elements > 0 && post.error.empty() ? backend.Empty({size(), elements}, DType::kF32) : Tensor();
  absl::Status status = WaitNow(
      RunCollective(group_->rendezvous, rank_, *stream_, backend, std::move(post), {buffer, gathered},
                    [&gathered](const std::vector<Post>& posts, cudaStream_t stream) -> absl::Status {
                      if (!gathered.defined()) return absl::OkStatus();
                      for (size_t p = 0; p < posts.size(); ++p) {
                        Buffer row;
                        row.data = static_cast<char*>(gathered.Rows(static_cast<int64_t>(p), 1).raw_data());
                        row.bytes = posts[p].send[0].bytes;
                        if (absl::Status s = CopyOnStream(posts[p].send[0], row, stream); !s.ok()) return s;
                      }
                      return absl::OkStatus();
                    }),
      backend);
  if (!status.ok() || !gathered.defined()) return status;
  std::vector<Tensor> rows;
  std::vector<Term> terms;
  for (int p = 0; p < size(); ++p) rows.push_back(gathered.Rows(p, 1).View(buffer.shape()));
  for (const Tensor& row : rows) terms.push_back({1.0, &row});
  backend.CopyInto(buffer, backend.Combine(terms));
  return absl::OkStatus();
}

absl::Status CudaLoopbackCommunicator::Broadcast(Backend& backend, const Tensor& buffer, int root) {
  const Device device = Device::Cuda(group_->device);
  Post post;
  post.operation = Operation::kBroadcast;
  post.root = root;
  post.send.push_back(collective::BufferOf(buffer, "buffer", 0, device, post.error));
  const int rank = rank_;
  // The root's buffer is only read and the others only written.
  return WaitNow(RunCollective(group_->rendezvous, rank_, *stream_, backend, std::move(post), {buffer},
                               [rank, root](const std::vector<Post>& posts, cudaStream_t stream) -> absl::Status {
                                 if (rank == root) return absl::OkStatus();
                                 return CopyOnStream(posts[root].send[0], posts[rank].send[0], stream);
                               }),
                 backend);
}

absl::Status CudaLoopbackCommunicator::Barrier() { return group_->rendezvous.Barrier(rank_); }

}  // namespace zoetrope
