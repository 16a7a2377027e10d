// The VAE's stride-1 3D convolution (Backend::Conv3d) through cuDNN's implicit-GEMM convolutions, one
// cuDNN 2D convolution per temporal tap: y[t] = bias + Σ_a conv2d(xp[t + a], weight[:, :, a]), with the
// frames of the frame-major F32 [T, C, H, W] activation as the batch (that layout *is* NCHW), and the taps
// accumulated into y (beta = 1). A tap whose input frame falls in the causal zero padding contributes
// nothing, so each tap runs over the contiguous range of output frames whose input exists: no padded copy.
//
// Precision: "tf32" (F32 tensors, tensor-op math with TF32 operands, fp32 accumulation: PyTorch's cuDNN
// default) or "fp32" (FMA math). Chosen with CudaBackendOptions::conv_algorithm = "cudnn"; the im2col +
// cuBLASLt path stays the default until the GPU benchmark (scripts/device/bench-vae.sh) has compared them.
// Internal to kernels/cuda.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

#include "absl/status/statusor.h"

struct CUstream_st;

namespace zoetrope::cuda {

// Whether this build links cuDNN.
bool BuiltWithCudnn();

struct CudnnConvShape {
  int64_t frames = 0;  // output frames of this call
  int64_t in_channels = 0, height = 0, width = 0;
  int64_t out_channels = 0, kernel_t = 0, kernel_h = 0, kernel_w = 0;
  int64_t pad_front = 0, pad_height = 0, pad_width = 0;
  int64_t in_frames = 0;  // frames of x
};

class CudnnConv3d {
 public:
  // A cuDNN handle on the current device, enqueuing on `stream`. `tf32`: tensor-op math; else FMA.
  static absl::StatusOr<std::unique_ptr<CudnnConv3d>> Create(CUstream_st* stream, bool tf32);
  ~CudnnConv3d();

  // y (F32 [shape.frames, O, outH, outW], device) = Σ over taps of the 2D convolutions (no bias). `x`: F32
  // [in_frames, C, H, W]; `weight`: F32 [O, C, kt, kh, kw]; `tap_weight` and `workspace` are device scratch
  // of at least weight_tap_bytes() and workspace_limit() bytes (caller-owned, stream-ordered).
  void Run(const CudnnConvShape& shape, const float* x, const float* weight, float* tap_weight, void* workspace,
           float* y);

  static int64_t weight_tap_bytes(const CudnnConvShape& shape) {
    return shape.out_channels * shape.in_channels * shape.kernel_h * shape.kernel_w * 4;
  }
  static constexpr int64_t workspace_limit() { return int64_t{256} << 20; }

 private:
  struct Handles;
  explicit CudnnConv3d(std::unique_ptr<Handles> handles);
  std::unique_ptr<Handles> handles_;
};

}  // namespace zoetrope::cuda
