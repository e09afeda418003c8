#include "sharq/decompose/sharq_decompose.h"

#include <stdexcept>

#include <fmt/format.h>

namespace sharq {

template <class V, int Group>
SharqActivations<V, Group> sharq_prepare(const float* x, int64_t rows, int64_t cols, PairScore score,
                                         GlobalScale gmode) {
  check_shape("sharq_prepare", rows, cols);
  constexpr int B = V::Fbb::kBlock;
  SharqActivations<V, Group> a;
  a.rows = rows;
  a.cols = cols;
  a.spans_per_row = ceil_div(cols, B);
  a.backbone.resize(static_cast<size_t>(rows * a.spans_per_row));
  a.residual.resize(static_cast<size_t>(rows * a.spans_per_row * a.kResPerSpan));
  if constexpr (V::kGlobal) a.g = nvfp4_global_scales(x, rows, cols, gmode);
#pragma omp parallel for schedule(static) if (rows * cols > (1 << 15))
  for (int64_t r = 0; r < rows; ++r) {
    const float g = a.global(r);
    const float* xr = x + r * cols;
    float xt[B];
    for (int64_t sp = 0; sp < a.spans_per_row; ++sp) {
      for (int k = 0; k < B; ++k) {
        const int64_t c = sp * B + k;
        xt[k] = c < cols ? xr[c] / g : 0.0f;  // X~ = X / g_x, zero-padded along K
      }
      const int64_t idx = r * a.spans_per_row + sp;
      sharq_prepare_span<V, Group>(xt, score, a.backbone[idx], &a.residual[idx * a.kResPerSpan]);
    }
  }
  return a;
}

template <class V, int Group>
void sharq_dequantize_row(const SharqActivations<V, Group>& a, int64_t r, float* xhat, float* s_hat, float* r_hat) {
  using Fres = typename V::Fres;
  constexpr int B = V::Fbb::kBlock;
  float sb[B], rb[B];
  for (int64_t sp = 0; sp < a.spans_per_row; ++sp) {
    const int64_t idx = r * a.spans_per_row + sp;
    backbone_dequantize_block<V, Group>(a.backbone[idx], sb);
    for (int b = 0; b < a.kResPerSpan; ++b) dequantize_block<Fres>(a.residual[idx * a.kResPerSpan + b], rb + b * Fres::kBlock);
    for (int k = 0; k < B && sp * B + k < a.cols; ++k) {
      const int64_t c = sp * B + k;
      if (xhat) xhat[c] = sb[k] + rb[k];
      if (s_hat) s_hat[c] = sb[k];
      if (r_hat) r_hat[c] = rb[k];
    }
  }
}

#define SHARQ_INSTANTIATE(V, G)                                                                              \
  template SharqActivations<V, G> sharq_prepare<V, G>(const float*, int64_t, int64_t, PairScore, GlobalScale); \
  template void sharq_dequantize_row<V, G>(const SharqActivations<V, G>&, int64_t, float*, float*, float*);
SHARQ_INSTANTIATE(SharqNvfp4, 8)
SHARQ_INSTANTIATE(SharqNvfp4, 4)
SHARQ_INSTANTIATE(SharqMxfp4, 8)
SHARQ_INSTANTIATE(SharqMxfp4, 4)
SHARQ_INSTANTIATE(SharqHif4, 8)
SHARQ_INSTANTIATE(SharqHif4, 4)
#undef SHARQ_INSTANTIATE

// ---- dense reference ----------------------------------------------------------------------------
namespace {

template <class V>
DenseDecomposition decompose_dense(const float* x, int64_t rows, int64_t cols, const MaskSpec& mask, GlobalScale gmode) {
  using Fbb = typename V::Fbb;
  using Fres = typename V::Fres;
  DenseDecomposition d;
  d.rows = rows;
  d.cols = cols;
  const size_t n = static_cast<size_t>(rows * cols);
  d.xt.resize(n); d.s.resize(n); d.s_hat.resize(n); d.r.resize(n); d.r_hat.resize(n); d.keep.resize(n);
  if constexpr (V::kGlobal) d.g = nvfp4_global_scales(x, rows, cols, gmode);
  std::vector<typename Fbb::block_t> qb(static_cast<size_t>(ceil_div(cols, Fbb::kBlock)));
  std::vector<typename Fres::block_t> qr(static_cast<size_t>(ceil_div(cols, Fres::kBlock)));
  for (int64_t r = 0; r < rows; ++r) {
    const size_t o = static_cast<size_t>(r * cols);
    const float g = d.g.empty() ? 1.0f : (d.g.size() == 1 ? d.g[0] : d.g[r]);
    for (int64_t c = 0; c < cols; ++c) d.xt[o + c] = x[o + c] / g;
    const std::vector<uint8_t> keep = mask_row(d.xt.data() + o, cols, mask);
    for (int64_t c = 0; c < cols; ++c) {
      d.keep[o + c] = keep[c];
      d.s[o + c] = keep[c] ? d.xt[o + c] : 0.0f;
    }
    quantize_row<Fbb>(d.s.data() + o, cols, 1.0f, qb.data());
    dequantize_row<Fbb>(qb.data(), cols, d.s_hat.data() + o);
    for (int64_t c = 0; c < cols; ++c) {
      if (!keep[c]) d.s_hat[o + c] = 0.0f;  // masked positions stay 0, even in a NaN block
      d.r[o + c] = d.xt[o + c] - d.s_hat[o + c];
    }
    quantize_row<Fres>(d.r.data() + o, cols, 1.0f, qr.data());
    dequantize_row<Fres>(qr.data(), cols, d.r_hat.data() + o);
  }
  return d;
}

}  // namespace

DenseDecomposition sharq_decompose_dense(const float* x, int64_t rows, int64_t cols, SharqFormat fmt,
                                         const MaskSpec& mask, GlobalScale gmode) {
  check_shape("sharq_decompose_dense", rows, cols);
  switch (fmt) {
    case SharqFormat::nvfp4: return decompose_dense<SharqNvfp4>(x, rows, cols, mask, gmode);
    case SharqFormat::mxfp4: return decompose_dense<SharqMxfp4>(x, rows, cols, mask, gmode);
    case SharqFormat::hif4: return decompose_dense<SharqHif4>(x, rows, cols, mask, gmode);
  }
  throw std::invalid_argument("sharq_decompose_dense: unknown format");
}

}  // namespace sharq
