// The CPU backend's one matrix product: row-major C[m, n] = alpha · A[m, k] · op(B), op(B) = B [k, n]
// or Bᵀ with B [n, k]. C is overwritten (no beta).
//
// Results are bit-identical at every thread count. OpenBLAS alone does not give that: its threaded
// driver splits the k dimension into blocks differently from its single-threaded one, so the same
// product rounds differently with 1 and 2 threads. Here the product is cut into tiles of a fixed size
// (never derived from the thread count), the tiles run in parallel on the OpenMP pool, and each tile
// is one single-threaded OpenBLAS call, whose k blocking depends on k alone.
#pragma once

#include <cstdint>

namespace zoetrope::cpu {

enum class Transpose { kNo, kYes };

void Gemm(Transpose transpose_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float* c, int64_t ldc);

}  // namespace zoetrope::cpu
