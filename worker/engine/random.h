// Deterministic, counter-based normal random numbers for weights and initial noise.
//
// Value i of a stream depends only on (key, i), so generation is parallel, independent of tensor order
// or file layout, and identical on every machine and backend: the CPU and CUDA pipelines start from the
// same noise for the same seed. (It is not PyTorch's Philox stream; spec/wan21.md U-3.)
#pragma once

#include <cstdint>
#include "absl/strings/string_view.h"

namespace zoetrope {

// FNV-1a of a name mixed with a seed: the key of one tensor's stream.
uint64_t StreamKey(uint64_t seed, absl::string_view name);
// Fills values[0..count) with standard normal samples of stream `key`, starting at element `offset`.
void FillStandardNormal(uint64_t key, uint64_t offset, float* values, int64_t count);

}  // namespace zoetrope
