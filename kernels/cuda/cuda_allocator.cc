#include "kernels/cuda/cuda_allocator.h"

#include <algorithm>
#include <bit>

#include "kernels/cuda/cuda_check.h"

namespace zoetrope {

std::shared_ptr<CudaAllocator> CudaAllocator::Create(int device_index) {
  return std::shared_ptr<CudaAllocator>(new CudaAllocator(device_index));
}

CudaAllocator::~CudaAllocator() { ReleaseCached(); }

size_t CudaAllocator::RoundToSizeClass(size_t bytes) {
  constexpr size_t kMinimum = 512;
  if (bytes <= kMinimum) return kMinimum;
  // Four classes per power of two: 2^k · {1, 1.25, 1.5, 1.75}.
  const int top_bit = 63 - std::countl_zero(static_cast<uint64_t>(bytes - 1));
  // Steps of at least 256 bytes keep every class a multiple of cudaMalloc's alignment.
  const size_t step = std::max<size_t>(size_t{1} << (top_bit - 2), 256);
  return (bytes + step - 1) / step * step;
}

std::shared_ptr<Storage> CudaAllocator::Allocate(size_t bytes) {
  const size_t requested_class = RoundToSizeClass(bytes);
  size_t size_class = requested_class;  // of the block handed out, which may be larger
  void* pointer = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    // The exact class first, else the smallest cached block of at most twice the size: a block kept by
    // a long-lived tensor made in the first step (a cache filled lazily) then costs no cudaMalloc later.
    for (auto found = free_lists_.lower_bound(requested_class);
         found != free_lists_.end() && found->first <= 2 * requested_class; ++found) {
      if (found->second.empty()) continue;
      pointer = found->second.back();
      found->second.pop_back();
      size_class = found->first;
      ++stats_.cache_hits;
      break;
    }
  }
  if (pointer == nullptr) {
    int previous_device = 0;
    ZCUDA_CHECK(cudaGetDevice(&previous_device));
    if (previous_device != device_index_) ZCUDA_CHECK(cudaSetDevice(device_index_));
    cudaError_t error = cudaMalloc(&pointer, size_class);
    if (error == cudaErrorMemoryAllocation) {
      // Out of memory: give the cache back to the driver and try once more.
      (void)cudaGetLastError();
      ReleaseCached();
      error = cudaMalloc(&pointer, size_class);
    }
    ZCHECK_MSG(error == cudaSuccess, "cudaMalloc of " << size_class << " bytes on cuda:" << device_index_ << ": "
                                                      << cudaGetErrorString(error));
    if (previous_device != device_index_) ZCUDA_CHECK(cudaSetDevice(previous_device));
    std::lock_guard<std::mutex> lock(mutex_);
    ++stats_.device_allocations;
    stats_.bytes_reserved += size_class;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.bytes_in_use += size_class;
    if (stats_.bytes_in_use > stats_.peak_bytes_in_use) stats_.peak_bytes_in_use = stats_.bytes_in_use;
  }
  std::shared_ptr<CudaAllocator> self = shared_from_this();
  return std::make_shared<Storage>(pointer, bytes, Device::Cuda(device_index_),
                                   [self, size_class](void* data) { self->Free(data, size_class); });
}

void CudaAllocator::Free(void* pointer, size_t size_class) {
  std::lock_guard<std::mutex> lock(mutex_);
  free_lists_[size_class].push_back(pointer);
  stats_.bytes_in_use -= size_class;
}

void CudaAllocator::ReleaseCached() {
  std::lock_guard<std::mutex> lock(mutex_);
  int previous_device = 0;
  if (cudaGetDevice(&previous_device) != cudaSuccess) return;
  if (previous_device != device_index_) cudaSetDevice(device_index_);
  for (auto& [size_class, blocks] : free_lists_) {
    for (void* block : blocks) {
      // cudaFree waits for the device, so blocks still read by queued kernels are safe to free.
      cudaFree(block);
      stats_.bytes_reserved -= size_class;
    }
    blocks.clear();
  }
  free_lists_.clear();
  if (previous_device != device_index_) cudaSetDevice(previous_device);
}

CudaMemoryStats CudaAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

}  // namespace zoetrope
