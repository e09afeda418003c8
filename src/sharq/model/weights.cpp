#include "sharq/model/weights.h"

#include <bit>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "sharq/formats/minifloat.h"
#include "sharq/model/loader_text.h"
#include "sharq/model/safetensors.h"

namespace sharq {
namespace fs = std::filesystem;

namespace {

// Index entries name files next to the index; anything that could climb out of the model
// directory is refused rather than resolved.
bool is_plain_file_name(const std::string& s) {
  return !s.empty() && s != "." && s != ".." && s.find('/') == std::string::npos && s.find('\\') == std::string::npos &&
         s.find('\0') == std::string::npos;
}

// tensor name -> shard file, from model.safetensors.index.json
std::map<std::string, std::string> read_weight_map(const std::string& index_path) {
  const std::vector<uint8_t> bytes = read_file_bytes(index_path);
  nlohmann::json index;
  try {
    index = nlohmann::json::parse(bytes.begin(), bytes.end());
  } catch (const nlohmann::json::exception& e) {
    throw CheckpointError(fmt::format("{}: not valid JSON ({})", index_path, e.what()));
  }
  if (!index.is_object()) throw CheckpointError(fmt::format("{}: top level must be a JSON object", index_path));
  const auto wm = index.find("weight_map");
  if (wm == index.end()) throw CheckpointError(fmt::format("{}: field 'weight_map' is missing", index_path));
  if (!wm->is_object()) throw CheckpointError(fmt::format("{}: field 'weight_map' must be an object", index_path));
  std::map<std::string, std::string> out;
  for (const auto& [tensor, shard] : wm->items()) {
    if (!shard.is_string() || !is_plain_file_name(shard.get<std::string>()))
      throw CheckpointError(fmt::format("{}: field 'weight_map' entry for tensor '{}' must be a file name in the model directory", index_path, tensor));
    out.emplace(tensor, shard.get<std::string>());
  }
  if (out.empty()) throw CheckpointError(fmt::format("{}: field 'weight_map' is empty", index_path));
  return out;
}

[[maybe_unused]] uint32_t le32(const uint8_t* p) { return p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<uint32_t>(p[3]) << 24); }

}  // namespace

const char* to_string(DType d) {
  switch (d) {
    case DType::f32: return "F32";
    case DType::f16: return "F16";
    case DType::bf16: return "BF16";
  }
  return "?";
}

size_t dtype_bytes(DType d) { return d == DType::f32 ? 4 : 2; }

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

void to_f32(const TensorView& t, float* out) {
  const size_t count = t.bytes / dtype_bytes(t.dtype);
  if (count == 0) return;  // data may be null, which memcpy must not get
  const uint8_t* src = t.data;
  if (t.dtype == DType::f32) {
    if constexpr (std::endian::native == std::endian::little) {
      std::memcpy(out, src, count * 4);
    } else {
      for (size_t i = 0; i < count; ++i) out[i] = f32_from_bits(le32(src + 4 * i));
    }
    return;
  }
  const bool bf16 = t.dtype == DType::bf16;
  for (size_t i = 0; i < count; ++i) {
    const uint16_t h = static_cast<uint16_t>(src[2 * i] | (src[2 * i + 1] << 8));
    out[i] = bf16 ? bf16_decode(h) : fp16_decode(h);
  }
}

std::vector<float> to_f32(const TensorView& t) {
  std::vector<float> v(t.bytes / dtype_bytes(t.dtype));
  to_f32(t, v.data());
  return v;
}

const float* f32_in_place(const TensorView& t) {
  if (t.dtype != DType::f32 || std::endian::native != std::endian::little) return nullptr;
  if (reinterpret_cast<uintptr_t>(t.data) % alignof(float) != 0) return nullptr;
  return reinterpret_cast<const float*>(t.data);
}

// ---- ModelWeights -------------------------------------------------------------------------------

const TensorView& ModelWeights::get(const std::string& name, const std::vector<int64_t>& expected_shape) const {
  const auto it = tensors.find(name);
  if (it == tensors.end())
    throw CheckpointError(fmt::format("{}: tensor '{}' is missing (expected shape {})", source, name, loader_text::shape(expected_shape)));
  if (it->second.shape != expected_shape)
    throw CheckpointError(fmt::format("{}: tensor '{}' has shape {}, expected {}", source, name, loader_text::shape(it->second.shape),
                                      loader_text::shape(expected_shape)));
  return it->second;
}

void ModelWeights::check_dimensions() const {
  const ModelConfig& c = config;
  const int64_t H = c.hidden_size, V = c.vocab_size, hd = c.head_dim;
  if (H <= 0 || V <= 0 || hd <= 0 || c.num_heads <= 0 || c.num_kv_heads <= 0 || c.num_layers < 0 ||
      c.num_heads % c.num_kv_heads != 0 || hd % 2 != 0)
    throw CheckpointError(fmt::format("{}: inconsistent model dimensions (hidden {}, heads {}, kv heads {}, head_dim {})", source, H,
                                      c.num_heads, c.num_kv_heads, hd));
  if (c.num_experts > 0 && (c.num_experts_per_tok <= 0 || c.num_experts_per_tok > c.num_experts))
    throw CheckpointError(fmt::format("{}: inconsistent MoE dimensions ({} experts, {} per token)", source, c.num_experts,
                                      c.num_experts_per_tok));
}

const TensorView& ModelWeights::embed_tokens() const {
  return get("model.embed_tokens.weight", {config.vocab_size, config.hidden_size});
}

const TensorView& ModelWeights::final_norm() const { return get("model.norm.weight", {config.hidden_size}); }

const TensorView& ModelWeights::lm_head() const {
  if (has("lm_head.weight")) return get("lm_head.weight", {config.vocab_size, config.hidden_size});
  if (!config.tie_word_embeddings)
    throw CheckpointError(fmt::format("{}: tensor 'lm_head.weight' is missing and tie_word_embeddings is false", source));
  return embed_tokens();
}

LayerWeights ModelWeights::layer(int64_t l) const {
  const ModelConfig& c = config;
  const int64_t H = c.hidden_size, hd = c.head_dim, qd = c.num_heads * hd, kvd = c.num_kv_heads * hd;
  const std::string p = fmt::format("model.layers.{}.", l);
  LayerWeights L;
  L.attn_norm = &get(p + "input_layernorm.weight", {H});
  L.mlp_norm = &get(p + "post_attention_layernorm.weight", {H});
  L.q = &get(p + "self_attn.q_proj.weight", {qd, H});
  L.k = &get(p + "self_attn.k_proj.weight", {kvd, H});
  L.v = &get(p + "self_attn.v_proj.weight", {kvd, H});
  L.o = &get(p + "self_attn.o_proj.weight", {H, qd});
  if (c.attention_bias) {
    L.q_bias = &get(p + "self_attn.q_proj.bias", {qd});
    L.k_bias = &get(p + "self_attn.k_proj.bias", {kvd});
    L.v_bias = &get(p + "self_attn.v_proj.bias", {kvd});
  }
  if (c.attention_output_bias) L.o_bias = &get(p + "self_attn.o_proj.bias", {H});
  if (c.qk_norm) {
    L.q_norm = &get(p + "self_attn.q_norm.weight", {hd});
    L.k_norm = &get(p + "self_attn.k_norm.weight", {hd});
  }
  if (c.num_experts == 0) {
    const int64_t I = L.mlp_intermediate = c.intermediate_size;
    L.gate = &get(p + "mlp.gate_proj.weight", {I, H});
    L.up = &get(p + "mlp.up_proj.weight", {I, H});
    L.down = &get(p + "mlp.down_proj.weight", {H, I});
    return L;
  }
  // Mixtral: block_sparse_moe.{gate, experts.N.w1 (gate) / w3 (up) / w2 (down)}, experts sized by
  // intermediate_size; Qwen3-MoE: mlp.{gate, experts.N.gate_proj / up_proj / down_proj}, sized by
  // moe_intermediate_size.
  const bool mixtral = c.arch == Arch::mixtral;
  const int64_t I = L.mlp_intermediate = mixtral ? c.intermediate_size : c.moe_intermediate_size;
  const std::string moe = p + (mixtral ? "block_sparse_moe." : "mlp.");
  L.router = &get(moe + "gate.weight", {c.num_experts, H});
  for (int64_t e = 0; e < c.num_experts; ++e) {
    const std::string ep = fmt::format("{}experts.{}.", moe, e);
    ExpertWeights x;
    x.gate = &get(ep + (mixtral ? "w1" : "gate_proj") + ".weight", {I, H});
    x.up = &get(ep + (mixtral ? "w3" : "up_proj") + ".weight", {I, H});
    x.down = &get(ep + (mixtral ? "w2" : "down_proj") + ".weight", {H, I});
    L.experts.push_back(x);
  }
  return L;
}

void ModelWeights::keep(std::shared_ptr<const MappedFile> file) { files_.push_back(std::move(file)); }
void ModelWeights::keep(std::shared_ptr<const std::vector<uint8_t>> bytes) { owned_.push_back(std::move(bytes)); }

size_t ModelWeights::mapped_bytes() const {
  size_t n = 0;
  for (const auto& f : files_) n += f->size();
  return n;
}

size_t ModelWeights::owned_bytes() const {
  size_t n = 0;
  for (const auto& b : owned_) n += b->size();
  return n;
}

// ---- loaders ------------------------------------------------------------------------------------

std::vector<uint8_t> read_file_bytes(const std::string& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) throw CheckpointError(fmt::format("{}: no such file", path));
  if (!fs::is_regular_file(st)) throw CheckpointError(fmt::format("{}: not a regular file", path));
  const uintmax_t size = fs::file_size(path, ec);
  if (ec) throw CheckpointError(fmt::format("{}: cannot get the file size ({})", path, ec.message()));
  if (size > static_cast<uintmax_t>(std::numeric_limits<std::streamsize>::max()))
    throw CheckpointError(fmt::format("{}: file of {} bytes is too large to read", path, size));
  std::ifstream f(path, std::ios::binary);
  if (!f) throw CheckpointError(fmt::format("{}: cannot open", path));
  if (size == 0) return {};  // nothing to read, and an empty vector's data() may be null
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  f.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(size));
  if (static_cast<uintmax_t>(f.gcount()) != size)
    throw CheckpointError(fmt::format("{}: read {} of {} bytes (file changed or unreadable)", path, f.gcount(), size));
  return bytes;
}

ModelWeights load_hf_weights(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw CheckpointError(fmt::format("{}: not a directory (expected a Hugging Face model directory)", dir));
  const fs::path root(dir);
  const std::string config_path = (root / "config.json").string();
  if (!fs::exists(config_path, ec)) throw CheckpointError(fmt::format("{}: missing (a Hugging Face model directory needs config.json)", config_path));

  ModelWeights w;
  w.source = dir;
  w.config = read_hf_config(config_path);

  const std::string index_path = (root / "model.safetensors.index.json").string();
  const std::string single_path = (root / "model.safetensors").string();
  if (fs::exists(index_path, ec)) {
    // Each shard is mapped once and only the tensors the index assigns to it are kept.
    std::map<std::string, std::vector<std::string>> by_shard;
    for (const auto& [tensor, shard] : read_weight_map(index_path)) by_shard[shard].push_back(tensor);
    for (const auto& [shard, names] : by_shard) {
      const std::string shard_path = (root / shard).string();
      if (!fs::exists(shard_path, ec))
        throw CheckpointError(fmt::format("{}: shard file is missing (model.safetensors.index.json assigns {} tensors to it, e.g. '{}')",
                                          shard_path, names.size(), names.front()));
      SafetensorsFile f = open_safetensors(shard_path);
      for (const std::string& name : names) {
        auto it = f.tensors.find(name);
        if (it == f.tensors.end())
          throw CheckpointError(fmt::format("{}: tensor '{}' is missing from this shard (model.safetensors.index.json puts it there)", shard_path, name));
        w.tensors.emplace(name, std::move(it->second));
      }
      w.keep(std::move(f.file));
    }
  } else if (fs::exists(single_path, ec)) {
    SafetensorsFile f = open_safetensors(single_path);
    w.tensors = std::move(f.tensors);
    w.keep(std::move(f.file));
  } else {
    throw CheckpointError(fmt::format("{}: neither model.safetensors nor model.safetensors.index.json is present", dir));
  }

  // Tied models compute logits with embed_tokens (lm_head()'s rule), so a stored lm_head copy
  // is never read; an untied model without lm_head cannot run at all.
  if (w.config.tie_word_embeddings) {
    w.tensors.erase("lm_head.weight");
  } else if (!w.has("lm_head.weight")) {
    throw CheckpointError(fmt::format("{}: tensor 'lm_head.weight' is missing and config.json's tie_word_embeddings is false", dir));
  }
  return w;
}

ModelWeights load_llama2c_weights(const std::string& path) {
  auto file = std::make_shared<const MappedFile>(path);
  ModelWeights w = parse_llama2c(file->data(), file->size(), path);
  w.keep(std::move(file));
  return w;
}

ModelWeights load_model_weights(const std::string& path, const LoadOptions& opt) {
  (void)opt;  // the non-finite scan: robustness issue (in progress)
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) throw CheckpointError(fmt::format("{}: no such file or directory", path));
  if (fs::is_directory(st)) return load_hf_weights(path);
  return load_llama2c_weights(path);
}

}  // namespace sharq
