// The CUDA backend: the operator interface of kernels/backend.h on one NVIDIA GPU (built for Hopper,
// sm_90a).
//
// Precision (spec/wan21.md §2.5): compute_dtype() is BF16, so the large matmul weights and the
// activations between them are bf16; every product accumulates in fp32. F32 tensors stay F32 end to end
// (the residual stream, norm statistics, modulation, time MLPs, head): a Linear with F32 weights runs a
// true fp32 GEMM (TF32 off). Matrix products go through cuBLASLt with the bias and GELU fused into the
// epilogue; attention through the project's own kernel (kernels/cuda/attention_kernel.cuh).
//
// Execution: one CUDA stream per backend; every call is enqueued on it and returns without waiting,
// except ToHost and Synchronize, and the first product of each new large GEMM shape, which times
// cuBLASLt's candidate algorithms once (a few milliseconds, in the first denoising step only). Memory comes from a caching allocator (kernels/cuda/cuda_allocator.h),
// so a repeated forward pass allocates no device memory.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_allocator.h"

namespace zoetrope {

// Number of usable CUDA devices; 0 when there is no driver or no device (never fails).
int CudaDeviceCount();

// Tuning choices, fixed when a backend is created (never read during a launch).
struct CudaBackendOptions {
  // The attention implementation: "auto" (default), "mma", "wgmma3" or "pingpong"
  // (kernels/cuda/attention_kernel.cuh).
  std::string attention_kernel = "auto";
  // Where a Linear's bias is added: "compute" (default: rounded to the weight dtype in the cuBLASLt
  // epilogue, as PyTorch's autocast rounds it), "f32" (an F32 bias in the epilogue) or "separate" (a plain
  // product, then one bias/activation pass). Measured on H100 (1.3B DiT, 32,760 tokens): cuBLASLt picks much
  // faster kernels for a bf16 bias; the K = 1536 projections ran at 680 TFLOP/s against 410 with the others.
  std::string linear_bias = "compute";
  // How Conv3d (the VAE's convolutions) multiplies its im2col columns by the weight, always with fp32
  // accumulation and F32 output: "bf16" (default: operands rounded to bf16, tensor cores, as PyTorch's
  // bf16 autocast runs the VAE), "tf32" (F32 operands on TF32 tensor cores, PyTorch's cuDNN default)
  // or "fp32" (a true fp32 product; the accuracy reference the VAE benchmark compares against).
  std::string conv_precision = "bf16";
  // How Conv3d runs: "im2col" (default: im2col columns, then a cuBLASLt product, at any conv_precision) or
  // "cudnn" (cuDNN's implicit-GEMM 2D convolutions, one per temporal tap, accumulated; tf32 or fp32 only).
  // The default changes only once scripts/device/bench-vae.sh has measured both.
  std::string conv_algorithm = "im2col";
};

// The options from the environment: ZOETROPE_ATTENTION_KERNEL, ZOETROPE_LINEAR_BIAS,
// ZOETROPE_CONV_PRECISION and ZOETROPE_CONV_ALGORITHM (unset: defaults).
CudaBackendOptions CudaBackendOptionsFromEnvironment();

// A backend on device `device_index`. Errors: INVALID_ARGUMENT naming an unknown option value,
// NOT_FOUND when the device does not exist, FAILED_PRECONDITION when it is not a Hopper-class GPU this
// build has code for, INTERNAL when CUDA or cuBLASLt cannot be initialised.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(
    int device_index, const CudaBackendOptions& options = CudaBackendOptionsFromEnvironment());

// Allocator statistics of a backend made by CreateCudaBackend (ZCHECK otherwise).
CudaMemoryStats CudaBackendMemoryStats(Backend& backend);

// Whether `backend` was made by CreateCudaBackend (not a wrapper around one, nor another backend).
bool IsCudaBackend(Backend& backend);

// The stream every operation of `backend` (made by CreateCudaBackend) is enqueued on; for code that
// orders its own streams against the backend's with events (the communicators).
CUstream_st* CudaBackendStream(Backend& backend);

// Declares that work enqueued on `stream` reads or writes `tensor`, which `backend` allocated: when the
// tensor's memory is freed, it is reused only after the work enqueued on `stream` up to then
// (kernels/cuda/cuda_allocator.h). Returns false, doing nothing, for a tensor `backend` did not allocate
// (host memory, another backend's), whose owner must order its reuse itself.
bool CudaBackendRecordStreamUse(Backend& backend, const Tensor& tensor, CUstream_st* stream);

}  // namespace zoetrope
