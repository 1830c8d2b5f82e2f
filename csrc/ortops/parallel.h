// Splits a kernel's work into tasks run on the session's intra-op thread pool (so ONNX Runtime's
// thread count and spinning settings apply to lmfast's ops as to its own).
#pragma once

#include <cstddef>
#include <functional>

namespace lmfast {

// Runs task(i) for every i in [0, count), in parallel where the runner allows.
using ParallelRunner = std::function<void(size_t count, const std::function<void(size_t)>& task)>;

inline void run_serial(size_t count, const std::function<void(size_t)>& task) {
  for (size_t i = 0; i < count; ++i) task(i);
}

}  // namespace lmfast
