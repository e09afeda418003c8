#include "sharq/runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace sharq {
// xorshift64*: a tiny, fully specified generator, so that a seed gives the same text everywhere.
float sampler_next_uniform(uint64_t& s) {
  s ^= s >> 12;
  s ^= s << 25;
  s ^= s >> 27;
  return static_cast<float>((s * 0x2545F4914F6CDD1Dull) >> 40) / 16777216.0f;  // [0, 1)
}

float token_logprob(const float* logits, int64_t vocab, int32_t tok) {
  const float mx = *std::max_element(logits, logits + vocab);
  double z = 0.0;
  for (int64_t i = 0; i < vocab; ++i) z += std::exp(static_cast<double>(logits[i] - mx));
  return static_cast<float>(static_cast<double>(logits[tok] - mx) - std::log(z));
}

uint64_t sampler_state(uint64_t seed) { return seed ? seed : 0x9E3779B97F4A7C15ull; }

int32_t sample_token(const float* logits, int64_t vocab, float temperature, float top_p, uint64_t& rng) {
  if (temperature <= 0.0f) {
    int64_t best = 0;
    for (int64_t i = 1; i < vocab; ++i)
      if (logits[i] > logits[best]) best = i;
    return static_cast<int32_t>(best);
  }
  std::vector<double> p(static_cast<size_t>(vocab));
  const float mx = *std::max_element(logits, logits + vocab);
  double sum = 0.0;
  for (int64_t i = 0; i < vocab; ++i) sum += p[i] = std::exp((logits[i] - mx) / temperature);
  for (auto& v : p) v /= sum;
  std::vector<int32_t> idx(static_cast<size_t>(vocab));
  std::iota(idx.begin(), idx.end(), 0);
  int64_t n = vocab;
  if (top_p < 1.0f) {  // smallest set of most likely tokens whose mass reaches top_p (top_p <= 0: the most likely)
    std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
    double cum = 0.0;
    for (n = 0; n < vocab;) {
      cum += p[idx[n++]];
      if (cum >= top_p) break;
    }
  }
  double mass = 0.0;
  for (int64_t i = 0; i < n; ++i) mass += p[idx[i]];
  const double r = static_cast<double>(sampler_next_uniform(rng)) * mass;
  double cdf = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    cdf += p[idx[i]];
    if (r < cdf) return idx[i];
  }
  return idx[n - 1];
}

}  // namespace sharq
