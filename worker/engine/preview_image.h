// Live previews (issue 15), the image: a few latent frames projected to RGB (latent_preview.h), tiled
// into one contact sheet and encoded as a baseline JPEG (jpeg_encoder.h) that fits a byte budget.
//
// The worker's job runner and `zoetrope generate --preview` both call RenderLatentPreview from the
// denoising loop's preview hook (DenoiseOptions::preview); what they do with the bytes (send them to the
// scheduler, write a file) is theirs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "worker/engine/latent_preview.h"

namespace zoetrope {

// The most bytes one preview may have: what the API promises per WatchJob event (video_service.proto).
inline constexpr size_t kMaxPreviewBytes = 64 * 1024;

struct PreviewOptions {
  // Latent frames shown, spread over the video (PreviewFrameIndices): first and last included.
  int frames = 4;
  // Each latent pixel becomes scale × scale pixels (bilinear) when the budget allows; a latent pixel is
  // 8 × 8 video pixels, so 2 gives a sheet of 2 × 2 frames at a quarter of the video's size per side.
  int scale = 2;
  // The first JPEG quality tried; lower ones follow until the image fits `max_bytes`.
  int quality = 85;
  size_t max_bytes = kMaxPreviewBytes;
  // The linear latent → RGB map; null: the Wan2.1 factors (Wan21LatentRgbFactors).
  const LatentRgbFactors* factors = nullptr;
};

// One encoded preview. The sheet holds `frame_count` frames, `columns` per row, each `tile_width` ×
// `tile_height` pixels, in order left to right then top to bottom (cells past frame_count are grey).
struct EncodedPreview {
  std::string media_type = "image/jpeg";
  std::string bytes;
  int width = 0;
  int height = 0;
  int frame_count = 0;
  int columns = 0;
  int rows = 0;
  int tile_width = 0;
  int tile_height = 0;
  int quality = 0;  // the JPEG quality that fitted the budget
  std::vector<int> latent_frames;  // the latent frame of each tile
};

// Tiles equally sized frames into a grid of `columns` per row; missing cells are mid-grey.
PreviewFrame ContactSheet(const std::vector<PreviewFrame>& frames, int columns);
// Bilinear resize (pixel centres aligned, edges clamped) to width × height.
PreviewFrame ResizeFrame(const PreviewFrame& frame, int width, int height);

// Encodes frames as one JPEG contact sheet of at most options.max_bytes: first at options.scale and the
// quality ladder options.quality, 70, 50; then at scale 1, ½, ¼ … (same ladder, then down to quality 5) until
// it fits. RESOURCE_EXHAUSTED when even the smallest sheet does not (a budget of a few hundred bytes).
absl::StatusOr<EncodedPreview> EncodeContactSheet(const std::vector<PreviewFrame>& frames,
                                                  const std::vector<int>& latent_frames, const PreviewOptions& options);

// The whole path from the sampler's predicted clean latent: host F32 [16, F, H, W] (channel-major) →
// projection of options.frames frames → contact sheet → JPEG.
absl::StatusOr<EncodedPreview> RenderLatentPreview(const float* latent, int channels, int frames, int height,
                                                   int width, const PreviewOptions& options);
// The same from a latent tensor on any backend (copied to the host: ~8 MB at 480p, 81 frames).
absl::StatusOr<EncodedPreview> RenderLatentPreview(Backend& backend, const Tensor& latent,
                                                   const PreviewOptions& options);

}  // namespace zoetrope
