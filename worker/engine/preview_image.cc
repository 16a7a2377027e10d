#include "worker/engine/preview_image.h"

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "worker/engine/jpeg_encoder.h"

namespace zoetrope {

PreviewFrame ContactSheet(const std::vector<PreviewFrame>& frames, int columns) {
  PreviewFrame sheet;
  if (frames.empty() || columns < 1) return sheet;
  const int tile_width = frames.front().width, tile_height = frames.front().height;
  columns = std::min<int>(columns, static_cast<int>(frames.size()));
  const int rows = (static_cast<int>(frames.size()) + columns - 1) / columns;
  sheet.width = tile_width * columns;
  sheet.height = tile_height * rows;
  sheet.rgb.assign(static_cast<size_t>(sheet.width) * sheet.height * 3, 128);
  for (size_t i = 0; i < frames.size(); ++i) {
    const int x0 = static_cast<int>(i % columns) * tile_width, y0 = static_cast<int>(i / columns) * tile_height;
    for (int y = 0; y < tile_height; ++y) {
      std::copy_n(frames[i].rgb.begin() + static_cast<size_t>(y) * tile_width * 3, tile_width * 3,
                  sheet.rgb.begin() + (static_cast<size_t>(y0 + y) * sheet.width + x0) * 3);
    }
  }
  return sheet;
}

PreviewFrame ResizeFrame(const PreviewFrame& frame, int width, int height) {
  PreviewFrame out;
  out.width = width;
  out.height = height;
  out.rgb.resize(static_cast<size_t>(width) * height * 3);
  const float sx = static_cast<float>(frame.width) / width, sy = static_cast<float>(frame.height) / height;
  for (int y = 0; y < height; ++y) {
    const float fy = std::clamp((y + 0.5f) * sy - 0.5f, 0.0f, static_cast<float>(frame.height - 1));
    const int y0 = static_cast<int>(fy), y1 = std::min(y0 + 1, frame.height - 1);
    const float wy = fy - y0;
    for (int x = 0; x < width; ++x) {
      const float fx = std::clamp((x + 0.5f) * sx - 0.5f, 0.0f, static_cast<float>(frame.width - 1));
      const int x0 = static_cast<int>(fx), x1 = std::min(x0 + 1, frame.width - 1);
      const float wx = fx - x0;
      for (int c = 0; c < 3; ++c) {
        auto at = [&](int px, int py) { return static_cast<float>(frame.rgb[(static_cast<size_t>(py) * frame.width + px) * 3 + c]); };
        const float top = at(x0, y0) * (1 - wx) + at(x1, y0) * wx;
        const float bottom = at(x0, y1) * (1 - wx) + at(x1, y1) * wx;
        out.rgb[(static_cast<size_t>(y) * width + x) * 3 + c] =
            static_cast<uint8_t>(std::lround(std::clamp(top * (1 - wy) + bottom * wy, 0.0f, 255.0f)));
      }
    }
  }
  return out;
}

absl::StatusOr<EncodedPreview> EncodeContactSheet(const std::vector<PreviewFrame>& frames,
                                                  const std::vector<int>& latent_frames, const PreviewOptions& options) {
  if (frames.empty()) return absl::InvalidArgumentError("preview: no frames");
  for (const PreviewFrame& frame : frames) {
    if (frame.width != frames.front().width || frame.height != frames.front().height ||
        frame.rgb.size() != static_cast<size_t>(frame.width) * frame.height * 3 || frame.width < 1) {
      return absl::InvalidArgumentError("preview: the frames of a contact sheet must be non-empty and of one size");
    }
  }
  if (options.quality < 1 || options.quality > 100 || options.scale < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("preview: quality ", options.quality, " outside [1, 100] or scale ", options.scale, " < 1"));
  }
  const int columns = static_cast<int>(std::ceil(std::sqrt(static_cast<double>(frames.size()))));
  const PreviewFrame sheet = ContactSheet(frames, columns);
  EncodedPreview preview;
  preview.frame_count = static_cast<int>(frames.size());
  preview.columns = std::min<int>(columns, preview.frame_count);
  preview.rows = (preview.frame_count + preview.columns - 1) / preview.columns;
  preview.latent_frames = latent_frames;

  // Sizes tried, largest first: the requested scale, then the latent's own size, then halvings. Quality
  // goes down a short ladder at each size (a smaller sharp image reads better than a larger blocky one),
  // and only at the smallest size further down to 5.
  std::vector<double> scales;
  for (int s = options.scale; s > 1; s /= 2) scales.push_back(s);
  for (double s = 1.0; sheet.width * s >= 8 && sheet.height * s >= 8; s /= 2) scales.push_back(s);
  if (scales.empty()) scales.push_back(1.0);
  std::vector<int> ladder = {options.quality};
  for (int q : {70, 50}) {
    if (q < options.quality) ladder.push_back(q);
  }
  for (size_t s = 0; s < scales.size(); ++s) {
    const bool last = s + 1 == scales.size();
    std::vector<int> qualities = ladder;
    if (last) {
      for (int q : {35, 20, 10, 5}) {
        if (q < qualities.back()) qualities.push_back(q);
      }
    }
    const int width = std::max(1, static_cast<int>(std::lround(sheet.width * scales[s])));
    const int height = std::max(1, static_cast<int>(std::lround(sheet.height * scales[s])));
    const PreviewFrame image = (width == sheet.width && height == sheet.height) ? sheet : ResizeFrame(sheet, width, height);
    for (int quality : qualities) {
      absl::StatusOr<std::string> jpeg = EncodeJpeg(image.rgb.data(), image.width, image.height, quality);
      if (!jpeg.ok()) return jpeg.status();
      if (jpeg->size() > options.max_bytes) continue;
      preview.bytes = *std::move(jpeg);
      preview.width = image.width;
      preview.height = image.height;
      preview.tile_width = image.width / preview.columns;
      preview.tile_height = image.height / preview.rows;
      preview.quality = quality;
      return preview;
    }
  }
  return absl::ResourceExhaustedError(
      absl::StrCat("preview: no JPEG of the ", sheet.width, "×", sheet.height, " sheet fits ", options.max_bytes, " bytes"));
}

absl::StatusOr<EncodedPreview> RenderLatentPreview(const float* latent, int channels, int frames, int height,
                                                   int width, const PreviewOptions& options) {
  const std::vector<int> indices = PreviewFrameIndices(frames, options.frames);
  if (indices.empty()) return absl::InvalidArgumentError(absl::StrCat("preview: ", frames, " latent frames"));
  absl::StatusOr<std::vector<PreviewFrame>> projected =
      ProjectLatentFrames(latent, channels, frames, height, width, indices,
                          options.factors != nullptr ? *options.factors : Wan21LatentRgbFactors());
  if (!projected.ok()) return projected.status();
  return EncodeContactSheet(*projected, indices, options);
}

absl::StatusOr<EncodedPreview> RenderLatentPreview(Backend& backend, const Tensor& latent, const PreviewOptions& options) {
  if (latent.rank() != 4 || latent.dtype() != DType::kF32) {
    return absl::InvalidArgumentError(
        absl::StrCat("preview: the latent must be F32 [C, F, H, W] (got ", latent.DebugString(), ")"));
  }
  const Tensor host = latent.device().is_cpu() ? latent : backend.ToHost(latent);
  return RenderLatentPreview(host.data<float>(), static_cast<int>(latent.dim(0)), static_cast<int>(latent.dim(1)),
                             static_cast<int>(latent.dim(2)), static_cast<int>(latent.dim(3)), options);
}

}  // namespace zoetrope
