// NVFP4 weight decode in registers, shared by the decode (mma.sync) and prefill (wgmma) kernels.
//
// A pair of E2M1 codes (bits 0-3 and 16-19 of a word, see quant/fp4_tiles.h) becomes a pair of
// FP16/BF16 values with one shift-and-mask and ONE multiply, exactly:
//   FP16: magnitude bits e1 e0 m at 11..9 and the sign at 15 read as FP16 are E2M1 * 2^-14 (e = 0
//         lands on the subnormals 0 and 2^-15). The scale pair is UE4M3 * 2^7 (cvt.rn.f16x2.e4m3x2,
//         then an exact * 2^7; max 448 * 2^7 = 57344 < 65504; 0x7F -> NaN). The product is
//         E2M1 * UE4M3 * 2^-7: at most 6 significant bits and a multiple of 2^-17, so exact in FP16
//         (subnormal below 2^-14). The GEMM epilogue multiplies the FP32 accumulator by kPost = 2^7.
//   BF16: bits 8..6 (E2M1 * 2^-126), scale * 2^118, product E2M1 * UE4M3 * 2^-8, kPost = 2^8.
// Scale bytes are masked to 7 bits, as ue4m3_decode() does on the host.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

namespace sharq::cuda {

template <class T>
struct Fp4Pair;

template <>
struct Fp4Pair<__half> {
  using V = __half2;
  static constexpr float kPost = 128.0f;  // 2^7
  // two scale bytes (bits 0-7 -> .x, 8-15 -> .y)
  __device__ __forceinline__ static V scale_pair(uint32_t two_bytes) {
    const __half2_raw r =
        __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(two_bytes & 0x7F7Fu), __NV_E4M3);
    return __hmul2(__half2(r), __half2half2(__ushort_as_half(0x5800)));  // * 2^7, exact
  }
  __device__ __forceinline__ static uint32_t decode(uint32_t x, V s2) {
    const uint32_t b = ((x << 9) & 0x0E000E00u) | ((x << 12) & 0x80008000u);
    const __half2 v = __hmul2(*reinterpret_cast<const __half2*>(&b), s2);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
};

template <>
struct Fp4Pair<__nv_bfloat16> {
  using V = __nv_bfloat162;
  static constexpr float kPost = 256.0f;  // 2^8
  __device__ __forceinline__ static V scale_pair(uint32_t two_bytes) {
    const __half2_raw r =
        __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(two_bytes & 0x7F7Fu), __NV_E4M3);
    const float2 f = __half22float2(__half2(r));  // exact; NaN stays NaN
    constexpr float k = 0x1p118f;
    return __floats2bfloat162_rn(f.x * k, f.y * k);  // <= 448 * 2^118 < 2^127: exact
  }
  __device__ __forceinline__ static uint32_t decode(uint32_t x, V s2) {
    const uint32_t b = ((x << 6) & 0x01C001C0u) | ((x << 12) & 0x80008000u);
    const __nv_bfloat162 v = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&b), s2);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
};

// {v.x, v.x} / {v.y, v.y}
template <class V>
__device__ __forceinline__ V bcast_lo(V v) { return V(v.x, v.x); }
template <class V>
__device__ __forceinline__ V bcast_hi(V v) { return V(v.y, v.y); }

}  // namespace sharq::cuda
