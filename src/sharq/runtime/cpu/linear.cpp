#include "sharq/runtime/cpu/linear.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

#include "sharq/decompose/sharq_decompose.h"
#include "sharq/kernels/cpu/gemm.h"
#include "sharq/quant/fp8.h"

namespace sharq {

// ================================================================================================
// Weight sources: packed storage decoded segment by segment.
namespace {

template <class Codec>
class Dense16Source final : public WeightPanelSource {  // fp16 / bf16 storage
 public:
  Dense16Source(const float* W, int64_t N, int64_t K) : N_(N), K_(K), w_(static_cast<size_t>(N * K)) {
    for (size_t i = 0; i < w_.size(); ++i) w_[i] = Codec::encode(W[i]);
  }
  int64_t rows() const override { return N_; }
  int64_t cols() const override { return K_; }
  size_t bytes() const override { return w_.size() * 2; }
  void decode_segment(int64_t n, int64_t k0, int kc, float* out) const override {
    const uint16_t* p = w_.data() + n * K_ + k0;
    for (int t = 0; t < kc; ++t) out[t] = Codec::decode(p[t]);
  }
 private:
  int64_t N_, K_;
  std::vector<uint16_t> w_;
};
struct Bf16Codec { static uint16_t encode(float x) { return bf16_encode(x); } static float decode(uint16_t h) { return bf16_decode(h); } };
struct Fp16Codec { static uint16_t encode(float x) { return fp16_encode(x); } static float decode(uint16_t h) { return fp16_decode(h); } };

class Fp32Source final : public WeightPanelSource {
 public:
  Fp32Source(const float* W, int64_t N, int64_t K) : N_(N), K_(K), w_(W, W + N * K) {}
  int64_t rows() const override { return N_; }
  int64_t cols() const override { return K_; }
  size_t bytes() const override { return w_.size() * 4; }
  void decode_segment(int64_t n, int64_t k0, int kc, float* out) const override {
    std::copy_n(w_.data() + n * K_ + k0, kc, out);
  }
 private:
  int64_t N_, K_;
  std::vector<float> w_;
};

class Fp8Source final : public WeightPanelSource {  // per-output-channel scales live in col_scale
 public:
  Fp8Source(const float* W, int64_t N, int64_t K, std::vector<float>& scales)
      : N_(N), K_(K), q_(static_cast<size_t>(N * K)) {
    scales.resize(static_cast<size_t>(N));
    for (int64_t n = 0; n < N; ++n) scales[n] = fp8_quantize_row(W + n * K, K, q_.data() + n * K);
  }
  Fp8Source(int64_t N, int64_t K, std::vector<uint8_t> codes) : N_(N), K_(K), q_(std::move(codes)) {}
  int64_t rows() const override { return N_; }
  int64_t cols() const override { return K_; }
  size_t bytes() const override { return q_.size() + static_cast<size_t>(N_) * 4; }
  void decode_segment(int64_t n, int64_t k0, int kc, float* out) const override {
    static const std::array<float, 256> table = [] {  // e4m3_decode of every code
      std::array<float, 256> t{};
      for (int c = 0; c < 256; ++c) t[c] = e4m3_decode(static_cast<uint8_t>(c));
      return t;
    }();
    const uint8_t* p = q_.data() + n * K_ + k0;
    for (int t = 0; t < kc; ++t) out[t] = table[p[t]];
  }
 private:
  int64_t N_, K_;
  std::vector<uint8_t> q_;
};

// A source of block-quantized rows: D::decode_strided(n, k0, kc, out, stride) writes W[n][k0 .. k0 + kc)
// to out[t * stride]; segments and k-major panels come straight from it (one block decode per
// (row, block), no intermediate copy).
template <class D>
class StridedSource : public WeightPanelSource {
 public:
  void decode_segment(int64_t n, int64_t k0, int kc, float* out) const override {
    static_cast<const D&>(*this).decode_strided(n, k0, kc, out, 1);
  }
  void decode_panel(int64_t n0, int nr, int64_t k0, int kc, float* panel) const override {
    for (int j = 0; j < kGemmNR; ++j) {
      if (j < nr) {
        static_cast<const D&>(*this).decode_strided(n0 + j, k0, kc, panel + j, kGemmNR);
      } else {
        for (int t = 0; t < kc; ++t) panel[t * kGemmNR + j] = 0.0f;
      }
    }
  }
};

template <class F>
class BlockSource final : public StridedSource<BlockSource<F>> {
 public:
  explicit BlockSource(QuantizedMatrix<F> q) : q_(std::move(q)) {}
  int64_t rows() const override { return q_.rows; }
  int64_t cols() const override { return q_.cols; }
  size_t bytes() const override { return q_.bytes(); }
  // W[n][k0 .. k0 + kc) -> out[t * stride], block by block (any k0).
  void decode_strided(int64_t n, int64_t k0, int kc, float* out, int stride) const {
    constexpr int B = F::kBlock;
    const auto* row = q_.row(n);
    float buf[B];
    for (int64_t b = k0 / B; b * B < k0 + kc; ++b) {
      dequantize_block<F>(row[b], buf);
      const int64_t lo = std::max<int64_t>(b * B, k0), hi = std::min<int64_t>((b + 1) * B, k0 + kc);
      for (int64_t k = lo; k < hi; ++k) out[(k - k0) * stride] = buf[k - b * B];
    }
  }

 private:
  QuantizedMatrix<F> q_;
};

// NVFP4 in a quantized checkpoint's layout, read where it lies (Linear::create_stored_nvfp4).
class StoredNvfp4Source final : public StridedSource<StoredNvfp4Source> {
 public:
  StoredNvfp4Source(int64_t N, int64_t K, const uint8_t* codes, const uint8_t* scales, std::shared_ptr<const void> storage)
      : N_(N), K_(K), nb_(ceil_div(K, 16)), codes_(codes), scales_(scales), storage_(std::move(storage)) {}
  int64_t rows() const override { return N_; }
  int64_t cols() const override { return K_; }
  size_t bytes() const override { return static_cast<size_t>(N_ * nb_ * 9); }
  void decode_strided(int64_t n, int64_t k0, int kc, float* out, int stride) const {
    const uint8_t* codes = codes_ + n * nb_ * 8;
    const uint8_t* scales = scales_ + n * nb_;
    float buf[16], t[16];
    for (int64_t b = k0 / 16; b * 16 < k0 + kc; ++b) {
      scaled_code_table<Nvfp4_16>(ue4m3_decode(scales[b]), t);  // as Nvfp4_16::dequantize
      for (int i = 0; i < 8; ++i) {
        buf[2 * i] = t[codes[b * 8 + i] & 0xF];
        buf[2 * i + 1] = t[codes[b * 8 + i] >> 4];
      }
      const int64_t lo = std::max<int64_t>(b * 16, k0), hi = std::min<int64_t>((b + 1) * 16, k0 + kc);
      for (int64_t k = lo; k < hi; ++k) out[(k - k0) * stride] = buf[k - b * 16];
    }
  }

 private:
  int64_t N_, K_, nb_;
  const uint8_t* codes_;
  const uint8_t* scales_;
  std::shared_ptr<const void> storage_;
};

// BF16 / FP16 bits read where they lie (Linear::create_fp32_on_16bit).
class View16Source final : public WeightPanelSource {
 public:
  View16Source(int64_t N, int64_t K, const uint8_t* bits, bool bf16, std::shared_ptr<const void> storage)
      : N_(N), K_(K), bits_(bits), bf16_(bf16), storage_(std::move(storage)) {}
  int64_t rows() const override { return N_; }
  int64_t cols() const override { return K_; }
  size_t bytes() const override { return static_cast<size_t>(N_ * K_ * 2); }
  void decode_segment(int64_t n, int64_t k0, int kc, float* out) const override {
    const uint8_t* p = bits_ + 2 * (n * K_ + k0);
    for (int t = 0; t < kc; ++t) {
      uint16_t h;
      std::memcpy(&h, p + 2 * t, 2);
      out[t] = bf16_ ? bf16_decode(h) : fp16_decode(h);
    }
  }

 private:
  int64_t N_, K_;
  const uint8_t* bits_;
  bool bf16_;
  std::shared_ptr<const void> storage_;
};

// ================================================================================================
// Concrete layers: weight storage + online activation preparation.

template <class F>
std::vector<float> global_col_scale(const QuantizedMatrix<F>& q) {
  return std::vector<float>(static_cast<size_t>(q.rows), q.global(0));
}

// Block-quantized activations X^ (scaled domain) + row scales.
template <class F>
void prepare_blocks(const float* X, int64_t M, int64_t K, GlobalScale g, std::vector<float>& xhat,
                    std::vector<float>& rs) {
  const QuantizedMatrix<F> q = quantize_matrix<F>(X, M, K, g);
  for (int64_t m = 0; m < M; ++m) {
    dequantize_row<F>(q.row(m), K, xhat.data() + m * K);
    rs[m] = q.global(m);
  }
}

// SharQ through the packed path: the backbone and residual blocks a GEMM consumes, then X^ = S^ + R^.
template <class V, int G>
void prepare_sharq_packed(const float* X, int64_t M, int64_t K, const Scheme& s, std::vector<float>& xhat,
                          std::vector<float>& rs, std::vector<float>* sh, std::vector<float>* rh) {
  const auto a = sharq_prepare<V, G>(X, M, K, s.mask.score, s.act_scale);
#pragma omp parallel for schedule(static) if (M * K > (1 << 15))
  for (int64_t m = 0; m < M; ++m) {
    sharq_dequantize_row<V, G>(a, m, xhat.data() + m * K, sh ? sh->data() + m * K : nullptr,
                               rh ? rh->data() + m * K : nullptr);
    rs[m] = a.global(m);
  }
}

class SchemeLinear final : public Linear {
 public:
  // Weights already in their packed form (a quantized checkpoint).
  SchemeLinear(const Scheme& s, int64_t N, int64_t K, const float* bias, std::unique_ptr<WeightPanelSource> weights,
               std::vector<float> col_scale)
      : Linear(s, N, K) {
    if (bias) bias_.assign(bias, bias + N);
    weights_ = std::move(weights);
    col_scale_ = std::move(col_scale);
  }
  SchemeLinear(const Scheme& s, const float* W, int64_t N, int64_t K, const float* bias) : Linear(s, N, K) {
    if (bias) bias_.assign(bias, bias + N);
    switch (s.kind) {
      case SchemeKind::fp32: weights_ = std::make_unique<Fp32Source>(W, N, K); break;
      case SchemeKind::fp16: weights_ = std::make_unique<Dense16Source<Fp16Codec>>(W, N, K); break;
      case SchemeKind::bf16: weights_ = std::make_unique<Dense16Source<Bf16Codec>>(W, N, K); break;
      case SchemeKind::fp8: weights_ = std::make_unique<Fp8Source>(W, N, K, col_scale_); break;
      case SchemeKind::w4a16:
      case SchemeKind::nvfp4: set_blocks<Nvfp4_16>(W, GlobalScale::per_tensor); break;
      case SchemeKind::sharq:  // W32 shared payload (the paper), or NVFP4-16 with :w16
        if (s.w16) set_blocks<Nvfp4_16>(W, GlobalScale::per_tensor);
        else set_blocks<Nvfp4_32>(W, GlobalScale::per_tensor);
        break;
      case SchemeKind::mxfp4:
      case SchemeKind::sharq_mxfp4: set_blocks<Mxfp4>(W, GlobalScale::none); break;
      case SchemeKind::hif4:
      case SchemeKind::sharq_hif4: set_blocks<Hif4>(W, GlobalScale::none); break;
    }
  }

 protected:
  void prepare(const float* X, int64_t M, std::vector<float>& xhat, std::vector<float>& rs,
               std::vector<float>* sh, std::vector<float>* rh) const override {
    const int64_t K = K_;
    const size_t n = static_cast<size_t>(M * K);
    xhat.resize(n);
    rs.assign(static_cast<size_t>(M), 1.0f);
    if (sh) sh->assign(n, 0.0f);
    if (rh) rh->assign(n, 0.0f);
    switch (scheme_.kind) {
      case SchemeKind::fp32: std::copy_n(X, n, xhat.data()); break;
      case SchemeKind::fp16: for (size_t i = 0; i < n; ++i) xhat[i] = round_fp16(X[i]); break;
      case SchemeKind::bf16:
      case SchemeKind::w4a16: for (size_t i = 0; i < n; ++i) xhat[i] = round_bf16(X[i]); break;
      case SchemeKind::fp8: {
        std::vector<uint8_t> codes(static_cast<size_t>(K));
        for (int64_t m = 0; m < M; ++m) {
          rs[m] = fp8_quantize_row(X + m * K, K, codes.data());
          for (int64_t k = 0; k < K; ++k) xhat[m * K + k] = e4m3_decode(codes[k]);
        }
        break;
      }
      case SchemeKind::nvfp4: prepare_blocks<Nvfp4_16>(X, M, K, scheme_.act_scale, xhat, rs); break;
      case SchemeKind::mxfp4: prepare_blocks<Mxfp4>(X, M, K, GlobalScale::none, xhat, rs); break;
      case SchemeKind::hif4: prepare_blocks<Hif4>(X, M, K, GlobalScale::none, xhat, rs); break;
      case SchemeKind::sharq:
        prepare_sharq<SharqNvfp4>(X, M, xhat, rs, sh, rh, SharqFormat::nvfp4);
        if (scheme_.merged)  // the GPU's merged plane: S^ + R^ (exact in FP32) rounded once to FP16
          for (size_t i = 0; i < n; ++i) xhat[i] = round_fp16(xhat[i]);
        break;
      case SchemeKind::sharq_mxfp4: prepare_sharq<SharqMxfp4>(X, M, xhat, rs, sh, rh, SharqFormat::mxfp4); break;
      case SchemeKind::sharq_hif4: prepare_sharq<SharqHif4>(X, M, xhat, rs, sh, rh, SharqFormat::hif4); break;
    }
  }

 private:
  template <class F>
  void set_blocks(const float* W, GlobalScale g) {
    auto q = quantize_matrix<F>(W, N_, K_, g);
    col_scale_ = global_col_scale(q);
    weights_ = std::make_unique<BlockSource<F>>(std::move(q));
  }

  template <class V>
  void prepare_sharq(const float* X, int64_t M, std::vector<float>& xhat, std::vector<float>& rs,
                     std::vector<float>* sh, std::vector<float>* rh, SharqFormat fmt) const {
    const GlobalScale g = V::kGlobal ? scheme_.act_scale : GlobalScale::none;
    Scheme s = scheme_;
    s.act_scale = g;
    switch (scheme_.mask.kind) {
      case MaskKind::pair48: prepare_sharq_packed<V, 8>(X, M, K_, s, xhat, rs, sh, rh); return;
      case MaskKind::scalar24: prepare_sharq_packed<V, 4>(X, M, K_, s, xhat, rs, sh, rh); return;
      case MaskKind::nm: {  // general N:M has no packed form: the dense reference path
        const DenseDecomposition d = sharq_decompose_dense(X, M, K_, fmt, scheme_.mask, g);
        for (size_t i = 0; i < xhat.size(); ++i) xhat[i] = d.s_hat[i] + d.r_hat[i];
        if (sh) *sh = d.s_hat;
        if (rh) *rh = d.r_hat;
        for (int64_t m = 0; m < M; ++m) rs[m] = d.g.empty() ? 1.0f : (d.g.size() == 1 ? d.g[0] : d.g[m]);
        return;
      }
    }
  }
};

}  // namespace

std::unique_ptr<Linear> Linear::create(const Scheme& scheme, const float* W, int64_t N, int64_t K, const float* bias) {
  check_shape("Linear weight", N, K);
  if (N * K > 0 && W == nullptr) throw std::invalid_argument("Linear::create: null weight pointer");
  return std::make_unique<SchemeLinear>(scheme, W, N, K, bias);
}

namespace {

template <class F>
std::unique_ptr<Linear> create_from_blocks(const Scheme& scheme, QuantizedMatrix<F> w, const float* bias) {
  check_shape("Linear weight", w.rows, w.cols);
  if (scheme.fp4_weight_block() != F::kBlock)
    throw std::invalid_argument(fmt::format("scheme '{}' does not run on NVFP4 weights with {}-element scale blocks", scheme.name(), F::kBlock));
  if (w.gmode != GlobalScale::per_tensor || w.g.size() != 1)
    throw std::invalid_argument(fmt::format("scheme '{}': quantized weights need one per-tensor global scale", scheme.name()));
  if (static_cast<int64_t>(w.blocks.size()) != w.rows * ceil_div(w.cols, F::kBlock) || w.blocks_per_row != ceil_div(w.cols, F::kBlock))
    throw std::invalid_argument(fmt::format("scheme '{}': quantized weights hold {} blocks for a {}x{} matrix", scheme.name(), w.blocks.size(),
                                            w.rows, w.cols));
  const int64_t N = w.rows, K = w.cols;
  std::vector<float> col_scale = global_col_scale(w);
  return std::make_unique<SchemeLinear>(scheme, N, K, bias, std::make_unique<BlockSource<F>>(std::move(w)), std::move(col_scale));
}

}  // namespace

std::unique_ptr<Linear> Linear::create(const Scheme& scheme, QuantizedMatrix<Nvfp4_16> w, const float* bias) {
  return create_from_blocks<Nvfp4_16>(scheme, std::move(w), bias);
}
std::unique_ptr<Linear> Linear::create(const Scheme& scheme, QuantizedMatrix<Nvfp4_32> w, const float* bias) {
  return create_from_blocks<Nvfp4_32>(scheme, std::move(w), bias);
}

std::unique_ptr<Linear> Linear::create_fp8(const Scheme& scheme, int64_t N, int64_t K, std::vector<uint8_t> codes,
                                           std::vector<float> channel_scales, const float* bias) {
  check_shape("Linear weight", N, K);
  if (scheme.kind != SchemeKind::fp8)
    throw std::invalid_argument(fmt::format("scheme '{}' does not run on FP8 weights", scheme.name()));
  if (static_cast<int64_t>(codes.size()) != N * K || static_cast<int64_t>(channel_scales.size()) != N)
    throw std::invalid_argument(fmt::format("fp8 weights: {} codes and {} scales for a {}x{} matrix", codes.size(), channel_scales.size(), N, K));
  return std::make_unique<SchemeLinear>(scheme, N, K, bias, std::make_unique<Fp8Source>(N, K, std::move(codes)), std::move(channel_scales));
}

std::unique_ptr<Linear> Linear::create_stored_nvfp4(const Scheme& scheme, int64_t N, int64_t K, const uint8_t* codes, const uint8_t* scales,
                                                    float g, std::shared_ptr<const void> storage, const float* bias) {
  check_shape("Linear weight", N, K);
  if (scheme.fp4_weight_block() == 0)
    throw std::invalid_argument(fmt::format("scheme '{}' does not run on NVFP4 weights", scheme.name()));
  if (N * K > 0 && (codes == nullptr || scales == nullptr)) throw std::invalid_argument("Linear::create_stored_nvfp4: null weight pointer");
  return std::make_unique<SchemeLinear>(scheme, N, K, bias, std::make_unique<StoredNvfp4Source>(N, K, codes, scales, std::move(storage)),
                                        std::vector<float>(static_cast<size_t>(N), g));
}

std::unique_ptr<Linear> Linear::create_fp32_on_16bit(int64_t N, int64_t K, const uint8_t* bits, bool bf16, std::shared_ptr<const void> storage,
                                                     const float* bias) {
  check_shape("Linear weight", N, K);
  if (N * K > 0 && bits == nullptr) throw std::invalid_argument("Linear::create_fp32_on_16bit: null weight pointer");
  return std::make_unique<SchemeLinear>(Scheme{}, N, K, bias, std::make_unique<View16Source>(N, K, bits, bf16, std::move(storage)),
                                        std::vector<float>{});
}

size_t Linear::weight_bytes() const { return weights_->bytes(); }

void Linear::forward(const float* X, int64_t M, float* Y) const {
  forward_prepared(prepare_input(X, M), Y);
}

Linear::PreparedInput Linear::prepare_input(const float* X, int64_t M) const {
  if (M < 0) throw std::invalid_argument(fmt::format("{} linear: negative M = {}", scheme_.name(), M));
  PreparedInput p;
  p.M = M;
  p.K = K_;
  p.scheme = scheme_.name();
  if (M > 0) prepare(X, M, p.xhat, p.row_scale, nullptr, nullptr);
  return p;
}

void Linear::forward_prepared(const PreparedInput& in, float* Y) const {
  if (in.scheme != scheme_.name())
    throw std::invalid_argument(fmt::format("{} linear: input was prepared for scheme '{}'", scheme_.name(), in.scheme));
  if (in.K != K_)
    throw std::invalid_argument(fmt::format("{} linear: prepared input has K = {}, layer has in_features = {}",
                                            scheme_.name(), in.K, K_));
  if (in.M == 0) return;
  gemm_xwt(in.xhat.data(), in.M, K_, *weights_, in.row_scale.data(),
           col_scale_.empty() ? nullptr : col_scale_.data(), bias_.empty() ? nullptr : bias_.data(), Y);
}

std::vector<float> Linear::forward(const std::vector<float>& X, int64_t M) const {
  if (M < 0 || static_cast<int64_t>(X.size()) != M * K_)
    throw std::invalid_argument(fmt::format("{} linear: input has {} values, expected M x K = {} x {}",
                                            scheme_.name(), X.size(), M, K_));
  std::vector<float> Y(static_cast<size_t>(M * N_));
  forward(X.data(), M, Y.data());
  return Y;
}

LinearOperands Linear::operands(const float* X, int64_t M) const {
  LinearOperands o;
  o.M = M; o.N = N_; o.K = K_;
  const bool sh = scheme_.is_sharq();
  prepare(X, M, o.x, o.row_scale, sh ? &o.s_hat : nullptr, sh ? &o.r_hat : nullptr);
  o.w = weights_->decode_all();
  o.col_scale = col_scale_.empty() ? std::vector<float>(static_cast<size_t>(N_), 1.0f) : col_scale_;
  return o;
}

}  // namespace sharq
