// Element and scale codecs: E2M1, E4M3/UE4M3, UE8M0, E6M2, S1P2, BF16, FP16.
//
// One implementation for host and device (SHARQ_HD). The rounding and saturation rules are the
// contract of ../shared/docs/SHARQ_SPEC.md; E2M1, E4M3, BF16 and FP16 are bit-exact with CUDA's
// cuda_fp4.h / cuda_fp8.h / cuda_fp16.h / cuda_bf16.h host conversions (tests/formats).
//
// Rounding to an integer grid is done with the "magic number" trick (x + 2^23) - 2^23, which is
// round-to-nearest-even in IEEE FP32 for 0 <= x < 2^22 on every target, and needs no rounding-mode
// state. These TUs are compiled with -ffp-contract=off so that no FMA changes a rounding.
#pragma once

#include "sharq/core/hd.h"

namespace sharq {

// ---------------------------------------------------------------------------------------------
// E2M1 (FP4): s | e2 | m1, values +-{0, 0.5, 1, 1.5, 2, 3, 4, 6}. Code bit 3 is the sign.
// Encode: RNE, saturate to +-6. NaN encodes to 0x7 (+6) whatever its sign, as CUDA does; the block
// quantizers never feed NaN here (a non-finite block gets a NaN scale instead).
SHARQ_HD uint8_t e2m1_encode(float x) {
  if (is_nan(x)) return 0x7;
  const uint8_t sign = (f32_bits(x) >> 28) & 0x8;
  const float a = abs_f32(x);
  // Decision thresholds are the midpoints; at a tie the even code (mantissa bit 0) wins, which
  // gives ">" at 0.25, 1.25, 2.5, 5 and ">=" at 0.75, 1.75, 3.5.
  const uint8_t mag = static_cast<uint8_t>((a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f) +
                                           (a > 2.5f) + (a >= 3.5f) + (a > 5.0f));
  return sign | mag;
}

// E2M1 codes of v / s without a division (the NVFP4 quantizers' per-element step; IEEE FP32
// division is the most expensive instruction sequence of the GPU prep). e2m1_encode(fl(v / s))
// compares fl(x), x = |v| / s (real), with seven thresholds T: "> 0.25", ">= 0.75", "> 1.25",
// ">= 1.75", "> 2.5", ">= 3.5", "> 5". Every T has a 0 last mantissa bit (ties round to it), so
//     fl(x) >  T  <=>  x >  T + ulp(T) / 2        fl(x) >= T  <=>  x >= T - ulp(T) / 2
// (no T is a power of two where ">=" is used, so the ulp below T is ulp(T)). With P = s * (T +-
// ulp(T) / 2), exact in double (a 24-bit s times a 25-bit constant), and FP32 |v|:
//     |v| > P  <=>  |v| > RD(P)                    |v| >= P  <=>  |v| >= RU(P)
// so each comparison becomes one against an FP32 m, computed once per divisor: m[0], m[2], m[4],
// m[6] are the largest |v| that still round down (the code needs |v| > m), m[1], m[3], m[5] the
// smallest that round up (|v| >= m). Equal to e2m1_encode(v / s) for every FP32 v and every finite
// s > 0 (tests/formats: both sides are monotone in |v|, so the codes at pred(m), m and succ(m) for
// each m prove it; plus sweeps). NaN v -> 0x7, as e2m1_encode(NaN).
struct E2m1Thresholds {
  float m[7];
};

namespace detail {
// RD / RU of a positive finite double to FP32 (the host's and the device's RNE conversion, then
// one step toward the bound: no rounding-mode state).
SHARQ_HD float f32_round_down(double d) {
  const float f = static_cast<float>(d);
  return static_cast<double>(f) > d ? f32_from_bits(f32_bits(f) - 1u) : f;
}
SHARQ_HD float f32_round_up(double d) {
  const float f = static_cast<float>(d);
  return static_cast<double>(f) < d ? f32_from_bits(f32_bits(f) + 1u) : f;
}
}  // namespace detail

SHARQ_HD E2m1Thresholds e2m1_thresholds(float s) {
  // T +- ulp(T)/2: 0.25 + 2^-26, 0.75 - 2^-25, 1.25 + 2^-24, 1.75 - 2^-24, 2.5 + 2^-23, 3.5 - 2^-23, 5 + 2^-22
  constexpr double kAbove[4] = {0.25 + 0x1p-26, 1.25 + 0x1p-24, 2.5 + 0x1p-23, 5.0 + 0x1p-22};
  constexpr double kAtLeast[3] = {0.75 - 0x1p-25, 1.75 - 0x1p-24, 3.5 - 0x1p-23};
  const double sd = static_cast<double>(s);
  E2m1Thresholds t{};
  for (int i = 0; i < 4; ++i) t.m[2 * i] = detail::f32_round_down(sd * kAbove[i]);
  for (int i = 0; i < 3; ++i) t.m[2 * i + 1] = detail::f32_round_up(sd * kAtLeast[i]);
  return t;
}

// The same thresholds for a divisor that is a positive E4M3 value (NVFP4's divisors: ue4m3_decode of
// a block scale, or 1), in FP32 alone: s * T, seven products. No double multiply and no FP32 <-> FP64
// conversion, which ran on the GPU's slow FP64 pipe seven times per block. Why it is equal: write
// s = S 2^e and T = t 2^f with S, t in [1, 2). s has at most 4 significant bits (1.mmm) and every T
// at most 3, so A = s T is exact in FP32 and normal (A >= 2^-9 * 0.25). The offset B = s ulp(T) / 2 =
// S 2^(e+f-24) is below 2^(e+f-23) <= ulp(A). Hence RD(A + B) = A for an "above" threshold. And
// RU(A - B) = A, because A is never a power of two for the ">=" constants 0.75, 1.75 and 3.5: A = 2^k
// would need s = 2^k / 1.5 or 2^k / 1.75, which have more than 4 bits. tests/formats checks it
// against e2m1_thresholds for all 126 positive E4M3 values.
SHARQ_HD E2m1Thresholds e2m1_thresholds_e4m3(float s) {
  return E2m1Thresholds{{s * 0.25f, s * 0.75f, s * 1.25f, s * 1.75f, s * 2.5f, s * 3.5f, s * 5.0f}};
}

// The same code for a v that is not NaN (the caller knows: a block with a NaN gets the NaN scale
// and all-zero codes before any element is encoded). The magnitude is the number of thresholds
// |v| passes; for every finite s > 0 (the only divisors: a zero divisor means all-zero codes and
// never gets here) the thresholds are nondecreasing, so a three-step binary search finds it (three
// compares instead of seven: the GPU prep's hottest step).
// The search itself, on a = |v|: the three decisions, the magnitude code's bits 2, 1, 0 (the GPU prep
// selects the dequantized value from them directly).
struct E2m1Search {
  bool b2, b1, b0;
  SHARQ_HD uint32_t mag() const { return (b2 ? 4u : 0u) | (b1 ? 2u : 0u) | (b0 ? 1u : 0u); }
};
SHARQ_HD E2m1Search e2m1_search(float a, const E2m1Thresholds& t) {
  E2m1Search s;
  s.b2 = a >= t.m[3];
  s.b1 = a >= (s.b2 ? t.m[5] : t.m[1]);
  s.b0 = a > (s.b2 ? (s.b1 ? t.m[6] : t.m[4]) : (s.b1 ? t.m[2] : t.m[0]));
  return s;
}
SHARQ_HD uint8_t e2m1_encode_thresholds_nonnan(float v, const E2m1Thresholds& t) {
  const uint32_t sign = (f32_bits(v) >> 28) & 0x8u;
  return static_cast<uint8_t>(sign | e2m1_search(abs_f32(v), t).mag());
}

SHARQ_HD uint8_t e2m1_encode_thresholds(float v, const E2m1Thresholds& t) {
  return is_nan(v) ? uint8_t{0x7} : e2m1_encode_thresholds_nonnan(v, t);
}

SHARQ_HD float e2m1_magnitude(uint8_t code3) {
  // 0, 0.5, 1, 1.5, 2, 3, 4, 6 without a branch or a memory table: twice the value is a nibble of
  // 0xC8643210, made a float by the magic-number trick (2^23 + n - 2^23, exact) and halved (exact).
  // No subnormal is involved anywhere, so flush-to-zero / denormals-are-zero modes cannot change it.
  const uint32_t twice = (0xC8643210u >> (4u * (code3 & 0x7u))) & 0xFu;
  return (f32_from_bits(0x4B000000u | twice) - 8388608.0f) * 0.5f;
}

SHARQ_HD float e2m1_decode(uint8_t code) {
  // e2m1_magnitude with the sign as FP32 bit 31 (code 0x8 is -0, as negating +0 gives)
  return f32_from_bits(f32_bits(e2m1_magnitude(code)) | (static_cast<uint32_t>(code & 0x8) << 28));
}

// ---------------------------------------------------------------------------------------------
// E4M3 (OCP FP8, "fn" variant): bias 7, max 448, subnormals m/8 * 2^-6, 0x7F/0xFF = NaN, no Inf.
// Encode = __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3): RNE, +-Inf and overflow saturate
// to +-448, NaN -> 0x7F.
SHARQ_HD uint8_t e4m3_encode(float x) {
  const uint32_t sign = (f32_bits(x) >> 24) & 0x80u;
  const float a = abs_f32(x);
  // Both ranges are computed and one is selected (no branch: the GPU prep runs this per block).
  // Normal (a >= 2^-6): round the FP32 mantissa to 3 bits (RNE) with carry; u is then the 8-bit FP32
  // exponent << 3 | the 3-bit mantissa, and the E4M3 code is u - (120 << 3) (bias 127 -> 7). Past
  // 448 (exponent 2^9 and up, +Inf included) it saturates to 0x7E (SATFINITE).
  uint32_t u = f32_bits(a);
  u += 0x7FFFFu + ((u >> 20) & 1u);
  u >>= 20;
  const uint32_t normal = u - 960u < 0x7Eu ? u - 960u : 0x7Eu;  // u >= 968 wherever it is selected
  // Subnormal (a < 2^-6): multiples of 2^-9, 0..8 (8 is 2^-6); a is clamped so that the magic-number
  // rounding stays exact where this side is not selected
  const float as = a < 0.015625f ? a : 0.015625f;
  const uint32_t sub = static_cast<uint32_t>((as * 512.0f + 8388608.0f) - 8388608.0f);
  const uint32_t mag = a >= 0.015625f ? normal : sub;
  return is_nan(x) ? uint8_t{0x7F} : static_cast<uint8_t>(sign | mag);
}

SHARQ_HD float e4m3_decode(uint8_t code) {
  // branch-free, as the encode: normal codes are the FP32 bits (code << 20) re-biased by 120 << 23,
  // subnormal ones m * 2^-9 (the magic-number integer to float, exact); 0x7F / 0xFF are NaN
  const uint32_t c = code & 0x7Fu, m = c & 7u;
  const float normal = f32_from_bits((c << 20) + (120u << 23));
  const float sub = (f32_from_bits(0x4B000000u | m) - 8388608.0f) * 0.001953125f;
  const float mag = (c >> 3) != 0 ? normal : sub;
  const float v = f32_from_bits(f32_bits(mag) | (static_cast<uint32_t>(code & 0x80u) << 24));
  return c == 0x7Fu ? f32_from_bits(0x7FC00000u) : v;
}

// UE4M3: the NVFP4 scale. E4M3 restricted to non-negative inputs (callers pass amax/6 >= 0), so
// the sign bit is always 0 and 0x7F is the NaN scale that marks a non-finite block.
SHARQ_HD uint8_t ue4m3_encode(float x) { return e4m3_encode(abs_f32(x)) & 0x7F; }
SHARQ_HD float ue4m3_decode(uint8_t code) { return e4m3_decode(code & 0x7F); }
inline constexpr uint8_t kUe4m3Nan = 0x7F;

// ---------------------------------------------------------------------------------------------
// x / d for a divisor used many times, without the IEEE division (on the GPU a dozen instructions
// around a divergent slow path, per element in the prep): q0 = RN(x * r) with r = RN(1 / d), then one
// Markstein correction q = RN(q0 + RN(x - q0 d) r) (two FMAs; the remainder is exact). The sign of x
// is ORed in so that -0 / d stays -0 (the correction turns a -0 into +0; d > 0 everywhere here).
// Markstein's theorem makes q the correctly rounded x / d when q0 is a faithful quotient, which
// RN(x * r) is not for every x and d; so this is NOT a general division. It is proven equal to x / d
// for the inputs the callers give it (tests/formats, exhaustively over their significands):
//   - d = 6 and every FP32 x >= 2^-100 (the NVFP4 scale's amax / 6, ue4m3_div6_code; below 2^-100 it
//     can differ, e.g. x = 9 * 2^-149, but the scale code is 0 either way);
//   - x an FP16 or a BF16 value, d = nvfp4_global_scale(a) for a in the same format (the GPU prep's
//     x / g), with |x| >= 2^-100 and |q| >= 2^-99 (or x = +-0) and x finite.
// Why the significands decide: in these ranges q0 and q are normal and the remainder x - q0 d is exact
// (it may be subnormal near |x| = 2^-100, but its grain, about 2^(e_x - 47), is still >= 2^-149), so
// every step scales with the exponents of x and d. An FP16 x is never below 2^-24, nor x / g below
// 2^-29. Callers whose inputs leave these sets divide.
SHARQ_HD float quotient_by_reciprocal(float x, float d, float r) {
  const float q0 = x * r;
  const float q = fma_f32(fma_f32(-q0, d, x), r, q0);
  return f32_from_bits(f32_bits(q) | (f32_bits(x) & 0x80000000u));
}
inline constexpr float kRecip6 = 1.0f / 6.0f;  // RN(1 / 6)

// quotient_by_reciprocal where its proof holds for an FP16 or a BF16 x (nonzero: |x| >= 2^-100 and
// |x / d| >= 2^-99; or x = +-0), x / d elsewhere (BF16 values below 2^-100, quotients below 2^-99,
// NaN, Inf: a branch that finite FP16 values never take).
SHARQ_HD float row_quotient(float x, float d, float r) {
  const float q = quotient_by_reciprocal(x, d, r);
  const float ax = abs_f32(x);
  const bool proven = ax == 0.0f || (ax >= 0x1p-100f && ax <= 3.40282347e38f && abs_f32(q) >= 0x1p-99f);
  return proven ? q : x / d;
}

// The NVFP4 block scale code of a finite amax >= 0: ue4m3_encode(amax / 6). The device takes amax / 6
// by its reciprocal (quotient_by_reciprocal: equal for every amax >= 2^-100, tests/formats); below
// 2^-100 both quotients are far under E4M3's smallest subnormal and the code is 0 either way (the
// test compares the codes over a stride of all FP32 values, subnormals included).
SHARQ_HD uint8_t ue4m3_div6_code(float amax) {
#if defined(__CUDA_ARCH__)
  return ue4m3_encode(quotient_by_reciprocal(amax, 6.0f, kRecip6));
#else
  return ue4m3_encode(amax / 6.0f);
#endif
}

// ---------------------------------------------------------------------------------------------
// UE8M0 (MX scale): 2^(e - 127); e = 255 is NaN. e = 0 is 2^-127, an FP32 subnormal.
inline constexpr uint8_t kUe8m0Nan = 0xFF;
SHARQ_HD float ue8m0_decode(uint8_t e) {
  if (e == 0xFF) return f32_from_bits(0x7FC00000u);
  if (e == 0) return f32_from_bits(0x00400000u);
  return f32_from_bits(static_cast<uint32_t>(e) << 23);
}
// floor(log2(a)) for finite a > 0. FP32 subnormals return -127 - 1 or lower: every caller clamps
// the MX exponent at -127, so the exact value below -126 does not matter (documented there).
SHARQ_HD int floor_log2_pos(float a) {
  const int e = static_cast<int>((f32_bits(a) >> 23) & 0xFF);
  return e == 0 ? -149 : e - 127;
}
// The OCP MX v1.0 shared exponent for an E2M1 block: floor(log2(amax)) - 2 (2 = E2M1's emax),
// clamped to the UE8M0 range [-127, 127]. amax must be finite and > 0.
SHARQ_HD uint8_t ue8m0_for_e2m1_block(float amax) {
  int e = floor_log2_pos(amax) - 2;
  if (e < -127) e = -127;
  if (e > 127) e = 127;
  return static_cast<uint8_t>(e + 127);
}

// ---------------------------------------------------------------------------------------------
// E6M2 (HiF4 level-1 scale): code = (e + 48) << 2 | m, value 2^e (1 + m/4), e in [-48, 15].
// Code 0xFF (e = 15, m = 3) is reserved; sharq uses it as the NaN scale. No zero and no subnormals:
// values below 2^-48 (including 0) encode to the minimum 2^-48; finite values above the maximum
// 2^15 * 1.5 saturate. Rounding: RNE on the 2-bit mantissa, with carry into the exponent.
inline constexpr uint8_t kE6m2Nan = 0xFF;
inline constexpr uint8_t kE6m2Max = 0xFE;
SHARQ_HD uint8_t e6m2_encode(float x) {
  if (is_nonfinite(x)) return kE6m2Nan;
  const float a = abs_f32(x);
  if (a < 3.5527136788005009e-15f) return 0;  // 2^-48
  uint32_t u = f32_bits(a);
  u += 0xFFFFFu + ((u >> 21) & 1u);
  u >>= 21;                                   // FP32 exponent << 2 | 2-bit mantissa
  const int e = static_cast<int>(u >> 2) - 127;
  if (e > 15) return kE6m2Max;
  const uint32_t code = (static_cast<uint32_t>(e + 48) << 2) | (u & 3u);
  return code > kE6m2Max ? kE6m2Max : static_cast<uint8_t>(code);
}
SHARQ_HD float e6m2_decode(uint8_t code) {
  if (code == kE6m2Nan) return f32_from_bits(0x7FC00000u);
  const uint32_t e = code >> 2, m = code & 3u;  // value exponent = e - 48; FP32 biased = e + 79
  return f32_from_bits(((e + 79u) << 23) | (m << 21));
}

// ---------------------------------------------------------------------------------------------
// S1P2 (HiF4 element): sign | 3-bit magnitude k, value +-k/4, k in 0..7 (0 .. 1.75).
// Encode: round to nearest, ties to even k, saturate to +-1.75; NaN -> 0x7 (as E2M1).
SHARQ_HD uint8_t s1p2_encode(float x) {
  if (is_nan(x)) return 0x7;
  const uint8_t sign = (f32_bits(x) >> 28) & 0x8;
  const float a = abs_f32(x);
  if (a >= 1.75f) return sign | 0x7;
  const uint32_t k = static_cast<uint32_t>((a * 4.0f + 8388608.0f) - 8388608.0f);
  return sign | static_cast<uint8_t>(k);
}
SHARQ_HD float s1p2_decode(uint8_t code) {
  const float mag = static_cast<float>(code & 0x7) * 0.25f;
  return (code & 0x8) ? -mag : mag;
}

// ---------------------------------------------------------------------------------------------
// BF16 and FP16: RNE, overflow to Inf (FP16), NaN -> 0x7FFF (canonical, as CUDA's host code).
SHARQ_HD uint16_t bf16_encode(float x) {
  if (is_nan(x)) return 0x7FFF;
  uint32_t u = f32_bits(x);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
SHARQ_HD float bf16_decode(uint16_t h) { return f32_from_bits(static_cast<uint32_t>(h) << 16); }

SHARQ_HD uint16_t fp16_encode(float x) {
  if (is_nan(x)) return 0x7FFF;
  const uint32_t bits = f32_bits(x);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const float a = abs_f32(x);
  uint32_t mag;
  if (a >= 6.103515625e-05f) {  // 2^-14: normal range; round mantissa to 10 bits with carry
    uint32_t u = f32_bits(a);
    if (u >= 0x47800000u) {     // >= 2^16: beyond the largest finite half even after rounding
      mag = 0x7C00u;
    } else {
      u += 0xFFFu + ((u >> 13) & 1u);
      u >>= 13;                                // FP32 exponent << 10 | 10-bit mantissa
      mag = u - (112u << 10);                  // rebias 127 -> 15
      if (mag >= 0x7C00u) mag = 0x7C00u;       // rounded up past 65504: Inf
    }
  } else {  // subnormal: multiples of 2^-24
    mag = static_cast<uint32_t>((a * 16777216.0f + 8388608.0f) - 8388608.0f);
  }
  return sign | static_cast<uint16_t>(mag);
}
SHARQ_HD float fp16_decode(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1F, m = h & 0x3FF;
  if (e == 0x1F) return f32_from_bits(sign | 0x7F800000u | (m << 13));
  if (e == 0) {
    const float mag = static_cast<float>(m) * 5.9604644775390625e-08f;  // 2^-24
    return sign ? -mag : mag;
  }
  return f32_from_bits(sign | ((e + 112u) << 23) | (m << 13));
}

// Round a float through a format and back (handy for references and the bf16/fp16 schemes).
SHARQ_HD float round_bf16(float x) { return bf16_decode(bf16_encode(x)); }
SHARQ_HD float round_fp16(float x) { return fp16_decode(fp16_encode(x)); }

}  // namespace sharq
