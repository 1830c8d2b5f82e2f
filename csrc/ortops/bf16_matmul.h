// Y[M, N] = X[M, K] (fp32) times W[N, K]^T with W in bfloat16 bits, read as 2 bytes each and
// widened in registers, so a batch-1 step moves half of fp32's bytes.
//
// W comes in lmfast's tiled layout (lmfast.generation.native_ops.bf16_tiles writes it at load):
// rows in groups of 8, K in chunks of 8, each group/chunk an 8 x 8 tile of 128 contiguous bytes,
// k-major within the tile (the 8 rows' weights for one k are 16 contiguous bytes); N and K
// zero-padded to multiples of 8. A batch-1 step then reads the weights as one sequential stream
// instead of 8 strided ones (10 vs ~16 GB/s per core here), and each 16-byte vector widens to
// the 8 rows' fp32 lanes for a broadcast activation.
#pragma once

#include <cstdint>

#include "parallel.h"

namespace lmfast {

constexpr int64_t kTile = 8;

inline int64_t tiles_of(int64_t size) { return (size + kTile - 1) / kTile; }

void bf16_matmul(const float* x, const uint16_t* tiles, float* y, int64_t m, int64_t k, int64_t n,
                 const ParallelRunner& run);

}  // namespace lmfast
