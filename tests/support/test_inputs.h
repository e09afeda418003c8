// Shared inputs of the unit tests: a portable fixed-seed RNG and the outlier-heavy activation
// generator. The std distributions are not specified bit for bit across standard libraries, so
// the transforms are written out here.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace sharq_test {

// Portable random numbers from a fixed-seed std::mt19937_64.
class Rng {
 public:
  explicit Rng(uint64_t seed) : g_(seed) {}
  double uniform() { return (static_cast<double>(g_() >> 11) + 0.5) * 0x1p-53; }  // (0, 1)
  double normal() { return std::sqrt(-2.0 * std::log(uniform())) * std::cos(6.283185307179586 * uniform()); }
  double laplace() {
    const double u = uniform();
    return u < 0.5 ? std::log(2.0 * u) : -std::log(2.0 * (1.0 - u));
  }
  int64_t index(int64_t n) { return static_cast<int64_t>(g_() % static_cast<uint64_t>(n)); }

 private:
  std::mt19937_64 g_;
};

// Outlier-heavy activations, shaped like the input of an LLM linear layer: a heavy-tailed bulk
// (Laplace, scale 1, times a per-token magnitude in [0.5, 2]), `n_channels` fixed outlier channels
// scaled by 20..100x (channel outliers persist across tokens) and rare (1/256) spikes of 10..30x.
std::vector<float> outlier_heavy(int64_t M, int64_t K, uint64_t seed, int n_channels = 4) {
  Rng rng(seed);
  std::vector<double> chan(static_cast<size_t>(K), 1.0);
  for (int i = 0; i < n_channels && K > 0; ++i) chan[static_cast<size_t>(rng.index(K))] = 20.0 + 80.0 * rng.uniform();
  std::vector<float> x(static_cast<size_t>(M * K));
  for (int64_t m = 0; m < M; ++m) {
    const double tok = 0.5 + 1.5 * rng.uniform();
    for (int64_t k = 0; k < K; ++k) {
      double v = rng.laplace() * tok * chan[k];
      if (rng.index(256) == 0) v *= 10.0 + 20.0 * rng.uniform();
      x[m * K + k] = static_cast<float>(v);
    }
  }
  return x;
}

}  // namespace sharq_test
