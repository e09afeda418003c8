// The attention kernels of the GPU engine (paged_attention.h): the split-KV decode kernel with its
// combine kernel, the FlashAttention-2 prefill kernel, the host plan and the entry point.
//
// Cache addressing (both kernels): key j of a sequence lives at element
//   ((table[j / bs] * bs + j % bs) * nkv + kvh) * hd
// of the K (V) pool. The offsets of a tile's 64 keys are computed once per tile by 64 threads into
// shared memory (one block-table read and one division per key), and every 16-byte copy of the tile
// reads them from there.
//
// ---- Decode (one CTA = 128 threads per (split, head group, row)) ---------------------------------
// Head group: gc query heads of one KV head, gc = the largest divisor of nh / nkv that is <= 8
// (compile-time bound MG = 1, 2, 4 or 8 >= gc), so every K/V row is read from HBM once per gc heads.
// Thread layout: L = lanes per key (the power of two >= hd / 8, 1..32): lane li of a group owns dims
// 8 li .. 8 li + 7 and keeps q (FP32, pre-scaled by log2(e) / sqrt(hd)) of the gc heads for them in
// registers; the 128 / L groups take keys grp, grp + 128 / L, ... of the tile.
// Per tile of 64 keys: K and V arrive by cp.async (16 B; element copies when hd % 8 != 0 or the pools
// are not 16-byte aligned) into a double-buffered [2][64][hdp] stage (the next tile's copies fly while
// this one is computed); scores: 8-wide FP32 dot products per lane, a butterfly over the L lanes, to
// shared [MG][64]; softmax: warp w takes heads w, w + 4 (running max / sum in registers, exp2f,
// butterfly reductions); PV: acc[g][8] += p * v per lane, rescaled once per tile. At the end the
// 128 / L key groups' accumulators are summed in group order through shared memory (aliasing the K/V
// stage). Everything is in a fixed order: a row's bits depend on its own range only.
// Split rule (paged_attention.h): chunk = max(64, round_up(ceil(len / 16), 64)), <= 16 splits. Grid
// (16, nh / gc, rows): CTAs past the row's split count exit. One split writes the output; more write
// FP32 partials (acc [row][head][split][hd], max, sum) that the combine kernel merges in split order.
// Rows are launched in groups of <= 128 (kRowsPerLaunch) that reuse the workspace.
// Shared memory: max(4 * 64 * hdp * 2 B, (128 / L) * MG * hdp * 4 B) + scores MG * 256 B + offsets
// 1 KB: 64 KB + 3 KB for hd 128 (3 CTAs per SM), 128 KB + 3 KB for hd 256.
//
// ---- Prefill (one CTA = 4 warps per (tile, query head)) ------------------------------------------
// Q tile: 64 rows (zero rows past the tile's count) x HD, q rounded to T into shared memory, then
// per warp 16 rows as mma A fragments in registers (ldmatrix). Key blocks of 64 from the first row's
// window start to the last row's position; K and V blocks double-buffered by cp.async (zero-filled
// past the last key); rows padded to HD + 8 elements so that ldmatrix is conflict-free. Per block:
// S = Q K^T (m16n8k16, K rows as the col-major B operand via ldmatrix), mask j in [lo(row), pos(row)],
// online softmax in the log2 domain (rows with no key yet use 0 as the reference max), P rounded to
// T and used both as the A operand of P V (V via ldmatrix.trans) and for the row sum. Shared memory
// (64 + 4 * 64) * (HD + 8) * 2 B + 1 KB: 87 KB for HD 128 (2 CTAs per SM), 46 KB for HD 64. The grid
// walks the tiles from the last one (the longest causal ranges first).
//
// All three kernels are launched with programmatic stream serialization (PDL, as the FP4 GEMMs): a
// kernel may start while its predecessor drains and reads only the step metadata (rows, positions,
// block tables: copied before the step's first kernel) before griddepcontrol.wait; q, the cache, the
// workspace and the output are touched only after it.
#include "sharq/kernels/cuda/paged_attention.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <type_traits>

#include <fmt/format.h>

#include "sharq/kernels/cuda/cuda_check.h"

namespace sharq::cuda {
namespace {

constexpr int kThreads = 128;        // both kernels: 4 warps
constexpr int kKeys = 64;            // keys per decode tile / prefill key block
constexpr int kMaxSplits = 16;       // decode splits per row, at most
constexpr int kRowsPerLaunch = 128;  // decode rows per launch (the workspace holds this many)
constexpr int kMaxHeadDim = 256;
constexpr unsigned kFull = 0xffffffffu;

// ---- shared helpers ---------------------------------------------------------------------------
__host__ __device__ inline int first_key(int pos, int64_t window) {
  const int64_t j0 = static_cast<int64_t>(pos) + 1 - window;
  return window > 0 && j0 > 0 ? static_cast<int>(j0) : 0;
}
// The split rule: keys per split, a function of the attended length only.
__host__ __device__ inline int split_chunk(int len) {
  const int64_t per = (static_cast<int64_t>(len) + kMaxSplits - 1) / kMaxSplits;
  const int64_t c = (per + kKeys - 1) / kKeys * kKeys;
  return static_cast<int>(c > kKeys ? c : kKeys);
}
__host__ __device__ inline int split_count(int len, int chunk) {
  return static_cast<int>((static_cast<int64_t>(len) + chunk - 1) / chunk);
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async16_zfill(uint32_t dst, const void* src, uint32_t src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
// Programmatic dependent launch: wait until the preceding kernel's writes are visible (a no-op for a
// plain launch).
__device__ __forceinline__ void grid_dependency_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
// d += a * b, m16n8k16, FP32 accumulators.
template <class T>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>)
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two values -> one 32-bit word of T (lo in the low half), round to nearest even.
template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  uint32_t u;
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 h = __floats2half2_rn(lo, hi);
    memcpy(&u, &h, 4);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    memcpy(&u, &h, 4);
  }
  return u;
}
template <class T>
__device__ __forceinline__ float2 unpack2(uint32_t u) {
  if constexpr (std::is_same_v<T, __half>) {
    __half2 h;
    memcpy(&h, &u, 4);
    return __half22float2(h);
  } else {
    return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
  }
}
template <class T>
__device__ __forceinline__ void unpack8(const uint4& u, float (&f)[8]) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 x = unpack2<T>(w[i]);
    f[2 * i] = x.x;
    f[2 * i + 1] = x.y;
  }
}
template <class T>
__device__ __forceinline__ T from_f(float v) {
  if constexpr (std::is_same_v<T, __half>)
    return __float2half_rn(v);
  else
    return __float2bfloat16_rn(v);
}

// Offset (elements) of key j's row of KV head kvh in a pool.
__device__ __forceinline__ int64_t key_offset(const int32_t* table, int j, int bs, int64_t tok_stride,
                                              int64_t head_off) {
  const int b = j / bs;
  return (static_cast<int64_t>(table[b]) * bs + (j - b * bs)) * tok_stride + head_off;
}

// ---- decode ------------------------------------------------------------------------------------
struct DecodeArgs {
  const float* q;
  const int32_t* drows;  // this launch's rows
  RowMap rows;
  const uint16_t* k;
  const uint16_t* v;
  float* part;  // acc [n_rows][nh][kMaxSplits][hd], then max and sum [n_rows][nh][kMaxSplits]
  void* out;
  int64_t window;
  int n_rows, nh, G, gc, hd, hdp, L, nkv, bs, vec;
  float qscale;
};

struct DecodeSmem {
  size_t sc, koff, corr, total;
};
__host__ __device__ inline DecodeSmem decode_smem(int hdp, int L, int MG) {
  const size_t kv = static_cast<size_t>(4) * kKeys * hdp * 2;
  const size_t red = static_cast<size_t>(kThreads / L) * MG * hdp * 4;
  DecodeSmem s;
  s.sc = ((kv > red ? kv : red) + 15) / 16 * 16;
  s.koff = s.sc + static_cast<size_t>(MG) * kKeys * 4;  // 16-aligned (MG * 256)
  s.corr = s.koff + 2 * kKeys * 8;
  s.total = s.corr + static_cast<size_t>(3) * MG * 4;
  return s;
}

template <class T, int MG>
__global__ void __launch_bounds__(kThreads) decode_kernel(const DecodeArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int split = blockIdx.x, r = blockIdx.z;
  const int m = a.drows[r];
  const int pos = a.rows.pos[m], toff = a.rows.table_off[m];  // both loads in flight together
  const int j0 = first_key(pos, a.window);
  const int len = pos + 1 - j0;
  const int chunk = split_chunk(len);
  const int nsplit = split_count(len, chunk);
  if (split >= nsplit) {  // no work, but wait anyway: a PDL grid must not complete before its
    grid_dependency_wait();  // primary, or the kernels after it could overtake the primary
    return;
  }
  const int ks = j0 + split * chunk;
  const int nkeys = min(chunk, pos + 1 - ks);
  const int ntiles = (nkeys + kKeys - 1) / kKeys;

  const int gc = a.gc, h0 = blockIdx.y * gc, kvh = h0 / a.G, hd = a.hd, hdp = a.hdp, L = a.L;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int li = tid & (L - 1), grp = tid / L, ngrp = kThreads / L;
  const bool dim_on = li * 8 < hdp;

  const DecodeSmem lay = decode_smem(hdp, L, MG);
  uint16_t* kbuf = reinterpret_cast<uint16_t*>(smem);           // [2][64][hdp]
  uint16_t* vbuf = kbuf + 2 * kKeys * hdp;                      // [2][64][hdp]
  float* red = reinterpret_cast<float*>(smem);                  // [ngrp][MG][hdp], after the key loop
  float* sc = reinterpret_cast<float*>(smem + lay.sc);          // [MG][64] scores, then probabilities
  int64_t* koff = reinterpret_cast<int64_t*>(smem + lay.koff);  // [2][64]
  float* corr = reinterpret_cast<float*>(smem + lay.corr);      // [MG]
  float* mls = corr + MG;                                       // [2][MG] final max, sum

  const int32_t* table = a.rows.table + toff;
  const int64_t tok_stride = static_cast<int64_t>(a.nkv) * hd, head_off = static_cast<int64_t>(kvh) * hd;

  auto fill_offsets = [&](int t, int s) {
    if (tid < kKeys && tid < nkeys - t * kKeys)
      koff[s * kKeys + tid] = key_offset(table, ks + t * kKeys + tid, a.bs, tok_stride, head_off);
  };
  // The step metadata (rows, positions, block tables) was copied before the preceding kernels ran:
  // read it, and the first two tiles' offsets, before waiting on the preceding kernel (PDL).
  fill_offsets(0, 0);
  if (ntiles > 1) fill_offsets(1, 1);
  grid_dependency_wait();  // q, the cache (written by the preceding kernel) and the workspace from here on

  float qr[MG][8];
#pragma unroll
  for (int g = 0; g < MG; ++g)
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const int d = li * 8 + e;
      qr[g][e] = g < gc && d < hd ? a.q[(static_cast<int64_t>(m) * a.nh + h0 + g) * hd + d] * a.qscale : 0.0f;
    }

  // Copies of tile t into stage s (offsets in koff[s]).
  auto issue = [&](const uint16_t* src, uint16_t* dst, int t, int s) {
    const int nk = min(kKeys, nkeys - t * kKeys);
    if (!dim_on) return;
    for (int kk = grp; kk < nk; kk += ngrp) {
      const uint16_t* g = src + koff[s * kKeys + kk] + li * 8;
      uint16_t* d = dst + (s * kKeys + kk) * hdp + li * 8;
      if (a.vec) {
        cp_async16(smem_u32(d), g);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) d[e] = li * 8 + e < hd ? g[e] : uint16_t(0);
      }
    }
  };

  __syncthreads();
  issue(a.k, kbuf, 0, 0);
  cp_async_commit();
  issue(a.v, vbuf, 0, 0);
  cp_async_commit();

  constexpr int GW = (MG + 3) / 4;  // heads per warp in the softmax stage
  float mrun[GW], lrun[GW];
#pragma unroll
  for (int i = 0; i < GW; ++i) mrun[i] = -INFINITY, lrun[i] = 0.0f;
  float acc[MG][8];
#pragma unroll
  for (int g = 0; g < MG; ++g)
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[g][e] = 0.0f;

  for (int t = 0; t < ntiles; ++t) {
    const int s = t & 1, nk = min(kKeys, nkeys - t * kKeys);
    if (t + 1 < ntiles) issue(a.k, kbuf, t + 1, s ^ 1);
    cp_async_commit();
    if (t + 1 < ntiles) issue(a.v, vbuf, t + 1, s ^ 1);
    cp_async_commit();
    cp_async_wait<3>();  // K(t) of this thread landed
    __syncthreads();     // ... and of every thread; koff[s] is free
    if (t + 2 < ntiles) fill_offsets(t + 2, s);

    // scores (log2 domain) of the tile's keys
    const uint16_t* kt = kbuf + s * kKeys * hdp;
#pragma unroll 2
    for (int kk = grp; kk < kKeys; kk += ngrp) {  // same trip count across each warp; unrolled for ILP
      float dot[MG];
#pragma unroll
      for (int g = 0; g < MG; ++g) dot[g] = 0.0f;
      if (kk < nk && dim_on) {
        float kf[8];
        unpack8<T>(*reinterpret_cast<const uint4*>(kt + kk * hdp + li * 8), kf);
#pragma unroll
        for (int g = 0; g < MG; ++g)
          if (g < gc)
#pragma unroll
            for (int e = 0; e < 8; ++e) dot[g] = fmaf(qr[g][e], kf[e], dot[g]);
      }
      for (int off = L >> 1; off > 0; off >>= 1)
#pragma unroll
        for (int g = 0; g < MG; ++g)
          if (g < gc) dot[g] += __shfl_xor_sync(kFull, dot[g], off);
      if (li == 0)
#pragma unroll
        for (int g = 0; g < MG; ++g)
          if (g < gc) sc[g * kKeys + kk] = kk < nk ? dot[g] : -INFINITY;
    }
    __syncthreads();

    // online softmax: warp w owns heads w, w + 4
#pragma unroll
    for (int i = 0; i < GW; ++i) {
      const int g = warp + 4 * i;
      if (g >= gc) continue;
      const float s0 = sc[g * kKeys + lane], s1 = sc[g * kKeys + lane + 32];
      float mx = fmaxf(s0, s1);
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, off));
      const float mn = fmaxf(mrun[i], mx);  // finite: a tile has at least one key
      const float c = exp2f(mrun[i] - mn);  // 0 on the first tile
      const float p0 = exp2f(s0 - mn), p1 = exp2f(s1 - mn);
      float ps = p0 + p1;
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) ps += __shfl_xor_sync(kFull, ps, off);
      lrun[i] = lrun[i] * c + ps;
      mrun[i] = mn;
      sc[g * kKeys + lane] = p0;
      sc[g * kKeys + lane + 32] = p1;
      if (lane == 0) corr[g] = c;
    }
    cp_async_wait<2>();  // V(t) of this thread landed
    __syncthreads();

    // acc = acc * corr + sum_k p_k v_k
#pragma unroll
    for (int g = 0; g < MG; ++g) {
      const float c = g < gc ? corr[g] : 0.0f;
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[g][e] *= c;
    }
    if (dim_on) {
      const uint16_t* vt = vbuf + s * kKeys * hdp;
      for (int kk = grp; kk < nk; kk += ngrp) {
        float vf[8];
        unpack8<T>(*reinterpret_cast<const uint4*>(vt + kk * hdp + li * 8), vf);
#pragma unroll
        for (int g = 0; g < MG; ++g) {
          if (g >= gc) continue;
          const float p = sc[g * kKeys + kk];
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[g][e] = fmaf(p, vf[e], acc[g][e]);
        }
      }
    }
    __syncthreads();  // stage s and the scores are free
  }
  cp_async_wait<0>();

  // sum the key groups' accumulators in group order
  if (dim_on) {
#pragma unroll
    for (int g = 0; g < MG; ++g) {
      if (g >= gc) continue;
      float4* d = reinterpret_cast<float4*>(red + (grp * MG + g) * hdp + li * 8);
      d[0] = make_float4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]);
      d[1] = make_float4(acc[g][4], acc[g][5], acc[g][6], acc[g][7]);
    }
  }
  if (lane == 0)
#pragma unroll
    for (int i = 0; i < GW; ++i) {
      const int g = warp + 4 * i;
      if (g < gc) mls[g] = mrun[i], mls[MG + g] = lrun[i];
    }
  __syncthreads();
  float* pacc = a.part;
  float* pm = pacc + static_cast<int64_t>(a.n_rows) * a.nh * kMaxSplits * hd;
  float* pl = pm + static_cast<int64_t>(a.n_rows) * a.nh * kMaxSplits;
  for (int idx = tid; idx < gc * hd; idx += kThreads) {
    const int g = idx / hd, d = idx - g * hd, h = h0 + g;
    float o = 0.0f;
    for (int sub = 0; sub < ngrp; ++sub) o += red[(sub * MG + g) * hdp + d];
    if (nsplit == 1) {
      static_cast<T*>(a.out)[(static_cast<int64_t>(m) * a.nh + h) * hd + d] = from_f<T>(o / mls[MG + g]);
    } else {
      const int64_t ps = (static_cast<int64_t>(r) * a.nh + h) * kMaxSplits + split;
      pacc[ps * hd + d] = o;
      if (d == 0) pm[ps] = mls[g], pl[ps] = mls[MG + g];
    }
  }
}

// out = sum_s w_s acc_s / sum_s w_s l_s, w_s = 2^(m_s - max m), in split order. One CTA per (head, row).
template <class T>
__global__ void __launch_bounds__(kThreads) combine_kernel(const DecodeArgs a) {
  const int h = blockIdx.x, r = blockIdx.y;
  const int m = a.drows[r];
  const int pos = a.rows.pos[m];
  const int len = pos + 1 - first_key(pos, a.window);
  const int nsplit = split_count(len, split_chunk(len));
  grid_dependency_wait();  // the split kernel's partials (and, when the split kernel wrote the output
                           // itself, its completion: every CTA of a PDL grid waits before it exits)
  if (nsplit == 1) return;
  const int hd = a.hd;
  const int64_t ps = (static_cast<int64_t>(r) * a.nh + h) * kMaxSplits;
  const float* pacc = a.part + ps * hd;
  const float* pm = a.part + static_cast<int64_t>(a.n_rows) * a.nh * kMaxSplits * hd + ps;
  const float* pl = pm + static_cast<int64_t>(a.n_rows) * a.nh * kMaxSplits;
  float mx = -INFINITY;
  for (int s = 0; s < nsplit; ++s) mx = fmaxf(mx, pm[s]);
  float w[kMaxSplits];
  float lsum = 0.0f;
#pragma unroll
  for (int s = 0; s < kMaxSplits; ++s) {
    w[s] = s < nsplit ? exp2f(pm[s] - mx) : 0.0f;
    if (s < nsplit) lsum = lsum + w[s] * pl[s];
  }
  for (int d = threadIdx.x; d < hd; d += kThreads) {
    float o = 0.0f;
#pragma unroll
    for (int s = 0; s < kMaxSplits; ++s)
      if (s < nsplit) o = fmaf(w[s], pacc[s * hd + d], o);
    static_cast<T*>(a.out)[(static_cast<int64_t>(m) * a.nh + h) * hd + d] = from_f<T>(o / lsum);
  }
}

// ---- prefill -----------------------------------------------------------------------------------
struct PrefillArgs {
  const float* q;
  const int32_t* tiles;
  RowMap rows;
  const uint16_t* k;
  const uint16_t* v;
  void* out;
  int64_t window;
  int n_tiles, nh, G, nkv, bs;
  float scale_log2;
};

template <int HD>
constexpr size_t prefill_smem() {
  return static_cast<size_t>(5) * kKeys * (HD + 8) * 2 + 2 * kKeys * 8;
}

template <class T, int HD>
__global__ void __launch_bounds__(kThreads) prefill_kernel(const PrefillArgs a) {
  constexpr int LD = HD + 8;   // padded row (elements): ldmatrix rows land on distinct banks
  constexpr int CH = HD / 8;   // 16-byte chunks per row
  constexpr int KS = HD / 16;  // k16 steps of Q K^T
  constexpr int NT = HD / 8;   // n8 tiles of the output
  extern __shared__ __align__(16) unsigned char smem[];
  uint16_t* qs = reinterpret_cast<uint16_t*>(smem);                  // [64][LD]
  uint16_t* kst = qs + kKeys * LD;                                   // [2][64][LD]
  uint16_t* vst = kst + 2 * kKeys * LD;                              // [2][64][LD]
  int64_t* koff = reinterpret_cast<int64_t*>(vst + 2 * kKeys * LD);  // [2][64]

  const int tile = a.n_tiles - 1 - static_cast<int>(blockIdx.x);
  const int first = a.tiles[2 * tile], n = a.tiles[2 * tile + 1];
  const int h = blockIdx.y, kvh = h / a.G;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int k_lo = first_key(a.rows.pos[first], a.window), k_hi = a.rows.pos[first + n - 1];
  const int nblk = (k_hi - k_lo) / kKeys + 1;
  const int32_t* table = a.rows.table + a.rows.table_off[first];
  const int64_t tok_stride = static_cast<int64_t>(a.nkv) * HD, head_off = static_cast<int64_t>(kvh) * HD;

  // this thread's two rows (mask only; rows past n reuse the last row and are not stored)
  const int r0 = 16 * warp + (lane >> 2), r1 = r0 + 8;
  const int pos0 = a.rows.pos[first + min(r0, n - 1)], pos1 = a.rows.pos[first + min(r1, n - 1)];
  const int lo0 = first_key(pos0, a.window), lo1 = first_key(pos1, a.window);

  if (tid < kKeys) {
    const int j = k_lo + tid;
    if (j <= k_hi) koff[tid] = key_offset(table, j, a.bs, tok_stride, head_off);
    if (j + kKeys <= k_hi) koff[kKeys + tid] = key_offset(table, j + kKeys, a.bs, tok_stride, head_off);
  }
  grid_dependency_wait();  // q and the cache from here on (the metadata above was there before)
  {
    const float* qh = a.q + (static_cast<int64_t>(first) * a.nh + h) * HD;
    const int64_t qstride = static_cast<int64_t>(a.nh) * HD;
    for (int idx = tid; idx < kKeys * HD / 4; idx += kThreads) {
      const int rr = idx / (HD / 4), c = idx % (HD / 4);
      const float4 x = rr < n ? *reinterpret_cast<const float4*>(qh + rr * qstride + 4 * c) : make_float4(0, 0, 0, 0);
      *reinterpret_cast<uint2*>(qs + rr * LD + 4 * c) = make_uint2(pack2<T>(x.x, x.y), pack2<T>(x.z, x.w));
    }
  }
  __syncthreads();

  // copies of key block b into stage s (zero rows past k_hi)
  auto issue = [&](const uint16_t* src, uint16_t* dst, int b, int s) {
#pragma unroll
    for (int i = 0; i < kKeys * CH / kThreads; ++i) {
      const int idx = tid + kThreads * i, kk = idx / CH, c = idx % CH;
      const bool ok = k_lo + b * kKeys + kk <= k_hi;
      const uint16_t* g = ok ? src + koff[s * kKeys + kk] + 8 * c : src;
      cp_async16_zfill(smem_u32(dst + (s * kKeys + kk) * LD + 8 * c), g, ok ? 16u : 0u);
    }
  };
  issue(a.k, kst, 0, 0);
  cp_async_commit();
  issue(a.v, vst, 0, 0);
  cp_async_commit();

  uint32_t qa[KS][4];
#pragma unroll
  for (int kk = 0; kk < KS; ++kk)
    ldmatrix_x4(qa[kk], smem_u32(qs + (16 * warp + (lane & 15)) * LD + 16 * kk + 8 * (lane >> 4)));

  float o[NT][4];
#pragma unroll
  for (int i = 0; i < NT; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;

  for (int b = 0; b < nblk; ++b) {
    const int s = b & 1;
    if (b + 1 < nblk) issue(a.k, kst, b + 1, s ^ 1);
    cp_async_commit();
    if (b + 1 < nblk) issue(a.v, vst, b + 1, s ^ 1);
    cp_async_commit();
    // block-table read for block b + 2, consumed after the barrier (koff[s] is free then)
    const int j2 = k_lo + (b + 2) * kKeys + tid;
    const bool want2 = tid < kKeys && j2 <= k_hi;
    const int blk2 = want2 ? table[j2 / a.bs] : 0;
    cp_async_wait<3>();
    __syncthreads();
    if (want2) koff[s * kKeys + tid] = (static_cast<int64_t>(blk2) * a.bs + j2 % a.bs) * tok_stride + head_off;

    // S = Q K^T for the warp's 16 rows x 64 keys
    float sacc[8][4];
#pragma unroll
    for (int i = 0; i < 8; ++i) sacc[i][0] = sacc[i][1] = sacc[i][2] = sacc[i][3] = 0.0f;
    const uint16_t* kb_s = kst + s * kKeys * LD;
#pragma unroll
    for (int kk = 0; kk < KS; ++kk)
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t rb[4];
        ldmatrix_x4(rb,
                    smem_u32(kb_s + (16 * np + 8 * (lane >> 4) + (lane & 7)) * LD + 16 * kk + 8 * ((lane >> 3) & 1)));
        mma16816<T>(sacc[2 * np], qa[kk], rb[0], rb[1]);
        mma16816<T>(sacc[2 * np + 1], qa[kk], rb[2], rb[3]);
      }

    // mask (only where the block is not inside both rows' ranges), online softmax (log2 domain)
    const int kfirst = k_lo + b * kKeys, kb = kfirst + 2 * (lane & 3);
    const bool inside = kfirst >= max(lo0, lo1) && kfirst + kKeys - 1 <= min(pos0, pos1);
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int j = kb + 8 * nt + e;
        const float x0 = inside || (j >= lo0 && j <= pos0) ? sacc[nt][e] * a.scale_log2 : -INFINITY;
        const float x1 = inside || (j >= lo1 && j <= pos1) ? sacc[nt][2 + e] * a.scale_log2 : -INFINITY;
        sacc[nt][e] = x0;
        sacc[nt][2 + e] = x1;
        mx0 = fmaxf(mx0, x0);
        mx1 = fmaxf(mx1, x1);
      }
    mx0 = fmaxf(mx0, __shfl_xor_sync(kFull, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(kFull, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(kFull, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(kFull, mx1, 2));
    const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
    const float mu0 = mn0 == -INFINITY ? 0.0f : mn0, mu1 = mn1 == -INFINITY ? 0.0f : mn1;
    const float c0 = exp2f(m0 - mu0), c1 = exp2f(m1 - mu1);
    m0 = mn0;
    m1 = mn1;
    l0 *= c0;
    l1 *= c1;
#pragma unroll
    for (int i = 0; i < NT; ++i) {
      o[i][0] *= c0;
      o[i][1] *= c0;
      o[i][2] *= c1;
      o[i][3] *= c1;
    }
    uint32_t pa[4][4];  // P as the A operand: k16 step kk2 = keys 16 kk2 .. 16 kk2 + 15
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      const uint32_t lo = pack2<T>(exp2f(sacc[nt][0] - mu0), exp2f(sacc[nt][1] - mu0));
      const uint32_t hi = pack2<T>(exp2f(sacc[nt][2] - mu1), exp2f(sacc[nt][3] - mu1));
      const float2 rl = unpack2<T>(lo), rh = unpack2<T>(hi);
      l0 = l0 + rl.x + rl.y;
      l1 = l1 + rh.x + rh.y;
      pa[nt >> 1][(nt & 1) * 2] = lo;
      pa[nt >> 1][(nt & 1) * 2 + 1] = hi;
    }
    cp_async_wait<2>();
    __syncthreads();

    // O += P V
    const uint16_t* vb_s = vst + s * kKeys * LD;
#pragma unroll
    for (int kk2 = 0; kk2 < 4; ++kk2)
#pragma unroll
      for (int dp = 0; dp < HD / 16; ++dp) {
        uint32_t rb[4];
        ldmatrix_x4_trans(
            rb, smem_u32(vb_s + (16 * kk2 + 8 * ((lane >> 3) & 1) + (lane & 7)) * LD + 16 * dp + 8 * (lane >> 4)));
        mma16816<T>(o[2 * dp], pa[kk2], rb[0], rb[1]);
        mma16816<T>(o[2 * dp + 1], pa[kk2], rb[2], rb[3]);
      }
    __syncthreads();  // stage s free for block b + 2
  }
  cp_async_wait<0>();

  l0 += __shfl_xor_sync(kFull, l0, 1);
  l0 += __shfl_xor_sync(kFull, l0, 2);
  l1 += __shfl_xor_sync(kFull, l1, 1);
  l1 += __shfl_xor_sync(kFull, l1, 2);
  uint32_t* out = static_cast<uint32_t*>(a.out);  // pairs of T
  const int col = 2 * (lane & 3);
  if (r0 < n) {
    const int64_t base = ((static_cast<int64_t>(first) + r0) * a.nh + h) * HD + col;
#pragma unroll
    for (int i = 0; i < NT; ++i) out[(base + 8 * i) >> 1] = pack2<T>(o[i][0] / l0, o[i][1] / l0);
  }
  if (r1 < n) {
    const int64_t base = ((static_cast<int64_t>(first) + r1) * a.nh + h) * HD + col;
#pragma unroll
    for (int i = 0; i < NT; ++i) out[(base + 8 * i) >> 1] = pack2<T>(o[i][2] / l1, o[i][3] / l1);
  }
}

// ---- host --------------------------------------------------------------------------------------
int pow2_at_least(int x) {
  int p = 1;
  while (p < x) p <<= 1;
  return p;
}
// Query heads per decode CTA: the largest divisor of the group size that is <= 8.
int heads_per_cta(int G) {
  for (int g = std::min(G, 8); g > 1; --g)
    if (G % g == 0) return g;
  return 1;
}

template <class K>
void set_smem(K kernel, size_t bytes) {
  SHARQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}
template <class T>
void configure_type() {
  set_smem(decode_kernel<T, 1>, decode_smem(kMaxHeadDim, 32, 1).total);
  set_smem(decode_kernel<T, 2>, decode_smem(kMaxHeadDim, 32, 2).total);
  set_smem(decode_kernel<T, 4>, decode_smem(kMaxHeadDim, 32, 4).total);
  set_smem(decode_kernel<T, 8>, decode_smem(kMaxHeadDim, 32, 8).total);
  set_smem(prefill_kernel<T, 64>, prefill_smem<64>());
  set_smem(prefill_kernel<T, 128>, prefill_smem<128>());
}
// The shared-memory opt-ins, once per process (from the workspace query, i.e. engine construction, at
// the latest from the first launch).
void configure_kernels() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (device_count() == 0) return;
    configure_type<__half>();
    configure_type<__nv_bfloat16>();
  });
}

// Launch with programmatic stream serialization: the kernel may start while the preceding kernel's
// blocks drain; it reads only the step metadata before its griddepcontrol.wait.
template <class... P, class... A>
void launch_pdl(void (*kernel)(P...), dim3 grid, size_t smem, cudaStream_t stream, const A&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  SHARQ_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, args...));
}

template <class T, int MG>
void launch_decode(const DecodeArgs& a0, int n_decode, cudaStream_t stream) {
  const size_t smem = decode_smem(a0.hdp, a0.L, MG).total;
  for (int base = 0; base < n_decode; base += kRowsPerLaunch) {
    DecodeArgs a = a0;
    a.drows = a0.drows + base;
    a.n_rows = std::min(kRowsPerLaunch, n_decode - base);
    launch_pdl(decode_kernel<T, MG>,
               dim3(kMaxSplits, static_cast<unsigned>(a.nh / a.gc), static_cast<unsigned>(a.n_rows)), smem, stream, a);
    launch_pdl(combine_kernel<T>, dim3(static_cast<unsigned>(a.nh), static_cast<unsigned>(a.n_rows)), 0, stream, a);
  }
}

template <class T>
void launch_all(const float* q, int nh, const RowMap& rows, const PagedKv& kv, int64_t window,
                const AttentionPlan& plan, void* out, float scale_log2, cudaStream_t stream) {
  const int hd = kv.head_dim, G = nh / kv.kv_heads;
  if (plan.n_tiles > 0) {
    PrefillArgs a{q,
                  plan.prefill_tiles,
                  rows,
                  static_cast<const uint16_t*>(kv.k),
                  static_cast<const uint16_t*>(kv.v),
                  out,
                  window,
                  plan.n_tiles,
                  nh,
                  G,
                  kv.kv_heads,
                  kv.block_size,
                  scale_log2};
    const dim3 grid(static_cast<unsigned>(plan.n_tiles), static_cast<unsigned>(nh));
    if (hd == 64)
      launch_pdl(prefill_kernel<T, 64>, grid, prefill_smem<64>(), stream, a);
    else
      launch_pdl(prefill_kernel<T, 128>, grid, prefill_smem<128>(), stream, a);
  }
  if (plan.n_decode > 0) {
    DecodeArgs a{};
    a.q = q;
    a.drows = plan.decode_rows;
    a.rows = rows;
    a.k = static_cast<const uint16_t*>(kv.k);
    a.v = static_cast<const uint16_t*>(kv.v);
    a.part = static_cast<float*>(plan.workspace);
    a.out = out;
    a.window = window;
    a.nh = nh;
    a.G = G;
    a.gc = heads_per_cta(G);
    a.hd = hd;
    a.hdp = (hd + 7) / 8 * 8;
    a.L = pow2_at_least(a.hdp / 8);
    a.nkv = kv.kv_heads;
    a.bs = kv.block_size;
    a.vec = hd % 8 == 0 && reinterpret_cast<uintptr_t>(kv.k) % 16 == 0 && reinterpret_cast<uintptr_t>(kv.v) % 16 == 0;
    a.qscale = scale_log2;
    const int MG = pow2_at_least(a.gc);
    if (MG == 1)
      launch_decode<T, 1>(a, plan.n_decode, stream);
    else if (MG == 2)
      launch_decode<T, 2>(a, plan.n_decode, stream);
    else if (MG == 4)
      launch_decode<T, 4>(a, plan.n_decode, stream);
    else
      launch_decode<T, 8>(a, plan.n_decode, stream);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

bool prefill_attention_supports(int head_dim) { return head_dim == 64 || head_dim == 128; }

AttentionWork plan_attention(const std::vector<int64_t>& entry_rows, int head_dim, bool batch_invariant) {
  if (head_dim <= 0 || head_dim > kMaxHeadDim)
    throw std::invalid_argument(fmt::format("plan_attention: head_dim {} (1..{})", head_dim, kMaxHeadDim));
  int64_t total = 0;
  for (size_t i = 0; i < entry_rows.size(); ++i) {
    if (entry_rows[i] < 0)
      throw std::invalid_argument(fmt::format("plan_attention: entry {} has {} rows", i, entry_rows[i]));
    total += entry_rows[i];
    if (total > std::numeric_limits<int32_t>::max())
      throw std::invalid_argument(
          fmt::format("plan_attention: more than {} rows", std::numeric_limits<int32_t>::max()));
  }
  const bool prefill = !batch_invariant && prefill_attention_supports(head_dim);
  AttentionWork w;
  int64_t r = 0;
  for (const int64_t n : entry_rows) {
    if (n == 1 || !prefill) {
      for (int64_t i = 0; i < n; ++i) w.decode_rows.push_back(static_cast<int32_t>(r + i));
    } else {
      for (int64_t off = 0; off < n; off += kAttentionTileRows) {
        w.prefill_tiles.push_back(static_cast<int32_t>(r + off));
        w.prefill_tiles.push_back(static_cast<int32_t>(std::min<int64_t>(kAttentionTileRows, n - off)));
      }
    }
    r += n;
  }
  return w;
}

size_t paged_attention_workspace_bytes(int64_t max_rows, int nh, int head_dim) {
  if (max_rows < 0 || nh <= 0 || head_dim <= 0 || head_dim > kMaxHeadDim)
    throw std::invalid_argument(fmt::format("paged_attention_workspace_bytes: {} rows, {} heads of dim {} (1..{})",
                                            max_rows, nh, head_dim, kMaxHeadDim));
  configure_kernels();
  const int64_t rows = std::min<int64_t>(max_rows, kRowsPerLaunch);
  return static_cast<size_t>(rows) * static_cast<size_t>(nh) * kMaxSplits * (static_cast<size_t>(head_dim) + 2) * 4;
}

void paged_attention(const float* q, int64_t M, int nh, const RowMap& rows, const PagedKv& kv, int64_t window, DType t,
                     const AttentionPlan& plan, void* out, cudaStream_t stream) {
  if (M < 0 || M > std::numeric_limits<int32_t>::max())
    throw std::invalid_argument(fmt::format("paged_attention: {} rows", M));
  if (plan.n_decode < 0 || plan.n_tiles < 0 || plan.n_decode > M || plan.n_tiles > M)
    throw std::invalid_argument(fmt::format("paged_attention: plan of {} decode rows and {} prefill tiles for {} rows",
                                            plan.n_decode, plan.n_tiles, M));
  if (M == 0) return;
  if (!q || !out || !kv.k || !kv.v || !rows.pos || !rows.table_off || !rows.table)
    throw std::invalid_argument("paged_attention: null pointer");
  if (kv.head_dim <= 0 || kv.head_dim > kMaxHeadDim || nh <= 0 || kv.kv_heads <= 0 || nh % kv.kv_heads != 0 ||
      nh > 65535 || kv.block_size <= 0)
    throw std::invalid_argument(
        fmt::format("paged_attention: {} query heads, {} KV heads of dim {} (dim 1..{}), block {}", nh, kv.kv_heads,
                    kv.head_dim, kMaxHeadDim, kv.block_size));
  if (window < 0) throw std::invalid_argument(fmt::format("paged_attention: window {}", window));
  if (t != DType::f16 && t != DType::bf16) throw std::invalid_argument("paged_attention: element type not FP16 / BF16");
  if (plan.n_decode > 0 && (!plan.decode_rows || !plan.workspace || !aligned16(plan.workspace)))
    throw std::invalid_argument("paged_attention: decode rows need the row list and a 16-byte aligned workspace");
  if (plan.n_tiles > 0) {
    if (!plan.prefill_tiles) throw std::invalid_argument("paged_attention: null prefill tile list");
    if (!prefill_attention_supports(kv.head_dim))
      throw std::invalid_argument(fmt::format(
          "paged_attention: prefill tiles for head_dim {} (the prefill kernel takes 64 or 128)", kv.head_dim));
    if (!aligned16(q) || !aligned16(kv.k) || !aligned16(kv.v))
      throw std::invalid_argument("paged_attention: prefill tiles need 16-byte aligned q and K/V pools");
  }
  configure_kernels();
  const float scale_log2 = static_cast<float>(1.4426950408889634 / std::sqrt(static_cast<double>(kv.head_dim)));
  if (t == DType::f16)
    launch_all<__half>(q, nh, rows, kv, window, plan, out, scale_log2, stream);
  else
    launch_all<__nv_bfloat16>(q, nh, rows, kv, window, plan, out, scale_log2, stream);
}

}  // namespace sharq::cuda
