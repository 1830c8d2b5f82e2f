// Y[M, N] = X[M, K] (fp32) times block-quantized W[N, K]^T in lmfast's packed layout, written once
// when the graph is rewritten (lmfast.generation.quant_pack.pack_nbits) from MatMulNBits' inputs,
// so that one pass over the activations feeds 8 output rows and no lane needs a horizontal sum.
//
// Rows go in groups of 8 (N zero-padded), K in blocks (the last zero-padded). Within a group and
// block, "unit" t (t < block / 4) is 32 bytes: byte 4r + i is row r's element 4t + i, so one
// 4-byte broadcast of the activations times a unit gives each row's partial dot in its own lane.
//   8 bits: a unit as it is, signed: w = q - zero point (the rewrite packs only where that fits
//           in [-128, 127]); no zero points input.
//   4 bits: packed byte p of pair c (c < block / 8) = unit c's levels q in the low nibble, unit
//           c + block / 8's in the high nibble; zero points uint8 [groups, blocks, 8] or absent
//           (then 8).
// scales: fp32 [groups, blocks, 8].
#pragma once

#include <cstdint>

#include "parallel.h"

namespace lmfast {

constexpr int64_t kPackedRows = 8;

struct PackedQuantized {
  const uint8_t* data;         // [groups, blocks, block * bits]
  const float* scales;         // [groups, blocks, 8]
  const uint8_t* zero_points;  // [groups, blocks, 8] (4 bits only) or nullptr
  int64_t n, k, block, bits;

  int64_t groups() const { return (n + kPackedRows - 1) / kPackedRows; }
  int64_t blocks() const { return (k + block - 1) / block; }
  int64_t block_bytes() const { return block * bits; }  // 8 rows x block x bits / 8
  int zero_point(int64_t group, int64_t b, int64_t r) const {
    if (bits == 8) return 0;
    return zero_points == nullptr ? 8 : zero_points[(group * blocks() + b) * kPackedRows + r];
  }
  // The integer weight of row 8 * group + r at element j of block b (8 bits: already minus the
  // zero point; 4 bits: the level q).
  int level(int64_t group, int64_t b, int64_t r, int64_t j) const {
    const uint8_t* base = data + (group * blocks() + b) * block_bytes();
    const int64_t unit = j / 4, slot = 4 * r + j % 4;
    if (bits == 8) return static_cast<int8_t>(base[unit * 32 + slot]);
    const int64_t half = block / 8;
    const uint8_t byte = base[(unit % half) * 32 + slot];
    return unit < half ? (byte & 0x0F) : (byte >> 4);
  }
};

void packed_quantized_matmul(const float* x, const PackedQuantized& w, float* y, int64_t m,
                             const ParallelRunner& run);

}  // namespace lmfast
