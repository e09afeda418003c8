#include "sharq/tools/quantize.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <stdexcept>
#include <tuple>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "sharq/formats/minifloat.h"
#include "sharq/model/quantized_checkpoint.h"
#include "sharq/model/safetensors.h"
#include "sharq/model/tokenizer.h"
#include "sharq/quant/fp8.h"
#include "sharq/quant/scheme.h"
#include "sharq/runtime/cpu/transformer.h"
#include "sharq/sharq.h"
#include "sharq/tools/scoring.h"

namespace sharq {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

StoredWeights stored_weights_of(const Scheme& s) {
  if (s.kind == SchemeKind::fp8) return StoredWeights::fp8;
  if (s.fp4_weight_block() == 16) return StoredWeights::nvfp4_16;
  if (s.fp4_weight_block() == 32) return StoredWeights::nvfp4_32;
  throw std::invalid_argument(fmt::format("scheme '{}' has no stored form: sharq quantize writes nvfp4, w4a16, sharq, sharq:w16 and fp8 "
                                          "(MXFP4, HiF4 and unquantized schemes have no compressed-tensors or ModelOpt layout)",
                                          s.name()));
}

CheckpointFormat format_of(const std::string& f) {
  if (f == "compressed-tensors") return CheckpointFormat::compressed_tensors;
  if (f == "modelopt") return CheckpointFormat::modelopt;
  throw std::invalid_argument(fmt::format("--format: '{}' is not a checkpoint format (compressed-tensors, modelopt)", f));
}

std::string version_string() { return fmt::format("{}.{}.{}", kVersionMajor, kVersionMinor, kVersionPatch); }

// ---- synthetic weights: a counter-based generator, so that any row is made on its own (in parallel)
uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
uint64_t name_hash(const std::string& s) {  // FNV-1a
  uint64_t h = 0xCBF29CE484222325ull;
  for (const char c : s) h = (h ^ static_cast<uint8_t>(c)) * 0x100000001B3ull;
  return h;
}
constexpr float kSyntheticAmplitude = 0.0346f;  // uniform in [-a, a]: standard deviation 0.02, as HF initializes

// Row `row` of a synthetic tensor: uniform in [-a, a], element 0 of row 0 exactly +a (so the amax is a).
void synthetic_row(uint64_t tensor_seed, int64_t row, int64_t cols, float a, float* out) {
  uint64_t state = splitmix64(tensor_seed ^ splitmix64(static_cast<uint64_t>(row)));
  for (int64_t k = 0; k < cols; ++k) {
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    const uint64_t r = state * 0x2545F4914F6CDD1Dull;  // xorshift64*
    out[k] = a * (static_cast<float>(r >> 40) * (2.0f / 16777216.0f) - 1.0f);
  }
  if (row == 0 && cols > 0) out[0] = a;
}

// One projection and the group whose amax its NVFP4 global scale comes from.
struct Projection {
  const TensorView* w = nullptr;
  int64_t group = 0;
  bool rope_permute = false;  // q/k of a llama2.c source: rows reordered to Hugging Face's rotate-half layout
  int64_t heads = 0;
  float g = 1.0f;             // NVFP4: the multiplier the blocks are quantized with
  float divisor = 1.0f;       // compressed-tensors: the stored weight_global_scale
  bool synthetic = false;     // generated here (synthetic_row), the view has only a name and a shape
  uint64_t seed = 0;
  float input_amax = -1.0f;   // calibrated amax of the input (< 0: not calibrated)
};

// FP32 values of a projection, q/k rows permuted for a llama2.c source: row h*hd + j*hd/2 + i of the
// result is row h*hd + 2i + j of the source (llama2.c rotates adjacent pairs, HF rotates halves; the
// convert_llama_weights_to_hf permutation).
std::vector<float> projection_f32(const Projection& p) {
  if (p.synthetic) {
    const int64_t N = p.w->shape[0], K = p.w->shape[1];
    std::vector<float> x(static_cast<size_t>(N * K));
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) synthetic_row(p.seed, n, K, kSyntheticAmplitude, x.data() + n * K);
    return x;
  }
  std::vector<float> x = to_f32(*p.w);
  if (!p.rope_permute) return x;
  const int64_t N = p.w->shape[0], K = p.w->shape[1], hd = N / p.heads;
  std::vector<float> y(x.size());
  for (int64_t h = 0; h < p.heads; ++h)
    for (int64_t j = 0; j < 2; ++j)
      for (int64_t i = 0; i < hd / 2; ++i)
        std::copy_n(x.data() + (h * hd + 2 * i + j) * K, K, y.data() + (h * hd + j * hd / 2 + i) * K);
  return y;
}

// max |x| over the finite values of a view, converted in chunks (no FP32 copy of the whole tensor).
float amax_of(const TensorView& t) {
  constexpr size_t kChunk = 1 << 16;
  const size_t count = static_cast<size_t>(t.numel()), item = dtype_bytes(t.dtype);
  std::vector<float> buf(std::min(kChunk, count));
  float m = 0.0f;
  for (size_t begin = 0; begin < count; begin += kChunk) {
    const size_t n = std::min(kChunk, count - begin);
    TensorView c = t;
    c.data = t.data + begin * item;
    c.bytes = n * item;
    to_f32(c, buf.data());
    m = std::max(m, amax_finite(buf.data(), static_cast<int>(n)));
  }
  return m;
}

const char* modelopt_algo(bool fp8, bool static_inputs) {
  return fp8 ? "FP8_PER_CHANNEL_PER_TOKEN" : static_inputs ? "NVFP4" : "W4A16_NVFP4";
}

json quantization_config(const Scheme& scheme, CheckpointFormat format, bool static_inputs) {
  const StoredWeights stored = stored_weights_of(scheme);
  const bool fp8 = stored == StoredWeights::fp8;
  if (static_inputs && (fp8 || !scheme.has_act_global_scale()))
    throw std::invalid_argument(fmt::format("scheme '{}' has no static activation scales to store", scheme.name()));
  json marker = {{"scheme", scheme.name()},
                 {"version", version_string()},
                 {"activation_scales", static_inputs ? "online (sharq computes them per token or per tensor at run time; the stored "
                                                       "static input scales, calibrated for other engines, are checked and not used)"
                                                     : "online (none stored; sharq computes them per token or per tensor at run time)"}};
  if (!fp8) marker["weight_scale_block"] = stored == StoredWeights::nvfp4_32 ? 32 : 16;
  if (format == CheckpointFormat::compressed_tensors) {
    // compressed-tensors' QuantizationArgs, as its serializer writes them (docs/checkpoint_formats.md 1.4, 1.5)
    json weights = {{"actorder", nullptr}, {"block_structure", nullptr}, {"dynamic", false}, {"observer", "minmax"},
                    {"observer_kwargs", json::object()}, {"symmetric", true}, {"type", "float"}, {"zp_dtype", nullptr}};
    json inputs = nullptr;
    if (fp8) {
      weights["num_bits"] = 8;
      weights["strategy"] = "channel";
      weights["group_size"] = nullptr;
      weights["scale_dtype"] = nullptr;
      inputs = {{"actorder", nullptr}, {"block_structure", nullptr}, {"dynamic", true}, {"group_size", nullptr}, {"num_bits", 8},
                {"observer", nullptr}, {"observer_kwargs", json::object()}, {"scale_dtype", nullptr}, {"strategy", "token"},
                {"symmetric", true}, {"type", "float"}, {"zp_dtype", nullptr}};
    } else {
      weights["num_bits"] = 4;
      weights["strategy"] = "tensor_group";
      weights["group_size"] = 16;
      weights["scale_dtype"] = "torch.float8_e4m3fn";
      if (static_inputs)  // compressed-tensors' NVFP4 preset (W4A4): block scales dynamic ("local"), the global one static
        inputs = {{"actorder", nullptr}, {"block_structure", nullptr}, {"dynamic", "local"}, {"group_size", 16}, {"num_bits", 4},
                  {"observer", "static_minmax"}, {"observer_kwargs", json::object()}, {"scale_dtype", "torch.float8_e4m3fn"},
                  {"strategy", "tensor_group"}, {"symmetric", true}, {"type", "float"}, {"zp_dtype", nullptr}};
    }
    const char* fmt_name = fp8 ? "float-quantized" : "nvfp4-pack-quantized";
    return {{"config_groups",
             {{"group_0",
               {{"format", fmt_name}, {"input_activations", inputs}, {"output_activations", nullptr}, {"targets", {"Linear"}},
                {"weights", weights}}}}},
            {"format", fmt_name},
            {"global_compression_ratio", nullptr},
            {"ignore", {"lm_head"}},
            {"kv_cache_scheme", nullptr},
            {"quant_method", "compressed-tensors"},
            {"quantization_status", "compressed"},
            {"sparsity_config", json::object()},
            {"transform_config", json::object()},
            {"sharq", marker}};
  }
  // ModelOpt (>= 0.31 config.json layout, docs/checkpoint_formats.md 2.5, 2.6)
  json weights = {{"dynamic", false}, {"num_bits", fp8 ? 8 : 4}, {"type", "float"}};
  json group = {{"weights", weights}, {"targets", {"Linear"}}};
  if (fp8) {
    group["weights"]["strategy"] = "channel";
    group["input_activations"] = {{"dynamic", true}, {"num_bits", 8}, {"type", "float"}, {"strategy", "token"}};
  } else {
    group["weights"]["group_size"] = 16;
    if (static_inputs) group["input_activations"] = {{"dynamic", false}, {"num_bits", 4}, {"type", "float"}, {"group_size", 16}};
  }
  json q = {{"config_groups", {{"group_0", group}}},
            {"ignore", {"lm_head"}},
            {"quant_algo", modelopt_algo(fp8, static_inputs)},
            {"producer", {{"name", "sharq"}, {"version", version_string()}}},
            {"quant_method", "modelopt"},
            {"sharq", marker}};
  if (!fp8) q["group_size"] = 16;
  return q;
}

// config.json for a source without one: a llama2.c file (model_type llama, RoPE in HF's rotate-half
// layout: the q/k rows are permuted on export) or a synthetic model (llama, qwen2, qwen3).
json written_config(const ModelConfig& c, const char* torch_dtype) {
  const char* arch = c.arch == Arch::qwen2 ? "Qwen2ForCausalLM" : c.arch == Arch::qwen3 ? "Qwen3ForCausalLM" : "LlamaForCausalLM";
  json j = {{"architectures", {arch}},
            {"model_type", to_string(c.arch)},
            {"hidden_size", c.hidden_size},
            {"intermediate_size", c.intermediate_size},
            {"num_hidden_layers", c.num_layers},
            {"num_attention_heads", c.num_heads},
            {"num_key_value_heads", c.num_kv_heads},
            {"head_dim", c.head_dim},
            {"vocab_size", c.vocab_size},
            {"max_position_embeddings", c.max_position_embeddings},
            {"rms_norm_eps", c.rms_norm_eps},
            {"rope_theta", c.rope_theta},
            {"hidden_act", "silu"},
            {"attention_bias", c.attention_bias},
            {"mlp_bias", false},
            {"tie_word_embeddings", c.tie_word_embeddings},
            {"bos_token_id", c.bos_token_id},
            {"eos_token_id", c.eos_token_id},
            {"torch_dtype", torch_dtype}};
  if (c.rope_scaling.type == RopeScaling::Type::llama3)
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", c.rope_scaling.factor},
                         {"low_freq_factor", c.rope_scaling.low_freq_factor},
                         {"high_freq_factor", c.rope_scaling.high_freq_factor},
                         {"original_max_position_embeddings", c.rope_scaling.original_max_position_embeddings}};
  return j;
}

void write_text_file(const fs::path& p, const std::string& text) {
  std::ofstream f(p, std::ios::binary);
  f << text;
  f.close();
  if (!f) throw std::runtime_error(fmt::format("{}: cannot write", p.string()));
}

// ---- synthetic source
// Every tensor a dense architecture reads: the projections as views with a name and a shape only
// (projection_f32 generates them when they are quantized), the rest BF16 values the result owns
// (random embeddings and lm_head, norms of ones, zero biases).
ModelWeights synthetic_weights(const ModelConfig& c, const std::string& label, uint64_t seed) {
  if (c.num_experts != 0) throw std::invalid_argument(fmt::format("--synthetic {}: MoE architectures are not generated", label));
  ModelWeights w;
  w.config = c;
  w.source = label;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, char kind) {  // p: projection, r: random, 1: ones, 0: zeros
    TensorView t;
    t.name = name;
    t.dtype = DType::bf16;
    t.shape = std::move(shape);
    if (kind != 'p') {
      const int64_t rows = t.shape.size() == 2 ? t.shape[0] : 1, cols = t.numel() / rows;
      auto bytes = std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(t.numel() * 2));
      uint16_t* out = reinterpret_cast<uint16_t*>(bytes->data());
      const uint16_t fill = bf16_encode(kind == '1' ? 1.0f : 0.0f);
      const uint64_t ts = seed ^ name_hash(name);
#pragma omp parallel for schedule(static)
      for (int64_t r = 0; r < rows; ++r) {
        std::vector<float> buf(static_cast<size_t>(cols));
        if (kind == 'r') synthetic_row(ts, r, cols, kSyntheticAmplitude, buf.data());
        for (int64_t k = 0; k < cols; ++k) out[r * cols + k] = kind == 'r' ? bf16_encode(buf[k]) : fill;
      }
      t.data = bytes->data();
      t.bytes = bytes->size();
      w.keep(std::shared_ptr<const std::vector<uint8_t>>(bytes));
    }
    w.tensors[name] = std::move(t);
  };
  const int64_t H = c.hidden_size, hd = c.head_dim, qd = c.num_heads * hd, kvd = c.num_kv_heads * hd, I = c.intermediate_size;
  add("model.embed_tokens.weight", {c.vocab_size, H}, 'r');
  add("model.norm.weight", {H}, '1');
  if (!c.tie_word_embeddings) add("lm_head.weight", {c.vocab_size, H}, 'r');
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    add(p + "input_layernorm.weight", {H}, '1');
    add(p + "post_attention_layernorm.weight", {H}, '1');
    add(p + "self_attn.q_proj.weight", {qd, H}, 'p');
    add(p + "self_attn.k_proj.weight", {kvd, H}, 'p');
    add(p + "self_attn.v_proj.weight", {kvd, H}, 'p');
    add(p + "self_attn.o_proj.weight", {H, qd}, 'p');
    if (c.attention_bias) {
      add(p + "self_attn.q_proj.bias", {qd}, '0');
      add(p + "self_attn.k_proj.bias", {kvd}, '0');
      add(p + "self_attn.v_proj.bias", {kvd}, '0');
    }
    if (c.attention_output_bias) add(p + "self_attn.o_proj.bias", {H}, '0');
    if (c.qk_norm) {
      add(p + "self_attn.q_norm.weight", {hd}, '1');
      add(p + "self_attn.k_norm.weight", {hd}, '1');
    }
    add(p + "mlp.gate_proj.weight", {I, H}, 'p');
    add(p + "mlp.up_proj.weight", {I, H}, 'p');
    add(p + "mlp.down_proj.weight", {H, I}, 'p');
  }
  return w;
}

// ---- calibration: the amax of every projection's input over the calibration tokens

// (layer, expert or -1, input name) -> amax over the finite values seen
class InputAmax final : public ProjectionObserver {
 public:
  std::map<std::tuple<int64_t, int64_t, std::string>, float> amax;
  void on_input(int64_t layer, const char* proj, const float* x, int64_t M, int64_t K) override { note(layer, -1, proj, x, M, K); }
  void on_expert_input(int64_t layer, int64_t expert, const char* proj, const float* x, int64_t M, int64_t K) override {
    note(layer, expert, proj, x, M, K);
  }

 private:
  void note(int64_t layer, int64_t expert, const char* proj, const float* x, int64_t M, int64_t K) {
    float m = 0.0f;
    for (int64_t r = 0; r < M; ++r) m = std::max(m, amax_finite(x + r * K, static_cast<int>(K)));
    float& slot = amax[{layer, expert, proj}];
    slot = std::max(slot, m);
  }
};

struct Calibration {
  std::map<std::string, float> amax;  // projection (weight name) -> amax of its input
  int64_t tokens = 0, windows = 0, ctx = 0, unrouted = 0;
  double seconds = 0;
};

// Runs the source model (FP32, unquantized) over the first opt.calib_tokens tokens of
// opt.calib_data, in consecutive windows of the model's context (each a fresh sequence; the text
// is tokenized once, with BOS, as `sharq ppl` does), and records each projection's input amax.
// q/k/v get the amax of their one shared input, gate/up theirs; an MoE expert no token reached
// takes the largest amax of its layer's experts (counted in `unrouted`).
// tok: the --tokenizer already loaded, or null (the model's own is loaded here).
Calibration calibrate(const ModelWeights& w, const QuantizeOptions& opt, const Tokenizer* tok) {
  const auto t0 = Clock::now();
  auto fail = [&](const std::string& why) {
    return std::invalid_argument(fmt::format("--calib-data: {}: {}", opt.calib_data, why));
  };
  std::string text;
  try {
    text = read_text_file(opt.calib_data);
  } catch (const std::runtime_error& e) {
    throw std::invalid_argument(fmt::format("--calib-data: {}", e.what()));  // names the file and says what is wrong
  }
  std::unique_ptr<Tokenizer> own;
  if (!tok) tok = (own = load_tokenizer_for(opt.model_path, opt.tokenizer_path, w.config)).get();
  const std::vector<int32_t> ids = tok->encode(text, true);
  const int64_t bos = tok->bos_id() >= 0 && !ids.empty() && ids[0] == tok->bos_id() ? 1 : 0;
  if (static_cast<int64_t>(ids.size()) - bos < 1) throw fail("the text gives no tokens to calibrate on");
  if (opt.calib_tokens_exact && static_cast<int64_t>(ids.size()) < opt.calib_tokens)
    throw fail(fmt::format("gives {} tokens, fewer than the --calib-tokens {} asked for", ids.size(), opt.calib_tokens));
  Calibration cal;
  cal.tokens = std::min<int64_t>(static_cast<int64_t>(ids.size()), opt.calib_tokens);
  const int64_t max_pos = w.config.max_position_embeddings;
  cal.ctx = max_pos > 0 ? std::min(max_pos, cal.tokens) : cal.tokens;

  const Transformer model(w, Scheme{});
  InputAmax obs;
  std::vector<float> logits(static_cast<size_t>(w.config.vocab_size));
  for (int64_t begin = 0; begin < cal.tokens; begin += cal.ctx) {
    const int64_t n = std::min(cal.ctx, cal.tokens - begin);
    KVCache cache = model.new_cache(n);
    model.forward(ids.data() + begin, n, cache, logits.data(), false, &obs);
    ++cal.windows;
    if (opt.progress) {
      std::fprintf(stderr, "\rsharq quantize: calibration %lld/%lld tokens", static_cast<long long>(begin + n),
                   static_cast<long long>(cal.tokens));
      if (begin + n == cal.tokens) std::fputc('\n', stderr);
      std::fflush(stderr);
    }
  }

  auto seen = [&](int64_t layer, int64_t expert, const char* input) -> const float* {
    const auto it = obs.amax.find({layer, expert, input});
    return it == obs.amax.end() ? nullptr : &it->second;
  };
  for (int64_t l = 0; l < w.config.num_layers; ++l) {
    const LayerWeights L = w.layer(l);
    auto put = [&](std::vector<const TensorView*> projections, float amax) {
      for (const TensorView* t : projections) cal.amax[t->name] = amax;
    };
    auto dense = [&](const char* input) {
      const float* a = seen(l, -1, input);
      if (!a) throw std::logic_error(fmt::format("calibration: layer {} input '{}' was not observed", l, input));
      return *a;
    };
    put({L.q, L.k, L.v}, dense("q_proj"));
    put({L.o}, dense("o_proj"));
    if (L.experts.empty()) {
      put({L.gate, L.up}, dense("gate_proj"));
      put({L.down}, dense("down_proj"));
      continue;
    }
    for (const char* input : {"experts.gate_up", "experts.down"}) {
      float layer_max = 0.0f;
      for (int64_t e = 0; e < static_cast<int64_t>(L.experts.size()); ++e)
        if (const float* a = seen(l, e, input)) layer_max = std::max(layer_max, *a);
      for (int64_t e = 0; e < static_cast<int64_t>(L.experts.size()); ++e) {
        const ExpertWeights& x = L.experts[e];
        const float* a = seen(l, e, input);
        if (!a) ++cal.unrouted;
        const float v = a ? *a : layer_max;
        if (std::string(input) == "experts.gate_up") put({x.gate, x.up}, v);
        else put({x.down}, v);
      }
    }
  }
  cal.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return cal;
}

}  // namespace

std::string quantization_config_json(const std::string& scheme, CheckpointFormat format, bool static_input_scales) {
  return quantization_config(parse_scheme(scheme), format, static_input_scales).dump(2);
}

QuantizeReport quantize_checkpoint(const QuantizeOptions& opt) {
  const auto t0 = Clock::now();
  const Scheme scheme = parse_scheme(opt.scheme);
  const StoredWeights stored = stored_weights_of(scheme);
  const CheckpointFormat format = format_of(opt.format);
  const bool ct = format == CheckpointFormat::compressed_tensors, fp8 = stored == StoredWeights::fp8;
  const bool synthetic = !opt.synthetic.empty() || opt.synthetic_config;
  const bool calibrated = !opt.calib_data.empty();
  if (calibrated) {
    if (fp8 || !scheme.has_act_global_scale())
      throw std::invalid_argument(fmt::format("--calib-data: scheme '{}' stores no static activation scale ({}); calibration applies to the "
                                              "W4A4 schemes nvfp4, sharq and sharq:w16",
                                              scheme.name(), fp8 ? "fp8 is written with dynamic per-token activation scales"
                                                                 : "it does not quantize activations"));
    if (opt.calib_tokens < 1) throw std::invalid_argument(fmt::format("--calib-tokens: {} is not an integer >= 1", opt.calib_tokens));
    if (synthetic) throw std::invalid_argument("--calib-data: a synthetic model has no tokenizer and random weights; calibrate a real one");
  }
  if (synthetic && !opt.model_path.empty()) throw std::invalid_argument("--synthetic replaces MODEL: give only OUT");

  std::error_code ec;
  const fs::path out(opt.out_dir);
  if (opt.out_dir.empty()) throw std::invalid_argument("OUT: the path is empty");
  if (fs::exists(out, ec) && (!fs::is_directory(out, ec) || !fs::is_empty(out, ec)))
    throw std::invalid_argument(fmt::format("{}: exists and is not an empty directory (sharq quantize writes a new one)", opt.out_dir));

  const std::string source_name = synthetic ? fmt::format("synthetic {} (seed {})", opt.synthetic.empty() ? "model" : opt.synthetic, opt.seed)
                                            : opt.model_path;
  const ModelWeights w = synthetic ? synthetic_weights(opt.synthetic_config ? *opt.synthetic_config : synthetic_model_config(opt.synthetic),
                                                       source_name, opt.seed)
                                   : load_model_weights(opt.model_path);
  if (w.quantization.quantized())
    throw std::invalid_argument(fmt::format("{}: already quantized ({}); sharq quantize starts from F32/F16/BF16 weights", opt.model_path,
                                            w.quantization.describe()));
  w.check_dimensions();
  const bool from_llama2c = !synthetic && !fs::is_directory(opt.model_path, ec);
  // --tokenizer is copied into OUT: it must load and fit the model, or generate / ppl would refuse the
  // checkpoint written (checked before anything is written; calibration then encodes with it)
  std::unique_ptr<Tokenizer> given_tok;
  if (!opt.tokenizer_path.empty()) {
    try {
      given_tok = load_tokenizer_for(opt.model_path, opt.tokenizer_path, w.config);
    } catch (const TokenizerError& e) {
      throw std::invalid_argument(fmt::format("--tokenizer: {}", e.what()));
    }
  }

  QuantizeReport rep;
  rep.source = source_name;
  rep.out_dir = opt.out_dir;
  rep.scheme = scheme.name();
  rep.format = format;
  rep.weights = stored;
  rep.source_bytes = w.mapped_bytes() + w.owned_bytes();

  // ---- calibration first: it holds the FP32 model, dropped before quantizing
  Calibration cal;
  if (calibrated) {
    cal = calibrate(w, opt, given_tok.get());
    rep.static_input_scales = true;
    rep.calib_tokens = cal.tokens;
    rep.calib_windows = cal.windows;
    rep.calib_ctx = cal.ctx;
    rep.calib_unrouted = cal.unrouted;
    rep.calib_seconds = cal.seconds;
    if (cal.unrouted)
      rep.notes.push_back(fmt::format("{} MoE expert input{} saw no calibration token and took the largest amax of {} layer's experts",
                                      cal.unrouted, cal.unrouted == 1 ? "" : "s", cal.unrouted == 1 ? "its" : "their"));
  }

  // ---- the projections and their global-scale groups (fused q/k/v, gate/up)
  std::map<std::string, Projection> proj;
  std::vector<std::vector<std::string>> groups;
  auto add_group = [&](std::vector<const TensorView*> members) {
    std::vector<std::string> names;
    for (const TensorView* t : members) {
      if (!opt.fused_global_scales && !names.empty()) {
        groups.push_back(names);
        names.clear();
      }
      Projection p;
      p.w = t;
      p.synthetic = synthetic;
      p.seed = opt.seed ^ name_hash(t->name);
      if (calibrated) p.input_amax = cal.amax.at(t->name);
      if (synthetic) rep.source_bytes += static_cast<uint64_t>(t->numel()) * 2;  // the BF16 checkpoint it stands for
      proj[t->name] = p;
      names.push_back(t->name);
    }
    groups.push_back(names);
  };
  for (int64_t l = 0; l < w.config.num_layers; ++l) {
    const LayerWeights L = w.layer(l);
    add_group({L.q, L.k, L.v});
    add_group({L.o});
    if (L.experts.empty()) {
      add_group({L.gate, L.up});
      add_group({L.down});
    }
    for (const ExpertWeights& e : L.experts) {
      add_group({e.gate, e.up});
      add_group({e.down});
    }
    if (from_llama2c) {
      proj[L.q->name].rope_permute = proj[L.k->name].rope_permute = true;
      proj[L.q->name].heads = w.config.num_heads;
      proj[L.k->name].heads = w.config.num_kv_heads;
    }
  }
  if (!fp8) {
    for (const auto& names : groups) {
      float m = 0.0f;
      for (const std::string& n : names) m = std::max(m, proj[n].synthetic ? kSyntheticAmplitude : amax_of(*proj[n].w));
      const float g = nvfp4_global_scale(m);
      for (const std::string& n : names) {
        Projection& p = proj[n];
        p.g = g;
        if (ct) {
          bool exact = false;
          p.divisor = ct_global_divisor(g, &exact);
          if (!exact) ++rep.inexact_divisors;
        }
      }
    }
  }

  // ---- quantized parts, made once per projection when its first part is written
  struct Parts {
    std::vector<uint8_t> codes, scales;
    int left = 2;
  };
  std::map<std::string, Parts> cache;
  int64_t done = 0;
  const int64_t total = static_cast<int64_t>(proj.size());
  auto parts_of = [&](const std::string& name) -> Parts& {
    auto it = cache.find(name);
    if (it != cache.end()) return it->second;
    const Projection& p = proj.at(name);
    const int64_t N = p.w->shape[0], K = p.w->shape[1], nb = ceil_div(K, 16);
    const std::vector<float> x = projection_f32(p);
    Parts parts;
    if (fp8) {
      parts.codes.resize(static_cast<size_t>(N * K));
      for (int64_t n = 0; n < N; ++n) fp8_quantize_row(x.data() + n * K, K, parts.codes.data() + n * K);
      parts.left = 1;  // the scales are computed on their own (below)
    } else {
      parts.codes.resize(static_cast<size_t>(N * nb * 8));
      parts.scales.resize(static_cast<size_t>(N * nb));
      auto put = [&](int64_t r, int64_t b, const block_nvfp4_16& blk) {
        if (blk.s.e == kUe4m3Nan)
          throw std::runtime_error(fmt::format("{}: tensor '{}' has a non-finite block at row {}; refusing to write a NaN scale",
                                               opt.model_path, name, r));
        parts.scales[static_cast<size_t>(r * nb + b)] = blk.s.e;
        std::memcpy(parts.codes.data() + (r * nb + b) * 8, blk.qs, 8);
      };
      if (stored == StoredWeights::nvfp4_32) {
        const auto q = quantize_matrix_with_global<Nvfp4_32>(x.data(), N, K, p.g);
        for (int64_t r = 0; r < N; ++r)
          for (int64_t b = 0; b < nb; ++b) put(r, b, nvfp4_16_view(q, r, b));  // the exact 16-element view
      } else {
        const auto q = quantize_matrix_with_global<Nvfp4_16>(x.data(), N, K, p.g);
        for (int64_t r = 0; r < N; ++r)
          for (int64_t b = 0; b < nb; ++b) put(r, b, q.row(r)[b]);
      }
    }
    ++done;
    if (opt.progress) {
      std::fprintf(stderr, "\rsharq quantize: %lld/%lld projections (%-48s)%s", static_cast<long long>(done), static_cast<long long>(total),
                   name.c_str(), done == total ? "\n" : "");
      std::fflush(stderr);
    }
    return cache.emplace(name, std::move(parts)).first->second;
  };
  auto take = [&](const std::string& name, bool codes, uint8_t* dst) {
    Parts& p = parts_of(name);
    const std::vector<uint8_t>& src = codes ? p.codes : p.scales;
    std::memcpy(dst, src.data(), src.size());
    if (--p.left == 0) cache.erase(name);
  };

  // ---- the output tensors
  std::vector<SafetensorsTensorOut> tensors;
  std::vector<std::string> padded;  // projections whose K is not a multiple of 16
  const std::string base_suffix = "weight";
  for (const auto& entry : w.tensors) {
    const std::string& name = entry.first;  // a plain reference: lambdas below capture it (clang < 16
    const TensorView& t = entry.second;     // cannot capture structured bindings)
    const auto pit = proj.find(name);
    if (pit == proj.end()) {  // copied in its source dtype
      tensors.push_back({name, t.dtype, t.shape, t.data, {}});
      ++rep.copied;
      continue;
    }
    const Projection& p = pit->second;
    const std::string base = name.substr(0, name.size() - base_suffix.size());
    const int64_t N = t.shape[0], K = t.shape[1], nb = ceil_div(K, 16);
    ++rep.quantized;
    if (fp8) {
      tensors.push_back({base + "weight", DType::f8_e4m3, {N, K}, nullptr, [&take, name](uint8_t* d) { take(name, true, d); }});
      const std::vector<int64_t> sshape = ct ? std::vector<int64_t>{N, 1} : std::vector<int64_t>{N};
      tensors.push_back({base + "weight_scale", DType::f32, sshape, nullptr, [&p, N, K](uint8_t* d) {
                           const std::vector<float> x = projection_f32(p);
                           for (int64_t n = 0; n < N; ++n) {
                             const float s = fp8_scale_from_amax(amax_finite(x.data() + n * K, static_cast<int>(K)));
                             std::memcpy(d + 4 * n, &s, 4);
                           }
                         }});
      continue;
    }
    // packed codes [N, ceil(K/16) * 8] (= K/2 for the formats' K % 16 == 0), E4M3 scales [N, ceil(K/16)]
    tensors.push_back({base + (ct ? "weight_packed" : "weight"), DType::u8, {N, nb * 8}, nullptr,
                       [&take, name](uint8_t* d) { take(name, true, d); }});
    tensors.push_back({base + "weight_scale", DType::f8_e4m3, {N, nb}, nullptr, [&take, name](uint8_t* d) { take(name, false, d); }});
    const float gv = ct ? p.divisor : p.g;
    if (ct)  // [1], as compressed-tensors registers it
      tensors.push_back({base + "weight_global_scale", DType::f32, {1}, nullptr, [gv](uint8_t* d) { std::memcpy(d, &gv, 4); }});
    else  // a 0-d scalar, as ModelOpt's export squeezes it
      tensors.push_back({base + "weight_scale_2", DType::f32, {}, nullptr, [gv](uint8_t* d) { std::memcpy(d, &gv, 4); }});
    if (p.input_amax >= 0) {  // the calibrated input scale: g_x = amax / 2688, stored in the format's convention
      const float gx = nvfp4_global_scale(p.input_amax);
      const float iv = ct ? ct_global_divisor(gx) : gx;
      if (ct)  // a divisor, [1], as compressed-tensors registers it (vLLM: input_global_scale_inv = this, multiplier 1 / this)
        tensors.push_back({base + "input_global_scale", DType::f32, {1}, nullptr, [iv](uint8_t* d) { std::memcpy(d, &iv, 4); }});
      else  // a multiplier, 0-d, as ModelOpt's export squeezes it
        tensors.push_back({base + "input_scale", DType::f32, {}, nullptr, [iv](uint8_t* d) { std::memcpy(d, &iv, 4); }});
    }
    if (K % 16 != 0) padded.push_back(fmt::format("'{}' (K = {})", name, K));
  }

  if (!padded.empty())
    rep.notes.push_back(fmt::format("{} projection{} ({}{}) ha{} K not a multiple of 16: codes and scales are stored padded to the next "
                                    "multiple of 16 columns, a sharq extension that other readers refuse by shape",
                                    padded.size(), padded.size() == 1 ? "" : "s", padded.front(), padded.size() > 1 ? ", ..." : "",
                                    padded.size() == 1 ? "s" : "ve"));
  fs::create_directories(out, ec);
  if (ec) throw std::runtime_error(fmt::format("{}: cannot create the directory ({})", opt.out_dir, ec.message()));

  // ---- config.json (and ModelOpt's hf_quant_config.json)
  json config;
  if (synthetic) {
    config = written_config(w.config, "bfloat16");
  } else if (from_llama2c) {
    config = written_config(w.config, "float32");
    rep.notes.push_back("a llama2.c source: config.json written for it (model_type llama), q/k rows permuted to Hugging Face's "
                        "rotate-half RoPE layout");
  } else {
    const std::vector<uint8_t> bytes = read_file_bytes((fs::path(opt.model_path) / "config.json").string());
    config = json::parse(bytes.begin(), bytes.end());  // (already read and checked by the model's loader)
  }
  config["quantization_config"] = quantization_config(scheme, format, calibrated);
  if (calibrated)
    config["quantization_config"]["sharq"]["calibration"] = {{"data", fs::path(opt.calib_data).filename().string()},
                                                             {"tokens", cal.tokens},
                                                             {"windows", cal.windows},
                                                             {"ctx", cal.ctx},
                                                             {"model", "the source weights, FP32, unquantized"}};
  if (ct && !fp8) {  // the exact multiplier of every layer: ~1 in 6 has no FP32 divisor x with fl(1/x) == g
    json exact = json::object();
    for (const auto& [name, p] : proj) exact[name.substr(0, name.size() - std::string(".weight").size())] = exact_f32_string(p.g);
    config["quantization_config"]["sharq"]["global_scales"] = exact;
  }
  write_text_file(out / "config.json", config.dump(2) + "\n");
  rep.files.push_back("config.json");
  if (format == CheckpointFormat::modelopt) {
    const json hq = {{"producer", {{"name", "sharq"}, {"version", version_string()}}},
                     {"quantization",
                      {{"quant_algo", modelopt_algo(fp8, calibrated)},
                       {"kv_cache_quant_algo", nullptr},
                       {"group_size", fp8 ? json(nullptr) : json(16)},
                       {"exclude_modules", {"lm_head"}}}}};
    write_text_file(out / "hf_quant_config.json", hq.dump(4) + "\n");
    rep.files.push_back("hf_quant_config.json");
  }

  // ---- model.safetensors
  write_safetensors((out / "model.safetensors").string(), tensors,
                    {{"format", "pt"}, {"producer", "sharq " + version_string()}, {"sharq_scheme", scheme.name()}});
  rep.files.push_back("model.safetensors");

  // ---- tokenizer and generation files
  auto copy = [&](const fs::path& from, const std::string& to) {
    fs::copy_file(from, out / to, fs::copy_options::overwrite_existing, ec);
    if (ec) throw std::runtime_error(fmt::format("{}: cannot copy to {} ({})", from.string(), (out / to).string(), ec.message()));
    rep.files.push_back(to);
  };
  if (!opt.tokenizer_path.empty()) {
    copy(opt.tokenizer_path, tokenizer_file_name(opt.tokenizer_path));  // the name the loaders look for beside a model
  } else if (synthetic) {
    rep.notes.push_back("a synthetic model: random weights, no tokenizer written (pass one to generate/ppl with --tokenizer)");
  } else if (from_llama2c) {
    const fs::path dir = fs::path(opt.model_path).has_parent_path() ? fs::path(opt.model_path).parent_path() : fs::path(".");
    std::vector<fs::path> bins;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string n = it->path().filename().string();
      if ((n == "tokenizer.bin" || (n.rfind("tok", 0) == 0 && it->path().extension() == ".bin")) &&
          !fs::equivalent(it->path(), opt.model_path, ec))
        bins.push_back(it->path());
    }
    if (bins.size() == 1) copy(bins[0], "tokenizer.bin");
    else rep.notes.push_back("no single llama2.c tokenizer beside the source: none copied (pass --tokenizer)");
  } else {
    for (const char* n : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                          "vocab.json", "merges.txt", "generation_config.json", "tokenizer.bin"}) {
      const fs::path src = fs::path(opt.model_path) / n;
      if (fs::is_regular_file(src, ec)) copy(src, n);
    }
  }
  for (const std::string& f : rep.files) rep.out_bytes += fs::file_size(out / f, ec);
  if (rep.inexact_divisors)
    rep.notes.push_back(fmt::format("{} of {} layers' global scale g has no FP32 divisor x with 1/x == g: weight_global_scale holds "
                                    "fl(1/g), so other readers apply a g about 1 ulp off there (sharq reads the exact g from quantization_config.sharq.global_scales)",
                                    rep.inexact_divisors, rep.quantized));
  rep.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return rep;
}

std::string format_quantize_report(const QuantizeReport& r) {
  const std::string acts =
      r.static_input_scales
          ? fmt::format("W4A4: static input scales, the amax over {} calibration tokens ({} window{} of {}), {:.1f} s", r.calib_tokens,
                        r.calib_windows, r.calib_windows == 1 ? "" : "s", r.calib_ctx, r.calib_seconds)
          : std::string("weights only: no activation scales stored");
  std::string s = fmt::format("{} -> {}\n  scheme {}, {} ({}; {})\n", r.source, r.out_dir, r.scheme, to_string(r.format),
                              QuantizationInfo{r.format, r.weights, r.scheme, r.static_input_scales}.describe(), acts);
  s += fmt::format("  {} projections quantized, {} tensors copied in their source dtype\n", r.quantized, r.copied);
  s += fmt::format("  {:.2f} MB read, {:.2f} MB written ({:.2f}x), {:.2f} s\n", r.source_bytes / 1e6, r.out_bytes / 1e6,
                   r.out_bytes ? static_cast<double>(r.source_bytes) / static_cast<double>(r.out_bytes) : 0.0, r.seconds);
  s += "  files:";
  for (const std::string& f : r.files) s += " " + f;
  s += "\n";
  for (const std::string& n : r.notes) s += "  note: " + n + "\n";
  return s;
}

}  // namespace sharq
