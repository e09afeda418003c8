#include "sharq/quant/quantized_matrix.h"

#include <fmt/format.h>

namespace sharq {

void check_shape(const char* what, int64_t rows, int64_t cols) {
  // 2^31 elements per dimension keeps every index product far from int64 overflow.
  constexpr int64_t kMax = (int64_t{1} << 31) - 1;
  if (rows < 0 || cols < 0 || rows > kMax || cols > kMax)
    throw std::invalid_argument(fmt::format("{}: invalid shape {}x{}", what, rows, cols));
}

std::vector<float> nvfp4_global_scales(const float* x, int64_t rows, int64_t cols, GlobalScale mode) {
  std::vector<float> g;
  if (mode == GlobalScale::none) return g;
  if (mode == GlobalScale::per_tensor) {
    float m = 0.0f;
    for (int64_t r = 0; r < rows; ++r) {
      const float a = amax_finite(x + r * cols, static_cast<int>(cols));
      if (a > m) m = a;
    }
    g.push_back(nvfp4_global_scale(m));
    return g;
  }
  g.resize(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) g[r] = nvfp4_global_scale(amax_finite(x + r * cols, static_cast<int>(cols)));
  return g;
}

template <class F>
QuantizedMatrix<F> quantize_matrix(const float* x, int64_t rows, int64_t cols, GlobalScale gmode) {
  check_shape("quantize_matrix", rows, cols);
  if (!F::kHasGlobal && gmode != GlobalScale::none)
    throw std::invalid_argument("quantize_matrix: MXFP4 and HiF4 have no second-level scale (use GlobalScale::none)");
  QuantizedMatrix<F> q;
  q.rows = rows;
  q.cols = cols;
  q.blocks_per_row = ceil_div(cols, F::kBlock);
  q.blocks.resize(static_cast<size_t>(rows * q.blocks_per_row));
  q.gmode = gmode;
  q.g = nvfp4_global_scales(x, rows, cols, gmode);
#pragma omp parallel for schedule(static) if (rows * cols > (1 << 16))
  for (int64_t r = 0; r < rows; ++r) quantize_row<F>(x + r * cols, cols, q.global(r), q.row(r));
  return q;
}

template <class F>
QuantizedMatrix<F> quantize_matrix_with_global(const float* x, int64_t rows, int64_t cols, float g) {
  static_assert(F::kHasGlobal, "only NVFP4 has a second-level scale");
  check_shape("quantize_matrix_with_global", rows, cols);
  QuantizedMatrix<F> q;
  q.rows = rows;
  q.cols = cols;
  q.blocks_per_row = ceil_div(cols, F::kBlock);
  q.blocks.resize(static_cast<size_t>(rows * q.blocks_per_row));
  q.gmode = GlobalScale::per_tensor;
  q.g = {g};
#pragma omp parallel for schedule(static) if (rows * cols > (1 << 16))
  for (int64_t r = 0; r < rows; ++r) quantize_row<F>(x + r * cols, cols, g, q.row(r));
  return q;
}
template QuantizedMatrix<Nvfp4_16> quantize_matrix_with_global<Nvfp4_16>(const float*, int64_t, int64_t, float);
template QuantizedMatrix<Nvfp4_32> quantize_matrix_with_global<Nvfp4_32>(const float*, int64_t, int64_t, float);

template <class F>
std::vector<float> dequantize_matrix(const QuantizedMatrix<F>& q, bool with_global) {
  std::vector<float> out(static_cast<size_t>(q.rows * q.cols));
  for (int64_t r = 0; r < q.rows; ++r) {
    float* o = out.data() + r * q.cols;
    dequantize_row<F>(q.row(r), q.cols, o);
    if (with_global && !q.g.empty())
      for (int64_t c = 0; c < q.cols; ++c) o[c] *= q.global(r);
  }
  return out;
}

#define SHARQ_INSTANTIATE(F)                                                                   \
  template QuantizedMatrix<F> quantize_matrix<F>(const float*, int64_t, int64_t, GlobalScale); \
  template std::vector<float> dequantize_matrix<F>(const QuantizedMatrix<F>&, bool);
SHARQ_INSTANTIATE(Nvfp4_16)
SHARQ_INSTANTIATE(Nvfp4_32)
SHARQ_INSTANTIATE(Mxfp4)
SHARQ_INSTANTIATE(Hif4)
#undef SHARQ_INSTANTIATE

}  // namespace sharq
