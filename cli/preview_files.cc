#include "cli/preview_files.h"

#include <filesystem>
#include <fstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace zoetrope {

absl::StatusOr<std::string> WritePreviewFile(const std::string& directory, int step, const std::string& media_type,
                                             const std::string& data) {
  std::error_code error;
  std::filesystem::create_directories(directory, error);
  if (error) return absl::InternalError(absl::StrCat("preview folder ", directory, ": ", error.message()));
  const std::string extension = media_type == "image/jpeg" ? "jpg" : "bin";
  const std::string path =
      (std::filesystem::path(directory) / absl::StrFormat("step-%03d.%s", step, extension)).string();
  const std::string partial = path + ".partial";
  {
    std::ofstream file(partial, std::ios::binary | std::ios::trunc);
    file.write(data.data(), static_cast<std::streamsize>(data.size()));
    if (!file) return absl::InternalError(absl::StrCat("cannot write ", partial));
  }
  std::filesystem::rename(partial, path, error);
  if (error) return absl::InternalError(absl::StrCat("rename ", partial, ": ", error.message()));
  return path;
}

}  // namespace zoetrope
