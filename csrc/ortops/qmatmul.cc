// Block-quantized (8- and 4-bit) MatMul kernels: a portable scalar path and an AVX2 path, both
// computing the same integer arithmetic.
//
// Each activation row is quantized once per call, per weight block, to integers in [-127, 127]
// (scale = max |x| / 127, rounded to nearest even), as llama.cpp's q8_0 and MatMulNBits'
// accuracy_level 4 do. Then per block, exactly in int32: dot = sum q * xq, and
// y += scale_w * scale_x * (dot - zero_point * sum xq). The AVX2 path widens the weight bytes
// (or nibbles) to int16 and multiplies pairs with vpmaddwd: 32 weights cost about 9 instructions,
// where widening to fp32 and FMA costs about 16 per 8. For 4 bits the activations of each
// 32-element chunk are stored evens first, odds second, matching the low/high nibbles of its 16
// bytes, so the weights need no shuffle. 4 weight rows share each activation load.
#include "qmatmul.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "avx2_tiles.h"
#include "cpu_features.h"

namespace lmfast {
namespace {

constexpr int64_t kRowsPerTask = 16;
constexpr int64_t kChunk = 32;  // elements per AVX2 step

inline int quantized_at(const uint8_t* blob, int64_t i, int64_t bits) {
  if (bits == 8) return blob[i];
  const uint8_t byte = blob[i / 2];
  return (i & 1) ? (byte >> 4) : (byte & 0x0F);
}

// One activation row quantized per weight block; values in block order, zero-padded to whole
// blocks (`interleaved` for the AVX2 4-bit path: each 32-element chunk as evens, then odds).
struct QuantizedRow {
  std::vector<int16_t> values;
  std::vector<float> scales;
  std::vector<int32_t> sums;
};

void quantize_row(const float* x, const BlockQuantized& w, bool interleaved, QuantizedRow& out) {
  const int64_t blocks = w.blocks();
  out.values.assign(static_cast<size_t>(blocks * w.block), 0);
  out.scales.assign(static_cast<size_t>(blocks), 0.0f);
  out.sums.assign(static_cast<size_t>(blocks), 0);
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t first = b * w.block, count = std::min(w.block, w.k - first);
    float amax = 0.0f;
    for (int64_t i = 0; i < count; ++i) amax = std::max(amax, std::fabs(x[first + i]));
    const float inverse = amax > 0.0f ? 127.0f / amax : 0.0f;
    out.scales[b] = amax / 127.0f;
    int32_t sum = 0;
    for (int64_t i = 0; i < count; ++i) {
      const int16_t q = static_cast<int16_t>(std::nearbyint(x[first + i] * inverse));
      sum += q;
      int64_t slot = first + i;
      if (interleaved) {
        const int64_t in_chunk = i % kChunk;
        slot = first + (i - in_chunk) + (in_chunk % 2) * (kChunk / 2) + in_chunk / 2;
      }
      out.values[slot] = q;
    }
    out.sums[b] = sum;
  }
}

// ---- scalar ----
float row_dot_scalar(const QuantizedRow& xq, const BlockQuantized& w, int64_t row) {
  const int64_t blocks = w.blocks(), blob = w.blob_bytes();
  float total = 0.0f;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* data = w.data + (row * blocks + b) * blob;
    const int64_t count = std::min(w.block, w.k - b * w.block);
    int32_t dot = 0;
    for (int64_t i = 0; i < count; ++i) dot += quantized_at(data, i, w.bits) * xq.values[b * w.block + i];
    dot -= w.zero_point(row, b) * xq.sums[b];
    total += w.scales[row * blocks + b] * xq.scales[b] * static_cast<float>(dot);
  }
  return total;
}

// ---- AVX2 ----
// The int32 lanes of sum q * xq over one 32-element chunk, added to acc.
template <int Bits>
__attribute__((target("avx2,fma"))) inline __m256i chunk_dot(const uint8_t* chunk, const int16_t* xq,
                                                             __m256i acc) {
  __m256i low, high;
  if constexpr (Bits == 8) {
    low = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(chunk)));
    high = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(chunk + 16)));
  } else {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(chunk));
    const __m128i mask = _mm_set1_epi8(0x0F);
    low = _mm256_cvtepu8_epi16(_mm_and_si128(bytes, mask));                     // even elements
    high = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(bytes, 4), mask));  // odd elements
  }
  const __m256i x_low = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq));
  const __m256i x_high = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 16));
  acc = _mm256_add_epi32(acc, _mm256_madd_epi16(low, x_low));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(high, x_high));
}

// The zero points' share of row `row`: sum over blocks of scale_w * scale_x * zero_point * sum xq.
inline float zero_point_share(const QuantizedRow& xq, const BlockQuantized& w, int64_t row) {
  const int64_t blocks = w.blocks();
  const float* w_scales = w.scales + row * blocks;
  float share = 0.0f;
  for (int64_t b = 0; b < blocks; ++b)
    share += w_scales[b] * xq.scales[b] * static_cast<float>(w.zero_point(row, b) * xq.sums[b]);
  return share;
}

// R weight rows (from `row`) times one quantized activation row, into y[row .. row + R).
// Per block and row: the int32 lanes scaled by the activation block's scale (one broadcast shared
// by the R rows) and accumulated with the weight block's scale; the zero points come after.
template <int R, int Bits>
__attribute__((target("avx2,fma"))) void rows_dot_avx2(const QuantizedRow& xq, const BlockQuantized& w,
                                                       int64_t row, float* y) {
  const int64_t blocks = w.blocks(), blob = w.blob_bytes();
  constexpr int64_t kChunkBytes = kChunk * Bits / 8;
  __m256 total[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) total[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const int16_t* xb = xq.values.data() + b * w.block;
    __m256i acc[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_si256();
    for (int64_t c = 0; c < w.block; c += kChunk) {
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r)
        acc[r] = chunk_dot<Bits>(w.data + ((row + r) * blocks + b) * blob + c / kChunk * kChunkBytes, xb + c,
                                 acc[r]);
    }
    const __m256 x_scale = _mm256_set1_ps(xq.scales[b]);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m256 scaled = _mm256_mul_ps(_mm256_cvtepi32_ps(acc[r]), x_scale);
      total[r] = _mm256_fmadd_ps(scaled, _mm256_broadcast_ss(w.scales + (row + r) * blocks + b), total[r]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) y[row + r] = avx2::hsum(total[r]) - zero_point_share(xq, w, row + r);
}

template <int Bits>
__attribute__((target("avx2,fma"))) void block_avx2(const std::vector<QuantizedRow>& xq,
                                                    const BlockQuantized& w, float* y, int64_t begin,
                                                    int64_t end) {
  for (size_t i = 0; i < xq.size(); ++i) {  // the block's weights stay in L1 for the later rows
    float* yi = y + static_cast<int64_t>(i) * w.n;
    int64_t r = begin;
    for (; r + 4 <= end; r += 4) rows_dot_avx2<4, Bits>(xq[i], w, r, yi);
    for (; r < end; ++r) rows_dot_avx2<1, Bits>(xq[i], w, r, yi);
  }
}

}  // namespace

void quantized_matmul(const float* x, const BlockQuantized& w, float* y, int64_t m, const ParallelRunner& run) {
  if (m == 0 || w.n == 0) return;
  // the AVX2 steps take whole 32-element chunks, so blocks of 16 take the scalar path
  const bool avx2 = selected_isa() == Isa::kAvx2 && w.block % kChunk == 0;
  std::vector<QuantizedRow> xq(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) quantize_row(x + i * w.k, w, avx2 && w.bits == 4, xq[i]);
  const int64_t tasks = (w.n + kRowsPerTask - 1) / kRowsPerTask;
  run(static_cast<size_t>(tasks), [&](size_t t) {
    const int64_t begin = static_cast<int64_t>(t) * kRowsPerTask;
    const int64_t end = std::min(w.n, begin + kRowsPerTask);
    if (!avx2) {
      for (int64_t i = 0; i < m; ++i)
        for (int64_t r = begin; r < end; ++r) y[i * w.n + r] = row_dot_scalar(xq[i], w, r);
    } else if (w.bits == 8) {
      block_avx2<8>(xq, w, y, begin, end);
    } else {
      block_avx2<4>(xq, w, y, begin, end);
    }
  });
}

}  // namespace lmfast
