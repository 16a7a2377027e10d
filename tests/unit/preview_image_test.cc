// Live preview images: our baseline JPEG decoded by an independent decoder (FFmpeg's mjpeg, converted to
// RGB by swscale), the byte budget, the contact sheet layout, and the whole path from a latent compared
// with the projection computed here in double precision.
#include "worker/engine/preview_image.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "worker/engine/jpeg_encoder.h"
#include "worker/engine/latent_preview.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavutil/frame.h>
#include <libswscale/swscale.h>
}

namespace zoetrope {
namespace {

struct Decoded {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;
};

// Decodes one JPEG with FFmpeg; width 0 when the decoder refuses it.
Decoded DecodeJpeg(const std::string& bytes) {
  Decoded out;
  const AVCodec* codec = avcodec_find_decoder(AV_CODEC_ID_MJPEG);
  if (codec == nullptr) return out;
  std::unique_ptr<AVCodecContext, void (*)(AVCodecContext*)> context(
      avcodec_alloc_context3(codec), [](AVCodecContext* c) { avcodec_free_context(&c); });
  if (avcodec_open2(context.get(), codec, nullptr) < 0) return out;
  std::unique_ptr<AVPacket, void (*)(AVPacket*)> packet(av_packet_alloc(), [](AVPacket* p) { av_packet_free(&p); });
  std::vector<uint8_t> data(bytes.size() + AV_INPUT_BUFFER_PADDING_SIZE, 0);
  std::copy(bytes.begin(), bytes.end(), data.begin());
  packet->data = data.data();
  packet->size = static_cast<int>(bytes.size());
  std::unique_ptr<AVFrame, void (*)(AVFrame*)> frame(av_frame_alloc(), [](AVFrame* f) { av_frame_free(&f); });
  if (avcodec_send_packet(context.get(), packet.get()) < 0) return out;
  avcodec_send_packet(context.get(), nullptr);
  if (avcodec_receive_frame(context.get(), frame.get()) < 0) return out;
  // Full-range BT.601 (JFIF), as the encoder wrote it.
  SwsContext* sws = sws_getContext(frame->width, frame->height, static_cast<AVPixelFormat>(frame->format), frame->width,
                                   frame->height, AV_PIX_FMT_RGB24, SWS_BILINEAR | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INT,
                                   nullptr, nullptr, nullptr);
  if (sws == nullptr) return out;
  const int* coefficients = sws_getCoefficients(SWS_CS_ITU601);
  sws_setColorspaceDetails(sws, coefficients, 1, coefficients, 1, 0, 1 << 16, 1 << 16);
  out.rgb.resize(static_cast<size_t>(frame->width) * frame->height * 3);
  uint8_t* planes[1] = {out.rgb.data()};
  const int strides[1] = {frame->width * 3};
  sws_scale(sws, frame->data, frame->linesize, 0, frame->height, planes, strides);
  sws_freeContext(sws);
  out.width = frame->width;
  out.height = frame->height;
  return out;
}

double Psnr(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  double squared = 0.0;
  for (size_t i = 0; i < a.size(); ++i) squared += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
  const double mse = squared / static_cast<double>(a.size());
  return mse == 0.0 ? 99.0 : 10.0 * std::log10(255.0 * 255.0 / mse);
}

// A smooth colourful image (gradients and a soft blob): what a preview of a denoised latent looks like.
std::vector<uint8_t> SmoothImage(int width, int height) {
  std::vector<uint8_t> rgb(static_cast<size_t>(width) * height * 3);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      const double r = std::hypot(x - width * 0.6, y - height * 0.4);
      uint8_t* p = &rgb[(static_cast<size_t>(y) * width + x) * 3];
      p[0] = static_cast<uint8_t>(255.0 * x / std::max(1, width - 1));
      p[1] = static_cast<uint8_t>(255.0 * y / std::max(1, height - 1));
      const double radius = std::max(2.0, std::min(width, height) / 3.0);
      p[2] = static_cast<uint8_t>(40.0 + 190.0 * std::exp(-(r * r) / (radius * radius)));
    }
  }
  return rgb;
}

TEST(JpegEncoderTest, DecodesToTheImageAtEverySize) {
  // Sizes that are and are not multiples of the 16×16 MCU, down to one pixel.
  for (const auto& [width, height] : std::vector<std::pair<int, int>>{{64, 48}, {104, 60}, {37, 23}, {1, 1}, {17, 200}}) {
    const std::vector<uint8_t> rgb = SmoothImage(width, height);
    absl::StatusOr<std::string> jpeg = EncodeJpeg(rgb.data(), width, height, 95);
    ASSERT_TRUE(jpeg.ok()) << jpeg.status();
    // Structure: SOI first, EOI last, a baseline SOF0.
    ASSERT_GT(jpeg->size(), 4u);
    EXPECT_EQ(static_cast<uint8_t>((*jpeg)[0]), 0xFF);
    EXPECT_EQ(static_cast<uint8_t>((*jpeg)[1]), 0xD8);
    EXPECT_EQ(static_cast<uint8_t>((*jpeg)[jpeg->size() - 2]), 0xFF);
    EXPECT_EQ(static_cast<uint8_t>((*jpeg)[jpeg->size() - 1]), 0xD9);
    EXPECT_NE(jpeg->find("\xFF\xC0", 0, 2), std::string::npos);
    const Decoded decoded = DecodeJpeg(*jpeg);
    ASSERT_EQ(decoded.width, width) << width << "x" << height;
    ASSERT_EQ(decoded.height, height);
    // Measured 41–44 dB on the larger sizes; the small ones lose more to 4:2:0 chroma on steep gradients
    // (33 dB at 37×23). A wrong table, DCT or bit order gives < 15 dB.
    EXPECT_GT(Psnr(decoded.rgb, rgb), width >= 64 ? 40.0 : 32.0) << width << "x" << height;
  }
}

TEST(JpegEncoderTest, LowerQualityIsSmallerAndStillDecodes) {
  const int width = 320, height = 180;
  std::vector<uint8_t> rgb(static_cast<size_t>(width) * height * 3);
  std::mt19937 rng(3);
  for (uint8_t& v : rgb) v = static_cast<uint8_t>(rng() & 0xFF);  // noise: the hardest case for the budget
  size_t previous = SIZE_MAX;
  for (int quality : {100, 85, 50, 20, 5, 1}) {
    absl::StatusOr<std::string> jpeg = EncodeJpeg(rgb.data(), width, height, quality);
    ASSERT_TRUE(jpeg.ok()) << jpeg.status();
    EXPECT_LT(jpeg->size(), previous) << "quality " << quality;
    previous = jpeg->size();
    EXPECT_EQ(DecodeJpeg(*jpeg).width, width) << "quality " << quality;
  }
  EXPECT_FALSE(EncodeJpeg(rgb.data(), width, height, 0).ok());
  EXPECT_FALSE(EncodeJpeg(rgb.data(), 0, height, 50).ok());
}

TEST(PreviewImageTest, ContactSheetPlacesFramesInOrder) {
  std::vector<PreviewFrame> frames(3);
  for (int i = 0; i < 3; ++i) {
    frames[i].width = 4;
    frames[i].height = 2;
    frames[i].rgb.assign(4 * 2 * 3, static_cast<uint8_t>(10 * (i + 1)));
  }
  const PreviewFrame sheet = ContactSheet(frames, 2);
  ASSERT_EQ(sheet.width, 8);
  ASSERT_EQ(sheet.height, 4);
  auto pixel = [&](int x, int y) { return sheet.rgb[(static_cast<size_t>(y) * sheet.width + x) * 3]; };
  EXPECT_EQ(pixel(0, 0), 10);
  EXPECT_EQ(pixel(7, 1), 20);
  EXPECT_EQ(pixel(3, 3), 30);
  EXPECT_EQ(pixel(4, 2), 128) << "the missing fourth cell is grey";
}

TEST(PreviewImageTest, EveryPreviewFitsTheBudget) {
  // Noise frames at 720p's latent size (90×160), four of them, ×2: far over 64 KiB at quality 85.
  std::mt19937 rng(11);
  std::vector<PreviewFrame> frames(4);
  for (PreviewFrame& frame : frames) {
    frame.width = 160;
    frame.height = 90;
    frame.rgb.resize(160 * 90 * 3);
    for (uint8_t& v : frame.rgb) v = static_cast<uint8_t>(rng() & 0xFF);
  }
  for (size_t budget : {kMaxPreviewBytes, size_t{16} * 1024, size_t{2} * 1024}) {
    PreviewOptions options;
    options.max_bytes = budget;
    absl::StatusOr<EncodedPreview> preview = EncodeContactSheet(frames, {0, 7, 14, 20}, options);
    ASSERT_TRUE(preview.ok()) << preview.status();
    EXPECT_LE(preview->bytes.size(), budget);
    EXPECT_EQ(preview->frame_count, 4);
    EXPECT_EQ(preview->columns, 2);
    EXPECT_EQ(preview->rows, 2);
    const Decoded decoded = DecodeJpeg(preview->bytes);
    EXPECT_EQ(decoded.width, preview->width) << budget;
    EXPECT_EQ(decoded.height, preview->height) << budget;
    EXPECT_EQ(preview->tile_width * preview->columns, preview->width);
  }
  PreviewOptions impossible;
  impossible.max_bytes = 100;  // less than the JPEG headers
  EXPECT_EQ(EncodeContactSheet(frames, {0, 7, 14, 20}, impossible).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST(PreviewImageTest, RenderedPreviewShowsTheIndependentProjection) {
  // A smooth latent (low-frequency waves per channel), so that JPEG at quality 95 is close to lossless.
  const int channels = 16, frames = 6, height = 24, width = 40;
  const size_t plane = static_cast<size_t>(height) * width;
  std::vector<float> latent(channels * frames * plane);
  for (int c = 0; c < channels; ++c) {
    for (int f = 0; f < frames; ++f) {
      for (int y = 0; y < height; ++y) {
        for (int x = 0; x < width; ++x) {
          latent[(static_cast<size_t>(c) * frames + f) * plane + y * width + x] =
              static_cast<float>(1.2 * std::sin(0.02 * (c + 1) * x + 0.3 * f + c) * std::cos(0.02 * (16 - c) * y));
        }
      }
    }
  }
  PreviewOptions options;
  options.frames = 3;
  options.scale = 1;
  options.quality = 95;
  absl::StatusOr<EncodedPreview> preview = RenderLatentPreview(latent.data(), channels, frames, height, width, options);
  ASSERT_TRUE(preview.ok()) << preview.status();
  ASSERT_EQ(preview->latent_frames, (std::vector<int>{0, 2, 5}));
  ASSERT_EQ(preview->width, 2 * width);
  ASSERT_EQ(preview->height, 2 * height);
  const Decoded decoded = DecodeJpeg(preview->bytes);
  ASSERT_EQ(decoded.width, preview->width);

  // The projection, independently: double precision, plain loops, the reference pixel rule.
  const LatentRgbFactors& factors = Wan21LatentRgbFactors();
  std::vector<uint8_t> expected, got;
  for (int tile = 0; tile < 3; ++tile) {
    const int f = preview->latent_frames[tile];
    const int x0 = (tile % 2) * width, y0 = (tile / 2) * height;
    for (int y = 0; y < height; ++y) {
      for (int x = 0; x < width; ++x) {
        for (int k = 0; k < 3; ++k) {
          double value = factors.bias[k];
          for (int c = 0; c < channels; ++c) {
            value += double(factors.factors[c][k]) * latent[(static_cast<size_t>(c) * frames + f) * plane + y * width + x];
          }
          value = std::clamp(value, -1.0, 1.0);
          expected.push_back(static_cast<uint8_t>(std::floor((value + 1.0) / 2.0 * 255.0)));
          got.push_back(decoded.rgb[(static_cast<size_t>(y0 + y) * decoded.width + x0 + x) * 3 + k]);
        }
      }
    }
  }
  EXPECT_GT(Psnr(got, expected), 30.0);
}

}  // namespace
}  // namespace zoetrope
