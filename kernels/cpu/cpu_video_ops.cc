#include "kernels/cpu/cpu_video_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/cpu_gemm.h"

namespace zoetrope::cpu {
namespace {

// Element-wise loops below this size are not worth waking the thread pool.
constexpr int64_t kParallelThreshold = 1 << 15;
// im2col is a copy right before a (threaded) sgemm: below this many floats one thread copies faster
// than waking OpenMP threads that then spin against OpenBLAS's own.
constexpr int64_t kParallelColumnThreshold = int64_t{1} << 22;
// The im2col buffer holds at most this many floats (16 MiB) unless a single output row needs more.
constexpr int64_t kColumnBufferFloats = int64_t{4} << 20;
// Positions normalised together by ChannelRmsNorm: their sums of squares stay in registers / L1.
constexpr int64_t kNormBlock = 64;

inline float ApplyActivation(float value, Activation activation) {
  switch (activation) {
    case Activation::kNone:
      return value;
    case Activation::kSilu:
      return value / (1.0f + std::exp(-value));
    case Activation::kGeluTanh: {
      constexpr float kSqrtTwoOverPi = 0.7978845608028654f;
      return 0.5f * value * (1.0f + std::tanh(kSqrtTwoOverPi * (value + 0.044715f * value * value * value)));
    }
  }
  return value;
}

}  // namespace

Tensor Conv3d(const Tensor& x, const Tensor& weight, const Tensor* bias, int pad_front, int pad_back, int pad_height,
              int pad_width) {
  ZCHECK_MSG(x.rank() == 4 && weight.rank() == 5 && x.dtype() == DType::kF32 && weight.dtype() == DType::kF32 &&
                 weight.dim(1) == x.dim(1),
             "Conv3d x " << x.DebugString() << " weight " << weight.DebugString());
  ZCHECK_MSG(pad_front >= 0 && pad_back >= 0 && pad_height >= 0 && pad_width >= 0,
             "Conv3d padding " << pad_front << "/" << pad_back << "/" << pad_height << "/" << pad_width);
  const int64_t frames = x.dim(0), in_channels = x.dim(1), height = x.dim(2), width = x.dim(3);
  const int64_t out_channels = weight.dim(0), kernel_t = weight.dim(2), kernel_h = weight.dim(3),
                kernel_w = weight.dim(4);
  const int64_t out_frames = frames + pad_front + pad_back - kernel_t + 1;
  const int64_t out_height = height + 2 * pad_height - kernel_h + 1;
  const int64_t out_width = width + 2 * pad_width - kernel_w + 1;
  ZCHECK_MSG(out_frames >= 1 && out_height >= 1 && out_width >= 1,
             "Conv3d output would be empty: x " << x.DebugString() << " weight " << weight.DebugString());
  if (bias != nullptr) {
    ZCHECK_MSG(bias->dtype() == DType::kF32 && bias->numel() == out_channels, "Conv3d bias " << bias->DebugString());
  }
  const int64_t reduction = in_channels * kernel_t * kernel_h * kernel_w;
  const int64_t in_plane = height * width, in_frame = in_channels * in_plane;
  const int64_t out_plane = out_height * out_width, out_frame = out_channels * out_plane;
  Tensor y = Tensor::Host({out_frames, out_channels, out_height, out_width}, DType::kF32);
  const float* in = x.data<float>();
  const float* w = weight.data<float>();
  float* out = y.data<float>();

  const bool pointwise = kernel_t == 1 && kernel_h == 1 && kernel_w == 1 && pad_height == 0 && pad_width == 0;
  if (pointwise) {
    // A 1×1×1 conv is one product per frame straight from the input; padding frames give bias only.
    for (int64_t t = 0; t < out_frames; ++t) {
      const int64_t source = t - pad_front;
      if (source < 0 || source >= frames) continue;
      cpu::Gemm(cpu::Transpose::kNo, out_channels, in_plane, in_channels, 1.0f, w, in_channels, in + source * in_frame,
                in_plane, out + t * out_frame, out_plane);
    }
  } else {
    const int64_t tile_rows =
        std::clamp<int64_t>(kColumnBufferFloats / std::max<int64_t>(reduction * out_width, 1), 1, out_height);
    std::vector<float> columns(static_cast<size_t>(reduction * tile_rows * out_width));
    const int64_t taps = kernel_t * kernel_h * kernel_w;
    for (int64_t t = 0; t < out_frames; ++t) {
      for (int64_t row0 = 0; row0 < out_height; row0 += tile_rows) {
        const int64_t rows = std::min(tile_rows, out_height - row0);
        const int64_t count = rows * out_width;
        float* column_data = columns.data();
        // Row r of the column matrix is tap (c, a, p, q) in the weight's [Cin, kt, kh, kw] order, so the
        // weight is used as stored, [Cout, reduction].
#pragma omp parallel for if (reduction * count > kParallelColumnThreshold)
        for (int64_t r = 0; r < reduction; ++r) {
          const int64_t c = r / taps;
          const int64_t a = (r / (kernel_h * kernel_w)) % kernel_t;
          const int64_t p = (r / kernel_w) % kernel_h;
          const int64_t q = r % kernel_w;
          float* destination = column_data + r * count;
          const int64_t source_frame = t + a - pad_front;
          if (source_frame < 0 || source_frame >= frames) {
            std::memset(destination, 0, sizeof(float) * static_cast<size_t>(count));
            continue;
          }
          const float* plane = in + source_frame * in_frame + c * in_plane;
          // Output columns j whose source column j + q - pad_width lies inside the image.
          const int64_t j_begin = std::clamp<int64_t>(pad_width - q, 0, out_width);
          const int64_t j_end = std::clamp<int64_t>(width + pad_width - q, j_begin, out_width);
          for (int64_t i = 0; i < rows; ++i) {
            float* line = destination + i * out_width;
            const int64_t source_row = row0 + i + p - pad_height;
            if (source_row < 0 || source_row >= height) {
              std::memset(line, 0, sizeof(float) * static_cast<size_t>(out_width));
              continue;
            }
            std::memset(line, 0, sizeof(float) * static_cast<size_t>(j_begin));
            std::memcpy(line + j_begin, plane + source_row * width + j_begin + q - pad_width,
                        sizeof(float) * static_cast<size_t>(j_end - j_begin));
            std::memset(line + j_end, 0, sizeof(float) * static_cast<size_t>(out_width - j_end));
          }
        }
        cpu::Gemm(cpu::Transpose::kNo, out_channels, count, reduction, 1.0f, w, reduction, column_data, count,
                  out + t * out_frame + row0 * out_width, out_plane);
      }
    }
  }
  if (bias != nullptr) {
    const float* b = bias->data<float>();
#pragma omp parallel for collapse(2) if (y.numel() > kParallelThreshold)
    for (int64_t t = 0; t < out_frames; ++t) {
      for (int64_t o = 0; o < out_channels; ++o) {
        float* plane = out + t * out_frame + o * out_plane;
        for (int64_t s = 0; s < out_plane; ++s) plane[s] += b[o];
      }
    }
  }
  return y;
}

Tensor ChannelRmsNorm(const Tensor& x, const Tensor& gamma, Activation activation) {
  ZCHECK_MSG(x.rank() >= 2 && x.dtype() == DType::kF32 && gamma.dtype() == DType::kF32 && gamma.numel() == x.dim(1),
             "ChannelRmsNorm x " << x.DebugString() << " gamma " << gamma.DebugString());
  const int64_t frames = x.dim(0), channels = x.dim(1);
  const int64_t positions = frames == 0 || channels == 0 ? 0 : x.numel() / (frames * channels);
  Tensor y = Tensor::Host(x.shape(), DType::kF32);
  const float* in = x.data<float>();
  const float* g = gamma.data<float>();
  float* out = y.data<float>();
  const int64_t blocks = (positions + kNormBlock - 1) / kNormBlock;
  const double root_channels = std::sqrt(static_cast<double>(channels));
#pragma omp parallel for collapse(2) if (x.numel() > kParallelThreshold)
  for (int64_t t = 0; t < frames; ++t) {
    for (int64_t block = 0; block < blocks; ++block) {
      const int64_t begin = block * kNormBlock;
      const int64_t count = std::min(kNormBlock, positions - begin);
      const float* source = in + t * channels * positions + begin;
      float* destination = out + t * channels * positions + begin;
      double squares[kNormBlock] = {};
      for (int64_t c = 0; c < channels; ++c) {
        const float* line = source + c * positions;
        for (int64_t s = 0; s < count; ++s) squares[s] += static_cast<double>(line[s]) * line[s];
      }
      // F.normalize: x / max(‖x‖₂, 1e-12), then · √C · γ.
      float factor[kNormBlock];
      for (int64_t s = 0; s < count; ++s) {
        factor[s] = static_cast<float>(root_channels / std::max(std::sqrt(squares[s]), 1e-12));
      }
      for (int64_t c = 0; c < channels; ++c) {
        const float* line = source + c * positions;
        float* result = destination + c * positions;
        for (int64_t s = 0; s < count; ++s) result[s] = ApplyActivation(line[s] * factor[s] * g[c], activation);
      }
    }
  }
  return y;
}

Tensor UpsampleNearest2x(const Tensor& x) {
  ZCHECK_MSG(x.rank() == 4 && x.dtype() == DType::kF32, "UpsampleNearest2x x " << x.DebugString());
  const int64_t planes = x.dim(0) * x.dim(1), height = x.dim(2), width = x.dim(3);
  Tensor y = Tensor::Host({x.dim(0), x.dim(1), 2 * height, 2 * width}, DType::kF32);
  const float* in = x.data<float>();
  float* out = y.data<float>();
#pragma omp parallel for collapse(2) if (y.numel() > kParallelThreshold)
  for (int64_t plane = 0; plane < planes; ++plane) {
    for (int64_t i = 0; i < height; ++i) {
      const float* source = in + (plane * height + i) * width;
      float* upper = out + (plane * 2 * height + 2 * i) * 2 * width;
      for (int64_t j = 0; j < width; ++j) upper[2 * j] = upper[2 * j + 1] = source[j];
      std::memcpy(upper + 2 * width, upper, sizeof(float) * static_cast<size_t>(2 * width));
    }
  }
  return y;
}

Tensor SwapAxes(const Tensor& x, int64_t batch, int64_t rows, int64_t columns, int64_t inner) {
  ZCHECK_MSG(
      batch >= 0 && rows >= 0 && columns >= 0 && inner >= 0 && batch * rows * columns * inner == x.numel(),
      "SwapAxes " << x.DebugString() << " as [" << batch << ", " << rows << ", " << columns << ", " << inner << "]");
  Tensor y = Tensor::Host({batch, columns, rows, inner}, x.dtype());
  const size_t element = DTypeSize(x.dtype());
  const char* in = static_cast<const char*>(x.raw_data());
  char* out = static_cast<char*>(y.raw_data());
  if (inner == 1 && element == sizeof(float)) {
    // Plain 2D transposes (token layout for attention): 32×32 tiles keep both sides in cache.
    constexpr int64_t kTile = 32;
    const float* source = reinterpret_cast<const float*>(in);
    float* destination = reinterpret_cast<float*>(out);
    const int64_t row_tiles = (rows + kTile - 1) / kTile, column_tiles = (columns + kTile - 1) / kTile;
#pragma omp parallel for collapse(3) if (x.numel() > kParallelThreshold)
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t row_tile = 0; row_tile < row_tiles; ++row_tile) {
        for (int64_t column_tile = 0; column_tile < column_tiles; ++column_tile) {
          const float* matrix = source + b * rows * columns;
          float* transposed = destination + b * rows * columns;
          const int64_t r_end = std::min(rows, (row_tile + 1) * kTile);
          const int64_t c_end = std::min(columns, (column_tile + 1) * kTile);
          for (int64_t r = row_tile * kTile; r < r_end; ++r) {
            for (int64_t c = column_tile * kTile; c < c_end; ++c) transposed[c * rows + r] = matrix[r * columns + c];
          }
        }
      }
    }
    return y;
  }
  const size_t chunk = static_cast<size_t>(inner) * element;
#pragma omp parallel for collapse(2) if (x.numel() > kParallelThreshold)
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t c = 0; c < columns; ++c) {
      for (int64_t r = 0; r < rows; ++r) {
        std::memcpy(out + static_cast<size_t>((b * columns + c) * rows + r) * chunk,
                    in + static_cast<size_t>((b * rows + r) * columns + c) * chunk, chunk);
      }
    }
  }
  return y;
}

Tensor Clamp(const Tensor& x, float minimum, float maximum) {
  ZCHECK_MSG(x.dtype() == DType::kF32 && minimum <= maximum, "Clamp " << x.DebugString());
  Tensor y = Tensor::Host(x.shape(), DType::kF32);
  const float* in = x.data<float>();
  float* out = y.data<float>();
  const int64_t count = x.numel();
#pragma omp parallel for if (count > kParallelThreshold)
  for (int64_t i = 0; i < count; ++i) {
    // Written so that NaN stays NaN, as torch.clamp does (a NaN must not turn into a valid pixel).
    const float value = in[i];
    out[i] = value < minimum ? minimum : (value > maximum ? maximum : value);
  }
  return y;
}

}  // namespace zoetrope::cpu
