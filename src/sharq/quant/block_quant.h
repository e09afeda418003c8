// Block quantizers: NVFP4-16/32, MXFP4-32, HiF4-64 (SHARQ_SPEC "Block quantizers").
//
// Each format is a small traits struct with
//   quantize(v, block)      v: exactly kBlock floats (already divided by the second-level scale)
//   element_scale(s, k)     the FP32 factor of logical element k (0 <= k < kBlock)
//   decode(code)            the 4-bit element value
// so that dequant(k) = decode(code_k) * element_scale(s, k). Every product here is exact in FP32.
//
// Non-finite input (sharq's own rule, SHARQ_SPEC leaves it open): a block whose max |v| is NaN or
// Inf gets the format's NaN scale code and all-zero codes. Its dequantized values are all NaN, so
// the NaN reaches every output the block contributes to, and no other block is touched.
#pragma once

#include "sharq/formats/blocks.h"
#include "sharq/formats/minifloat.h"

namespace sharq {

// value table of the 16 codes of a 4-bit element format, times one scale: table[c] = decode(c) * s.
// Dequantizing through it gives exactly decode(c) * s (the same single product) at a table lookup
// per element.
template <class F>
SHARQ_HD void scaled_code_table(float s, float* table) {
  for (int c = 0; c < 16; ++c) table[c] = F::decode(static_cast<uint8_t>(c)) * s;
}

// NVFP4-B: s = UE4M3(amax/6); q = E2M1(v/s) dividing by the *rounded* s; zero block -> s = 0.
template <int B>
struct Nvfp4 {
  static constexpr int kBlock = B;
  static constexpr bool kHasGlobal = true;  // FP32 second-level scale
  using scale_t = scale_ue4m3;
  using block_t = block_fp4<scale_t, B>;

  // The two halves of quantize(), exposed so that a warp can quantize a block one lane per
  // element with the very same arithmetic (kernels/cuda/sharq_prep.cu):
  //   scale_for(amax)          the block's scale from its amax_nan_sticky()
  //   code_divisor(amax, s)    what every element is divided by, or 0: all codes 0 (NaN, zero or
  //                            underflowing block)
  SHARQ_HD static scale_t scale_for(float amax) {
    return scale_t{is_nonfinite(amax) ? kUe4m3Nan : ue4m3_div6_code(amax)};  // ue4m3_encode(amax / 6)
  }
  SHARQ_HD static float code_divisor(float amax, scale_t s) { return is_nonfinite(amax) ? 0.0f : ue4m3_decode(s.e); }
  SHARQ_HD static void quantize(const float* v, block_t& b) {
    for (int i = 0; i < B / 2; ++i) b.qs[i] = 0;
    const float amax = amax_nan_sticky(v, B);
    b.s = scale_for(amax);
    const float s = code_divisor(amax, b.s);
    if (s == 0.0f) return;  // NaN block (NaN scale), zero or underflowing block (scale 0): codes 0
    // e2m1_encode(v[k] / s), without the divisions (formats/minifloat.h, proven equal)
    const E2m1Thresholds t = e2m1_thresholds_e4m3(s);  // s != 0 (no NaN in the block): an E4M3 value
    for (int k = 0; k < B; ++k) set_nibble(b.qs, k, e2m1_encode_thresholds_nonnan(v[k], t));
  }
  SHARQ_HD static float element_scale(const scale_t& s, int /*k*/) { return ue4m3_decode(s.e); }
  SHARQ_HD static float decode(uint8_t code) { return e2m1_decode(code); }
  SHARQ_HD static void dequantize(const block_t& b, float* out) {
    float t[16];
    scaled_code_table<Nvfp4>(ue4m3_decode(b.s.e), t);
    for (int i = 0; i < B / 2; ++i) { out[2 * i] = t[b.qs[i] & 0xF]; out[2 * i + 1] = t[b.qs[i] >> 4]; }
  }
};

// MXFP4-32 (OCP MX v1.0): scale 2^(floor(log2 amax) - 2), UE8M0; q = E2M1(v/scale), saturating.
// A zero block gets scale code 0 (2^-127) and zero codes.
struct Mxfp4 {
  static constexpr int kBlock = 32;
  static constexpr bool kHasGlobal = false;
  using scale_t = scale_ue8m0;
  using block_t = block_fp4<scale_t, 32>;

  SHARQ_HD static scale_t scale_for(float amax) {
    return scale_t{is_nonfinite(amax) ? kUe8m0Nan : amax == 0.0f ? uint8_t{0} : ue8m0_for_e2m1_block(amax)};
  }
  SHARQ_HD static float code_divisor(float amax, scale_t s) {
    return is_nonfinite(amax) || amax == 0.0f ? 0.0f : ue8m0_decode(s.e);  // 2^e > 0 for every finite e
  }
  SHARQ_HD static void quantize(const float* v, block_t& b) {
    for (int i = 0; i < 16; ++i) b.qs[i] = 0;
    const float amax = amax_nan_sticky(v, 32);
    b.s = scale_for(amax);
    const float s = code_divisor(amax, b.s);
    if (s == 0.0f) return;
    // e2m1_encode(v[k] / s): s = 2^e (|e| <= 127), so 1 / s is exact (2^-127 a subnormal) and
    // v * (1 / s) is the same correctly rounded real as v / s (tests/quant)
    const float inv = 1.0f / s;
    for (int k = 0; k < 32; ++k) set_nibble(b.qs, k, e2m1_encode(v[k] * inv));
  }
  SHARQ_HD static float element_scale(const scale_t& s, int /*k*/) { return ue8m0_decode(s.e); }
  SHARQ_HD static float decode(uint8_t code) { return e2m1_decode(code); }
  SHARQ_HD static void dequantize(const block_t& b, float* out) {
    float t[16];
    scaled_code_table<Mxfp4>(ue8m0_decode(b.s.e), t);
    for (int i = 0; i < 16; ++i) { out[2 * i] = t[b.qs[i] & 0xF]; out[2 * i + 1] = t[b.qs[i] >> 4]; }
  }
};

// HiF4-64: three-level scale (E6M2 unit scale, x2 per 8-group, x2 per 4-group), S1P2 elements.
struct Hif4 {
  static constexpr int kBlock = 64;
  static constexpr bool kHasGlobal = false;
  using scale_t = scale_hif4;
  using block_t = block_fp4<scale_t, 64>;

  SHARQ_HD static int e8_bit(const scale_t& s, int k) { return (s.e8 >> (k >> 3)) & 1; }
  SHARQ_HD static int e16_bit(const scale_t& s, int k) { return (s.e16[k >> 5] >> ((k >> 2) & 7)) & 1; }

  SHARQ_HD static void quantize(const float* v, block_t& b) {
    for (int i = 0; i < 32; ++i) b.qs[i] = 0;
    b.s.e8 = 0; b.s.e16[0] = 0; b.s.e16[1] = 0;
    const float vmax = amax_nan_sticky(v, 64);
    if (is_nonfinite(vmax)) { b.s.sf = kE6m2Nan; return; }
    b.s.sf = e6m2_encode(vmax / 7.0f);
    const float sf = e6m2_decode(b.s.sf);
    for (int j = 0; j < 8; ++j) {
      if (amax_nan_sticky(v + 8 * j, 8) / sf >= 4.0f) b.s.e8 = static_cast<uint8_t>(b.s.e8 | (1u << j));
    }
    for (int i = 0; i < 16; ++i) {
      const float s8 = sf * static_cast<float>(1 << e8_bit(b.s, 4 * i));
      if (amax_nan_sticky(v + 4 * i, 4) / s8 >= 2.0f)
        b.s.e16[i >> 3] = static_cast<uint8_t>(b.s.e16[i >> 3] | (1u << (i & 7)));
    }
    for (int k = 0; k < 64; ++k) set_nibble(b.qs, k, s1p2_encode(v[k] / element_scale(b.s, k)));
  }
  SHARQ_HD static float element_scale(const scale_t& s, int k) {
    return e6m2_decode(s.sf) * static_cast<float>(1 << (e8_bit(s, k) + e16_bit(s, k)));
  }
  SHARQ_HD static float decode(uint8_t code) { return s1p2_decode(code); }
  SHARQ_HD static void dequantize(const block_t& b, float* out) {
    float base[16];
    scaled_code_table<Hif4>(1.0f, base);
    const float sf = e6m2_decode(b.s.sf);
    for (int g = 0; g < 16; ++g) {  // one scale per 4-group: the same product as element_scale()
      const float s = sf * static_cast<float>(1 << (e8_bit(b.s, 4 * g) + e16_bit(b.s, 4 * g)));
      const uint8_t lo = b.qs[2 * g], hi = b.qs[2 * g + 1];
      out[4 * g] = base[lo & 0xF] * s;
      out[4 * g + 1] = base[lo >> 4] * s;
      out[4 * g + 2] = base[hi & 0xF] * s;
      out[4 * g + 3] = base[hi >> 4] * s;
    }
  }
};

using Nvfp4_16 = Nvfp4<16>;
using Nvfp4_32 = Nvfp4<32>;

// Dequantize one block into kBlock floats: out[k] = decode(code_k) * element_scale(s, k), computed
// by each format's table-driven F::dequantize (tests check it against this per-element definition).
template <class F>
SHARQ_HD void dequantize_block(const typename F::block_t& b, float* out) {
  F::dequantize(b, out);
}

// ---- second-level (FP32) scale for NVFP4 --------------------------------------------------------
// g = max|T| / (448 * 6), clamped to >= 1e-9; the max runs over the finite values only, so a NaN or
// Inf poisons only its own block (above), never the scale of the whole tensor/row.
inline constexpr float kNvfp4GlobalDiv = 448.0f * 6.0f;  // 2688
SHARQ_HD float nvfp4_global_scale(float amax_finite_value) {
  const float g = amax_finite_value / kNvfp4GlobalDiv;
  return g >= 1e-9f ? g : 1e-9f;
}

}  // namespace sharq
