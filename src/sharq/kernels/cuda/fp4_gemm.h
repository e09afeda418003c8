// FP4-weight GEMMs on Hopper (sm_90a): the one entry point of the family.
//
//   Y (BF16, M x N) = row_scale[m] * g_w[n] * sum_p A_p W^T (+ bias[n])
//
// W is an NVFP4 payload in the one packed layout (quant/fp4_tiles.h: E2M1 codes + UE4M3 scales
// per 32 (SharQ's shared W32) or per 16 (the NVFP4 baseline, sharq:w16)), read from HBM once per
// call and decoded in registers to exact FP16/BF16 (E2M1 x UE4M3 has at most 6 significant bits).
// The activation paths A_p are FP16 planes written by the prep (or BF16 X itself for W4A16).
// Accumulation is FP32 throughout.
//
//   SharQ exact  : two paths, A0 = S^, A1 = R^, summed in the same FP32 accumulators.
//   SharQ merged : one path, A0 = fp16(S^ + R^).
//   NVFP4 W4A4   : one path, A0 = X^ (exact FP16 image of the NVFP4-16 activations).
//   W4A16        : one path, A0 = X (BF16), weights decoded to BF16.
//
// Two kernel families behind the one entry point, both swapped-AB wgmma (the decoded weights are
// the register A operand, the activations the shared-memory B operand):
//   small   (M <= kSmallMaxM, decode): token tiles of 8 / 16 / 32 / 64, split-K over the grid with
//           FP32 partials summed in split order by one reduction kernel (deterministic), which can
//           also run the layer's successor, SwiGLU or the residual add + RMSNorm (Fp4Epilogue);
//   prefill (M >  kSmallMaxM): token tiles of 128 / 256; split-K over a thread block cluster of
//           1 to 8 CTAs whose FP32 partials are summed in rank order through distributed shared
//           memory (deterministic, no workspace, no second kernel).
//
// Batch invariance (docs/numerics.md): in the small family the K-reduction order of an output element
// (the split count and the k-tile order) depends on N and K only, never on M; so a row's result is
// bit-identical whether 1 or 64 rows share the call (tested). The prefill family's split count
// follows M (splits pay only while the grid is short of a wave), unless batch_invariant pins it to
// 1: then the rows of every M > 64 are bit-identical too (tested). Crossing families (M = 64 -> 65)
// may change a row's last bits.
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
  int64_t N = 0, K = 0, Np = 0, Kp = 0;
  int block = 32;
  DeviceBuffer<uint8_t> codes, scales;
  DeviceBuffer<float> g;  // 1 or N floats
  static DeviceFp4Weights upload(const Fp4Tiles& t);
  size_t bytes() const { return codes.bytes() + scales.bytes() + g.bytes(); }
};

// What the small family's split-K reduction may compute from the summed output instead of storing
// Y, saving the separate kernel and its pass over Y (fp4_gemm_fuses() says when it can: the caller
// runs the separate transformer_ops kernel otherwise). Y is rounded to BF16 first, as it would be stored:
//   swiglu       y (M x N/2, ldy >= N/2) = BF16(silu(G) * U), G = Y[:, :N/2] and U = Y[:, N/2:] (the
//                stacked gate/up projection, gate first): bit for bit transformer_ops' swiglu() of Y;
//   add_rmsnorm  x (M x N FP32, the residual stream, updated in place) += Y, then
//                y (M x N, ldy >= N) = BF16(w * x / rms(x)): transformer_ops' add_rmsnorm() of Y, x bit
//                for bit and y up to its sum of squares' order (a cluster of CTAs per row adds
//                their partial sums in rank order: still a function of the row alone).
enum class Fp4Epilogue : uint8_t { none, swiglu, add_rmsnorm };

struct Fp4GemmArgs {
  const void* a0 = nullptr;          // M x lda (FP16, or BF16 when adt == bf16), 16-byte aligned
  const void* a1 = nullptr;          // second path (SharQ exact) or null; same type and lda
  DType adt = DType::f16;
  int64_t M = 0, lda = 0;            // lda >= Kp, a multiple of 8; columns K..Kp-1 must be 0
  const float* row_scale = nullptr;  // device: 1 or M floats (g_x); null = 1
  int64_t row_scale_count = 0;
  __nv_bfloat16* y = nullptr;        // M x ldy, ldy >= N
  int64_t ldy = 0;
  float* y_f32 = nullptr;            // optional: FP32 output (M x ldy) written instead of y, so that
                                     // tests can check the FP32 result before the BF16 rounding
  const float* bias = nullptr;       // optional: N device floats, added in FP32 before the rounding
  Fp4Epilogue epilogue = Fp4Epilogue::none;  // with y (not y_f32); only where fp4_gemm_fuses()
  float* x = nullptr;                // add_rmsnorm: the FP32 residual rows (M x N, 16-byte aligned)
  const float* norm_w = nullptr;     // add_rmsnorm: N floats (16-byte aligned)
  float eps = 0.0f;                  // add_rmsnorm
};

inline constexpr int64_t kSmallMaxM = 64;

// automatic: small for M <= kSmallMaxM, prefill above. The others force a family (tests, tuning):
// small is legal for M <= kSmallMaxM only; prefill for any M.
enum class Fp4GemmKernel : uint8_t { automatic, small, prefill };
const char* to_string(Fp4GemmKernel k);

struct Fp4GemmPlan {
  Fp4GemmKernel kernel = Fp4GemmKernel::small;  // resolved: small | prefill
  int nt = 8;                                   // token tile
  int64_t splits = 1, kt_per_split = 0;         // split-K count (prefill: the cluster size) and k-tiles per split
  size_t workspace_bytes = 0;                   // small with splits > 1: FP32 partials [splits][M][Np]
};

// The plan of one call. The small family's split count comes from (N, K) and the card's SM count
// only; the prefill family's also from M (its token tiles), or 1 with batch_invariant. splits > 0
// forces a count in both families (tuning and tests; it wins over batch_invariant, and is
// M-independent too): small clamps it to Kp / 128, prefill takes the largest count <= min(splits, 8)
// that leaves no split empty and that the card can co-schedule. `paths`: 2 for the exact mode's two
// activation planes (its k-tiles cost twice as much, which moves the prefill split count).
// Throws std::invalid_argument for a forced family that cannot run M.
Fp4GemmPlan fp4_gemm_plan(int64_t M, const DeviceFp4Weights& w, Fp4GemmKernel kernel = Fp4GemmKernel::automatic,
                          int splits = 0, bool batch_invariant = false, int paths = 1);

// Whether fp4_gemm() runs epilogue e inside the reduction for this plan and N: the small family
// with splits > 1; swiglu with N % 8 == 0; add_rmsnorm with N % 4 == 0 and N <= kMaxFusedNormN.
inline constexpr int64_t kMaxFusedNormN = 32768;
bool fp4_gemm_fuses(const Fp4GemmPlan& plan, Fp4Epilogue e, int64_t N);

// The workspace every call with M <= max_M needs (the largest over the plans; 0 when none): size it
// once, at construction, and no call allocates.
size_t fp4_gemm_workspace_bytes(int64_t max_M, const DeviceFp4Weights& w, Fp4GemmKernel kernel = Fp4GemmKernel::automatic,
                                int splits = 0, bool batch_invariant = false);

// Clusters of `splits` prefill CTAs this card runs at once (splits 1: the SM count; 0 where such a
// cluster cannot run): the split planner's wave size, printed by `sharq bench gemm`.
int fp4_gemm_prefill_clusters_per_wave(int splits);

// The one entry point. Validates everything (shapes, pointers, alignment, workspace) and throws
// std::invalid_argument naming the field before any launch; then launches asynchronously on `stream`:
// no allocation, no host synchronization (CUDA-graph capturable).
void fp4_gemm(const Fp4GemmArgs& a, const DeviceFp4Weights& w, void* workspace, size_t workspace_bytes,
              cudaStream_t stream, Fp4GemmKernel kernel = Fp4GemmKernel::automatic, int splits = 0,
              bool batch_invariant = false);

}  // namespace sharq::cuda
