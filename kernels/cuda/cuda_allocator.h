// A caching device allocator for one CUDA device and one stream.
//
// Blocks are rounded up to size classes (multiples of 256 bytes, four per power of two, so above 4 KB at
// most 25 % is wasted) and kept on per-class free lists when their tensors die, instead of going back to
// cudaFree. A request takes a cached block of its class, else the smallest cached block of at most twice
// its size. A denoising step asks for the same sizes in the same order every time, so once the lists hold
// what a step keeps alive at once, every request is served from them and the step calls cudaMalloc zero
// times (the test asserts this through `stats().device_allocations`).
//
// Reuse is safe without events because every kernel of the backend runs on the allocator's one stream:
// a block freed on the host while earlier kernels still read it is handed out only to later work on the
// same stream, which the stream orders after those readers.
//
// Thread-safe. Owned through shared_ptr: every Storage it hands out keeps it alive, so tensors may
// outlive the backend that made them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "kernels/tensor.h"

namespace zoetrope {

struct CudaMemoryStats {
  int64_t device_allocations = 0;  // cudaMalloc calls so far
  int64_t cache_hits = 0;          // requests served from the free lists
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
  // Gives every cached (unused) block back to the driver.
  void ReleaseCached();
  CudaMemoryStats stats() const;

  // The size class a request is rounded to (exposed for tests).
  static size_t RoundToSizeClass(size_t bytes);

 private:
  explicit CudaAllocator(int device_index) : device_index_(device_index) {}
  void Free(void* pointer, size_t size_class);

  const int device_index_;
  mutable std::mutex mutex_;
  std::map<size_t, std::vector<void*>> free_lists_;  // size class -> cached blocks
  CudaMemoryStats stats_;
};

}  // namespace zoetrope
