// `zoetrope generate`: one text-to-video generation on this machine (no service): prompt → umT5 →
// DiT sampling with CFG → VAE → MP4 (or PNG frames, or raw tensors), with a progress bar.
#pragma once

namespace zoetrope {

int RunGenerateCommand(int argc, char** argv);

}  // namespace zoetrope
