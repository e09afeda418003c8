// The attention kernels of the GPU engine (paged_attention.h): the split-KV decode kernel (one launch,
// combine included), the warp-specialized prefill kernel, the host plan and the entry point.
//
// Cache addressing (both kernels): key j of a sequence lives at element
//   ((table[j / bs] * bs + j % bs) * nkv + kvh) * hd
// of the K (V) pool. Prefill: the producer's 128 threads compute one key's offset each per 128-key
// block into shared memory. Decode: each lane reads the block-table entries of its own keys one pipeline
// step ahead of the copies that use them.
//
// ---- Decode (a cluster of C = 8 CTAs of 8 warps per (head group, row)) ----------------------------
// Head group: gc query heads of one KV head, gc = the largest divisor of nh / nkv that is <= 8
// (compile-time bound MG = 1, 2, 4 or 8 >= gc), so every K/V row is read from HBM once per gc heads.
// The row's len keys are cut into warp ranges by a rule of len only (C = kDecodeCluster = 8):
//     W = max(8, round_up(ceil(len / (8 C)), 8)) keys per warp, warp w of CTA c the range (8 c + w) W ..
// Each warp works alone through its range in steps of 8 keys: L = lanes per key (the power of two
// >= hd / 8, at least 4), lane li owning dims 8 li .. 8 li + 7, 32 / L keys per warp-wide 16-byte load,
// L / 4 loads of K and of V per lane per step. The copies (cp.async, 16 B; element copies when
// hd % 8 != 0 or the pools are not 16-byte aligned) go to a per-warp ring of 2 steps (1 for hd > 128),
// so up to 2 steps are in flight per warp, 16 per CTA; each lane reads back only its own chunks.
// Scores: q (T, widened to FP32 and pre-scaled by log2(e) / sqrt(hd), registers) . k over the lane's 8 dims
// for its L / 4 keys x MG heads, summed over the key's L lanes by a reduce-scatter butterfly (each round
// halves the values a lane carries) into a per-warp [8][MG] buffer; online softmax per step (lane t takes
// scores t, t + 32 of head t % MG: running max / sum in registers, exp2f, butterflies); PV:
// acc[g][8] += p * v per lane (rescaled only when a head's max moved). After the loop: the warp's key
// groups summed (butterfly), the 8 warps merged in warp order in shared memory (the CTA partial: max,
// sum, acc[gc][hd]), then the CTAs of the cluster with keys merged in rank order, each output
// (head, dim) by one thread of the cluster: every CTA pushes its partial of that output into the
// owning thread's receive slots by distributed shared-memory stores, one cluster barrier phase
// (release / acquire) makes them visible, and the owner merges from its own shared memory (the
// barrier's first phase, arrived at the kernel's start, only guarantees that every CTA has started
// before it is written to). A single barrier: nothing reads another CTA's memory, so no CTA waits
// for the others before it exits. (Pulling the partials, with a barrier before and one after the
// reads, took 80-82 us per batch-32 call at context 1024 against 71 us, and 4.9% of batch-64 tok/s;
// H200, docs/perf/engine.md.) A row whose keys fit one CTA (len <= 8 W) writes its output from that
// CTA, without a cluster barrier. Everything is in a fixed
// order: a row's bits depend on its own range only (never on M, the other rows or the SM count).
// Shared memory: ring 8 warps x stages x 2 x L * 128 B (64 KB for hd 128 and for hd 256; with 128
// registers per thread for the tensor-core form, 2 CTAs per SM) + scores 2 KB + the receive buffer
// 8 ranks x 3 x min(256, MG * L * 8) floats (24 KB when a row has 256 outputs or more); the warp
// partials alias the ring after the loop. The workspace is not used (its size is kept for the
// interface).
// Tensor-core form (TC; head_dim 64 and 128 with 16-byte aligned pools and q 4-byte aligned,
// decode_attention_on_tensor_cores):
// the same CTAs, key ranges, stages and merges, but a warp's step of 8 keys is two MMA chains: S^T
// (16 x 8, the gc query heads as rows, zero rows above) = Q K^T by mma m16n8k16 over head_dim, then
// O^T (head_dim x 8 heads) += V^T P^T by mma m16n8k8, where P (rounded to T) is the B operand exactly
// as the S^T accumulators hold it; K and V come from the stage by ldmatrix (V transposed). q's T pairs
// are the A fragment's words, unscaled, and the scale is folded into the exponent (the prefill
// kernel's numerics). Measured on an H200 inside the batch-1 step: the FP32 form's key loop was 4.2
// of its 10.2 us per layer (docs/perf/engine.md).
//
// ---- Prefill (one CTA = 3 warpgroups per (128-row tile, query head), warp-specialized) -----------
// Key blocks of 128 from the tile's first row's window start to its last row's position.
// Warpgroup 0, the producer (setmaxnreg.dec 40): two threads per key, each thread two keys of a block
// (offsets through the block table in registers, the next block's looked up before the current block's
// copies), then the block's K and V rows by cp.async (16 B, zero-filled past the last key; a warp's copy
// reads whole 32-byte sectors) into the stage's 128B-swizzled tiles; each thread's completion arrives on the
// stage's fullK / fullV mbarrier (cp.async.mbarrier.arrive.noinc, count 128). (With one key offset per thread
// shared through shared memory, about 20 instructions per copy, the producer was the kernel's limit: 124.5
// against 91.6 us per layer, H200, docs/perf/engine.md.) K and V are released separately (emptyK after Q K^T,
// emptyV after P V), and the producer waits on them before reusing a stage: 2 stages for HD 128, 3 for HD 64.
// Warpgroups 1 and 2, the consumers (setmaxnreg.inc 232): rows 0..63 and 64..127 of the tile (a
// warpgroup without rows exits and the empty counts leave it out). Each copies its q rows (T) into
// the swizzled Q tile and runs every block of the tile (a block past its own rows' keys is masked to
// P = 0). Per block b: S(b) = Q K(b)^T by wgmma (m64n128k16, Q and K both K-major in shared memory) is
// issued together with O += P(b-1) V(b-1) (P from registers in the A-fragment layout the S accumulator
// already has; V the MN-major B operand: no transpose) and a second m64n8k16 wgmma of P(b-1) against a
// tile of ones (the row sums of P as rounded to T); then, while P V(b-1) runs: mask j in
// [lo(row), pos(row)] (only in blocks that cross a row's range of the warp), online softmax in the
// log2 domain on the unscaled scores (the scale folded into the exponent's FMA; rows with no key yet
// use 0 as the reference max; ex2.approx.ftz); after P V(b-1): rescale O and the sums (skipped when no
// row's maximum moved), P(b) rounded to T. With both warpgroups running they take turns issuing their
// wgmma (ping-pong, named barriers 4 and 5), so one's softmax overlaps the other's products. The
// register A operand P stays live (fence_regs) until the wait that retires its reads: wgmma reads
// registers asynchronously and the compiler could otherwise reuse them. Output: O times the row's
// reciprocal sum. Shared memory: Q 128 x HD, the K and V stages, ones: 163 KiB for HD
// 128, 115 KiB for HD 64, one CTA per SM. The grid runs the heads fastest and the tiles from the last
// one (the longest causal ranges first), in launches of at most 65535 tiles.
//
// Both kernels are launched with programmatic stream serialization (PDL, as the FP4 GEMMs): a kernel
// may start while its predecessor drains and reads only the step metadata (rows, positions, block
// tables: copied before the step's first kernel) before griddepcontrol.wait; q, the cache and the
// output are touched only after it. Every CTA executes griddepcontrol.wait before it exits. The decode
// kernel does not trigger its dependents early (they launch at its completion): an FP4 GEMM launched
// during it prefetches its weights while the key loop is latency-bound on the cache, and W4A16's
// batch-1 step measured 1-2 points more time outside the linears with the trigger at the kernel's
// start or after its key loop (H200, docs/perf/engine.md, twelfth increment).
#include "sharq/kernels/cuda/paged_attention.h"

#include <cooperative_groups.h>
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
#include "sharq/kernels/cuda/half_convert.cuh"
#include "sharq/kernels/cuda/launch.cuh"
#include "sharq/kernels/cuda/ptx.cuh"

namespace sharq::cuda {
namespace {

constexpr int kMaxSplits = 16;       // decode splits per row, at most
constexpr int kRowsPerLaunch = 65535;  // decode rows (grid z) / prefill tiles (grid y) per launch
constexpr int kWorkspaceRows = 128;    // the workspace formula (paged_attention.h) stops growing here
constexpr int kMaxHeadDim = 256;
constexpr unsigned kFull = 0xffffffffu;

// ---- shared helpers ---------------------------------------------------------------------------
__host__ __device__ inline int first_key(int pos, int64_t window) {
  const int64_t j0 = static_cast<int64_t>(pos) + 1 - window;
  return window > 0 && j0 > 0 ? static_cast<int>(j0) : 0;
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
// Offset (elements) of key j's row of KV head kvh in a pool.
__device__ __forceinline__ int64_t key_offset(const int32_t* table, int j, int bs, int64_t tok_stride,
                                              int64_t head_off) {
  const int b = j / bs;
  return (static_cast<int64_t>(table[b]) * bs + (j - b * bs)) * tok_stride + head_off;
}

// ---- decode ------------------------------------------------------------------------------------
struct DecodeArgs {
  const uint16_t* q;  // T bits
  const int32_t* drows;  // this launch's rows
  RowMap rows;
  const uint16_t* k;
  const uint16_t* v;
  void* out;
  int64_t window;
  int nh, G, gc, hd, nkv, bs, vec, q_pairs, cluster;
  float qscale;
};

constexpr int kDecodeThreads = 256;  // decode: 8 warps per CTA
constexpr int kDecodeWarps = kDecodeThreads / 32;
// CTAs per decode cluster (a row's head group): 8, the portable cluster size. (Measured on an H200:
// 16 is faster for single long rows but slower for batches of short ones.)
constexpr int kDecodeCluster = 8;
constexpr int kStepKeys = 8;  // keys per warp step (every head-dim class)

// Keys per warp of a row of len keys spread over nwarps warps (the cluster's): a function of len only.
__host__ __device__ inline int decode_warp_keys(int len, int nwarps) {
  const int per = (len + nwarps - 1) / nwarps;
  const int w = (per + kStepKeys - 1) / kStepKeys * kStepKeys;
  return w > kStepKeys ? w : kStepKeys;
}

// Pipeline stages per warp: L lanes per key row (L * 8 >= head_dim).
__host__ __device__ constexpr int decode_stages(int L) { return L == 32 ? 1 : 2; }

// Shared memory: the per-warp K/V stage ring, then the per-warp scores (after the key loop the warps'
// max and sum), then the receive buffer of the cluster merge [C][3][RS] (max, sum, acc of the
// outputs this CTA owns, one row per rank; RS = min(threads, MG * L * 8) slots: the outputs are at
// most MG * L * 8 per row). After the key loop the stage ring holds the warps' accumulators
// [warps][MG][L*8]. Remote CTAs may write the receive buffer while this CTA is still in its key
// loop: it overlaps nothing else.
struct DecodeSmem {
  size_t stage_bytes, wacc, sc, recv, rs, total;
};
__host__ __device__ constexpr DecodeSmem decode_smem(int L, int MG) {
  DecodeSmem s{};
  s.stage_bytes = static_cast<size_t>(L / 4) * 512;  // one stage's K (or V) of one warp
  const size_t ring = s.stage_bytes * 2 * decode_stages(L) * kDecodeWarps;
  s.wacc = 0;
  const size_t red = static_cast<size_t>(kDecodeWarps) * MG * L * 8 * 4;
  s.sc = ring > red ? ring : red;
  s.recv = s.sc + static_cast<size_t>(kDecodeWarps) * kStepKeys * MG * 4;  // 16-byte aligned
  s.rs = MG * L * 8 < kDecodeThreads ? static_cast<size_t>(MG) * L * 8 : kDecodeThreads;
  s.total = s.recv + static_cast<size_t>(kDecodeCluster) * 3 * s.rs * 4;
  return s;
}

// Sum v[0 .. N) over the lanes of an aligned group of 2 * OFF lanes (OFF, OFF / 2, .., 1), scattering
// the sums: while more than one value is left, each round keeps half of them (the upper half where
// lane & off) and adds the partner's copy of that half. At the end lane li of the group holds the
// full sums of the values li * N / G .. + max(1, N / G) - 1 (G the group size) in v[0 ..].
template <int N, int OFF>
__device__ __forceinline__ void reduce_scatter(float* v, int lane) {
  if constexpr (OFF > 0) {
    if constexpr (N >= 2) {
      constexpr int H = N / 2;
      const bool up = (lane & OFF) != 0;
#pragma unroll
      for (int i = 0; i < H; ++i) {
        const float send = up ? v[i] : v[i + H];
        const float keep = up ? v[i + H] : v[i];
        v[i] = keep + __shfl_xor_sync(kFull, send, OFF);
      }
      reduce_scatter<H, OFF / 2>(v, lane);
    } else {
      v[0] += __shfl_xor_sync(kFull, v[0], OFF);
      reduce_scatter<1, OFF / 2>(v, lane);
    }
  }
}

__device__ __forceinline__ uint4 lds128(const unsigned char* p) { return *reinterpret_cast<const uint4*>(p); }

// One CTA per (cluster rank, head group, row); the cluster's C CTAs (C * 8 warps) share the row's keys.
template <class T, int MG, int L, bool TC>
__global__ void __launch_bounds__(kDecodeThreads) decode_kernel(const DecodeArgs a) {
  constexpr int R = L / 4;             // 16-byte chunks of K (and of V) per lane per step
  constexpr int KPI = 32 / L;          // keys per warp-wide chunk load
  constexpr int S = R * KPI;           // keys per step (8)
  constexpr int NST = decode_stages(L);
  constexpr int NW = kDecodeWarps;
  constexpr int V = R * MG;            // partial dot products per lane per step
  constexpr int NF = V >= L ? V / L : 1;
  constexpr int LD = L * 8;            // floats per head in the accumulator buffers
  constexpr int NC = (S * MG + 31) / 32;
  constexpr DecodeSmem lay = decode_smem(L, MG);
  static_assert(S == kStepKeys, "step keys");
  extern __shared__ __align__(16) unsigned char smem[];

  const int rank = blockIdx.x, r = blockIdx.z, C = a.cluster;
  const int m = a.drows[r];
  const int pos = a.rows.pos[m], toff = a.rows.table_off[m];  // both loads in flight together
  const int j0 = first_key(pos, a.window);
  const int len = pos + 1 - j0;
  const int W = decode_warp_keys(len, C * NW);
  const int n_act = ((len + W - 1) / W + NW - 1) / NW;  // CTAs of the cluster with keys
  // a row spread over several CTAs merges their partials through distributed shared memory: the first
  // phase of the cluster barrier (every CTA has started, its shared memory may be written) is arrived
  // at now and waited on only before the partials are pushed, by then long complete
  const bool clustered = n_act > 1;  // the same in every CTA of the cluster
  if (clustered) cluster_arrive_relaxed();

  const int gc = a.gc, h0 = blockIdx.y * gc, kvh = h0 / a.G, hd = a.hd, bs = a.bs;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int li = lane & (L - 1), kq = lane / L;
  const bool dim_on = li * 8 < hd;
  const int kw0 = j0 + (rank * NW + warp) * W;  // this warp's keys kw0 .. kw0 + nk - 1
  const int nk = max(0, min(W, pos + 1 - kw0));
  const int nsteps = (nk + S - 1) / S;

  const int32_t* table = a.rows.table + toff;
  const int64_t tok_stride = static_cast<int64_t>(a.nkv) * hd,
                head_off = static_cast<int64_t>(kvh) * hd + li * 8;
  unsigned char* ring = smem + static_cast<size_t>(warp) * NST * 2 * lay.stage_bytes;
  float* sc = reinterpret_cast<float*>(smem + lay.sc) + warp * S * MG;  // [S][MG] scores, then p

  float* wacc = reinterpret_cast<float*>(smem + lay.wacc);  // [NW][MG][LD], aliases the stage ring
  float* recv = reinterpret_cast<float*>(smem + lay.recv);  // [C][3][RS]: the cluster's partials
  constexpr int RS = static_cast<int>(lay.rs);
  // every output of a row has its owner thread: C CTAs x threads >= the largest gc * hd
  static_assert(kDecodeCluster * kDecodeThreads >= 8 * kMaxHeadDim, "decode cluster merge: outputs per row");
  float* wml = reinterpret_cast<float*>(smem + lay.sc);  // [NW][2][MG] (aliases the scores)

  if constexpr (TC) {
    // Tensor cores (head_dim = 8 L = 64 or 128, 16-byte aligned pools): per step of 8 keys,
    // S^T (16 x 8: query heads x keys; heads >= gc are zero rows of Q) = Q K^T by mma m16n8k16 over
    // head_dim, then O^T (head_dim x 8 heads) += V^T P^T by mma m16n8k8, so that P, rounded to T,
    // is the B operand straight from the S^T accumulators (lane: head g, keys c, c + 1). q's T pairs
    // are the A fragment's words, unscaled, and the scale is folded into the exponent, as in the prefill
    // kernel; the row sums add P as rounded. A stage holds the step's 8 K rows and 8 V rows of head_dim
    // elements, the 16-byte chunk c of row r at chunk c ^ r (conflict-free ldmatrix); rows past the warp's
    // keys are zero-filled.
    constexpr int HD = L * 8;
    constexpr int CPR = HD / 8;   // 16-byte chunks per key row
    constexpr int KR = HD / 32;   // chunks of K (and of V) per lane per step
    constexpr int RB = HD * 2;    // bytes per key row
    constexpr int NKS = HD / 16;  // k16 steps of Q K^T = m16 tiles of O^T
    static_assert(HD == 64 || HD == 128, "tensor-core decode: head_dim 64 or 128");
    static_assert(lay.stage_bytes == static_cast<size_t>(S) * RB, "stage = 8 key rows");
    static_assert(MG <= 8, "heads are the 8 columns of P^T");
    const int64_t hstride = static_cast<int64_t>(a.nkv) * HD, hoff = static_cast<int64_t>(kvh) * HD;
    const int g = lane >> 2, c2 = (lane & 3) * 2;
    const float scale = a.qscale;

    auto table_step = [&](int u, int (&tb)[KR], int (&rm)[KR]) {
#pragma unroll
      for (int i = 0; i < KR; ++i) {
        const int j = u * S + (i * 32 + lane) / CPR;
        if (j < nk) {
          const int jg = kw0 + j, b = jg / bs;
          tb[i] = table[b];
          rm[i] = jg - b * bs;
        }
      }
    };
    auto issue = [&](int u, int st, const int (&tb)[KR], const int (&rm)[KR]) {
      if (u < nsteps) {
        const uint32_t sk = smem_u32(ring + st * 2 * lay.stage_bytes), sv = sk + static_cast<uint32_t>(lay.stage_bytes);
#pragma unroll
        for (int i = 0; i < KR; ++i) {
          const int qd = i * 32 + lane, rr = qd / CPR, c = qd % CPR, j = u * S + rr;
          const uint32_t so = static_cast<uint32_t>(rr * RB + ((c ^ rr) << 4));
          if (j < nk) {
            const int64_t off = (static_cast<int64_t>(tb[i]) * bs + rm[i]) * hstride + hoff + c * 8;
            cp_async16(sk + so, a.k + off);
            cp_async16(sv + so, a.v + off);
          } else {
            cp_async16_zfill(sk + so, a.k, 0);
            cp_async16_zfill(sv + so, a.v, 0);
          }
        }
      }
      cp_async_commit();
    };

    int tb0[NST][KR], rm0[NST][KR], tbn[KR], rmn[KR];
#pragma unroll
    for (int st = 0; st < NST; ++st) table_step(st, tb0[st], rm0[st]);
    table_step(NST, tbn, rmn);
    pdl_wait();  // q and the cache (written by the preceding kernel) from here on; every CTA waits
#pragma unroll
    for (int st = 0; st < NST; ++st) issue(st, st, tb0[st], rm0[st]);

    // Q as the A operand: row g = head h0 + g (zero for g >= gc), k = dims 16 j + c2 .. (+ 8)
    uint32_t qa[NKS][2];
    {
      const bool on = g < gc;
      const uint16_t* qrow = a.q + (static_cast<int64_t>(m) * a.nh + h0 + (on ? g : 0)) * HD + c2;
#pragma unroll
      for (int j = 0; j < NKS; ++j) {  // q is T already: its pairs are the fragment's words
        qa[j][0] = on ? *reinterpret_cast<const uint32_t*>(qrow + 16 * j) : 0u;
        qa[j][1] = on ? *reinterpret_cast<const uint32_t*>(qrow + 16 * j + 8) : 0u;
      }
    }
    float o[NKS][4];
#pragma unroll
    for (int t = 0; t < NKS; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.0f;
    float mrun = -INFINITY, lrun = 0.0f;  // head g, unscaled max; this lane's part of the sum

    for (int t = 0; t < nsteps; ++t) {
      const int st = t % NST;
      const uint32_t kb = smem_u32(ring + st * 2 * lay.stage_bytes), vb = kb + static_cast<uint32_t>(lay.stage_bytes);
      cp_async_wait<NST - 1>();
      __syncwarp();  // every lane's copies of step t landed and are visible to the warp
      float sacc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int j = 0; j < NKS; j += 2) {  // matrices: chunks 2j .. 2j + 3 of the 8 key rows
        const int rr = lane & 7, c = 2 * j + (lane >> 3);
        uint32_t b[4];
        ldsm_x4(b, kb + static_cast<uint32_t>(rr * RB + ((c ^ rr) << 4)));
        mma_16816<T>(sacc, qa[j][0], 0u, qa[j][1], 0u, b[0], b[1]);
        mma_16816<T>(sacc, qa[j + 1][0], 0u, qa[j + 1][1], 0u, b[2], b[3]);
      }
      // online softmax of head g over the step's keys (lanes 4g .. 4g + 3 hold two keys each)
      const int k0 = t * S + c2;
      const float s0 = k0 < nk ? sacc[0] : -INFINITY, s1 = k0 + 1 < nk ? sacc[1] : -INFINITY;
      float mx = fmaxf(s0, s1);
      mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, 2));
      const float mn = fmaxf(mrun, mx);  // finite: every step has a key
      const float corr = exp2f((mrun - mn) * scale);  // 0 on the first step
      mrun = mn;
      const float ms = mn * scale;
      const uint32_t pp = pack2<T>(exp2f(fmaf(s0, scale, -ms)), exp2f(fmaf(s1, scale, -ms)));
      const float2 pr = unpack2<T>(pp);
      lrun = fmaf(lrun, corr, pr.x + pr.y);
      // O^T columns are heads c2, c2 + 1: their factors from lanes 4 c2, 4 c2 + 4
      const float ca = __shfl_sync(kFull, corr, 4 * c2), cb = __shfl_sync(kFull, corr, 4 * c2 + 4);
      if (ca != 1.0f || cb != 1.0f)
#pragma unroll
        for (int t2 = 0; t2 < NKS; ++t2) o[t2][0] *= ca, o[t2][1] *= cb, o[t2][2] *= ca, o[t2][3] *= cb;
#pragma unroll
      for (int n = 0; n < HD / 32; ++n) {  // matrices: chunks 4n .. 4n + 3 (V^T tiles 2n, 2n + 1)
        const int rr = lane & 7, c = 4 * n + (lane >> 3);
        uint32_t v[4];
        ldsm_x4_trans(v, vb + static_cast<uint32_t>(rr * RB + ((c ^ rr) << 4)));
        mma_1688<T>(o[2 * n], v[0], v[1], pp);
        mma_1688<T>(o[2 * n + 1], v[2], v[3], pp);
      }
      __syncwarp();  // the stage is read by every lane before it is refilled
      {
        int tbx[KR], rmx[KR];
#pragma unroll
        for (int i = 0; i < KR; ++i) tbx[i] = tbn[i], rmx[i] = rmn[i];
        issue(t + NST, st, tbx, rmx);
        if (t + NST + 1 < nsteps) table_step(t + NST + 1, tbn, rmn);
      }
    }
    cp_async_wait<0>();
    lrun += __shfl_xor_sync(kFull, lrun, 1);
    lrun += __shfl_xor_sync(kFull, lrun, 2);
    __syncthreads();  // every warp is done with the ring (the partials alias it)
#pragma unroll
    for (int t = 0; t < NKS; ++t)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int h = c2 + (e & 1), d = 16 * t + g + (e >> 1) * 8;
        if (h < MG) wacc[(warp * MG + h) * LD + d] = o[t][e];
      }
    if ((lane & 3) == 0 && g < MG) wml[(warp * 2) * MG + g] = mrun * scale, wml[(warp * 2 + 1) * MG + g] = lrun;
  } else {
    // Block-table entries of this lane's keys of step u (key kw0 + u * S + kq + KPI * i).
    auto table_step = [&](int u, int (&tb)[R], int (&rm)[R]) {
#pragma unroll
      for (int i = 0; i < R; ++i) {
        const int j = u * S + kq + KPI * i;
        if (j < nk) {
          const int jg = kw0 + j, b = jg / bs;
          tb[i] = table[b];
          rm[i] = jg - b * bs;
        }
      }
    };
    // Copies of step u's K and V chunks into stage st (one commit group, possibly empty).
    auto issue = [&](int u, int st, const int (&tb)[R], const int (&rm)[R]) {
      unsigned char* sk = ring + st * 2 * lay.stage_bytes;
      unsigned char* sv = sk + lay.stage_bytes;
      if (dim_on) {
#pragma unroll
        for (int i = 0; i < R; ++i) {
          const int j = u * S + kq + KPI * i;
          if (j < nk) {
            const int64_t off = (static_cast<int64_t>(tb[i]) * bs + rm[i]) * tok_stride + head_off;
            const int so = i * 512 + lane * 16;
            if (a.vec) {
              cp_async16(smem_u32(sk + so), a.k + off);
              cp_async16(smem_u32(sv + so), a.v + off);
            } else {
              uint16_t* dk = reinterpret_cast<uint16_t*>(sk + so);
              uint16_t* dv = reinterpret_cast<uint16_t*>(sv + so);
#pragma unroll
              for (int e = 0; e < 8; ++e) {
                const bool in = li * 8 + e < hd;
                dk[e] = in ? a.k[off + e] : uint16_t(0);
                dv[e] = in ? a.v[off + e] : uint16_t(0);
              }
            }
          }
        }
      }
      cp_async_commit();
    };

    // The step metadata (rows, positions, block tables) was copied before the preceding kernels ran:
    // read it for the first NST + 1 steps before waiting on the preceding kernel (PDL).
    int tb0[NST][R], rm0[NST][R], tbn[R], rmn[R];
#pragma unroll
    for (int st = 0; st < NST; ++st) table_step(st, tb0[st], rm0[st]);
    table_step(NST, tbn, rmn);
    pdl_wait();  // q and the cache (written by the preceding kernel) from here on; every CTA waits (a
                 // PDL grid must not complete before its primary)
#pragma unroll
    for (int st = 0; st < NST; ++st) issue(st, st, tb0[st], rm0[st]);

    float qr[MG][8];
#pragma unroll
    for (int g = 0; g < MG; ++g)
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const int d = li * 8 + e;
        qr[g][e] = g < gc && d < hd
                       ? to_f(reinterpret_cast<const T*>(a.q)[(static_cast<int64_t>(m) * a.nh + h0 + g) * hd + d]) * a.qscale
                       : 0.0f;
      }

    float acc[MG][8];
#pragma unroll
    for (int g = 0; g < MG; ++g)
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[g][e] = 0.0f;
    float mrun = -INFINITY, lrun = 0.0f;  // of head lane % MG (the same in every lane of that head)

    for (int t = 0; t < nsteps; ++t) {
      const int st = t % NST;
      const unsigned char* sk = ring + st * 2 * lay.stage_bytes;
      const unsigned char* sv = sk + lay.stage_bytes;
      cp_async_wait<NST - 1>();  // step t of this lane landed (each lane reads only its own chunks)

      // partial dot products of the lane's 8 dims, summed over the key's L lanes (scattered)
      float v[V];
#pragma unroll
      for (int i = 0; i < R; ++i) {
        const int j = t * S + kq + KPI * i;
        if (dim_on && j < nk) {
          float kf[8];
          unpack8<T>(lds128(sk + i * 512 + lane * 16), kf);
#pragma unroll
          for (int g = 0; g < MG; ++g) {
            float d = 0.0f;
#pragma unroll
            for (int e = 0; e < 8; ++e) d = fmaf(qr[g][e], kf[e], d);
            v[i * MG + g] = d;
          }
        } else {
#pragma unroll
          for (int g = 0; g < MG; ++g) v[i * MG + g] = 0.0f;
        }
      }
      reduce_scatter<V, L / 2>(v, lane);
      if (V >= L || li % (L / (V >= L ? 1 : V)) == 0) {
        const int idx0 = li * V / L;
#pragma unroll
        for (int f = 0; f < NF; ++f) {
          const int idx = idx0 + f, i = idx / MG, g = idx % MG, key = kq + KPI * i;
          // unused heads get 0 (finite, never read back); keys past the warp's range -inf
          sc[key * MG + g] = g < gc ? (t * S + key < nk ? v[f] : -INFINITY) : 0.0f;
        }
      }
      __syncwarp();

      // online softmax of the step: lane handles scores lane + 32 c (head lane % MG)
      float s[NC], mx = -INFINITY;
#pragma unroll
      for (int c = 0; c < NC; ++c) {
        s[c] = lane + 32 * c < S * MG ? sc[lane + 32 * c] : -INFINITY;
        mx = fmaxf(mx, s[c]);
      }
#pragma unroll
      for (int off = 16; off >= MG; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, off));
      const float mn = fmaxf(mrun, mx);  // finite: every step has a key of every used head
      const float corr = exp2f(mrun - mn);  // 0 on the first step
      mrun = mn;
      float ps = 0.0f;
#pragma unroll
      for (int c = 0; c < NC; ++c) {
        const float p = exp2f(s[c] - mn);
        if (lane + 32 * c < S * MG) sc[lane + 32 * c] = p;
        ps += p;
      }
      lrun = lrun * corr + ps;
      float cg_[MG];
      bool resc = false;
#pragma unroll
      for (int g = 0; g < MG; ++g) {
        cg_[g] = __shfl_sync(kFull, corr, g);
        resc |= cg_[g] != 1.0f;
      }
      __syncwarp();

      // acc = acc * corr + sum_k p_k v_k over the lane's keys
      if (resc)
#pragma unroll
        for (int g = 0; g < MG; ++g)
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[g][e] *= cg_[g];
      if (dim_on) {
#pragma unroll
        for (int i = 0; i < R; ++i) {
          const int key = kq + KPI * i;
          if (t * S + key < nk) {
            float vf[8];
            unpack8<T>(lds128(sv + i * 512 + lane * 16), vf);
            float p[MG];
            if constexpr (MG >= 4) {
#pragma unroll
              for (int g4 = 0; g4 < MG; g4 += 4) {
                const float4 x = *reinterpret_cast<const float4*>(sc + key * MG + g4);
                p[g4] = x.x, p[g4 + 1] = x.y, p[g4 + 2] = x.z, p[g4 + 3] = x.w;
              }
            } else {
#pragma unroll
              for (int g = 0; g < MG; ++g) p[g] = sc[key * MG + g];
            }
#pragma unroll
            for (int g = 0; g < MG; ++g) {
              if (g >= gc) continue;
#pragma unroll
              for (int e = 0; e < 8; ++e) acc[g][e] = fmaf(p[g], vf[e], acc[g][e]);
            }
          }
        }
      }
      __syncwarp();  // the scores buffer is rewritten by the next step

      // refill the stage just consumed with step t + NST; block-table entries for the step after
      {
        int tbx[R], rmx[R];
#pragma unroll
        for (int i = 0; i < R; ++i) tbx[i] = tbn[i], rmx[i] = rmn[i];
        issue(t + NST, st, tbx, rmx);
        if (t + NST + 1 < nsteps) table_step(t + NST + 1, tbn, rmn);
      }
    }
    cp_async_wait<0>();

    // the warp's result: accumulators summed over its key groups, the sum over its lanes per head
#pragma unroll
    for (int off = L; off < 32; off <<= 1)
#pragma unroll
      for (int g = 0; g < MG; ++g)
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[g][e] += __shfl_xor_sync(kFull, acc[g][e], off);
#pragma unroll
    for (int off = MG; off < 32; off <<= 1) lrun += __shfl_xor_sync(kFull, lrun, off);

    __syncthreads();  // every warp is done with the ring and the scores
    if (kq == 0 && dim_on)
#pragma unroll
      for (int g = 0; g < MG; ++g) {
        float4* d = reinterpret_cast<float4*>(wacc + (warp * MG + g) * LD + li * 8);
        d[0] = make_float4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]);
        d[1] = make_float4(acc[g][4], acc[g][5], acc[g][6], acc[g][7]);
      }
    if (lane < MG) wml[(warp * 2) * MG + lane] = mrun, wml[(warp * 2 + 1) * MG + lane] = lrun;
  }
  __syncthreads();

  // the CTA's partial: the warps merged in warp order (warps without keys: max -inf, weight 0). Output
  // (head g, dim d) = idx is merged by thread idx % threads of the cluster's CTA idx / threads: each CTA
  // with keys pushes its partial (max, sum, acc) of idx into that CTA's receive buffer, slot [rank]
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  if (clustered) cluster_wait();
  if (rank < n_act) {
    for (int idx = tid; idx < gc * hd; idx += kDecodeThreads) {
      const int g = idx / hd, d = idx - g * hd;
      float mx = -INFINITY;
#pragma unroll
      for (int w = 0; w < NW; ++w) mx = fmaxf(mx, wml[(w * 2) * MG + g]);
      float o = 0.0f, l = 0.0f;
#pragma unroll
      for (int w = 0; w < NW; ++w) {
        const float wt = exp2f(wml[(w * 2) * MG + g] - mx);
        o = fmaf(wt, wacc[(w * MG + g) * LD + d], o);
        l = fmaf(wt, wml[(w * 2 + 1) * MG + g], l);
      }
      if (!clustered) {
        static_cast<T*>(a.out)[(static_cast<int64_t>(m) * a.nh + h0 + g) * hd + d] = from_f<T>(o / l);
      } else {
        // slot tid < RS: idx < gc * hd <= MG * L * 8, so with fewer outputs than threads only
        // rank 0 owns any and tid = idx
        float* dst = cluster.map_shared_rank(recv + rank * 3 * RS + tid, idx / kDecodeThreads);
        dst[0] = mx;
        dst[RS] = l;
        dst[2 * RS] = o;
      }
    }
  }
  if (!clustered) return;  // the same in every CTA of the cluster: no cluster barrier at all

  // the row's result: the pushed partials merged in rank order, from this CTA's own shared memory once
  // every CTA's pushes are visible (one barrier phase: nothing reads another CTA's memory after it)
  cluster_sync();
  const int idx = rank * kDecodeThreads + tid;
  if (idx < gc * hd) {
    const int g = idx / hd, d = idx - g * hd;
    float mx = -INFINITY;
    for (int rr = 0; rr < n_act; ++rr) mx = fmaxf(mx, recv[rr * 3 * RS + tid]);
    float o = 0.0f, l = 0.0f;
    for (int rr = 0; rr < n_act; ++rr) {
      const float* p = recv + rr * 3 * RS + tid;
      const float wt = exp2f(p[0] - mx);
      o = fmaf(wt, p[2 * RS], o);
      l = fmaf(wt, p[RS], l);
    }
    static_cast<T*>(a.out)[(static_cast<int64_t>(m) * a.nh + h0 + g) * hd + d] = from_f<T>(o / l);
  }
}

// ---- prefill -----------------------------------------------------------------------------------
struct PrefillArgs {
  const uint16_t* q;  // T bits
  const int32_t* tiles;
  RowMap rows;
  const uint16_t* k;
  const uint16_t* v;
  void* out;
  int64_t window;
  int tile_end, nh, G, nkv, bs;  // this launch's tiles: tile_end - gridDim.y .. tile_end - 1
  float scale_log2;
};

// The prefill kernel is warp-specialized (FlashAttention-3's structure): warpgroup 0 loads, warpgroups
// 1 and 2 compute. One CTA per (128-row tile, query head); 384 threads, one CTA per SM.
constexpr int kPrefillThreads = kWsThreads;  // the register split: ptx.cuh
constexpr int kPrefillRows = 128;  // = kAttentionTileRows: 64 per consumer warpgroup
constexpr int kPrefillKeys = 128;  // keys per block (BN)
static_assert(kPrefillRows == kAttentionTileRows, "one CTA per plan tile");

template <int HD>
struct PrefillCfg {
  static constexpr int kSlabs = HD / 64;                                     // 64-element (128-byte) slabs
  static constexpr int kStages = HD == 128 ? 2 : 3;                          // K + V blocks in flight
  static constexpr uint32_t kQSlab = kPrefillRows * 128;                     // bytes of one Q slab
  static constexpr uint32_t kKvSlab = kPrefillKeys * 128;                    // bytes of one K (V) slab
  static constexpr uint32_t kKvBytes = kSlabs * kKvSlab;                     // one K (V) block
  static constexpr uint32_t kQ = 0;                                          // Q [slab][row][128 B]
  static constexpr uint32_t kK = kSlabs * kQSlab;                            // K [stage][slab][key][128 B]
  static constexpr uint32_t kV = kK + kStages * kKvBytes;                    // V [stage][slab][key][128 B]
  static constexpr uint32_t kOnes = kV + kStages * kKvBytes;                 // 2 x 1 KB of ones (T)
  static constexpr uint32_t kBar = kOnes + 2048;                             // fullK, fullV, emptyK, emptyV [stage]
  static constexpr size_t kSmem = kBar + 4 * kStages * 8 + 1024;           // + base alignment (1024 B)
  static_assert(kSmem <= 227 * 1024, "shared memory");
  static_assert(kQSlab % 1024 == 0 && kKvSlab % 1024 == 0 && kK % 1024 == 0 && kV % 1024 == 0 && kOnes % 1024 == 0,
                "the swizzled tiles and the ones tile must stay 1024-byte aligned");
};

// 2^x, results below 2^-126 flushed to zero (one MUFU.EX2; exp2f adds the subnormal range's fix-up).
__device__ __forceinline__ float ex2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
// Byte offset of the 16-byte chunk c (elements 8c .. 8c + 7) of row r in a tile of 128-byte-swizzled
// slabs of SlabBytes each (ptx.cuh: the layout the wgmma descriptors read).
template <uint32_t SlabBytes>
__device__ __forceinline__ uint32_t swz(int r, int c) {
  return static_cast<uint32_t>(c >> 3) * SlabBytes + static_cast<uint32_t>(r) * 128u +
         (static_cast<uint32_t>((c & 7) ^ (r & 7)) << 4);
}

template <class T, int HD>
__global__ void __launch_bounds__(kPrefillThreads, 1) prefill_kernel(const PrefillArgs a) {
  using C = PrefillCfg<HD>;
  constexpr int S = C::kStages, BN = kPrefillKeys, CH = HD / 8;
  extern __shared__ uint8_t smem_raw[];
  const uint32_t sm = (smem_u32(smem_raw) + 1023u) & ~1023u;
  uint8_t* const smem = smem_raw + (sm - smem_u32(smem_raw));
  const uint32_t fullk = sm + C::kBar, fullv = fullk + 8 * S, emptyk = fullv + 8 * S, emptyv = emptyk + 8 * S;

  const int tile = a.tile_end - 1 - static_cast<int>(blockIdx.y);  // the longest causal ranges first
  const int first = a.tiles[2 * tile], n = a.tiles[2 * tile + 1];
  const int h = blockIdx.x, kvh = h / a.G;
  const int k_lo = first_key(a.rows.pos[first], a.window), k_hi = a.rows.pos[first + n - 1];
  const int nblk = (k_hi - k_lo) / BN + 1;
  const int wg = static_cast<int>(threadIdx.x) >> 7;

  if (threadIdx.x == 0) {
    const uint32_t consumers = n > 64 ? 8u : 4u;  // warps that release a stage
    for (int s = 0; s < S; ++s) {
      mbar_init(fullk + 8 * s, 128);
      mbar_init(fullv + 8 * s, 128);
      mbar_init(emptyk + 8 * s, consumers);
      mbar_init(emptyv + 8 * s, consumers);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (wg == 0) {  // ---- producer: the K and V blocks by cp.async, each thread's arrival on completion
    ws_producer_registers();
    const int tid = static_cast<int>(threadIdx.x);
    const int32_t* table = a.rows.table + a.rows.table_off[first];
    const int64_t tok_stride = static_cast<int64_t>(a.nkv) * HD, head_off = static_cast<int64_t>(kvh) * HD;
    pdl_wait();
    pdl_trigger();
    // Two threads per key (hs = tid & 1): thread tid copies keys kk = tid / 2 and kk + 64 of each block,
    // their 16-byte chunks 2 j + hs, so each copy instruction of a warp reads 16 whole 32-byte sectors.
    // A key's offset comes from the block table in registers (one lookup per key, the next block's
    // issued before the current block's copies); a key past the last one is zero-filled.
    // Chunk 2 j + hs of key k lands at swz(k, 2 j + hs) =
    //   (j / 4) slab + 128 k + ((2 j mod 8) ^ hs ^ (k mod 8)) 16
    // (2 j mod 8 is even, so its OR with hs is an XOR); kk and kk + 64 share k mod 8.
    static_assert(BN == 128 && CH % 2 == 0, "two threads per key, 64 keys per pass");
    const int hs = tid & 1, kk = tid >> 1;
    const uint32_t x = static_cast<uint32_t>(hs ^ (kk & 7)) << 4, row = static_cast<uint32_t>(kk) * 128u;
    auto offsets_of = [&](int b, int64_t (&o)[2]) {
#pragma unroll
      for (int p = 0; p < 2; ++p) {
        const int j = k_lo + b * BN + kk + 64 * p;
        o[p] = j <= k_hi ? key_offset(table, j, a.bs, tok_stride, head_off) : int64_t{-1};
      }
    };
    auto copies = [&](const uint16_t* pool, uint32_t dst, const int64_t (&o)[2]) {
#pragma unroll
      for (int p = 0; p < 2; ++p) {
        const uint16_t* src = pool + (o[p] >= 0 ? o[p] : 0) + 8 * hs;
        const uint32_t bytes = o[p] >= 0 ? 16u : 0u, d = dst + row + static_cast<uint32_t>(p) * 64u * 128u;
#pragma unroll
        for (int j = 0; j < CH / 2; ++j)
          cp_async16_zfill(d + static_cast<uint32_t>(j >> 2) * C::kKvSlab + ((static_cast<uint32_t>((2 * j) & 7) << 4) ^ x),
                           src + 16 * j, bytes);
      }
    };
    int64_t off[2], next[2] = {-1, -1};
    offsets_of(0, off);
#pragma unroll 1
    for (int b = 0; b < nblk; ++b) {
      const int s = b % S;
      const uint32_t reuse = static_cast<uint32_t>((b / S - 1) & 1);  // the phase that frees the stage
      if (b + 1 < nblk) offsets_of(b + 1, next);  // the next block's table reads, early
      if (b >= S) mbar_wait(emptyk + 8 * s, reuse);
      copies(a.k, sm + C::kK + s * C::kKvBytes, off);
      cp_async_mbar_arrive(fullk + 8 * s);
      if (b >= S) mbar_wait(emptyv + 8 * s, reuse);
      copies(a.v, sm + C::kV + s * C::kKvBytes, off);
      cp_async_mbar_arrive(fullv + 8 * s);
      off[0] = next[0];
      off[1] = next[1];
    }
    cp_async_wait<0>();
    return;
  }

  // ---- consumers: warpgroup cw = wg - 1 owns the tile's rows 64 cw .. 64 cw + 63
  ws_consumer_registers();
  const int cw = wg - 1, wt = static_cast<int>(threadIdx.x) & 127, warp = wt >> 5, lane = wt & 31;
  const int rb = 64 * cw;
  pdl_wait();
  if (rb >= n) return;  // no rows (the stage count excludes this warpgroup)
  pdl_trigger();
  const int nrow = min(64, n - rb);

  {  // Q rows rb .. rb + 63 (zero rows past n) into the swizzled Q tile, 16-byte chunks as they are
    const uint16_t* qh = a.q + (static_cast<int64_t>(first + rb) * a.nh + h) * HD;
    const int64_t qstride = static_cast<int64_t>(a.nh) * HD;
    constexpr int kLoads = 64 * HD / 8 / 128;  // 16-byte chunks per thread, all in flight at once
    uint4 x[kLoads];
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int idx = wt + 128 * i, rr = idx / (HD / 8), c8 = idx % (HD / 8);
      x[i] = rr < nrow ? *reinterpret_cast<const uint4*>(qh + rr * qstride + 8 * c8) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int idx = wt + 128 * i, rr = idx / (HD / 8), c8 = idx % (HD / 8);
      *reinterpret_cast<uint4*>(smem + C::kQ + swz<C::kQSlab>(rb + rr, c8)) = x[i];
    }
    {  // this warpgroup's 1 KB of ones (the B operand of the row-sum wgmma)
      uint32_t* w1 = reinterpret_cast<uint32_t*>(smem + C::kOnes + cw * 1024);
      w1[wt] = w1[wt + 128] = pack2<T>(1.0f, 1.0f);
    }
    fence_proxy_async_smem();
    asm volatile("bar.sync %0, 128;\n" ::"r"(2 + cw) : "memory");
  }

  // this thread's two rows (mask only; rows past n reuse the last row and are not stored)
  const int r0 = rb + 16 * warp + (lane >> 2), r1 = r0 + 8;
  const int pos0 = a.rows.pos[first + min(r0, n - 1)], pos1 = a.rows.pos[first + min(r1, n - 1)];
  const int lo0 = first_key(pos0, a.window), lo1 = first_key(pos1, a.window);
  // With both warpgroups running (n > 64) they take turns issuing their wgmma (ping-pong: one's softmax
  // runs while the other's products do). Both run every block of the tile, so their turns pair up.
  const bool pp = n > 64;
  auto turn_wait = [&]() {
    if (pp) asm volatile("bar.sync %0, 256;\n" ::"r"(4 + cw) : "memory");
  };
  auto turn_pass = [&]() {
    if (pp) asm volatile("bar.arrive %0, 256;\n" ::"r"(5 - cw) : "memory");
  };
  if (pp && cw == 1) turn_pass();  // warpgroup 1 lets warpgroup 0 go first

  float o[HD / 2];
#pragma unroll
  for (int i = 0; i < HD / 2; ++i) o[i] = 0.0f;
  float m0 = -INFINITY, m1 = -INFINITY;
  const float sc = a.scale_log2;
  const uint32_t qa = sm + C::kQ + rb * 128;
  auto kst = [&](int b) { return sm + C::kK + static_cast<uint32_t>(b % S) * C::kKvBytes; };
  auto vst = [&](int b) { return sm + C::kV + static_cast<uint32_t>(b % S) * C::kKvBytes; };
  auto phase = [&](int b) { return static_cast<uint32_t>((b / S) & 1); };
  auto release = [&](uint32_t bars, int b) {
    if (lane == 0) mbar_arrive(bars + 8 * (b % S));
  };
  // S = Q K(b)^T, 64 rows x BN keys, issued (not waited for)
  // Descriptors: the base's once, then + (byte offset >> 4) in the start-address field (no carry: shared
  // addresses are below 2^18)
  const uint64_t dq = make_desc(qa);
  auto issue_s = [&](float (&sacc)[BN / 2], int b) {
    const uint64_t dk = make_desc(kst(b));
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
      const uint32_t k16 = static_cast<uint32_t>(kk & 3) * 32u;  // the k16 slice inside the slab
      wgmma_ss<T, BN>(sacc, dq + (((kk >> 2) * C::kQSlab + k16) >> 4), dk + (((kk >> 2) * C::kKvSlab + k16) >> 4),
                      kk > 0);
    }
  };
  // O += P V(b) (V: the MN-major B operand, keys along K, 16 keys = 2048 bytes per k16 step), issued
  // The row sums as P x ones by wgmma (every column the same): the sums of P as rounded to T, the weights
  // of P V, so the output stays a convex combination of V rows; no per-element FP32 adds.
  float lsum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  const uint32_t ones = sm + C::kOnes + static_cast<uint32_t>(cw) * 1024u;
  const uint64_t d1 = make_desc(ones);
  auto issue_pv = [&](const uint32_t (&pa)[BN / 16][4], int b) {
    const uint64_t dv = make_desc_mn<C::kKvSlab>(vst(b));
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      wgmma_rs<T, HD, true>(o, pa[kk], dv + kk * (2048u >> 4), 1);
      wgmma_rs<T, 8, false>(lsum, pa[kk], d1, 1);
    }
  };
  // Block b's scores (waited for) -> masked, online-softmax probabilities in sacc (FP32, not yet
  // rounded to T), the running max updated, c0 / c1 the factors that rescale O and the row sums.
  // exp2 flushes results below 2^-126 to zero (ex2.approx.ftz): such a weight is below 2^-126 times the
  // row's largest one (1), far below the output's rounding.
  // Mask only in blocks that are not inside every row's range of the warp (a warp-uniform test); the
  // scores stay unscaled: the scale is positive, so RN(max(s) c) = max(RN(s c)), and exp2 takes
  // fma(s, c, -mu).
  float c0 = 1.0f, c1 = 1.0f;
  auto softmax = [&](float (&sacc)[BN / 2], int b) {
    const int kfirst = k_lo + b * BN, kb = kfirst + 2 * (lane & 3);
    const bool inside = __all_sync(kFull, kfirst >= max(lo0, lo1) && kfirst + BN - 1 <= min(pos0, pos1));
    float mx0 = -INFINITY, mx1 = -INFINITY;
    if (inside) {
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
        mx0 = fmaxf(mx0, fmaxf(sacc[4 * nt], sacc[4 * nt + 1]));
        mx1 = fmaxf(mx1, fmaxf(sacc[4 * nt + 2], sacc[4 * nt + 3]));
      }
    } else {
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int j = kb + 8 * nt + e;
          const float x0 = j >= lo0 && j <= pos0 ? sacc[4 * nt + e] : -INFINITY;
          const float x1 = j >= lo1 && j <= pos1 ? sacc[4 * nt + 2 + e] : -INFINITY;
          sacc[4 * nt + e] = x0;
          sacc[4 * nt + 2 + e] = x1;
          mx0 = fmaxf(mx0, x0);
          mx1 = fmaxf(mx1, x1);
        }
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(kFull, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(kFull, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(kFull, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(kFull, mx1, 2));
    const float mn0 = fmaxf(m0, mx0 * sc), mn1 = fmaxf(m1, mx1 * sc);
    const float mu0 = mn0 == -INFINITY ? 0.0f : mn0, mu1 = mn1 == -INFINITY ? 0.0f : mn1;
    c0 = exp2f(m0 - mu0);
    c1 = exp2f(m1 - mu1);
    m0 = mn0;
    m1 = mn1;
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) sacc[i] = ex2_ftz(fmaf(sacc[i], sc, (i & 2) ? -mu1 : -mu0));
  };
  auto rescale = [&]() {
    if (__any_sync(kFull, c0 != 1.0f || c1 != 1.0f)) {  // (a product by 1 changes no bit: skipped)
#pragma unroll
      for (int i = 0; i < HD / 8; ++i) {
        o[4 * i] *= c0;
        o[4 * i + 1] *= c0;
        o[4 * i + 2] *= c1;
        o[4 * i + 3] *= c1;
      }
      lsum[0] *= c0;
      lsum[1] *= c0;
      lsum[2] *= c1;
      lsum[3] *= c1;
    }
  };
  // P as the A operand of P V: the S accumulator's n8 tiles 2 kk, 2 kk + 1 are the A fragment of the
  // k16 step kk (keys 16 kk .. 16 kk + 15)
  auto to_p = [&](const float (&sacc)[BN / 2], uint32_t (&pa)[BN / 16][4]) {
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
      pa[nt >> 1][(nt & 1) * 2] = pack2<T>(sacc[4 * nt], sacc[4 * nt + 1]);
      pa[nt >> 1][(nt & 1) * 2 + 1] = pack2<T>(sacc[4 * nt + 2], sacc[4 * nt + 3]);
    }
  };
  float sacc[BN / 2];
  uint32_t pa[BN / 16][4];
  {
    // S(b + 1) and P V(b) are issued together: the softmax of block b + 1 runs while P V(b) does
    mbar_wait(fullk, 0);
    fence_proxy_async_smem();
    turn_wait();
    wgmma_fence();
    issue_s(sacc, 0);
    wgmma_commit();
    turn_pass();
    wgmma_wait<0>();
    fence_regs(sacc);
    release(emptyk, 0);
    softmax(sacc, 0);
    to_p(sacc, pa);  // (O is zero: no rescale)
#pragma unroll 1
    for (int b = 1; b < nblk; ++b) {
      mbar_wait(fullk + 8 * (b % S), phase(b));
      mbar_wait(fullv + 8 * ((b - 1) % S), phase(b - 1));
      fence_proxy_async_smem();
      turn_wait();
      wgmma_fence();
      issue_s(sacc, b);
      wgmma_commit();
      issue_pv(pa, b - 1);
      wgmma_commit();
      turn_pass();
      wgmma_wait<1>();  // S(b)
      fence_regs(sacc);
      release(emptyk, b);
      softmax(sacc, b);
      wgmma_wait<0>();  // P V(b - 1)
      fence_regs(o);
      fence_regs(lsum);
      fence_regs(pa);
      release(emptyv, b - 1);
      rescale();
      to_p(sacc, pa);
    }
    mbar_wait(fullv + 8 * ((nblk - 1) % S), phase(nblk - 1));
    fence_proxy_async_smem();
    turn_wait();
    wgmma_fence();
    issue_pv(pa, nblk - 1);
    wgmma_commit();
    if (cw == 0) turn_pass();  // (warpgroup 0 takes no further turn)
    wgmma_wait<0>();
    fence_regs(o);
    fence_regs(lsum);
    fence_regs(pa);
    release(emptyv, nblk - 1);
  }

  const float l0 = lsum[0], l1 = lsum[2];
  uint32_t* out = static_cast<uint32_t*>(a.out);  // pairs of T
  const int col = 2 * (lane & 3);
  const float i0 = 1.0f / l0, i1 = 1.0f / l1;  // one division per row, then products (FP32: <= 1 ulp apart)
  if (r0 < n) {
    const int64_t base = ((static_cast<int64_t>(first) + r0) * a.nh + h) * HD + col;
#pragma unroll
    for (int i = 0; i < HD / 8; ++i) out[(base + 8 * i) >> 1] = pack2<T>(o[4 * i] * i0, o[4 * i + 1] * i0);
  }
  if (r1 < n) {
    const int64_t base = ((static_cast<int64_t>(first) + r1) * a.nh + h) * HD + col;
#pragma unroll
    for (int i = 0; i < HD / 8; ++i) out[(base + 8 * i) >> 1] = pack2<T>(o[4 * i + 2] * i1, o[4 * i + 3] * i1);
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
template <class T, int MG, int L>
void configure_decode() {
  set_smem(decode_kernel<T, MG, L, false>, decode_smem(L, MG).total);
  if constexpr (L == 8 || L == 16) set_smem(decode_kernel<T, MG, L, true>, decode_smem(L, MG).total);
}
template <class T, int MG>
void configure_decode_mg() {
  configure_decode<T, MG, 4>();
  configure_decode<T, MG, 8>();
  configure_decode<T, MG, 16>();
  configure_decode<T, MG, 32>();
}
template <class T>
void configure_type() {
  configure_decode_mg<T, 1>();
  configure_decode_mg<T, 2>();
  configure_decode_mg<T, 4>();
  configure_decode_mg<T, 8>();
  set_smem(prefill_kernel<T, 64>, PrefillCfg<64>::kSmem);
  set_smem(prefill_kernel<T, 128>, PrefillCfg<128>::kSmem);
  check_kernel_registers(prefill_kernel<T, 64>, kWsMinRegs, "paged_attention: the prefill kernel (head_dim 64)");
  check_kernel_registers(prefill_kernel<T, 128>, kWsMinRegs, "paged_attention: the prefill kernel (head_dim 128)");
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

template <class T, int MG, int L, bool TC>
void launch_decode(const DecodeArgs& a0, int n_decode, cudaStream_t stream) {
  DecodeArgs a = a0;
  a.cluster = kDecodeCluster;
  for (int base = 0; base < n_decode; base += kRowsPerLaunch) {
    a.drows = a0.drows + base;
    const int n_rows = std::min(kRowsPerLaunch, n_decode - base);
    launch_pdl_cluster(decode_kernel<T, MG, L, TC>,
                       dim3(static_cast<unsigned>(a.cluster), static_cast<unsigned>(a.nh / a.gc), static_cast<unsigned>(n_rows)),
                       dim3(kDecodeThreads), a.cluster, decode_smem(L, MG).total, stream, a);
  }
}
// The tensor-core form where it applies (decode_attention_on_tensor_cores: head_dim 64 / 128, the
// pools 16-byte aligned, q 4-byte aligned), the FP32 form otherwise.
template <class T, int MG>
void launch_decode_l(const DecodeArgs& a, int L, int n_decode, cudaStream_t stream) {
  const bool tc = a.vec && a.q_pairs && decode_attention_on_tensor_cores(a.hd);
  if (L == 4)
    launch_decode<T, MG, 4, false>(a, n_decode, stream);
  else if (L == 8 && tc)
    launch_decode<T, MG, 8, true>(a, n_decode, stream);
  else if (L == 8)
    launch_decode<T, MG, 8, false>(a, n_decode, stream);
  else if (L == 16 && tc)
    launch_decode<T, MG, 16, true>(a, n_decode, stream);
  else if (L == 16)
    launch_decode<T, MG, 16, false>(a, n_decode, stream);
  else
    launch_decode<T, MG, 32, false>(a, n_decode, stream);
}

template <class T>
void launch_all(const void* q, int nh, const RowMap& rows, const PagedKv& kv, int64_t window,
                const AttentionPlan& plan, void* out, float scale_log2, cudaStream_t stream) {
  const int hd = kv.head_dim, G = nh / kv.kv_heads;
  if (plan.n_tiles > 0) {
    PrefillArgs a{static_cast<const uint16_t*>(q),
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
    for (int end = plan.n_tiles; end > 0; end -= kRowsPerLaunch) {  // grid y <= 65535: the last tiles first
      a.tile_end = end;
      const dim3 grid(static_cast<unsigned>(nh), static_cast<unsigned>(std::min(end, kRowsPerLaunch)));  // heads fastest
      if (hd == 64)
        launch_pdl(prefill_kernel<T, 64>, grid, dim3(kPrefillThreads), PrefillCfg<64>::kSmem, stream, a);
      else
        launch_pdl(prefill_kernel<T, 128>, grid, dim3(kPrefillThreads), PrefillCfg<128>::kSmem, stream, a);
    }
  }
  if (plan.n_decode > 0) {
    DecodeArgs a{};
    a.q = static_cast<const uint16_t*>(q);
    a.drows = plan.decode_rows;
    a.rows = rows;
    a.k = static_cast<const uint16_t*>(kv.k);
    a.v = static_cast<const uint16_t*>(kv.v);
    a.out = out;
    a.window = window;
    a.nh = nh;
    a.G = G;
    a.gc = heads_per_cta(G);
    a.hd = hd;
    a.nkv = kv.kv_heads;
    a.bs = kv.block_size;
    a.vec = hd % 8 == 0 && reinterpret_cast<uintptr_t>(kv.k) % 16 == 0 && reinterpret_cast<uintptr_t>(kv.v) % 16 == 0;
    a.q_pairs = reinterpret_cast<uintptr_t>(q) % 4 == 0;  // the tensor-core form loads q in pairs (words)
    a.qscale = scale_log2;
    const int L = std::max(4, pow2_at_least((hd + 7) / 8));
    const int MG = pow2_at_least(a.gc);
    if (MG == 1)
      launch_decode_l<T, 1>(a, L, plan.n_decode, stream);
    else if (MG == 2)
      launch_decode_l<T, 2>(a, L, plan.n_decode, stream);
    else if (MG == 4)
      launch_decode_l<T, 4>(a, L, plan.n_decode, stream);
    else
      launch_decode_l<T, 8>(a, L, plan.n_decode, stream);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

bool prefill_attention_supports(int head_dim) { return head_dim == 64 || head_dim == 128; }
bool decode_attention_on_tensor_cores(int head_dim) { return head_dim == 64 || head_dim == 128; }

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
  const int64_t rows = std::min<int64_t>(max_rows, kWorkspaceRows);
  return static_cast<size_t>(rows) * static_cast<size_t>(nh) * kMaxSplits * (static_cast<size_t>(head_dim) + 2) * 4;
}

void paged_attention(const void* q, int64_t M, int nh, const RowMap& rows, const PagedKv& kv, int64_t window, DType t,
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
    if (!aligned16(q) || !aligned16(kv.k) || !aligned16(kv.v) || reinterpret_cast<uintptr_t>(out) % 4 != 0)
      throw std::invalid_argument(
          "paged_attention: prefill tiles need 16-byte aligned q and K/V pools and a 4-byte aligned output");
  }
  configure_kernels();
  const float scale_log2 = static_cast<float>(1.4426950408889634 / std::sqrt(static_cast<double>(kv.head_dim)));
  if (t == DType::f16)
    launch_all<__half>(q, nh, rows, kv, window, plan, out, scale_log2, stream);
  else
    launch_all<__nv_bfloat16>(q, nh, rows, kv, window, plan, out, scale_log2, stream);
}

}  // namespace sharq::cuda
