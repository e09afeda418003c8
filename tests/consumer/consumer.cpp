// Uses the *installed* sharq (find_package(sharq) or pkg-config): quantizes a weight matrix into a
// SharQ linear layer, runs it, and checks the result against the library's own reference operands
// (the dequantized S^ + R^ and W^ with their scales, summed in double). This file is the C++ snippet
// of the README's "Use it as a library" (a test checks that the README shows it verbatim).
#include <sharq/sharq.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

int main() {
  const int64_t M = 4, K = 256, N = 64;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> W(N * K), X(M * K);
  for (float& w : W) w = 0.05f * nd(rng);
  for (float& x : X) x = nd(rng);
  X[3] = 40.0f;  // an outlier: the SharQ backbone keeps it

  const auto layer = sharq::Linear::create(sharq::parse_scheme("sharq"), W.data(), N, K);
  std::vector<float> Y(M * N);
  layer->forward(X.data(), M, Y.data());

  // Reference: Y[m][n] = row_scale[m] * col_scale[n] * sum_k X^[m][k] * W^[n][k], in double.
  const sharq::LinearOperands op = layer->operands(X.data(), M);
  double err = 0, ref = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) s += double(op.x[m * K + k]) * double(op.w[n * K + k]);
      const double r = s * op.row_scale[m] * op.col_scale[n];
      err += (Y[m * N + n] - r) * (Y[m * N + n] - r);
      ref += r * r;
    }
  const double rel = std::sqrt(err / ref);
  std::printf("%s: %lld x %lld weights in %zu bytes, relative error vs reference %.2e\n", layer->scheme().name().c_str(),
              static_cast<long long>(N), static_cast<long long>(K), layer->weight_bytes(), rel);
  return rel <= 1e-5 ? 0 : 1;
}
