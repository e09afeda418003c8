#include "sharq/kernels/cuda/paged_attention.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <stdexcept>
#include <type_traits>

#include <fmt/format.h>

#include "sharq/kernels/cuda/cuda_check.h"

namespace sharq::cuda {
namespace {

constexpr int kMaxDimsPerLane = 8;  // head_dim <= 256

template <class T>
__device__ __forceinline__ float to_f(T v) {
  if constexpr (std::is_same_v<T, __half>) return __half2float(v);
  else return __bfloat162float(v);
}

// One warp per (row, query head); lane l owns dims l, l + 32, ...
template <class T>
__global__ void __launch_bounds__(32) attention_kernel(const float* __restrict__ q, int nh, RowMap rows, PagedKv kv,
                                                       int64_t window, float scale, T* __restrict__ out) {
  const int64_t m = blockIdx.x;
  const int h = blockIdx.y, lane = threadIdx.x, hd = kv.head_dim, nkv = kv.kv_heads;
  const int kvh = h / (nh / nkv);
  const int per = (hd + 31) / 32;
  float qv[kMaxDimsPerLane], acc[kMaxDimsPerLane];
  for (int i = 0; i < kMaxDimsPerLane; ++i) {
    const int d = lane + 32 * i;
    qv[i] = i < per && d < hd ? q[(m * nh + h) * hd + d] : 0.0f;
    acc[i] = 0.0f;
  }
  const int pos = rows.pos[m];
  const int32_t* table = rows.table + rows.table_off[m];
  const int64_t j0 = window > 0 && pos + 1 - window > 0 ? pos + 1 - window : 0;
  float mx = -INFINITY, sum = 0.0f;
  for (int64_t j = j0; j <= pos; ++j) {
    const int64_t base = ((static_cast<int64_t>(table[j / kv.block_size]) * kv.block_size + j % kv.block_size) * nkv + kvh) * hd;
    const T* kj = static_cast<const T*>(kv.k) + base;
    float dot = 0.0f;
    for (int i = 0; i < per; ++i) {
      const int d = lane + 32 * i;
      if (d < hd) dot += qv[i] * to_f(kj[d]);
    }
    for (int off = 16; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
    const float s = dot * scale;
    const float nm = fmaxf(mx, s);
    const float corr = expf(mx - nm), p = expf(s - nm);  // exp(-inf) = 0 on the first key
    sum = sum * corr + p;
    const T* vj = static_cast<const T*>(kv.v) + base;
    for (int i = 0; i < per; ++i) {
      const int d = lane + 32 * i;
      acc[i] = acc[i] * corr + (d < hd ? p * to_f(vj[d]) : 0.0f);
    }
    mx = nm;
  }
  const float inv = 1.0f / sum;
  for (int i = 0; i < per; ++i) {
    const int d = lane + 32 * i;
    if (d >= hd) continue;
    const float o = acc[i] * inv;
    if constexpr (std::is_same_v<T, __half>) out[(m * nh + h) * hd + d] = __float2half_rn(o);
    else out[(m * nh + h) * hd + d] = __float2bfloat16_rn(o);
  }
}

}  // namespace

void paged_attention(const float* q, int64_t M, int nh, const RowMap& rows, const PagedKv& kv, int64_t window, DType t,
                     void* out, cudaStream_t stream) {
  if (M < 0 || M > 0x7FFFFFFF) throw std::invalid_argument(fmt::format("paged_attention: {} rows", M));
  if (M == 0) return;
  if (!q || !out || !kv.k || !kv.v || !rows.pos || !rows.table_off || !rows.table)
    throw std::invalid_argument("paged_attention: null pointer");
  if (kv.head_dim <= 0 || kv.head_dim > 32 * kMaxDimsPerLane || nh <= 0 || kv.kv_heads <= 0 || nh % kv.kv_heads != 0 ||
      nh > 65535 || kv.block_size <= 0)
    throw std::invalid_argument(fmt::format("paged_attention: {} query heads, {} KV heads of dim {} (dim <= {}), block {}", nh,
                                            kv.kv_heads, kv.head_dim, 32 * kMaxDimsPerLane, kv.block_size));
  const float scale = 1.0f / std::sqrt(static_cast<float>(kv.head_dim));
  const dim3 grid(static_cast<unsigned>(M), static_cast<unsigned>(nh));
  if (t == DType::f16)
    attention_kernel<__half><<<grid, 32, 0, stream>>>(q, nh, rows, kv, window, scale, static_cast<__half*>(out));
  else
    attention_kernel<__nv_bfloat16><<<grid, 32, 0, stream>>>(q, nh, rows, kv, window, scale, static_cast<__nv_bfloat16*>(out));
  SHARQ_CUDA_CHECK(cudaGetLastError());
}

}  // namespace sharq::cuda
