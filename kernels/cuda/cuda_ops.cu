// Element-wise, normalisation and layout kernels of the CUDA backend (contracts in cuda_ops.cuh and
// kernels/backend.h). All arithmetic is fp32; bf16/f16 are storage types, converted on load and store
// with round-to-nearest-even.
#include "kernels/cuda/cuda_ops.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstring>

#include "kernels/check.h"
#include "kernels/cuda/cuda_check.h"

namespace zoetrope::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float Load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float Load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ float Load(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ void Store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void Store(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }
__device__ __forceinline__ void Store(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }

__device__ __forceinline__ float LoadAny(const void* p, ElementType type, int64_t i) {
  switch (type) {
    case ElementType::kBF16: return Load(static_cast<const __nv_bfloat16*>(p), i);
    case ElementType::kF16: return Load(static_cast<const __half*>(p), i);
    default: return Load(static_cast<const float*>(p), i);
  }
}

__device__ __forceinline__ float Activate(float x, ActivationCode activation) {
  if (activation == ActivationCode::kGeluTanh) {
    constexpr float kSqrtTwoOverPi = 0.7978845608028654f;
    return 0.5f * x * (1.0f + tanhf(kSqrtTwoOverPi * (x + 0.044715f * x * x * x)));
  }
  if (activation == ActivationCode::kSilu) return x / (1.0f + expf(-x));
  return x;
}

// Grid for a grid-stride loop over `count` items: enough blocks to fill the device several times.
dim3 GridFor(int64_t count) {
  const int64_t blocks = (count + kThreads - 1) / kThreads;
  return dim3(static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(blocks, 132 * 16))));
}

#define ZOETROPE_GRID_STRIDE(index, count)                                                          \
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < (count); \
       index += static_cast<int64_t>(gridDim.x) * blockDim.x)

// Calls `body.template operator()<T>()` with T the C++ type of `type`.
template <typename Body>
void DispatchType(ElementType type, Body&& body) {
  switch (type) {
    case ElementType::kF32: body(static_cast<float*>(nullptr)); break;
    case ElementType::kBF16: body(static_cast<__nv_bfloat16*>(nullptr)); break;
    case ElementType::kF16: body(static_cast<__half*>(nullptr)); break;
  }
}

struct Payload {
  unsigned char bytes[kParameterPayloadBytes];
};

__global__ void WriteBytesKernel(unsigned char* destination, const Payload payload, int bytes) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < bytes; i += gridDim.x * blockDim.x) {
    destination[i] = payload.bytes[i];
  }
}

template <typename In, typename Out>
__global__ void CastKernel(const In* input, Out* output, int64_t count) {
  ZOETROPE_GRID_STRIDE(i, count) Store(output, i, Load(input, i));
}

template <typename T>
__global__ void ActivateKernel(const T* input, T* output, int64_t count, ActivationCode activation) {
  ZOETROPE_GRID_STRIDE(i, count) Store(output, i, Activate(Load(input, i), activation));
}

template <typename T>
__global__ void BiasActivationKernel(T* y, const float* bias, int64_t rows, int64_t columns, ActivationCode activation) {
  ZOETROPE_GRID_STRIDE(i, rows * columns) {
    float value = Load(y, i);
    if (bias != nullptr) value += bias[i % columns];
    Store(y, i, Activate(value, activation));
  }
}

struct CombineArguments {
  CombineTerm terms[kMaxCombineTerms];
  int count;
};

__global__ void CombineKernel(const CombineArguments arguments, float* output, int64_t count, bool accumulate) {
  ZOETROPE_GRID_STRIDE(i, count) {
    float sum = accumulate ? output[i] : 0.0f;
    for (int t = 0; t < arguments.count; ++t) {
      sum += arguments.terms[t].coefficient * LoadAny(arguments.terms[t].data, arguments.terms[t].type, i);
    }
    output[i] = sum;
  }
}

template <typename T>
__global__ void AddGatedKernel(float* x, const T* y, const float* gate, int64_t rows, int64_t width) {
  ZOETROPE_GRID_STRIDE(i, rows * width) {
    const float g = gate != nullptr ? gate[i % width] : 1.0f;
    x[i] += Load(y, i) * g;
  }
}

// Sum over the block; every thread gets the result. `scratch` holds one float per warp.
__device__ __forceinline__ float BlockSum(float value, float* scratch) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  const int warps = (blockDim.x + 31) / 32;
  float total = 0.0f;
  for (int w = 0; w < warps; ++w) total += scratch[w];
  return total;
}

template <typename In, typename Out>
__global__ void LayerNormKernel(const In* x, Out* y, int64_t width, float epsilon, const float* weight,
                                const float* bias, const float* scale, const float* shift) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const In* in = x + row * width;
  Out* out = y + row * width;
  float sum = 0.0f;
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x) sum += Load(in, c);
  const float mean = BlockSum(sum, scratch) / static_cast<float>(width);
  float squares = 0.0f;
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x) {
    const float centered = Load(in, c) - mean;
    squares += centered * centered;
  }
  const float inverse_std = rsqrtf(BlockSum(squares, scratch) / static_cast<float>(width) + epsilon);
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x) {
    float value = (Load(in, c) - mean) * inverse_std;
    if (weight != nullptr) value *= weight[c];
    if (bias != nullptr) value += bias[c];
    if (scale != nullptr) value *= 1.0f + scale[c];
    if (shift != nullptr) value += shift[c];
    Store(out, c, value);
  }
}

template <typename T>
__global__ void RmsNormKernel(const T* x, T* y, int64_t width, const float* weight, float epsilon) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* in = x + row * width;
  T* out = y + row * width;
  float squares = 0.0f;
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x) {
    const float value = Load(in, c);
    squares += value * value;
  }
  const float inverse_rms = rsqrtf(BlockSum(squares, scratch) / static_cast<float>(width) + epsilon);
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x) Store(out, c, Load(in, c) * inverse_rms * weight[c]);
}

template <typename T>
__global__ void RopeKernel(T* x, int64_t tokens, int64_t heads, int64_t pairs, const float* cos, const float* sin) {
  ZOETROPE_GRID_STRIDE(i, tokens * heads * pairs) {
    const int64_t pair = i % pairs;
    const int64_t token = i / (heads * pairs);
    const float c = cos[token * pairs + pair], s = sin[token * pairs + pair];
    const float real = Load(x, 2 * i), imaginary = Load(x, 2 * i + 1);
    Store(x, 2 * i, real * c - imaginary * s);
    Store(x, 2 * i + 1, real * s + imaginary * c);
  }
}

template <typename T>
__global__ void PatchifyKernel(const T* latent, float* tokens, int64_t channels, int64_t frames, int64_t height,
                               int64_t width, int patch_t, int patch_h, int patch_w) {
  const int64_t grid_h = height / patch_h, grid_w = width / patch_w;
  const int64_t grid_f = frames / patch_t;
  const int64_t columns = channels * patch_t * patch_h * patch_w;
  ZOETROPE_GRID_STRIDE(i, grid_f * grid_h * grid_w * columns) {
    const int64_t token = i / columns, column = i % columns;
    const int px = static_cast<int>(column % patch_w);
    const int py = static_cast<int>((column / patch_w) % patch_h);
    const int t = static_cast<int>((column / (patch_w * patch_h)) % patch_t);
    const int64_t c = column / (int64_t{patch_w} * patch_h * patch_t);
    const int64_t x = token % grid_w, y = (token / grid_w) % grid_h, f = token / (grid_w * grid_h);
    tokens[i] = Load(latent, ((c * frames + f * patch_t + t) * height + y * patch_h + py) * width + x * patch_w + px);
  }
}

template <typename T>
__global__ void UnpatchifyKernel(const T* tokens, float* latent, int64_t channels, int64_t grid_f, int64_t grid_h,
                                 int64_t grid_w, int patch_t, int patch_h, int patch_w) {
  const int64_t frames = grid_f * patch_t, height = grid_h * patch_h, width = grid_w * patch_w;
  const int64_t columns = channels * patch_t * patch_h * patch_w;
  ZOETROPE_GRID_STRIDE(i, channels * frames * height * width) {
    const int64_t xx = i % width, yy = (i / width) % height, ff = (i / (width * height)) % frames;
    const int64_t c = i / (width * height * frames);
    const int64_t x = xx / patch_w, px = xx % patch_w, y = yy / patch_h, py = yy % patch_h;
    const int64_t f = ff / patch_t, t = ff % patch_t;
    const int64_t token = (f * grid_h + y) * grid_w + x;
    const int64_t column = ((t * patch_h + py) * patch_w + px) * channels + c;
    latent[i] = Load(tokens, token * columns + column);
  }
}

template <typename Out>
__global__ void Im2ColKernel(const float* x, Out* columns, const ConvGeometry g, int64_t out_frame,
                             int64_t row_begin, int64_t rows) {
  const int64_t positions = rows * g.out_width;
  const int64_t reduction = g.in_channels * g.kernel_t * g.kernel_h * g.kernel_w;
  ZOETROPE_GRID_STRIDE(i, reduction * positions) {
    const int64_t position = i % positions, k = i / positions;
    const int64_t q = k % g.kernel_w, p = (k / g.kernel_w) % g.kernel_h, a = (k / (g.kernel_w * g.kernel_h)) % g.kernel_t;
    const int64_t c = k / (g.kernel_w * g.kernel_h * g.kernel_t);
    const int64_t out_row = row_begin + position / g.out_width, out_column = position % g.out_width;
    const int64_t frame = out_frame + a - g.pad_front;
    const int64_t row = out_row + p - g.pad_height;
    const int64_t column = out_column + q - g.pad_width;
    float value = 0.0f;
    if (frame >= 0 && frame < g.frames && row >= 0 && row < g.height && column >= 0 && column < g.width) {
      value = x[((frame * g.in_channels + c) * g.height + row) * g.width + column];
    }
    Store(columns, i, value);
  }
}

// One block per row: maximum, then Σ exp, then normalise (three passes over a row that stays in L2).
__global__ void SoftmaxRowsKernel(float* scores, int64_t columns, float scale) {
  float* row = scores + blockIdx.x * columns;
  __shared__ float reduce[32];
  auto block_reduce = [&](float value, bool is_max) {
    for (int offset = 16; offset > 0; offset /= 2) {
      const float other = __shfl_xor_sync(0xffffffffu, value, offset);
      value = is_max ? fmaxf(value, other) : value + other;
    }
    if (threadIdx.x % 32 == 0) reduce[threadIdx.x / 32] = value;
    __syncthreads();
    const int warps = blockDim.x / 32;
    value = threadIdx.x < warps ? reduce[threadIdx.x] : (is_max ? -INFINITY : 0.0f);
    if (threadIdx.x < 32) {
      for (int offset = 16; offset > 0; offset /= 2) {
        const float other = __shfl_xor_sync(0xffffffffu, value, offset);
        value = is_max ? fmaxf(value, other) : value + other;
      }
      if (threadIdx.x == 0) reduce[0] = value;
    }
    __syncthreads();
    const float result = reduce[0];
    __syncthreads();
    return result;
  };
  float maximum = -INFINITY;
  for (int64_t j = threadIdx.x; j < columns; j += blockDim.x) maximum = fmaxf(maximum, row[j] * scale);
  maximum = block_reduce(maximum, true);
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < columns; j += blockDim.x) {
    const float e = maximum == -INFINITY ? 0.0f : __expf(row[j] * scale - maximum);
    row[j] = e;
    sum += e;
  }
  sum = block_reduce(sum, false);
  const float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;
  for (int64_t j = threadIdx.x; j < columns; j += blockDim.x) row[j] *= inverse;
}

__global__ void AddChannelBiasKernel(float* y, const float* bias, int64_t frames, int64_t channels, int64_t positions) {
  ZOETROPE_GRID_STRIDE(i, frames * channels * positions) y[i] += bias[(i / positions) % channels];
}

__global__ void ChannelRmsNormKernel(const float* x, float* y, const float* gamma, int64_t frames, int64_t channels,
                                     int64_t positions, ActivationCode activation) {
  const float root_channels = sqrtf(static_cast<float>(channels));
  ZOETROPE_GRID_STRIDE(i, frames * positions) {
    const int64_t t = i / positions, position = i % positions;
    const float* in = x + t * channels * positions + position;
    float squares = 0.0f;
    for (int64_t c = 0; c < channels; ++c) squares += in[c * positions] * in[c * positions];
    const float factor = root_channels / fmaxf(sqrtf(squares), 1e-12f);
    float* out = y + t * channels * positions + position;
    for (int64_t c = 0; c < channels; ++c) out[c * positions] = Activate(in[c * positions] * factor * gamma[c], activation);
  }
}

__global__ void UpsampleNearest2xKernel(const float* x, float* y, int64_t planes, int64_t height, int64_t width) {
  ZOETROPE_GRID_STRIDE(i, planes * height * 2 * width * 2) {
    const int64_t j = i % (2 * width), row = (i / (2 * width)) % (2 * height), plane = i / (4 * width * height);
    y[i] = x[(plane * height + row / 2) * width + j / 2];
  }
}

template <typename T>
__global__ void SwapAxesKernel(const T* x, T* y, int64_t batch, int64_t rows, int64_t columns, int64_t inner) {
  ZOETROPE_GRID_STRIDE(i, batch * rows * columns * inner) {
    // i indexes y[b, c, r, e].
    const int64_t e = i % inner, r = (i / inner) % rows, c = (i / (inner * rows)) % columns;
    const int64_t b = i / (inner * rows * columns);
    y[i] = x[((b * rows + r) * columns + c) * inner + e];
  }
}

__global__ void ClampKernel(const float* x, float* y, int64_t count, float minimum, float maximum) {
  ZOETROPE_GRID_STRIDE(i, count) {
    const float value = x[i];
    y[i] = value != value ? value : fminf(fmaxf(value, minimum), maximum);
  }
}

template <typename In, typename Out>
__global__ void GatherRowsKernel(const In* table, const int32_t* ids, Out* output, int64_t rows, int64_t width) {
  ZOETROPE_GRID_STRIDE(i, rows * width) {
    const int64_t row = i / width, column = i % width;
    Store(output, i, Load(table, static_cast<int64_t>(ids[row]) * width + column));
  }
}

// One block per (query, head): logits of every key in shared memory, then the softmax-weighted sum.
template <typename T>
__global__ void AttentionWithBiasKernel(const T* q, const T* k, const T* v, const float* bias, T* o, int64_t queries,
                                        int64_t keys, int64_t heads, int64_t head_dim, float scale) {
  extern __shared__ float shared[];
  float* logits = shared;               // [keys]
  float* query = shared + keys;         // [head_dim]
  __shared__ float scratch[32];
  const int64_t i = blockIdx.x, h = blockIdx.y;
  const int64_t stride = heads * head_dim;
  for (int64_t c = threadIdx.x; c < head_dim; c += blockDim.x) query[c] = Load(q, i * stride + h * head_dim + c);
  __syncthreads();
  const float* bias_row = bias + (h * queries + i) * keys;
  float local_max = -INFINITY;
  for (int64_t j = threadIdx.x; j < keys; j += blockDim.x) {
    float dot = 0.0f;
    for (int64_t c = 0; c < head_dim; ++c) dot += query[c] * Load(k, j * stride + h * head_dim + c);
    const float logit = scale * dot + bias_row[j];
    logits[j] = logit;
    local_max = fmaxf(local_max, logit);
  }
  // Block maximum (BlockSum's pattern with max).
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) local_max = fmaxf(local_max, __shfl_xor_sync(0xffffffffu, local_max, offset));
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = local_max;
  __syncthreads();
  float maximum = -INFINITY;
  for (int w = 0; w < static_cast<int>((blockDim.x + 31) / 32); ++w) maximum = fmaxf(maximum, scratch[w]);
  float local_sum = 0.0f;
  for (int64_t j = threadIdx.x; j < keys; j += blockDim.x) {
    const float weight = maximum == -INFINITY ? 0.0f : expf(logits[j] - maximum);
    logits[j] = weight;
    local_sum += weight;
  }
  const float sum = BlockSum(local_sum, scratch);  // its barriers also publish the weights
  const float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;
  for (int64_t c = threadIdx.x; c < head_dim; c += blockDim.x) {
    float accumulator = 0.0f;
    for (int64_t j = 0; j < keys; ++j) {
      if (logits[j] != 0.0f) accumulator += logits[j] * Load(v, j * stride + h * head_dim + c);
    }
    Store(o, i * stride + h * head_dim + c, accumulator * inverse);
  }
}

template <typename A, typename B>
__global__ void MultiplyKernel(const A* a, const B* b, A* output, int64_t count) {
  ZOETROPE_GRID_STRIDE(i, count) Store(output, i, Load(a, i) * Load(b, i));
}

// ---- vectorised fast paths for the DiT's hot element-wise operators (16-byte or 8-byte accesses,
// 32-bit index arithmetic, the row held in registers). Preconditions are checked by the launchers.

// Four bf16 <-> float.
__device__ __forceinline__ float4 LoadBf16x4(const __nv_bfloat16* p) {
  const uint2 raw = *reinterpret_cast<const uint2*>(p);
  const float2 low = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
  const float2 high = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
  return make_float4(low.x, low.y, high.x, high.y);
}
__device__ __forceinline__ void StoreBf16x4(__nv_bfloat16* p, float4 v) {
  const __nv_bfloat162 low = __floats2bfloat162_rn(v.x, v.y), high = __floats2bfloat162_rn(v.z, v.w);
  uint2 raw;
  raw.x = *reinterpret_cast<const uint32_t*>(&low);
  raw.y = *reinterpret_cast<const uint32_t*>(&high);
  *reinterpret_cast<uint2*>(p) = raw;
}
__device__ __forceinline__ float4 Load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 Load4(const __nv_bfloat16* p) { return LoadBf16x4(p); }
__device__ __forceinline__ void Store4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }
__device__ __forceinline__ void Store4(__nv_bfloat16* p, float4 v) { StoreBf16x4(p, v); }

constexpr int kMaxRowChunks = 8;  // 4-element chunks per thread: rows up to 8 · 256 · 4 = 8192 wide

// LayerNorm of an F32 row held in registers (one DRAM read), exact two-pass statistics.
template <typename Out>
__global__ void LayerNormRowKernel(const float* x, Out* y, int width, float epsilon, const float* weight,
                                   const float* bias, const float* scale, const float* shift) {
  __shared__ float scratch[32];
  const int chunks = width / 4;
  const float* in = x + static_cast<int64_t>(blockIdx.x) * width;
  Out* out = y + static_cast<int64_t>(blockIdx.x) * width;
  float4 values[kMaxRowChunks];
  float sum = 0.0f;
#pragma unroll
  for (int k = 0; k < kMaxRowChunks; ++k) {
    const int c = threadIdx.x + k * blockDim.x;
    if (c < chunks) {
      values[k] = Load4(in + 4 * c);
      sum += (values[k].x + values[k].y) + (values[k].z + values[k].w);
    }
  }
  const float mean = BlockSum(sum, scratch) / static_cast<float>(width);
  float squares = 0.0f;
#pragma unroll
  for (int k = 0; k < kMaxRowChunks; ++k) {
    const int c = threadIdx.x + k * blockDim.x;
    if (c < chunks) {
      const float a = values[k].x - mean, b = values[k].y - mean, d = values[k].z - mean, e = values[k].w - mean;
      squares += (a * a + b * b) + (d * d + e * e);
    }
  }
  const float inverse_std = rsqrtf(BlockSum(squares, scratch) / static_cast<float>(width) + epsilon);
#pragma unroll
  for (int k = 0; k < kMaxRowChunks; ++k) {
    const int c = threadIdx.x + k * blockDim.x;
    if (c < chunks) {
      float4 v = make_float4((values[k].x - mean) * inverse_std, (values[k].y - mean) * inverse_std,
                             (values[k].z - mean) * inverse_std, (values[k].w - mean) * inverse_std);
      if (weight != nullptr) {
        const float4 w = Load4(weight + 4 * c);
        v = make_float4(v.x * w.x, v.y * w.y, v.z * w.z, v.w * w.w);
      }
      if (bias != nullptr) {
        const float4 b = Load4(bias + 4 * c);
        v = make_float4(v.x + b.x, v.y + b.y, v.z + b.z, v.w + b.w);
      }
      if (scale != nullptr) {
        const float4 m = Load4(scale + 4 * c);
        v = make_float4(v.x * (1.0f + m.x), v.y * (1.0f + m.y), v.z * (1.0f + m.z), v.w * (1.0f + m.w));
      }
      if (shift != nullptr) {
        const float4 m = Load4(shift + 4 * c);
        v = make_float4(v.x + m.x, v.y + m.y, v.z + m.z, v.w + m.w);
      }
      Store4(out + 4 * c, v);
    }
  }
}

// RmsNorm of a bf16 row held in registers.
__global__ void RmsNormRowKernel(const __nv_bfloat16* x, __nv_bfloat16* y, int width, const float* weight,
                                 float epsilon) {
  __shared__ float scratch[32];
  const int chunks = width / 4;
  const __nv_bfloat16* in = x + static_cast<int64_t>(blockIdx.x) * width;
  __nv_bfloat16* out = y + static_cast<int64_t>(blockIdx.x) * width;
  float4 values[kMaxRowChunks];
  float squares = 0.0f;
#pragma unroll
  for (int k = 0; k < kMaxRowChunks; ++k) {
    const int c = threadIdx.x + k * blockDim.x;
    if (c < chunks) {
      values[k] = LoadBf16x4(in + 4 * c);
      squares += (values[k].x * values[k].x + values[k].y * values[k].y) +
                 (values[k].z * values[k].z + values[k].w * values[k].w);
    }
  }
  const float inverse_rms = rsqrtf(BlockSum(squares, scratch) / static_cast<float>(width) + epsilon);
#pragma unroll
  for (int k = 0; k < kMaxRowChunks; ++k) {
    const int c = threadIdx.x + k * blockDim.x;
    if (c < chunks) {
      const float4 w = Load4(weight + 4 * c);
      StoreBf16x4(out + 4 * c, make_float4(values[k].x * inverse_rms * w.x, values[k].y * inverse_rms * w.y,
                                           values[k].z * inverse_rms * w.z, values[k].w * inverse_rms * w.w));
    }
  }
}

// x[rows, width] (F32) += y · gate, four elements per thread.
template <typename T>
__global__ void AddGatedVectorKernel(float* x, const T* y, const float* gate, int chunks, int row_chunks) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < chunks; i += gridDim.x * blockDim.x) {
    float4 value = Load4(x + 4 * static_cast<int64_t>(i));
    const float4 add = Load4(y + 4 * static_cast<int64_t>(i));
    float4 g = make_float4(1.0f, 1.0f, 1.0f, 1.0f);
    if (gate != nullptr) g = Load4(gate + 4 * (i % row_chunks));
    value = make_float4(value.x + add.x * g.x, value.y + add.y * g.y, value.z + add.z * g.z, value.w + add.w * g.w);
    Store4(x + 4 * static_cast<int64_t>(i), value);
  }
}

// RoPE on bf16 [tokens, heads, head_dim]: four pairs (16 bytes) per thread.
__global__ void RopeBf16Kernel(__nv_bfloat16* x, int chunks, int chunks_per_token, int chunks_per_head,
                               int pairs, const float* cos, const float* sin) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < chunks; i += gridDim.x * blockDim.x) {
    const int token = i / chunks_per_token;
    const int pair = (i % chunks_per_head) * 4;
    const float4 c = Load4(cos + static_cast<int64_t>(token) * pairs + pair);
    const float4 s = Load4(sin + static_cast<int64_t>(token) * pairs + pair);
    __nv_bfloat16* p = x + 8 * static_cast<int64_t>(i);
    const float4 a = LoadBf16x4(p), b = LoadBf16x4(p + 4);  // pairs (a.x, a.y), (a.z, a.w), (b.x, b.y), (b.z, b.w)
    StoreBf16x4(p, make_float4(a.x * c.x - a.y * s.x, a.x * s.x + a.y * c.x, a.z * c.y - a.w * s.y, a.z * s.y + a.w * c.y));
    StoreBf16x4(p + 4,
                make_float4(b.x * c.z - b.y * s.z, b.x * s.z + b.y * c.z, b.z * c.w - b.w * s.w, b.z * s.w + b.w * c.w));
  }
}

// Threads for a row of `chunks` 4-element chunks kept in registers, or 0 when the row is too wide.
int RowKernelThreads(int64_t chunks) {
  int threads = 32;
  while (threads < 256 && threads * 4 < chunks) threads *= 2;
  return threads * kMaxRowChunks >= chunks ? threads : 0;
}

bool Aligned16(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer) % 16 == 0; }

// Threads per row for the row-wise norms: a warp for narrow rows, up to 256 for wide ones.
int RowThreads(int64_t width) {
  int threads = 32;
  while (threads < 256 && threads * 4 < width) threads *= 2;
  return threads;
}

}  // namespace

void LaunchWriteBytes(void* destination, const void* host_bytes, size_t bytes, cudaStream_t stream) {
  ZCHECK(bytes <= kParameterPayloadBytes);
  if (bytes == 0) return;
  Payload payload;
  std::memcpy(payload.bytes, host_bytes, bytes);
  WriteBytesKernel<<<1, kThreads, 0, stream>>>(static_cast<unsigned char*>(destination), payload,
                                                static_cast<int>(bytes));
  ZCUDA_CHECK_LAUNCH();
}

void LaunchCast(const void* input, ElementType input_type, void* output, ElementType output_type, int64_t count,
                cudaStream_t stream) {
  if (count == 0) return;
  DispatchType(input_type, [&](auto* in_tag) {
    using In = std::remove_pointer_t<decltype(in_tag)>;
    DispatchType(output_type, [&](auto* out_tag) {
      using Out = std::remove_pointer_t<decltype(out_tag)>;
      CastKernel<In, Out><<<GridFor(count), kThreads, 0, stream>>>(static_cast<const In*>(input),
                                                                    static_cast<Out*>(output), count);
    });
  });
  ZCUDA_CHECK_LAUNCH();
}

void LaunchActivate(const void* input, void* output, ElementType type, int64_t count, ActivationCode activation,
                    cudaStream_t stream) {
  if (count == 0) return;
  DispatchType(type, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    ActivateKernel<T><<<GridFor(count), kThreads, 0, stream>>>(static_cast<const T*>(input), static_cast<T*>(output),
                                                                count, activation);
  });
  ZCUDA_CHECK_LAUNCH();
}

void LaunchBiasActivation(void* y, ElementType type, const float* bias, int64_t rows, int64_t columns,
                          ActivationCode activation, cudaStream_t stream) {
  if (rows * columns == 0) return;
  DispatchType(type, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    BiasActivationKernel<T><<<GridFor(rows * columns), kThreads, 0, stream>>>(static_cast<T*>(y), bias, rows, columns,
                                                                               activation);
  });
  ZCUDA_CHECK_LAUNCH();
}

void LaunchCombine(const CombineTerm* terms, int term_count, float* output, int64_t count, bool accumulate,
                   cudaStream_t stream) {
  ZCHECK(term_count >= 0 && term_count <= kMaxCombineTerms);
  if (count == 0) return;
  CombineArguments arguments{};
  for (int t = 0; t < term_count; ++t) arguments.terms[t] = terms[t];
  arguments.count = term_count;
  CombineKernel<<<GridFor(count), kThreads, 0, stream>>>(arguments, output, count, accumulate);
  ZCUDA_CHECK_LAUNCH();
}

void LaunchAddGated(float* x, const void* y, ElementType y_type, const float* gate, int64_t rows, int64_t width,
                    cudaStream_t stream) {
  if (rows * width == 0) return;
  const int64_t count = rows * width;
  if (width % 4 == 0 && count / 4 <= 0x7fffffff && Aligned16(x) && Aligned16(y) && (gate == nullptr || Aligned16(gate)) &&
      (y_type == ElementType::kF32 || y_type == ElementType::kBF16)) {
    const int chunks = static_cast<int>(count / 4), row_chunks = static_cast<int>(width / 4);
    if (y_type == ElementType::kF32) {
      AddGatedVectorKernel<float><<<GridFor(chunks), kThreads, 0, stream>>>(x, static_cast<const float*>(y), gate,
                                                                             chunks, row_chunks);
    } else {
      AddGatedVectorKernel<__nv_bfloat16><<<GridFor(chunks), kThreads, 0, stream>>>(
          x, static_cast<const __nv_bfloat16*>(y), gate, chunks, row_chunks);
    }
    ZCUDA_CHECK_LAUNCH();
    return;
  }
  DispatchType(y_type, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    AddGatedKernel<T><<<GridFor(rows * width), kThreads, 0, stream>>>(x, static_cast<const T*>(y), gate, rows, width);
  });
  ZCUDA_CHECK_LAUNCH();
}

void LaunchLayerNorm(const void* x, ElementType input_type, void* y, ElementType output_type, int64_t rows,
                     int64_t width, float epsilon, const float* weight, const float* bias, const float* scale,
                     const float* shift, cudaStream_t stream) {
  if (rows == 0 || width == 0) return;
  ZCHECK(rows <= 0x7fffffff);
  const int row_threads = width % 4 == 0 ? RowKernelThreads(width / 4) : 0;
  const bool parameters_aligned = (weight == nullptr || Aligned16(weight)) && (bias == nullptr || Aligned16(bias)) &&
                                  (scale == nullptr || Aligned16(scale)) && (shift == nullptr || Aligned16(shift));
  if (input_type == ElementType::kF32 && row_threads > 0 && parameters_aligned && Aligned16(x) && Aligned16(y) &&
      (output_type == ElementType::kF32 || output_type == ElementType::kBF16)) {
    if (output_type == ElementType::kF32) {
      LayerNormRowKernel<float><<<static_cast<unsigned>(rows), row_threads, 0, stream>>>(
          static_cast<const float*>(x), static_cast<float*>(y), static_cast<int>(width), epsilon, weight, bias, scale,
          shift);
    } else {
      LayerNormRowKernel<__nv_bfloat16><<<static_cast<unsigned>(rows), row_threads, 0, stream>>>(
          static_cast<const float*>(x), static_cast<__nv_bfloat16*>(y), static_cast<int>(width), epsilon, weight,
          bias, scale, shift);
    }
    ZCUDA_CHECK_LAUNCH();
    return;
  }
  DispatchType(input_type, [&](auto* in_tag) {
    using In = std::remove_pointer_t<decltype(in_tag)>;
    DispatchType(output_type, [&](auto* out_tag) {
      using Out = std::remove_pointer_t<decltype(out_tag)>;
      LayerNormKernel<In, Out><<<static_cast<unsigned>(rows), RowThreads(width), 0, stream>>>(
          static_cast<const In*>(x), static_cast<Out*>(y), width, epsilon, weight, bias, scale, shift);
    });
  });
  ZCUDA_CHECK_LAUNCH();
}

void LaunchRmsNorm(const void* x, void* y, ElementType type, int64_t rows, int64_t width, const float* weight,
                   float epsilon, cudaStream_t stream) {
  if (rows == 0 || width == 0) return;
  ZCHECK(rows <= 0x7fffffff);
  const int row_threads = width % 4 == 0 ? RowKernelThreads(width / 4) : 0;
  if (type == ElementType::kBF16 && row_threads > 0 && Aligned16(x) && Aligned16(y) && Aligned16(weight)) {
    RmsNormRowKernel<<<static_cast<unsigned>(rows), row_threads, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(x), static_cast<__nv_bfloat16*>(y), static_cast<int>(width), weight, epsilon);
    ZCUDA_CHECK_LAUNCH();
    return;
  }
  DispatchType(type, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    RmsNormKernel<T><<<static_cast<unsigned>(rows), RowThreads(width), 0, stream>>>(
        static_cast<const T*>(x), static_cast<T*>(y), width, weight, epsilon);
  });
  ZCUDA_CHECK_LAUNCH();
}

void LaunchRope(void* x, ElementType type, int64_t tokens, int64_t heads, int64_t head_dim, const float* cos,
                const float* sin, cudaStream_t stream) {
  const int64_t count = tokens * heads * (head_dim / 2);
  if (count == 0) return;
  if (type == ElementType::kBF16 && head_dim % 8 == 0 && count / 4 <= 0x7fffffff && Aligned16(x) && Aligned16(cos) &&
      Aligned16(sin)) {
    const int chunks = static_cast<int>(count / 4);
    const int chunks_per_head = static_cast<int>(head_dim / 8);
    RopeBf16Kernel<<<GridFor(chunks), kThreads, 0, stream>>>(static_cast<__nv_bfloat16*>(x), chunks,
                                                             static_cast<int>(heads) * chunks_per_head, chunks_per_head,
                                                             static_cast<int>(head_dim / 2), cos, sin);
    ZCUDA_CHECK_LAUNCH();
    return;
  }
  DispatchType(type, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    RopeKernel<T><<<GridFor(count), kThreads, 0, stream>>>(static_cast<T*>(x), tokens, heads, head_dim / 2, cos, sin);
  });
  ZCUDA_CHECK_LAUNCH();
}

void LaunchPatchify(const void* latent, ElementType type, float* tokens, int64_t channels, int64_t frames,
                    int64_t height, int64_t width, int patch_t, int patch_h, int patch_w, cudaStream_t stream) {
  const int64_t count = channels * frames * height * width;
  if (count == 0) return;
  DispatchType(type, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    PatchifyKernel<T><<<GridFor(count), kThreads, 0, stream>>>(static_cast<const T*>(latent), tokens, channels, frames,
                                                                height, width, patch_t, patch_h, patch_w);
  });
  ZCUDA_CHECK_LAUNCH();
}

void LaunchUnpatchify(const void* tokens, ElementType type, float* latent, int64_t channels, int64_t grid_f,
                      int64_t grid_h, int64_t grid_w, int patch_t, int patch_h, int patch_w, cudaStream_t stream) {
  const int64_t count = channels * grid_f * grid_h * grid_w * patch_t * patch_h * patch_w;
  if (count == 0) return;
  DispatchType(type, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    UnpatchifyKernel<T><<<GridFor(count), kThreads, 0, stream>>>(static_cast<const T*>(tokens), latent, channels,
                                                                  grid_f, grid_h, grid_w, patch_t, patch_h, patch_w);
  });
  ZCUDA_CHECK_LAUNCH();
}

void LaunchIm2Col(const float* x, void* columns, ElementType columns_type, const ConvGeometry& geometry,
                  int64_t out_frame, int64_t row_begin, int64_t rows, cudaStream_t stream) {
  const int64_t count =
      geometry.in_channels * geometry.kernel_t * geometry.kernel_h * geometry.kernel_w * rows * geometry.out_width;
  if (count == 0) return;
  DispatchType(columns_type, [&](auto* tag) {
    using Out = std::remove_pointer_t<decltype(tag)>;
    Im2ColKernel<Out><<<GridFor(count), kThreads, 0, stream>>>(x, static_cast<Out*>(columns), geometry, out_frame,
                                                               row_begin, rows);
  });
  ZCUDA_CHECK_LAUNCH();
}

void LaunchSoftmaxRows(float* scores, int64_t rows, int64_t columns, float scale, cudaStream_t stream) {
  if (rows == 0 || columns == 0) return;
  ZCHECK(rows <= 0x7fffffff);
  SoftmaxRowsKernel<<<static_cast<unsigned>(rows), 256, 0, stream>>>(scores, columns, scale);
  ZCUDA_CHECK_LAUNCH();
}

void LaunchAddChannelBias(float* y, const float* bias, int64_t frames, int64_t channels, int64_t positions,
                          cudaStream_t stream) {
  const int64_t count = frames * channels * positions;
  if (count == 0) return;
  AddChannelBiasKernel<<<GridFor(count), kThreads, 0, stream>>>(y, bias, frames, channels, positions);
  ZCUDA_CHECK_LAUNCH();
}

void LaunchChannelRmsNorm(const float* x, float* y, const float* gamma, int64_t frames, int64_t channels,
                          int64_t positions, ActivationCode activation, cudaStream_t stream) {
  if (frames * positions == 0) return;
  ChannelRmsNormKernel<<<GridFor(frames * positions), kThreads, 0, stream>>>(x, y, gamma, frames, channels, positions,
                                                                             activation);
  ZCUDA_CHECK_LAUNCH();
}

void LaunchUpsampleNearest2x(const float* x, float* y, int64_t planes, int64_t height, int64_t width,
                             cudaStream_t stream) {
  const int64_t count = planes * height * width * 4;
  if (count == 0) return;
  UpsampleNearest2xKernel<<<GridFor(count), kThreads, 0, stream>>>(x, y, planes, height, width);
  ZCUDA_CHECK_LAUNCH();
}

void LaunchSwapAxes(const void* x, void* y, int element_bytes, int64_t batch, int64_t rows, int64_t columns,
                    int64_t inner, cudaStream_t stream) {
  const int64_t count = batch * rows * columns * inner;
  if (count == 0) return;
  const dim3 grid = GridFor(count);
  switch (element_bytes) {
    case 2:
      SwapAxesKernel<uint16_t><<<grid, kThreads, 0, stream>>>(static_cast<const uint16_t*>(x), static_cast<uint16_t*>(y),
                                                              batch, rows, columns, inner);
      break;
    case 4:
      SwapAxesKernel<uint32_t><<<grid, kThreads, 0, stream>>>(static_cast<const uint32_t*>(x), static_cast<uint32_t*>(y),
                                                              batch, rows, columns, inner);
      break;
    case 8:
      SwapAxesKernel<uint64_t><<<grid, kThreads, 0, stream>>>(static_cast<const uint64_t*>(x), static_cast<uint64_t*>(y),
                                                              batch, rows, columns, inner);
      break;
    default:
      ZCHECK_MSG(false, "SwapAxes element size " << element_bytes);
  }
  ZCUDA_CHECK_LAUNCH();
}

void LaunchClamp(const float* x, float* y, int64_t count, float minimum, float maximum, cudaStream_t stream) {
  if (count == 0) return;
  ClampKernel<<<GridFor(count), kThreads, 0, stream>>>(x, y, count, minimum, maximum);
  ZCUDA_CHECK_LAUNCH();
}

void LaunchGatherRows(const void* table, ElementType table_type, const int32_t* ids, void* output,
                      ElementType output_type, int64_t rows, int64_t width, cudaStream_t stream) {
  if (rows * width == 0) return;
  DispatchType(table_type, [&](auto* in_tag) {
    using In = std::remove_pointer_t<decltype(in_tag)>;
    DispatchType(output_type, [&](auto* out_tag) {
      using Out = std::remove_pointer_t<decltype(out_tag)>;
      GatherRowsKernel<In, Out><<<GridFor(rows * width), kThreads, 0, stream>>>(
          static_cast<const In*>(table), ids, static_cast<Out*>(output), rows, width);
    });
  });
  ZCUDA_CHECK_LAUNCH();
}

void LaunchAttentionWithBias(const void* q, const void* k, const void* v, const float* bias, void* o,
                             ElementType type, int64_t queries, int64_t keys, int64_t heads, int64_t head_dim,
                             float scale, cudaStream_t stream) {
  if (queries == 0 || heads == 0) return;
  ZCHECK(queries <= 0x7fffffff && heads <= 65535);
  const size_t shared_bytes = static_cast<size_t>(keys + head_dim) * sizeof(float);
  ZCHECK_MSG(shared_bytes <= 200 * 1024, "AttentionWithBias is for short sequences; " << keys << " keys");
  DispatchType(type, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    if (shared_bytes > 48 * 1024) {
      ZCUDA_CHECK(cudaFuncSetAttribute(AttentionWithBiasKernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(shared_bytes)));
    }
    AttentionWithBiasKernel<T><<<dim3(static_cast<unsigned>(queries), static_cast<unsigned>(heads)), 128, shared_bytes,
                                 stream>>>(static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
                                           bias, static_cast<T*>(o), queries, keys, heads, head_dim, scale);
  });
  ZCUDA_CHECK_LAUNCH();
}

void LaunchMultiply(const void* a, ElementType a_type, const void* b, ElementType b_type, void* output, int64_t count,
                    cudaStream_t stream) {
  if (count == 0) return;
  DispatchType(a_type, [&](auto* a_tag) {
    using A = std::remove_pointer_t<decltype(a_tag)>;
    DispatchType(b_type, [&](auto* b_tag) {
      using B = std::remove_pointer_t<decltype(b_tag)>;
      MultiplyKernel<A, B><<<GridFor(count), kThreads, 0, stream>>>(static_cast<const A*>(a), static_cast<const B*>(b),
                                                                     static_cast<A*>(output), count);
    });
  });
  ZCUDA_CHECK_LAUNCH();
}

}  // namespace zoetrope::cuda
