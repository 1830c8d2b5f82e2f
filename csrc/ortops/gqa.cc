// Grouped-query attention kernels (gqa.h): a portable scalar path and an AVX2+FMA path, picked by
// selected_isa(). Both take the keys as the outer loop, so each key/value row of a task's head is
// read from memory once and then serves every query of the task (the head's g query heads times
// the task's query positions) from L1:
//   1. scores[i][t] = scale * q_i . k_t for t < L_i (L_i = the query's causal length), 4 keys at a
//      time on AVX2;
//   2. softmax of each query's first L_i scores, in place (fp32; AVX2 uses a polynomial exp);
//   3. y_i = sum_t p_it v_t, over blocks of 64 values, 4 independent accumulators per query.
// Keys and values are the graph's type T (float, or Half widened in registers by F16C's vcvtph2ps);
// queries and outputs are fp32 here (an fp16 graph's are widened before and rounded after).
#include "gqa.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "avx2_tiles.h"
#include "cpu_features.h"

namespace lmfast {
namespace {

// Query positions per task for prompt steps (a decode step is one position).
constexpr int64_t kQueryBlock = 16;
// Value rows per pass-3 block: 64 rows of a 64-wide head are 16 KiB, resident in L1 while every
// query of the task reads them.
constexpr int64_t kValueBlock = 64;

// A decode step with fewer (row, kv-head) tasks than this splits each head's keys into chunks
// (flash-decoding): a batch-1 step of 3 kv heads on 2 threads would otherwise leave one thread
// with two heads' keys. Chunks hold at least kMinChunk keys.
constexpr int64_t kMinTasks = 8;
constexpr int64_t kMinChunk = 64;

// A step as the kernels see it: the graph's buffers, with fp32 queries and outputs (a.q and a.y for
// float; for Half, widened copies of the queries and an fp32 output rounded once at the end).
template <typename T>
struct Step {
  const GqaArgsT<T>& a;
  const float* q;
  float* y;
};

template <typename T>
struct Task {
  const Step<T>& step;
  int64_t b, h, s_begin, s_end;
  int64_t key_begin = 0, key_end = INT64_MAX;  // the chunk of keys this task reads
  // Chunked: per query [max score, sum of exp, unnormalized output (head_size)], not y.
  float* partial = nullptr;

  const GqaArgsT<T>& args() const { return step.a; }
  int64_t groups() const { return args().heads / args().kv_heads; }
  int64_t past() const { return gqa_past(args(), b); }
  int64_t queries() const { return (s_end - s_begin) * groups(); }
  // Query i of the task: position s_begin + i / g, query head h * g + i % g.
  int64_t position(int64_t i) const { return s_begin + i / groups(); }
  int64_t causal(int64_t i) const { return past() + position(i) + 1; }
  // The end of query i's keys within the chunk.
  int64_t limit(int64_t i) const { return std::min(causal(i), key_end); }
  float* target(int64_t i) const { return partial ? partial + i * (args().head_size + 2) + 2 : out(i); }
  // Softmax statistics of query i's chunk (partial only).
  void record(int64_t i, float top, float sum) const {
    if (partial == nullptr) return;
    partial[i * (args().head_size + 2)] = top;
    partial[i * (args().head_size + 2) + 1] = sum;
  }
  int64_t offset(int64_t i) const {
    const GqaArgsT<T>& a = args();
    return ((b * a.seq + position(i)) * a.heads + h * groups() + i % groups()) * a.head_size;
  }
  const float* query(int64_t i) const { return step.q + offset(i); }
  float* out(int64_t i) const { return step.y + offset(i); }
  const T* keys() const { return args().present_k + head_offset(); }
  const T* values() const { return args().present_v + head_offset(); }
  int64_t head_offset() const { return (b * args().kv_heads + h) * args().present_len * args().head_size; }
};

inline float widen(float x) { return x; }
inline float widen(Half x) { return half_to_float(x); }

// The step's keys and values into the present buffers at the row's columns [past, past + seq); a
// separate present buffer first gets the past's columns [0, past) and zeros after the new ones.
template <typename T>
void write_step(const GqaArgsT<T>& a, int64_t b, int64_t h) {
  const int64_t d = a.head_size, past = gqa_past(a, b);
  const size_t row_bytes = sizeof(T) * static_cast<size_t>(d);
  const T* sources[2] = {a.k, a.v};
  const T* pasts[2] = {a.past_k, a.past_v};
  T* presents[2] = {a.present_k, a.present_v};
  for (int which = 0; which < 2; ++which) {
    T* present = presents[which] + (b * a.kv_heads + h) * a.present_len * d;
    if (presents[which] != pasts[which]) {
      if (past > 0) std::memcpy(present, pasts[which] + (b * a.kv_heads + h) * a.past_len * d, row_bytes * past);
      std::fill(present + (past + a.seq) * d, present + a.present_len * d, T{});  // +0 in both types
    }
    for (int64_t s = 0; s < a.seq; ++s)
      std::memcpy(present + (past + s) * d, sources[which] + ((b * a.seq + s) * a.kv_heads + h) * d, row_bytes);
  }
}

// ---- scalar ----
// exp(row - max) in place, normalized unless `normalize` is false; returns (max, sum).
std::pair<float, float> softmax_scalar(float* row, int64_t n, bool normalize) {
  const float top = *std::max_element(row, row + n);
  float sum = 0.0f;
  for (int64_t t = 0; t < n; ++t) sum += row[t] = std::exp(row[t] - top);
  if (!normalize) return {top, sum};
  const float inverse = 1.0f / sum;
  for (int64_t t = 0; t < n; ++t) row[t] *= inverse;
  return {top, sum};
}

// Scores are stored from the chunk's first key: scores[i * nk + t - k0].
template <typename T>
void attend_scalar(const Task<T>& task, std::vector<float>& scores) {
  const GqaArgsT<T>& a = task.args();
  const int64_t d = a.head_size, nq = task.queries(), k0 = task.key_begin;
  const int64_t nk = std::max<int64_t>(task.limit(nq - 1) - k0, 0);
  const T *keys = task.keys(), *values = task.values();
  scores.resize(static_cast<size_t>(nq * nk));
  for (int64_t t = k0; t < k0 + nk; ++t) {
    const T* key = keys + t * d;
    for (int64_t i = 0; i < nq; ++i) {
      if (t >= task.limit(i)) continue;
      const float* q = task.query(i);
      float dot = 0.0f;
      for (int64_t x = 0; x < d; ++x) dot += q[x] * widen(key[x]);
      scores[i * nk + t - k0] = dot * a.scale;
    }
  }
  for (int64_t i = 0; i < nq; ++i) {
    std::fill(task.target(i), task.target(i) + d, 0.0f);
    const int64_t n = task.limit(i) - k0;
    const auto stats = n > 0 ? softmax_scalar(scores.data() + i * nk, n, task.partial == nullptr)
                             : std::pair<float, float>{-INFINITY, 0.0f};
    task.record(i, stats.first, stats.second);
  }
  for (int64_t t = k0; t < k0 + nk; ++t) {
    const T* value = values + t * d;
    for (int64_t i = 0; i < nq; ++i) {
      if (t >= task.limit(i)) continue;
      float* y = task.target(i);
      const float p = scores[i * nk + t - k0];
      for (int64_t x = 0; x < d; ++x) y[x] += p * widen(value[x]);
    }
  }
}

// ---- AVX2 + FMA ----
// e^x for x <= 0 (softmax arguments), Cephes' polynomial: about 2 ulp.
__attribute__((target("avx2,fma"))) inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(x, x), x), _mm256_set1_ps(1.0f));
  const __m256i power = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(power));
}

__attribute__((target("avx2,fma"))) inline float exp1(float x) {
  return _mm256_cvtss_f32(exp8(_mm256_set1_ps(x)));
}

__attribute__((target("avx2,fma"))) std::pair<float, float> softmax_avx2(float* row, int64_t n, bool normalize) {
  int64_t t = 0;
  __m256 top8 = _mm256_set1_ps(-INFINITY);
  for (; t + 8 <= n; t += 8) top8 = _mm256_max_ps(top8, _mm256_loadu_ps(row + t));
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(top8), _mm256_extractf128_ps(top8, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  float top = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
  for (; t < n; ++t) top = std::max(top, row[t]);
  const __m256 top_v = _mm256_set1_ps(top);
  __m256 sum8 = _mm256_setzero_ps();
  for (t = 0; t + 8 <= n; t += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(row + t), top_v));
    _mm256_storeu_ps(row + t, e);
    sum8 = _mm256_add_ps(sum8, e);
  }
  float sum = avx2::hsum(sum8);
  for (; t < n; ++t) sum += row[t] = exp1(row[t] - top);
  if (!normalize) return {top, sum};
  const float inverse = 1.0f / sum;
  const __m256 inverse_v = _mm256_set1_ps(inverse);
  for (t = 0; t + 8 <= n; t += 8) _mm256_storeu_ps(row + t, _mm256_mul_ps(_mm256_loadu_ps(row + t), inverse_v));
  for (; t < n; ++t) row[t] *= inverse;
  return {top, sum};
}

// The kernels below that read keys and values are templates over T, compiled once with F16C allowed;
// the float instances contain no fp16 conversion, so they run on AVX2+FMA CPUs without F16C too.
#define LMFAST_GQA_TARGET __attribute__((target("avx2,fma,f16c")))

LMFAST_GQA_TARGET inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
LMFAST_GQA_TARGET inline __m256 load8(const Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// q . key_0..3 (rows `d` apart) into out[0..3].
template <typename T>
LMFAST_GQA_TARGET inline void dot4(const float* q, const T* key, int64_t d, float scale, float* out) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  int64_t x = 0;
  for (; x + 8 <= d; x += 8) {
    const __m256 qv = _mm256_loadu_ps(q + x);
    acc0 = _mm256_fmadd_ps(qv, load8(key + x), acc0);
    acc1 = _mm256_fmadd_ps(qv, load8(key + d + x), acc1);
    acc2 = _mm256_fmadd_ps(qv, load8(key + 2 * d + x), acc2);
    acc3 = _mm256_fmadd_ps(qv, load8(key + 3 * d + x), acc3);
  }
  // the four horizontal sums at once: [s0 s1 s2 s3]
  const __m256 h01 = _mm256_hadd_ps(acc0, acc1), h23 = _mm256_hadd_ps(acc2, acc3);
  const __m256 h = _mm256_hadd_ps(h01, h23);
  __m128 sums = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  float tail[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (; x < d; ++x)
    for (int r = 0; r < 4; ++r) tail[r] += q[x] * widen(key[r * d + x]);
  sums = _mm_add_ps(sums, _mm_loadu_ps(tail));
  _mm_storeu_ps(out, _mm_mul_ps(sums, _mm_set1_ps(scale)));
}

template <typename T>
LMFAST_GQA_TARGET inline float dot1(const float* q, const T* key, int64_t d) {
  __m256 acc = _mm256_setzero_ps();
  int64_t x = 0;
  for (; x + 8 <= d; x += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + x), load8(key + x), acc);
  float sum = avx2::hsum(acc);
  for (; x < d; ++x) sum += q[x] * widen(key[x]);
  return sum;
}

// y[0, d) += sum over t in [0, n) of p[t] * value[t * d, ...).
template <typename T>
LMFAST_GQA_TARGET inline void accumulate(float* y, const float* p, const T* value, int64_t n, int64_t d) {
  int64_t x = 0;
  for (; x + 32 <= d; x += 32) {
    __m256 acc0 = _mm256_loadu_ps(y + x), acc1 = _mm256_loadu_ps(y + x + 8);
    __m256 acc2 = _mm256_loadu_ps(y + x + 16), acc3 = _mm256_loadu_ps(y + x + 24);
    for (int64_t t = 0; t < n; ++t) {
      const __m256 pv = _mm256_broadcast_ss(p + t);
      const T* row = value + t * d + x;
      acc0 = _mm256_fmadd_ps(pv, load8(row), acc0);
      acc1 = _mm256_fmadd_ps(pv, load8(row + 8), acc1);
      acc2 = _mm256_fmadd_ps(pv, load8(row + 16), acc2);
      acc3 = _mm256_fmadd_ps(pv, load8(row + 24), acc3);
    }
    _mm256_storeu_ps(y + x, acc0);
    _mm256_storeu_ps(y + x + 8, acc1);
    _mm256_storeu_ps(y + x + 16, acc2);
    _mm256_storeu_ps(y + x + 24, acc3);
  }
  for (; x + 8 <= d; x += 8) {
    __m256 acc = _mm256_loadu_ps(y + x);
    for (int64_t t = 0; t < n; ++t)
      acc = _mm256_fmadd_ps(_mm256_broadcast_ss(p + t), load8(value + t * d + x), acc);
    _mm256_storeu_ps(y + x, acc);
  }
  for (; x < d; ++x) {
    float acc = y[x];
    for (int64_t t = 0; t < n; ++t) acc += p[t] * widen(value[t * d + x]);
    y[x] = acc;
  }
}

// ---- AVX2 + FMA, prompt tasks: register tiles ----
// A prompt task's queries (16 positions x g heads) all read the same keys and values, which makes
// both products small GEMMs. q . k^T: each block of 16 keys is transposed once into a panel
// kt[d][16], then tiles of 6 queries x 16 keys take, per dimension, 2 loads and 6 broadcasts for
// 12 FMAs (the dot-product path takes 5 loads per 4 FMAs and a horizontal sum per score).
// p . v: tiles of 6 queries x 16 value lanes, 2 loads and 6 broadcasts per key for 12 FMAs.
constexpr int64_t kKeyBlock = 16;
constexpr int kTileQueries = 6;

// keys[t][d] for t in [0, count) (count <= 16; the rest zero), widened, into kt[x * 16 + t].
template <typename T>
LMFAST_GQA_TARGET void transpose_keys(const T* keys, int64_t count, int64_t d, float* kt) {
  for (int64_t x = 0; x < d; x += 8)
    for (int64_t half = 0; half < 2; ++half) {
      __m256 r[8];
      for (int64_t t = 0; t < 8; ++t) {
        const int64_t key = half * 8 + t;
        r[t] = key < count ? load8(keys + key * d + x) : _mm256_setzero_ps();
      }
      const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
      const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
      const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
      const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
      const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
      const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
      const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
      const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
      const __m256 rows[8] = {_mm256_permute2f128_ps(u0, u4, 0x20), _mm256_permute2f128_ps(u1, u5, 0x20),
                              _mm256_permute2f128_ps(u2, u6, 0x20), _mm256_permute2f128_ps(u3, u7, 0x20),
                              _mm256_permute2f128_ps(u0, u4, 0x31), _mm256_permute2f128_ps(u1, u5, 0x31),
                              _mm256_permute2f128_ps(u2, u6, 0x31), _mm256_permute2f128_ps(u3, u7, 0x31)};
      for (int64_t j = 0; j < 8; ++j) _mm256_storeu_ps(kt + (x + j) * kKeyBlock + half * 8, rows[j]);
    }
}

// Scores of queries [i0, i0 + C) against one transposed key block, scaled, into s (row stride `stride`).
template <int C, typename T>
LMFAST_GQA_TARGET void score_tile(const Task<T>& task, int64_t i0, const float* kt, float* s, int64_t stride) {
  const int64_t d = task.args().head_size;
  const float* q[C];
  __m256 acc[C][2];
#pragma GCC unroll 6
  for (int c = 0; c < C; ++c) {
    q[c] = task.query(i0 + c);
    acc[c][0] = acc[c][1] = _mm256_setzero_ps();
  }
  for (int64_t x = 0; x < d; ++x) {
    const __m256 k0 = _mm256_loadu_ps(kt + x * kKeyBlock), k1 = _mm256_loadu_ps(kt + x * kKeyBlock + 8);
#pragma GCC unroll 6
    for (int c = 0; c < C; ++c) {
      const __m256 qv = _mm256_broadcast_ss(q[c] + x);
      acc[c][0] = _mm256_fmadd_ps(qv, k0, acc[c][0]);
      acc[c][1] = _mm256_fmadd_ps(qv, k1, acc[c][1]);
    }
  }
  const __m256 scale = _mm256_set1_ps(task.args().scale);
#pragma GCC unroll 6
  for (int c = 0; c < C; ++c) {
    _mm256_storeu_ps(s + c * stride, _mm256_mul_ps(acc[c][0], scale));
    _mm256_storeu_ps(s + c * stride + 8, _mm256_mul_ps(acc[c][1], scale));
  }
}

// y of queries [i0, i0 + C) = p (rows `stride` apart, zero past each query's keys) times values
// [0, keys), G vectors (8 lanes each) of the head at a time.
template <int C, int G, typename T>
LMFAST_GQA_TARGET void value_tile(const Task<T>& task, int64_t i0, const float* p, int64_t stride, const T* values,
                                  int64_t keys, int64_t x0) {
  const int64_t d = task.args().head_size;
  __m256 acc[C][G];
#pragma GCC unroll 6
  for (int c = 0; c < C; ++c)
#pragma GCC unroll 2
    for (int h = 0; h < G; ++h) acc[c][h] = _mm256_setzero_ps();
  for (int64_t t = 0; t < keys; ++t) {
    __m256 v[G];
#pragma GCC unroll 2
    for (int h = 0; h < G; ++h) v[h] = load8(values + t * d + x0 + h * 8);
#pragma GCC unroll 6
    for (int c = 0; c < C; ++c) {
      const __m256 pv = _mm256_broadcast_ss(p + c * stride + t);
#pragma GCC unroll 2
      for (int h = 0; h < G; ++h) acc[c][h] = _mm256_fmadd_ps(pv, v[h], acc[c][h]);
    }
  }
#pragma GCC unroll 6
  for (int c = 0; c < C; ++c)
#pragma GCC unroll 2
    for (int h = 0; h < G; ++h) _mm256_storeu_ps(task.target(i0 + c) + x0 + h * 8, acc[c][h]);
}

template <int C, typename T>
LMFAST_GQA_TARGET void query_tile(const Task<T>& task, int64_t i0, const float* kt, float* s, int64_t stride,
                                  int64_t t0, int64_t phase, const T* values) {
  if (phase == 0) return score_tile<C>(task, i0, kt, s + i0 * stride + t0, stride);
  const int64_t d = task.args().head_size, keys = task.limit(i0 + C - 1);  // the tile's longest
  int64_t x0 = 0;
  for (; x0 + 16 <= d; x0 += 16) value_tile<C, 2>(task, i0, s + i0 * stride, stride, values, keys, x0);
  if (x0 < d) value_tile<C, 1>(task, i0, s + i0 * stride, stride, values, keys, x0);
}

// Phase 0: the scores of key block t0 for every query that sees any of it; phase 1: the outputs.
template <typename T>
LMFAST_GQA_TARGET void query_tiles(const Task<T>& task, const float* kt, float* s, int64_t stride, int64_t t0,
                                   int64_t phase, const T* values) {
  const int64_t nq = task.queries();
  int64_t i = 0;
  for (; i < nq; i += kTileQueries) {
    const int64_t count = std::min<int64_t>(kTileQueries, nq - i);
    if (phase == 0 && t0 >= task.limit(i + count - 1)) continue;  // causal: the whole tile masks it
    switch (count) {
      case 6: query_tile<6>(task, i, kt, s, stride, t0, phase, values); break;
      case 5: query_tile<5>(task, i, kt, s, stride, t0, phase, values); break;
      case 4: query_tile<4>(task, i, kt, s, stride, t0, phase, values); break;
      case 3: query_tile<3>(task, i, kt, s, stride, t0, phase, values); break;
      case 2: query_tile<2>(task, i, kt, s, stride, t0, phase, values); break;
      default: query_tile<1>(task, i, kt, s, stride, t0, phase, values); break;
    }
  }
}

// A whole (unchunked) prompt task with head_size % 8 == 0, as attend_avx2 computes it.
template <typename T>
LMFAST_GQA_TARGET void attend_tiled_avx2(const Task<T>& task, std::vector<float>& scores) {
  const GqaArgsT<T>& a = task.args();
  const int64_t d = a.head_size, nq = task.queries(), nk = task.limit(nq - 1);
  const int64_t stride = (nk + kKeyBlock - 1) / kKeyBlock * kKeyBlock;
  const T *keys = task.keys(), *values = task.values();
  scores.resize(static_cast<size_t>(nq * stride + d * kKeyBlock));
  float *s = scores.data(), *kt = s + nq * stride;
  for (int64_t t0 = 0; t0 < nk; t0 += kKeyBlock) {
    transpose_keys(keys + t0 * d, std::min(kKeyBlock, nk - t0), d, kt);
    query_tiles(task, kt, s, stride, t0, 0, values);
  }
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t n = task.limit(i);
    softmax_avx2(s + i * stride, n, true);
    std::fill(s + i * stride + n, s + (i + 1) * stride, 0.0f);  // what a longer query in its tile reads
  }
  query_tiles(task, kt, s, stride, 0, 1, values);
}

// As attend_scalar; `s` points at the chunk's first key, so s[i * nk + t] is key k0 + t.
template <typename T>
LMFAST_GQA_TARGET void attend_avx2(const Task<T>& task, std::vector<float>& scores) {
  const GqaArgsT<T>& a = task.args();
  const int64_t d = a.head_size, nq = task.queries(), k0 = task.key_begin;
  if (task.partial == nullptr && k0 == 0 && d % 8 == 0 && nq >= kTileQueries)
    return attend_tiled_avx2(task, scores);
  const int64_t nk = std::max<int64_t>(task.limit(nq - 1) - k0, 0);
  const T *keys = task.keys() + k0 * d, *values = task.values() + k0 * d;
  scores.resize(static_cast<size_t>(nq * nk));
  float* s = scores.data();
  int64_t t = 0;
  for (; t + 4 <= nk; t += 4)
    for (int64_t i = 0; i < nq; ++i) {
      const int64_t length = task.limit(i) - k0;
      if (t >= length) continue;
      if (t + 4 <= length) {
        dot4(task.query(i), keys + t * d, d, a.scale, s + i * nk + t);
      } else {
        for (int64_t r = t; r < length; ++r) s[i * nk + r] = dot1(task.query(i), keys + r * d, d) * a.scale;
      }
    }
  for (; t < nk; ++t)
    for (int64_t i = 0; i < nq; ++i)
      if (t < task.limit(i) - k0) s[i * nk + t] = dot1(task.query(i), keys + t * d, d) * a.scale;
  for (int64_t i = 0; i < nq; ++i) {
    std::fill(task.target(i), task.target(i) + d, 0.0f);
    const int64_t n = task.limit(i) - k0;
    const auto stats = n > 0 ? softmax_avx2(s + i * nk, n, task.partial == nullptr)
                             : std::pair<float, float>{-INFINITY, 0.0f};
    task.record(i, stats.first, stats.second);
  }
  for (t = 0; t < nk; t += kValueBlock)
    for (int64_t i = 0; i < nq; ++i) {
      const int64_t end = std::min(t + kValueBlock, task.limit(i) - k0);
      if (end > t) accumulate(task.target(i), s + i * nk + t, values + t * d, end - t, d);
    }
}

// y of each query of row b, kv head h from its chunks' partials: rescaled to the largest max.
template <typename T>
void combine(const Step<T>& step, int64_t b, int64_t h, int64_t chunks, const float* partials) {
  const GqaArgsT<T>& a = step.a;
  const int64_t d = a.head_size, groups = a.heads / a.kv_heads, stride = d + 2;
  for (int64_t j = 0; j < groups; ++j) {
    const float* first = partials + j * stride;  // chunk c of query j: first + c * groups * stride
    float top = -INFINITY, sum = 0.0f;
    for (int64_t c = 0; c < chunks; ++c) top = std::max(top, first[c * groups * stride]);
    float* y = step.y + (b * a.heads + h * groups + j) * d;
    std::fill(y, y + d, 0.0f);
    for (int64_t c = 0; c < chunks; ++c) {
      const float* part = first + c * groups * stride;
      if (part[1] == 0.0f) continue;  // an empty chunk
      const float weight = std::exp(part[0] - top);
      sum += weight * part[1];
      for (int64_t x = 0; x < d; ++x) y[x] += weight * part[2 + x];
    }
    const float inverse = 1.0f / sum;
    for (int64_t x = 0; x < d; ++x) y[x] *= inverse;
  }
}

// A decode step over few (row, kv-head) pairs: each head's keys in `chunks` chunks, one task each.
template <typename T>
void decode_in_chunks(const Step<T>& step, int64_t chunks, bool avx2, const ParallelRunner& run) {
  const GqaArgsT<T>& a = step.a;
  const int64_t heads = a.batch * a.kv_heads, groups = a.heads / a.kv_heads, stride = a.head_size + 2;
  for (int64_t i = 0; i < heads; ++i) write_step(a, i / a.kv_heads, i % a.kv_heads);
  std::vector<float> partials(static_cast<size_t>(heads * chunks * groups * stride));
  run(static_cast<size_t>(heads * chunks), [&](size_t index) {
    const int64_t head = static_cast<int64_t>(index) / chunks, c = static_cast<int64_t>(index) % chunks;
    const int64_t b = head / a.kv_heads, h = head % a.kv_heads;
    const int64_t length = gqa_past(a, b) + 1, size = (length + chunks - 1) / chunks;
    Task<T> task{step, b, h, 0, 1};
    task.key_begin = std::min(length, c * size);
    task.key_end = std::min(length, (c + 1) * size);
    task.partial = partials.data() + (head * chunks + c) * groups * stride;
    thread_local std::vector<float> scores;
    if (avx2)
      attend_avx2(task, scores);
    else
      attend_scalar(task, scores);
  });
  for (int64_t i = 0; i < heads; ++i)
    combine(step, i / a.kv_heads, i % a.kv_heads, chunks, partials.data() + i * chunks * groups * stride);
}

// Whether fp16 data takes the AVX2 path: widening in registers needs F16C as well (else scalar).
bool f16c_path() { return selected_isa() == Isa::kAvx2 && cpu_has_f16c(); }

template <typename T>
void attend(const Step<T>& step, const ParallelRunner& run) {
  const GqaArgsT<T>& a = step.a;
  const bool avx2 = std::is_same_v<T, float> ? selected_isa() == Isa::kAvx2 : f16c_path();
  const int64_t heads = a.batch * a.kv_heads;
  const int64_t blocks = (a.seq + kQueryBlock - 1) / kQueryBlock;
  if (a.seq == 1 && heads < kMinTasks) {
    int64_t longest = 0;
    for (int64_t b = 0; b < a.batch; ++b) longest = std::max(longest, gqa_past(a, b) + 1);
    const int64_t chunks = std::min((kMinTasks + heads - 1) / heads, longest / kMinChunk);
    if (chunks > 1) return decode_in_chunks(step, chunks, avx2, run);
  }
  if (blocks > 1)  // every block reads the keys of the blocks before it: all writes first (a copy of
                   // the step's keys/values, small next to a prompt's attention: no second hand-off
                   // to the pool, whose threads a loaded machine may have descheduled)
    for (int64_t i = 0; i < heads; ++i) write_step(a, i / a.kv_heads, i % a.kv_heads);
  run(static_cast<size_t>(heads * blocks), [&](size_t index) {
    const int64_t head = static_cast<int64_t>(index) / blocks, block = static_cast<int64_t>(index) % blocks;
    const int64_t b = head / a.kv_heads, h = head % a.kv_heads;
    if (blocks == 1) write_step(a, b, h);
    const Task<T> task{step, b, h, block * kQueryBlock, std::min(a.seq, (block + 1) * kQueryBlock)};
    thread_local std::vector<float> scores;
    if (avx2)
      attend_avx2(task, scores);
    else
      attend_scalar(task, scores);
  });
}

// fp16 <-> fp32 of n values: F16C 8 at a time where the CPU has it and the ISA is not forced scalar.
LMFAST_GQA_TARGET void widen_f16c(const Half* from, float* to, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(to + i, load8(from + i));
  for (; i < n; ++i) to[i] = half_to_float(from[i]);
}

LMFAST_GQA_TARGET void narrow_f16c(const float* from, Half* to, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(to + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(from + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; i < n; ++i) to[i] = float_to_half(from[i]);
}

}  // namespace

void gqa_attention(const GqaArgs& a, const ParallelRunner& run) {
  if (a.batch == 0 || a.seq == 0) return;
  attend(Step<float>{a, a.q, a.y}, run);
}

void gqa_attention(const GqaArgsHalf& a, const ParallelRunner& run) {
  if (a.batch == 0 || a.seq == 0) return;
  const int64_t n = a.batch * a.seq * a.heads * a.head_size;  // q and y (a few KiB for a decode step)
  std::vector<float> q(static_cast<size_t>(n)), y(static_cast<size_t>(n));
  const bool f16c = f16c_path();
  if (f16c)
    widen_f16c(a.q, q.data(), n);
  else
    for (int64_t i = 0; i < n; ++i) q[i] = half_to_float(a.q[i]);
  attend(Step<Half>{a, q.data(), y.data()}, run);
  if (f16c)
    narrow_f16c(y.data(), a.y, n);
  else
    for (int64_t i = 0; i < n; ++i) a.y[i] = float_to_half(y[i]);
}

}  // namespace lmfast
