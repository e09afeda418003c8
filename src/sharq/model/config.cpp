#include "sharq/model/config.h"

#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "sharq/core/json_checks.h"

#include "sharq/model/checkpoint_error.h"
#include "sharq/model/loader_text.h"

namespace sharq {

const char* to_string(Arch a) {
  switch (a) {
    case Arch::llama: return "llama";
    case Arch::mistral: return "mistral";
    case Arch::qwen2: return "qwen2";
    case Arch::qwen3: return "qwen3";
    case Arch::mixtral: return "mixtral";
    case Arch::qwen3_moe: return "qwen3_moe";
  }
  return "unknown";
}

namespace {

using nlohmann::json;

// Sizes beyond int32 are nonsense for any config we run, and capping them keeps every later
// product of two sizes (weight shapes, KV-cache lengths) far from int64 overflow.
constexpr int64_t kMaxSize = std::numeric_limits<int32_t>::max();

using loader_text::describe;

class ConfigReader {
 public:
  ConfigReader(const json& root, std::string path) : root_(root), path_(std::move(path)) {}

  [[noreturn]] void fail(const std::string& field, const std::string& what) const {
    throw CheckpointError(fmt::format("{}: field '{}' {}", path_, field, what));
  }

  // The value of `key` in `obj`, or nullptr when absent or JSON null (HF writes null for "unset").
  static const json* find(const json& obj, const std::string& key) {
    const auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return nullptr;
    return &*it;
  }
  const json* find(const std::string& key) const { return find(root_, key); }

  int64_t integer(const json& v, const std::string& field, int64_t lo, int64_t hi) const {
    int64_t x;
    if (v.is_number_unsigned()) {
      const uint64_t u = v.get<uint64_t>();
      if (u > static_cast<uint64_t>(hi)) fail(field, fmt::format("is {}, out of range [{}, {}]", u, lo, hi));
      x = static_cast<int64_t>(u);
    } else if (v.is_number_integer()) {
      x = v.get<int64_t>();
    } else {
      fail(field, fmt::format("must be an integer, got {}", describe(v)));
    }
    if (x < lo || x > hi) fail(field, fmt::format("is {}, out of range [{}, {}]", x, lo, hi));
    return x;
  }
  int64_t required_size(const std::string& key) const {
    const json* v = find(key);
    if (!v) fail(key, "is missing");
    return integer(*v, key, 1, kMaxSize);
  }
  int64_t optional_size(const std::string& key, int64_t fallback) const {
    const json* v = find(key);
    return v ? integer(*v, key, 1, kMaxSize) : fallback;
  }

  // The model runs in FP32: a value past the largest float would become Inf there (an rms_norm_eps
  // of 1e39 turns every norm's output to 0 and the logits uniform).
  double positive_number(const json& v, const std::string& field) const {
    if (!v.is_number()) fail(field, fmt::format("must be a number, got {}", describe(v)));
    const double x = v.get<double>();
    if (!(x > 0.0) || x == std::numeric_limits<double>::infinity()) fail(field, fmt::format("must be a positive number, got {}", describe(v)));
    if (x > static_cast<double>(std::numeric_limits<float>::max()))
      fail(field, fmt::format("is {}, beyond the largest 32-bit float", describe(v)));
    return x;
  }
  // RoPE's base: the inverse frequencies theta^(-2i/d) must fall from 1, and stay finite in FP32 (a
  // theta of 1e-300 gives Inf frequencies and NaN logits from a config that otherwise loads).
  double rope_theta(const json& v, const std::string& field) const {
    const double x = positive_number(v, field);
    if (!(x > 1.0)) fail(field, fmt::format("is {}: RoPE needs a base above 1 (models use 1e4 .. 1e6)", describe(v)));
    return x;
  }
  double optional_positive(const std::string& key, double fallback) const {
    const json* v = find(key);
    return v ? positive_number(*v, key) : fallback;
  }

  bool boolean(const std::string& key, bool fallback) const {
    const json* v = find(key);
    if (!v) return fallback;
    if (!v->is_boolean()) fail(key, fmt::format("must be true or false, got {}", describe(*v)));
    return v->get<bool>();
  }

  std::string string(const json& v, const std::string& field) const {
    if (!v.is_string()) fail(field, fmt::format("must be a string, got {}", describe(v)));
    return v.get<std::string>();
  }

  // bos/eos ids: an integer, null, or (eos in generation-style configs) a list whose first entry
  // is the primary one; every id names a row of the vocabulary (0 .. vocab - 1).
  int64_t token_id(const std::string& key, int64_t vocab) const {
    const json* v = find(key);
    if (!v) return -1;
    if (v->is_array()) {
      if (v->empty()) return -1;
      for (size_t i = 0; i < v->size(); ++i) integer((*v)[i], fmt::format("{}[{}]", key, i), 0, vocab - 1);
      return integer((*v)[0], key + "[0]", 0, vocab - 1);
    }
    return integer(*v, key, 0, vocab - 1);
  }

  const std::string& path() const { return path_; }

 private:
  const json& root_;
  std::string path_;
};

struct RopeBlock {
  std::optional<double> theta;
  RopeScaling scaling;
};

// `rope_scaling` (transformers 4) or `rope_parameters` (transformers 5): both carry the type
// under "rope_type" (older files: "type"); rope_parameters may also carry rope_theta.
RopeBlock parse_rope_block(const ConfigReader& r, const json& block, const std::string& name) {
  if (!block.is_object()) r.fail(name, fmt::format("must be an object, got {}", describe(block)));
  RopeBlock out;
  std::string type = "default";
  std::string type_field = name + ".rope_type";
  if (const json* t = ConfigReader::find(block, "rope_type")) {
    type = r.string(*t, type_field);
  } else if (const json* t2 = ConfigReader::find(block, "type")) {
    type_field = name + ".type";
    type = r.string(*t2, type_field);
  } else if (!ConfigReader::find(block, "rope_theta")) {
    // e.g. per-layer-type nesting {"full_attention": {...}} of models we do not run
    r.fail(name, "has neither 'rope_type' nor 'rope_theta'");
  }
  if (const json* th = ConfigReader::find(block, "rope_theta")) out.theta = r.rope_theta(*th, name + ".rope_theta");
  if (const json* prf = ConfigReader::find(block, "partial_rotary_factor")) {
    if (r.positive_number(*prf, name + ".partial_rotary_factor") != 1.0)
      r.fail(name + ".partial_rotary_factor", fmt::format("is {}: partial rotary embeddings are not supported", describe(*prf)));
  }
  if (type == "default") return out;
  if (type != "llama3")
    r.fail(type_field, fmt::format("is '{}': unsupported RoPE type (supported: default, llama3)", type));
  RopeScaling& s = out.scaling;
  s.type = RopeScaling::Type::llama3;
  auto need = [&](const char* key) -> const json& {
    const json* v = ConfigReader::find(block, key);
    if (!v) r.fail(name + "." + key, "is missing (required by rope_type llama3)");
    return *v;
  };
  s.factor = r.positive_number(need("factor"), name + ".factor");
  if (!(s.factor >= 1.0))  // llama3 divides the low frequencies by it: a context extension, never a contraction
    r.fail(name + ".factor", fmt::format("is {}: the llama3 rule needs a factor >= 1", s.factor));
  s.low_freq_factor = r.positive_number(need("low_freq_factor"), name + ".low_freq_factor");
  s.high_freq_factor = r.positive_number(need("high_freq_factor"), name + ".high_freq_factor");
  s.original_max_position_embeddings =
      r.integer(need("original_max_position_embeddings"), name + ".original_max_position_embeddings", 1, kMaxSize);
  // the llama3 rule interpolates between the two wavelength bounds, dividing by their difference
  if (!(s.high_freq_factor > s.low_freq_factor))
    r.fail(name + ".high_freq_factor", fmt::format("({}) must exceed low_freq_factor ({})", s.high_freq_factor, s.low_freq_factor));
  return out;
}

bool same_scaling(const RopeScaling& a, const RopeScaling& b) {
  return a.type == b.type && a.factor == b.factor && a.low_freq_factor == b.low_freq_factor &&
         a.high_freq_factor == b.high_freq_factor && a.original_max_position_embeddings == b.original_max_position_embeddings;
}

Arch parse_arch(const ConfigReader& r) {
  const json* mt = r.find("model_type");
  if (!mt) r.fail("model_type", "is missing");
  const std::string t = r.string(*mt, "model_type");
  for (Arch a : {Arch::llama, Arch::mistral, Arch::qwen2, Arch::qwen3, Arch::mixtral, Arch::qwen3_moe})
    if (t == to_string(a)) {
      // transformers picks the class from `architectures`: a known class of another family would load
      // as that model there and as this one here
      static const std::pair<const char*, Arch> kClasses[] = {
          {"LlamaForCausalLM", Arch::llama},     {"MistralForCausalLM", Arch::mistral}, {"Qwen2ForCausalLM", Arch::qwen2},
          {"Qwen3ForCausalLM", Arch::qwen3},     {"MixtralForCausalLM", Arch::mixtral}, {"Qwen3MoeForCausalLM", Arch::qwen3_moe}};
      if (const json* archs = r.find("architectures")) {
        if (!archs->is_array()) r.fail("architectures", fmt::format("must be a list of class names, got {}", describe(*archs)));
        for (size_t i = 0; i < archs->size(); ++i) {
          const std::string cls = r.string((*archs)[i], fmt::format("architectures[{}]", i));
          for (const auto& [name, arch] : kClasses)
            if (cls == name && arch != a)
              r.fail(fmt::format("architectures[{}]", i), fmt::format("is '{}', a {} class, but model_type is '{}'", cls,
                                                                      to_string(arch), t));
        }
      }
      return a;
    }
  r.fail("model_type", fmt::format("is '{}': unsupported (supported: llama, mistral, qwen2, qwen3, mixtral, qwen3_moe)", t));
}

// Qwen2/Qwen3 describe sliding-window attention per layer: transformers 5 writes `layer_types`;
// older files have use_sliding_window + max_window_layers (layers from that index on slide).
void reject_qwen_sliding_window(const ConfigReader& r, int64_t num_layers) {
  if (const json* lt = r.find("layer_types")) {
    if (!lt->is_array()) r.fail("layer_types", fmt::format("must be a list, got {}", describe(*lt)));
    if (static_cast<int64_t>(lt->size()) != num_layers)
      r.fail("layer_types", fmt::format("has {} entries for num_hidden_layers {}", lt->size(), num_layers));
    for (size_t i = 0; i < lt->size(); ++i) {
      const std::string field = fmt::format("layer_types[{}]", i);
      const std::string t = r.string((*lt)[i], field);
      if (t != "full_attention") r.fail(field, fmt::format("is '{}': only full_attention layers are supported", t));
    }
    return;
  }
  if (!r.boolean("use_sliding_window", false)) return;
  const int64_t max_window_layers = r.find("max_window_layers") ? r.integer(*r.find("max_window_layers"), "max_window_layers", 0, kMaxSize) : 28;
  if (max_window_layers < num_layers)
    r.fail("use_sliding_window", fmt::format("is true with max_window_layers {} < num_hidden_layers {}: sliding-window attention is not supported",
                                             max_window_layers, num_layers));
}

}  // namespace

ModelConfig parse_hf_config(const std::string& json_text, const std::string& path) {
  json root;
  try {
    root = json_checks::parse_unique(json_text);
  } catch (const json::exception& e) {
    throw CheckpointError(fmt::format("{}: not valid JSON ({})", path, e.what()));
  } catch (const std::invalid_argument& e) {
    throw CheckpointError(fmt::format("{}: {}", path, e.what()));
  }
  if (!root.is_object()) throw CheckpointError(fmt::format("{}: top level must be a JSON object, got {}", path, describe(root)));
  const ConfigReader r(root, path);

  try {
    ModelConfig c;
    c.arch = parse_arch(r);
    const bool is_qwen3 = c.arch == Arch::qwen3 || c.arch == Arch::qwen3_moe;
    const bool is_mixtral = c.arch == Arch::mixtral;

    if (const json* act = r.find("hidden_act")) {
      const std::string a = r.string(*act, "hidden_act");
      if (a != "silu") r.fail("hidden_act", fmt::format("is '{}': only silu (SwiGLU) is supported", a));
    }

    c.vocab_size = r.required_size("vocab_size");
    c.hidden_size = r.required_size("hidden_size");
    // Qwen3-MoE runs no dense MLP (mlp_only_layers is rejected below), so its dense size is optional.
    c.intermediate_size = c.arch == Arch::qwen3_moe ? r.optional_size("intermediate_size", 0) : r.required_size("intermediate_size");
    c.num_layers = r.required_size("num_hidden_layers");
    c.num_heads = r.required_size("num_attention_heads");
    c.num_kv_heads = r.optional_size("num_key_value_heads", c.num_heads);
    if (c.num_heads % c.num_kv_heads != 0)
      r.fail("num_key_value_heads", fmt::format("({}) must divide num_attention_heads ({})", c.num_kv_heads, c.num_heads));
    if (r.find("head_dim")) {
      c.head_dim = r.required_size("head_dim");
    } else if (is_qwen3) {
      // transformers' Qwen3 classes assume 128 here, not hidden/heads; real Qwen3 files always say
      r.fail("head_dim", "is missing (Qwen3 configs must state it)");
    } else {
      if (c.hidden_size % c.num_heads != 0)
        r.fail("num_attention_heads", fmt::format("({}) must divide hidden_size ({}) when head_dim is absent", c.num_heads, c.hidden_size));
      c.head_dim = c.hidden_size / c.num_heads;
    }
    if (c.head_dim % 2 != 0) r.fail("head_dim", fmt::format("is {}: RoPE needs an even head dimension", c.head_dim));
    c.max_position_embeddings = r.required_size("max_position_embeddings");
    // defaults of the transformers config classes
    c.rms_norm_eps = r.optional_positive("rms_norm_eps", is_mixtral ? 1e-5 : 1e-6);
    c.tie_word_embeddings = r.boolean("tie_word_embeddings", false);

    // RoPE: the theta may sit at top level, in rope_parameters, or both (then they must agree).
    double theta = is_mixtral ? 1e6 : 10000.0;
    std::optional<double> top_theta;
    if (const json* t = r.find("rope_theta")) top_theta = r.rope_theta(*t, "rope_theta");
    std::optional<RopeBlock> params, legacy;
    if (const json* p = r.find("rope_parameters")) params = parse_rope_block(r, *p, "rope_parameters");
    if (const json* s = r.find("rope_scaling")) legacy = parse_rope_block(r, *s, "rope_scaling");
    if (top_theta) theta = *top_theta;
    if (params && params->theta) {
      if (top_theta && *top_theta != *params->theta)
        r.fail("rope_parameters.rope_theta", fmt::format("({}) disagrees with rope_theta ({})", *params->theta, *top_theta));
      theta = *params->theta;
    }
    c.rope_theta = theta;
    if (params) c.rope_scaling = params->scaling;
    // a scaled rope_scaling wins over a default rope_parameters, as in transformers 5
    // (rope_parameters = rope_scaling or rope_parameters): that is how YaRN is switched on by hand
    if (legacy && legacy->scaling.type != RopeScaling::Type::none) {
      if (params && params->scaling.type != RopeScaling::Type::none && !same_scaling(params->scaling, legacy->scaling))
        r.fail("rope_scaling", "disagrees with rope_parameters (give the scaling in one of them)");
      c.rope_scaling = legacy->scaling;
    }
    if (const json* prf = r.find("partial_rotary_factor")) {
      if (r.positive_number(*prf, "partial_rotary_factor") != 1.0)
        r.fail("partial_rotary_factor", fmt::format("is {}: partial rotary embeddings are not supported", describe(*prf)));
    }

    // Attention projections' biases: Qwen2 always has q/k/v biases (and never o_proj's);
    // Llama/Qwen3's attention_bias puts a bias on all four; Mistral/Mixtral have none.
    switch (c.arch) {
      case Arch::qwen2:
        c.attention_bias = true;
        break;
      case Arch::llama:
      case Arch::qwen3:
      case Arch::qwen3_moe:
        c.attention_bias = c.attention_output_bias = r.boolean("attention_bias", false);
        break;
      case Arch::mistral:
      case Arch::mixtral:
        break;
    }
    if (c.arch == Arch::llama && r.boolean("mlp_bias", false)) r.fail("mlp_bias", "is true: MLP biases are not supported");
    c.qk_norm = is_qwen3;

    // Sliding windows: Mistral's is recorded (exact for contexts up to its length); Qwen's is
    // rejected when any layer actually uses it.
    if (c.arch == Arch::mistral || c.arch == Arch::mixtral) {
      const json* sw = r.find("sliding_window");
      if (sw) c.sliding_window = r.integer(*sw, "sliding_window", 1, kMaxSize);
      else if (c.arch == Arch::mistral && root.find("sliding_window") == root.end()) c.sliding_window = 4096;  // MistralConfig default
    } else if (c.arch != Arch::llama) {
      reject_qwen_sliding_window(r, c.num_layers);
    }

    if (is_mixtral) {
      c.num_experts = r.required_size("num_local_experts");
      c.num_experts_per_tok = r.required_size("num_experts_per_tok");
      c.moe_intermediate_size = c.intermediate_size;
      c.norm_topk_prob = true;
    } else if (c.arch == Arch::qwen3_moe) {
      // Qwen's own configs say num_experts; transformers 5 writes num_local_experts
      c.num_experts = r.find("num_experts") ? r.required_size("num_experts") : r.required_size("num_local_experts");
      c.num_experts_per_tok = r.required_size("num_experts_per_tok");
      c.moe_intermediate_size = r.required_size("moe_intermediate_size");
      c.norm_topk_prob = r.boolean("norm_topk_prob", false);
      if (const json* m = r.find("mlp_only_layers")) {
        if (!m->is_array()) r.fail("mlp_only_layers", fmt::format("must be a list, got {}", describe(*m)));
        if (!m->empty()) r.fail("mlp_only_layers", "is not empty: dense layers inside a Qwen3-MoE model are not supported");
      }
      if (const json* d = r.find("decoder_sparse_step")) {
        const int64_t step = r.integer(*d, "decoder_sparse_step", 0, kMaxSize);
        if (step != 1) r.fail("decoder_sparse_step", fmt::format("is {}: only 1 (every layer sparse) is supported", step));
      }
    } else {
      c.norm_topk_prob = true;
    }
    if (c.num_experts != 0 && c.num_experts_per_tok > c.num_experts)
      r.fail("num_experts_per_tok", fmt::format("({}) exceeds the number of experts ({})", c.num_experts_per_tok, c.num_experts));

    c.bos_token_id = r.token_id("bos_token_id", c.vocab_size);
    c.eos_token_id = r.token_id("eos_token_id", c.vocab_size);
    return c;
  } catch (const json::exception& e) {
    // every access above is type-checked first; this is the backstop that keeps the error contract
    throw CheckpointError(fmt::format("{}: malformed config ({})", path, e.what()));
  }
}

ModelConfig read_hf_config(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw CheckpointError(fmt::format("{}: is a directory, expected config.json", path));
  std::ifstream f(path, std::ios::binary);
  if (!f) throw CheckpointError(fmt::format("{}: cannot open config.json", path));
  std::ostringstream text;
  text << f.rdbuf();
  if (!f && !f.eof()) throw CheckpointError(fmt::format("{}: read failed", path));
  return parse_hf_config(text.str(), path);
}

ModelConfig synthetic_model_config(const std::string& name) {
  ModelConfig c;
  c.num_heads = 32;
  c.num_kv_heads = 8;
  c.head_dim = 128;
  c.hidden_size = 4096;
  if (name == "llama3.1-8b") {  // meta-llama/Llama-3.1-8B config.json
    c.arch = Arch::llama;
    c.vocab_size = 128256;
    c.intermediate_size = 14336;
    c.num_layers = 32;
    c.max_position_embeddings = 131072;
    c.rms_norm_eps = 1e-5;
    c.rope_theta = 500000.0;
    c.rope_scaling.type = RopeScaling::Type::llama3;
    c.rope_scaling.factor = 8.0;
    c.rope_scaling.low_freq_factor = 1.0;
    c.rope_scaling.high_freq_factor = 4.0;
    c.rope_scaling.original_max_position_embeddings = 8192;
    c.bos_token_id = 128000;
    c.eos_token_id = 128001;
  } else if (name == "qwen2.5-7b") {  // Qwen/Qwen2.5-7B config.json
    c.arch = Arch::qwen2;
    c.vocab_size = 152064;
    c.hidden_size = 3584;
    c.intermediate_size = 18944;
    c.num_layers = 28;
    c.num_heads = 28;
    c.num_kv_heads = 4;
    c.max_position_embeddings = 32768;
    c.rms_norm_eps = 1e-6;
    c.rope_theta = 1000000.0;
    c.attention_bias = true;
    c.bos_token_id = 151643;
    c.eos_token_id = 151643;
  } else if (name == "qwen3-8b") {  // Qwen/Qwen3-8B config.json
    c.arch = Arch::qwen3;
    c.vocab_size = 151936;
    c.intermediate_size = 12288;
    c.num_layers = 36;
    c.max_position_embeddings = 40960;
    c.rms_norm_eps = 1e-6;
    c.rope_theta = 1000000.0;
    c.qk_norm = true;
    c.bos_token_id = 151643;
    c.eos_token_id = 151645;
  } else if (name == "qwen3-30b-a3b") {  // Qwen/Qwen3-30B-A3B config.json: 128 experts, 8 per token
    c.arch = Arch::qwen3_moe;
    c.vocab_size = 151936;
    c.hidden_size = 2048;
    c.intermediate_size = 6144;
    c.moe_intermediate_size = 768;
    c.num_experts = 128;
    c.num_experts_per_tok = 8;
    c.norm_topk_prob = true;
    c.num_layers = 48;
    c.num_heads = 32;
    c.num_kv_heads = 4;
    c.max_position_embeddings = 40960;
    c.rms_norm_eps = 1e-6;
    c.rope_theta = 1000000.0;
    c.qk_norm = true;
    c.bos_token_id = 151643;
    c.eos_token_id = 151645;
  } else if (name == "mixtral-8x7b") {  // mistralai/Mixtral-8x7B-v0.1 config.json: 8 experts, 2 per token
    c.arch = Arch::mixtral;
    c.vocab_size = 32000;
    c.intermediate_size = 14336;
    c.moe_intermediate_size = 14336;
    c.num_experts = 8;
    c.num_experts_per_tok = 2;
    c.norm_topk_prob = true;
    c.num_layers = 32;
    c.max_position_embeddings = 32768;
    c.rms_norm_eps = 1e-5;
    c.rope_theta = 1000000.0;
    c.bos_token_id = 1;
    c.eos_token_id = 2;
  } else {
    throw std::invalid_argument("unknown synthetic model '" + name + "' (one of: " + synthetic_model_names() + ")");
  }
  return c;
}

const char* synthetic_model_names() { return "llama3.1-8b, qwen2.5-7b, qwen3-8b, qwen3-30b-a3b, mixtral-8x7b"; }

}  // namespace sharq
