// The CPU GEMM core (kernels/cpu/gemm.h) on seeded FP32 inputs: against an FP64 reference with a
// bound from the arithmetic, and row for row bit-identical whatever the number of rows M (the
// batch-invariance rule: every micro-tile height, 1 to 6 rows, must do the same arithmetic), with
// and without the row / column scales and the bias, with N not a multiple of the panel width and K
// not a multiple of the panel depth.
#include "sharq/kernels/cpu/gemm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "../../support/test_inputs.h"

namespace {

using sharq::WeightPanelSource;
using sharq_test::Rng;

// A plain FP32 N x K matrix as the panel source.
class DenseSource : public WeightPanelSource {
 public:
  DenseSource(int64_t N, int64_t K, std::vector<float> w) : N_(N), K_(K), w_(std::move(w)) {}
  int64_t rows() const override { return N_; }
  int64_t cols() const override { return K_; }
  void decode_segment(int64_t n, int64_t k0, int kc, float* out) const override {
    std::memcpy(out, w_.data() + n * K_ + k0, static_cast<size_t>(kc) * sizeof(float));
  }
  size_t bytes() const override { return w_.size() * sizeof(float); }
  const std::vector<float>& w() const { return w_; }

 private:
  int64_t N_, K_;
  std::vector<float> w_;
};

std::vector<float> normal(Rng& rng, size_t n, double sigma = 1.0) {
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(sigma * rng.normal());
  return v;
}

TEST(CpuGemm, MatchesAnFp64ReferenceWithinTheFp32Bound) {
  Rng rng(2026);
  for (auto [M, N, K] : {std::tuple{7, 45, 300}, std::tuple{1, 16, 256}, std::tuple{13, 70, 513}}) {
    SCOPED_TRACE("M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K));
    const DenseSource W(N, K, normal(rng, static_cast<size_t>(N * K)));
    const std::vector<float> A = normal(rng, static_cast<size_t>(M * K));
    const std::vector<float> rs = normal(rng, static_cast<size_t>(M)), cs = normal(rng, static_cast<size_t>(N)),
                             bias = normal(rng, static_cast<size_t>(N));
    std::vector<float> Y(static_cast<size_t>(M * N), NAN);
    sharq::gemm_xwt(A.data(), M, K, W, rs.data(), cs.data(), bias.data(), Y.data());
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double dot = 0.0, mag = 0.0;
        for (int64_t k = 0; k < K; ++k) {
          const double p = static_cast<double>(A[m * K + k]) * W.w()[n * K + k];
          dot += p;
          mag += std::fabs(p);
        }
        const double s = static_cast<double>(rs[m]) * cs[n];
        const double ref = s * dot + bias[n];
        // the running sum's FP32 roundings, at most (K + 1) 2^-24 mag with or without FMA (K adds,
        // each <= 2^-24 of a partial sum <= mag; without FMA the products' roundings add <= 2^-24
        // mag in all), and the three of rs * cs, s * C and + bias
        const double bound = std::fabs(s) * (K + 2) * 0x1p-24 * mag + 0x1p-22 * (std::fabs(ref) + std::fabs(bias[n]));
        ASSERT_LE(std::fabs(Y[m * N + n] - ref), bound) << "m " << m << " n " << n;
      }
  }
}

TEST(CpuGemm, ARowsResultDoesNotDependOnHowManyRowsShareTheCall) {
  Rng rng(77);
  const int64_t N = 50, K = 700, Mmax = 13;  // N: 3 panels of 16 + 2 (AVX-512: 1 of 32 + 18); K: 2 panels + 188
  const DenseSource W(N, K, normal(rng, static_cast<size_t>(N * K)));
  const std::vector<float> A = normal(rng, static_cast<size_t>(Mmax * K), 3.0);
  const std::vector<float> rs = normal(rng, static_cast<size_t>(Mmax)), cs = normal(rng, static_cast<size_t>(N)),
                           bias = normal(rng, static_cast<size_t>(N));
  for (bool scaled : {false, true}) {
    // every row alone (M = 1: the 1-row tile) is the reference
    std::vector<float> alone(static_cast<size_t>(Mmax * N));
    for (int64_t m = 0; m < Mmax; ++m)
      sharq::gemm_xwt(A.data() + m * K, 1, K, W, scaled ? rs.data() + m : nullptr, scaled ? cs.data() : nullptr,
                      scaled ? bias.data() : nullptr, alone.data() + m * N);
    for (int64_t M = 2; M <= Mmax; ++M) {  // tiles of 6 rows and every remainder height
      std::vector<float> Y(static_cast<size_t>(M * N));
      sharq::gemm_xwt(A.data(), M, K, W, scaled ? rs.data() : nullptr, scaled ? cs.data() : nullptr,
                      scaled ? bias.data() : nullptr, Y.data());
      for (int64_t i = 0; i < M * N; ++i)
        ASSERT_EQ(std::memcmp(&Y[static_cast<size_t>(i)], &alone[static_cast<size_t>(i)], sizeof(float)), 0)
            << "M " << M << (scaled ? " (scaled)" : "") << ": row " << i / N << " column " << i % N << ": " << Y[static_cast<size_t>(i)]
            << " vs " << alone[static_cast<size_t>(i)] << " alone";
    }
  }
}

}  // namespace
