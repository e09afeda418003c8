// Slow, independent reference codecs for the unit tests.
//
// Nothing here calls into sharq: each format is described by its list of representable values,
// built from the format's definition (SHARQ_SPEC "Element and scale formats"), and a value is
// encoded by picking the nearest representable value in double precision, ties going to the even
// code (= round-to-nearest-even on the mantissa, since every format's mantissa LSB is its code
// LSB), and values beyond the largest finite value saturating to it. This is deliberately a
// different algorithm from the bit tricks in src/sharq/formats/minifloat.h.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace sharq_test {

inline uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
inline float float_of(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}
inline bool sign_bit(float x) { return (bits_of(x) >> 31) != 0; }

struct GridPoint {
  double value;
  uint8_t code;
};

// A set of non-negative representable magnitudes, sorted ascending, and their codes.
struct Grid {
  std::vector<GridPoint> pts;

  // Nearest magnitude to a >= 0 (a may be +inf): ties to the even code, saturating at both ends.
  uint8_t nearest(double a) const {
    if (a >= pts.back().value) return pts.back().code;
    if (a <= pts.front().value) return pts.front().code;
    auto it = std::upper_bound(pts.begin(), pts.end(), a,
                               [](double x, const GridPoint& p) { return x < p.value; });
    const GridPoint& hi = *it;
    const GridPoint& lo = *(it - 1);
    // Near a tie a lies within a factor 2 of both neighbours (or lo is 0), so both differences
    // are exact in double there; far from a tie a rounding error cannot flip the comparison.
    const double dlo = a - lo.value, dhi = hi.value - a;
    if (dlo < dhi) return lo.code;
    if (dhi < dlo) return hi.code;
    return (lo.code & 1) == 0 ? lo.code : hi.code;
  }
  double value_of(uint8_t code) const {
    for (const auto& p : pts)
      if (p.code == code) return p.value;
    return std::numeric_limits<double>::quiet_NaN();
  }
};

// E2M1: the spec's table, written out by hand.
inline const Grid& e2m1_grid() {
  static const Grid g{{{0.0, 0}, {0.5, 1}, {1.0, 2}, {1.5, 3}, {2.0, 4}, {3.0, 5}, {4.0, 6}, {6.0, 7}}};
  return g;
}
// E4M3 (fn): bias 7; e = 0 is subnormal m/8 * 2^-6; code 0x7F is NaN, so the finite codes are 0..0x7E.
inline double e4m3_magnitude_def(uint8_t c7) {
  const int e = c7 >> 3, m = c7 & 7;
  return e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
}
inline const Grid& e4m3_grid() {
  static const Grid g = [] {
    Grid r;
    for (int c = 0; c <= 0x7E; ++c) r.pts.push_back({e4m3_magnitude_def(static_cast<uint8_t>(c)), static_cast<uint8_t>(c)});
    return r;
  }();
  return g;
}
// S1P2 magnitudes k/4, k = 0..7.
inline const Grid& s1p2_grid() {
  static const Grid g = [] {
    Grid r;
    for (int k = 0; k < 8; ++k) r.pts.push_back({k / 4.0, static_cast<uint8_t>(k)});
    return r;
  }();
  return g;
}
// E6M2: 2^e (1 + m/4), e in [-48, 15], code = (e + 48) << 2 | m; 0xFF (e = 15, m = 3) reserved.
inline double e6m2_value_def(uint8_t c) { return std::ldexp(1.0 + (c & 3) / 4.0, (c >> 2) - 48); }
inline const Grid& e6m2_grid() {
  static const Grid g = [] {
    Grid r;
    for (int c = 0; c <= 0xFE; ++c) r.pts.push_back({e6m2_value_def(static_cast<uint8_t>(c)), static_cast<uint8_t>(c)});
    return r;
  }();
  return g;
}

// ---- reference encoders -------------------------------------------------------------------------
// Sign-magnitude 4-bit formats: sign in bit 3. NaN -> 0x7 (CUDA's choice, documented in minifloat.h).
inline uint8_t ref_e2m1_encode(float x) {
  if (std::isnan(x)) return 0x7;
  return static_cast<uint8_t>((sign_bit(x) ? 0x8 : 0) | e2m1_grid().nearest(std::fabs(static_cast<double>(x))));
}
inline uint8_t ref_s1p2_encode(float x) {
  if (std::isnan(x)) return 0x7;
  return static_cast<uint8_t>((sign_bit(x) ? 0x8 : 0) | s1p2_grid().nearest(std::fabs(static_cast<double>(x))));
}
// E4M3 with SATFINITE: NaN -> 0x7F, overflow and inf saturate to +-448.
inline uint8_t ref_e4m3_encode(float x) {
  if (std::isnan(x)) return 0x7F;
  return static_cast<uint8_t>((sign_bit(x) ? 0x80 : 0) | e4m3_grid().nearest(std::fabs(static_cast<double>(x))));
}
// E6M2 (unsigned; encodes |x|): non-finite -> 0xFF, below 2^-48 -> code 0, above max -> 0xFE.
inline uint8_t ref_e6m2_encode(float x) {
  if (!std::isfinite(x)) return 0xFF;
  return e6m2_grid().nearest(std::fabs(static_cast<double>(x)));
}
// BF16 RNE: the two bf16 neighbours of x (truncation and truncation + 1 ulp, the latter possibly
// 2^128 = inf), nearest wins, ties to the even one. NaN -> 0x7FFF.
inline uint16_t ref_bf16_encode(float x) {
  if (std::isnan(x)) return 0x7FFF;
  const uint32_t u = bits_of(x);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t t = (u & 0x7FFFFFFFu) >> 16;
  if (t == 0x7F80u) return static_cast<uint16_t>(sign | t);  // inf
  const double a = std::fabs(static_cast<double>(x));
  const double lo = static_cast<double>(float_of(t << 16));
  const double hi = t + 1 == 0x7F80u ? std::ldexp(1.0, 128) : static_cast<double>(float_of((t + 1) << 16));
  const double dlo = a - lo, dhi = hi - a;
  uint32_t r;
  if (dlo < dhi) r = t;
  else if (dhi < dlo) r = t + 1;
  else r = (t & 1) ? t + 1 : t;
  return static_cast<uint16_t>(sign | r);
}

// ---- reference decoders -------------------------------------------------------------------------
inline double ref_e2m1_value(uint8_t code) {
  const double m = e2m1_grid().value_of(code & 7);
  return (code & 8) ? -m : m;
}
inline double ref_s1p2_value(uint8_t code) { return ((code & 8) ? -1.0 : 1.0) * (code & 7) / 4.0; }
inline double ref_e4m3_value(uint8_t code) {
  if ((code & 0x7F) == 0x7F) return std::numeric_limits<double>::quiet_NaN();
  const double m = e4m3_magnitude_def(code & 0x7F);
  return (code & 0x80) ? -m : m;
}
inline double ref_ue8m0_value(uint8_t code) {
  return code == 0xFF ? std::numeric_limits<double>::quiet_NaN() : std::ldexp(1.0, code - 127);
}
inline double ref_e6m2_value(uint8_t code) {
  return code == 0xFF ? std::numeric_limits<double>::quiet_NaN() : e6m2_value_def(code);
}

// Half the distance between the two E2M1 grid points around t (0 <= t <= 6): the largest
// round-to-nearest error at magnitude t.
inline double e2m1_half_gap(double t) { return t <= 2.0 ? 0.25 : (t <= 4.0 ? 0.5 : 1.0); }

}  // namespace sharq_test
