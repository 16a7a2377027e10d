#include "worker/engine/random.h"

#include <cmath>

namespace zoetrope {
namespace {

inline uint64_t SplitMix64(uint64_t state) {
  state += 0x9e3779b97f4a7c15ull;
  state = (state ^ (state >> 30)) * 0xbf58476d1ce4e5b9ull;
  state = (state ^ (state >> 27)) * 0x94d049bb133111ebull;
  return state ^ (state >> 31);
}

}  // namespace

uint64_t StreamKey(uint64_t seed, absl::string_view name) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (unsigned char character : name) {
    hash ^= character;
    hash *= 0x100000001b3ull;
  }
  return SplitMix64(hash ^ SplitMix64(seed));
}

void FillStandardNormal(uint64_t key, uint64_t offset, float* values, int64_t count) {
  constexpr double kTwoPi = 6.283185307179586;
#pragma omp parallel for if (count > (1 << 16))
  for (int64_t i = 0; i < count; ++i) {
    // Box–Muller on two 32-bit uniforms from one 64-bit draw; u1 in (0, 1] so the log is finite.
    const uint64_t bits = SplitMix64(key ^ SplitMix64(offset + static_cast<uint64_t>(i)));
    const double u1 = (static_cast<double>(bits >> 32) + 1.0) / 4294967296.0;
    const double u2 = static_cast<double>(bits & 0xffffffffull) / 4294967296.0;
    values[i] = static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(kTwoPi * u2));
  }
}

}  // namespace zoetrope
