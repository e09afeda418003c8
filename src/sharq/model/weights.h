// ModelWeights: a checkpoint as its config plus named, read-only views of every tensor in its
// source dtype, under Hugging Face names ("model.embed_tokens.weight",
// "model.layers.3.self_attn.q_proj.weight", "lm_head.weight", ...).
//
// The views point into memory-mapped files (mapped_file.h): loading an 8B BF16 checkpoint parses
// its headers and nothing else, and no FP32 copy of the model is ever made here. An executor
// converts one tensor at a time (to_f32) or uploads the source bytes as they are.
//
// What every executor must agree on lives here once: the weight names of each architecture
// (layer()), tying (lm_head()), and the dimension checks; RoPE and MoE routing are in rope.h and
// moe_routing.h. Loaders bound every length and offset by the file size and throw CheckpointError
// naming the file and the field or tensor on any problem.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "sharq/model/checkpoint_error.h"
#include "sharq/model/config.h"
#include "sharq/model/mapped_file.h"

namespace sharq {

// F32/F16/BF16 hold weight values; U8, I8 and F8_E4M3 appear only as parts of quantized checkpoints
// (packed FP4 codes, FP8 codes and block scales: model/quantized_checkpoint.h).
enum class DType : uint8_t { f32, f16, bf16, u8, i8, f8_e4m3 };
const char* to_string(DType d);  // the safetensors spelling: "F32", "F16", "BF16", "U8", "I8", "F8_E4M3"
size_t dtype_bytes(DType d);
bool is_float_weight_dtype(DType d);  // F32, F16, BF16

struct QuantizedWeight;  // model/quantized_checkpoint.h

// One tensor in its source dtype: numel() little-endian elements at `data` (no alignment promised).
struct TensorView {
  std::string name;
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // may be null when bytes == 0
  size_t bytes = 0;               // numel() * dtype_bytes(dtype), checked by the loaders
  // A linear weight of a quantized checkpoint (model/quantized_checkpoint.h): `shape` is the
  // logical [N, K], data/bytes are empty, and the stored codes and scales are here. It has no
  // unquantized values: to_f32 refuses it, naming the tensor and the format.
  std::shared_ptr<const QuantizedWeight> quantized;
  int64_t numel() const;
};

// FP32 values of a view: exact for every source dtype (F16, BF16 and F8_E4M3 widen exactly; U8 and
// I8 are their integer values). Throws CheckpointError for a quantized linear weight.
void to_f32(const TensorView& t, float* out);  // out: numel() floats
std::vector<float> to_f32(const TensorView& t);
// The view's own memory as floats when that is exact and legal (F32, little-endian host, 4-byte
// aligned), else nullptr: then convert with to_f32.
const float* f32_in_place(const TensorView& t);

// One MoE expert's projections (Mixtral w1/w3/w2, Qwen3-MoE gate_proj/up_proj/down_proj).
struct ExpertWeights {
  const TensorView *gate = nullptr, *up = nullptr, *down = nullptr;
};

// The tensors of one decoder block, resolved and shape-checked against the config. Optional ones
// are nullptr when the architecture has none (biases, q/k norms, router, experts).
struct LayerWeights {
  const TensorView *attn_norm = nullptr, *mlp_norm = nullptr;                   // [hidden]
  const TensorView *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr;      // nn.Linear [out, in]
  const TensorView *q_bias = nullptr, *k_bias = nullptr, *v_bias = nullptr;     // attention_bias
  const TensorView* o_bias = nullptr;                                           // attention_output_bias
  const TensorView *q_norm = nullptr, *k_norm = nullptr;                        // qk_norm: [head_dim]
  const TensorView *gate = nullptr, *up = nullptr, *down = nullptr;             // dense MLP
  const TensorView* router = nullptr;                                           // MoE: [experts, hidden]
  std::vector<ExpertWeights> experts;                                           // MoE
  int64_t mlp_intermediate = 0;  // rows of gate/up: the dense MLP's or each expert's
};

// What a quantized checkpoint (config.json's quantization_config) stores; docs/checkpoint_formats.md.
enum class CheckpointFormat : uint8_t { none, compressed_tensors, modelopt };
const char* to_string(CheckpointFormat f);  // "unquantized", "compressed-tensors", "modelopt"
enum class StoredWeights : uint8_t {
  none,      // F32/F16/BF16
  nvfp4_16,  // NVFP4, one E4M3 scale per 16 elements (the formats' own)
  nvfp4_32,  // sharq's W32 SharQ payload, written as its exact 16-element view (scale pairs equal)
  fp8,       // FP8 E4M3 codes, one FP32 scale per output channel
};
struct QuantizationInfo {
  CheckpointFormat format = CheckpointFormat::none;
  StoredWeights weights = StoredWeights::none;
  std::string scheme;                 // the scheme `sharq quantize` recorded; "" for other producers
  bool static_input_scales = false;   // the file carries calibrated activation scales (W4A4/W8A8-static)
  bool quantized() const { return format != CheckpointFormat::none; }
  std::string describe() const;       // e.g. "compressed-tensors NVFP4 (16-element scale blocks)"
};

class ModelWeights {
 public:
  ModelConfig config;
  QuantizationInfo quantization;  // none for an unquantized checkpoint
  std::string source;                         // the path it was loaded from, for messages
  std::map<std::string, TensorView> tensors;  // by name

  bool has(const std::string& name) const { return tensors.count(name) != 0; }
  // The tensor, checked against the expected shape; throws CheckpointError naming the source,
  // the tensor and both shapes.
  const TensorView& get(const std::string& name, const std::vector<int64_t>& expected_shape) const;

  // Whether the architecture of `config` reads the tensor `name`: the embeddings, the final norm,
  // lm_head.weight when untied, and in each of layers 0 .. num_layers-1 the tensors layer()
  // resolves (biases, q/k norms, router and experts only where the config has them). By name only:
  // neither presence nor shape is checked here.
  bool uses(const std::string& name) const;
  // Throws CheckpointError unless every tensor is used (uses()) or on the ignore list
  // (is_ignorable_tensor): a checkpoint whose config reads fewer layers than it holds, or reads it
  // as a different architecture (Qwen2 labelled llama: the q/k/v biases), is refused, naming the
  // source, how many tensors are left over and the first few of them.
  void check_all_tensors_used() const;
  // Throws CheckpointError naming the source and the first tensor holding NaN or Inf (how many,
  // and the index of the first). Checks the exponent bits of the source dtype; converts nothing.
  void check_finite() const;
  // Throws CheckpointError naming the tensor when one the config uses is stored as U8, I8 or
  // F8_E4M3 outside a quantized layer (those bytes are codes, not weight values).
  void check_weight_dtypes() const;
  // Throws CheckpointError when the config's dimensions cannot describe a runnable model.
  void check_dimensions() const;
  const TensorView& embed_tokens() const;  // [vocab, hidden]
  const TensorView& final_norm() const;    // [hidden]
  // The classifier [vocab, hidden]: lm_head.weight, or embed_tokens when the embeddings are tied.
  const TensorView& lm_head() const;
  LayerWeights layer(int64_t index) const;

  // Memory behind the views: mapped files, or bytes this object owns (a copy made only where a
  // view in place was impossible). The views stay valid as long as any copy of this object lives.
  void keep(std::shared_ptr<const MappedFile> file);
  void keep(std::shared_ptr<const std::vector<uint8_t>> bytes);
  size_t mapped_bytes() const;
  size_t owned_bytes() const;
  // Whether [p, p + n) lies in that memory, and one handle that keeps all of it alive: what lets a
  // runtime read weights where they lie instead of copying them (runtime/cpu/transformer.cpp).
  bool holds(const uint8_t* p, size_t n) const;
  std::shared_ptr<const void> storage() const;

 private:
  std::vector<std::shared_ptr<const MappedFile>> files_;
  std::vector<std::shared_ptr<const std::vector<uint8_t>>> owned_;
};

// What a load checks beyond the bytes (docs/robustness.md).
struct LoadOptions {
  // Non-finite (NaN / Inf) weight values are an error naming the tensor unless this is set.
  bool allow_nonfinite = false;
};

// Tensors a checkpoint may hold that no architecture here reads, and that change nothing about the
// weights it does read, so that loading without them is exact: rotary "*.rotary_emb.inv_freq"
// buffers (RoPE is recomputed from the config) and the static activation / KV-cache scales of a
// quantized export ("*.input_scale", "*.k_scale", "*.v_scale", "*.kv_scale"), which the schemes
// here replace with their own. They stay in ModelWeights::tensors. Any other unused tensor is an
// error (ModelWeights::check_all_tensors_used).
bool is_ignorable_tensor(const std::string& name);

// Hugging Face model directory: config.json + model.safetensors, or sharded *.safetensors with
// model.safetensors.index.json (each shard mapped once; only the tensors the index assigns to a
// shard are kept). Tensors in F32/F16/BF16; a quantization_config (compressed-tensors or ModelOpt)
// turns the projections into QuantizedWeight views (model/quantized_checkpoint.h). With tie_word_embeddings the result has no
// lm_head.weight (a stored copy, equal in value to embed_tokens, is dropped; lm_head() is
// embed_tokens; a stored lm_head that differs is an error); without it, a missing lm_head.weight
// is an error. Every tensor must be one the config uses or ignorable
// (check_all_tensors_used), and every weight finite unless opt.allow_nonfinite (check_finite).
ModelWeights load_hf_weights(const std::string& dir, const LoadOptions& opt = {});

// llama2.c checkpoint (.bin: 7 x int32 header, fp32 weights; the legacy "version 0" export, whose
// size the header determines exactly), viewed in place. Names are mapped to HF names;
// config.rope_interleaved = true. A negative vocab_size in the header means an untied classifier
// (lm_head.weight); otherwise tie_word_embeddings is set and there is no lm_head.weight. Every
// weight must be finite unless opt.allow_nonfinite (check_finite).
ModelWeights load_llama2c_weights(const std::string& path, const LoadOptions& opt = {});

// Dispatch: a directory is a Hugging Face model, a file a llama2.c checkpoint.
ModelWeights load_model_weights(const std::string& path, const LoadOptions& opt = {});

// Building blocks of the loaders (also what the fuzz targets call).
// A llama2.c checkpoint already in memory; `name` is used in messages and as ModelWeights::source.
// The views point into `bytes`, which the caller keeps alive (the loader adds the mapping).
ModelWeights parse_llama2c(const uint8_t* bytes, size_t n, const std::string& name);
// A whole regular file in one read (small files: index JSON); throws CheckpointError naming it.
std::vector<uint8_t> read_file_bytes(const std::string& path);

}  // namespace sharq
