// The element-wise and per-row kernels of a decoder block on the GPU, around the linear layers:
// embedding gather, RMSNorm, q/k norm + RoPE + the paged KV-cache write, SwiGLU, residual add.
// Activation element type T: FP16 (the fp16 scheme) or BF16 (every other scheme); the residual
// stream is FP32. Every function checks its arguments (std::invalid_argument) and launches
// asynchronously on `stream`: no allocation, no host synchronization.
//
// Numerics (the CPU runtime is the reference; tests bound the difference):
//   - RMSNorm: y = T(w * (x * r)), r = 1 / sqrt(mean(x^2) + eps), the mean in FP32 (a block
//     reduction; the CPU accumulates in double);
//   - RoPE: angle = pos * inv_freq[j] in FP32, cosf / sinf, the pairs of model/rope.h;
//   - SwiGLU: T(silu(g) * u) with silu(g) = g / (1 + exp(-g)) in FP32.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "sharq/kernels/cuda/sharq_prep.h"  // DType

namespace sharq::cuda {

// The paged KV cache of one layer: K and V pools of [blocks][block_size][kv_heads][head_dim] of the
// activation type; a sequence's position p lives in block table[p / block_size], slot p % block_size.
struct PagedKv {
  void* k = nullptr;
  void* v = nullptr;
  int64_t blocks = 0;
  int block_size = 16, kv_heads = 0, head_dim = 0;
};

// Where each row of a step sits: its position, its sequence's block table (offsets into one table).
struct RowMap {
  const int32_t* pos = nullptr;        // M: position of the row's token
  const int32_t* table_off = nullptr;  // M: offset of the row's sequence block table in `table`
  const int32_t* table = nullptr;      // block ids
};

// x[m][:] = float(embed[tok[m]][:]); embed: vocab x H BF16.
void embed_rows(const void* embed_bf16, const int32_t* tok, int64_t M, int64_t H, float* x, cudaStream_t stream);

// y[r][:] = RMSNorm(v) * w for r < R, v = x[s][:] + float(add[s][:]) (add: `t`, optional; v = x[s][:]
// without it), s = rows ? rows[r] : r; y: R x H of `t`. x is not written, so rows may repeat. With
// add it is add_rmsnorm's arithmetic, bit for bit, for the selected rows: the last residual add and
// the final norm in one pass over the rows that need logits only.
void rmsnorm_rows(const float* x, const void* add, const int32_t* rows, int64_t R, int64_t H, const float* w, float eps,
                  DType t, void* y, cudaStream_t stream);

// x[m][:] += float(o[m][:]), then y[m][:] = RMSNorm(x[m][:]) * w (the residual add and the norm in
// one pass, the same arithmetic), for m < M.
void add_rmsnorm(float* x, const void* o, int64_t M, int64_t H, const float* w, float eps, DType t, void* y,
                 cudaStream_t stream);

// For each row: optional per-head RMSNorm of q and k (q_norm / k_norm: head_dim weights, or null),
// RoPE at the row's position, q out as `t` (M x nh*hd: paged_attention's input), k and v (nkv*hd values of `t` per row)
// written into the paged cache at the row's position. q, k and v rows are `ld` elements apart (the
// fused q/k/v projection's output: q = qkv, k = qkv + nh*hd, v = k + nkv*hd, ld = (nh + 2 nkv) hd).
// PDL: rows.pos / table_off / table are read before waiting for the preceding kernel, so, as for
// paged_attention, they must be copied before the step's first kernel.
void qk_rope_kv_write(const void* q, const void* k, const void* v, int64_t ld, int64_t M, int nh, const float* q_norm,
                      const float* k_norm, float eps, const float* inv_freq, bool interleaved, const RowMap& rows,
                      const PagedKv& kv, DType t, void* q_out, cudaStream_t stream);

// Whether qk_rope_kv_write takes its 16-byte kernel for these arguments: head_dim 16 x 2^j (2 <= 2^j
// <= 32: 32 .. 512), ld % 8 == 0, and q, k, v, q_out, both pools and the norm weights given 16-byte
// aligned. Otherwise it takes the word kernel, with the same bits. For tests and benches.
bool qk_rope_wide(const void* q, const void* k, const void* v, int64_t ld, const float* q_norm, const float* k_norm,
                  const PagedKv& kv, const void* q_out);

// dst row r = src row rows[r] for r < R, rows of row_bytes bytes (dst: R rows, another buffer than
// src): the rows of a prefill that need logits, for the last layer's o projection and MLP.
// PDL: rows is read after the wait on the preceding kernel.
void gather_rows(const void* src, const int32_t* rows, int64_t R, int64_t row_bytes, void* dst, cudaStream_t stream);

// out[m][i] = T(silu(gu[m][i]) * gu[m][I + i]) for i < I: gu is the fused gate/up projection's
// output (M x 2I, gate first), out M x I.
void swiglu(const void* gu, int64_t M, int64_t I, DType t, void* out, cudaStream_t stream);

}  // namespace sharq::cuda
