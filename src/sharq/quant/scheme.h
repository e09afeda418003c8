// The one scheme vocabulary of sharq, shared by the CPU reference, the GPU linear layers, the
// engine, the benches and the CLI: names, options, defaults and which device runs what.
//
// Schemes (SHARQ_SPEC):
//   fp32, fp16, bf16       unquantized / rounded operands
//   fp8                    W8A8 E4M3: per-output-channel weight scales (amax / 448, offline) and
//                          per-token dynamic activation scales (amax / 448 of the row): vLLM's
//                          dynamic-FP8 recipe. The only definition of fp8 anywhere in sharq.
//   w4a16                  NVFP4-16 weights (per-tensor g_w), BF16 activations
//   nvfp4                  W4A4 NVFP4-16 (the paper's baseline)
//   mxfp4, hif4            W4A4 MXFP4-32 / HiF4-64
//   sharq                  NVFP4 SharQ: pair-4:8 backbone NVFP4-32 + residual NVFP4-16, W32 shared
//   sharq-mxfp4            the same with MXFP4-32 everywhere
//   sharq-hif4             scalar 2:4, HiF4-64 everywhere
//
// Options after colons, in any order ("sharq:s24:tensor"):
//   p48 | s24 | nmN_M          mask (SharQ variants; default p48, sharq-hif4: s24; nmN_M: CPU only)
//   max | l1 | l2 | maxmin     pair score of the p48 mask (default max)
//   token | tensor             activation second-level scale g_x of nvfp4 and sharq (NVFP4).
//                              DEFAULT: token (one g_x per row), on every device. A token's result
//                              then never depends on the other tokens of its batch (the batch-
//                              invariance rule, docs/numerics.md). `tensor` is the paper's
//                              reference (one g_x over the whole X) and is batch-dependent by
//                              definition.
//   merged                     sharq (NVFP4) only: the two paths are pre-added and rounded to FP16,
//                              X^ = fp16(S^ + R^), and run as one GEMM (half the MMA work on
//                              Hopper). An approximation of the exact S^ + R^ (which is exact in
//                              FP32); the CPU reference computes the same rounding.
//   w16                        sharq (NVFP4) only: NVFP4-16 weights (the NVFP4 baseline's format)
//                              instead of the paper's shared W32 payload; both activation paths
//                              unchanged. Beyond the paper: Hopper decodes weights to FP16 whatever
//                              their block, so it costs no speed there.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sharq/mask/nm_mask.h"
#include "sharq/quant/quantized_matrix.h"

namespace sharq {

enum class SchemeKind : uint8_t { fp32, fp16, bf16, fp8, w4a16, nvfp4, mxfp4, hif4, sharq, sharq_mxfp4, sharq_hif4 };

struct Scheme {
  SchemeKind kind = SchemeKind::fp32;
  MaskSpec mask;                                 // SharQ variants only
  GlobalScale act_scale = GlobalScale::per_row;  // nvfp4 and sharq (NVFP4) only: token (default) | tensor
  bool merged = false;                           // sharq (NVFP4) only
  bool w16 = false;                              // sharq (NVFP4) only

  bool is_sharq() const;
  bool has_act_global_scale() const;  // nvfp4, sharq
  bool is_fp4_weight() const;         // w4a16, nvfp4, sharq: an NVFP4 weight payload (Fp4Tiles on the GPU)
  // NVFP4 weight scale block: 16 (w4a16, nvfp4, sharq:w16) or 32 (sharq's shared W32); 0 otherwise.
  int fp4_weight_block() const;
  std::string name() const;           // canonical: default options omitted; parse_scheme(name()) == *this
};

bool operator==(const Scheme& a, const Scheme& b);

// Throws std::invalid_argument naming the offending word and listing the known ones.
Scheme parse_scheme(const std::string& text);
// Throws for an empty item or a scheme given twice (by value: two spellings of one scheme count).
std::vector<Scheme> parse_scheme_list(const std::string& comma_separated);
const std::vector<std::string>& scheme_base_names();
// One line per option, for `sharq schemes` and --help texts.
const char* scheme_options_help();

// The W4A4 baseline a SharQ variant is measured against (sharq -> nvfp4 with the same act scale).
Scheme sharq_baseline(const Scheme& s);

enum class Device : uint8_t { cpu, cuda };
const char* to_string(Device d);
// Empty when `device` runs scheme `s`, else the reason (one sentence naming the scheme), so that
// every front end rejects an unsupported combination with the same message before any work.
std::string scheme_unsupported_reason(const Scheme& s, Device device);

}  // namespace sharq
