// What the random-weight writers (zoetrope-mkweights, -text, -vae) share: everything after each has read
// its own flags and found its config.
#pragma once

#include <cstdint>
#include <functional>
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

// Called after each tensor with (tensors written, total).
using WeightsProgress = std::function<void(size_t, size_t)>;

// One writer run: checks the required -o path and the --dtype value, creates the output folder, calls
// `write` (with the stored dtype and a progress callback that drives a progress bar labelled `label`), and
// prints the written path. Errors go to stderr prefixed with `tool`. Returns the process exit code: 0, 2 for
// a bad flag, 1 when writing failed.
int RunWeightsWriter(absl::string_view tool, absl::string_view label, const std::string& output,
                     absl::string_view dtype_flag,
                     const std::function<absl::Status(DType stored_dtype, const WeightsProgress& progress)>& write);

// Prints "TOOL: CONTEXT: message" (or "TOOL: message" without a context) and returns `exit_code`.
int ReportToolError(absl::string_view tool, const absl::Status& status, int exit_code, absl::string_view context = "");

}  // namespace zoetrope
