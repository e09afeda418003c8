// The FP32 expression of every SwiGLU on the GPU: the separate kernel (transformer_ops) and the
// fused down-projection prep (sharq_prep) must compute the same float before rounding it.
#pragma once

namespace sharq::cuda {

// silu(g) * u = g / (1 + e^-g) * u
__device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.0f + expf(-g)) * u; }

}  // namespace sharq::cuda
