// lmfast's custom-op library for ONNX Runtime (domain "lmfast"), loaded with
// SessionOptions.register_custom_ops_library. Nothing links libonnxruntime: the API comes from the
// OrtApiBase* that RegisterCustomOps receives (built against the 1.21 headers; the C API is
// append-only, so newer runtimes serve it).
#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT
#include "onnxruntime_lite_custom_op.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>
#include <mutex>
#include <string>
#include <vector>

#include "bf16_matmul.h"
#include "qmatmul.h"
#include "gqa.h"
#include "qmatmul_packed.h"
#include "cpu_features.h"

namespace {

constexpr const char* kDomain = "lmfast";

struct ParallelCall {
  const std::function<void(size_t)>* task;
};

// At most this many batches of tasks per call: fewer hand-offs between the pool's threads.
constexpr size_t kMaxBatches = 8;

void call_task(void* data, size_t i) { (*static_cast<ParallelCall*>(data)->task)(i); }

// Runs the tasks on the session's intra-op pool.
lmfast::ParallelRunner pool_runner(OrtKernelContext* context) {
  return [context](size_t count, const std::function<void(size_t)>& task) {
    if (count <= 1) {
      lmfast::run_serial(count, task);
      return;
    }
    ParallelCall call{&task};
    Ort::ThrowOnError(Ort::GetApi().KernelContext_ParallelFor(context, call_task, count, kMaxBatches, &call));
  };
}

int64_t leading_rows(const std::vector<int64_t>& shape) {
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
  return rows;
}

// Bf16MatMul(A: float[..., K], B: bfloat16 tiles) -> float[..., N]; attributes K, N. B is W[N, K]
// in the tiled layout of bf16_matmul.h: [ceil(N / 8), ceil(K / 8), 8, 8].
struct Bf16MatMul {
  int64_t k, n;

  Bf16MatMul(const OrtApi*, const OrtKernelInfo* info) {
    Ort::ConstKernelInfo attributes(info);
    k = attributes.GetAttribute<int64_t>("K");
    n = attributes.GetAttribute<int64_t>("N");
    if (k < 1 || n < 1) ORT_CXX_API_THROW("lmfast.Bf16MatMul: K and N must be positive", ORT_INVALID_ARGUMENT);
  }

  Ort::Status Compute(OrtKernelContext* context, const Ort::Custom::Tensor<float>& a,
                      const Ort::Custom::Tensor<Ort::BFloat16_t>& b, Ort::Custom::Tensor<float>& y) {
    const std::vector<int64_t>& a_shape = a.Shape();
    const int64_t tiled = lmfast::tiles_of(n) * lmfast::tiles_of(k) * lmfast::kTile * lmfast::kTile;
    if (a_shape.empty() || a_shape.back() != k || b.NumberOfElement() != tiled)
      return Ort::Status("lmfast.Bf16MatMul: expected A[..., K] and B of ceil(N/8) x ceil(K/8) 8 x 8 tiles",
                         ORT_INVALID_ARGUMENT);
    std::vector<int64_t> y_shape(a_shape.begin(), a_shape.end() - 1);
    y_shape.push_back(n);
    float* out = y.Allocate(y_shape);
    lmfast::bf16_matmul(a.Data(), reinterpret_cast<const uint16_t*>(b.Data()), out, leading_rows(a_shape), k, n,
                        pool_runner(context));
    return Ort::Status{nullptr};
  }
};

// QuantizedMatMul(A: float[..., K], B: uint8[N, blocks, block * bits / 8], scales: float[N * blocks],
//                 zero_points: optional uint8) -> float[..., N]; attributes K, N, bits (4 or 8),
// block_size: MatMulNBits' inputs and attributes, as the file holds them.
struct QuantizedMatMul {
  int64_t k, n, bits, block;

  QuantizedMatMul(const OrtApi*, const OrtKernelInfo* info) {
    Ort::ConstKernelInfo attributes(info);
    k = attributes.GetAttribute<int64_t>("K");
    n = attributes.GetAttribute<int64_t>("N");
    bits = attributes.GetAttribute<int64_t>("bits");
    block = attributes.GetAttribute<int64_t>("block_size");
    if ((bits != 4 && bits != 8) || block < 2 || (block * bits) % 8 != 0 || k < 1 || n < 1)
      ORT_CXX_API_THROW("lmfast.QuantizedMatMul: bits must be 4 or 8 and K, N, block_size positive",
                        ORT_INVALID_ARGUMENT);
  }

  Ort::Status Compute(OrtKernelContext* context, const Ort::Custom::Tensor<float>& a,
                      const Ort::Custom::Tensor<uint8_t>& b, const Ort::Custom::Tensor<float>& scales,
                      std::optional<const Ort::Custom::Tensor<uint8_t>*> zero_points,
                      Ort::Custom::Tensor<float>& y) {
    const std::vector<int64_t>& a_shape = a.Shape();
    lmfast::BlockQuantized w{b.Data(), scales.Data(), nullptr, n, k, block, bits};
    const int64_t b_bytes = n * w.blocks() * w.blob_bytes();
    if (a_shape.empty() || a_shape.back() != k || b.NumberOfElement() != b_bytes ||
        scales.NumberOfElement() != n * w.blocks())
      return Ort::Status("lmfast.QuantizedMatMul: A, B or scales do not match K, N, bits, block_size",
                         ORT_INVALID_ARGUMENT);
    if (zero_points.has_value() && *zero_points != nullptr) {
      if ((*zero_points)->NumberOfElement() != n * w.zero_point_row_bytes())
        return Ort::Status("lmfast.QuantizedMatMul: zero_points do not match N and the blocks",
                           ORT_INVALID_ARGUMENT);
      w.zero_points = (*zero_points)->Data();
    }
    std::vector<int64_t> y_shape(a_shape.begin(), a_shape.end() - 1);
    y_shape.push_back(n);
    float* out = y.Allocate(y_shape);
    lmfast::quantized_matmul(a.Data(), w, out, leading_rows(a_shape), pool_runner(context));
    return Ort::Status{nullptr};
  }
};

// GroupQueryAttention(query, key, value, past_key, past_value, seqlens_k, total_sequence_length)
//   -> (output, present_key, present_value): com.microsoft.GroupQueryAttention's contract for fp32
// and fp16 (OrtT, seen by the kernel as T), unpacked q/k/v, no rotary/softcap/local window (the
// rewrite swaps only such nodes); attributes num_heads, kv_num_heads, scale (0: 1/sqrt(head_size)).
// Bound to the same buffers, present is past, updated in place.
template <typename OrtT, typename T>
struct GroupQueryAttentionOf {
  int64_t heads, kv_heads;
  float scale;

  GroupQueryAttentionOf(const OrtApi*, const OrtKernelInfo* info) {
    Ort::ConstKernelInfo attributes(info);
    heads = attributes.GetAttribute<int64_t>("num_heads");
    kv_heads = attributes.GetAttribute<int64_t>("kv_num_heads");
    scale = 0.0f;  // absent: 1/sqrt(head_size), as com.microsoft.GroupQueryAttention
    try {
      scale = attributes.GetAttribute<float>("scale");
    } catch (const Ort::Exception&) {
    }
    if (heads < 1 || kv_heads < 1 || heads % kv_heads != 0)
      ORT_CXX_API_THROW("lmfast.GroupQueryAttention: num_heads must be a positive multiple of kv_num_heads",
                        ORT_INVALID_ARGUMENT);
  }

  Ort::Status Compute(OrtKernelContext* context, const Ort::Custom::Tensor<OrtT>& q,
                      const Ort::Custom::Tensor<OrtT>& k, const Ort::Custom::Tensor<OrtT>& v,
                      const Ort::Custom::Tensor<OrtT>& past_k, const Ort::Custom::Tensor<OrtT>& past_v,
                      const Ort::Custom::Tensor<int32_t>& seqlens_k, const Ort::Custom::Tensor<int32_t>& total,
                      Ort::Custom::Tensor<OrtT>& y, Ort::Custom::Tensor<OrtT>& present_k,
                      Ort::Custom::Tensor<OrtT>& present_v) {
    const std::vector<int64_t>&q_shape = q.Shape(), &k_shape = k.Shape(), &p_shape = past_k.Shape();
    if (q_shape.size() != 3 || q_shape[2] % heads != 0 || q_shape[2] == 0)
      return Ort::Status("lmfast.GroupQueryAttention: query must be [batch, seq, num_heads * head_size]",
                         ORT_INVALID_ARGUMENT);
    const int64_t batch = q_shape[0], seq = q_shape[1], d = q_shape[2] / heads;
    const std::vector<int64_t> kv_shape{batch, seq, kv_heads * d};
    if (k_shape != kv_shape || v.Shape() != kv_shape)
      return Ort::Status("lmfast.GroupQueryAttention: key and value must be [batch, seq, kv_num_heads * head_size]",
                         ORT_INVALID_ARGUMENT);
    if (p_shape.size() != 4 || p_shape[0] != batch || p_shape[1] != kv_heads || p_shape[3] != d ||
        past_v.Shape() != p_shape)
      return Ort::Status("lmfast.GroupQueryAttention: past_key and past_value must be [batch, kv_num_heads, L, head_size]",
                         ORT_INVALID_ARGUMENT);
    if (seqlens_k.NumberOfElement() != batch || total.NumberOfElement() != 1)
      return Ort::Status("lmfast.GroupQueryAttention: seqlens_k must be [batch] and total_sequence_length one value",
                         ORT_INVALID_ARGUMENT);
    const int64_t total_length = *total.Data();
    const bool first_prompt = seq == total_length;
    if (!first_prompt && seq > 1 && batch != 1)  // as ONNX Runtime's kernel: a later prompt chunk is one row
      return Ort::Status("lmfast.GroupQueryAttention: sequence_length > 1 after the first prompt needs batch 1",
                         ORT_INVALID_ARGUMENT);
    const int64_t present_len = std::max(total_length, p_shape[2]);
    const auto in = [](const OrtT* p) { return reinterpret_cast<const T*>(p); };
    lmfast::GqaArgsT<T> args{in(q.Data()), in(k.Data()), in(v.Data()), in(past_k.Data()), in(past_v.Data()),
                             nullptr, nullptr, nullptr, seqlens_k.Data(), batch, seq, heads, kv_heads, d, p_shape[2],
                             present_len, scale == 0.0f ? 1.0f / std::sqrt(static_cast<float>(d)) : scale,
                             first_prompt};
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t past = lmfast::gqa_past(args, b), held = args.seqlens_k[b] + 1;
      if (past < 0 || past > p_shape[2] || past + seq > present_len || held > present_len || held < 1)
        return Ort::Status("lmfast.GroupQueryAttention: seqlens_k out of range for the step and the buffer",
                           ORT_INVALID_ARGUMENT);
    }
    args.y = reinterpret_cast<T*>(y.Allocate(q_shape));
    const std::vector<int64_t> present_shape{batch, kv_heads, present_len, d};
    args.present_k = reinterpret_cast<T*>(present_k.Allocate(present_shape));
    args.present_v = reinterpret_cast<T*>(present_v.Allocate(present_shape));
    lmfast::gqa_attention(args, pool_runner(context));
    return Ort::Status{nullptr};
  }
};
using GroupQueryAttention = GroupQueryAttentionOf<float, float>;
static_assert(sizeof(Ort::Float16_t) == sizeof(lmfast::Half), "fp16 layouts differ");
using GroupQueryAttentionHalf = GroupQueryAttentionOf<Ort::Float16_t, lmfast::Half>;

// PackedQuantizedMatMul(A: float[..., K], B: uint8[groups, blocks, block * bits], scales:
// float[groups, blocks, 8], zero_points: optional uint8[groups, blocks, 8] (4 bits only))
// -> float[..., N]; attributes K, N, bits (4 or 8), block_size (a multiple of 8). The layout of
// qmatmul_packed.h, written at load by lmfast.generation.quant_pack.
struct PackedQuantizedMatMul {
  int64_t k, n, bits, block;

  PackedQuantizedMatMul(const OrtApi*, const OrtKernelInfo* info) {
    Ort::ConstKernelInfo attributes(info);
    k = attributes.GetAttribute<int64_t>("K");
    n = attributes.GetAttribute<int64_t>("N");
    bits = attributes.GetAttribute<int64_t>("bits");
    block = attributes.GetAttribute<int64_t>("block_size");
    if ((bits != 4 && bits != 8) || block < 8 || block % 8 != 0 || k < 1 || n < 1)
      ORT_CXX_API_THROW("lmfast.PackedQuantizedMatMul: bits must be 4 or 8, block_size a multiple of 8, K, N positive",
                        ORT_INVALID_ARGUMENT);
  }

  Ort::Status Compute(OrtKernelContext* context, const Ort::Custom::Tensor<float>& a,
                      const Ort::Custom::Tensor<uint8_t>& b, const Ort::Custom::Tensor<float>& scales,
                      std::optional<const Ort::Custom::Tensor<uint8_t>*> zero_points,
                      Ort::Custom::Tensor<float>& y) {
    const std::vector<int64_t>& a_shape = a.Shape();
    lmfast::PackedQuantized w{b.Data(), scales.Data(), nullptr, n, k, block, bits};
    const int64_t per_group = w.blocks() * lmfast::kPackedRows;
    if (a_shape.empty() || a_shape.back() != k || b.NumberOfElement() != w.groups() * w.blocks() * w.block_bytes() ||
        scales.NumberOfElement() != w.groups() * per_group)
      return Ort::Status("lmfast.PackedQuantizedMatMul: A, B or scales do not match K, N, bits, block_size",
                         ORT_INVALID_ARGUMENT);
    if (zero_points.has_value() && *zero_points != nullptr) {
      if (bits != 4 || (*zero_points)->NumberOfElement() != w.groups() * per_group)
        return Ort::Status("lmfast.PackedQuantizedMatMul: zero_points are 4-bit only, 8 per group and block",
                           ORT_INVALID_ARGUMENT);
      w.zero_points = (*zero_points)->Data();
    }
    std::vector<int64_t> y_shape(a_shape.begin(), a_shape.end() - 1);
    y_shape.push_back(n);
    float* out = y.Allocate(y_shape);
    lmfast::packed_quantized_matmul(a.Data(), w, out, leading_rows(a_shape), pool_runner(context));
    return Ort::Status{nullptr};
  }
};

std::vector<std::unique_ptr<Ort::Custom::OrtLiteCustomOp>>& op_store() {
  static std::vector<std::unique_ptr<Ort::Custom::OrtLiteCustomOp>> ops;
  return ops;
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                                   const OrtApiBase* api_base) {
  Ort::InitApi(api_base->GetApi(ORT_API_VERSION));
  static std::mutex lock;
  std::lock_guard<std::mutex> guard(lock);
  OrtStatus* status = nullptr;
  try {
    static std::unique_ptr<Ort::CustomOpDomain> domain;
    if (!domain) {
      domain = std::make_unique<Ort::CustomOpDomain>(kDomain);
      auto& ops = op_store();
      ops.emplace_back(Ort::Custom::CreateLiteCustomOp<Bf16MatMul>("Bf16MatMul", "CPUExecutionProvider"));
      ops.emplace_back(Ort::Custom::CreateLiteCustomOp<QuantizedMatMul>("QuantizedMatMul", "CPUExecutionProvider"));
      ops.emplace_back(
          Ort::Custom::CreateLiteCustomOp<GroupQueryAttention>("GroupQueryAttention", "CPUExecutionProvider"));
      ops.emplace_back(  // the fp16 cache's node: one op name, two type signatures
          Ort::Custom::CreateLiteCustomOp<GroupQueryAttentionHalf>("GroupQueryAttention", "CPUExecutionProvider"));
      ops.emplace_back(
          Ort::Custom::CreateLiteCustomOp<PackedQuantizedMatMul>("PackedQuantizedMatMul", "CPUExecutionProvider"));
      for (auto& op : ops) domain->Add(op.get());
    }
    Ort::UnownedSessionOptions(options).Add(*domain);
  } catch (const std::exception& e) {
    status = Ort::GetApi().CreateStatus(ORT_FAIL, e.what());
  }
  return status;
}

// Which kernel path this process takes ("avx2" or "scalar"): lmfast logs it, tests check it.
__attribute__((visibility("default"))) const char* lmfast_ortops_isa() {
  return lmfast::selected_isa() == lmfast::Isa::kAvx2 ? "avx2" : "scalar";
}

}  // extern "C"
