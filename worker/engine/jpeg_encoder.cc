// Baseline JPEG (see jpeg_encoder.h). The tables are the examples of ITU-T T.81 Annex K (K.1, K.2 for
// quantisation, K.3 for Huffman codes); the DCT is the textbook separable one in float, exact enough for
// 8-bit output (the quantisation error dominates by far).
#include "worker/engine/jpeg_encoder.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace zoetrope {
namespace {

// Natural (row-major) index of the k-th coefficient in zig-zag order.
constexpr std::array<int, 64> kZigzag = {0,  1,  8,  16, 9,  2,  3,  10, 17, 24, 32, 25, 18, 11, 4,  5,
                                         12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6,  7,  14, 21, 28,
                                         35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
                                         58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63};

// T.81 Table K.1 (luminance) and K.2 (chrominance), natural order.
constexpr std::array<int, 64> kLumaQuant = {16, 11, 10, 16, 24,  40,  51,  61,  12, 12, 14, 19, 26,  58,  60,  55,
                                            14, 13, 16, 24, 40,  57,  69,  56,  14, 17, 22, 29, 51,  87,  80,  62,
                                            18, 22, 37, 56, 68,  109, 103, 77,  24, 35, 55, 64, 81,  104, 113, 92,
                                            49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99};
constexpr std::array<int, 64> kChromaQuant = {17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
                                              24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
                                              99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
                                              99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99};

// T.81 Table K.3 (DC) and K.5/K.6 (AC): code counts per length 1..16, then the symbols in code order.
struct HuffmanSpec {
  std::array<uint8_t, 16> counts;
  std::vector<uint8_t> symbols;
};

const HuffmanSpec& DcLuma() {
  static const HuffmanSpec spec = {{0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0},
                                   {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}};
  return spec;
}
const HuffmanSpec& DcChroma() {
  static const HuffmanSpec spec = {{0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0},
                                   {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}};
  return spec;
}
const HuffmanSpec& AcLuma() {
  static const HuffmanSpec spec = {
      {0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d},
      {0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07, 0x22, 0x71,
       0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72,
       0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37,
       0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59,
       0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83,
       0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3,
       0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3,
       0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2,
       0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa}};
  return spec;
}
const HuffmanSpec& AcChroma() {
  static const HuffmanSpec spec = {
      {0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77},
      {0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71, 0x13, 0x22,
       0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33, 0x52, 0xf0, 0x15, 0x62, 0x72, 0xd1,
       0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x35, 0x36,
       0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58,
       0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a,
       0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a,
       0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba,
       0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda,
       0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa}};
  return spec;
}

// Code and length of every symbol (T.81 Annex C: canonical codes in order of length).
struct HuffmanTable {
  std::array<uint16_t, 256> code{};
  std::array<uint8_t, 256> length{};
};

HuffmanTable BuildTable(const HuffmanSpec& spec) {
  HuffmanTable table;
  uint16_t code = 0;
  size_t next = 0;
  for (int bits = 1; bits <= 16; ++bits) {
    for (int i = 0; i < spec.counts[bits - 1]; ++i) {
      const uint8_t symbol = spec.symbols[next++];
      table.code[symbol] = code++;
      table.length[symbol] = static_cast<uint8_t>(bits);
    }
    code <<= 1;
  }
  return table;
}

// libjpeg's quality scaling: 50 keeps the table, lower multiplies it, higher divides it (100: all ones).
std::array<int, 64> ScaledQuant(const std::array<int, 64>& base, int quality) {
  const int scale = quality < 50 ? 5000 / quality : 200 - 2 * quality;
  std::array<int, 64> out{};
  for (int i = 0; i < 64; ++i) out[i] = std::clamp((base[i] * scale + 50) / 100, 1, 255);
  return out;
}

// Entropy-coded bytes with the 0xFF → 0xFF 0x00 stuffing of T.81 F.1.2.3.
class BitWriter {
 public:
  explicit BitWriter(std::string& out) : out_(out) {}
  void Put(uint32_t bits, int count) {
    buffer_ = (buffer_ << count) | (bits & ((1u << count) - 1));
    filled_ += count;
    while (filled_ >= 8) {
      const uint8_t byte = static_cast<uint8_t>(buffer_ >> (filled_ - 8));
      out_.push_back(static_cast<char>(byte));
      if (byte == 0xFF) out_.push_back('\0');
      filled_ -= 8;
    }
    buffer_ &= (1u << filled_) - 1;
  }
  // Pads the last byte with one bits (F.1.2.3).
  void Flush() {
    if (filled_ > 0) Put(0x7F, 8 - filled_);
  }

 private:
  std::string& out_;
  uint32_t buffer_ = 0;
  int filled_ = 0;
};

// Number of bits of |value| (the "category" SSSS of F.1.2.1).
int Category(int value) {
  int magnitude = value < 0 ? -value : value;
  int bits = 0;
  while (magnitude > 0) {
    ++bits;
    magnitude >>= 1;
  }
  return bits;
}

class BlockCoder {
 public:
  BlockCoder() {
    for (int u = 0; u < 8; ++u) {
      const double c = u == 0 ? std::sqrt(0.5) : 1.0;
      for (int x = 0; x < 8; ++x) cosine_[u][x] = static_cast<float>(0.5 * c * std::cos((2 * x + 1) * u * M_PI / 16.0));
    }
  }

  // Forward DCT of a level-shifted 8×8 block (natural order), quantised: T.81 A.3.3 and F.1.1.4.
  void Transform(const float block[64], const std::array<int, 64>& quant, int out[64]) const {
    float rows[64];
    for (int y = 0; y < 8; ++y) {
      for (int u = 0; u < 8; ++u) {
        float sum = 0.0f;
        for (int x = 0; x < 8; ++x) sum += cosine_[u][x] * block[y * 8 + x];
        rows[y * 8 + u] = sum;
      }
    }
    for (int v = 0; v < 8; ++v) {
      for (int u = 0; u < 8; ++u) {
        float sum = 0.0f;
        for (int y = 0; y < 8; ++y) sum += cosine_[v][y] * rows[y * 8 + u];
        out[v * 8 + u] = static_cast<int>(std::lround(sum / static_cast<float>(quant[v * 8 + u])));
      }
    }
  }

  // Huffman-codes one quantised block (F.1.2.1 for DC, F.1.2.2 for AC).
  static void Encode(BitWriter& writer, const int coefficients[64], int& previous_dc, const HuffmanTable& dc,
                     const HuffmanTable& ac) {
    const int difference = coefficients[0] - previous_dc;
    previous_dc = coefficients[0];
    const int dc_category = Category(difference);
    writer.Put(dc.code[dc_category], dc.length[dc_category]);
    if (dc_category > 0) writer.Put(difference < 0 ? difference - 1 : difference, dc_category);
    int run = 0;
    for (int k = 1; k < 64; ++k) {
      const int value = coefficients[kZigzag[k]];
      if (value == 0) {
        ++run;
        continue;
      }
      while (run > 15) {
        writer.Put(ac.code[0xF0], ac.length[0xF0]);  // ZRL: sixteen zeros
        run -= 16;
      }
      const int category = Category(value);
      const int symbol = (run << 4) | category;
      writer.Put(ac.code[symbol], ac.length[symbol]);
      writer.Put(value < 0 ? value - 1 : value, category);
      run = 0;
    }
    if (run > 0) writer.Put(ac.code[0x00], ac.length[0x00]);  // EOB
  }

 private:
  float cosine_[8][8];
};

void PutU16(std::string& out, int value) {
  out.push_back(static_cast<char>((value >> 8) & 0xFF));
  out.push_back(static_cast<char>(value & 0xFF));
}

void PutMarker(std::string& out, uint8_t marker) {
  out.push_back(static_cast<char>(0xFF));
  out.push_back(static_cast<char>(marker));
}

void PutQuantTable(std::string& out, int id, const std::array<int, 64>& table) {
  out.push_back(static_cast<char>(id));  // 8-bit precision, table id
  for (int k = 0; k < 64; ++k) out.push_back(static_cast<char>(table[kZigzag[k]]));
}

void PutHuffmanTable(std::string& out, int table_class, int id, const HuffmanSpec& spec) {
  out.push_back(static_cast<char>((table_class << 4) | id));
  for (uint8_t count : spec.counts) out.push_back(static_cast<char>(count));
  for (uint8_t symbol : spec.symbols) out.push_back(static_cast<char>(symbol));
}

}  // namespace

absl::StatusOr<std::string> EncodeJpeg(const uint8_t* rgb, int width, int height, int quality) {
  if (width < 1 || height < 1 || width > 65535 || height > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("jpeg: image size ", width, "×", height, " outside [1, 65535]"));
  }
  if (quality < 1 || quality > 100) {
    return absl::InvalidArgumentError(absl::StrCat("jpeg: quality ", quality, " outside [1, 100]"));
  }
  if (rgb == nullptr) return absl::InvalidArgumentError("jpeg: no pixels");

  // Full-range YCbCr planes (JFIF), level-shifted by −128 so that the DCT sees values centred on 0.
  const size_t pixels = static_cast<size_t>(width) * height;
  std::vector<float> luma(pixels), blue(pixels), red(pixels);
  for (size_t p = 0; p < pixels; ++p) {
    const float r = rgb[3 * p], g = rgb[3 * p + 1], b = rgb[3 * p + 2];
    luma[p] = 0.299f * r + 0.587f * g + 0.114f * b - 128.0f;
    blue[p] = -0.168736f * r - 0.331264f * g + 0.5f * b;
    red[p] = 0.5f * r - 0.418688f * g - 0.081312f * b;
  }
  // Past the right and bottom edges the last column and row repeat (no dark seam in the last block).
  auto at = [&](const std::vector<float>& plane, int x, int y) {
    return plane[static_cast<size_t>(std::min(y, height - 1)) * width + std::min(x, width - 1)];
  };

  const std::array<int, 64> luma_quant = ScaledQuant(kLumaQuant, quality);
  const std::array<int, 64> chroma_quant = ScaledQuant(kChromaQuant, quality);
  static const HuffmanTable dc_luma = BuildTable(DcLuma()), ac_luma = BuildTable(AcLuma());
  static const HuffmanTable dc_chroma = BuildTable(DcChroma()), ac_chroma = BuildTable(AcChroma());

  std::string out;
  out.reserve(1024 + pixels / 4);
  PutMarker(out, 0xD8);  // SOI
  PutMarker(out, 0xE0);  // APP0: JFIF 1.01, no density unit, 1:1, no thumbnail
  PutU16(out, 16);
  out.append("JFIF\0", 5);
  out.push_back(1);
  out.push_back(1);
  out.push_back(0);
  PutU16(out, 1);
  PutU16(out, 1);
  out.push_back(0);
  out.push_back(0);
  PutMarker(out, 0xDB);  // DQT: both tables
  PutU16(out, 2 + 2 * 65);
  PutQuantTable(out, 0, luma_quant);
  PutQuantTable(out, 1, chroma_quant);
  PutMarker(out, 0xC0);  // SOF0: baseline, 8 bits, Y 2×2, Cb and Cr 1×1
  PutU16(out, 8 + 3 * 3);
  out.push_back(8);
  PutU16(out, height);
  PutU16(out, width);
  out.push_back(3);
  // Component id, sampling factors (horizontal << 4 | vertical), quantisation table.
  constexpr std::array<std::array<int, 3>, 3> kComponents = {{{1, 0x22, 0}, {2, 0x11, 1}, {3, 0x11, 1}}};
  for (const std::array<int, 3>& component : kComponents) {
    for (int byte : component) out.push_back(static_cast<char>(byte));
  }
  PutMarker(out, 0xC4);  // DHT: the four Annex K tables
  PutU16(out, static_cast<int>(2 + 4 * 17 + DcLuma().symbols.size() + AcLuma().symbols.size() +
                               DcChroma().symbols.size() + AcChroma().symbols.size()));
  PutHuffmanTable(out, 0, 0, DcLuma());
  PutHuffmanTable(out, 1, 0, AcLuma());
  PutHuffmanTable(out, 0, 1, DcChroma());
  PutHuffmanTable(out, 1, 1, AcChroma());
  PutMarker(out, 0xDA);  // SOS: the three components, full spectrum
  PutU16(out, 6 + 2 * 3);
  out.push_back(3);
  // Component id, Huffman tables (DC << 4 | AC).
  constexpr std::array<std::array<int, 2>, 3> kScanComponents = {{{1, 0x00}, {2, 0x11}, {3, 0x11}}};
  for (const std::array<int, 2>& component : kScanComponents) {
    for (int byte : component) out.push_back(static_cast<char>(byte));
  }
  out.push_back(0);
  out.push_back(63);
  out.push_back(0);

  static const BlockCoder coder;
  BitWriter writer(out);
  int dc[3] = {0, 0, 0};
  float block[64];
  int coefficients[64];
  // Interleaved MCUs of 16×16 pixels: four luma blocks (left to right, top to bottom), then Cb, then Cr.
  for (int mcu_y = 0; mcu_y < height; mcu_y += 16) {
    for (int mcu_x = 0; mcu_x < width; mcu_x += 16) {
      for (int sub = 0; sub < 4; ++sub) {
        const int x0 = mcu_x + (sub % 2) * 8, y0 = mcu_y + (sub / 2) * 8;
        for (int y = 0; y < 8; ++y) {
          for (int x = 0; x < 8; ++x) block[y * 8 + x] = at(luma, x0 + x, y0 + y);
        }
        coder.Transform(block, luma_quant, coefficients);
        BlockCoder::Encode(writer, coefficients, dc[0], dc_luma, ac_luma);
      }
      for (int component = 1; component <= 2; ++component) {
        const std::vector<float>& plane = component == 1 ? blue : red;
        for (int y = 0; y < 8; ++y) {
          for (int x = 0; x < 8; ++x) {
            const int px = mcu_x + 2 * x, py = mcu_y + 2 * y;
            block[y * 8 + x] =
                0.25f * (at(plane, px, py) + at(plane, px + 1, py) + at(plane, px, py + 1) + at(plane, px + 1, py + 1));
          }
        }
        coder.Transform(block, chroma_quant, coefficients);
        BlockCoder::Encode(writer, coefficients, dc[component], dc_chroma, ac_chroma);
      }
    }
  }
  writer.Flush();
  PutMarker(out, 0xD9);  // EOI
  return out;
}

}  // namespace zoetrope
