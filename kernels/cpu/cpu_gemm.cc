#include "kernels/cpu/cpu_gemm.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>

namespace zoetrope::cpu {
namespace {

// Tile sizes: large enough that OpenBLAS's packing is amortised, small enough that a 2-core machine
// gets several tiles from the DiT's and the VAE's products. Changing them never changes results.
constexpr int64_t kTileRows = 256;
constexpr int64_t kTileColumns = 512;
// Below this many multiply-adds a product runs as one tile on the calling thread.
constexpr int64_t kParallelWork = int64_t{1} << 21;

}  // namespace

void Gemm(Transpose transpose_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  // Cut rows when there are enough of them (B is then packed once per row tile), else columns.
  const int64_t tile_rows = m >= 2 * kTileRows ? kTileRows : m;
  const int64_t tile_columns = tile_rows == m && n >= 2 * kTileColumns ? kTileColumns : n;
  const int64_t row_tiles = (m + tile_rows - 1) / tile_rows;
  const int64_t column_tiles = (n + tile_columns - 1) / tile_columns;
  const int64_t tiles = row_tiles * column_tiles;
  const bool transposed = transpose_b == Transpose::kYes;
#pragma omp parallel for schedule(dynamic) if (tiles > 1 && m * n * k > kParallelWork)
  for (int64_t tile = 0; tile < tiles; ++tile) {
    const int64_t row0 = (tile / column_tiles) * tile_rows;
    const int64_t column0 = (tile % column_tiles) * tile_columns;
    const int64_t rows = std::min(tile_rows, m - row0);
    const int64_t columns = std::min(tile_columns, n - column0);
    const float* b_tile = transposed ? b + column0 * ldb : b + column0;
    // OpenBLAS (OpenMP build) takes its thread count from this thread's OpenMP setting: 1 keeps every
    // call on the single-threaded driver, also when this loop runs inline on the calling thread.
    const int saved_threads = omp_get_max_threads();
    omp_set_num_threads(1);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, transposed ? CblasTrans : CblasNoTrans, static_cast<int>(rows),
                static_cast<int>(columns), static_cast<int>(k), alpha, a + row0 * lda, static_cast<int>(lda), b_tile,
                static_cast<int>(ldb), 0.0f, c + row0 * ldc + column0, static_cast<int>(ldc));
    omp_set_num_threads(saved_threads);
  }
}

}  // namespace zoetrope::cpu
