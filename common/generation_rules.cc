#include "common/generation_rules.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace zoetrope {
namespace {

absl::Status Invalid(absl::string_view field, absl::string_view rule) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", rule));
}

int64_t Narrow(int64_t engine, int64_t given) { return given > 0 ? std::min(engine, given) : engine; }
double Narrow(double engine, double given) { return given > 0 ? std::min(engine, given) : engine; }

absl::Status CheckPixels(absl::string_view field, int64_t value, int64_t max_pixels) {
  if (value < 16 || value > max_pixels || value % 16 != 0) {
    return Invalid(field, absl::StrCat("must be a multiple of 16 in [16, ", max_pixels, "] (got ", value, ")"));
  }
  return absl::OkStatus();
}

// a · b, or INT64_MAX when it would overflow (inputs ≥ 0).
int64_t SaturatingProduct(int64_t a, int64_t b) {
  if (a == 0 || b == 0) return 0;
  if (a > std::numeric_limits<int64_t>::max() / b) return std::numeric_limits<int64_t>::max();
  return a * b;
}

int64_t SaturatingSum(int64_t a, int64_t b) {
  return a > std::numeric_limits<int64_t>::max() - b ? std::numeric_limits<int64_t>::max() : a + b;
}

}  // namespace

GenerationLimits EffectiveLimits(const GenerationLimits& limits) {
  GenerationLimits effective;
  effective.max_pixels = Narrow(kEngineLimits.max_pixels, limits.max_pixels);
  effective.max_frames = Narrow(kEngineLimits.max_frames, limits.max_frames);
  effective.max_steps = Narrow(kEngineLimits.max_steps, limits.max_steps);
  effective.max_guidance = Narrow(kEngineLimits.max_guidance, limits.max_guidance);
  effective.max_shift = Narrow(kEngineLimits.max_shift, limits.max_shift);
  effective.max_tokens = limits.max_tokens > 0 ? limits.max_tokens : kEngineLimits.max_tokens;
  return effective;
}

int64_t LatentTokenCount(int64_t width, int64_t height, int64_t frames) {
  return ((frames - 1) / 4 + 1) * (height / 16) * (width / 16);
}

absl::Status CheckGenerationRules(const GenerationShape& shape, const GenerationLimits& limits) {
  const GenerationLimits effective = EffectiveLimits(limits);
  if (absl::Status status = CheckPixels("width", shape.width, effective.max_pixels); !status.ok()) return status;
  if (absl::Status status = CheckPixels("height", shape.height, effective.max_pixels); !status.ok()) return status;
  if (shape.frames < 1 || shape.frames > effective.max_frames || (shape.frames - 1) % 4 != 0) {
    return Invalid("frames", absl::StrCat("must be 4n+1 in [1, ", effective.max_frames, "], e.g. 17 or 81 (got ",
                                          shape.frames, ")"));
  }
  const int64_t tokens = LatentTokenCount(shape.width, shape.height, shape.frames);
  if (effective.max_tokens > 0 && tokens > effective.max_tokens) {
    return Invalid("width, height, frames",
                   absl::StrCat("together give ", tokens, " latent tokens ((frames−1)/4+1 · height/16 · "
                                "width/16); at most ",
                                effective.max_tokens, " are accepted"));
  }
  if (shape.steps < 1 || shape.steps > effective.max_steps) {
    return Invalid("steps", absl::StrCat("must be in [1, ", effective.max_steps, "] (got ", shape.steps, ")"));
  }
  // Guidance 0 is meaningful to the engine (the unconditional prediction only); 1 runs the conditional pass
  // only. NaN fails every comparison, so it is rejected here.
  if (!(std::isfinite(shape.guidance) && shape.guidance >= 0.0 && shape.guidance <= effective.max_guidance)) {
    return Invalid("guidance",
                   absl::StrFormat("must be finite and in [0, %g] (got %g)", effective.max_guidance, shape.guidance));
  }
  if (!(std::isfinite(shape.shift) && shape.shift > 0.0 && shape.shift <= effective.max_shift)) {
    return Invalid("shift", absl::StrFormat("must be finite and in (0, %g] (got %g)", effective.max_shift, shape.shift));
  }
  return absl::OkStatus();
}

int64_t EstimatePeakMemoryBytes(const PeakMemoryModel& model, int64_t width, int64_t height, int64_t frames) {
  if (!model.known()) return 0;
  const int64_t ranks = std::max<int64_t>(1, model.sequence_parallel);
  const int64_t tokens = LatentTokenCount(width, height, frames);
  const int64_t tokens_per_rank = (tokens + ranks - 1) / ranks;
  const int64_t denoise = SaturatingProduct(model.denoise_bytes_per_token, tokens_per_rank);
  const int64_t decode = SaturatingProduct(model.decode_bytes_per_pixel, SaturatingProduct(width, height));
  return SaturatingSum(model.resident_bytes, std::max(denoise, decode));
}

}  // namespace zoetrope
