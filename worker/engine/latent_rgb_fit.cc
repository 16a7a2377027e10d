#include "worker/engine/latent_rgb_fit.h"

#include <cmath>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "worker/engine/random.h"

namespace zoetrope {

absl::Status LatentRgbFitter::Add(const Tensor& latent, const Tensor& frames) {
  if (latent.rank() != 4 || latent.dim(0) != kPreviewLatentChannels || latent.dim(1) < 1 ||
      latent.dtype() != DType::kF32 || !latent.device().is_cpu()) {
    return absl::InvalidArgumentError(absl::StrCat("fit: the latent must be host F32 [16, F, h, w] (got ",
                                                   latent.DebugString(), ")"));
  }
  const int64_t frames_in = latent.dim(1), h = latent.dim(2), w = latent.dim(3);
  if (frames.rank() != 4 || frames.dim(0) < 1 || frames.dim(1) != 3 || frames.dtype() != DType::kF32 ||
      !frames.device().is_cpu() || frames.dim(2) % h != 0 || frames.dim(3) % w != 0 ||
      frames.dim(2) / h != frames.dim(3) / w) {
    return absl::InvalidArgumentError(absl::StrCat("fit: the decoded frames must be host F32 [T, 3, s·", h, ", s·", w,
                                                   "] (got ", frames.DebugString(), ")"));
  }
  const int64_t scale = frames.dim(2) / h, frame_width = frames.dim(3);
  const float* x = latent.data<float>();
  const float* video = frames.data<float>();  // frame 0
  const int64_t plane = h * w, frame_plane = frames.dim(2) * frame_width;
  for (int64_t py = 0; py < h; ++py) {
    for (int64_t px = 0; px < w; ++px) {
      std::array<double, 17> feature;
      for (int c = 0; c < kPreviewLatentChannels; ++c) feature[c] = x[c * frames_in * plane + py * w + px];
      feature[16] = 1.0;
      std::array<double, 3> target{};
      for (int k = 0; k < 3; ++k) {
        double sum = 0.0;
        for (int64_t dy = 0; dy < scale; ++dy) {
          const float* row = video + k * frame_plane + (py * scale + dy) * frame_width + px * scale;
          for (int64_t dx = 0; dx < scale; ++dx) sum += row[dx];
        }
        target[k] = sum / static_cast<double>(scale * scale);
      }
      for (int i = 0; i < 17; ++i) {
        for (int j = 0; j < 17; ++j) gram_[i][j] += feature[i] * feature[j];
        for (int k = 0; k < 3; ++k) cross_[i][k] += feature[i] * target[k];
      }
      for (int k = 0; k < 3; ++k) {
        target_sum_[k] += target[k];
        target_squares_[k] += target[k] * target[k];
      }
      ++samples_;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<LatentRgbFit> LatentRgbFitter::Solve() const {
  if (samples_ < 17) {
    return absl::FailedPreconditionError(absl::StrCat("fit: ", samples_, " samples, at least 17 needed"));
  }
  // Gaussian elimination with partial pivoting on [G + λI | C]; λ relative to the trace keeps a
  // rank-deficient fit (a constant latent channel) solvable without moving a well-posed one measurably.
  double trace = 0.0;
  for (int i = 0; i < 17; ++i) trace += gram_[i][i];
  const double ridge = 1e-10 * trace / 17.0;
  std::array<std::array<double, 20>, 17> m{};
  for (int i = 0; i < 17; ++i) {
    for (int j = 0; j < 17; ++j) m[i][j] = gram_[i][j] + (i == j && i < 16 ? ridge : 0.0);
    for (int k = 0; k < 3; ++k) m[i][17 + k] = cross_[i][k];
  }
  for (int column = 0; column < 17; ++column) {
    int pivot = column;
    for (int row = column + 1; row < 17; ++row) {
      if (std::abs(m[row][column]) > std::abs(m[pivot][column])) pivot = row;
    }
    if (std::abs(m[pivot][column]) < 1e-300) return absl::FailedPreconditionError("fit: singular normal equations");
    std::swap(m[column], m[pivot]);
    for (int row = 0; row < 17; ++row) {
      if (row == column) continue;
      const double factor = m[row][column] / m[column][column];
      for (int j = column; j < 20; ++j) m[row][j] -= factor * m[column][j];
    }
  }
  std::array<std::array<double, 3>, 17> solution{};
  for (int i = 0; i < 17; ++i) {
    for (int k = 0; k < 3; ++k) solution[i][k] = m[i][17 + k] / m[i][i];
  }
  LatentRgbFit fit;
  fit.samples = samples_;
  for (int c = 0; c < 16; ++c) {
    for (int k = 0; k < 3; ++k) fit.factors.factors[c][k] = static_cast<float>(solution[c][k]);
  }
  for (int k = 0; k < 3; ++k) fit.factors.bias[k] = static_cast<float>(solution[16][k]);
  // Residual sum of squares from the accumulated moments: Σ(y − βᵀx)² = Σy² − 2βᵀΣxy + βᵀGβ.
  for (int k = 0; k < 3; ++k) {
    double cross_term = 0.0, quadratic = 0.0;
    for (int i = 0; i < 17; ++i) {
      cross_term += solution[i][k] * cross_[i][k];
      for (int j = 0; j < 17; ++j) quadratic += solution[i][k] * gram_[i][j] * solution[j][k];
    }
    const double residual = std::max(0.0, target_squares_[k] - 2.0 * cross_term + quadratic);
    const double n = static_cast<double>(samples_);
    const double variance = std::max(0.0, target_squares_[k] - target_sum_[k] * target_sum_[k] / n);
    fit.residual_rms[k] = std::sqrt(residual / n);
    fit.r_squared[k] = variance > 0.0 ? 1.0 - residual / variance : 1.0;
  }
  return fit;
}

Tensor RandomPreviewFitLatent(const LatentRgbFitOptions& options, int index) {
  const int h = options.height, w = options.width, coarse = std::max(1, options.coarse);
  Tensor latent = Tensor::Host({kPreviewLatentChannels, 1, h, w}, DType::kF32);
  float* out = latent.data<float>();
  std::vector<float> grid(static_cast<size_t>(kPreviewLatentChannels) * (coarse + 1) * (coarse + 1));
  std::vector<float> noise(static_cast<size_t>(kPreviewLatentChannels) * h * w);
  // Distinct streams per latent: offsets far apart in the seed's counter space.
  const uint64_t base = static_cast<uint64_t>(index) << 32;
  FillStandardNormal(options.seed, base, grid.data(), static_cast<int64_t>(grid.size()));
  FillStandardNormal(options.seed, base + (uint64_t{1} << 31), noise.data(), static_cast<int64_t>(noise.size()));
  const double smooth_weight = std::sqrt(std::max(0.0, 1.0 - options.noise * options.noise));
  for (int c = 0; c < kPreviewLatentChannels; ++c) {
    const float* g = grid.data() + static_cast<size_t>(c) * (coarse + 1) * (coarse + 1);
    for (int y = 0; y < h; ++y) {
      const double gy = h > 1 ? static_cast<double>(y) * coarse / (h - 1) : 0.0;
      const int y0 = std::min(static_cast<int>(gy), coarse - 1 < 0 ? 0 : coarse - 1);
      const double ty = gy - y0;
      for (int x = 0; x < w; ++x) {
        const double gx = w > 1 ? static_cast<double>(x) * coarse / (w - 1) : 0.0;
        const int x0 = std::min(static_cast<int>(gx), coarse - 1 < 0 ? 0 : coarse - 1);
        const double tx = gx - x0;
        auto at = [&](int yy, int xx) { return static_cast<double>(g[yy * (coarse + 1) + xx]); };
        // Bilinear interpolation of unit-variance corners has variance < 1 between them: good enough, the
        // fit needs variety, not an exact distribution.
        const double value = (1 - ty) * ((1 - tx) * at(y0, x0) + tx * at(y0, x0 + 1)) +
                             ty * ((1 - tx) * at(y0 + 1, x0) + tx * at(y0 + 1, x0 + 1));
        out[(static_cast<size_t>(c) * h + y) * w + x] =
            static_cast<float>(smooth_weight * value + options.noise * noise[(static_cast<size_t>(c) * h + y) * w + x]);
      }
    }
  }
  return latent;
}

absl::StatusOr<LatentRgbFit> FitLatentRgbFactors(const std::function<absl::StatusOr<Tensor>(const Tensor&)>& decode,
                                                 const LatentRgbFitOptions& options) {
  if (options.latents < 1 || options.height < 1 || options.width < 1) {
    return absl::InvalidArgumentError("fit: latents, height and width must be ≥ 1");
  }
  LatentRgbFitter fitter;
  for (int i = 0; i < options.latents; ++i) {
    const Tensor latent = RandomPreviewFitLatent(options, i);
    absl::StatusOr<Tensor> frames = decode(latent);
    if (!frames.ok()) return frames.status();
    if (absl::Status added = fitter.Add(latent, *frames); !added.ok()) return added;
  }
  return fitter.Solve();
}

std::string LatentRgbFactorsToJson(const LatentRgbFit& fit) {
  nlohmann::json json;
  json["factors"] = nlohmann::json::array();
  for (const auto& row : fit.factors.factors) json["factors"].push_back({row[0], row[1], row[2]});
  json["bias"] = {fit.factors.bias[0], fit.factors.bias[1], fit.factors.bias[2]};
  json["samples"] = fit.samples;
  json["residual_rms"] = {fit.residual_rms[0], fit.residual_rms[1], fit.residual_rms[2]};
  json["r_squared"] = {fit.r_squared[0], fit.r_squared[1], fit.r_squared[2]};
  return json.dump(1);
}

absl::StatusOr<LatentRgbFactors> ReadLatentRgbFactors(const std::string& path) {
  std::ifstream file(path);
  if (!file) return absl::NotFoundError(absl::StrCat(path, ": cannot read"));
  std::stringstream text;
  text << file.rdbuf();
  const nlohmann::json json = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  auto bad = [&](const std::string& why) { return absl::InvalidArgumentError(absl::StrCat(path, ": ", why)); };
  if (json.is_discarded() || !json.is_object()) return bad("not a JSON object");
  if (!json.contains("factors") || !json["factors"].is_array() || json["factors"].size() != kPreviewLatentChannels) {
    return bad("\"factors\" must be 16 rows of [r, g, b]");
  }
  if (!json.contains("bias") || !json["bias"].is_array() || json["bias"].size() != 3) {
    return bad("\"bias\" must be [r, g, b]");
  }
  LatentRgbFactors factors;
  for (int c = 0; c < kPreviewLatentChannels; ++c) {
    const nlohmann::json& row = json["factors"][c];
    if (!row.is_array() || row.size() != 3) return bad(absl::StrCat("factors[", c, "] must be [r, g, b]"));
    for (int k = 0; k < 3; ++k) {
      if (!row[k].is_number() || !std::isfinite(row[k].get<double>())) {
        return bad(absl::StrCat("factors[", c, "][", k, "] must be a finite number"));
      }
      factors.factors[c][k] = row[k].get<float>();
    }
  }
  for (int k = 0; k < 3; ++k) {
    if (!json["bias"][k].is_number() || !std::isfinite(json["bias"][k].get<double>())) {
      return bad(absl::StrCat("bias[", k, "] must be a finite number"));
    }
    factors.bias[k] = json["bias"][k].get<float>();
  }
  return factors;
}

}  // namespace zoetrope
