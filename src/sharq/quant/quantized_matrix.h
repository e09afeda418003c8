// Host containers for block-quantized matrices, and whole-matrix quantize/dequantize.
//
// A QuantizedMatrix<F> holds rows x cols logical values as rows of ceil(cols / F::kBlock) blocks
// (blocks.h). K that is not a multiple of the block is zero-padded, which is exact.
// NVFP4 adds the FP32 second-level scale g (per tensor or per row): the blocks quantize x / g, and
// g multiplies back in the GEMM epilogue.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "sharq/quant/block_quant.h"

namespace sharq {

enum class GlobalScale { none, per_tensor, per_row };

template <class F>
struct QuantizedMatrix {
  using block_t = typename F::block_t;
  int64_t rows = 0, cols = 0;
  int64_t blocks_per_row = 0;       // ceil(cols / F::kBlock)
  std::vector<block_t> blocks;      // rows * blocks_per_row
  GlobalScale gmode = GlobalScale::none;
  std::vector<float> g;             // empty (none), 1 (per tensor) or rows (per row)

  const block_t* row(int64_t r) const { return blocks.data() + r * blocks_per_row; }
  block_t* row(int64_t r) { return blocks.data() + r * blocks_per_row; }
  float global(int64_t r) const { return g.empty() ? 1.0f : (g.size() == 1 ? g[0] : g[static_cast<size_t>(r)]); }
  size_t bytes() const { return blocks.size() * sizeof(block_t) + g.size() * sizeof(float); }
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The W32-shared NVFP4 weight payload (SHARQ_SPEC "The SharQ decomposition", step 6) read as
// NVFP4-16 blocks, as SharQ's dense (residual) path reads it: 16-block j16 of row r is half j16 % 2
// of 32-block j16 / 2, with that block's scale code duplicated. Nothing is re-rounded, so the view
// dequantizes to exactly the same W^ as the 32-block view the sparse path reads.
// 0 <= j16 < 2 * q.blocks_per_row; 16-blocks past ceil(cols / 16) hold only padding.
inline block_nvfp4_16 nvfp4_16_view(const QuantizedMatrix<Nvfp4_32>& q, int64_t r, int64_t j16) {
  const block_nvfp4_32& b = q.row(r)[j16 / 2];
  block_nvfp4_16 v;
  v.s = b.s;
  for (int i = 0; i < 8; ++i) v.qs[i] = b.qs[(j16 % 2) * 8 + i];
  return v;
}

// Second-level scales of a rows x cols matrix: {} (none), {g} (per tensor) or one per row.
std::vector<float> nvfp4_global_scales(const float* x, int64_t rows, int64_t cols, GlobalScale mode);

// Quantize one row of `cols` values divided by g into ceil(cols/B) blocks (zero-padded tail).
template <class F>
void quantize_row(const float* x, int64_t cols, float g, typename F::block_t* out) {
  const int B = F::kBlock;
  float buf[F::kBlock];
  for (int64_t b = 0; b * B < cols; ++b) {
    for (int k = 0; k < B; ++k) {
      const int64_t c = b * B + k;
      buf[k] = c < cols ? (g == 1.0f ? x[c] : x[c] / g) : 0.0f;
    }
    F::quantize(buf, out[b]);
  }
}

// Dequantize one row into `cols` floats, in the scaled domain (g not applied).
template <class F>
void dequantize_row(const typename F::block_t* blocks, int64_t cols, float* out) {
  const int B = F::kBlock;
  float buf[F::kBlock];
  for (int64_t b = 0; b * B < cols; ++b) {
    dequantize_block<F>(blocks[b], buf);
    for (int k = 0; k < B && b * B + k < cols; ++k) out[b * B + k] = buf[k];
  }
}

// Quantize a row-major rows x cols matrix. `gmode` must be none for formats without a second level.
template <class F>
QuantizedMatrix<F> quantize_matrix(const float* x, int64_t rows, int64_t cols, GlobalScale gmode);

// The same with a given per-tensor second-level scale g (NVFP4 only): a checkpoint writer that must
// share one g over several matrices (q/k/v, gate/up). With g = nvfp4_global_scales(x, .., per_tensor)
// the result equals quantize_matrix(x, rows, cols, GlobalScale::per_tensor).
template <class F>
QuantizedMatrix<F> quantize_matrix_with_global(const float* x, int64_t rows, int64_t cols, float g);

// Dequantize to rows x cols floats. with_global = true multiplies g back in (real domain).
template <class F>
std::vector<float> dequantize_matrix(const QuantizedMatrix<F>& q, bool with_global);

// Throws std::invalid_argument naming `what` when a dimension is negative or too large.
void check_shape(const char* what, int64_t rows, int64_t cols);

}  // namespace sharq
