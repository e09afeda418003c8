// The Hopper PTX primitives that more than one kernel family uses: shared-memory addresses,
// cp.async, mbarriers, the warp-specialized register split, wgmma (fences, groups, shared-memory
// descriptors, the register-A and the shared-memory-A forms), and the warp-level ldmatrix / mma.sync
// forms of the decode attention.
//
// wgmma shared-memory operands (PTX ISA, "asynchronous warpgroup-level matrix shared memory
// layout"), 16-bit elements, 128B swizzle: a tile is stored as rows of 64 elements (128 bytes),
// 8-row atoms of 1024 bytes at 1024-byte aligned addresses, the 16-byte chunk c of row r at chunk
// c ^ (r & 7) of that row (the hardware swizzle: address bits [4,7) ^= bits [7,10)). A dimension
// longer than 64 elements continues in further 64-wide slabs.
//   K-major  (the K dimension along the 128-byte rows): SBO = the step between 8-row groups
//            (1024 B for rows of one slab), LBO unused (1); a k16 step inside the slab moves the
//            start address by 32 B.
//   MN-major (the M / N dimension along the rows; imm-trans = 1): SBO = the step between 8-row
//            groups along K (1024 B), LBO = the step between 64-element slabs along M / N; a k16
//            step moves the start address by 16 rows (2048 B).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace sharq::cuda {

// Global loads that bypass L1 (.nc: read-only for the kernel's lifetime; no_allocate: streamed once,
// so they do not evict what L1 holds): the weight streams of the GEMM families.
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
// One 16-byte global store (p 16-byte aligned). A uint4 assigned through a cast pointer is not always
// kept whole: nvcc split the SharQ prep's plane stores into four 4-byte stores (PTX st.global.u32 x 4).
__device__ __forceinline__ void stg_v4(void* p, uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"l"(p), "r"(a), "r"(b), "r"(c), "r"(d) : "memory");
}
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}
// src_bytes < 16: the rest of the 16 bytes is zero-filled (0: nothing is read from src).
__device__ __forceinline__ void cp_async16_zfill(uint32_t dst, const void* src, uint32_t src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
// Orders this thread's generic-proxy shared-memory writes (st.shared, completed cp.async) before
// later async-proxy reads (wgmma, TMA); a barrier after it extends that to the whole CTA.
__device__ __forceinline__ void fence_proxy_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// The cluster barrier: every thread of every CTA of the cluster arrives once per phase, then waits
// for the phase. A relaxed arrival publishes nothing (for a kernel that must know every CTA of its
// cluster has started before its first access to another CTA's shared memory, without waiting at
// its start: arrive early, wait just before that access); a release arrival makes this thread's
// earlier writes (distributed shared memory included) visible to the threads that then wait (wait
// has acquire semantics). kAligned: the .aligned forms, which need every thread of the warp to
// execute the same barrier instruction together (converged).
template <bool kAligned = false>
__device__ __forceinline__ void cluster_arrive_relaxed() {
  if constexpr (kAligned) asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
  else asm volatile("barrier.cluster.arrive.relaxed;\n" ::: "memory");
}
template <bool kAligned = false>
__device__ __forceinline__ void cluster_arrive_release() {
  if constexpr (kAligned) asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
  else asm volatile("barrier.cluster.arrive.release;\n" ::: "memory");
}
template <bool kAligned = false>
__device__ __forceinline__ void cluster_wait() {
  if constexpr (kAligned) asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
  else asm volatile("barrier.cluster.wait.acquire;\n" ::: "memory");
}
// Both halves: the shared-memory writes of every CTA before it are visible to every CTA after it.
template <bool kAligned = false>
__device__ __forceinline__ void cluster_sync() {
  cluster_arrive_release<kAligned>();
  cluster_wait<kAligned>();
}

// mbarriers (shared::cta): init with an arrival count; arrive (one arrival); arrive with an
// expected transaction byte count (TMA); wait for the phase of the given parity to complete.
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// One arrival on `bar` once all of this thread's earlier cp.async copies have completed (the count
// given at init includes it: .noinc).
__device__ __forceinline__ void cp_async_mbar_arrive(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n.reg .pred p;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  while (!mbar_try_wait(bar, parity)) {
  }
}

// Warp-specialized kernels: one producer warpgroup and two consumer warpgroups (kWsThreads = 384, one
// CTA per SM). setmaxnreg moves registers inside the CTA's own allocation (384 x the launch count), so
// the consumers' increase is served only by the producer's decrease: the kernel must be compiled to at
// least kWsMinRegs per thread, or the consumers wait in setmaxnreg.inc forever. ptxas gives 168 under
// __launch_bounds__(384, 1); check_kernel_registers (launch.cuh) checks it on the host.
constexpr int kWsThreads = 384;
constexpr int kWsProducerRegs = 40, kWsConsumerRegs = 232;
constexpr int kWsMinRegs = (128 * kWsProducerRegs + 256 * kWsConsumerRegs + kWsThreads - 1) / kWsThreads;  // 168
static_assert(kWsMinRegs * kWsThreads <= 65536, "the register file");
__device__ __forceinline__ void ws_producer_registers() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kWsProducerRegs));
}
__device__ __forceinline__ void ws_consumer_registers() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kWsConsumerRegs));
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Pins accumulator / fragment registers: no access is moved across the (volatile) wgmma statements.
template <int N>
__device__ __forceinline__ void fence_regs(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
template <int N>
__device__ __forceinline__ void fence_regs(uint32_t (&f)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(f[i][j])::"memory");
}

// 128B-swizzled operand descriptors (see the top of this file); saddr 16-byte aligned, its atom
// 1024-byte aligned.
__device__ __forceinline__ uint64_t make_desc(uint32_t saddr) {  // K-major
  return static_cast<uint64_t>((saddr & 0x3FFFFu) >> 4) | (uint64_t{1} << 16) | (uint64_t{1024 >> 4} << 32) |
         (uint64_t{1} << 62);
}
template <uint32_t SlabBytes>
__device__ __forceinline__ uint64_t make_desc_mn(uint32_t saddr) {  // MN-major, slabs SlabBytes apart
  static_assert(SlabBytes % 16 == 0 && SlabBytes < (1u << 18), "LBO field");
  return static_cast<uint64_t>((saddr & 0x3FFFFu) >> 4) | (uint64_t{SlabBytes >> 4} << 16) |
         (uint64_t{1024 >> 4} << 32) | (uint64_t{1} << 62);
}

#define SHARQ_WG_D4 "{%0, %1, %2, %3}"
#define SHARQ_WG_D8 "{%0, %1, %2, %3, %4, %5, %6, %7}"
#define SHARQ_WG_D16 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}"
#define SHARQ_WG_D32                                                                                 \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, " \
  "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
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
#define SHARQ_WG_F8(i) SHARQ_WG_F4(i), SHARQ_WG_F4(i + 4)
#define SHARQ_WG_F16(i) SHARQ_WG_F8(i), SHARQ_WG_F8(i + 8)
#define SHARQ_WG_F32(i) SHARQ_WG_F16(i), SHARQ_WG_F16(i + 16)
#define SHARQ_WG_F64(i) SHARQ_WG_F32(i), SHARQ_WG_F32(i + 32)
#define SHARQ_WG_F128 SHARQ_WG_F64(0), SHARQ_WG_F64(64)
// One wgmma with A from registers: the operand numbers of a (A0..A3), desc (DS) and the scale-d flag
// (SC) follow the N / 2 accumulators (the output operands: the variadic tail).
#define SHARQ_WG_RS(N, TY, TR, DL, A0, A1, A2, A3, DS, SC, ...)                                    \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" SC ", 0;\n"                                   \
               "wgmma.mma_async.sync.aligned.m64n" N "k16.f32." TY "." TY " " DL ", {%" A0 ", %" A1 \
               ", %" A2 ", %" A3 "}, %" DS ", p, 1, 1, " TR ";\n}\n"                                 \
               : __VA_ARGS__                                                                          \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(accumulate)              \
               : "memory")
#define SHARQ_WG_RS4(N, DL, A0, A1, A2, A3, DS, SC, ...)                                            \
  if constexpr (kHalf && !kTransB) SHARQ_WG_RS(N, "f16", "0", DL, A0, A1, A2, A3, DS, SC, __VA_ARGS__);   \
  if constexpr (kHalf && kTransB) SHARQ_WG_RS(N, "f16", "1", DL, A0, A1, A2, A3, DS, SC, __VA_ARGS__);    \
  if constexpr (!kHalf && !kTransB) SHARQ_WG_RS(N, "bf16", "0", DL, A0, A1, A2, A3, DS, SC, __VA_ARGS__); \
  if constexpr (!kHalf && kTransB) SHARQ_WG_RS(N, "bf16", "1", DL, A0, A1, A2, A3, DS, SC, __VA_ARGS__)

// D (64 x N, FP32, the m64nNk16 accumulator layout) = (accumulate ? D : 0) + A (64 x 16, registers,
// the m64nNk16 A-fragment layout: warp w holds rows 16 w .. 16 w + 15 as mma.m16n8k16 does) * B (16 x
// N from shared memory, desc; kTransB = false: K-major, true: MN-major).
template <class T, int N, bool kTransB>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc, int accumulate) {
  static_assert(N == 8 || N == 16 || N == 32 || N == 64 || N == 128 || N == 256, "N");
  static_assert(!kTransB || N % 64 == 0, "MN-major B in the 128B-swizzled layout: 64-element slabs");
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>, "T");
  constexpr bool kHalf = std::is_same_v<T, __half>;
  if constexpr (N == 8) {
    SHARQ_WG_RS4("8", SHARQ_WG_D4, "4", "5", "6", "7", "8", "9", SHARQ_WG_F4(0));
  } else if constexpr (N == 16) {
    SHARQ_WG_RS4("16", SHARQ_WG_D8, "8", "9", "10", "11", "12", "13", SHARQ_WG_F8(0));
  } else if constexpr (N == 32) {
    SHARQ_WG_RS4("32", SHARQ_WG_D16, "16", "17", "18", "19", "20", "21", SHARQ_WG_F16(0));
  } else if constexpr (N == 64) {
    SHARQ_WG_RS4("64", SHARQ_WG_D32, "32", "33", "34", "35", "36", "37", SHARQ_WG_F32(0));
  } else if constexpr (N == 128) {
    SHARQ_WG_RS4("128", SHARQ_WG_D64, "64", "65", "66", "67", "68", "69", SHARQ_WG_F64(0));
  } else {
    SHARQ_WG_RS4("256", SHARQ_WG_D128, "128", "129", "130", "131", "132", "133", SHARQ_WG_F128);
  }
}
// One wgmma with both operands in shared memory (descriptors da, db; both K-major).
#define SHARQ_WG_SS(N, TY, DL, DA, DB, SC, ...)                                                    \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" SC ", 0;\n"                                   \
               "wgmma.mma_async.sync.aligned.m64n" N "k16.f32." TY "." TY " " DL ", %" DA ", %" DB \
               ", p, 1, 1, 0, 0;\n}\n"                                                             \
               : __VA_ARGS__                                                                        \
               : "l"(da), "l"(db), "r"(accumulate)                                                  \
               : "memory")
#define SHARQ_WG_SS2(N, DL, DA, DB, SC, ...)                                  \
  if constexpr (kHalf) SHARQ_WG_SS(N, "f16", DL, DA, DB, SC, __VA_ARGS__); \
  if constexpr (!kHalf) SHARQ_WG_SS(N, "bf16", DL, DA, DB, SC, __VA_ARGS__)

// D (64 x N, FP32) = (accumulate ? D : 0) + A (64 x 16, shared memory, K-major, desc da) * B (16 x N,
// shared memory, K-major: N rows of K, desc db).
template <class T, int N>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], uint64_t da, uint64_t db, int accumulate) {
  static_assert(N == 64 || N == 128 || N == 256, "N");
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>, "T");
  constexpr bool kHalf = std::is_same_v<T, __half>;
  if constexpr (N == 64) {
    SHARQ_WG_SS2("64", SHARQ_WG_D32, "32", "33", "34", SHARQ_WG_F32(0));
  } else if constexpr (N == 128) {
    SHARQ_WG_SS2("128", SHARQ_WG_D64, "64", "65", "66", SHARQ_WG_F64(0));
  } else {
    SHARQ_WG_SS2("256", SHARQ_WG_D128, "128", "129", "130", SHARQ_WG_F128);
  }
}
#undef SHARQ_WG_SS2
#undef SHARQ_WG_SS

// Warp-level tensor-core operations (16-bit inputs T, FP32 accumulators), fragment layouts of the PTX
// ISA ("warp-level matrix fragments"): g = lane / 4, c = 2 * (lane % 4).
//   m16n8k16: A regs (row g, k c..c+1), (row g+8, k c..), (row g, k c+8..), (row g+8, k c+8..);
//             B regs (k c..c+1, n g), (k c+8.., n g); D (row g, n c), (g, c+1), (g+8, c), (g+8, c+1).
//   m16n8k8:  A regs (row g, k c..c+1), (row g+8, k c..); B reg (k c..c+1, n g); D as above.
// ldmatrix .x4: lanes 8i .. 8i+7 give the 16-byte row addresses of matrix i; register i of lane t
// receives (row t / 4, elements c, c+1) of matrix i, or with .trans (rows c, c+1, element t / 4).
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
template <class T>
__device__ __forceinline__ void mma_16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                          uint32_t b1) {
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>, "T");
  if constexpr (std::is_same_v<T, __half>)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
template <class T>
__device__ __forceinline__ void mma_1688(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t b0) {
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>, "T");
  if constexpr (std::is_same_v<T, __half>)
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(b0));
  else
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(b0));
}
#undef SHARQ_WG_RS4
#undef SHARQ_WG_RS
#undef SHARQ_WG_D4
#undef SHARQ_WG_D8
#undef SHARQ_WG_D16
#undef SHARQ_WG_D32
#undef SHARQ_WG_D64
#undef SHARQ_WG_D128
#undef SHARQ_WG_F4
#undef SHARQ_WG_F8
#undef SHARQ_WG_F16
#undef SHARQ_WG_F32
#undef SHARQ_WG_F64
#undef SHARQ_WG_F128

}  // namespace sharq::cuda
