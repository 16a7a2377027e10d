// The CPU backend: fp32 everywhere, OpenBLAS for matrix products, OpenMP for element-wise loops.
// It is the numerical reference of the engine (CI runs it) and the backend of the tiny quick start.
#pragma once

#include <memory>

#include "kernels/backend.h"

namespace zoetrope {

// `threads` = 0 keeps the OpenMP / OpenBLAS defaults (all cores, or OMP_NUM_THREADS).
std::unique_ptr<Backend> CreateCpuBackend(int threads = 0);

}  // namespace zoetrope
