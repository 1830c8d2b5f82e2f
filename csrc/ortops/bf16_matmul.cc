// bf16-weight MatMul kernels over the tiled layout of bf16_matmul.h: a portable scalar path and an
// AVX2+FMA path, picked by selected_isa(). Tasks take 2 row groups (16 weight rows) each; a task
// serves every activation row, so each weight is read from memory once per call.
//
// Each 8 x 8 tile holds, per k, the 8 rows' weights in one 16-byte vector, so every product is a
// broadcast activation times a widened 8-row vector and lane r is row r: no horizontal sums. One
// activation row streams each tile once (8 FMA chains over 2 groups); more rows use outer-product
// register tiles of 6 activation rows x 16 weight rows.
#include "bf16_matmul.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "avx2_tiles.h"  // bf16_to_float, load8
#include "cpu_features.h"

namespace lmfast {
namespace {

constexpr int64_t kGroupsPerTask = 2;

using avx2::bf16_to_float;

inline uint16_t tiled_at(const uint16_t* tiles, int64_t chunks, int64_t row, int64_t col) {
  return tiles[((row / kTile) * chunks + col / kTile) * kTile * kTile + (col % kTile) * kTile + row % kTile];
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
// One activation row: 16 weight rows (2 groups) at a time, each k a broadcast of x[k] times the
// groups' 8-row vectors, into 4 accumulators per group (k mod 4: independent FMA chains). No
// horizontal sums: lane r is row r.
__attribute__((target("avx2,fma"))) void groups_one_row(const float* x, const uint16_t* tiles, int64_t chunks,
                                                        int64_t g, int64_t count, float* out) {
  __m256 acc[2][4];
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h)
#pragma GCC unroll 4
    for (int a = 0; a < 4; ++a) acc[h][a] = _mm256_setzero_ps();
  const uint16_t* first = tiles + g * chunks * kTile * kTile;
  const uint16_t* second = count == 2 ? first + chunks * kTile * kTile : first;  // count 1: computed twice
  for (int64_t j = 0; j < chunks; ++j) {
#pragma GCC unroll 8
    for (int kk = 0; kk < kTile; ++kk) {
      const __m256 xv = _mm256_broadcast_ss(x + j * kTile + kk);
      const int64_t at = (j * kTile + kk) * kTile;
      acc[0][kk % 4] = _mm256_fmadd_ps(avx2::load8(first + at), xv, acc[0][kk % 4]);
      acc[1][kk % 4] = _mm256_fmadd_ps(avx2::load8(second + at), xv, acc[1][kk % 4]);
    }
  }
  for (int64_t h = 0; h < count; ++h)
    _mm256_storeu_ps(out + h * kTile, _mm256_add_ps(_mm256_add_ps(acc[h][0], acc[h][1]),
                                                    _mm256_add_ps(acc[h][2], acc[h][3])));
}

constexpr int64_t kChunksPerPass = 64;  // 512 K: a task's 16 rows of weights, 16 KiB, stay in L1
constexpr int kMaxRows = 6;             // activation rows per register tile: 6 x 2 accumulators

// C activation rows (x, stride `stride`) times G groups' tiles over chunks [j0, j1), added to the
// task's scratch (C rows of 16 floats).
template <int C, int G>
__attribute__((target("avx2,fma"))) void panel_tile(const float* x, int64_t stride, const uint16_t* group,
                                                    int64_t chunks, int64_t j0, int64_t j1, float* scratch) {
  __m256 acc[C][G];
#pragma GCC unroll 6
  for (int c = 0; c < C; ++c)
#pragma GCC unroll 2
    for (int h = 0; h < G; ++h) acc[c][h] = _mm256_loadu_ps(scratch + c * 2 * kTile + h * kTile);
  for (int64_t j = j0; j < j1; ++j)
#pragma GCC unroll 2
    for (int kk = 0; kk < kTile; ++kk) {
      __m256 wv[G];
#pragma GCC unroll 2
      for (int h = 0; h < G; ++h) wv[h] = avx2::load8(group + ((h * chunks + j) * kTile + kk) * kTile);
#pragma GCC unroll 6
      for (int c = 0; c < C; ++c) {
        const __m256 xv = _mm256_broadcast_ss(x + c * stride + j * kTile + kk);
#pragma GCC unroll 2
        for (int h = 0; h < G; ++h) acc[c][h] = _mm256_fmadd_ps(wv[h], xv, acc[c][h]);
      }
    }
#pragma GCC unroll 6
  for (int c = 0; c < C; ++c)
#pragma GCC unroll 2
    for (int h = 0; h < G; ++h) _mm256_storeu_ps(scratch + c * 2 * kTile + h * kTile, acc[c][h]);
}

template <int G>
__attribute__((target("avx2,fma"))) void panel_rows(const float* x, int64_t stride, const uint16_t* group,
                                                    int64_t chunks, int64_t j0, int64_t j1, int64_t m,
                                                    float* scratch) {
  int64_t i = 0;
  for (; i + kMaxRows <= m; i += kMaxRows)
    panel_tile<kMaxRows, G>(x + i * stride, stride, group, chunks, j0, j1, scratch + i * 2 * kTile);
  float* rest = scratch + i * 2 * kTile;
  const float* xr = x + i * stride;
  switch (m - i) {
    case 5: panel_tile<5, G>(xr, stride, group, chunks, j0, j1, rest); break;
    case 4: panel_tile<4, G>(xr, stride, group, chunks, j0, j1, rest); break;
    case 3: panel_tile<3, G>(xr, stride, group, chunks, j0, j1, rest); break;
    case 2: panel_tile<2, G>(xr, stride, group, chunks, j0, j1, rest); break;
    case 1: panel_tile<1, G>(xr, stride, group, chunks, j0, j1, rest); break;
    default: break;
  }
}

// More activation rows: outer-product register tiles (6 activation rows x 16 weight rows, the
// weights widened in registers once per k and used 6 times), K in passes of 512 so the task's
// weights are read from L1 by every activation row.
__attribute__((target("avx2,fma"))) void groups_avx2(const float* x, const uint16_t* tiles, float* y, int64_t m,
                                                     int64_t stride, int64_t n, int64_t group_begin,
                                                     int64_t group_end) {
  const int64_t chunks = stride / kTile;
  if (m == 1) {
    for (int64_t g = group_begin; g < group_end; g += 2) {
      float out[2 * kTile];
      const int64_t count = std::min<int64_t>(2, group_end - g);
      groups_one_row(x, tiles, chunks, g, count, out);
      std::memcpy(y + g * kTile, out, sizeof(float) * std::min(count * kTile, n - g * kTile));
    }
    return;
  }
  thread_local std::vector<float> scratch;  // [m, 16]: the task's outputs, summed over the passes
  for (int64_t g = group_begin; g < group_end; g += 2) {
    const int64_t count = std::min<int64_t>(2, group_end - g);
    scratch.assign(static_cast<size_t>(m * 2 * kTile), 0.0f);
    const uint16_t* group = tiles + g * chunks * kTile * kTile;
    for (int64_t j0 = 0; j0 < chunks; j0 += kChunksPerPass) {
      const int64_t j1 = std::min(chunks, j0 + kChunksPerPass);
      if (count == 2)
        panel_rows<2>(x, stride, group, chunks, j0, j1, m, scratch.data());
      else
        panel_rows<1>(x, stride, group, chunks, j0, j1, m, scratch.data());
    }
    const int64_t valid = std::min(count * kTile, n - g * kTile);
    for (int64_t i = 0; i < m; ++i)
      std::memcpy(y + i * n + g * kTile, scratch.data() + i * 2 * kTile, sizeof(float) * valid);
  }
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
