// Video output: the MP4 is checked from outside (ffprobe reads the container, FFmpeg's decoder reads the
// pixels back), PNG frames must decode to exactly the reference's uint8 conversion, raw must round-trip
// bit for bit, and bad inputs and paths must fail with messages that say what and where.
#include "worker/engine/video_writer.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <numbers>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "worker/engine/safetensors.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/dict.h>
#include <libavutil/frame.h>
#include <libswscale/swscale.h>
}

namespace zoetrope {
namespace {

namespace fs = std::filesystem;

#define EXPECT_MESSAGE_CONTAINS(status, text)                                                      \
  do {                                                                                             \
    const std::string zoetrope_message(std::string((status).message()));                           \
    EXPECT_NE(zoetrope_message.find(text), std::string::npos)                                      \
        << "message \"" << zoetrope_message << "\" lacks \"" << (text) << "\"";                    \
  } while (0)

constexpr int kFrames = 17;
constexpr int kHeight = 96;
constexpr int kWidth = 128;

// A smooth pattern that moves from frame to frame, plus Gaussian noise (σ ≈ 1.3 levels of 255), with
// some values past ±1 so the clamp is exercised.
Tensor MovingGradient(int frames, int height, int width, uint32_t seed) {
  Tensor video = Tensor::Host({frames, 3, height, width}, DType::kF32);
  std::mt19937 generator(seed);
  std::normal_distribution<float> noise(0.0f, 0.01f);
  float* values = video.data<float>();
  const double two_pi = 2.0 * std::numbers::pi;
  for (int t = 0; t < frames; ++t) {
    for (int y = 0; y < height; ++y) {
      for (int x = 0; x < width; ++x) {
        const double u = static_cast<double>(x) / width;
        const double v = static_cast<double>(y) / height;
        const double phase = static_cast<double>(t) / frames;
        const double red = 0.8 * std::sin(two_pi * (u + phase));
        const double green = 0.8 * std::cos(two_pi * v + 3.0 * phase);
        const double blue = 1.15 * (u - v) + 0.1 * std::sin(two_pi * phase);
        const int64_t pixel = static_cast<int64_t>(y) * width + x;
        const int64_t base = static_cast<int64_t>(t) * 3 * height * width;
        values[base + pixel] = static_cast<float>(red) + noise(generator);
        values[base + height * width + pixel] = static_cast<float>(green) + noise(generator);
        values[base + 2 * height * width + pixel] = static_cast<float>(blue) + noise(generator);
      }
    }
  }
  return video;
}

// The expected packed RGB24 bytes of frame `index`: the reference's expression written out again here.
std::vector<uint8_t> ExpectedRgb(const Tensor& video, int index) {
  const int64_t height = video.dim(2), width = video.dim(3), plane = height * width;
  const float* frame = video.data<float>() + index * 3 * plane;
  std::vector<uint8_t> rgb(static_cast<size_t>(3 * plane));
  for (int64_t pixel = 0; pixel < plane; ++pixel) {
    for (int channel = 0; channel < 3; ++channel) {
      const float value = std::clamp(frame[channel * plane + pixel], -1.0f, 1.0f);
      rgb[3 * pixel + channel] = static_cast<uint8_t>((value - (-1.0f)) / 2.0f * 255.0f);
    }
  }
  return rgb;
}

std::string ReadFile(const std::string& path) {
  std::ifstream stream(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(stream), std::istreambuf_iterator<char>());
}

// Runs a shell command and returns what it printed on stdout; fails the test when it exits non-zero.
std::string RunCommand(const std::string& command) {
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) {
    ADD_FAILURE() << "popen failed: " << command;
    return "";
  }
  std::string output;
  char buffer[4096];
  size_t count;
  while ((count = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) output.append(buffer, count);
  const int status = ::pclose(pipe);
  EXPECT_EQ(status, 0) << command << "\nprinted: " << output;
  return output;
}

// ffprobe's key=value lines ("TAG:comment=..." for container tags) as a map.
std::map<std::string, std::string> Probe(const std::string& path) {
  const std::string command =
      "ffprobe -v error -select_streams v:0 -count_frames -show_entries "
      "stream=codec_name,profile,width,height,pix_fmt,r_frame_rate,avg_frame_rate,nb_read_frames,color_space,"
      "color_range:format=format_name:format_tags=comment -of default=noprint_wrappers=1 '" +
      path + "' 2>&1";
  std::map<std::string, std::string> fields;
  std::istringstream lines(RunCommand(command));
  std::string line;
  while (std::getline(lines, line)) {
    const size_t equals = line.find('=');
    if (equals != std::string::npos) fields[line.substr(0, equals)] = line.substr(equals + 1);
  }
  return fields;
}

struct DecodedVideo {
  int width = 0;
  int height = 0;
  AVColorSpace colorspace = AVCOL_SPC_UNSPECIFIED;
  AVColorRange color_range = AVCOL_RANGE_UNSPECIFIED;
  std::vector<std::vector<uint8_t>> rgb_frames;  // packed RGB24, tightly packed rows
};

// Decodes every frame of the file's video stream with FFmpeg and converts it to RGB24 with the
// BT.601 limited-range matrix (what the writer tags the stream with; checked by the caller).
DecodedVideo DecodeVideo(const std::string& path) {
  DecodedVideo decoded;
  AVFormatContext* demuxer = nullptr;
  if (avformat_open_input(&demuxer, path.c_str(), nullptr, nullptr) < 0) {
    ADD_FAILURE() << "avformat_open_input failed for " << path;
    return decoded;
  }
  std::unique_ptr<AVFormatContext, void (*)(AVFormatContext*)> demuxer_owner(
      demuxer, [](AVFormatContext* context) { avformat_close_input(&context); });
  EXPECT_GE(avformat_find_stream_info(demuxer, nullptr), 0);
  const AVCodec* codec = nullptr;
  const int stream_index = av_find_best_stream(demuxer, AVMEDIA_TYPE_VIDEO, -1, -1, &codec, 0);
  if (stream_index < 0 || codec == nullptr) {
    ADD_FAILURE() << "no video stream in " << path;
    return decoded;
  }
  std::unique_ptr<AVCodecContext, void (*)(AVCodecContext*)> decoder(
      avcodec_alloc_context3(codec), [](AVCodecContext* context) { avcodec_free_context(&context); });
  EXPECT_GE(avcodec_parameters_to_context(decoder.get(), demuxer->streams[stream_index]->codecpar), 0);
  EXPECT_GE(avcodec_open2(decoder.get(), codec, nullptr), 0);
  std::unique_ptr<AVFrame, void (*)(AVFrame*)> frame(av_frame_alloc(), [](AVFrame* f) { av_frame_free(&f); });
  std::unique_ptr<AVPacket, void (*)(AVPacket*)> packet(av_packet_alloc(), [](AVPacket* p) { av_packet_free(&p); });

  auto receive_all = [&]() {
    while (avcodec_receive_frame(decoder.get(), frame.get()) >= 0) {
      decoded.width = frame->width;
      decoded.height = frame->height;
      decoded.colorspace = frame->colorspace;
      decoded.color_range = frame->color_range;
      SwsContext* scaler = sws_getContext(frame->width, frame->height, static_cast<AVPixelFormat>(frame->format),
                                          frame->width, frame->height, AV_PIX_FMT_RGB24,
                                          SWS_BICUBIC | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INT, nullptr, nullptr,
                                          nullptr);
      const int* bt601 = sws_getCoefficients(SWS_CS_ITU601);
      sws_setColorspaceDetails(scaler, bt601, /*srcRange=*/0, bt601, /*dstRange=*/1, 0, 1 << 16, 1 << 16);
      std::vector<uint8_t> rgb(static_cast<size_t>(3 * frame->width * frame->height));
      uint8_t* destination[1] = {rgb.data()};
      const int destination_stride[1] = {3 * frame->width};
      sws_scale(scaler, frame->data, frame->linesize, 0, frame->height, destination, destination_stride);
      sws_freeContext(scaler);
      decoded.rgb_frames.push_back(std::move(rgb));
      av_frame_unref(frame.get());
    }
  };
  while (av_read_frame(demuxer, packet.get()) >= 0) {
    if (packet->stream_index == stream_index) {
      EXPECT_GE(avcodec_send_packet(decoder.get(), packet.get()), 0);
      receive_all();
    }
    av_packet_unref(packet.get());
  }
  avcodec_send_packet(decoder.get(), nullptr);
  receive_all();
  return decoded;
}

struct DecodedPng {
  bool ok = false;
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;  // tightly packed
};

// Decodes one PNG file with FFmpeg's decoder, checking every chunk's CRC.
DecodedPng DecodePng(const std::string& path) {
  DecodedPng decoded;
  const std::string bytes = ReadFile(path);
  const AVCodec* codec = avcodec_find_decoder(AV_CODEC_ID_PNG);
  std::unique_ptr<AVCodecContext, void (*)(AVCodecContext*)> decoder(
      avcodec_alloc_context3(codec), [](AVCodecContext* context) { avcodec_free_context(&context); });
  decoder->err_recognition = AV_EF_CRCCHECK | AV_EF_EXPLODE;
  if (avcodec_open2(decoder.get(), codec, nullptr) < 0) return decoded;
  std::unique_ptr<AVPacket, void (*)(AVPacket*)> packet(av_packet_alloc(), [](AVPacket* p) { av_packet_free(&p); });
  std::unique_ptr<AVFrame, void (*)(AVFrame*)> frame(av_frame_alloc(), [](AVFrame* f) { av_frame_free(&f); });
  if (av_new_packet(packet.get(), static_cast<int>(bytes.size())) < 0) return decoded;
  std::copy(bytes.begin(), bytes.end(), packet->data);
  if (avcodec_send_packet(decoder.get(), packet.get()) < 0) return decoded;
  if (avcodec_receive_frame(decoder.get(), frame.get()) < 0) return decoded;
  if (frame->format != AV_PIX_FMT_RGB24) {
    ADD_FAILURE() << path << " decodes to pixel format " << frame->format << ", not rgb24";
    return decoded;
  }
  decoded.width = frame->width;
  decoded.height = frame->height;
  for (int row = 0; row < frame->height; ++row) {
    const uint8_t* source = frame->data[0] + static_cast<ptrdiff_t>(row) * frame->linesize[0];
    decoded.rgb.insert(decoded.rgb.end(), source, source + 3 * frame->width);
  }
  decoded.ok = true;
  return decoded;
}

// PNG's CRC-32 (ISO 3309, as zlib), bit by bit: independent of the table FFmpeg's writer uses.
uint32_t Crc32(const std::string& bytes) {
  uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char byte : bytes) {
    crc ^= byte;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return crc ^ 0xFFFFFFFFu;
}

uint32_t BigEndian32(const std::string& bytes, size_t offset) {
  uint32_t value = 0;
  for (int i = 0; i < 4; ++i) value = (value << 8) | static_cast<unsigned char>(bytes[offset + i]);
  return value;
}

// The uncompressed iTXt chunks of a PNG file (keyword -> UTF-8 text). Fails the test on a chunk whose
// CRC is wrong or that runs past the end of the file.
std::map<std::string, std::string> PngInternationalText(const std::string& bytes) {
  std::map<std::string, std::string> texts;
  size_t offset = 8;
  while (offset + 12 <= bytes.size()) {
    const uint32_t length = BigEndian32(bytes, offset);
    if (offset + 12 + length > bytes.size()) {
      ADD_FAILURE() << "chunk at " << offset << " runs past the end";
      break;
    }
    const std::string type_and_data = bytes.substr(offset + 4, 4 + length);
    EXPECT_EQ(BigEndian32(bytes, offset + 8 + length), Crc32(type_and_data))
        << "CRC of chunk " << type_and_data.substr(0, 4);
    if (type_and_data.compare(0, 4, "iTXt") == 0) {
      const std::string data = type_and_data.substr(4);
      const size_t keyword_end = data.find('\0');
      // keyword \0, compression flag, compression method, language \0, translated keyword \0, text
      const size_t language_end = data.find('\0', keyword_end + 3);
      const size_t translated_end = data.find('\0', language_end + 1);
      if (keyword_end == std::string::npos || translated_end == std::string::npos || data[keyword_end + 1] != 0) {
        ADD_FAILURE() << "malformed or compressed iTXt chunk";
      } else {
        texts[data.substr(0, keyword_end)] = data.substr(translated_end + 1);
      }
    }
    offset += 12 + length;
  }
  EXPECT_EQ(offset, bytes.size()) << "trailing bytes after the last chunk";
  return texts;
}

// Mean absolute difference of two RGB24 images, in levels of 255.
double MeanAbsoluteError(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  EXPECT_EQ(a.size(), b.size());
  double sum = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) sum += std::abs(int(a[i]) - int(b[i]));
  return sum / static_cast<double>(std::max<size_t>(1, a.size()));
}

// Offsets of the top-level MP4 boxes, by type.
std::map<std::string, uint64_t> TopLevelBoxes(const std::string& bytes) {
  std::map<std::string, uint64_t> boxes;
  uint64_t offset = 0;
  while (offset + 8 <= bytes.size()) {
    uint64_t size = 0;
    for (int i = 0; i < 4; ++i) size = (size << 8) | static_cast<unsigned char>(bytes[offset + i]);
    const std::string type = bytes.substr(offset + 4, 4);
    if (size == 1 && offset + 16 <= bytes.size()) {
      size = 0;
      for (int i = 8; i < 16; ++i) size = (size << 8) | static_cast<unsigned char>(bytes[offset + i]);
    }
    if (size < 8) break;
    boxes.emplace(type, offset);
    offset += size;
  }
  return boxes;
}

class VideoWriterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::path(::testing::TempDir()) / "video_writer_test.XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr) << pattern;
    directory_ = pattern;
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(directory_, ignored);
  }
  std::string PathOf(const std::string& name) const { return (fs::path(directory_) / name).string(); }
  // Files whose name says they are a writer's temporary file.
  std::vector<std::string> LeftoverTemporaryFiles() const {
    std::vector<std::string> leftovers;
    for (const auto& entry : fs::recursive_directory_iterator(directory_)) {
      if (entry.path().filename().string().find(".tmp.") != std::string::npos) leftovers.push_back(entry.path());
    }
    return leftovers;
  }

  std::string directory_;
};

TEST(VideoPixelTest, MatchesTheTorchReferenceAtEdges) {
  // Expected values from torch 1.13 running Wan's cache_video expression in float32:
  // ((x.clamp(-1, 1) - (-1)) / max(1 - (-1), 1e-5) * 255).type(torch.uint8)
  struct Case {
    float value;
    int expected;
  };
  const Case cases[] = {
      {-1.5f, 0},           {-1.0f, 0},          {-0x1.fffffep-1f, 0},  {0.0f, 127},          {1.0f, 255},
      {1.5f, 255},          {0x1.010106p-8f, 128}, {-0x1.010106p-8f, 127}, {0.5f, 191},        {-0.5f, 63},
      {0x1.fffffep-1f, 255}, {0x1.fbfbfep-1f, 254}, {0x1.fbfbfcp-1f, 254}, {-0x1.fbfbfcp-1f, 0}, {-0x1.f3f3f4p-1f, 2},
      {-0x1.010102p-8f, 127}, {0x1.010102p-8f, 128},
  };
  for (const Case& test_case : cases) {
    EXPECT_EQ(VideoPixelFromFloat(test_case.value), test_case.expected) << std::hexfloat << test_case.value;
  }
  EXPECT_EQ(VideoPixelFromFloat(std::numeric_limits<float>::quiet_NaN()), 0);
}

TEST(VideoFormatTest, ParsesTheThreeNames) {
  ASSERT_TRUE(ParseVideoFormat("mp4").ok());
  EXPECT_EQ(*ParseVideoFormat("mp4"), VideoFormat::kMp4);
  EXPECT_EQ(*ParseVideoFormat("png"), VideoFormat::kPng);
  EXPECT_EQ(*ParseVideoFormat("raw"), VideoFormat::kRaw);
  for (VideoFormat format : {VideoFormat::kMp4, VideoFormat::kPng, VideoFormat::kRaw}) {
    EXPECT_EQ(*ParseVideoFormat(VideoFormatName(format)), format);
  }
  const absl::StatusOr<VideoFormat> bad = ParseVideoFormat("gif");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_MESSAGE_CONTAINS(bad.status(), "\"gif\"");
  EXPECT_MESSAGE_CONTAINS(bad.status(), "mp4, png, raw");
  EXPECT_FALSE(ParseVideoFormat("").ok());
}

TEST_F(VideoWriterTest, Mp4HasTheExpectedStreamAndDecodesCloseToTheSource) {
  const Tensor video = MovingGradient(kFrames, kHeight, kWidth, 1234);
  VideoOutputOptions options;
  options.path = PathOf("gradient.mp4");
  options.comment = "prompt: a moving gradient; seed: 1234";
  ASSERT_TRUE(WriteVideo(video, options).ok());

  std::map<std::string, std::string> probe = Probe(options.path);
  EXPECT_EQ(probe["codec_name"], "h264");
  EXPECT_EQ(probe["width"], std::to_string(kWidth));
  EXPECT_EQ(probe["height"], std::to_string(kHeight));
  EXPECT_EQ(probe["pix_fmt"], "yuv420p");
  EXPECT_EQ(probe["r_frame_rate"], "16/1");
  EXPECT_EQ(probe["avg_frame_rate"], "16/1");
  EXPECT_EQ(probe["nb_read_frames"], std::to_string(kFrames));
  EXPECT_EQ(probe["color_space"], "smpte170m");
  EXPECT_EQ(probe["color_range"], "tv");
  EXPECT_NE(probe["format_name"].find("mp4"), std::string::npos) << probe["format_name"];
  EXPECT_EQ(probe["TAG:comment"], options.comment);

  // faststart: the index comes before the media data.
  const std::map<std::string, uint64_t> boxes = TopLevelBoxes(ReadFile(options.path));
  ASSERT_TRUE(boxes.count("moov") && boxes.count("mdat")) << "top-level boxes missing";
  EXPECT_LT(boxes.at("moov"), boxes.at("mdat"));

  const DecodedVideo decoded = DecodeVideo(options.path);
  EXPECT_EQ(decoded.width, kWidth);
  EXPECT_EQ(decoded.height, kHeight);
  EXPECT_EQ(decoded.colorspace, AVCOL_SPC_SMPTE170M);
  EXPECT_EQ(decoded.color_range, AVCOL_RANGE_MPEG);
  ASSERT_EQ(decoded.rgb_frames.size(), static_cast<size_t>(kFrames));
  double worst = 0;
  for (int index = 0; index < kFrames; ++index) {
    const double error = MeanAbsoluteError(decoded.rgb_frames[index], ExpectedRgb(video, index));
    worst = std::max(worst, error);
    EXPECT_LT(error, 6.0) << "frame " << index;
  }
  // Frames must differ from each other, or a writer repeating one frame would pass the check above.
  EXPECT_GT(MeanAbsoluteError(decoded.rgb_frames[0], decoded.rgb_frames[kFrames / 2]), 20.0);
  std::printf("[ measured ] mp4 crf %d: worst per-frame mean absolute error %.3f / 255, file %ju bytes\n",
              options.crf, worst, static_cast<uintmax_t>(fs::file_size(options.path)));
  EXPECT_TRUE(LeftoverTemporaryFiles().empty());
}

// The reference saves through imageio, which pipes rgb24 frames into the ffmpeg command line with
// "-c:v libx264 -pix_fmt yuv420p -crf 10" (quality=8). Fed the same uint8 frames (our PNG output, proven
// exact above), that command must produce the same decoded pictures as the writer, frame for frame.
TEST_F(VideoWriterTest, Mp4MatchesTheReferenceEncoderCommandPictureForPicture) {
  constexpr int kReferenceFrames = 9;
  const Tensor video = MovingGradient(kReferenceFrames, kHeight, kWidth, 4321);
  VideoOutputOptions options;
  options.path = PathOf("ours.mp4");
  ASSERT_TRUE(WriteVideo(video, options).ok());
  options.format = VideoFormat::kPng;
  options.path = PathOf("reference_frames");
  ASSERT_TRUE(WriteVideo(video, options).ok());

  const std::string frames_pattern = PathOf("reference_frames/frame_%05d.png");
  const std::string rgb_path = PathOf("reference.rgb");
  const std::string reference_path = PathOf("reference.mp4");
  RunCommand("ffmpeg -nostdin -v error -y -i '" + frames_pattern + "' -f rawvideo -pix_fmt rgb24 '" + rgb_path +
             "' 2>&1");
  // imageio-ffmpeg's write_frames command, with its arguments for fps=16, quality=8.
  RunCommand("ffmpeg -nostdin -v error -y -f rawvideo -vcodec rawvideo -s " + std::to_string(kWidth) + "x" +
             std::to_string(kHeight) + " -pix_fmt rgb24 -r 16.00 -i '" + rgb_path +
             "' -an -vcodec libx264 -pix_fmt yuv420p -crf 10 '" + reference_path + "' 2>&1");
  // framemd5: one line per decoded picture, its hash last.
  auto picture_hashes = [](const std::string& path) {
    std::vector<std::string> hashes;
    std::istringstream lines(RunCommand("ffmpeg -nostdin -v error -i '" + path + "' -f framemd5 - 2>&1"));
    std::string line;
    while (std::getline(lines, line)) {
      if (!line.empty() && line[0] != '#') hashes.push_back(line.substr(line.rfind(',') + 1));
    }
    return hashes;
  };
  const std::vector<std::string> ours = picture_hashes(PathOf("ours.mp4"));
  const std::vector<std::string> reference = picture_hashes(reference_path);
  EXPECT_EQ(ours.size(), static_cast<size_t>(kReferenceFrames));
  EXPECT_EQ(ours, reference);
}

TEST_F(VideoWriterTest, Mp4KeepsRedLeftAndBlueRight) {
  constexpr int kColourFrames = 3;
  Tensor video = Tensor::Host({kColourFrames, 3, kHeight, kWidth}, DType::kF32);
  float* values = video.data<float>();
  const int64_t plane = kHeight * kWidth;
  for (int t = 0; t < kColourFrames; ++t) {
    for (int y = 0; y < kHeight; ++y) {
      for (int x = 0; x < kWidth; ++x) {
        const bool left = x < kWidth / 2;
        float* pixel = values + t * 3 * plane + y * kWidth + x;
        pixel[0] = left ? 1.0f : -1.0f;          // red
        pixel[plane] = -1.0f;                    // green
        pixel[2 * plane] = left ? -1.0f : 1.0f;  // blue
      }
    }
  }
  VideoOutputOptions options;
  options.path = PathOf("red_blue.mp4");
  ASSERT_TRUE(WriteVideo(video, options).ok());
  const DecodedVideo decoded = DecodeVideo(options.path);
  ASSERT_EQ(decoded.rgb_frames.size(), static_cast<size_t>(kColourFrames));
  for (int t = 0; t < kColourFrames; ++t) {
    // Means over each half, keeping 8 pixels away from the edge where chroma subsampling blends.
    double left[3] = {}, right[3] = {};
    int count = 0;
    for (int y = 8; y < kHeight - 8; ++y) {
      for (int x = 8; x < kWidth / 2 - 8; ++x) {
        const uint8_t* left_pixel = &decoded.rgb_frames[t][3 * (y * kWidth + x)];
        const uint8_t* right_pixel = &decoded.rgb_frames[t][3 * (y * kWidth + x + kWidth / 2)];
        for (int c = 0; c < 3; ++c) {
          left[c] += left_pixel[c];
          right[c] += right_pixel[c];
        }
        ++count;
      }
    }
    for (int c = 0; c < 3; ++c) {
      left[c] /= count;
      right[c] /= count;
    }
    EXPECT_GT(left[0], 240) << "frame " << t << ": left half should be red";
    EXPECT_LT(left[1], 15) << "frame " << t;
    EXPECT_LT(left[2], 15) << "frame " << t;
    EXPECT_LT(right[0], 15) << "frame " << t << ": right half should be blue";
    EXPECT_LT(right[1], 15) << "frame " << t;
    EXPECT_GT(right[2], 240) << "frame " << t;
  }
}

TEST_F(VideoWriterTest, Mp4FrameRateIsConfigurable) {
  const Tensor video = MovingGradient(4, 48, 64, 7);
  VideoOutputOptions options;
  options.path = PathOf("fast.mp4");
  options.frames_per_second = 24;
  options.x264_preset = "ultrafast";
  ASSERT_TRUE(WriteVideo(video, options).ok());
  std::map<std::string, std::string> probe = Probe(options.path);
  EXPECT_EQ(probe["r_frame_rate"], "24/1");
  EXPECT_EQ(probe["nb_read_frames"], "4");
  EXPECT_EQ(probe.count("TAG:comment"), 0u) << "no comment was asked for";
}

TEST_F(VideoWriterTest, Mp4ReplacesAnExistingFile) {
  const std::string path = PathOf("again.mp4");
  { std::ofstream(path) << "old contents"; }
  VideoOutputOptions options;
  options.path = path;
  ASSERT_TRUE(WriteVideo(MovingGradient(2, 32, 32, 3), options).ok());
  EXPECT_EQ(Probe(path)["nb_read_frames"], "2");
}

TEST_F(VideoWriterTest, PngFramesDecodeExactlyToTheUint8Conversion) {
  const Tensor video = MovingGradient(kFrames, kHeight, kWidth, 99);
  VideoOutputOptions options;
  options.format = VideoFormat::kPng;
  options.path = PathOf("frames/nested");  // created with its parent
  options.comment = "prompt: ünïcode ✓; seed: 99";
  ASSERT_TRUE(WriteVideo(video, options).ok());
  for (int index = 0; index < kFrames; ++index) {
    char name[32];
    std::snprintf(name, sizeof(name), "frame_%05d.png", index);
    const std::string path = (fs::path(options.path) / name).string();
    const DecodedPng png = DecodePng(path);
    ASSERT_TRUE(png.ok) << name << " did not decode (with CRC checks on)";
    EXPECT_EQ(png.width, kWidth);
    EXPECT_EQ(png.height, kHeight);
    const std::vector<uint8_t> expected = ExpectedRgb(video, index);
    ASSERT_EQ(png.rgb.size(), expected.size());
    size_t mismatches = 0;
    for (size_t i = 0; i < expected.size(); ++i) mismatches += png.rgb[i] != expected[i];
    EXPECT_EQ(mismatches, 0u) << name;
    // FFmpeg's decoder skips iTXt, so the chunk is read here.
    EXPECT_EQ(PngInternationalText(ReadFile(path))["Comment"], options.comment) << name;
  }
  EXPECT_FALSE(fs::exists(fs::path(options.path) / "frame_00017.png"));
  size_t files = std::distance(fs::directory_iterator(options.path), fs::directory_iterator());
  EXPECT_EQ(files, static_cast<size_t>(kFrames));
}

TEST_F(VideoWriterTest, RawRoundTripsBitForBit) {
  const Tensor video = MovingGradient(5, 16, 24, 5);
  VideoOutputOptions options;
  options.format = VideoFormat::kRaw;
  options.path = PathOf("video.safetensors");
  options.comment = "seed: 5";
  ASSERT_TRUE(WriteVideo(video, options).ok());
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(options.path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->Keys(), std::vector<std::string>{"video"});
  absl::StatusOr<Tensor> loaded = (*file)->Get("video");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->dtype(), DType::kF32);
  EXPECT_EQ(loaded->shape(), video.shape());
  EXPECT_EQ(std::memcmp(loaded->raw_data(), video.raw_data(), video.nbytes()), 0);
  EXPECT_EQ((*file)->metadata().at("comment"), "seed: 5");
}

// Frames [begin, begin + count) of a video as their own tensor (what one VAE chunk hands over).
Tensor FrameRange(const Tensor& video, int64_t begin, int64_t count) {
  Tensor part = Tensor::Host({count, 3, video.dim(2), video.dim(3)}, DType::kF32);
  const int64_t frame = 3 * video.dim(2) * video.dim(3);
  std::copy_n(video.data<float>() + begin * frame, count * frame, part.data<float>());
  return part;
}

// Encode-while-decoding: the VAE hands over 1 frame, then 4 per latent frame. Streamed in those batches,
// every format's output must equal WriteVideo's for the whole tensor, byte for byte.
TEST_F(VideoWriterTest, StreamedBatchesGiveTheSameBytesAsOneWrite) {
  const Tensor video = MovingGradient(kFrames, kHeight, kWidth, 777);
  ASSERT_GE(kFrames, 6);
  for (VideoFormat format : {VideoFormat::kMp4, VideoFormat::kPng, VideoFormat::kRaw}) {
    const std::string name = VideoFormatName(format);
    VideoOutputOptions whole;
    whole.format = format;
    whole.comment = "prompt: streamed; seed: 777";
    whole.path = PathOf("whole_" + name);
    ASSERT_TRUE(WriteVideo(video, whole).ok()) << name;
    VideoOutputOptions streamed = whole;
    streamed.path = PathOf("streamed_" + name);
    absl::StatusOr<std::unique_ptr<VideoStreamWriter>> writer = VideoStreamWriter::Open(streamed, kHeight, kWidth);
    ASSERT_TRUE(writer.ok()) << writer.status();
    int64_t begin = 0;
    for (int64_t count = 1; begin < kFrames; begin += count, count = 4) {
      ASSERT_TRUE((*writer)->Append(FrameRange(video, begin, std::min<int64_t>(count, kFrames - begin))).ok()) << name;
    }
    ASSERT_TRUE((*writer)->Finish().ok()) << name;
    if (format == VideoFormat::kPng) {
      for (int index = 0; index < kFrames; ++index) {
        char frame[32];
        std::snprintf(frame, sizeof(frame), "frame_%05d.png", index);
        EXPECT_EQ(ReadFile((fs::path(whole.path) / frame).string()), ReadFile((fs::path(streamed.path) / frame).string()))
            << frame;
      }
    } else {
      const std::string bytes = ReadFile(whole.path);
      EXPECT_GT(bytes.size(), 1000u) << name;
      EXPECT_TRUE(bytes == ReadFile(streamed.path)) << name << ": streamed output differs from WriteVideo's";
    }
  }
  EXPECT_TRUE(LeftoverTemporaryFiles().empty());
}

TEST_F(VideoWriterTest, StreamedNonFiniteValueNamesTheWholeVideoFrameAndLeavesNothing) {
  Tensor video = MovingGradient(6, kHeight, kWidth, 5);
  video.data<float>()[4 * 3 * kHeight * kWidth + 7] = std::numeric_limits<float>::quiet_NaN();  // frame 4
  VideoOutputOptions options;
  options.path = PathOf("nan.mp4");
  {
    absl::StatusOr<std::unique_ptr<VideoStreamWriter>> writer = VideoStreamWriter::Open(options, kHeight, kWidth);
    ASSERT_TRUE(writer.ok()) << writer.status();
    ASSERT_TRUE((*writer)->Append(FrameRange(video, 0, 1)).ok());
    const absl::Status status = (*writer)->Append(FrameRange(video, 1, 5));
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(status.message().find("frame 4 "), std::string::npos) << status;
  }  // destroyed without Finish
  EXPECT_FALSE(fs::exists(options.path));
  EXPECT_TRUE(LeftoverTemporaryFiles().empty());
  // Settings are checked at Open.
  options.path = PathOf("odd.mp4");
  EXPECT_EQ(VideoStreamWriter::Open(options, kHeight + 1, kWidth).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(VideoWriterTest, RejectsBadShapesAndTypes) {
  VideoOutputOptions options;
  options.path = PathOf("bad.mp4");
  struct Case {
    Tensor tensor;
    std::string expected_text;
  };
  const Case cases[] = {
      {Tensor::Host({3, 16, 16}, DType::kF32), "[3, 16, 16]"},
      {Tensor::Host({2, 4, 16, 16}, DType::kF32), "[2, 4, 16, 16]"},
      {Tensor::Host({0, 3, 16, 16}, DType::kF32), "frames >= 1"},
      {Tensor::Host({2, 3, 16, 16}, DType::kBF16), "must be F32"},
      {Tensor(), "undefined"},
  };
  for (const Case& test_case : cases) {
    const absl::Status status = WriteVideo(test_case.tensor, options);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_MESSAGE_CONTAINS(status, test_case.expected_text);
    EXPECT_MESSAGE_CONTAINS(status, options.path);
  }
  const absl::Status odd = WriteVideo(MovingGradient(2, 15, 16, 1), options);
  EXPECT_EQ(odd.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_MESSAGE_CONTAINS(odd, "even height and width");
  // PNG has no such limit.
  options.format = VideoFormat::kPng;
  options.path = PathOf("odd_frames");
  EXPECT_TRUE(WriteVideo(MovingGradient(2, 15, 17, 1), options).ok());
  EXPECT_FALSE(fs::exists(PathOf("bad.mp4")));
}

TEST_F(VideoWriterTest, RejectsBadEncoderSettings) {
  const Tensor video = MovingGradient(2, 32, 32, 2);
  VideoOutputOptions options;
  options.path = PathOf("settings.mp4");
  options.crf = 52;
  absl::Status status = WriteVideo(video, options);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_MESSAGE_CONTAINS(status, "crf must be within [0, 51], got 52");
  options.crf = 10;
  options.frames_per_second = 0;
  status = WriteVideo(video, options);
  EXPECT_MESSAGE_CONTAINS(status, "frames_per_second");
  options.frames_per_second = 16;
  // Only libx264 knows its presets: this one fails inside FFmpeg, and the message must say where.
  options.x264_preset = "warp-speed";
  status = WriteVideo(video, options);
  EXPECT_FALSE(status.ok());
  EXPECT_MESSAGE_CONTAINS(status, options.path);
  EXPECT_MESSAGE_CONTAINS(status, "avcodec_open2(libx264");
  EXPECT_MESSAGE_CONTAINS(status, "preset=warp-speed");
  EXPECT_FALSE(fs::exists(options.path));
  EXPECT_TRUE(LeftoverTemporaryFiles().empty());
}

TEST_F(VideoWriterTest, RejectsNonFiniteValuesNamingTheFrame) {
  Tensor video = MovingGradient(8, 16, 16, 4);
  // Frame 5, channel 2 (blue), row 3, column 7.
  const int64_t nan_index = ((5 * 3 + 2) * 16 + 3) * 16 + 7;
  video.data<float>()[nan_index] = std::numeric_limits<float>::quiet_NaN();
  for (VideoFormat format : {VideoFormat::kMp4, VideoFormat::kPng, VideoFormat::kRaw}) {
    VideoOutputOptions options;
    options.format = format;
    options.path = PathOf(std::string("nan_") + VideoFormatName(format));
    const absl::Status status = WriteVideo(video, options);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << VideoFormatName(format) << ": " << status;
    EXPECT_MESSAGE_CONTAINS(status, "frame 5 has a non-finite value (nan) in channel 2 (blue) at row 3, column 7");
    EXPECT_FALSE(fs::exists(options.path)) << "nothing may be written for " << VideoFormatName(format);
  }
  video.data<float>()[nan_index] = 0.0f;
  video.data<float>()[7] = -std::numeric_limits<float>::infinity();
  VideoOutputOptions options;
  options.path = PathOf("infinite.mp4");
  const absl::Status status = WriteVideo(video, options);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_MESSAGE_CONTAINS(status, "frame 0 has a non-finite value (-inf) in channel 0 (red) at row 0, column 7");
}

TEST_F(VideoWriterTest, UnwritablePathsGiveClearErrors) {
  // A regular file where a directory should be: fails the same way for root as for anyone.
  const std::string blocker = PathOf("not_a_directory");
  { std::ofstream(blocker) << "x"; }
  const Tensor video = MovingGradient(2, 16, 16, 8);

  VideoOutputOptions options;
  options.path = blocker + "/video.mp4";
  absl::Status status = WriteVideo(video, options);
  EXPECT_FALSE(status.ok());
  EXPECT_MESSAGE_CONTAINS(status, blocker + "/video.mp4");
  EXPECT_MESSAGE_CONTAINS(status, "avio_open failed: Not a directory");

  options.format = VideoFormat::kPng;
  options.path = blocker + "/frames";
  status = WriteVideo(video, options);
  EXPECT_FALSE(status.ok());
  EXPECT_MESSAGE_CONTAINS(status, options.path);
  EXPECT_MESSAGE_CONTAINS(status, "cannot create the frame directory");

  options.format = VideoFormat::kRaw;
  options.path = blocker + "/video.safetensors";
  status = WriteVideo(video, options);
  EXPECT_FALSE(status.ok());
  EXPECT_MESSAGE_CONTAINS(status, blocker + "/video.safetensors");

  options.path = "";
  status = WriteVideo(video, options);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_MESSAGE_CONTAINS(status, "output path is empty");
  EXPECT_TRUE(LeftoverTemporaryFiles().empty());
}

}  // namespace
}  // namespace zoetrope
