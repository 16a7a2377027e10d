#include "worker/engine/video_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "worker/engine/safetensors.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/crc.h>
#include <libavutil/dict.h>
#include <libavutil/error.h>
#include <libavutil/frame.h>
#include <libavutil/log.h>
#include <libswscale/swscale.h>
}

namespace zoetrope {
namespace {

struct FormatContextDeleter {
  void operator()(AVFormatContext* context) const {
    if (context->pb != nullptr && !(context->oformat->flags & AVFMT_NOFILE)) avio_closep(&context->pb);
    avformat_free_context(context);
  }
};
struct CodecContextDeleter {
  void operator()(AVCodecContext* context) const { avcodec_free_context(&context); }
};
struct FrameDeleter {
  void operator()(AVFrame* frame) const { av_frame_free(&frame); }
};
struct PacketDeleter {
  void operator()(AVPacket* packet) const { av_packet_free(&packet); }
};
struct ScaleContextDeleter {
  void operator()(SwsContext* context) const { sws_freeContext(context); }
};
struct DictionaryDeleter {
  void operator()(AVDictionary* dictionary) const { av_dict_free(&dictionary); }
};
using FormatContextPointer = std::unique_ptr<AVFormatContext, FormatContextDeleter>;
using CodecContextPointer = std::unique_ptr<AVCodecContext, CodecContextDeleter>;
using FramePointer = std::unique_ptr<AVFrame, FrameDeleter>;
using PacketPointer = std::unique_ptr<AVPacket, PacketDeleter>;
using ScaleContextPointer = std::unique_ptr<SwsContext, ScaleContextDeleter>;

// FFmpeg's own message for an error code, with the call that returned it and the file concerned.
// POSIX errors (AVERROR(errno)) keep their meaning as a status code (NotFound, PermissionDenied, ...).
absl::Status FfmpegError(const std::string& path, absl::string_view call, int code) {
  char text[AV_ERROR_MAX_STRING_SIZE] = {};
  av_strerror(code, text, sizeof(text));
  const std::string message = absl::StrCat(path, ": ", call, " failed: ", text);
  if (code < 0 && -code < 4096) return absl::Status(absl::ErrnoToStatusCode(-code), message);
  return absl::InternalError(message);
}

absl::Status FfmpegFailure(const std::string& path, absl::string_view call, absl::string_view why) {
  return absl::InternalError(absl::StrCat(path, ": ", call, " failed: ", why));
}

// Call right after the failing call: anything that allocates may overwrite errno.
absl::Status IoError(const std::string& path, absl::string_view action) {
  const int error_number = errno;
  return absl::ErrnoToStatus(error_number, absl::StrCat(path, ": ", action));
}

// Beside the destination, so the final rename stays within one file system. The counter keeps two
// threads of one process that write the same path apart.
std::string TemporaryPathFor(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  return absl::StrCat(path, ".tmp.", ::getpid(), ".", counter.fetch_add(1));
}

// fsync before rename: otherwise a power loss can leave the new name pointing at an empty file.
absl::Status SyncAndRename(const std::string& temporary_path, const std::string& path) {
  const int descriptor = ::open(temporary_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (descriptor < 0) return IoError(temporary_path, "cannot reopen to fsync");
  if (::fsync(descriptor) != 0) {
    const absl::Status status = IoError(temporary_path, "fsync failed");
    ::close(descriptor);
    return status;
  }
  ::close(descriptor);
  if (::rename(temporary_path.c_str(), path.c_str()) != 0) {
    return IoError(path, absl::StrCat("cannot rename ", temporary_path, " to it"));
  }
  return absl::OkStatus();
}

// Removes the temporary file on every early return.
class TemporaryFileGuard {
 public:
  explicit TemporaryFileGuard(std::string path) : path_(std::move(path)) {}
  ~TemporaryFileGuard() {
    if (!released_) ::unlink(path_.c_str());
  }
  void Release() { released_ = true; }

 private:
  std::string path_;
  bool released_ = false;
};

absl::Status WriteWholeFile(const std::string& path, const std::string& bytes) {
  const int descriptor = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (descriptor < 0) return IoError(path, "cannot create");
  size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t count = ::write(descriptor, bytes.data() + written, bytes.size() - written);
    if (count < 0) {
      if (errno == EINTR) continue;
      const absl::Status status = IoError(path, "write failed");
      ::close(descriptor);
      return status;
    }
    written += static_cast<size_t>(count);
  }
  if (::close(descriptor) != 0) return IoError(path, "close failed");
  return absl::OkStatus();
}

// x264 reports statistics at info level for every file; a service only wants FFmpeg's errors in its
// log. The level is process-wide FFmpeg state, set once.
void QuietFfmpegLogging() {
  static std::once_flag once;
  std::call_once(once, [] { av_log_set_level(AV_LOG_ERROR); });
}

// The output settings and the frame size rules (mp4: even sides up to 16384, frame rate and crf ranges).
absl::Status ValidateSettings(const VideoOutputOptions& options, int64_t height, int64_t width) {
  const std::string prefix = absl::StrCat(options.path, ": ");
  if (options.path.empty()) return absl::InvalidArgumentError("video output: the output path is empty");
  if (options.format == VideoFormat::kMp4) {
    if (height % 2 != 0 || width % 2 != 0) {
      return absl::InvalidArgumentError(absl::StrCat(prefix, "mp4 (yuv420p) needs an even height and width, got ",
                                                     height, "x", width, " (height x width)"));
    }
    if (height > 16384 || width > 16384) {
      return absl::InvalidArgumentError(
          absl::StrCat(prefix, "mp4 frames larger than 16384 pixels a side are not supported, got ", height,
                       "x", width));
    }
    if (options.frames_per_second < 1 || options.frames_per_second > 1000) {
      return absl::InvalidArgumentError(
          absl::StrCat(prefix, "frames_per_second must be within [1, 1000], got ", options.frames_per_second));
    }
    if (options.crf < 0 || options.crf > 51) {
      return absl::InvalidArgumentError(absl::StrCat(prefix, "crf must be within [0, 51], got ", options.crf));
    }
  }
  return absl::OkStatus();
}

// `first_frame`: the index of frames[0] in the whole video (error messages name whole-video frames).
absl::Status ValidateFrames(const Tensor& frames, const VideoOutputOptions& options, int64_t first_frame = 0) {
  const std::string prefix = absl::StrCat(options.path, ": ");
  if (options.path.empty()) return absl::InvalidArgumentError("video output: the output path is empty");
  if (!frames.defined()) return absl::InvalidArgumentError(absl::StrCat(prefix, "the video tensor is undefined"));
  if (!frames.device().is_cpu()) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, "the video tensor is on ", frames.device().ToString(), "; copy it to the host first"));
  }
  if (frames.dtype() != DType::kF32) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, "the video tensor must be F32, got ", frames.DebugString()));
  }
  if (frames.rank() != 4 || frames.dim(1) != 3 || frames.dim(0) < 1 || frames.dim(2) < 1 || frames.dim(3) < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        prefix, "the video tensor must be [frames >= 1, 3, height >= 1, width >= 1] (frame-major RGB), got ",
        ShapeToString(frames.shape())));
  }
  if (absl::Status valid = ValidateSettings(options, frames.dim(2), frames.dim(3)); !valid.ok()) return valid;
  // A NaN would otherwise become black pixels in an apparently fine video.
  const float* values = frames.data<float>();
  const int64_t plane = frames.dim(2) * frames.dim(3);
  const int64_t count = frames.numel();
  for (int64_t index = 0; index < count; ++index) {
    if (!std::isfinite(values[index])) {
      const int64_t frame = first_frame + index / (3 * plane);
      const int64_t channel = (index / plane) % 3;
      const int64_t row = (index % plane) / frames.dim(3);
      const int64_t column = index % frames.dim(3);
      static constexpr const char* kChannelNames[3] = {"red", "green", "blue"};
      return absl::InvalidArgumentError(absl::StrCat(prefix, "frame ", frame, " has a non-finite value (",
                                                     values[index], ") in channel ", channel, " (",
                                                     kChannelNames[channel], ") at row ", row, ", column ", column));
    }
  }
  return absl::OkStatus();
}

// Frame `index` of the planar float video as packed RGB24 rows of `row_stride` bytes.
void ConvertFrameToRgb24(const Tensor& frames, int64_t index, uint8_t* destination, int row_stride) {
  const int64_t height = frames.dim(2);
  const int64_t width = frames.dim(3);
  const int64_t plane = height * width;
  const float* frame = frames.data<float>() + index * 3 * plane;
  for (int64_t row = 0; row < height; ++row) {
    uint8_t* out = destination + row * row_stride;
    const float* red = frame + row * width;
    const float* green = red + plane;
    const float* blue = green + plane;
    for (int64_t column = 0; column < width; ++column) {
      out[3 * column + 0] = VideoPixelFromFloat(red[column]);
      out[3 * column + 1] = VideoPixelFromFloat(green[column]);
      out[3 * column + 2] = VideoPixelFromFloat(blue[column]);
    }
  }
}

// ---------------------------------------------------------------------------------------------- mp4

// Sends `frame` (nullptr: flush) and writes every packet the encoder has ready.
absl::Status EncodeAndWrite(const std::string& path, AVCodecContext* encoder, AVFrame* frame,
                            AVFormatContext* muxer, AVStream* stream, AVPacket* packet) {
  int result = avcodec_send_frame(encoder, frame);
  if (result < 0) return FfmpegError(path, "avcodec_send_frame", result);
  while (true) {
    result = avcodec_receive_packet(encoder, packet);
    if (result == AVERROR(EAGAIN) || result == AVERROR_EOF) return absl::OkStatus();
    if (result < 0) return FfmpegError(path, "avcodec_receive_packet", result);
    av_packet_rescale_ts(packet, encoder->time_base, stream->time_base);
    packet->stream_index = stream->index;
    result = av_interleaved_write_frame(muxer, packet);  // takes the packet's reference
    if (result < 0) return FfmpegError(path, "av_interleaved_write_frame", result);
  }
}

// An open MP4 (a temporary file beside the path) that takes frames in any number of batches: the same
// frames give the same bytes however they are batched (the encoder sees one frame sequence).
class Mp4Encoder {
 public:
  static absl::StatusOr<std::unique_ptr<Mp4Encoder>> Open(const VideoOutputOptions& options, int height, int width);
  absl::Status Encode(const Tensor& frames);
  absl::Status Finish();

 private:
  Mp4Encoder(const std::string& path) : path_(path), temporary_path_(TemporaryPathFor(path)), guard_(temporary_path_) {}
  std::string path_, temporary_path_;
  TemporaryFileGuard guard_;
  FormatContextPointer muxer_;
  CodecContextPointer encoder_;
  AVStream* stream_ = nullptr;
  ScaleContextPointer scaler_;
  FramePointer frame_;
  PacketPointer packet_;
  std::vector<uint8_t> rgb_;
  int height_ = 0, width_ = 0;
  int64_t next_pts_ = 0;
};

absl::StatusOr<std::unique_ptr<Mp4Encoder>> Mp4Encoder::Open(const VideoOutputOptions& options, int height,
                                                             int width) {
  const std::string& path = options.path;

  const AVCodec* codec = avcodec_find_encoder_by_name("libx264");
  if (codec == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, ": avcodec_find_encoder_by_name(\"libx264\") found nothing: this FFmpeg has no libx264 encoder"));
  }

  std::unique_ptr<Mp4Encoder> opened(new Mp4Encoder(path));
  const std::string& temporary_path = opened->temporary_path_;
  AVFormatContext* raw_muxer = nullptr;
  // The format is named because the temporary name's extension says nothing.
  int result = avformat_alloc_output_context2(&raw_muxer, nullptr, "mp4", temporary_path.c_str());
  if (result < 0 || raw_muxer == nullptr) return FfmpegError(path, "avformat_alloc_output_context2", result);
  FormatContextPointer muxer(raw_muxer);

  AVStream* stream = avformat_new_stream(muxer.get(), nullptr);
  if (stream == nullptr) return FfmpegFailure(path, "avformat_new_stream", "out of memory");
  CodecContextPointer encoder(avcodec_alloc_context3(codec));
  if (encoder == nullptr) return FfmpegFailure(path, "avcodec_alloc_context3", "out of memory");
  encoder->width = width;
  encoder->height = height;
  encoder->pix_fmt = AV_PIX_FMT_YUV420P;
  encoder->time_base = AVRational{1, options.frames_per_second};
  encoder->framerate = AVRational{options.frames_per_second, 1};
  encoder->sample_aspect_ratio = AVRational{1, 1};
  // swscale's default conversion below is BT.601 limited range; say so in the stream, so that players
  // which guess BT.709 for untagged HD video do not shift the colours.
  encoder->colorspace = AVCOL_SPC_SMPTE170M;
  encoder->color_range = AVCOL_RANGE_MPEG;
  if (muxer->oformat->flags & AVFMT_GLOBALHEADER) encoder->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
  // x264 picks its thread count from the cores, as the ffmpeg command line does (libavcodec's default
  // is one thread): the same machine then gives the reference's exact pictures, and 480p is faster.
  encoder->thread_count = 0;

  AVDictionary* raw_encoder_options = nullptr;
  av_dict_set(&raw_encoder_options, "crf", absl::StrCat(options.crf).c_str(), 0);
  av_dict_set(&raw_encoder_options, "preset", options.x264_preset.c_str(), 0);
  result = avcodec_open2(encoder.get(), codec, &raw_encoder_options);
  std::unique_ptr<AVDictionary, DictionaryDeleter> encoder_options(raw_encoder_options);
  if (result < 0) {
    return FfmpegError(path, absl::StrCat("avcodec_open2(libx264, crf=", options.crf, ", preset=",
                                          options.x264_preset, ")"),
                       result);
  }
  if (av_dict_count(encoder_options.get()) != 0) {
    return FfmpegFailure(path, "avcodec_open2(libx264)",
                         absl::StrCat("option \"", av_dict_get(encoder_options.get(), "", nullptr, AV_DICT_IGNORE_SUFFIX)->key,
                                      "\" was not accepted"));
  }
  result = avcodec_parameters_from_context(stream->codecpar, encoder.get());
  if (result < 0) return FfmpegError(path, "avcodec_parameters_from_context", result);
  stream->time_base = encoder->time_base;
  stream->avg_frame_rate = encoder->framerate;

  if (!options.comment.empty()) av_dict_set(&muxer->metadata, "comment", options.comment.c_str(), 0);

  result = avio_open(&muxer->pb, temporary_path.c_str(), AVIO_FLAG_WRITE);
  if (result < 0) return FfmpegError(temporary_path, "avio_open", result);

  // faststart: the muxer moves the index (moov) before the media data when it finishes, so a player
  // can start before it has the whole file.
  AVDictionary* raw_muxer_options = nullptr;
  av_dict_set(&raw_muxer_options, "movflags", "+faststart", 0);
  result = avformat_write_header(muxer.get(), &raw_muxer_options);
  std::unique_ptr<AVDictionary, DictionaryDeleter> muxer_options(raw_muxer_options);
  if (result < 0) return FfmpegError(path, "avformat_write_header", result);

  // Packed RGB24 into swscale, as the reference's imageio pipes rgb24 frames into ffmpeg; bicubic is
  // the ffmpeg command line's default, so the chroma subsampling matches the reference's too.
  ScaleContextPointer scaler(sws_getContext(width, height, AV_PIX_FMT_RGB24, width, height, AV_PIX_FMT_YUV420P,
                                            SWS_BICUBIC, nullptr, nullptr, nullptr));
  if (scaler == nullptr) return FfmpegFailure(path, "sws_getContext(rgb24 -> yuv420p)", "unsupported conversion");

  FramePointer frame(av_frame_alloc());
  PacketPointer packet(av_packet_alloc());
  if (frame == nullptr || packet == nullptr) return FfmpegFailure(path, "av_frame_alloc", "out of memory");
  frame->format = AV_PIX_FMT_YUV420P;
  frame->width = width;
  frame->height = height;
  frame->colorspace = encoder->colorspace;
  frame->color_range = encoder->color_range;
  result = av_frame_get_buffer(frame.get(), 0);
  if (result < 0) return FfmpegError(path, "av_frame_get_buffer", result);

  opened->rgb_.resize(static_cast<size_t>(3 * width) * height);
  opened->height_ = height;
  opened->width_ = width;
  opened->muxer_ = std::move(muxer);
  opened->encoder_ = std::move(encoder);
  opened->stream_ = stream;
  opened->scaler_ = std::move(scaler);
  opened->frame_ = std::move(frame);
  opened->packet_ = std::move(packet);
  return opened;
}

absl::Status Mp4Encoder::Encode(const Tensor& frames) {
  const int rgb_stride = 3 * width_;
  for (int64_t index = 0; index < frames.dim(0); ++index) {
    // The encoder may still reference the previous frame's buffer (lookahead).
    int result = av_frame_make_writable(frame_.get());
    if (result < 0) return FfmpegError(path_, "av_frame_make_writable", result);
    ConvertFrameToRgb24(frames, index, rgb_.data(), rgb_stride);
    const uint8_t* source_planes[1] = {rgb_.data()};
    const int source_strides[1] = {rgb_stride};
    result = sws_scale(scaler_.get(), source_planes, source_strides, 0, height_, frame_->data, frame_->linesize);
    if (result != height_) {
      return FfmpegFailure(path_, "sws_scale", absl::StrCat("converted ", result, " rows of ", height_));
    }
    frame_->pts = next_pts_++;
    absl::Status status = EncodeAndWrite(path_, encoder_.get(), frame_.get(), muxer_.get(), stream_, packet_.get());
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::Status Mp4Encoder::Finish() {
  absl::Status status = EncodeAndWrite(path_, encoder_.get(), nullptr, muxer_.get(), stream_, packet_.get());
  if (!status.ok()) return status;
  int result = av_write_trailer(muxer_.get());
  if (result < 0) return FfmpegError(path_, "av_write_trailer", result);
  result = avio_closep(&muxer_->pb);
  if (result < 0) return FfmpegError(temporary_path_, "avio_closep", result);
  status = SyncAndRename(temporary_path_, path_);
  if (!status.ok()) return status;
  guard_.Release();
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------- png

// An iTXt chunk (UTF-8 text, uncompressed) holding `text` under `keyword`.
std::string PngTextChunk(absl::string_view keyword, absl::string_view text) {
  std::string body = "iTXt";
  body.append(keyword.data(), keyword.size());
  body.push_back('\0');
  body.append(2, '\0');  // not compressed, compression method 0
  body.push_back('\0');  // no language tag
  body.push_back('\0');  // no translated keyword
  body.append(text.data(), text.size());
  // PNG's CRC-32 is zlib's: the reflected IEEE polynomial, initial and final value all ones.
  const uint32_t crc = av_crc(av_crc_get_table(AV_CRC_32_IEEE_LE), UINT32_MAX,
                              reinterpret_cast<const uint8_t*>(body.data()), body.size()) ^
                       UINT32_MAX;
  const uint32_t length = static_cast<uint32_t>(body.size() - 4);
  std::string chunk;
  for (int shift = 24; shift >= 0; shift -= 8) chunk.push_back(static_cast<char>(length >> shift));
  chunk += body;
  for (int shift = 24; shift >= 0; shift -= 8) chunk.push_back(static_cast<char>(crc >> shift));
  return chunk;
}

// Frame i of `frames` is written as frame_<first_frame + i>.png.
absl::Status WritePngFrames(const Tensor& frames, const VideoOutputOptions& options, int64_t first_frame = 0) {
  const std::string& directory = options.path;
  const int frame_count = static_cast<int>(frames.dim(0));
  const int height = static_cast<int>(frames.dim(2));
  const int width = static_cast<int>(frames.dim(3));

  std::error_code error;
  std::filesystem::create_directories(directory, error);
  if (error) {
    return absl::Status(absl::ErrnoToStatusCode(error.value()),
                        absl::StrCat(directory, ": cannot create the frame directory: ", error.message()));
  }

  const AVCodec* codec = avcodec_find_encoder(AV_CODEC_ID_PNG);
  if (codec == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(directory, ": avcodec_find_encoder(png) found nothing: this FFmpeg has no PNG encoder"));
  }
  CodecContextPointer encoder(avcodec_alloc_context3(codec));
  if (encoder == nullptr) return FfmpegFailure(directory, "avcodec_alloc_context3", "out of memory");
  encoder->width = width;
  encoder->height = height;
  encoder->pix_fmt = AV_PIX_FMT_RGB24;
  encoder->time_base = AVRational{1, 1};
  int result = avcodec_open2(encoder.get(), codec, nullptr);
  if (result < 0) return FfmpegError(directory, "avcodec_open2(png)", result);

  FramePointer frame(av_frame_alloc());
  PacketPointer packet(av_packet_alloc());
  if (frame == nullptr || packet == nullptr) return FfmpegFailure(directory, "av_frame_alloc", "out of memory");
  frame->format = AV_PIX_FMT_RGB24;
  frame->width = width;
  frame->height = height;
  result = av_frame_get_buffer(frame.get(), 0);
  if (result < 0) return FfmpegError(directory, "av_frame_get_buffer", result);

  const std::string comment_chunk = options.comment.empty() ? "" : PngTextChunk("Comment", options.comment);
  for (int index = 0; index < frame_count; ++index) {
    char name[32];
    std::snprintf(name, sizeof(name), "frame_%05lld.png", static_cast<long long>(first_frame + index));
    const std::string path = (std::filesystem::path(directory) / name).string();
    result = av_frame_make_writable(frame.get());
    if (result < 0) return FfmpegError(path, "av_frame_make_writable", result);
    ConvertFrameToRgb24(frames, index, frame->data[0], frame->linesize[0]);
    frame->pts = first_frame + index;
    result = avcodec_send_frame(encoder.get(), frame.get());
    if (result < 0) return FfmpegError(path, "avcodec_send_frame(png)", result);
    result = avcodec_receive_packet(encoder.get(), packet.get());
    if (result < 0) return FfmpegError(path, "avcodec_receive_packet(png)", result);
    std::string bytes(reinterpret_cast<const char*>(packet->data), static_cast<size_t>(packet->size));
    av_packet_unref(packet.get());
    // 8-byte signature, then IHDR (4 length + 4 type + 13 data + 4 CRC): text chunks may follow it.
    constexpr size_t kAfterHeaderChunk = 8 + 4 + 4 + 13 + 4;
    if (bytes.size() < kAfterHeaderChunk || bytes.compare(12, 4, "IHDR") != 0) {
      return FfmpegFailure(path, "avcodec_receive_packet(png)", "the encoder's output does not start with IHDR");
    }
    if (!comment_chunk.empty()) bytes.insert(kAfterHeaderChunk, comment_chunk);

    const std::string temporary_path = TemporaryPathFor(path);
    TemporaryFileGuard guard(temporary_path);
    absl::Status status = WriteWholeFile(temporary_path, bytes);
    if (status.ok()) status = SyncAndRename(temporary_path, path);
    if (!status.ok()) return status;
    guard.Release();
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------- raw

absl::Status WriteRaw(const Tensor& frames, const VideoOutputOptions& options) {
  std::map<std::string, std::string> metadata;
  if (!options.comment.empty()) metadata["comment"] = options.comment;
  return WriteSafetensors(options.path, {{"video", frames}}, metadata);
}

}  // namespace

absl::StatusOr<VideoFormat> ParseVideoFormat(absl::string_view name) {
  if (name == "mp4") return VideoFormat::kMp4;
  if (name == "png") return VideoFormat::kPng;
  if (name == "raw") return VideoFormat::kRaw;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown video format \"", name, "\": expected one of mp4, png, raw"));
}

const char* VideoFormatName(VideoFormat format) {
  switch (format) {
    case VideoFormat::kMp4:
      return "mp4";
    case VideoFormat::kPng:
      return "png";
    case VideoFormat::kRaw:
      return "raw";
  }
  return "unknown";
}

struct VideoStreamWriter::State {
  VideoOutputOptions options;
  int64_t height = 0, width = 0;
  std::unique_ptr<Mp4Encoder> mp4;
  std::vector<Tensor> raw_batches;  // raw: written at Finish
  int64_t appended = 0;             // frames handed to Append (the next batch's first frame)
  std::mutex mutex;
  std::condition_variable changed;
  std::deque<std::pair<Tensor, int64_t>> queue;  // batches and their first frame, for the encoder thread
  bool closing = false;
  absl::Status error;  // the encoder thread's first error
  std::thread encoder;

  // The encoder thread: writes batches in order until closing and the queue is empty.
  void Run() {
    std::unique_lock<std::mutex> lock(mutex);
    while (true) {
      changed.wait(lock, [&] { return closing || !queue.empty(); });
      if (queue.empty()) return;
      std::pair<Tensor, int64_t> batch = queue.front();
      lock.unlock();
      absl::Status status = error.ok() ? Write(batch.first, batch.second) : absl::OkStatus();
      lock.lock();
      queue.pop_front();
      if (!status.ok() && error.ok()) error = status;
      changed.notify_all();
    }
  }

  absl::Status Write(const Tensor& frames, int64_t first_frame) {
    switch (options.format) {
      case VideoFormat::kMp4:
        return mp4->Encode(frames);
      case VideoFormat::kPng:
        return WritePngFrames(frames, options, first_frame);
      case VideoFormat::kRaw:
        raw_batches.push_back(frames);
        return absl::OkStatus();
    }
    return absl::InternalError("unknown video format");
  }

  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      closing = true;
    }
    changed.notify_all();
    if (encoder.joinable()) encoder.join();
  }
};

VideoStreamWriter::VideoStreamWriter(std::unique_ptr<State> state) : state_(std::move(state)) {}

VideoStreamWriter::~VideoStreamWriter() {
  if (state_ == nullptr) return;
  {
    // Abandoned (Finish not reached): the encoder thread skips what is still queued; an unfinished mp4's
    // temporary file goes with its encoder.
    std::lock_guard<std::mutex> lock(state_->mutex);
    if (state_->error.ok()) state_->error = absl::CancelledError("video writer destroyed before Finish");
  }
  state_->Stop();
}

absl::StatusOr<std::unique_ptr<VideoStreamWriter>> VideoStreamWriter::Open(const VideoOutputOptions& options,
                                                                           int64_t height, int64_t width) {
  if (height < 1 || width < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(options.path, ": frame size must be positive, got ", height, "x", width, " (height x width)"));
  }
  if (absl::Status valid = ValidateSettings(options, height, width); !valid.ok()) return valid;
  QuietFfmpegLogging();
  auto state = std::make_unique<State>();
  state->options = options;
  state->height = height;
  state->width = width;
  if (options.format == VideoFormat::kMp4) {
    absl::StatusOr<std::unique_ptr<Mp4Encoder>> mp4 =
        Mp4Encoder::Open(options, static_cast<int>(height), static_cast<int>(width));
    if (!mp4.ok()) return mp4.status();
    state->mp4 = *std::move(mp4);
  }
  State* raw_state = state.get();
  state->encoder = std::thread([raw_state] { raw_state->Run(); });
  return std::unique_ptr<VideoStreamWriter>(new VideoStreamWriter(std::move(state)));
}

absl::Status VideoStreamWriter::Append(const Tensor& frames) {
  State& state = *state_;
  if (frames.defined() && frames.rank() == 4 && (frames.dim(2) != state.height || frames.dim(3) != state.width)) {
    return absl::InvalidArgumentError(absl::StrCat(state.options.path, ": frames of ", frames.dim(2), "x",
                                                   frames.dim(3), " appended to a ", state.height, "x", state.width,
                                                   " video (height x width)"));
  }
  if (absl::Status valid = ValidateFrames(frames, state.options, state.appended); !valid.ok()) return valid;
  std::unique_lock<std::mutex> lock(state.mutex);
  if (state.closing) return absl::FailedPreconditionError(absl::StrCat(state.options.path, ": Append after Finish"));
  constexpr size_t kMaxQueuedBatches = 2;
  state.changed.wait(lock, [&] { return state.queue.size() < kMaxQueuedBatches || !state.error.ok(); });
  if (!state.error.ok()) return state.error;
  state.queue.emplace_back(frames, state.appended);
  state.appended += frames.dim(0);
  state.changed.notify_all();
  return absl::OkStatus();
}

absl::Status VideoStreamWriter::Finish() {
  State& state = *state_;
  {
    std::lock_guard<std::mutex> lock(state.mutex);
    if (state.closing) return absl::FailedPreconditionError(absl::StrCat(state.options.path, ": Finish called twice"));
  }
  state.Stop();
  if (!state.error.ok()) return state.error;
  if (state.appended == 0) {
    return absl::InvalidArgumentError(absl::StrCat(state.options.path, ": the video has no frames"));
  }
  switch (state.options.format) {
    case VideoFormat::kMp4:
      return state.mp4->Finish();
    case VideoFormat::kPng:
      return absl::OkStatus();
    case VideoFormat::kRaw: {
      Tensor video = Tensor::Host({state.appended, 3, state.height, state.width}, DType::kF32);
      int64_t offset = 0;
      for (const Tensor& batch : state.raw_batches) {
        std::copy_n(batch.data<float>(), batch.numel(), video.data<float>() + offset);
        offset += batch.numel();
      }
      state.raw_batches.clear();
      return WriteRaw(video, state.options);
    }
  }
  return absl::InternalError("unknown video format");
}

absl::Status WriteVideo(const Tensor& frames, const VideoOutputOptions& options) {
  absl::Status status = ValidateFrames(frames, options);
  if (!status.ok()) return status;
  QuietFfmpegLogging();
  switch (options.format) {
    case VideoFormat::kMp4: {
      absl::StatusOr<std::unique_ptr<Mp4Encoder>> encoder =
          Mp4Encoder::Open(options, static_cast<int>(frames.dim(2)), static_cast<int>(frames.dim(3)));
      if (!encoder.ok()) return encoder.status();
      if (absl::Status encoded = (*encoder)->Encode(frames); !encoded.ok()) return encoded;
      return (*encoder)->Finish();
    }
    case VideoFormat::kPng:
      return WritePngFrames(frames, options);
    case VideoFormat::kRaw:
      return WriteRaw(frames, options);
  }
  return absl::InvalidArgumentError(absl::StrCat(options.path, ": unknown video format"));
}

}  // namespace zoetrope
