// Fused activation prep (see sharq_prep.h). Blocks own one row (or a share of its spans for small M):
//   1. the row is read straight from global memory (16-byte loads when K % 8 == 0; nothing staged
//      in shared memory, so small blocks and high occupancy; the second read hits L1/L2);
//   2. optional RMSNorm: warp 0 sums x*x in the documented order, every value is (x * inv) * w;
//   3. g_x: per token, a block max of the finite |x| (order-free, so exact); per tensor, read from
//      a first pass (amax_kernel) that did steps 1-2 and an atomicMax on the FP32 bits;
//   4a. M > 64 (throughput): four lanes per 32-wide span, 8 values each in registers (one 16-byte
//      load): x~ = x / g, mask, backbone block over the 16 kept values (the dropped zeros change
//      neither the amax nor any kept code), residual, residual blocks, then one 16-byte store per
//      plane. The blocks' amaxes are shuffled within the quad; each lane computes its blocks' scale
//      and divisor itself;
//   4b. M <= 64 (latency): one warp per span, one lane per element, block steps by shuffles.
//   Every per-element step is the same SHARQ_HD arithmetic as sharq_prepare_span() / F::quantize()
//   (bit-identical to the CPU reference, sharq_prep_test covers both forms).
#include "sharq/kernels/cuda/sharq_prep.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>

#include <fmt/format.h>

#include "sharq/kernels/cuda/cuda_check.h"
#include "sharq/kernels/cuda/activation.cuh"
#include "sharq/kernels/cuda/half_convert.cuh"
#include "sharq/kernels/cuda/launch.cuh"
#include "sharq/kernels/cuda/ptx.cuh"

namespace sharq::cuda {
namespace {

// The prep's input row (PrepInput as a template argument).
constexpr int kInPlain = 0, kInRms = 1, kInSwiglu = 2, kInResidualRms = 3;
// silu(g) * u rounded to T: the expression and rounding of transformer_ops' swiglu(), so the fused
// prep sees exactly the values the separate kernel would have written.
template <class T>
__device__ __forceinline__ float swiglu_t(float g, float u) {
  return to_f(from_f<T>(silu_mul(g, u)));
}

// x~ = x / g, the prep's per-element division, by g's reciprocal r = RN(1 / g) and one correction
// (formats/minifloat.h, quotient_by_reciprocal): proven equal to x / g for FP16 and BF16 row values
// and g = nvfp4_global_scale of such a value, where |x| >= 2^-100 and |x / g| >= 2^-99 (tests/formats,
// exhaustively over the significands). div<true> is for a row that row_global_scale found safe:
// finite, and every nonzero |x| >= 2^-100 and >= 2^-97 g, so |x / g| >= 2^-97 and row_quotient's guard
// would pass for every element: no per-element test. div<false> is row_quotient, which divides where
// its guard fails (BF16 values below 2^-100 or far below the row's amax; never a finite FP16 value).
// RMSNorm rows (FP32 values (v * inv) * w, outside the proven set) always divide.
template <class T, int kIn>
struct RowDivisor {
  float g, r;
  __device__ explicit RowDivisor(float g_) : g(g_), r(1.0f / g_) {}
  template <bool kSafe>
  __device__ __forceinline__ float div(float x) const {
    if constexpr (kIn == kInRms) {
      return x / g;
    } else {
      if constexpr (kSafe) return quotient_by_reciprocal(x, g, r);
      else return row_quotient(x, g, r);
    }
  }
};

struct RowArgs {
  const void* x;
  const void* rms_w;
  int64_t K, spans, ld;
  float eps;
  bool per_tensor;          // NVFP4: g from *amax_bits
  const uint32_t* amax_bits;
  PairScore score;
  PrepOut out;
  block_nvfp4_16* nv_blocks;  // nvfp4_prep only
  const void* add = nullptr;  // residual_rmsnorm: added to the FP32 row first (or null)
};

// The (optionally RMS-normalized) row, read straight from global memory: nothing is staged in
// shared memory, so blocks stay small and many fit on an SM; the second read of a row (amax pass,
// then the spans) hits L1/L2. at8() uses one 16-byte load for 8 values when K % 8 == 0.
template <class T, int kIn>
struct RowView {
  const T* x;
  const T* w;
  int64_t K;
  float inv;
  const float* xf = nullptr;  // residual_rmsnorm: the FP32 residual row, its FP32 norm weight and
  const T* addp = nullptr;    // the projection output added to it (or null)
  const float* wf = nullptr;
  const float* rs = nullptr;  // residual_rmsnorm: r = x + o held in shared memory (K <= kNormStage), or null
  __device__ __forceinline__ float sum_at(int64_t i) const {
    if (rs) return rs[i];
    return addp ? xf[i] + to_f(addp[i]) : xf[i];
  }
  __device__ __forceinline__ float at(int64_t i) const {
    if (i >= K) return 0.0f;  // zero padding along K, as on the CPU
    // add_rmsnorm()'s output expression and rounding: T(w * (r * inv))
    if constexpr (kIn == kInResidualRms) return to_f(from_f<T>(wf[i] * (sum_at(i) * inv)));
    if constexpr (kIn == kInSwiglu) return swiglu_t<T>(to_f(x[i]), to_f(x[K + i]));
    float v = to_f(x[i]);
    if constexpr (kIn == kInRms) v = (v * inv) * to_f(w[i]);
    return v;
  }
  __device__ __forceinline__ void at8(int64_t i, float* o) const {
    if constexpr (kIn == kInResidualRms) {
      if (K % 8 == 0 && i + 8 <= K) {
        const float4* x4 = reinterpret_cast<const float4*>((rs ? rs : xf) + i);
        const float4* w4 = reinterpret_cast<const float4*>(wf + i);
        const float4 xa = x4[0], xb = x4[1], wa = w4[0], wb = w4[1];
        float r[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
        const float w8[8] = {wa.x, wa.y, wa.z, wa.w, wb.x, wb.y, wb.z, wb.w};
        if (addp && !rs) {
          const uint4 u = *reinterpret_cast<const uint4*>(addp + i);
          const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
          for (int j = 0; j < 8; ++j) r[j] = r[j] + to_f(e[j]);
        }
#pragma unroll
        for (int j = 0; j < 8; ++j) o[j] = to_f(from_f<T>(w8[j] * (r[j] * inv)));
      } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) o[j] = at(i + j);
      }
      return;
    }
    if (K % 8 == 0 && i + 8 <= K) {
      const uint4 u = *reinterpret_cast<const uint4*>(x + i);
      const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
      for (int j = 0; j < 8; ++j) o[j] = to_f(e[j]);
      if constexpr (kIn == kInSwiglu) {
        const uint4 uu = *reinterpret_cast<const uint4*>(x + K + i);
        const T* eu = reinterpret_cast<const T*>(&uu);
#pragma unroll
        for (int j = 0; j < 8; ++j) o[j] = swiglu_t<T>(o[j], to_f(eu[j]));
      }
      if constexpr (kIn == kInRms) {
        const uint4 uw = *reinterpret_cast<const uint4*>(w + i);
        const T* ew = reinterpret_cast<const T*>(&uw);
#pragma unroll
        for (int j = 0; j < 8; ++j) o[j] = (o[j] * inv) * to_f(ew[j]);
      }
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) o[j] = at(i + j);
    }
  }
};

// The inverse RMS of a row, 1 / sqrt(sum(v * v) / K + eps), with the sum in the documented order
// (lane l of warp 0 adds v[i] * v[i] for i = l, l + 32, ... in increasing i, then the xor
// butterfly), as rmsnorm_reference() does. The whole block loads the row (value(i)) into shared
// memory, kNormStage values per pass, and warp 0 adds from there: one warp loading the row alone
// is latency-bound (128 dependent-in-order loads per lane at K = 4096: ~10 us per prep call, H200).
// sum_out (or null) is also written with the values. Every thread gets the result. red: >= 1 float.
// A row of K <= kNormStage stays in shared memory: *resident (when asked) points at it then, else
// is null; the prep's later reads of the row (its amax, its spans) come from there, not from L2.
constexpr int kNormStage = 4096;  // a multiple of 32, so each pass keeps every lane's order
template <class F>
__device__ float row_inv_rms(int64_t K, float eps, const F& value, float* sum_out, float* red,
                             const float** resident = nullptr) {
  __shared__ __align__(16) float stage[kNormStage];
  if (resident) *resident = K <= kNormStage ? stage : nullptr;
  float p = 0.0f;
  for (int64_t base = 0; base < K; base += kNormStage) {
    const int n = static_cast<int>(K - base < kNormStage ? K - base : kNormStage);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      const float v = value(base + i);
      stage[i] = v;
      if (sum_out) sum_out[base + i] = v;
    }
    __syncthreads();
    if (threadIdx.x < 32)
      for (int i = threadIdx.x; i < n; i += 32) {
        const float v = stage[i];
        p = p + v * v;
      }
    __syncthreads();
  }
  if (threadIdx.x < 32) {
    for (int off = 16; off >= 1; off >>= 1) p = p + __shfl_xor_sync(0xffffffffu, p, off);
    if (threadIdx.x == 0) *red = 1.0f / sqrtf(p / static_cast<float>(K) + eps);
  }
  __syncthreads();
  const float inv = *red;
  __syncthreads();
  return inv;
}

// Row m's view. RMSNorm: row_inv_rms over x. residual_rmsnorm: the same over r = x + o, and the
// row's owner block (the prep kernels' block 0 of the row; never the amax pass) writes r to
// out.sum for the next layer.
template <class T, int kIn>
__device__ RowView<T, kIn> make_row(const RowArgs& a, int64_t m, float* red, bool owner = false) {
  if constexpr (kIn == kInResidualRms) {
    RowView<T, kIn> r{nullptr, nullptr, a.K, 1.0f};
    r.xf = static_cast<const float*>(a.x) + m * a.K;
    r.addp = a.add ? static_cast<const T*>(a.add) + m * a.K : nullptr;
    r.wf = static_cast<const float*>(a.rms_w);
    float* sum_out = owner && a.out.sum ? a.out.sum + m * a.K : nullptr;
    const float* resident = nullptr;
    r.inv = row_inv_rms(a.K, a.eps, [&r](int64_t i) { return r.sum_at(i); }, sum_out, red, &resident);
    r.rs = resident;  // from here on the row's r values come from shared memory (the same floats)
    return r;
  }
  const int64_t stride = kIn == kInSwiglu ? 2 * a.K : a.K;  // SwiGLU: gate then up, 2K per row
  RowView<T, kIn> r{static_cast<const T*>(a.x) + m * stride, static_cast<const T*>(a.rms_w), a.K, 1.0f};
  if constexpr (kIn == kInRms)
    r.inv = row_inv_rms(a.K, a.eps, [&r](int64_t i) { return to_f(r.x[i]); }, nullptr, red);
  return r;
}

// Block max of the finite |x| of the (normalized) row; every thread gets it. red: >= 32 floats.
// all_finite (or null): whether every value of the row is finite (then the span code may skip its
// NaN handling: for finite values it decides nothing). min_nonzero (or null): the smallest nonzero
// |x| (+Inf for a row of zeros). One pass of integer max / min over the FP32 bits of |x| (non-negative
// floats order as their bits; |x| - 1 wraps a zero to the top of the min); a row with a NaN or an Inf
// takes a second pass for its finite max.
template <class R>
__device__ float row_amax(const R& row, float* red, bool* all_finite = nullptr, float* min_nonzero = nullptr) {
  uint32_t mx = 0, mn = 0xFFFFFFFFu;
  for (int64_t i = 8 * static_cast<int64_t>(threadIdx.x); i < row.K; i += 8 * static_cast<int64_t>(blockDim.x)) {
    float v[8];
    row.at8(i, v);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const uint32_t u = f32_bits(v[j]) & 0x7fffffffu;
      mx = u > mx ? u : mx;
      mn = u - 1u < mn ? u - 1u : mn;
    }
  }
  mx = __reduce_max_sync(0xffffffffu, mx);
  mn = __reduce_min_sync(0xffffffffu, mn);
  uint32_t* ured = reinterpret_cast<uint32_t*>(red);
  if ((threadIdx.x & 31) == 0) {
    ured[threadIdx.x / 32] = mx;
    ured[16 + threadIdx.x / 32] = mn;
  }
  __syncthreads();
  for (unsigned w = 0; w < blockDim.x / 32; ++w) {
    mx = ured[w] > mx ? ured[w] : mx;
    mn = ured[16 + w] < mn ? ured[16 + w] : mn;
  }
  __syncthreads();
  const bool finite = mx < 0x7f800000u;
  if (all_finite) *all_finite = finite;
  if (min_nonzero) *min_nonzero = mn == 0xFFFFFFFFu ? f32_from_bits(0x7f800000u) : f32_from_bits(mn + 1u);
  if (finite) return f32_from_bits(mx);
  float m = 0.0f;  // a NaN or an Inf in the row: the max over its finite values
  for (int64_t i = 8 * static_cast<int64_t>(threadIdx.x); i < row.K; i += 8 * static_cast<int64_t>(blockDim.x)) {
    float v[8];
    row.at8(i, v);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float a = abs_f32(v[j]);
      if (!is_nonfinite(a) && a > m) m = a;
    }
  }
  for (int off = 16; off >= 1; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x / 32] = m;
  __syncthreads();
  float r = 0.0f;
  for (unsigned w = 0; w < blockDim.x / 32; ++w) r = fmaxf(r, red[w]);
  __syncthreads();
  return r;
}

template <class T, int kIn>
__global__ void amax_kernel(RowArgs a, uint32_t* amax_bits) {
  pdl_wait();  // PDL (launch.cuh): x comes from the preceding kernel
  pdl_trigger();
  __shared__ float red[33];
  const auto row = make_row<T, kIn>(a, blockIdx.x, red + 32);
  const float m = row_amax(row, red);
  if (threadIdx.x == 0) atomicMax(amax_bits, f32_bits(m));  // non-negative floats order as their bits
}

// top2_of4() (nm_mask.h) restated without indexing its score array by a runtime index, so that
// the scores stay in registers: the same two scans, the same ranks_above(), the same tie rule.
// kFinite: no score is NaN, so ranks_above(a, b) is a > b.
template <bool kFinite>
__device__ __forceinline__ bool ranks_above_t(float a, float b) {
  if constexpr (kFinite) return a > b;
  return ranks_above(a, b);
}
template <bool kFinite>
__device__ __forceinline__ uint32_t top2_of4_reg(const float (&s)[4]) {
  int i0 = 0;
  float v0 = s[0];
#pragma unroll
  for (int i = 1; i < 4; ++i)
    if (ranks_above_t<kFinite>(s[i], v0)) { i0 = i; v0 = s[i]; }
  const int first = i0 == 0 ? 1 : 0;  // the second scan starts at `first`, then runs from first + 1
  int i1 = first;
  float v1 = i0 == 0 ? s[1] : s[0];
#pragma unroll
  for (int i = 1; i < 4; ++i)
    if (i > first && i != i0 && ranks_above_t<kFinite>(s[i], v1)) { i1 = i; v1 = s[i]; }
  const int lo = i0 < i1 ? i0 : i1, hi = i0 < i1 ? i1 : i0;
  return static_cast<uint32_t>(lo | (hi << 2));
}

// Metadata nibble of one mask group (x: the group's Group values): pair48_select / scalar24_select.
// kMaxScore: the score is PairScore::max (the caller hoisted the test out of its span loop).
// kFinite: the values are finite (the row was checked): pair_score_max is then the larger |x|.
template <int Group, bool kMaxScore, bool kFinite>
__device__ __forceinline__ uint32_t group_select(const float* x, PairScore score) {
  float s[4];
  if constexpr (Group == 8) {
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      if constexpr (kFinite && kMaxScore) s[p] = fmaxf(abs_f32(x[2 * p]), abs_f32(x[2 * p + 1]));
      else s[p] = kMaxScore ? pair_score_max(x[2 * p], x[2 * p + 1]) : pair_score(x[2 * p], x[2 * p + 1], score);
    }
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) s[i] = abs_f32(x[i]);
  }
  return top2_of4_reg<kFinite>(s);
}

// v[i] for a runtime i known to lie in [lo, hi] (select chain, no local memory).
template <int lo, int hi>
__device__ __forceinline__ float pick(const float* v, int i) {
  float r = v[hi];
#pragma unroll
  for (int j = hi - 1; j >= lo; --j) r = i == j ? v[j] : r;
  return r;
}

// One lane's N values of a block of F after quantize_regs: the block scale, the codes, and the
// dequantized values (code * element scale).
template <class F, int N>
struct BlockQ {
  typename F::scale_t s;
  uint32_t code[N];  // 32-bit registers: no 8/16-bit conversions between the encode, decode and packing
  float deq[N];
};
// The NaN-sticky max |v| of N values (with finite values, the plain max).
template <int N, bool kFinite>
__device__ __forceinline__ float regs_amax(const float* v) {
  if constexpr (kFinite) {
    float amax = 0.0f;
#pragma unroll
    for (int k = 0; k < N; ++k) amax = fmaxf(amax, abs_f32(v[k]));
    return amax;
  } else {
    return amax_nan_sticky(v, N);
  }
}
// The same max over the W lanes (aligned, W a power of two <= 32) that share a block, by xor shuffles
// within `mask`: max is order-free, so every lane gets the value of the CPU's scan over the whole
// block. (The NaN-sticky combine: NaN if either side is NaN, else the larger, Inf included.)
template <int W, bool kFinite>
__device__ __forceinline__ float lanes_amax(float amax, unsigned mask) {
#pragma unroll
  for (int off = W / 2; off >= 1; off >>= 1) {
    const float o = __shfl_xor_sync(mask, amax, off);
    if constexpr (kFinite) amax = fmaxf(amax, o);
    else amax = (is_nan(amax) || is_nan(o)) ? f32_from_bits(0x7FC00000u) : fmaxf(amax, o);
  }
  return amax;
}
// This lane's N values of a block whose amax is given: the same scale_for / code_divisor /
// e2m1_encode / decode * element_scale sequence as F::quantize() + dequantize. The divisor is
// replaced by 1 for a zero divisor (codes forced to 0 anyway) only to keep the bounds / reciprocal
// finite.
template <class F, int N>
__device__ __forceinline__ void quantize_regs(const float* v, float amax, BlockQ<F, N>& q) {
  q.s = F::scale_for(amax);
  const float d = F::code_divisor(amax, q.s);
  const float dd = d == 0.0f ? 1.0f : d;
  const float es = F::element_scale(q.s, 0);  // NVFP4 / MXFP4: one scale for the whole block
  // e2m1_encode(v[k] / dd) without the N divisions, by the host quantizers' proven-equal forms:
  // NVFP4's seven bounds of its E4M3 divisor (dd: an E4M3 value or 1; FP32 only), MXFP4's exact
  // power-of-two reciprocal
  if constexpr (std::is_same_v<typename F::scale_t, scale_ue4m3>) {
    // a zero divisor's codes are 0 without a per-element test: three NaN thresholds fail every
    // comparison of the search (NaN and Inf values included) and the sign is masked off
    E2m1Thresholds t = e2m1_thresholds_e4m3(dd);
    const bool zero = d == 0.0f;
    const float nan = f32_from_bits(0x7FC00000u);
    t.m[0] = zero ? nan : t.m[0];
    t.m[1] = zero ? nan : t.m[1];
    t.m[3] = zero ? nan : t.m[3];
    const uint32_t sign_mask = zero ? 0u : 0x80000000u;
    // the dequantized value is selected from the search's three decisions: e2m1 magnitude * es for
    // the 8 magnitudes once per block (exact products), the sign ORed in; the same bits as
    // decode(code) * es (a NaN es makes every value NaN either way)
    float mags[8];
#pragma unroll
    for (int c = 0; c < 8; ++c) mags[c] = e2m1_magnitude(static_cast<uint8_t>(c)) * es;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const uint32_t sign = f32_bits(v[k]) & sign_mask;
      const E2m1Search r = e2m1_search(abs_f32(v[k]), t);
      q.code[k] = (sign >> 28) | r.mag();
      const float mag = r.b2 ? (r.b1 ? (r.b0 ? mags[7] : mags[6]) : (r.b0 ? mags[5] : mags[4]))
                             : (r.b1 ? (r.b0 ? mags[3] : mags[2]) : (r.b0 ? mags[1] : mags[0]));
      q.deq[k] = f32_from_bits(f32_bits(mag) | sign);
    }
  } else {
    static_assert(std::is_same_v<typename F::scale_t, scale_ue8m0>, "NVFP4 or MXFP4 blocks");
    const float inv = 1.0f / dd;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      q.code[k] = d == 0.0f ? 0u : uint32_t{e2m1_encode(v[k] * inv)};
      q.deq[k] = F::decode(q.code[k]) * es;
    }
  }
}

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);  // two independent RN conversions, as __float2half_rn
  return *reinterpret_cast<const uint32_t*>(&h);
}
// 8 floats -> 8 halves, one 16-byte store (dst 16-byte aligned).
__device__ __forceinline__ void store_half8(__half* dst, const float* v) {
  stg_v4(dst, pack_half2(v[0], v[1]), pack_half2(v[2], v[3]), pack_half2(v[4], v[5]), pack_half2(v[6], v[7]));
}

// One 32-wide backbone span, four lanes (a quad): lane q holds the span's elements 8q .. 8q + 7, one
// 16-byte load, so a warp reads 8 spans' 512 contiguous bytes and writes each plane with 16-byte
// stores side by side. A pair-4:8 mask group is exactly a lane's 8 values, a scalar 2:4 lane has two
// groups: either way the lane holds kept values 4q .. 4q + 3 of the span's 16, in K order. The
// blocks' amaxes are combined by xor shuffles within the quad (the backbone block: 4 lanes; an
// NVFP4-16 residual block: 2; MXFP4-32: 4); every lane of a block then computes its scale, divisor
// and bounds itself. The same per-element arithmetic as the CPU's sharq_prepare_span (bit-identical).
// (One thread per span, all 32 values in its registers, took 128 registers and a quarter of the
// warps: 12-22% slower in the engine's preps at 2048 rows, H200, docs/perf/hopper.md.) kMaxScore: a.score
// is PairScore::max (pair-4:8 only; see group_select). kSafe: the row holds only finite values, none
// too small for the reciprocal division (row_global_scale checked), so the NaN handling of the scores
// and amaxes and the division's guard are skipped: for such values they decide nothing. active: false
// for a quad that only keeps its warp's shuffles full (it stores nothing).
template <class V, int Group, bool kMaxScore, bool kSafe, class R, class D>
__device__ __forceinline__ void quad_span(const RowArgs& a, int64_t m, int64_t sp, int q, const D& g, const R& row,
                                          bool active) {
  constexpr bool kFinite = kSafe;
  using Fbb = typename V::Fbb;
  using Fres = typename V::Fres;
  using bb_t = backbone_block_t<V, Group>;
  static_assert(Fbb::kBlock == 32 && (Fres::kBlock == 16 || Fres::kBlock == 32), "one 32-wide backbone block per span");
  constexpr int kG = 8 / Group;               // mask groups per lane
  constexpr int kRW = Fres::kBlock / 8;       // lanes per residual block
  const unsigned mask = 0xffffffffu;  // the whole warp runs every quad_span (the caller's loop is warp-uniform)
  float x[8];
  row.at8(sp * 32 + 8 * q, x);
  if constexpr (V::kGlobal) {  // (MXFP4's g is 1: x / 1 = x)
#pragma unroll
    for (int k = 0; k < 8; ++k) x[k] = g.template div<kSafe>(x[k]);  // x~ = x / g (padding: 0 / g = 0, as on the CPU)
  }
  // 1. mask: the metadata nibble of each group; the kept values in K order
  uint32_t meta[kG];
  float kv[4];
#pragma unroll
  for (int gi = 0; gi < kG; ++gi) {
    const float* xg = x + gi * Group;
    meta[gi] = group_select<Group, kMaxScore, kFinite>(xg, a.score);
    const int i0 = meta[gi] & 3, i1 = meta[gi] >> 2;  // i0 < i1
    if constexpr (Group == 8) {  // pairs i0, i1
      float e[4], o[4];
#pragma unroll
      for (int p = 0; p < 4; ++p) { e[p] = xg[2 * p]; o[p] = xg[2 * p + 1]; }
      kv[0] = pick<0, 2>(e, i0);
      kv[1] = pick<0, 2>(o, i0);
      kv[2] = pick<1, 3>(e, i1);
      kv[3] = pick<1, 3>(o, i1);
    } else {  // elements i0, i1
      kv[2 * gi + 0] = pick<0, 2>(xg, i0);
      kv[2 * gi + 1] = pick<1, 3>(xg, i1);
    }
  }
  // 2. the backbone block over the span's 16 kept values (4 per lane)
  BlockQ<Fbb, 4> bq;
  quantize_regs<Fbb, 4>(kv, lanes_amax<4, kFinite>(regs_amax<4, kFinite>(kv), mask), bq);
  // S^ at the lane's positions: the kept value's dequantized code, 0 where dropped
  float sh[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const int gi = k / Group, i = k % Group;
    const int i0 = meta[gi] & 3, i1 = meta[gi] >> 2;
    if constexpr (Group == 8) {
      const int p = i / 2, e = i % 2;
      sh[k] = i0 == p ? bq.deq[e] : (i1 == p ? bq.deq[2 + e] : 0.0f);
    } else {
      sh[k] = i0 == i ? bq.deq[2 * gi] : (i1 == i ? bq.deq[2 * gi + 1] : 0.0f);
    }
  }
  const int64_t idx = m * a.spans + sp;
  if (a.out.backbone) {  // (uniform: the shuffle runs in every lane)
    const uint32_t next = Group == 8 ? __shfl_xor_sync(mask, meta[0], 1) : 0u;
    if (active) {
      bb_t* bb = static_cast<bb_t*>(a.out.backbone) + idx;
      if (q == 0) bb->s = bq.s;
      if constexpr (Group == 8) {  // group q's nibble; the byte holds groups 2i, 2i + 1
        if (q % 2 == 0) bb->meta[q / 2] = static_cast<uint8_t>(meta[0] | (next << 4));
      } else {
        bb->meta[q] = static_cast<uint8_t>(meta[0] | (meta[1] << 4));
      }
      bb->qs[2 * q] = static_cast<uint8_t>(bq.code[0] | (bq.code[1] << 4));
      bb->qs[2 * q + 1] = static_cast<uint8_t>(bq.code[2] | (bq.code[3] << 4));
    }
  }
  // 3. the residual against the quantized backbone, 4. its block (kRW lanes)
  float r[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) r[k] = x[k] - sh[k];
  BlockQ<Fres, 8> rq;
  quantize_regs<Fres, 8>(r, lanes_amax<kRW, kFinite>(regs_amax<8, kFinite>(r), mask), rq);
  if (a.out.residual && active) {
    constexpr int kRes = 32 / Fres::kBlock;
    auto* res = static_cast<typename Fres::block_t*>(a.out.residual) + idx * kRes + q / kRW;
    const int j = q % kRW;  // the lane's place in its block
    if (j == 0) res->s = rq.s;
#pragma unroll
    for (int i = 0; i < 4; ++i) res->qs[4 * j + i] = static_cast<uint8_t>(rq.code[2 * i] | (rq.code[2 * i + 1] << 4));
  }
  if (!active) return;
  if constexpr (V::kGlobal) {  // FP16 planes: NVFP4 only (checked on the host)
    const int64_t o = m * a.ld + sp * 32 + 8 * q;
    if (a.out.s_plane) store_half8(a.out.s_plane + o, sh);
    if (a.out.r_plane) store_half8(a.out.r_plane + o, rq.deq);
    if (a.out.x_plane) {
      float xh[8];
#pragma unroll
      for (int k = 0; k < 8; ++k) xh[k] = sh[k] + rq.deq[k];  // S^ + R^ exact in FP32 (NVFP4), rounded once
      store_half8(a.out.x_plane + o, xh);
    }
  }
}

// Spans of row blockIdx.x handled by this block: chunk blockIdx.y of gridDim.y.
__device__ __forceinline__ void span_range(int64_t spans, int64_t* b, int64_t* e) {
  const int64_t per = (spans + gridDim.y - 1) / gridDim.y;
  *b = static_cast<int64_t>(blockIdx.y) * per;
  *e = *b + per < spans ? *b + per : spans;
}

// g_x of row m (NVFP4): from the per-tensor pass, or this row's finite amax; block y == 0 of the
// row (row 0 for per tensor) stores it. Every thread gets it.
// safe (or null): whether the row holds only finite values, each zero or with |x| >= 2^-100 and
// |x| >= 2^-97 g (RowDivisor::div<true>'s condition; per token only: the per-tensor scale does not
// read the row here, so it reports false).
template <class R>
__device__ __forceinline__ float row_global_scale(const RowArgs& a, const R& row, int64_t m, float* red,
                                                  bool* safe = nullptr) {
  if (safe) *safe = false;
  float g;
  if (a.per_tensor) {
    g = nvfp4_global_scale(f32_from_bits(*a.amax_bits));
  } else {
    bool finite = false;
    float min_nonzero = 0.0f;
    g = nvfp4_global_scale(row_amax(row, red, &finite, &min_nonzero));
    if (safe) *safe = finite && min_nonzero >= 0x1p-100f && min_nonzero >= g * 0x1p-97f;
  }
  if (a.out.g && threadIdx.x == 0 && blockIdx.y == 0 && (!a.per_tensor || m == 0)) a.out.g[a.per_tensor ? 0 : m] = g;
  return g;
}

// Zero padding of a plane from 32 * spans up to ld (block y == 0 of the row).
__device__ __forceinline__ void zero_tail(__half* plane, const RowArgs& a, int64_t m) {
  if (!plane) return;
  for (int64_t c = a.spans * 32 + threadIdx.x; c < a.ld; c += blockDim.x) plane[m * a.ld + c] = __float2half_rn(0.0f);
}

template <class V, int Group, class T, int kIn>
__global__ void __launch_bounds__(256) sharq_prep_kernel(RowArgs a) {
  pdl_wait();  // PDL (launch.cuh): x comes from the preceding kernel
  pdl_trigger();
  __shared__ float red[33];
  const int64_t m = blockIdx.x;
  const auto row = make_row<T, kIn>(a, m, red + 32, blockIdx.y == 0);
  float g = 1.0f;
  bool safe = false;  // the row holds only finite values, none too small for the reciprocal division:
                      // its spans skip the NaN handling and the division's guard (only per-token
                      // NVFP4 rows learn it, from their amax pass; MXFP4, HiF4 and per-tensor rows
                      // keep the NaN-handling path)
  if constexpr (V::kGlobal) {
    g = row_global_scale(a, row, m, red, &safe);
  }
  const RowDivisor<T, kIn> div(g);
  int64_t b, e;
  span_range(a.spans, &b, &e);
  // the pair score tested once, not per pair: the spec's max (and scalar 2:4, which has no pair
  // score) gets span loops of its own, one for safe rows and one for the others. The loop is
  // warp-uniform, so that the quads' shuffles run with the full mask (a partial mask costs a
  // convergence test per shuffle group): past the row's last span a warp's lanes redo that span's
  // quad and store nothing
  auto spans = [&](auto max_score, auto all_safe) {
    const int64_t end = 4 * e, lane = threadIdx.x & 31;
    for (int64_t t0 = 4 * b + (threadIdx.x - lane); t0 < end; t0 += blockDim.x) {
      const int64_t t = t0 + lane;
      const bool active = t < end;
      const int64_t tt = active ? t : end - 4 + (t & 3);
      quad_span<V, Group, decltype(max_score)::value, decltype(all_safe)::value>(a, m, tt / 4, static_cast<int>(tt & 3), div, row, active);
    }
  };
  using True = std::true_type;
  using False = std::false_type;
  if (Group == 4 || a.score == PairScore::max) {
    if (safe) spans(True{}, True{});
    else spans(True{}, False{});
  } else if constexpr (Group == 8) {
    spans(False{}, False{});
  }
  if (blockIdx.y == 0) {
    zero_tail(a.out.s_plane, a, m);
    zero_tail(a.out.r_plane, a, m);
    zero_tail(a.out.x_plane, a, m);
  }
}

// NVFP4 W4A4 baseline: a thread quantizes 32 columns = two NVFP4-16 blocks, in registers.
// a.spans counts 32-wide chunks here.
template <class T, int kIn>
__global__ void __launch_bounds__(256) nvfp4_prep_kernel(RowArgs a) {
  pdl_wait();  // PDL (launch.cuh): x comes from the preceding kernel
  pdl_trigger();
  __shared__ float red[33];
  const int64_t m = blockIdx.x;
  const auto row = make_row<T, kIn>(a, m, red + 32, blockIdx.y == 0);
  const RowDivisor<T, kIn> div(row_global_scale(a, row, m, red));
  const int64_t nblk = (a.K + 15) / 16;
  int64_t b, e;
  span_range(a.spans, &b, &e);
  for (int64_t sp = b + threadIdx.x; sp < e; sp += blockDim.x) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float v[16];
      row.at8(sp * 32 + 16 * h, v);
      row.at8(sp * 32 + 16 * h + 8, v + 8);
#pragma unroll
      for (int k = 0; k < 16; ++k) v[k] = div.template div<false>(v[k]);  // x / g
      BlockQ<Nvfp4_16, 16> q;
      quantize_regs<Nvfp4_16, 16>(v, regs_amax<16, false>(v), q);  // deq = e2m1_decode(code) * ue4m3_decode(s)
      const int64_t blk = sp * 2 + h;
      if (a.nv_blocks && blk < nblk) {
        block_nvfp4_16* nb = a.nv_blocks + m * nblk + blk;
        nb->s = q.s;
#pragma unroll
        for (int i = 0; i < 8; ++i) nb->qs[i] = static_cast<uint8_t>(q.code[2 * i] | (q.code[2 * i + 1] << 4));
      }
      if (a.out.x_plane) {
        store_half8(a.out.x_plane + m * a.ld + sp * 32 + 16 * h, q.deq);
        store_half8(a.out.x_plane + m * a.ld + sp * 32 + 16 * h + 8, q.deq + 8);
      }
    }
  }
  if (blockIdx.y == 0) zero_tail(a.out.x_plane, a, m);
}

// ---- small-M (latency) kernels: one warp per span ------------------------------------------
// One block of F quantized one lane per element: the block's amax over its lanes, then quantize_regs
// on the lane's one value (the same scale_for / code_divisor / division-free encode as F::quantize()).
// Returns the lane's code; *scale receives the block scale.
template <class F>
__device__ __forceinline__ uint8_t lane_quantize(float v, typename F::scale_t* scale) {
  BlockQ<F, 1> q;
  quantize_regs<F, 1>(&v, lanes_amax<F::kBlock, false>(abs_f32(v), 0xffffffffu), q);  // NaN-sticky amax
  *scale = q.s;
  return static_cast<uint8_t>(q.code[0]);
}

// Two 4-bit codes of lanes 2i, 2i+1 -> byte (even lane's code in the low nibble); valid on even lanes.
__device__ __forceinline__ uint8_t pair_byte(uint8_t code) {
  const uint32_t hi = __shfl_down_sync(0xffffffffu, static_cast<uint32_t>(code), 1);
  return static_cast<uint8_t>(code | (hi << 4));
}

// One 32-wide backbone span, one lane per element (the warp-parallel form of sharq_prepare_span;
// bit-identical, see sharq_prep_test).
template <class V, int Group, class R, class D>
__device__ void warp_span(const RowArgs& a, int64_t m, int64_t sp, const D& g, const R& row, float* xs, uint8_t* cs) {
  using Fbb = typename V::Fbb;
  using Fres = typename V::Fres;
  using bb_t = backbone_block_t<V, Group>;
  constexpr int kRes = 32 / Fres::kBlock;
  const int lane = threadIdx.x & 31;
  float xt = row.at(sp * 32 + lane);
  if constexpr (V::kGlobal) xt = g.template div<false>(xt);  // x / g (padding: 0 / g = 0, as on the CPU)
  xs[lane] = xt;
  __syncwarp();
  // 1. mask: every lane of a group evaluates its group's selection (same function as the CPU)
  const int grp = lane / Group, pos = lane % Group;
  uint8_t meta, bits;
  if constexpr (Group == 8) {
    meta = pair48_select(xs + 8 * grp, a.score);
    bits = pair48_keep_bits(meta);
  } else {
    meta = scalar24_select(xs + 4 * grp);
    bits = scalar24_keep_bits(meta);
  }
  const bool kept = (bits >> pos) & 1u;
  const float sv = kept ? xt : 0.0f;
  // 2. backbone quantization over the logical span; S^ of the kept positions
  typename Fbb::scale_t bsc;
  const uint8_t code = lane_quantize<Fbb>(sv, &bsc);
  const float sh = kept ? Fbb::decode(code) * Fbb::element_scale(bsc, lane) : 0.0f;
  // 3. residual against the quantized backbone, 4. its quantization
  const float r = xt - sh;
  typename Fres::scale_t rsc;
  const uint8_t rcode = lane_quantize<Fres>(r, &rsc);
  const int64_t idx = m * a.spans + sp;
  // packed outputs (byte stores; the fast path writes planes only)
  const uint32_t kept_mask = __ballot_sync(0xffffffffu, kept);
  const uint8_t rbyte = pair_byte(rcode);
  const uint32_t meta_next = __shfl_down_sync(0xffffffffu, static_cast<uint32_t>(meta), Group);
  if (a.out.backbone) {
    bb_t* bb = static_cast<bb_t*>(a.out.backbone) + idx;
    if (kept) cs[__popc(kept_mask & ((1u << lane) - 1u))] = code;
    __syncwarp();
    if (lane == 0) bb->s = bsc;
    if (pos == 0 && grp % 2 == 0) bb->meta[grp / 2] = static_cast<uint8_t>(meta | (meta_next << 4));
    if (lane < 8) bb->qs[lane] = static_cast<uint8_t>(cs[2 * lane] | (cs[2 * lane + 1] << 4));
  }
  if (a.out.residual) {
    auto* res = static_cast<typename Fres::block_t*>(a.out.residual) + idx * kRes;
    const int b = lane / Fres::kBlock, k = lane % Fres::kBlock;
    if (k == 0) res[b].s = rsc;
    if (k % 2 == 0) res[b].qs[k / 2] = rbyte;
  }
  const int64_t o = m * a.ld + sp * 32 + lane;
  if (a.out.s_plane || a.out.r_plane || a.out.x_plane) {
    const float rh = Fres::decode(rcode) * Fres::element_scale(rsc, lane % Fres::kBlock);
    if (a.out.s_plane) a.out.s_plane[o] = __float2half_rn(sh);
    if (a.out.r_plane) a.out.r_plane[o] = __float2half_rn(rh);
    if (a.out.x_plane) a.out.x_plane[o] = __float2half_rn(sh + rh);  // exact sum, rounded once
  }
  __syncwarp();  // xs / cs are reused by the next span
}

// Small-M (latency) form: one warp per span, one lane per element (lower latency per span than the
// four-lanes-per-span kernel, which wins on throughput at large M). Bit-identical to it and to the CPU.
template <class V, int Group, class T, int kIn>
__global__ void __launch_bounds__(256) sharq_prep_warp_kernel(RowArgs a) {
  pdl_wait();  // PDL (launch.cuh): x comes from the preceding kernel
  pdl_trigger();
  __shared__ float red[33];
  __shared__ float xs_all[8][32];
  __shared__ uint8_t cs_all[8][32];
  const int64_t m = blockIdx.x;
  const auto row = make_row<T, kIn>(a, m, red + 32, blockIdx.y == 0);
  float g = 1.0f;
  if constexpr (V::kGlobal) {
    g = row_global_scale(a, row, m, red);
  }
  const RowDivisor<T, kIn> div(g);
  const int warp = threadIdx.x / 32;
  int64_t b, e;
  span_range(a.spans, &b, &e);
  for (int64_t sp = b + warp; sp < e; sp += blockDim.x / 32)
    warp_span<V, Group>(a, m, sp, div, row, xs_all[warp], cs_all[warp]);
  if (blockIdx.y == 0) {
    zero_tail(a.out.s_plane, a, m);
    zero_tail(a.out.r_plane, a, m);
    zero_tail(a.out.x_plane, a, m);
  }
}

// Small-M NVFP4 W4A4 baseline: a warp quantizes 32 columns = two NVFP4-16 blocks, one lane per element.
// a.spans counts 32-wide chunks here.
template <class T, int kIn>
__global__ void __launch_bounds__(256) nvfp4_prep_warp_kernel(RowArgs a) {
  pdl_wait();  // PDL (launch.cuh): x comes from the preceding kernel
  pdl_trigger();
  __shared__ float red[33];
  const int64_t m = blockIdx.x;
  const auto row = make_row<T, kIn>(a, m, red + 32, blockIdx.y == 0);
  const RowDivisor<T, kIn> div(row_global_scale(a, row, m, red));
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int64_t nblk = (a.K + 15) / 16;
  int64_t b, e;
  span_range(a.spans, &b, &e);
  for (int64_t sp = b + warp; sp < e; sp += blockDim.x / 32) {
    const float v = div.template div<false>(row.at(sp * 32 + lane));  // x / g
    scale_ue4m3 sc;
    const uint8_t code = lane_quantize<Nvfp4_16>(v, &sc);
    const uint8_t byte = pair_byte(code);
    const int64_t blk = sp * 2 + lane / 16;
    if (a.nv_blocks && blk < nblk) {
      if (lane % 16 == 0) a.nv_blocks[m * nblk + blk].s = sc;
      if (lane % 2 == 0) a.nv_blocks[m * nblk + blk].qs[(lane % 16) / 2] = byte;
    }
    if (a.out.x_plane) a.out.x_plane[m * a.ld + sp * 32 + lane] = __float2half_rn(e2m1_decode(code) * ue4m3_decode(sc.e));
  }
  if (blockIdx.y == 0) zero_tail(a.out.x_plane, a, m);
}

// Launch shape: rows x bpr blocks of `threads` threads; `lanes_per_span` threads quantize a span
// (the SharQ prep: 4; the NVFP4 baseline: 1, a thread per two blocks). Many rows: one block per row
// (threads = spans x lanes, up to 256, looping past that). Few rows: the row's spans are shared out
// so that every thread has about one share (each block reads the whole row for its norm and amax).
struct Shape {
  unsigned bpr, threads;
};
Shape launch_shape(int64_t M, int64_t spans, int lanes_per_span = 1) {
  const int sms = sm_count();
  int64_t bpr = 1;
  if (M < 2LL * sms) bpr = std::max<int64_t>(1, std::min<int64_t>((spans + 63) / 64, (4LL * sms + M - 1) / M));
  const int64_t per = (spans + bpr - 1) / bpr * lanes_per_span;
  const int64_t threads = std::min<int64_t>(256, std::max<int64_t>(64, (per + 31) / 32 * 32));
  return {static_cast<unsigned>(bpr), static_cast<unsigned>(threads)};
}

// Decode sizes use the warp-per-span kernels (latency); larger M the four-lanes-per-span ones
// (throughput; the NVFP4 baseline: a thread per span).
constexpr int64_t kWarpKernelMaxM = 64;
// Warp kernels: 8 warps per block, about one span per warp (each block reads the whole row for g).
unsigned warp_blocks_per_row(int64_t M, int64_t spans) {
  const int sms = sm_count();
  const int64_t most = (spans + 7) / 8, want = (8LL * sms + M - 1) / M;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(most, want)));
}


// f(T{}, std::integral_constant<int, kIn>{}) for the element type and the input kind.
template <class F>
void with_input(DType xt, PrepInput in, F&& f) {
  auto by_input = [&](auto t) {
    switch (in) {
      case PrepInput::rmsnorm: f(t, std::integral_constant<int, kInRms>{}); break;
      case PrepInput::swiglu: f(t, std::integral_constant<int, kInSwiglu>{}); break;
      case PrepInput::residual_rmsnorm: f(t, std::integral_constant<int, kInResidualRms>{}); break;
      default: f(t, std::integral_constant<int, kInPlain>{}); break;
    }
  };
  if (xt == DType::bf16) by_input(__nv_bfloat16{});
  else by_input(__half{});
}

void check_common(const char* what, const void* x, int64_t M, int64_t K, PrepInput input, const void* rms_w, int64_t ld) {
  const bool rmsnorm = input == PrepInput::rmsnorm || input == PrepInput::residual_rmsnorm;
  if (M < 0 || K <= 0) throw std::invalid_argument(fmt::format("{}: bad shape M = {}, K = {}", what, M, K));
  if (K > kPrepMaxK)
    throw std::invalid_argument(fmt::format("{}: K = {} exceeds the supported maximum {}",
                                            what, K, kPrepMaxK));
  if (M > 0 && !x) throw std::invalid_argument(fmt::format("{}: x is null", what));
  if (rmsnorm && !rms_w) throw std::invalid_argument(fmt::format("{}: rmsnorm requested without its weight", what));
  if (ld % 8 != 0 || ld < (K + 127) / 128 * 128)
    throw std::invalid_argument(fmt::format("{}: plane leading dimension {} must be a multiple of 8 and >= {}", what, ld,
                                            (K + 127) / 128 * 128));
}

template <class T, int kIn>
void launch_amax(const RowArgs& a, int64_t M, uint32_t* scratch, cudaStream_t st) {
  SHARQ_CUDA_CHECK(cudaMemsetAsync(scratch, 0, sizeof(uint32_t), st));
  launch_pdl(amax_kernel<T, kIn>, static_cast<unsigned>(M), dim3(256), 0, st, a, scratch);
  SHARQ_CUDA_CHECK(cudaGetLastError());
}

template <class V, int G, class T, int kIn>
void launch_sharq(const RowArgs& a, int64_t M, cudaStream_t st) {
  if (M <= kWarpKernelMaxM) {
    launch_pdl(sharq_prep_warp_kernel<V, G, T, kIn>, dim3(static_cast<unsigned>(M), warp_blocks_per_row(M, a.spans)), dim3(256), 0, st, a);
  } else {
    const Shape sh = launch_shape(M, a.spans, 4);
    launch_pdl(sharq_prep_kernel<V, G, T, kIn>, dim3(static_cast<unsigned>(M), sh.bpr), dim3(sh.threads), 0, st, a);
  }
  SHARQ_CUDA_CHECK(cudaGetLastError());
}

template <class T, int kIn>
void dispatch_sharq(const PrepSpec& s, RowArgs& a, int64_t M, uint32_t* scratch, cudaStream_t st) {
  if (s.fmt == SharqFormat::nvfp4 && a.per_tensor) {
    launch_amax<T, kIn>(a, M, scratch, st);
    a.amax_bits = scratch;
  }
  if (s.fmt == SharqFormat::nvfp4) {
    if (s.mask == MaskKind::pair48) launch_sharq<SharqNvfp4, 8, T, kIn>(a, M, st);
    else launch_sharq<SharqNvfp4, 4, T, kIn>(a, M, st);
  } else {
    if (s.mask == MaskKind::pair48) launch_sharq<SharqMxfp4, 8, T, kIn>(a, M, st);
    else launch_sharq<SharqMxfp4, 4, T, kIn>(a, M, st);
  }
}

}  // namespace

void sharq_prep(const void* x, DType xt, int64_t M, int64_t K, const void* rms_weight, const PrepSpec& spec,
                const PrepOut& out, uint32_t* scratch, cudaStream_t stream) {
  const int64_t ld = out.ld ? out.ld : (K + 127) / 128 * 128;
  check_common("sharq_prep", x, M, K, spec.input, rms_weight, ld);
  if (spec.fmt == SharqFormat::hif4)
    throw std::invalid_argument("sharq_prep: HiF4 is not supported on the GPU (NVFP4 and MXFP4 are)");
  if (spec.mask != MaskKind::pair48 && spec.mask != MaskKind::scalar24)
    throw std::invalid_argument("sharq_prep: the mask must be pair-4:8 or scalar 2:4 (the general N:M mask has no packed form)");
  const bool nv = spec.fmt == SharqFormat::nvfp4;
  if (nv && spec.act_scale == GlobalScale::none)
    throw std::invalid_argument("sharq_prep: NVFP4 needs a per-tensor or per-token activation scale");
  if (!nv && (out.s_plane || out.r_plane || out.x_plane))
    throw std::invalid_argument("sharq_prep: FP16 planes are NVFP4-only (MXFP4 power-of-two scales leave the FP16 range)");
  const bool per_tensor = nv && spec.act_scale == GlobalScale::per_tensor;
  if (per_tensor && !scratch && M > 0) throw std::invalid_argument("sharq_prep: per-tensor scale needs the scratch word");
  if (M == 0) return;
  if (spec.input == PrepInput::residual_rmsnorm && out.sum && out.sum == x)
    throw std::invalid_argument("sharq_prep: the residual sum must not overwrite its input (other blocks read it)");
  RowArgs a{x, rms_weight, K, (K + 31) / 32, ld, spec.eps, per_tensor, nullptr, spec.score, out, nullptr, spec.add};
  a.out.ld = ld;
  with_input(xt, spec.input, [&](auto t, auto in) {
    dispatch_sharq<decltype(t), decltype(in)::value>(spec, a, M, scratch, stream);
  });
}

namespace {
template <class T, int kIn>
void launch_nvfp4(RowArgs& a, int64_t M, uint32_t* scratch, cudaStream_t st) {
  if (a.per_tensor) {
    launch_amax<T, kIn>(a, M, scratch, st);
    a.amax_bits = scratch;
  }
  if (M <= kWarpKernelMaxM) {
    launch_pdl(nvfp4_prep_warp_kernel<T, kIn>, dim3(static_cast<unsigned>(M), warp_blocks_per_row(M, a.spans)), dim3(256), 0, st, a);
  } else {
    const Shape sh = launch_shape(M, a.spans);
    launch_pdl(nvfp4_prep_kernel<T, kIn>, dim3(static_cast<unsigned>(M), sh.bpr), dim3(sh.threads), 0, st, a);
  }
  SHARQ_CUDA_CHECK(cudaGetLastError());
}
}  // namespace

void nvfp4_prep(const void* x, DType xt, int64_t M, int64_t K, const void* rms_weight, GlobalScale act_scale,
                PrepInput input, float eps, block_nvfp4_16* blocks, float* g, __half* x_plane, int64_t ld,
                uint32_t* scratch, cudaStream_t stream, const void* add, float* sum) {
  if (!ld) ld = (K + 127) / 128 * 128;
  check_common("nvfp4_prep", x, M, K, input, rms_weight, ld);
  if (act_scale == GlobalScale::none)
    throw std::invalid_argument("nvfp4_prep: NVFP4 needs a per-tensor or per-token activation scale");
  const bool per_tensor = act_scale == GlobalScale::per_tensor;
  if (per_tensor && !scratch && M > 0) throw std::invalid_argument("nvfp4_prep: per-tensor scale needs the scratch word");
  if (M == 0) return;
  PrepOut out;
  out.g = g;
  out.x_plane = x_plane;
  out.ld = ld;
  out.sum = sum;
  if (input == PrepInput::residual_rmsnorm && sum && sum == x)
    throw std::invalid_argument("nvfp4_prep: the residual sum must not overwrite its input (other blocks read it)");
  RowArgs a{x, rms_weight, K, (K + 31) / 32, ld, eps, per_tensor, nullptr, PairScore::max, out, blocks, add};
  with_input(xt, input, [&](auto t, auto in) { launch_nvfp4<decltype(t), decltype(in)::value>(a, M, scratch, stream); });
}

}  // namespace sharq::cuda
