#include "worker/engine/flow_schedule.h"

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace zoetrope {
namespace {

// Wan's schedulers are built with num_train_timesteps = 1000.
constexpr double kTrainTimesteps = 1000.0;

// numpy.linspace(start, stop, count + 1)[index] for index < count, evaluated the way numpy does it
// (index · step + start, step = (stop − start) / count) so the float64 values match bit for bit.
double LinspacePoint(double start, double stop, int count, int index) {
  const double step = (stop - start) / count;
  return static_cast<double>(index) * step + start;
}

}  // namespace

absl::StatusOr<FlowSchedule> MakeFlowSchedule(SamplerKind kind, int steps, double shift) {
  if (steps < 1 || steps > kMaxSamplingSteps) {
    return absl::InvalidArgumentError(
        absl::StrCat("steps must be between 1 and ", kMaxSamplingSteps, ", got ", steps));
  }
  if (!std::isfinite(shift) || !(shift > 0.0)) {
    return absl::InvalidArgumentError(absl::StrCat("shift must be a finite number > 0, got ", shift));
  }

  // FlowUniPCMultistepScheduler starts from the first sigma of its 1000-step training table,
  // 1 − 0.001 rounded to float32; the DPM++ path passes custom sigmas starting at exactly 1.
  const double sigma_start = kind == SamplerKind::kDpmPlusPlus2M ? 1.0 : static_cast<double>(0.999f);

  FlowSchedule schedule;
  schedule.timesteps.reserve(steps);
  schedule.sigmas.reserve(steps + 1);
  for (int i = 0; i < steps; ++i) {
    const double unshifted = LinspacePoint(sigma_start, 0.0, steps, i);
    // Same operation order as the Python `shift * s / (1 + (shift - 1) * s)`.
    const double shifted = shift * unshifted / (1.0 + (shift - 1.0) * unshifted);
    // The timesteps come from the float64 sigma and are truncated (numpy astype / torch .to(int64)).
    schedule.timesteps.push_back(static_cast<int64_t>(shifted * kTrainTimesteps));
    schedule.sigmas.push_back(static_cast<float>(shifted));
  }
  schedule.sigmas.push_back(0.0f);  // final_sigmas_type = 'zero'

  for (int i = 0; i < steps; ++i) {
    const float current = schedule.sigmas[i];
    const float next = schedule.sigmas[i + 1];
    if (!(current > next) || !(current > 0.0f) || !(current <= 1.0f)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "shift ", shift, " with steps ", steps, " gives a degenerate sigma schedule (sigma[", i, "] = ", current,
          ", sigma[", i + 1, "] = ", next, "); sigmas must be strictly decreasing in (0, 1] in float32"));
    }
  }
  return schedule;
}

}  // namespace zoetrope
