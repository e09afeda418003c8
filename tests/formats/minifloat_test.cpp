// Codec tests: E2M1, E4M3/UE4M3, UE8M0, E6M2, S1P2, BF16, FP16 (src/sharq/formats/minifloat.h).
//
// Two independent references:
//  - CUDA's host-side conversions (cuda_fp4.h, cuda_fp8.h, cuda_fp16.h, cuda_bf16.h), bit-exact,
//    when the build found the headers (SHARQ_HAVE_CUDA_HEADERS); otherwise those tests skip;
//  - the slow nearest-representable-value codecs of tests/support/reference_codecs.h, which need
//    nothing and are the only reference for E6M2 and S1P2 (no CUDA counterpart).
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#endif
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "../support/reference_codecs.h"
#include "sharq/formats/minifloat.h"
#include "sharq/quant/block_quant.h"  // nvfp4_global_scale: the divisors of the prep's x / g

#if defined(SHARQ_HAVE_CUDA_HEADERS)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp4.h>
#include <cuda_fp8.h>
#endif

namespace {

using sharq_test::bits_of;
using sharq_test::float_of;

// ---- CUDA reference wrappers ----------------------------------------------------------------------
#if defined(SHARQ_HAVE_CUDA_HEADERS)
constexpr bool kHaveCuda = true;
uint8_t cuda_e2m1(float x) { return static_cast<uint8_t>(__nv_cvt_float_to_fp4(x, __NV_E2M1, cudaRoundNearest)); }
float cuda_e2m1_decode(uint8_t c) { return __half2float(__half(__nv_cvt_fp4_to_halfraw(c, __NV_E2M1))); }
uint8_t cuda_e4m3(float x) { return static_cast<uint8_t>(__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3)); }
float cuda_e4m3_decode(uint8_t c) { return __half2float(__half(__nv_cvt_fp8_to_halfraw(c, __NV_E4M3))); }
uint16_t cuda_bf16(float x) {
  const __nv_bfloat16_raw r = __float2bfloat16_rn(x);
  return r.x;
}
float cuda_bf16_decode(uint16_t h) {
  __nv_bfloat16_raw r;
  r.x = h;
  return __bfloat162float(__nv_bfloat16(r));
}
uint16_t cuda_fp16(float x) {
  const __half_raw r = __float2half_rn(x);
  return r.x;
}
float cuda_fp16_decode(uint16_t h) {
  __half_raw r;
  r.x = h;
  return __half2float(__half(r));
}
float cuda_ue8m0_decode(uint8_t c) { return __bfloat162float(__nv_bfloat16(__nv_cvt_e8m0_to_bf16raw(c))); }
// Round-toward-zero E8M0 conversion: the biased exponent field of x, i.e. floor(log2 x) + 127 for
// normal x.
uint8_t cuda_e8m0_rz(float x) { return static_cast<uint8_t>(__nv_cvt_float_to_e8m0(x, __NV_SATFINITE, cudaRoundZero)); }
#define SHARQ_REQUIRE_CUDA() (void)0
#else
constexpr bool kHaveCuda = false;
uint8_t cuda_e2m1(float) { return 0; }
float cuda_e2m1_decode(uint8_t) { return 0; }
uint8_t cuda_e4m3(float) { return 0; }
float cuda_e4m3_decode(uint8_t) { return 0; }
uint16_t cuda_bf16(float) { return 0; }
float cuda_bf16_decode(uint16_t) { return 0; }
uint16_t cuda_fp16(float) { return 0; }
float cuda_fp16_decode(uint16_t) { return 0; }
float cuda_ue8m0_decode(uint8_t) { return 0; }
uint8_t cuda_e8m0_rz(float) { return 0; }
#define SHARQ_REQUIRE_CUDA() \
  GTEST_SKIP() << "CUDA headers (cuda_fp4.h/cuda_fp8.h/cuda_fp16.h/cuda_bf16.h) not found at configure time: no bit-exact CUDA reference"
#endif

// ---- test points -----------------------------------------------------------------------------------
std::string hex(uint32_t u) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%08X", u);
  return b;
}

// Collects mismatches without a gtest assertion per value (the sweeps test ~10^7 values).
struct Mismatches {
  uint64_t count = 0;
  uint64_t checked = 0;
  std::string first;
  template <class A, class B>
  void check(float x, A ours, B ref, const char* what) {
    ++checked;
    if (ours == ref) return;
    if (++count <= 8) {
      first += std::string(what) + "(" + hex(bits_of(x)) + " = " + std::to_string(x) + "): ours " +
               std::to_string(static_cast<long long>(ours)) + ", reference " +
               std::to_string(static_cast<long long>(ref)) + "\n";
    }
  }
};
#define EXPECT_NO_MISMATCH(m) EXPECT_EQ((m).count, 0u) << (m).first << "(" << (m).checked << " values checked)"

// Special FP32 inputs: signed zeros, infinities, NaNs of both signs (quiet, signalling, all-ones
// payload), FP32 subnormals, the normal extremes.
std::vector<float> special_values() {
  const uint32_t pats[] = {0x00000000u, 0x80000000u, 0x7F800000u, 0xFF800000u, 0x7FC00000u, 0xFFC00000u,
                           0x7F800001u, 0xFF800001u, 0x7FFFFFFFu, 0xFFFFFFFFu, 0x7FA00000u, 0xFFA00000u,
                           0x00000001u, 0x80000001u, 0x00000002u, 0x003FFFFFu, 0x00400000u, 0x807FFFFFu,
                           0x007FFFFFu, 0x00800000u, 0x80800000u, 0x7F7FFFFFu, 0xFF7FFFFFu, 0x00800001u};
  std::vector<float> v;
  for (uint32_t p : pats) v.push_back(float_of(p));
  return v;
}

// For a format with the non-negative finite values `grid` (ascending), every value, every midpoint
// between neighbours (the ties), the FP32 values one ULP either side of each, a few points past
// the largest value, and all of it negated; plus the special values.
std::vector<float> boundary_points(const std::vector<double>& grid) {
  std::vector<double> centers;
  for (size_t i = 0; i < grid.size(); ++i) {
    centers.push_back(grid[i]);
    if (i + 1 < grid.size()) centers.push_back(0.5 * (grid[i] + grid[i + 1]));
  }
  const double top = grid.back();
  const double step = grid.size() >= 2 ? top - grid[grid.size() - 2] : top;
  for (double f : {0.5, 1.0, 1.5, 2.0, 4.0}) centers.push_back(top + f * step);
  centers.push_back(2.0 * top);
  centers.push_back(std::ldexp(1.0, 100));
  std::vector<float> pts;
  for (double c : centers) {
    if (c > FLT_MAX) continue;  // past the FP32 range (BF16's top); +-inf is among the specials
    const float f = static_cast<float>(c);
    if (static_cast<double>(f) != c) { ADD_FAILURE() << "boundary point not exact in FP32: " << c; }
    for (float p : {f, std::nextafter(f, 0.0f), std::nextafter(f, std::numeric_limits<float>::infinity())}) {
      pts.push_back(p);
      pts.push_back(-p);
    }
  }
  for (float s : special_values()) pts.push_back(s);
  return pts;
}

std::vector<double> grid_values(const sharq_test::Grid& g) {
  std::vector<double> v;
  for (const auto& p : g.pts) v.push_back(p.value);
  return v;
}

std::vector<double> fp16_positive_finite() {  // from the IEEE binary16 definition
  std::vector<double> v;
  for (uint32_t h = 0; h < 0x7C00u; ++h) {
    const int e = static_cast<int>(h >> 10), m = static_cast<int>(h & 0x3FF);
    v.push_back(e == 0 ? std::ldexp(m, -24) : std::ldexp(1.0 + m / 1024.0, e - 15));
  }
  return v;
}
std::vector<double> bf16_positive_finite() {
  std::vector<double> v;
  for (uint32_t h = 0; h < 0x7F80u; ++h) v.push_back(float_of(h << 16));
  return v;
}

// Dense sweep: every `step`-th FP32 bit pattern, both signs, all exponents, NaN and Inf included.
// step = 409 gives 10,501,066 values.
constexpr uint64_t kDenseStep = 409;
template <class F>
void sweep_fp32(uint64_t step, F&& f) {
  for (uint64_t i = 0; i < (uint64_t{1} << 32); i += step) f(float_of(static_cast<uint32_t>(i)));
}

bool same_float(float a, float b) { return std::isnan(a) ? std::isnan(b) : bits_of(a) == bits_of(b); }

// =====================================================================================================
// Sweep self-check: the dense sweep really spans every (sign, exponent) and enough values.
TEST(DenseSweep, CoversEveryExponentAndBothSigns) {
  std::vector<uint32_t> seen(512, 0);
  uint64_t n = 0;
  sweep_fp32(kDenseStep, [&](float x) {
    ++seen[bits_of(x) >> 23];
    ++n;
  });
  EXPECT_GE(n, 10'000'000u);
  for (int i = 0; i < 512; ++i) EXPECT_GT(seen[i], 1000u) << "sign/exponent field " << i << " sparsely covered";
}

// =====================================================================================================
// E2M1
TEST(E2M1, DecodeEveryCodeMatchesSpecTable) {
  const double mags[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};  // SHARQ_SPEC table
  for (int c = 0; c < 16; ++c) {
    const float v = sharq::e2m1_decode(static_cast<uint8_t>(c));
    EXPECT_EQ(static_cast<double>(v), (c & 8) ? -mags[c & 7] : mags[c & 7]) << "code " << c;
    EXPECT_EQ(std::signbit(v), (c & 8) != 0) << "code " << c;  // 0x8 is -0
    EXPECT_EQ(static_cast<double>(sharq::e2m1_magnitude(static_cast<uint8_t>(c & 7))), mags[c & 7]);
  }
}

// The decode uses no subnormal, so a process running with flush-to-zero and denormals-are-zero
// (torch.set_flush_denormal(True), -ffast-math startup code) decodes every code the same way.
TEST(E2M1, DecodeIsUnchangedUnderFlushToZeroAndDenormalsAreZero) {
#if defined(__SSE__) || defined(__x86_64__)
  const unsigned csr = _mm_getcsr();
  float plain[16];
  for (int c = 0; c < 16; ++c) plain[c] = sharq::e2m1_decode(static_cast<uint8_t>(c));
  _mm_setcsr(csr | 0x8040u);  // FTZ (bit 15) | DAZ (bit 6)
  volatile float tiny = std::numeric_limits<float>::denorm_min();
  const bool daz_active = tiny * 2.0f == 0.0f;  // the mode really is on
  uint32_t got[16];
  for (int c = 0; c < 16; ++c) got[c] = sharq::f32_bits(sharq::e2m1_decode(static_cast<uint8_t>(c)));
  _mm_setcsr(csr);
  EXPECT_TRUE(daz_active);
  for (int c = 0; c < 16; ++c) EXPECT_EQ(got[c], sharq::f32_bits(plain[c])) << "code " << c;
#else
  GTEST_SKIP() << "no SSE control register on this target";
#endif
}

TEST(E2M1, EncodeTiesHandChecked) {
  // Ties go to the even code (mantissa bit 0): 0.25 -> 0, 0.75 -> 1, 1.25 -> 1, 1.75 -> 2,
  // 2.5 -> 2, 3.5 -> 4, 5 -> 4.
  struct Case { float x; uint8_t code; };
  const Case cases[] = {{0.25f, 0x0}, {0.75f, 0x2}, {1.25f, 0x2}, {1.75f, 0x4}, {2.5f, 0x4}, {3.5f, 0x6},
                        {5.0f, 0x6},  {-0.25f, 0x8}, {-0.75f, 0xA}, {-5.0f, 0xE}, {0.0f, 0x0}, {-0.0f, 0x8},
                        {6.0f, 0x7},  {6.5f, 0x7},  {7.0f, 0x7},  {1e30f, 0x7}, {-1e30f, 0xF},
                        {std::numeric_limits<float>::infinity(), 0x7}, {-std::numeric_limits<float>::infinity(), 0xF},
                        {std::nextafter(0.25f, 1.0f), 0x1}, {std::nextafter(0.75f, 0.0f), 0x1},
                        {std::nextafter(5.0f, 10.0f), 0x7}, {std::nextafter(2.5f, 10.0f), 0x5}};
  for (const Case& c : cases) EXPECT_EQ(sharq::e2m1_encode(c.x), c.code) << "x = " << c.x;
  EXPECT_EQ(sharq::e2m1_encode(std::numeric_limits<float>::quiet_NaN()), 0x7);  // documented: NaN -> +6
  EXPECT_EQ(sharq::e2m1_encode(-std::numeric_limits<float>::quiet_NaN()), 0x7);
}

TEST(E2M1, EncodeMatchesSlowReferenceAtBoundaries) {
  Mismatches m;
  for (float x : boundary_points(grid_values(sharq_test::e2m1_grid())))
    m.check(x, sharq::e2m1_encode(x), sharq_test::ref_e2m1_encode(x), "e2m1");
  EXPECT_NO_MISMATCH(m);
}

TEST(E2M1, EncodeMatchesSlowReferenceSweep) {
  Mismatches m;
  sweep_fp32(4099, [&](float x) { m.check(x, sharq::e2m1_encode(x), sharq_test::ref_e2m1_encode(x), "e2m1"); });
  EXPECT_NO_MISMATCH(m);
}

// e2m1_encode_thresholds (no division) equals e2m1_encode(v / s). A proof, not a sample: both are
// monotone step functions of |v| (fl(|v| / s) is monotone, and so is each threshold test), so if
// they agree just below and at every threshold m they agree everywhere (on [0, pred(m_1)], between
// consecutive thresholds and above the last, each is pinned by its values at both ends). Checked
// for every positive E4M3 scale (NVFP4's divisors) and for scales across the whole FP32 range,
// subnormal and FLT_MAX included, with both signs of v, plus random (v, s) pairs and the specials.
TEST(E2M1, ThresholdEncodeEqualsDividingByTheScale) {
  std::vector<float> scales;
  for (int c = 1; c < 0x7F; ++c) scales.push_back(sharq::e4m3_decode(static_cast<uint8_t>(c)));
  for (float x : {FLT_MIN, FLT_MAX, std::numeric_limits<float>::denorm_min(), 1.0f, 6.0f, 1.0f / 3.0f, 448.0f * 1e30f})
    scales.push_back(x);
  uint64_t st = 0x9E3779B97F4A7C15ull;
  auto next = [&st] {
    st ^= st << 13;
    st ^= st >> 7;
    st ^= st << 17;
    return st;
  };
  for (int i = 0; i < 20000; ++i) {  // positive finite FP32 scales, every exponent
    const uint32_t b = static_cast<uint32_t>(next() % 0x7f7fffffu) + 1u;
    scales.push_back(float_of(b));
  }
  int64_t checked = 0;
  for (float s : scales) {
    ASSERT_TRUE(s > 0.0f && std::isfinite(s));
    const sharq::E2m1Thresholds t = sharq::e2m1_thresholds(s);
    std::vector<float> points = {0.0f, std::numeric_limits<float>::denorm_min(), FLT_MAX,
                                 std::numeric_limits<float>::infinity()};
    for (float m : t.m) {
      ASSERT_TRUE(m >= 0.0f) << "s = " << s;  // 0: "> 0" (a tiny s)
      points.push_back(m);
      points.push_back(std::nextafter(m, 0.0f));
      if (std::isfinite(m)) points.push_back(std::nextafter(m, std::numeric_limits<float>::infinity()));
    }
    for (float v : points)
      for (float sv : {v, -v}) {
        ASSERT_EQ(sharq::e2m1_encode_thresholds(sv, t), sharq::e2m1_encode(sv / s)) << "v = " << sv << ", s = " << s;
        ++checked;
      }
    for (int i = 0; i < 64; ++i) {  // and random values of every magnitude
      const float v = float_of(static_cast<uint32_t>(next()));
      if (std::isnan(v)) continue;
      ASSERT_EQ(sharq::e2m1_encode_thresholds(v, t), sharq::e2m1_encode(v / s)) << "v = " << v << ", s = " << s;
    }
  }
  EXPECT_GT(checked, 20000 * 50);
  const sharq::E2m1Thresholds t = sharq::e2m1_thresholds(0.5f);
  EXPECT_EQ(sharq::e2m1_encode_thresholds(std::numeric_limits<float>::quiet_NaN(), t), 0x7);
  EXPECT_EQ(sharq::e2m1_encode_thresholds(-std::numeric_limits<float>::quiet_NaN(), t), 0x7);
  // the thresholds of s = 1 are the tie points themselves, moved to where the ties go
  const sharq::E2m1Thresholds one = sharq::e2m1_thresholds(1.0f);
  EXPECT_EQ(one.m[0], 0.25f);  // 0.25 rounds down: > 0.25
  EXPECT_EQ(one.m[1], 0.75f);  // 0.75 rounds up: >= 0.75
  EXPECT_EQ(one.m[6], 5.0f);
}

// The FP32-only thresholds of an E4M3 divisor (the NVFP4 quantizers' form) are bit for bit the
// general form's, for every positive finite E4M3 value (the whole domain: 126 values); and a scale
// that is not an E4M3 value breaks it (so the test can fail): 1 + 2^-22 differs in 5 of the 7.
TEST(E2M1, ThresholdsOfAnE4m3DivisorNeedNoDouble) {
  for (int c = 1; c < 0x7F; ++c) {
    const float s = sharq::e4m3_decode(static_cast<uint8_t>(c));
    const sharq::E2m1Thresholds a = sharq::e2m1_thresholds(s), b = sharq::e2m1_thresholds_e4m3(s);
    for (int i = 0; i < 7; ++i) EXPECT_EQ(bits_of(a.m[i]), bits_of(b.m[i])) << "code 0x" << std::hex << c << " threshold " << i;
  }
  const float off = 0x1.000004p+0f;
  const sharq::E2m1Thresholds a = sharq::e2m1_thresholds(off), b = sharq::e2m1_thresholds_e4m3(off);
  int differ = 0;
  for (int i = 0; i < 7; ++i) differ += bits_of(a.m[i]) != bits_of(b.m[i]);
  EXPECT_EQ(differ, 5);
}

TEST(E2M1, RoundTripEveryCode) {
  for (int c = 0; c < 16; ++c)
    EXPECT_EQ(sharq::e2m1_encode(sharq::e2m1_decode(static_cast<uint8_t>(c))), c) << "code " << c;
}

TEST(CudaE2M1, DecodeEveryCodeBitExact) {
  SHARQ_REQUIRE_CUDA();
  for (int c = 0; c < 16; ++c)
    EXPECT_EQ(bits_of(sharq::e2m1_decode(static_cast<uint8_t>(c))), bits_of(cuda_e2m1_decode(static_cast<uint8_t>(c))))
        << "code " << c;
}

TEST(CudaE2M1, EncodeBoundariesTiesSpecialsBitExact) {
  SHARQ_REQUIRE_CUDA();
  Mismatches m;
  for (float x : boundary_points(grid_values(sharq_test::e2m1_grid()))) m.check(x, sharq::e2m1_encode(x), cuda_e2m1(x), "e2m1");
  EXPECT_NO_MISMATCH(m);
}

TEST(CudaE2M1, EncodeDenseSweepBitExact) {
  SHARQ_REQUIRE_CUDA();
  Mismatches m;
  sweep_fp32(kDenseStep, [&](float x) { m.check(x, sharq::e2m1_encode(x), cuda_e2m1(x), "e2m1"); });
  EXPECT_GE(m.checked, 10'000'000u);
  EXPECT_NO_MISMATCH(m);
}

// =====================================================================================================
// E4M3 / UE4M3
TEST(E4M3, DecodeEveryCodeMatchesDefinition) {
  for (int c = 0; c < 256; ++c) {
    const float v = sharq::e4m3_decode(static_cast<uint8_t>(c));
    const double r = sharq_test::ref_e4m3_value(static_cast<uint8_t>(c));
    if ((c & 0x7F) == 0x7F) {
      EXPECT_TRUE(std::isnan(v)) << "code " << c;
    } else {
      EXPECT_EQ(static_cast<double>(v), r) << "code " << c;
      EXPECT_EQ(std::signbit(v), (c & 0x80) != 0) << "code " << c;
    }
  }
  // Format facts from the spec: max 448, smallest subnormal 2^-9, smallest normal 2^-6.
  EXPECT_EQ(sharq::e4m3_decode(0x7E), 448.0f);
  EXPECT_EQ(sharq::e4m3_decode(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(sharq::e4m3_decode(0x08), std::ldexp(1.0f, -6));
}

TEST(E4M3, EncodeHandChecked) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(sharq::e4m3_encode(448.0f), 0x7E);
  EXPECT_EQ(sharq::e4m3_encode(464.0f), 0x7E);   // would-be tie with 480: SATFINITE
  EXPECT_EQ(sharq::e4m3_encode(1e6f), 0x7E);
  EXPECT_EQ(sharq::e4m3_encode(inf), 0x7E);
  EXPECT_EQ(sharq::e4m3_encode(-inf), 0xFE);
  EXPECT_EQ(sharq::e4m3_encode(std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(sharq::e4m3_encode(std::ldexp(1.0f, -10)), 0x00);                    // tie 0 | 2^-9 -> 0
  EXPECT_EQ(sharq::e4m3_encode(std::nextafter(std::ldexp(1.0f, -10), 1.0f)), 0x01);
  EXPECT_EQ(sharq::e4m3_encode(3.0f * std::ldexp(1.0f, -10)), 0x02);             // tie 1 | 2 -> 2
  EXPECT_EQ(sharq::e4m3_encode(-std::ldexp(1.0f, -11)), 0x80);                   // -0
  EXPECT_EQ(sharq::e4m3_encode(1.0625f), 0x38);                                  // tie 1 | 1.125 -> 1
  EXPECT_EQ(sharq::e4m3_encode(1.1875f), 0x3A);                                  // tie 1.125 | 1.25 -> 1.25
  EXPECT_EQ(sharq::e4m3_encode(15.5f), 0x58);                                    // tie 15 | 16 -> 16 (carry)
  EXPECT_EQ(sharq::e4m3_encode(std::ldexp(15.0f, -10)), 0x08);                   // 7.5*2^-9: subnormal 7|8 -> 8 = 2^-6
}

TEST(E4M3, EncodeMatchesSlowReferenceAtBoundaries) {
  Mismatches m;
  for (float x : boundary_points(grid_values(sharq_test::e4m3_grid())))
    m.check(x, sharq::e4m3_encode(x), sharq_test::ref_e4m3_encode(x), "e4m3");
  EXPECT_NO_MISMATCH(m);
}

TEST(E4M3, EncodeMatchesSlowReferenceSweep) {
  Mismatches m;
  sweep_fp32(4099, [&](float x) { m.check(x, sharq::e4m3_encode(x), sharq_test::ref_e4m3_encode(x), "e4m3"); });
  EXPECT_NO_MISMATCH(m);
}

TEST(E4M3, RoundTripEveryFiniteCode) {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7F) == 0x7F) continue;
    EXPECT_EQ(sharq::e4m3_encode(sharq::e4m3_decode(static_cast<uint8_t>(c))), c) << "code " << c;
  }
}

TEST(UE4M3, IsE4M3OfTheMagnitudeWithSignCleared) {
  for (float x : boundary_points(grid_values(sharq_test::e4m3_grid()))) {
    const uint8_t u = sharq::ue4m3_encode(x);
    EXPECT_EQ(u & 0x80, 0) << x;
    if (std::isnan(x)) { EXPECT_EQ(u, sharq::kUe4m3Nan); }
    else { EXPECT_EQ(u, sharq_test::ref_e4m3_encode(std::fabs(x))) << x; }
  }
  EXPECT_EQ(sharq::kUe4m3Nan, 0x7F);
  EXPECT_EQ(sharq::ue4m3_encode(1e9f), 0x7E);
  EXPECT_EQ(sharq::ue4m3_decode(sharq::ue4m3_encode(1e9f)), 448.0f);  // saturate, no inf
  EXPECT_EQ(sharq::ue4m3_decode(sharq::ue4m3_encode(std::numeric_limits<float>::infinity())), 448.0f);
  EXPECT_EQ(sharq::ue4m3_decode(1), std::ldexp(1.0f, -9));
  EXPECT_TRUE(std::isnan(sharq::ue4m3_decode(sharq::kUe4m3Nan)));
  for (int c = 0; c < 256; ++c)  // the sign bit of a scale code is ignored
    EXPECT_TRUE(same_float(sharq::ue4m3_decode(static_cast<uint8_t>(c)), sharq::e4m3_decode(static_cast<uint8_t>(c & 0x7F))));
}

TEST(CudaE4M3, DecodeEveryCodeBitExact) {
  SHARQ_REQUIRE_CUDA();
  for (int c = 0; c < 256; ++c) {
    const float ours = sharq::e4m3_decode(static_cast<uint8_t>(c)), ref = cuda_e4m3_decode(static_cast<uint8_t>(c));
    EXPECT_TRUE(same_float(ours, ref)) << "code " << c << ": ours " << hex(bits_of(ours)) << ", CUDA " << hex(bits_of(ref));
  }
}

TEST(CudaE4M3, EncodeBoundariesTiesSpecialsBitExact) {
  SHARQ_REQUIRE_CUDA();
  Mismatches m;
  for (float x : boundary_points(grid_values(sharq_test::e4m3_grid()))) m.check(x, sharq::e4m3_encode(x), cuda_e4m3(x), "e4m3");
  EXPECT_NO_MISMATCH(m);
}

TEST(CudaE4M3, EncodeDenseSweepBitExact) {
  SHARQ_REQUIRE_CUDA();
  Mismatches m;
  sweep_fp32(kDenseStep, [&](float x) { m.check(x, sharq::e4m3_encode(x), cuda_e4m3(x), "e4m3"); });
  EXPECT_GE(m.checked, 10'000'000u);
  EXPECT_NO_MISMATCH(m);
}

// =====================================================================================================
// BF16
// ---- x / d by a reciprocal and one correction (quotient_by_reciprocal, row_quotient, ue4m3_div6_code) ----
// Each step of quotient_by_reciprocal (x * r, the remainder FMA, the correction FMA) scales exactly
// with the exponents of x and d while q0 and q are normal and the remainder is exact (it may be
// subnormal near |x| = 2^-100, but its grain, about 2^(e_x - 47), stays >= 2^-149), so the
// significands of x and d decide whether it equals x / d. The tests run every significand pair of each proven set, then
// check the real ranges directly (subnormals, zeros, signs), and show that each guard and the
// correction are needed (negative controls).
float recip_quotient(float x, float d) { return sharq::quotient_by_reciprocal(x, d, 1.0f / d); }

TEST(QuotientByReciprocal, DividesBySixForEverySignificand) {
  EXPECT_EQ(bits_of(sharq::kRecip6), bits_of(1.0f / 6.0f));
  int64_t bad = 0, uncorrected = 0;
  for (const float base : {1.0f, 0x1p-100f, 0x1p+100f}) {
    for (uint32_t m = 0; m < (1u << 23); ++m) {
      const float x = float_of(bits_of(base) | m);
      bad += bits_of(recip_quotient(x, 6.0f)) != bits_of(x / 6.0f);
      uncorrected += bits_of(x * sharq::kRecip6) != bits_of(x / 6.0f);
    }
  }
  EXPECT_EQ(bad, 0);
  EXPECT_GT(uncorrected, 0);  // x * RN(1/6) alone is not the quotient
  // the NVFP4 scale codes over every exponent, subnormal amax included (a stride through all FP32)
  for (uint32_t u = 0; u < 0x7F800000u; u += 97) {
    const float a = float_of(u);
    bad += sharq::e4m3_encode(recip_quotient(a, 6.0f)) != sharq::ue4m3_encode(a / 6.0f);
  }
  EXPECT_EQ(bad, 0);
}

// The GPU prep's x~ = x / g: x an FP16 (BF16) value, g = nvfp4_global_scale(a) for an FP16 (BF16) a.
TEST(QuotientByReciprocal, DividesFp16AndBf16RowValuesByTheirGlobalScales) {
  for (const int mant : {10, 7}) {  // FP16, BF16: every significand of x and of g = RN(a / 2688) (or the clamp)
    std::vector<float> xs, gs{1e-9f};
    for (uint32_t m = 0; m < (1u << mant); ++m) xs.push_back(float_of(0x3F800000u | (m << (23 - mant))));
    for (const float a : xs) gs.push_back(sharq::nvfp4_global_scale(a));
    int64_t bad = 0, uncorrected = 0;
    for (const float g : gs) {
      for (const float x : xs) {
        bad += bits_of(recip_quotient(x, g)) != bits_of(x / g);
        bad += bits_of(recip_quotient(-x, g)) != bits_of(-x / g);
        uncorrected += bits_of(x * (1.0f / g)) != bits_of(x / g);
      }
    }
    EXPECT_EQ(bad, 0) << "mantissa bits " << mant;
    EXPECT_GT(uncorrected, 0) << "mantissa bits " << mant;
  }
  // directly: every finite FP16 value (zeros, subnormals, both signs) unguarded, as the prep's finite
  // FP16 rows use it, against the global scales of a stride of FP16 values
  int64_t bad = 0;
  for (uint32_t ha = 1; ha < 0x7C00u; ha += 97) {
    const float g = sharq::nvfp4_global_scale(sharq::fp16_decode(static_cast<uint16_t>(ha)));
    const float r = 1.0f / g;
    for (uint32_t h = 0; h < 0x10000u; ++h) {
      if ((h & 0x7C00u) == 0x7C00u) continue;  // Inf, NaN: not in a finite row
      const float x = sharq::fp16_decode(static_cast<uint16_t>(h));
      bad += bits_of(sharq::quotient_by_reciprocal(x, g, r)) != bits_of(x / g);
    }
  }
  EXPECT_EQ(bad, 0);
  // every BF16 value (subnormals, Inf, NaN included) through row_quotient's guard; without the guard
  // the subnormal ones differ (the remainder underflows), so the guard is needed
  int64_t unguarded = 0;
  for (uint32_t ha = 1; ha < 0x7F80u; ha += 97) {
    const float g = sharq::nvfp4_global_scale(sharq::bf16_decode(static_cast<uint16_t>(ha)));
    const float r = 1.0f / g;
    for (uint32_t h = 0; h < 0x10000u; ++h) {
      const float x = sharq::bf16_decode(static_cast<uint16_t>(h));
      bad += bits_of(sharq::row_quotient(x, g, r)) != bits_of(x / g);
      unguarded += bits_of(sharq::quotient_by_reciprocal(x, g, r)) != bits_of(x / g);
    }
  }
  EXPECT_EQ(bad, 0);
  EXPECT_GT(unguarded, 0);
}

TEST(BF16, EncodeHandChecked) {
  EXPECT_EQ(sharq::bf16_encode(1.0f), 0x3F80);
  EXPECT_EQ(sharq::bf16_encode(float_of(0x3F808000u)), 0x3F80);  // tie, even stays
  EXPECT_EQ(sharq::bf16_encode(float_of(0x3F818000u)), 0x3F82);  // tie, odd rounds up
  EXPECT_EQ(sharq::bf16_encode(float_of(0x3F808001u)), 0x3F81);
  EXPECT_EQ(sharq::bf16_encode(-0.0f), 0x8000);
  EXPECT_EQ(sharq::bf16_encode(FLT_MAX), 0x7F80);                // rounds past the max: inf
  EXPECT_EQ(sharq::bf16_encode(float_of(0x7F7F7FFFu)), 0x7F7F);
  EXPECT_EQ(sharq::bf16_encode(float_of(0x00000001u)), 0x0000);
  EXPECT_EQ(sharq::bf16_encode(float_of(0x00008000u)), 0x0000);  // tie to even among subnormals
  EXPECT_EQ(sharq::bf16_encode(float_of(0x00018000u)), 0x0002);
  EXPECT_EQ(sharq::bf16_encode(std::numeric_limits<float>::quiet_NaN()), 0x7FFF);
  EXPECT_EQ(sharq::bf16_encode(float_of(0xFF800001u)), 0x7FFF);
  EXPECT_EQ(sharq::bf16_encode(-std::numeric_limits<float>::infinity()), 0xFF80);
}

TEST(BF16, EncodeMatchesSlowReferenceAtEveryTie) {
  Mismatches m;
  for (float x : boundary_points(bf16_positive_finite())) m.check(x, sharq::bf16_encode(x), sharq_test::ref_bf16_encode(x), "bf16");
  EXPECT_GT(m.checked, 190'000u);
  EXPECT_NO_MISMATCH(m);
}

TEST(BF16, DecodeIsTheHighHalfOfFp32) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float v = sharq::bf16_decode(static_cast<uint16_t>(h));
    if (std::isnan(float_of(h << 16))) { EXPECT_TRUE(std::isnan(v)); }
    else { EXPECT_EQ(bits_of(v), h << 16) << h; }
    if (!std::isnan(v)) { EXPECT_EQ(sharq::bf16_encode(v), h) << h; }  // round trip
  }
}

TEST(CudaBF16, DecodeEveryCodeBitExact) {
  SHARQ_REQUIRE_CUDA();
  int bad = 0;
  for (uint32_t h = 0; h < 65536; ++h) {
    const float ours = sharq::bf16_decode(static_cast<uint16_t>(h)), ref = cuda_bf16_decode(static_cast<uint16_t>(h));
    if (!same_float(ours, ref) && ++bad <= 8) { ADD_FAILURE() << "bf16 code " << h << ": ours " << hex(bits_of(ours)) << " CUDA " << hex(bits_of(ref)); }
  }
  EXPECT_EQ(bad, 0);
}

TEST(CudaBF16, EncodeAtEveryTieBitExact) {
  SHARQ_REQUIRE_CUDA();
  Mismatches m;
  for (float x : boundary_points(bf16_positive_finite())) m.check(x, sharq::bf16_encode(x), cuda_bf16(x), "bf16");
  EXPECT_NO_MISMATCH(m);
}

TEST(CudaBF16, EncodeDenseSweepBitExact) {
  SHARQ_REQUIRE_CUDA();
  Mismatches m;
  sweep_fp32(kDenseStep, [&](float x) { m.check(x, sharq::bf16_encode(x), cuda_bf16(x), "bf16"); });
  EXPECT_GE(m.checked, 10'000'000u);
  EXPECT_NO_MISMATCH(m);
}

// =====================================================================================================
// FP16
TEST(FP16, EncodeHandChecked) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(sharq::fp16_encode(1.0f), 0x3C00);
  EXPECT_EQ(sharq::fp16_encode(1.0f + std::ldexp(1.0f, -11)), 0x3C00);       // tie, even stays
  EXPECT_EQ(sharq::fp16_encode(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);   // tie, odd rounds up
  EXPECT_EQ(sharq::fp16_encode(65504.0f), 0x7BFF);
  EXPECT_EQ(sharq::fp16_encode(std::nextafter(65520.0f, 0.0f)), 0x7BFF);
  EXPECT_EQ(sharq::fp16_encode(65520.0f), 0x7C00);                            // tie 65504 | 2^16 -> inf
  EXPECT_EQ(sharq::fp16_encode(-65520.0f), 0xFC00);
  EXPECT_EQ(sharq::fp16_encode(1e10f), 0x7C00);
  EXPECT_EQ(sharq::fp16_encode(inf), 0x7C00);
  EXPECT_EQ(sharq::fp16_encode(-inf), 0xFC00);
  EXPECT_EQ(sharq::fp16_encode(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(sharq::fp16_encode(std::ldexp(1.0f, -25)), 0x0000);               // tie 0 | 2^-24 -> 0
  EXPECT_EQ(sharq::fp16_encode(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(sharq::fp16_encode(3 * std::ldexp(1.0f, -25)), 0x0002);
  EXPECT_EQ(sharq::fp16_encode(std::ldexp(1.0f, -14) - std::ldexp(1.0f, -25)), 0x0400);  // carry into normal
  EXPECT_EQ(sharq::fp16_encode(-std::ldexp(1.0f, -26)), 0x8000);
  EXPECT_EQ(sharq::fp16_encode(std::numeric_limits<float>::quiet_NaN()), 0x7FFF);
}

TEST(FP16, DecodeEveryCodeRoundTrips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float v = sharq::fp16_decode(static_cast<uint16_t>(h));
    const bool nan_code = (h & 0x7C00u) == 0x7C00u && (h & 0x3FFu) != 0;
    EXPECT_EQ(std::isnan(v), nan_code) << h;
    if (!nan_code) { EXPECT_EQ(sharq::fp16_encode(v), h) << h; }
  }
  EXPECT_EQ(sharq::fp16_decode(0x7BFF), 65504.0f);
  EXPECT_EQ(sharq::fp16_decode(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(sharq::fp16_decode(0x0400), std::ldexp(1.0f, -14));
  EXPECT_EQ(sharq::fp16_decode(0x7C00), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::signbit(sharq::fp16_decode(0x8000)));
}

#if defined(__FLT16_MAX__)
// The compiler's own _Float16 conversion (IEEE RNE) is a second, CUDA-free FP16 reference.
uint16_t float16_ref(float x) {
  const _Float16 h = static_cast<_Float16>(x);
  uint16_t u;
  std::memcpy(&u, &h, sizeof u);
  return u;
}
TEST(FP16, EncodeMatchesCompilerFloat16AtEveryTieAndSweep) {
  Mismatches m;
  auto check = [&](float x) {
    if (std::isnan(x)) return;  // NaN payloads are not specified by IEEE conversions
    m.check(x, sharq::fp16_encode(x), float16_ref(x), "fp16");
  };
  for (float x : boundary_points(fp16_positive_finite())) check(x);
  sweep_fp32(4099, check);
  EXPECT_NO_MISMATCH(m);
}
#endif

TEST(CudaFP16, DecodeEveryCodeBitExact) {
  SHARQ_REQUIRE_CUDA();
  int bad = 0;
  for (uint32_t h = 0; h < 65536; ++h) {
    const float ours = sharq::fp16_decode(static_cast<uint16_t>(h)), ref = cuda_fp16_decode(static_cast<uint16_t>(h));
    if (!same_float(ours, ref) && ++bad <= 8) { ADD_FAILURE() << "fp16 code " << h << ": ours " << hex(bits_of(ours)) << " CUDA " << hex(bits_of(ref)); }
  }
  EXPECT_EQ(bad, 0);
}

TEST(CudaFP16, EncodeAtEveryTieBitExact) {
  SHARQ_REQUIRE_CUDA();
  Mismatches m;
  for (float x : boundary_points(fp16_positive_finite())) m.check(x, sharq::fp16_encode(x), cuda_fp16(x), "fp16");
  EXPECT_GT(m.checked, 180'000u);
  EXPECT_NO_MISMATCH(m);
}

TEST(CudaFP16, EncodeDenseSweepBitExact) {
  SHARQ_REQUIRE_CUDA();
  Mismatches m;
  sweep_fp32(kDenseStep, [&](float x) { m.check(x, sharq::fp16_encode(x), cuda_fp16(x), "fp16"); });
  EXPECT_GE(m.checked, 10'000'000u);
  EXPECT_NO_MISMATCH(m);
}

// =====================================================================================================
// UE8M0 and the MX shared exponent
TEST(UE8M0, DecodeEveryCode) {
  for (int c = 0; c < 256; ++c) {
    const float v = sharq::ue8m0_decode(static_cast<uint8_t>(c));
    if (c == 0xFF) { EXPECT_TRUE(std::isnan(v)); }
    else { EXPECT_EQ(static_cast<double>(v), std::ldexp(1.0, c - 127)) << "code " << c; }  // 2^-127 is an FP32 subnormal
  }
  EXPECT_EQ(sharq::kUe8m0Nan, 0xFF);
}

TEST(UE8M0, SharedExponentIsFloorLog2MinusTwoClamped) {
  // OCP MX v1.0: X = 2^(floor(log2 amax) - emax_E2M1), emax_E2M1 = 2, clamped to [-127, 127].
  // std::ilogb is exact floor(log2) for every finite nonzero float, subnormals included.
  Mismatches m;
  auto check = [&](float x) {
    const float a = std::fabs(x);
    if (!std::isfinite(a) || a == 0.0f) return;
    int e = std::ilogb(a) - 2;
    e = e < -127 ? -127 : (e > 127 ? 127 : e);
    m.check(a, sharq::ue8m0_for_e2m1_block(a), e + 127, "ue8m0_for_e2m1_block");
    if (std::fpclassify(a) == FP_NORMAL) m.check(a, sharq::floor_log2_pos(a), std::ilogb(a), "floor_log2_pos");
    else m.check(a, sharq::floor_log2_pos(a) < -126, true, "floor_log2_pos(subnormal) < -126");
  };
  sweep_fp32(kDenseStep * 4 + 2, check);
  for (float x : special_values()) check(x);
  for (int e = -149; e <= 127; ++e) {
    const float p = std::ldexp(1.0f, e);
    check(p);
    check(std::nextafter(p, 0.0f));
    check(std::nextafter(p, std::numeric_limits<float>::infinity()));
  }
  EXPECT_NO_MISMATCH(m);
  EXPECT_EQ(sharq::ue8m0_for_e2m1_block(6.0f), 127);   // 2^(2-2) = 1
  EXPECT_EQ(sharq::ue8m0_for_e2m1_block(4.0f), 127);
  EXPECT_EQ(sharq::ue8m0_for_e2m1_block(3.99f), 126);
  EXPECT_EQ(sharq::ue8m0_for_e2m1_block(FLT_MAX), 252);  // 2^(127-2)
  EXPECT_EQ(sharq::ue8m0_for_e2m1_block(float_of(1)), 0);
}

TEST(CudaUE8M0, DecodeEveryCodeBitExact) {
  SHARQ_REQUIRE_CUDA();
  for (int c = 0; c < 256; ++c) {
    const float ours = sharq::ue8m0_decode(static_cast<uint8_t>(c)), ref = cuda_ue8m0_decode(static_cast<uint8_t>(c));
    EXPECT_TRUE(same_float(ours, ref)) << "code " << c << ": ours " << hex(bits_of(ours)) << ", CUDA " << hex(bits_of(ref));
  }
}

TEST(CudaUE8M0, SharedExponentMatchesRoundTowardZeroE8M0MinusTwo) {
  SHARQ_REQUIRE_CUDA();
  // For a normal amax, CUDA's RZ e8m0 conversion is floor(log2 amax) + 127; the MX scale code is
  // two less, clamped at 0 (2^-127).
  Mismatches m;
  sweep_fp32(kDenseStep * 4 + 2, [&](float x) {
    const float a = std::fabs(x);
    if (std::fpclassify(a) != FP_NORMAL) return;
    const int cuda = cuda_e8m0_rz(a) - 2;
    m.check(a, sharq::ue8m0_for_e2m1_block(a), cuda < 0 ? 0 : cuda, "ue8m0_for_e2m1_block");
  });
  EXPECT_NO_MISMATCH(m);
}

// =====================================================================================================
// E6M2 (HiF4 level-1 scale): no CUDA counterpart, checked against the slow reference.
TEST(E6M2, DecodeEveryCode) {
  for (int c = 0; c < 256; ++c) {
    const float v = sharq::e6m2_decode(static_cast<uint8_t>(c));
    if (c == 0xFF) {
      EXPECT_TRUE(std::isnan(v)) << "reserved code 0xFF must decode to NaN";
    } else {
      const int e = (c >> 2) - 48, mm = c & 3;
      EXPECT_EQ(static_cast<double>(v), std::ldexp(1.0 + mm / 4.0, e)) << "code " << c;
    }
  }
  EXPECT_EQ(sharq::kE6m2Nan, 0xFF);
  EXPECT_EQ(sharq::kE6m2Max, 0xFE);
  EXPECT_EQ(sharq::e6m2_decode(0), std::ldexp(1.0f, -48));
  EXPECT_EQ(sharq::e6m2_decode(sharq::kE6m2Max), 49152.0f);  // 2^15 * 1.5
}

TEST(E6M2, EncodeHandChecked) {
  const float inf = std::numeric_limits<float>::infinity();
  const float min = std::ldexp(1.0f, -48);
  EXPECT_EQ(sharq::e6m2_encode(0.0f), 0);                    // no zero: minimum 2^-48
  EXPECT_EQ(sharq::e6m2_encode(-0.0f), 0);
  EXPECT_EQ(sharq::e6m2_encode(min), 0);
  EXPECT_EQ(sharq::e6m2_encode(std::nextafter(min, 0.0f)), 0);
  EXPECT_EQ(sharq::e6m2_encode(float_of(1)), 0);             // FP32 subnormal
  EXPECT_EQ(sharq::e6m2_encode(min * 1.125f), 0);            // tie 1 | 1.25 -> even mantissa 0
  EXPECT_EQ(sharq::e6m2_encode(std::nextafter(min * 1.125f, 1.0f)), 1);
  EXPECT_EQ(sharq::e6m2_encode(1.0f), 48 << 2);
  EXPECT_EQ(sharq::e6m2_encode(1.375f), (48 << 2) | 2);      // tie 1.25 | 1.5 -> 1.5
  EXPECT_EQ(sharq::e6m2_encode(1.875f), 49 << 2);            // tie 1.75 | 2 -> 2 (carry)
  EXPECT_EQ(sharq::e6m2_encode(49152.0f), 0xFE);
  EXPECT_EQ(sharq::e6m2_encode(53248.0f), 0xFE);             // tie 1.5 | reserved 1.75 at 2^15
  EXPECT_EQ(sharq::e6m2_encode(57344.0f), 0xFE);             // 2^15 * 1.75: reserved code, saturate
  EXPECT_EQ(sharq::e6m2_encode(65536.0f), 0xFE);
  EXPECT_EQ(sharq::e6m2_encode(FLT_MAX), 0xFE);
  EXPECT_EQ(sharq::e6m2_encode(inf), sharq::kE6m2Nan);
  EXPECT_EQ(sharq::e6m2_encode(-inf), sharq::kE6m2Nan);
  EXPECT_EQ(sharq::e6m2_encode(std::numeric_limits<float>::quiet_NaN()), sharq::kE6m2Nan);
  EXPECT_EQ(sharq::e6m2_encode(-3.0f), sharq::e6m2_encode(3.0f));  // unsigned: encodes |x|
}

TEST(E6M2, EncodeMatchesSlowReferenceAtBoundaries) {
  Mismatches m;
  for (float x : boundary_points(grid_values(sharq_test::e6m2_grid())))
    m.check(x, sharq::e6m2_encode(x), sharq_test::ref_e6m2_encode(x), "e6m2");
  EXPECT_NO_MISMATCH(m);
}

TEST(E6M2, EncodeMatchesSlowReferenceDenseSweep) {
  Mismatches m;
  uint64_t finite_reserved = 0;
  sweep_fp32(kDenseStep, [&](float x) {
    const uint8_t c = sharq::e6m2_encode(x);
    if (std::isfinite(x) && c == sharq::kE6m2Nan) ++finite_reserved;
    m.check(x, c, sharq_test::ref_e6m2_encode(x), "e6m2");
  });
  EXPECT_GE(m.checked, 10'000'000u);
  EXPECT_NO_MISMATCH(m);
  EXPECT_EQ(finite_reserved, 0u) << "a finite input produced the reserved code 0xFF";
}

TEST(E6M2, RoundTripEveryCode) {
  for (int c = 0; c < 0xFF; ++c)
    EXPECT_EQ(sharq::e6m2_encode(sharq::e6m2_decode(static_cast<uint8_t>(c))), c) << "code " << c;
}

// =====================================================================================================
// S1P2 (HiF4 element)
TEST(S1P2, DecodeEveryCode) {
  for (int c = 0; c < 16; ++c) {
    const float v = sharq::s1p2_decode(static_cast<uint8_t>(c));
    EXPECT_EQ(static_cast<double>(v), ((c & 8) ? -1.0 : 1.0) * (c & 7) * 0.25) << "code " << c;
    EXPECT_EQ(std::signbit(v), (c & 8) != 0) << "code " << c;
    EXPECT_EQ(sharq::s1p2_encode(v), c) << "round trip, code " << c;
  }
}

TEST(S1P2, EncodeHandChecked) {
  EXPECT_EQ(sharq::s1p2_encode(0.125f), 0);   // tie 0 | 0.25 -> 0
  EXPECT_EQ(sharq::s1p2_encode(0.375f), 2);   // tie 0.25 | 0.5 -> 0.5
  EXPECT_EQ(sharq::s1p2_encode(1.625f), 6);   // tie 1.5 | 1.75 -> 1.5
  EXPECT_EQ(sharq::s1p2_encode(std::nextafter(1.625f, 2.0f)), 7);
  EXPECT_EQ(sharq::s1p2_encode(1.75f), 7);
  EXPECT_EQ(sharq::s1p2_encode(1.875f), 7);
  EXPECT_EQ(sharq::s1p2_encode(100.0f), 7);
  EXPECT_EQ(sharq::s1p2_encode(-100.0f), 0xF);
  EXPECT_EQ(sharq::s1p2_encode(std::numeric_limits<float>::infinity()), 7);
  EXPECT_EQ(sharq::s1p2_encode(-std::numeric_limits<float>::infinity()), 0xF);
  EXPECT_EQ(sharq::s1p2_encode(-0.0f), 0x8);
  EXPECT_EQ(sharq::s1p2_encode(-0.1f), 0x8);
  EXPECT_EQ(sharq::s1p2_encode(std::numeric_limits<float>::quiet_NaN()), 0x7);
  EXPECT_EQ(sharq::s1p2_encode(-std::numeric_limits<float>::quiet_NaN()), 0x7);
}

TEST(S1P2, EncodeMatchesSlowReferenceAtBoundaries) {
  Mismatches m;
  for (float x : boundary_points(grid_values(sharq_test::s1p2_grid())))
    m.check(x, sharq::s1p2_encode(x), sharq_test::ref_s1p2_encode(x), "s1p2");
  EXPECT_NO_MISMATCH(m);
}

TEST(S1P2, EncodeMatchesSlowReferenceDenseSweep) {
  Mismatches m;
  sweep_fp32(kDenseStep, [&](float x) { m.check(x, sharq::s1p2_encode(x), sharq_test::ref_s1p2_encode(x), "s1p2"); });
  EXPECT_GE(m.checked, 10'000'000u);
  EXPECT_NO_MISMATCH(m);
}

// =====================================================================================================
// Exactness facts the GEMM paths rely on: an E2M1 value times a UE4M3 scale is exact in FP32, and
// unchanged by a round trip through FP16 and BF16; when nonzero it lies in [2^-10, 2688].
TEST(Exactness, E2M1TimesUE4M3IsExactInFp16AndBf16) {
  double min_nz = INFINITY, max_nz = 0;
  for (int c = 0; c < 16; ++c) {
    for (int s = 0; s <= 0x7E; ++s) {
      const float q = sharq::e2m1_decode(static_cast<uint8_t>(c)), sc = sharq::ue4m3_decode(static_cast<uint8_t>(s));
      const float p = q * sc;
      const double exact = sharq_test::ref_e2m1_value(static_cast<uint8_t>(c)) * sharq_test::ref_e4m3_value(static_cast<uint8_t>(s));
      ASSERT_EQ(static_cast<double>(p), exact) << "c " << c << " s " << s;
      EXPECT_EQ(bits_of(sharq::round_fp16(p)), bits_of(p)) << "c " << c << " s " << s;
      EXPECT_EQ(bits_of(sharq::round_bf16(p)), bits_of(p)) << "c " << c << " s " << s;
      if (kHaveCuda) {
        EXPECT_EQ(bits_of(cuda_fp16_decode(cuda_fp16(p))), bits_of(p)) << "CUDA fp16, c " << c << " s " << s;
        EXPECT_EQ(bits_of(cuda_bf16_decode(cuda_bf16(p))), bits_of(p)) << "CUDA bf16, c " << c << " s " << s;
      }
      if (p != 0.0f) {
        min_nz = std::min(min_nz, std::fabs(exact));
        max_nz = std::max(max_nz, std::fabs(exact));
        EXPECT_GE(std::fabs(exact), std::ldexp(1.0, -10));
        EXPECT_LE(std::fabs(exact), 2688.0);
      }
    }
  }
  EXPECT_EQ(min_nz, std::ldexp(1.0, -10));  // 0.5 * 2^-9: the bound is attained
  EXPECT_EQ(max_nz, 2688.0);                // 6 * 448
}

}  // namespace
