// Grouped-query attention over the in-place key/value cache, with com.microsoft.GroupQueryAttention's
// contract (the form lmfast's in-place export writes: separate q, k, v, no rotary, no softcap, no
// local window): the step's keys and values are written into the shared buffers at each row's own
// position, then each query attends causally over its row's filled part only.
//
// Work is split into (row, kv-head, query-block) tasks: a task reads its key/value head once, for
// all the query heads that head serves, instead of once per query head as ONNX Runtime's CPU kernel
// does; nothing is read past a row's own length.
//
// T is the graph's element type: float, or Half for an fp16 cache (`--kv_cache_precision fp16`, where
// the export casts q/k/v to fp16 around the node). Half keys and values are widened in registers
// (F16C) and everything is computed in fp32, as ONNX Runtime's CPU kernel does after converting whole
// heads to fp32 buffers; the output is rounded to fp16 once.
#pragma once

#include <cstdint>

#include "fp16.h"
#include "parallel.h"

namespace lmfast {

template <typename T>
struct GqaArgsT {
  const T* q;                // [batch, seq, heads * head_size]
  const T* k;                // [batch, seq, kv_heads * head_size]
  const T* v;                // [batch, seq, kv_heads * head_size]
  const T* past_k;           // [batch, kv_heads, past_len, head_size]
  const T* past_v;           // [batch, kv_heads, past_len, head_size]
  T* present_k;              // [batch, kv_heads, present_len, head_size]; may be past_k (in place)
  T* present_v;              // [batch, kv_heads, present_len, head_size]; may be past_v (in place)
  T* y;                      // [batch, seq, heads * head_size]
  const int32_t* seqlens_k;  // [batch]: tokens each row holds after this step, minus one
  int64_t batch, seq, heads, kv_heads, head_size, past_len, present_len;
  float scale;        // applied to q.k before the softmax
  bool first_prompt;  // seq == total_sequence_length: every row's new tokens start at column 0
};
using GqaArgs = GqaArgsT<float>;
using GqaArgsHalf = GqaArgsT<Half>;

// Where row b's new tokens go: 0 for a first prompt, else seqlens_k[b] + 1 - seq.
template <typename T>
inline int64_t gqa_past(const GqaArgsT<T>& a, int64_t b) {
  return a.first_prompt ? 0 : a.seqlens_k[b] + 1 - a.seq;
}

// Writes the step's keys/values into the present buffers (copying the past first where present is a
// separate buffer) and computes y. The caller has checked the shapes and that every row's
// 0 <= gqa_past and gqa_past + seq <= present_len.
void gqa_attention(const GqaArgs& args, const ParallelRunner& run);
// The same over fp16 buffers: the AVX2 path needs F16C too (else the scalar path runs).
void gqa_attention(const GqaArgsHalf& args, const ParallelRunner& run);

}  // namespace lmfast
