// Video output (spec/wan21.md §0 step 8, §5.6): the decoded video as an H.264 MP4, as PNG frames, or as
// the raw F32 tensor.
//
// Every format starts from the same pixel conversion as the reference (Wan's cache_video):
//   u8 = uint8(floor(255 · (clamp(x, −1, 1) + 1) / 2)),  computed in float32 in that order,
// so the PNG frames are bit-identical to the frames the reference hands its encoder. See
// docs/video-output.md for the encoder settings and why they were chosen.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/tensor.h"

namespace zoetrope {

enum class VideoFormat : uint8_t {
  kMp4,  // H.264 (libx264) in MP4, yuv420p, moov atom first ("faststart") so it streams
  kPng,  // a directory of frame_00000.png, frame_00001.png, ... (RGB, 8 bits, lossless)
  kRaw,  // a .safetensors file holding the F32 tensor as key "video", unconverted
};

// "mp4", "png" or "raw" (lower case, as a command-line flag spells it).
absl::StatusOr<VideoFormat> ParseVideoFormat(absl::string_view name);
const char* VideoFormatName(VideoFormat format);

struct VideoOutputOptions {
  VideoFormat format = VideoFormat::kMp4;
  // mp4 and raw: the file to write (replaced atomically: written beside it under a temporary name and
  // renamed). png: the directory, created with its parents when missing; each frame file is replaced
  // atomically, and frame files of an earlier, longer video in it are left alone.
  std::string path;
  // mp4 only. The reference saves at 16 frames per second.
  int frames_per_second = 16;
  // mp4 only: x264 constant rate factor, 0 (lossless) to 51. 10 is what the reference's
  // imageio quality=8 turns into (int((1 − 8/10) · 51)).
  int crf = 10;
  // mp4 only: x264 speed preset (ultrafast ... veryslow). The reference uses x264's default, medium.
  std::string x264_preset = "medium";
  // Optional free text (for example "prompt: ...; seed: 42"), UTF-8. mp4: the container's comment tag;
  // png: an iTXt "Comment" chunk in every frame; raw: the safetensors metadata key "comment".
  std::string comment;
};

// `frames`: host F32 tensor [T, 3, H, W], frame-major (the VAE decoder's channel-major [3, T, H, W]
// output is permuted by the caller), RGB, nominally in [−1, 1] (values outside are
// clamped). T ≥ 1; H and W ≥ 1, and even for mp4 (yuv420p halves the chroma planes). A NaN or an
// infinity is an error naming the frame, channel and pixel, reported before anything is written.
// Errors name the output path and, for FFmpeg failures, the failing call and FFmpeg's message.
// Nothing is left at `path` (mp4, raw) or under a frame's name (png) when writing fails.
absl::Status WriteVideo(const Tensor& frames, const VideoOutputOptions& options);

// A video written while its frames are still being produced (the VAE decodes a few frames at a time):
// Append hands each batch of frames to a background thread that encodes it (mp4) or writes its frame
// files (png), so encoding overlaps the production of the next batch; raw keeps the batches and writes
// the file at Finish. The output is byte-for-byte what WriteVideo writes for the same frames
// concatenated (tests/unit/video_writer_test.cc checks it), and the same rules apply: validation per
// batch (a non-finite value is an error naming its whole-video frame), nothing left at `path` (mp4, raw)
// when anything fails or the writer is destroyed before Finish succeeded. At most two batches wait for
// the encoder: Append blocks beyond that, so memory stays bounded. Not thread-safe: one producer.
class VideoStreamWriter {
 public:
  // Checks the options and the frame size (height, width as WriteVideo requires them) and, for mp4,
  // opens the encoder and the temporary file.
  static absl::StatusOr<std::unique_ptr<VideoStreamWriter>> Open(const VideoOutputOptions& options, int64_t height,
                                                                 int64_t width);
  ~VideoStreamWriter();
  VideoStreamWriter(const VideoStreamWriter&) = delete;
  VideoStreamWriter& operator=(const VideoStreamWriter&) = delete;

  // `frames`: host F32 [n ≥ 1, 3, height, width], the next n frames. The tensor is kept (not copied)
  // until written: the caller must not modify it. Returns a validation error of this batch, or the
  // error of an earlier batch's encoding.
  absl::Status Append(const Tensor& frames);
  // Waits for the queued batches, finishes the file (mp4: flush, index, rename into place) and returns
  // the first error. At least one frame must have been appended.
  absl::Status Finish();

 private:
  struct State;
  explicit VideoStreamWriter(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// The reference's pixel conversion of one value (exposed for tests and previews).
inline uint8_t VideoPixelFromFloat(float value) {
  // Written so that NaN maps to 0 rather than to an undefined conversion (WriteVideo rejects NaN anyway).
  const float clamped = !(value > -1.0f) ? -1.0f : (value > 1.0f ? 1.0f : value);
  return static_cast<uint8_t>((clamped + 1.0f) / 2.0f * 255.0f);
}

}  // namespace zoetrope
