#include "worker/engine/model_folder.h"

#include <filesystem>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace zoetrope {
namespace {

namespace fs = std::filesystem;

// Files directly in `directory` whose name satisfies `matches`, sorted.
template <typename Predicate>
std::vector<fs::path> FilesIn(const fs::path& directory, Predicate matches) {
  std::vector<fs::path> found;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(directory, error)) {
    if (entry.is_regular_file() && matches(entry.path().filename().string())) found.push_back(entry.path());
  }
  std::sort(found.begin(), found.end());
  return found;
}

bool IsSafetensors(const std::string& name) {
  return absl::EndsWith(name, ".safetensors") || absl::EndsWith(name, ".safetensors.index.json");
}

// One checkpoint among `candidates`: an index when there is one (shards), else the single file.
std::string PickCheckpoint(const std::vector<fs::path>& candidates) {
  for (const fs::path& path : candidates) {
    if (absl::EndsWith(path.filename().string(), ".index.json")) return path.string();
  }
  return candidates.size() == 1 ? candidates[0].string() : "";
}

}  // namespace

absl::StatusOr<ModelFiles> FindModelFiles(const std::string& folder) {
  const fs::path root(folder);
  std::error_code error;
  if (!fs::is_directory(root, error)) {
    return absl::NotFoundError(absl::StrCat(folder, ": model folder not found"));
  }
  ModelFiles files;
  files.folder = folder;
  std::vector<std::string> problems;
  files.diffusers_layout = fs::is_directory(root / "transformer", error);

  if (files.diffusers_layout) {
    auto part = [&](const char* name, std::string* target) {
      const fs::path directory = root / name;
      if (!fs::is_directory(directory, error) || FilesIn(directory, IsSafetensors).empty()) {
        problems.push_back(absl::StrCat(name, "/ (no .safetensors weights)"));
        return;
      }
      *target = directory.string();
    };
    part("transformer", &files.transformer);
    part("text_encoder", &files.text_encoder);
    part("vae", &files.vae);
    const fs::path tokenizer = root / "tokenizer" / "spiece.model";
    if (fs::exists(tokenizer, error)) {
      files.tokenizer = tokenizer.string();
    } else {
      problems.push_back("tokenizer/spiece.model");
    }
  } else {
    const auto dit = FilesIn(root, [](const std::string& name) {
      return absl::StartsWith(name, "diffusion_pytorch_model") && IsSafetensors(name);
    });
    files.transformer = dit.empty() ? "" : root.string();
    if (files.transformer.empty()) problems.push_back("diffusion_pytorch_model*.safetensors (the DiT)");
    if (!fs::exists(root / "config.json", error)) problems.push_back("config.json (the DiT config)");

    auto converted = [&](const char* description, auto matches_name, std::string* target) {
      const auto safetensors = FilesIn(root, [&](const std::string& name) { return matches_name(name) && IsSafetensors(name); });
      *target = PickCheckpoint(safetensors);
      if (!target->empty()) return;
      const auto pickles = FilesIn(root, [&](const std::string& name) {
        return matches_name(name) && absl::EndsWith(name, ".pth");
      });
      if (!pickles.empty()) {
        problems.push_back(absl::StrCat(description, ": found ", pickles[0].filename().string(),
                                        ", a PyTorch pickle; convert it once with "
                                        "scripts/convert-wan-checkpoint.py"));
      } else {
        problems.push_back(description);
      }
    };
    converted("models_t5_*.safetensors (the umT5 text encoder)",
              [](const std::string& name) { return absl::StartsWith(name, "models_t5_"); }, &files.text_encoder);
    converted("*VAE*.safetensors (the VAE)",
              [](const std::string& name) { return absl::StrContains(name, "VAE") || absl::StrContains(name, "vae"); },
              &files.vae);
    for (const fs::path& tokenizer : {root / "google" / "umt5-xxl" / "spiece.model", root / "tokenizer" / "spiece.model",
                                      root / "spiece.model"}) {
      if (fs::exists(tokenizer, error)) {
        files.tokenizer = tokenizer.string();
        break;
      }
    }
    if (files.tokenizer.empty()) problems.push_back("google/umt5-xxl/spiece.model (the tokenizer)");
  }
  if (!problems.empty()) {
    return absl::NotFoundError(absl::StrCat(folder, ": incomplete model folder (", files.diffusers_layout ? "diffusers" : "original",
                                            " layout), missing: ", absl::StrJoin(problems, "; ")));
  }
  return files;
}

}  // namespace zoetrope
