// `zoetrope generate`: a local generation on this machine (no service). Until the text encoder and
// VAE land, it runs text-free: the prompt selects a deterministic stand-in embedding and the result is
// the denoised latent, written as safetensors.
#pragma once

namespace zoetrope {

int RunGenerateCommand(int argc, char** argv);

}  // namespace zoetrope
