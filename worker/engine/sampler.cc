#include "worker/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/check.h"

namespace zoetrope {
namespace {

// The terms of one Backend::Combine call. The samplers expand each update into one linear combination of
// the tensors involved (one kernel, one allocation per update); the same tensor added twice is merged,
// and exact zeros are left out, so the σ = 0 step returns 1.0·m (exactly the x0 prediction) and terms
// scaled by a vanishing 1/r (σ = 1 in the history) cost nothing.
class LinearCombination {
 public:
  void Add(double coefficient, const Tensor& tensor) {
    ZCHECK_MSG(std::isfinite(coefficient), "sampler coefficient " << coefficient << " is not finite");
    for (Term& term : terms_) {
      if (term.tensor == &tensor) {
        term.coefficient += coefficient;
        return;
      }
    }
    terms_.push_back({coefficient, &tensor});
  }

  Tensor Evaluate(Backend& backend) {
    std::erase_if(terms_, [](const Term& term) { return term.coefficient == 0.0; });
    ZCHECK_MSG(!terms_.empty(), "sampler update with every coefficient zero");
    return backend.Combine(terms_);
  }

 private:
  std::vector<Term> terms_;
};

// λ = ln α − ln σ with α = 1 − σ (half the log-SNR), from the float32 sigma evaluated in double.
// σ = 0 gives +∞ (the clean end) and σ = 1 gives −∞ (pure noise, DPM++'s first sigma); IEEE arithmetic
// on these infinities yields the limits the official float32 code reaches (expm1(−∞) = −1, x/∞ = 0).
double Lambda(float sigma) {
  if (sigma == 0.0f) return std::numeric_limits<double>::infinity();
  if (sigma == 1.0f) return -std::numeric_limits<double>::infinity();
  const double s = sigma;
  return std::log(1.0 - s) - std::log(s);
}

// m = x − σ·v: the x0 prediction of a flow-matching velocity.
Tensor PredictX0(Backend& backend, double sigma, const Tensor& velocity, const Tensor& sample) {
  LinearCombination prediction;
  prediction.Add(1.0, sample);
  prediction.Add(-sigma, velocity);
  return prediction.Evaluate(backend);
}

// FlowUniPCMultistepScheduler with solver_order=2, bh2, predict_x0, lower_order_final, corrector on
// every step (spec §4.5).
class UniPcSampler final : public Sampler {
 public:
  explicit UniPcSampler(FlowSchedule schedule) : Sampler(SamplerKind::kUniPC, std::move(schedule)) {}

 protected:
  Tensor StepImpl(Backend& backend, int i, const Tensor& velocity, const Tensor& sample) override {
    const std::vector<float>& sigmas = schedule().sigmas;
    // The x0 prediction uses the sample as passed in (the predictor's output), before correction.
    Tensor model_x0 = PredictX0(backend, sigmas[i], velocity, sample);

    Tensor corrected;
    if (i == 0) {
      // Kept for the next step's corrector: copy, so a caller that reuses its buffer cannot change it.
      LinearCombination copy;
      copy.Add(1.0, sample);
      corrected = copy.Evaluate(backend);
    } else {
      corrected = Correct(backend, i, model_x0);
    }

    // Warm-up at step 0 and lower_order_final at the last step.
    const int order = std::min({2, steps() - i, i + 1});
    Tensor next = Predict(backend, i, order, corrected, model_x0);

    x0_before_previous_ = std::move(previous_x0_);
    previous_x0_ = std::move(model_x0);
    last_sample_ = std::move(corrected);
    last_order_ = order;
    return next;
  }

 private:
  // UniC: recomputes x_i from the stored x_{i−1} (the predictor's input at step i−1), now that m_i is
  // known. The predicted x_i itself enters only through m_i.
  Tensor Correct(Backend& backend, int i, const Tensor& model_x0) {
    const std::vector<float>& sigmas = schedule().sigmas;
    const double sigma = sigmas[i];
    const double alpha = 1.0 - sigma;
    const double lambda = Lambda(sigmas[i]);
    const double lambda_previous = Lambda(sigmas[i - 1]);
    const double h = lambda - lambda_previous;
    const double hh = -h;  // predict_x0
    const double phi_1 = std::expm1(hh);
    const double b_h = std::expm1(hh);  // bh2
    const double k = -alpha * b_h;      // x_i ← base + k·corr

    LinearCombination update;
    update.Add(sigma / sigmas[i - 1], last_sample_);
    update.Add(-alpha * phi_1, previous_x0_);
    if (last_order_ == 1) {
      // corr = 0.5·(m_i − m_{i−1})
      update.Add(0.5 * k, model_x0);
      update.Add(-0.5 * k, previous_x0_);
    } else {
      ZCHECK(last_order_ == 2 && i >= 2);
      // r = (λ_{i−2} − λ_{i−1}) / h. Carried as 1/r, which is 0 rather than NaN when σ_{i−2} = 1.
      const double inverse_r = h / (Lambda(sigmas[i - 2]) - lambda_previous);
      const double g1 = phi_1 / hh - 1.0;
      const double b1 = g1 / b_h;
      const double g2 = g1 / hh - 0.5;
      const double b2 = 2.0 * g2 / b_h;
      // [[1, 1], [r, 1]]·[ρ0, ρ1]ᵀ = [b1, b2]ᵀ by Cramer's rule, numerator and denominator divided by r.
      const double rho_0 = inverse_r * (b1 - b2) / (inverse_r - 1.0);
      const double rho_1 = (inverse_r * b2 - b1) / (inverse_r - 1.0);
      // corr = ρ0·D1 + ρ1·(m_i − m_{i−1}),  D1 = (m_{i−2} − m_{i−1}) / r
      update.Add(k * rho_0 * inverse_r, x0_before_previous_);
      update.Add(-k * rho_0 * inverse_r, previous_x0_);
      update.Add(k * rho_1, model_x0);
      update.Add(-k * rho_1, previous_x0_);
    }
    return update.Evaluate(backend);
  }

  // UniP: x_{i+1} from x_i (corrected) and m_i, m_{i−1}. Runs before the history is shifted.
  Tensor Predict(Backend& backend, int i, int order, const Tensor& sample, const Tensor& model_x0) {
    const std::vector<float>& sigmas = schedule().sigmas;
    LinearCombination update;
    if (sigmas[i + 1] == 0.0f) {
      // λ_{i+1} = ∞: the update collapses to the x0 prediction (σ ratio 0, α = 1, expm1(−∞) = −1).
      update.Add(1.0, model_x0);
      return update.Evaluate(backend);
    }
    const double sigma_next = sigmas[i + 1];
    const double alpha_next = 1.0 - sigma_next;
    const double lambda = Lambda(sigmas[i]);
    const double h = Lambda(sigmas[i + 1]) - lambda;
    const double phi_1 = std::expm1(-h);
    const double b_h = std::expm1(-h);  // bh2

    update.Add(sigma_next / sigmas[i], sample);
    update.Add(-alpha_next * phi_1, model_x0);
    if (order == 2) {
      // D1 = (m_{i−1} − m_i) / r with r = (λ_{i−1} − λ_i) / h, and ρ = 0.5 (the order-2 shortcut).
      const double inverse_r = h / (Lambda(sigmas[i - 1]) - lambda);
      const double k = -alpha_next * b_h * 0.5 * inverse_r;
      update.Add(k, previous_x0_);
      update.Add(-k, model_x0);
    }
    return update.Evaluate(backend);
  }

  Tensor previous_x0_;         // m_{i−1}
  Tensor x0_before_previous_;  // m_{i−2}
  Tensor last_sample_;         // corrected x_{i−1}
  int last_order_ = 0;         // predictor order of step i−1 = corrector order of step i
};

// FlowDPMSolverMultistepScheduler, dpmsolver++, solver_order=2, midpoint, final_sigmas_type='zero'
// (spec §4.6).
class DpmPlusPlus2MSampler final : public Sampler {
 public:
  explicit DpmPlusPlus2MSampler(FlowSchedule schedule)
      : Sampler(SamplerKind::kDpmPlusPlus2M, std::move(schedule)) {}

 protected:
  Tensor StepImpl(Backend& backend, int i, const Tensor& velocity, const Tensor& sample) override {
    const std::vector<float>& sigmas = schedule().sigmas;
    Tensor model_x0 = PredictX0(backend, sigmas[i], velocity, sample);

    const double sigma_next = sigmas[i + 1];
    const double alpha_next = 1.0 - sigma_next;
    const double lambda = Lambda(sigmas[i]);
    // σ_0 = 1 and σ_N = 0 make h = +∞ on the first and last step: e^{−h} − 1 = −1.
    const double h = Lambda(sigmas[i + 1]) - lambda;
    const double exp_minus_h_minus_1 = std::expm1(-h);

    LinearCombination update;
    update.Add(sigma_next / sigmas[i], sample);
    update.Add(-alpha_next * exp_minus_h_minus_1, model_x0);
    // First order at step 0 (no history) and at the final step (final_sigmas_type = 'zero').
    const bool second_order = i > 0 && i < steps() - 1;
    if (second_order) {
      // D1 = (m_i − m_{i−1}) / r0, r0 = h0 / h. With σ_{i−1} = 1, h0 = ∞ and 1/r0 = 0, so D1 = 0.
      const double inverse_r0 = h / (lambda - Lambda(sigmas[i - 1]));
      const double k = -0.5 * alpha_next * exp_minus_h_minus_1 * inverse_r0;
      update.Add(k, model_x0);
      update.Add(-k, previous_x0_);
    }
    Tensor next = update.Evaluate(backend);
    previous_x0_ = std::move(model_x0);
    return next;
  }

 private:
  Tensor previous_x0_;  // m_{i−1}
};

// x_{i+1} = x_i + (σ_{i+1} − σ_i)·v_i on the UniPC schedule.
class EulerSampler final : public Sampler {
 public:
  explicit EulerSampler(FlowSchedule schedule) : Sampler(SamplerKind::kEuler, std::move(schedule)) {}

 protected:
  Tensor StepImpl(Backend& backend, int i, const Tensor& velocity, const Tensor& sample) override {
    const std::vector<float>& sigmas = schedule().sigmas;
    LinearCombination update;
    update.Add(1.0, sample);
    update.Add(static_cast<double>(sigmas[i + 1]) - static_cast<double>(sigmas[i]), velocity);
    return update.Evaluate(backend);
  }
};

}  // namespace

absl::StatusOr<SamplerKind> ParseSamplerKind(std::string_view name) {
  if (name == "unipc") return SamplerKind::kUniPC;
  if (name == "dpm++" || name == "dpmpp") return SamplerKind::kDpmPlusPlus2M;
  if (name == "euler") return SamplerKind::kEuler;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown sampler '", std::string(name), "'; expected one of: unipc, dpm++ (or dpmpp), euler"));
}

std::string_view SamplerKindName(SamplerKind kind) {
  switch (kind) {
    case SamplerKind::kUniPC:
      return "unipc";
    case SamplerKind::kDpmPlusPlus2M:
      return "dpm++";
    case SamplerKind::kEuler:
      return "euler";
  }
  return "unknown";
}

Tensor ApplyGuidance(Backend& backend, const Tensor& cond, const Tensor& uncond, double guidance) {
  ZCHECK_MSG(cond.shape() == uncond.shape(),
             "ApplyGuidance cond " << cond.DebugString() << " uncond " << uncond.DebugString());
  // uncond + g·(cond − uncond) as one combination: g·cond + (1 − g)·uncond.
  LinearCombination guided;
  guided.Add(guidance, cond);
  guided.Add(1.0 - guidance, uncond);
  return guided.Evaluate(backend);
}

absl::StatusOr<std::unique_ptr<Sampler>> Sampler::Create(SamplerKind kind, int steps, double shift) {
  absl::StatusOr<FlowSchedule> schedule = MakeFlowSchedule(kind, steps, shift);
  if (!schedule.ok()) return schedule.status();
  switch (kind) {
    case SamplerKind::kUniPC:
      return std::unique_ptr<Sampler>(new UniPcSampler(*std::move(schedule)));
    case SamplerKind::kDpmPlusPlus2M:
      return std::unique_ptr<Sampler>(new DpmPlusPlus2MSampler(*std::move(schedule)));
    case SamplerKind::kEuler:
      return std::unique_ptr<Sampler>(new EulerSampler(*std::move(schedule)));
  }
  return absl::InvalidArgumentError("unknown sampler kind");
}

Tensor Sampler::Step(Backend& backend, int step_index, const Tensor& velocity, const Tensor& sample) {
  ZCHECK_MSG(step_index == next_step_ && step_index < steps(),
             "Sampler::Step(" << step_index << ") called out of order: expected step " << next_step_ << " of "
                              << steps());
  ZCHECK_MSG(velocity.shape() == sample.shape(),
             "Sampler::Step velocity " << velocity.DebugString() << " sample " << sample.DebugString());
  ZCHECK_MSG(velocity.device() == backend.device() && sample.device() == backend.device(),
             "Sampler::Step tensors on " << sample.device().ToString() << " and " << velocity.device().ToString()
                                         << ", backend on " << backend.device().ToString());
  if (step_index == 0) {
    sample_shape_ = sample.shape();
  } else {
    ZCHECK_MSG(sample.shape() == sample_shape_, "Sampler::Step sample " << sample.DebugString()
                                                                        << " changed shape from "
                                                                        << ShapeToString(sample_shape_));
  }
  Tensor next = StepImpl(backend, step_index, velocity, sample);
  ++next_step_;
  return next;
}

}  // namespace zoetrope
