#include "worker/engine/text_to_video.h"

#include <chrono>
#include <limits>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/generation_rules.h"
#include "parallel/planned_attention.h"
#include "parallel/ulysses_attention.h"

namespace zoetrope {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

absl::Status FieldError(absl::string_view field, absl::string_view rule, absl::string_view value) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": must ", rule, " (got ", value, ")"));
}

}  // namespace

const char* GenerationPhaseName(GenerationPhase phase) {
  switch (phase) {
    case GenerationPhase::kEncodingText: return "encoding_text";
    case GenerationPhase::kDenoising: return "denoising";
    case GenerationPhase::kDecoding: return "decoding";
  }
  return "unknown";
}

absl::Status ValidateGenerationParameters(const GenerationParameters& parameters) {
  // The shape, steps, guidance and shift rules are shared with the scheduler (common/generation_rules.h),
  // which applies them with its narrower service limits: one set of rules, so nothing the API accepts is
  // rejected here.
  GenerationShape shape;
  shape.width = parameters.width;
  shape.height = parameters.height;
  shape.frames = parameters.frames;
  shape.steps = parameters.steps;
  shape.guidance = parameters.guidance;
  shape.shift = parameters.shift;
  if (absl::Status valid = CheckGenerationRules(shape, kEngineLimits); !valid.ok()) return valid;
  if (parameters.vae_chunk_frames < 0) {
    return FieldError("vae_chunk_frames", "be ≥ 0", absl::StrCat(parameters.vae_chunk_frames));
  }
  if (parameters.preview_every < 0) {
    return FieldError("preview_every", "be ≥ 0 (0: no previews)", absl::StrCat(parameters.preview_every));
  }
  absl::StatusOr<SparsityPlan> plan =
      SparsityPlanFromPresetOrText(parameters.attention, parameters.attention_source);
  if (!plan.ok()) return plan.status();
  // Block and head ranges depend on the model: the largest values pass here, Generate checks the model's.
  return plan->Validate(std::numeric_limits<int>::max(), std::numeric_limits<int>::max(), parameters.steps);
}

absl::StatusOr<std::unique_ptr<TextToVideoPipeline>> TextToVideoPipeline::Load(const std::string& model_folder,
                                                                               Backend& backend) {
  absl::StatusOr<ModelFiles> files = FindModelFiles(model_folder);
  if (!files.ok()) return files.status();
  std::unique_ptr<TextToVideoPipeline> pipeline(new TextToVideoPipeline(backend));
  pipeline->files_ = *files;

  absl::StatusOr<std::unique_ptr<WanDit>> transformer = WanDit::Load(files->transformer, backend);
  if (!transformer.ok()) return transformer.status();
  pipeline->transformer_ = *std::move(transformer);
  const WanDitConfig& dit = pipeline->transformer_->config();

  TokenizerOptions tokenizer_options;
  tokenizer_options.max_length = dit.text_len;  // the DiT pads the context to text_len rows
  absl::StatusOr<std::unique_ptr<TextTokenizer>> tokenizer = TextTokenizer::Load(files->tokenizer, tokenizer_options);
  if (!tokenizer.ok()) return tokenizer.status();
  pipeline->tokenizer_ = *std::move(tokenizer);

  absl::StatusOr<std::unique_ptr<Umt5Encoder>> text_encoder = Umt5Encoder::Load(files->text_encoder, backend);
  if (!text_encoder.ok()) return text_encoder.status();
  pipeline->text_encoder_ = *std::move(text_encoder);
  if (pipeline->text_encoder_->config().model_dim != dit.text_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        files->text_encoder, ": text encoder width ", pipeline->text_encoder_->config().model_dim,
        " does not match the DiT's text_dim ", dit.text_dim, " (", files->transformer, ")"));
  }
  pipeline->prompt_encoder_ = std::make_unique<PromptEncoder>(*pipeline->tokenizer_, *pipeline->text_encoder_);

  absl::StatusOr<std::unique_ptr<WanVae>> vae = WanVae::Load(files->vae, backend);
  if (!vae.ok()) return vae.status();
  pipeline->vae_ = *std::move(vae);
  if (pipeline->vae_->config().z_dim != dit.out_dim || dit.in_dim != dit.out_dim) {
    return absl::InvalidArgumentError(absl::StrCat(files->vae, ": VAE latent channels ", pipeline->vae_->config().z_dim,
                                                   " do not match the DiT's in_dim/out_dim ", dit.in_dim, "/",
                                                   dit.out_dim, " (", files->transformer, ")"));
  }
  return pipeline;
}

absl::StatusOr<std::unique_ptr<TextToVideoPipeline>> TextToVideoPipeline::LoadGroup(const std::string& model_folder,
                                                                                    PipelineGroup group) {
  if (absl::Status valid = ValidateParallelDegrees(group.degrees); !valid.ok()) return valid;
  const int ranks = group.degrees.ranks();
  if (static_cast<int>(group.backends.size()) != ranks) {
    return absl::InvalidArgumentError(absl::StrCat("parallel degrees ", group.degrees.ToString(), " need ", ranks,
                                                   " devices, got ", group.backends.size()));
  }
  absl::StatusOr<std::unique_ptr<TextToVideoPipeline>> pipeline = Load(model_folder, *group.backends[0]);
  if (!pipeline.ok() || ranks == 1) return pipeline;
  TextToVideoPipeline& loaded = **pipeline;
  loaded.degrees_ = group.degrees;
  absl::StatusOr<std::unique_ptr<DitGroup>> dit_group = DitGroup::Create(
      *loaded.transformer_, loaded.files_.transformer, "", group.backends, group.degrees, group.communicators);
  if (!dit_group.ok()) return dit_group.status();
  if (group.ulysses_chunks < 1) {
    return absl::InvalidArgumentError(absl::StrCat("Ulysses head chunks must be ≥ 1 (got ", group.ulysses_chunks, ")"));
  }
  (*dit_group)->set_ulysses_chunks(group.ulysses_chunks);
  loaded.group_ = *std::move(dit_group);
  return pipeline;
}

absl::StatusOr<Tensor> TextToVideoPipeline::DenoiseOnGroup(
    const GenerationParameters& parameters, const SparsityPlan& plan, const Tensor& positive_text,
    const Tensor* negative_text, const DenoiseOptions& options,
    const std::function<void(const DenoiseProgress&)>& progress, const std::atomic<bool>* cancelled,
    double* attention_density) {
  const int ranks = degrees_.ranks();
  // The contexts go to every rank through the host (EncodePrompt uploads them to its own device).
  const Tensor positive_host = backend_.ToHost(positive_text);
  const std::optional<Tensor> negative_host =
      negative_text != nullptr ? std::optional<Tensor>(backend_.ToHost(*negative_text)) : std::nullopt;
  StopAgreement stop;
  std::vector<Tensor> latents(ranks);
  std::vector<double> densities(ranks, 1.0);
  absl::Status status = group_->RunOnRanks([&](int rank) -> absl::Status {
    WanDit& transformer = group_->model(rank);
    MeshCommunicators& communicators = group_->communicators(rank);
    absl::StatusOr<WanDit::PromptConditioning> positive = transformer.EncodePrompt(positive_host);
    if (!positive.ok()) return positive.status();
    absl::StatusOr<WanDit::PromptConditioning> negative;
    if (negative_host.has_value()) {
      negative = transformer.EncodePrompt(*negative_host);
      if (!negative.ok()) return negative.status();
    }
    std::unique_ptr<SequenceAttention> attention;
    UlyssesAttention* ulysses = nullptr;
    if (communicators.sequence != nullptr) {
      auto made = std::make_unique<UlyssesAttention>(*communicators.sequence, plan, parameters.steps,
                                                     group_->ulysses_chunks());
      ulysses = made.get();
      attention = std::move(made);
    } else {
      attention = std::make_unique<PlannedAttention>(plan, parameters.steps);
    }
    DenoiseGroup group;
    group.sequence = communicators.sequence.get();
    group.cfg = communicators.cfg.get();
    group.stop = &stop;
    group.rank = rank;
    absl::StatusOr<Tensor> latent = Denoise(transformer, *attention, *positive,
                                            negative_host.has_value() ? &*negative : nullptr, options,
                                            rank == 0 ? progress : nullptr, cancelled, group);
    if (!latent.ok()) return latent.status();
    latents[rank] = *std::move(latent);
    densities[rank] = attention->mean_block_density();
    if (ulysses != nullptr) {
      absl::StatusOr<double> density = ulysses->GroupMeanBlockDensity(transformer.backend());
      if (!density.ok()) return density.status();
      densities[rank] = *density;
    }
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  *attention_density = densities[0];
  return latents[0];
}

absl::StatusOr<GenerationResult> TextToVideoPipeline::Generate(
    const GenerationParameters& parameters, const std::function<void(const GenerationProgress&)>& progress,
    const std::atomic<bool>* cancelled, SequenceAttention* attention_override,
    const std::function<void(int step, const Tensor& predicted_latent)>& preview,
    const std::function<absl::Status(const Tensor& frames)>& frames_sink) {
  if (absl::Status valid = ValidateGenerationParameters(parameters); !valid.ok()) return valid;
  const WanDitConfig& dit = transformer_->config();
  absl::StatusOr<SparsityPlan> plan =
      SparsityPlanFromPresetOrText(parameters.attention, parameters.attention_source);
  if (!plan.ok()) return plan.status();
  if (absl::Status fits = plan->Validate(static_cast<int>(dit.num_layers), static_cast<int>(dit.num_heads),
                                         parameters.steps);
      !fits.ok()) {
    return fits;
  }
  if (attention_override != nullptr && degrees_.ranks() > 1) {
    return absl::InvalidArgumentError("an attention override needs a one-device pipeline");
  }
  PlannedAttention planned(*plan, parameters.steps);
  SequenceAttention& attention = attention_override != nullptr ? *attention_override : planned;
  GenerationResult result;
  auto report = [&](GenerationPhase phase) {
    if (!progress) return;
    GenerationProgress update;
    update.phase = phase;
    progress(update);
  };

  report(GenerationPhase::kEncodingText);
  auto start = std::chrono::steady_clock::now();
  const bool parallel = degrees_.ranks() > 1;
  absl::StatusOr<Tensor> positive_text = prompt_encoder_->Encode(parameters.prompt);
  if (!positive_text.ok()) return positive_text.status();
  absl::StatusOr<WanDit::PromptConditioning> positive;
  if (!parallel) {
    positive = transformer_->EncodePrompt(*positive_text);
    if (!positive.ok()) return positive.status();
  }
  const bool guided = parameters.guidance != 1.0;
  absl::StatusOr<Tensor> negative_text;
  absl::StatusOr<WanDit::PromptConditioning> negative;
  if (guided) {
    negative_text = prompt_encoder_->EncodeNegative(parameters.negative_prompt);
    if (!negative_text.ok()) return negative_text.status();
    if (!parallel) {
      negative = transformer_->EncodePrompt(*negative_text);
      if (!negative.ok()) return negative.status();
    }
  }
  backend_.Synchronize();
  result.text_seconds = SecondsSince(start);

  report(GenerationPhase::kDenoising);
  start = std::chrono::steady_clock::now();
  DenoiseOptions options;
  options.latent_shape =
      LatentShapeFor(parameters.width, parameters.height, parameters.frames, transformer_->config().in_dim);
  options.steps = parameters.steps;
  options.shift = parameters.shift;
  options.guidance = parameters.guidance;
  options.sampler = parameters.sampler;
  options.seed = parameters.seed;
  if (preview) {
    options.preview_every = parameters.preview_every;
    options.preview = preview;
  }
  auto step_progress = [&](const DenoiseProgress& step) {
    if (!progress) return;
    GenerationProgress update;
    update.phase = GenerationPhase::kDenoising;
    update.denoise = step;
    progress(update);
  };
  absl::StatusOr<Tensor> latent;
  if (parallel) {
    latent = DenoiseOnGroup(parameters, *plan, *positive_text, guided ? &*negative_text : nullptr, options,
                            step_progress, cancelled, &result.attention_density);
  } else {
    latent = Denoise(*transformer_, attention, *positive, guided ? &*negative : nullptr, options, step_progress,
                     cancelled);
    if (latent.ok()) result.attention_density = attention.mean_block_density();
  }
  if (!latent.ok()) return latent.status();
  result.latent = backend_.ToHost(*latent);
  result.denoise_seconds = SecondsSince(start);
  if (!parameters.decode) return result;

  if (cancelled != nullptr && cancelled->load()) return absl::CancelledError("cancelled before decoding");
  report(GenerationPhase::kDecoding);
  start = std::chrono::steady_clock::now();
  if (frames_sink) {
    absl::Status decoded = vae_->DecodeStreaming(
        *latent, parameters.vae_chunk_frames,
        [&](const Tensor& frames, int64_t) { return frames_sink(backend_.ToHost(frames)); });
    if (!decoded.ok()) return decoded;
  } else {
    absl::StatusOr<Tensor> frames = vae_->Decode(*latent, parameters.vae_chunk_frames);
    if (!frames.ok()) return frames.status();
    result.frames = backend_.ToHost(*frames);
  }
  result.decode_seconds = SecondsSince(start);
  return result;
}

}  // namespace zoetrope
