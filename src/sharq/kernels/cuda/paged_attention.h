// Causal attention over the paged KV cache (transformer_ops.h), for a step that mixes sequences of
// different lengths, prefill chunks and decode tokens: each row (token) attends to the keys of its
// own sequence at positions max(0, pos + 1 - window) .. pos (window 0: all), which the step has
// already written into the cache. GQA: query head h reads KV head h / (nh / nkv). Scores
// q.k / sqrt(hd) and the softmax in FP32, FP32 accumulation, out rounded once to T (FP16 / BF16);
// q comes in T (qk_rope_kv_write's output); the tensor-core kernels round the softmax weights P to T
// (below).
//
// Two kernels share the step, chosen per row on the host (plan_attention):
//
//   decode  (entries of 1 row, or every row in batch-invariant mode, or head dims the prefill kernel
//           lacks): split-KV flash-decoding in ONE launch, on tensor cores for head_dim 64 / 128
//           (decode_attention_on_tensor_cores: P rounded to T as in the prefill kernel), on CUDA
//           cores with q widened to FP32 and FP32 scores and weights for other head dims. One
//           thread-block cluster of 8 CTAs (8 warps each) per (row, group of <= 8 query heads of one
//           KV head): each K/V row is loaded once (cp.async, 16 B) and serves every query head of
//           the group. A row's attended range of len = pos + 1 - j0 keys is cut by a rule of len only:
//               W = max(8, round_up(ceil(len / 64), 8)) keys per warp, warp k of the cluster the k-th
//           range; each warp runs an online softmax over its range in steps of 8 keys (a cp.async
//           ring of 2 steps per warp, 1 for head_dim > 128), the 8 warps of a CTA merge in warp
//           order, and the CTAs of the cluster merge in rank order through distributed shared
//           memory (no partials in global memory, no combine kernel). Nothing in a row's arithmetic
//           depends on M, the other rows or the SM count, so its output bits depend only on its
//           sequence's cache, its position and the window (batch invariance).
//   prefill (tiles of <= kAttentionTileRows consecutive rows of one sequence, head_dim 64 / 128):
//           FlashAttention over the same paged cache, warp-specialized as FlashAttention-3 is: one
//           CTA per (tile, query head), a producer warpgroup that copies key blocks of 128 through
//           the block table (cp.async onto mbarriers, 2-3 stages) and two consumer warpgroups of
//           64 query rows each, wgmma with FP32 accumulation for Q K^T (both operands in shared
//           memory) and P V (P from registers): P is rounded to T for the second product (the
//           row sum uses the rounded P, so the weights stay a convex combination).
//
// Both kernels are launched with grids that depend only on the host counts (n_decode, n_tiles, nh):
// no allocation, no host synchronization, capturable in a CUDA graph. Decode CTAs without keys of their
// row only take part in the cluster barriers. The launches use programmatic dependent launch: a kernel
// reads the step metadata (the plan's lists, rows.pos / table_off / table) BEFORE waiting for the
// preceding kernel, so that metadata must not be written by the kernel launched just before (a copy at
// the start of the step, as the engine's, is fine); q and the cache are read after the wait.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include <cuda_runtime.h>

#include "sharq/kernels/cuda/transformer_ops.h"

namespace sharq::cuda {

// The attention work of one step, built on the host (plan_attention) and copied to the device with
// the step's other metadata by the caller.
struct AttentionPlan {
  const int32_t* decode_rows = nullptr;    // device: rows handled by the split-KV (flash-decoding) kernel
  int32_t n_decode = 0;                    // host count
  const int32_t* prefill_tiles = nullptr;  // device: n_tiles pairs {first row, row count}; a tile's rows are
                                           // consecutive rows of ONE sequence at consecutive positions
  int32_t n_tiles = 0;                     // host count
  void* workspace = nullptr;               // paged_attention_workspace_bytes(...) bytes, 16-byte aligned
};

// Rows of one prefill tile (the prefill kernel's query tile).
inline constexpr int kAttentionTileRows = 128;

// Head dims the prefill kernel is built for; other dims send every row to the decode kernel.
bool prefill_attention_supports(int head_dim);
// Head dims for which the decode kernel runs Q K^T and P V on tensor cores (when the pools are
// 16-byte aligned and q 4-byte aligned, as the engine's buffers are): P is then rounded to the cache's
// type T, as in the prefill kernel; other dims (and unaligned buffers) take the FP32 form (scores and
// weights in FP32).
bool decode_attention_on_tensor_cores(int head_dim);

// Host side: the plan's contents for a step whose entries have entry_rows[i] new tokens each, laid out
// consecutively in row order (entry 0's rows first). Entries of 1 row go to the decode kernel; longer
// entries are cut into prefill tiles of <= kAttentionTileRows rows (128-row tiles from the entry's
// first row, the remainder last). batch_invariant: every row goes to the decode kernel (so a row's bits never
// depend on what else shares the step). Also sends every row to the decode kernel when head_dim is not
// one the prefill kernel supports. Entries of 0 rows are allowed (they own no row).
struct AttentionWork {
  std::vector<int32_t> decode_rows, prefill_tiles;
};
AttentionWork plan_attention(const std::vector<int64_t>& entry_rows, int head_dim, bool batch_invariant);

// Device bytes of the decode workspace for up to max_rows decode rows of nh heads of head_dim: it stops
// growing at max_rows = 128: 128 * nh * 16 * (head_dim + 2) * 4 bytes, ~34 MB for 32 heads of 128. A
// multiple of 16; 0 for max_rows = 0. (The current decode kernel merges its splits in distributed
// shared memory and does not touch the workspace; the size and the requirement are kept so that the
// interface does not change.)
size_t paged_attention_workspace_bytes(int64_t max_rows, int nh, int head_dim);

// q: M x nh*hd of `t` (RoPE applied; qk_rope_kv_write's output); out: M x nh*hd of `t` (FP16 or BF16,
// the cache's type too).
// plan: every row of the step in exactly one of decode_rows / prefill_tiles (not checked: device data).
// Prefill tiles need head_dim 64 or 128, and q, kv.k, kv.v 16-byte aligned.
void paged_attention(const void* q, int64_t M, int nh, const RowMap& rows, const PagedKv& kv, int64_t window, DType t,
                     const AttentionPlan& plan, void* out, cudaStream_t stream);

}  // namespace sharq::cuda
