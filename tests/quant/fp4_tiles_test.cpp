// The GPU weight layout holds exactly the QuantizedMatrix codes and scale bytes, permuted (and
// zero-padded along K), and its lane/word/nibble positions are the ones fp4_tiles.h documents.
#include "sharq/quant/fp4_tiles.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "../support/test_inputs.h"

namespace {

using namespace sharq;

std::vector<float> random_matrix(int64_t n, int64_t k, uint64_t seed) {
  sharq_test::Rng rng(seed);
  std::vector<float> w(static_cast<size_t>(n * k));
  for (auto& v : w) v = static_cast<float>(rng.normal() * (rng.index(64) == 0 ? 30.0 : 1.0));
  return w;
}

template <class F>
void check_roundtrip(int64_t N, int64_t K, uint64_t seed, const std::vector<float>* given = nullptr) {
  const auto W = given ? *given : random_matrix(N, K, seed);
  const auto q = quantize_matrix<F>(W.data(), N, K, F::kHasGlobal ? GlobalScale::per_tensor : GlobalScale::none);
  const Fp4Tiles t = pack_fp4_tiles(q);
  ASSERT_EQ(t.scale, (std::is_same_v<F, Mxfp4> ? Fp4Scale::ue8m0 : Fp4Scale::ue4m3));
  ASSERT_EQ(t.N, N);
  ASSERT_EQ(t.K, K);
  ASSERT_EQ(t.Kp % 128, 0);
  ASSERT_GE(t.Kp, K);
  ASSERT_LT(t.Kp - K, 128);
  ASSERT_EQ(t.block, F::kBlock);
  ASSERT_EQ(t.Np % 128, 0);
  ASSERT_GE(t.Np, N);
  ASSERT_LT(t.Np - N, 128);
  ASSERT_EQ(t.codes.size(), static_cast<size_t>(t.Np / 8 * t.Kp / 128 * 512));
  ASSERT_EQ(t.scales.size(), static_cast<size_t>(t.Np / 8 * t.Kp / 128 * 8 * (128 / F::kBlock)));
  ASSERT_EQ(t.g, q.g);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < t.Kp; ++k) {
      if (k < q.blocks_per_row * F::kBlock) {
        const auto& b = q.row(n)[k / F::kBlock];
        ASSERT_EQ(fp4_tiles_code(t, n, k), get_nibble(b.qs, static_cast<int>(k % F::kBlock))) << n << "," << k;
        ASSERT_EQ(fp4_tiles_scale(t, n, k), b.s.e) << n << "," << k;
      } else {  // padding
        ASSERT_EQ(fp4_tiles_code(t, n, k), 0) << n << "," << k;
        ASSERT_EQ(fp4_tiles_scale(t, n, k), 0) << n << "," << k;
      }
    }
  const auto deq = fp4_tiles_dequantize(t);
  const auto ref = dequantize_matrix(q, false);
  ASSERT_EQ(deq.size(), ref.size());
  EXPECT_EQ(std::memcmp(deq.data(), ref.data(), deq.size() * 4), 0);
}

// MXFP4-32 in the same layout: its UE8M0 scale bytes where NVFP4's UE4M3 bytes go, decoded as
// 2^(e - 127). Special blocks: all zero (scale byte 0), a NaN (the NaN scale 255), tiny values
// (a small nonzero scale byte: 2^-122) and huge ones (near 254).
TEST(Fp4Tiles, Mxfp4PayloadRoundTripsBitExactly) {
  check_roundtrip<Mxfp4>(16, 256, 6);
  check_roundtrip<Mxfp4>(24, 96, 7);     // K < 128: one padded tile
  check_roundtrip<Mxfp4>(8, 4160, 8);    // K = 32 * 130: a padded last tile
  std::vector<float> W = random_matrix(8, 256, 9);
  for (int k = 0; k < 32; ++k) {
    W[static_cast<size_t>(0 * 256 + k)] = 0.0f;                                      // row 0 block 0: zero
    W[static_cast<size_t>(2 * 256 + 64 + k)] = std::ldexp(1.0f + k / 32.0f, -120);   // row 2 block 2: tiny
    W[static_cast<size_t>(3 * 256 + 96 + k)] = std::ldexp(1.0f + k / 32.0f, 120);    // row 3 block 3: huge
  }
  W[1 * 256 + 40] = std::numeric_limits<float>::quiet_NaN();                         // row 1 block 1: NaN
  check_roundtrip<Mxfp4>(8, 256, 0, &W);
  const Fp4Tiles t = pack_fp4_tiles(quantize_matrix<Mxfp4>(W.data(), 8, 256, GlobalScale::none));
  EXPECT_EQ(fp4_tiles_scale(t, 0, 0), 0);
  EXPECT_EQ(fp4_tiles_scale(t, 1, 40), kUe8m0Nan);
  EXPECT_GT(fp4_tiles_scale(t, 2, 64), 0);
  EXPECT_LT(fp4_tiles_scale(t, 2, 64), 10);
  EXPECT_GT(fp4_tiles_scale(t, 3, 96), 240);
  EXPECT_TRUE(t.g.empty());
  auto with_g = quantize_matrix<Mxfp4>(W.data(), 8, 256, GlobalScale::none);
  with_g.g = {2.0f};  // hand-built: MXFP4 has no second level
  EXPECT_THROW(pack_fp4_tiles(with_g), std::invalid_argument);
}

TEST(Fp4Tiles, W32PayloadRoundTripsBitExactly) {
  check_roundtrip<Nvfp4_32>(16, 256, 1);
  check_roundtrip<Nvfp4_32>(24, 96, 2);    // K < 128: one padded tile
  check_roundtrip<Nvfp4_32>(8, 4160, 3);   // K = 32 * 130: a padded last tile
}

TEST(Fp4Tiles, W16PayloadRoundTripsBitExactly) {
  check_roundtrip<Nvfp4_16>(16, 384, 4);
  check_roundtrip<Nvfp4_16>(40, 80, 5);    // K not a multiple of 32
}

// The documented fragment order, checked on hand-placed codes: lane L = 4 r + q, word j, nibble p
// holds column 32 j + 8 p + 2 q and nibble p + 4 the next one.
TEST(Fp4Tiles, LaneWordNibbleOrderIsTheMmaFragmentOrder) {
  QuantizedMatrix<Nvfp4_32> q;
  q.rows = 8;
  q.cols = 128;
  q.blocks_per_row = 4;
  q.blocks.resize(32);
  q.g = {1.0f};
  for (int n = 0; n < 8; ++n)
    for (int k = 0; k < 128; ++k) set_nibble(q.blocks[n * 4 + k / 32].qs, k % 32, static_cast<uint8_t>((n * 128 + k) % 16));
  for (int b = 0; b < 32; ++b) q.blocks[b].s.e = static_cast<uint8_t>(b + 1);
  const Fp4Tiles t = pack_fp4_tiles(q);
  for (int lane = 0; lane < 32; ++lane)
    for (int j = 0; j < 4; ++j) {
      uint32_t word;
      std::memcpy(&word, &t.codes[lane * 16 + j * 4], 4);
      const int r = lane / 4, qq = lane % 4;
      for (int p = 0; p < 4; ++p) {
        const int col = 32 * j + 8 * p + 2 * qq;
        EXPECT_EQ((word >> (4 * p)) & 0xF, static_cast<uint32_t>((r * 128 + col) % 16));
        EXPECT_EQ((word >> (4 * p + 16)) & 0xF, static_cast<uint32_t>((r * 128 + col + 1) % 16));
      }
      EXPECT_EQ(t.scales[r * 4 + j], r * 4 + j + 1);
    }
}

TEST(Fp4Tiles, AnyRowCountIsPaddedWithZeroRows) {
  for (const int64_t N : {1, 12, 127, 129}) {
    const auto W = random_matrix(N, 200, 6 + N);
    const auto q = quantize_matrix<Nvfp4_32>(W.data(), N, 200, GlobalScale::per_tensor);
    const Fp4Tiles t = pack_fp4_tiles(q);
    ASSERT_EQ(t.Np, (N + 127) / 128 * 128) << N;
    for (int64_t n = N; n < t.Np; ++n)
      for (int64_t k = 0; k < t.Kp; k += 7) {
        ASSERT_EQ(fp4_tiles_code(t, n, k), 0) << n << "," << k;
        ASSERT_EQ(fp4_tiles_scale(t, n, k), 0) << n << "," << k;
      }
    // the real rows are all there
    const std::vector<float> d = fp4_tiles_dequantize(t);
    ASSERT_EQ(d.size(), static_cast<size_t>(N * 200));
    EXPECT_TRUE(std::any_of(d.begin(), d.end(), [](float v) { return v != 0.0f; }));
  }
  const QuantizedMatrix<Nvfp4_32> empty = quantize_matrix<Nvfp4_32>(nullptr, 0, 64, GlobalScale::per_tensor);
  EXPECT_THROW(pack_fp4_tiles(empty), std::invalid_argument);
}

}  // namespace
