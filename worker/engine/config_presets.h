// The one way the engine's configs (DiT, umT5, VAE) keep their named presets: a table of (name, maker),
// from which both the by-name lookup and the list of names come, so the two can never disagree.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"

namespace zoetrope {

template <typename Config>
struct ConfigPreset {
  const char* name;
  Config (*make)();
};

template <typename Config, size_t kCount>
std::vector<std::string> PresetNames(const ConfigPreset<Config> (&presets)[kCount]) {
  std::vector<std::string> names;
  for (const ConfigPreset<Config>& preset : presets) names.emplace_back(preset.name);
  return names;
}

// NOT_FOUND names `kind` ("model config", "VAE config", ...) and lists the known names.
template <typename Config, size_t kCount>
absl::StatusOr<Config> FindPreset(const ConfigPreset<Config> (&presets)[kCount], absl::string_view name,
                                  absl::string_view kind) {
  for (const ConfigPreset<Config>& preset : presets) {
    if (name == preset.name) return preset.make();
  }
  return absl::NotFoundError(
      absl::StrCat("unknown ", kind, " \"", name, "\" (known: ", absl::StrJoin(PresetNames(presets), ", "), ")"));
}

}  // namespace zoetrope
