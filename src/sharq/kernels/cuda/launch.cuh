// Programmatic dependent launch (PDL), the one implementation every kernel family uses.
//
// A kernel launched by `launch_pdl` may start while the kernel before it in the stream is still
// running. The contract, which every such kernel keeps:
//   - `pdl_wait()` (griddepcontrol.wait) runs in every CTA before the kernel reads anything the
//     preceding kernels write, and before it writes anything they read. It returns once all
//     prerequisite grids have completed and their writes are visible. Only data that no kernel of
//     the step writes (weights, step metadata copied before the step's first kernel) may be read
//     before it. Every CTA executes it, early exits included (a CTA that skipped it could let the
//     grid complete before its predecessor).
//   - `pdl_trigger()` (griddepcontrol.launch_dependents), after the wait, lets the next kernel be
//     launched while this one runs; that kernel's own wait still orders it after this grid's
//     completion, so the trigger's position affects only speed, never correctness. The short
//     latency-bound kernels (norms, SwiGLU, the split-K reduction) trigger after their loads: an FP4
//     GEMM launched at their start prefetches its weights before its wait, and their own loads then
//     queue behind that stream (H200, W4A16 batch-1 decode: 100 us less per step outside the GEMMs,
//     docs/perf/engine.md, tenth increment).
// Inside a CUDA graph the attribute becomes a programmatic edge between the two kernel nodes.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>

#include <fmt/format.h>

#include "sharq/kernels/cuda/cuda_check.h"

namespace sharq::cuda {

__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory"); }

// kernel<<<grid, block, smem, stream>>>(args...) with programmatic stream serialization; with
// cluster_x > 1 the grid's x dimension is cut into thread block clusters of cluster_x CTAs.
template <class... P, class... A>
void launch_pdl_cluster(void (*kernel)(P...), dim3 grid, dim3 block, int cluster_x, size_t smem, cudaStream_t stream,
                        const A&... args) {
  cudaLaunchAttribute attr[2];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  attr[1].id = cudaLaunchAttributeClusterDimension;
  attr[1].val.clusterDim.x = static_cast<unsigned>(cluster_x);
  attr[1].val.clusterDim.y = 1;
  attr[1].val.clusterDim.z = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = cluster_x > 1 ? 2 : 1;
  SHARQ_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, static_cast<P>(args)...));
}
template <class... P, class... A>
void launch_pdl(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, const A&... args) {
  launch_pdl_cluster(kernel, grid, block, 1, smem, stream, args...);
}

// what (e.g. "fp4_gemm: the prefill kernel") must be compiled to at least min_regs registers per
// thread: the warp-specialized kernels' setmaxnreg split (ptx.cuh, kWsMinRegs) needs it.
template <class K>
void check_kernel_registers(K kernel, int min_regs, const char* what) {
  cudaFuncAttributes fa{};
  SHARQ_CUDA_CHECK(cudaFuncGetAttributes(&fa, kernel));
  if (fa.numRegs < min_regs)
    throw std::runtime_error(fmt::format("{} was compiled to {} registers per thread; its setmaxnreg split needs {}", what,
                                         fa.numRegs, min_regs));
}

}  // namespace sharq::cuda
