// cuBLASLt baselines in the same harness: Y[M x N] = X[M x K] W[N x K]^T.
//   f16, bf16 : X, W and Y of that type, FP32 accumulation (CUBLAS_COMPUTE_32F).
//   f16_f32out, bf16_f32out : X, W of that type, Y in FP32 (the engine's lm_head: logits unrounded;
//               with accumulate, o's and down's product added to the FP32 residual stream).
//   fp8_e4m3  : X, W in E4M3 with per-tensor FP32 scales (device pointers), Y in BF16: the faster
//               per-tensor reference column of the benches, not sharq's fp8 scheme.
//   fp8_e4m3_rowwise : the fp8 scheme (quant/scheme.h): X, W in E4M3 with one FP32 scale per row of
//               X (M floats, per token) and per row of W (N floats, per output channel), applied by
//               cuBLASLt's OUTER_VEC_32F scale mode in the epilogue; Y in BF16.
// Every cuBLAS call is checked; a failure names the call and the status.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

#include <cuda_runtime.h>

namespace sharq::cuda {

enum class BlasType : uint8_t { f16, bf16, fp8_e4m3, fp8_e4m3_rowwise, f16_f32out, bf16_f32out };
const char* blas_type_name(BlasType t);

class CublasLtGemm {
 public:
  CublasLtGemm();  // handle + 32 MiB workspace
  ~CublasLtGemm();
  CublasLtGemm(const CublasLtGemm&) = delete;
  CublasLtGemm& operator=(const CublasLtGemm&) = delete;

  // Row-major operands. The algorithm is chosen once per (type, M, N, K) by the heuristic and cached
  // (the key also holds the operands' pointer alignment and, for FP8, the fast-accumulation flag,
  // since both change which algorithms are legal). M == 0 is a no-op. x_scale / w_scale are the
  // FP8 per-tensor scales (device floats; ignored for f16/bf16). Arguments are checked (validate)
  // before any CUDA call. Calls share one workspace: issue them on one stream (or order the
  // streams); the object is not thread-safe. A plan is made on the first call of a shape (host work
  // only: no allocation, no synchronization), so a call may be captured in a CUDA graph.
  // accumulate: Y += alpha * X W^T (beta = 1, cuBLASLt's in-place form C = D = Y: Y is read, and the
  // sum is rounded once), for the FP32 outputs (f16_f32out, bf16_f32out) only; otherwise
  // Y = alpha * X W^T and Y is not read. Not part of the plan's key: the heuristic never sees alpha or
  // beta, and beta is a run-time scalar every algorithm takes.
  void matmul(BlasType t, const void* X, const void* W, void* Y, int64_t M, int64_t N, int64_t K,
              const float* x_scale, const float* w_scale, cudaStream_t stream, float alpha = 1.0f,
              bool accumulate = false);

  // The argument checks of matmul, without any CUDA call: throws std::invalid_argument.
  static void validate(BlasType t, const void* X, const void* W, const void* Y, int64_t M, int64_t N, int64_t K,
                       const float* x_scale, const float* w_scale, bool accumulate = false);

  // FP8 only: CUBLASLT_MATMUL_DESC_FAST_ACCUM. On by default (the speed baseline, as vLLM's FP8
  // CUTLASS kernels); off = cuBLASLt periodically promotes the partial sums to FP32 (more accurate).
  void set_fp8_fast_accum(bool on) { fp8_fast_accum_ = on; }
  bool fp8_fast_accum() const { return fp8_fast_accum_; }

  static constexpr size_t kWorkspaceBytes = size_t{32} << 20;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  bool fp8_fast_accum_ = true;
};

// X (BF16, n values) -> E4M3 with the per-tensor scale amax / 448 (written to *scale, device),
// for the FP8 baseline's inputs. amax is over the finite values (1 when it is 0: all zero, empty
// or all non-finite); out = e4m3_encode(x / scale) (formats/minifloat.h, SATFINITE): RNE,
// +-Inf and overflow -> +-448, NaN (either sign) -> 0x7F. All pointers are device pointers;
// x and out may be null only when n == 0. Asynchronous on `stream`; throws std::invalid_argument
// on bad arguments before any CUDA call.
void quantize_fp8_per_tensor(const void* x_bf16, int64_t n, void* out_e4m3, float* scale, cudaStream_t stream);

// The fp8 scheme's activation quantization (quant/fp8.h, bit-identical to the CPU reference): X
// (BF16, M x K, row stride K) -> E4M3 codes (M x ld_out, ld_out >= K; columns K.. are not written)
// and one scale per row (M floats, amax / 448 of the row's finite values, 1 for a zero row;
// non-finite -> 0x7F). One block per row; asynchronous on `stream`; throws std::invalid_argument on
// bad arguments before any launch.
void quantize_fp8_per_row(const void* x_bf16, int64_t M, int64_t K, void* out_e4m3, int64_t ld_out, float* scales,
                          cudaStream_t stream);

}  // namespace sharq::cuda
