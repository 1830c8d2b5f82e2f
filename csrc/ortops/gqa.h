// Grouped-query attention over the in-place key/value cache, with com.microsoft.GroupQueryAttention's
// contract (the form lmfast's in-place export writes: separate q, k, v, no rotary, no softcap, no
// local window): the step's keys and values are written into the shared buffers at each row's own
// position, then each query attends causally over its row's filled part only.
//
// Work is split into (row, kv-head, query-block) tasks: a task reads its key/value head once, for
// all the query heads that head serves, instead of once per query head as ONNX Runtime's CPU kernel
// does; nothing is read past a row's own length.
#pragma once

#include <cstdint>

#include "parallel.h"

namespace lmfast {

struct GqaArgs {
  const float* q;            // [batch, seq, heads * head_size]
  const float* k;            // [batch, seq, kv_heads * head_size]
  const float* v;            // [batch, seq, kv_heads * head_size]
  const float* past_k;       // [batch, kv_heads, past_len, head_size]
  const float* past_v;       // [batch, kv_heads, past_len, head_size]
  float* present_k;          // [batch, kv_heads, present_len, head_size]; may be past_k (in place)
  float* present_v;          // [batch, kv_heads, present_len, head_size]; may be past_v (in place)
  float* y;                  // [batch, seq, heads * head_size]
  const int32_t* seqlens_k;  // [batch]: tokens each row holds after this step, minus one
  int64_t batch, seq, heads, kv_heads, head_size, past_len, present_len;
  float scale;        // applied to q.k before the softmax
  bool first_prompt;  // seq == total_sequence_length: every row's new tokens start at column 0
};

// Where row b's new tokens go: 0 for a first prompt, else seqlens_k[b] + 1 - seq.
inline int64_t gqa_past(const GqaArgs& a, int64_t b) { return a.first_prompt ? 0 : a.seqlens_k[b] + 1 - a.seq; }

// Writes the step's keys/values into the present buffers (copying the past first where present is a
// separate buffer) and computes y. The caller has checked the shapes and that every row's
// 0 <= gqa_past and gqa_past + seq <= present_len.
void gqa_attention(const GqaArgs& args, const ParallelRunner& run);

}  // namespace lmfast
