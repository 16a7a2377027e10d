// Tensor: a dense, row-major, contiguous n-dimensional array on one device.
//
// A Tensor is a cheap handle: it shares its Storage (reference counted) with every view made from it.
// Views are limited to what stays contiguous (reshape, a range of rows along dimension 0), so every
// kernel may assume a contiguous layout. Host tensors may also wrap memory owned by someone else
// (an mmap'd weight file) through a keep-alive handle.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels/check.h"
#include "kernels/dtype.h"

namespace zoetrope {

enum class DeviceKind : uint8_t { kCpu, kCuda };

struct Device {
  DeviceKind kind = DeviceKind::kCpu;
  int index = 0;

  static Device Cpu() { return {DeviceKind::kCpu, 0}; }
  static Device Cuda(int index) { return {DeviceKind::kCuda, index}; }
  bool is_cpu() const { return kind == DeviceKind::kCpu; }
  bool operator==(const Device& other) const { return kind == other.kind && index == other.index; }
  bool operator!=(const Device& other) const { return !(*this == other); }
  std::string ToString() const;
};

using Shape = std::vector<int64_t>;
int64_t NumElements(const Shape& shape);
std::string ShapeToString(const Shape& shape);

// A block of device (or host) memory. `release` gives it back to whoever allocated it.
struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device;
  std::function<void(void*)> release;

  Storage(void* data, size_t bytes, Device device, std::function<void(void*)> release)
      : data(data), bytes(bytes), device(device), release(std::move(release)) {}
  ~Storage() {
    if (release) release(data);
  }
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

class Tensor {
 public:
  Tensor() = default;
  Tensor(std::shared_ptr<Storage> storage, size_t byte_offset, Shape shape, DType dtype);

  // New zero-initialised host tensor (64-byte aligned).
  static Tensor Host(const Shape& shape, DType dtype);
  // Host tensor over memory owned elsewhere; `keep_alive` is held as long as any view exists.
  static Tensor WrapHost(void* data, const Shape& shape, DType dtype, std::shared_ptr<void> keep_alive);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  // Negative dimensions count from the end, as in PyTorch.
  int64_t dim(int index) const;
  int64_t numel() const { return NumElements(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * DTypeSize(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device : Device(); }

  void* raw_data() const { return static_cast<char*>(storage_->data) + byte_offset_; }
  // The block this tensor is a view of (null when undefined); for allocators that track their blocks.
  const Storage* storage() const { return storage_.get(); }
  template <typename T>
  T* data() const {
    return static_cast<T*>(raw_data());
  }

  // Same elements, another shape with the same element count. Dimensions of -1 are inferred (one).
  Tensor View(Shape shape) const;
  // Rows [begin, begin + count) along dimension 0.
  Tensor Rows(int64_t begin, int64_t count) const;

  std::string DebugString() const;  // "F32[2, 3] on cpu"

 private:
  std::shared_ptr<Storage> storage_;
  size_t byte_offset_ = 0;
  Shape shape_;
  DType dtype_ = DType::kF32;
};

// Host-side conversions, used by loaders, tools and tests. `ToFloatVector` accepts F32/BF16/F16.
std::vector<float> ToFloatVector(const Tensor& host_tensor);
Tensor HostTensorFromFloats(const std::vector<float>& values, const Shape& shape, DType dtype = DType::kF32);
// Copies a host tensor converting between F32, BF16 and F16.
Tensor ConvertHost(const Tensor& host_tensor, DType dtype);

}  // namespace zoetrope
