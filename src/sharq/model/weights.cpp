#include "sharq/model/weights.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string_view>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "sharq/core/json_checks.h"

#include "sharq/formats/minifloat.h"
#include "sharq/model/loader_text.h"
#include "sharq/model/quantized_checkpoint.h"
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
    index = json_checks::parse_unique(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
  } catch (const nlohmann::json::exception& e) {
    throw CheckpointError(fmt::format("{}: not valid JSON ({})", index_path, e.what()));
  } catch (const std::invalid_argument& e) {
    throw CheckpointError(fmt::format("{}: {}", index_path, e.what()));
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

// Whether two views hold the same values (shape and every element's FP32 value), compared in
// chunks so that no FP32 copy of a large matrix is made.
bool same_values(const TensorView& a, const TensorView& b) {
  if (a.shape != b.shape) return false;
  if (a.dtype == b.dtype) return a.bytes == b.bytes && (a.bytes == 0 || std::memcmp(a.data, b.data, a.bytes) == 0);
  const size_t count = static_cast<size_t>(a.numel());
  constexpr size_t kChunk = 4096;
  std::vector<float> fa(kChunk), fb(kChunk);
  for (size_t begin = 0; begin < count; begin += kChunk) {
    const size_t n = std::min(kChunk, count - begin);
    TensorView ca = a, cb = b;
    ca.data = a.data + begin * dtype_bytes(a.dtype);
    ca.bytes = n * dtype_bytes(a.dtype);
    cb.data = b.data + begin * dtype_bytes(b.dtype);
    cb.bytes = n * dtype_bytes(b.dtype);
    to_f32(ca, fa.data());
    to_f32(cb, fb.data());
    if (std::memcmp(fa.data(), fb.data(), n * sizeof(float)) != 0) return false;
  }
  return true;
}

[[maybe_unused]] uint32_t le32(const uint8_t* p) { return p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<uint32_t>(p[3]) << 24); }

}  // namespace

const char* to_string(DType d) {
  switch (d) {
    case DType::f32: return "F32";
    case DType::f16: return "F16";
    case DType::bf16: return "BF16";
    case DType::u8: return "U8";
    case DType::i8: return "I8";
    case DType::f8_e4m3: return "F8_E4M3";
  }
  return "?";
}

size_t dtype_bytes(DType d) {
  switch (d) {
    case DType::f32: return 4;
    case DType::f16:
    case DType::bf16: return 2;
    default: return 1;
  }
}

bool is_float_weight_dtype(DType d) { return d == DType::f32 || d == DType::f16 || d == DType::bf16; }

const char* to_string(CheckpointFormat f) {
  switch (f) {
    case CheckpointFormat::none: return "unquantized";
    case CheckpointFormat::compressed_tensors: return "compressed-tensors";
    case CheckpointFormat::modelopt: return "modelopt";
  }
  return "?";
}

std::string QuantizationInfo::describe() const {
  const char* w = "";
  switch (weights) {
    case StoredWeights::none: w = "unquantized"; break;
    case StoredWeights::nvfp4_16: w = "NVFP4 (16-element scale blocks)"; break;
    case StoredWeights::nvfp4_32: w = "NVFP4 with SharQ's W32 scale blocks (stored as their 16-element view)"; break;
    case StoredWeights::fp8: w = "FP8 E4M3 (per-channel scales)"; break;
  }
  return fmt::format("{} {}", to_string(format), w);
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

void to_f32(const TensorView& t, float* out) {
  if (t.quantized)
    throw CheckpointError(fmt::format("tensor '{}' is stored quantized; it has no unquantized values (run a scheme that reads the "
                                      "stored weights as they are)",
                                      t.name));
  const size_t count = t.bytes / dtype_bytes(t.dtype);
  if (count == 0) return;  // data may be null, which memcpy must not get
  const uint8_t* src = t.data;
  switch (t.dtype) {
    case DType::u8: for (size_t i = 0; i < count; ++i) out[i] = static_cast<float>(src[i]); return;
    case DType::i8: for (size_t i = 0; i < count; ++i) out[i] = static_cast<float>(static_cast<int8_t>(src[i])); return;
    case DType::f8_e4m3: for (size_t i = 0; i < count; ++i) out[i] = e4m3_decode(src[i]); return;
    default: break;
  }
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
  if (t.quantized) to_f32(t, nullptr);  // throws, naming the tensor
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

namespace {

// A decimal index without sign or leading zeros ("0", "17"), below `limit`; else -1. `s` is
// advanced past the digits.
int64_t parse_index(std::string_view& s, int64_t limit) {
  size_t n = 0;
  while (n < s.size() && s[n] >= '0' && s[n] <= '9') ++n;
  if (n == 0 || n > 18 || (n > 1 && s[0] == '0')) return -1;
  int64_t v = 0;
  for (size_t i = 0; i < n; ++i) v = v * 10 + (s[i] - '0');
  s.remove_prefix(n);
  return v < limit ? v : -1;
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

bool is_ignorable_tensor(const std::string& name) {
  for (const char* suffix : {".rotary_emb.inv_freq", ".input_scale", ".k_scale", ".v_scale", ".kv_scale"})
    if (ends_with(name, suffix)) return true;
  return name == "rotary_emb.inv_freq" || name == "model.rotary_emb.inv_freq";
}

// Mirrors layer(), embed_tokens(), final_norm() and lm_head() name by name (weights_test.cpp checks
// that every view they return is a name this accepts, on every tiny architecture).
bool ModelWeights::uses(const std::string& name) const {
  const ModelConfig& c = config;
  if (name == "model.embed_tokens.weight" || name == "model.norm.weight") return true;
  if (name == "lm_head.weight") return !c.tie_word_embeddings;
  std::string_view s(name);
  constexpr std::string_view kLayers = "model.layers.";
  if (s.substr(0, kLayers.size()) != kLayers) return false;
  s.remove_prefix(kLayers.size());
  if (parse_index(s, c.num_layers) < 0 || s.empty() || s[0] != '.') return false;
  s.remove_prefix(1);
  for (std::string_view t : {"input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight",
                             "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight"})
    if (s == t) return true;
  if (c.attention_bias && (s == "self_attn.q_proj.bias" || s == "self_attn.k_proj.bias" || s == "self_attn.v_proj.bias")) return true;
  if (c.attention_output_bias && s == "self_attn.o_proj.bias") return true;
  if (c.qk_norm && (s == "self_attn.q_norm.weight" || s == "self_attn.k_norm.weight")) return true;
  if (c.num_experts == 0) return s == "mlp.gate_proj.weight" || s == "mlp.up_proj.weight" || s == "mlp.down_proj.weight";
  const bool mixtral = c.arch == Arch::mixtral;
  const std::string_view moe = mixtral ? "block_sparse_moe." : "mlp.";
  if (s.substr(0, moe.size()) != moe) return false;
  s.remove_prefix(moe.size());
  if (s == "gate.weight") return true;
  constexpr std::string_view kExperts = "experts.";
  if (s.substr(0, kExperts.size()) != kExperts) return false;
  s.remove_prefix(kExperts.size());
  if (parse_index(s, c.num_experts) < 0 || s.empty() || s[0] != '.') return false;
  s.remove_prefix(1);
  if (mixtral) return s == "w1.weight" || s == "w2.weight" || s == "w3.weight";
  return s == "gate_proj.weight" || s == "up_proj.weight" || s == "down_proj.weight";
}

void ModelWeights::check_all_tensors_used() const {
  std::vector<std::string> unused;
  for (const auto& [name, view] : tensors)
    if (!uses(name) && !is_ignorable_tensor(name)) unused.push_back(name);
  if (unused.empty()) return;
  constexpr size_t kShown = 5;
  std::string list;
  for (size_t i = 0; i < unused.size() && i < kShown; ++i) list += fmt::format("{}'{}'", i ? ", " : "", unused[i]);
  if (unused.size() > kShown) list += fmt::format(" and {} more", unused.size() - kShown);
  // The two common causes, said in words: fewer layers in the config than in the checkpoint, and
  // tensors of another architecture (e.g. Qwen2's q/k/v biases under model_type llama).
  std::string hint;
  int64_t max_layer = -1;
  bool bias = false, qk_norm = false;
  for (const std::string& n : unused) {
    std::string_view s(n);
    if (s.substr(0, 13) == "model.layers.") {
      s.remove_prefix(13);
      const int64_t l = parse_index(s, std::numeric_limits<int64_t>::max());
      if (l >= config.num_layers) {  // a whole extra layer: not a sign of the wrong architecture
        max_layer = std::max(max_layer, l);
        continue;
      }
    }
    bias = bias || ends_with(n, ".bias");
    qk_norm = qk_norm || ends_with(n, ".q_norm.weight") || ends_with(n, ".k_norm.weight");
  }
  if (max_layer >= 0)
    hint += fmt::format("; the checkpoint holds layers up to {} but the config's layer count (num_hidden_layers) is {}", max_layer,
                        config.num_layers);
  if (bias || qk_norm)
    hint += fmt::format("; the config's architecture ({}{}{}) has no such {}: is its model_type right?", to_string(config.arch),
                        config.attention_bias ? ", attention_bias" : "", config.qk_norm ? ", qk_norm" : "",
                        bias && qk_norm ? "biases or norms" : bias ? "biases" : "norms");
  throw CheckpointError(fmt::format("{}: {} tensor{} in the checkpoint {} not used by its config: {}{}", source, unused.size(),
                                    unused.size() == 1 ? "" : "s", unused.size() == 1 ? "is" : "are", list, hint));
}

namespace {

// Elements of `t` whose exponent bits are all ones (NaN or +-Inf), and the index of the first.
struct NonFinite {
  uint64_t count = 0;
  uint64_t first = 0;
};

template <typename Word>
Word load_le(const uint8_t* p) {  // one load on a little-endian host
  Word w = 0;
  for (size_t k = 0; k < sizeof(Word); ++k) w = static_cast<Word>(w | (static_cast<Word>(p[k]) << (8 * k)));
  return w;
}

template <typename Word>
NonFinite scan_nonfinite(const uint8_t* data, size_t count, Word exponent_mask) {
  // Chunks counted in parallel (a branch-free loop the compiler vectorizes); the first index is
  // searched for only in a tensor that has one.
  constexpr size_t kChunk = size_t{1} << 16;
  const size_t chunks = (count + kChunk - 1) / kChunk;
  uint64_t total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static) if (chunks > 1)
  for (size_t c = 0; c < chunks; ++c) {
    const size_t begin = c * kChunk, end = std::min(count, begin + kChunk);
    uint64_t n = 0;
    for (size_t i = begin; i < end; ++i) {
      const Word w = load_le<Word>(data + i * sizeof(Word));
      n += (w & exponent_mask) == exponent_mask;
    }
    total += n;
  }
  NonFinite r;
  r.count = total;
  if (total == 0) return r;
  for (size_t i = 0; i < count; ++i) {
    const Word w = load_le<Word>(data + i * sizeof(Word));
    if ((w & exponent_mask) == exponent_mask) {
      r.first = i;
      break;
    }
  }
  return r;
}

}  // namespace

void ModelWeights::check_finite() const {
  for (const auto& [name, t] : tensors) {
    if (is_ignorable_tensor(name)) continue;  // never read
    const size_t count = t.bytes / dtype_bytes(t.dtype);
    if (count == 0) continue;
    NonFinite r;
    switch (t.dtype) {
      case DType::f32: r = scan_nonfinite<uint32_t>(t.data, count, 0x7F800000u); break;
      case DType::f16: r = scan_nonfinite<uint16_t>(t.data, count, 0x7C00u); break;
      case DType::bf16: r = scan_nonfinite<uint16_t>(t.data, count, 0x7F80u); break;
      case DType::f8_e4m3: r = scan_nonfinite<uint8_t>(t.data, count, 0x7Fu); break;  // E4M3 (fn) has NaN only
      case DType::u8:
      case DType::i8: break;
    }
    if (r.count != 0)
      throw CheckpointError(fmt::format("{}: tensor '{}' holds {} non-finite value{} (NaN or Inf; the first at index {}); "
                                        "pass --allow-nonfinite to load it anyway",
                                        source, name, r.count, r.count == 1 ? "" : "s", r.first));
  }
}

void ModelWeights::check_weight_dtypes() const {
  for (const auto& [name, t] : tensors) {
    if (t.quantized || is_float_weight_dtype(t.dtype) || !uses(name)) continue;
    throw CheckpointError(fmt::format("{}: tensor '{}' has dtype {}, which holds no weight values (expected F32, F16 or BF16{})", source,
                                      name, to_string(t.dtype),
                                      quantization.quantized() ? "; it is not a part of a quantized layer that quantization_config describes"
                                                               : "; config.json has no quantization_config that would say how to read it"));
  }
}

void ModelWeights::keep(std::shared_ptr<const MappedFile> file) { files_.push_back(std::move(file)); }
void ModelWeights::keep(std::shared_ptr<const std::vector<uint8_t>> bytes) { owned_.push_back(std::move(bytes)); }

size_t ModelWeights::mapped_bytes() const {
  size_t n = 0;
  for (const auto& f : files_) n += f->size();
  return n;
}

bool ModelWeights::holds(const uint8_t* p, size_t n) const {
  if (p == nullptr) return false;
  const auto p0 = reinterpret_cast<uintptr_t>(p);
  auto inside = [&](const uint8_t* base, size_t size) {
    const auto b = reinterpret_cast<uintptr_t>(base);
    return base != nullptr && p0 >= b && p0 - b <= size && n <= size - (p0 - b);
  };
  for (const auto& f : files_)
    if (inside(f->data(), f->size())) return true;
  for (const auto& o : owned_)
    if (inside(o->data(), o->size())) return true;
  return false;
}

std::shared_ptr<const void> ModelWeights::storage() const {
  struct Keep {
    std::vector<std::shared_ptr<const MappedFile>> files;
    std::vector<std::shared_ptr<const std::vector<uint8_t>>> owned;
  };
  return std::make_shared<const Keep>(Keep{files_, owned_});
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

ModelWeights load_hf_weights(const std::string& dir, const LoadOptions& opt) {
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
  // is never read and is dropped; a stored lm_head that is not a copy (an untied model whose config
  // says tied) would be silently replaced, and is an error. An untied model without lm_head cannot
  // run at all.
  if (w.config.tie_word_embeddings) {
    const auto head = w.tensors.find("lm_head.weight"), embed = w.tensors.find("model.embed_tokens.weight");
    if (head != w.tensors.end() && embed != w.tensors.end() && !same_values(head->second, embed->second))
      throw CheckpointError(fmt::format("{}: tensor 'lm_head.weight' differs from 'model.embed_tokens.weight' but config.json's "
                                        "tie_word_embeddings is true (it would be ignored: is the model untied?)",
                                        dir));
    w.tensors.erase("lm_head.weight");
  } else if (!w.has("lm_head.weight")) {
    throw CheckpointError(fmt::format("{}: tensor 'lm_head.weight' is missing and config.json's tie_word_embeddings is false", dir));
  }
  {  // a quantized checkpoint: its projections become QuantizedWeight views (quantized_checkpoint.h)
    const std::vector<uint8_t> text = read_file_bytes(config_path);
    read_quantization_config(w, std::string(text.begin(), text.end()), config_path, dir, opt);
  }
  w.check_weight_dtypes();
  w.check_all_tensors_used();
  if (!opt.allow_nonfinite) w.check_finite();
  return w;
}

ModelWeights load_llama2c_weights(const std::string& path, const LoadOptions& opt) {
  auto file = std::make_shared<const MappedFile>(path);
  ModelWeights w = parse_llama2c(file->data(), file->size(), path);
  w.keep(std::move(file));
  w.check_all_tensors_used();  // holds by construction; kept so that both loaders promise the same
  if (!opt.allow_nonfinite) w.check_finite();
  return w;
}

ModelWeights load_model_weights(const std::string& path, const LoadOptions& opt) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) throw CheckpointError(fmt::format("{}: no such file or directory", path));
  if (fs::is_directory(st)) return load_hf_weights(path, opt);
  return load_llama2c_weights(path, opt);
}

}  // namespace sharq
