// Y[M, N] = X[M, K] (fp32) times W[N, K]^T (bfloat16 bits): the weights are read as 2 bytes each and
// widened in registers, so a batch-1 step moves half of fp32's bytes.
#pragma once

#include <cstdint>

#include "parallel.h"

namespace lmfast {

void bf16_matmul(const float* x, const uint16_t* w, float* y, int64_t m, int64_t k, int64_t n,
                 const ParallelRunner& run);

}  // namespace lmfast
