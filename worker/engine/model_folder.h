// Finds the four parts of a text-to-video model in a folder, in either published layout:
//
//   original Wan2.1 release              diffusers release
//   config.json + diffusion_pytorch_      transformer/      (config.json + weights)
//     model*.safetensors (DiT)            text_encoder/     (umT5 weights)
//   models_t5_*.safetensors (umT5)        vae/              (VAE weights)
//   *VAE*.safetensors (VAE)               tokenizer/spiece.model
//   google/umt5-xxl/spiece.model
//
// The official text encoder and VAE ship as PyTorch pickles (.pth), which C++ cannot read:
// scripts/convert-wan-checkpoint.py turns them into safetensors with the same key names once, and an
// error says so when only the .pth is there.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace zoetrope {

struct ModelFiles {
  std::string folder;
  std::string transformer;   // a DiT checkpoint path for WeightSource (file, index or folder)
  std::string text_encoder;  // umT5 checkpoint path
  std::string vae;           // VAE checkpoint path
  std::string tokenizer;     // spiece.model
  bool diffusers_layout = false;
};

// Errors name the folder and every part that is missing, with what was looked for.
absl::StatusOr<ModelFiles> FindModelFiles(const std::string& folder);

}  // namespace zoetrope
