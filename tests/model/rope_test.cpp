// RoPE as model/ states it for every executor: HF's FP32 inverse frequencies, llama3 scaling
// against an independent FP64 transcription of its definition, and the two pairings.
#include "sharq/model/rope.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace {

using namespace sharq;

TEST(Rope, InverseFrequenciesAreThetaPowers) {
  ModelConfig c;
  c.head_dim = 8;
  c.rope_theta = 10000.0;
  const std::vector<float> f = rope_inv_freq(c);
  ASSERT_EQ(f.size(), 4u);
  for (int j = 0; j < 4; ++j) EXPECT_NEAR(f[j], std::pow(10000.0, -2.0 * j / 8.0), 1e-7 * std::pow(10000.0, -2.0 * j / 8.0)) << j;
  EXPECT_EQ(f[0], 1.0f);
}

TEST(Rope, Llama3ScalingDividesLongWavelengthsAndInterpolatesTheBand) {
  ModelConfig c;
  c.head_dim = 128;
  c.rope_theta = 500000.0;
  c.rope_scaling = {RopeScaling::Type::llama3, 8.0, 1.0, 4.0, 8192};
  ModelConfig plain = c;
  plain.rope_scaling = {};
  const std::vector<float> f = rope_inv_freq(c), base = rope_inv_freq(plain);
  int low = 0, mid = 0, high = 0;
  for (size_t j = 0; j < f.size(); ++j) {
    const double w = 2.0 * M_PI / base[j];
    double want = base[j];
    if (w > 8192.0) {  // wavelength beyond original_max / low_freq_factor: divided by factor
      want = base[j] / 8.0;
      ++low;
    } else if (w >= 8192.0 / 4.0) {  // between the two: smooth interpolation
      const double s = (8192.0 / w - 1.0) / (4.0 - 1.0);
      want = (1 - s) * base[j] / 8.0 + s * base[j];
      ++mid;
    } else {
      ++high;
    }
    EXPECT_NEAR(f[j], want, 1e-6 * want) << j;
  }
  EXPECT_GT(low, 0);  // every band is exercised
  EXPECT_GT(mid, 0);
  EXPECT_GT(high, 0);
}

TEST(Rope, PairingIsInterleavedForLlama2cAndHalvesForHf) {
  EXPECT_EQ(rope_pair(1, 8, true).a, 2);
  EXPECT_EQ(rope_pair(1, 8, true).b, 3);
  EXPECT_EQ(rope_pair(1, 8, false).a, 1);
  EXPECT_EQ(rope_pair(1, 8, false).b, 5);
  // a quarter turn of frequency 0 moves (x, y) to (-y, x) on its pair and leaves the others alone
  const float inv[2] = {static_cast<float>(M_PI / 2), 0.0f};
  for (bool interleaved : {true, false}) {
    std::vector<float> v = {1, 2, 3, 4};
    apply_rope(v.data(), 4, inv, 1, interleaved);
    const RopePair p = rope_pair(0, 4, interleaved);
    const std::vector<float> orig = {1, 2, 3, 4};
    EXPECT_NEAR(v[p.a], -orig[p.b], 1e-6) << interleaved;
    EXPECT_NEAR(v[p.b], orig[p.a], 1e-6) << interleaved;
    const RopePair q = rope_pair(1, 4, interleaved);  // frequency 0.0: unchanged
    EXPECT_EQ(v[q.a], orig[q.a]);
    EXPECT_EQ(v[q.b], orig[q.b]);
  }
}

}  // namespace
