// The FP32 expression of every SwiGLU on the GPU: the separate kernel (transformer_ops), the fused
// down-projection prep (sharq_prep) and the split-K reduction's epilogue (fp4_gemm) must compute the
// same float before rounding it.
#pragma once

namespace sharq::cuda {

// silu(g) * u = g / (1 + e^-g) * u, with the hardware's exp2 and reciprocal (__expf, __fdividef). The
// FP32 result is within about 4 + 1.2 |g| ulp of the IEEE form's (CUDA's bounds for the two
// intrinsics): below 2^-16 relative for |g| < 80, far below the 16-bit rounding that follows. One
// range differs otherwise: for -88.7 < g < -87.3 (1 + e^-g between 2^126 and 2^128) the result is -0
// instead of about -1e-36 u (NaN where u is infinite). g = -inf and NaN give NaN, g = +inf gives
// u * inf, and g below -88.7 gives -0, as the IEEE form does.
// With the IEEE division and expf the 2048-row prefill's SwiGLU kernel ran at 75% of the SM's
// throughput and 65% of the DRAM rate (H200, docs/perf/engine.md, twelfth and thirteenth increments).
__device__ __forceinline__ float silu_mul(float g, float u) { return __fdividef(g, 1.0f + __expf(-g)) * u; }

}  // namespace sharq::cuda
