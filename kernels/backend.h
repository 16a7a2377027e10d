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

  // ---- video VAE -------------------------------------------------------------------------------
  // VAE activations are frame-major F32 [T, C, H, W] (each frame's channels contiguous), so a range of
  // frames is a Rows() view and frames concatenate by CopyInto. In this layout the upsample3d time_conv
  // output [T, 2C, H, W] *is* [2T, C, H, W] (channel half 0 -> frame 2t, half 1 -> frame 2t+1): a View,
  // no operator. All VAE weights are F32 on every backend (the reference runs the VAE in fp32).
  //
  // Stride-1 convolution with zero padding, dilation 1, no groups:
  //   y[t, o, i, j] = bias[o] + Σ_{c, a, p, q} weight[o, c, a, p, q] · xp[t + a, c, i + p, j + q]
  // where xp is x with `pad_front` zero frames before and `pad_back` zero frames after its T frames,
  // and `pad_height` zero rows above and below, `pad_width` zero columns left and right.
  // x: F32 [T, Cin, H, W]; weight: F32 [Cout, Cin, kt, kh, kw]; bias: F32 [Cout] or nullptr.
  // y: F32 [T + pad_front + pad_back − kt + 1, Cout, H + 2·pad_height − kh + 1, W + 2·pad_width − kw + 1];
  // every extent must be ≥ 1 and every padding ≥ 0. A causal conv is pad_front = kt − 1, pad_back = 0;
  // a 2D conv applied to every frame is kt = 1. The sum may be accumulated in any order in ≥ fp32.
  virtual Tensor Conv3d(const Tensor& x, const Tensor& weight, const Tensor* bias, int pad_front, int pad_back,
                        int pad_height, int pad_width) = 0;
  // The VAE's RMS_norm (F.normalize over channels), then an activation, at every frame and position:
  //   y[t, c, ...] = activation(x[t, c, ...] / max(‖x[t, :, ...]‖₂, 1e-12) · √C · gamma[c]).
  // x: F32 [T, C, ...] (rank ≥ 2; channels are dimension 1); gamma: F32 with C elements. y: x's shape, F32.
  virtual Tensor ChannelRmsNorm(const Tensor& x, const Tensor& gamma, Activation activation) = 0;
  // Nearest-neighbour ×2 in height and width (pixel duplication, = 'nearest-exact' at scale 2):
  // x F32 [T, C, H, W] -> y F32 [T, C, 2H, 2W], y[t, c, i, j] = x[t, c, i/2, j/2] (integer division).
  virtual Tensor UpsampleNearest2x(const Tensor& x) = 0;
  // Swaps the two middle axes of x viewed as [batch, rows, columns, inner] (its numel must equal the
  // product; its own shape is ignored): y[b, c, r, i] = x[b, r, c, i], shape [batch, columns, rows, inner],
  // x's dtype. Used for [C, F, H·W] <-> [F, C, H·W] (latent to frame-major) and per-frame
  // [C, H·W] <-> [H·W, C] (channel planes to attention tokens).
  virtual Tensor SwapAxes(const Tensor& x, int64_t batch, int64_t rows, int64_t columns, int64_t inner) = 0;
  // y = min(max(x, minimum), maximum) element-wise, F32 -> F32 of the same shape; NaN stays NaN.
  virtual Tensor Clamp(const Tensor& x, float minimum, float maximum) = 0;

  // ---- text encoder ----------------------------------------------------------------------------
  // Used by the umT5 encoder (worker/engine/umt5_encoder.cc). Sequences are short there (≤ 512 tokens).
  //
  // Row gather (embedding lookup): out[n, :] = table[ids[n], :].
  // table: [V, D], F32, BF16 or F16. ids: I32 [N] on this device (N ≥ 0; Upload(host, DType::kI32)
  // copies an integer host tensor unchanged), every id in [0, V) (callers validate; an id outside is a
  // programming error). out: [N, D] in `out_dtype` (F32, BF16 or F16), each value converted from the
  // table's dtype exactly as Cast converts it (F32 from BF16 is exact; to BF16 rounds to nearest even).
  // The encoder gathers token embeddings (D = d_model) and builds its attention bias with D = 1.
  virtual Tensor GatherRows(const Tensor& table, const Tensor& ids, DType out_dtype) = 0;
  // Attention with an additive bias, no causal mask, no block sparsity:
  //   o[i, h, :] = Σ_j p[h, i, j] · v[j, h, :],  p[h, i, :] = softmax_j(scale · q[i, h, :]·k[j, h, :] + bias[h, i, j])
  // q: [Lq, H, d]; k, v: [Lk, H, d] (F32, BF16 or F16, one dtype for the three); bias: F32 [H, Lq, Lk],
  // contiguous, head-major. o: [Lq, H, d] in q's dtype. T5 passes scale = 1 (no 1/√d).
  // Logits, bias addition and softmax in fp32: subtract the row maximum before exponentiating and sum
  // in fp32 or wider. Masking is in the bias: masked keys carry the lowest finite float (−3.4028235e38,
  // the reference's finfo.min fill), which must give them weight exactly 0 without overflow or NaN
  // when the row has any other key; −inf is also allowed (weight 0), and a row whose logits are all −inf
  // yields o = 0. Lq or Lk may be 1; Lq = 0 gives an empty o.
  virtual Tensor AttentionWithBias(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                                   float scale) = 0;
  // Element-wise product out = a ⊙ b. a and b have the same shape (F32, BF16 or F16, dtypes may differ);
  // each product is formed in fp32 and stored in a's dtype (the gated FFN: fc1(h) ⊙ GELU(gate(h))).
  virtual Tensor Multiply(const Tensor& a, const Tensor& b) = 0;

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
