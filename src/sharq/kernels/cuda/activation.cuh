// The FP32 expression of every SwiGLU on the GPU: the separate kernel (transformer_ops), the fused
// down-projection prep (sharq_prep) and the split-K reduction's epilogue (fp4_gemm) must compute the
// same float before rounding it.
#pragma once

namespace sharq::cuda {

// silu(g) * u = g / (1 + e^-g) * u, with the hardware's exp2 and reciprocal (__expf, __fdividef: a few
// ulp of FP32, far below the 16-bit rounding that follows; g -> -inf gives -0 as the exact form does).
// With the IEEE division and expf the 2048-row prefill's SwiGLU kernel ran at 75% of the SM's
// throughput and 65% of the DRAM rate (H200, docs/perf/engine.md, twelfth and thirteenth increments).
__device__ __forceinline__ float silu_mul(float g, float u) { return __fdividef(g, 1.0f + __expf(-g)) * u; }

}  // namespace sharq::cuda
