#include "worker/tools/weights_tool.h"

#include <cstdio>
#include <filesystem>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/progress_bar.h"

namespace zoetrope {

absl::StatusOr<DType> ParseStoredDType(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  if (lower == "f32") return DType::kF32;
  if (lower == "bf16") return DType::kBF16;
  if (lower == "f16") return DType::kF16;
  return absl::InvalidArgumentError(absl::StrCat("--dtype must be f32, bf16 or f16 (got \"", name, "\")"));
}

absl::Status CreateParentDirectory(const std::string& output_file) {
  const std::filesystem::path parent = std::filesystem::path(output_file).parent_path();
  if (parent.empty()) return absl::OkStatus();
  std::error_code error;
  std::filesystem::create_directories(parent, error);
  if (error) return absl::InternalError(absl::StrCat(parent.string(), ": ", error.message()));
  return absl::OkStatus();
}

int ReportToolError(absl::string_view tool, const absl::Status& status, int exit_code, absl::string_view context) {
  const std::string prefix = context.empty() ? std::string(tool) : absl::StrCat(tool, ": ", context);
  std::fprintf(stderr, "%s: %s\n", prefix.c_str(), std::string(status.message()).c_str());
  return exit_code;
}

int RunWeightsWriter(absl::string_view tool, absl::string_view label, const std::string& output,
                     absl::string_view dtype_flag,
                     const std::function<absl::Status(DType stored_dtype, const WeightsProgress& progress)>& write) {
  if (output.empty()) return ReportToolError(tool, absl::InvalidArgumentError("-o FILE is required"), 2);
  absl::StatusOr<DType> dtype = ParseStoredDType(dtype_flag);
  if (!dtype.ok()) return ReportToolError(tool, dtype.status(), 2);
  if (absl::Status created = CreateParentDirectory(output); !created.ok()) return ReportToolError(tool, created, 1);
  // The bar is made on the first report, when the writer knows how many tensors there are.
  std::unique_ptr<ProgressBar> bar;
  const WeightsProgress progress = [&](size_t done, size_t total) {
    if (bar == nullptr) bar = std::make_unique<ProgressBar>(std::string(label), static_cast<int64_t>(total), "tensors");
    bar->Update(static_cast<int64_t>(done));
  };
  if (absl::Status status = write(*dtype, progress); !status.ok()) return ReportToolError(tool, status, 1);
  if (bar != nullptr) bar->Finish();
  std::printf("%s\n", output.c_str());
  return 0;
}

}  // namespace zoetrope
