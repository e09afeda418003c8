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
// CTA = 256 threads = 2 warpgroups. CTA tile: 128 weight rows (n) x NT tokens (m), NT = 256 (M > 128)
// or 128; warpgroup wg owns weight rows 64 wg .. 64 wg + 63 (one m64 wgmma slab) and all NT tokens:
// its accumulators are D^T[64][NT] (NT / 2 FP32 registers per thread). BK = 64 per k-step.
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
// r * 128 + ((c ^ (r & 7)) << 4). Tiles are 1024-byte aligned (dynamic smem base rounded up), so
// this is exactly the hardware's 128B swizzle (address bits [4,7) ^= bits [7,10)) and the
// descriptor base-offset field stays 0. Stage bytes P * NT * 128: 32 KB (P=1, NT=256) .. 64 KB
// (P=2, NT=256: 3 stages, else 4). The epilogue reuses the stage memory for a [NT][136] BF16
// transpose buffer.
//
// Descriptor (PTX ISA "Matrix Descriptor Format"): bits 0-13 = (addr & 0x3FFFF) >> 4, 16-29 =
// leading byte offset >> 4 (unused for a swizzled K-major operand whose k16 slice, 32 bytes, lies
// inside the 128-byte swizzle row: 1), 32-45 = stride byte offset >> 4 (1024 B between 8-row
// groups: 64), 49-51 = base offset (0), 62-63 = swizzle mode (1 = 128B). The k16 step kk starts at
// byte 32 kk of the tile: the address field advances by 2 per step; the hardware XOR on the
// absolute address bits then reproduces the store pattern above.
//
// Pipeline. Step i (k-step i, stage i % S), activation copies are cp.async (16 B, zero-filled past
// row M - 1: src-size 0, source clamped to row 0), weights are register-prefetched one 128-column
// tile ahead, weight fragments double-buffered in registers (fA for even steps, fB for odd):
//   (1) cp.async.wait_group S - 3       this thread's copies of step i have landed
//   (2) fence.proxy.async.shared::cta   its generic-proxy (cp.async) writes -> async proxy
//   (3) __syncthreads                   every thread's copies of step i are visible to every wgmma
//   (4) wgmma.fence; 4 P wgmma (frags of step i, tiles of stage i % S); commit
//   (5) wgmma.wait_group 1              this warpgroup's wgmma(i - 1) has completed
//   (6) cp.async of step i + S - 2 into stage (i - 2) % S; commit (possibly empty)
//   (7) decode the fragments of step i + 1 into the buffer wgmma(i - 1) read
// Hazards:
//   - (6) overwrites stage (i - 2) % S, read by wgmma(i - 2) of BOTH warpgroups (the activation
//     tile is shared). The own one completed at (5). The other warpgroup passed barrier (3) of step
//     i, so it had executed (5) of step i - 1, where its wgmma(i - 2) completed. (Writing stage
//     (i - 1) % S would be a race: the other warpgroup's wgmma(i - 1) may still be reading it.)
//   - (7) rewrites the registers wgmma(i - 1) read: complete at (5). ptxas sees the register
//     reads of in-flight wgmma and would serialize (and warn) rather than break them.
//   - (1): the prologue commits S - 2 groups (steps 0 .. S - 3), each step one more: at step i,
//     S - 2 + i groups are committed, the newest S - 3 (steps i + 1 ..) may stay in flight.
//   - wgmma(i) and wgmma(i - 1) of a warpgroup are in flight together on the same accumulators:
//     allowed (same shape, ordered by the hardware). Ordinary instructions touch the accumulators
//     only after wgmma.wait_group 0; empty asm "+f" fences pin the accumulator accesses in place.
//   - Epilogue: wgmma.wait_group 0, cp.async.wait_group 0 and a barrier before the stage memory
//     is reused for the transpose; a second barrier before it is read back.
#include "sharq/kernels/cuda/fp4_gemm.h"
#include "sharq/kernels/cuda/fp4_decode.cuh"

#include <cuda_fp8.h>

#include <cstdint>
#include <stdexcept>
#include <type_traits>

#include <fmt/format.h>

namespace sharq::cuda {
namespace {

constexpr int kBNW = 128;         // weight rows per CTA (2 warpgroups x m64)
constexpr int kThreads = 256;
constexpr int kRowBytes = 128;    // one swizzled activation row: 64 halves
constexpr int kEpiPitch = (kBNW + 8) * 2;  // bytes per token row of the epilogue transpose buffer

template <int P, int NT>
struct Cfg {
  static constexpr int kTileBytes = NT * kRowBytes;  // one path's activation tile
  static constexpr int kStageBytes = P * kTileBytes;
  static constexpr int kStages = 4 * kStageBytes <= 200 * 1024 ? 4 : 3;
  static constexpr int kPipeBytes = kStages * kStageBytes;
  static constexpr int kEpiBytes = NT * kEpiPitch;
  static constexpr int kSmem = (kPipeBytes > kEpiBytes ? kPipeBytes : kEpiBytes) + 1024;  // + base alignment
  static constexpr int kAcc = NT / 2;                // FP32 accumulators per thread
  static_assert(kStageBytes % 1024 == 0 && kTileBytes % 1024 == 0, "tiles must stay 1024-byte aligned");
  static_assert(kStages >= 3, "the pipeline needs 3 stages (see the hazard notes)");
  static_assert(kSmem <= 227 * 1024, "shared memory");
};

struct PrefillParams {
  const uint8_t* a0;
  const uint8_t* a1;
  int64_t M, lda_bytes;
  const uint8_t* codes;
  const uint8_t* scales;
  const float* gw;
  int gw_per_col;
  const float* rs;
  int rs_per_row;
  int64_t k_tiles;  // Kp / 128
  __nv_bfloat16* y;
  float* y_f32;     // non-null: FP32 output instead of y (tests), written straight from the fragments
  int64_t ldy;
  int y_vec16;      // rows of Y are 16-byte aligned (16-byte stores)
};

// ---- PTX helpers ----------------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async16_zfill(uint32_t dst, const void* src, uint32_t src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

__device__ __forceinline__ uint4 ldg_nc_v4(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}
__device__ __forceinline__ uint2 ldg_nc_v2(const void* p) {
  uint2 v;
  asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "l"(p));
  return v;
}
__device__ __forceinline__ uint32_t ldg_nc_u32(const void* p) {
  uint32_t v;
  asm volatile("ld.global.nc.L1::no_allocate.u32 %0, [%1];\n" : "=r"(v) : "l"(p));
  return v;
}
__device__ __forceinline__ void sts16(uint32_t a, uint16_t v) {
  asm volatile("st.shared.u16 [%0], %1;\n" ::"r"(a), "h"(v) : "memory");
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
__device__ __forceinline__ void fence_proxy_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }

// Pins accumulator / fragment registers: no access is moved across the (volatile) wgmma statements.
template <int N>
__device__ __forceinline__ void fence_regs(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
__device__ __forceinline__ void fence_regs(uint32_t (&f)[4][4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(f[i][j])::"memory");
}

// K-major, 128B-swizzled operand: SBO = 1024 B (encoded 64), LBO unused (1), swizzle mode 1.
__device__ __forceinline__ uint64_t make_desc(uint32_t saddr) {
  return static_cast<uint64_t>((saddr & 0x3FFFFu) >> 4) | (uint64_t{1} << 16) | (uint64_t{1024 >> 4} << 32) |
         (uint64_t{1} << 62);
}

#define SHARQ_WG_D64                                                                                 \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, " \
  "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, "  \
  "%40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, "  \
  "%59, %60, %61, %62, %63}"
#define SHARQ_WG_D128                                                                                \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, " \
  "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, "  \
  "%40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, "  \
  "%59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, "  \
  "%78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, "  \
  "%97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, "     \
  "%113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}"
#define SHARQ_WG_F4(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3])
#define SHARQ_WG_F16(i) SHARQ_WG_F4(i), SHARQ_WG_F4(i + 4), SHARQ_WG_F4(i + 8), SHARQ_WG_F4(i + 12)
#define SHARQ_WG_F64(i) SHARQ_WG_F16(i), SHARQ_WG_F16(i + 16), SHARQ_WG_F16(i + 32), SHARQ_WG_F16(i + 48)

// D (64 x NT, FP32) += A (64 x 16, registers) * B^T (NT x 16, smem, K-major).
template <class T, int NT>
__device__ __forceinline__ void wgmma_rs(float (&d)[NT / 2], const uint32_t (&a)[4], uint64_t db) {
  static_assert(NT == 128 || NT == 256, "NT");
  constexpr bool kHalf = std::is_same_v<T, __half>;
  if constexpr (NT == 128 && kHalf) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " SHARQ_WG_D64
                 ", {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
                 : SHARQ_WG_F64(0)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(1)
                 : "memory");
  } else if constexpr (NT == 128) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " SHARQ_WG_D64
                 ", {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
                 : SHARQ_WG_F64(0)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(1)
                 : "memory");
  } else if constexpr (kHalf) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 " SHARQ_WG_D128
                 ", {%128, %129, %130, %131}, %132, p, 1, 1, 0;\n}\n"
                 : SHARQ_WG_F64(0), SHARQ_WG_F64(64)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(1)
                 : "memory");
  } else {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 " SHARQ_WG_D128
                 ", {%128, %129, %130, %131}, %132, p, 1, 1, 0;\n}\n"
                 : SHARQ_WG_F64(0), SHARQ_WG_F64(64)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(1)
                 : "memory");
  }
}
#undef SHARQ_WG_D64
#undef SHARQ_WG_D128
#undef SHARQ_WG_F4
#undef SHARQ_WG_F16
#undef SHARQ_WG_F64

// ---- weight decode --------------------------------------------------------------------------
template <class T> struct Pair;
template <> struct Pair<__half> { using type = __half2; };
template <> struct Pair<__nv_bfloat16> { using type = __nv_bfloat162; };


// Scale pairs (pre-multiplied by 2^7 / 2^118) and one-multiply pair decode: fp4_decode.cuh.
template <class T>
__device__ __forceinline__ typename Pair<T>::type scale_pair(uint32_t two_bytes) { return Fp4Pair<T>::scale_pair(two_bytes); }
template <class T>
__device__ __forceinline__ typename Pair<T>::type bcast_lo(typename Pair<T>::type v) { return sharq::cuda::bcast_lo(v); }
template <class T>
__device__ __forceinline__ typename Pair<T>::type bcast_hi(typename Pair<T>::type v) { return sharq::cuda::bcast_hi(v); }
template <class T>
__device__ __forceinline__ uint32_t decode_pair(uint32_t x, typename Pair<T>::type scale2) { return Fp4Pair<T>::decode(x, scale2); }

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
  using V = typename Pair<T>::type;
  V sc[2][4];  // [tile][kk]
#pragma unroll
  for (int t = 0; t < 2; ++t) {
    if constexpr (Block == 32) {
      const V s = scale_pair<T>(r.s[t][0] >> (16 * H));  // blocks (words) 2H, 2H + 1
      sc[t][0] = sc[t][1] = bcast_lo<T>(s);
      sc[t][2] = sc[t][3] = bcast_hi<T>(s);
    } else {
      const uint32_t w = r.s[t][H];                       // blocks 4H .. 4H + 3
      const V s01 = scale_pair<T>(w), s23 = scale_pair<T>(w >> 16);
      sc[t][0] = bcast_lo<T>(s01);
      sc[t][1] = bcast_hi<T>(s01);
      sc[t][2] = bcast_lo<T>(s23);
      sc[t][3] = bcast_hi<T>(s23);
    }
  }
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    const int jj = kk >> 1, plo = 2 * (kk & 1);
    const uint32_t w0 = (H == 0) ? (jj ? r.c[0].y : r.c[0].x) : (jj ? r.c[0].w : r.c[0].z);
    const uint32_t w1 = (H == 0) ? (jj ? r.c[1].y : r.c[1].x) : (jj ? r.c[1].w : r.c[1].z);
    f[kk][0] = decode_pair<T>(w0 >> (4 * plo), sc[0][kk]);        // row g,     cols 2q, 2q+1
    f[kk][1] = decode_pair<T>(w1 >> (4 * plo), sc[1][kk]);        // row g + 8
    f[kk][2] = decode_pair<T>(w0 >> (4 * (plo + 1)), sc[0][kk]);  // row g,     cols 2q+8, 2q+9
    f[kk][3] = decode_pair<T>(w1 >> (4 * (plo + 1)), sc[1][kk]);  // row g + 8
  }
}

// ---- the kernel -----------------------------------------------------------------------------
template <class T, int P, int Block, int NT>
__global__ void __launch_bounds__(kThreads, 1) fp4_prefill_kernel(const PrefillParams prm) {
  using C = Cfg<P, NT>;
  constexpr int S = C::kStages;
  extern __shared__ uint8_t smem_raw[];
  const uint32_t smem0 = (smem_u32(smem_raw) + 1023u) & ~1023u;

  const int tid = static_cast<int>(threadIdx.x);
  const int wg = tid >> 7, w = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, q = lane & 3;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kBNW;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * NT;
  const int ksteps = static_cast<int>(prm.k_tiles * 2);

  // Activation copies: chunk tid & 7 of token rows (tid >> 3) + 32 it, it < NT / 32.
  constexpr int kIt = NT / 32;
  const int c_chunk = tid & 7, c_row0 = tid >> 3;
  const uint32_t c_sm = static_cast<uint32_t>(c_row0 * kRowBytes + ((c_chunk ^ (c_row0 & 7)) << 4));  // + it * 4096
  const int64_t rows_left = prm.M - m0 - c_row0;  // row (c_row0 + 32 it) is valid iff 32 it < rows_left
  const int64_t c_goff = (m0 + c_row0) * prm.lda_bytes + c_chunk * 16;
  const int64_t c_gstep = 32 * prm.lda_bytes;

  auto issue_copies = [&](int ks) {
    const uint32_t sb = smem0 + static_cast<uint32_t>((ks % S) * C::kStageBytes) + c_sm;
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const uint8_t* base = (p == 0 ? prm.a0 : prm.a1);
      const uint8_t* src = base + c_goff + static_cast<int64_t>(ks) * kRowBytes;
#pragma unroll
      for (int it = 0; it < kIt; ++it) {
        const bool ok = 32 * it < rows_left;
        cp_async16_zfill(sb + p * C::kTileBytes + it * 32 * kRowBytes, ok ? src + it * c_gstep : base + c_chunk * 16,
                         ok ? 16u : 0u);
      }
    }
  };

  // Weights: this warp's two 8-row tiles (rows n0 + 64 wg + 16 w + {0..7, 8..15}).
  const int64_t tile0 = (n0 + 64 * wg + 16 * w) / 8;
  constexpr int kScaleTile = 8 * (128 / Block);  // scale bytes per tile
  const uint8_t* codes_t0 = prm.codes + tile0 * prm.k_tiles * 512 + lane * 16;
  const uint8_t* scales_t0 = prm.scales + tile0 * prm.k_tiles * kScaleTile + g * (128 / Block);
  const int64_t tcs = prm.k_tiles * 512, tss = prm.k_tiles * kScaleTile;

  float acc[C::kAcc];
#pragma unroll
  for (int i = 0; i < C::kAcc; ++i) acc[i] = 0.0f;
  uint32_t fA[4][4], fB[4][4];
  RawW<Block> rc, rn;

  // prologue: activation steps 0 .. S - 3 (one group each), weights of k-tile 0, fragments of step 0
#pragma unroll
  for (int s = 0; s < S - 2; ++s) {
    if (s < ksteps) issue_copies(s);
    cp_async_commit();
  }
  load_raw<Block>(rc, codes_t0, scales_t0, tcs, tss, 0);
  decode_step<T, Block, 0>(rc, fA);

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
      for (int kk = 0; kk < 4; ++kk) wgmma_rs<T, NT>(acc, f[kk], db + 2 * kk);  // + 32 bytes per k16
    }
    wgmma_commit();
    fence_regs(acc);
    wgmma_wait<1>();
    fence_regs(acc);
    if (i + S - 2 < ksteps) issue_copies(i + S - 2);
    cp_async_commit();
  };

  for (int64_t kt = 0; kt < prm.k_tiles; ++kt) {
    const bool more = kt + 1 < prm.k_tiles;
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
  cp_async_wait<0>();
  __syncthreads();  // every warpgroup is done with the stage memory

  if (prm.y_f32) {  // uniform across the block: the test-only FP32 output, no transpose
    const int na = 64 * wg + 16 * w + g, nb = na + 8;
    const float ga = prm.gw[prm.gw_per_col ? n0 + na : 0] * Fp4Pair<T>::kPost,
                gb = prm.gw[prm.gw_per_col ? n0 + nb : 0] * Fp4Pair<T>::kPost;  // exact power of 2
#pragma unroll
    for (int j = 0; j < NT / 8; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t t = m0 + 8 * j + 2 * q + h;
        if (t >= prm.M) continue;
        const float r = prm.rs ? prm.rs[prm.rs_per_row ? t : 0] : 1.0f;
        prm.y_f32[t * prm.ldy + n0 + na] = acc[4 * j + h] * (r * ga);
        prm.y_f32[t * prm.ldy + n0 + nb] = acc[4 * j + 2 + h] * (r * gb);
      }
    return;
  }
  // Epilogue 1: D^T fragments -> scaled BF16, transposed into smem [NT tokens][kBNW + 8].
  // d[4j + {0,1}] = D^T[16 w + g][8 j + 2 q + {0,1}], d[4j + {2,3}] = row + 8.
  {
    const int na = 64 * wg + 16 * w + g, nb = na + 8;
    const float ga = prm.gw[prm.gw_per_col ? n0 + na : 0] * Fp4Pair<T>::kPost,
                gb = prm.gw[prm.gw_per_col ? n0 + nb : 0] * Fp4Pair<T>::kPost;  // exact power of 2
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
      sts16(row0 + 2 * na, __bfloat16_as_ushort(__float2bfloat16_rn(acc[4 * j + 0] * (r0 * ga))));
      sts16(row1 + 2 * na, __bfloat16_as_ushort(__float2bfloat16_rn(acc[4 * j + 1] * (r1 * ga))));
      sts16(row0 + 2 * nb, __bfloat16_as_ushort(__float2bfloat16_rn(acc[4 * j + 2] * (r0 * gb))));
      sts16(row1 + 2 * nb, __bfloat16_as_ushort(__float2bfloat16_rn(acc[4 * j + 3] * (r1 * gb))));
    }
  }
  __syncthreads();
  // Epilogue 2: token rows < M out to Y, coalesced.
  const int64_t rows = prm.M - m0 < NT ? prm.M - m0 : NT;
  if (prm.y_vec16) {
    for (int idx = tid; idx < rows * 16; idx += kThreads) {
      const int t = idx >> 4, c = idx & 15;
      const uint4 v = lds128(smem0 + static_cast<uint32_t>(t * kEpiPitch + c * 16));
      *reinterpret_cast<uint4*>(prm.y + (m0 + t) * prm.ldy + n0 + c * 8) = v;
    }
  } else {
    for (int idx = tid; idx < rows * 64; idx += kThreads) {
      const int t = idx >> 6, c = idx & 63;
      const uint32_t v = lds32(smem0 + static_cast<uint32_t>(t * kEpiPitch + c * 4));
      *reinterpret_cast<uint32_t*>(prm.y + (m0 + t) * prm.ldy + n0 + c * 2) = v;
    }
  }
}

template <class T, int P, int Block, int NT>
void launch(const PrefillParams& prm, int64_t N, cudaStream_t stream) {
  auto kernel = fp4_prefill_kernel<T, P, Block, NT>;
  constexpr int smem = Cfg<P, NT>::kSmem;
  static const bool configured = [&] {
    SHARQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    return true;
  }();
  (void)configured;
  const dim3 grid(static_cast<unsigned>(N / kBNW), static_cast<unsigned>((prm.M + NT - 1) / NT));
  kernel<<<grid, kThreads, smem, stream>>>(prm);
  SHARQ_CUDA_CHECK(cudaGetLastError());
}

template <class T, int P>
void launch_shape(const PrefillParams& prm, int block, int64_t N, cudaStream_t stream) {
  const bool wide = prm.M > 128;  // 256 tokens per CTA, else 128
  if (block == 32) {
    if (wide) launch<T, P, 32, 256>(prm, N, stream);
    else launch<T, P, 32, 128>(prm, N, stream);
  } else {
    if (wide) launch<T, P, 16, 256>(prm, N, stream);
    else launch<T, P, 16, 128>(prm, N, stream);
  }
}

}  // namespace

void fp4_gemm_prefill(const Fp4GemmArgs& a, const DeviceFp4Weights& w, cudaStream_t stream) {
  if (w.N <= 0 || w.N % kBNW != 0)
    throw std::invalid_argument(fmt::format("fp4_gemm_prefill: N = {} must be a positive multiple of {}", w.N, kBNW));
  if (w.Kp <= 0 || w.Kp % 128 != 0)
    throw std::invalid_argument(fmt::format("fp4_gemm_prefill: Kp = {} must be a positive multiple of 128", w.Kp));
  if (w.block != 16 && w.block != 32)
    throw std::invalid_argument(fmt::format("fp4_gemm_prefill: weight block {} (16 or 32)", w.block));
  if (a.M < 0) throw std::invalid_argument(fmt::format("fp4_gemm_prefill: M = {}", a.M));
  if (a.M == 0) return;
  if (a.M > int64_t{65535} * 128) throw std::invalid_argument(fmt::format("fp4_gemm_prefill: M = {} is too large", a.M));
  if (!a.a0 || (!a.y && !a.y_f32) || !w.codes.get() || !w.scales.get() || !w.g.get())
    throw std::invalid_argument("fp4_gemm_prefill: null activation, output or weight pointer");
  if (a.lda < w.Kp || a.lda % 8 != 0)
    throw std::invalid_argument(fmt::format("fp4_gemm_prefill: lda = {} must be >= Kp = {} and a multiple of 8", a.lda, w.Kp));
  if (a.ldy < w.N || a.ldy % 2 != 0)
    throw std::invalid_argument(fmt::format("fp4_gemm_prefill: ldy = {} must be >= N = {} and even", a.ldy, w.N));
  const auto misaligned = [](const void* p, uintptr_t n) { return p && reinterpret_cast<uintptr_t>(p) % n != 0; };
  if (misaligned(a.a0, 16) || misaligned(a.a1, 16) || misaligned(a.y, 4) || misaligned(a.y_f32, 4) || misaligned(w.codes.get(), 16) ||
      misaligned(w.scales.get(), 8))
    throw std::invalid_argument("fp4_gemm_prefill: misaligned operand (A needs 16 bytes, Y 4)");
  if (a.row_scale && a.row_scale_count != 1 && a.row_scale_count != a.M)
    throw std::invalid_argument(
        fmt::format("fp4_gemm_prefill: row_scale_count = {} (1 or M = {})", a.row_scale_count, a.M));
  if (w.g.size() != 1 && static_cast<int64_t>(w.g.size()) != w.N)
    throw std::invalid_argument(fmt::format("fp4_gemm_prefill: {} weight scales g (1 or N = {})", w.g.size(), w.N));

  PrefillParams prm;
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
  prm.k_tiles = w.Kp / 128;
  prm.y = a.y;
  prm.y_f32 = a.y_f32;
  prm.ldy = a.ldy;
  prm.y_vec16 = (a.ldy % 8 == 0 && reinterpret_cast<uintptr_t>(a.y) % 16 == 0) ? 1 : 0;

  const bool two = a.a1 != nullptr;
  if (a.adt == DType::bf16) {
    if (two) launch_shape<__nv_bfloat16, 2>(prm, w.block, w.N, stream);
    else launch_shape<__nv_bfloat16, 1>(prm, w.block, w.N, stream);
  } else {
    if (two) launch_shape<__half, 2>(prm, w.block, w.N, stream);
    else launch_shape<__half, 1>(prm, w.block, w.N, stream);
  }
}

}  // namespace sharq::cuda
