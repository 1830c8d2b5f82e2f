// bf16-weight MatMul kernels over the tiled layout of bf16_matmul.h: a portable scalar path and an
// AVX2+FMA path, picked by selected_isa(). Tasks take 2 row groups (16 weight rows) each; a task
// serves every activation row, so each weight is read from memory once per call.
//
// One activation row: each 8 x 8 tile is widened in registers as it streams by, into 8
// accumulators (8 independent FMA chains). More rows: a task's groups are widened once into an
// fp32 scratch, row-major, and the 4 x 3 register tiles of avx2_tiles.h run over it.
#include "bf16_matmul.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "avx2_tiles.h"
#include "cpu_features.h"

namespace lmfast {
namespace {

constexpr int64_t kGroupsPerTask = 2;

using avx2::bf16_to_float;

inline uint16_t tiled_at(const uint16_t* tiles, int64_t chunks, int64_t row, int64_t col) {
  return tiles[((row / kTile) * chunks + col / kTile) * kTile * kTile + (row % kTile) * kTile + col % kTile];
}

// Activations zero-padded to whole chunks (`stride` = chunks * 8 per row), or x itself when K is
// already a multiple of 8.
const float* padded_rows(const float* x, int64_t m, int64_t k, int64_t stride, std::vector<float>& buffer) {
  if (stride == k) return x;
  buffer.assign(static_cast<size_t>(m * stride), 0.0f);
  for (int64_t i = 0; i < m; ++i) std::memcpy(buffer.data() + i * stride, x + i * k, sizeof(float) * k);
  return buffer.data();
}

// ---- scalar ----
void groups_scalar(const float* x, const uint16_t* tiles, float* y, int64_t m, int64_t k, int64_t n,
                   int64_t group_begin, int64_t group_end) {
  const int64_t chunks = tiles_of(k);
  for (int64_t r = group_begin * kTile; r < std::min(n, group_end * kTile); ++r)
    for (int64_t i = 0; i < m; ++i) {
      float sum = 0.0f;
      for (int64_t j = 0; j < k; ++j) sum += x[i * k + j] * bf16_to_float(tiled_at(tiles, chunks, r, j));
      y[i * n + r] = sum;
    }
}

// ---- AVX2 + FMA ----
__attribute__((target("avx2,fma"))) void group_one_row(const float* x, const uint16_t* group, int64_t chunks,
                                                       float* out) {
  __m256 acc[kTile];
#pragma GCC unroll 8
  for (int r = 0; r < kTile; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t j = 0; j < chunks; ++j) {
    const __m256 xv = _mm256_loadu_ps(x + j * kTile);
    const uint16_t* tile = group + j * kTile * kTile;
#pragma GCC unroll 8
    for (int r = 0; r < kTile; ++r) acc[r] = _mm256_fmadd_ps(avx2::load8(tile + r * kTile), xv, acc[r]);
  }
#pragma GCC unroll 8
  for (int r = 0; r < kTile; ++r) out[r] = avx2::hsum(acc[r]);
}

__attribute__((target("avx2,fma"))) void groups_avx2(const float* x, const uint16_t* tiles, float* y, int64_t m,
                                                     int64_t stride, int64_t n, int64_t group_begin,
                                                     int64_t group_end) {
  const int64_t chunks = stride / kTile;
  const int64_t first_row = group_begin * kTile, rows = std::min(n, group_end * kTile) - first_row;
  if (m == 1) {
    for (int64_t g = group_begin; g < group_end; ++g) {
      float out[kTile];
      group_one_row(x, tiles + g * chunks * kTile * kTile, chunks, out);
      const int64_t valid = std::min<int64_t>(kTile, n - g * kTile);
      std::memcpy(y + g * kTile, out, sizeof(float) * valid);
    }
    return;
  }
  thread_local std::vector<float> widened;  // the task's rows, row-major fp32, `stride` per row
  widened.resize(static_cast<size_t>(rows * stride));
  for (int64_t g = group_begin; g < group_end; ++g)
    for (int64_t j = 0; j < chunks; ++j) {
      const uint16_t* tile = tiles + (g * chunks + j) * kTile * kTile;
      for (int64_t r = 0; r < kTile && g * kTile + r < n; ++r)
        _mm256_storeu_ps(widened.data() + (g * kTile + r - first_row) * stride + j * kTile,
                         avx2::load8(tile + r * kTile));
    }
  avx2::all_x_rows(x, static_cast<const float*>(widened.data()), y + first_row, m, stride, n, rows);
}

}  // namespace

void bf16_matmul(const float* x, const uint16_t* tiles, float* y, int64_t m, int64_t k, int64_t n,
                 const ParallelRunner& run) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    std::fill(y, y + m * n, 0.0f);
    return;
  }
  const bool avx2 = selected_isa() == Isa::kAvx2;
  const int64_t groups = tiles_of(n), stride = tiles_of(k) * kTile;
  std::vector<float> buffer;
  const float* xs = avx2 ? padded_rows(x, m, k, stride, buffer) : x;
  const int64_t tasks = (groups + kGroupsPerTask - 1) / kGroupsPerTask;
  run(static_cast<size_t>(tasks), [&](size_t t) {
    const int64_t begin = static_cast<int64_t>(t) * kGroupsPerTask;
    const int64_t end = std::min(groups, begin + kGroupsPerTask);
    if (avx2)
      groups_avx2(xs, tiles, y, m, stride, n, begin, end);
    else
      groups_scalar(x, tiles, y, m, k, n, begin, end);
  });
}

}  // namespace lmfast
