// cuBLASLt baselines (see cublaslt_gemm.h).
//
// Row-major Y[M x N] = X[M x K] W[N x K]^T is the column-major product Y^T (N x M) = W X^T, which
// cuBLASLt computes as D = op(A) op(B) with
//   A = W, stored K x N column-major (lda = K), op(A) = A^T (N x K)   -> m = N
//   B = X, stored K x M column-major (ldb = K), op(B) = B   (K x M)   -> n = M,  k = K
//   C = D = Y, N x M column-major (ldc = ldd = N).
// This "TN" form is the only one cuBLASLt's FP8 kernels accept, and it is also the natural one
// for f16/bf16 (both operands K-contiguous), so every type uses it.
//
// FP8 fast accumulation (CUBLASLT_MATMUL_DESC_FAST_ACCUM): cuBLASLt's default is 0, in which the
// kernels periodically promote the tensor cores' reduced-precision FP8 partial sums into FP32
// registers (what DeepGEMM does by hand). We set it explicitly and default to 1 (fast accum): this
// is the speed baseline, matching vLLM's FP8 CUTLASS kernels (the "FastAccum" schedules) and
// torch._scaled_mm(use_fast_accum=True). Note that torch._scaled_mm's own default is
// use_fast_accum=False. CublasLtGemm::set_fp8_fast_accum(false) selects the accurate mode; the
// flag is part of the plan cache key, so switching it is safe between calls. Measured on an H100
// (cuBLASLt 13, M = 64, N = 256, K = 16384, BF16 out): relative Frobenius error against FP64 on the
// decoded operands 1.97e-3 with fast accumulation, 1.67e-3 without (mostly the BF16 output rounding).
#include "sharq/kernels/cuda/cublaslt_gemm.h"

#include <cublasLt.h>
#include <cuda_bf16.h>

#include <stdexcept>
#include <string>

#include "sharq/formats/minifloat.h"
#include "sharq/quant/fp8.h"
#include "sharq/kernels/cuda/cuda_check.h"

// Checked cuBLAS(Lt) call: throws std::runtime_error naming the call, file:line and the status.
#define SHARQ_CUBLAS_CHECK(call)                                                                           \
  do {                                                                                                     \
    const cublasStatus_t sharq_st_ = (call);                                                               \
    if (sharq_st_ != CUBLAS_STATUS_SUCCESS)                                                                \
      throw std::runtime_error(std::string("cuBLASLt call failed: ") + #call + " at " + __FILE__ + ":" +  \
                               std::to_string(__LINE__) + ": " + cublasLtGetStatusName(sharq_st_) + " (" + \
                               cublasLtGetStatusString(sharq_st_) + ")");                                  \
  } while (0)

namespace sharq::cuda {

const char* blas_type_name(BlasType t) {
  switch (t) {
    case BlasType::f16: return "fp16";
    case BlasType::bf16: return "bf16";
    case BlasType::fp8_e4m3: return "fp8_e4m3";
    case BlasType::fp8_e4m3_rowwise: return "fp8_e4m3_rowwise";
    case BlasType::f16_f32out: return "fp16->fp32";
    case BlasType::bf16_f32out: return "bf16->fp32";
  }
  return "unknown";
}

namespace {

// ---------------------------------------------------------------------------------------------
// RAII owners of the cuBLASLt objects: each is destroyed on every path, exceptions included.
// Destruction statuses are ignored (a destructor must not throw).
struct LtHandle {
  cublasLtHandle_t h = nullptr;
  LtHandle() { SHARQ_CUBLAS_CHECK(cublasLtCreate(&h)); }
  ~LtHandle() { if (h) cublasLtDestroy(h); }
  LtHandle(const LtHandle&) = delete;
  LtHandle& operator=(const LtHandle&) = delete;
};

struct MatmulDesc {
  cublasLtMatmulDesc_t d = nullptr;
  MatmulDesc(cublasComputeType_t compute, cudaDataType_t scale) {
    SHARQ_CUBLAS_CHECK(cublasLtMatmulDescCreate(&d, compute, scale));
  }
  ~MatmulDesc() { if (d) cublasLtMatmulDescDestroy(d); }
  MatmulDesc(const MatmulDesc&) = delete;
  MatmulDesc& operator=(const MatmulDesc&) = delete;
  template <class T>
  void set(cublasLtMatmulDescAttributes_t attr, const T& v) {
    SHARQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, attr, &v, sizeof v));
  }
};

struct MatrixLayout {
  cublasLtMatrixLayout_t l = nullptr;
  MatrixLayout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld) {
    SHARQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l, type, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols), ld));
  }
  ~MatrixLayout() { if (l) cublasLtMatrixLayoutDestroy(l); }
  MatrixLayout(const MatrixLayout&) = delete;
  MatrixLayout& operator=(const MatrixLayout&) = delete;
};

struct MatmulPreference {
  cublasLtMatmulPreference_t p = nullptr;
  MatmulPreference() { SHARQ_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&p)); }
  ~MatmulPreference() { if (p) cublasLtMatmulPreferenceDestroy(p); }
  MatmulPreference(const MatmulPreference&) = delete;
  MatmulPreference& operator=(const MatmulPreference&) = delete;
  template <class T>
  void set(cublasLtMatmulPreferenceAttributes_t attr, const T& v) {
    SHARQ_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(p, attr, &v, sizeof v));
  }
};

// Largest power of two (capped at 256, cuBLASLt's default assumption) that divides the address.
uint32_t pointer_alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && (a % al) != 0) al >>= 1;
  return al;
}

struct TypeInfo {
  cudaDataType_t ab, cd;
};
TypeInfo type_info(BlasType t) {
  switch (t) {
    case BlasType::f16: return {CUDA_R_16F, CUDA_R_16F};
    case BlasType::bf16: return {CUDA_R_16BF, CUDA_R_16BF};
    case BlasType::f16_f32out: return {CUDA_R_16F, CUDA_R_32F};
    case BlasType::bf16_f32out: return {CUDA_R_16BF, CUDA_R_32F};
    case BlasType::fp8_e4m3:
    case BlasType::fp8_e4m3_rowwise: return {CUDA_R_8F_E4M3, CUDA_R_16BF};
  }
  throw std::invalid_argument("CublasLtGemm: unknown BlasType");
}

std::string shape_string(BlasType t, int64_t M, int64_t N, int64_t K) {
  return std::string(blas_type_name(t)) + " M=" + std::to_string(M) + " N=" + std::to_string(N) +
         " K=" + std::to_string(K);
}

// ---------------------------------------------------------------------------------------------
// One cached plan per key: the descriptors (reused, only the FP8 scale pointers are re-set per
// call) and the heuristic's first algorithm.
struct Plan {
  MatmulDesc desc{CUBLAS_COMPUTE_32F, CUDA_R_32F};
  MatrixLayout a, b, c;
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
  Plan(cudaDataType_t ab, cudaDataType_t cd, int64_t M, int64_t N, int64_t K)
      : a(ab, K, N, K), b(ab, K, M, K), c(cd, N, M, N) {}
};

// (type, M, N, K, alignment of W, X, Y, fast accum)
using PlanKey = std::tuple<int, int64_t, int64_t, int64_t, uint32_t, uint32_t, uint32_t, int>;

}  // namespace

struct CublasLtGemm::Impl {
  LtHandle handle;
  DeviceBuffer<uint8_t> workspace{kWorkspaceBytes};
  std::map<PlanKey, std::unique_ptr<Plan>> plans;
};

CublasLtGemm::CublasLtGemm() : impl_(std::make_unique<Impl>()) {}
CublasLtGemm::~CublasLtGemm() = default;

void CublasLtGemm::validate(BlasType t, const void* X, const void* W, const void* Y, int64_t M, int64_t N, int64_t K,
                            const float* x_scale, const float* w_scale, bool accumulate) {
  const std::string where = "CublasLtGemm::matmul(" + shape_string(t, M, N, K) + "): ";
  if (t != BlasType::f16 && t != BlasType::bf16 && t != BlasType::fp8_e4m3 && t != BlasType::fp8_e4m3_rowwise &&
      t != BlasType::f16_f32out && t != BlasType::bf16_f32out)
    throw std::invalid_argument("CublasLtGemm::matmul: unknown BlasType");
  if (accumulate && t != BlasType::f16_f32out && t != BlasType::bf16_f32out)
    throw std::invalid_argument(where + "accumulate (Y += X W^T) takes the FP32 outputs only (f16_f32out, bf16_f32out)");
  if (M < 0) throw std::invalid_argument(where + "M must be >= 0");
  if (N <= 0 || K <= 0) throw std::invalid_argument(where + "N and K must be > 0");
  if (M == 0) return;  // no-op: nothing is read or written
  if (!X || !W || !Y) throw std::invalid_argument(where + "X, W and Y must be non-null device pointers");
  if (t == BlasType::fp8_e4m3 || t == BlasType::fp8_e4m3_rowwise) {
    if (!x_scale || !w_scale)
      throw std::invalid_argument(where + (t == BlasType::fp8_e4m3
                                               ? "FP8 needs both per-tensor scales (x_scale, w_scale: device floats)"
                                               : "row-wise FP8 needs x_scale (M floats) and w_scale (N floats)"));
    if (pointer_alignment(x_scale) < 4 || pointer_alignment(w_scale) < 4)
      throw std::invalid_argument(where + "FP8 scales must be 4-byte aligned device floats");
    if (K % 16 != 0) throw std::invalid_argument(where + "FP8 needs K % 16 == 0 (16-byte aligned rows)");
    if (pointer_alignment(X) < 16 || pointer_alignment(W) < 16 || pointer_alignment(Y) < 16)
      throw std::invalid_argument(where + "FP8 needs 16-byte aligned X, W and Y");
  } else {
    const bool f32out = t == BlasType::f16_f32out || t == BlasType::bf16_f32out;
    if (pointer_alignment(X) < 2 || pointer_alignment(W) < 2 || pointer_alignment(Y) < (f32out ? 4u : 2u))
      throw std::invalid_argument(where + "X, W and Y must be aligned to their 2-byte element type");
  }
}

void CublasLtGemm::matmul(BlasType t, const void* X, const void* W, void* Y, int64_t M, int64_t N, int64_t K,
                          const float* x_scale, const float* w_scale, cudaStream_t stream, float alpha_value,
                          bool accumulate) {
  validate(t, X, W, Y, M, N, K, x_scale, w_scale, accumulate);
  if (M == 0) return;
  const bool rowwise = t == BlasType::fp8_e4m3_rowwise;
  const bool fp8 = t == BlasType::fp8_e4m3 || rowwise;
  const int fast = fp8 && fp8_fast_accum_ ? 1 : 0;
  const uint32_t al_w = pointer_alignment(W), al_x = pointer_alignment(X), al_y = pointer_alignment(Y);
  const PlanKey key{static_cast<int>(t), M, N, K, al_w, al_x, al_y, fast};

  auto it = impl_->plans.find(key);
  if (it == impl_->plans.end()) {
    const TypeInfo ti = type_info(t);
    auto plan = std::make_unique<Plan>(ti.ab, ti.cd, M, N, K);
    const int32_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
    plan->desc.set(CUBLASLT_MATMUL_DESC_TRANSA, op_t);
    plan->desc.set(CUBLASLT_MATMUL_DESC_TRANSB, op_n);
    if (fp8) {
      const int8_t fast_accum = static_cast<int8_t>(fast);
      plan->desc.set(CUBLASLT_MATMUL_DESC_FAST_ACCUM, fast_accum);
      // Set for the heuristic too (it does not dereference them): the scaled FP8 path is chosen.
      const void* a_scale = w_scale;
      const void* b_scale = x_scale;
      plan->desc.set(CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, a_scale);
      plan->desc.set(CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, b_scale);
      if (rowwise) {  // A = W: one scale per row of op(A) (our N); B = X: one per column of op(B) (our M)
        const int32_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
        plan->desc.set(CUBLASLT_MATMUL_DESC_A_SCALE_MODE, mode);
        plan->desc.set(CUBLASLT_MATMUL_DESC_B_SCALE_MODE, mode);
      }
    }
    MatmulPreference pref;
    const uint64_t ws = kWorkspaceBytes;
    pref.set(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, ws);
    // The actual alignments (the default assumption is 256 bytes for every matrix): an algorithm
    // chosen here is legal for these pointers, and the key keeps plans for other alignments apart.
    pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, al_w);
    pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, al_x);
    pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, al_y);
    pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, al_y);

    cublasLtMatmulHeuristicResult_t result{};
    int returned = 0;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(impl_->handle.h, plan->desc.d, plan->a.l, plan->b.l,
                                                             plan->c.l, plan->c.l, pref.p, 1, &result, &returned);
    if (st == CUBLAS_STATUS_NOT_SUPPORTED || (st == CUBLAS_STATUS_SUCCESS && returned == 0))
      throw std::runtime_error("cuBLASLt: no algorithm for " + shape_string(t, M, N, K) + " (TN, alignments W/X/Y " +
                               std::to_string(al_w) + "/" + std::to_string(al_x) + "/" + std::to_string(al_y) +
                               " bytes" + (fp8 ? ", fast_accum " + std::to_string(fast) : std::string()) +
                               (rowwise ? ", OUTER_VEC_32F row/column scales" : "") +
                               "; FP8 also needs 16-byte leading dimensions: K % 16 == 0, N % 8 == 0)");
    SHARQ_CUBLAS_CHECK(st);
    SHARQ_CUBLAS_CHECK(result.state);
    if (result.workspaceSize > kWorkspaceBytes)
      throw std::runtime_error("cuBLASLt: the heuristic asked for " + std::to_string(result.workspaceSize) +
                               " bytes of workspace, more than the " + std::to_string(kWorkspaceBytes) + " allowed");
    plan->algo = result.algo;
    plan->workspace = result.workspaceSize;
    it = impl_->plans.emplace(key, std::move(plan)).first;
  }

  Plan& p = *it->second;
  if (fp8) {  // the pointers may differ from the ones the plan was made with
    const void* a_scale = w_scale;
    const void* b_scale = x_scale;
    p.desc.set(CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, a_scale);
    p.desc.set(CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, b_scale);
  }
  const float alpha = alpha_value, beta = accumulate ? 1.0f : 0.0f;  // beta = 0: C is not read
  SHARQ_CUBLAS_CHECK(cublasLtMatmul(impl_->handle.h, p.desc.d, &alpha, W, p.a.l, X, p.b.l, &beta, Y, p.c.l, Y, p.c.l,
                                    &p.algo, impl_->workspace.get(), p.workspace, stream));
}

// ---------------------------------------------------------------------------------------------
// Per-tensor FP8 quantization.
namespace {

constexpr int kThreads = 256;
constexpr float kE4m3Max = 448.0f;

// Max of the finite |x[i]| over i = first, first + step, ... < n, reduced over the block (kThreads
// threads). The result is valid in thread 0 only. A max is order-free, so any reduction order gives
// the same value; abs clears the sign bit (no -0 bits).
__device__ float block_amax_finite(const __nv_bfloat16* __restrict__ x, int64_t first, int64_t n, int64_t step) {
  float m = 0.0f;
  for (int64_t i = first; i < n; i += step) {
    const float a = abs_f32(__bfloat162float(x[i]));
    if (!is_nonfinite(a) && a > m) m = a;
  }
  for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  __shared__ float warp_max[kThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_max[warp] = m;
  __syncthreads();
  m = lane < kThreads / 32 ? warp_max[lane] : 0.0f;
  if (warp == 0)
    for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  return m;
}

// amax over the finite |x| into *amax_bits (the FP32 bits of a non-negative float order like the
// unsigned integers, so atomicMax on the bits is a float max). *amax_bits must start at 0.
__global__ void __launch_bounds__(kThreads) amax_finite_bf16_kernel(const __nv_bfloat16* __restrict__ x, int64_t n,
                                                                      unsigned* amax_bits) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const float m = block_amax_finite(x, static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, n, stride);
  if (threadIdx.x == 0 && m > 0.0f) atomicMax(amax_bits, __float_as_uint(m));
}

// *scale holds the amax bits on entry and the scale on exit: amax / 448, or 1 when amax is 0.
__global__ void finalize_scale_kernel(float* scale) {
  const float amax = *scale;
  *scale = amax > 0.0f ? amax / kE4m3Max : 1.0f;
}

__global__ void quantize_e4m3_kernel(const __nv_bfloat16* __restrict__ x, int64_t n, const float* __restrict__ scale,
                                     uint8_t* __restrict__ out) {
  const float s = *scale;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = e4m3_encode(__bfloat162float(x[i]) / s);  // IEEE division (no fast math in this TU)
}

// One block per row: the finite amax (NaN-free max of |x|: the order of a max does not matter),
// then every code of the row with the shared scale.
__global__ void __launch_bounds__(kThreads) quantize_fp8_row_kernel(const __nv_bfloat16* __restrict__ x, int64_t K,
                                                                      uint8_t* __restrict__ out, int64_t ld,
                                                                      float* __restrict__ scales) {
  const int64_t row = blockIdx.x;
  const __nv_bfloat16* xr = x + row * K;
  __shared__ float row_scale;
  const float m = block_amax_finite(xr, threadIdx.x, K, kThreads);
  if (threadIdx.x == 0) {
    row_scale = fp8_scale_from_amax(m);
    scales[row] = row_scale;
  }
  __syncthreads();
  const float s = row_scale;
  for (int64_t k = threadIdx.x; k < K; k += kThreads) out[row * ld + k] = fp8_quantize_value(__bfloat162float(xr[k]), s);
}

unsigned grid_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 4096 ? (b > 0 ? b : 1) : 4096);
}

}  // namespace

void quantize_fp8_per_tensor(const void* x_bf16, int64_t n, void* out_e4m3, float* scale, cudaStream_t stream) {
  if (n < 0) throw std::invalid_argument("quantize_fp8_per_tensor: n must be >= 0");
  if (!scale) throw std::invalid_argument("quantize_fp8_per_tensor: scale must be a non-null device pointer");
  if (n > 0 && (!x_bf16 || !out_e4m3))
    throw std::invalid_argument("quantize_fp8_per_tensor: x and out must be non-null device pointers when n > 0");
  if (reinterpret_cast<uintptr_t>(x_bf16) % 2 != 0 || reinterpret_cast<uintptr_t>(scale) % 4 != 0)
    throw std::invalid_argument("quantize_fp8_per_tensor: x must be 2-byte and scale 4-byte aligned");

  const auto* x = static_cast<const __nv_bfloat16*>(x_bf16);
  auto* out = static_cast<uint8_t*>(out_e4m3);
  // Stream-ordered: amax (in *scale's bits) -> scale -> quantize, each launch after the previous.
  // *scale itself is the amax word, so no scratch allocation is needed; the 1-thread finalize launch
  // sits between the two passes because the quantize blocks must all read the final scale (one of
  // them rewriting *scale while the others read it would race).
  SHARQ_CUDA_CHECK(cudaMemsetAsync(scale, 0, sizeof(float), stream));
  if (n > 0) {
    amax_finite_bf16_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, n, reinterpret_cast<unsigned*>(scale));
    SHARQ_CUDA_CHECK(cudaGetLastError());
  }
  finalize_scale_kernel<<<1, 1, 0, stream>>>(scale);
  SHARQ_CUDA_CHECK(cudaGetLastError());
  if (n > 0) {
    quantize_e4m3_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, n, scale, out);
    SHARQ_CUDA_CHECK(cudaGetLastError());
  }
}

void quantize_fp8_per_row(const void* x_bf16, int64_t M, int64_t K, void* out_e4m3, int64_t ld_out, float* scales,
                          cudaStream_t stream) {
  if (M < 0 || K <= 0 || ld_out < K)
    throw std::invalid_argument("quantize_fp8_per_row: M must be >= 0, K > 0 and ld_out >= K");
  if (M == 0) return;
  if (M > 0x7FFFFFFF) throw std::invalid_argument("quantize_fp8_per_row: M is too large");
  if (!x_bf16 || !out_e4m3 || !scales)
    throw std::invalid_argument("quantize_fp8_per_row: x, out and scales must be non-null device pointers");
  if (reinterpret_cast<uintptr_t>(x_bf16) % 2 != 0 || reinterpret_cast<uintptr_t>(scales) % 4 != 0)
    throw std::invalid_argument("quantize_fp8_per_row: x must be 2-byte and scales 4-byte aligned");
  quantize_fp8_row_kernel<<<static_cast<unsigned>(M), kThreads, 0, stream>>>(static_cast<const __nv_bfloat16*>(x_bf16), K,
                                                                             static_cast<uint8_t*>(out_e4m3), ld_out, scales);
  SHARQ_CUDA_CHECK(cudaGetLastError());
}

}  // namespace sharq::cuda
