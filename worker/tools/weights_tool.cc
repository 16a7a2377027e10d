#include "worker/tools/weights_tool.h"

#include <filesystem>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

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

}  // namespace zoetrope
