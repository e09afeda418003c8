// Block quantizer tests: NVFP4-16/32, MXFP4-32, HiF4-64 (src/sharq/quant/block_quant.h) and the
// packed layouts of src/sharq/formats/blocks.h.
//
// Every quantized block is compared field by field with the slow reference quantizers of
// tests/support/reference_quant.h (written from SHARQ_SPEC on the reference codecs), and the
// dequantized values are checked against error bounds derived from each format.
#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <bit>
#include <cstring>
#include <type_traits>
#include <string>
#include <vector>

#include "../support/reference_quant.h"
#include "sharq/formats/blocks.h"
#include "sharq/quant/block_quant.h"

namespace {

using sharq_test::RefBlock;

const float kInf = std::numeric_limits<float>::infinity();
const float kNaN = std::numeric_limits<float>::quiet_NaN();

// ---- per-format adapters ------------------------------------------------------------------------
template <class F>
struct Fmt;
template <int B>
struct Fmt<sharq::Nvfp4<B>> {
  static constexpr const char* kName = B == 16 ? "NVFP4-16" : "NVFP4-32";
  static constexpr const char* kId = B == 16 ? "Nvfp4_16" : "Nvfp4_32";
  static constexpr uint8_t kNanScale = 0x7F;
  static constexpr uint8_t kZeroScale = 0x00;  // UE4M3 zero
  static RefBlock ref(const float* v) { return sharq_test::ref_nvfp4(v, B); }
  static uint8_t scale(const typename sharq::Nvfp4<B>::block_t& b) { return b.s.e; }
  static uint8_t e8(const typename sharq::Nvfp4<B>::block_t&) { return 0; }
  static uint16_t e16(const typename sharq::Nvfp4<B>::block_t&) { return 0; }
};
template <>
struct Fmt<sharq::Mxfp4> {
  static constexpr const char* kName = "MXFP4-32";
  static constexpr const char* kId = "Mxfp4";
  static constexpr uint8_t kNanScale = 0xFF;
  static constexpr uint8_t kZeroScale = 0x00;  // 2^-127
  static RefBlock ref(const float* v) { return sharq_test::ref_mxfp4(v); }
  static uint8_t scale(const sharq::Mxfp4::block_t& b) { return b.s.e; }
  static uint8_t e8(const sharq::Mxfp4::block_t&) { return 0; }
  static uint16_t e16(const sharq::Mxfp4::block_t&) { return 0; }
};
template <>
struct Fmt<sharq::Hif4> {
  static constexpr const char* kName = "HiF4-64";
  static constexpr const char* kId = "Hif4";
  static constexpr uint8_t kNanScale = 0xFF;
  static constexpr uint8_t kZeroScale = 0x00;  // E6M2 minimum 2^-48
  static RefBlock ref(const float* v) { return sharq_test::ref_hif4(v); }
  static uint8_t scale(const sharq::Hif4::block_t& b) { return b.s.sf; }
  static uint8_t e8(const sharq::Hif4::block_t& b) { return b.s.e8; }
  static uint16_t e16(const sharq::Hif4::block_t& b) { return static_cast<uint16_t>(b.s.e16[0] | (b.s.e16[1] << 8)); }
};

// Element k's code, read with explicit bit operations (SHARQ_SPEC: byte k/2, low nibble when k even).
template <class Block>
uint8_t code_at(const Block& b, int k) {
  const uint8_t byte = b.qs[k / 2];
  return static_cast<uint8_t>(k % 2 == 0 ? (byte & 0x0F) : (byte >> 4));
}

template <class F>
std::vector<float> dequant(const typename F::block_t& b) {
  std::vector<float> out(F::kBlock);
  sharq::dequantize_block<F>(b, out.data());
  return out;
}

bool same(double a, double b) { return std::isnan(a) ? std::isnan(b) : a == b; }

// Compares an implementation block with the reference, field by field; returns "" when equal.
template <class F>
std::string diff_with_reference(const float* v, const typename F::block_t& b) {
  const RefBlock r = Fmt<F>::ref(v);
  std::string d;
  if (Fmt<F>::scale(b) != r.scale)
    d += "scale code " + std::to_string(Fmt<F>::scale(b)) + " vs reference " + std::to_string(r.scale) + "; ";
  if (Fmt<F>::e8(b) != r.e8) d += "E8 " + std::to_string(Fmt<F>::e8(b)) + " vs " + std::to_string(r.e8) + "; ";
  if (Fmt<F>::e16(b) != r.e16) d += "E16 " + std::to_string(Fmt<F>::e16(b)) + " vs " + std::to_string(r.e16) + "; ";
  const std::vector<float> dq = dequant<F>(b);
  for (int k = 0; k < F::kBlock; ++k) {
    if (code_at(b, k) != r.codes[k])
      d += "code[" + std::to_string(k) + "] " + std::to_string(code_at(b, k)) + " vs " + std::to_string(r.codes[k]) +
           " (v = " + std::to_string(v[k]) + "); ";
    if (!same(dq[k], r.deq[k])) d += "deq[" + std::to_string(k) + "] " + std::to_string(dq[k]) + " vs " + std::to_string(r.deq[k]) + "; ";
    if (!r.nonfinite && !same(F::element_scale(b.s, k), r.elem_scale[k])) d += "element_scale[" + std::to_string(k) + "]; ";
  }
  return d;
}

// ---- random blocks ------------------------------------------------------------------------------
enum class Dist { gaussian, heavy, wide };

// One block of n values: Gaussian; heavy-tailed (Student t, 2 degrees of freedom, plus sparse x30
// outliers); or Gaussian times 2^u with u uniform in [-20, 12] (so that the scales span the
// subnormal and saturated ends of each scale format).
std::vector<float> random_block(std::mt19937_64& rng, int n, Dist d) {
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  std::student_t_distribution<float> student(2.0f);
  std::uniform_real_distribution<float> unif(0.0f, 1.0f);
  std::uniform_int_distribution<int> expo(-20, 12);
  std::vector<float> v(n);
  const float mul = d == Dist::wide ? std::ldexp(1.0f, expo(rng)) : 1.0f;
  for (int i = 0; i < n; ++i) {
    float x = d == Dist::heavy ? student(rng) : gauss(rng);
    if (d == Dist::heavy && unif(rng) < 0.02f) x *= 30.0f;
    v[i] = x * mul;
  }
  return v;
}

// ---- format-specific error bounds ----------------------------------------------------------------
// Each returns "" or a description of the first violated bound for element k, and counts how many
// elements fell in the clipping branch (so that tests can assert that branch was exercised).
struct BoundStats {
  long clipped = 0, rounded = 0;
};

// Distance from v to the nearest of the signed grid values {g * s}: the best any rounding could do.
double nearest_distance(double v, const std::vector<double>& mags, double s) {
  double best = INFINITY;
  for (double m : mags) best = std::fmin(best, std::fmin(std::fabs(v - m * s), std::fabs(v + m * s)));
  return best;
}

const std::vector<double> kE2m1Mags = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
const std::vector<double> kS1p2Mags = {0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75};

// NVFP4, s = the block's decoded scale, amax the block's max |v|:
//  - s = 0 only when amax/6 rounds to 0 in UE4M3 (amax/6 <= 2^-10), and then every value is 0;
//  - |v|/s <= 6: |deq - v| <= half the E2M1 gap at |v|/s, times s, and no grid point is closer;
//  - |v|/s > 6 (s rounded below amax/6, or saturated at 448): deq = +-6s exactly; when s is a
//    normal UE4M3 value and amax/6 <= 448 (no saturation), |v|/s <= 6 * (1 + 2^-4) = 6.375, so the
//    clipping error is at most 0.375 s.
std::string nvfp4_bound(const float* v, int B, const std::vector<float>& dq, double s, BoundStats& st) {
  double amax = 0;
  for (int k = 0; k < B; ++k) amax = std::fmax(amax, std::fabs(static_cast<double>(v[k])));
  for (int k = 0; k < B; ++k) {
    const double x = v[k], d = dq[k], err = std::fabs(d - x);
    if (s == 0.0) {
      if (d != 0.0 || static_cast<float>(amax) / 6.0f > std::ldexp(1.0f, -10)) return "zero scale with amax/6 > 2^-10 or nonzero deq";
      continue;
    }
    const double t = std::fabs(x) / s;
    if (t <= 6.0) {
      ++st.rounded;
      if (err > sharq_test::e2m1_half_gap(t) * s) return "error above half an E2M1 step at k=" + std::to_string(k);
      if (err > nearest_distance(x, kE2m1Mags, s)) return "not the nearest E2M1 value at k=" + std::to_string(k);
    } else {
      ++st.clipped;
      if (d != std::copysign(6.0 * s, x)) return "clipped value is not +-6s at k=" + std::to_string(k);
      if (s >= std::ldexp(1.0, -6) && amax <= 2688.0 && t > 6.375) return "clipping beyond 6.375 s at k=" + std::to_string(k);
    }
  }
  return "";
}

// MXFP4, X = the block's power-of-two scale: amax/X < 8 always (X = 2^(floor log2 amax - 2), or
// X = 2^-127 > amax/4 when clamped), and amax/X >= 4 unless clamped at 2^-127.
//  - |v|/X <= 6: |deq - v| <= half an E2M1 gap times X, nearest;
//  - |v|/X in (6, 8): deq = +-6X, so |deq - v| < 2X <= amax/2.
std::string mxfp4_bound(const float* v, const std::vector<float>& dq, double X, BoundStats& st) {
  double amax = 0;
  for (int k = 0; k < 32; ++k) amax = std::fmax(amax, std::fabs(static_cast<double>(v[k])));
  if (amax > 0 && !(amax / X < 8.0)) return "amax / X >= 8";
  if (amax > 0 && X > std::ldexp(1.0, -127) && !(amax / X >= 4.0)) return "amax / X < 4 with an unclamped scale";
  for (int k = 0; k < 32; ++k) {
    const double x = v[k], d = dq[k], err = std::fabs(d - x), t = std::fabs(x) / X;
    if (t <= 6.0) {
      ++st.rounded;
      if (err > sharq_test::e2m1_half_gap(t) * X) return "error above half an E2M1 step at k=" + std::to_string(k);
      if (err > nearest_distance(x, kE2m1Mags, X)) return "not the nearest E2M1 value at k=" + std::to_string(k);
    } else {
      ++st.clipped;
      if (d != std::copysign(6.0 * X, x)) return "clipped value is not +-6X at k=" + std::to_string(k);
      if (!(err < 2.0 * X)) return "clipping error >= 2X at k=" + std::to_string(k);
    }
  }
  return "";
}

// HiF4, S_k = SF * 2^(E8 + E16) the element's scale. The flag rules bound |v|/S_k < 2 for every
// element whenever Vmax/7 lies in E6M2's range [2^-48, 2^15 * 1.5] (E6M2 rounds Vmax/7 to within
// 1/8, so Vmax/SF <= 7.875 < 8; each unset flag caps the group max at the next threshold).
//  - |v|/S_k <= 1.75: |deq - v| <= S_k / 8 (half an S1P2 step), nearest;
//  - |v|/S_k in (1.75, 2): deq = +-1.75 S_k, |deq - v| < S_k / 4.
std::string hif4_bound(const float* v, const std::vector<float>& dq, const sharq::Hif4::block_t& b, BoundStats& st) {
  double vmax = 0;
  for (int k = 0; k < 64; ++k) vmax = std::fmax(vmax, std::fabs(static_cast<double>(v[k])));
  const bool in_range = static_cast<double>(static_cast<float>(vmax) / 7.0f) <= 49152.0;
  for (int k = 0; k < 64; ++k) {
    const double S = sharq::Hif4::element_scale(b.s, k);
    const double x = v[k], d = dq[k], err = std::fabs(d - x), t = std::fabs(x) / S;
    if (t <= 1.75) {
      ++st.rounded;
      if (err > S / 8.0) return "error above half an S1P2 step at k=" + std::to_string(k);
      if (err > nearest_distance(x, kS1p2Mags, S)) return "not the nearest S1P2 value at k=" + std::to_string(k);
    } else {
      ++st.clipped;
      if (d != std::copysign(1.75 * S, x)) return "clipped value is not +-1.75 S at k=" + std::to_string(k);
      if (in_range && !(t < 2.0)) return "|v|/S >= 2 at k=" + std::to_string(k);
    }
  }
  return "";
}

template <class F>
std::string check_bound(const float* v, const typename F::block_t& b, BoundStats& st) {
  const std::vector<float> dq = dequant<F>(b);
  if constexpr (std::is_same_v<F, sharq::Mxfp4>) return mxfp4_bound(v, dq, sharq::ue8m0_decode(b.s.e), st);
  else if constexpr (std::is_same_v<F, sharq::Hif4>) return hif4_bound(v, dq, b, st);
  else return nvfp4_bound(v, F::kBlock, dq, sharq::ue4m3_decode(b.s.e), st);
}

// =====================================================================================================
// blocks.h layout
TEST(BlockLayout, SizesAndFieldOffsets) {
  EXPECT_EQ(sizeof(sharq::block_nvfp4_16), 9u);
  EXPECT_EQ(sizeof(sharq::block_nvfp4_32), 17u);
  EXPECT_EQ(sizeof(sharq::block_mxfp4), 17u);
  EXPECT_EQ(sizeof(sharq::block_hif4), 36u);
  EXPECT_EQ(offsetof(sharq::block_nvfp4_16, qs), 1u);
  EXPECT_EQ(offsetof(sharq::block_mxfp4, qs), 1u);
  EXPECT_EQ(offsetof(sharq::block_hif4, qs), 4u);
  EXPECT_EQ(offsetof(sharq::scale_hif4, e8), 1u);
  EXPECT_EQ(offsetof(sharq::scale_hif4, e16), 2u);
  // 4.5 / 4.25 bits per value.
  EXPECT_EQ(sizeof(sharq::block_nvfp4_16) * 8 * 2, 16u * 9);
  EXPECT_EQ(sizeof(sharq::block_hif4) * 8 * 2, 64u * 9);
  EXPECT_EQ(sizeof(sharq::block_nvfp4_32) * 8 * 4, 32u * 17);
}

TEST(BlockLayout, NibbleAccessLowNibbleForEvenIndex) {
  uint8_t p[4] = {0, 0, 0, 0};
  sharq::set_nibble(p, 0, 0x3);
  sharq::set_nibble(p, 1, 0xA);
  sharq::set_nibble(p, 6, 0xF);
  sharq::set_nibble(p, 7, 0x1);
  EXPECT_EQ(p[0], 0xA3);
  EXPECT_EQ(p[1], 0x00);
  EXPECT_EQ(p[3], 0x1F);
  sharq::set_nibble(p, 0, 0x5);  // overwrite keeps the neighbour nibble
  EXPECT_EQ(p[0], 0xA5);
  sharq::set_nibble(p, 1, 0x0);
  EXPECT_EQ(p[0], 0x05);
  sharq::set_nibble(p, 2, 0x1F);  // only the low 4 bits of the value are stored
  EXPECT_EQ(p[1], 0x0F);
  for (int k = 0; k < 8; ++k) EXPECT_EQ(sharq::get_nibble(p, k), (p[k / 2] >> (4 * (k % 2))) & 0xF) << k;
}

// =====================================================================================================
// Typed tests over the four formats
template <class F>
class BlockQuant : public ::testing::Test {};
using Formats = ::testing::Types<sharq::Nvfp4_16, sharq::Nvfp4_32, sharq::Mxfp4, sharq::Hif4>;
struct FormatNames {
  template <class F>
  static std::string GetName(int) { return Fmt<F>::kId; }
};
TYPED_TEST_SUITE(BlockQuant, Formats, FormatNames);

template <class F>
void expect_matches_reference(Dist d, uint64_t seed, int nblocks) {
  std::mt19937_64 rng(seed);
  int bad = 0;
  for (int i = 0; i < nblocks; ++i) {
    const std::vector<float> v = random_block(rng, F::kBlock, d);
    typename F::block_t b;
    std::memset(&b, 0xCD, sizeof b);  // quantize must write every byte it owns
    F::quantize(v.data(), b);
    const std::string diff = diff_with_reference<F>(v.data(), b);
    if (!diff.empty() && ++bad <= 5) ADD_FAILURE() << Fmt<F>::kName << " block " << i << ": " << diff;
  }
  EXPECT_EQ(bad, 0) << "of " << nblocks << " blocks";
}

TYPED_TEST(BlockQuant, MatchesSpecReferenceGaussian) { expect_matches_reference<TypeParam>(Dist::gaussian, 101, 4000); }
TYPED_TEST(BlockQuant, MatchesSpecReferenceHeavyTailed) { expect_matches_reference<TypeParam>(Dist::heavy, 202, 4000); }
TYPED_TEST(BlockQuant, MatchesSpecReferenceWideRange) { expect_matches_reference<TypeParam>(Dist::wide, 303, 8000); }

TYPED_TEST(BlockQuant, ZeroBlockGetsZeroScaleAndZeroCodes) {
  using F = TypeParam;
  for (float z : {0.0f, -0.0f}) {
    std::vector<float> v(F::kBlock, z);
    typename F::block_t b;
    std::memset(&b, 0xCD, sizeof b);
    F::quantize(v.data(), b);
    EXPECT_EQ(Fmt<F>::scale(b), Fmt<F>::kZeroScale);
    EXPECT_EQ(Fmt<F>::e8(b), 0);
    EXPECT_EQ(Fmt<F>::e16(b), 0);
    // +0 gives all-zero codes (the padding case). -0: NVFP4/MX short-cut a zero scale to code 0;
    // HiF4 has no zero scale and keeps the sign (code 0x8, -0), which dequantizes to zero as well.
    for (int k = 0; k < F::kBlock; ++k) {
      const uint8_t c = code_at(b, k);
      if (std::signbit(z) && std::is_same_v<F, sharq::Hif4>) {
        EXPECT_TRUE(c == 0x0 || c == 0x8) << k;
      } else {
        EXPECT_EQ(c, 0) << k;
      }
    }
    for (float x : dequant<F>(b)) EXPECT_EQ(x, 0.0f);
  }
}

TYPED_TEST(BlockQuant, NonFiniteBlockGetsNanScaleAndDequantizesToNan) {
  using F = TypeParam;
  std::mt19937_64 rng(404);
  for (float bad : {kNaN, -kNaN, kInf, -kInf}) {
    for (int pos = 0; pos < F::kBlock; ++pos) {
      std::vector<float> v = random_block(rng, F::kBlock, Dist::gaussian);
      v[pos] = bad;
      typename F::block_t b;
      std::memset(&b, 0xCD, sizeof b);
      F::quantize(v.data(), b);
      ASSERT_EQ(Fmt<F>::scale(b), Fmt<F>::kNanScale) << "value " << bad << " at " << pos;
      EXPECT_EQ(Fmt<F>::e8(b), 0);
      EXPECT_EQ(Fmt<F>::e16(b), 0);
      for (int i = 0; i < F::kBlock / 2; ++i) ASSERT_EQ(b.qs[i], 0);
      for (float x : dequant<F>(b)) ASSERT_TRUE(std::isnan(x)) << "value " << bad << " at " << pos;
    }
  }
}

TYPED_TEST(BlockQuant, ErrorWithinFormatBoundGaussianAndHeavyTailed) {
  using F = TypeParam;
  for (Dist d : {Dist::gaussian, Dist::heavy, Dist::wide}) {
    std::mt19937_64 rng(500 + static_cast<int>(d));
    BoundStats st;
    int bad = 0;
    for (int i = 0; i < 5000; ++i) {
      std::vector<float> v = random_block(rng, F::kBlock, d);
      typename F::block_t b;
      F::quantize(v.data(), b);
      const std::string why = check_bound<F>(v.data(), b, st);
      if (!why.empty() && ++bad <= 5) ADD_FAILURE() << Fmt<F>::kName << " dist " << static_cast<int>(d) << " block " << i << ": " << why;
    }
    EXPECT_EQ(bad, 0);
    EXPECT_GT(st.rounded, 0);
    // The max element clips whenever the scale rounds below amax/6 (NVFP4), amax/X > 6 (MX) or
    // SF rounds below Vmax/7 (HiF4): a frequent event, so the clipping branch must be exercised.
    EXPECT_GT(st.clipped, 0) << "clipping branch not exercised";
  }
}

// Dequantized values are representable: quantizing them again gives the same values. True for
// MXFP4 (the max element lands on 4X or 6X, same exponent) and for NVFP4 with a normal scale (the
// max element lands on 6s); not in general for HiF4 (SF is re-derived from a rounded Vmax).
template <class F>
void expect_idempotent() {
  std::mt19937_64 rng(606);
  for (int i = 0; i < 2000; ++i) {
    const std::vector<float> v = random_block(rng, F::kBlock, Dist::heavy);
    typename F::block_t b1, b2;
    F::quantize(v.data(), b1);
    if constexpr (!std::is_same_v<F, sharq::Mxfp4>) {
      ASSERT_GE(b1.s.e, 0x08) << "want a normal scale";
    }
    const std::vector<float> d1 = dequant<F>(b1);
    F::quantize(d1.data(), b2);
    const std::vector<float> d2 = dequant<F>(b2);
    for (int k = 0; k < F::kBlock; ++k) ASSERT_EQ(d1[k], d2[k]) << "block " << i << " k " << k;
  }
}
TEST(BlockQuantIdempotent, Nvfp4_16) { expect_idempotent<sharq::Nvfp4_16>(); }
TEST(BlockQuantIdempotent, Nvfp4_32) { expect_idempotent<sharq::Nvfp4_32>(); }
TEST(BlockQuantIdempotent, Mxfp4) { expect_idempotent<sharq::Mxfp4>(); }

// =====================================================================================================
// NVFP4 specifics
template <int B>
void nvfp4_hand_built_codes() {
  // Codes chosen at random, one of them +-6 so that amax/6 is exactly the chosen scale: then
  // quantize must return exactly these codes, in the CUDA/CUTLASS nibble order.
  std::mt19937_64 rng(7000 + B);
  std::uniform_int_distribution<int> code(0, 15), pos(0, B - 1);
  for (uint8_t sc : {uint8_t{0x01}, uint8_t{0x07}, uint8_t{0x08}, uint8_t{0x30}, uint8_t{0x55}, uint8_t{0x7E}}) {
    const float s = static_cast<float>(sharq_test::ref_e4m3_value(sc));
    std::vector<uint8_t> c(B);
    for (auto& x : c) x = static_cast<uint8_t>(code(rng));
    c[pos(rng)] = (rng() & 1) ? 0x7 : 0xF;
    std::vector<float> v(B);
    for (int k = 0; k < B; ++k) v[k] = static_cast<float>(sharq_test::ref_e2m1_value(c[k])) * s;
    typename sharq::Nvfp4<B>::block_t b;
    sharq::Nvfp4<B>::quantize(v.data(), b);
    EXPECT_EQ(b.s.e, sc);
    for (int k = 0; k < B; k += 2) EXPECT_EQ(b.qs[k / 2], c[k] | (c[k + 1] << 4)) << "scale " << int(sc) << " byte " << k / 2;
    const std::vector<float> d = dequant<sharq::Nvfp4<B>>(b);
    for (int k = 0; k < B; ++k) EXPECT_EQ(std::bit_cast<uint32_t>(d[k]), std::bit_cast<uint32_t>(v[k])) << k;
  }
}
TEST(Nvfp4, HandBuiltCodesRoundTripInNibbleOrder16) { nvfp4_hand_built_codes<16>(); }
TEST(Nvfp4, HandBuiltCodesRoundTripInNibbleOrder32) { nvfp4_hand_built_codes<32>(); }

TEST(Nvfp4, ScaleIsUe4m3OfAmaxOverSixAndCodesUseTheRoundedScale) {
  // amax = 7 -> amax/6 = 1.1666.. -> UE4M3 1.125 (code 0x39). The codes divide by the rounded
  // 1.125: 7 -> 6.22 -> 6, 3.5 -> 3.11 -> 3, 2.2 -> 1.96 -> 2, 1.6 -> 1.42 -> 1.5, and
  // 0.85 -> 0.756 -> 1, where dividing by the unrounded 7/6 would give 0.729 -> 0.5.
  float v[16] = {7.0f, 3.5f, 2.2f, 1.6f, 0.85f, -7.0f};
  sharq::Nvfp4_16::block_t b;
  sharq::Nvfp4_16::quantize(v, b);
  EXPECT_EQ(b.s.e, 0x39);
  EXPECT_EQ(sharq::ue4m3_decode(b.s.e), 1.125f);
  const uint8_t expect[6] = {0x7, 0x5, 0x4, 0x3, 0x2, 0xF};  // 6, 3, 2, 1.5, 1, -6
  for (int k = 0; k < 6; ++k) EXPECT_EQ(code_at(b, k), expect[k]) << k;
  for (int k = 6; k < 16; ++k) EXPECT_EQ(code_at(b, k), 0) << k;
}

TEST(Nvfp4, UnderflowingBlockGetsZeroScale) {
  // amax/6 <= 2^-10 rounds to UE4M3 zero (the tie at 2^-10 goes to even = 0); just above, to 2^-9.
  std::vector<float> v(16, 0.0f);
  v[3] = 6.0f * std::ldexp(1.0f, -10);
  v[5] = -1e-5f;
  sharq::Nvfp4_16::block_t b;
  sharq::Nvfp4_16::quantize(v.data(), b);
  EXPECT_EQ(b.s.e, 0);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(b.qs[i], 0);
  for (float x : dequant<sharq::Nvfp4_16>(b)) EXPECT_EQ(x, 0.0f);
  v[3] = std::nextafter(v[3], 1.0f);
  sharq::Nvfp4_16::quantize(v.data(), b);
  EXPECT_EQ(b.s.e, 1);             // 2^-9
  EXPECT_EQ(code_at(b, 3), 0x5);    // (6 * 2^-10)+ / 2^-9 = 3+ -> 3
  EXPECT_EQ(code_at(b, 5), 0x8);    // -1e-5 / 2^-9 = -0.005 -> -0
}

TEST(Nvfp4, SaturatesAt2688) {
  // Without a second-level scale a block with amax > 2688 saturates: s = 448, |q| <= 6.
  float v[32];
  for (int k = 0; k < 32; ++k) v[k] = (k % 2 ? -1.0f : 1.0f) * 100.0f * static_cast<float>(k + 1);
  sharq::Nvfp4_32::block_t b;
  sharq::Nvfp4_32::quantize(v, b);
  EXPECT_EQ(b.s.e, 0x7E);
  const std::vector<float> d = dequant<sharq::Nvfp4_32>(b);
  for (int k = 0; k < 32; ++k) {
    if (std::fabs(v[k]) >= 2688.0f) {
      EXPECT_EQ(d[k], std::copysign(2688.0f, v[k])) << k;
    } else {
      EXPECT_LE(std::fabs(d[k] - v[k]), 448.0f) << k;  // half the widest E2M1 gap (2) times 448
    }
  }
}

// =====================================================================================================
// MXFP4 specifics
TEST(Mxfp4, SharedExponentHandChecked) {
  struct Case { float amax; uint8_t code; };
  // code = floor(log2 amax) - 2 + 127, clamped to >= 0.
  const Case cases[] = {{1.0f, 125},   {6.0f, 127},   {7.99f, 127}, {8.0f, 128}, {0.3f, 123},
                        {std::ldexp(1.0f, -125), 0}, {std::ldexp(1.0f, -124), 1}, {std::ldexp(1.0f, -140), 0},
                        {std::ldexp(1.5f, 127), 252}};
  for (const Case& c : cases) {
    std::vector<float> v(32, 0.0f);
    v[17] = -c.amax;
    v[3] = c.amax / 3.0f;
    sharq::Mxfp4::block_t b;
    sharq::Mxfp4::quantize(v.data(), b);
    EXPECT_EQ(b.s.e, c.code) << "amax " << c.amax;
  }
}

// The quantizer multiplies by 1 / s instead of dividing by s: for every scale it can pick (2^e,
// |e| <= 127) the reciprocal is exact and the codes are those of the division, subnormal
// quotients and results included.
TEST(Mxfp4, MultiplyingByTheExactReciprocalEqualsDividing) {
  uint64_t st = 12345;
  auto next = [&st] {
    st ^= st << 13;
    st ^= st >> 7;
    st ^= st << 17;
    return st;
  };
  for (int code = 0; code < 255; ++code) {  // 0xFF is the NaN scale
    const float s = sharq::ue8m0_decode(static_cast<uint8_t>(code));
    ASSERT_TRUE(s > 0.0f) << code;
    const float inv = 1.0f / s;
    ASSERT_EQ(inv * s, 1.0f) << "the reciprocal of 2^" << code - 127 << " is exact";
    for (int i = 0; i < 4000; ++i) {
      float v;
      const uint32_t b = static_cast<uint32_t>(next());
      std::memcpy(&v, &b, 4);
      if (v != v) continue;
      ASSERT_EQ(sharq::e2m1_encode(v * inv), sharq::e2m1_encode(v / s)) << "v = " << v << ", s = 2^" << code - 127;
      ASSERT_EQ(sharq::f32_bits(v * inv), sharq::f32_bits(v / s)) << "v = " << v << ", s = 2^" << code - 127;
    }
  }
}

TEST(Mxfp4, ElementsAboveSixTimesTheScaleSaturate) {
  // amax = 7.5: X = 2^(2-2) = 1; 7.5 -> 6, 6.9 -> 6, 5.1 -> 6, 4.9 -> 4.
  std::vector<float> v(32, 0.0f);
  v[0] = 7.5f; v[1] = -6.9f; v[2] = 5.1f; v[3] = 4.9f; v[4] = 0.25f; v[5] = 0.26f;
  sharq::Mxfp4::block_t b;
  sharq::Mxfp4::quantize(v.data(), b);
  EXPECT_EQ(b.s.e, 127);
  const std::vector<float> d = dequant<sharq::Mxfp4>(b);
  EXPECT_EQ(d[0], 6.0f);
  EXPECT_EQ(d[1], -6.0f);
  EXPECT_EQ(d[2], 6.0f);
  EXPECT_EQ(d[3], 4.0f);
  EXPECT_EQ(d[4], 0.0f);
  EXPECT_EQ(d[5], 0.5f);
}

// =====================================================================================================
// HiF4 specifics
TEST(Hif4, HandBuiltFlagsAndLayout) {
  // Vmax = 7 -> SF = E6M2(1) = 1 (code 192).
  //  8-group 0: max 7 -> E8[0] = 1 (7 >= 4); 4-group 0 max 7: 7/2 >= 2 -> E16[0] = 1;
  //             4-group 1 max 3: 3/2 < 2 -> E16[1] = 0.
  //  8-group 1: max 3.9 -> E8[1] = 0; 4-group 2 max 3.9 >= 2 -> E16[2] = 1; 4-group 3 max 1 -> 0.
  //  8-group 5: max 5 -> E8[5] = 1; 4-group 10 max 1: 1/2 < 2 -> 0; 4-group 11 max 5: 5/2 >= 2 -> 1.
  //  8-group 7: max 4 (exactly the threshold) -> E8[7] = 1; 4-group 15 max 4: 4/2 >= 2 -> E16[15] = 1.
  //  everything else 0.
  float v[64] = {};
  v[1] = -7.0f; v[5] = 3.0f;
  v[9] = 3.9f; v[12] = -1.0f;
  v[40] = 1.0f; v[46] = -5.0f;
  v[62] = 4.0f;
  sharq::Hif4::block_t b;
  sharq::Hif4::quantize(v, b);
  EXPECT_EQ(b.s.sf, 192);
  EXPECT_EQ(b.s.e8, 0xA1);     // bits 0, 5, 7
  EXPECT_EQ(b.s.e16[0], 0x05); // bits 0, 2
  EXPECT_EQ(b.s.e16[1], 0x88); // bits 11, 15 -> bits 3, 7 of the second byte
  auto S = [&](int k) { return sharq::Hif4::element_scale(b.s, k); };
  EXPECT_EQ(S(1), 4.0f);
  EXPECT_EQ(S(5), 2.0f);
  EXPECT_EQ(S(9), 2.0f);
  EXPECT_EQ(S(12), 1.0f);
  EXPECT_EQ(S(40), 2.0f);
  EXPECT_EQ(S(46), 4.0f);
  EXPECT_EQ(S(62), 4.0f);
  EXPECT_EQ(S(20), 1.0f);
  const std::vector<float> d = dequant<sharq::Hif4>(b);
  // -7/4 = -1.75; 3/2 = 1.5; 3.9/2 = 1.95 -> clips to 1.75 -> 3.5; -1/1 = -1; 1/2 = 0.5;
  // -5/4 = -1.25; 4/4 = 1.
  EXPECT_EQ(d[1], -7.0f);
  EXPECT_EQ(d[5], 3.0f);
  EXPECT_EQ(d[9], 3.5f);
  EXPECT_EQ(d[12], -1.0f);
  EXPECT_EQ(d[40], 1.0f);
  EXPECT_EQ(d[46], -5.0f);
  EXPECT_EQ(d[62], 4.0f);
  EXPECT_EQ(code_at(b, 1), 0xF);
  EXPECT_EQ(code_at(b, 9), 0x7);
  EXPECT_EQ(code_at(b, 46), 0xD);
}

TEST(Hif4, FlagsAreExercisedByRandomData) {
  // Both values of every flag bit occur over random units (the reference comparison above would
  // be vacuous for a flag that is always 0).
  std::mt19937_64 rng(808);
  uint8_t e8_or = 0, e8_and = 0xFF;
  uint16_t e16_or = 0, e16_and = 0xFFFF;
  for (int i = 0; i < 2000; ++i) {
    const std::vector<float> v = random_block(rng, 64, Dist::heavy);
    sharq::Hif4::block_t b;
    sharq::Hif4::quantize(v.data(), b);
    e8_or |= b.s.e8;
    e8_and &= b.s.e8;
    const uint16_t e16 = static_cast<uint16_t>(b.s.e16[0] | (b.s.e16[1] << 8));
    e16_or |= e16;
    e16_and &= e16;
  }
  EXPECT_EQ(e8_or, 0xFF);
  EXPECT_EQ(e8_and, 0x00);
  EXPECT_EQ(e16_or, 0xFFFF);
  EXPECT_EQ(e16_and, 0x0000);
}

TEST(Hif4, TinyAndHugeUnitsClampTheScale) {
  std::vector<float> v(64, 0.0f);
  v[10] = 1e-20f;  // Vmax/7 < 2^-48: SF = 2^-48, element 1e-20 / 2^-48 ~ 2.8e-6 -> 0
  sharq::Hif4::block_t b;
  sharq::Hif4::quantize(v.data(), b);
  EXPECT_EQ(b.s.sf, 0);
  EXPECT_EQ(dequant<sharq::Hif4>(b)[10], 0.0f);
  v[10] = 1e30f;  // Vmax/7 far above 2^15 * 1.5: SF saturates at 0xFE; the element clips
  sharq::Hif4::quantize(v.data(), b);
  EXPECT_EQ(b.s.sf, 0xFE);
  EXPECT_EQ(dequant<sharq::Hif4>(b)[10], 1.75f * 49152.0f * 4.0f);
}

// ---- Exactness on the tensor cores (the MXFP4/HiF4 GPU paths' arguments, docs/numerics.md) -----
// A dequantized value is "exact" when the FP32 product equals the real product (a double holds it
// exactly); it then runs on BF16 (or E4M3) tensor cores without changing a bit iff rounding it to
// that format gives it back.

// MXFP4: E2M1 x 2^k has at most 2 significant bits and BF16 has FP32's exponent range
// (subnormals included), so every product FP32 can hold is a BF16 value. A real product past
// FP32's range is +-Inf in both (and no finite block reaches such a scale: floor(log2(amax)) - 2
// <= 125).
TEST(TensorCoreExactness, Mxfp4ValuesAreBf16Values) {
  int finite = 0;
  for (int e = 0; e < 255; ++e)  // every UE8M0 scale (255 is NaN)
    for (int c = 0; c < 16; ++c) {
      const uint8_t code = static_cast<uint8_t>(c);
      const float v = sharq::Mxfp4::decode(code) * sharq::Mxfp4::element_scale(sharq::scale_ue8m0{static_cast<uint8_t>(e)}, 0);
      const double real = static_cast<double>(sharq::e2m1_decode(code)) * std::ldexp(1.0, e - 127);
      if (std::fabs(real) > static_cast<double>(std::numeric_limits<float>::max())) {
        EXPECT_TRUE(std::isinf(v)) << "e=" << e << " c=" << c;
      } else {
        EXPECT_EQ(static_cast<double>(v), real) << "e=" << e << " c=" << c;
        ++finite;
      }
      EXPECT_EQ(sharq::f32_bits(sharq::round_bf16(v)), sharq::f32_bits(v)) << "e=" << e << " c=" << c;
    }
  EXPECT_GT(finite, 16 * 250);
}

// HiF4: S1P2 (3 significant bits) x E6M2 (3) x 2^(E8 + E16): at most 6 significant bits, and the
// exponents (2^-50 .. 2^18) lie inside BF16's normal range. Every value of every scale code.
TEST(TensorCoreExactness, Hif4ValuesAreBf16Values) {
  for (int sf = 0; sf < sharq::kE6m2Nan; ++sf)
    for (int e8 = 0; e8 < 2; ++e8)
      for (int e16 = 0; e16 < 2; ++e16) {
        sharq::scale_hif4 s{};
        s.sf = static_cast<uint8_t>(sf);
        s.e8 = static_cast<uint8_t>(e8);        // group 0 of 8
        s.e16[0] = static_cast<uint8_t>(e16);  // group 0 of 4
        for (int c = 0; c < 16; ++c) {
          const uint8_t code = static_cast<uint8_t>(c);
          const float v = sharq::Hif4::decode(code) * sharq::Hif4::element_scale(s, 0);
          const double real = static_cast<double>(sharq::s1p2_decode(code)) *
                              static_cast<double>(sharq::e6m2_decode(static_cast<uint8_t>(sf))) * std::ldexp(1.0, e8 + e16);
          ASSERT_EQ(static_cast<double>(v), real) << "sf=" << sf << " c=" << c;
          ASSERT_EQ(sharq::f32_bits(sharq::round_bf16(v)), sharq::f32_bits(v)) << "sf=" << sf << " c=" << c;
        }
      }
}

// The FP8 path for MXFP4: with one FP32 scale per row and 128-K tile (the tile's base 2^b), a
// 32-block of scale 2^(b + d) holds E2M1 x 2^d, which E4M3 represents exactly for every code iff
// -8 <= d <= 6 (6 x 2^6 = 384 <= 448; 0.5 x 2^-8 = 2^-9, E4M3's smallest subnormal). With the base
// chosen as the tile's largest block scale times 2^-6, a block is exact down to 2^-14 of the
// largest; a block further below loses bits (its values round in E4M3 or flush to zero).
TEST(TensorCoreExactness, E2m1TimesTwoToTheDIsAnE4m3ValueExactlyForDFromMinus8To6) {
  for (int d = -12; d <= 10; ++d) {
    bool every_code = true;
    for (int c = 0; c < 16; ++c) {
      const float v = std::ldexp(sharq::e2m1_decode(static_cast<uint8_t>(c)), d);
      every_code = every_code && sharq::f32_bits(sharq::e4m3_decode(sharq::e4m3_encode(v))) == sharq::f32_bits(v);
    }
    EXPECT_EQ(every_code, d >= -8 && d <= 6) << "d=" << d;
  }
}

}  // namespace
