// FP4-weight GEMM dispatcher, the decode (small-M) kernel and the split-K reduction. The wgmma prefill kernel lives in fp4_gemm_prefill.cu.
//
// Decode kernel (mma.sync.m16n8k16, FP32 accumulators), one block = 4 warps x kNT n8-tiles:
//   - the block walks its K range 128 columns at a time (one Fp4Tiles k-tile per step);
//   - the activation chunk (kMT*16 rows x 128, every path) is staged in shared memory with cp.async
//     (double buffered, rows >= M zero-filled) and read with ldmatrix.x4;
//   - each lane loads its 16 bytes of every weight tile of the next step (one LDG.128 per tile, the
//     warp reads 512 contiguous bytes), so the weight stream is in flight while this step computes;
//   - a weight fragment is decoded once (E2M1 -> FP16 by bit placement and one exact multiply, times
//     the UE4M3 scale from a 128-entry table built with the shared codec) and used for every m16
//     tile and both SharQ paths: the weights cross HBM once.
//   - split-K across blockIdx.y fills the chip for small N; partial sums go to an FP32 workspace and
//     a second kernel adds them in split order (deterministic) and applies g_x g_w.
#include "sharq/kernels/cuda/fp4_gemm.h"
#include "sharq/kernels/cuda/fp4_decode.cuh"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

namespace sharq::cuda {

DeviceFp4Weights DeviceFp4Weights::upload(const Fp4Tiles& t) {
  DeviceFp4Weights w;
  w.N = t.N; w.K = t.K; w.Kp = t.Kp; w.block = t.block;
  w.codes = DeviceBuffer<uint8_t>(t.codes.size());
  w.scales = DeviceBuffer<uint8_t>(t.scales.size());
  w.g = DeviceBuffer<float>(t.g.empty() ? 1 : t.g.size());
  w.codes.upload(t.codes.data());
  w.scales.upload(t.scales.data());
  const float one = 1.0f;
  w.g.upload(t.g.empty() ? &one : t.g.data());
  return w;
}

namespace {

constexpr int kDecWarps = 4;
constexpr int kNT = 4;                          // n8 tiles per warp
constexpr int kDecBlockN = kDecWarps * kNT * 8; // 128 columns per block
constexpr int kAPitch = 128 + 8;                // smem row pitch (elements): conflict-free ldmatrix

struct DecodeArgs {
  const void* a0;
  const void* a1;
  int64_t M, lda;
  const uint8_t* codes;
  const uint8_t* scales;
  const float* gw;
  int64_t gw_count;
  const float* rs;
  int64_t rs_count;
  int64_t N, k_tiles, chunks_per_split;
  __nv_bfloat16* y;
  int64_t ldy;
  float* y_f32;  // non-null: FP32 output instead of y
  float* ws;     // null: write y directly
};



template <class T>
__device__ __forceinline__ void mma16816(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* p) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  const int n = valid ? 16 : 0;  // 0: zero-fill, nothing read
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ uint4 ldg_stream(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

template <int kWBlock>
struct ScaleRegs;
template <> struct ScaleRegs<32> { uint32_t v; };
template <> struct ScaleRegs<16> { uint2 v; };

template <class T, int kPaths, int kWBlock, int kMT>
__global__ void __launch_bounds__(kDecWarps * 32) decode_kernel(DecodeArgs a) {
  constexpr int kRows = kMT * 16;
  using D = Fp4Pair<T>;
  using T2 = typename D::V;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* abuf = reinterpret_cast<T*>(smem_raw);                       // [2][kPaths][kRows][kAPitch]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  const int64_t m0 = static_cast<int64_t>(blockIdx.z) * kRows;
  const int64_t c_begin = static_cast<int64_t>(blockIdx.y) * a.chunks_per_split;
  const int64_t c_end = c_begin + a.chunks_per_split < a.k_tiles ? c_begin + a.chunks_per_split : a.k_tiles;
  const int64_t n8_first = (static_cast<int64_t>(blockIdx.x) * kDecWarps + warp) * kNT;  // this warp's first n8 tile
  const int64_t n8_total = a.N / 8;

  auto load_a = [&](int64_t c, int buf) {
    constexpr int kCopies = kPaths * kRows * 16;
    for (int i = threadIdx.x; i < kCopies; i += blockDim.x) {
      const int p = i / (kRows * 16), r = (i / 16) % kRows, q = i % 16;
      const int64_t row = m0 + r;
      const T* src = static_cast<const T*>(p == 0 ? a.a0 : a.a1);
      const bool valid = row < a.M;
      const T* g = src + (valid ? row : 0) * a.lda + c * 128 + q * 8;
      T* d = abuf + ((static_cast<int64_t>(buf) * kPaths + p) * kRows + r) * kAPitch + q * 8;
      cp_async16(d, g, valid);
    }
    cp_async_commit();
  };
  uint4 wc[kNT], wn[kNT];
  ScaleRegs<kWBlock> sc[kNT], sn[kNT];
  auto load_w = [&](int64_t c, uint4* w, ScaleRegs<kWBlock>* s) {
#pragma unroll
    for (int t = 0; t < kNT; ++t) {
      const int64_t n8 = n8_first + t;
      if (n8 < n8_total) {
        const int64_t tile = n8 * a.k_tiles + c;
        w[t] = ldg_stream(a.codes + tile * 512 + lane * 16);
        if constexpr (kWBlock == 32) s[t].v = __ldg(reinterpret_cast<const uint32_t*>(a.scales + tile * 32) + lane / 4);
        else s[t].v = __ldg(reinterpret_cast<const uint2*>(a.scales + tile * 64) + lane / 4);
      } else {
        w[t] = make_uint4(0, 0, 0, 0);
        if constexpr (kWBlock == 32) s[t].v = 0;
        else s[t].v = make_uint2(0, 0);
      }
    }
  };

  float acc[kMT][kNT][4];
#pragma unroll
  for (int i = 0; i < kMT; ++i)
#pragma unroll
    for (int t = 0; t < kNT; ++t)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][t][e] = 0.0f;

  if (c_begin < c_end) {
    load_a(c_begin, 0);
    load_w(c_begin, wc, sc);
  }
  int buf = 0;
  for (int64_t c = c_begin; c < c_end; ++c) {
    const bool more = c + 1 < c_end;
    if (more) {
      load_a(c + 1, buf ^ 1);
      load_w(c + 1, wn, sn);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* ab = abuf + static_cast<int64_t>(buf) * kPaths * kRows * kAPitch;
    // scale pairs of this k-tile, per tile: W32 {s_j, s_j} for sub-block j; W16 {s_2j+s, ...}
    T2 sp[kNT][kWBlock == 32 ? 4 : 8];
#pragma unroll
    for (int t = 0; t < kNT; ++t) {
      if constexpr (kWBlock == 32) {
        const T2 a01 = D::scale_pair(sc[t].v), a23 = D::scale_pair(sc[t].v >> 16);
        sp[t][0] = bcast_lo(a01); sp[t][1] = bcast_hi(a01); sp[t][2] = bcast_lo(a23); sp[t][3] = bcast_hi(a23);
      } else {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const uint32_t wv = h == 0 ? sc[t].v.x : sc[t].v.y;
          const T2 a01 = D::scale_pair(wv), a23 = D::scale_pair(wv >> 16);
          sp[t][4 * h + 0] = bcast_lo(a01); sp[t][4 * h + 1] = bcast_hi(a01);
          sp[t][4 * h + 2] = bcast_lo(a23); sp[t][4 * h + 3] = bcast_hi(a23);
        }
      }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {  // 32-column sub-block of the k-tile
#pragma unroll
      for (int s = 0; s < 2; ++s) {  // k16 step inside the sub-block
        const int ks = 2 * j + s;
        uint32_t af[kPaths][kMT][4];
#pragma unroll
        for (int p = 0; p < kPaths; ++p)
#pragma unroll
          for (int i = 0; i < kMT; ++i)
            ldmatrix_x4(af[p][i], ab + (p * kRows + i * 16 + (lane % 16)) * kAPitch + ks * 16 + (lane / 16) * 8);
#pragma unroll
        for (int t = 0; t < kNT; ++t) {
          const uint32_t word = j == 0 ? wc[t].x : j == 1 ? wc[t].y : j == 2 ? wc[t].z : wc[t].w;
          const T2 s2 = sp[t][kWBlock == 32 ? j : 2 * j + s];
          const uint32_t b0 = D::decode(word >> (8 * s), s2);
          const uint32_t b1 = D::decode(word >> (8 * s + 4), s2);
#pragma unroll
          for (int p = 0; p < kPaths; ++p)
#pragma unroll
            for (int i = 0; i < kMT; ++i) mma16816<T>(acc[i][t], af[p][i], b0, b1);
        }
      }
    }
    __syncthreads();  // all warps done with this buffer before it is refilled
    if (more) {
#pragma unroll
      for (int t = 0; t < kNT; ++t) { wc[t] = wn[t]; sc[t] = sn[t]; }
    }
    buf ^= 1;
  }

  // epilogue: c0,c1 -> (row g, cols 2q, 2q+1), c2,c3 -> (row g + 8)
  const int g = lane / 4, q = lane % 4;
#pragma unroll
  for (int t = 0; t < kNT; ++t) {
    const int64_t n8 = n8_first + t;
    if (n8 >= n8_total) continue;
    const int64_t col = n8 * 8 + 2 * q;
#pragma unroll
    for (int i = 0; i < kMT; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t row = m0 + i * 16 + g + 8 * h;
        if (row >= a.M) continue;
        const float v0 = acc[i][t][2 * h] * D::kPost, v1 = acc[i][t][2 * h + 1] * D::kPost;  // exact 2^k
        if (a.ws) {
          float* w = a.ws + (static_cast<int64_t>(blockIdx.y) * a.M + row) * a.N + col;
          *reinterpret_cast<float2*>(w) = make_float2(v0, v1);
        } else {
          const float rs = a.rs ? a.rs[a.rs_count == 1 ? 0 : row] : 1.0f;
          const float g0 = a.gw[a.gw_count == 1 ? 0 : col], g1 = a.gw[a.gw_count == 1 ? 0 : col + 1];
          if (a.y_f32) *reinterpret_cast<float2*>(a.y_f32 + row * a.ldy + col) = make_float2(v0 * (rs * g0), v1 * (rs * g1));
          else *reinterpret_cast<__nv_bfloat162*>(a.y + row * a.ldy + col) = __floats2bfloat162_rn(v0 * (rs * g0), v1 * (rs * g1));
        }
      }
  }
}

// y = bf16((sum over splits, in order) * g_x[m] * g_w[n])
__global__ void splitk_reduce_kernel(const float* ws, int64_t splits, int64_t M, int64_t N, const float* rs,
                                     int64_t rs_count, const float* gw, int64_t gw_count, __nv_bfloat16* y, float* y_f32,
                                     int64_t ldy) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // pair index
  if (i >= M * N / 2) return;
  const int64_t row = (2 * i) / N, col = (2 * i) % N;
  float s0 = 0.0f, s1 = 0.0f;
  for (int64_t s = 0; s < splits; ++s) {
    const float2 v = *reinterpret_cast<const float2*>(ws + (s * M + row) * N + col);
    s0 += v.x;
    s1 += v.y;
  }
  const float r = rs ? rs[rs_count == 1 ? 0 : row] : 1.0f;
  const float g0 = gw[gw_count == 1 ? 0 : col], g1 = gw[gw_count == 1 ? 0 : col + 1];
  if (y_f32) *reinterpret_cast<float2*>(y_f32 + row * ldy + col) = make_float2(s0 * (r * g0), s1 * (r * g1));
  else *reinterpret_cast<__nv_bfloat162*>(y + row * ldy + col) = __floats2bfloat162_rn(s0 * (r * g0), s1 * (r * g1));
}

struct DecodePlan { int mt; int64_t n_blocks, m_blocks, splits, cps; };

DecodePlan plan_decode(int64_t M, const DeviceFp4Weights& w) {
  DecodePlan p;
  p.mt = M <= 16 ? 1 : M <= 32 ? 2 : 4;
  p.n_blocks = (w.N + kDecBlockN - 1) / kDecBlockN;
  p.m_blocks = (M + p.mt * 16 - 1) / (p.mt * 16);
  const int64_t k_tiles = w.Kp / 128;
  const int64_t target = 4LL * sm_count();  // ~4 blocks of 4 warps per SM keep the weight stream busy
  int64_t splits = std::max<int64_t>(1, (target + p.n_blocks * p.m_blocks - 1) / (p.n_blocks * p.m_blocks));
  splits = std::min(splits, k_tiles);
  p.cps = (k_tiles + splits - 1) / splits;
  p.splits = (k_tiles + p.cps - 1) / p.cps;
  return p;
}

template <class T, int kPaths, int kWBlock, int kMT>
void launch_decode(const DecodeArgs& d, const DecodePlan& p, cudaStream_t st) {
  const size_t smem = 2ull * kPaths * kMT * 16 * kAPitch * sizeof(T);
  auto kern = decode_kernel<T, kPaths, kWBlock, kMT>;
  if (smem > 48 * 1024)
    SHARQ_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const dim3 grid(static_cast<unsigned>(p.n_blocks), static_cast<unsigned>(p.splits), static_cast<unsigned>(p.m_blocks));
  kern<<<grid, kDecWarps * 32, smem, st>>>(d);
  SHARQ_CUDA_CHECK(cudaGetLastError());
}

template <class T, int kPaths, int kWBlock>
void launch_decode_mt(const DecodeArgs& d, const DecodePlan& p, cudaStream_t st) {
  switch (p.mt) {
    case 1: launch_decode<T, kPaths, kWBlock, 1>(d, p, st); break;
    case 2: launch_decode<T, kPaths, kWBlock, 2>(d, p, st); break;
    default: launch_decode<T, kPaths, kWBlock, 4>(d, p, st); break;
  }
}

}  // namespace

size_t fp4_gemm_workspace_bytes(int64_t M, const DeviceFp4Weights& w) {
  if (M <= 0 || w.N <= 0) return 0;
  const DecodePlan p = plan_decode(M, w);
  size_t b = p.splits > 1 ? static_cast<size_t>(p.splits * M * w.N) * sizeof(float) : 0;
  if (M <= kSmallMaxM && w.N % 128 == 0) b = std::max(b, fp4_gemm_wgmma_small_workspace_bytes(M, w));
  return b;
}

void fp4_gemm_decode(const Fp4GemmArgs& a, const DeviceFp4Weights& w, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream) {
  const DecodePlan p = plan_decode(a.M, w);
  const size_t need = p.splits > 1 ? static_cast<size_t>(p.splits * a.M * w.N) * sizeof(float) : 0;
  if (workspace_bytes < need || (need && !workspace))
    throw std::invalid_argument(fmt::format("fp4_gemm: the decode kernel needs {} bytes of workspace for M = {}, N = {}, "
                                            "got {}", need, a.M, w.N, workspace_bytes));
  DecodeArgs d{a.a0, a.a1, a.M, a.lda, w.codes.get(), w.scales.get(), w.g.get(), static_cast<int64_t>(w.g.size()),
               a.row_scale, a.row_scale_count, w.N, w.Kp / 128, p.cps, a.y, a.ldy, a.y_f32,
               p.splits > 1 ? static_cast<float*>(workspace) : nullptr};
  const bool two = a.a1 != nullptr;
  if (a.adt == DType::bf16) {
    if (w.block == 32) launch_decode_mt<__nv_bfloat16, 1, 32>(d, p, stream);
    else launch_decode_mt<__nv_bfloat16, 1, 16>(d, p, stream);
  } else if (two) {
    if (w.block == 32) launch_decode_mt<__half, 2, 32>(d, p, stream);
    else launch_decode_mt<__half, 2, 16>(d, p, stream);
  } else {
    if (w.block == 32) launch_decode_mt<__half, 1, 32>(d, p, stream);
    else launch_decode_mt<__half, 1, 16>(d, p, stream);
  }
  if (p.splits > 1) {
    const int64_t pairs = a.M * w.N / 2;
    splitk_reduce_kernel<<<static_cast<unsigned>((pairs + 255) / 256), 256, 0, stream>>>(
        static_cast<const float*>(workspace), p.splits, a.M, w.N, a.row_scale, a.row_scale_count, w.g.get(),
        static_cast<int64_t>(w.g.size()), a.y, a.y_f32, a.ldy);
    SHARQ_CUDA_CHECK(cudaGetLastError());
  }
}

void fp4_gemm(const Fp4GemmArgs& a, const DeviceFp4Weights& w, Fp4GemmKernel kernel, void* workspace,
              size_t workspace_bytes, cudaStream_t stream) {
  if (w.N <= 0 || w.N % 8 != 0 || w.Kp % 128 != 0 || !w.codes.get())
    throw std::invalid_argument(fmt::format("fp4_gemm: weights N = {} (must be a positive multiple of 8), Kp = {}", w.N, w.Kp));
  if (w.block != 16 && w.block != 32) throw std::invalid_argument(fmt::format("fp4_gemm: weight block {} (16 or 32)", w.block));
  if (a.M < 0) throw std::invalid_argument(fmt::format("fp4_gemm: M = {}", a.M));
  if (a.M == 0) return;
  if (!a.a0 || (!a.y && !a.y_f32)) throw std::invalid_argument("fp4_gemm: null activation or output pointer");
  if (a.adt == DType::bf16 && a.a1) throw std::invalid_argument("fp4_gemm: the two-path (exact) mode takes FP16 planes");
  if (a.lda < w.Kp || a.lda % 8 != 0)
    throw std::invalid_argument(fmt::format("fp4_gemm: lda = {} must be >= Kp = {} and a multiple of 8", a.lda, w.Kp));
  if (a.ldy < w.N || a.ldy % 2 != 0)
    throw std::invalid_argument(fmt::format("fp4_gemm: ldy = {} must be >= N = {} and even", a.ldy, w.N));
  if (a.row_scale && a.row_scale_count != 1 && a.row_scale_count != a.M)
    throw std::invalid_argument(fmt::format("fp4_gemm: row_scale_count = {} (1 or M = {})", a.row_scale_count, a.M));
  const auto misaligned = [](const void* p, uintptr_t n) { return p && reinterpret_cast<uintptr_t>(p) % n != 0; };
  if (misaligned(a.a0, 16) || misaligned(a.a1, 16))
    throw std::invalid_argument("fp4_gemm: the activation planes must be 16-byte aligned (16-byte async copies)");
  if (misaligned(a.y, 4) || misaligned(a.y_f32, 8))
    throw std::invalid_argument("fp4_gemm: the output must be 4-byte (BF16) / 8-byte (FP32) aligned (pair stores)");
  if (kernel == Fp4GemmKernel::automatic) {
    if (w.N % 128 != 0) kernel = Fp4GemmKernel::decode;
    else kernel = a.M <= kSmallMaxM ? Fp4GemmKernel::small : Fp4GemmKernel::prefill;
  }
  if (kernel == Fp4GemmKernel::small) {
    if (w.N % 128 != 0 || a.M > kSmallMaxM)
      throw std::invalid_argument(fmt::format("fp4_gemm: the small wgmma kernel needs N % 128 == 0 and M <= {} (N = {}, M = {})",
                                              kSmallMaxM, w.N, a.M));
    fp4_gemm_wgmma_small(a, w, workspace, workspace_bytes, stream);
  } else if (kernel == Fp4GemmKernel::prefill) {
    if (w.N % 128 != 0)
      throw std::invalid_argument(fmt::format("fp4_gemm: the prefill kernel needs N % 128 == 0 (N = {})", w.N));
    fp4_gemm_prefill(a, w, stream);
  } else {
    fp4_gemm_decode(a, w, workspace, workspace_bytes, stream);
  }
}

}  // namespace sharq::cuda
