// Causal attention over the paged KV cache (transformer_ops.h), for a step that mixes sequences of
// different lengths, prefill chunks and decode tokens: each row (token) attends to the keys of its
// own sequence at positions max(0, pos + 1 - window) .. pos (window 0: all), which the step has
// already written into the cache. GQA: query head h reads KV head h / (nh / nkv).
//
// One warp per (row, query head): scores q.k * 1/sqrt(hd) in FP32, online softmax (running max and
// sum), FP32 accumulation of V, out = T(acc / sum). A row's result depends only on its sequence's
// cache and its position, never on the other rows of the step (the batch-invariance rule: no
// split over the keys at all yet).
//
// This is the correctness-first kernel of the engine's first increment: each key costs a warp
// reduction, so long contexts are slow. The engine issue replaces it with a tiled FlashAttention-2
// prefill kernel and a split-KV decode kernel over the same cache layout.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "sharq/kernels/cuda/transformer_ops.h"

namespace sharq::cuda {

// q: M x nh*hd FP32 (RoPE applied); out: M x nh*hd of `t`.
void paged_attention(const float* q, int64_t M, int nh, const RowMap& rows, const PagedKv& kv, int64_t window, DType t,
                     void* out, cudaStream_t stream);

}  // namespace sharq::cuda
