// bf16-weight MatMul kernels: a portable scalar path and an AVX2+FMA path, picked by
// selected_isa(). Work is split into blocks of kRowsPerTask weight rows; a block serves every
// activation row, so each weight is read from memory once per call.
//
// Batches of 1-2 rows widen the bf16 weights in registers as they stream by (the step is bound by
// memory, and 2 bytes per weight halve it). Larger batches widen a block once into an fp32 scratch
// and run a 4 x 3 register tile over it, where the arithmetic, not the memory, is the limit.
#include "bf16_matmul.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu_features.h"

namespace lmfast {
namespace {

constexpr int64_t kRowsPerTask = 16;

inline float bf16_to_float(uint16_t bits) {
  uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &wide, sizeof(value));
  return value;
}

// ---- scalar ----
void block_scalar(const float* x, const uint16_t* w, float* y, int64_t m, int64_t k, int64_t n,
                  int64_t row_begin, int64_t row_end) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    const uint16_t* wr = w + r * k;
    for (int64_t i = 0; i < m; ++i) {
      const float* xr = x + i * k;
      float sum = 0.0f;
      for (int64_t j = 0; j < k; ++j) sum += xr[j] * bf16_to_float(wr[j]);
      y[i * n + r] = sum;
    }
  }
}

// ---- AVX2 + FMA ----
__attribute__((target("avx2,fma"))) inline __m256 load8(const uint16_t* p) {
  __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

__attribute__((target("avx2,fma"))) inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }

__attribute__((target("avx2,fma"))) inline float weight_at(const uint16_t* p, int64_t j) {
  return bf16_to_float(p[j]);
}

__attribute__((target("avx2,fma"))) inline float weight_at(const float* p, int64_t j) { return p[j]; }

__attribute__((target("avx2,fma"))) inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// R weight rows (w, stride k) times C activation rows (x, stride k) into y (stride n).
template <int R, int C, typename W>
__attribute__((target("avx2,fma"))) inline void tile(const float* x, const W* w, float* y, int64_t k,
                                                     int64_t n) {
  __m256 acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  const int64_t k8 = k & ~int64_t{7};
  for (int64_t j = 0; j < k8; j += 8) {
    __m256 xv[C];
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) xv[c] = _mm256_loadu_ps(x + c * k + j);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 wv = load8(w + r * k + j);
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_fmadd_ps(wv, xv[c], acc[r][c]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      float sum = hsum(acc[r][c]);
      for (int64_t j = k8; j < k; ++j) sum += x[c * k + j] * weight_at(w + r * k, j);
      y[c * n + r] = sum;
    }
}

// Every weight row of a block times C activation rows, 4 (or 8) weight rows at a time.
template <int C, typename W>
__attribute__((target("avx2,fma"))) void rows_by(const float* x, const W* w, float* y, int64_t k, int64_t n,
                                                 int64_t rows) {
  int64_t r = 0;
  if (C == 1)  // one activation row: 8 weight rows give 8 independent FMA chains
    for (; r + 8 <= rows; r += 8) tile<8, 1>(x, w + r * k, y + r, k, n);
  for (; r + 4 <= rows; r += 4) tile<4, C>(x, w + r * k, y + r, k, n);
  for (; r < rows; ++r) tile<1, C>(x, w + r * k, y + r, k, n);
}

template <typename W>
__attribute__((target("avx2,fma"))) void all_x_rows(const float* x, const W* w, float* y, int64_t m,
                                                    int64_t k, int64_t n, int64_t rows) {
  int64_t i = 0;
  for (; i + 3 <= m; i += 3) rows_by<3>(x + i * k, w, y + i * n, k, n, rows);
  if (m - i == 2) rows_by<2>(x + i * k, w, y + i * n, k, n, rows);
  if (m - i == 1) rows_by<1>(x + i * k, w, y + i * n, k, n, rows);
}

__attribute__((target("avx2,fma"))) void block_avx2(const float* x, const uint16_t* w, float* y, int64_t m,
                                                    int64_t k, int64_t n, int64_t row_begin,
                                                    int64_t row_end) {
  const int64_t rows = row_end - row_begin;
  const uint16_t* wb = w + row_begin * k;
  float* yb = y + row_begin;
  if (m <= 2) {
    all_x_rows(x, wb, yb, m, k, n, rows);
    return;
  }
  thread_local std::vector<float> widened;
  widened.resize(static_cast<size_t>(rows * k));
  float* dst = widened.data();
  const int64_t total = rows * k, total8 = total & ~int64_t{7};
  for (int64_t j = 0; j < total8; j += 8) _mm256_storeu_ps(dst + j, load8(wb + j));
  for (int64_t j = total8; j < total; ++j) dst[j] = bf16_to_float(wb[j]);
  all_x_rows(x, static_cast<const float*>(dst), yb, m, k, n, rows);
}

}  // namespace

void bf16_matmul(const float* x, const uint16_t* w, float* y, int64_t m, int64_t k, int64_t n,
                 const ParallelRunner& run) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    std::fill(y, y + m * n, 0.0f);
    return;
  }
  const bool avx2 = selected_isa() == Isa::kAvx2;
  const int64_t tasks = (n + kRowsPerTask - 1) / kRowsPerTask;
  run(static_cast<size_t>(tasks), [&](size_t t) {
    const int64_t begin = static_cast<int64_t>(t) * kRowsPerTask;
    const int64_t end = std::min(n, begin + kRowsPerTask);
    if (avx2)
      block_avx2(x, w, y, m, k, n, begin, end);
    else
      block_scalar(x, w, y, m, k, n, begin, end);
  });
}

}  // namespace lmfast
