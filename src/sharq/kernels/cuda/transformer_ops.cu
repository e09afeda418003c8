#include "sharq/kernels/cuda/transformer_ops.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <stdexcept>
#include <type_traits>

#include <fmt/format.h>

#include "sharq/kernels/cuda/cuda_check.h"
#include "sharq/kernels/cuda/activation.cuh"
#include "sharq/kernels/cuda/half_convert.cuh"
#include "sharq/kernels/cuda/launch.cuh"

namespace sharq::cuda {
namespace {

constexpr int kThreads = 256;

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ float block_sum(float v) {
  __shared__ float part[32];
  __shared__ float total;
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < warps ? part[lane] : 0.0f;
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) total = s;
  }
  __syncthreads();
  const float r = total;
  __syncthreads();  // `part` and `total` may be reused by a following call
  return r;
}

__global__ void embed_kernel(const __nv_bfloat16* __restrict__ embed, const int32_t* __restrict__ tok, int64_t H,
                             float* __restrict__ x) {
  pdl_wait();
  pdl_trigger();
  const int64_t m = blockIdx.x;
  const __nv_bfloat16* e = embed + static_cast<int64_t>(tok[m]) * H;
  if (H % 8 == 0) {  // 16-byte loads, all of a thread's in flight together
    const uint4* e8 = reinterpret_cast<const uint4*>(e);
    float4* x4 = reinterpret_cast<float4*>(x + m * H);
#pragma unroll 4
    for (int64_t j = threadIdx.x; j < H / 8; j += blockDim.x) {
      const uint4 u = e8[j];
      const uint32_t w[4] = {u.x, u.y, u.z, u.w};
      float f[8];
      for (int k = 0; k < 4; ++k) {
        f[2 * k] = __uint_as_float(w[k] << 16);
        f[2 * k + 1] = __uint_as_float(w[k] & 0xFFFF0000u);
      }
      x4[2 * j] = make_float4(f[0], f[1], f[2], f[3]);
      x4[2 * j + 1] = make_float4(f[4], f[5], f[6], f[7]);
    }
    return;
  }
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) x[m * H + h] = __bfloat162float(e[h]);
}

// RMSNorm of a row r (source row rows ? rows[r] : r), one element per thread in turn: the rows the
// 16-byte kernel below does not take. kAdd and kKeep as there.
template <class T, bool kAdd, bool kKeep>
__global__ void rmsnorm_kernel(float* __restrict__ x, const int32_t* __restrict__ rows, const T* __restrict__ o,
                               int64_t H, const float* __restrict__ w, float eps, T* __restrict__ y) {
  pdl_wait();
  const int64_t r = blockIdx.x, src = rows ? rows[r] : r;
  float* xr = x + src * H;
  const T* orow = kAdd ? o + src * H : nullptr;
  float ss = 0.0f;
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) {
    float v = xr[h];
    if constexpr (kAdd) {
      v += to_f(orow[h]);
      if constexpr (kKeep) xr[h] = v;
    }
    ss += v * v;
  }
  ss = block_sum(ss);
  pdl_trigger();  // after the row's loads (launch.cuh)
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(H) + eps);
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) {
    float v = xr[h];  // (with kKeep, the sum this thread stored)
    if constexpr (kAdd && !kKeep) v += to_f(orow[h]);
    y[r * H + h] = from_f<T>(w[h] * (v * inv));
  }
}

// RMSNorm of rows with H % 4 == 0, H <= 4 * 1024 * kNormVec, optionally after the residual add:
// every value of the row is loaded at once (16-byte loads held in registers), so a decode step's
// one-row norm costs two memory round trips rather than H / threads serial ones. V: the 16-byte
// groups a thread holds (2 while H / 4 <= 2 x threads, else kNormVec): the registers are sized by
// V, and at V = 2 a 512-thread block needs <= 32 per thread, so 4 rows per SM are in flight in a
// prefill (at V = 8 the unused arrays held it to 64 registers and 2 rows: 40% of the HBM rate, H200).
constexpr int kNormVec = 8;
template <class T>
struct alignas(8) Pack4 {  // four 16-bit values: one 8-byte load
  T v[4];
};
// kAdd: the row normed is x + float(o) (o's row src); kKeep: that sum is written back to x (the
// residual stream's next value; rows must not repeat then).
template <class T, bool kAdd, bool kKeep, int V>
__global__ void __launch_bounds__(1024) norm_vec_kernel(float* __restrict__ x, const int32_t* __restrict__ rows,
                                                        const T* __restrict__ o, int64_t H, const float* __restrict__ w,
                                                        float eps, T* __restrict__ y) {
  const int nv = static_cast<int>(H / 4);
  // the norm's weights (written by no kernel) are loaded before the PDL wait
  const float4* w4 = reinterpret_cast<const float4*>(w);
  float4 wv[V];
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const int j = i * blockDim.x + threadIdx.x;
    if (j < nv) wv[i] = w4[j];
  }
  pdl_wait();
  const int64_t r = blockIdx.x, src = rows ? rows[r] : r;
  float4* xr = reinterpret_cast<float4*>(x + src * H);
  float4 v[V];
  float ss = 0.0f;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const int j = i * blockDim.x + threadIdx.x;
    if (j < nv) {
      float4 a = xr[j];
      if constexpr (kAdd) {
        const Pack4<T> b = reinterpret_cast<const Pack4<T>*>(o + src * H)[j];
        a.x += to_f(b.v[0]);
        a.y += to_f(b.v[1]);
        a.z += to_f(b.v[2]);
        a.w += to_f(b.v[3]);
        if constexpr (kKeep) xr[j] = a;
      }
      v[i] = a;
      ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
    }
  }
  ss = block_sum(ss);
  pdl_trigger();  // after the row's loads (launch.cuh)
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(H) + eps);
  Pack4<T>* yr = reinterpret_cast<Pack4<T>*>(y + r * H);
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const int j = i * blockDim.x + threadIdx.x;
    if (j < nv) {
      const float4 g = wv[i];
      Pack4<T> out;
      out.v[0] = from_f<T>(g.x * (v[i].x * inv));
      out.v[1] = from_f<T>(g.y * (v[i].y * inv));
      out.v[2] = from_f<T>(g.z * (v[i].z * inv));
      out.v[3] = from_f<T>(g.w * (v[i].w * inv));
      yr[j] = out;
    }
  }
}

// Also the pointers the 16-byte kernel reads and writes in 16-byte (x, w) and 8-byte (o, y) pieces
// (any row of them then too, H % 4 == 0). Otherwise the scalar kernel runs: the same expressions
// per element, another order of the sum of squares (a buffer's alignment is fixed for an engine, so
// a row's bits still do not depend on the batch).
bool norm_vec_ok(int64_t H, const void* x, const void* o, const float* w, const void* y) {
  auto al = [](const void* p, uintptr_t n) { return reinterpret_cast<uintptr_t>(p) % n == 0; };
  return H % 4 == 0 && H <= int64_t{4} * 1024 * kNormVec && al(x, 16) && al(o, 8) && al(w, 16) && al(y, 8);
}
// Two 16-byte groups per thread while the row allows (H = 4096: 512 threads): a one-row norm is
// latency-bound, and 16 warps hide it where 4 warps with 8 groups each did not (measured, H200:
// 7.5 us per add_rmsnorm call at 128 threads).
unsigned norm_threads(int64_t H) {
  const int64_t t = std::min<int64_t>(1024, std::max<int64_t>((H / 4 + 1) / 2, (H / 4 + kNormVec - 1) / kNormVec));
  return static_cast<unsigned>(std::max<int64_t>(32, (t + 31) / 32 * 32));
}

// f(T{}) for the 16-bit activation type t.
template <class F>
void with_half_type(DType t, F&& f) {
  if (t == DType::f16) f(__half{});
  else f(__nv_bfloat16{});
}

// The norm of R rows: the 16-byte kernel where norm_vec_ok, else the scalar one.
template <class T, bool kAdd, bool kKeep>
void launch_norm(int64_t R, int64_t H, cudaStream_t stream, float* x, const int32_t* rows, const void* o, const float* w,
                 float eps, void* y) {
  if (!norm_vec_ok(H, x, o, w, y)) {
    launch_pdl(rmsnorm_kernel<T, kAdd, kKeep>, dim3(static_cast<unsigned>(R)), dim3(kThreads), 0, stream, x, rows,
               static_cast<const T*>(o), H, w, eps, static_cast<T*>(y));
    return;
  }
  const unsigned th = norm_threads(H);
  const auto k =
      H / 4 <= 2 * int64_t{th} ? norm_vec_kernel<T, kAdd, kKeep, 2> : norm_vec_kernel<T, kAdd, kKeep, kNormVec>;
  launch_pdl(k, dim3(static_cast<unsigned>(R)), dim3(th), 0, stream, x, rows, static_cast<const T*>(o), H, w, eps,
             static_cast<T*>(y));
}

// ---- RoPE (with the optional q/k RMSNorm) of one head by one warp ---------------------------
// Lane `lane` owns the rotation pairs p = lane * PPL + j (j < PPL, p < hd / 2): elements (p, p + hd / 2)
// rotate-half, (2p, 2p + 1) interleaved. The norm's sum of squares runs in lane order over j, then a
// butterfly. The lane's angles are the same in every head of a row, so a warp computes them once.
namespace rope {

// Pairs per lane for head_dim hd (1, 2, 4, .., at least (hd / 2) / 32).
__host__ __device__ constexpr int ppl_for(int hd) {
  int p = 1;
  while (32 * p < hd / 2) p <<= 1;
  return p;
}

// cos / sin of position pos for the lane's pairs (identity past hd / 2): the same for every head of a row.
template <int PPL>
struct Angles {
  float c[PPL], s[PPL];
};
template <int PPL>
__device__ __forceinline__ Angles<PPL> angles(int pos, const float* __restrict__ inv_freq, int half, int lane) {
  Angles<PPL> r;
#pragma unroll
  for (int j = 0; j < PPL; ++j) {
    const int p = lane * PPL + j;
    r.c[j] = 1.0f;
    r.s[j] = 0.0f;
    if (p < half) sincosf(static_cast<float>(pos) * inv_freq[p], &r.s[j], &r.c[j]);
  }
  return r;
}

// The head src[0 .. hd) (optionally RMS-normed with weight nw), rotated: every element e < hd is
// stored exactly once, by store1(e, value) or, for two adjacent elements, store2(e, value_e,
// value_e+1) (e even). Every lane of the warp calls it (the norm is a warp butterfly).
// vec: src and the destination allow words (hd / 2 even for rotate-half): pairs of elements load as
// one word and store as one (32 bits: two T), with the same arithmetic per element.
// IL (interleaved pairs) and NORM (the q/k norm, applied where nw is not null) are compile-time, so
// that a head costs its loads, rotations and stores only (measured, H200: with both as runtime flags
// the 2048-row prefill's kernel issued about 130 instructions per query head, 61% of issue slots
// busy). A warp issuing its next head's loads before this head's arithmetic measured slower (+95 us
// of RoPE per 2048-row fp16 prefill, H200).
template <class T, int PPL, bool IL, bool NORM, class Store1, class Store2>
__device__ __forceinline__ void head(const T* __restrict__ src, const float* __restrict__ nw, float eps, int hd,
                                     bool vec, const Angles<PPL>& an, int lane, Store1&& store1, Store2&& store2) {
  const int half = hd / 2;
  float x0[PPL], x1[PPL];
#pragma unroll
  for (int j = 0; j < PPL; ++j) x0[j] = x1[j] = 0.0f;  // pairs past hd / 2 (and before the word loads fill them)
  if (vec && (IL || PPL % 2 == 0)) {
    // one 32-bit word per pair (interleaved) or per two pairs of each half (rotate-half)
#pragma unroll
    for (int j = 0; j < PPL; ++j) {
      const int p = lane * PPL + j;
      if constexpr (IL) {
        if (p < half) {
          const uint32_t w = *reinterpret_cast<const uint32_t*>(src + 2 * p);
          x0[j] = to_f(reinterpret_cast<const T*>(&w)[0]);
          x1[j] = to_f(reinterpret_cast<const T*>(&w)[1]);
        }
      } else if (j % 2 == 0 && p < half) {  // p even, half even: p + 1 < half too
        const uint32_t wa = *reinterpret_cast<const uint32_t*>(src + p);
        const uint32_t wb = *reinterpret_cast<const uint32_t*>(src + p + half);
        x0[j] = to_f(reinterpret_cast<const T*>(&wa)[0]);
        x1[j] = to_f(reinterpret_cast<const T*>(&wb)[0]);
        if (j + 1 < PPL) {
          x0[j + 1] = to_f(reinterpret_cast<const T*>(&wa)[1]);
          x1[j + 1] = to_f(reinterpret_cast<const T*>(&wb)[1]);
        }
      }
    }
  } else {
#pragma unroll
    for (int j = 0; j < PPL; ++j) {
      const int p = lane * PPL + j;
      if (p < half) {
        x0[j] = to_f(src[IL ? 2 * p : p]);
        x1[j] = to_f(src[IL ? 2 * p + 1 : p + half]);
      }
    }
  }
  float inv = 1.0f;
  if (NORM && nw) {
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < PPL; ++j) ss += x0[j] * x0[j] + x1[j] * x1[j];  // zeros past hd / 2
    for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
    inv = 1.0f / sqrtf(ss / static_cast<float>(hd) + eps);
  }
  float r0[PPL], r1[PPL];
#pragma unroll
  for (int j = 0; j < PPL; ++j) {
    const int p = lane * PPL + j;
    const int a = IL ? 2 * p : p, b = IL ? 2 * p + 1 : p + half;
    const bool nj = NORM && nw && p < half;
    const float u0 = nj ? nw[a] * (x0[j] * inv) : x0[j], u1 = nj ? nw[b] * (x1[j] * inv) : x1[j];
    r0[j] = u0 * an.c[j] - u1 * an.s[j];
    r1[j] = u1 * an.c[j] + u0 * an.s[j];
  }
  if (vec && IL) {
#pragma unroll
    for (int j = 0; j < PPL; ++j)
      if (lane * PPL + j < half) store2(2 * (lane * PPL + j), r0[j], r1[j]);
  } else if (vec && PPL % 2 == 0) {
#pragma unroll
    for (int j = 0; j + 1 < PPL; j += 2) {
      const int p = lane * PPL + j;  // even; half even: p + 1 < half too
      if (p < half) {
        store2(p, r0[j], r0[j + 1]);
        store2(p + half, r1[j], r1[j + 1]);
      }
    }
  } else {
#pragma unroll
    for (int j = 0; j < PPL; ++j) {
      const int p = lane * PPL + j;
      if (p < half) {
        store1(IL ? 2 * p : p, r0[j]);
        store1(IL ? 2 * p + 1 : p + half, r1[j]);
      }
    }
  }
}

}  // namespace rope

// The word kernel: head dims and rows that qk_rope_wide_kernel (below) does not take (hd not 16 times
// a power of two, rows or pools not 16-byte aligned). Grid (M, slices): warp w of block (m, b) takes
// heads y = b kRopeWarps + w, then + slices kRopeWarps, .. < nh + nkv of row m (y < nh a query
// head, else KV head y - nh: its k is normed / rotated and written with its v), computing the lane's
// angles once. slices = 1 (a block per row, the angles shared by a warp's heads) for large M; one
// head per warp for small M, where the step waits on the latency of one row's heads (measured, H200:
// one block per row at every M took a batch-1 decode step's RoPE from 193 to 243 us, mean of six
// schemes, and left the 2048-row prefill's within noise).
// PPL = rope::ppl_for(hd), a template argument so that the unrolled loops stay as short as the head.
// Up to 2 pairs per lane (head_dim <= 128) the kernel is held to 40 registers, 6 blocks per SM (it
// needed 47, 5 blocks, with no spill at 40; Nsight Compute on the 2048-row prefill, H200: latency-bound,
// 21% of the DRAM rate, 54% occupancy).
constexpr int kRopeWarps = 8;
constexpr int64_t kRopeRowsPerBlockFrom = 256;  // M from which a block takes a whole row
template <class T, int PPL, bool IL, bool NORM>
__global__ void __launch_bounds__(kRopeWarps * 32, PPL <= 2 ? 6 : 1) qk_rope_kernel(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, int64_t ld, int nh,
    const float* __restrict__ q_norm, const float* __restrict__ k_norm, float eps, const float* __restrict__ inv_freq,
    int vec, RowMap rows, PagedKv kv, T* __restrict__ q_out) {
  const int64_t m = blockIdx.x;
  const int warp = static_cast<int>(threadIdx.x >> 5), lane = threadIdx.x & 31;
  const int hd = kv.head_dim, nkv = kv.kv_heads;
  const int y0 = static_cast<int>(blockIdx.y) * kRopeWarps + warp, ystep = static_cast<int>(gridDim.y) * kRopeWarps;
  const int pos = rows.pos[m];  // step metadata: copied before the step's first kernel
  const int32_t blk = rows.table[rows.table_off[m] + pos / kv.block_size];
  // The angles depend on the metadata and the model's frequencies only: computed before waiting on
  // the preceding kernel, each pair's once per block (every warp of a block works on the same row),
  // and shared through shared memory (the same sincosf of the same product as a warp computing them).
  __shared__ float cs[2][32 * PPL];
  for (int p = static_cast<int>(threadIdx.x); p < 32 * PPL; p += kRopeWarps * 32) {
    const rope::Angles<1> one = rope::angles<1>(pos, inv_freq, hd / 2, p);
    cs[0][p] = one.c[0];
    cs[1][p] = one.s[0];
  }
  __syncthreads();
  rope::Angles<PPL> an;
#pragma unroll
  for (int j = 0; j < PPL; ++j) {
    an.c[j] = cs[0][lane * PPL + j];
    an.s[j] = cs[1][lane * PPL + j];
  }
  pdl_wait();
  pdl_trigger();
  for (int y = y0; y < nh + nkv; y += ystep) {
    if (y < nh) {
      T* qo = q_out + (m * nh + y) * hd;
      rope::head<T, PPL, IL, NORM>(
          q + m * ld + static_cast<int64_t>(y) * hd, q_norm, eps, hd, vec != 0, an, lane,
          [&](int e, float r) { qo[e] = from_f<T>(r); },
          [&](int e, float r0, float r1) { *reinterpret_cast<uint32_t*>(qo + e) = pack2<T>(r0, r1); });
    } else {
      const int hh = y - nh;
      const int64_t base = ((static_cast<int64_t>(blk) * kv.block_size + pos % kv.block_size) * nkv + hh) * hd;
      T* kc = static_cast<T*>(kv.k) + base;
      rope::head<T, PPL, IL, NORM>(
          k + m * ld + static_cast<int64_t>(hh) * hd, k_norm, eps, hd, vec != 0, an, lane,
          [&](int e, float r) { kc[e] = from_f<T>(r); },
          [&](int e, float r0, float r1) { *reinterpret_cast<uint32_t*>(kc + e) = pack2<T>(r0, r1); });
      const T* vs = v + m * ld + static_cast<int64_t>(hh) * hd;
      T* vc = static_cast<T*>(kv.v) + base;
      if (vec)  // hd even: words
        for (int d = 2 * lane; d < hd; d += 64)
          *reinterpret_cast<uint32_t*>(vc + d) = *reinterpret_cast<const uint32_t*>(vs + d);
      else
        for (int d = lane; d < hd; d += 32) vc[d] = vs[d];
    }
  }
}

// The 16-byte form of the same operation, for head_dim hd = 16 LPH with LPH in {2, 4, 8, 16, 32} (every
// Llama / Mistral / Qwen head: 64, 128, 256): LPH consecutive lanes take a head, a warp 32 / LPH heads at
// once, lane i of its group the pairs 8i .. 8i + 7, each tensor's eight pairs in two 16-byte loads and
// stores (rotate-half: elements 8i .. 8i + 7 of each half; interleaved: 16i .. 16i + 15). One block per
// row, a warp per 32 / LPH of its nh + nkv heads, the row's angles computed once into shared memory
// before the wait on the preceding kernel (measured, H200, 2048-row prefill: the word kernel above kept
// one 256-byte head per warp in flight, 24 us per layer at 1.3 TB/s, latency-bound).
// The result is the word kernel's bit for bit: the same per-pair arithmetic, and the norm's sum of
// squares taken in the same tree. The word kernel's lane L holds pairs L PPL .. L PPL + PPL - 1 (PPL =
// rope::ppl_for(hd)), so this lane holds the partial sums of R = 8 / PPL of its lanes (L = R i + r);
// the word kernel's butterfly step xor o is a shuffle xor o / R across lanes for o >= R (none when o / R
// >= LPH: that lane holds no pair, its partial sum is +0 and adding it changes nothing), and a sum of
// two of the lane's own partials for o < R (a + b == b + a in IEEE arithmetic, so every word-kernel lane
// of a head ends with the same value and so does every lane here).
constexpr int kRopeWideMaxWarps = 16;
template <class T, int LPH, bool IL, bool NORM>
__global__ void __launch_bounds__(kRopeWideMaxWarps * 32) qk_rope_wide_kernel(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, int64_t ld, int nh,
    const float* __restrict__ q_norm, const float* __restrict__ k_norm, float eps, const float* __restrict__ inv_freq,
    RowMap rows, PagedKv kv, T* __restrict__ q_out) {
  constexpr int HD = 16 * LPH, HALF = HD / 2, HPW = 32 / LPH, PPL = rope::ppl_for(HD), R = 8 / PPL;
  static_assert(sizeof(T) == 2 && 32 % LPH == 0 && PPL * R == 8);
  const int64_t m = blockIdx.x;
  const int warp = static_cast<int>(threadIdx.x >> 5), lane = threadIdx.x & 31;
  const int warps = static_cast<int>(blockDim.x >> 5);
  const int g = lane / LPH, i = lane % LPH, nkv = kv.kv_heads;
  const int pos = rows.pos[m];  // step metadata: copied before the step's first kernel
  const int32_t blk = rows.table[rows.table_off[m] + pos / kv.block_size];
  __shared__ __align__(16) float cs[2][HALF];
  for (int p = static_cast<int>(threadIdx.x); p < HALF; p += static_cast<int>(blockDim.x)) {
    const rope::Angles<1> one = rope::angles<1>(pos, inv_freq, HALF, p);
    cs[0][p] = one.c[0];
    cs[1][p] = one.s[0];
  }
  __syncthreads();
  float c[8], s[8];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float4 c4 = reinterpret_cast<const float4*>(cs[0] + 8 * i)[h];
    const float4 s4 = reinterpret_cast<const float4*>(cs[1] + 8 * i)[h];
    c[4 * h] = c4.x, c[4 * h + 1] = c4.y, c[4 * h + 2] = c4.z, c[4 * h + 3] = c4.w;
    s[4 * h] = s4.x, s[4 * h + 1] = s4.y, s[4 * h + 2] = s4.z, s[4 * h + 3] = s4.w;
  }
  pdl_wait();
  pdl_trigger();
  // the lane's 16 elements of a tensor row: offsets off0 (8 elements) and off1 (8 elements)
  const int off0 = IL ? 16 * i : 8 * i, off1 = IL ? 16 * i + 8 : HALF + 8 * i;
  for (int y0 = warp * HPW; y0 < nh + nkv; y0 += warps * HPW) {
    const int y = y0 + g;
    const bool active = y < nh + nkv, is_q = y < nh;  // (an idle group joins the norm's shuffles)
    const T* src = nullptr;
    const float* nw = nullptr;
    T* dst = nullptr;
    uint4 a = {}, b = {}, va = {}, vb = {};
    if (is_q) {
      src = q + m * ld + static_cast<int64_t>(y) * HD;
      nw = q_norm;
      dst = q_out + (m * nh + y) * HD;
    } else if (active) {
      const int hh = y - nh;
      const int64_t base = ((static_cast<int64_t>(blk) * kv.block_size + pos % kv.block_size) * nkv + hh) * HD;
      src = k + m * ld + static_cast<int64_t>(hh) * HD;
      nw = k_norm;
      dst = static_cast<T*>(kv.k) + base;
      const T* vs = v + m * ld + static_cast<int64_t>(hh) * HD;
      va = *reinterpret_cast<const uint4*>(vs + 16 * i);
      vb = *reinterpret_cast<const uint4*>(vs + 16 * i + 8);
      T* vc = static_cast<T*>(kv.v) + base;
      *reinterpret_cast<uint4*>(vc + 16 * i) = va;
      *reinterpret_cast<uint4*>(vc + 16 * i + 8) = vb;
    }
    if (active) {
      a = *reinterpret_cast<const uint4*>(src + off0);
      b = *reinterpret_cast<const uint4*>(src + off1);
    }
    const uint32_t wa[4] = {a.x, a.y, a.z, a.w}, wb[4] = {b.x, b.y, b.z, b.w};
    float x0[8], x1[8];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 fa = unpack2<T>(wa[j]), fb = unpack2<T>(wb[j]);
      if constexpr (IL) {  // a holds pairs 0 .. 3, b pairs 4 .. 7, each as (x0, x1)
        x0[j] = fa.x, x1[j] = fa.y, x0[j + 4] = fb.x, x1[j + 4] = fb.y;
      } else {  // a the pairs' first halves, b their second
        x0[2 * j] = fa.x, x0[2 * j + 1] = fa.y, x1[2 * j] = fb.x, x1[2 * j + 1] = fb.y;
      }
    }
    float inv = 1.0f;
    if constexpr (NORM) {
      float t[R];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        t[r] = 0.0f;
#pragma unroll
        for (int jj = 0; jj < PPL; ++jj) {
          const int j = r * PPL + jj;
          t[r] += x0[j] * x0[j] + x1[j] * x1[j];
        }
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        if (o >= R) {
          if (o / R < LPH) {
#pragma unroll
            for (int r = 0; r < R; ++r) t[r] += __shfl_xor_sync(0xffffffffu, t[r], o / R);
          }
        } else {
          float u[R];
#pragma unroll
          for (int r = 0; r < R; ++r) u[r] = t[r] + t[r ^ o];
#pragma unroll
          for (int r = 0; r < R; ++r) t[r] = u[r];
        }
      }
      if (nw) inv = 1.0f / sqrtf(t[0] / static_cast<float>(HD) + eps);
    }
    if (!active) continue;
    float w0[8], w1[8];  // the norm's weights of the lane's elements (ones without a norm)
#pragma unroll
    for (int j = 0; j < 8; ++j) w0[j] = w1[j] = 1.0f;
    const bool nj = NORM && nw;
    if (nj) {
      const float4* n0 = reinterpret_cast<const float4*>(nw + off0);
      const float4* n1 = reinterpret_cast<const float4*>(nw + off1);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float4 p0 = n0[h], p1 = n1[h];
        const float e0[4] = {p0.x, p0.y, p0.z, p0.w}, e1[4] = {p1.x, p1.y, p1.z, p1.w};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if constexpr (IL) {  // n0[h]: elements 16i + 4h + e, the lane's pair 2h + e / 2; n1[h]: pair 4 + 2h + e / 2
            const int j0 = 2 * h + e / 2, j1 = 4 + 2 * h + e / 2;
            (e % 2 ? w1 : w0)[j0] = e0[e];
            (e % 2 ? w1 : w0)[j1] = e1[e];
          } else {
            w0[4 * h + e] = e0[e];
            w1[4 * h + e] = e1[e];
          }
        }
      }
    }
    uint32_t ra[4], rb[4];
#pragma unroll
    for (int j = 0; j < 8; j += 2) {
      float r0[2], r1[2];
#pragma unroll
      for (int d = 0; d < 2; ++d) {
        const int jj = j + d;
        const float u0 = nj ? w0[jj] * (x0[jj] * inv) : x0[jj], u1 = nj ? w1[jj] * (x1[jj] * inv) : x1[jj];
        r0[d] = u0 * c[jj] - u1 * s[jj];
        r1[d] = u1 * c[jj] + u0 * s[jj];
      }
      if constexpr (IL) {  // pairs j, j + 1 as (r0, r1) words, a for pairs 0 .. 3, b for 4 .. 7
        (j < 4 ? ra : rb)[j % 4] = pack2<T>(r0[0], r1[0]);
        (j < 4 ? ra : rb)[j % 4 + 1] = pack2<T>(r0[1], r1[1]);
      } else {
        ra[j / 2] = pack2<T>(r0[0], r0[1]);
        rb[j / 2] = pack2<T>(r1[0], r1[1]);
      }
    }
    *reinterpret_cast<uint4*>(dst + off0) = make_uint4(ra[0], ra[1], ra[2], ra[3]);
    *reinterpret_cast<uint4*>(dst + off1) = make_uint4(rb[0], rb[1], rb[2], rb[3]);
  }
}

// dst row r = src row rows[r]: one block per row, 16-byte words where every row allows them (vec),
// else bytes.
__global__ void gather_rows_kernel(const uint8_t* __restrict__ src, const int32_t* __restrict__ rows, int64_t row_bytes,
                                   int vec, uint8_t* __restrict__ dst) {
  pdl_wait();
  const int64_t r = blockIdx.x;
  const uint8_t* s = src + static_cast<int64_t>(rows[r]) * row_bytes;
  uint8_t* d = dst + r * row_bytes;
  if (vec) {
    for (int64_t j = threadIdx.x; j < row_bytes / 16; j += blockDim.x)
      reinterpret_cast<uint4*>(d)[j] = reinterpret_cast<const uint4*>(s)[j];
  } else {
    for (int64_t j = threadIdx.x; j < row_bytes; j += blockDim.x) d[j] = s[j];
  }
  pdl_trigger();  // after its loads, as the other short kernels (launch.cuh)
}

template <class T>
__global__ void swiglu_kernel(const T* __restrict__ gu, int64_t M, int64_t I, T* __restrict__ out) {
  pdl_wait();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= M * I) return;  // (after the wait: every CTA waits; an exit counts as the trigger)
  const int64_t m = i / I, c = i % I;
  const float gv = to_f(gu[m * 2 * I + c]), uv = to_f(gu[m * 2 * I + I + c]);
  pdl_trigger();  // after the loads (launch.cuh)
  out[i] = from_f<T>(silu_mul(gv, uv));
}

// Eight columns per thread (16-byte loads and store) when I % 8 == 0.
template <class T>
__global__ void swiglu8_kernel(const T* __restrict__ gu, int64_t M, int64_t I, T* __restrict__ out) {
  pdl_wait();
  const int64_t i8 = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, per = I / 8;
  if (i8 >= M * per) return;  // (after the wait: every CTA waits)
  const int64_t m = i8 / per, c = (i8 % per) * 8;
  const uint4 gv = *reinterpret_cast<const uint4*>(gu + m * 2 * I + c);
  const uint4 uv = *reinterpret_cast<const uint4*>(gu + m * 2 * I + I + c);
  pdl_trigger();  // after the loads (launch.cuh)
  const T* g8 = reinterpret_cast<const T*>(&gv);
  const T* u8 = reinterpret_cast<const T*>(&uv);
  uint4 ov;
  T* o8 = reinterpret_cast<T*>(&ov);
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const float g = to_f(g8[k]);
    o8[k] = from_f<T>(silu_mul(g, to_f(u8[k])));
  }
  *reinterpret_cast<uint4*>(out + m * I + c) = ov;
}

// f(std::integral_constant<int, P>{}) for P the smallest power of two >= n in [Lo, Hi] (Hi past it):
// the kernels' compile-time head-shape arguments.
template <int Lo, int Hi, class F>
void with_pow2(int n, F&& f) {
  if constexpr (Lo >= Hi) f(std::integral_constant<int, Hi>{});
  else if (n <= Lo) f(std::integral_constant<int, Lo>{});
  else with_pow2<Lo * 2, Hi>(n, f);
}

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// rope::head's word loads and stores: the q, k, v rows, q_out and the K / V pools 4-byte aligned,
// and hd / 2 even (rotate-half's second half starts on a word).
bool rope_vec_ok(const void* q, const void* k, const void* v, int64_t ld, int hd, const void* q_out, const PagedKv& kv) {
  auto al = [](const void* p, uintptr_t n) { return reinterpret_cast<uintptr_t>(p) % n == 0; };
  return al(q, 4) && al(k, 4) && al(v, 4) && al(kv.k, 4) && al(kv.v, 4) && al(q_out, 4) && ld % 2 == 0 && hd % 4 == 0;
}

void check_rows(int64_t M, const char* who) {
  if (M < 0 || M > 0x7FFFFFFF) throw std::invalid_argument(fmt::format("{}: {} rows", who, M));
}

}  // namespace

bool qk_rope_wide(const void* q, const void* k, const void* v, int64_t ld, const float* q_norm, const float* k_norm,
                  const PagedKv& kv, const void* q_out) {
  auto al = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const int hd = kv.head_dim, lph = hd / 16;
  return hd % 16 == 0 && lph >= 2 && lph <= 32 && (lph & (lph - 1)) == 0 && ld % 8 == 0 && al(q) && al(k) && al(v) &&
         al(q_out) && al(kv.k) && al(kv.v) && al(q_norm) && al(k_norm);
}

void embed_rows(const void* embed, const int32_t* tok, int64_t M, int64_t H, float* x, cudaStream_t stream) {
  check_rows(M, "embed_rows");
  if (M == 0) return;
  if (!embed || !tok || !x || H <= 0) throw std::invalid_argument("embed_rows: null pointer or H <= 0");
  launch_pdl(embed_kernel, dim3(static_cast<unsigned>(M)), dim3(kThreads), 0, stream, static_cast<const __nv_bfloat16*>(embed), tok, H, x);
  SHARQ_CUDA_CHECK(cudaGetLastError());
}

void rmsnorm_rows(const float* x, const void* add, const int32_t* rows, int64_t R, int64_t H, const float* w, float eps,
                  DType t, void* y, cudaStream_t stream) {
  check_rows(R, "rmsnorm_rows");
  if (R == 0) return;
  if (!x || !w || !y || H <= 0) throw std::invalid_argument("rmsnorm_rows: null pointer or H <= 0");
  float* xm = const_cast<float*>(x);  // (never written: kKeep false)
  with_half_type(t, [&](auto tag) {
    using T = decltype(tag);
    if (add) launch_norm<T, true, false>(R, H, stream, xm, rows, add, w, eps, y);
    else launch_norm<T, false, false>(R, H, stream, xm, rows, nullptr, w, eps, y);
  });
  SHARQ_CUDA_CHECK(cudaGetLastError());
}

void add_rmsnorm(float* x, const void* o, int64_t M, int64_t H, const float* w, float eps, DType t, void* y,
                 cudaStream_t stream) {
  check_rows(M, "add_rmsnorm");
  if (M == 0) return;
  if (!x || !o || !w || !y || H <= 0) throw std::invalid_argument("add_rmsnorm: null pointer or H <= 0");
  with_half_type(t, [&](auto tag) { launch_norm<decltype(tag), true, true>(M, H, stream, x, nullptr, o, w, eps, y); });
  SHARQ_CUDA_CHECK(cudaGetLastError());
}

void qk_rope_kv_write(const void* q, const void* k, const void* v, int64_t ld, int64_t M, int nh, const float* q_norm,
                      const float* k_norm, float eps, const float* inv_freq, bool interleaved, const RowMap& rows,
                      const PagedKv& kv, DType t, void* q_out, cudaStream_t stream) {
  check_rows(M, "qk_rope_kv_write");
  if (M == 0) return;
  if (!q || !k || !v || !inv_freq || !q_out || !kv.k || !kv.v || !rows.pos || !rows.table_off || !rows.table)
    throw std::invalid_argument("qk_rope_kv_write: null pointer");
  if (kv.head_dim <= 0 || kv.head_dim > 1024 || kv.head_dim % 2 != 0 || nh <= 0 || kv.kv_heads <= 0 ||
      nh % kv.kv_heads != 0 || nh + kv.kv_heads > 65535)
    throw std::invalid_argument(fmt::format("qk_rope_kv_write: heads {} / {} of dim {}", nh, kv.kv_heads, kv.head_dim));
  if (ld < static_cast<int64_t>(nh) * kv.head_dim)
    throw std::invalid_argument(fmt::format("qk_rope_kv_write: row stride {} < {} query values", ld, nh * kv.head_dim));
  const bool norm = q_norm || k_norm;
  const int hd = kv.head_dim;
  if (qk_rope_wide(q, k, v, ld, q_norm, k_norm, kv, q_out)) {
    const int lph = hd / 16, warps = std::min((nh + kv.kv_heads + 32 / lph - 1) / (32 / lph), kRopeWideMaxWarps);
    with_half_type(t, [&](auto tag) {
      with_pow2<2, 32>(lph, [&](auto lph_c) {
        using T = decltype(tag);
        constexpr int LPH = decltype(lph_c)::value;
        const auto kernel =
            interleaved ? (norm ? qk_rope_wide_kernel<T, LPH, true, true> : qk_rope_wide_kernel<T, LPH, true, false>)
                        : (norm ? qk_rope_wide_kernel<T, LPH, false, true> : qk_rope_wide_kernel<T, LPH, false, false>);
        launch_pdl(kernel, dim3(static_cast<unsigned>(M)), dim3(warps * 32), 0, stream, static_cast<const T*>(q),
                   static_cast<const T*>(k), static_cast<const T*>(v), ld, nh, q_norm, k_norm, eps, inv_freq, rows, kv,
                   static_cast<T*>(q_out));
      });
    });
    SHARQ_CUDA_CHECK(cudaGetLastError());
    return;
  }
  const int slices = M >= kRopeRowsPerBlockFrom ? 1 : (nh + kv.kv_heads + kRopeWarps - 1) / kRopeWarps;
  const dim3 grid(static_cast<unsigned>(M), static_cast<unsigned>(slices));
  const dim3 block(kRopeWarps * 32);
  const int ppl = rope::ppl_for(kv.head_dim);
  const bool vec = rope_vec_ok(q, k, v, ld, kv.head_dim, q_out, kv);
  with_half_type(t, [&](auto tag) {
    with_pow2<1, 16>(ppl, [&](auto ppl_c) {
      using T = decltype(tag);
      constexpr int PPL = decltype(ppl_c)::value;
      const auto kernel =
          interleaved ? (norm ? qk_rope_kernel<T, PPL, true, true> : qk_rope_kernel<T, PPL, true, false>)
                      : (norm ? qk_rope_kernel<T, PPL, false, true> : qk_rope_kernel<T, PPL, false, false>);
      launch_pdl(kernel, grid, block, 0, stream, static_cast<const T*>(q), static_cast<const T*>(k),
                 static_cast<const T*>(v), ld, nh, q_norm, k_norm, eps, inv_freq, static_cast<int>(vec), rows, kv,
                 static_cast<T*>(q_out));
    });
  });
  SHARQ_CUDA_CHECK(cudaGetLastError());
}

void gather_rows(const void* src, const int32_t* rows, int64_t R, int64_t row_bytes, void* dst, cudaStream_t stream) {
  check_rows(R, "gather_rows");
  if (R == 0) return;
  if (!src || !rows || !dst || row_bytes <= 0) throw std::invalid_argument("gather_rows: null pointer or row_bytes <= 0");
  const bool vec = row_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(dst) % 16 == 0;
  launch_pdl(gather_rows_kernel, dim3(static_cast<unsigned>(R)), dim3(kThreads), 0, stream,
             static_cast<const uint8_t*>(src), rows, row_bytes, vec ? 1 : 0, static_cast<uint8_t*>(dst));
  SHARQ_CUDA_CHECK(cudaGetLastError());
}

void swiglu(const void* gu, int64_t M, int64_t I, DType t, void* out, cudaStream_t stream) {
  if (M <= 0 || I <= 0) return;
  if (!gu || !out) throw std::invalid_argument("swiglu: null pointer");
  const int64_t n = M * I;
  if (I % 8 == 0) {
    if (t == DType::f16)
      launch_pdl(swiglu8_kernel<__half>, dim3(blocks_for(n / 8)), dim3(kThreads), 0, stream, static_cast<const __half*>(gu), M, I,
                                                                         static_cast<__half*>(out));
    else
      launch_pdl(swiglu8_kernel<__nv_bfloat16>, dim3(blocks_for(n / 8)), dim3(kThreads), 0, stream, static_cast<const __nv_bfloat16*>(gu), M, I,
                                                                                static_cast<__nv_bfloat16*>(out));
    SHARQ_CUDA_CHECK(cudaGetLastError());
    return;
  }
  if (t == DType::f16)
    launch_pdl(swiglu_kernel<__half>, dim3(blocks_for(n)), dim3(kThreads), 0, stream, static_cast<const __half*>(gu), M, I,
                                                                  static_cast<__half*>(out));
  else
    launch_pdl(swiglu_kernel<__nv_bfloat16>, dim3(blocks_for(n)), dim3(kThreads), 0, stream, static_cast<const __nv_bfloat16*>(gu), M, I,
                                                                         static_cast<__nv_bfloat16*>(out));
  SHARQ_CUDA_CHECK(cudaGetLastError());
}

}  // namespace sharq::cuda
