// The fused SharQ activation prep on the GPU (one kernel per row block; a second small pass only
// for the per-tensor scale):
//
//   X (BF16/FP16, M x K) -> [RMSNorm(weight, eps) | SwiGLU of a gate/up pair] -> g_x (per tensor | per token) -> mask
//   (pair-4:8 | scalar 2:4) -> backbone quantization -> residual against the quantized backbone
//   -> residual quantization
//
// It runs the same SHARQ_HD sharq_prepare_span() as the CPU reference, so the packed codes, scales
// and metadata are bit-identical to sharq_prepare() on the (normalized) input (tested on random and
// outlier-heavy inputs, M = 1, K not a multiple of 128).
//
// Outputs (any may be null = not written):
//  - the canonical packed blocks, in the SharqActivations layout (rows x spans);
//  - g_x (NVFP4): 1 float (per tensor) or M floats (per token);
//  - the operands the Hopper GEMMs consume (there are no FP4 tensor cores on sm_90): FP16 planes
//    of S^ and R^ in the scaled domain (exact: every E2M1 x UE4M3 product is an FP16 number) for
//    the exact mode, or the single plane fp16(S^ + R^) for the merged mode. Planes are M x ld,
//    ld >= round_up(K, 128), zero-padded past K.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "sharq/decompose/sharq_decompose.h"

namespace sharq::cuda {

enum class DType : uint8_t { f16, bf16 };

// What the prep reads as its input row.
enum class PrepInput : uint8_t {
  plain,    // x: M x K
  rmsnorm,  // x: M x K, RMSNorm'ed with rms_weight (K values of the input type) in front
  swiglu,   // x: M x 2K, gate then up (the fused gate/up projection's output); the input is
            // T(silu(gate) * up) with transformer_ops' swiglu() expression and rounding, so the
            // fused prep is bit-identical to swiglu() followed by the plain prep
  residual_rmsnorm,  // x: the FP32 residual stream (M x K floats); the row is r = x + float(add)
                     // (add: the previous projection's output, M x K of the input type, or null);
                     // the input is T(w * (r * inv)), w = rms_weight (K floats), inv from r in the
                     // RMSNorm's documented order; r is written to PrepOut::sum (M x K floats, not x
                     // itself: other blocks of the row read x) for the next layer
};

struct PrepSpec {
  SharqFormat fmt = SharqFormat::nvfp4;          // nvfp4 | mxfp4 (hif4: rejected)
  MaskKind mask = MaskKind::pair48;              // pair48 | scalar24
  PairScore score = PairScore::max;
  GlobalScale act_scale = GlobalScale::per_row;  // NVFP4: per_tensor | per_row; ignored for MXFP4
  PrepInput input = PrepInput::plain;            // the row's front end (RMSNorm: weight given to the call)
  const void* add = nullptr;                     // residual_rmsnorm: added to the residual row (or null)
  float eps = 1e-6f;
};

struct PrepOut {
  void* backbone = nullptr;    // M * ceil(K/32) backbone blocks (backbone_block_t<V, Group>)
  void* residual = nullptr;    // M * ceil(K/32) * (32 / Bres) residual blocks
  float* g = nullptr;          // NVFP4 only: 1 (per tensor) or M floats
  __half* s_plane = nullptr;   // M x ld: S^ (scaled domain)
  __half* r_plane = nullptr;   // M x ld: R^
  __half* x_plane = nullptr;   // M x ld: fp16(S^ + R^), merged mode
  int64_t ld = 0;              // 0: round_up(K, 128)
  float* sum = nullptr;        // residual_rmsnorm: x + add, M x K floats (null: not written)
};

// Largest K the prep accepts (a sanity bound on one row).
constexpr int64_t kPrepMaxK = int64_t{1} << 20;

// Runs the prep on `stream`. x: M x K device array of `xt` (M x 2K for PrepInput::swiglu; M x K
// floats for PrepInput::residual_rmsnorm, where `xt` is the type of spec.add and of the rounding);
// rms_weight: K values of `xt` for PrepInput::rmsnorm, K floats for residual_rmsnorm. scratch: 1
// device word, needed for per-tensor NVFP4 (else may be null).
// Throws std::invalid_argument for unsupported shapes/options before any launch.
void sharq_prep(const void* x, DType xt, int64_t M, int64_t K, const void* rms_weight, const PrepSpec& spec,
                const PrepOut& out, uint32_t* scratch, cudaStream_t stream);

// The NVFP4 W4A4 baseline's activation quantization (NVFP4-16 blocks + g_x) with the same front
// end (PrepInput, per-tensor/per-token g_x), writing the blocks and/or the exact FP16 plane of X^.
void nvfp4_prep(const void* x, DType xt, int64_t M, int64_t K, const void* rms_weight, GlobalScale act_scale,
                PrepInput input, float eps, block_nvfp4_16* blocks, float* g, __half* x_plane, int64_t ld,
                uint32_t* scratch, cudaStream_t stream, const void* add = nullptr, float* sum = nullptr);

// Host reference of the fused RMSNorm, in the kernel's operation order (bit-identical):
// ss = 32 lane-strided partial sums of x*x, reduced by an xor butterfly (16, 8, 4, 2, 1);
// inv = 1 / sqrtf(ss / K + eps); y = (x * inv) * w.
void rmsnorm_reference(const float* x, int64_t M, int64_t K, const float* w, float eps, float* y);

}  // namespace sharq::cuda
