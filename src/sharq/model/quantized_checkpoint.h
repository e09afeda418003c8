// Quantized Hugging Face checkpoints: compressed-tensors ("nvfp4-pack-quantized", "float-quantized"
// per channel) and NVIDIA ModelOpt (NVFP4, W4A16_NVFP4, FP8_PER_CHANNEL_PER_TOKEN, FP8), read
// without re-quantization. docs/checkpoint_formats.md is the byte-level specification and names the
// public sources whose layout this follows.
//
// load_hf_weights() calls read_quantization_config() when config.json has a quantization_config
// (or, for ModelOpt <= 0.29, when hf_quant_config.json is present). Each quantized projection then
// appears in ModelWeights::tensors under its plain name ("model.layers.0.self_attn.q_proj.weight")
// as a TensorView of logical shape [N, K] whose `quantized` member holds the stored codes, block
// scales and global scale; the component tensors (weight_packed, weight_scale, weight_global_scale,
// weight_scale_2, input_global_scale, input_scale) are consumed and no longer listed.
//
// Value conventions (the part that silently breaks when wrong):
//   compressed-tensors weight_global_scale is a DIVISOR (~ 2688 / amax): g = fl(1 / stored)
//     (checkpoints sharq writes also record the exact g of each layer in quantization_config.sharq.
//     global_scales, which sharq prefers once it agrees with fl(1 / stored) to 2 ulps);
//   ModelOpt weight_scale_2 is a MULTIPLIER (amax / 2688): g = stored;
//   in both, W = e2m1(code) * e4m3(weight_scale) * g, codes low nibble first.
//   FP8 weight_scale is a multiplier in both formats: W = e4m3(code) * scale[n].
// Stored activation scales (input_global_scale / input_scale, compressed-tensors a divisor
// 2688/amax, ModelOpt a multiplier amax/2688) are checked (a float scalar, positive and finite;
// NaN / Inf only with opt.allow_nonfinite) and then ignored: sharq computes its activation scales
// online (per token by default).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sharq/model/weights.h"
#include "sharq/quant/quantized_matrix.h"
#include "sharq/quant/scheme.h"

namespace sharq {

// One projection's weight as stored, viewed in place (the mapped file is kept by ModelWeights).
struct QuantizedWeight {
  std::string name;  // the plain name, "....q_proj.weight"
  CheckpointFormat format = CheckpointFormat::none;
  StoredWeights weights = StoredWeights::none;
  int64_t rows = 0, cols = 0;  // N, K
  // NVFP4: U8 [N, ceil(K/16) * 8], two E2M1 codes per byte, element 2j in the low nibble.
  // FP8:   F8_E4M3 [N, K].
  TensorView codes;
  // NVFP4: F8_E4M3 [N, ceil(K/16)], one scale per 16 elements of a row (sign bit 0).
  TensorView scales;
  float global = 1.0f;                // NVFP4: the multiplier g
  std::vector<float> channel_scales;  // FP8: N multipliers
};

// The stored NVFP4 weights as sharq's containers, bytes copied as they are (no re-rounding):
// 16-element blocks (any NVFP4 checkpoint), or sharq's W32 blocks (StoredWeights::nvfp4_32 only:
// 32-block j takes the scale of 16-blocks 2j and 2j+1, which the loader checked are equal).
QuantizedMatrix<Nvfp4_16> nvfp4_16_matrix(const QuantizedWeight& w);
QuantizedMatrix<Nvfp4_32> nvfp4_32_matrix(const QuantizedWeight& w);

// compressed-tensors' global scale convention: the stored divisor -> sharq's multiplier, in FP32
// exactly as vLLM computes it (1 / divisor).
float ct_global_multiplier(float divisor);
// The divisor to store for a multiplier g: an FP32 x with fl(1/x) == g when one exists within a
// few ulps of fl(1/g) (then the round trip is exact), else fl(1/g) (then the multiplier read back
// differs from g by about 1 ulp). `exact` says which.
float ct_global_divisor(float g, bool* exact = nullptr);

// An FP32 value as a C99 hex float ("0x1.8p-3"), which parse_exact_f32 reads back bit for bit.
std::string exact_f32_string(float v);
// A positive finite FP32 value written exactly (hex float, or decimal that is exactly an FP32 value);
// false for anything else (trailing text, rounding needed, zero, negative, inf, NaN).
bool parse_exact_f32(const std::string& s, float* out);

// Empty when `scheme` runs on the weights of `q`, else one sentence naming the scheme, the
// checkpoint (`source`) and its format, and the schemes that do run (sharq W32 on NVFP4-16
// weights suggests sharq:w16). Unquantized checkpoints run every scheme.
std::string quantized_scheme_mismatch(const QuantizationInfo& q, const Scheme& scheme, const std::string& source);

// The schemes a quantized checkpoint runs, for messages ("nvfp4, w4a16 or sharq:w16").
std::string schemes_for(const QuantizationInfo& q);

// Reads config.json's quantization_config (`config_text`, the file's bytes; `config_path` and
// `dir` for messages and for hf_quant_config.json) and turns the quantized projections of
// `w.tensors` into QuantizedWeight views (see the top of this file). Does nothing for an
// unquantized checkpoint. Throws CheckpointError naming the file and the field or tensor:
// an unknown quant_method or format, group_size other than 16, wrong dtype or shape of codes or
// scales, a missing global scale, a global scale that is not a positive finite number, NaN block
// scales (unless opt.allow_nonfinite), W32 scale pairs that differ, a projection left unquantized, a
// static activation scale that is not a positive finite float scalar.
void read_quantization_config(ModelWeights& w, const std::string& config_text, const std::string& config_path,
                              const std::string& dir, const LoadOptions& opt);

}  // namespace sharq
