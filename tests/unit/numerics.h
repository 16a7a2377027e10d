// The one relative error every numerical test uses: ‖actual − expected‖₂ / ‖expected‖₂ in double, with the
// reference (`expected`) first. It is +inf when the sizes differ or any value is not finite, so a NaN can
// never pass a `<` or `<=` bound.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/tensor.h"

namespace zoetrope::test {

template <typename Expected, typename Actual>
double RelativeL2(const std::vector<Expected>& expected, const std::vector<Actual>& actual) {
  if (expected.size() != actual.size()) return std::numeric_limits<double>::infinity();
  double difference = 0.0, norm = 0.0;
  for (size_t i = 0; i < expected.size(); ++i) {
    const double reference = static_cast<double>(expected[i]), value = static_cast<double>(actual[i]);
    if (!std::isfinite(reference) || !std::isfinite(value)) return std::numeric_limits<double>::infinity();
    difference += (value - reference) * (value - reference);
    norm += reference * reference;
  }
  return std::sqrt(difference / std::max(norm, 1e-300));
}

// Host tensors of any float dtype.
template <typename Expected>
double RelativeL2(const std::vector<Expected>& expected, const Tensor& actual) {
  return RelativeL2(expected, ToFloatVector(actual));
}
inline double RelativeL2(const Tensor& expected, const Tensor& actual) {
  if (expected.shape() != actual.shape()) return std::numeric_limits<double>::infinity();
  return RelativeL2(ToFloatVector(expected), ToFloatVector(actual));
}

}  // namespace zoetrope::test
