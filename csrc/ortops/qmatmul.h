// Y[M, N] = X[M, K] (fp32) times block-quantized W[N, K]^T in MatMulNBits' layout, read as it is
// in the file: per row, ceil(K / block) blocks of block * bits / 8 bytes (4 bits: element 2i in the
// low nibble of byte i), one fp32 scale per block, and a zero point per block (uint8; 4 bits: two
// per byte, low nibble first) or the default 2^(bits - 1). W = (q - zero point) * scale.
#pragma once

#include <cstdint>

#include "parallel.h"

namespace lmfast {

struct BlockQuantized {
  const uint8_t* data;         // [n, blocks, block * bits / 8]
  const float* scales;         // [n, blocks]
  const uint8_t* zero_points;  // [n, ceil(blocks * bits / 8)] or nullptr (default zero point)
  int64_t n, k, block, bits;

  int64_t blocks() const { return (k + block - 1) / block; }
  int64_t blob_bytes() const { return block * bits / 8; }
  int64_t zero_point_row_bytes() const { return (blocks() * bits + 7) / 8; }
  int zero_point(int64_t row, int64_t b) const {
    if (zero_points == nullptr) return 1 << (bits - 1);
    if (bits == 8) return zero_points[row * zero_point_row_bytes() + b];
    const uint8_t byte = zero_points[row * zero_point_row_bytes() + b / 2];
    return (b & 1) ? (byte >> 4) : (byte & 0x0F);
  }
};

void quantized_matmul(const float* x, const BlockQuantized& w, float* y, int64_t m, const ParallelRunner& run);

}  // namespace lmfast
