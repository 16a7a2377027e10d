// Launchers of the CUDA backend's element-wise, normalisation and layout kernels. Plain pointers and
// sizes only (no Tensor), so the host side (cuda_backend.cc) stays ordinary C++. Every launcher only
// enqueues work on `stream`; shapes were validated by the caller (the Backend contracts).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace zoetrope::cuda {

// Floating-point element types the kernels read and write (F32, BF16 and F16 of DType).
enum class ElementType : int { kF32 = 0, kBF16 = 1, kF16 = 2 };
// Activation codes, equal to zoetrope::Activation's order: none, GELU (tanh), SiLU.
enum class ActivationCode : int { kNone = 0, kGeluTanh = 1, kSilu = 2 };

// Largest host payload LaunchWriteBytes carries in one kernel's parameters.
inline constexpr size_t kParameterPayloadBytes = 3968;

// Writes `bytes` (≤ kParameterPayloadBytes) of host data to `destination` through kernel parameters:
// an upload that neither synchronises nor needs pinned memory.
void LaunchWriteBytes(void* destination, const void* host_bytes, size_t bytes, cudaStream_t stream);

void LaunchCast(const void* input, ElementType input_type, void* output, ElementType output_type, int64_t count,
                cudaStream_t stream);
void LaunchActivate(const void* input, void* output, ElementType type, int64_t count, ActivationCode activation,
                    cudaStream_t stream);
// y[rows, columns] = activation(y + bias[column]) in place; bias may be null.
void LaunchBiasActivation(void* y, ElementType type, const float* bias, int64_t rows, int64_t columns,
                          ActivationCode activation, cudaStream_t stream);

inline constexpr int kMaxCombineTerms = 8;
struct CombineTerm {
  const void* data = nullptr;
  ElementType type = ElementType::kF32;
  float coefficient = 0.0f;
};
// out[i] = (accumulate ? out[i] : 0) + Σ coefficient·term[i], count ≤ kMaxCombineTerms terms.
void LaunchCombine(const CombineTerm* terms, int term_count, float* output, int64_t count, bool accumulate,
                   cudaStream_t stream);
// x[rows, width] += y · gate[column] (gate may be null = 1).
void LaunchAddGated(float* x, const void* y, ElementType y_type, const float* gate, int64_t rows, int64_t width,
                    cudaStream_t stream);

// LayerNorm over the last dimension with optional affine (weight, bias) and modulation (scale, shift);
// any parameter pointer may be null. Statistics in fp32, two passes over the row.
void LaunchLayerNorm(const void* x, ElementType input_type, void* y, ElementType output_type, int64_t rows,
                     int64_t width, float epsilon, const float* weight, const float* bias, const float* scale,
                     const float* shift, cudaStream_t stream);
void LaunchRmsNorm(const void* x, void* y, ElementType type, int64_t rows, int64_t width, const float* weight,
                   float epsilon, cudaStream_t stream);
// In place on x[tokens, heads, head_dim], interleaved pairs, cos/sin F32 [tokens, head_dim/2].
void LaunchRope(void* x, ElementType type, int64_t tokens, int64_t heads, int64_t head_dim, const float* cos,
                const float* sin, cudaStream_t stream);

void LaunchPatchify(const void* latent, ElementType type, float* tokens, int64_t channels, int64_t frames,
                    int64_t height, int64_t width, int patch_t, int patch_h, int patch_w, cudaStream_t stream);
void LaunchUnpatchify(const void* tokens, ElementType type, float* latent, int64_t channels, int64_t grid_f,
                      int64_t grid_h, int64_t grid_w, int patch_t, int patch_h, int patch_w, cudaStream_t stream);

// ---- video VAE ----
struct ConvGeometry {
  int64_t frames, in_channels, height, width;  // input [T, Cin, H, W]
  int64_t kernel_t, kernel_h, kernel_w;
  int64_t pad_front, pad_height, pad_width;
  int64_t out_height, out_width;
};
// columns[K, rows·out_width] for output frame `out_frame`, output rows [row_begin, row_begin + rows),
// K index = ((c·kt + a)·kh + p)·kw + q (the flattened weight's column), zero outside the padded input.
// `columns_type` is F32 (fp32 and TF32 products) or BF16 (bf16 tensor-core products; each value rounded
// to nearest even).
void LaunchIm2Col(const float* x, void* columns, ElementType columns_type, const ConvGeometry& geometry,
                  int64_t out_frame, int64_t row_begin, int64_t rows, cudaStream_t stream);
// y[t, c, position] += bias[c].
void LaunchAddChannelBias(float* y, const float* bias, int64_t frames, int64_t channels, int64_t positions,
                          cudaStream_t stream);
void LaunchChannelRmsNorm(const float* x, float* y, const float* gamma, int64_t frames, int64_t channels,
                          int64_t positions, ActivationCode activation, cudaStream_t stream);
void LaunchUpsampleNearest2x(const float* x, float* y, int64_t planes, int64_t height, int64_t width,
                             cudaStream_t stream);
void LaunchSwapAxes(const void* x, void* y, int element_bytes, int64_t batch, int64_t rows, int64_t columns,
                    int64_t inner, cudaStream_t stream);
void LaunchClamp(const float* x, float* y, int64_t count, float minimum, float maximum, cudaStream_t stream);
// In place on F32 scores[rows, columns]: each row becomes softmax(scale · row) (row maximum subtracted,
// sums in fp32). One tile of the tiled attention for head widths the flash kernel is not built for.
void LaunchSoftmaxRows(float* scores, int64_t rows, int64_t columns, float scale, cudaStream_t stream);

// ---- text encoder ----
// out[n, :] = table[ids[n], :] converted to output_type.
void LaunchGatherRows(const void* table, ElementType table_type, const int32_t* ids, void* output,
                      ElementType output_type, int64_t rows, int64_t width, cudaStream_t stream);
// Short-sequence attention with an additive F32 bias [H, Lq, Lk] (T5), fp32 logits and softmax; one
// thread block per (query, head). q, k, v, o share `type`; all [L, H, d] contiguous.
void LaunchAttentionWithBias(const void* q, const void* k, const void* v, const float* bias, void* o,
                             ElementType type, int64_t queries, int64_t keys, int64_t heads, int64_t head_dim,
                             float scale, cudaStream_t stream);
// out = a ⊙ b (out in a's type).
void LaunchMultiply(const void* a, ElementType a_type, const void* b, ElementType b_type, void* output, int64_t count,
                    cudaStream_t stream);

}  // namespace zoetrope::cuda
