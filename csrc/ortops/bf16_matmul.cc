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

#include "avx2_tiles.h"
#include "cpu_features.h"

namespace lmfast {
namespace {

constexpr int64_t kRowsPerTask = 16;

using avx2::all_x_rows;
using avx2::bf16_to_float;
using avx2::load8;

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
