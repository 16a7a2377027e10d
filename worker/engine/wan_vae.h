// The Wan2.1 video VAE decoder (spec/wan21.md §3.2, §3.4, §5), written once over the Backend operator
// interface: the same code runs on the CPU reference backend and on the CUDA backend.
//
// Activation layout: frame-major F32 [T, C, H, W]. Frames are contiguous, so a temporal chunk and a
// conv's feature cache are Rows() ranges, frames concatenate by CopyInto, and the upsample3d
// channel-to-frame interleave is a View ([T, 2C, H, W] is [2T, C, H, W]). The latent comes in as the
// DiT produces it, [z_dim, F, Hl, Wl], and is swapped to frame-major once.
//
// Decoding is chunked in time with a per-conv feature cache (§5.5): `chunk_frames` latent frames per
// chunk (1 = the reference algorithm, 0 = the whole sequence at once). Every k3 causal conv keeps the
// last 2 frames of its input, and each upsample3d remembers whether it has seen the video's first frame
// (which skips time_conv). The result does not depend on the chunk size (§5.5 "full-sequence
// equivalent"); the memory does. A chunk of k latent frames carries 4k frames (1 + 4(k − 1) in the
// first chunk) at full resolution, and the caches hold 2 frames per cached conv whatever k is. For the
// released VAE at 480p (latent 60×104) with k = 1 the peak is ≈ 6.2 GB of activations: ≈ 3.8 GB of
// caches plus ≈ 2.5 GB live inside a full-resolution 96-channel conv (measured on CPU at 1/16 and 1/4
// of the area, extrapolated linearly); Decode's output buffer adds 0.39 GB, DecodeStreaming does not.
//
// All VAE weights are F32 on every backend (the reference runs the VAE in fp32). Not thread-safe: one
// WanVae per device thread.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "worker/engine/safetensors.h"
#include "worker/engine/wan_config.h"

namespace zoetrope {

struct WanVaeConfig {
  std::string name = "custom";
  int64_t dim = 96;    // base width; decoder widths are dim · [4, 4, 4, 2, 1]
  int64_t z_dim = 16;  // latent channels
  std::vector<int64_t> dim_mult = {1, 2, 4, 4};
  int64_t num_res_blocks = 2;                                 // the decoder has num_res_blocks + 1 per stage
  std::vector<bool> temporal_upsample = {true, true, false};  // per upsampling stage: upsample3d or 2d
  // Latent de-normalisation z·std + mean per channel (§5.2); z_dim values each.
  std::vector<double> latent_mean;
  std::vector<double> latent_std;

  absl::Status Validate() const;
  // Decoder widths [dims0 .. dims_n]: dim · ([dim_mult.back()] + reversed dim_mult).
  std::vector<int64_t> DecoderDims() const;
  int64_t spatial_scale() const { return int64_t{1} << (dim_mult.size() - 1); }  // 8
  int64_t temporal_scale() const;                                                // 4
  // 1 + temporal_scale·(F − 1): 21 latent frames give 81.
  int64_t OutputFrames(int64_t latent_frames) const { return 1 + temporal_scale() * (latent_frames - 1); }
};

// Presets: "wan2.1-vae" (the released Wan2.1_VAE, dim 96) and "tiny" (same structure, dim 8).
absl::StatusOr<WanVaeConfig> WanVaeConfigByName(const std::string& name);
std::vector<std::string> WanVaeConfigNames();

// One decoder parameter (plus the post-quant conv) under both namings.
struct WanVaeParameterSpec {
  std::string name;            // original `Wan2.1_VAE.pth` key (§3.2)
  std::string diffusers_name;  // `AutoencoderKLWan` key (§3.4)
  Shape shape;
};
std::vector<WanVaeParameterSpec> WanVaeDecoderParameters(const WanVaeConfig& config);
// Diffusers when `post_quant_conv.weight` or `decoder.conv_in.weight` is present, else original.
WeightNaming DetectWanVaeNaming(const WeightSource& source);

struct WanVaeConv {
  Tensor weight;  // F32 [Cout, Cin, kt, kh, kw] (2D convs are stored with kt = 1)
  Tensor bias;    // F32 [Cout]
};

struct WanVaeResidualBlock {
  Tensor norm1_gamma, norm2_gamma;     // F32 [Cin], [Cout]
  WanVaeConv conv1, conv2;             // causal 3×3×3: Cin -> Cout, Cout -> Cout
  std::optional<WanVaeConv> shortcut;  // 1×1×1 when Cin != Cout
};

struct WanVaeAttentionBlock {
  Tensor norm_gamma;              // F32 [C]
  Tensor qkv_weight, qkv_bias;    // F32 [3C, C], [3C]: rows [0,C) q, [C,2C) k, [2C,3C) v
  Tensor proj_weight, proj_bias;  // F32 [C, C], [C]
};

struct WanVaeUpsample {
  std::optional<WanVaeConv> time_conv;  // upsample3d only: causal (3,1,1), C -> 2C
  WanVaeConv spatial_conv;              // 3×3 (kt = 1), C -> C/2, after nearest ×2
};

struct WanVaeStage {
  std::vector<WanVaeResidualBlock> blocks;
  std::optional<WanVaeUpsample> upsample;  // absent on the last stage
};

struct WanVaeWeights {
  // `conv2` with the latent de-normalisation folded in: W·(z·std + mean) + b = (W·diag(std))·z + (W·mean + b).
  WanVaeConv post_quant;
  WanVaeConv conv_in;
  WanVaeResidualBlock middle_first, middle_second;
  WanVaeAttentionBlock middle_attention;
  std::vector<WanVaeStage> stages;
  Tensor head_gamma;  // F32 [dims_n]
  WanVaeConv head_conv;
};

// Reads the decoder of `config` (and `conv2`) from `source` in either naming; other keys (the encoder)
// are ignored. Errors name the file, the key, and the expected against the found shape or dtype.
absl::StatusOr<WanVaeWeights> LoadWanVaeWeights(const WeightSource& source, const WanVaeConfig& config,
                                                Backend& backend);

class WanVae {
 public:
  // `weights_path`: a .safetensors file, index.json or directory (see WeightSource). `config_name` picks
  // a preset; empty infers the base width and z_dim from the conv_in weight (the structure of Wan2.1).
  static absl::StatusOr<std::unique_ptr<WanVae>> Load(const std::string& weights_path, Backend& backend,
                                                      const std::string& config_name = "");
  WanVae(WanVaeConfig config, WanVaeWeights weights, Backend& backend);

  const WanVaeConfig& config() const { return config_; }

  // The latent must be [z_dim, F ≥ 1, Hl ≥ 1, Wl ≥ 1].
  absl::Status ValidateLatentShape(const Shape& latent_shape) const;

  // latent: host or device tensor [z_dim, F, Hl, Wl] (F32, BF16 or F16), in the DiT's normalised space.
  // Returns the video F32 [OutputFrames(F), 3, 8·Hl, 8·Wl] on the backend's device, frame-major, RGB,
  // clamped to [−1, 1]. `chunk_frames` latent frames are decoded per chunk (0 = all at once).
  absl::StatusOr<Tensor> Decode(const Tensor& latent, int64_t chunk_frames = 1);
  // The same decode, handing each chunk's frames F32 [n, 3, H, W] (device, clamped) to `sink` together
  // with the index of its first frame, so the full video never has to be held. A sink error stops it.
  absl::Status DecodeStreaming(const Tensor& latent, int64_t chunk_frames,
                               const std::function<absl::Status(const Tensor& frames, int64_t first_frame)>& sink);

 private:
  // Per-slot state carried between chunks: slots are the cached convs in visiting order (conv_in, two
  // per residual block, one per time_conv, the head conv; 32 for Wan2.1).
  struct CacheSlot {
    Tensor frames;         // up to the last kt − 1 = 2 frames of this conv's input (undefined = none yet)
    bool started = false;  // upsample3d: the video's first frame has gone by
  };
  struct DecodeState {
    std::vector<CacheSlot> slots;
    size_t next = 0;  // slot of the next cached conv within the current chunk
    CacheSlot& Next();
  };

  Tensor DecodeChunk(const Tensor& x, DecodeState& state);
  // Takes `x` by value so that its memory can be released before the conv runs.
  Tensor CausalConv(Tensor x, const WanVaeConv& conv, CacheSlot& slot);
  Tensor ResidualBlock(const Tensor& x, const WanVaeResidualBlock& block, DecodeState& state);
  Tensor AttentionBlock(const Tensor& x, const WanVaeAttentionBlock& block);
  Tensor Upsample(const Tensor& x, const WanVaeUpsample& upsample, DecodeState& state);
  Tensor ConcatFrames(const Tensor& first, const Tensor& second);

  WanVaeConfig config_;
  WanVaeWeights weights_;
  Backend& backend_;
};

}  // namespace zoetrope
