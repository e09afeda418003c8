// Reference linear layers Y = X W^T (+ bias) for every scheme, on the CPU.
//
// Weights are quantized once, at construction, into their packed form; forward() prepares the
// activations (the scheme's online quantization) and runs the blocked GEMM straight from the
// packed weights (gemm.h), multi-threaded with OpenMP.
//
// Schemes (SHARQ_SPEC):
//   fp32, fp16, bf16       unquantized / rounded operands
//   fp8                    W8A8 E4M3: per-output-channel weight scales, per-token activation scales
//   w4a16                  NVFP4-16 weights (per-tensor g_w), BF16 activations
//   nvfp4                  W4A4 NVFP4-16 (the paper's baseline), activation g_x per tensor or token
//   mxfp4, hif4            W4A4 MXFP4-32 / HiF4-64
//   sharq                  NVFP4 SharQ: pair-4:8 backbone NVFP4-32 + residual NVFP4-16, W32 shared
//   sharq-mxfp4            the same with MXFP4-32 everywhere
//   sharq-hif4             scalar 2:4, HiF4-64 everywhere
// Options after a colon: mask p48 | s24 | nmN_M, pair score max | l1 | l2 | maxmin,
// activation scale tensor | token. Example: "sharq:s24:token".
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sharq/kernels/cpu/gemm.h"
#include "sharq/mask/nm_mask.h"
#include "sharq/quant/quantized_matrix.h"

namespace sharq {

enum class SchemeKind : uint8_t { fp32, fp16, bf16, fp8, w4a16, nvfp4, mxfp4, hif4, sharq, sharq_mxfp4, sharq_hif4 };

struct Scheme {
  SchemeKind kind = SchemeKind::fp32;
  MaskSpec mask;                                 // SharQ variants only
  GlobalScale act_scale = GlobalScale::per_tensor;  // nvfp4 and sharq (NVFP4) only

  bool is_sharq() const;
  bool has_act_global_scale() const;  // nvfp4, sharq
  std::string name() const;           // canonical, parseable by parse_scheme
};

// Throws std::invalid_argument naming the offending word and listing the known ones.
Scheme parse_scheme(const std::string& text);
std::vector<Scheme> parse_scheme_list(const std::string& comma_separated);
const std::vector<std::string>& scheme_base_names();

// The W4A4 baseline a SharQ variant is measured against (sharq -> nvfp4 with the same act scale).
Scheme sharq_baseline(const Scheme& s);

// Dequantized operands, scaled domain: Y[m][n] = row_scale[m] col_scale[n] sum_k x[m][k] w[n][k] + bias[n].
struct LinearOperands {
  int64_t M = 0, N = 0, K = 0;
  std::vector<float> x;             // M x K: X^ (for SharQ, S^ + R^)
  std::vector<float> s_hat, r_hat;  // M x K, SharQ only
  std::vector<float> w;             // N x K: W^
  std::vector<float> row_scale;     // M
  std::vector<float> col_scale;     // N
};

class Linear {
 public:
  // W: N x K row-major (nn.Linear layout); bias: N values or nullptr.
  static std::unique_ptr<Linear> create(const Scheme& scheme, const float* W, int64_t N, int64_t K,
                                        const float* bias = nullptr);
  virtual ~Linear() = default;

  const Scheme& scheme() const { return scheme_; }
  int64_t in_features() const { return K_; }
  int64_t out_features() const { return N_; }
  size_t weight_bytes() const;

  // X: M x K; Y: M x N. M = 0 is allowed.
  void forward(const float* X, int64_t M, float* Y) const;

  // The online activation preparation on its own, so that layers reading the same input (q/k/v,
  // gate/up) prepare it once: it depends only on the scheme, never on the weights.
  struct PreparedInput {
    int64_t M = 0, K = 0;
    std::string scheme;  // name of the scheme that prepared it
    std::vector<float> xhat, row_scale;
  };
  PreparedInput prepare_input(const float* X, int64_t M) const;
  // Y = this layer applied to a prepared input; `in` must come from a layer of the same scheme
  // (name) and in_features (checked).
  void forward_prepared(const PreparedInput& in, float* Y) const;

  std::vector<float> forward(const std::vector<float>& X, int64_t M) const;

  // The dequantized operands this layer computes with (for FP64 references and `opcheck --save`).
  LinearOperands operands(const float* X, int64_t M) const;

 protected:
  Linear(const Scheme& s, int64_t N, int64_t K) : scheme_(s), N_(N), K_(K) {}
  Scheme scheme_;
  int64_t N_, K_;
  std::vector<float> bias_;
  std::unique_ptr<WeightPanelSource> weights_;
  std::vector<float> col_scale_;

  // Online activation preparation: X^ (M x K, scaled domain) and its row scales.
  virtual void prepare(const float* X, int64_t M, std::vector<float>& xhat, std::vector<float>& row_scale,
                       std::vector<float>* s_hat, std::vector<float>* r_hat) const = 0;
};

}  // namespace sharq
