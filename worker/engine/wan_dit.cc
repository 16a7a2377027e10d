#include "worker/engine/wan_dit.h"

#include <cmath>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"

namespace zoetrope {
namespace {

// RoPE frequency tables have this many positions per axis in the reference (positions must stay below).
constexpr int64_t kRopeTableLength = 1024;

Tensor RowVector(const Tensor& matrix, int64_t row) { return matrix.Rows(row, 1).View({matrix.dim(1)}); }

}  // namespace

std::vector<double> SinusoidalEmbedding(double timestep, int64_t width) {
  const int64_t half = width / 2;
  std::vector<double> embedding(static_cast<size_t>(width));
  for (int64_t i = 0; i < half; ++i) {
    const double angle = timestep * std::pow(10000.0, -static_cast<double>(i) / static_cast<double>(half));
    embedding[i] = std::cos(angle);
    embedding[half + i] = std::sin(angle);
  }
  return embedding;
}

absl::StatusOr<std::unique_ptr<WanDit>> WanDit::Load(const std::string& weights_path, Backend& backend,
                                                     const std::string& config_name) {
  absl::StatusOr<std::unique_ptr<WeightSource>> source = WeightSource::Open(weights_path);
  if (!source.ok()) return source.status();
  const std::filesystem::path config_path = std::filesystem::path((*source)->directory()) / "config.json";
  absl::StatusOr<WanDitConfig> config;
  if (std::filesystem::exists(config_path)) {
    config = LoadWanDitConfigFile(config_path.string());
  } else if (!config_name.empty()) {
    config = WanDitConfigByName(config_name);
  } else {
    return absl::NotFoundError(absl::StrCat(config_path.string(),
                                            ": no config.json beside the weights and no config name given"));
  }
  if (!config.ok()) return config.status();
  absl::StatusOr<WanDitWeights> weights = LoadWanDitWeights(**source, *config, backend);
  if (!weights.ok()) return weights.status();
  return std::make_unique<WanDit>(*std::move(config), *std::move(weights), backend);
}

WanDit::WanDit(WanDitConfig config, WanDitWeights weights, Backend& backend)
    : config_(std::move(config)), weights_(std::move(weights)), backend_(backend) {}

absl::Status WanDit::ValidateLatentShape(const Shape& shape) const {
  if (shape.size() != 4 || shape[0] != config_.in_dim) {
    return absl::InvalidArgumentError(absl::StrCat("latent must have shape [", config_.in_dim,
                                                   ", frames, height, width], got ", ShapeToString(shape)));
  }
  if (shape[1] < 1 || shape[1] % config_.patch_t != 0 || shape[2] < config_.patch_h ||
      shape[2] % config_.patch_h != 0 || shape[3] < config_.patch_w || shape[3] % config_.patch_w != 0) {
    return absl::InvalidArgumentError(absl::StrCat("latent ", ShapeToString(shape),
                                                   ": frames must be ≥ 1 and height and width positive multiples of ",
                                                   config_.patch_h, " (pixel sizes multiples of 16)"));
  }
  const TokenGrid grid = GridOf(shape);
  if (grid.frames > kRopeTableLength || grid.height > kRopeTableLength || grid.width > kRopeTableLength) {
    return absl::InvalidArgumentError(absl::StrCat("latent ", ShapeToString(shape), ": token grid exceeds the ",
                                                   kRopeTableLength, " positions per axis of the RoPE table"));
  }
  return absl::OkStatus();
}

TokenGrid WanDit::GridOf(const Shape& shape) const {
  return {shape[1] / config_.patch_t, shape[2] / config_.patch_h, shape[3] / config_.patch_w};
}

WanDit::TimestepConditioning WanDit::EmbedTimestep(double timestep) {
  const std::vector<double> sinusoid = SinusoidalEmbedding(timestep, config_.freq_dim);
  const std::vector<float> sinusoid32(sinusoid.begin(), sinusoid.end());
  const Tensor input = backend_.Upload(HostTensorFromFloats(sinusoid32, {1, config_.freq_dim}), DType::kF32);
  const Tensor hidden = backend_.Linear(input, weights_.time_in_weight, &weights_.time_in_bias, Activation::kSilu);
  TimestepConditioning conditioning;
  conditioning.time_embedding = backend_.Linear(hidden, weights_.time_out_weight, &weights_.time_out_bias,
                                                Activation::kNone);
  const Tensor activated = backend_.Activate(conditioning.time_embedding, Activation::kSilu);
  conditioning.block_modulation =
      backend_.Linear(activated, weights_.time_projection_weight, &weights_.time_projection_bias, Activation::kNone)
          .View({6, config_.dim});
  return conditioning;
}

absl::StatusOr<WanDit::PromptConditioning> WanDit::EncodePrompt(const Tensor& context) {
  if (context.rank() != 2 || context.dim(1) != config_.text_dim || context.dim(0) > config_.text_len) {
    return absl::InvalidArgumentError(absl::StrCat("context must be [tokens ≤ ", config_.text_len, ", ",
                                                   config_.text_dim, "], got ", ShapeToString(context.shape())));
  }
  const DType compute = backend_.compute_dtype();
  Tensor padded = backend_.Upload(Tensor::Host({config_.text_len, config_.text_dim}, DType::kF32), compute);
  if (context.dim(0) > 0) {
    const Tensor on_device = context.device() == backend_.device() ? context : backend_.Upload(context, compute);
    backend_.CopyInto(padded.Rows(0, context.dim(0)), on_device);
  }
  const Tensor hidden = backend_.Linear(padded, weights_.text_in_weight, &weights_.text_in_bias, Activation::kGeluTanh);
  const Tensor embedded = backend_.Linear(hidden, weights_.text_out_weight, &weights_.text_out_bias, Activation::kNone);
  PromptConditioning conditioning;
  const Shape heads_shape = {config_.text_len, config_.num_heads, config_.head_dim()};
  for (const WanBlockWeights& block : weights_.blocks) {
    const WanAttentionWeights& cross = block.cross_attention;
    const Tensor keys = backend_.Linear(embedded, cross.k_weight, &cross.k_bias, Activation::kNone);
    conditioning.cross_keys.push_back(
        backend_.RmsNorm(keys, cross.norm_k, static_cast<float>(config_.eps)).View(heads_shape));
    conditioning.cross_values.push_back(
        backend_.Linear(embedded, cross.v_weight, &cross.v_bias, Activation::kNone).View(heads_shape));
  }
  return conditioning;
}

const WanDit::RopeTable& WanDit::RopeFor(const TokenGrid& grid, int64_t shard_begin, int64_t shard_count) {
  const auto key = std::make_tuple(grid.frames, grid.height, grid.width, shard_begin, shard_count);
  if (auto found = rope_cache_.find(key); found != rope_cache_.end()) return found->second;
  // Angles in float64 as the reference does; pairs are interleaved and split frame / height / width.
  const int64_t pairs = config_.head_dim() / 2;
  const int64_t frame_pairs = config_.rope_frame_dims() / 2;
  const int64_t spatial_pairs = config_.rope_spatial_dims() / 2;
  auto frequency = [](int64_t j, int64_t axis_dims) {
    return std::pow(10000.0, -2.0 * static_cast<double>(j) / static_cast<double>(axis_dims));
  };
  std::vector<float> cos_values(static_cast<size_t>(shard_count * pairs));
  std::vector<float> sin_values(cos_values.size());
  for (int64_t i = 0; i < shard_count; ++i) {
    const int64_t n = shard_begin + i;
    const int64_t f = n / (grid.height * grid.width);
    const int64_t h = (n / grid.width) % grid.height;
    const int64_t w = n % grid.width;
    for (int64_t p = 0; p < pairs; ++p) {
      double angle;
      if (p < frame_pairs) {
        angle = static_cast<double>(f) * frequency(p, config_.rope_frame_dims());
      } else if (p < frame_pairs + spatial_pairs) {
        angle = static_cast<double>(h) * frequency(p - frame_pairs, config_.rope_spatial_dims());
      } else {
        angle = static_cast<double>(w) * frequency(p - frame_pairs - spatial_pairs, config_.rope_spatial_dims());
      }
      cos_values[i * pairs + p] = static_cast<float>(std::cos(angle));
      sin_values[i * pairs + p] = static_cast<float>(std::sin(angle));
    }
  }
  RopeTable table;
  table.cos = backend_.Upload(HostTensorFromFloats(cos_values, {shard_count, pairs}), DType::kF32);
  table.sin = backend_.Upload(HostTensorFromFloats(sin_values, {shard_count, pairs}), DType::kF32);
  return rope_cache_.emplace(key, std::move(table)).first->second;
}

void WanDit::RunBlock(int index, const Tensor& x, const Tensor& block_modulation, const Tensor& cross_keys,
                      const Tensor& cross_values, const RopeTable& rope, SequenceAttention& attention,
                      const AttentionSite& site) {
  const WanBlockWeights& block = weights_.blocks[index];
  const DType compute = backend_.compute_dtype();
  const float eps = static_cast<float>(config_.eps);
  const int64_t tokens = x.dim(0);
  const Shape heads_shape = {tokens, config_.num_heads, config_.head_dim()};
  // m_k = modulation[k] + e0[k]: 0 shift_sa, 1 scale_sa, 2 gate_sa, 3 shift_ffn, 4 scale_ffn, 5 gate_ffn.
  const Tensor modulation = backend_.Combine({{1.0, &block.modulation}, {1.0, &block_modulation}});
  const Tensor shift_self = RowVector(modulation, 0), scale_self = RowVector(modulation, 1);
  const Tensor gate_self = RowVector(modulation, 2), shift_ffn = RowVector(modulation, 3);
  const Tensor scale_ffn = RowVector(modulation, 4), gate_ffn = RowVector(modulation, 5);

  {  // self-attention
    const WanAttentionWeights& self = block.self_attention;
    NormParams norm;
    norm.epsilon = eps;
    norm.scale = scale_self;
    norm.shift = shift_self;
    const Tensor y = backend_.LayerNorm(x, norm, compute);
    const Tensor q =
        backend_.RmsNorm(backend_.Linear(y, self.q_weight, &self.q_bias, Activation::kNone), self.norm_q, eps)
            .View(heads_shape);
    const Tensor k =
        backend_.RmsNorm(backend_.Linear(y, self.k_weight, &self.k_bias, Activation::kNone), self.norm_k, eps)
            .View(heads_shape);
    const Tensor v = backend_.Linear(y, self.v_weight, &self.v_bias, Activation::kNone).View(heads_shape);
    backend_.ApplyRope(q, rope.cos, rope.sin);
    backend_.ApplyRope(k, rope.cos, rope.sin);
    const Tensor attended = attention.Attend(backend_, q, k, v, site);
    const Tensor projected =
        backend_.Linear(attended.View({tokens, config_.dim}), self.o_weight, &self.o_bias, Activation::kNone);
    backend_.AddGated(x, projected, &gate_self);
  }
  {  // cross-attention over the (padded) prompt, no mask, no gate
    const WanAttentionWeights& cross = block.cross_attention;
    NormParams norm;
    norm.epsilon = eps;
    norm.weight = block.norm3_weight;
    norm.bias = block.norm3_bias;
    const Tensor normalized = backend_.LayerNorm(x, norm, compute);
    const Tensor q = backend_.RmsNorm(backend_.Linear(normalized, cross.q_weight, &cross.q_bias, Activation::kNone),
                                      cross.norm_q, eps)
                         .View(heads_shape);
    const Tensor attended = backend_.Attention(q, cross_keys, cross_values, site.scale, /*layout=*/nullptr);
    const Tensor projected =
        backend_.Linear(attended.View({tokens, config_.dim}), cross.o_weight, &cross.o_bias, Activation::kNone);
    backend_.AddGated(x, projected, /*gate=*/nullptr);
  }
  {  // feed-forward
    NormParams norm;
    norm.epsilon = eps;
    norm.scale = scale_ffn;
    norm.shift = shift_ffn;
    const Tensor y = backend_.LayerNorm(x, norm, compute);
    const Tensor hidden = backend_.Linear(y, block.ffn_in_weight, &block.ffn_in_bias, Activation::kGeluTanh);
    const Tensor output = backend_.Linear(hidden, block.ffn_out_weight, &block.ffn_out_bias, Activation::kNone);
    backend_.AddGated(x, output, &gate_ffn);
  }
}

Tensor WanDit::ForwardShard(const Tensor& latent, const TimestepConditioning& timestep,
                            const PromptConditioning& prompt, int64_t shard_begin, int64_t shard_count,
                            SequenceAttention& attention, int step) {
  const TokenGrid grid = GridOf(latent.shape());
  ZCHECK_MSG(shard_begin >= 0 && shard_count >= 0 && shard_begin + shard_count <= grid.tokens(),
             "shard [" << shard_begin << ", +" << shard_count << ") of " << grid.tokens() << " tokens");
  const Tensor patches =
      backend_.Patchify(latent, config_.patch_t, config_.patch_h, config_.patch_w).Rows(shard_begin, shard_count);
  const Tensor embedded = backend_.Linear(backend_.Cast(patches, backend_.compute_dtype()), weights_.patch_weight,
                                          &weights_.patch_bias, Activation::kNone);
  return ForwardEmbedded(embedded, grid, timestep, prompt, shard_begin, attention, step);
}

Tensor WanDit::ForwardTokens(const Tensor& tokens, const TokenGrid& grid, int64_t shard_begin,
                             const TimestepConditioning& timestep, const PromptConditioning& prompt,
                             SequenceAttention& attention, int step) {
  const int64_t shard_count = tokens.dim(0);
  ZCHECK_MSG(shard_begin >= 0 && shard_count >= 0 && shard_begin + shard_count <= grid.tokens(),
             "shard [" << shard_begin << ", +" << shard_count << ") of " << grid.tokens() << " tokens");
  ZCHECK(tokens.rank() == 2 && tokens.dim(1) == weights_.patch_weight.dim(1));
  const Tensor embedded = backend_.Linear(backend_.Cast(tokens, backend_.compute_dtype()), HeadOrderPatchWeight(),
                                          &weights_.patch_bias, Activation::kNone);
  return ForwardEmbedded(embedded, grid, timestep, prompt, shard_begin, attention, step);
}

const Tensor& WanDit::HeadOrderPatchWeight() {
  if (head_order_patch_weight_.defined()) return head_order_patch_weight_;
  ZCHECK_MSG(config_.in_dim == config_.out_dim, "head-order tokens need in_dim == out_dim");
  const Tensor host = backend_.ToHost(weights_.patch_weight);  // [D, C·pt·ph·pw], column ((c·pt + t)·ph + y)·pw + x
  const int64_t rows = host.dim(0), channels = config_.in_dim;
  const int64_t pt = config_.patch_t, ph = config_.patch_h, pw = config_.patch_w;
  const int64_t columns = channels * pt * ph * pw;
  ZCHECK(host.dim(1) == columns);
  const size_t element = DTypeSize(host.dtype());
  Tensor permuted = Tensor::Host(host.shape(), host.dtype());
  const char* from = static_cast<const char*>(host.raw_data());
  char* to = static_cast<char*>(permuted.raw_data());
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t c = 0; c < channels; ++c) {
      for (int64_t t = 0; t < pt; ++t) {
        for (int64_t y = 0; y < ph; ++y) {
          for (int64_t x = 0; x < pw; ++x) {
            const int64_t source = ((c * pt + t) * ph + y) * pw + x;
            const int64_t target = ((t * ph + y) * pw + x) * channels + c;
            std::memcpy(to + (row * columns + target) * element, from + (row * columns + source) * element, element);
          }
        }
      }
    }
  }
  head_order_patch_weight_ = backend_.Upload(permuted, host.dtype());
  return head_order_patch_weight_;
}

Tensor WanDit::ForwardEmbedded(const Tensor& embedded, const TokenGrid& grid, const TimestepConditioning& timestep,
                               const PromptConditioning& prompt, int64_t shard_begin, SequenceAttention& attention,
                               int step) {
  ZCHECK(static_cast<int64_t>(prompt.cross_keys.size()) == config_.num_layers);
  const int64_t shard_count = embedded.dim(0);
  // The residual stream is F32 from here on (spec §2.5).
  const Tensor x = backend_.Cast(embedded, DType::kF32);
  const RopeTable& rope = RopeFor(grid, shard_begin, shard_count);
  AttentionSite site;
  site.step = step;
  site.grid = grid;
  site.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(config_.head_dim())));
  for (int i = 0; i < static_cast<int>(config_.num_layers); ++i) {
    site.block = i;
    RunBlock(i, x, timestep.block_modulation, prompt.cross_keys[i], prompt.cross_values[i], rope, attention, site);
  }
  // Head: LN(x)·(1 + scale) + shift with shift = head.modulation[0] + e, scale = head.modulation[1] + e.
  const Tensor e = timestep.time_embedding.View({config_.dim});
  const Tensor head_shift_row = RowVector(weights_.head_modulation, 0);
  const Tensor head_scale_row = RowVector(weights_.head_modulation, 1);
  NormParams norm;
  norm.epsilon = static_cast<float>(config_.eps);
  norm.shift = backend_.Combine({{1.0, &head_shift_row}, {1.0, &e}});
  norm.scale = backend_.Combine({{1.0, &head_scale_row}, {1.0, &e}});
  const Tensor normalized = backend_.LayerNorm(x, norm, DType::kF32);
  return backend_.Linear(normalized, weights_.head_weight, &weights_.head_bias, Activation::kNone);
}

Tensor WanDit::Unpatchify(const Tensor& head_tokens, const Shape& latent_shape) {
  const TokenGrid grid = GridOf(latent_shape);
  return backend_.Unpatchify(head_tokens, static_cast<int>(config_.out_dim), static_cast<int>(grid.frames),
                             static_cast<int>(grid.height), static_cast<int>(grid.width), config_.patch_t,
                             config_.patch_h, config_.patch_w);
}

Tensor WanDit::Forward(const Tensor& latent, const TimestepConditioning& timestep, const PromptConditioning& prompt,
                       SequenceAttention& attention, int step) {
  const int64_t tokens = GridOf(latent.shape()).tokens();
  return Unpatchify(ForwardShard(latent, timestep, prompt, 0, tokens, attention, step), latent.shape());
}

}  // namespace zoetrope
