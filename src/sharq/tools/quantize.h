// `sharq quantize MODEL OUT --scheme S --format F`: a quantized Hugging Face checkpoint that vLLM,
// SGLang, TensorRT-LLM and sharq itself load (docs/checkpoint_formats.md; README "Quantized
// checkpoints").
//
// OUT gets config.json (the source's, plus the format's quantization_config and sharq's marker),
// model.safetensors (the projections quantized; embeddings, norms, biases and lm_head copied in
// their source dtype) and the tokenizer files. Weights only: without calibration data no static
// activation scale is written, so the NVFP4 schemes are stored in the formats' weights-only
// (W4A16) form: compressed-tensors with input_activations null, ModelOpt W4A16_NVFP4. sharq reads
// them back and runs the recorded scheme (or any other scheme of the same weights) with its own
// online activation scales. fp8 is W8A8 with dynamic per-token activations in both formats, which
// needs no calibration either.
//
// Every projection is converted to FP32 one at a time and dropped after quantizing; the output is
// written one tensor at a time, so peak memory is one projection's FP32 copy plus its codes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sharq/model/weights.h"

namespace sharq {

struct QuantizeOptions {
  std::string model_path, out_dir;
  std::string scheme = "nvfp4";                 // nvfp4, w4a16, sharq, sharq:w16 (any activation options), fp8
  std::string format = "compressed-tensors";    // or "modelopt"
  std::string tokenizer_path;                   // llama2.c sources: the tokenizer to copy (default: the tok*.bin beside MODEL)
  // q/k/v (and gate/up) share one NVFP4 global scale, from the largest amax of the group, as vLLM
  // and TensorRT-LLM require of fused layers (docs/checkpoint_formats.md 6.3). false: one g per
  // projection, which is what `sharq ppl MODEL --schemes S` quantizes at load (bit-identical round
  // trip), but vLLM would dequantize fused parts with the wrong scale.
  bool fused_global_scales = true;
  bool progress = true;  // one line per layer on stderr
};

struct QuantizeReport {
  std::string source, out_dir, scheme;
  CheckpointFormat format = CheckpointFormat::none;
  StoredWeights weights = StoredWeights::none;
  int64_t quantized = 0, copied = 0;  // tensors
  int64_t inexact_divisors = 0;       // compressed-tensors NVFP4: layers whose g has no FP32 divisor x with 1/x == g
  uint64_t source_bytes = 0, out_bytes = 0;
  double seconds = 0;
  std::vector<std::string> files;     // written, relative to out_dir
  std::vector<std::string> notes;
};

// Throws std::invalid_argument for a scheme or format with no stored form, an OUT that exists and is
// not empty, or an already quantized source; CheckpointError from loading MODEL; std::runtime_error
// for I/O failures (naming the file).
QuantizeReport quantize_checkpoint(const QuantizeOptions& opt);
std::string format_quantize_report(const QuantizeReport& r);

// The quantization_config `sharq quantize` writes for a scheme and format (also what the tests
// check field by field). `scheme` must have a stored form.
std::string quantization_config_json(const std::string& scheme, CheckpointFormat format);

}  // namespace sharq
