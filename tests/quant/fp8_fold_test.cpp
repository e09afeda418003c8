// mxfp4_fold_tile (quant/fp8_fold.h): MXFP4 tiles as E4M3 values times one power-of-two tile scale.
// The reference is independent arithmetic: each element's real value E2M1(c) * 2^(e - 127) in
// double (std::ldexp), its would-be E4M3 value real / 2^t, and exactness decided by whether that
// value survives an E4M3 round trip, never by the rule the implementation uses.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "sharq/formats/minifloat.h"
#include "sharq/quant/block_quant.h"
#include "sharq/quant/fp8_fold.h"

namespace {

using sharq::Mxfp4;

double real_value(const Mxfp4::block_t& b, int k) {
  return static_cast<double>(sharq::e2m1_decode(sharq::get_nibble(b.qs, k))) * std::ldexp(1.0, static_cast<int>(b.s.e) - 127);
}

// One block with the given scale code and random codes (every code appears over the tests).
Mxfp4::block_t random_block(uint8_t e, std::mt19937& rng) {
  Mxfp4::block_t b{};
  b.s.e = e;
  for (int k = 0; k < 32; ++k) sharq::set_nibble(b.qs, k, static_cast<uint8_t>(rng() & 0xF));
  return b;
}

// Checks one folded tile against the independent reference; returns the number of inexact elements.
int check_tile(const std::vector<Mxfp4::block_t>& b, const sharq::Mxfp4Fold& f, const std::vector<uint8_t>& codes) {
  int inexact = 0, nonzero = 0;
  for (size_t j = 0; j < b.size(); ++j)
    for (int k = 0; k < 32; ++k) {
      const uint8_t out = codes[j * 32 + k];
      const uint8_t c = sharq::get_nibble(b[j].qs, k);
      if (b[j].s.e == sharq::kUe8m0Nan) {
        EXPECT_EQ(out, 0x7F);
        continue;
      }
      const double real = real_value(b[j], k);
      if ((c & 7) == 0) {
        EXPECT_EQ(out, (c & 8) ? 0x80 : 0x00) << "block " << j << " k " << k;
        continue;
      }
      ++nonzero;
      const double want = real * std::ldexp(1.0, -f.t);  // the E4M3 value the tile needs
      EXPECT_LE(std::fabs(want), 448.0) << "a tile value overflows E4M3";
      // exact iff the double value is an E4M3 value (encode of a float that holds it exactly)
      const bool exact = static_cast<double>(sharq::e4m3_decode(sharq::e4m3_encode(static_cast<float>(want)))) == want &&
                         static_cast<double>(static_cast<float>(want)) == want;
      if (exact) {
        EXPECT_EQ(static_cast<double>(sharq::e4m3_decode(out)), want) << "block " << j << " k " << k;
        // bit for bit the MXFP4 value
        EXPECT_EQ(sharq::f32_bits(sharq::mxfp4_unfold(out, f.t)),
                  sharq::f32_bits(sharq::e2m1_decode(c) * sharq::ue8m0_decode(b[j].s.e)));
      } else {
        ++inexact;
        // rounded to the nearest E4M3 value (ties to even): nothing closer exists
        const double got = sharq::e4m3_decode(out);
        for (int m = 0; m < 0x7F; ++m) {
          const double v = sharq::e4m3_decode(static_cast<uint8_t>(m | (out & 0x80)));
          EXPECT_LE(std::fabs(got - want), std::fabs(v - want)) << "block " << j << " k " << k;
        }
      }
    }
  EXPECT_EQ(f.nonzero, nonzero);
  EXPECT_EQ(f.inexact, inexact);
  return inexact;
}

TEST(Mxfp4Fold, ExactIffEveryBlockWithinTwoToTheFourteenOfTheLargest) {
  std::mt19937 rng(7);
  int tiles_inexact = 0;
  // the largest block's code, and every offset of a second block from +0 down to -20
  for (int e_max : {1, 20, 127, 200, 254})
    for (int off = 0; off <= 20; ++off) {
      if (e_max - off < 0) continue;
      std::vector<Mxfp4::block_t> b = {random_block(static_cast<uint8_t>(e_max), rng),
                                       random_block(static_cast<uint8_t>(e_max - off), rng),
                                       random_block(static_cast<uint8_t>(e_max), rng), Mxfp4::block_t{}};
      sharq::set_nibble(b[0].qs, 0, 7);  // the largest block holds a nonzero element
      std::vector<uint8_t> codes(128);
      const sharq::Mxfp4Fold f = sharq::mxfp4_fold_tile(b.data(), 4, codes.data());
      EXPECT_EQ(f.t, e_max - 127 - 6);
      EXPECT_FALSE(f.nan);
      const int inexact = check_tile(b, f, codes);
      // offsets up to 14 (d >= -8) are exact for every code
      if (off <= 14) {
        EXPECT_EQ(inexact, 0) << "e_max " << e_max << " offset " << off;
      }
      tiles_inexact += inexact > 0;
    }
  EXPECT_GT(tiles_inexact, 10);  // the deep offsets did produce inexact tiles (the check can fail)
}

TEST(Mxfp4Fold, EveryCodeAtEveryOffset) {
  // a block holding every code twice, at scale e_max - off, beside a block at e_max
  for (int off = 0; off <= 24; ++off) {
    std::vector<Mxfp4::block_t> b(2);
    b[0].s.e = 150;
    sharq::set_nibble(b[0].qs, 0, 1);  // 0.5: the largest block's nonzero element
    b[1].s.e = static_cast<uint8_t>(150 - off);
    for (int k = 0; k < 32; ++k) sharq::set_nibble(b[1].qs, k, static_cast<uint8_t>(k & 0xF));
    std::vector<uint8_t> codes(64);
    const sharq::Mxfp4Fold f = sharq::mxfp4_fold_tile(b.data(), 2, codes.data());
    check_tile(b, f, codes);
  }
}

TEST(Mxfp4Fold, ZeroNanAndTailTiles) {
  std::mt19937 rng(11);
  {
    std::vector<Mxfp4::block_t> b(4);  // all zero (scale code 0, codes 0), one -0
    sharq::set_nibble(b[2].qs, 5, 8);
    std::vector<uint8_t> codes(128, 0x55);
    const sharq::Mxfp4Fold f = sharq::mxfp4_fold_tile(b.data(), 4, codes.data());
    EXPECT_EQ(f.t, -127);
    EXPECT_EQ(f.nonzero, 0);
    EXPECT_EQ(f.inexact, 0);
    for (int k = 0; k < 128; ++k) EXPECT_EQ(codes[k], k == 64 + 5 ? 0x80 : 0x00);
  }
  {
    std::vector<Mxfp4::block_t> b = {random_block(130, rng), random_block(sharq::kUe8m0Nan, rng), random_block(125, rng)};
    std::vector<uint8_t> codes(96);
    const sharq::Mxfp4Fold f = sharq::mxfp4_fold_tile(b.data(), 3, codes.data());  // a row's 3-block tail
    EXPECT_TRUE(f.nan);
    check_tile(b, f, codes);
  }
  {
    std::vector<Mxfp4::block_t> b = {random_block(90, rng)};
    std::vector<uint8_t> codes(32);
    const sharq::Mxfp4Fold f = sharq::mxfp4_fold_tile(b.data(), 1, codes.data());
    check_tile(b, f, codes);
    EXPECT_EQ(f.inexact, 0);
  }
}

// A block of zero codes sets no scale, however large its own scale code: the tile's base comes from
// the blocks that hold a nonzero element (else a zero block 2^20 above would flush them all).
TEST(Mxfp4Fold, ZeroBlocksDoNotSetTheTileScale) {
  std::mt19937 rng(5);
  std::vector<Mxfp4::block_t> b = {Mxfp4::block_t{}, random_block(140, rng), random_block(135, rng), Mxfp4::block_t{}};
  b[0].s.e = 200;  // all codes +0
  b[3].s.e = 210;  // all codes -0
  for (int i = 0; i < 16; ++i) b[3].qs[i] = 0x88;
  sharq::set_nibble(b[1].qs, 3, 7);  // block 1 holds a nonzero element
  std::vector<uint8_t> codes(128);
  const sharq::Mxfp4Fold f = sharq::mxfp4_fold_tile(b.data(), 4, codes.data());
  EXPECT_EQ(f.t, 140 - 127 - 6);
  EXPECT_EQ(check_tile(b, f, codes), 0);
}

TEST(Mxfp4Fold, QuantizedRowsOfRealisticValuesFoldWithTheFlushCountedExactly) {
  // rows of N(0, 1) with a few large outliers (as activations), quantized by Mxfp4::quantize
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  int inexact_tiles = 0;
  for (int row = 0; row < 64; ++row) {
    float v[128];
    for (float& x : v) x = nd(rng) * (row % 8 == 0 ? 1e-3f : 1.0f);
    if (row % 4 == 0) v[row % 128] = 3e4f;  // an outlier 2^14+ above the rest of another block
    std::vector<Mxfp4::block_t> b(4);
    for (int j = 0; j < 4; ++j) Mxfp4::quantize(v + 32 * j, b[j]);
    std::vector<uint8_t> codes(128);
    const sharq::Mxfp4Fold f = sharq::mxfp4_fold_tile(b.data(), 4, codes.data());
    inexact_tiles += check_tile(b, f, codes) > 0;
  }
  EXPECT_GT(inexact_tiles, 0);
  EXPECT_LT(inexact_tiles, 64);
}

}  // namespace
