// Block-quantized MatMul over the packed layout of qmatmul_packed.h: a portable scalar path and an
// AVX2 path with the same integer arithmetic.
//
// The activations are quantized once per call, per block, to int8 in [-127, 127] (scale =
// max |x| / 127, nearest even; as QuantizedMatMul, q8_0 and MatMulNBits' accuracy_level 4 do).
// A group of 8 weight rows is then one register wide: per unit, one 4-byte broadcast of the
// activations, one vpmaddubsw (unsigned x signed bytes to int16 pairs) and one vpmaddwd against
// ones give the 8 rows' int32 partial dots in 8 lanes. Per block, the lanes are scaled by the 8
// rows' scales (one load) times the activation block's scale, so there is no horizontal sum.
//   8 bits: vpmaddubsw needs an unsigned operand: |w| (vpabsb, 128 included) times x with w's sign
//           (vpsignb); both fit, and a pair sums to at most 2 * 128 * 127 < 2^15.
//   4 bits: the levels are unsigned already (2 nibble masks per 2 units); a pair is at most
//           2 * 15 * 127, so 8 vpmaddubsw results add up in int16 before one vpmaddwd, and the
//           zero points come off as zp * sum(xq) per block, in int32.
// Up to 4 activation rows share each loaded (and unpacked) weight register: batches of 8-32 read
// the weights once per call and keep a group's weights (K * 8 bits) in L1 across the rows.
#include "qmatmul_packed.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu_features.h"

namespace lmfast {
namespace {

constexpr int64_t kGroupsPerTask = 2;
constexpr int kMaxRows = 4;  // activation rows per register tile
constexpr int64_t kPrefetchBytes = 2048;

// The activations of all rows, quantized per block: int8 values zero-padded to whole blocks,
// one scale and one sum of the integers per block.
struct QuantizedActivations {
  int64_t stride = 0, blocks = 0;  // values per row, blocks per row
  std::vector<int8_t> values;
  std::vector<float> scales;
  std::vector<int32_t> sums;
};

void quantize(const float* x, int64_t m, const PackedQuantized& w, QuantizedActivations& out) {
  out.blocks = w.blocks();
  out.stride = out.blocks * w.block;
  out.values.assign(static_cast<size_t>(m * out.stride), 0);
  out.scales.assign(static_cast<size_t>(m * out.blocks), 0.0f);
  out.sums.assign(static_cast<size_t>(m * out.blocks), 0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t b = 0; b < out.blocks; ++b) {
      const float* xb = x + i * w.k + b * w.block;
      const int64_t count = std::min(w.block, w.k - b * w.block);
      float amax = 0.0f;
      for (int64_t j = 0; j < count; ++j) amax = std::max(amax, std::fabs(xb[j]));
      const float inverse = amax > 0.0f ? 127.0f / amax : 0.0f;
      int8_t* q = out.values.data() + i * out.stride + b * w.block;
      int32_t sum = 0;
      for (int64_t j = 0; j < count; ++j) {
        q[j] = static_cast<int8_t>(std::nearbyint(xb[j] * inverse));
        sum += q[j];
      }
      out.scales[i * out.blocks + b] = amax / 127.0f;
      out.sums[i * out.blocks + b] = sum;
    }
}

// ---- scalar ----
void group_scalar(const QuantizedActivations& xq, const PackedQuantized& w, float* y, int64_t m,
                  int64_t g) {
  const int64_t rows = std::min(kPackedRows, w.n - g * kPackedRows);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t r = 0; r < rows; ++r) {
      float total = 0.0f;
      for (int64_t b = 0; b < xq.blocks; ++b) {
        const int8_t* xb = xq.values.data() + i * xq.stride + b * w.block;
        int32_t dot = 0;
        for (int64_t j = 0; j < w.block; ++j) dot += w.level(g, b, r, j) * xb[j];
        dot -= w.zero_point(g, b, r) * xq.sums[i * xq.blocks + b];
        total += w.scales[(g * xq.blocks + b) * kPackedRows + r] * xq.scales[i * xq.blocks + b] *
                 static_cast<float>(dot);
      }
      y[i * w.n + g * kPackedRows + r] = total;
    }
}

// ---- AVX2 ----
__attribute__((target("avx2,fma"))) inline __m256i broadcast4(const int8_t* p) {
  int32_t word;
  std::memcpy(&word, p, sizeof(word));
  return _mm256_set1_epi32(word);
}

// Group g (8 weight rows) times C activation rows from `first`, into y. Block32: the block size is
// 32 (MatMulNBits' default), a constant, so the unit loops unroll and no int32 partial stays live.
template <int Bits, int C, bool Block32>
__attribute__((target("avx2,fma"))) void group_avx2(const QuantizedActivations& xq, const PackedQuantized& w,
                                                    float* y, int64_t first, int64_t g) {
  const int64_t blocks = xq.blocks, units = Block32 ? 8 : w.block / 4;
  const __m256i ones = _mm256_set1_epi16(1);
  const int8_t* xrow[C];
#pragma GCC unroll 4
  for (int c = 0; c < C; ++c) xrow[c] = xq.values.data() + (first + c) * xq.stride;
  __m256 total[C];
#pragma GCC unroll 4
  for (int c = 0; c < C; ++c) total[c] = _mm256_setzero_ps();
  const int64_t block_bytes = units * 4 * Bits;
  const uint8_t* data = w.data + g * blocks * block_bytes;
  for (int64_t b = 0; b < blocks; ++b, data += block_bytes) {
    if constexpr (C == 1) {  // one row reads each weight once: fetch ahead of the DRAM stream
#pragma GCC unroll 8
      for (int64_t line = 0; line < block_bytes; line += 64)
        _mm_prefetch(reinterpret_cast<const char*>(data + kPrefetchBytes + line), _MM_HINT_T0);
    }
    __m256i acc[C];
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) acc[c] = _mm256_setzero_si256();
    const int64_t offset = b * units * 4;
    if constexpr (Bits == 8) {
#pragma GCC unroll 8
      for (int64_t t = 0; t < units; ++t) {
        const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(data + t * 32));
        const __m256i magnitude = _mm256_abs_epi8(wv);
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) {
          const __m256i signed_x = _mm256_sign_epi8(broadcast4(xrow[c] + offset + 4 * t), wv);
          acc[c] = _mm256_add_epi32(acc[c], _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, signed_x), ones));
        }
      }
    } else {
      const __m256i mask = _mm256_set1_epi8(0x0F);
      const int64_t half = units / 2;
      __m256i pairs[C];
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) pairs[c] = _mm256_setzero_si256();
#pragma GCC unroll 4
      for (int64_t p = 0; p < half; ++p) {
        const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(data + p * 32));
        const __m256i low = _mm256_and_si256(packed, mask);
        const __m256i high = _mm256_and_si256(_mm256_srli_epi16(packed, 4), mask);
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) {
          const __m256i lo_dot = _mm256_maddubs_epi16(low, broadcast4(xrow[c] + offset + 4 * p));
          const __m256i hi_dot = _mm256_maddubs_epi16(high, broadcast4(xrow[c] + offset + 4 * (p + half)));
          pairs[c] = _mm256_add_epi16(pairs[c], _mm256_add_epi16(lo_dot, hi_dot));
        }
        if ((p & 3) == 3 || p + 1 == half) {  // at most 8 products of 2 * 15 * 127 in int16
#pragma GCC unroll 4
          for (int c = 0; c < C; ++c) {
            acc[c] = _mm256_add_epi32(acc[c], _mm256_madd_epi16(pairs[c], ones));
            pairs[c] = _mm256_setzero_si256();
          }
        }
      }
      if (w.zero_points == nullptr) {  // the default zero point, 8: 8 * sum xq, a shift
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c)
          acc[c] = _mm256_sub_epi32(acc[c], _mm256_set1_epi32(8 * xq.sums[(first + c) * blocks + b]));
      } else {
        const __m256i zero_points = _mm256_cvtepu8_epi32(
            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w.zero_points + (g * blocks + b) * kPackedRows)));
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c)
          acc[c] = _mm256_sub_epi32(
              acc[c], _mm256_mullo_epi32(zero_points, _mm256_set1_epi32(xq.sums[(first + c) * blocks + b])));
      }
    }
    const __m256 scales = _mm256_loadu_ps(w.scales + (g * blocks + b) * kPackedRows);
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c)
      total[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[c]),
                                 _mm256_mul_ps(scales, _mm256_set1_ps(xq.scales[(first + c) * blocks + b])),
                                 total[c]);
  }
  const int64_t rows = std::min(kPackedRows, w.n - g * kPackedRows);
#pragma GCC unroll 4
  for (int c = 0; c < C; ++c) {
    float* out = y + (first + c) * w.n + g * kPackedRows;
    if (rows == kPackedRows) {
      _mm256_storeu_ps(out, total[c]);
    } else {
      float lanes[kPackedRows];
      _mm256_storeu_ps(lanes, total[c]);
      std::memcpy(out, lanes, sizeof(float) * rows);
    }
  }
}

template <int Bits, bool Block32>
__attribute__((target("avx2,fma"))) void groups_avx2(const QuantizedActivations& xq, const PackedQuantized& w,
                                                     float* y, int64_t m, int64_t begin, int64_t end) {
  for (int64_t g = begin; g < end; ++g) {  // the group's weights stay in L1 for the later rows
    int64_t i = 0;
    for (; i + kMaxRows <= m; i += kMaxRows) group_avx2<Bits, kMaxRows, Block32>(xq, w, y, i, g);
    switch (m - i) {
      case 3: group_avx2<Bits, 3, Block32>(xq, w, y, i, g); break;
      case 2: group_avx2<Bits, 2, Block32>(xq, w, y, i, g); break;
      case 1: group_avx2<Bits, 1, Block32>(xq, w, y, i, g); break;
      default: break;
    }
  }
}

}  // namespace

void packed_quantized_matmul(const float* x, const PackedQuantized& w, float* y, int64_t m,
                             const ParallelRunner& run) {
  if (m == 0 || w.n == 0) return;
  const bool avx2 = selected_isa() == Isa::kAvx2;
  thread_local QuantizedActivations xq;
  quantize(x, m, w, xq);
  const QuantizedActivations& activations = xq;  // the calling thread's: tasks only read it
  const int64_t groups = w.groups();
  const int64_t tasks = (groups + kGroupsPerTask - 1) / kGroupsPerTask;
  run(static_cast<size_t>(tasks), [&](size_t t) {
    const int64_t begin = static_cast<int64_t>(t) * kGroupsPerTask;
    const int64_t end = std::min(groups, begin + kGroupsPerTask);
    if (!avx2) {
      for (int64_t g = begin; g < end; ++g) group_scalar(activations, w, y, m, g);
    } else if (w.bits == 8) {
      (w.block == 32 ? groups_avx2<8, true> : groups_avx2<8, false>)(activations, w, y, m, begin, end);
    } else {
      (w.block == 32 ? groups_avx2<4, true> : groups_avx2<4, false>)(activations, w, y, m, begin, end);
    }
  });
}

}  // namespace lmfast
