// The 16-bit-weight GEMV for decode-sized M on Hopper: the one entry point of the family.
//
//   Y (M x N) = X W^T,  W: N x K FP16 / BF16, row-major (the fp16 and bf16 schemes' weights, the same
//   bytes cuBLASLt reads for larger M), X: M x K of the same type, M <= kGemv16MaxM.
//
// Why it exists: at M = 1 a decode step streams every weight once, and cuBLASLt's GEMV runs each
// linear as its own kernel with a fixed start-up cost (about 4 us on the H200 for q/k/v and o, whose
// weights alone would stream in 12 and 8 us) and the norms and SwiGLU between them as further
// kernels. This kernel streams W on the CUDA cores (FP32 FMA; 2 FLOP per 2-byte weight at M = 1 is
// far below the SM's rate) and:
//   - loads its first weight chunks before the PDL wait (launch.cuh), so that its start overlaps the
//     preceding kernel's tail;
//   - computes its input itself (Gemv16Input), so that the RMSNorm in front of q/k/v and gate/up and
//     the SwiGLU in front of down need no kernel of their own:
//       plain    X as given;
//       rmsnorm  X = T(w * (x * r)), r = 1 / sqrt(mean(x^2) + eps), x the FP32 residual rows: the
//                expression of transformer_ops' RMSNorm (its sum of squares in this kernel's order:
//                the last bits may differ from the separate kernel's, the row's bits depend on the
//                row alone);
//       swiglu   X = T(silu(g) * u) from the fused gate/up output (gate first): bit for bit
//                transformer_ops' swiglu();
//   - writes its output as the layer needs it (Gemv16Output): T(acc) (+ bias after that rounding,
//     rounded again: the cuBLASLt path's order), or acc added to FP32 rows (the residual add of o and
//     down, cuBLASLt's beta = 1 with FP32 C).
//
// Numerics: each output element is one warp's FP32 sum, in an order fixed by K alone (each lane
// accumulates its 16-byte chunks in k order with one FMA per product, then a butterfly over the
// lanes): a row's result does not depend on M or the other rows (batch invariance for M <= 4;
// cuBLASLt, which serves larger M, may differ in the last bits).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "sharq/kernels/cuda/sharq_prep.h"  // DType

namespace sharq::cuda {

inline constexpr int64_t kGemv16MaxM = 4;
inline constexpr int64_t kGemv16MaxMK = 98304;  // X's M rows live in shared memory: M x K x 2 bytes <= 192 KiB

enum class Gemv16Input : uint8_t { plain, rmsnorm, swiglu };
enum class Gemv16Output : uint8_t { store, accumulate };

struct Gemv16Args {
  DType t = DType::f16;           // weights, X and a stored Y
  const void* w = nullptr;        // N x K, row-major, 16-byte aligned
  int64_t N = 0, K = 0;           // K % 8 == 0
  int64_t M = 0;                  // 1 .. kGemv16MaxM (0: nothing to do)
  Gemv16Input input = Gemv16Input::plain;
  const void* x = nullptr;        // plain: M x ldx of t (ldx >= K); swiglu: M x ldx (ldx >= 2K), gate in
  int64_t ldx = 0;                //   columns 0 .. K - 1, up in K .. 2K - 1; 16-byte aligned, ldx % 8 == 0
  const float* xr = nullptr;      // rmsnorm: the FP32 residual rows, M x K (16-byte aligned)
  const float* norm_w = nullptr;  // rmsnorm: K floats (16-byte aligned)
  float eps = 0.0f;
  Gemv16Output output = Gemv16Output::store;
  void* y = nullptr;              // store: M x ldy of t; accumulate: M x ldy FP32, y += X W^T (ldy >= N);
                                  //   must not overlap the input (x or xr)
  int64_t ldy = 0;
  const float* bias = nullptr;    // store only: N floats, added after the 16-bit rounding, rounded again
};

// Whether gemv16() takes this shape (M 1 .. kGemv16MaxM, K % 8 == 0, M K <= kGemv16MaxMK, N >= 1);
// pointers and strides are checked by gemv16() itself.
bool gemv16_supports(int64_t M, int64_t N, int64_t K);

// Validates everything (throws std::invalid_argument naming the field) before launching
// asynchronously on `stream` with PDL: no allocation, no host synchronization (graph-capturable).
void gemv16(const Gemv16Args& a, cudaStream_t stream);

}  // namespace sharq::cuda
