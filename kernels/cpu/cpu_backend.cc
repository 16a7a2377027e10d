#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_gemm.h"
#include "kernels/cpu/cpu_text_ops.h"
#include "kernels/cpu/cpu_video_ops.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace zoetrope {
namespace {

// Element-wise loops below this size are not worth waking the thread pool.
constexpr int64_t kParallelThreshold = 1 << 15;

// An F32 view of `tensor`: the tensor itself when it already is F32, else a converted copy.
Tensor AsF32(const Tensor& tensor) {
  return tensor.dtype() == DType::kF32 ? tensor : ConvertHost(tensor, DType::kF32);
}

Tensor ToDType(const Tensor& f32_tensor, DType dtype) {
  return dtype == DType::kF32 ? f32_tensor : ConvertHost(f32_tensor, dtype);
}

inline float GeluTanh(float x) {
  constexpr float kSqrtTwoOverPi = 0.7978845608028654f;
  return 0.5f * x * (1.0f + std::tanh(kSqrtTwoOverPi * (x + 0.044715f * x * x * x)));
}

inline float Silu(float x) { return x / (1.0f + std::exp(-x)); }

void ActivateInPlace(float* values, int64_t count, Activation activation) {
  if (activation == Activation::kNone) return;
#pragma omp parallel for if (count > kParallelThreshold)
  for (int64_t i = 0; i < count; ++i) {
    values[i] = activation == Activation::kGeluTanh ? GeluTanh(values[i]) : Silu(values[i]);
  }
}

class CpuBackend final : public Backend {
 public:
  // The count is fixed here, on the creating thread (0: OMP_NUM_THREADS or all cores), because
  // OpenMP keeps it per thread: a job runs on another thread than the one that built its backend.
  explicit CpuBackend(int threads) : threads_(threads > 0 ? threads : omp_get_max_threads()) {}

  Device device() const override { return Device::Cpu(); }
  std::string name() const override { return "cpu"; }
  DType compute_dtype() const override { return DType::kF32; }

  Tensor Empty(const Shape& shape, DType dtype) override { return Tensor::Host(shape, dtype); }

  Tensor Upload(const Tensor& host_tensor, DType dtype) override {
    ZCHECK(host_tensor.device().is_cpu());
    return ConvertHost(host_tensor, dtype);
  }

  Tensor ToHost(const Tensor& tensor) override { return tensor; }

  Tensor Cast(const Tensor& tensor, DType dtype) override { return ConvertHost(tensor, dtype); }

  void CopyInto(const Tensor& destination, const Tensor& source) override {
    ZCHECK_MSG(destination.numel() == source.numel(),
               "CopyInto " << source.DebugString() << " -> " << destination.DebugString());
    if (destination.dtype() == source.dtype()) {
      std::memcpy(destination.raw_data(), source.raw_data(), source.nbytes());
      return;
    }
    Tensor converted = ConvertHost(source, destination.dtype());
    std::memcpy(destination.raw_data(), converted.raw_data(), converted.nbytes());
  }

  void Synchronize() override {}

  Tensor Linear(const Tensor& x, const Tensor& weight, const Tensor* bias, Activation activation) override {
    UseConfiguredThreads();
    ZCHECK_MSG(weight.rank() == 2 && x.dim(-1) == weight.dim(1),
               "Linear x " << x.DebugString() << " weight " << weight.DebugString());
    const int64_t inputs = weight.dim(1);
    const int64_t outputs = weight.dim(0);
    const int64_t rows = x.numel() / inputs;
    Tensor x32 = AsF32(x);
    Tensor w32 = AsF32(weight);
    Shape out_shape = x.shape();
    out_shape.back() = outputs;
    Tensor y = Tensor::Host(out_shape, DType::kF32);
    if (rows > 0) {
      cpu::Gemm(cpu::Transpose::kYes, rows, outputs, inputs, 1.0f, x32.data<float>(), inputs, w32.data<float>(), inputs,
                y.data<float>(), outputs);
    }
    float* out = y.data<float>();
    if (bias != nullptr) {
      ZCHECK(bias->numel() == outputs);
      Tensor b32 = AsF32(*bias);
      const float* b = b32.data<float>();
#pragma omp parallel for if (rows * outputs > kParallelThreshold)
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t o = 0; o < outputs; ++o) out[r * outputs + o] += b[o];
      }
    }
    ActivateInPlace(out, rows * outputs, activation);
    return ToDType(y, weight.dtype());
  }

  Tensor Activate(const Tensor& x, Activation activation) override {
    UseConfiguredThreads();
    Tensor y = ConvertHost(x, DType::kF32);
    ActivateInPlace(y.data<float>(), y.numel(), activation);
    return ToDType(y, x.dtype());
  }

  Tensor Combine(const std::vector<Term>& terms) override {
    UseConfiguredThreads();
    ZCHECK(!terms.empty());
    const Shape& shape = terms[0].tensor->shape();
    std::vector<Tensor> inputs;
    inputs.reserve(terms.size());
    for (const Term& term : terms) {
      ZCHECK_MSG(term.tensor->shape() == shape,
                 "Combine " << term.tensor->DebugString() << " vs " << ShapeToString(shape));
      inputs.push_back(AsF32(*term.tensor));
    }
    Tensor result = Tensor::Host(shape, DType::kF32);
    float* out = result.data<float>();
    const int64_t count = result.numel();
#pragma omp parallel for if (count > kParallelThreshold)
    for (int64_t i = 0; i < count; ++i) {
      double sum = 0.0;
      for (size_t t = 0; t < inputs.size(); ++t) sum += terms[t].coefficient * inputs[t].data<float>()[i];
      out[i] = static_cast<float>(sum);
    }
    return result;
  }

  void AddGated(const Tensor& x, const Tensor& y, const Tensor* gate) override {
    UseConfiguredThreads();
    ZCHECK_MSG(x.dtype() == DType::kF32 && x.numel() == y.numel(),
               "AddGated x " << x.DebugString() << " y " << y.DebugString());
    const int64_t width = x.dim(-1);
    const int64_t rows = x.numel() / width;
    Tensor y32 = AsF32(y);
    Tensor gate32;
    if (gate != nullptr) {
      ZCHECK(gate->numel() == width);
      gate32 = AsF32(*gate);
    }
    float* out = x.data<float>();
    const float* add = y32.data<float>();
    const float* g = gate != nullptr ? gate32.data<float>() : nullptr;
#pragma omp parallel for if (rows * width > kParallelThreshold)
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < width; ++c) {
        out[r * width + c] += add[r * width + c] * (g != nullptr ? g[c] : 1.0f);
      }
    }
  }

  Tensor LayerNorm(const Tensor& x, const NormParams& params, DType out_dtype) override {
    UseConfiguredThreads();
    const int64_t width = x.dim(-1);
    const int64_t rows = x.numel() / width;
    Tensor x32 = AsF32(x);
    auto optional = [&](const Tensor& parameter) -> Tensor {
      if (!parameter.defined()) return Tensor();
      ZCHECK_MSG(parameter.numel() == width, "LayerNorm parameter " << parameter.DebugString());
      return AsF32(parameter);
    };
    const Tensor weight = optional(params.weight), bias = optional(params.bias);
    const Tensor scale = optional(params.scale), shift = optional(params.shift);
    Tensor y = Tensor::Host(x.shape(), DType::kF32);
    const float* in = x32.data<float>();
    float* out = y.data<float>();
#pragma omp parallel for if (rows * width > kParallelThreshold)
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = in + r * width;
      double sum = 0.0;
      for (int64_t c = 0; c < width; ++c) sum += row[c];
      const double mean = sum / width;
      double squares = 0.0;
      for (int64_t c = 0; c < width; ++c) squares += (row[c] - mean) * (row[c] - mean);
      const float inverse_std = static_cast<float>(1.0 / std::sqrt(squares / width + params.epsilon));
      const float mean_f = static_cast<float>(mean);
      for (int64_t c = 0; c < width; ++c) {
        float value = (row[c] - mean_f) * inverse_std;
        if (weight.defined()) value *= weight.data<float>()[c];
        if (bias.defined()) value += bias.data<float>()[c];
        if (scale.defined()) value *= 1.0f + scale.data<float>()[c];
        if (shift.defined()) value += shift.data<float>()[c];
        out[r * width + c] = value;
      }
    }
    return ToDType(y, out_dtype);
  }

  Tensor RmsNorm(const Tensor& x, const Tensor& weight, float epsilon) override {
    UseConfiguredThreads();
    const int64_t width = x.dim(-1);
    const int64_t rows = x.numel() / width;
    ZCHECK(weight.numel() == width);
    Tensor x32 = AsF32(x);
    Tensor w32 = AsF32(weight);
    Tensor y = Tensor::Host(x.shape(), DType::kF32);
    const float* in = x32.data<float>();
    const float* w = w32.data<float>();
    float* out = y.data<float>();
#pragma omp parallel for if (rows * width > kParallelThreshold)
    for (int64_t r = 0; r < rows; ++r) {
      double squares = 0.0;
      for (int64_t c = 0; c < width; ++c) squares += static_cast<double>(in[r * width + c]) * in[r * width + c];
      const float inverse_rms = static_cast<float>(1.0 / std::sqrt(squares / width + epsilon));
      for (int64_t c = 0; c < width; ++c) out[r * width + c] = in[r * width + c] * inverse_rms * w[c];
    }
    return ToDType(y, x.dtype());
  }

  void ApplyRope(const Tensor& x, const Tensor& cos, const Tensor& sin) override {
    UseConfiguredThreads();
    ZCHECK_MSG(x.rank() == 3 && x.dtype() == DType::kF32, "ApplyRope x " << x.DebugString());
    const int64_t tokens = x.dim(0), heads = x.dim(1), head_dim = x.dim(2);
    const int64_t pairs = head_dim / 2;
    ZCHECK_MSG(cos.dim(0) == tokens && cos.dim(1) == pairs && sin.shape() == cos.shape(),
               "ApplyRope cos " << cos.DebugString() << " for x " << x.DebugString());
    float* data = x.data<float>();
    const float* c = cos.data<float>();
    const float* s = sin.data<float>();
#pragma omp parallel for if (x.numel() > kParallelThreshold)
    for (int64_t n = 0; n < tokens; ++n) {
      for (int64_t h = 0; h < heads; ++h) {
        float* vector = data + (n * heads + h) * head_dim;
        for (int64_t p = 0; p < pairs; ++p) {
          const float real = vector[2 * p], imaginary = vector[2 * p + 1];
          const float cos_angle = c[n * pairs + p], sin_angle = s[n * pairs + p];
          vector[2 * p] = real * cos_angle - imaginary * sin_angle;
          vector[2 * p + 1] = real * sin_angle + imaginary * cos_angle;
        }
      }
    }
  }

  Tensor Attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                   const BlockSparseLayout* layout) override {
    UseConfiguredThreads();
    ZCHECK_MSG(q.rank() == 3 && k.rank() == 3 && v.shape() == k.shape() && q.dim(1) == k.dim(1) && q.dim(2) == k.dim(2),
               "Attention q " << q.DebugString() << " k " << k.DebugString() << " v " << v.DebugString());
    const int64_t query_count = q.dim(0), key_count = k.dim(0), heads = q.dim(1), head_dim = q.dim(2);
    const int stride = static_cast<int>(heads * head_dim);
    Tensor q32 = AsF32(q), k32 = AsF32(k), v32 = AsF32(v);
    Tensor out = Tensor::Host(q.shape(), DType::kF32);
    const int64_t tile = layout != nullptr ? layout->query_block : 256;
    const int64_t tiles = (query_count + tile - 1) / tile;
    std::vector<float> scores(static_cast<size_t>(tile * key_count));
    std::vector<char> visited_keys;
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t row0 = t * tile;
        const int rows = static_cast<int>(std::min(tile, query_count - row0));
        const float* q_tile = q32.data<float>() + row0 * stride + h * head_dim;
        cpu::Gemm(cpu::Transpose::kYes, rows, key_count, head_dim, scale, q_tile, stride,
                  k32.data<float>() + h * head_dim, stride, scores.data(), key_count);
        if (layout != nullptr) MarkVisitedKeys(*layout, h, t, key_count, &visited_keys);
#pragma omp parallel for if (rows * key_count > kParallelThreshold)
        for (int r = 0; r < rows; ++r) {
          float* row = scores.data() + static_cast<int64_t>(r) * key_count;
          float maximum = -std::numeric_limits<float>::infinity();
          for (int64_t j = 0; j < key_count; ++j) {
            if (layout != nullptr && !visited_keys[j]) row[j] = -std::numeric_limits<float>::infinity();
            maximum = std::max(maximum, row[j]);
          }
          double sum = 0.0;
          for (int64_t j = 0; j < key_count; ++j) {
            row[j] = maximum == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(row[j] - maximum);
            sum += row[j];
          }
          const float inverse = sum > 0.0 ? static_cast<float>(1.0 / sum) : 0.0f;
          for (int64_t j = 0; j < key_count; ++j) row[j] *= inverse;
        }
        cpu::Gemm(cpu::Transpose::kNo, rows, head_dim, key_count, 1.0f, scores.data(), key_count,
                  v32.data<float>() + h * head_dim, stride, out.data<float>() + row0 * stride + h * head_dim, stride);
      }
    }
    return ToDType(out, q.dtype());
  }

  // ---- video VAE: contracts in kernels/backend.h, implementations in cpu_video_ops.cc.
  Tensor Conv3d(const Tensor& x, const Tensor& weight, const Tensor* bias, int pad_front, int pad_back, int pad_height,
                int pad_width) override {
    UseConfiguredThreads();
    return cpu::Conv3d(x, weight, bias, pad_front, pad_back, pad_height, pad_width);
  }
  Tensor ChannelRmsNorm(const Tensor& x, const Tensor& gamma, Activation activation) override {
    UseConfiguredThreads();
    return cpu::ChannelRmsNorm(x, gamma, activation);
  }
  Tensor UpsampleNearest2x(const Tensor& x) override {
    UseConfiguredThreads();
    return cpu::UpsampleNearest2x(x);
  }
  Tensor SwapAxes(const Tensor& x, int64_t batch, int64_t rows, int64_t columns, int64_t inner) override {
    UseConfiguredThreads();
    return cpu::SwapAxes(x, batch, rows, columns, inner);
  }
  Tensor Clamp(const Tensor& x, float minimum, float maximum) override {
    UseConfiguredThreads();
    return cpu::Clamp(x, minimum, maximum);
  }

  // ---- text encoder: contracts in kernels/backend.h, implementations in cpu_text_ops.cc.
  Tensor GatherRows(const Tensor& table, const Tensor& ids, DType out_dtype) override {
    UseConfiguredThreads();
    return cpu::GatherRows(table, ids, out_dtype);
  }
  Tensor AttentionWithBias(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                           float scale) override {
    UseConfiguredThreads();
    return cpu::AttentionWithBias(q, k, v, bias, scale);
  }
  Tensor Multiply(const Tensor& a, const Tensor& b) override {
    UseConfiguredThreads();
    return cpu::Multiply(a, b);
  }

  Tensor Patchify(const Tensor& latent, int patch_t, int patch_h, int patch_w) override {
    UseConfiguredThreads();
    ZCHECK_MSG(latent.rank() == 4, "Patchify " << latent.DebugString());
    const int64_t channels = latent.dim(0), frames = latent.dim(1), height = latent.dim(2), width = latent.dim(3);
    ZCHECK(frames % patch_t == 0 && height % patch_h == 0 && width % patch_w == 0);
    const int64_t grid_f = frames / patch_t, grid_h = height / patch_h, grid_w = width / patch_w;
    const int64_t columns = channels * patch_t * patch_h * patch_w;
    Tensor in = AsF32(latent);
    Tensor tokens = Tensor::Host({grid_f * grid_h * grid_w, columns}, DType::kF32);
    const float* source = in.data<float>();
    float* out = tokens.data<float>();
#pragma omp parallel for collapse(2) if (tokens.numel() > kParallelThreshold)
    for (int64_t f = 0; f < grid_f; ++f) {
      for (int64_t y = 0; y < grid_h; ++y) {
        for (int64_t x = 0; x < grid_w; ++x) {
          float* row = out + ((f * grid_h + y) * grid_w + x) * columns;
          for (int64_t c = 0; c < channels; ++c)
            for (int t = 0; t < patch_t; ++t)
              for (int py = 0; py < patch_h; ++py)
                for (int px = 0; px < patch_w; ++px) {
                  const int64_t column = ((c * patch_t + t) * patch_h + py) * patch_w + px;
                  row[column] = source[((c * frames + f * patch_t + t) * height + y * patch_h + py) * width +
                                       x * patch_w + px];
                }
        }
      }
    }
    return tokens;
  }

  Tensor Unpatchify(const Tensor& tokens, int channels, int grid_f, int grid_h, int grid_w, int patch_t, int patch_h,
                    int patch_w) override {
    UseConfiguredThreads();
    const int64_t columns = static_cast<int64_t>(channels) * patch_t * patch_h * patch_w;
    ZCHECK_MSG(tokens.rank() == 2 && tokens.dim(0) == int64_t{grid_f} * grid_h * grid_w && tokens.dim(1) == columns,
               "Unpatchify " << tokens.DebugString());
    const int64_t frames = int64_t{grid_f} * patch_t, height = int64_t{grid_h} * patch_h,
                  width = int64_t{grid_w} * patch_w;
    Tensor in = AsF32(tokens);
    Tensor latent = Tensor::Host({channels, frames, height, width}, DType::kF32);
    const float* source = in.data<float>();
    float* out = latent.data<float>();
#pragma omp parallel for collapse(2) if (latent.numel() > kParallelThreshold)
    for (int64_t f = 0; f < grid_f; ++f) {
      for (int64_t y = 0; y < grid_h; ++y) {
        for (int64_t x = 0; x < grid_w; ++x) {
          const float* row = source + ((f * grid_h + y) * grid_w + x) * columns;
          for (int t = 0; t < patch_t; ++t)
            for (int py = 0; py < patch_h; ++py)
              for (int px = 0; px < patch_w; ++px)
                for (int64_t c = 0; c < channels; ++c) {
                  const int64_t column = ((t * patch_h + py) * patch_w + px) * channels + c;
                  out[((c * frames + f * patch_t + t) * height + y * patch_h + py) * width + x * patch_w + px] =
                      row[column];
                }
        }
      }
    }
    return latent;
  }

 private:
  // Every operation starts here: a calling thread whose OpenMP setting differs from ours (a job
  // thread, a gRPC thread) is switched to our count, so --threads holds whatever thread runs the model.
  void UseConfiguredThreads() const {
    if (omp_get_max_threads() != threads_) omp_set_num_threads(threads_);
  }

  // Expands the CSR row of query tile `tile` (head `head`) into a per-key visited flag.
  static void MarkVisitedKeys(const BlockSparseLayout& layout, int64_t head, int64_t tile, int64_t key_count,
                              std::vector<char>* visited) {
    visited->assign(static_cast<size_t>(key_count), 0);
    const int64_t groups = layout.row_offsets.dim(0);
    const int64_t group = groups == 1 ? 0 : head;
    const int64_t row_length = layout.row_offsets.dim(1);
    const int32_t* offsets = layout.row_offsets.data<int32_t>() + group * row_length;
    const int32_t* columns = layout.column_indices.data<int32_t>() + group * layout.column_indices.dim(1);
    for (int32_t entry = offsets[tile]; entry < offsets[tile + 1]; ++entry) {
      const int64_t begin = static_cast<int64_t>(columns[entry]) * layout.key_block;
      const int64_t end = std::min(key_count, begin + layout.key_block);
      for (int64_t j = begin; j < end; ++j) (*visited)[j] = 1;
    }
  }

  const int threads_;
};

}  // namespace

std::unique_ptr<Backend> CreateCpuBackend(int threads) { return std::make_unique<CpuBackend>(threads); }

}  // namespace zoetrope
