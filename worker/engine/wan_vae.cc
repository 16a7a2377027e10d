#include "worker/engine/wan_vae.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/engine/config_presets.h"

namespace zoetrope {
namespace {

// spec §5.2 (WanVAE.__init__; the diffusers latents_mean/std defaults are identical).
const std::vector<double>& LatentMean() {
  static const auto* mean =
      new std::vector<double>{-0.7571, -0.7089, -0.9113, 0.1075,  -0.1745, 0.9653,  -0.1517, 1.5508,
                              0.4134,  -0.0715, 0.5517,  -0.3632, -0.1922, -0.9497, 0.2503,  -0.2921};
  return *mean;
}
const std::vector<double>& LatentStd() {
  static const auto* std_values =
      new std::vector<double>{2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160};
  return *std_values;
}

WanVaeConfig Wan21Vae() {
  WanVaeConfig config;
  config.name = "wan2.1-vae";
  config.latent_mean = LatentMean();
  config.latent_std = LatentStd();
  return config;
}

WanVaeConfig TinyVae() {
  WanVaeConfig config = Wan21Vae();
  config.name = "tiny";
  config.dim = 8;
  return config;
}

constexpr ConfigPreset<WanVaeConfig> kPresets[] = {{"tiny", TinyVae}, {"wan2.1-vae", Wan21Vae}};

// Collects parameter specs under both namings.
class ParameterList {
 public:
  void Add(const std::string& original, const std::string& diffusers, Shape shape) {
    specs_.push_back({original, diffusers, std::move(shape)});
  }
  void AddConv(const std::string& original, const std::string& diffusers, Shape weight_shape) {
    const int64_t out = weight_shape[0];
    Add(original + ".weight", diffusers + ".weight", std::move(weight_shape));
    Add(original + ".bias", diffusers + ".bias", {out});
  }
  // ResidualBlock: residual.{0: RMS γ, 2: conv a, 3: RMS γ, 6: conv b}, shortcut; diffusers
  // norm1/conv1/norm2/conv2/conv_shortcut.
  void AddResidualBlock(const std::string& original, const std::string& diffusers, int64_t in, int64_t out) {
    Add(original + ".residual.0.gamma", diffusers + ".norm1.gamma", {in, 1, 1, 1});
    AddConv(original + ".residual.2", diffusers + ".conv1", {out, in, 3, 3, 3});
    Add(original + ".residual.3.gamma", diffusers + ".norm2.gamma", {out, 1, 1, 1});
    AddConv(original + ".residual.6", diffusers + ".conv2", {out, out, 3, 3, 3});
    if (in != out) AddConv(original + ".shortcut", diffusers + ".conv_shortcut", {out, in, 1, 1, 1});
  }
  std::vector<WanVaeParameterSpec> Take() { return std::move(specs_); }

 private:
  std::vector<WanVaeParameterSpec> specs_;
};

}  // namespace

absl::Status WanVaeConfig::Validate() const {
  if (dim < 1 || z_dim < 1 || num_res_blocks < 0 || dim_mult.size() < 2 ||
      temporal_upsample.size() != dim_mult.size() - 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "VAE config ", name, ": dim and z_dim must be positive, dim_mult needs ≥ 2 entries and temporal_upsample ",
        "one per upsampling stage (", dim_mult.size() - 1, "), got ", temporal_upsample.size()));
  }
  for (int64_t width : DecoderDims()) {
    if (width < 2 || width % 2 != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("VAE config ", name, ": decoder widths must be even (upsampling halves them), got ", width));
    }
  }
  if (static_cast<int64_t>(latent_mean.size()) != z_dim || static_cast<int64_t>(latent_std.size()) != z_dim) {
    return absl::InvalidArgumentError(absl::StrCat("VAE config ", name,
                                                   ": latent_mean and latent_std need z_dim = ", z_dim, " values, got ",
                                                   latent_mean.size(), " and ", latent_std.size()));
  }
  return absl::OkStatus();
}

std::vector<int64_t> WanVaeConfig::DecoderDims() const {
  std::vector<int64_t> dims = {dim * dim_mult.back()};
  for (auto it = dim_mult.rbegin(); it != dim_mult.rend(); ++it) dims.push_back(dim * *it);
  return dims;
}

int64_t WanVaeConfig::temporal_scale() const {
  int64_t scale = 1;
  for (bool temporal : temporal_upsample) scale *= temporal ? 2 : 1;
  return scale;
}

absl::StatusOr<WanVaeConfig> WanVaeConfigByName(const std::string& name) {
  return FindPreset(kPresets, name, "VAE config");
}

std::vector<std::string> WanVaeConfigNames() { return PresetNames(kPresets); }

std::vector<WanVaeParameterSpec> WanVaeDecoderParameters(const WanVaeConfig& config) {
  const std::vector<int64_t> dims = config.DecoderDims();
  const int64_t z = config.z_dim;
  ParameterList list;
  list.AddConv("conv2", "post_quant_conv", {z, z, 1, 1, 1});
  list.AddConv("decoder.conv1", "decoder.conv_in", {dims[0], z, 3, 3, 3});
  list.AddResidualBlock("decoder.middle.0", "decoder.mid_block.resnets.0", dims[0], dims[0]);
  list.Add("decoder.middle.1.norm.gamma", "decoder.mid_block.attentions.0.norm.gamma", {dims[0], 1, 1});
  list.AddConv("decoder.middle.1.to_qkv", "decoder.mid_block.attentions.0.to_qkv", {3 * dims[0], dims[0], 1, 1});
  list.AddConv("decoder.middle.1.proj", "decoder.mid_block.attentions.0.proj", {dims[0], dims[0], 1, 1});
  list.AddResidualBlock("decoder.middle.2", "decoder.mid_block.resnets.1", dims[0], dims[0]);
  int upsample_index = 0;  // the original names number blocks and resamplers in one sequence
  const int stages = static_cast<int>(dims.size()) - 1;
  for (int stage = 0; stage < stages; ++stage) {
    int64_t in = stage == 0 ? dims[0] : dims[stage] / 2;  // the previous resampler halved the width
    const int64_t out = dims[stage + 1];
    const std::string diffusers_stage = absl::StrCat("decoder.up_blocks.", stage);
    for (int block = 0; block <= config.num_res_blocks; ++block) {
      list.AddResidualBlock(absl::StrCat("decoder.upsamples.", upsample_index++),
                            absl::StrCat(diffusers_stage, ".resnets.", block), in, out);
      in = out;
    }
    if (stage + 1 < stages) {
      const std::string original = absl::StrCat("decoder.upsamples.", upsample_index++);
      const std::string diffusers = diffusers_stage + ".upsamplers.0";
      list.AddConv(original + ".resample.1", diffusers + ".resample.1", {out / 2, out, 3, 3});
      if (config.temporal_upsample[stage]) {
        list.AddConv(original + ".time_conv", diffusers + ".time_conv", {2 * out, out, 3, 1, 1});
      }
    }
  }
  list.Add("decoder.head.0.gamma", "decoder.norm_out.gamma", {dims.back(), 1, 1, 1});
  list.AddConv("decoder.head.2", "decoder.conv_out", {3, dims.back(), 3, 3, 3});
  return list.Take();
}

WeightNaming DetectWanVaeNaming(const WeightSource& source) {
  return source.Contains("post_quant_conv.weight") || source.Contains("decoder.conv_in.weight")
             ? WeightNaming::kDiffusers
             : WeightNaming::kOriginal;
}

absl::StatusOr<WanVaeWeights> LoadWanVaeWeights(const WeightSource& source, const WanVaeConfig& config,
                                                Backend& backend) {
  if (absl::Status valid = config.Validate(); !valid.ok()) return valid;
  const WeightNaming naming = DetectWanVaeNaming(source);
  std::map<std::string, Tensor> host;  // by original name: F32 mapped views, or F32 copies of BF16/F16
  for (const WanVaeParameterSpec& spec : WanVaeDecoderParameters(config)) {
    const std::string& key = naming == WeightNaming::kDiffusers ? spec.diffusers_name : spec.name;
    if (!source.Contains(key)) {
      return absl::NotFoundError(absl::StrCat(source.description(), ": missing VAE tensor \"", key,
                                              "\" (expected shape ", ShapeToString(spec.shape), ", config ",
                                              config.name, ")"));
    }
    absl::StatusOr<Tensor> tensor = source.Get(key);
    if (!tensor.ok()) return tensor.status();
    if (tensor->shape() != spec.shape) {
      return absl::InvalidArgumentError(absl::StrCat(source.FileOf(key), ": VAE tensor \"", key, "\" has shape ",
                                                     ShapeToString(tensor->shape()), ", expected ",
                                                     ShapeToString(spec.shape), " for config ", config.name));
    }
    if (tensor->dtype() != DType::kF32 && tensor->dtype() != DType::kBF16 && tensor->dtype() != DType::kF16) {
      return absl::InvalidArgumentError(absl::StrCat(source.FileOf(key), ": VAE tensor \"", key, "\" has dtype ",
                                                     DTypeName(tensor->dtype()), ", expected F32, BF16 or F16"));
    }
    host[spec.name] = tensor->dtype() == DType::kF32 ? *tensor : ConvertHost(*tensor, DType::kF32);
  }
  auto upload = [&](const std::string& name, Shape shape) {
    return backend.Upload(host.at(name).View(std::move(shape)), DType::kF32);
  };
  auto conv = [&](const std::string& name) {
    const Tensor& weight = host.at(name + ".weight");
    Shape shape = weight.shape();
    if (shape.size() == 4) shape.insert(shape.begin() + 2, 1);  // Conv2d [O, I, kh, kw] -> kt = 1
    return WanVaeConv{upload(name + ".weight", shape), upload(name + ".bias", {shape[0]})};
  };
  auto residual_block = [&](const std::string& name) {
    WanVaeResidualBlock block;
    const Tensor& gamma1 = host.at(name + ".residual.0.gamma");
    const Tensor& gamma2 = host.at(name + ".residual.3.gamma");
    block.norm1_gamma = upload(name + ".residual.0.gamma", {gamma1.dim(0)});
    block.norm2_gamma = upload(name + ".residual.3.gamma", {gamma2.dim(0)});
    block.conv1 = conv(name + ".residual.2");
    block.conv2 = conv(name + ".residual.6");
    if (host.count(name + ".shortcut.weight") != 0) block.shortcut = conv(name + ".shortcut");
    return block;
  };

  WanVaeWeights weights;
  {
    // Fold z·std + mean into conv2 (in double, once): exact in real arithmetic, and it saves a pass over
    // the latent on every backend.
    const int64_t z = config.z_dim;
    const float* w = host.at("conv2.weight").data<float>();
    const float* b = host.at("conv2.bias").data<float>();
    std::vector<float> folded_weight(static_cast<size_t>(z * z));
    std::vector<float> folded_bias(static_cast<size_t>(z));
    for (int64_t o = 0; o < z; ++o) {
      double bias = b[o];
      for (int64_t c = 0; c < z; ++c) {
        folded_weight[o * z + c] = static_cast<float>(static_cast<double>(w[o * z + c]) * config.latent_std[c]);
        bias += static_cast<double>(w[o * z + c]) * config.latent_mean[c];
      }
      folded_bias[o] = static_cast<float>(bias);
    }
    weights.post_quant.weight = backend.Upload(HostTensorFromFloats(folded_weight, {z, z, 1, 1, 1}), DType::kF32);
    weights.post_quant.bias = backend.Upload(HostTensorFromFloats(folded_bias, {z}), DType::kF32);
  }
  const std::vector<int64_t> dims = config.DecoderDims();
  weights.conv_in = conv("decoder.conv1");
  weights.middle_first = residual_block("decoder.middle.0");
  weights.middle_second = residual_block("decoder.middle.2");
  const int64_t width = dims[0];
  weights.middle_attention.norm_gamma = upload("decoder.middle.1.norm.gamma", {width});
  weights.middle_attention.qkv_weight = upload("decoder.middle.1.to_qkv.weight", {3 * width, width});
  weights.middle_attention.qkv_bias = upload("decoder.middle.1.to_qkv.bias", {3 * width});
  weights.middle_attention.proj_weight = upload("decoder.middle.1.proj.weight", {width, width});
  weights.middle_attention.proj_bias = upload("decoder.middle.1.proj.bias", {width});
  int upsample_index = 0;
  const int stages = static_cast<int>(dims.size()) - 1;
  for (int stage = 0; stage < stages; ++stage) {
    WanVaeStage loaded;
    for (int block = 0; block <= config.num_res_blocks; ++block) {
      loaded.blocks.push_back(residual_block(absl::StrCat("decoder.upsamples.", upsample_index++)));
    }
    if (stage + 1 < stages) {
      const std::string name = absl::StrCat("decoder.upsamples.", upsample_index++);
      WanVaeUpsample upsample;
      upsample.spatial_conv = conv(name + ".resample.1");
      if (config.temporal_upsample[stage]) upsample.time_conv = conv(name + ".time_conv");
      loaded.upsample = std::move(upsample);
    }
    weights.stages.push_back(std::move(loaded));
  }
  weights.head_gamma = upload("decoder.head.0.gamma", {dims.back()});
  weights.head_conv = conv("decoder.head.2");
  return weights;
}

absl::StatusOr<std::unique_ptr<WanVae>> WanVae::Load(const std::string& weights_path, Backend& backend,
                                                     const std::string& config_name) {
  absl::StatusOr<std::unique_ptr<WeightSource>> source = WeightSource::Open(weights_path);
  if (!source.ok()) return source.status();
  absl::StatusOr<WanVaeConfig> config;
  if (!config_name.empty()) {
    config = WanVaeConfigByName(config_name);
  } else {
    // Infer the width from conv_in [dims0 = dim·dim_mult.back(), z_dim, 3, 3, 3]: a preset when one
    // matches, else the Wan2.1 structure at that width.
    const std::string key =
        DetectWanVaeNaming(**source) == WeightNaming::kDiffusers ? "decoder.conv_in.weight" : "decoder.conv1.weight";
    absl::StatusOr<TensorInfo> info = (*source)->Info(key);
    if (!info.ok()) {
      return absl::NotFoundError(absl::StrCat((*source)->description(), ": missing VAE tensor \"", key,
                                              "\" (needed to infer the VAE config; or name one of ",
                                              absl::StrJoin(WanVaeConfigNames(), ", "), ")"));
    }
    WanVaeConfig inferred = Wan21Vae();
    const int64_t multiplier = inferred.dim_mult.back();
    if (info->shape.size() != 5 || info->shape[0] % multiplier != 0 || info->shape[1] != inferred.z_dim) {
      return absl::InvalidArgumentError(absl::StrCat((*source)->FileOf(key), ": VAE tensor \"", key, "\" has shape ",
                                                     ShapeToString(info->shape), ", expected [", multiplier, "·dim, ",
                                                     inferred.z_dim, ", 3, 3, 3]"));
    }
    inferred.dim = info->shape[0] / multiplier;
    inferred.name = absl::StrCat("wan2.1-structure dim ", inferred.dim);
    for (const std::string& name : WanVaeConfigNames()) {
      const WanVaeConfig preset = *WanVaeConfigByName(name);
      if (preset.dim == inferred.dim && preset.z_dim == inferred.z_dim) inferred = preset;
    }
    config = inferred;
  }
  if (!config.ok()) return config.status();
  absl::StatusOr<WanVaeWeights> weights = LoadWanVaeWeights(**source, *config, backend);
  if (!weights.ok()) return weights.status();
  return std::make_unique<WanVae>(*std::move(config), *std::move(weights), backend);
}

WanVae::WanVae(WanVaeConfig config, WanVaeWeights weights, Backend& backend)
    : config_(std::move(config)), weights_(std::move(weights)), backend_(backend) {}

absl::Status WanVae::ValidateLatentShape(const Shape& shape) const {
  if (shape.size() != 4 || shape[0] != config_.z_dim || shape[1] < 1 || shape[2] < 1 || shape[3] < 1) {
    return absl::InvalidArgumentError(absl::StrCat("VAE latent must have shape [", config_.z_dim,
                                                   ", frames ≥ 1, height ≥ 1, width ≥ 1], got ", ShapeToString(shape)));
  }
  return absl::OkStatus();
}

WanVae::CacheSlot& WanVae::DecodeState::Next() {
  if (next == slots.size()) slots.emplace_back();
  return slots[next++];
}

Tensor WanVae::ConcatFrames(const Tensor& first, const Tensor& second) {
  Shape shape = second.shape();
  shape[0] = first.dim(0) + second.dim(0);
  Tensor joined = backend_.Empty(shape, DType::kF32);
  backend_.CopyInto(joined.Rows(0, first.dim(0)), first);
  backend_.CopyInto(joined.Rows(first.dim(0), second.dim(0)), second);
  return joined;
}

Tensor WanVae::CausalConv(Tensor x, const WanVaeConv& conv, CacheSlot& slot) {
  // The cached frames stand in for as many of the kt − 1 front zero frames as they cover (§5.3), and
  // the slot keeps the last kt − 1 frames of the extended input: the reference's rule, which for
  // chunks of any size gives an ordinary causal conv over the whole sequence.
  const int64_t history = conv.weight.dim(2) - 1;
  const int64_t cached = slot.frames.defined() ? slot.frames.dim(0) : 0;
  Tensor input = slot.frames.defined() ? ConcatFrames(slot.frames, x) : std::move(x);
  // Memory: release the input and the old cache (callers move their activation in) before the conv,
  // so only the extended input, the output and the new cache are live at full resolution.
  x = Tensor();
  slot.frames = Tensor();
  const Tensor y =
      backend_.Conv3d(input, conv.weight, &conv.bias, static_cast<int>(history - cached), 0,
                      static_cast<int>((conv.weight.dim(3) - 1) / 2), static_cast<int>((conv.weight.dim(4) - 1) / 2));
  const int64_t keep = std::min(history, input.dim(0));
  // A copy, so the slot does not pin the whole input alive.
  if (keep > 0) slot.frames = backend_.Cast(input.Rows(input.dim(0) - keep, keep), DType::kF32);
  return y;
}

Tensor WanVae::ResidualBlock(const Tensor& x, const WanVaeResidualBlock& block, DecodeState& state) {
  Tensor h = backend_.ChannelRmsNorm(x, block.norm1_gamma, Activation::kSilu);
  h = CausalConv(std::move(h), block.conv1, state.Next());
  h = backend_.ChannelRmsNorm(h, block.norm2_gamma, Activation::kSilu);
  h = CausalConv(std::move(h), block.conv2, state.Next());
  if (block.shortcut.has_value()) {
    const Tensor shortcut = backend_.Conv3d(x, block.shortcut->weight, &block.shortcut->bias, 0, 0, 0, 0);
    backend_.AddGated(h, shortcut, /*gate=*/nullptr);
  } else {
    backend_.AddGated(h, x, /*gate=*/nullptr);
  }
  return h;
}

Tensor WanVae::AttentionBlock(const Tensor& x, const WanVaeAttentionBlock& block) {
  // Single-head attention over the H·W positions of each frame separately, scale 1/√C (§5.3).
  const int64_t frames = x.dim(0), channels = x.dim(1), positions = x.dim(2) * x.dim(3);
  const Tensor normalized = backend_.ChannelRmsNorm(x, block.norm_gamma, Activation::kNone);
  const Tensor tokens =
      backend_.SwapAxes(normalized, frames, channels, positions, 1).View({frames * positions, channels});
  auto project = [&](int64_t part) {
    const Tensor bias = block.qkv_bias.Rows(part * channels, channels);
    return backend_.Linear(tokens, block.qkv_weight.Rows(part * channels, channels), &bias, Activation::kNone);
  };
  const Tensor q = project(0), k = project(1), v = project(2);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(channels)));
  Tensor attended = backend_.Empty({frames * positions, channels}, DType::kF32);
  const Shape one_head = {positions, 1, channels};
  for (int64_t f = 0; f < frames; ++f) {
    const Tensor output = backend_.Attention(q.Rows(f * positions, positions).View(one_head),
                                             k.Rows(f * positions, positions).View(one_head),
                                             v.Rows(f * positions, positions).View(one_head), scale,
                                             /*layout=*/nullptr);
    backend_.CopyInto(attended.Rows(f * positions, positions), output);
  }
  const Tensor projected = backend_.Linear(attended, block.proj_weight, &block.proj_bias, Activation::kNone);
  Tensor y = backend_.SwapAxes(projected, frames, positions, channels, 1).View(x.shape());
  backend_.AddGated(y, x, /*gate=*/nullptr);
  return y;
}

Tensor WanVae::Upsample(const Tensor& x, const WanVaeUpsample& upsample, DecodeState& state) {
  Tensor frames = x;
  if (upsample.time_conv.has_value()) {
    // The video's first frame skips time_conv and stays one frame; every later frame goes through the
    // causal time_conv, whose history starts with zeros after that first frame (§5.5: the reference's
    // 'Rep' marker), and its two channel halves become two frames.
    CacheSlot& slot = state.Next();
    Tensor first;
    Tensor rest = x;
    if (!slot.started) {
      slot.started = true;
      first = x.Rows(0, 1);
      rest = x.Rows(1, x.dim(0) - 1);
    }
    if (rest.dim(0) > 0) {
      const Tensor doubled = CausalConv(rest, *upsample.time_conv, slot);
      const Tensor interleaved = doubled.View({2 * doubled.dim(0), x.dim(1), x.dim(2), x.dim(3)});
      frames = first.defined() ? ConcatFrames(first, interleaved) : interleaved;
    } else {
      frames = first;
    }
  }
  // Nearest ×2 and the 3×3 conv, one frame at a time: the upsampled input is 4× the frame and is
  // never needed for more than one frame at once.
  const WanVaeConv& conv = upsample.spatial_conv;
  const int64_t count = frames.dim(0);
  Tensor out = backend_.Empty({count, conv.weight.dim(0), 2 * frames.dim(2), 2 * frames.dim(3)}, DType::kF32);
  for (int64_t f = 0; f < count; ++f) {
    const Tensor upsampled = backend_.UpsampleNearest2x(frames.Rows(f, 1));
    backend_.CopyInto(out.Rows(f, 1), backend_.Conv3d(upsampled, conv.weight, &conv.bias, 0, 0, 1, 1));
  }
  return out;
}

Tensor WanVae::DecodeChunk(const Tensor& x, DecodeState& state) {
  state.next = 0;
  Tensor h = CausalConv(x, weights_.conv_in, state.Next());
  h = ResidualBlock(h, weights_.middle_first, state);
  h = AttentionBlock(h, weights_.middle_attention);
  h = ResidualBlock(h, weights_.middle_second, state);
  for (const WanVaeStage& stage : weights_.stages) {
    for (const WanVaeResidualBlock& block : stage.blocks) h = ResidualBlock(h, block, state);
    if (stage.upsample.has_value()) h = Upsample(h, *stage.upsample, state);
  }
  h = backend_.ChannelRmsNorm(h, weights_.head_gamma, Activation::kSilu);
  h = CausalConv(std::move(h), weights_.head_conv, state.Next());
  return backend_.Clamp(h, -1.0f, 1.0f);
}

absl::Status WanVae::DecodeStreaming(
    const Tensor& latent, int64_t chunk_frames,
    const std::function<absl::Status(const Tensor& frames, int64_t first_frame)>& sink) {
  if (absl::Status valid = ValidateLatentShape(latent.shape()); !valid.ok()) return valid;
  if (chunk_frames < 0) {
    return absl::InvalidArgumentError(absl::StrCat("VAE chunk_frames must be ≥ 0 (0 = all), got ", chunk_frames));
  }
  const int64_t z = latent.dim(0), latent_frames = latent.dim(1), height = latent.dim(2), width = latent.dim(3);
  const Tensor on_device =
      latent.device() == backend_.device() ? backend_.Cast(latent, DType::kF32) : backend_.Upload(latent, DType::kF32);
  const Tensor frame_major =
      backend_.SwapAxes(on_device, 1, z, latent_frames, height * width).View({latent_frames, z, height, width});
  // conv2 on the whole (small) latent, with the de-normalisation folded into its weights.
  const Tensor x = backend_.Conv3d(frame_major, weights_.post_quant.weight, &weights_.post_quant.bias, 0, 0, 0, 0);
  const int64_t chunk = chunk_frames == 0 ? latent_frames : chunk_frames;
  DecodeState state;
  int64_t first_frame = 0;
  for (int64_t begin = 0; begin < latent_frames; begin += chunk) {
    const Tensor frames = DecodeChunk(x.Rows(begin, std::min(chunk, latent_frames - begin)), state);
    if (absl::Status status = sink(frames, first_frame); !status.ok()) return status;
    first_frame += frames.dim(0);
  }
  ZCHECK_MSG(first_frame == config_.OutputFrames(latent_frames),
             "decoded " << first_frame << " frames from " << latent_frames << " latent frames");
  return absl::OkStatus();
}

absl::StatusOr<Tensor> WanVae::Decode(const Tensor& latent, int64_t chunk_frames) {
  if (absl::Status valid = ValidateLatentShape(latent.shape()); !valid.ok()) return valid;
  const int64_t scale = config_.spatial_scale();
  Tensor video = backend_.Empty({config_.OutputFrames(latent.dim(1)), 3, scale * latent.dim(2), scale * latent.dim(3)},
                                DType::kF32);
  absl::Status status = DecodeStreaming(latent, chunk_frames, [&](const Tensor& frames, int64_t first_frame) {
    backend_.CopyInto(video.Rows(first_frame, frames.dim(0)), frames);
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return video;
}

}  // namespace zoetrope
