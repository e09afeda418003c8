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

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "sharq/model/quantized_checkpoint.h"
#include "sharq/model/safetensors.h"
#include "sharq/quant/fp8.h"
#include "sharq/quant/scheme.h"
#include "sharq/sharq.h"

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

// One projection and the group whose amax its NVFP4 global scale comes from.
struct Projection {
  const TensorView* w = nullptr;
  int64_t group = 0;
  bool rope_permute = false;  // q/k of a llama2.c source: rows reordered to Hugging Face's rotate-half layout
  int64_t heads = 0;
  float g = 1.0f;             // NVFP4: the multiplier the blocks are quantized with
  float divisor = 1.0f;       // compressed-tensors: the stored weight_global_scale
};

// FP32 values of a projection, q/k rows permuted for a llama2.c source: row h*hd + j*hd/2 + i of the
// result is row h*hd + 2i + j of the source (llama2.c rotates adjacent pairs, HF rotates halves; the
// convert_llama_weights_to_hf permutation).
std::vector<float> projection_f32(const Projection& p) {
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

json quantization_config(const Scheme& scheme, CheckpointFormat format) {
  const StoredWeights stored = stored_weights_of(scheme);
  const bool fp8 = stored == StoredWeights::fp8;
  json marker = {{"scheme", scheme.name()},
                 {"version", version_string()},
                 {"activation_scales", "online (none stored; sharq computes them per token or per tensor at run time)"}};
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
  }
  json q = {{"config_groups", {{"group_0", group}}},
            {"ignore", {"lm_head"}},
            {"quant_algo", fp8 ? "FP8_PER_CHANNEL_PER_TOKEN" : "W4A16_NVFP4"},
            {"producer", {{"name", "sharq"}, {"version", version_string()}}},
            {"quant_method", "modelopt"},
            {"sharq", marker}};
  if (!fp8) q["group_size"] = 16;
  return q;
}

// config.json for a llama2.c source (model_type llama, RoPE in HF's rotate-half layout: the q/k rows
// are permuted on export).
json llama2c_config(const ModelConfig& c) {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
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
          {"attention_bias", false},
          {"mlp_bias", false},
          {"tie_word_embeddings", c.tie_word_embeddings},
          {"bos_token_id", c.bos_token_id},
          {"eos_token_id", c.eos_token_id},
          {"torch_dtype", "float32"}};
}

void write_text_file(const fs::path& p, const std::string& text) {
  std::ofstream f(p, std::ios::binary);
  f << text;
  f.close();
  if (!f) throw std::runtime_error(fmt::format("{}: cannot write", p.string()));
}

}  // namespace

std::string quantization_config_json(const std::string& scheme, CheckpointFormat format) {
  return quantization_config(parse_scheme(scheme), format).dump(2);
}

QuantizeReport quantize_checkpoint(const QuantizeOptions& opt) {
  const auto t0 = Clock::now();
  const Scheme scheme = parse_scheme(opt.scheme);
  const StoredWeights stored = stored_weights_of(scheme);
  const CheckpointFormat format = format_of(opt.format);
  const bool ct = format == CheckpointFormat::compressed_tensors, fp8 = stored == StoredWeights::fp8;

  std::error_code ec;
  const fs::path out(opt.out_dir);
  if (opt.out_dir.empty()) throw std::invalid_argument("OUT: the path is empty");
  if (fs::exists(out, ec) && (!fs::is_directory(out, ec) || !fs::is_empty(out, ec)))
    throw std::invalid_argument(fmt::format("{}: exists and is not an empty directory (sharq quantize writes a new one)", opt.out_dir));

  const ModelWeights w = load_model_weights(opt.model_path);
  if (w.quantization.quantized())
    throw std::invalid_argument(fmt::format("{}: already quantized ({}); sharq quantize starts from F32/F16/BF16 weights", opt.model_path,
                                            w.quantization.describe()));
  w.check_dimensions();
  const bool from_llama2c = !fs::is_directory(opt.model_path, ec);

  QuantizeReport rep;
  rep.source = opt.model_path;
  rep.out_dir = opt.out_dir;
  rep.scheme = scheme.name();
  rep.format = format;
  rep.weights = stored;
  rep.source_bytes = w.mapped_bytes() + w.owned_bytes();

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
      for (const std::string& n : names) m = std::max(m, amax_of(*proj[n].w));
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
  if (from_llama2c) {
    config = llama2c_config(w.config);
    rep.notes.push_back("a llama2.c source: config.json written for it (model_type llama), q/k rows permuted to Hugging Face's "
                        "rotate-half RoPE layout");
  } else {
    const std::vector<uint8_t> bytes = read_file_bytes((fs::path(opt.model_path) / "config.json").string());
    config = json::parse(bytes.begin(), bytes.end());
  }
  config["quantization_config"] = quantization_config(scheme, format);
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
                      {{"quant_algo", fp8 ? "FP8_PER_CHANNEL_PER_TOKEN" : "W4A16_NVFP4"},
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
    const fs::path tp(opt.tokenizer_path);
    const std::string ext = tp.extension().string();
    copy(tp, ext == ".bin" ? "tokenizer.bin" : tp.filename().string());
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
  std::string s = fmt::format("{} -> {}\n  scheme {}, {} ({}; weights only: no activation scales stored)\n", r.source, r.out_dir, r.scheme,
                              to_string(r.format), QuantizationInfo{r.format, r.weights, r.scheme, false}.describe());
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
