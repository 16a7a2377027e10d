// Fitting the latent → RGB factors of live previews (latent_preview.h) for any VAE, from its decoder:
// decode random latents, pair every latent pixel with the mean colour of the 8 × 8 video pixels it
// becomes, and solve the least-squares problem RGB ≈ A·latent + b (17 unknowns per colour channel, in
// double, normal equations with a tiny ridge for rank-deficient data). The Wan2.1 factors of
// Wan21LatentRgbFactors are such a fit of the released VAE; `zoetrope-fit-preview-factors` runs this one.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/tensor.h"
#include "worker/engine/latent_preview.h"

namespace zoetrope {

struct LatentRgbFit {
  LatentRgbFactors factors;
  int64_t samples = 0;                  // latent pixels fitted
  std::array<double, 3> residual_rms{};  // per colour, in the [−1, 1] units of the decoded video
  std::array<double, 3> r_squared{};    // per colour: 1 − residual variance / target variance
};

// Accumulates (latent pixel, colour) pairs; Solve may be called at any time.
class LatentRgbFitter {
 public:
  // `latent`: host F32 [16, 1, h, w]; `frame`: host F32 [1 or more, 3, s·h, s·w] (frame 0 is used), the
  // video frame the latent frame decodes to. Every latent pixel is paired with the mean of its s × s block.
  absl::Status Add(const Tensor& latent, const Tensor& frames);
  // Errors when fewer than 17 samples were added. The residuals are measured over the samples added.
  absl::StatusOr<LatentRgbFit> Solve() const;

 private:
  // Normal equations: Σ x xᵀ (x = [latent(16), 1]) and Σ x yᵀ, and Σ y, Σ y² for the statistics.
  std::array<std::array<double, 17>, 17> gram_{};
  std::array<std::array<double, 3>, 17> cross_{};
  std::array<double, 3> target_sum_{};
  std::array<double, 3> target_squares_{};
  int64_t samples_ = 0;
};

struct LatentRgbFitOptions {
  int latents = 16;     // random latents decoded
  int height = 16;      // latent pixels per latent (one latent frame each)
  int width = 16;
  uint64_t seed = 0;
  // Latents as a decoder sees them: smooth random fields (a coarse normal grid, bilinearly upsampled, plus
  // a little white noise) rather than white noise, whose decode is not a picture.
  int coarse = 4;
  double noise = 0.1;
};

// The random latents of the fit: host F32 [16, 1, height, width], standard normal overall, deterministic.
Tensor RandomPreviewFitLatent(const LatentRgbFitOptions& options, int index);

// Decodes options.latents random latents with `decode` (host F32 [16, 1, h, w] → host F32 [T, 3, s·h, s·w])
// and fits the factors.
absl::StatusOr<LatentRgbFit> FitLatentRgbFactors(const std::function<absl::StatusOr<Tensor>(const Tensor&)>& decode,
                                                 const LatentRgbFitOptions& options);

// The factors as JSON: {"factors": [[r, g, b] × 16], "bias": [r, g, b], ...} (extra fields allowed), the
// format `zoetrope-fit-preview-factors` writes and `--preview_factors` reads.
std::string LatentRgbFactorsToJson(const LatentRgbFit& fit);
absl::StatusOr<LatentRgbFactors> ReadLatentRgbFactors(const std::string& path);

}  // namespace zoetrope
