#include "parallel/thread_communicator.h"

#include <cstring>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "kernels/check.h"

namespace zoetrope {
namespace {

enum class Operation { kAllToAll, kAllGather, kAllReduceSum, kBroadcast, kBarrier };

const char* OperationName(Operation operation) {
  switch (operation) {
    case Operation::kAllToAll:
      return "AllToAll";
    case Operation::kAllGather:
      return "AllGather";
    case Operation::kAllReduceSum:
      return "AllReduceSum";
    case Operation::kBroadcast:
      return "Broadcast";
    case Operation::kBarrier:
      return "Barrier";
  }
  return "?";
}

// One posted tensor: where its bytes are and what they are. An undefined tensor is an empty buffer of no
// dtype (it matches any dtype, since it carries none).
struct Buffer {
  char* data = nullptr;
  size_t bytes = 0;
  int64_t elements = 0;
  bool typed = false;
  DType dtype = DType::kF32;
};

// What one rank brings to a collective. `error` is a problem only that rank can see (a buffer that is not
// host memory, a wrong buffer count); it is posted rather than returned early so that the other ranks do
// not wait forever, and every rank returns it.
struct Post {
  Operation operation = Operation::kBarrier;
  int root = 0;
  std::vector<Buffer> send;
  std::vector<Buffer> receive;
  std::string error;
};

Buffer BufferOf(const Tensor& tensor, const char* role, size_t index, std::string& error) {
  Buffer buffer;
  if (!tensor.defined()) return buffer;
  if (!tensor.device().is_cpu() && error.empty()) {
    error = absl::StrCat(role, "[", index, "] is ", tensor.DebugString(), ", not host memory");
  }
  buffer.data = static_cast<char*>(tensor.raw_data());
  buffer.bytes = tensor.nbytes();
  buffer.elements = tensor.numel();
  buffer.typed = true;
  buffer.dtype = tensor.dtype();
  return buffer;
}

std::vector<Buffer> BuffersOf(const std::vector<Tensor>& tensors, const char* role, int expected, std::string& error) {
  if (static_cast<int>(tensors.size()) != expected && error.empty()) {
    error = absl::StrCat(role, " holds ", tensors.size(), " tensors, the group has ", expected, " ranks");
  }
  std::vector<Buffer> buffers;
  for (size_t i = 0; i < tensors.size(); ++i) buffers.push_back(BufferOf(tensors[i], role, i, error));
  return buffers;
}

// Whether `from` may be copied into `to`: the same byte size and, where both have one, the same dtype.
bool Matches(const Buffer& from, const Buffer& to) {
  return from.bytes == to.bytes && (!from.typed || !to.typed || from.dtype == to.dtype);
}

std::string Describe(const Buffer& buffer) {
  return absl::StrCat(buffer.bytes, " bytes", buffer.typed ? absl::StrCat(" of ", DTypeName(buffer.dtype)) : "");
}

// The checks every rank runs on every rank's post: the same input gives every rank the same verdict.
absl::Status Check(const std::vector<Post>& posts) {
  const int size = static_cast<int>(posts.size());
  const Operation operation = posts[0].operation;
  for (int r = 0; r < size; ++r) {
    if (posts[r].operation != operation) {
      return absl::FailedPreconditionError(absl::StrCat("collective mismatch: rank 0 called ", OperationName(operation),
                                                        ", rank ", r, " called ", OperationName(posts[r].operation)));
    }
  }
  const std::string name = OperationName(operation);
  for (int r = 0; r < size; ++r) {
    if (!posts[r].error.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": rank ", r, ": ", posts[r].error));
    }
  }
  switch (operation) {
    case Operation::kAllToAll:
      for (int r = 0; r < size; ++r) {
        for (int p = 0; p < size; ++p) {
          const Buffer& from = posts[r].send[p];
          const Buffer& to = posts[p].receive[r];
          if (!Matches(from, to)) {
            return absl::InvalidArgumentError(absl::StrCat(name, ": rank ", r, " sends ", Describe(from), " to rank ",
                                                           p, ", which receives ", Describe(to)));
          }
        }
      }
      break;
    case Operation::kAllGather:
      for (int r = 0; r < size; ++r) {
        for (int p = 0; p < size; ++p) {
          const Buffer& from = posts[r].send[0];
          const Buffer& to = posts[p].receive[r];
          if (!Matches(from, to)) {
            return absl::InvalidArgumentError(
                absl::StrCat(name, ": rank ", r, " sends ", Describe(from), ", rank ", p, " receives ", Describe(to)));
          }
        }
      }
      break;
    case Operation::kAllReduceSum:
      for (int r = 0; r < size; ++r) {
        const Buffer& buffer = posts[r].send[0];
        if (buffer.typed && buffer.dtype != DType::kF32) {
          return absl::InvalidArgumentError(
              absl::StrCat(name, ": rank ", r, " passes ", DTypeName(buffer.dtype), ", only F32 is summed"));
        }
        if (buffer.elements != posts[0].send[0].elements) {
          return absl::InvalidArgumentError(absl::StrCat(name, ": rank ", r, " has ", buffer.elements,
                                                         " elements, rank 0 has ", posts[0].send[0].elements));
        }
      }
      break;
    case Operation::kBroadcast: {
      const int root = posts[0].root;
      for (int r = 0; r < size; ++r) {
        if (posts[r].root != root) {
          return absl::InvalidArgumentError(
              absl::StrCat(name, ": rank ", r, " names root ", posts[r].root, ", rank 0 names ", root));
        }
      }
      if (root < 0 || root >= size) {
        return absl::InvalidArgumentError(absl::StrCat(name, ": root ", root, " outside the group of ", size));
      }
      for (int r = 0; r < size; ++r) {
        if (!Matches(posts[root].send[0], posts[r].send[0])) {
          return absl::InvalidArgumentError(absl::StrCat(name, ": rank ", r, " has ", Describe(posts[r].send[0]),
                                                         ", the root has ", Describe(posts[root].send[0])));
        }
      }
      break;
    }
    case Operation::kBarrier:
      break;
  }
  return absl::OkStatus();
}

void CopyBytes(const Buffer& from, const Buffer& to) {
  if (from.bytes > 0) std::memcpy(to.data, from.data, from.bytes);
}

}  // namespace

struct ThreadCommunicator::Group {
  explicit Group(int size) : size(size), posts(size) {}

  // A reusable barrier that also exchanges posts: stores `post` as rank `rank`'s, waits until every rank
  // has arrived in this round and returns a copy of all of them (taken under the lock, so that a rank
  // that has already left and posts for the next round cannot race with the copy: the copy of a round
  // happens before its last arrival releases anyone).
  std::vector<Post> Exchange(int rank, Post post) {
    absl::MutexLock lock(&mutex);
    posts[rank] = std::move(post);
    const int64_t round = generation;
    if (++arrived == size) {
      arrived = 0;
      snapshot = posts;
      ++generation;
      released.SignalAll();
    } else {
      while (generation == round) released.Wait(&mutex);
    }
    // `snapshot` may only be replaced by the next round's last arrival, which needs this rank to arrive
    // again first: it still holds this round's posts.
    return snapshot;
  }

  const int size;
  absl::Mutex mutex;
  absl::CondVar released;
  int arrived ABSL_GUARDED_BY(mutex) = 0;
  int64_t generation ABSL_GUARDED_BY(mutex) = 0;
  std::vector<Post> posts ABSL_GUARDED_BY(mutex);
  std::vector<Post> snapshot ABSL_GUARDED_BY(mutex);
};

std::vector<std::unique_ptr<Communicator>> ThreadCommunicator::CreateThreadGroup(int size) {
  ZCHECK_MSG(size >= 1, "a thread group needs at least one rank, got " << size);
  auto group = std::make_shared<Group>(size);
  std::vector<std::unique_ptr<Communicator>> members;
  for (int rank = 0; rank < size; ++rank) members.emplace_back(new ThreadCommunicator(group, rank));
  return members;
}

int ThreadCommunicator::size() const { return group_->size; }

absl::Status ThreadCommunicator::AllToAll(Backend& backend, const std::vector<Tensor>& send,
                                          const std::vector<Tensor>& receive) {
  backend.Synchronize();
  Post post;
  post.operation = Operation::kAllToAll;
  post.send = BuffersOf(send, "send", size(), post.error);
  post.receive = BuffersOf(receive, "receive", size(), post.error);
  const std::vector<Post> posts = group_->Exchange(rank_, std::move(post));
  absl::Status status = Check(posts);
  // Pull: this rank writes only its own receive buffers, reading the peers' send buffers, which stay
  // untouched until the second rendezvous below.
  if (status.ok()) {
    for (int p = 0; p < size(); ++p) CopyBytes(posts[p].send[rank_], posts[rank_].receive[p]);
  }
  group_->Exchange(rank_, Post{});
  return status;
}

absl::Status ThreadCommunicator::AllGather(Backend& backend, const Tensor& send, const std::vector<Tensor>& receive) {
  backend.Synchronize();
  Post post;
  post.operation = Operation::kAllGather;
  post.send.push_back(BufferOf(send, "send", 0, post.error));
  post.receive = BuffersOf(receive, "receive", size(), post.error);
  const std::vector<Post> posts = group_->Exchange(rank_, std::move(post));
  absl::Status status = Check(posts);
  if (status.ok()) {
    for (int p = 0; p < size(); ++p) CopyBytes(posts[p].send[0], posts[rank_].receive[p]);
  }
  group_->Exchange(rank_, Post{});
  return status;
}

absl::Status ThreadCommunicator::AllReduceSum(Backend& backend, const Tensor& buffer) {
  backend.Synchronize();
  Post post;
  post.operation = Operation::kAllReduceSum;
  post.send.push_back(BufferOf(buffer, "buffer", 0, post.error));
  const std::vector<Post> posts = group_->Exchange(rank_, std::move(post));
  absl::Status status = Check(posts);
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
  group_->Exchange(rank_, Post{});
  if (status.ok() && !sum.empty()) std::memcpy(buffer.raw_data(), sum.data(), sum.size() * sizeof(float));
  return status;
}

absl::Status ThreadCommunicator::Broadcast(Backend& backend, const Tensor& buffer, int root) {
  backend.Synchronize();
  Post post;
  post.operation = Operation::kBroadcast;
  post.root = root;
  post.send.push_back(BufferOf(buffer, "buffer", 0, post.error));
  const std::vector<Post> posts = group_->Exchange(rank_, std::move(post));
  absl::Status status = Check(posts);
  // The root's buffer is only read, the others only written: no private copy needed.
  if (status.ok() && rank_ != root) CopyBytes(posts[root].send[0], posts[rank_].send[0]);
  group_->Exchange(rank_, Post{});
  return status;
}

absl::Status ThreadCommunicator::Barrier() {
  Post post;
  post.operation = Operation::kBarrier;
  absl::Status status = Check(group_->Exchange(rank_, std::move(post)));
  // Every collective is exactly two rendezvous, so that a rank calling another collective than its peers
  // (an error every rank reports) still leaves the group in step for the calls after it.
  group_->Exchange(rank_, Post{});
  return status;
}

}  // namespace zoetrope
