// FP4-weight GEMMs on Hopper (sm_90a), Y (BF16, M x N) = row_scale[m] * g_w[n] * sum_p A_p W^T.
//
// W is an NVFP4 payload (Fp4Tiles: E2M1 codes + UE4M3 scales per 32 (SharQ's shared W32) or per 16
// (the NVFP4 baseline)), read from HBM once per call and decoded in registers to exact FP16/BF16
// (E2M1 x UE4M3 has at most 6 significant bits). The activation paths A_p are FP16 planes written by
// the prep (or BF16 X itself for W4A16). Accumulation is FP32 throughout.
//
//   SharQ exact  : two paths, A0 = S^, A1 = R^, summed in the same FP32 accumulators.
//   SharQ merged : one path, A0 = fp16(S^ + R^).
//   NVFP4 W4A4   : one path, A0 = X^ (exact FP16 image of the NVFP4-16 activations).
//   W4A16        : one path, A0 = X (BF16), weights decoded to BF16.
//
// Kernels:
//   decode  : mma.sync m16n8k16, for M <= 64 (any M works): each warp streams 8 weight tiles of
//             8 x 128 per k-step with 16-byte loads, reuses each decoded fragment for every m16 tile
//             and both paths; split-K over the grid so that small N still fills the chip, with a
//             deterministic second pass that sums the splits in order.
//   small   : wgmma m64nNk16 with the weights decoded in registers as the A operand and N = 8..64
//             tokens (M <= 64, N % 128 == 0), split-K with an ordered FP32 reduction.
//   prefill : the same swapped wgmma with 128/256-token tiles (M > 64, N % 128 == 0).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "sharq/kernels/cuda/cuda_check.h"
#include "sharq/kernels/cuda/sharq_prep.h"
#include "sharq/quant/fp4_tiles.h"

namespace sharq::cuda {

// Fp4Tiles on the device.
struct DeviceFp4Weights {
  int64_t N = 0, K = 0, Kp = 0;
  int block = 32;
  DeviceBuffer<uint8_t> codes, scales;
  DeviceBuffer<float> g;  // 1 or N floats
  static DeviceFp4Weights upload(const Fp4Tiles& t);
  size_t bytes() const { return codes.bytes() + scales.bytes() + g.bytes(); }
};

struct Fp4GemmArgs {
  const void* a0 = nullptr;          // M x lda (FP16, or BF16 when adt == bf16)
  const void* a1 = nullptr;          // second path (SharQ exact) or null; same type and lda
  DType adt = DType::f16;
  int64_t M = 0, lda = 0;            // lda >= Kp, a multiple of 8; columns K..Kp-1 must be 0
  const float* row_scale = nullptr;  // device: 1 or M floats (g_x); null = 1
  int64_t row_scale_count = 0;
  __nv_bfloat16* y = nullptr;        // M x ldy
  int64_t ldy = 0;
  float* y_f32 = nullptr;            // optional: FP32 output (M x ldy) written instead of y, so that
                                     // tests can check the FP32 result before the BF16 rounding
};

// automatic: M <= 64 -> small (wgmma) when N % 128 == 0, else decode (mma.sync); M > 64 -> prefill
// when N % 128 == 0, else decode.
enum class Fp4GemmKernel : uint8_t { automatic, decode, small, prefill };

// FP32 workspace the split-K of the small-M kernels needs (0 when none), whichever fp4_gemm picks.
size_t fp4_gemm_workspace_bytes(int64_t M, const DeviceFp4Weights& w);

// Throws std::invalid_argument (unsupported shape, null pointer, too small workspace) before launch.
void fp4_gemm(const Fp4GemmArgs& a, const DeviceFp4Weights& w, Fp4GemmKernel kernel, void* workspace,
              size_t workspace_bytes, cudaStream_t stream);

// The kernels themselves (fp4_gemm picks one); arguments already validated.
void fp4_gemm_decode(const Fp4GemmArgs& a, const DeviceFp4Weights& w, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream);
void fp4_gemm_prefill(const Fp4GemmArgs& a, const DeviceFp4Weights& w, cudaStream_t stream);

// Small-M wgmma kernel (fp4_gemm_prefill.cu), M <= kSmallMaxM, N % 128 == 0: the prefill's swapped
// wgmma with token tiles of 8 / 16 / 32 / 64 (the smallest >= M), split-K over the grid (FP32
// partials in the workspace [split][M][N], summed in split order by a second kernel: deterministic).
// The weights are read from HBM once. Both kernels use programmatic dependent launch (they may be
// launched before the previous kernel in the stream has finished, and wait for it before touching
// global memory).
// splits: 0 picks the count (the same rule in both functions); > 0 forces it (clamped to Kp / 128),
// for tuning. Validates like fp4_gemm_prefill (also: FP16 planes for two paths, a large enough
// 16-byte aligned workspace when splits > 1) and throws std::invalid_argument before any launch.
inline constexpr int64_t kSmallMaxM = 64;
size_t fp4_gemm_wgmma_small_workspace_bytes(int64_t M, const DeviceFp4Weights& w, int splits = 0);
void fp4_gemm_wgmma_small(const Fp4GemmArgs& a, const DeviceFp4Weights& w, void* workspace, size_t workspace_bytes,
                          cudaStream_t stream, int splits = 0);

}  // namespace sharq::cuda
