// Which instruction-set path the kernels take: the best the CPU has (cpuid, read once), unless
// LMFAST_ORTOPS_ISA=scalar forces the portable one. The variable is read at every call (one getenv
// per MatMul), so tests run every path the CPU can execute against one reference in one process.
#pragma once

#include <cstdlib>
#include <cstring>

namespace lmfast {

enum class Isa { kScalar, kAvx2 };

inline bool detect_avx2_fma() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

inline bool cpu_has_avx2_fma() {
  static const bool has = detect_avx2_fma();
  return has;
}

inline bool detect_f16c() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

// Whether the CPU converts fp16 in vector registers (F16C: every AVX2 CPU made so far has it, but
// the fp16 kernels check rather than assume).
inline bool cpu_has_f16c() {
  static const bool has = detect_f16c();
  return has;
}

inline Isa selected_isa() {
  const char* forced = std::getenv("LMFAST_ORTOPS_ISA");
  if (forced != nullptr && std::strcmp(forced, "scalar") == 0) return Isa::kScalar;
  return cpu_has_avx2_fma() ? Isa::kAvx2 : Isa::kScalar;
}

}  // namespace lmfast
