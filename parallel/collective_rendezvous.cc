#include "parallel/collective_rendezvous.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace zoetrope::collective {

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

Buffer BufferOf(const Tensor& tensor, const char* role, size_t index, const Device& expected, std::string& error) {
  Buffer buffer;
  if (!tensor.defined()) return buffer;
  if (tensor.device() != expected && error.empty()) {
    error = absl::StrCat(role, "[", index, "] is ", tensor.DebugString(), ", not on ", expected.ToString());
  }
  buffer.data = static_cast<char*>(tensor.raw_data());
  buffer.bytes = tensor.nbytes();
  buffer.elements = tensor.numel();
  buffer.typed = true;
  buffer.dtype = tensor.dtype();
  return buffer;
}

std::vector<Buffer> BuffersOf(const std::vector<Tensor>& tensors, const char* role, int expected_count,
                              const Device& expected, std::string& error) {
  if (static_cast<int>(tensors.size()) != expected_count && error.empty()) {
    error = absl::StrCat(role, " holds ", tensors.size(), " tensors, the group has ", expected_count, " ranks");
  }
  std::vector<Buffer> buffers;
  for (size_t i = 0; i < tensors.size(); ++i) buffers.push_back(BufferOf(tensors[i], role, i, expected, error));
  return buffers;
}

namespace {

// Whether `from` may be copied into `to`: the same byte size and, where both have one, the same dtype.
bool Matches(const Buffer& from, const Buffer& to) {
  return from.bytes == to.bytes && (!from.typed || !to.typed || from.dtype == to.dtype);
}

std::string Describe(const Buffer& buffer) {
  return absl::StrCat(buffer.bytes, " bytes", buffer.typed ? absl::StrCat(" of ", DTypeName(buffer.dtype)) : "");
}

}  // namespace

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

// The copy of a round is taken under the lock, so a rank that has already left and posts for the next
// round cannot race with it: the copy happens before the round's last arrival releases anyone.
std::vector<Post> Rendezvous::Exchange(int rank, Post post) {
  absl::MutexLock lock(&mutex_);
  posts_[rank] = std::move(post);
  const int64_t round = generation_;
  if (++arrived_ == size_) {
    arrived_ = 0;
    snapshot_ = posts_;
    ++generation_;
    released_.SignalAll();
  } else {
    while (generation_ == round) released_.Wait(&mutex_);
  }
  // `snapshot_` may only be replaced by the next round's last arrival, which needs this rank to arrive
  // again first: it still holds this round's posts.
  return snapshot_;
}

absl::Status Rendezvous::Barrier(int rank) {
  Post post;
  post.operation = Operation::kBarrier;
  absl::Status status = Check(Exchange(rank, std::move(post)));
  Exchange(rank, Post{});
  return status;
}

}  // namespace zoetrope::collective
