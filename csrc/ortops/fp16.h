// IEEE 754 half precision (fp16) storage for lmfast's kernels: a distinct type (uint16_t already means
// bf16 bits in avx2_tiles.h), exact widening and round-to-nearest-even narrowing (the F16C check is
// cpu_features.h's).
// Values are stored as fp16 and computed in fp32: an fp16 key/value cache halves the bytes a decode
// step reads, and F16C's vcvtph2ps widens 8 of them per instruction.
#pragma once

#include <cstdint>
#include <cstring>

namespace lmfast {

// One fp16 value's bits: layout-compatible with Ort::Float16_t and NumPy's float16.
struct Half {
  uint16_t bits;
};
static_assert(sizeof(Half) == 2, "Half must be 2 bytes");

// Exact: every fp16 value (subnormals, infinities, NaNs) is an fp32 value.
inline float half_to_float(Half h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  uint32_t exponent = (h.bits >> 10) & 0x1Fu, mantissa = h.bits & 0x3FFu, bits;
  if (exponent == 0x1Fu) {
    bits = sign | 0x7F800000u | (mantissa << 13);  // inf, NaN (payload kept)
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);  // rebias 15 -> 127
  } else if (mantissa == 0) {
    bits = sign;  // +-0
  } else {  // subnormal: normalize
    exponent = 113;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    bits = sign | (exponent << 23) | ((mantissa & 0x3FFu) << 13);
  }
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

// Round to nearest, ties to even (what vcvtps2ph with _MM_FROUND_TO_NEAREST_INT and NumPy's
// astype(float16) do); overflow gives infinity, NaN stays NaN.
inline Half float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t magnitude = x & 0x7FFFFFFFu;
  if (magnitude >= 0x7F800000u)  // inf or NaN
    return Half{static_cast<uint16_t>(sign | 0x7C00u | (magnitude > 0x7F800000u ? 0x200u : 0u))};
  if (magnitude >= 0x477FF000u) return Half{static_cast<uint16_t>(sign | 0x7C00u)};  // rounds past 65504
  if (magnitude < 0x38800000u) {  // below fp16's smallest normal: a subnormal (or zero)
    if (magnitude < 0x33000000u) return Half{sign};  // at most half the smallest subnormal: 0
    const uint32_t exponent = magnitude >> 23, mantissa = (magnitude & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126 - exponent;  // value = mantissa * 2^(exponent - 150), unit 2^-24
    uint32_t result = mantissa >> shift;
    const uint32_t rest = mantissa & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    if (rest > halfway || (rest == halfway && (result & 1u))) ++result;
    return Half{static_cast<uint16_t>(sign | result)};
  }
  uint32_t result = magnitude - 0x38000000u;  // rebias 127 -> 15, still 23 mantissa bits
  const uint32_t rest = result & 0x1FFFu;
  result >>= 13;
  if (rest > 0x1000u || (rest == 0x1000u && (result & 1u))) ++result;  // may carry into the exponent
  return Half{static_cast<uint16_t>(sign | result)};
}

}  // namespace lmfast
