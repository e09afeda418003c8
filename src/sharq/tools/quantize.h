// `sharq quantize MODEL OUT --scheme S --format F`: a quantized Hugging Face checkpoint that vLLM,
// SGLang, TensorRT-LLM and sharq itself load (docs/checkpoint_formats.md; README "Quantized
// checkpoints").
//
// OUT gets config.json (the source's, plus the format's quantization_config and sharq's marker),
// model.safetensors (the projections quantized; embeddings, norms, biases and lm_head copied in
// their source dtype) and the tokenizer files.
//
// Activation scales. Without calibration data no static activation scale is written, so the NVFP4
// schemes are stored in the formats' weights-only (W4A16) form: compressed-tensors with
// input_activations null, ModelOpt W4A16_NVFP4. With calib_data (nvfp4, sharq, sharq:w16) the CPU
// runtime runs the source model (FP32, unquantized: ModelOpt calibrates with its quantizers off)
// over the first calib_tokens tokens of the text, in windows of the model's context, and records
// the amax of every projection's input; then the W4A4 form is written: compressed-tensors
// input_global_scale = a divisor 2688/amax (F32 [1]), ModelOpt input_scale = a multiplier
// amax/2688 (F32 []). q/k/v read one input, as do gate/up, so their input scales are equal. sharq
// reads either form back and runs with its own online activation scales. fp8 is W8A8 with dynamic
// per-token activations in both formats, which needs no calibration either.
//
// Every projection is converted to FP32 one at a time and dropped after quantizing; the output is
// written one tensor at a time, so peak memory is one projection's FP32 copy plus its codes.
// (Calibration first builds the source model in FP32, 4 bytes per parameter, and drops it before
// quantizing.)
//
// A synthetic source (synthetic = "llama3.1-8b", ...) has the real shapes of that architecture and
// random weights: each projection is generated when it is quantized (uniform in [-a, a] with one
// element at +a, so its amax is known without a pass over it); embeddings and lm_head are BF16.
#pragma once

#include <cstdint>
#include <memory>
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
  // Instead of model_path: random weights of a published architecture (synthetic_model_config
  // names), for memory and speed measurements. No tokenizer is written.
  std::string synthetic;
  std::shared_ptr<const ModelConfig> synthetic_config;  // tests: this architecture instead of a named one
  uint64_t seed = 1;
  // Static activation scales (the formats' W4A4 form): a text file, tokenized with the model's
  // tokenizer (or tokenizer_path); its first calib_tokens tokens (>= 1) are run, or the whole text
  // when it is shorter, unless calib_tokens_exact (the user asked for that many: then an error).
  std::string calib_data;
  int64_t calib_tokens = 2048;
  bool calib_tokens_exact = false;
};

struct QuantizeReport {
  std::string source, out_dir, scheme;
  CheckpointFormat format = CheckpointFormat::none;
  StoredWeights weights = StoredWeights::none;
  int64_t quantized = 0, copied = 0;  // tensors
  int64_t inexact_divisors = 0;       // compressed-tensors NVFP4: layers whose g has no FP32 divisor x with 1/x == g
  uint64_t source_bytes = 0, out_bytes = 0;
  double seconds = 0;
  // calibration (calib_data): calib_tokens tokens run in calib_windows windows of at most calib_ctx;
  // calib_unrouted: MoE expert inputs no calibration token reached (they take their layer's max)
  bool static_input_scales = false;
  int64_t calib_tokens = 0, calib_windows = 0, calib_ctx = 0, calib_unrouted = 0;
  double calib_seconds = 0;
  std::vector<std::string> files;     // written, relative to out_dir
  std::vector<std::string> notes;
};

// Throws std::invalid_argument for a scheme or format with no stored form, an OUT that exists and is
// not empty, an already quantized source, or calibration data that cannot be used (a missing or
// empty file, no tokens, a scheme without static activation scales: the message names --calib-data
// and the file); CheckpointError from loading MODEL; std::runtime_error for I/O failures (naming
// the file).
QuantizeReport quantize_checkpoint(const QuantizeOptions& opt);
std::string format_quantize_report(const QuantizeReport& r);

// The quantization_config `sharq quantize` writes for a scheme and format (also what the tests
// check field by field). `scheme` must have a stored form; static_input_scales: the W4A4 form
// (calibrated input scales stored; NVFP4 schemes with activation quantization only).
std::string quantization_config_json(const std::string& scheme, CheckpointFormat format, bool static_input_scales = false);

}  // namespace sharq
