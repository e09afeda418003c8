#include "sharq/model/rope.h"

#include <cmath>

namespace sharq {

std::vector<float> rope_inv_freq(const ModelConfig& c) {
  const int64_t d = c.head_dim;
  std::vector<float> f(static_cast<size_t>(d / 2));
  for (int64_t j = 0; j < d / 2; ++j)
    f[j] = 1.0f / std::pow(static_cast<float>(c.rope_theta), static_cast<float>(2 * j) / static_cast<float>(d));
  if (c.rope_scaling.type == RopeScaling::Type::llama3) {
    const RopeScaling& s = c.rope_scaling;
    const double old_len = static_cast<double>(s.original_max_position_embeddings);
    const double low_wavelen = old_len / s.low_freq_factor, high_wavelen = old_len / s.high_freq_factor;
    for (auto& v : f) {
      const double wavelen = 2.0 * M_PI / v;
      if (wavelen > low_wavelen) {
        v = static_cast<float>(v / s.factor);
      } else if (wavelen >= high_wavelen) {  // medium band: interpolate
        const double smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        v = static_cast<float>((1.0 - smooth) * v / s.factor + smooth * v);
      }
    }
  }
  return f;
}

void apply_rope(float* v, int64_t d, const float* inv_freq, int64_t pos, bool interleaved) {
  for (int64_t j = 0; j < d / 2; ++j) {
    const float ang = static_cast<float>(pos) * inv_freq[j];
    const float c = std::cos(ang), s = std::sin(ang);
    const RopePair p = rope_pair(j, d, interleaved);
    const float x0 = v[p.a], x1 = v[p.b];
    v[p.a] = x0 * c - x1 * s;
    v[p.b] = x1 * c + x0 * s;
  }
}

}  // namespace sharq
