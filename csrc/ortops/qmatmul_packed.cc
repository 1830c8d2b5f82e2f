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
constexpr int64_t kPrefetchBytes = 2048;

// The activations of all rows, quantized per block: int8 values zero-padded to whole blocks,
// one scale and one sum of the integers per block.
struct QuantizedActivations {
  int64_t stride = 0, blocks = 0;  // values per row, blocks per row
  std::vector<int8_t> values;
  std::vector<float> scales;
  std::vector<int32_t> sums;
};

// One block of one row: q = nearest-even(x * 127 / max |x|) in fp32, its scale and the sum of q.
void quantize_block(const float* xb, int64_t count, int8_t* q, float& scale, int32_t& sum) {
  float amax = 0.0f;
  for (int64_t j = 0; j < count; ++j) amax = std::max(amax, std::fabs(xb[j]));
  const float inverse = amax > 0.0f ? 127.0f / amax : 0.0f;
  sum = 0;
  for (int64_t j = 0; j < count; ++j) {
    q[j] = static_cast<int8_t>(std::nearbyint(xb[j] * inverse));
    sum += q[j];
  }
  scale = amax / 127.0f;
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
// An empty asm that takes and returns v in a register: GCC cannot reassociate sums across it. The
// unrolled unit loops otherwise became one sum tree per activation row whose partial products all
// went to the stack (objdump: 63 ymm stack accesses in the loop of the 4-row int8 tile, 47 in the
// int4 one).
template <typename V>
__attribute__((target("avx2,fma"), always_inline)) inline V pinned(V v) {
  __asm__("" : "+x"(v));
  return v;
}

__attribute__((target("avx2,fma"))) inline __m256i broadcast4(const int8_t* p) {
  int32_t word;
  std::memcpy(&word, p, sizeof(word));
  return _mm256_set1_epi32(word);
}

__attribute__((target("avx2,fma"))) inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

__attribute__((target("avx2,fma"))) inline int32_t hsum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1)));
}

// quantize_block with the same rounding: the fp32 product x * (127 / amax), rounded to nearest
// even by vcvtps2dq under the default MXCSR, as std::nearbyint rounds.
__attribute__((target("avx2,fma"))) void quantize_block_avx2(const float* xb, int64_t count, int8_t* q,
                                                              float& scale, int32_t& sum) {
  const __m256 magnitude_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 vmax = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= count; j += 8)  // max(new, running) keeps the running max past a NaN, as std::max
    vmax = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(xb + j), magnitude_mask), vmax);
  float amax = hmax(vmax);
  for (int64_t tail = j; tail < count; ++tail) amax = std::max(amax, std::fabs(xb[tail]));
  const float inverse = amax > 0.0f ? 127.0f / amax : 0.0f;
  const __m256 vinverse = _mm256_set1_ps(inverse);
  __m256i vsum = _mm256_setzero_si256();
  for (j = 0; j + 8 <= count; j += 8) {
    const __m256i v = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + j), vinverse));
    vsum = _mm256_add_epi32(vsum, v);
    const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + j), _mm_packs_epi16(words, words));
  }
  sum = hsum(vsum);
  for (; j < count; ++j) {
    q[j] = static_cast<int8_t>(std::nearbyint(xb[j] * inverse));
    sum += q[j];
  }
  scale = amax / 127.0f;
}

// The block's size in units as a constant where it is a common one (32 or 64 elements: 8 or 16
// units), so the unit loops unroll completely; 0: read it from the weights.
template <int Units>
inline int64_t units_of(const PackedQuantized& w) {
  return Units != 0 ? Units : w.block / 4;
}

// C activation rows' fp32 totals, updated once per block: scale_w[8 lanes] * scale_x[row] * dot.
template <int C>
__attribute__((target("avx2,fma"), always_inline)) inline void scale_block(__m256* total, const __m256i* dot,
                                                                            const float* w_scales,
                                                                            const float* const* x_scales,
                                                                            int64_t b) {
  const __m256 scales = _mm256_loadu_ps(w_scales);
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c)
    total[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[c]), _mm256_mul_ps(scales, _mm256_set1_ps(x_scales[c][b])),
                               total[c]);
}

// A group's lanes into Y; past N (the last group), masked off rather than copied through the stack.
template <int C>
__attribute__((target("avx2,fma"), always_inline)) inline void store_rows(const __m256* total, float* y,
                                                                           const PackedQuantized& w, int64_t first,
                                                                           int64_t g) {
  const int64_t rows = std::min(kPackedRows, w.n - g * kPackedRows);
  const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(rows)),
                                          _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) {
    float* out = y + (first + c) * w.n + g * kPackedRows;
    if (rows == kPackedRows)
      _mm256_storeu_ps(out, total[c]);
    else
      _mm256_maskstore_ps(out, keep, total[c]);
  }
}

// A block's weights, kPrefetchBytes ahead, when one activation row reads each weight once (the
// DRAM stream); more rows reuse the group from L1 and need no hint.
template <int C>
__attribute__((target("avx2,fma"), always_inline)) inline void prefetch_ahead(const uint8_t* data,
                                                                               int64_t block_bytes) {
  if constexpr (C == 1) {
#pragma GCC unroll 8
    for (int64_t line = 0; line < block_bytes; line += 64)
      _mm_prefetch(reinterpret_cast<const char*>(data + kPrefetchBytes + line), _MM_HINT_T0);
  }
}

// 8 bits: group g (8 weight rows) times C activation rows from `first`. Per unit: one weight load
// and vpabsb shared by the C rows, then per row vpsignb, vpmaddubsw, vpmaddwd, vpaddd.
template <int C, int Units>
__attribute__((target("avx2,fma"))) void group8_avx2(const QuantizedActivations& xq, const PackedQuantized& w,
                                                     float* y, int64_t first, int64_t g) {
  const int64_t blocks = xq.blocks, units = units_of<Units>(w), block_bytes = units * 32;
  const __m256i ones = _mm256_set1_epi16(1);
  const int8_t* xrow[C];
  const float* x_scales[C];
  __m256 total[C];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) {
    xrow[c] = xq.values.data() + (first + c) * xq.stride;
    x_scales[c] = xq.scales.data() + (first + c) * blocks;
    total[c] = _mm256_setzero_ps();
  }
  const uint8_t* data = w.data + g * blocks * block_bytes;
  const float* w_scales = w.scales + g * blocks * kPackedRows;
  for (int64_t b = 0; b < blocks; ++b, data += block_bytes) {
    prefetch_ahead<C>(data, block_bytes);
    __m256i acc[C];
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[c] = _mm256_setzero_si256();
    const int64_t offset = b * units * 4;
#pragma GCC unroll 16
    for (int64_t t = 0; t < units; ++t) {
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(data + t * 32));
      const __m256i magnitude = _mm256_abs_epi8(wv);
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) {
        const __m256i signed_x = _mm256_sign_epi8(broadcast4(xrow[c] + offset + 4 * t), wv);
        acc[c] = pinned(_mm256_add_epi32(acc[c], _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, signed_x), ones)));
      }
    }
    scale_block<C>(total, acc, w_scales + b * kPackedRows, x_scales, b);
  }
  store_rows<C>(total, y, w, first, g);
}

// 4 bits: per 32 packed bytes (2 units), the low nibbles feed the C rows, then the high ones;
// vpmaddubsw's int16 pairs (at most 2 * 15 * 127) add up over 4 packed vectors (8 products of
// each pair) before one vpmaddwd; the zero points come off as zp * sum(xq) per block, in int32.
template <int C, int Units>
__attribute__((target("avx2,fma"))) void group4_avx2(const QuantizedActivations& xq, const PackedQuantized& w,
                                                     float* y, int64_t first, int64_t g) {
  const int64_t blocks = xq.blocks, units = units_of<Units>(w), half = units / 2, block_bytes = half * 32;
  const __m256i ones = _mm256_set1_epi16(1), mask = _mm256_set1_epi8(0x0F);
  const int8_t* xrow[C];
  const float* x_scales[C];
  const int32_t* x_sums[C];
  __m256 total[C];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) {
    xrow[c] = xq.values.data() + (first + c) * xq.stride;
    x_scales[c] = xq.scales.data() + (first + c) * blocks;
    x_sums[c] = xq.sums.data() + (first + c) * blocks;
    total[c] = _mm256_setzero_ps();
  }
  const uint8_t* data = w.data + g * blocks * block_bytes;
  const float* w_scales = w.scales + g * blocks * kPackedRows;
  for (int64_t b = 0; b < blocks; ++b, data += block_bytes) {
    prefetch_ahead<C>(data, block_bytes);
    __m256i acc[C];
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[c] = _mm256_setzero_si256();
    const int64_t offset = b * units * 4;
    for (int64_t start = 0; start < half; start += 4) {  // 4 packed vectors per int16 sum
      __m256i pairs[C];
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) pairs[c] = _mm256_setzero_si256();  // not read: set at p == start
      const int64_t stop = std::min(half, start + 4);
#pragma GCC unroll 4
      for (int64_t p = start; p < stop; ++p) {
        const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(data + p * 32));
        const __m256i low = _mm256_and_si256(packed, mask);
#pragma GCC unroll 8
        for (int c = 0; c < C; ++c) {
          const __m256i dot = _mm256_maddubs_epi16(low, broadcast4(xrow[c] + offset + 4 * p));
          pairs[c] = pinned(p == start ? dot : _mm256_add_epi16(pairs[c], dot));  // no zeroed register
        }
        const __m256i high = _mm256_and_si256(_mm256_srli_epi16(packed, 4), mask);
#pragma GCC unroll 8
        for (int c = 0; c < C; ++c) {
          const __m256i sum = _mm256_add_epi16(
              pairs[c], _mm256_maddubs_epi16(high, broadcast4(xrow[c] + offset + 4 * (p + half))));
          if (p + 1 == stop) {  // widened at once: a row's int16 sums never wait in a register
            const __m256i dot = _mm256_madd_epi16(sum, ones);
            acc[c] = pinned(start == 0 ? dot : _mm256_add_epi32(acc[c], dot));
          } else {
            pairs[c] = pinned(sum);
          }
        }
      }
    }
    if (w.zero_points == nullptr) {  // the default zero point, 8
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) acc[c] = _mm256_sub_epi32(acc[c], _mm256_set1_epi32(8 * x_sums[c][b]));
    } else {
      const __m256i zero_points = _mm256_cvtepu8_epi32(
          _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w.zero_points + (g * blocks + b) * kPackedRows)));
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c)
        acc[c] = _mm256_sub_epi32(acc[c], _mm256_mullo_epi32(zero_points, _mm256_set1_epi32(x_sums[c][b])));
    }
    scale_block<C>(total, acc, w_scales + b * kPackedRows, x_scales, b);
  }
  store_rows<C>(total, y, w, first, g);
}

// Every activation row times groups [begin, end): a group's weights stay in L1 across the row
// tiles. Tiles of 4 rows: the 4 accumulators, 4 totals and the shared weight registers fit the 16
// ymm registers with no stack access in the loops (objdump -d); 3 rows for 4 bits with a block
// size other than 32 or 64, whose runtime unit loop needs one more int32 sum per row.
template <int Bits, int Units, int C>
__attribute__((target("avx2,fma"))) void group_avx2(const QuantizedActivations& xq, const PackedQuantized& w,
                                                    float* y, int64_t first, int64_t g) {
  if constexpr (Bits == 8)
    group8_avx2<C, Units>(xq, w, y, first, g);
  else
    group4_avx2<C, Units>(xq, w, y, first, g);
}

template <int Bits, int Units>
__attribute__((target("avx2,fma"))) void groups_avx2(const QuantizedActivations& xq, const PackedQuantized& w,
                                                     float* y, int64_t m, int64_t begin, int64_t end) {
  constexpr int kRows = Bits == 4 && Units == 0 ? 3 : 4;
  for (int64_t g = begin; g < end; ++g) {
    int64_t i = 0;
    for (; i + kRows <= m; i += kRows) group_avx2<Bits, Units, kRows>(xq, w, y, i, g);
    switch (m - i) {
      case 3: group_avx2<Bits, Units, 3>(xq, w, y, i, g); break;
      case 2: group_avx2<Bits, Units, 2>(xq, w, y, i, g); break;
      case 1: group_avx2<Bits, Units, 1>(xq, w, y, i, g); break;
      default: break;
    }
  }
}

template <int Bits>
__attribute__((target("avx2,fma"))) void run_groups_avx2(const QuantizedActivations& xq, const PackedQuantized& w,
                                                         float* y, int64_t m, int64_t begin, int64_t end) {
  if (w.block == 32)
    groups_avx2<Bits, 8>(xq, w, y, m, begin, end);
  else if (w.block == 64)
    groups_avx2<Bits, 16>(xq, w, y, m, begin, end);
  else
    groups_avx2<Bits, 0>(xq, w, y, m, begin, end);
}

// All rows, block by block, into the calling thread's buffers.
void quantize(const float* x, int64_t m, const PackedQuantized& w, bool avx2, QuantizedActivations& out) {
  out.blocks = w.blocks();
  out.stride = out.blocks * w.block;
  out.values.assign(static_cast<size_t>(m * out.stride), 0);  // the last block's padding stays 0
  out.scales.resize(static_cast<size_t>(m * out.blocks));
  out.sums.resize(static_cast<size_t>(m * out.blocks));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t b = 0; b < out.blocks; ++b) {
      const float* xb = x + i * w.k + b * w.block;
      const int64_t count = std::min(w.block, w.k - b * w.block);
      int8_t* q = out.values.data() + i * out.stride + b * w.block;
      float& scale = out.scales[i * out.blocks + b];
      int32_t& sum = out.sums[i * out.blocks + b];
      if (avx2)
        quantize_block_avx2(xb, count, q, scale, sum);
      else
        quantize_block(xb, count, q, scale, sum);
    }
}

}  // namespace

void packed_quantized_matmul(const float* x, const PackedQuantized& w, float* y, int64_t m,
                             const ParallelRunner& run) {
  if (m == 0 || w.n == 0) return;
  const bool avx2 = selected_isa() == Isa::kAvx2;
  thread_local QuantizedActivations xq;
  quantize(x, m, w, avx2, xq);
  const QuantizedActivations& activations = xq;  // the calling thread's: tasks only read it
  const int64_t groups = w.groups();
  const int64_t tasks = (groups + kGroupsPerTask - 1) / kGroupsPerTask;
  run(static_cast<size_t>(tasks), [&](size_t t) {
    const int64_t begin = static_cast<int64_t>(t) * kGroupsPerTask;
    const int64_t end = std::min(groups, begin + kGroupsPerTask);
    if (!avx2) {
      for (int64_t g = begin; g < end; ++g) group_scalar(activations, w, y, m, g);
    } else if (w.bits == 8) {
      run_groups_avx2<8>(activations, w, y, m, begin, end);
    } else {
      run_groups_avx2<4>(activations, w, y, m, begin, end);
    }
  });
}

}  // namespace lmfast
