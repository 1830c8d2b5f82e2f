// AVX2+FMA register tiles shared by lmfast's MatMul kernels: Y[M, rows] = X[M, K] times
// W[rows, K]^T, with W in fp32 or bf16 bits (widened in registers). Weight rows are the outer loop
// (4, or 8 for a single activation row: 8 independent FMA chains), activation rows are taken 3 at a
// time so each loaded weight vector feeds 3 FMAs.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace lmfast {
namespace avx2 {

inline float bf16_to_float(uint16_t bits) {
  uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &wide, sizeof(value));
  return value;
}

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
__attribute__((target("avx2,fma"))) inline void rows_by(const float* x, const W* w, float* y, int64_t k, int64_t n,
                                                 int64_t rows) {
  int64_t r = 0;
  if (C == 1)  // one activation row: 8 weight rows give 8 independent FMA chains
    for (; r + 8 <= rows; r += 8) tile<8, 1>(x, w + r * k, y + r, k, n);
  for (; r + 4 <= rows; r += 4) tile<4, C>(x, w + r * k, y + r, k, n);
  for (; r < rows; ++r) tile<1, C>(x, w + r * k, y + r, k, n);
}

template <typename W>
__attribute__((target("avx2,fma"))) inline void all_x_rows(const float* x, const W* w, float* y, int64_t m,
                                                    int64_t k, int64_t n, int64_t rows) {
  int64_t i = 0;
  for (; i + 3 <= m; i += 3) rows_by<3>(x + i * k, w, y + i * n, k, n, rows);
  if (m - i == 2) rows_by<2>(x + i * k, w, y + i * n, k, n, rows);
  if (m - i == 1) rows_by<1>(x + i * k, w, y + i * n, k, n, rows);
}

}  // namespace avx2
}  // namespace lmfast
