// The operator interface: every numerical operation the engine performs goes through a Backend.
//
// One model code path runs on every backend (llama.cpp/ggml style). The CPU backend (fp32, the
// reference, runs in CI) and the CUDA backend (bf16 tensor cores, fp32 accumulation) implement the same
// calls with the same shapes; only the dtypes of activations differ, as `compute_dtype()` says.
//
// Contracts common to every call:
//  * All tensors are contiguous and live on `device()`. Shapes are listed as [rows, columns] etc.
//  * Calls are asynchronous on backends that have a stream (one stream per device); a result is safe
//    to read on the host only after `ToHost`, which synchronises.
//  * Returned tensors are fresh allocations from the backend's allocator (the CUDA backend caches
//    them, so a steady-state denoising step allocates no device memory).
//  * Shape errors here are programming errors (ZCHECK): callers validate user input first.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kernels/tensor.h"

namespace zoetrope {

enum class Activation { kNone, kGeluTanh, kSilu };

// Which blocks of keys each query block visits (CSR). Dense attention is `nullptr` (every block).
// row_offsets: I32 [groups, num_query_blocks + 1]; column_indices: I32 [groups, max_entries] where row r
// of group g lists key blocks column_indices[g, row_offsets[g, r] .. row_offsets[g, r+1]).
// `groups` is 1 (shared by all heads) or the head count (one layout per head).
struct BlockSparseLayout {
  int query_block = 128;
  int key_block = 128;
  Tensor row_offsets;
  Tensor column_indices;
};

// y = LayerNorm(x) * (1 + scale) + shift, or with affine parameters LayerNorm(x) * weight + bias.
// Every parameter is optional (undefined Tensor = absent); all are F32 [D].
struct NormParams {
  float epsilon = 1e-6f;
  Tensor weight;
  Tensor bias;
  Tensor scale;  // modulation: multiplies by (1 + scale)
  Tensor shift;
};

// One term of a linear combination: coefficient * tensor.
struct Term {
  double coefficient;
  const Tensor* tensor;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual Device device() const = 0;
  virtual std::string name() const = 0;
  // dtype of the large matmul weights and of activations between them (CPU: F32, CUDA: BF16).
  // The residual stream, norms, modulation and time embeddings stay F32 on every backend.
  virtual DType compute_dtype() const = 0;

  // ---- memory --------------------------------------------------------------------------------
  virtual Tensor Empty(const Shape& shape, DType dtype) = 0;
  // Copies a host tensor (F32, BF16 or F16) to this device, converting it to `dtype`.
  virtual Tensor Upload(const Tensor& host_tensor, DType dtype) = 0;
  // Copies a tensor of this device to a new host tensor of the same dtype. Synchronises.
  virtual Tensor ToHost(const Tensor& tensor) = 0;
  // Converts dtype (or copies when equal).
  virtual Tensor Cast(const Tensor& tensor, DType dtype) = 0;
  // dst and src have the same element count; dtype converted. dst may be a Rows() view.
  virtual void CopyInto(const Tensor& destination, const Tensor& source) = 0;
  virtual void Synchronize() = 0;

  // ---- dense algebra -------------------------------------------------------------------------
  // y[N, out] = activation(x[N, in] · weight[out, in]ᵀ + bias[out]).
  // x may be any float dtype; the product runs in weight's dtype with fp32 accumulation, and y has
  // weight's dtype (autocast semantics: bf16 weights give bf16 activations, F32 weights give F32).
  virtual Tensor Linear(const Tensor& x, const Tensor& weight, const Tensor* bias, Activation activation) = 0;
  // Element-wise activation, same shape and dtype.
  virtual Tensor Activate(const Tensor& x, Activation activation) = 0;
  // F32 result = Σ coefficient_i · tensor_i, all tensors of one shape (any float dtypes).
  virtual Tensor Combine(const std::vector<Term>& terms) = 0;
  // x[N, D] (F32) += y[N, D] * gate[D] (gate F32, or nullptr for 1).
  virtual void AddGated(const Tensor& x, const Tensor& y, const Tensor* gate) = 0;

  // ---- normalisation -------------------------------------------------------------------------
  // Over the last dimension D of x[N, D]; statistics in fp32; output dtype `out_dtype`.
  virtual Tensor LayerNorm(const Tensor& x, const NormParams& params, DType out_dtype) = 0;
  // y = x · rsqrt(mean(x²) + epsilon) · weight over the last dimension of x[N, D]; output x's dtype.
  virtual Tensor RmsNorm(const Tensor& x, const Tensor& weight, float epsilon) = 0;

  // ---- attention and positions ---------------------------------------------------------------
  // In place, interleaved pairs: x[N, H, d] with cos, sin F32 [N, d/2]; pair p of every head rotates
  // (x[2p], x[2p+1]) by the angle whose cos/sin are given for that token.
  virtual void ApplyRope(const Tensor& x, const Tensor& cos, const Tensor& sin) = 0;
  // o[Lq, H, d] = softmax(q kᵀ · scale) v per head, no causal mask, keys [Lk, H, d]. Partial blocks at
  // the end are masked inside the kernel. `layout` restricts the visited key blocks (nullptr = dense).
  virtual Tensor Attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                           const BlockSparseLayout* layout) = 0;

  // ---- layout ----------------------------------------------------------------------------------
  // latent[C, F, H, W] -> tokens[(F/pt)(H/ph)(W/pw), C·pt·ph·pw], column = ((c·pt + t)·ph + y)·pw + x,
  // tokens frame-major. Output F32.
  virtual Tensor Patchify(const Tensor& latent, int patch_t, int patch_h, int patch_w) = 0;
  // tokens[L, pt·ph·pw·C] (column = ((t·ph + y)·pw + x)·C + c) -> latent[C, F, H, W] F32 with
  // F = grid_f·pt etc. Inverse layout of the Wan head (channel-minor).
  virtual Tensor Unpatchify(const Tensor& tokens, int channels, int grid_f, int grid_h, int grid_w, int patch_t,
                            int patch_h, int patch_w) = 0;
};

}  // namespace zoetrope
