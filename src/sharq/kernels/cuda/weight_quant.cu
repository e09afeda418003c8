#include "sharq/kernels/cuda/weight_quant.h"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

#include "sharq/formats/minifloat.h"
#include "sharq/kernels/cuda/cuda_check.h"
#include "sharq/quant/block_quant.h"
#include "sharq/quant/fp4_tiles.h"
#include "sharq/quant/fp8.h"

namespace sharq::cuda {
namespace {

constexpr int kThreads = 256;

unsigned grid_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 65535 * 32 ? b : 65535 * 32);  // grid-stride loops cover the rest
}

__device__ __forceinline__ float block_max(float v) {
  __shared__ float part[kThreads / 32];
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  __syncthreads();
  float m = 0.0f;
  for (int i = 0; i < kThreads / 32; ++i) m = fmaxf(m, part[i]);
  __syncthreads();
  return m;
}

// max |w| over the finite values of n elements, into *amax_bits (0 before the launch): non-negative
// floats order like their bit patterns, so an integer atomicMax is an exact float max.
__global__ void __launch_bounds__(kThreads) amax_kernel(const float* __restrict__ w, int64_t n, unsigned* amax_bits) {
  float m = 0.0f;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const float a = abs_f32(w[i]);
    if (!is_nonfinite(a) && a > m) m = a;
  }
  m = block_max(m);
  if (threadIdx.x == 0 && m > 0.0f) atomicMax(amax_bits, __float_as_uint(m));
}

__global__ void global_scale_kernel(const unsigned* amax_bits, float* g) { *g = nvfp4_global_scale(__uint_as_float(*amax_bits)); }

// g[n] for the rows of one stacked part
__global__ void global_scale_rows_kernel(const unsigned* amax_bits, int64_t rows, float* g) {
  const float v = nvfp4_global_scale(__uint_as_float(*amax_bits));
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; n < rows; n += static_cast<int64_t>(gridDim.x) * kThreads)
    g[n] = v;
}

// One thread per (row, block): quantize_row's arithmetic (x / g unless g == 1, zero padding), then
// the block's scale byte and its code bytes in the tiled layout (the thread owns those bytes).
template <class F>
__global__ void __launch_bounds__(kThreads) fp4_quant_kernel(const float* __restrict__ w, int64_t N, int64_t K,
                                                             int64_t k_tiles, const float* __restrict__ gp, bool per_row,
                                                             uint8_t* __restrict__ codes, uint8_t* __restrict__ scales) {
  constexpr int B = F::kBlock;
  const int64_t bpr = (K + B - 1) / B;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < N * bpr;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t n = i / bpr, b = i % bpr;
    const float g = gp[per_row ? n : 0];
    const float* row = w + n * K;
    float buf[B];
    for (int k = 0; k < B; ++k) {
      const int64_t c = b * B + k;
      buf[k] = c < K ? (g == 1.0f ? row[c] : row[c] / g) : 0.0f;
    }
    typename F::block_t blk;
    F::quantize(buf, blk);
    scales[fp4_tile_scale_pos(k_tiles, B, n, b * B)] = blk.s.e;
    for (int k = 0; k < B; ++k) {
      const Fp4CodePos p = fp4_tile_code_pos(k_tiles, n, b * B + k);
      const uint8_t code = get_nibble(blk.qs, k);
      uint8_t& byte = codes[p.byte];
      byte = static_cast<uint8_t>(p.high ? (byte & 0x0F) | (code << 4) : (byte & 0xF0) | code);
    }
  }
}

// One block per row (rows >= N: the padding, zero codes and scale 1).
__global__ void __launch_bounds__(kThreads) fp8_quant_kernel(const float* __restrict__ w, int64_t N, int64_t K, int64_t ld,
                                                             uint8_t* __restrict__ codes, float* __restrict__ scales) {
  const int64_t n = blockIdx.x;
  uint8_t* out = codes + n * ld;
  if (n >= N) {
    for (int64_t k = threadIdx.x; k < ld; k += kThreads) out[k] = 0;
    if (threadIdx.x == 0) scales[n] = 1.0f;
    return;
  }
  const float* row = w + n * K;
  float m = 0.0f;
  for (int64_t k = threadIdx.x; k < K; k += kThreads) {
    const float a = abs_f32(row[k]);
    if (!is_nonfinite(a) && a > m) m = a;
  }
  const float s = fp8_scale_from_amax(block_max(m));
  for (int64_t k = threadIdx.x; k < ld; k += kThreads) out[k] = k < K ? fp8_quantize_value(row[k], s) : uint8_t{0};
  if (threadIdx.x == 0) scales[n] = s;
}

__global__ void __launch_bounds__(kThreads) convert16_kernel(const float* __restrict__ w, int64_t n, bool fp16,
                                                             uint16_t* __restrict__ out) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads)
    out[i] = fp16 ? fp16_encode(w[i]) : bf16_encode(w[i]);
}

__device__ __forceinline__ uint64_t mix64(uint64_t z) {  // splitmix64's finalizer
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

__global__ void __launch_bounds__(kThreads) fill_kernel(float* __restrict__ out, int64_t n, uint64_t seed, float scale,
                                                        float offset) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const uint64_t h = mix64(seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(i));
    const float u = static_cast<float>(h >> 40) * (2.0f / 16777216.0f) - 1.0f;  // [-1, 1)
    out[i] = offset + scale * u;
  }
}

void check_matrix(const char* who, const float* W, int64_t N, int64_t K) {
  if (!W) throw std::invalid_argument(fmt::format("{}: null weight matrix", who));
  if (N <= 0 || K <= 0 || N > (int64_t{1} << 31) || K > (int64_t{1} << 31))
    throw std::invalid_argument(fmt::format("{}: weight shape N = {}, K = {}", who, N, K));
}

}  // namespace

DeviceFp4Weights quantize_fp4_weights(const float* W, int64_t N, int64_t K, int block, cudaStream_t stream,
                                      const std::vector<int64_t>& parts) {
  check_matrix("quantize_fp4_weights", W, N, K);
  if (block != 16 && block != 32)
    throw std::invalid_argument(fmt::format("quantize_fp4_weights: block = {} (16 or 32)", block));
  int64_t sum = 0;
  for (int64_t p : parts) {
    if (p <= 0) throw std::invalid_argument(fmt::format("quantize_fp4_weights: a stacked part of {} rows", p));
    sum += p;
  }
  if (!parts.empty() && sum != N)
    throw std::invalid_argument(fmt::format("quantize_fp4_weights: the stacked parts have {} rows, the matrix {}", sum, N));
  const bool per_row = parts.size() > 1;
  DeviceFp4Weights d;
  d.N = N;
  d.K = K;
  d.Np = (N + Fp4Tiles::kRowPad - 1) / Fp4Tiles::kRowPad * Fp4Tiles::kRowPad;
  d.Kp = (K + 127) / 128 * 128;
  d.block = block;
  const int64_t tiles = d.Np / 8 * (d.Kp / 128);
  d.codes = DeviceBuffer<uint8_t>(static_cast<size_t>(tiles * Fp4Tiles::kTileCodeBytes));
  d.scales = DeviceBuffer<uint8_t>(static_cast<size_t>(tiles * 8 * (128 / block)));
  d.g = DeviceBuffer<float>(per_row ? static_cast<size_t>(N) : 1);
  DeviceBuffer<unsigned> amax(std::max<size_t>(1, parts.size()));
  SHARQ_CUDA_CHECK(cudaMemsetAsync(d.codes.get(), 0, d.codes.bytes(), stream));
  SHARQ_CUDA_CHECK(cudaMemsetAsync(d.scales.get(), 0, d.scales.bytes(), stream));
  SHARQ_CUDA_CHECK(cudaMemsetAsync(amax.get(), 0, amax.bytes(), stream));
  if (!per_row) {
    amax_kernel<<<grid_for(N * K), kThreads, 0, stream>>>(W, N * K, amax.get());
    global_scale_kernel<<<1, 1, 0, stream>>>(amax.get(), d.g.get());
  } else {
    int64_t r0 = 0;
    for (size_t p = 0; p < parts.size(); ++p) {
      amax_kernel<<<grid_for(parts[p] * K), kThreads, 0, stream>>>(W + r0 * K, parts[p] * K, amax.get() + p);
      global_scale_rows_kernel<<<grid_for(parts[p]), kThreads, 0, stream>>>(amax.get() + p, parts[p], d.g.get() + r0);
      r0 += parts[p];
    }
  }
  const int64_t work = N * ((K + block - 1) / block);
  if (block == 32)
    fp4_quant_kernel<Nvfp4_32><<<grid_for(work), kThreads, 0, stream>>>(W, N, K, d.Kp / 128, d.g.get(), per_row,
                                                                       d.codes.get(), d.scales.get());
  else
    fp4_quant_kernel<Nvfp4_16><<<grid_for(work), kThreads, 0, stream>>>(W, N, K, d.Kp / 128, d.g.get(), per_row,
                                                                       d.codes.get(), d.scales.get());
  SHARQ_CUDA_CHECK(cudaGetLastError());
  SHARQ_CUDA_CHECK(cudaStreamSynchronize(stream));  // `amax` is freed on return
  return d;
}

void quantize_fp8_weights(const float* W, int64_t N, int64_t K, int64_t Np, int64_t ld, uint8_t* codes, float* scales,
                          cudaStream_t stream) {
  check_matrix("quantize_fp8_weights", W, N, K);
  if (!codes || !scales || Np < N || ld < K || Np > 0x7FFFFFFF)
    throw std::invalid_argument(fmt::format("quantize_fp8_weights: Np = {} (>= N = {}), ld = {} (>= K = {})", Np, N, ld, K));
  fp8_quant_kernel<<<static_cast<unsigned>(Np), kThreads, 0, stream>>>(W, N, K, ld, codes, scales);
  SHARQ_CUDA_CHECK(cudaGetLastError());
}

void convert_weights_16(const float* W, int64_t n, bool fp16, uint16_t* out, cudaStream_t stream) {
  if (!W || !out || n < 0) throw std::invalid_argument("convert_weights_16: null pointer or negative size");
  if (n == 0) return;
  convert16_kernel<<<grid_for(n), kThreads, 0, stream>>>(W, n, fp16, out);
  SHARQ_CUDA_CHECK(cudaGetLastError());
}

void fill_synthetic(float* out, int64_t n, uint64_t seed, float scale, float offset, cudaStream_t stream) {
  if (!out || n < 0) throw std::invalid_argument("fill_synthetic: null pointer or negative size");
  if (n == 0) return;
  fill_kernel<<<grid_for(n), kThreads, 0, stream>>>(out, n, seed, scale, offset);
  SHARQ_CUDA_CHECK(cudaGetLastError());
}

}  // namespace sharq::cuda
