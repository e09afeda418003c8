// The 16-bit-weight GEMV (gemv16.h).
//
// Work split: the grid is one wave of CTAs (the card's SM count times the CTAs an SM holds), and
// warp g of the G warps in it owns the contiguous weight rows [N g / G, N (g + 1) / G): every warp
// streams the same number of rows to within one, and a CTA computes its input (the prologue) once.
// A warp streams kRows rows together, kChunks 16-byte chunks of each per lane per step (8 loads
// of 16 bytes in flight per lane; 32 warps per SM: 128 KiB in flight per SM), lane l taking chunks
// l, l + 32, .. of the row. (H200, fp16 batch-1 step: one row of 8 chunks 4299 us, two rows of 4
// chunks 4389 us, the latter capped at 2 CTAs per SM 4594 us; docs/perf/engine.md.) X lives in shared memory as M rows of K 16-bit values.
//
// PDL: the warp's first step of weights is loaded before griddepcontrol.wait (the weights are
// written by no kernel of a step); X, the residual rows and Y are touched only after it.
#include "sharq/kernels/cuda/gemv16.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <map>
#include <mutex>
#include <set>
#include <stdexcept>
#include <utility>

#include <fmt/format.h>

#include "sharq/kernels/cuda/activation.cuh"
#include "sharq/kernels/cuda/cuda_check.h"
#include "sharq/kernels/cuda/half_convert.cuh"
#include "sharq/kernels/cuda/launch.cuh"
#include "sharq/kernels/cuda/ptx.cuh"

namespace sharq::cuda {
namespace {

constexpr int kThreads = 256, kWarps = kThreads / 32;
constexpr int kRows = 1;    // rows a warp streams together
constexpr int kChunks = 8;  // 16-byte chunks per row and lane in flight

struct Params {
  const uint4* w;
  int64_t N;
  int K, nch;  // nch = K / 8: 16-byte chunks per row
  Gemv16Input input;
  const void* x;
  int64_t ldx;
  const float* xr;
  const float* norm_w;
  float eps;
  Gemv16Output output;
  void* y;
  int64_t ldy;
  const float* bias;
};

// Per-thread values v[0 .. MT) summed over the CTA, every thread getting the sums: a butterfly in
// each warp, then the warps' sums in warp order (deterministic).
template <int MT>
__device__ __forceinline__ void block_sums(float (&v)[MT], float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    for (int off = 16; off > 0; off >>= 1) v[m] += __shfl_xor_sync(0xffffffffu, v[m], off);
    if (lane == 0) red[m * kWarps + warp] = v[m];
  }
  __syncthreads();
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    float s = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) s += red[m * kWarps + w];
    v[m] = s;
  }
}

// X (MT rows of nch chunks) into shared memory, as Gemv16Input says.
template <class T, int MT>
__device__ __forceinline__ void prologue(const Params& p, uint4* xs, float* red) {
  const int nch = p.nch;
  if (p.input == Gemv16Input::plain) {
    for (int m = 0; m < MT; ++m) {
      const uint4* src = reinterpret_cast<const uint4*>(static_cast<const T*>(p.x) + m * p.ldx);
      for (int c = threadIdx.x; c < nch; c += kThreads) xs[m * nch + c] = src[c];
    }
  } else if (p.input == Gemv16Input::swiglu) {
    for (int m = 0; m < MT; ++m) {
      const uint4* src = reinterpret_cast<const uint4*>(static_cast<const T*>(p.x) + m * p.ldx);
      for (int c = threadIdx.x; c < nch; c += kThreads) {
        const uint4 g = src[c], u = src[nch + c];
        const uint32_t gw[4] = {g.x, g.y, g.z, g.w}, uw[4] = {u.x, u.y, u.z, u.w};
        uint32_t o[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float2 gf = unpack2<T>(gw[j]), uf = unpack2<T>(uw[j]);
          o[j] = pack2<T>(silu_mul(gf.x, uf.x), silu_mul(gf.y, uf.y));
        }
        xs[m * nch + c] = make_uint4(o[0], o[1], o[2], o[3]);
      }
    }
  } else {  // rmsnorm: the sum of squares, then T(w * (x * r)) (transformer_ops' expression)
    float ss[MT];
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      ss[m] = 0.0f;
      const float4* r = reinterpret_cast<const float4*>(p.xr + static_cast<int64_t>(m) * p.K);
      for (int j = threadIdx.x; j < p.K / 4; j += kThreads) {
        const float4 a = r[j];
        ss[m] += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
      }
    }
    block_sums<MT>(ss, red);
    const float4* w4 = reinterpret_cast<const float4*>(p.norm_w);
    for (int m = 0; m < MT; ++m) {
      const float inv = 1.0f / sqrtf(ss[m] / static_cast<float>(p.K) + p.eps);
      const float4* r = reinterpret_cast<const float4*>(p.xr + static_cast<int64_t>(m) * p.K);
      for (int c = threadIdx.x; c < nch; c += kThreads) {
        const float4 a = r[2 * c], b = r[2 * c + 1], ga = w4[2 * c], gb = w4[2 * c + 1];
        xs[m * nch + c] = make_uint4(pack2<T>(ga.x * (a.x * inv), ga.y * (a.y * inv)),
                                     pack2<T>(ga.z * (a.z * inv), ga.w * (a.w * inv)),
                                     pack2<T>(gb.x * (b.x * inv), gb.y * (b.y * inv)),
                                     pack2<T>(gb.z * (b.z * inv), gb.w * (b.w * inv)));
      }
    }
  }
}

template <class T, int MT>
__global__ void __launch_bounds__(kThreads, MT == 1 ? 4 : 3) gemv16_kernel(const Params p) {
  extern __shared__ uint4 xs[];  // MT x nch chunks
  __shared__ float red[MT * kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t g = static_cast<int64_t>(blockIdx.x) * kWarps + warp, G = static_cast<int64_t>(gridDim.x) * kWarps;
  const int64_t r_end = p.N * (g + 1) / G;
  int64_t r0 = p.N * g / G;
  const int nch = p.nch;
  uint4 buf[kRows][kChunks];
  auto load = [&](int c0) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
#pragma unroll
      for (int u = 0; u < kChunks; ++u) {
        const int c = c0 + 32 * u + lane;
        buf[r][u] = r0 + r < r_end && c < nch ? ldg_nc_v4(p.w + (r0 + r) * nch + c) : make_uint4(0, 0, 0, 0);
      }
    }
  };
  load(0);  // the weights only, before the wait
  pdl_wait();
  pdl_trigger();
  prologue<T, MT>(p, xs, red);
  __syncthreads();
  bool loaded = true;
  for (; r0 < r_end; r0 += kRows) {
    float acc[kRows][MT];
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int m = 0; m < MT; ++m) acc[r][m] = 0.0f;
    for (int c0 = 0; c0 < nch; c0 += 32 * kChunks) {
      if (!loaded) load(c0);
      loaded = false;
#pragma unroll
      for (int u = 0; u < kChunks; ++u) {
        const int c = c0 + 32 * u + lane;
        if (c >= nch) break;
        uint4 xv[MT];
#pragma unroll
        for (int m = 0; m < MT; ++m) xv[m] = xs[m * nch + c];
#pragma unroll
        for (int j = 0; j < 4; ++j) {  // elements 2j, 2j + 1 of the chunk: k order
          float2 xf[MT];
#pragma unroll
          for (int m = 0; m < MT; ++m) xf[m] = unpack2<T>(j == 0 ? xv[m].x : j == 1 ? xv[m].y : j == 2 ? xv[m].z : xv[m].w);
#pragma unroll
          for (int r = 0; r < kRows; ++r) {
            const uint4& b = buf[r][u];
            const float2 f = unpack2<T>(j == 0 ? b.x : j == 1 ? b.y : j == 2 ? b.z : b.w);
#pragma unroll
            for (int m = 0; m < MT; ++m) {
              acc[r][m] = __fmaf_rn(f.x, xf[m].x, acc[r][m]);
              acc[r][m] = __fmaf_rn(f.y, xf[m].y, acc[r][m]);
            }
          }
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        float v = acc[r][m];
        for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
        const int64_t n = r0 + r;
        if (lane == r * MT + m && n < r_end) {
          if (p.output == Gemv16Output::accumulate) {
            static_cast<float*>(p.y)[m * p.ldy + n] += v;
          } else {
            T o = from_f<T>(v);
            if (p.bias) o = from_f<T>(to_f(o) + p.bias[n]);
            static_cast<T*>(p.y)[m * p.ldy + n] = o;
          }
        }
      }
    }
  }
}

using KernelFn = void (*)(Params);

template <class T>
KernelFn kernel_for(int64_t M) {
  switch (M) {
    case 1: return gemv16_kernel<T, 1>;
    case 2: return gemv16_kernel<T, 2>;
    case 3: return gemv16_kernel<T, 3>;
    default: return gemv16_kernel<T, 4>;
  }
}

// CTAs per SM for (kernel, shared memory), and the SM count, per device: asked once. The shared-memory
// opt-in is a property of the kernel, not of one launch: every kernel of the family is set once per
// device to the largest input it takes (set per launch size, a smaller launch would lower it and fail a
// later, larger one that the cache skips).
int wave_ctas(KernelFn k, size_t smem) {
  static std::mutex mu;
  static std::map<std::tuple<int, KernelFn, size_t>, int> cache;
  static std::set<int> configured;
  int dev = 0;
  SHARQ_CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_tuple(dev, k, smem);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  if (!configured.count(dev)) {  // marked only once every kernel is set (a throw leaves it to the next call)
    constexpr int kMaxSmem = static_cast<int>(kGemv16MaxMK * 2);
    for (int64_t m = 1; m <= kGemv16MaxM; ++m)
      for (KernelFn f : {kernel_for<__half>(m), kernel_for<__nv_bfloat16>(m)})
        SHARQ_CUDA_CHECK(cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxSmem));
    configured.insert(dev);
  }
  int per_sm = 0, sms = 0;
  SHARQ_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, kThreads, smem));
  SHARQ_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  if (per_sm < 1) throw std::runtime_error(fmt::format("gemv16: no CTA fits on an SM with {} bytes of shared memory", smem));
  return cache[key] = per_sm * sms;
}

bool aligned(const void* p, uintptr_t n) { return reinterpret_cast<uintptr_t>(p) % n == 0; }

}  // namespace

bool gemv16_supports(int64_t M, int64_t N, int64_t K) {
  return M >= 1 && M <= kGemv16MaxM && N >= 1 && N <= (int64_t{1} << 31) && K >= 8 && K % 8 == 0 &&
         M * K <= kGemv16MaxMK;
}

void gemv16(const Gemv16Args& a, cudaStream_t stream) {
  auto fail = [](const std::string& what) { throw std::invalid_argument("gemv16: " + what); };
  if (a.t != DType::f16 && a.t != DType::bf16) fail("the type must be FP16 or BF16");
  if (a.M < 0) fail(fmt::format("M = {} (>= 0)", a.M));
  if (a.M == 0) return;
  if (!gemv16_supports(a.M, a.N, a.K))
    fail(fmt::format("shape M = {}, N = {}, K = {} (M 1 .. {}, N >= 1, K a multiple of 8, M K <= {})", a.M, a.N, a.K,
                     kGemv16MaxM, kGemv16MaxMK));
  if (!a.w || !aligned(a.w, 16)) fail("the weights must be a non-null 16-byte aligned pointer");
  switch (a.input) {
    case Gemv16Input::plain:
    case Gemv16Input::swiglu: {
      const int64_t need = a.input == Gemv16Input::plain ? a.K : 2 * a.K;
      if (!a.x || !aligned(a.x, 16)) fail("x must be a non-null 16-byte aligned pointer");
      if (a.ldx < need || a.ldx % 8 != 0) fail(fmt::format("ldx = {} (>= {}, a multiple of 8)", a.ldx, need));
      break;
    }
    case Gemv16Input::rmsnorm:
      if (!a.xr || !aligned(a.xr, 16)) fail("the residual rows must be a non-null 16-byte aligned pointer");
      if (!a.norm_w || !aligned(a.norm_w, 16)) fail("the norm weights must be a non-null 16-byte aligned pointer");
      break;
    default:
      fail("unknown input kind");
  }
  if (!a.y) fail("null output");
  if (a.ldy < a.N) fail(fmt::format("ldy = {} (>= N = {})", a.ldy, a.N));
  if (a.output == Gemv16Output::accumulate && a.bias) fail("a bias goes with a stored output only");
  if (a.output != Gemv16Output::store && a.output != Gemv16Output::accumulate) fail("unknown output kind");
  {  // the output must not overlap what the CTAs read (other CTAs may still be reading it)
    const auto lo = [](const void* q) { return reinterpret_cast<uintptr_t>(q); };
    const size_t ybytes = static_cast<size_t>(((a.M - 1) * a.ldy + a.N) * (a.output == Gemv16Output::accumulate ? 4 : 2));
    const auto overlaps = [&](const void* q, size_t bytes) {
      return q && lo(q) < lo(a.y) + ybytes && lo(a.y) < lo(q) + bytes;
    };
    const bool in_x = a.input != Gemv16Input::rmsnorm && overlaps(a.x, static_cast<size_t>(((a.M - 1) * a.ldx + (a.input == Gemv16Input::swiglu ? 2 : 1) * a.K) * 2));
    const bool in_r = a.input == Gemv16Input::rmsnorm && overlaps(a.xr, static_cast<size_t>(a.M * a.K * 4));
    if (in_x || in_r) fail("the output overlaps the input");
  }
  Params p{};
  p.w = static_cast<const uint4*>(a.w);
  p.N = a.N;
  p.K = static_cast<int>(a.K);
  p.nch = static_cast<int>(a.K / 8);
  p.input = a.input;
  p.x = a.x;
  p.ldx = a.ldx;
  p.xr = a.xr;
  p.norm_w = a.norm_w;
  p.eps = a.eps;
  p.output = a.output;
  p.y = a.y;
  p.ldy = a.ldy;
  p.bias = a.bias;
  const KernelFn k = a.t == DType::f16 ? kernel_for<__half>(a.M) : kernel_for<__nv_bfloat16>(a.M);
  const size_t smem = static_cast<size_t>(a.M * a.K * 2);
  const int64_t ctas = std::min<int64_t>(wave_ctas(k, smem), (a.N + kWarps - 1) / kWarps);
  launch_pdl(k, dim3(static_cast<unsigned>(ctas)), dim3(kThreads), smem, stream, p);
}

}  // namespace sharq::cuda
