#include "kernels/tensor.h"

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace zoetrope {

std::string Device::ToString() const {
  return kind == DeviceKind::kCpu ? std::string("cpu") : absl::StrCat("cuda:", index);
}

int64_t NumElements(const Shape& shape) {
  int64_t count = 1;
  for (int64_t extent : shape) count *= extent;
  return count;
}

std::string ShapeToString(const Shape& shape) { return absl::StrCat("[", absl::StrJoin(shape, ", "), "]"); }

Tensor::Tensor(std::shared_ptr<Storage> storage, size_t byte_offset, Shape shape, DType dtype)
    : storage_(std::move(storage)), byte_offset_(byte_offset), shape_(std::move(shape)), dtype_(dtype) {
  for (int64_t extent : shape_) ZCHECK_MSG(extent >= 0, "negative extent in " << ShapeToString(shape_));
  ZCHECK_MSG(byte_offset_ + nbytes() <= storage_->bytes,
             "view " << ShapeToString(shape_) << " at byte " << byte_offset_ << " exceeds storage of "
                     << storage_->bytes << " bytes");
}

Tensor Tensor::Host(const Shape& shape, DType dtype) {
  const size_t bytes = static_cast<size_t>(NumElements(shape)) * DTypeSize(dtype);
  const size_t rounded = ((bytes + 63) / 64) * 64;
  void* data = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  ZCHECK_MSG(data != nullptr, "host allocation of " << bytes << " bytes failed");
  std::memset(data, 0, rounded == 0 ? 64 : rounded);
  auto storage = std::make_shared<Storage>(data, bytes, Device::Cpu(), [](void* pointer) { std::free(pointer); });
  return Tensor(std::move(storage), 0, shape, dtype);
}

Tensor Tensor::WrapHost(void* data, const Shape& shape, DType dtype, std::shared_ptr<void> keep_alive) {
  const size_t bytes = static_cast<size_t>(NumElements(shape)) * DTypeSize(dtype);
  auto storage = std::make_shared<Storage>(data, bytes, Device::Cpu(),
                                           [keep_alive = std::move(keep_alive)](void*) mutable { keep_alive.reset(); });
  return Tensor(std::move(storage), 0, shape, dtype);
}

int64_t Tensor::dim(int index) const {
  const int resolved = index < 0 ? index + rank() : index;
  ZCHECK_MSG(resolved >= 0 && resolved < rank(), "dim " << index << " of " << ShapeToString(shape_));
  return shape_[resolved];
}

Tensor Tensor::View(Shape shape) const {
  int inferred = -1;
  int64_t known = 1;
  for (int i = 0; i < static_cast<int>(shape.size()); ++i) {
    if (shape[i] == -1) {
      ZCHECK_MSG(inferred < 0, "two inferred dimensions in " << ShapeToString(shape));
      inferred = i;
    } else {
      known *= shape[i];
    }
  }
  if (inferred >= 0) shape[inferred] = known == 0 ? 0 : numel() / known;
  ZCHECK_MSG(NumElements(shape) == numel(), "cannot view " << ShapeToString(shape_) << " as " << ShapeToString(shape));
  return Tensor(storage_, byte_offset_, std::move(shape), dtype_);
}

Tensor Tensor::Rows(int64_t begin, int64_t count) const {
  ZCHECK_MSG(rank() >= 1 && begin >= 0 && count >= 0 && begin + count <= shape_[0],
             "rows [" << begin << ", " << begin + count << ") of " << ShapeToString(shape_));
  Shape shape = shape_;
  shape[0] = count;
  const size_t row_bytes = static_cast<size_t>(NumElements(shape_) / std::max<int64_t>(shape_[0], 1)) * DTypeSize(dtype_);
  return Tensor(storage_, byte_offset_ + static_cast<size_t>(begin) * row_bytes, std::move(shape), dtype_);
}

std::string Tensor::DebugString() const {
  if (!defined()) return "undefined";
  return absl::StrCat(DTypeName(dtype_), ShapeToString(shape_), " on ", device().ToString());
}

std::vector<float> ToFloatVector(const Tensor& host_tensor) {
  ZCHECK_MSG(host_tensor.device().is_cpu(), "ToFloatVector needs a host tensor");
  const int64_t count = host_tensor.numel();
  std::vector<float> values(static_cast<size_t>(count));
  switch (host_tensor.dtype()) {
    case DType::kF32:
      std::memcpy(values.data(), host_tensor.raw_data(), count * sizeof(float));
      break;
    case DType::kBF16: {
      const uint16_t* source = host_tensor.data<uint16_t>();
      for (int64_t i = 0; i < count; ++i) values[i] = BFloat16ToFloat(source[i]);
      break;
    }
    case DType::kF16: {
      const uint16_t* source = host_tensor.data<uint16_t>();
      for (int64_t i = 0; i < count; ++i) values[i] = HalfToFloat(source[i]);
      break;
    }
    case DType::kI64: {
      const int64_t* source = host_tensor.data<int64_t>();
      for (int64_t i = 0; i < count; ++i) values[i] = static_cast<float>(source[i]);
      break;
    }
    case DType::kI32: {
      const int32_t* source = host_tensor.data<int32_t>();
      for (int64_t i = 0; i < count; ++i) values[i] = static_cast<float>(source[i]);
      break;
    }
  }
  return values;
}

Tensor HostTensorFromFloats(const std::vector<float>& values, const Shape& shape, DType dtype) {
  ZCHECK_MSG(static_cast<int64_t>(values.size()) == NumElements(shape),
             values.size() << " values for shape " << ShapeToString(shape));
  Tensor f32 = Tensor::WrapHost(const_cast<float*>(values.data()), shape, DType::kF32, nullptr);
  return ConvertHost(f32, dtype);
}

Tensor ConvertHost(const Tensor& host_tensor, DType dtype) {
  ZCHECK(host_tensor.device().is_cpu());
  Tensor result = Tensor::Host(host_tensor.shape(), dtype);
  const int64_t count = host_tensor.numel();
  if (dtype == host_tensor.dtype()) {
    std::memcpy(result.raw_data(), host_tensor.raw_data(), host_tensor.nbytes());
    return result;
  }
  std::vector<float> values = ToFloatVector(host_tensor);
  switch (dtype) {
    case DType::kF32:
      std::memcpy(result.raw_data(), values.data(), count * sizeof(float));
      break;
    case DType::kBF16:
      for (int64_t i = 0; i < count; ++i) result.data<uint16_t>()[i] = FloatToBFloat16(values[i]);
      break;
    case DType::kF16:
      for (int64_t i = 0; i < count; ++i) result.data<uint16_t>()[i] = FloatToHalf(values[i]);
      break;
    default:
      ZCHECK_MSG(false, "ConvertHost to " << DTypeName(dtype) << " is not supported");
  }
  return result;
}

}  // namespace zoetrope
