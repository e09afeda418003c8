// CPU GEMM core for every linear scheme: Y = diag(row_scale) * (A * W^T) * diag(col_scale) + bias.
//
// A is the prepared activation matrix (M x K, FP32, scaled domain). W is never materialized as a
// whole FP32 matrix: a WeightPanelSource decodes it from its packed storage one panel at a time
// (kGemmKC x kGemmNR values, k-major), right before the micro-kernel consumes the panel from L1.
// Each decoded weight is reused by all M rows, so the decode cost is amortized over M.
//
// Parallelism: OpenMP over panels of kGemmNR output columns. Accumulation is FP32, in k order, one
// FMA per product where the target has FMA; it is not part of the numerics contract (tests bound it
// against an FP64 reference), but a row's result never depends on M or on the other rows (the
// batch-invariance rule: every micro-tile height does the same arithmetic).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace sharq {

#if defined(__AVX512F__)
inline constexpr int kGemmNR = 32;  // two zmm per row of the micro-tile
#else
inline constexpr int kGemmNR = 16;  // two ymm per row
#endif
inline constexpr int kGemmMR = 6;
inline constexpr int kGemmKC = 256;  // multiple of every block size (16, 32, 64)

class WeightPanelSource {
 public:
  virtual ~WeightPanelSource() = default;
  virtual int64_t rows() const = 0;  // N
  virtual int64_t cols() const = 0;  // K
  // Decode W[n][k0 .. k0 + kc) into out[0 .. kc) (scaled domain: no per-tensor/per-row scale).
  virtual void decode_segment(int64_t n, int64_t k0, int kc, float* out) const = 0;
  // Bytes of packed weight storage (what a GEMM reads from memory).
  virtual size_t bytes() const = 0;

  // W[n0 + j][k0 + t] -> panel[t * kGemmNR + j] for j < nr, t < kc (kc <= kGemmKC); columns j >= nr
  // are written as 0.
  // The default goes through decode_segment; packed formats override it to decode in place.
  virtual void decode_panel(int64_t n0, int nr, int64_t k0, int kc, float* panel) const;
  std::vector<float> decode_all() const;  // N x K, for references and tools (not used by forward)
};

// row_scale: M values or nullptr (1); col_scale: N values or nullptr (1); bias: N or nullptr.
void gemm_xwt(const float* A, int64_t M, int64_t K, const WeightPanelSource& W, const float* row_scale,
              const float* col_scale, const float* bias, float* Y);

}  // namespace sharq
