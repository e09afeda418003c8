// The SharQ decomposition (SHARQ_SPEC "The SharQ decomposition").
//
//   X~ = X / g_x                          (NVFP4 only; per tensor or per token)
//   S  = mask(X~)                         pair-4:8 (default) or scalar 2:4
//   S^ = dequant(Qbb(S))                  Qbb spans Bbb logical positions (NVFP4-32 / MXFP4-32 / HiF4-64)
//   R  = X~ - S^                          residual against the *quantized* backbone
//   R^ = dequant(Qres(R))                 NVFP4-16 / MXFP4-32 / HiF4-64
//   Y  = g_x g_w (S^ W^T + R^ W^T)
//
// Two implementations of the same contract, llm.c style:
//  - sharq_prepare_span(): the packed path, one backbone span at a time (SHARQ_HD, so the CUDA prep
//    kernel runs the same code). It emits the packed backbone block (kept codes + metadata + scale)
//    and the residual blocks.
//  - sharq_decompose_dense(): the readable dense reference that returns S, S^, R, R^ as matrices
//    and also supports the general N:M mask. Tests check the two agree bit for bit.
#pragma once

#include <cstdint>
#include <vector>

#include "sharq/mask/nm_mask.h"
#include "sharq/quant/quantized_matrix.h"

namespace sharq {

// Format pairing of each SharQ variant.
struct SharqNvfp4 { using Fbb = Nvfp4_32; using Fres = Nvfp4_16; static constexpr bool kGlobal = true; };
struct SharqMxfp4 { using Fbb = Mxfp4;    using Fres = Mxfp4;    static constexpr bool kGlobal = false; };
struct SharqHif4  { using Fbb = Hif4;     using Fres = Hif4;     static constexpr bool kGlobal = false; };

template <class V, int Group>
using backbone_block_t = block_backbone<typename V::Fbb::scale_t, V::Fbb::kBlock, Group>;

// One backbone span: Bbb values of X~ in, packed backbone block + Bbb/Bres residual blocks out.
// s_hat (optional, Bbb floats) receives S^ for callers that want it.
template <class V, int Group>
SHARQ_HD void sharq_prepare_span(const float* xt, PairScore score, backbone_block_t<V, Group>& bb,
                                 typename V::Fres::block_t* res, float* s_hat = nullptr) {
  using Fbb = typename V::Fbb;
  using Fres = typename V::Fres;
  constexpr int B = Fbb::kBlock;
  float s[B];
  for (int i = 0; i < B / Group / 2; ++i) bb.meta[i] = 0;
  for (int i = 0; i < B / 4; ++i) bb.qs[i] = 0;
  // 1. mask, group by group; S keeps the selected values and zeroes the rest
  for (int g = 0; g < B / Group; ++g) {
    uint8_t meta, bits;
    if constexpr (Group == 8) {
      meta = pair48_select(xt + 8 * g, score);
      bits = pair48_keep_bits(meta);
    } else {
      meta = scalar24_select(xt + 4 * g);
      bits = scalar24_keep_bits(meta);
    }
    set_nibble(bb.meta, g, meta);
    for (int i = 0; i < Group; ++i) s[g * Group + i] = ((bits >> i) & 1u) ? xt[g * Group + i] : 0.0f;
  }
  // 2. quantize S over the logical span; keep only the kept codes (dropped codes are 0 anyway)
  typename Fbb::block_t q;
  Fbb::quantize(s, q);
  bb.s = q.s;
  int kept = 0;
  float r[B];
  for (int g = 0; g < B / Group; ++g) {
    const uint8_t meta = get_nibble(bb.meta, g);
    const uint8_t bits = Group == 8 ? pair48_keep_bits(meta) : scalar24_keep_bits(meta);
    for (int i = 0; i < Group; ++i) {
      const int k = g * Group + i;
      float sh = 0.0f;  // a dropped position stays exactly 0 in S^
      if ((bits >> i) & 1u) {
        const uint8_t code = get_nibble(q.qs, k);
        set_nibble(bb.qs, kept++, code);
        sh = Fbb::decode(code) * Fbb::element_scale(q.s, k);
      }
      if (s_hat) s_hat[k] = sh;
      r[k] = xt[k] - sh;  // 3. residual against the quantized backbone
    }
  }
  // 4. quantize the residual
  for (int b = 0; b < B / Fres::kBlock; ++b) Fres::quantize(r + b * Fres::kBlock, res[b]);
}

// S^ of one packed backbone block (Bbb floats): kept positions decoded, dropped positions 0.
template <class V, int Group>
SHARQ_HD void backbone_dequantize_block(const backbone_block_t<V, Group>& bb, float* out) {
  using Fbb = typename V::Fbb;
  constexpr int B = Fbb::kBlock;
  int kept = 0;
  for (int g = 0; g < B / Group; ++g) {
    const uint8_t meta = get_nibble(bb.meta, g);
    const uint8_t bits = Group == 8 ? pair48_keep_bits(meta) : scalar24_keep_bits(meta);
    for (int i = 0; i < Group; ++i) {
      const int k = g * Group + i;
      out[k] = ((bits >> i) & 1u) ? Fbb::decode(get_nibble(bb.qs, kept++)) * Fbb::element_scale(bb.s, k) : 0.0f;
    }
  }
}

// Packed activations of a whole M x K matrix: what the sparse + dense GEMMs consume.
template <class V, int Group>
struct SharqActivations {
  using bb_t = backbone_block_t<V, Group>;
  using res_t = typename V::Fres::block_t;
  static constexpr int kSpan = V::Fbb::kBlock;
  static constexpr int kResPerSpan = V::Fbb::kBlock / V::Fres::kBlock;
  int64_t rows = 0, cols = 0, spans_per_row = 0;
  std::vector<bb_t> backbone;   // rows * spans_per_row
  std::vector<res_t> residual;  // rows * spans_per_row * kResPerSpan
  std::vector<float> g;         // NVFP4: 1 (per tensor) or rows (per token); else empty
  float global(int64_t r) const { return g.empty() ? 1.0f : (g.size() == 1 ? g[0] : g[static_cast<size_t>(r)]); }
  size_t bytes() const { return backbone.size() * sizeof(bb_t) + residual.size() * sizeof(res_t) + g.size() * 4; }
};

// Packed path over a whole matrix. gmode is ignored (none) for MXFP4/HiF4.
template <class V, int Group>
SharqActivations<V, Group> sharq_prepare(const float* x, int64_t rows, int64_t cols, PairScore score, GlobalScale gmode);

// X^ = S^ + R^ of row r (scaled domain, cols floats). For NVFP4 this sum is exact in FP32 (both
// terms are multiples of 2^-10 below 2^12, see docs/numerics.md); for MXFP4/HiF4 it is FP32-rounded.
template <class V, int Group>
void sharq_dequantize_row(const SharqActivations<V, Group>& a, int64_t r, float* xhat, float* s_hat = nullptr,
                          float* r_hat = nullptr);

// ---- dense reference ---------------------------------------------------------------------------
enum class SharqFormat : uint8_t { nvfp4, mxfp4, hif4 };

struct DenseDecomposition {
  int64_t rows = 0, cols = 0;
  std::vector<float> g;                 // second-level scales (NVFP4), else empty
  std::vector<float> xt, s, s_hat, r, r_hat;  // rows x cols each, scaled domain
  std::vector<uint8_t> keep;            // rows x cols mask flags
};

DenseDecomposition sharq_decompose_dense(const float* x, int64_t rows, int64_t cols, SharqFormat fmt,
                                         const MaskSpec& mask, GlobalScale gmode);

}  // namespace sharq
