// A caching device allocator for one CUDA device and one stream.
//
// Blocks are rounded up to size classes (multiples of 256 bytes, four per power of two, so above 4 KB at
// most 25 % is wasted) and kept on per-class free lists when their tensors die, instead of going back to
// cudaFree. A request takes a cached block of its class, else the smallest cached block of at most twice
// its size. A denoising step asks for the same sizes in the same order every time, so once the lists hold
// what a step keeps alive at once, every request is served from them and the step calls cudaMalloc zero
// times (the test asserts this through `stats().device_allocations`).
//
// Streams: the backend's own stream needs no events: a block freed on the host while earlier kernels
// still read it is handed out only to later work on that stream, which the stream orders after those
// readers. Work on any other stream (a communicator's) must be declared with RecordStreamUse: when such a
// block is freed, an event is recorded on each declared stream and the block waits on a pending list until
// every event has completed; only then can it be handed out again. So a tensor may die on the host while
// a collective on another stream still reads or writes it, and its memory is never reused under it.
//
// Thread-safe. Owned through shared_ptr: every Storage it hands out keeps it alive, so tensors may
// outlive the backend that made them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <unordered_map>
#include <memory>
#include <mutex>
#include <vector>

#include "kernels/tensor.h"

// The CUDA runtime's stream and event handles (cudaStream_t is CUstream_st*, cudaEvent_t is CUevent_st*),
// declared here so that this header and kernels/cuda/cuda_backend.h need no CUDA include path.
struct CUstream_st;
struct CUevent_st;

namespace zoetrope {

struct CudaMemoryStats {
  int64_t device_allocations = 0;  // cudaMalloc calls so far
  int64_t cache_hits = 0;          // requests served from the free lists
  int64_t deferred_frees = 0;      // frees that had to wait for work on another stream
  size_t bytes_pending = 0;        // freed, waiting for work on another stream (part of bytes_reserved)
  size_t bytes_reserved = 0;       // held from the driver (in use + cached)
  size_t bytes_in_use = 0;
  size_t peak_bytes_in_use = 0;
};

class CudaAllocator : public std::enable_shared_from_this<CudaAllocator> {
 public:
  static std::shared_ptr<CudaAllocator> Create(int device_index);
  ~CudaAllocator();

  // A block of at least `bytes` (256-byte aligned) wrapped in a Storage whose release returns it here.
  std::shared_ptr<Storage> Allocate(size_t bytes);
  // Declares that work enqueued on `stream` (not the backend's own stream) uses `storage`'s block; see the
  // top of this file. Returns false, doing nothing, when `storage` was not allocated here.
  bool RecordStreamUse(const Storage& storage, CUstream_st* stream);
  // Gives every cached (unused) block back to the driver, waiting for pending blocks' streams first.
  void ReleaseCached();
  CudaMemoryStats stats() const;

  // The size class a request is rounded to (exposed for tests).
  static size_t RoundToSizeClass(size_t bytes);

 private:
  explicit CudaAllocator(int device_index) : device_index_(device_index) {}
  struct BlockInUse {
    size_t size_class = 0;
    std::vector<CUstream_st*> other_streams;  // declared by RecordStreamUse
  };
  struct PendingBlock {
    void* pointer = nullptr;
    size_t size_class = 0;
    std::vector<CUevent_st*> events;  // one per other stream, recorded when the block was freed
  };

  void Free(void* pointer);
  // Moves pending blocks whose events have all completed to the free lists (mutex_ held). `wait`: block
  // until every pending block is free (ReleaseCached).
  void ReclaimPendingLocked(bool wait);
  CUevent_st* TakeEventLocked();

  const int device_index_;
  mutable std::mutex mutex_;
  std::map<size_t, std::vector<void*>> free_lists_;  // size class -> cached blocks
  std::unordered_map<void*, BlockInUse> in_use_;      // every block handed out and not yet freed
  std::vector<PendingBlock> pending_;
  std::vector<CUevent_st*> spare_events_;
  CudaMemoryStats stats_;
};

}  // namespace zoetrope
