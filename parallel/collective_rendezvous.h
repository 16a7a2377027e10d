// The rendezvous that in-process communicators share (thread ranks on the CPU, loopback ranks on one GPU):
// each rank posts what it brings to a collective, waits for the whole group and gets every rank's post.
// Internal to parallel/: communicators build on it, nothing else should.
//
// Every rank runs Check on the same snapshot of posts, so a mismatch (another collective, wrong sizes or
// dtypes, a buffer on the wrong device) gives every rank the same error instead of a hang or a partial
// copy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "kernels/tensor.h"

namespace zoetrope::collective {

enum class Operation { kAllToAll, kAllGather, kAllReduceSum, kBroadcast, kBarrier };
const char* OperationName(Operation operation);

// One posted tensor: where its bytes are and what they are. An undefined tensor is an empty buffer of no
// dtype (it matches any dtype, since it carries none).
struct Buffer {
  char* data = nullptr;
  size_t bytes = 0;
  int64_t elements = 0;
  bool typed = false;
  DType dtype = DType::kF32;
};

// What one rank brings to a collective. `error` is a problem only that rank can see (a buffer on the wrong
// device, a wrong buffer count); it is posted rather than returned early so that the other ranks do not
// wait forever, and every rank returns it. `event` is for device communicators (a cudaEvent_t the peers
// wait on); the rendezvous only carries it.
struct Post {
  Operation operation = Operation::kBarrier;
  int root = 0;
  std::vector<Buffer> send;
  std::vector<Buffer> receive;
  std::string error;
  void* event = nullptr;
};

// The buffer of `tensor`; records an error in `error` (first one wins) when it is not on `expected`.
Buffer BufferOf(const Tensor& tensor, const char* role, size_t index, const Device& expected, std::string& error);
// BufferOf for each tensor, plus an error when there are not `expected_count` of them.
std::vector<Buffer> BuffersOf(const std::vector<Tensor>& tensors, const char* role, int expected_count,
                              const Device& expected, std::string& error);

// The checks every rank runs on every rank's post: the same input gives every rank the same verdict.
absl::Status Check(const std::vector<Post>& posts);

// A reusable barrier of `size` ranks that also exchanges posts.
class Rendezvous {
 public:
  explicit Rendezvous(int size) : size_(size), posts_(size) {}
  int size() const { return size_; }

  // Stores `post` as rank `rank`'s, waits until every rank has arrived in this round and returns a copy of
  // all posts of the round.
  std::vector<Post> Exchange(int rank, Post post);
  // The group's barrier collective: a checked rendezvous (every rank must call Barrier at this point, or
  // every rank gets the mismatch error) and a second one, like every collective, so that the group stays
  // in step for the calls after a mismatch.
  absl::Status Barrier(int rank);

 private:
  const int size_;
  absl::Mutex mutex_;
  absl::CondVar released_;
  int arrived_ ABSL_GUARDED_BY(mutex_) = 0;
  int64_t generation_ ABSL_GUARDED_BY(mutex_) = 0;
  std::vector<Post> posts_ ABSL_GUARDED_BY(mutex_);
  std::vector<Post> snapshot_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace zoetrope::collective
