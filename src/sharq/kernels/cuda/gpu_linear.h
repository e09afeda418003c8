// A linear layer on the GPU: weights quantized once (on the host, exactly as the CPU Linear does),
// uploaded as Fp4Tiles; forward = activation prep + FP4 GEMM, BF16 in and out.
//
//   sharq_exact  : prep -> planes S^, R^ -> GEMM with both paths summed in FP32 accumulators
//                  (small-M wgmma kernel for M <= 64, else the prefill wgmma kernel; both read
//                  [S^ | R^] against the same decoded weight fragment: 2x the MMA work, prefill
//                  ceiling 0.5x cuBLAS FP16)
//   sharq_merged : prep -> plane fp16(S^ + R^) -> one GEMM (same kernels, one path)
//   nvfp4        : the paper's W4A4 baseline (NVFP4-16 activations and weights)
//   w4a16        : NVFP4-16 weights, BF16 activations
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sharq/kernels/cuda/fp4_gemm.h"
#include "sharq/kernels/cuda/sharq_prep.h"

namespace sharq::cuda {

enum class GpuScheme : uint8_t { sharq_exact, sharq_merged, nvfp4, w4a16 };
const char* gpu_scheme_name(GpuScheme s);

struct GpuLinearOptions {
  MaskKind mask = MaskKind::pair48;              // SharQ: pair48 | scalar24
  GlobalScale act_scale = GlobalScale::per_row;  // sharq/nvfp4: per_row (token) | per_tensor
  Fp4GemmKernel kernel = Fp4GemmKernel::automatic;
};

class GpuLinear {
 public:
  // W: N x K row-major FP32 on the host (N % 8 == 0).
  GpuLinear(GpuScheme scheme, const float* W, int64_t N, int64_t K, const GpuLinearOptions& opt = {});
  ~GpuLinear();
  GpuLinear(const GpuLinear&) = delete;
  GpuLinear& operator=(const GpuLinear&) = delete;

  GpuScheme scheme() const { return scheme_; }
  int64_t N() const { return N_; }
  int64_t K() const { return K_; }
  const DeviceFp4Weights& weights() const { return w_; }
  size_t weight_bytes() const { return w_.bytes(); }

  // x: M x K BF16 on the device. prepare() runs the activation prep only; gemm() runs the GEMM on
  // the last prepared input; forward() both. y: M x N BF16 on the device. Scratch grows on demand
  // (the first call at a new largest M allocates).
  void prepare(const __nv_bfloat16* x, int64_t M, cudaStream_t stream);
  void gemm(__nv_bfloat16* y, cudaStream_t stream, float* y_f32 = nullptr);  // y_f32: FP32 output instead (tests)
  void forward(const __nv_bfloat16* x, int64_t M, __nv_bfloat16* y, cudaStream_t stream) {
    prepare(x, M, stream);
    gemm(y, stream);
  }

  // Host copies of the operands of the last prepare (after a stream sync), for tests:
  // planes (M x ld FP16 bits; the second is empty unless sharq_exact) and the row scales.
  struct HostOperands { int64_t M = 0, ld = 0; std::vector<uint16_t> a0, a1; std::vector<float> row_scale; };
  HostOperands operands() const;

 private:
  void reserve(int64_t M);
  GpuScheme scheme_;
  int64_t N_, K_;
  GpuLinearOptions opt_;
  DeviceFp4Weights w_;
  int64_t M_ = 0, cap_ = 0;
  DeviceBuffer<__half> a0_, a1_;
  DeviceBuffer<float> g_;
  DeviceBuffer<uint32_t> scratch_;
  DeviceBuffer<uint8_t> ws_;
  const __nv_bfloat16* x_ = nullptr;  // w4a16 reads X directly (must stay valid until gemm())
};

}  // namespace sharq::cuda
