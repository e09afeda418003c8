#include "sharq/model/quantized_checkpoint.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "sharq/core/json_checks.h"

#include "sharq/formats/minifloat.h"
#include "sharq/model/loader_text.h"

namespace sharq {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using loader_text::describe;

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}
std::string upper(std::string s) {
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Every projection the config's architecture quantizes, with its [N, K]: the names layer() reads
// (weights_test checks that the two agree on every tiny architecture).
std::map<std::string, std::vector<int64_t>> projection_shapes(const ModelConfig& c) {
  std::map<std::string, std::vector<int64_t>> out;
  const int64_t H = c.hidden_size, qd = c.num_heads * c.head_dim, kvd = c.num_kv_heads * c.head_dim;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    out[p + "self_attn.q_proj.weight"] = {qd, H};
    out[p + "self_attn.k_proj.weight"] = {kvd, H};
    out[p + "self_attn.v_proj.weight"] = {kvd, H};
    out[p + "self_attn.o_proj.weight"] = {H, qd};
    if (c.num_experts == 0) {
      const int64_t I = c.intermediate_size;
      out[p + "mlp.gate_proj.weight"] = {I, H};
      out[p + "mlp.up_proj.weight"] = {I, H};
      out[p + "mlp.down_proj.weight"] = {H, I};
      continue;
    }
    const bool mixtral = c.arch == Arch::mixtral;
    const int64_t I = mixtral ? c.intermediate_size : c.moe_intermediate_size;
    for (int64_t e = 0; e < c.num_experts; ++e) {
      const std::string ep = fmt::format("{}experts.{}.", p + (mixtral ? "block_sparse_moe." : "mlp."), e);
      out[ep + (mixtral ? "w1" : "gate_proj") + ".weight"] = {I, H};
      out[ep + (mixtral ? "w3" : "up_proj") + ".weight"] = {I, H};
      out[ep + (mixtral ? "w2" : "down_proj") + ".weight"] = {H, I};
    }
  }
  return out;
}

// The parsed quantization_config: what every quantized layer must look like.
struct Plan {
  QuantizationInfo info;
  std::string where;  // "config.json: quantization_config" or "hf_quant_config.json", for messages
  // sharq's marker "global_scales": layer ("model.layers.0.self_attn.q_proj") -> the exact multiplier g
  std::map<std::string, float> exact_globals;
  // compressed-tensors' "ignore": the module names it lists (its "re:" patterns are not evaluated:
  // an untrusted regular expression could take exponential time)
  std::set<std::string> ignore;
};

const json* field(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  const auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

std::string string_field(const json& obj, const char* key, const std::string& where, bool required) {
  const json* v = field(obj, key);
  if (!v) {
    if (required) throw CheckpointError(fmt::format("{}: field '{}' is missing", where, key));
    return {};
  }
  if (!v->is_string()) throw CheckpointError(fmt::format("{}: field '{}' must be a string, got {}", where, key, describe(*v)));
  return v->get<std::string>();
}

// One of the quantization arguments of a compressed-tensors group ("weights" / "input_activations").
void expect_arg(const json& args, const char* key, const json& want, const std::string& where) {
  const json* v = field(args, key);
  if (!v || *v != want)
    throw CheckpointError(fmt::format("{}: field '{}' is {}, but sharq reads only {} here", where, key, v ? describe(*v) : "missing",
                                      describe(want)));
}

void parse_compressed_tensors(const json& q, Plan& plan) {
  const std::string where = plan.where;
  plan.info.format = CheckpointFormat::compressed_tensors;
  const json* groups = field(q, "config_groups");
  if (!groups || !groups->is_object() || groups->empty())
    throw CheckpointError(fmt::format("{}: field 'config_groups' must be a non-empty object", where));
  if (groups->size() != 1)
    throw CheckpointError(fmt::format("{}: field 'config_groups' has {} groups; sharq reads checkpoints with one", where, groups->size()));
  // (not `*groups->items().begin()`: that binds to a temporary iteration proxy, a use after scope)
  const auto first = groups->begin();
  const std::string gname = first.key();
  const json& group = first.value();
  const std::string gwhere = fmt::format("{}.config_groups.{}", where, gname);
  if (!group.is_object()) throw CheckpointError(fmt::format("{}: must be an object", gwhere));
  std::string format = string_field(group, "format", gwhere, false);
  const std::string top_format = string_field(q, "format", where, false);
  if (format.empty()) format = string_field(q, "format", where, true);
  // one group: the top-level format, where given, is that group's (another reader takes either)
  if (!top_format.empty() && top_format != format && top_format != "mixed-precision")
    throw CheckpointError(fmt::format("{}: field 'format' is '{}' but {} says '{}'", where, top_format, gwhere, format));
  const json* weights = field(group, "weights");
  if (!weights || !weights->is_object()) throw CheckpointError(fmt::format("{}: field 'weights' is missing", gwhere));
  const std::string wwhere = gwhere + ".weights";
  const json* inputs = field(group, "input_activations");
  const std::string iwhere = gwhere + ".input_activations";
  expect_arg(*weights, "type", "float", wwhere);
  expect_arg(*weights, "symmetric", true, wwhere);
  // what the group targets and what the config leaves out must agree with the tensors (every
  // projection stored quantized): other engines read these lists, not the tensors
  const json* targets = field(group, "targets");
  if (targets && (!targets->is_array() || targets->empty()))
    throw CheckpointError(fmt::format("{}: field 'targets' must be a non-empty list (of module types or names), got {}", gwhere,
                                      targets->is_array() ? "[]" : describe(*targets)));
  if (const json* ig = field(q, "ignore")) {
    if (!ig->is_array()) throw CheckpointError(fmt::format("{}: field 'ignore' must be a list of module names, got {}", where, describe(*ig)));
    for (size_t i = 0; i < ig->size(); ++i) {
      if (!(*ig)[i].is_string())
        throw CheckpointError(fmt::format("{}: field 'ignore'[{}] must be a string, got {}", where, i, describe((*ig)[i])));
      plan.ignore.insert((*ig)[i].get<std::string>());
    }
  }
  if (format == "nvfp4-pack-quantized") {
    plan.info.weights = StoredWeights::nvfp4_16;
    expect_arg(*weights, "num_bits", 4, wwhere);
    expect_arg(*weights, "strategy", "tensor_group", wwhere);
    const json* gs = field(*weights, "group_size");
    if (!gs || !gs->is_number_integer() || gs->get<int64_t>() != 16)
      throw CheckpointError(fmt::format("{}: field 'group_size' is {}; NVFP4 has 16-element scale blocks", wwhere,
                                        gs ? describe(*gs) : "missing"));
    plan.info.static_input_scales = inputs != nullptr;  // W4A4: calibrated input_global_scale (ignored here)
  } else if (format == "float-quantized") {
    plan.info.weights = StoredWeights::fp8;
    expect_arg(*weights, "num_bits", 8, wwhere);
    const std::string strategy = string_field(*weights, "strategy", wwhere, true);
    if (strategy != "channel" && strategy != "tensor")
      throw CheckpointError(fmt::format("{}: field 'strategy' is '{}'; sharq reads FP8 weights with per-channel or per-tensor scales",
                                        wwhere, strategy));
    if (inputs) {
      const json* dyn = field(*inputs, "dynamic");
      if (dyn && !dyn->is_boolean())
        throw CheckpointError(fmt::format("{}: field 'dynamic' must be true or false, got {}", iwhere, describe(*dyn)));
      plan.info.static_input_scales = !(dyn && *dyn == true);
    }
  } else {
    throw CheckpointError(fmt::format("{}: format '{}' is not one sharq reads (nvfp4-pack-quantized, float-quantized)", gwhere, format));
  }
}

void parse_modelopt(const json& q, Plan& plan) {
  plan.info.format = CheckpointFormat::modelopt;
  const json* nested = field(q, "quantization");  // hf_quant_config.json's layout
  const json& src = nested ? *nested : q;
  const std::string where = nested ? plan.where + ".quantization" : plan.where;
  const std::string algo = upper(string_field(src, "quant_algo", where, true));
  if (algo == "NVFP4" || algo == "W4A16_NVFP4") {
    plan.info.weights = StoredWeights::nvfp4_16;
    plan.info.static_input_scales = algo == "NVFP4";
    const json* gs = field(src, "group_size");
    if (gs && (!gs->is_number_integer() || gs->get<int64_t>() != 16))
      throw CheckpointError(fmt::format("{}: field 'group_size' is {}; NVFP4 has 16-element scale blocks", where, describe(*gs)));
    // ModelOpt >= 0.31 config.json: the group also says it
    if (const json* groups = field(q, "config_groups"); groups && groups->is_object()) {
      for (const auto& [gname, group] : groups->items()) {
        const json* w = field(group, "weights");
        const json* g = w ? field(*w, "group_size") : nullptr;
        if (g && (!g->is_number_integer() || g->get<int64_t>() != 16))
          throw CheckpointError(fmt::format("{}.config_groups.{}.weights: field 'group_size' is {}; NVFP4 has 16-element scale blocks",
                                            where, gname, describe(*g)));
      }
    }
  } else if (algo == "FP8_PER_CHANNEL_PER_TOKEN" || algo == "FP8") {
    plan.info.weights = StoredWeights::fp8;
    plan.info.static_input_scales = algo == "FP8";
  } else {
    throw CheckpointError(fmt::format("{}: field 'quant_algo' is '{}'; sharq reads NVFP4, W4A16_NVFP4, FP8_PER_CHANNEL_PER_TOKEN and FP8",
                                      where, algo));
  }
}

// sharq's own marker: {"sharq": {"scheme": "sharq", "weight_scale_block": 32}}.
void parse_marker(const json& q, Plan& plan) {
  const json* m = field(q, "sharq");
  if (!m) return;
  const std::string where = plan.where + ".sharq";
  if (!m->is_object()) throw CheckpointError(fmt::format("{}: must be an object", where));
  plan.info.scheme = string_field(*m, "scheme", where, true);
  try {
    parse_scheme(plan.info.scheme);
  } catch (const std::invalid_argument& e) {
    throw CheckpointError(fmt::format("{}: field 'scheme': {}", where, e.what()));
  }
  if (const json* gs = field(*m, "global_scales")) {
    const std::string gwhere = where + ".global_scales";
    if (!gs->is_object()) throw CheckpointError(fmt::format("{}: must be an object, got {}", gwhere, describe(*gs)));
    for (const auto& [layer, v] : gs->items()) {
      if (!v.is_string())
        throw CheckpointError(fmt::format("{}: field '{}' must be a string (an FP32 value as a hex float, e.g. \"0x1.8p-3\"), got {}", gwhere,
                                          layer, describe(v)));
      float g = 0;
      if (!parse_exact_f32(v.get<std::string>(), &g))
        throw CheckpointError(fmt::format("{}: field '{}' is \"{}\", not a positive finite FP32 value written exactly (a hex float, "
                                          "e.g. \"0x1.8p-3\")",
                                          gwhere, layer, v.get<std::string>()));
      plan.exact_globals[layer] = g;
    }
  }
  const json* block = field(*m, "weight_scale_block");
  if (!block) return;
  if (!block->is_number_integer() || (block->get<int64_t>() != 16 && block->get<int64_t>() != 32))
    throw CheckpointError(fmt::format("{}: field 'weight_scale_block' must be 16 or 32, got {}", where, describe(*block)));
  if (block->get<int64_t>() == 32) {
    if (plan.info.weights != StoredWeights::nvfp4_16)
      throw CheckpointError(fmt::format("{}: field 'weight_scale_block' 32 needs NVFP4 weights", where));
    plan.info.weights = StoredWeights::nvfp4_32;
  }
}

// The marker's scheme must be one the stored tensors are: its weight format and (FP4) scale block.
void check_marker_scheme(const Plan& plan) {
  if (plan.info.scheme.empty()) return;
  const Scheme s = parse_scheme(plan.info.scheme);  // (checked by parse_marker)
  const bool fp8 = plan.info.weights == StoredWeights::fp8;
  const int block = plan.info.weights == StoredWeights::nvfp4_32 ? 32 : plan.info.weights == StoredWeights::nvfp4_16 ? 16 : 0;
  const bool fits = fp8 ? s.kind == SchemeKind::fp8 : s.is_fp4_weight() && s.fp4_weight_block() == block;
  if (!fits)
    throw CheckpointError(fmt::format("{}.sharq: field 'scheme' is '{}', but the stored weights are {}", plan.where,
                                      plan.info.scheme, fp8 ? "FP8" : fmt::format("NVFP4 with {}-element scale blocks", block)));
}

// A scalar (shape [] or [1]) global or per-tensor scale in F32 / BF16 / F16, as FP32.
float scalar_of(const TensorView& t, const std::string& file) {
  if (!is_float_weight_dtype(t.dtype))
    throw CheckpointError(fmt::format("{}: tensor '{}' has dtype {}, expected F32 (or BF16 / F16)", file, t.name, to_string(t.dtype)));
  if (t.numel() != 1 || t.shape.size() > 1)
    throw CheckpointError(fmt::format("{}: tensor '{}' has shape {}, expected a scalar ([] or [1])", file, t.name, loader_text::shape(t.shape)));
  float v = 0;
  to_f32(t, &v);
  return v;
}

void check_positive(float v, const std::string& file, const std::string& tensor, const char* what) {
  if (!std::isfinite(v) || !(v > 0.0f))
    throw CheckpointError(fmt::format("{}: tensor '{}' holds {} {:g}; it must be a positive finite number", file, tensor, what, v));
}

// First NaN byte (E4M3: 0x7F / 0xFF) of an F8 view, or -1.
int64_t first_e4m3_nan(const TensorView& t) {
  for (size_t i = 0; i < t.bytes; ++i)
    if ((t.data[i] & 0x7F) == 0x7F) return static_cast<int64_t>(i);
  return -1;
}

}  // namespace

std::string exact_f32_string(float v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%a", static_cast<double>(v));  // exact: every FP32 value is a double
  return buf;
}

bool parse_exact_f32(const std::string& s, float* out) {
  if (s.empty() || std::isspace(static_cast<unsigned char>(s[0]))) return false;
  char* end = nullptr;
  errno = 0;
  const double d = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || errno == ERANGE || !std::isfinite(d) || !(d > 0.0)) return false;
  const float f = static_cast<float>(d);
  if (static_cast<double>(f) != d || !std::isfinite(f)) return false;  // not an FP32 value: it would be rounded
  *out = f;
  return true;
}

float ct_global_multiplier(float divisor) { return 1.0f / divisor; }

float ct_global_divisor(float g, bool* exact) {
  const float x0 = 1.0f / g;
  float up = x0, down = x0;
  for (int i = 0; i <= 4; ++i) {
    if (1.0f / up == g) {
      if (exact) *exact = true;
      return up;
    }
    if (1.0f / down == g) {
      if (exact) *exact = true;
      return down;
    }
    up = std::nextafter(up, INFINITY);
    down = std::nextafter(down, 0.0f);
  }
  if (exact) *exact = false;
  return x0;
}

QuantizedMatrix<Nvfp4_16> nvfp4_16_matrix(const QuantizedWeight& w) {
  if (w.weights != StoredWeights::nvfp4_16 && w.weights != StoredWeights::nvfp4_32)
    throw std::invalid_argument(fmt::format("tensor '{}' is not stored as NVFP4", w.name));
  QuantizedMatrix<Nvfp4_16> q;
  q.rows = w.rows;
  q.cols = w.cols;
  q.blocks_per_row = ceil_div(w.cols, 16);
  q.blocks.resize(static_cast<size_t>(q.rows * q.blocks_per_row));
  q.gmode = GlobalScale::per_tensor;
  q.g = {w.global};
  const int64_t nb = q.blocks_per_row;
  for (int64_t r = 0; r < q.rows; ++r) {
    const uint8_t* codes = w.codes.data + r * nb * 8;
    const uint8_t* scales = w.scales.data + r * nb;
    block_nvfp4_16* out = q.row(r);
    for (int64_t b = 0; b < nb; ++b) {
      out[b].s.e = scales[b];
      std::memcpy(out[b].qs, codes + b * 8, 8);
    }
  }
  return q;
}

QuantizedMatrix<Nvfp4_32> nvfp4_32_matrix(const QuantizedWeight& w) {
  if (w.weights != StoredWeights::nvfp4_32)
    throw std::invalid_argument(fmt::format("tensor '{}' holds 16-element scale blocks, not sharq's W32 payload", w.name));
  QuantizedMatrix<Nvfp4_32> q;
  q.rows = w.rows;
  q.cols = w.cols;
  q.blocks_per_row = ceil_div(w.cols, 32);
  q.blocks.resize(static_cast<size_t>(q.rows * q.blocks_per_row));
  q.gmode = GlobalScale::per_tensor;
  q.g = {w.global};
  const int64_t nb16 = ceil_div(w.cols, 16);
  for (int64_t r = 0; r < q.rows; ++r) {
    const uint8_t* codes = w.codes.data + r * nb16 * 8;
    const uint8_t* scales = w.scales.data + r * nb16;
    block_nvfp4_32* out = q.row(r);
    for (int64_t b = 0; b < q.blocks_per_row; ++b) {
      out[b].s.e = scales[2 * b];
      std::memcpy(out[b].qs, codes + 2 * b * 8, 8);
      if (2 * b + 1 < nb16) std::memcpy(out[b].qs + 8, codes + (2 * b + 1) * 8, 8);
      else std::memset(out[b].qs + 8, 0, 8);  // the padding half past K: zero codes, as quantize_row writes
    }
  }
  return q;
}

std::string schemes_for(const QuantizationInfo& q) {
  switch (q.weights) {
    case StoredWeights::none: return "every scheme";
    case StoredWeights::nvfp4_16: return "nvfp4, w4a16 and sharq:w16 (with any activation options)";
    case StoredWeights::nvfp4_32: return "sharq, sharq:w16, nvfp4 and w4a16 (with any activation options)";
    case StoredWeights::fp8: return "fp8";
  }
  return "?";
}

std::string quantized_scheme_mismatch(const QuantizationInfo& q, const Scheme& s, const std::string& source) {
  bool ok = true;
  switch (q.weights) {
    case StoredWeights::none: return {};
    case StoredWeights::nvfp4_16: ok = s.fp4_weight_block() == 16; break;
    case StoredWeights::nvfp4_32: ok = s.fp4_weight_block() != 0; break;
    case StoredWeights::fp8: ok = s.kind == SchemeKind::fp8; break;
  }
  if (ok) return {};
  std::string hint;
  if (q.weights == StoredWeights::nvfp4_16 && s.kind == SchemeKind::sharq)
    hint = fmt::format("; SharQ's W32 weights cannot be made from 16-element blocks without re-quantizing: use '{}:w16'", s.name());
  return fmt::format("scheme '{}' cannot run on {}: it holds {} weights (a {} checkpoint), which run as {}{}", s.name(), source, q.describe(),
                     to_string(q.format), schemes_for(q), hint);
}

void read_quantization_config(ModelWeights& w, const std::string& config_text, const std::string& config_path, const std::string& dir,
                              const LoadOptions& opt) {
  json config;
  try {
    config = json_checks::parse_unique(config_text);
  } catch (const json::exception& e) {
    throw CheckpointError(fmt::format("{}: not valid JSON ({})", config_path, e.what()));
  } catch (const std::invalid_argument& e) {
    throw CheckpointError(fmt::format("{}: {}", config_path, e.what()));
  }
  Plan plan;
  const json* q = field(config, "quantization_config");
  plan.where = config_path + ": quantization_config";
  if (!q) {
    q = field(config, "compression_config");
    plan.where = config_path + ": compression_config";
  }
  json hf_quant;
  if (!q) {  // ModelOpt <= 0.29: hf_quant_config.json alone
    const fs::path p = fs::path(dir) / "hf_quant_config.json";
    std::error_code ec;
    if (!fs::exists(p, ec)) return;  // an unquantized checkpoint
    const std::vector<uint8_t> bytes = read_file_bytes(p.string());
    try {
      hf_quant = json_checks::parse_unique(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
    } catch (const json::exception& e) {
      throw CheckpointError(fmt::format("{}: not valid JSON ({})", p.string(), e.what()));
    } catch (const std::invalid_argument& e) {
      throw CheckpointError(fmt::format("{}: {}", p.string(), e.what()));
    }
    const json* producer = field(hf_quant, "producer");
    const json* name = producer ? field(*producer, "name") : nullptr;
    if (!name || (*name != "modelopt" && *name != "sharq")) return;  // not a ModelOpt-layout export: not ours to read
    q = &hf_quant;
    plan.where = p.string();
  }
  if (!q->is_object()) throw CheckpointError(fmt::format("{}: must be an object, got {}", plan.where, describe(*q)));
  const std::string method = lower(string_field(*q, "quant_method", plan.where, false));
  if (method == "compressed-tensors" || method == "compressed_tensors") {
    parse_compressed_tensors(*q, plan);
  } else if (method.rfind("modelopt", 0) == 0 || (method.empty() && field(*q, "producer") && field(*q, "quantization"))) {
    parse_modelopt(*q, plan);
  } else {
    throw CheckpointError(fmt::format("{}: field 'quant_method' is '{}'; sharq reads compressed-tensors and modelopt checkpoints",
                                      plan.where, method));
  }
  parse_marker(*q, plan);
  check_marker_scheme(plan);
  w.quantization = plan.info;

  const bool ct = plan.info.format == CheckpointFormat::compressed_tensors;
  const bool fp8 = plan.info.weights == StoredWeights::fp8;
  const std::string fmt_name = plan.info.describe();
  const std::string codes_suffix = ct && !fp8 ? "weight_packed" : "weight";
  const std::string global_suffix = ct ? "weight_global_scale" : "weight_scale_2";
  const std::string file = w.source;
  std::set<std::string> used_globals;

  for (const auto& [name, shape] : projection_shapes(w.config)) {
    const std::string base = name.substr(0, name.size() - std::string("weight").size());
    const std::string codes_name = base + codes_suffix, scale_name = base + "weight_scale";
    const auto codes_it = w.tensors.find(codes_name);
    if (codes_it == w.tensors.end()) {
      const auto plain = w.tensors.find(name);
      if (plain != w.tensors.end())
        throw CheckpointError(fmt::format("{}: tensor '{}' is {} {}, not quantized, but {} says the checkpoint is {} ('{}' expected); "
                                          "sharq runs a quantized checkpoint only when every projection is quantized",
                                          file, name, to_string(plain->second.dtype), loader_text::shape(plain->second.shape), plan.where,
                                          fmt_name, codes_name));
      throw CheckpointError(fmt::format("{}: tensor '{}' is missing ({} layer '{}')", file, codes_name, fmt_name, base.substr(0, base.size() - 1)));
    }
    if (plan.ignore.count(base.substr(0, base.size() - 1)))
      throw CheckpointError(fmt::format("{}: field 'ignore' lists '{}', but {} stores it quantized ('{}')", plan.where,
                                        base.substr(0, base.size() - 1), file, codes_name));
    auto qw = std::make_shared<QuantizedWeight>();
    qw->name = name;
    qw->format = plan.info.format;
    qw->weights = plan.info.weights;
    qw->rows = shape[0];
    qw->cols = shape[1];
    const int64_t N = shape[0], K = shape[1], nb16 = ceil_div(K, 16);
    qw->codes = codes_it->second;
    const TensorView& codes = qw->codes;
    const auto scale_it = w.tensors.find(scale_name);
    if (scale_it == w.tensors.end())
      throw CheckpointError(fmt::format("{}: tensor '{}' is missing ({} layer '{}' has its codes '{}' but no scales)", file, scale_name, fmt_name,
                                        base.substr(0, base.size() - 1), codes_name));
    std::vector<std::string> consumed = {codes_name, scale_name, base + "input_scale", base + "input_global_scale"};
    // Static activation scales (W4A4 / static FP8): sharq computes its own online and ignores their
    // values, but a corrupt one is refused, since the file would make other engines silently wrong.
    for (const char* suffix : {"input_scale", "input_global_scale"}) {
      const auto in_it = w.tensors.find(base + suffix);
      if (in_it == w.tensors.end()) continue;
      const float v = scalar_of(in_it->second, file);
      if (std::isnan(v) || std::isinf(v)) {
        if (opt.allow_nonfinite) continue;
        throw CheckpointError(fmt::format("{}: tensor '{}' holds {:g}, a non-finite static activation scale (sharq computes its "
                                          "activation scales online and does not use it, but other engines would); pass "
                                          "--allow-nonfinite to load it anyway",
                                          file, base + suffix, v));
      }
      check_positive(v, file, base + suffix, "the static activation scale");
    }
    if (!fp8) {
      // codes: U8 [N, ceil(K/16) * 8] (= K/2 whenever K % 16 == 0, the formats' own rule)
      const std::vector<int64_t> want_codes = {N, nb16 * 8}, want_scales = {N, nb16};
      if (codes.dtype != DType::u8)
        throw CheckpointError(fmt::format("{}: tensor '{}' has dtype {}, expected U8 (two packed E2M1 codes per byte)", file, codes_name,
                                          to_string(codes.dtype)));
      if (codes.shape != want_codes)
        throw CheckpointError(fmt::format("{}: tensor '{}' has shape {}, expected {} for the [{}, {}] weight the config describes", file,
                                          codes_name, loader_text::shape(codes.shape), loader_text::shape(want_codes), N, K));
      qw->scales = scale_it->second;
      const TensorView& sc = qw->scales;
      if (sc.dtype != DType::f8_e4m3)
        throw CheckpointError(fmt::format("{}: tensor '{}' has dtype {}, expected F8_E4M3 (one block scale per 16 elements)", file, scale_name,
                                          to_string(sc.dtype)));
      if (sc.shape != want_scales)
        throw CheckpointError(fmt::format("{}: tensor '{}' has shape {}, expected {} (one scale per 16 of the {} elements of a row)", file,
                                          scale_name, loader_text::shape(sc.shape), loader_text::shape(want_scales), K));
      if (!opt.allow_nonfinite)
        if (const int64_t i = first_e4m3_nan(sc); i >= 0)
          throw CheckpointError(fmt::format("{}: tensor '{}' holds a NaN block scale (0x{:02X}) at row {}, block {}; pass --allow-nonfinite to "
                                            "load it anyway",
                                            file, scale_name, sc.data[i], i / nb16, i % nb16));
      for (size_t i = 0; i < sc.bytes; ++i)
        if ((sc.data[i] & 0x80) && (sc.data[i] & 0x7F) != 0x7F)
          throw CheckpointError(fmt::format("{}: tensor '{}' holds a negative block scale (0x{:02X}) at row {}, block {}", file, scale_name,
                                            sc.data[i], i / nb16, i % nb16));
      const std::string global_name = base + global_suffix;
      const auto g_it = w.tensors.find(global_name);
      if (g_it == w.tensors.end())
        throw CheckpointError(fmt::format("{}: tensor '{}' is missing (the global scale of {} layer '{}')", file, global_name, fmt_name,
                                          base.substr(0, base.size() - 1)));
      const float stored = scalar_of(g_it->second, file);
      check_positive(stored, file, global_name, ct ? "the divisor" : "the multiplier");
      qw->global = ct ? ct_global_multiplier(stored) : stored;
      check_positive(qw->global, file, global_name, "a global scale whose multiplier is");
      const std::string layer = base.substr(0, base.size() - 1);
      if (const auto e = plan.exact_globals.find(layer); e != plan.exact_globals.end()) {
        // the exact g sharq's writer recorded; it must be the stored scale's value to a couple of ulps
        uint32_t a = 0, b = 0;
        std::memcpy(&a, &e->second, 4);
        std::memcpy(&b, &qw->global, 4);
        if ((a > b ? a - b : b - a) > 2)
          throw CheckpointError(fmt::format("{}: field 'sharq.global_scales.{}' is {} ({:.9g}), but tensor '{}' says g = {} ({:.9g}{}); the two "
                                            "must agree to 2 ulps",
                                            plan.where, layer, exact_f32_string(e->second), e->second, global_name,
                                            exact_f32_string(qw->global), qw->global,
                                            ct ? fmt::format(", 1 / the stored divisor {:.9g}", stored) : std::string()));
        qw->global = e->second;
        used_globals.insert(layer);
      }
      consumed.push_back(global_name);
      if (plan.info.weights == StoredWeights::nvfp4_32) {
        for (int64_t r = 0; r < N; ++r)
          for (int64_t b = 0; b + 1 < nb16; b += 2)
            if (sc.data[r * nb16 + b] != sc.data[r * nb16 + b + 1])
              throw CheckpointError(fmt::format("{}: tensor '{}': row {} has different scales in 16-blocks {} and {} (0x{:02X}, 0x{:02X}), "
                                                "but {}.sharq says the weights are SharQ's W32 blocks",
                                                file, scale_name, r, b, b + 1, sc.data[r * nb16 + b], sc.data[r * nb16 + b + 1], plan.where));
      }
    } else {
      if (codes.dtype != DType::f8_e4m3)
        throw CheckpointError(fmt::format("{}: tensor '{}' has dtype {}, expected F8_E4M3", file, codes_name, to_string(codes.dtype)));
      if (codes.shape != shape)
        throw CheckpointError(fmt::format("{}: tensor '{}' has shape {}, expected {}", file, codes_name, loader_text::shape(codes.shape),
                                          loader_text::shape(shape)));
      if (!opt.allow_nonfinite)
        if (const int64_t i = first_e4m3_nan(codes); i >= 0)
          throw CheckpointError(fmt::format("{}: tensor '{}' holds a NaN code at row {}, column {}; pass --allow-nonfinite to load it anyway",
                                            file, codes_name, i / K, i % K));
      const TensorView& sc = scale_it->second;
      if (!is_float_weight_dtype(sc.dtype))
        throw CheckpointError(fmt::format("{}: tensor '{}' has dtype {}, expected F32 (or BF16 / F16)", file, scale_name, to_string(sc.dtype)));
      const bool per_channel = sc.shape == std::vector<int64_t>{N} || sc.shape == std::vector<int64_t>{N, 1};
      const bool per_tensor = sc.numel() == 1 && sc.shape.size() <= 1;
      if (!per_channel && !per_tensor)
        throw CheckpointError(fmt::format("{}: tensor '{}' has shape {}, expected [{}], [{}, 1] (per channel) or a scalar (per tensor)", file,
                                          scale_name, loader_text::shape(sc.shape), N, N));
      std::vector<float> s = to_f32(sc);
      if (per_tensor && !per_channel) s.assign(static_cast<size_t>(N), s[0]);
      for (int64_t n = 0; n < N; ++n) check_positive(s[n], file, scale_name, fmt::format("at row {}", n).c_str());
      qw->channel_scales = std::move(s);
    }
    for (const std::string& c : consumed) w.tensors.erase(c);
    TensorView logical;
    logical.name = name;
    logical.dtype = DType::u8;
    logical.shape = shape;
    logical.quantized = std::move(qw);
    w.tensors[name] = std::move(logical);
  }

  for (const auto& [layer, g] : plan.exact_globals)
    if (!used_globals.count(layer))
      throw CheckpointError(fmt::format("{}: field 'sharq.global_scales' names '{}', which is not an NVFP4 layer of this checkpoint", plan.where,
                                        layer));

  // Anything left that looks like a part of a quantized layer belongs to no projection the config has.
  for (const auto& [name, t] : w.tensors) {
    if (t.quantized) continue;
    for (const char* suffix : {".weight_packed", ".weight_scale", ".weight_global_scale", ".weight_scale_2", ".input_global_scale"})
      if (ends_with(name, suffix))
        throw CheckpointError(fmt::format("{}: tensor '{}' is a part of a quantized layer that is not one of the projections the config "
                                          "quantizes ({}: q/k/v/o and the MLP; lm_head, embeddings and norms stay unquantized)",
                                          file, name, fmt_name));
  }
}

}  // namespace sharq
