// Pieces the random-weight writers (zoetrope-mkweights, -text, -vae) share.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/dtype.h"

namespace zoetrope {

// The value of a --dtype flag: "f32", "bf16" or "f16" (any case).
absl::StatusOr<DType> ParseStoredDType(absl::string_view name);
// Creates the folder that will hold `output_file` (and its parents); the error names the folder.
absl::Status CreateParentDirectory(const std::string& output_file);

}  // namespace zoetrope
