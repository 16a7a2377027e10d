#include "kernels/cuda/cuda_allocator.h"

#include <algorithm>
#include <bit>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_device_scope.h"

namespace zoetrope {

std::shared_ptr<CudaAllocator> CudaAllocator::Create(int device_index) {
  return std::shared_ptr<CudaAllocator>(new CudaAllocator(device_index));
}

CudaAllocator::~CudaAllocator() {
  ReleaseCached();
  for (cudaEvent_t event : spare_events_) cudaEventDestroy(event);
}

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
    if (!pending_.empty()) ReclaimPendingLocked(/*wait=*/false);
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
    CudaDeviceScope scope(device_index_);
    cudaError_t error = cudaMalloc(&pointer, size_class);
    if (error == cudaErrorMemoryAllocation) {
      // Out of memory: give the cache back to the driver and try once more.
      (void)cudaGetLastError();
      ReleaseCached();
      error = cudaMalloc(&pointer, size_class);
    }
    ZCHECK_MSG(error == cudaSuccess, "cudaMalloc of " << size_class << " bytes on cuda:" << device_index_ << ": "
                                                      << cudaGetErrorString(error));
    std::lock_guard<std::mutex> lock(mutex_);
    ++stats_.device_allocations;
    stats_.bytes_reserved += size_class;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    in_use_[pointer] = BlockInUse{size_class, {}};
    stats_.bytes_in_use += size_class;
    if (stats_.bytes_in_use > stats_.peak_bytes_in_use) stats_.peak_bytes_in_use = stats_.bytes_in_use;
  }
  std::shared_ptr<CudaAllocator> self = shared_from_this();
  return std::make_shared<Storage>(pointer, bytes, Device::Cuda(device_index_),
                                   [self](void* data) { self->Free(data); });
}

bool CudaAllocator::RecordStreamUse(const Storage& storage, CUstream_st* stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto found = in_use_.find(storage.data);
  if (found == in_use_.end()) return false;
  std::vector<CUstream_st*>& streams = found->second.other_streams;
  if (std::find(streams.begin(), streams.end(), stream) == streams.end()) streams.push_back(stream);
  return true;
}

CUevent_st* CudaAllocator::TakeEventLocked() {
  if (!spare_events_.empty()) {
    cudaEvent_t event = spare_events_.back();
    spare_events_.pop_back();
    return event;
  }
  cudaEvent_t event = nullptr;
  ZCUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  return event;
}

void CudaAllocator::Free(void* pointer) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto found = in_use_.find(pointer);
  ZCHECK_MSG(found != in_use_.end(), "freeing a block cuda:" << device_index_ << " did not hand out");
  BlockInUse block = std::move(found->second);
  in_use_.erase(found);
  stats_.bytes_in_use -= block.size_class;
  if (block.other_streams.empty()) {
    free_lists_[block.size_class].push_back(pointer);
    return;
  }
  // Events must be recorded on their stream's device; a tensor may die on any thread.
  CudaDeviceScope scope(device_index_);
  PendingBlock pending{pointer, block.size_class, {}};
  for (cudaStream_t stream : block.other_streams) {
    cudaEvent_t event = TakeEventLocked();
    ZCUDA_CHECK(cudaEventRecord(event, stream));
    pending.events.push_back(event);
  }
  pending_.push_back(std::move(pending));
  ++stats_.deferred_frees;
  stats_.bytes_pending += block.size_class;
}

void CudaAllocator::ReclaimPendingLocked(bool wait) {
  std::vector<PendingBlock> still_pending;
  for (PendingBlock& block : pending_) {
    bool done = true;
    for (cudaEvent_t event : block.events) {
      const cudaError_t state = wait ? cudaEventSynchronize(event) : cudaEventQuery(event);
      if (state == cudaErrorNotReady) {
        done = false;
        break;
      }
      ZCHECK_MSG(state == cudaSuccess, "waiting for a stream before reusing memory on cuda:"
                                           << device_index_ << ": " << cudaGetErrorString(state));
    }
    if (!done) {
      still_pending.push_back(std::move(block));
      continue;
    }
    for (cudaEvent_t event : block.events) spare_events_.push_back(event);
    free_lists_[block.size_class].push_back(block.pointer);
    stats_.bytes_pending -= block.size_class;
  }
  pending_ = std::move(still_pending);
}

void CudaAllocator::ReleaseCached() {
  std::lock_guard<std::mutex> lock(mutex_);
  int previous_device = 0;
  if (cudaGetDevice(&previous_device) != cudaSuccess) return;
  if (previous_device != device_index_) cudaSetDevice(device_index_);
  if (!pending_.empty()) ReclaimPendingLocked(/*wait=*/true);
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
