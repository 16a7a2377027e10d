// Live previews (issue 15): the sampler's prediction of the clean latent, x̂0, turned into a small RGB
// image without running the VAE, by a linear 16→3 projection per latent pixel (RGB ≈ A·latent + b).
//
// Status: the projection only. Encoding (animated WebP / JPEG contact sheet), the worker hook, the proto
// event, the CLI and the factor-fitting tool are planned, not written yet (see the issue).
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace zoetrope {

inline constexpr int kPreviewLatentChannels = 16;

struct LatentRgbFactors {
  // factors[c] = {R, G, B} weight of latent channel c.
  std::array<std::array<float, 3>, kPreviewLatentChannels> factors;
  std::array<float, 3> bias;
};

// The factors published for the Wan2.1 latent space (normalised latent, the space the DiT denoises in).
const LatentRgbFactors& Wan21LatentRgbFactors();

// One preview frame: RGB, 8 bits, interleaved, height × width × 3 (the latent's spatial size).
struct PreviewFrame {
  int height = 0;
  int width = 0;
  std::vector<uint8_t> rgb;
};

// `latent`: host F32, channel-major [16, frames, height, width]. Projects the latent frames listed in
// `frame_indices` (each in [0, frames)) and converts each value as the video output does
// (VideoPixelFromFloat: [−1, 1] → [0, 255], clamped). Errors name a bad shape or index.
absl::StatusOr<std::vector<PreviewFrame>> ProjectLatentFrames(const float* latent, int channels, int frames,
                                                              int height, int width,
                                                              const std::vector<int>& frame_indices,
                                                              const LatentRgbFactors& factors);

// Up to `count` frame indices spread evenly over [0, frames), first and last included when count ≥ 2.
std::vector<int> PreviewFrameIndices(int frames, int count);

}  // namespace zoetrope
