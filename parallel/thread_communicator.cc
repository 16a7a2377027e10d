#include "parallel/thread_communicator.h"

#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/check.h"
#include "parallel/collective_rendezvous.h"

namespace zoetrope {
namespace {

using collective::Buffer;
using collective::Operation;
using collective::Post;

void CopyBytes(const Buffer& from, const Buffer& to) {
  if (from.bytes > 0) std::memcpy(to.data, from.data, from.bytes);
}

}  // namespace

struct ThreadCommunicator::Group {
  explicit Group(int size) : rendezvous(size) {}
  collective::Rendezvous rendezvous;
};

std::vector<std::unique_ptr<Communicator>> ThreadCommunicator::CreateThreadGroup(int size) {
  ZCHECK_MSG(size >= 1, "a thread group needs at least one rank, got " << size);
  auto group = std::make_shared<Group>(size);
  std::vector<std::unique_ptr<Communicator>> members;
  for (int rank = 0; rank < size; ++rank) members.emplace_back(new ThreadCommunicator(group, rank));
  return members;
}

int ThreadCommunicator::size() const { return group_->rendezvous.size(); }

absl::Status ThreadCommunicator::AllToAll(Backend& backend, const std::vector<Tensor>& send,
                                          const std::vector<Tensor>& receive) {
  backend.Synchronize();
  Post post;
  post.operation = Operation::kAllToAll;
  post.send = collective::BuffersOf(send, "send", size(), Device::Cpu(), post.error);
  post.receive = collective::BuffersOf(receive, "receive", size(), Device::Cpu(), post.error);
  const std::vector<Post> posts = group_->rendezvous.Exchange(rank_, std::move(post));
  absl::Status status = collective::Check(posts);
  // Pull: this rank writes only its own receive buffers, reading the peers' send buffers, which stay
  // untouched until the second rendezvous below.
  if (status.ok()) {
    for (int p = 0; p < size(); ++p) CopyBytes(posts[p].send[rank_], posts[rank_].receive[p]);
  }
  group_->rendezvous.Exchange(rank_, Post{});
  return status;
}

absl::Status ThreadCommunicator::AllGather(Backend& backend, const Tensor& send, const std::vector<Tensor>& receive) {
  backend.Synchronize();
  Post post;
  post.operation = Operation::kAllGather;
  post.send.push_back(collective::BufferOf(send, "send", 0, Device::Cpu(), post.error));
  post.receive = collective::BuffersOf(receive, "receive", size(), Device::Cpu(), post.error);
  const std::vector<Post> posts = group_->rendezvous.Exchange(rank_, std::move(post));
  absl::Status status = collective::Check(posts);
  if (status.ok()) {
    for (int p = 0; p < size(); ++p) CopyBytes(posts[p].send[0], posts[rank_].receive[p]);
  }
  group_->rendezvous.Exchange(rank_, Post{});
  return status;
}

absl::Status ThreadCommunicator::AllReduceSum(Backend& backend, const Tensor& buffer) {
  backend.Synchronize();
  Post post;
  post.operation = Operation::kAllReduceSum;
  post.send.push_back(collective::BufferOf(buffer, "buffer", 0, Device::Cpu(), post.error));
  const std::vector<Post> posts = group_->rendezvous.Exchange(rank_, std::move(post));
  absl::Status status = collective::Check(posts);
  // In place: the peers still read this rank's buffer until the second rendezvous, so the sum goes to a
  // private copy first and into the buffer only after it.
  std::vector<float> sum;
  if (status.ok()) {
    const int64_t elements = posts[rank_].send[0].elements;
    sum.assign(static_cast<size_t>(elements), 0.0f);
    for (int p = 0; p < size(); ++p) {
      const float* values = reinterpret_cast<const float*>(posts[p].send[0].data);
      for (int64_t i = 0; i < elements; ++i) sum[i] += values[i];
    }
  }
  group_->rendezvous.Exchange(rank_, Post{});
  if (status.ok() && !sum.empty()) std::memcpy(buffer.raw_data(), sum.data(), sum.size() * sizeof(float));
  return status;
}

absl::Status ThreadCommunicator::Broadcast(Backend& backend, const Tensor& buffer, int root) {
  backend.Synchronize();
  Post post;
  post.operation = Operation::kBroadcast;
  post.root = root;
  post.send.push_back(collective::BufferOf(buffer, "buffer", 0, Device::Cpu(), post.error));
  const std::vector<Post> posts = group_->rendezvous.Exchange(rank_, std::move(post));
  absl::Status status = collective::Check(posts);
  // The root's buffer is only read, the others only written: no private copy needed.
  if (status.ok() && rank_ != root) CopyBytes(posts[root].send[0], posts[rank_].send[0]);
  group_->rendezvous.Exchange(rank_, Post{});
  return status;
}

absl::Status ThreadCommunicator::Barrier() { return group_->rendezvous.Barrier(rank_); }

}  // namespace zoetrope
