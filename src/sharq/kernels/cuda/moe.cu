// Mixture-of-experts kernels (moe.h): router + top-k, the permutation plan, the weighted combine.
#include "sharq/kernels/cuda/moe.h"

#include <algorithm>
#include <mutex>
#include <set>
#include <stdexcept>

#include <fmt/format.h>

#include "sharq/kernels/cuda/cuda_check.h"
#include "sharq/kernels/cuda/half_convert.cuh"
#include "sharq/kernels/cuda/launch.cuh"

namespace sharq::cuda {
namespace {

// ---- router ----------------------------------------------------------------------------------------
// Two kernels. moe_logits_kernel: grid (token groups of kRouteTok, expert blocks), 256 threads: the
// group's normed rows in shared memory (FP32; each block of the group recomputes them), then warp w
// the logits of experts 8 y + w, 8 (y + gridDim.y) + w, .. for those tokens (each router row read once
// per block). The expert blocks fill the SMs at small M (batch 1: 128 experts in 16 blocks, not one)
// and shrink to one per group at a prefill's M. moe_topk_kernel: one warp per token,
// softmax and top-k over its logits row. A logit's sum runs in the same order whatever M.
constexpr int kRouteThreads = 256;
constexpr int kRouteTok = 4;
constexpr int kLanes = 32;
constexpr int kRouteWarps = kRouteThreads / kLanes;                   // experts per block
constexpr int kPerLane = static_cast<int>(kMoeMaxExperts) / kLanes;  // experts a lane holds in the top-k

size_t route_smem(int64_t H) { return static_cast<size_t>(kRouteTok * H) * sizeof(float); }

__device__ __forceinline__ double warp_sum_d(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_sum_f(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__global__ void __launch_bounds__(kRouteThreads) moe_logits_kernel(const float* __restrict__ x, const float* __restrict__ nw,
                                                                   double eps, const float* __restrict__ router, int64_t M,
                                                                   int64_t H, int E, float* __restrict__ logits) {
  extern __shared__ __align__(16) float h[];  // [kRouteTok][H]
  __shared__ double part[kRouteWarps];
  __shared__ float rinv[kRouteTok];
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kRouteTok;
  pdl_wait();
  // RMSNorm as the CPU runtime computes it: the sum of squares in double, r = float(1 / sqrt(ss / H + eps)),
  // h = w * (x * r) in FP32
  for (int t = 0; t < kRouteTok; ++t) {
    const int64_t m = m0 + t;
    double ss = 0.0;
    if (m < M)
      for (int64_t i = tid; i < H; i += kRouteThreads) {
        const float v = x[m * H + i];
        ss += static_cast<double>(v) * v;
      }
    ss = warp_sum_d(ss);
    if (lane == 0) part[warp] = ss;
    __syncthreads();
    if (tid == 0) {
      double sum = 0.0;
      for (int w = 0; w < kRouteWarps; ++w) sum += part[w];
      rinv[t] = static_cast<float>(1.0 / sqrt(sum / static_cast<double>(H) + eps));
    }
    __syncthreads();
  }
  for (int t = 0; t < kRouteTok; ++t) {
    const int64_t m = m0 + t;
    const float r = rinv[t];
    for (int64_t i = tid; i < H; i += kRouteThreads) h[t * H + i] = m < M ? nw[i] * (x[m * H + i] * r) : 0.0f;
  }
  pdl_trigger();
  __syncthreads();
  // warp w: experts 8 y + w, then + 8 gridDim.y, .. (each logit's sum in the same order whatever the grid)
  for (int e = static_cast<int>(blockIdx.y) * kRouteWarps + warp; e < E; e += kRouteWarps * static_cast<int>(gridDim.y)) {
    const float4* wr = reinterpret_cast<const float4*>(router + static_cast<int64_t>(e) * H);
    float acc[kRouteTok] = {};
    for (int64_t i = lane; i < H / 4; i += kLanes) {
      const float4 w = wr[i];
#pragma unroll
      for (int t = 0; t < kRouteTok; ++t) {
        const float4 v = *reinterpret_cast<const float4*>(h + t * H + 4 * i);
        acc[t] += w.x * v.x + w.y * v.y + w.z * v.z + w.w * v.w;
      }
    }
#pragma unroll
    for (int t = 0; t < kRouteTok; ++t) {
      const float sum = warp_sum_f(acc[t]);
      if (lane == 0 && m0 + t < M) logits[(m0 + t) * E + e] = sum;
    }
  }
}

__global__ void __launch_bounds__(kRouteThreads) moe_topk_kernel(const float* __restrict__ logits, int64_t M, int E, int K,
                                                                 int renorm, int32_t* __restrict__ experts,
                                                                 float* __restrict__ weights) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int64_t m = static_cast<int64_t>(blockIdx.x) * kRouteWarps + (threadIdx.x >> 5);
  pdl_wait();
  if (m >= M) return;
  const float* lg = logits + m * E;
  float p[kPerLane];
  float mx = -INFINITY;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int e = lane + kLanes * j;
    p[j] = e < E ? lg[e] : -INFINITY;
    mx = fmaxf(mx, p[j]);
  }
  pdl_trigger();
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  double sum = 0.0;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int e = lane + kLanes * j;
    // std::exp on a float, correctly rounded (the CPU's libm is within half an ulp of it)
    p[j] = e < E ? static_cast<float>(exp(static_cast<double>(p[j] - mx))) : 0.0f;
    sum += p[j];
  }
  sum = warp_sum_d(sum);
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int e = lane + kLanes * j;
    p[j] = e < E ? static_cast<float>(static_cast<double>(p[j]) / sum) : -1.0f;  // -1: never chosen
    // a NaN (a NaN or infinite logit) ranks below every number and above "no expert": a token
    // whose logits hold NaNs takes the lowest experts, as the CPU's stable sort leaves them, and
    // keeps NaN weights (a NaN chosen shows as -0.5 below, probabilities being >= 0)
    if (p[j] != p[j]) p[j] = -0.5f;
  }
  // the top k by probability, the lower expert first among equals (a stable sort's order)
  float chosen_p[kMoeMaxTopK];
  int chosen_e[kMoeMaxTopK];
  for (int k = 0; k < K; ++k) {
    float bv = -2.0f;
    int be = 0x7fffffff;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int e = lane + kLanes * j;
      if (p[j] > bv) {  // (e increases with j: a later equal value never replaces)
        bv = p[j];
        be = e;
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oe = __shfl_xor_sync(0xffffffffu, be, o);
      if (ov > bv || (ov == bv && oe < be)) {
        bv = ov;
        be = oe;
      }
    }
    chosen_p[k] = bv;
    chosen_e[k] = be;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j)
      if (lane + kLanes * j == be) p[j] = -2.0f;  // taken
  }
  if (lane != 0) return;
  float tsum = 0.0f;
  for (int k = 0; k < K; ++k) {
    if (chosen_p[k] == -0.5f) chosen_p[k] = __int_as_float(0x7fc00000);  // the NaN it was
    tsum += chosen_p[k];
  }
  for (int k = 0; k < K; ++k) {
    experts[m * K + k] = chosen_e[k];
    weights[m * K + k] = renorm ? chosen_p[k] / tsum : chosen_p[k];
  }
}

// ---- the permutation plan --------------------------------------------------------------------------
constexpr int kPlanThreads = 1024;
constexpr int kPlanWarps = kPlanThreads / kLanes;

__global__ void __launch_bounds__(kPlanThreads) moe_plan_kernel(const int32_t* __restrict__ experts, int64_t n, int K, int E,
                                                                int32_t* __restrict__ offsets, int32_t* __restrict__ src,
                                                                int32_t* __restrict__ dst) {
  __shared__ int running[kMoeMaxExperts];
  __shared__ int off[kMoeMaxExperts + 1];
  __shared__ int warp_cnt[kPlanWarps][kMoeMaxExperts];
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  for (int e = tid; e < E; e += kPlanThreads) running[e] = 0;
  __syncthreads();
  pdl_wait();
  // pass 1: each pair's rank among the earlier pairs of its expert (pair index order = token order:
  // a token chooses an expert at most once), by chunks of kPlanThreads pairs
  for (int64_t base = 0; base < n; base += kPlanThreads) {
    for (int j = tid; j < kPlanWarps * E; j += kPlanThreads) (&warp_cnt[0][0])[(j / E) * kMoeMaxExperts + j % E] = 0;
    __syncthreads();
    const int64_t i = base + tid;
    int e = i < n ? experts[i] : E;  // E: no pair (its own group, never counted)
    if (e < 0 || e > E) e = E;          // (an id out of range is dropped, never an index)
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    const unsigned before_me = peers & ((1u << lane) - 1u);
    if (e < E && before_me == 0) warp_cnt[warp][e] = __popc(peers);
    __syncthreads();
    if (e < E) {
      int r = running[e] + __popc(before_me);
      for (int w = 0; w < warp; ++w) r += warp_cnt[w][e];
      dst[i] = r;  // the rank for now; the row once the offsets are known
    }
    __syncthreads();
    for (int x = tid; x < E; x += kPlanThreads) {
      int s = 0;
      for (int w = 0; w < kPlanWarps; ++w) s += warp_cnt[w][x];
      running[x] += s;
    }
    __syncthreads();
  }
  if (tid == 0) {
    off[0] = 0;
    for (int e = 0; e < E; ++e) off[e + 1] = off[e] + running[e];
  }
  __syncthreads();
  for (int e = tid; e <= E; e += kPlanThreads) offsets[e] = off[e];
  // pass 2: rows (the same thread wrote each dst[i] it reads back)
  for (int64_t i = tid; i < n; i += kPlanThreads) {
    const int e = experts[i];
    if (e < 0 || e >= E) continue;
    const int p = off[e] + dst[i];
    dst[i] = p;
    src[p] = static_cast<int32_t>(i / K);
  }
  pdl_trigger();
}

// ---- combine ---------------------------------------------------------------------------------------
template <class T>
__global__ void __launch_bounds__(256) moe_combine_kernel(float* __restrict__ x, const T* __restrict__ y,
                                                          const int32_t* __restrict__ experts, const float* __restrict__ wts,
                                                          const int32_t* __restrict__ dst, int64_t H, int K) {
  const int64_t m = blockIdx.x;
  pdl_wait();
  // the token's choices in increasing expert order (insertion sort, k <= kMoeMaxTopK)
  int ex[kMoeMaxTopK], row[kMoeMaxTopK];
  float w[kMoeMaxTopK];
  for (int k = 0; k < K; ++k) {
    int e = experts[m * K + k], r = dst[m * K + k];
    float v = wts[m * K + k];
    int j = k;
    while (j > 0 && ex[j - 1] > e) {
      ex[j] = ex[j - 1];
      row[j] = row[j - 1];
      w[j] = w[j - 1];
      --j;
    }
    ex[j] = e;
    row[j] = r;
    w[j] = v;
  }
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) {
    float acc = x[m * H + h];
    for (int k = 0; k < K; ++k) acc = __fadd_rn(acc, __fmul_rn(w[k], to_f(y[static_cast<int64_t>(row[k]) * H + h])));
    x[m * H + h] = acc;
  }
  pdl_trigger();
}

void check_dims(const char* who, int64_t M, int64_t top_k, int64_t E) {
  if (M < 0 || E < 1 || E > kMoeMaxExperts || top_k < 1 || top_k > E || top_k > kMoeMaxTopK ||
      M * top_k > (int64_t{1} << 30))
    throw std::invalid_argument(fmt::format("{}: M = {}, experts = {}, top_k = {} (experts 1 .. {}, top_k 1 .. min(experts, {}))",
                                            who, M, E, top_k, kMoeMaxExperts, kMoeMaxTopK));
}

}  // namespace

void moe_route(const MoeRouteArgs& a, cudaStream_t stream) {
  check_dims("moe_route", a.M, a.top_k, a.E);
  if (a.H < 4 || a.H > kMoeMaxHidden || a.H % 4 != 0)
    throw std::invalid_argument(fmt::format("moe_route: hidden = {} (a multiple of 4, at most {})", a.H, kMoeMaxHidden));
  if (a.M == 0) return;
  if (!a.x || !a.norm_w || !a.router || !a.logits || !a.experts || !a.weights)
    throw std::invalid_argument("moe_route: a null pointer");
  if (reinterpret_cast<uintptr_t>(a.router) % 16 != 0) throw std::invalid_argument("moe_route: the router is not 16-byte aligned");
  {  // the shared-memory opt-in, once per device, to the largest launch
    static std::mutex mu;
    static std::set<int> configured;
    int dev = 0;
    SHARQ_CUDA_CHECK(cudaGetDevice(&dev));
    std::lock_guard<std::mutex> lock(mu);
    if (!configured.count(dev)) {
      SHARQ_CUDA_CHECK(cudaFuncSetAttribute(moe_logits_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(route_smem(kMoeMaxHidden))));
      configured.insert(dev);
    }
  }
  // expert blocks only while the token groups leave SMs idle: each block of a token group recomputes
  // the group's norm, so at a prefill's M one block per group (all experts) reads the rows once
  // (H200, Qwen3-30B-A3B shapes: 16 expert blocks per group cut the batch-1 route 87 -> 33 us per
  // layer but cost a 1x2048 prefill 170 -> 245 us per layer; docs/perf/moe.md)
  const int64_t groups = (a.M + kRouteTok - 1) / kRouteTok, expert_blocks = (a.E + kRouteWarps - 1) / kRouteWarps;
  const int64_t y = std::clamp<int64_t>((2 * sm_count() + groups - 1) / groups, 1, expert_blocks);
  const dim3 grid(static_cast<unsigned>(groups), static_cast<unsigned>(y));
  launch_pdl(moe_logits_kernel, grid, dim3(kRouteThreads), route_smem(a.H), stream, a.x, a.norm_w, a.eps, a.router, a.M, a.H,
             static_cast<int>(a.E), a.logits);
  launch_pdl(moe_topk_kernel, dim3(static_cast<unsigned>((a.M + kRouteWarps - 1) / kRouteWarps)), dim3(kRouteThreads), 0, stream,
             static_cast<const float*>(a.logits), a.M, static_cast<int>(a.E), static_cast<int>(a.top_k), a.renormalize ? 1 : 0,
             a.experts, a.weights);
}

void moe_plan(const int32_t* experts, int64_t M, int64_t top_k, int64_t E, int32_t* offsets, int32_t* src, int32_t* dst,
              cudaStream_t stream) {
  check_dims("moe_plan", M, top_k, E);
  if (!offsets) throw std::invalid_argument("moe_plan: null offsets");
  if (M > 0 && (!experts || !src || !dst)) throw std::invalid_argument("moe_plan: a null pointer");
  launch_pdl(moe_plan_kernel, dim3(1), dim3(kPlanThreads), 0, stream, experts, M * top_k, static_cast<int>(top_k),
             static_cast<int>(E), offsets, src, dst);
}

void moe_combine(float* x, const void* y, DType t, const int32_t* experts, const float* weights, const int32_t* dst,
                 int64_t M, int64_t top_k, int64_t H, cudaStream_t stream) {
  check_dims("moe_combine", M, top_k, kMoeMaxExperts);
  if (H < 1) throw std::invalid_argument(fmt::format("moe_combine: hidden = {}", H));
  if (M == 0) return;
  if (!x || !y || !experts || !weights || !dst) throw std::invalid_argument("moe_combine: a null pointer");
  if (t == DType::f16)
    launch_pdl(moe_combine_kernel<__half>, dim3(static_cast<unsigned>(M)), dim3(256), 0, stream, x,
               static_cast<const __half*>(y), experts, weights, dst, H, static_cast<int>(top_k));
  else
    launch_pdl(moe_combine_kernel<__nv_bfloat16>, dim3(static_cast<unsigned>(M)), dim3(256), 0, stream, x,
               static_cast<const __nv_bfloat16*>(y), experts, weights, dst, H, static_cast<int>(top_k));
}

}  // namespace sharq::cuda
