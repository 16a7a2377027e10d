// Live previews saved as files (`zoetrope generate --preview DIR`, `zoetrope submit --watch --preview DIR`):
// one image per preview, named by its step so that a folder lists in order and a viewer can follow along.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace zoetrope {

// The interval `--preview DIR` uses when --preview_every is left at 0.
inline constexpr int kDefaultPreviewEvery = 5;

// Writes `data` to DIR/step-NNN.EXT (NNN: the step, zero-padded to at least 3 digits; EXT from the media
// type: jpg for image/jpeg, else bin), creating DIR; the file appears whole (written beside, then renamed).
// Returns the path written.
absl::StatusOr<std::string> WritePreviewFile(const std::string& directory, int step, const std::string& media_type,
                                             const std::string& data);

}  // namespace zoetrope
