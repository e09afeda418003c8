// The FP4 small GEMM family's split-K partials as a consumer kernel reads them (fp4_gemm with
// Fp4Epilogue::defer): the reduction is left to the next kernel, which sums a value where it needs
// it with fp4_partials.cuh, bit for bit what the reduction would have stored.
#pragma once

#include <cstdint>

namespace sharq::cuda {

// Y[m][n] = BF16((sum over s < splits, in split order, of ws[s][m][n]) * rs[m or 0] * gw[n or 0]
//                (+ bias[n])), for m < M, n < N; the planes are M x Np floats (Np % 4 == 0), 16-byte aligned.
struct Fp4Partials {
  const float* ws = nullptr;
  int64_t M = 0, N = 0, Np = 0;
  int splits = 0;
  const float* gw = nullptr;  // 1 or N floats (gw_per_col)
  int gw_per_col = 0;
  const float* rs = nullptr;  // null (1), or 1 or M floats (rs_per_row)
  int rs_per_row = 0;
  const float* bias = nullptr;  // null or N floats
};

}  // namespace sharq::cuda
