// The FP4-weight GEMM family on Hopper (fp4_gemm.h): validation, planning, the two wgmma kernels
// (prefill for large M, with its split-K over a thread block cluster; small for decode-sized M) and
// the small family's split-K reduction.
//
// The prefill (large-M) FP4-weight GEMM on Hopper: wgmma, FP32 accumulators in registers, the
// NVFP4 weights decoded exactly to FP16/BF16 *in registers* and fed to wgmma as its register
// operand A ("swap AB": the kernel computes Y^T = W^ A_p^T), the activation planes staged in
// 128B-swizzled shared memory as its operand B.
//
//   Y[m][n] = bf16( (sum_p sum_k A_p[m][k] * W^[n][k]) * (row_scale[m] * g_w[n]) )
//
// Why swapped: wgmma takes only its A operand from registers. Decoding the weights straight into
// A fragments costs no shared-memory store, load or proxy fence for W (the Fp4Tiles layout is
// exactly the mma/wgmma A-fragment order, see below), and each decoded fragment serves all NT
// tokens of the CTA and both SharQ paths. Shared memory carries only the activations.
//
// ---------------------------------------------------------------------------------------------
// CTA = 384 threads = 3 warpgroups: a producer (warpgroup 0) and two consumers. CTA tile: 128 weight
// rows (n) x NT tokens (m), NT = 256 (M > 128) or 128; consumer warpgroup cw owns weight rows
// 64 cw .. 64 cw + 63 (one m64 wgmma slab) and all NT tokens: its accumulators are D^T[64][NT]
// (NT / 2 FP32 registers per thread). BK = 64 per k-step.
//
// wgmma (per warpgroup, per k16 step kk = 0..3 of a k-step, per path p):
//   wgmma.mma_async.sync.aligned.m64n{NT}k16.f32.{f16|bf16}.{f16|bf16}
//       D, {a0..a3} (weight fragment, registers), desc(activation tile of path p) + 2 kk,
//       scale-d = 1 (D starts at 0), imm-scale-a = imm-scale-b = 1, imm-trans-b = 0 (K-major).
//
// Register A fragment (m64k16, 16-bit types, = mma.m16n8k16's A layout per warp): warp w of the
// warpgroup owns rows 16 w .. 16 w + 15; lane l = 4 g + q holds
//   a0 = {(16w + g, 2q), (16w + g, 2q + 1)}     a1 = the same for row 16w + g + 8
//   a2 = {(16w + g, 2q + 8), (.., 2q + 9)}       a3 = the same for row 16w + g + 8.
// Fp4Tiles (fp4_tiles.h): in the 8 x 128 tile, lane l = 4 g + q (row g) holds 4 words; nibble p
// (and p + 4) of word j is column 32 j + 8 p + 2 q (and + 1). So for the k16 step s = 2 j + s' of a
// 128-column tile, nibble pair p = 2 s' of word j is exactly a0 (tile of rows 16w..16w+7) / a1 (the
// next tile, rows + 8) and p = 2 s' + 1 is a2 / a3. Each lane loads 16 bytes from each of its two
// tiles per 128 columns (LDG.128, a warp reads 512 contiguous bytes) plus its row's scale bytes.
// A k-step (64 columns, h = k-step & 1) uses words 2h, 2h + 1: kk = 2 jj + s', word 2h + jj.
// Scale of (word j, pair p): block 32 -> byte j of the row; block 16 -> byte 2 j + p / 2 (for the
// pair (2 s', 2 s' + 1) of kk both give byte 4 h + kk).
//
// Decode (exact): FP16: magnitude bits (e1 e0 m) to bits 11..9 and the sign to bit 15 give the E2M1
// value times 2^-14 (e = 0 lands on the FP16 subnormals, which HMUL2 handles); times 2^14 is exact;
// times the scale (cvt.rn.f16x2.e4m3x2: exact, 0x7F -> NaN) is exact: at most 6 significant bits,
// in [2^-10, 2688]. BF16: bits 8..6 and 2^126; the scale goes FP16 -> FP32 -> BF16 (exact).
//
// Shared memory: kStages stages, each P activation tiles of NT rows (tokens) x 64 halves (128 B),
// K-major, 128B-swizzled: the 16-byte chunk c (halves 8c .. 8c + 7) of row r is stored at byte
// r * 128 + ((c ^ (r & 7)) << 4). The TMA unit writes exactly this (CU_TENSOR_MAP_SWIZZLE_128B on
// 1024-byte aligned tiles), which is the hardware's 128B swizzle of the wgmma descriptor (address
// bits [4,7) ^= bits [7,10)); the descriptor base-offset field stays 0. Stages fill up to 220 KB
// (at most 8): P = 1 has 6 (NT = 256) or 8, P = 2 has 3 or 6. The epilogue reuses the stage
// memory for a [NT][136] BF16 transpose buffer, or the split-K partial tile.
//
// Descriptor (PTX ISA "Matrix Descriptor Format"): bits 0-13 = (addr & 0x3FFFF) >> 4, 16-29 =
// leading byte offset >> 4 (unused for a swizzled K-major operand whose k16 slice, 32 bytes, lies
// inside the 128-byte swizzle row: 1), 32-45 = stride byte offset >> 4 (1024 B between 8-row
// groups: 64), 49-51 = base offset (0), 62-63 = swizzle mode (1 = 128B). The k16 step kk starts at
// byte 32 kk of the tile: the address field advances by 2 per step; the hardware XOR on the
// absolute address bits then reproduces the store pattern above.
//
// The pipeline is warp-specialized (see fp4_prefill_kernel): one producer thread streams the
// activation tiles by TMA through full/empty mbarriers; the consumers load their weight codes and
// scales straight from global memory into registers one 128-column k-tile ahead, decode them into
// double-buffered A fragments, and keep at most two k-steps of wgmma in flight.
#include "sharq/kernels/cuda/fp4_gemm.h"
#include "sharq/kernels/cuda/activation.cuh"
#include "sharq/kernels/cuda/fp4_decode.cuh"
#include "sharq/kernels/cuda/launch.cuh"
#include "sharq/kernels/cuda/ptx.cuh"

#include <cuda.h>  // CUtensorMap (the type only: the encoder comes from the driver at run time)
#include <cudaTypedefs.h>
#include <cuda_fp8.h>

#include <mutex>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <type_traits>

#include <fmt/format.h>

namespace sharq::cuda {
namespace {

constexpr int kBNW = 128;         // weight rows per CTA (2 warpgroups x m64)
constexpr int kThreads = 256;
constexpr int kConsumerThreads = 256;  // the prefill kernel's two consumer warpgroups (its epilogues)
constexpr int kRowBytes = 128;    // one swizzled activation row: 64 halves
constexpr int kEpiPitch = (kBNW + 8) * 2;  // bytes per token row of the epilogue transpose buffer
constexpr int kRedPitch = kBNW + 4;        // floats per token row of the split-K partial tile (conflict-free)
constexpr int kMaxPrefillSplits = 8;       // the portable cluster size

// The one parameter block of both kernels (and the reduction), built by fp4_gemm() after validation.
struct Fp4GemmParams {
  const uint8_t* a0;
  const uint8_t* a1;
  int64_t M, lda_bytes;
  const uint8_t* codes;
  const uint8_t* scales;
  const float* gw;
  int gw_per_col;
  const float* rs;
  int rs_per_row;
  int64_t N, Np;             // output columns; padded weight rows (a multiple of kBNW)
  int64_t k_tiles;           // Kp / 128
  int64_t kt_per_split;      // k-tiles per split (the last split may have fewer)
  int splits;                // prefill: the cluster size along K (1: no split)
  __nv_bfloat16* y;
  float* y_f32;              // non-null: FP32 output instead of y (tests)
  int64_t ldy;
  const float* bias;         // null or N floats, added in FP32 before the output rounding
  int y_store;               // BF16 stores of the prefill epilogue and the split sums: 16 (rows 16-byte aligned), 4 (pairs) or 2 bytes
  float* ws;                 // small with splits > 1: FP32 partials [split][M][Np] instead of Y
  float* x;                  // the reduction's add_rmsnorm epilogue: the residual rows (M x N)
  const float* norm_w;       // and the norm's N weights
  float eps;
};

// ---- PTX helpers ----------------------------------------------------------------------------
template <int Bytes>
__device__ __forceinline__ void cp_async_small(uint32_t dst, const void* src) {  // 4 or 8 bytes (.ca)
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(dst), "l"(src), "n"(Bytes) : "memory");
}
__device__ __forceinline__ uint2 lds64(uint32_t a) {
  uint2 v;
  asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "r"(a) : "memory");
  return v;
}

__device__ __forceinline__ void sts16(uint32_t a, uint16_t v) {
  asm volatile("st.shared.u16 [%0], %1;\n" ::"r"(a), "h"(v) : "memory");
}
__device__ __forceinline__ uint16_t lds16(uint32_t a) {
  uint16_t v;
  asm volatile("ld.shared.u16 %0, [%1];\n" : "=h"(v) : "r"(a) : "memory");
  return v;
}
__device__ __forceinline__ uint32_t lds32(uint32_t a) {
  uint32_t v;
  asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(a) : "memory");
  return v;
}
__device__ __forceinline__ uint4 lds128(uint32_t a) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(a) : "memory");
  return v;
}

// The shared::cluster address of the same variable in CTA `rank` of the cluster.
__device__ __forceinline__ uint32_t cluster_map(uint32_t saddr, uint32_t rank) {
  uint32_t r;
  asm("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(r) : "r"(saddr), "r"(rank));  // pure: no side effect
  return r;
}
__device__ __forceinline__ float4 ld_cluster_f4(uint32_t caddr) {
  float4 v;
  asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "r"(caddr) : "memory");
  return v;
}
__device__ __forceinline__ void st_cluster_f32(uint32_t caddr, float v) {
  asm volatile("st.shared::cluster.f32 [%0], %1;\n" ::"r"(caddr), "f"(v) : "memory");
}
__device__ __forceinline__ void sts_f32(uint32_t a, float v) { asm volatile("st.shared.f32 [%0], %1;\n" ::"r"(a), "f"(v) : "memory"); }


// ---- weight decode --------------------------------------------------------------------------
// Weight decode: fp4_decode.cuh (Fp4Pair<T>: scale pairs pre-multiplied by 2^7 / 2^118, one-multiply pair decode).

// One lane's raw weights for one 128-column k-tile: its 16 code bytes of the two 8-row tiles
// (rows g and g + 8 of the warp's 16) and its row's scale bytes of each.
template <int Block>
struct RawW {
  uint4 c[2];
  uint32_t s[2][Block == 16 ? 2 : 1];
};

template <int Block>
__device__ __forceinline__ void load_raw(RawW<Block>& r, const uint8_t* codes_t0, const uint8_t* scales_t0,
                                         int64_t tile_code_stride, int64_t tile_scale_stride, int64_t kt) {
#pragma unroll
  for (int t = 0; t < 2; ++t) {
    r.c[t] = ldg_nc_v4(codes_t0 + t * tile_code_stride + kt * 512);
    if constexpr (Block == 16) {
      const uint2 s = ldg_nc_v2(scales_t0 + t * tile_scale_stride + kt * 64);
      r.s[t][0] = s.x;
      r.s[t][1] = s.y;
    } else {
      r.s[t][0] = ldg_nc_u32(scales_t0 + t * tile_scale_stride + kt * 32);
    }
  }
}

// The A fragments of the k-step with half H (columns 64 H .. 64 H + 63 of the k-tile): f[kk][0..3].
template <class T, int Block, int H>
__device__ __forceinline__ void decode_step(const RawW<Block>& r, uint32_t (&f)[4][4]) {
  using V = typename Fp4Pair<T>::V;
  V sc[2][4];  // [tile][kk]
#pragma unroll
  for (int t = 0; t < 2; ++t) {
    if constexpr (Block == 32) {
      const V s = Fp4Pair<T>::scale_pair(r.s[t][0] >> (16 * H));  // blocks (words) 2H, 2H + 1
      sc[t][0] = sc[t][1] = bcast_lo(s);
      sc[t][2] = sc[t][3] = bcast_hi(s);
    } else {
      const uint32_t w = r.s[t][H];                       // blocks 4H .. 4H + 3
      const V s01 = Fp4Pair<T>::scale_pair(w), s23 = Fp4Pair<T>::scale_pair(w >> 16);
      sc[t][0] = bcast_lo(s01);
      sc[t][1] = bcast_hi(s01);
      sc[t][2] = bcast_lo(s23);
      sc[t][3] = bcast_hi(s23);
    }
  }
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    const int jj = kk >> 1, plo = 2 * (kk & 1);
    const uint32_t w0 = (H == 0) ? (jj ? r.c[0].y : r.c[0].x) : (jj ? r.c[0].w : r.c[0].z);
    const uint32_t w1 = (H == 0) ? (jj ? r.c[1].y : r.c[1].x) : (jj ? r.c[1].w : r.c[1].z);
    f[kk][0] = Fp4Pair<T>::decode(w0 >> (4 * plo), sc[0][kk]);        // row g,     cols 2q, 2q+1
    f[kk][1] = Fp4Pair<T>::decode(w1 >> (4 * plo), sc[1][kk]);        // row g + 8
    f[kk][2] = Fp4Pair<T>::decode(w0 >> (4 * (plo + 1)), sc[0][kk]);  // row g,     cols 2q+8, 2q+9
    f[kk][3] = Fp4Pair<T>::decode(w1 >> (4 * (plo + 1)), sc[1][kk]);  // row g + 8
  }
}

// ---- split-K sums (both families) ----------------------------------------------------------------
__device__ __forceinline__ void add4(float4& s, const float4 v) {
  s.x += v.x;
  s.y += v.y;
  s.z += v.z;
  s.w += v.w;
}
// Y[m][col .. col + 3] in FP32 (0 for the columns >= N) = s * (row_scale[m] * g_w) (+ bias): the
// epilogue of a split-K sum (s: the partials, times kPost, summed in split order). col % 4 == 0.
__device__ __forceinline__ void scale_sum4(const Fp4GemmParams& prm, int64_t m, int64_t col, const float4 s, float (&o)[4]) {
  const float rs = prm.rs ? prm.rs[prm.rs_per_row ? m : 0] : 1.0f;
  const float v[4] = {s.x, s.y, s.z, s.w};
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    o[e] = 0.0f;
    if (col + e >= prm.N) continue;
    o[e] = v[e] * (rs * prm.gw[prm.gw_per_col ? col + e : 0]);
    if (prm.bias) o[e] += prm.bias[col + e];
  }
}
// ... stored as FP32 or BF16.
__device__ __forceinline__ void store_sum4(const Fp4GemmParams& prm, int64_t m, int64_t col, const float4 s) {
  float o[4];
  scale_sum4(prm, m, col, s, o);
  if (prm.y_f32) {
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (col + e < prm.N) prm.y_f32[m * prm.ldy + col + e] = o[e];
  } else if (prm.y_store != 2 && col + 3 < prm.N) {  // 4-byte aligned pairs (col is even)
    auto* dst = reinterpret_cast<__nv_bfloat162*>(prm.y + m * prm.ldy + col);
    dst[0] = __floats2bfloat162_rn(o[0], o[1]);
    dst[1] = __floats2bfloat162_rn(o[2], o[3]);
  } else {
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (col + e < prm.N) prm.y[m * prm.ldy + col + e] = __float2bfloat16_rn(o[e]);
  }
}

// ---- split-K epilogue (prefill) ----------------------------------------------------------------
// With prm.splits = c > 1 the c CTAs (blockIdx.z = 0 .. c - 1) of one (n, m) tile form one thread
// block cluster, and CTA z has summed the k-tiles [z kps, (z + 1) kps). Each CTA stores its FP32
// partial (times kPost: exact) as [NT tokens][kRedPitch] in its own shared memory; after a cluster
// barrier CTA r sums the token rows [r R, (r + 1) R), R = ceil(NT / c), over the CTAs 0, 1, ..,
// c - 1 in that order through distributed shared memory (deterministic for a given c), scales
// them, adds the bias and stores Y. A second barrier keeps every CTA's shared memory alive until
// the last remote read.
// Partial stores: thread (w, g, q) writes token 8 j + 2 q + h, column na / nb: bank
// (4 (8 j + 2 q + h) + na) % 32 = (8 q + g + const) % 32, distinct across the warp.
template <class T, int NT>
__device__ __forceinline__ void split_epilogue(const Fp4GemmParams& prm, const float (&acc)[NT / 2], uint32_t smem0,
                                               int64_t n0, int64_t m0, int tid) {
  const int wg = tid >> 7, w = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, q = lane & 3;
  const int na = 64 * wg + 16 * w + g, nb = na + 8;
#pragma unroll
  for (int j = 0; j < NT / 8; ++j)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const uint32_t row = smem0 + static_cast<uint32_t>((8 * j + 2 * q + h) * kRedPitch * 4);
      sts_f32(row + 4 * na, acc[4 * j + h] * Fp4Pair<T>::kPost);
      sts_f32(row + 4 * nb, acc[4 * j + 2 + h] * Fp4Pair<T>::kPost);
    }
  cluster_sync<true>();
  const int c = prm.splits, rows_per = (NT + c - 1) / c;
  const int rank = static_cast<int>(blockIdx.z);  // the cluster spans the grid's z: rank == blockIdx.z
  const int cq = tid & 31;                         // this thread's columns 4 cq .. 4 cq + 3
  const int64_t col = n0 + 4 * cq;
  for (int tr = tid >> 5; tr < rows_per; tr += kConsumerThreads / 32) {
    const int t = rank * rows_per + tr;
    const int64_t m = m0 + t;
    if (t >= NT || m >= prm.M) break;  // the rows ascend with tr
    const uint32_t a = smem0 + static_cast<uint32_t>((t * kRedPitch + 4 * cq) * 4);
    float4 sum = ld_cluster_f4(cluster_map(a, 0));
    for (int r = 1; r < c; ++r) add4(sum, ld_cluster_f4(cluster_map(a, static_cast<uint32_t>(r))));
    store_sum4(prm, m, col, sum);
  }
  cluster_sync<true>();
}

// =============================================================================================
// The prefill kernel, warp-specialized. The pipeline is split by role:
//   - warpgroup 0 (producer, setmaxnreg.dec to 40): one thread issues, per k-step, one TMA load per
//     activation path (box 64 halves x NT tokens, 128B swizzle: the exact layout the wgmma
//     descriptors expect; rows >= M are zero-filled by the TMA unit) onto the stage's `full`
//     mbarrier (expect_tx = P NT 128 bytes), after waiting on the stage's `empty` mbarrier;
//   - warpgroups 1 and 2 (consumers, setmaxnreg.inc to 232): weight rows 64 (wg - 1) ..; they load
//     their weight codes and scales from global memory one k-tile ahead (LDG.128, registers),
//     decode them into double-buffered fragments, wait on `full`, issue the 4 P wgmma of the
//     k-step, wait for the previous k-step's wgmma, and release its stage: lane 0 of each consumer
//     warp arrives on the stage's `empty` (count 8) after its own wgmma.wait_group.
// It replaced a 256-thread kernel in which every thread issued cp.async for the activations and
// both warpgroups met at a block barrier per k-step (H200, Llama-3.1-8B, same run: 10-35% less time
// at every M from 128 to 4096; Nsight on gate_up M = 4096: tensor pipe 63% -> 76% busy).
// Phases: stage s = i % S is used for the (i / S)-th time by k-step i; `full[s]` completes phase
// (i / S) & 1 when its bytes land; `empty[s]` completes phase (i / S) & 1 when the 8 consumer
// warps are done with k-step i, and the producer waits for that phase before k-step i + S.
// Epilogue: the consumers only (named barrier 1, 256 threads): the scaled BF16 tile transposed
// through shared memory and stored coalesced, or (kSplit) the cluster's split-K sum, whose two
// cluster barriers the producer warpgroup joins.
// Registers: the launch count is 168 (= 65536 / 384, what -Xptxas -v reports), but ptxas compiles
// the code after setmaxnreg.inc for its 232: the NT = 256 consumers need more than 168 (compiled
// with the consumer count set to 168 they spill 200-300 bytes). So a change to the 40/232 split,
// the launch bounds or -maxrregcount must be checked by compiling with the consumer count lowered,
// not by -v's figure.
// The register split and its host check are the warp-specialized kernels' shared ones (ptx.cuh).
constexpr int kPrefillThreads = kWsThreads;
static_assert(kPrefillThreads == 128 + kConsumerThreads, "a producer warpgroup and the consumers");

template <int P, int NT>
struct Cfg {
  static constexpr int kTileBytes = NT * kRowBytes;
  static constexpr int kStageBytes = P * kTileBytes;
  static constexpr int kStages = (220 * 1024) / kStageBytes > 8 ? 8 : (220 * 1024) / kStageBytes;
  static constexpr int kPipeBytes = kStages * kStageBytes;
  static constexpr int kEpiBytes = NT * kRedPitch * 4;
  static constexpr int kSmem = (kPipeBytes > kEpiBytes ? kPipeBytes : kEpiBytes) + 1024;  // + base alignment
  static_assert(kStageBytes % 1024 == 0 && kTileBytes % 1024 == 0, "tiles must stay 1024-byte aligned (128B swizzle)");
  static_assert(kStages >= 2, "stages");
  static_assert(kSmem <= 227 * 1024, "shared memory");
  static_assert(kEpiBytes >= NT * kEpiPitch, "the epilogue buffer holds both epilogue layouts");
};

// The activation planes as TMA tensors: [M rows][Kp halves] with a row pitch of lda halves.
struct PrefillMaps {
  CUtensorMap a[2];
};

__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, int32_t c0, int32_t c1, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}
__device__ __forceinline__ void consumer_barrier() { asm volatile("bar.sync 1, %0;\n" ::"n"(kConsumerThreads) : "memory"); }

template <class T, int P, int Block, int NT, bool kSplit>
__global__ void __launch_bounds__(kPrefillThreads, 1) fp4_prefill_kernel(const Fp4GemmParams prm, const __grid_constant__ PrefillMaps maps) {
  using C = Cfg<P, NT>;
  constexpr int S = C::kStages;
  extern __shared__ uint8_t smem_raw[];
  __shared__ alignas(8) uint64_t bars[2 * S];  // full[0 .. S), empty[S .. 2S)
  const uint32_t smem0 = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t full0 = smem_u32(&bars[0]), empty0 = smem_u32(&bars[S]);

  const int wg = static_cast<int>(threadIdx.x) >> 7;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kBNW;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * NT;
  // split blockIdx.z: k-tiles [kt0, kt0 + nkt), nkt >= 1 (the plan leaves no split empty)
  const int64_t kt0 = kSplit ? static_cast<int64_t>(blockIdx.z) * prm.kt_per_split : 0;
  const int64_t nkt = !kSplit ? prm.k_tiles : prm.k_tiles - kt0 < prm.kt_per_split ? prm.k_tiles - kt0 : prm.kt_per_split;
  const int ksteps = static_cast<int>(nkt * 2);

  if (threadIdx.x == 0) {
    for (int s = 0; s < S; ++s) {
      mbar_init(full0 + 8 * s, 1);
      mbar_init(empty0 + 8 * s, 8);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (wg == 0) {  // ---- producer
    ws_producer_registers();
    if (threadIdx.x == 0) {
#pragma unroll
      for (int p = 0; p < P; ++p)
        asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&maps.a[p])) : "memory");
#pragma unroll 1
      for (int i = 0; i < ksteps; ++i) {
        const int s = i % S;
        if (i >= S) mbar_wait(empty0 + 8 * s, static_cast<uint32_t>((i / S - 1) & 1));
        mbar_expect_tx(full0 + 8 * s, static_cast<uint32_t>(P * NT * kRowBytes));
        const int32_t col = static_cast<int32_t>((kt0 * 2 + i) * 64);  // halves
#pragma unroll
        for (int p = 0; p < P; ++p)
          tma_load_2d(smem0 + static_cast<uint32_t>(s * C::kStageBytes + p * C::kTileBytes), &maps.a[p], col,
                      static_cast<int32_t>(m0), full0 + 8 * s);
      }
    }
    if constexpr (kSplit) {  // the cluster barriers of split_epilogue: every thread, warps converged
      __syncwarp();
      cluster_sync<true>();
      cluster_sync<true>();
    }
    return;
  }

  // ---- consumers: warpgroup cw = wg - 1 owns weight rows n0 + 64 cw ..
  ws_consumer_registers();
  const int tid = static_cast<int>(threadIdx.x) - 128;  // 0 .. 255
  const int cw = tid >> 7, w = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, q = lane & 3;
  const int64_t tile0 = (n0 + 64 * cw + 16 * w) / 8;
  constexpr int kScaleTile = 8 * (128 / Block);
  const uint8_t* codes_t0 = prm.codes + (tile0 * prm.k_tiles + kt0) * 512 + lane * 16;
  const uint8_t* scales_t0 = prm.scales + (tile0 * prm.k_tiles + kt0) * kScaleTile + g * (128 / Block);
  const int64_t tcs = prm.k_tiles * 512, tss = prm.k_tiles * kScaleTile;

  float acc[NT / 2];
#pragma unroll
  for (int i = 0; i < NT / 2; ++i) acc[i] = 0.0f;
  uint32_t fA[4][4], fB[4][4];
  RawW<Block> rc, rn;
  load_raw<Block>(rc, codes_t0, scales_t0, tcs, tss, 0);
  decode_step<T, Block, 0>(rc, fA);

  auto step = [&](int i, uint32_t(&f)[4][4]) {
    const int s = i % S;
    mbar_wait(full0 + 8 * s, static_cast<uint32_t>((i / S) & 1));
    const uint32_t sb = smem0 + static_cast<uint32_t>(s * C::kStageBytes);
    fence_regs(acc);
    fence_regs(f);
    wgmma_fence();
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const uint64_t db = make_desc(sb + static_cast<uint32_t>(p * C::kTileBytes));
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) wgmma_rs<T, NT, false>(acc, f[kk], db + 2 * kk, 1);
    }
    wgmma_commit();
    fence_regs(acc);
    wgmma_wait<1>();  // this warpgroup's wgmma(i - 1) has completed: its stage is free
    fence_regs(acc);
    if (i > 0) {
      __syncwarp();
      if (lane == 0) mbar_arrive(empty0 + 8 * ((i - 1) % S));
    }
  };

  for (int64_t kt = 0; kt < nkt; ++kt) {
    const bool more = kt + 1 < nkt;
    if (more) load_raw<Block>(rn, codes_t0, scales_t0, tcs, tss, kt + 1);
    step(static_cast<int>(2 * kt), fA);
    fence_regs(fB);
    decode_step<T, Block, 1>(rc, fB);  // fB was read by wgmma(2 kt - 1): complete
    step(static_cast<int>(2 * kt + 1), fB);
    if (more) {
      fence_regs(fA);
      decode_step<T, Block, 0>(rn, fA);  // fA was read by wgmma(2 kt): complete
      rc = rn;
    }
  }
  wgmma_wait<0>();
  fence_regs(acc);
  consumer_barrier();  // both consumer warpgroups are done with the stage memory (every load landed)

  if constexpr (kSplit) {
    split_epilogue<T, NT>(prm, acc, smem0, n0, m0, tid);
    return;
  }
  const int na = 64 * cw + 16 * w + g, nb = na + 8;
  const bool oka = n0 + na < prm.N, okb = n0 + nb < prm.N;  // padded weight rows write nothing
  const float ga = oka ? prm.gw[prm.gw_per_col ? n0 + na : 0] * Fp4Pair<T>::kPost : 0.0f,
              gb = okb ? prm.gw[prm.gw_per_col ? n0 + nb : 0] * Fp4Pair<T>::kPost : 0.0f;  // exact power of 2
  // the bias, added only when there is one (adding 0 would turn -0 into +0)
  const bool has_bias = prm.bias != nullptr;
  const float ba = has_bias && oka ? prm.bias[n0 + na] : 0.0f, bb = has_bias && okb ? prm.bias[n0 + nb] : 0.0f;
  auto out_a = [&](float v) { return has_bias ? v + ba : v; };
  auto out_b = [&](float v) { return has_bias ? v + bb : v; };
  if (prm.y_f32) {  // uniform across the block: the test-only FP32 output, no transpose
#pragma unroll
    for (int j = 0; j < NT / 8; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t t = m0 + 8 * j + 2 * q + h;
        if (t >= prm.M) continue;
        const float r = prm.rs ? prm.rs[prm.rs_per_row ? t : 0] : 1.0f;
        if (oka) prm.y_f32[t * prm.ldy + n0 + na] = out_a(acc[4 * j + h] * (r * ga));
        if (okb) prm.y_f32[t * prm.ldy + n0 + nb] = out_b(acc[4 * j + 2 + h] * (r * gb));
      }
    return;
  }
  // Epilogue 1: D^T fragments -> scaled BF16, transposed into smem [NT tokens][kBNW + 8].
  // d[4j + {0,1}] = D^T[16 w + g][8 j + 2 q + {0,1}], d[4j + {2,3}] = row + 8.
#pragma unroll
  for (int j = 0; j < NT / 8; ++j) {
    const int t0 = 8 * j + 2 * q, t1 = t0 + 1;
    float r0 = 1.0f, r1 = 1.0f;
    if (prm.rs) {
      const int64_t i0 = m0 + t0 < prm.M ? m0 + t0 : 0, i1 = m0 + t1 < prm.M ? m0 + t1 : 0;
      r0 = prm.rs[prm.rs_per_row ? i0 : 0];
      r1 = prm.rs[prm.rs_per_row ? i1 : 0];
    }
    const uint32_t row0 = smem0 + static_cast<uint32_t>(t0 * kEpiPitch), row1 = row0 + kEpiPitch;
    sts16(row0 + 2 * na, __bfloat16_as_ushort(__float2bfloat16_rn(out_a(acc[4 * j + 0] * (r0 * ga)))));
    sts16(row1 + 2 * na, __bfloat16_as_ushort(__float2bfloat16_rn(out_a(acc[4 * j + 1] * (r1 * ga)))));
    sts16(row0 + 2 * nb, __bfloat16_as_ushort(__float2bfloat16_rn(out_b(acc[4 * j + 2] * (r0 * gb)))));
    sts16(row1 + 2 * nb, __bfloat16_as_ushort(__float2bfloat16_rn(out_b(acc[4 * j + 3] * (r1 * gb)))));
  }
  consumer_barrier();
  // Epilogue 2: token rows < M and columns < N out to Y, coalesced.
  const int64_t rows = prm.M - m0 < NT ? prm.M - m0 : NT;
  const int cols = prm.N - n0 < kBNW ? static_cast<int>(prm.N - n0) : kBNW;
  if (cols < kBNW || prm.y_store == 2) {  // a partial last block (N % 128 != 0) or an odd ldy: elements
    for (int idx = tid; idx < rows * cols; idx += kConsumerThreads) {
      const int t = idx / cols, c = idx % cols;
      prm.y[(m0 + t) * prm.ldy + n0 + c] = __ushort_as_bfloat16(lds16(smem0 + static_cast<uint32_t>(t * kEpiPitch + c * 2)));
    }
  } else if (prm.y_store == 16) {
    for (int idx = tid; idx < rows * 16; idx += kConsumerThreads) {
      const int t = idx >> 4, c = idx & 15;
      const uint4 v = lds128(smem0 + static_cast<uint32_t>(t * kEpiPitch + c * 16));
      stg_v4(prm.y + (m0 + t) * prm.ldy + n0 + c * 8, v.x, v.y, v.z, v.w);
    }
  } else {
    for (int idx = tid; idx < rows * 64; idx += kConsumerThreads) {
      const int t = idx >> 6, c = idx & 63;
      const uint32_t v = lds32(smem0 + static_cast<uint32_t>(t * kEpiPitch + c * 4));
      *reinterpret_cast<uint32_t*>(prm.y + (m0 + t) * prm.ldy + n0 + c * 2) = v;
    }
  }
}

// cuTensorMapEncodeTiled from the driver, once (no link against libcuda: the runtime hands it out).
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    SHARQ_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q));
    if (q != cudaDriverEntryPointSuccess || !p)
      throw std::runtime_error("fp4_gemm: the CUDA driver has no cuTensorMapEncodeTiled (the prefill kernel's TMA needs a CUDA 12.5+ driver entry point)");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

// One activation plane as a 2-D TMA tensor: dims (Kp halves, M rows), row pitch lda_bytes, box
// (64 halves, NT rows), 128-byte swizzle; rows past M read as zeros.
CUtensorMap plane_map(const uint8_t* plane, int64_t M, int64_t Kp, int64_t lda_bytes, int nt, bool bf16) {
  CUtensorMap m{};
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(Kp), static_cast<cuuint64_t>(M)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(lda_bytes)};
  const cuuint32_t box[2] = {64, static_cast<cuuint32_t>(nt)}, estr[2] = {1, 1};
  const CUresult r = tensor_map_encoder()(&m, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2,
                                          const_cast<uint8_t*>(plane), dims, strides, box, estr,
                                          CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                          CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) throw std::runtime_error(fmt::format("fp4_gemm: cuTensorMapEncodeTiled failed ({})", static_cast<int>(r)));
  return m;
}

// The launch of a prefill grid whose z is the split: with splits > 1 the splits of a tile are one
// cluster of (1, 1, splits) CTAs. `attr` must outlive the launch (or the occupancy query).
cudaLaunchConfig_t prefill_config(dim3 grid, int threads, int smem, cudaStream_t stream, int splits,
                                  cudaLaunchAttribute& attr) {
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = 1;
  attr.val.clusterDim.y = 1;
  attr.val.clusterDim.z = static_cast<unsigned>(splits);
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(static_cast<unsigned>(threads));
  cfg.dynamicSmemBytes = static_cast<size_t>(smem);
  cfg.stream = stream;
  cfg.attrs = &attr;
  cfg.numAttrs = splits > 1 ? 1 : 0;
  return cfg;
}

// Grid (weight-row tiles, token tiles, splits).
template <class T, int P, int Block, int NT>
void launch_prefill(const Fp4GemmParams& prm, cudaStream_t stream) {
  auto kernel = prm.splits > 1 ? fp4_prefill_kernel<T, P, Block, NT, true> : fp4_prefill_kernel<T, P, Block, NT, false>;
  constexpr int smem = Cfg<P, NT>::kSmem;  // opted in by configure_kernels()
  PrefillMaps maps{};
  const bool bf16 = std::is_same_v<T, __nv_bfloat16>;
  maps.a[0] = plane_map(prm.a0, prm.M, prm.k_tiles * 128, prm.lda_bytes, NT, bf16);
  if constexpr (P == 2) maps.a[1] = plane_map(prm.a1, prm.M, prm.k_tiles * 128, prm.lda_bytes, NT, bf16);
  const dim3 grid(static_cast<unsigned>(prm.Np / kBNW), static_cast<unsigned>((prm.M + NT - 1) / NT),
                  static_cast<unsigned>(prm.splits));
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t cfg = prefill_config(grid, kPrefillThreads, smem, stream, prm.splits, attr);
  SHARQ_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, prm, maps));
}

// =============================================================================================
// Small M (decode, M <= 64): the same swapped wgmma with token tiles NT = 8, 16, 32 or 64
// (m64nNTk16) and split-K over blockIdx.y.
//
// At small M the GEMM is a stream of the FP4 weights (N K / 2 bytes + scales, each byte read from
// HBM exactly once: block (x, y) owns weight rows 128 x .. 128 x + 127 and k-tiles
// [y kps, min((y + 1) kps, Kp / 128)), no two blocks share a weight tile). The re-tuning against the
// prefill kernel:
//   - weight prefetch: the weights do not go through registers but through cp.async into per-thread
//     shared-memory slots (each thread copies exactly the 32 code bytes + scale bytes it decodes and
//     reads them back itself: no barrier, no proxy fence). They ride in the activation copy groups:
//     k-tile j in the group of k-step 2 j - 2, so S / 2 k-tiles (3 .. 6 x 10 KB per block) are in
//     flight, S <= 12 as shared memory allows at the block's occupancy (S / 2 + 1 weight slots);
//   - occupancy: 4 blocks of 256 threads per SM at NT = 8 (<= 64 registers, <= 55 KB of shared
//     memory each), 3 at NT = 16, 2 at NT = 32 / 64 (__launch_bounds__). The kernel is latency-bound
//     (Nsight: "wait" and barrier stalls, ~45% issue at full clock), so warps beat stages: 4 blocks
//     of 3 k-tiles in flight ran 15% faster than 2 blocks of 6 (H200, docs/perf/hopper.md log 15);
//   - split-K: with splits > 1 every block writes FP32 partials (x kPost, nothing else) to the
//     workspace [split][M][N]; small_splitk_reduce_kernel adds them in split order (deterministic)
//     and applies row_scale x g_w. With splits == 1 the kernel writes Y itself.
//   - programmatic dependent launch: both kernels are launched with programmatic stream
//     serialization. The GEMM issues its first W weight k-tiles (they never depend on the previous
//     kernel) and then executes griddepcontrol.wait before it touches anything else, so those copies
//     overlap the previous kernel's tail (its blocks exiting). The reduction waits likewise. (Letting
//     the prep trigger the launch at its start was measured: the GEMM's resident blocks then slowed
//     the latency-bound prep, +8 us on down at M = 1; docs/perf/hopper.md log 17.) Without a
//     PDL-aware predecessor this is a plain stream-ordered launch.
// The k-step pipeline, the decode and the hazard argument are exactly the prefill kernel's (see the
// top of this file): only the k range, the stage count and the weight staging differ.
// =============================================================================================

// Shared memory per block: S activation stages and W = S / 2 + 1 weight slots (one k-tile each:
// 256 threads x (2 x 16 code bytes + 2 x 4 / 8 scale bytes), each thread's own bytes), S the
// largest even count <= 12 that keeps kMinBlocks blocks per SM.
template <int P, int NT, int Block>
struct SmallCfg {
  static constexpr int kTileBytes = NT * kRowBytes;  // one path's activation tile (1 KB .. 8 KB)
  static constexpr int kStageBytes = P * kTileBytes;
  static constexpr int kScaleBytes = Block == 16 ? 8 : 4;         // per thread per 8-row tile
  static constexpr int kSlotCodes = 2 * kThreads * 16;            // 8 KB
  static constexpr int kSlotBytes = kSlotCodes + 2 * kThreads * kScaleBytes;
  static constexpr int smem_for(int s) { return s * kStageBytes + (s / 2 + 1) * kSlotBytes + 1024; }
  // Resident blocks per SM: the decode kernel is latency-bound (docs/perf/hopper.md, log 15), so
  // more warps per SM are worth fewer k-tiles in flight per block: 4 blocks (32 warps) at NT = 8
  // (<= 64 registers), 3 at NT = 16, 2 above (the accumulators need the registers).
  static constexpr int kMinBlocks = NT <= 8 ? 4 : NT <= 16 ? 3 : 2;
  static constexpr int kBudget = (228 / kMinBlocks - 2) * 1024;   // shared memory per block (+ 1 KB reserved each)
  static constexpr int kStages = smem_for(12) <= kBudget ? 12 : smem_for(10) <= kBudget ? 10
                                 : smem_for(8) <= kBudget ? 8 : smem_for(6) <= kBudget ? 6 : 4;
  static constexpr int kWSlots = kStages / 2 + 1;
  static constexpr int kSmem = smem_for(kStages);                 // + base alignment
  // Activation copies per stage: 8 P 16-byte chunks per token row; a thread copies kCpt consecutive
  // chunks of one row of one path (kTpr threads per row, NT kTpr <= 256 threads busy).
  static constexpr int kChunks = P * NT * 8;
  static constexpr int kCpt = kChunks > kThreads ? kChunks / kThreads : 1;
  static constexpr int kTpr = 8 * P / kCpt;
  static_assert(8 % kCpt == 0 && NT * kTpr <= kThreads, "copy mapping");
  static_assert(kTileBytes % 1024 == 0 && kSlotBytes % 1024 == 0, "tiles must stay 1024-byte aligned");
  static_assert(kStages >= 4 && kStages % 2 == 0, "the pipeline needs 4 stages");
  static_assert(kMinBlocks * (kSmem + 1024) <= 228 * 1024, "shared memory for the target occupancy");
};

template <class T, int P, int Block, int NT>
__global__ void __launch_bounds__(kThreads, SmallCfg<P, NT, Block>::kMinBlocks) fp4_small_kernel(const Fp4GemmParams prm) {
  using C = SmallCfg<P, NT, Block>;
  constexpr int S = C::kStages, W = C::kWSlots;
  extern __shared__ uint8_t smem_raw[];
  const uint32_t smem0 = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t wsm0 = smem0 + static_cast<uint32_t>(S * C::kStageBytes);  // weight slots

  const int tid = static_cast<int>(threadIdx.x);
  const int wg = tid >> 7, w = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, q = lane & 3;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kBNW;
  const int64_t kt0 = static_cast<int64_t>(blockIdx.y) * prm.kt_per_split;
  const int nkt = static_cast<int>(prm.k_tiles - kt0 < prm.kt_per_split ? prm.k_tiles - kt0 : prm.kt_per_split);  // >= 1
  const int ksteps = 2 * nkt;

  // Weights: this warp's two 8-row tiles (rows n0 + 64 wg + 16 w + {0..7, 8..15}), from k-tile kt0.
  const int64_t tile0 = (n0 + 64 * wg + 16 * w) / 8;
  constexpr int kScaleTile = 8 * (128 / Block);
  const uint8_t* codes_t0 = prm.codes + (tile0 * prm.k_tiles + kt0) * 512 + lane * 16;
  const uint8_t* scales_t0 = prm.scales + (tile0 * prm.k_tiles + kt0) * kScaleTile + g * (128 / Block);
  const int64_t tcs = prm.k_tiles * 512, tss = prm.k_tiles * kScaleTile;
  // This thread's bytes of weight slot j: codes of tile t at + t 4096 + 16 tid, scales at
  // + 8192 + t 256 SB + SB tid (lane-contiguous: conflict-free). Only this thread reads them back.
  const uint32_t w_codes = wsm0 + static_cast<uint32_t>(16 * tid);
  const uint32_t w_scales = wsm0 + static_cast<uint32_t>(C::kSlotCodes + C::kScaleBytes * tid);
  auto issue_weights = [&](int kt) {
    const uint32_t slot = static_cast<uint32_t>((kt % W) * C::kSlotBytes);
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      cp_async16(w_codes + slot + t * kThreads * 16, codes_t0 + t * tcs + static_cast<int64_t>(kt) * 512);
      cp_async_small<C::kScaleBytes>(w_scales + slot + t * kThreads * C::kScaleBytes,
                                     scales_t0 + t * tss + static_cast<int64_t>(kt) * kScaleTile);
    }
  };
  auto read_weights = [&](int kt, RawW<Block>& r) {
    const uint32_t slot = static_cast<uint32_t>((kt % W) * C::kSlotBytes);
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      r.c[t] = lds128(w_codes + slot + t * kThreads * 16);
      if constexpr (Block == 16) {
        const uint2 v = lds64(w_scales + slot + t * kThreads * 8);
        r.s[t][0] = v.x;
        r.s[t][1] = v.y;
      } else {
        r.s[t][0] = lds32(w_scales + slot + t * kThreads * 4);
      }
    }
  };

  // Activation copies: thread tid < NT kTpr copies chunks c0 .. c0 + kCpt - 1 of token row
  // r = tid / kTpr of path p (j0 = (tid % kTpr) kCpt = 8 p + c0). Rows >= M are zero-filled (the
  // source is then row 0, not read).
  const bool c_on = tid < NT * C::kTpr;
  const int c_r = (tid / C::kTpr) % NT, c_j0 = (tid % C::kTpr) * C::kCpt, c_p = c_j0 >> 3, c_c0 = c_j0 & 7;
  const bool c_valid = c_r < prm.M;
  const uint32_t c_len = c_valid ? 16u : 0u;
  const uint8_t* c_src = (c_p == 0 ? prm.a0 : prm.a1) + (c_valid ? c_r * prm.lda_bytes : 0) + c_c0 * 16 + kt0 * 256;
  const uint32_t c_sm = static_cast<uint32_t>(c_p * C::kTileBytes + c_r * kRowBytes);

  // The cp.async group of k-step ks: its activation tiles, and for even ks the weights of k-tile
  // ks / 2 + 1, except k-tiles 0 .. kPre - 1 (kPre = min(W, nkt)): those are issued before the
  // programmatic-dependent-launch wait (the weights never depend on the previous kernel) and land
  // with group 0. K-tile j is decoded after step 2 j - 1 has waited for group 2 j - 1 >= 2 j - 2, and
  // it is issued at step 2 j - S, S / 2 k-tiles ahead. Its slot j % W is rewritten by k-tile j + W,
  // issued at step 2 j + 2: after the last read of j (after step 2 j).
  const int kPre = nkt < W ? nkt : W;
  auto issue_copies = [&](int ks) {
    if ((ks & 1) == 0 && ks / 2 + 1 >= kPre && ks / 2 + 1 < nkt) issue_weights(ks / 2 + 1);
    if (!c_on) return;
    const uint32_t sb = smem0 + static_cast<uint32_t>((ks % S) * C::kStageBytes) + c_sm;
    const uint8_t* src = c_src + static_cast<int64_t>(ks) * kRowBytes;
#pragma unroll
    for (int e = 0; e < C::kCpt; ++e)
      cp_async16_zfill(sb + (((c_c0 + e) ^ (c_r & 7)) << 4), src + 16 * e, c_len);
  };

  for (int j = 0; j < kPre; ++j) issue_weights(j);  // distinct slots j < W; landed with group 0
  pdl_wait();  // PDL: the previous kernel's writes are visible, its reads done
  pdl_trigger();

  float acc[NT / 2];
#pragma unroll
  for (int i = 0; i < NT / 2; ++i) acc[i] = 0.0f;
  uint32_t fA[4][4], fB[4][4];
  RawW<Block> raw;

#pragma unroll
  for (int s = 0; s < S - 2; ++s) {
    if (s < ksteps) issue_copies(s);
    cp_async_commit();
  }
  cp_async_wait<S - 3>();  // group 0 (k-tile 0) has landed
  read_weights(0, raw);
  decode_step<T, Block, 0>(raw, fA);

  auto step = [&](int i, uint32_t(&f)[4][4]) {
    cp_async_wait<S - 3>();
    fence_proxy_async_smem();
    __syncthreads();
    const uint32_t sb = smem0 + static_cast<uint32_t>((i % S) * C::kStageBytes);
    fence_regs(acc);
    fence_regs(f);
    wgmma_fence();
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const uint64_t db = make_desc(sb + static_cast<uint32_t>(p * C::kTileBytes));
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) wgmma_rs<T, NT, false>(acc, f[kk], db + 2 * kk, 1);
    }
    wgmma_commit();
    fence_regs(acc);
    wgmma_wait<1>();
    fence_regs(acc);
    if (i + S - 2 < ksteps) issue_copies(i + S - 2);
    cp_async_commit();
  };

  for (int kt = 0; kt < nkt; ++kt) {
    step(2 * kt, fA);
    fence_regs(fB);
    read_weights(kt, raw);
    decode_step<T, Block, 1>(raw, fB);  // fB was read by wgmma(2 kt - 1): complete
    step(2 * kt + 1, fB);
    if (kt + 1 < nkt) {
      fence_regs(fA);
      read_weights(kt + 1, raw);
      decode_step<T, Block, 0>(raw, fA);  // fA was read by wgmma(2 kt): complete
    }
  }
  wgmma_wait<0>();
  fence_regs(acc);
  cp_async_wait<0>();

  // D^T fragments: acc[4j + h] = D^T[16 w + g][8 j + 2 q + h], acc[4j + 2 + h] = row + 8.
  const int na = 64 * wg + 16 * w + g, nb = na + 8;
  if (prm.ws) {  // every padded column too (zeros): the reduction reads whole float4s of [M][Np]
    float* base = prm.ws + static_cast<int64_t>(blockIdx.y) * prm.M * prm.Np + n0;
#pragma unroll
    for (int j = 0; j < NT / 8; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int t = 8 * j + 2 * q + h;
        if (t >= prm.M) continue;
        base[t * prm.Np + na] = acc[4 * j + h] * Fp4Pair<T>::kPost;  // exact power of 2
        base[t * prm.Np + nb] = acc[4 * j + 2 + h] * Fp4Pair<T>::kPost;
      }
    return;
  }
  const bool oka = n0 + na < prm.N, okb = n0 + nb < prm.N;  // padded weight rows write nothing
  const float ga = oka ? prm.gw[prm.gw_per_col ? n0 + na : 0] * Fp4Pair<T>::kPost : 0.0f,
              gb = okb ? prm.gw[prm.gw_per_col ? n0 + nb : 0] * Fp4Pair<T>::kPost : 0.0f;
  const bool has_bias = prm.bias != nullptr;
  const float ba = has_bias && oka ? prm.bias[n0 + na] : 0.0f, bb = has_bias && okb ? prm.bias[n0 + nb] : 0.0f;
#pragma unroll
  for (int j = 0; j < NT / 8; ++j)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int t = 8 * j + 2 * q + h;
      if (t >= prm.M) continue;
      const float r = prm.rs ? prm.rs[prm.rs_per_row ? t : 0] : 1.0f;
      float va = acc[4 * j + h] * (r * ga), vb = acc[4 * j + 2 + h] * (r * gb);
      if (has_bias) {
        va += ba;
        vb += bb;
      }
      if (prm.y_f32) {
        if (oka) prm.y_f32[t * prm.ldy + n0 + na] = va;
        if (okb) prm.y_f32[t * prm.ldy + n0 + nb] = vb;
      } else {
        if (oka) prm.y[t * prm.ldy + n0 + na] = __float2bfloat16_rn(va);
        if (okb) prm.y[t * prm.ldy + n0 + nb] = __float2bfloat16_rn(vb);
      }
    }
}

// ---- the small family's split-K reduction, plain or with an epilogue --------------------------
// The sums of the splits' partials of Y[row][cols[c] .. cols[c] + 3], each in split order
// (deterministic). The loads of 8 splits of every column are issued before their adds: a thread's
// whole reduction is a few load latencies, not one per split.
template <int NC>
__device__ __forceinline__ void split_sums(const Fp4GemmParams& prm, int splits, int64_t row, const int64_t (&cols)[NC],
                                           float4 (&s)[NC]) {
  constexpr int kBatch = 8;
  const int64_t plane = prm.M * prm.Np;
  const float* p = prm.ws + row * prm.Np;
#pragma unroll
  for (int c = 0; c < NC; ++c) s[c] = *reinterpret_cast<const float4*>(p + cols[c]);
  for (int sp0 = 1; sp0 < splits; sp0 += kBatch) {
    float4 v[NC][kBatch];
#pragma unroll
    for (int k = 0; k < kBatch; ++k)
#pragma unroll
      for (int c = 0; c < NC; ++c)
        if (sp0 + k < splits) v[c][k] = *reinterpret_cast<const float4*>(p + (sp0 + k) * plane + cols[c]);
#pragma unroll
    for (int k = 0; k < kBatch; ++k)
#pragma unroll
      for (int c = 0; c < NC; ++c)
        if (sp0 + k < splits) add4(s[c], v[c][k]);
  }
}
__device__ __forceinline__ float4 split_sum4(const Fp4GemmParams& prm, int splits, int64_t row, int64_t col) {
  const int64_t cols[1] = {col};
  float4 s[1];
  split_sums<1>(prm, splits, row, cols, s);
  return s[0];
}
__device__ __forceinline__ float bf16_round(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }
// Four BF16 values to y[m][col ..]: two 4-byte pair stores when y_store allows, else four.
__device__ __forceinline__ void store_bf16x4(const Fp4GemmParams& prm, int64_t m, int64_t col, const float (&o)[4]) {
  __nv_bfloat16* dst = prm.y + m * prm.ldy + col;
  if (prm.y_store != 2) {
    reinterpret_cast<__nv_bfloat162*>(dst)[0] = __floats2bfloat162_rn(o[0], o[1]);
    reinterpret_cast<__nv_bfloat162*>(dst)[1] = __floats2bfloat162_rn(o[2], o[3]);
  } else {
#pragma unroll
    for (int e = 0; e < 4; ++e) dst[e] = __float2bfloat16_rn(o[e]);
  }
}

// Y[m][n] = (sum over the splits, in split order, of ws[s][m][n]) * row_scale[m] * g_w[n]. Four
// columns per thread over the padded width Np (float4 loads of the 16-byte aligned workspace),
// columns >= N dropped.
__global__ void __launch_bounds__(256) splitk_reduce_kernel(const Fp4GemmParams prm, int splits) {
  pdl_wait();  // PDL: the GEMM's partials are complete and visible
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= prm.M * prm.Np / 4) return;
  const int64_t row = (4 * i) / prm.Np, col = (4 * i) % prm.Np;
  if (col >= prm.N) return;
  const float4 s = split_sum4(prm, splits, row, col);
  pdl_trigger();  // after the loads (launch.cuh)
  store_sum4(prm, row, col, s);
}

// The swiglu epilogue: y[m][c] = BF16(silu(G) * U) for the I = N / 2 columns c (I % 4 == 0), with
// G = BF16(Y[m][c]) and U = BF16(Y[m][I + c]): the separate kernel's arithmetic on the stored Y.
__global__ void __launch_bounds__(256) splitk_swiglu_kernel(const Fp4GemmParams prm, int splits) {
  pdl_wait();
  const int64_t I = prm.N / 2, quads = I / 4;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= prm.M * quads) return;  // (after the wait: every CTA waits)
  const int64_t row = i / quads, col = (i % quads) * 4;
  const int64_t cols[2] = {col, I + col};
  float4 gu[2];
  split_sums<2>(prm, splits, row, cols, gu);
  pdl_trigger();  // after the loads
  float g[4], u[4], o[4];
  scale_sum4(prm, row, col, gu[0], g);
  scale_sum4(prm, row, I + col, gu[1], u);
#pragma unroll
  for (int e = 0; e < 4; ++e) o[e] = silu_mul(bf16_round(g[e]), bf16_round(u[e]));
  store_bf16x4(prm, row, col, o);
}

// The add_rmsnorm epilogue. One thread block cluster of C CTAs (gridDim.x) per row (blockIdx.y);
// CTA r takes the quads [r Q, (r + 1) Q) of the row's N / 4, V per thread, held in registers
// between the sum of squares and the output. The CTAs' sums are added in rank order through
// distributed shared memory: the same order for a row whatever M is. The shape, 256 threads and
// up to 8 CTAs of one quad per thread (Llama-8B: 4 CTAs), was the fastest of (C, threads) = (8, 128),
// (4, 256), (2, 512), (1, 1024) inside the W4A16 decode step (H200; docs/perf/engine.md, E33).
constexpr int kNormThreads = 256, kMaxNormCluster = 8;
template <int V>
__global__ void __launch_bounds__(kNormThreads) splitk_add_rmsnorm_kernel(const Fp4GemmParams prm, int splits, int Q) {
  __shared__ float warp_ss[kNormThreads / 32];
  __shared__ float cta_ss[kMaxNormCluster];
  const int C = static_cast<int>(gridDim.x), rank = static_cast<int>(blockIdx.x), tid = static_cast<int>(threadIdx.x);
  const int64_t row = blockIdx.y, nq = prm.N / 4;
  const int64_t q0 = static_cast<int64_t>(rank) * Q, q1 = q0 + Q < nq ? q0 + Q : nq;
  if (C > 1) cluster_arrive_relaxed<true>();  // waited for before the first remote store (every CTA started)
  float4 wv[V];  // the norm's weights (written by no kernel) before the wait
#pragma unroll
  for (int v = 0; v < V; ++v) {
    const int64_t j = q0 + v * kNormThreads + tid;
    if (j < q1) wv[v] = reinterpret_cast<const float4*>(prm.norm_w)[j];
  }
  pdl_wait();
  float4* xr = reinterpret_cast<float4*>(prm.x + row * prm.N);
  float4 xv[V];
  float ss = 0.0f;
#pragma unroll
  for (int v = 0; v < V; ++v) {
    const int64_t j = q0 + v * kNormThreads + tid;
    if (j < q1) {
      float o[4];
      scale_sum4(prm, row, 4 * j, split_sum4(prm, splits, row, 4 * j), o);
      float4 a = xr[j];
      a.x += bf16_round(o[0]);
      a.y += bf16_round(o[1]);
      a.z += bf16_round(o[2]);
      a.w += bf16_round(o[3]);
      xr[j] = a;
      xv[v] = a;
      ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
    }
  }
  pdl_trigger();  // after the loads
  for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
  if ((tid & 31) == 0) warp_ss[tid >> 5] = ss;
  if (C > 1) cluster_wait<true>();  // every CTA of the cluster has started: its shared memory exists
  __syncthreads();
  if (tid == 0) {  // the CTA's sum, in warp order, into slot `rank` of every CTA of the cluster
    float t = 0.0f;
    for (int w = 0; w < kNormThreads / 32; ++w) t += warp_ss[w];
    if (C > 1) {
      const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(&cta_ss[rank]));
      for (int r = 0; r < C; ++r) st_cluster_f32(cluster_map(a, static_cast<uint32_t>(r)), t);
    } else {
      cta_ss[0] = t;
    }
  }
  // the pushes happen before every CTA's arrival (release / acquire), and no CTA touches another's
  // shared memory after this barrier, so none can exit while another still writes into it
  if (C > 1) cluster_sync<true>();
  else __syncthreads();
  float total = cta_ss[0];
  for (int r = 1; r < C; ++r) total += cta_ss[r];
  const float inv = 1.0f / sqrtf(total / static_cast<float>(prm.N) + prm.eps);
#pragma unroll
  for (int v = 0; v < V; ++v) {
    const int64_t j = q0 + v * kNormThreads + tid;
    if (j < q1) {
      const float o[4] = {wv[v].x * (xv[v].x * inv), wv[v].y * (xv[v].y * inv), wv[v].z * (xv[v].z * inv),
                          wv[v].w * (xv[v].w * inv)};
      store_bf16x4(prm, row, 4 * j, o);
    }
  }
}

// The norm's cluster size and quads per CTA for N (N % 4 == 0, N <= kMaxFusedNormN).
struct NormShape {
  int C, Q, V;
};
NormShape norm_shape(int64_t N) {
  const int64_t nq = N / 4;
  const int64_t C = std::min<int64_t>(kMaxNormCluster, (nq + kNormThreads - 1) / kNormThreads);
  const int64_t Q = (nq + C - 1) / C, V = (Q + kNormThreads - 1) / kNormThreads;
  return {static_cast<int>(C), static_cast<int>(Q), V <= 1 ? 1 : V <= 2 ? 2 : 4};
}
static_assert(kMaxFusedNormN / 4 <= int64_t{kMaxNormCluster} * kNormThreads * 4, "the norm epilogue's registers");

template <class T, int P, int Block, int NT>
void launch_small(const Fp4GemmParams& prm, int64_t splits, cudaStream_t stream) {
  constexpr int smem = SmallCfg<P, NT, Block>::kSmem;  // opted in by configure_kernels()
  launch_pdl(fp4_small_kernel<T, P, Block, NT>, dim3(static_cast<unsigned>(prm.Np / kBNW), static_cast<unsigned>(splits)),
             dim3(kThreads), smem, stream, prm);
}

void launch_reduce(const Fp4GemmParams& prm, int64_t splits, Fp4Epilogue e, cudaStream_t stream) {
  const int sp = static_cast<int>(splits);
  if (e == Fp4Epilogue::add_rmsnorm) {
    const NormShape ns = norm_shape(prm.N);
    const auto k = ns.V == 1 ? splitk_add_rmsnorm_kernel<1> : ns.V == 2 ? splitk_add_rmsnorm_kernel<2> : splitk_add_rmsnorm_kernel<4>;
    launch_pdl_cluster(k, dim3(static_cast<unsigned>(ns.C), static_cast<unsigned>(prm.M)), dim3(kNormThreads), ns.C, 0,
                       stream, prm, sp, ns.Q);
    return;
  }
  const int64_t quads = e == Fp4Epilogue::swiglu ? prm.M * (prm.N / 8) : prm.M * prm.Np / 4;
  const dim3 grid(static_cast<unsigned>((quads + 255) / 256));
  if (e == Fp4Epilogue::swiglu) launch_pdl(splitk_swiglu_kernel, grid, dim3(256), 0, stream, prm, sp);
  else launch_pdl(splitk_reduce_kernel, grid, dim3(256), 0, stream, prm, sp);
}

// The shared-memory opt-in of every kernel of the family, once per process, from the first plan (a
// GpuLinear's construction at the latest): no launch, hence no graph capture, ever sets an attribute.
template <class T, int P, int Block>
void configure_block() {
  auto set = [](auto kernel, int smem) {
    SHARQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  };
  auto set_prefill = [&](auto kernel, int smem) {
    set(kernel, smem);
    check_kernel_registers(kernel, kWsMinRegs, "fp4_gemm: the prefill kernel");
  };
  set_prefill(fp4_prefill_kernel<T, P, Block, 128, false>, Cfg<P, 128>::kSmem);
  set_prefill(fp4_prefill_kernel<T, P, Block, 256, false>, Cfg<P, 256>::kSmem);
  set_prefill(fp4_prefill_kernel<T, P, Block, 128, true>, Cfg<P, 128>::kSmem);
  set_prefill(fp4_prefill_kernel<T, P, Block, 256, true>, Cfg<P, 256>::kSmem);
  set(fp4_small_kernel<T, P, Block, 8>, SmallCfg<P, 8, Block>::kSmem);
  set(fp4_small_kernel<T, P, Block, 16>, SmallCfg<P, 16, Block>::kSmem);
  set(fp4_small_kernel<T, P, Block, 32>, SmallCfg<P, 32, Block>::kSmem);
  set(fp4_small_kernel<T, P, Block, 64>, SmallCfg<P, 64, Block>::kSmem);
}
// Clusters of c prefill CTAs that the card holds at once (c = 1 .. kMaxPrefillSplits; index c):
// every prefill variant runs one CTA per SM (registers and shared memory), so the count depends on
// c and on how the SMs are grouped into GPCs only; measured once with the largest variant.
int g_cluster_capacity[kMaxPrefillSplits + 1] = {};

void configure_kernels() {
  static std::once_flag once;
  std::call_once(once, [] {
    configure_block<__half, 1, 16>();
    configure_block<__half, 1, 32>();
    configure_block<__half, 2, 16>();
    configure_block<__half, 2, 32>();
    configure_block<__nv_bfloat16, 1, 16>();
    configure_block<__nv_bfloat16, 1, 32>();
    tensor_map_encoder();  // the driver entry point, looked up here: never first inside a graph capture
    g_cluster_capacity[1] = std::max(1, sm_count());
    for (int c = 2; c <= kMaxPrefillSplits; ++c) {
      cudaLaunchAttribute attr;
      const cudaLaunchConfig_t cfg = prefill_config(dim3(1, 1, static_cast<unsigned>(c)), kPrefillThreads, Cfg<2, 256>::kSmem, nullptr, c, attr);
      int n = 0;
      SHARQ_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&n, fp4_prefill_kernel<__half, 2, 32, 256, true>, &cfg));
      g_cluster_capacity[c] = n;  // 0: clusters of c cannot run here (never planned)
    }
  });
}

// Compile-time dispatch of (element type, paths, weight block, token tile).
template <class T, int P, int Block>
void launch_tile(const Fp4GemmParams& prm, const Fp4GemmPlan& plan, cudaStream_t stream) {
  if (plan.kernel == Fp4GemmKernel::prefill) {
    if (plan.nt == 256) launch_prefill<T, P, Block, 256>(prm, stream);
    else launch_prefill<T, P, Block, 128>(prm, stream);
    return;
  }
  switch (plan.nt) {
    case 8: launch_small<T, P, Block, 8>(prm, plan.splits, stream); break;
    case 16: launch_small<T, P, Block, 16>(prm, plan.splits, stream); break;
    case 32: launch_small<T, P, Block, 32>(prm, plan.splits, stream); break;
    default: launch_small<T, P, Block, 64>(prm, plan.splits, stream); break;
  }
}
template <class T, int P>
void launch_block(const Fp4GemmParams& prm, int block, const Fp4GemmPlan& plan, cudaStream_t stream) {
  if (block == 32) launch_tile<T, P, 32>(prm, plan, stream);
  else launch_tile<T, P, 16>(prm, plan, stream);
}

// The split count of the small family, from (N, K) and the SM count only: never from M.
// Cost model (microseconds), fitted to the H200 sweep of docs/perf/hopper.md (log 16): the kernel is
// latency-bound, so a block's k-tile costs kUnitUs on an SM that holds at least kFullBlocks blocks
// of the call and proportionally more on one that holds fewer (too few warps to hide the latency);
// the time is the busiest SM's (ceil(blocks / SMs) blocks of kps k-tiles). Splits > 1 add the
// reduction: its launch and the read of the partials at a fixed reference batch of kRefM rows (the
// partials' writes overlap the weight stream). Measured there: gate_up picks 4 (1: +13%), down 8
// (4: +13%, 16: +1%).
int64_t small_splits(const DeviceFp4Weights& w) {
  constexpr double kUnitUs = 0.55, kReduceUs = 1.5, kBw = 3.0e12;
  constexpr int64_t kRefM = 16, kFullBlocks = 2;
  const int64_t n_blocks = w.Np / kBNW, k_tiles = w.Kp / 128;
  const int64_t sms = std::max(1, sm_count());
  double best = 0;
  int64_t s = 1;
  for (int64_t c = 1; c <= std::min<int64_t>(k_tiles, 256); ++c) {
    const int64_t kps = (k_tiles + c - 1) / c;
    if ((k_tiles + kps - 1) / kps != c) continue;  // same kps as a smaller count
    const int64_t per_sm = (n_blocks * c + sms - 1) / sms;
    double t = static_cast<double>(per_sm * kps) * kUnitUs *
               std::max(1.0, static_cast<double>(kFullBlocks) / static_cast<double>(per_sm));
    if (c > 1) t += kReduceUs + static_cast<double>(c * kRefM * w.Np) * 4.0 / kBw * 1e6;
    if (c == 1 || t < best) {
      best = t;
      s = c;
    }
  }
  return s;
}

// The split count of the prefill family: a cluster of c = 1 .. 8 CTAs per (weight rows, token) tile.
// It pays only while the unsplit grid leaves SMs idle (M = 128 .. 512 on Llama-8B's narrow layers:
// o and down have 32 weight-row tiles, qkv 48, on 132 SMs); on a full grid the splits' fills and
// reductions are pure cost (measured on the earlier cp.async kernel: o at M = 1024, 65 -> 111 us
// with 4 splits), so the count follows the token tiles and therefore M (batch_invariant pins it
// to 1, docs/numerics.md).
// A wave holds g_cluster_capacity[c] clusters (GPC packing: fewer than SMs / c). Only counts that
// leave no split empty and keep >= kMinKTiles k-tiles per split.
bool prefill_split_valid(int64_t c, int64_t k_tiles) {
  if (c < 1 || c > kMaxPrefillSplits || c > k_tiles || g_cluster_capacity[c] <= 0) return false;
  const int64_t kps = (k_tiles + c - 1) / c;
  return (k_tiles + kps - 1) / kps == c;
}
// The per-wave cost model: waves(c) x (k-tiles per split x tile_us + kCtaUs), with tile_us the time
// of one 128-column k-tile of a CTA (twice as long, and a little more, for the exact mode's two
// paths) and kCtaUs a CTA's fill and epilogue. Fitted (H200, b1c3dca) to a sweep of forced counts
// 1, 2, 3, 4, 6, 8 x M 128 .. 1024 x the Llama-3.1-8B and Qwen2.5-7B layers
// (docs/perf/runs/bench_gemm_prefill_splits_sweep_h200_b1c3dca.csv): it picks the fastest count
// at all 32 merged shapes, and at 31 of 32 exact ones (the other within 4.5%).
int64_t prefill_splits(int64_t M, int nt, int paths, const DeviceFp4Weights& w) {
  constexpr double kCtaUs = 15.0, kExactFactor = 2.2;
  constexpr int64_t kMinKTiles = 4;
  const double tile_us = (nt == 256 ? 0.9 : 0.6) * (paths == 2 ? kExactFactor : 1.0);
  const int64_t tiles = (w.Np / kBNW) * ((M + nt - 1) / nt), k_tiles = w.Kp / 128;
  double best = 0;
  int64_t s = 1;
  for (int64_t c = 1; c <= kMaxPrefillSplits; ++c) {
    if (!prefill_split_valid(c, k_tiles)) continue;
    const int64_t kps = (k_tiles + c - 1) / c;
    if (c > 1 && kps < kMinKTiles) continue;
    const int64_t waves = (tiles + g_cluster_capacity[c] - 1) / g_cluster_capacity[c];
    const double t = static_cast<double>(waves) * (static_cast<double>(kps) * tile_us + kCtaUs);
    if (c == 1 || t < best) {
      best = t;
      s = c;
    }
  }
  return s;
}

void check_weights(const DeviceFp4Weights& w) {
  if (w.N <= 0 || w.Np < w.N || w.Np % kBNW != 0 || w.Kp <= 0 || w.Kp % 128 != 0 || w.K > w.Kp)
    throw std::invalid_argument(fmt::format("fp4_gemm: weights N = {}, Np = {}, K = {}, Kp = {} are not a packed "
                                            "Fp4Tiles layout (Np, Kp positive multiples of 128)", w.N, w.Np, w.K, w.Kp));
  if (w.block != 16 && w.block != 32) throw std::invalid_argument(fmt::format("fp4_gemm: weight block {} (16 or 32)", w.block));
  if (!w.codes.get() || !w.scales.get() || !w.g.get()) throw std::invalid_argument("fp4_gemm: weights not uploaded");
  if (w.g.size() != 1 && static_cast<int64_t>(w.g.size()) != w.N)
    throw std::invalid_argument(fmt::format("fp4_gemm: {} weight scales g (1 or N = {})", w.g.size(), w.N));
}

}  // namespace

int fp4_gemm_prefill_clusters_per_wave(int splits) {
  configure_kernels();
  return splits >= 1 && splits <= kMaxPrefillSplits ? g_cluster_capacity[splits] : 0;
}

const char* to_string(Fp4GemmKernel k) {
  switch (k) {
    case Fp4GemmKernel::automatic: return "auto";
    case Fp4GemmKernel::small: return "small";
    case Fp4GemmKernel::prefill: return "prefill";
  }
  return "?";
}

DeviceFp4Weights DeviceFp4Weights::upload(const Fp4Tiles& t) {
  if (t.scale != Fp4Scale::ue4m3)
    throw std::invalid_argument(
        "DeviceFp4Weights::upload: MXFP4 tiles (UE8M0 block scales): the GPU FP4 GEMMs decode UE4M3 (NVFP4) "
        "block scales only");
  DeviceFp4Weights w;
  w.N = t.N; w.K = t.K; w.Np = t.Np; w.Kp = t.Kp; w.block = t.block;
  w.codes = DeviceBuffer<uint8_t>(t.codes.size());
  w.scales = DeviceBuffer<uint8_t>(t.scales.size());
  w.g = DeviceBuffer<float>(t.g.empty() ? 1 : t.g.size());
  w.codes.upload(t.codes.data());
  w.scales.upload(t.scales.data());
  const float one = 1.0f;
  w.g.upload(t.g.empty() ? &one : t.g.data());
  return w;
}

Fp4GemmPlan fp4_gemm_plan(int64_t M, const DeviceFp4Weights& w, Fp4GemmKernel kernel, int splits, bool batch_invariant,
                          int paths) {
  check_weights(w);
  configure_kernels();
  if (M < 0) throw std::invalid_argument(fmt::format("fp4_gemm: M = {}", M));
  if (splits < 0) throw std::invalid_argument(fmt::format("fp4_gemm: splits = {}", splits));
  if (paths != 1 && paths != 2) throw std::invalid_argument(fmt::format("fp4_gemm: paths = {} (1 or 2)", paths));
  Fp4GemmPlan p;
  p.kernel = kernel == Fp4GemmKernel::automatic ? (M <= kSmallMaxM ? Fp4GemmKernel::small : Fp4GemmKernel::prefill)
                                                : kernel;
  const int64_t k_tiles = w.Kp / 128;
  if (p.kernel == Fp4GemmKernel::small) {
    if (M > kSmallMaxM)
      throw std::invalid_argument(fmt::format("fp4_gemm: the small kernel takes M <= {} (M = {})", kSmallMaxM, M));
    p.nt = M <= 8 ? 8 : M <= 16 ? 16 : M <= 32 ? 32 : 64;
    const int64_t s = splits > 0 ? std::min<int64_t>({splits, k_tiles, 65535}) : small_splits(w);
    p.kt_per_split = (k_tiles + s - 1) / s;
    p.splits = (k_tiles + p.kt_per_split - 1) / p.kt_per_split;
    p.workspace_bytes = p.splits > 1 ? static_cast<size_t>(p.splits * M * w.Np) * sizeof(float) : 0;
  } else {
    if (M > int64_t{65535} * 128) throw std::invalid_argument(fmt::format("fp4_gemm: M = {} is too large", M));
    p.nt = M > 128 ? 256 : 128;
    int64_t s = 1;
    if (splits > 0) {  // forced: the largest valid count <= the request
      for (int64_t c = std::min<int64_t>(splits, kMaxPrefillSplits); c > 1; --c)
        if (prefill_split_valid(c, k_tiles)) {
          s = c;
          break;
        }
    } else if (!batch_invariant) {
      s = prefill_splits(M, p.nt, paths, w);
    }
    p.splits = s;
    p.kt_per_split = (k_tiles + s - 1) / s;
  }
  return p;
}

bool fp4_gemm_fuses(const Fp4GemmPlan& plan, Fp4Epilogue e, int64_t N) {
  if (plan.kernel != Fp4GemmKernel::small || plan.splits < 2 || N <= 0) return false;
  switch (e) {
    case Fp4Epilogue::swiglu: return N % 8 == 0;
    case Fp4Epilogue::add_rmsnorm: return N % 4 == 0 && N <= kMaxFusedNormN;
    default: return false;
  }
}

size_t fp4_gemm_workspace_bytes(int64_t max_M, const DeviceFp4Weights& w, Fp4GemmKernel kernel, int splits,
                                bool batch_invariant) {
  if (max_M <= 0) return 0;
  // Only the small family uses a workspace, and its split count does not depend on M: the largest
  // small-family M needs the most. (The prefill family sums its splits in shared memory.)
  const bool prefill = kernel == Fp4GemmKernel::prefill;
  const int64_t m = prefill ? max_M : std::min(max_M, kSmallMaxM);
  return fp4_gemm_plan(m, w, prefill ? kernel : Fp4GemmKernel::small, splits, batch_invariant)
      .workspace_bytes;
}

void fp4_gemm(const Fp4GemmArgs& a, const DeviceFp4Weights& w, void* workspace, size_t workspace_bytes,
              cudaStream_t stream, Fp4GemmKernel kernel, int splits, bool batch_invariant) {
  const Fp4GemmPlan plan = fp4_gemm_plan(a.M, w, kernel, splits, batch_invariant, a.a1 ? 2 : 1);  // checks the weights, M, splits
  if (a.M == 0) return;
  if (!a.a0 || (!a.y && !a.y_f32)) throw std::invalid_argument("fp4_gemm: null activation or output pointer");
  if (a.adt == DType::bf16 && a.a1) throw std::invalid_argument("fp4_gemm: the two-path (exact) mode takes FP16 planes");
  if (a.lda < w.Kp || a.lda % 8 != 0)
    throw std::invalid_argument(fmt::format("fp4_gemm: lda = {} must be >= Kp = {} and a multiple of 8", a.lda, w.Kp));
  const int64_t y_cols = a.epilogue == Fp4Epilogue::swiglu ? w.N / 2 : w.N;
  if (a.ldy < y_cols) throw std::invalid_argument(fmt::format("fp4_gemm: ldy = {} must be >= {}", a.ldy, y_cols));
  if (a.epilogue != Fp4Epilogue::none) {
    const char* name = a.epilogue == Fp4Epilogue::swiglu ? "swiglu" : "add_rmsnorm";
    if (!fp4_gemm_fuses(plan, a.epilogue, w.N))
      throw std::invalid_argument(fmt::format("fp4_gemm: the {} epilogue runs in the small family's split-K reduction "
                                              "only (M = {}, N = {}, {} kernel, {} splits)", name, a.M, w.N,
                                              to_string(plan.kernel), plan.splits));
    if (!a.y || a.y_f32) throw std::invalid_argument(fmt::format("fp4_gemm: the {} epilogue writes y (BF16) only", name));
    if (a.epilogue == Fp4Epilogue::add_rmsnorm &&
        (!a.x || !a.norm_w || reinterpret_cast<uintptr_t>(a.x) % 16 || reinterpret_cast<uintptr_t>(a.norm_w) % 16))
      throw std::invalid_argument("fp4_gemm: the add_rmsnorm epilogue needs x and norm_w, 16-byte aligned");
  }
  if (a.row_scale && a.row_scale_count != 1 && a.row_scale_count != a.M)
    throw std::invalid_argument(fmt::format("fp4_gemm: row_scale_count = {} (1 or M = {})", a.row_scale_count, a.M));
  const auto misaligned = [](const void* p, uintptr_t n) { return p && reinterpret_cast<uintptr_t>(p) % n != 0; };
  if (misaligned(a.a0, 16) || misaligned(a.a1, 16))
    throw std::invalid_argument("fp4_gemm: the activation planes must be 16-byte aligned (TMA and 16-byte async copies)");
  if (misaligned(a.y, 2) || misaligned(a.y_f32, 4) || misaligned(a.bias, 4) || misaligned(a.row_scale, 4))
    throw std::invalid_argument("fp4_gemm: the output, the bias and the row scales must be aligned to their element type");
  if (plan.workspace_bytes && (!workspace || workspace_bytes < plan.workspace_bytes || misaligned(workspace, 16)))
    throw std::invalid_argument(fmt::format("fp4_gemm: needs {} bytes of 16-byte aligned workspace for M = {}, N = {} "
                                            "({} splits), got {}", plan.workspace_bytes, a.M, w.N, plan.splits,
                                            workspace ? workspace_bytes : 0));

  Fp4GemmParams prm;
  prm.a0 = static_cast<const uint8_t*>(a.a0);
  prm.a1 = static_cast<const uint8_t*>(a.a1);
  prm.M = a.M;
  prm.lda_bytes = a.lda * 2;
  prm.codes = w.codes.get();
  prm.scales = w.scales.get();
  prm.gw = w.g.get();
  prm.gw_per_col = w.g.size() == 1 ? 0 : 1;
  prm.rs = a.row_scale;
  prm.rs_per_row = (a.row_scale && a.row_scale_count == a.M && a.M != 1) ? 1 : 0;
  prm.N = w.N;
  prm.Np = w.Np;
  prm.k_tiles = w.Kp / 128;
  prm.kt_per_split = plan.kt_per_split;
  prm.splits = plan.kernel == Fp4GemmKernel::prefill ? static_cast<int>(plan.splits) : 1;
  prm.y = a.y;
  prm.y_f32 = a.y_f32;
  prm.ldy = a.ldy;
  prm.bias = a.bias;
  const auto yaddr = reinterpret_cast<uintptr_t>(a.y);
  prm.y_store = (a.ldy % 8 == 0 && yaddr % 16 == 0) ? 16 : (a.ldy % 2 == 0 && yaddr % 4 == 0) ? 4 : 2;
  prm.ws = plan.workspace_bytes ? static_cast<float*>(workspace) : nullptr;
  prm.x = a.x;
  prm.norm_w = a.norm_w;
  prm.eps = a.eps;

  if (a.adt == DType::bf16) launch_block<__nv_bfloat16, 1>(prm, w.block, plan, stream);
  else if (a.a1) launch_block<__half, 2>(prm, w.block, plan, stream);
  else launch_block<__half, 1>(prm, w.block, plan, stream);
  if (plan.workspace_bytes) launch_reduce(prm, plan.splits, a.epilogue, stream);  // the small family's splits
}

}  // namespace sharq::cuda
