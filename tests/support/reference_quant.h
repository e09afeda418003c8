// Slow reference block quantizers for the unit tests, written from SHARQ_SPEC "Block quantizers"
// on top of the reference codecs (reference_codecs.h). Nothing here calls into sharq.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "reference_codecs.h"

namespace sharq_test {

struct RefBlock {
  bool nonfinite = false;       // the block held a NaN or an Inf
  uint8_t scale = 0;            // UE4M3 / UE8M0 / E6M2 code
  uint8_t e8 = 0;               // HiF4 only: bit j = E8[j]
  uint16_t e16 = 0;             // HiF4 only: bit i = E16[i]
  std::vector<uint8_t> codes;   // 4-bit element codes
  std::vector<double> elem_scale;  // FP32 factor of each element
  std::vector<double> deq;      // dequantized values (NaN for a non-finite block)
};

inline bool any_nonfinite(const float* v, int n) {
  for (int i = 0; i < n; ++i)
    if (!std::isfinite(v[i])) return true;
  return false;
}
inline float max_abs(const float* v, int n) {
  float m = 0.0f;
  for (int i = 0; i < n; ++i) m = std::fmax(m, std::fabs(v[i]));
  return m;
}
inline RefBlock nonfinite_block(int n, uint8_t nan_scale) {
  RefBlock r;
  r.nonfinite = true;
  r.scale = nan_scale;
  r.codes.assign(n, 0);
  r.elem_scale.assign(n, std::numeric_limits<double>::quiet_NaN());
  r.deq.assign(n, std::numeric_limits<double>::quiet_NaN());
  return r;
}

// NVFP4-B: s = UE4M3(amax / 6); q = E2M1(v / s) with the rounded s; a zero scale gives zero codes.
inline RefBlock ref_nvfp4(const float* v, int B) {
  if (any_nonfinite(v, B)) return nonfinite_block(B, 0x7F);
  RefBlock r;
  const float amax = max_abs(v, B);
  r.scale = ref_e4m3_encode(amax / 6.0f);
  const float s = static_cast<float>(ref_e4m3_value(r.scale));
  for (int k = 0; k < B; ++k) {
    const uint8_t c = s == 0.0f ? 0 : ref_e2m1_encode(v[k] / s);
    r.codes.push_back(c);
    r.elem_scale.push_back(s);
    r.deq.push_back(ref_e2m1_value(c) * s);
  }
  return r;
}

// MXFP4-32: X = 2^(floor(log2 amax) - 2), UE8M0 (clamped to [2^-127, 2^127]); q = E2M1(v / X)
// saturating. A zero block gets code 0 and zero codes.
inline RefBlock ref_mxfp4(const float* v) {
  constexpr int B = 32;
  if (any_nonfinite(v, B)) return nonfinite_block(B, 0xFF);
  RefBlock r;
  const float amax = max_abs(v, B);
  int e = -127;
  if (amax > 0.0f) {
    e = std::ilogb(amax) - 2;
    e = e < -127 ? -127 : (e > 127 ? 127 : e);
  }
  r.scale = static_cast<uint8_t>(e + 127);
  const float X = std::ldexp(1.0f, e);
  for (int k = 0; k < B; ++k) {
    const uint8_t c = amax == 0.0f ? 0 : ref_e2m1_encode(v[k] / X);
    r.codes.push_back(c);
    r.elem_scale.push_back(X);
    r.deq.push_back(ref_e2m1_value(c) * X);
  }
  return r;
}

// HiF4-64, the spec's six steps, in FP32 like the spec.
inline RefBlock ref_hif4(const float* v) {
  constexpr int B = 64;
  if (any_nonfinite(v, B)) return nonfinite_block(B, 0xFF);
  RefBlock r;
  const float vmax = max_abs(v, B);                                  // step 1
  r.scale = ref_e6m2_encode(vmax / 7.0f);                            // step 2
  const float sf = static_cast<float>(ref_e6m2_value(r.scale));
  int E8[8], E16[16];
  for (int j = 0; j < 8; ++j) {                                      // step 3
    E8[j] = max_abs(v + 8 * j, 8) / sf >= 4.0f;
    r.e8 = static_cast<uint8_t>(r.e8 | (E8[j] << j));
  }
  for (int i = 0; i < 16; ++i) {                                     // step 4
    E16[i] = max_abs(v + 4 * i, 4) / (sf * std::ldexp(1.0f, E8[i / 2])) >= 2.0f;
    r.e16 = static_cast<uint16_t>(r.e16 | (E16[i] << i));
  }
  for (int k = 0; k < B; ++k) {                                      // steps 5, 6
    const float sk = sf * std::ldexp(1.0f, E8[k / 8] + E16[k / 4]);
    const uint8_t c = ref_s1p2_encode(v[k] / sk);
    r.codes.push_back(c);
    r.elem_scale.push_back(sk);
    r.deq.push_back(ref_s1p2_value(c) * sk);
  }
  return r;
}

}  // namespace sharq_test
