#include "sharq/kernels/cpu/gemm.h"

#include <algorithm>
#include <stdexcept>
#include <vector>

namespace sharq {
namespace {

// acc + a * b, the same instruction in every micro-kernel: one rounding (FMA) where the target has
// FMA, two elsewhere. Written out rather than left to the compiler's contraction, which may treat the
// tiles differently: GCC's AMD tunings (-march=native on Zen: avoid_fma_chains) split the FMAs of the
// latency-bound 1- and 2-row tiles into a multiply and an add while keeping them in the taller tiles,
// so a row's result depended on how many rows shared its step (a batch-1 decode against a batch).
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
__attribute__((always_inline)) inline float madd(float a, float b, float acc) { return __builtin_fmaf(a, b, acc); }
#else
__attribute__((always_inline)) inline float madd(float a, float b, float acc) { return acc + a * b; }  // no FMA instruction: never contracted
#endif

// MR x NR register tile, k-loop over a decoded panel. Written plainly so that GCC keeps acc in
// vector registers (MR * NR / lanes <= 12) and vectorizes the j-loop.
template <int MR>
void micro_kernel(const float* __restrict A, int64_t lda, const float* __restrict B, int kc, float* __restrict C) {
  float acc[MR][kGemmNR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kGemmNR; ++j) acc[i][j] = C[i * kGemmNR + j];
  for (int k = 0; k < kc; ++k) {
    const float* b = B + k * kGemmNR;
    for (int i = 0; i < MR; ++i) {
      const float a = A[i * lda + k];
      for (int j = 0; j < kGemmNR; ++j) acc[i][j] = madd(a, b[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kGemmNR; ++j) C[i * kGemmNR + j] = acc[i][j];
}

void micro_dispatch(int mr, const float* A, int64_t lda, const float* B, int kc, float* C) {
  switch (mr) {
    case 6: micro_kernel<6>(A, lda, B, kc, C); break;
    case 5: micro_kernel<5>(A, lda, B, kc, C); break;
    case 4: micro_kernel<4>(A, lda, B, kc, C); break;
    case 3: micro_kernel<3>(A, lda, B, kc, C); break;
    case 2: micro_kernel<2>(A, lda, B, kc, C); break;
    default: micro_kernel<1>(A, lda, B, kc, C); break;
  }
}
static_assert(kGemmMR == 6, "micro_dispatch covers MR <= 6");

}  // namespace

void WeightPanelSource::decode_panel(int64_t n0, int nr, int64_t k0, int kc, float* panel) const {
  alignas(64) float seg[kGemmKC];
  for (int j = 0; j < kGemmNR; ++j) {
    if (j < nr) {
      decode_segment(n0 + j, k0, kc, seg);
      for (int t = 0; t < kc; ++t) panel[t * kGemmNR + j] = seg[t];
    } else {
      for (int t = 0; t < kc; ++t) panel[t * kGemmNR + j] = 0.0f;
    }
  }
}

std::vector<float> WeightPanelSource::decode_all() const {
  const int64_t N = rows(), K = cols();
  std::vector<float> w(static_cast<size_t>(N * K));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k0 = 0; k0 < K; k0 += kGemmKC)
      decode_segment(n, k0, static_cast<int>(std::min<int64_t>(kGemmKC, K - k0)), w.data() + n * K + k0);
  return w;
}

void gemm_xwt(const float* A, int64_t M, int64_t K, const WeightPanelSource& W, const float* row_scale,
              const float* col_scale, const float* bias, float* Y) {
  const int64_t N = W.rows();
  if (W.cols() != K) throw std::invalid_argument("gemm_xwt: K of activations and weights differ");
  if (M == 0 || N == 0) return;
  const int64_t panels = (N + kGemmNR - 1) / kGemmNR;
  // Small products stay on the calling thread: waking the team costs more than it saves.
  const bool parallel = panels > 1 && M * N * K >= (int64_t{1} << 18);
#pragma omp parallel if (parallel)
  {
    alignas(64) float panel[kGemmKC * kGemmNR];
    std::vector<float> C(static_cast<size_t>(M * kGemmNR));
#pragma omp for schedule(dynamic, 1)
    for (int64_t p = 0; p < panels; ++p) {
      const int64_t n0 = p * kGemmNR;
      const int nr = static_cast<int>(std::min<int64_t>(kGemmNR, N - n0));
      std::fill(C.begin(), C.end(), 0.0f);
      for (int64_t k0 = 0; k0 < K; k0 += kGemmKC) {
        const int kc = static_cast<int>(std::min<int64_t>(kGemmKC, K - k0));
        W.decode_panel(n0, nr, k0, kc, panel);
        for (int64_t m0 = 0; m0 < M; m0 += kGemmMR) {
          const int mr = static_cast<int>(std::min<int64_t>(kGemmMR, M - m0));
          micro_dispatch(mr, A + m0 * K + k0, K, panel, kc, C.data() + m0 * kGemmNR);
        }
      }
      for (int64_t m = 0; m < M; ++m) {
        const float rs = row_scale ? row_scale[m] : 1.0f;
        for (int j = 0; j < nr; ++j) {
          const int64_t n = n0 + j;
          const float s = col_scale ? rs * col_scale[n] : rs;
          Y[m * N + n] = s * C[m * kGemmNR + j] + (bias ? bias[n] : 0.0f);
        }
      }
    }
  }
}

}  // namespace sharq
