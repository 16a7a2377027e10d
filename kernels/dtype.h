// Element types of tensors and the scalar conversions between them.
//
// Half-precision types are stored as raw 16-bit patterns (uint16_t) on the host; conversions round to
// nearest even, as PyTorch and CUDA do, so a value rounded here equals the same value rounded on GPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace zoetrope {

enum class DType : uint8_t { kF32, kBF16, kF16, kI64, kI32 };

size_t DTypeSize(DType dtype);
// The safetensors spelling: "F32", "BF16", "F16", "I64", "I32".
absl::string_view DTypeName(DType dtype);
absl::StatusOr<DType> DTypeFromName(absl::string_view name);

inline float BFloat16ToFloat(uint16_t bits) {
  uint32_t widened = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &widened, sizeof(value));
  return value;
}

inline uint16_t FloatToBFloat16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);  // quiet NaN
  uint32_t rounding_bias = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding_bias) >> 16);
}

float HalfToFloat(uint16_t bits);
uint16_t FloatToHalf(float value);

}  // namespace zoetrope
