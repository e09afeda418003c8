// Host/device portability for the numerics core.
//
// Every codec, block quantizer and mask in sharq is written once as a SHARQ_HD function, so the
// CPU reference and the CUDA kernels execute the same source (ggml-common.h style), never two
// copies that can drift apart.
#pragma once

#if defined(__CUDACC__)
#define SHARQ_HD __host__ __device__ __forceinline__
#else
#define SHARQ_HD inline
#endif

#include <cmath>
#include <cstdint>
#include <cstring>

namespace sharq {

// Bit casts that work on host and device (std::bit_cast is not usable in device code everywhere).
SHARQ_HD uint32_t f32_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}

SHARQ_HD float f32_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}

// a * b + c with one rounding (the device's FFMA; the host's std::fma, correctly rounded in software
// where the CPU has no FMA: only the tests call it there). The CUDA build uses --fmad=false, so an
// FMA happens only where it is written.
SHARQ_HD float fma_f32(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

SHARQ_HD bool is_nan(float x) { return x != x; }
// True for NaN and +-Inf.
SHARQ_HD bool is_nonfinite(float x) { return (f32_bits(x) & 0x7f800000u) == 0x7f800000u; }
SHARQ_HD float abs_f32(float x) { return f32_from_bits(f32_bits(x) & 0x7fffffffu); }

// max |v| over n values, NaN-sticky: one NaN makes the result NaN (std::max/fmaxf would drop it).
SHARQ_HD float amax_nan_sticky(const float* v, int n) {
  float m = 0.0f;
  for (int i = 0; i < n; ++i) {
    const float a = abs_f32(v[i]);
    if (a > m || is_nan(a)) m = is_nan(m) ? m : a;
  }
  return m;
}

// max |v| over the finite values only (second-level scales; non-finite values are left to poison
// their own block, see SHARQ_SPEC "Beyond the paper" and docs/numerics.md).
SHARQ_HD float amax_finite(const float* v, int n) {
  float m = 0.0f;
  for (int i = 0; i < n; ++i) {
    const float a = abs_f32(v[i]);
    if (!is_nonfinite(a) && a > m) m = a;
  }
  return m;
}

}  // namespace sharq
