// Model architecture description shared by every loader (HF config.json, llama2.c header).
#pragma once

#include <cstdint>
#include <string>

namespace sharq {

enum class Arch : uint8_t { llama, mistral, qwen2, qwen3, mixtral, qwen3_moe };
const char* to_string(Arch a);

struct RopeScaling {
  enum class Type : uint8_t { none, llama3 } type = Type::none;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  Arch arch = Arch::llama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;   // dense MLP (and shared size for MoE experts unless moe_intermediate_size)
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;            // hidden_size / num_heads unless config.json says otherwise
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool rope_interleaved = false;   // llama2.c pairs (2i, 2i+1); HF rotates halves (i, i + d/2)
  bool tie_word_embeddings = false;
  bool attention_bias = false;     // q/k/v biases (Qwen2/2.5; Llama/Qwen3 when config.json's attention_bias)
  bool attention_output_bias = false;  // o_proj bias too: Llama/Qwen3 attention_bias applies to all four
  bool qk_norm = false;            // per-head RMSNorm on q and k (Qwen3)
  // MoE (Mixtral, Qwen3-MoE); num_experts == 0 means a dense MLP
  int64_t num_experts = 0;
  int64_t num_experts_per_tok = 0;
  int64_t moe_intermediate_size = 0;
  bool norm_topk_prob = true;      // renormalize the top-k router weights (Mixtral: always)
  int64_t bos_token_id = -1, eos_token_id = -1;
  // Mistral/Mixtral: attention sees only the last `sliding_window` positions; 0 = full attention.
  // Recorded, not enforced: for sequences up to this length full attention is identical, so a runner
  // must refuse (or implement the window for) longer ones.
  int64_t sliding_window = 0;
};

// Hugging Face config.json (model_type llama, mistral, qwen2, qwen3, mixtral, qwen3_moe) -> ModelConfig.
// Missing optional fields take the defaults of the transformers config class of that model_type.
// Features this library does not run (other rope types, sliding-window attention in use, Qwen3-MoE
// dense layers, MLP biases) are rejected. Throws CheckpointError (checkpoint_error.h) naming
// `path_for_messages` and the field.
ModelConfig parse_hf_config(const std::string& json_text, const std::string& path_for_messages);
// The same, reading the file.
ModelConfig read_hf_config(const std::string& config_json_path);

// The architecture of a published model, for benchmarks on random weights of its real shapes
// (`sharq bench model --synthetic NAME`): llama3.1-8b, qwen2.5-7b, qwen3-8b and the MoE models
// qwen3-30b-a3b, mixtral-8x7b (their config.json values). Throws std::invalid_argument listing the
// names for any other.
ModelConfig synthetic_model_config(const std::string& name);
const char* synthetic_model_names();  // "llama3.1-8b, qwen2.5-7b, qwen3-8b, qwen3-30b-a3b, mixtral-8x7b"

}  // namespace sharq
