// Mixture-of-experts on the GPU: the router, the token permutation and the weighted combine, around
// the experts' GEMMs (runtime/cuda/engine.cu runs those through GpuLinear).
//
//   moe_route    per token: RMSNorm of the FP32 residual row (the CPU's expression, its sum of
//                squares in double), the FP32 router logits (blocks over tokens x experts), then model/moe_routing.h's rule: softmax
//                (exp of each logit minus the max, the normalizer summed in double), the top-k by
//                probability (ties: the lower expert first), the chosen weights renormalized in
//                rank order or kept. Outputs, per token, the k experts (most probable first) and
//                their weights.
//   moe_plan     the permutation: the rows of each expert contiguous, experts in index order, and
//                inside an expert its tokens in increasing order (the CPU runtime's order):
//                offsets[e] .. offsets[e + 1] are expert e's rows, src[p] the token of row p,
//                dst[m k + j] the row of token m's j-th choice. Deterministic (no atomics decide an
//                order). One block: a step has at most a few thousand (token, choice) pairs.
//   moe_combine  x[m] += w_j * y[dst[m k + j]] for the token's k choices in increasing expert
//                order, each product rounded to FP32 and then added (the CPU's arithmetic and order).
//
// Limits (checked, std::invalid_argument): 1 <= experts <= kMoeMaxExperts, 1 <= top_k <= min(experts,
// kMoeMaxTopK), hidden <= kMoeMaxHidden with hidden % 4 == 0. Every kernel is launched with PDL
// (launch.cuh) and asynchronously: no allocation, no host synchronization.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "sharq/kernels/cuda/sharq_prep.h"  // DType

namespace sharq::cuda {

inline constexpr int64_t kMoeMaxExperts = 256;
inline constexpr int64_t kMoeMaxTopK = 16;
inline constexpr int64_t kMoeMaxHidden = 8192;  // the router's shared memory: 4 rows of it

struct MoeRouteArgs {
  const float* x = nullptr;       // M x H FP32 residual rows (the MLP's input before its norm)
  const float* norm_w = nullptr;  // H: the MLP norm's weights
  double eps = 0.0;               // as the config states it (the CPU adds it in double)
  const float* router = nullptr;  // E x H FP32 (row-major, 16-byte aligned)
  int64_t M = 0, H = 0, E = 0, top_k = 0;
  bool renormalize = true;
  float* logits = nullptr;        // M x E: the router's logits (workspace; left holding them)
  int32_t* experts = nullptr;     // M x top_k
  float* weights = nullptr;       // M x top_k
};
void moe_route(const MoeRouteArgs& a, cudaStream_t stream);

// experts: n = M x top_k expert ids in [0, E). offsets: E + 1 ints; src and dst: n ints.
void moe_plan(const int32_t* experts, int64_t M, int64_t top_k, int64_t E, int32_t* offsets, int32_t* src, int32_t* dst,
              cudaStream_t stream);

// x: M x H FP32 (updated); y: the experts' output rows (M top_k x H of `t`, in moe_plan's row order).
void moe_combine(float* x, const void* y, DType t, const int32_t* experts, const float* weights, const int32_t* dst,
                 int64_t M, int64_t top_k, int64_t H, cudaStream_t stream);

}  // namespace sharq::cuda
