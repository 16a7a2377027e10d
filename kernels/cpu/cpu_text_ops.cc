#include "kernels/cpu/cpu_text_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_gemm.h"

namespace zoetrope::cpu {
namespace {

// Element-wise loops below this size are not worth waking the thread pool.
constexpr int64_t kParallelThreshold = 1 << 15;

Tensor AsF32(const Tensor& tensor) {
  return tensor.dtype() == DType::kF32 ? tensor : ConvertHost(tensor, DType::kF32);
}

Tensor ToDType(const Tensor& f32_tensor, DType dtype) {
  return dtype == DType::kF32 ? f32_tensor : ConvertHost(f32_tensor, dtype);
}

bool IsFloat(DType dtype) { return dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16; }

}  // namespace

Tensor GatherRows(const Tensor& table, const Tensor& ids, DType out_dtype) {
  ZCHECK_MSG(table.rank() == 2 && IsFloat(table.dtype()) && ids.dtype() == DType::kI32 && ids.rank() == 1 &&
                 IsFloat(out_dtype),
             "GatherRows table " << table.DebugString() << " ids " << ids.DebugString());
  const int64_t rows = table.dim(0), width = table.dim(1), count = ids.dim(0);
  const int32_t* index = ids.data<int32_t>();
  for (int64_t n = 0; n < count; ++n) {
    ZCHECK_MSG(index[n] >= 0 && index[n] < rows, "GatherRows id " << index[n] << " at " << n << " of table "
                                                                   << table.DebugString());
  }
  // Copy rows in the table's dtype (exact), then convert once: the same values Cast would give.
  Tensor gathered = Tensor::Host({count, width}, table.dtype());
  const size_t row_bytes = static_cast<size_t>(width) * DTypeSize(table.dtype());
  const char* source = static_cast<const char*>(table.raw_data());
  char* destination = static_cast<char*>(gathered.raw_data());
#pragma omp parallel for if (count * width > kParallelThreshold)
  for (int64_t n = 0; n < count; ++n) {
    std::memcpy(destination + n * row_bytes, source + static_cast<int64_t>(index[n]) * row_bytes, row_bytes);
  }
  return out_dtype == table.dtype() ? gathered : ConvertHost(gathered, out_dtype);
}

Tensor AttentionWithBias(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias, float scale) {
  ZCHECK_MSG(q.rank() == 3 && k.rank() == 3 && v.shape() == k.shape() && q.dim(1) == k.dim(1) &&
                 q.dim(2) == k.dim(2),
             "AttentionWithBias q " << q.DebugString() << " k " << k.DebugString() << " v " << v.DebugString());
  const int64_t query_count = q.dim(0), key_count = k.dim(0), heads = q.dim(1), head_dim = q.dim(2);
  ZCHECK_MSG(bias.dtype() == DType::kF32 && bias.shape() == Shape({heads, query_count, key_count}),
             "AttentionWithBias bias " << bias.DebugString() << " for q " << q.DebugString() << " k "
                                       << k.DebugString());
  const int stride = static_cast<int>(heads * head_dim);
  Tensor q32 = AsF32(q), k32 = AsF32(k), v32 = AsF32(v);
  Tensor out = Tensor::Host(q.shape(), DType::kF32);
  if (query_count == 0) return ToDType(out, q.dtype());
  std::vector<float> scores(static_cast<size_t>(query_count * key_count));
  for (int64_t h = 0; h < heads; ++h) {
    // The text encoder's sequences are ≤ 512 tokens, so one head's [Lq, Lk] logits fit at once.
    cpu::Gemm(cpu::Transpose::kYes, query_count, key_count, head_dim, scale, q32.data<float>() + h * head_dim, stride,
              k32.data<float>() + h * head_dim, stride, scores.data(), key_count);
    const float* head_bias = bias.data<float>() + h * query_count * key_count;
#pragma omp parallel for if (query_count * key_count > kParallelThreshold)
    for (int64_t i = 0; i < query_count; ++i) {
      float* row = scores.data() + i * key_count;
      const float* row_bias = head_bias + i * key_count;
      float maximum = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < key_count; ++j) {
        row[j] += row_bias[j];
        maximum = std::max(maximum, row[j]);
      }
      if (maximum == -std::numeric_limits<float>::infinity()) {  // every key is −inf: zeros, not NaN
        std::fill(row, row + key_count, 0.0f);
        continue;
      }
      double sum = 0.0;
      for (int64_t j = 0; j < key_count; ++j) {
        row[j] = std::exp(row[j] - maximum);
        sum += row[j];
      }
      const auto inverse = static_cast<float>(1.0 / sum);
      for (int64_t j = 0; j < key_count; ++j) row[j] *= inverse;
    }
    cpu::Gemm(cpu::Transpose::kNo, query_count, head_dim, key_count, 1.0f, scores.data(), key_count,
              v32.data<float>() + h * head_dim, stride, out.data<float>() + h * head_dim, stride);
  }
  return ToDType(out, q.dtype());
}

Tensor Multiply(const Tensor& a, const Tensor& b) {
  ZCHECK_MSG(a.shape() == b.shape() && IsFloat(a.dtype()) && IsFloat(b.dtype()),
             "Multiply a " << a.DebugString() << " b " << b.DebugString());
  Tensor a32 = AsF32(a), b32 = AsF32(b);
  Tensor product = Tensor::Host(a.shape(), DType::kF32);
  const float* left = a32.data<float>();
  const float* right = b32.data<float>();
  float* out = product.data<float>();
  const int64_t count = product.numel();
#pragma omp parallel for if (count > kParallelThreshold)
  for (int64_t i = 0; i < count; ++i) out[i] = left[i] * right[i];
  return ToDType(product, a.dtype());
}

}  // namespace zoetrope::cpu
