// CPU implementations of the text-encoder operators of the Backend interface (kernels/backend.h,
// section "text encoder"); the contracts are stated there. CpuBackend forwards to these free functions.
// Inputs may be F32, BF16 or F16 host tensors (ids I32); arithmetic is fp32 with wider sums where a
// reduction is long.
#pragma once

#include "kernels/backend.h"

namespace zoetrope::cpu {

Tensor GatherRows(const Tensor& table, const Tensor& ids, DType out_dtype);
Tensor AttentionWithBias(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias, float scale);
Tensor Multiply(const Tensor& a, const Tensor& b);

}  // namespace zoetrope::cpu
