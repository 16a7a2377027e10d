// CPU implementations of the video-VAE operators of the Backend interface (kernels/backend.h,
// section "video VAE"); the contracts (shapes, layouts, padding) are stated there. CpuBackend forwards
// to these free functions. All take and return F32 host tensors except SwapAxes, which moves bytes of
// any dtype.
//
// Convolutions are im2col + OpenBLAS sgemm per output frame, tiled over output rows so the column
// buffer stays small (a full-resolution 96-channel 3×3×3 frame would need 4 GB at once).
#pragma once

#include <cstdint>

#include "kernels/backend.h"

namespace zoetrope::cpu {

Tensor Conv3d(const Tensor& x, const Tensor& weight, const Tensor* bias, int pad_front, int pad_back, int pad_height,
              int pad_width);
Tensor ChannelRmsNorm(const Tensor& x, const Tensor& gamma, Activation activation);
Tensor UpsampleNearest2x(const Tensor& x);
Tensor SwapAxes(const Tensor& x, int64_t batch, int64_t rows, int64_t columns, int64_t inner);
Tensor Clamp(const Tensor& x, float minimum, float maximum);

}  // namespace zoetrope::cpu
