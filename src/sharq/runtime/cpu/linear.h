// Reference linear layers Y = X W^T (+ bias) for every scheme, on the CPU.
//
// Weights are quantized once, at construction, into their packed form; forward() prepares the
// activations (the scheme's online quantization) and runs the blocked GEMM straight from the
// packed weights (gemm.h), multi-threaded with OpenMP.
//
// Schemes and their options: quant/scheme.h.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sharq/kernels/cpu/gemm.h"
#include "sharq/quant/scheme.h"
#include "sharq/mask/nm_mask.h"
#include "sharq/quant/quantized_matrix.h"

namespace sharq {

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
  // From weights already quantized (a quantized checkpoint, model/quantized_checkpoint.h), used as
  // they are: the same layer create() builds when quantizing W gives these very blocks. The scheme's
  // weight format must match: NVFP4-16 blocks for w4a16, nvfp4 and sharq:w16; W32 blocks for sharq
  // (std::invalid_argument otherwise). g must be per tensor.
  static std::unique_ptr<Linear> create(const Scheme& scheme, QuantizedMatrix<Nvfp4_16> w, const float* bias = nullptr);
  static std::unique_ptr<Linear> create(const Scheme& scheme, QuantizedMatrix<Nvfp4_32> w, const float* bias = nullptr);
  // fp8 from stored E4M3 codes (N x K) and one FP32 multiplier per output channel.
  static std::unique_ptr<Linear> create_fp8(const Scheme& scheme, int64_t N, int64_t K, std::vector<uint8_t> codes,
                                            std::vector<float> channel_scales, const float* bias = nullptr);

  // Views in place (no copy of the weights): `storage` keeps the bytes alive (a checkpoint's mapped
  // files, ModelWeights::storage()); any alignment.
  //
  // NVFP4 in a quantized checkpoint's own layout: codes U8 [N, ceil(K/16) * 8] (element 2j in the
  // low nibble of byte j), E4M3 scales [N, ceil(K/16)], multiplier g. Every 16-element block decodes
  // as Nvfp4_16::dequantize does, so the layer computes exactly what create() computes from the
  // blocks nvfp4_16_matrix() copies out of these bytes. Runs the NVFP4-16 schemes (w4a16, nvfp4,
  // sharq:w16) and, when every pair of 16-block scales is equal (sharq's W32 payload, checked by
  // the loader), sharq's W32 too: a 32-block with scale s decodes to the same values as its two
  // 16-blocks with s.
  static std::unique_ptr<Linear> create_stored_nvfp4(const Scheme& scheme, int64_t N, int64_t K, const uint8_t* codes,
                                                     const uint8_t* scales, float g, std::shared_ptr<const void> storage,
                                                     const float* bias = nullptr);
  // The fp32 scheme on BF16 (bf16 = true) or FP16 weight bits, N x K little-endian: each widens to
  // FP32 exactly, so the layer computes what create(fp32, widened W) computes.
  static std::unique_ptr<Linear> create_fp32_on_16bit(int64_t N, int64_t K, const uint8_t* bits, bool bf16,
                                                      std::shared_ptr<const void> storage, const float* bias = nullptr);
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
