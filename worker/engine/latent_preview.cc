#include "worker/engine/latent_preview.h"

#include <cstddef>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "worker/engine/video_writer.h"

namespace zoetrope {

const LatentRgbFactors& Wan21LatentRgbFactors() {
  // Numeric factors as published in ComfyUI's comfy/latent_formats.py, class Wan21 (latent_rgb_factors
  // and latent_rgb_factors_bias), https://github.com/comfyanonymous/ComfyUI/blob/master/comfy/latent_formats.py
  // ComfyUI applies them to the normalised latent (after process_in), which is the space our sampler's
  // x̂0 lives in, and maps the result from [−1, 1] to pixels, as VideoPixelFromFloat does.
  static const LatentRgbFactors kFactors = {
      {{{-0.1299f, -0.1692f, 0.2932f},
        {0.0671f, 0.0406f, 0.0442f},
        {0.3568f, 0.2548f, 0.1747f},
        {0.0372f, 0.2344f, 0.1420f},
        {0.0313f, 0.0189f, -0.0328f},
        {0.0296f, -0.0956f, -0.0665f},
        {-0.3477f, -0.4059f, -0.2925f},
        {0.0166f, 0.1902f, 0.1975f},
        {-0.0412f, 0.0267f, -0.1364f},
        {-0.1293f, 0.0740f, 0.1636f},
        {0.0680f, 0.3019f, 0.1128f},
        {0.0032f, 0.0581f, 0.0639f},
        {-0.1251f, 0.0927f, 0.1699f},
        {0.0060f, -0.0633f, 0.0005f},
        {0.3477f, 0.2275f, 0.2950f},
        {0.1984f, 0.0913f, 0.1861f}}},
      {-0.1835f, -0.0868f, -0.3360f}};
  return kFactors;
}

absl::StatusOr<std::vector<PreviewFrame>> ProjectLatentFrames(const float* latent, int channels, int frames,
                                                              int height, int width,
                                                              const std::vector<int>& frame_indices,
                                                              const LatentRgbFactors& factors) {
  if (channels != kPreviewLatentChannels) {
    return absl::InvalidArgumentError(
        absl::StrCat("latent preview: the latent has ", channels, " channels, the projection needs ",
                     kPreviewLatentChannels));
  }
  if (frames < 1 || height < 1 || width < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("latent preview: empty latent [", channels, ", ", frames, ", ", height, ", ", width, "]"));
  }
  const size_t plane = static_cast<size_t>(height) * width;
  const size_t channel_stride = plane * frames;
  std::vector<PreviewFrame> out;
  out.reserve(frame_indices.size());
  for (int f : frame_indices) {
    if (f < 0 || f >= frames) {
      return absl::InvalidArgumentError(
          absl::StrCat("latent preview: frame index ", f, " outside [0, ", frames, ")"));
    }
    PreviewFrame frame;
    frame.height = height;
    frame.width = width;
    frame.rgb.resize(plane * 3);
    const float* base = latent + static_cast<size_t>(f) * plane;
    for (size_t p = 0; p < plane; ++p) {
      float rgb[3] = {factors.bias[0], factors.bias[1], factors.bias[2]};
      for (int c = 0; c < kPreviewLatentChannels; ++c) {
        const float v = base[c * channel_stride + p];
        rgb[0] += factors.factors[c][0] * v;
        rgb[1] += factors.factors[c][1] * v;
        rgb[2] += factors.factors[c][2] * v;
      }
      for (int k = 0; k < 3; ++k) frame.rgb[p * 3 + k] = VideoPixelFromFloat(rgb[k]);
    }
    out.push_back(std::move(frame));
  }
  return out;
}

std::vector<int> PreviewFrameIndices(int frames, int count) {
  std::vector<int> indices;
  if (frames < 1 || count < 1) return indices;
  if (count >= frames) {
    for (int f = 0; f < frames; ++f) indices.push_back(f);
    return indices;
  }
  if (count == 1) return {frames / 2};
  for (int i = 0; i < count; ++i) {
    const int f = static_cast<int>((static_cast<long long>(i) * (frames - 1)) / (count - 1));
    if (indices.empty() || indices.back() != f) indices.push_back(f);
  }
  return indices;
}

}  // namespace zoetrope
