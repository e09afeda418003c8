// The one implementation of the small FP4 GEMM family's split-K sum and epilogue (fp4_partials.h),
// used by its reduction kernels (fp4_gemm.cu) and by kernels that take the partials instead of the
// reduced output (transformer_ops.cu: RoPE + the KV write).
#pragma once

#include <cuda_bf16.h>

#include "sharq/kernels/cuda/fp4_partials.h"

namespace sharq::cuda {

// The sums, in split order, of the W consecutive partials at Y[row][cols[c] .. cols[c] + W - 1]
// (W = 1, 2 or 4; cols[c] a multiple of W). The loads of 8 splits of every column are issued before
// their adds: a thread's whole sum costs a few load latencies, not one per split.
template <int W>
struct PartialVec {
  float v[W];
};
template <int W, int NC>
__device__ __forceinline__ void partial_sums(const Fp4Partials& p, int64_t row, const int64_t (&cols)[NC],
                                             PartialVec<W> (&s)[NC]) {
  static_assert(W == 1 || W == 2 || W == 4, "1, 2 or 4 floats per load");
  using V = PartialVec<W>;
  struct alignas(4 * W) A { float v[W]; };
  constexpr int kBatch = 8;
  const int64_t plane = p.M * p.Np;
  const float* base = p.ws + row * p.Np;
  const auto ld = [](const float* q) {
    const A a = *reinterpret_cast<const A*>(q);
    V r;
#pragma unroll
    for (int e = 0; e < W; ++e) r.v[e] = a.v[e];
    return r;
  };
#pragma unroll
  for (int c = 0; c < NC; ++c) s[c] = ld(base + cols[c]);
  for (int sp0 = 1; sp0 < p.splits; sp0 += kBatch) {
    V v[NC][kBatch];
#pragma unroll
    for (int k = 0; k < kBatch; ++k)
#pragma unroll
      for (int c = 0; c < NC; ++c)
        if (sp0 + k < p.splits) v[c][k] = ld(base + (sp0 + k) * plane + cols[c]);
#pragma unroll
    for (int k = 0; k < kBatch; ++k)
#pragma unroll
      for (int c = 0; c < NC; ++c)
        if (sp0 + k < p.splits)
#pragma unroll
          for (int e = 0; e < W; ++e) s[c].v[e] += v[c][k].v[e];
  }
}

// Y[m][col] in FP32, before its BF16 rounding, from the column's sum: sum * (rs * gw) (+ bias); 0
// for col >= N.
__device__ __forceinline__ float partial_value(const Fp4Partials& p, int64_t m, int64_t col, float sum) {
  if (col >= p.N) return 0.0f;
  const float rs = p.rs ? p.rs[p.rs_per_row ? m : 0] : 1.0f;
  float o = sum * (rs * p.gw[p.gw_per_col ? col : 0]);
  if (p.bias) o += p.bias[col];
  return o;
}

// Y[m][col .. col + W - 1] as stored (BF16), widened to FP32: what a kernel reading the reduced
// output would load.
template <int W>
__device__ __forceinline__ PartialVec<W> partial_bf16(const Fp4Partials& p, int64_t m, int64_t col) {
  const int64_t cols[1] = {col};
  PartialVec<W> s[1];
  partial_sums<W, 1>(p, m, cols, s);
#pragma unroll
  for (int e = 0; e < W; ++e) s[0].v[e] = __bfloat162float(__float2bfloat16_rn(partial_value(p, m, col + e, s[0].v[e])));
  return s[0];
}

}  // namespace sharq::cuda
