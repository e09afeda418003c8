// sharq quantize: every scheme with a stored form (nvfp4, w4a16, sharq, sharq:w16, fp8) in both
// formats, on every tiny architecture, reads back to the very blocks quantizing at load makes, and
// runs to the same logits (bit for bit with per-projection global scales, wherever the stored global
// scale round-trips exactly); the tensor names, dtypes and shapes and the quantization_config are
// the formats' (read with an independent safetensors header parse); fused layers share one global
// scale by default; schemes that need other weights are refused naming the format; stories260K (a
// llama2.c source, exported with Hugging Face's RoPE layout) keeps its perplexity.
#include "sharq/tools/quantize.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "sharq/model/config.h"
#include "sharq/model/quantized_checkpoint.h"
#include "sharq/model/safetensors.h"
#include "sharq/model/tokenizer.h"
#include "sharq/quant/fp8.h"
#include "sharq/runtime/cpu/transformer.h"
#include "sharq/tools/perplexity.h"
#include "sharq/tools/scoring.h"

namespace {

namespace fs = std::filesystem;
using namespace sharq;
using nlohmann::json;

const std::string kTiny = std::string(SHARQ_SOURCE_DIR) + "/tests/data/tiny";
const std::string kShared = std::string(SHARQ_SOURCE_DIR) + "/../shared";

class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    path_ = fs::temp_directory_path() / ("sharq_quantize_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string str() const { return path_.string(); }
  std::string str(const std::string& child) const { return (path_ / child).string(); }

 private:
  fs::path path_;
};

json read_json(const std::string& path) {
  std::ifstream f(path);
  return json::parse(f);
}

QuantizeOptions quantize_options(const std::string& model, const std::string& out, const std::string& scheme,
                                 const std::string& format) {
  QuantizeOptions o;
  o.model_path = model;
  o.out_dir = out;
  o.scheme = scheme;
  o.format = format;
  o.progress = false;
  return o;
}

QuantizeReport quantize(const std::string& model, const std::string& out, const std::string& scheme, const std::string& format,
                        bool fused = false) {
  QuantizeOptions o = quantize_options(model, out, scheme, format);
  o.fused_global_scales = fused;
  return quantize_checkpoint(o);
}

std::vector<float> logits_of(const ModelWeights& w, const Scheme& s, int64_t T = 12) {
  const Transformer model(w, s);
  std::vector<int32_t> ids;
  for (int64_t t = 0; t < T; ++t) ids.push_back(static_cast<int32_t>((t * 37 + 5) % w.config.vocab_size));
  KVCache cache = model.new_cache(T);
  std::vector<float> out(static_cast<size_t>(T * w.config.vocab_size));
  model.forward(ids.data(), T, cache, out.data(), true);
  return out;
}

// Every projection of `q` holds exactly the blocks (or FP8 codes) quantizing `src` at load gives.
void expect_same_weights(const ModelWeights& src, const ModelWeights& q, const Scheme& s) {
  for (const auto& [name, t] : q.tensors) {
    if (!t.quantized) continue;
    const QuantizedWeight& qw = *t.quantized;
    const std::vector<float> x = to_f32(src.tensors.at(name));
    const int64_t N = qw.rows, K = qw.cols;
    if (s.kind == SchemeKind::fp8) {
      std::vector<uint8_t> codes(static_cast<size_t>(N * K));
      for (int64_t n = 0; n < N; ++n) {
        const float sc = fp8_quantize_row(x.data() + n * K, K, codes.data() + n * K);
        ASSERT_EQ(sc, qw.channel_scales[n]) << name << " row " << n;
      }
      ASSERT_EQ(std::memcmp(codes.data(), qw.codes.data, codes.size()), 0) << name;
      continue;
    }
    auto compare = [&](const auto& want, const auto& got) {
      ASSERT_EQ(want.blocks.size(), got.blocks.size()) << name;
      for (size_t b = 0; b < want.blocks.size(); ++b) {
        ASSERT_EQ(want.blocks[b].s.e, got.blocks[b].s.e) << name << " block " << b;
        ASSERT_EQ(std::memcmp(want.blocks[b].qs, got.blocks[b].qs, sizeof(want.blocks[b].qs)), 0) << name << " block " << b;
      }
      ASSERT_EQ(want.g[0], got.g[0]) << name << ": the global scale read back must be the writer's g bit for bit";
    };
    if (s.fp4_weight_block() == 32) compare(quantize_matrix<Nvfp4_32>(x.data(), N, K, GlobalScale::per_tensor), nvfp4_32_matrix(qw));
    else compare(quantize_matrix<Nvfp4_16>(x.data(), N, K, GlobalScale::per_tensor), nvfp4_16_matrix(qw));
  }
}

const char* kArchs[] = {"llama2_tied", "llama3", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe"};
const char* kSchemes[] = {"nvfp4", "w4a16", "sharq", "sharq:w16", "fp8"};
const char* kFormats[] = {"compressed-tensors", "modelopt"};

TEST(QuantizeRoundTrip, EverySchemeFormatAndTinyArchitectureLoadsTheBlocksQuantizingAtLoadMakes) {
  int inexact_total = 0;  // layers whose CT divisor alone would give g 1 ulp off (the marker's exact g covers them)
  for (const char* arch : kArchs) {
    const ModelWeights src = load_model_weights(kTiny + "/" + arch);
    for (const char* scheme_name : kSchemes) {
      const Scheme scheme = parse_scheme(scheme_name);
      const std::vector<float> ref = logits_of(src, scheme);
      for (const char* format : kFormats) {
        SCOPED_TRACE(fmt::format("{} {} {}", arch, scheme_name, format));
        TempDir out;
        const QuantizeReport rep = quantize(kTiny + "/" + arch, out.str(), scheme_name, format);
        const ModelWeights q = load_model_weights(out.str());
        ASSERT_TRUE(q.quantization.quantized());
        EXPECT_EQ(q.quantization.scheme, scheme.name());
        EXPECT_FALSE(q.quantization.static_input_scales);
        expect_same_weights(src, q, scheme);
        const std::vector<float> got = logits_of(q, scheme);
        ASSERT_EQ(got.size(), ref.size());
        EXPECT_EQ(std::memcmp(got.data(), ref.data(), ref.size() * 4), 0) << "not bit-identical to quantizing at load";
        inexact_total += rep.inexact_divisors;
        // the other schemes of the same weights run too (sharq's W32 payload read as its NVFP4-16 view)
        if (scheme.kind == SchemeKind::sharq && !scheme.w16) {
          EXPECT_NO_THROW(logits_of(q, parse_scheme("nvfp4"), 4));
        }
      }
    }
  }
  EXPECT_GT(inexact_total, 0) << "the tiny models no longer exercise a global scale without an exact FP32 divisor";
}

TEST(QuantizeFormat, CompressedTensorsNvfp4NamesDtypesShapesAndConfig) {
  TempDir out;
  quantize(kTiny + "/llama3", out.str(), "nvfp4", "compressed-tensors", true);
  const auto f = open_safetensors(out.str("model.safetensors"));
  const std::string p = "model.layers.0.self_attn.q_proj.";
  ASSERT_TRUE(f.tensors.count(p + "weight_packed"));
  EXPECT_FALSE(f.tensors.count(p + "weight")) << "compressed-tensors replaces weight by weight_packed";
  EXPECT_FALSE(f.tensors.count(p + "input_global_scale")) << "weights only: no activation scale without calibration";
  const auto& packed = f.tensors.at(p + "weight_packed");
  EXPECT_EQ(packed.dtype, DType::u8);
  EXPECT_EQ(packed.shape, (std::vector<int64_t>{64, 32}));  // [N, K/2]
  const auto& scale = f.tensors.at(p + "weight_scale");
  EXPECT_EQ(scale.dtype, DType::f8_e4m3);
  EXPECT_EQ(scale.shape, (std::vector<int64_t>{64, 4}));  // [N, K/16]
  const auto& gs = f.tensors.at(p + "weight_global_scale");
  EXPECT_EQ(gs.dtype, DType::f32);
  EXPECT_EQ(gs.shape, (std::vector<int64_t>{1}));
  // the convention: a divisor ~ 448 * 6 / amax, shared by q, k and v
  float div = 0, div_k = 0;
  std::memcpy(&div, gs.data, 4);
  std::memcpy(&div_k, f.tensors.at("model.layers.0.self_attn.k_proj.weight_global_scale").data, 4);
  EXPECT_EQ(div, div_k) << "fused q/k/v share one global scale";
  const ModelWeights src = load_model_weights(kTiny + "/llama3");
  float amax = 0;
  for (const char* n : {"q_proj", "k_proj", "v_proj"})
    for (float v : to_f32(src.tensors.at(fmt::format("model.layers.0.self_attn.{}.weight", n)))) amax = std::max(amax, std::fabs(v));
  EXPECT_NEAR(div, 2688.0f / amax, 2688.0f / amax * 1e-6f);
  // unquantized tensors keep their dtype; lm_head is not quantized
  EXPECT_EQ(f.tensors.at("lm_head.weight").dtype, src.tensors.at("lm_head.weight").dtype);
  EXPECT_EQ(f.tensors.at("model.embed_tokens.weight").dtype, src.tensors.at("model.embed_tokens.weight").dtype);
  const json q = read_json(out.str("config.json"))["quantization_config"];
  EXPECT_EQ(q["quant_method"], "compressed-tensors");
  EXPECT_EQ(q["format"], "nvfp4-pack-quantized");
  EXPECT_EQ(q["quantization_status"], "compressed");
  EXPECT_EQ(q["ignore"], json({"lm_head"}));
  const json g = q["config_groups"]["group_0"];
  EXPECT_TRUE(g["input_activations"].is_null()) << "weights-only (W4A16) form";
  EXPECT_EQ(g["weights"]["num_bits"], 4);
  EXPECT_EQ(g["weights"]["group_size"], 16);
  EXPECT_EQ(g["weights"]["strategy"], "tensor_group");
  EXPECT_EQ(g["weights"]["type"], "float");
  EXPECT_EQ(g["weights"]["symmetric"], true);
  EXPECT_EQ(q["sharq"]["scheme"], "nvfp4");
  EXPECT_EQ(q["sharq"]["weight_scale_block"], 16);
}

TEST(QuantizeFormat, ModelOptNvfp4NamesDtypesShapesAndConfig) {
  TempDir out;
  quantize(kTiny + "/llama3", out.str(), "sharq", "modelopt", true);
  const auto f = open_safetensors(out.str("model.safetensors"));
  const std::string p = "model.layers.1.mlp.down_proj.";
  EXPECT_EQ(f.tensors.at(p + "weight").dtype, DType::u8);
  EXPECT_EQ(f.tensors.at(p + "weight").shape, (std::vector<int64_t>{64, 48}));  // [N, K/2], K = 96
  EXPECT_EQ(f.tensors.at(p + "weight_scale").dtype, DType::f8_e4m3);
  EXPECT_EQ(f.tensors.at(p + "weight_scale").shape, (std::vector<int64_t>{64, 6}));
  EXPECT_EQ(f.tensors.at(p + "weight_scale_2").dtype, DType::f32);
  EXPECT_TRUE(f.tensors.at(p + "weight_scale_2").shape.empty()) << "a 0-d scalar";
  EXPECT_FALSE(f.tensors.count(p + "input_scale"));
  // sharq's W32: every pair of 16-block scales is one scale byte duplicated
  const auto& sc = f.tensors.at(p + "weight_scale");
  for (size_t i = 0; i < sc.bytes; i += 2) ASSERT_EQ(sc.data[i], sc.data[i + 1]) << i;
  // the multiplier convention: amax / 2688 of gate/up's shared group
  float g_gate = 0, g_up = 0;
  std::memcpy(&g_gate, f.tensors.at("model.layers.1.mlp.gate_proj.weight_scale_2").data, 4);
  std::memcpy(&g_up, f.tensors.at("model.layers.1.mlp.up_proj.weight_scale_2").data, 4);
  EXPECT_EQ(g_gate, g_up);
  const json q = read_json(out.str("config.json"))["quantization_config"];
  EXPECT_EQ(q["quant_method"], "modelopt");
  EXPECT_EQ(q["quant_algo"], "W4A16_NVFP4");
  EXPECT_EQ(q["sharq"]["weight_scale_block"], 32);
  const json h = read_json(out.str("hf_quant_config.json"));
  EXPECT_EQ(h["quantization"]["quant_algo"], "W4A16_NVFP4");
  EXPECT_EQ(h["quantization"]["group_size"], 16);
  EXPECT_EQ(h["quantization"]["exclude_modules"], json({"lm_head"}));
  EXPECT_TRUE(h["quantization"].contains("kv_cache_quant_algo"));
}

TEST(QuantizeFormat, Fp8PerChannelInBothFormats) {
  for (const char* format : kFormats) {
    TempDir out;
    quantize(kTiny + "/qwen2", out.str(), "fp8", format);
    const auto f = open_safetensors(out.str("model.safetensors"));
    const std::string p = "model.layers.0.self_attn.o_proj.";
    EXPECT_EQ(f.tensors.at(p + "weight").dtype, DType::f8_e4m3);
    EXPECT_EQ(f.tensors.at(p + "weight").shape, (std::vector<int64_t>{64, 64}));
    EXPECT_EQ(f.tensors.at(p + "weight_scale").dtype, DType::f32);
    const bool ct = std::string(format) == "compressed-tensors";
    EXPECT_EQ(f.tensors.at(p + "weight_scale").shape, ct ? std::vector<int64_t>({64, 1}) : std::vector<int64_t>({64}));
    const json q = read_json(out.str("config.json"))["quantization_config"];
    if (ct) {
      EXPECT_EQ(q["format"], "float-quantized");
      EXPECT_EQ(q["config_groups"]["group_0"]["weights"]["strategy"], "channel");
      EXPECT_EQ(q["config_groups"]["group_0"]["input_activations"]["strategy"], "token");
      EXPECT_EQ(q["config_groups"]["group_0"]["input_activations"]["dynamic"], true);
    } else {
      EXPECT_EQ(q["quant_algo"], "FP8_PER_CHANNEL_PER_TOKEN");
    }
    EXPECT_TRUE(f.tensors.count("model.layers.0.self_attn.q_proj.bias")) << "biases are copied";
  }
}

TEST(QuantizeFused, SharedGlobalScaleIsUsedAsStoredByTheLoadedLayers) {
  TempDir out;
  quantize(kTiny + "/llama3", out.str(), "nvfp4", "modelopt", true);
  const ModelWeights src = load_model_weights(kTiny + "/llama3"), q = load_model_weights(out.str());
  const std::string p = "model.layers.0.self_attn.";
  float amax = 0;
  for (const char* n : {"q_proj", "k_proj", "v_proj"})
    for (float v : to_f32(src.tensors.at(p + n + ".weight"))) amax = std::max(amax, std::fabs(v));
  const float g = nvfp4_global_scale(amax);
  for (const char* n : {"q_proj", "k_proj", "v_proj"}) {
    const QuantizedWeight& qw = *q.tensors.at(p + n + ".weight").quantized;
    EXPECT_EQ(qw.global, g) << n;
    const std::vector<float> x = to_f32(src.tensors.at(p + n + ".weight"));
    const auto want = quantize_matrix_with_global<Nvfp4_16>(x.data(), qw.rows, qw.cols, g);
    const auto got = nvfp4_16_matrix(qw);
    ASSERT_EQ(std::memcmp(want.blocks.data(), got.blocks.data(), want.blocks.size() * sizeof(want.blocks[0])), 0) << n;
  }
}

TEST(QuantizeSchemes, SchemesThatNeedOtherWeightsAreRefusedNamingTheFormat) {
  TempDir a, b;
  quantize(kTiny + "/llama3", a.str(), "nvfp4", "compressed-tensors");
  quantize(kTiny + "/llama3", b.str(), "fp8", "modelopt");
  const ModelWeights q16 = load_model_weights(a.str()), q8 = load_model_weights(b.str());
  auto error = [](const ModelWeights& w, const char* s) {
    try {
      Transformer t(w, parse_scheme(s));
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  std::string e = error(q16, "sharq");
  EXPECT_NE(e.find("scheme 'sharq' cannot run on"), std::string::npos) << e;
  EXPECT_NE(e.find("compressed-tensors NVFP4 (16-element scale blocks)"), std::string::npos) << e;
  EXPECT_NE(e.find("use 'sharq:w16'"), std::string::npos) << e;
  e = error(q16, "fp16");
  EXPECT_NE(e.find("scheme 'fp16' cannot run"), std::string::npos) << e;
  EXPECT_NE(e.find("nvfp4, w4a16 and sharq:w16"), std::string::npos) << e;
  e = error(q8, "nvfp4");
  EXPECT_NE(e.find("modelopt FP8 E4M3 (per-channel scales)"), std::string::npos) << e;
  e = error(q16, "mxfp4");
  EXPECT_NE(e.find("scheme 'mxfp4' cannot run"), std::string::npos) << e;
  EXPECT_NO_THROW(Transformer(q16, parse_scheme("sharq:w16:tensor")));
  EXPECT_NO_THROW(Transformer(q16, parse_scheme("w4a16")));
}

TEST(QuantizeErrors, UnstorableSchemesBusyOutputsAndQuantizedSources) {
  TempDir out, again;
  auto error = [&](const std::string& model, const std::string& dir, const char* scheme, const char* format = "compressed-tensors") {
    try {
      quantize(model, dir, scheme, format);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error(kTiny + "/llama3", out.str(), "mxfp4").find("scheme 'mxfp4' has no stored form"), std::string::npos);
  EXPECT_NE(error(kTiny + "/llama3", out.str(), "fp16").find("scheme 'fp16' has no stored form"), std::string::npos);
  EXPECT_NE(error(kTiny + "/llama3", out.str(), "nvfp4", "gguf").find("'gguf' is not a checkpoint format"), std::string::npos);
  EXPECT_FALSE(fs::exists(out.str())) << "nothing written for a refused scheme";
  quantize(kTiny + "/llama3", out.str(), "nvfp4", "compressed-tensors");
  EXPECT_NE(error(kTiny + "/llama3", out.str(), "nvfp4").find("exists and is not an empty directory"), std::string::npos);
  EXPECT_NE(error(out.str(), again.str(), "nvfp4").find("already quantized"), std::string::npos);
}

// --tokenizer is copied into OUT, so it must load and fit the model first: a text file and another
// model's (larger) tokenizer are refused before anything is written (found by a probe: both were
// copied, and generate then refused the checkpoint).
TEST(QuantizeErrors, ATokenizerThatDoesNotFitIsRefusedBeforeWriting) {
  TempDir out, scratch;
  fs::create_directories(scratch.str());
  const std::string text = scratch.str("notes.txt");
  std::ofstream(text) << "hello";
  std::vector<std::string> toks = {text};
  const std::string big = kShared + "/tokenizers/qwen3/tokenizer.json";  // 151,669 tokens
  if (fs::exists(big)) toks.push_back(big);
  for (const std::string& tok : toks) {
    QuantizeOptions o = quantize_options(kTiny + "/llama3", out.str(), "nvfp4", "compressed-tensors");
    o.tokenizer_path = tok;
    try {
      quantize_checkpoint(o);
      ADD_FAILURE() << tok << ": no error";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("--tokenizer: " + tok), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(out.str())) << tok;
  }
  // a good tokenizer under another name is written under the name the loaders look for (review)
  const std::string stories = kShared + "/models/stories260K";
  if (!fs::exists(stories + "/tok512.bin")) return;
  fs::copy_file(stories + "/tok512.bin", scratch.str("mytok.dat"));
  QuantizeOptions o = quantize_options(stories + "/stories260K.bin", out.str(), "nvfp4", "compressed-tensors");
  o.tokenizer_path = scratch.str("mytok.dat");
  quantize_checkpoint(o);
  EXPECT_TRUE(fs::exists(out.str("tokenizer.bin")));
  EXPECT_FALSE(fs::exists(out.str("mytok.dat")));
  EXPECT_EQ(load_tokenizer_for(out.str())->vocab_size(), 512);
}

// compressed-tensors: the marker records every NVFP4 layer's exact g; sharq prefers it (checked
// against 1 / divisor), a reader without it gets fl(1 / divisor), and a marker that disagrees with
// the tensor, names an unknown layer or is not an exact FP32 value is a clear error.
TEST(QuantizeCtExactGlobals, MarkerHoldsTheExactMultiplierAndIsChecked) {
  TempDir out;
  const QuantizeReport rep = quantize(kTiny + "/llama3", out.str(), "nvfp4", "compressed-tensors");
  const ModelWeights src = load_model_weights(kTiny + "/llama3");
  json config = read_json(out.str("config.json"));
  const json& globals = config["quantization_config"]["sharq"]["global_scales"];
  ASSERT_TRUE(globals.is_object());
  const auto f = open_safetensors(out.str("model.safetensors"));
  int layers = 0, inexact = 0;
  std::string inexact_layer;
  for (const auto& [name, t] : src.tensors) {
    if (!f.tensors.count(name.substr(0, name.size() - 6) + "weight_packed")) continue;
    const std::string layer = name.substr(0, name.size() - 7);
    ++layers;
    ASSERT_TRUE(globals.contains(layer)) << layer;
    float g = 0, div = 0;
    ASSERT_TRUE(parse_exact_f32(globals[layer].get<std::string>(), &g)) << globals[layer];
    // per-projection g (not fused): nvfp4_global_scale of this weight's amax
    float amax = 0;
    for (float v : to_f32(t)) amax = std::max(amax, std::fabs(v));
    EXPECT_EQ(g, nvfp4_global_scale(amax)) << layer;
    std::memcpy(&div, f.tensors.at(layer + ".weight_global_scale").data, 4);
    if (1.0f / div != g) {
      ++inexact;
      inexact_layer = layer;
    }
  }
  EXPECT_EQ(static_cast<int>(globals.size()), layers);
  EXPECT_EQ(inexact, rep.inexact_divisors);
  ASSERT_GT(inexact, 0) << "pick a model with an inexact divisor for this test";
  EXPECT_EQ(load_model_weights(out.str()).tensors.at(inexact_layer + ".weight").quantized->global,
            nvfp4_global_scale([&] {
              float m = 0;
              for (float v : to_f32(src.tensors.at(inexact_layer + ".weight"))) m = std::max(m, std::fabs(v));
              return m;
            }()));

  auto load_with = [&](const json& q) {
    json c = config;
    c["quantization_config"] = q;
    std::ofstream(out.str("config.json"), std::ios::trunc) << c.dump(2);
    return load_model_weights(out.str());
  };
  auto expect_error = [&](const json& q, const std::vector<std::string>& parts) {
    try {
      load_with(q);
      ADD_FAILURE() << "no error for " << q["sharq"].dump();
    } catch (const CheckpointError& e) {
      for (const std::string& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << " lacks " << p;
    }
  };
  const json q0 = config["quantization_config"];
  {  // a reader without the marker: g = fl(1 / divisor), 1 ulp off there
    json q = q0;
    q["sharq"].erase("global_scales");
    const ModelWeights w = load_with(q);
    float div = 0;
    std::memcpy(&div, f.tensors.at(inexact_layer + ".weight_global_scale").data, 4);
    EXPECT_EQ(w.tensors.at(inexact_layer + ".weight").quantized->global, 1.0f / div);
  }
  {  // 4 ulps off g: refused, naming the field and the tensor
    json q = q0;
    float g = 0;
    parse_exact_f32(q["sharq"]["global_scales"][inexact_layer].get<std::string>(), &g);
    for (int i = 0; i < 4; ++i) g = std::nextafter(g, INFINITY);
    q["sharq"]["global_scales"][inexact_layer] = exact_f32_string(g);
    expect_error(q, {"sharq.global_scales." + inexact_layer, inexact_layer + ".weight_global_scale", "2 ulps"});
  }
  {
    json q = q0;
    q["sharq"]["global_scales"]["model.layers.9.self_attn.q_proj"] = "0x1p-3";
    expect_error(q, {"model.layers.9.self_attn.q_proj", "not an NVFP4 layer"});
  }
  for (const json& bad : {json("0.1"), json("0x1p-3 "), json("-0x1p-3"), json("nan"), json("0x1.0000000001p-3"), json(0.125)}) {
    json q = q0;
    q["sharq"]["global_scales"][inexact_layer] = bad;
    expect_error(q, {"global_scales", inexact_layer});
  }
  {  // a written-back exact value (the writer's format) round-trips
    float g = 0;
    ASSERT_TRUE(parse_exact_f32(exact_f32_string(0.1f), &g));
    EXPECT_EQ(g, 0.1f);
  }
}

TEST(QuantizeCtDivisor, ExactWhereAnFp32DivisorExistsAndWithinAnUlpElsewhere) {
  int exact_count = 0;
  for (int i = 0; i < 2000; ++i) {
    const float g = std::ldexp(1.0f + static_cast<float>(i) / 2000.0f, -(i % 20));
    bool exact = false;
    const float d = ct_global_divisor(g, &exact);
    if (exact) {
      ++exact_count;
      EXPECT_EQ(ct_global_multiplier(d), g);
    } else {
      EXPECT_EQ(d, 1.0f / g);
      EXPECT_NEAR(ct_global_multiplier(d), g, g * 2.4e-7f);
    }
  }
  EXPECT_GT(exact_count, 1400);  // most FP32 values have an exact divisor (about 83%, docs/checkpoint_formats.md 6.4)
}

// stories260K is a llama2.c file: the export writes a config.json for it and permutes q/k rows to
// Hugging Face's rotate-half RoPE. The blocks are the at-load blocks, rows permuted; the logits
// differ only by the order of the q.k sums (and what that flips downstream).
TEST(QuantizeStories260K, Llama2cSourceRoundTripsWithHfRope) {
  const std::string model = kShared + "/models/stories260K/stories260K.bin";
  if (!fs::exists(model)) GTEST_SKIP() << "shared data not found: " << model;
  for (const char* scheme : {"nvfp4", "sharq"}) {
    TempDir out;
    quantize(model, out.str(), scheme, "modelopt");
    const json c = read_json(out.str("config.json"));
    EXPECT_EQ(c["model_type"], "llama");
    EXPECT_TRUE(fs::exists(out.str("tokenizer.bin")));
    PplOptions o;
    o.data_path = kShared + "/data/tinystories/sample.txt";
    o.ctx = 128;
    o.max_windows = 4;
    o.schemes = scheme;
    o.progress = false;
    o.model_path = model;
    const PplResult a = run_perplexity(o);
    o.model_path = out.str();
    const PplResult b = run_perplexity(o);
    // the row of the stored scheme (the quantized run has it as its reference: fp16 cannot run there;
    // its sharq baseline nvfp4 reads the W32 weights, so it differs from nvfp4 quantized at load)
    auto ppl_of = [&](const PplResult& r) {
      for (const PplRow& row : r.rows)
        if (row.scheme == scheme) return row.ppl;
      ADD_FAILURE() << "no row " << scheme;
      return 0.0;
    };
    const double pa = ppl_of(a), pb = ppl_of(b);
    EXPECT_EQ(b.reference, scheme);
    EXPECT_NEAR(pb, pa, 2e-3 * pa) << scheme;
    std::printf("stories260K %s: ppl quantized at load %.6f, from the checkpoint %.6f\n", scheme, pa, pb);
  }
}

}  // namespace

// ================================================================================================
// Calibration (--calib-data): the W4A4 form with static input scales.

namespace calib {

// An independent reference of a dense Llama forward pass in double (no sharq runtime code: its own
// RMSNorm, RoPE, attention and MLP), recording the amax of each projection's input, keyed by the
// projection's weight name. q/k/v read one input, as do gate/up.
void reference_input_amax(const ModelWeights& w, const std::vector<int32_t>& ids, std::map<std::string, double>& amax) {
  const ModelConfig& c = w.config;
  ASSERT_EQ(c.num_experts, 0);
  ASSERT_EQ(c.rope_scaling.type, RopeScaling::Type::none);
  ASSERT_FALSE(c.attention_bias);
  ASSERT_FALSE(c.qk_norm);
  const int64_t H = c.hidden_size, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads, T = static_cast<int64_t>(ids.size());
  const int64_t qd = nh * hd, kvd = nkv * hd;
  auto f64 = [](const TensorView& t) {
    const std::vector<float> f = to_f32(t);
    return std::vector<double>(f.begin(), f.end());
  };
  // y (T x N) = x (T x K) W^T
  auto matmul = [&](const std::vector<double>& x, const TensorView& wt, int64_t K) {
    const std::vector<double> W = f64(wt);
    const int64_t N = static_cast<int64_t>(W.size()) / K;
    std::vector<double> y(static_cast<size_t>(T * N));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t n = 0; n < N; ++n) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k) s += x[t * K + k] * W[n * K + k];
        y[t * N + n] = s;
      }
    return y;
  };
  auto rmsnorm = [&](const std::vector<double>& x, const TensorView& wt) {
    const std::vector<double> g = f64(wt);
    std::vector<double> y(x.size());
    for (int64_t t = 0; t < T; ++t) {
      double ss = 0;
      for (int64_t i = 0; i < H; ++i) ss += x[t * H + i] * x[t * H + i];
      const double r = 1.0 / std::sqrt(ss / static_cast<double>(H) + c.rms_norm_eps);
      for (int64_t i = 0; i < H; ++i) y[t * H + i] = g[i] * x[t * H + i] * r;
    }
    return y;
  };
  auto note = [&](const std::vector<const TensorView*> ws, const std::vector<double>& x) {
    double m = 0;
    for (double v : x) m = std::max(m, std::fabs(v));
    for (const TensorView* t : ws) amax[t->name] = std::max(amax[t->name], m);
  };
  auto rope = [&](std::vector<double>& v, int64_t width) {  // every head of every row, at position t
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h0 = 0; h0 < width; h0 += hd)
        for (int64_t i = 0; i < hd / 2; ++i) {
          const double ang = static_cast<double>(t) * std::pow(c.rope_theta, -2.0 * static_cast<double>(i) / static_cast<double>(hd));
          const int64_t a = t * width + h0 + (c.rope_interleaved ? 2 * i : i);
          const int64_t b = t * width + h0 + (c.rope_interleaved ? 2 * i + 1 : i + hd / 2);
          const double x0 = v[a], x1 = v[b];
          v[a] = x0 * std::cos(ang) - x1 * std::sin(ang);
          v[b] = x0 * std::sin(ang) + x1 * std::cos(ang);
        }
  };
  const std::vector<double> embed = f64(w.embed_tokens());
  std::vector<double> x(static_cast<size_t>(T * H));
  for (int64_t t = 0; t < T; ++t) std::copy_n(embed.begin() + ids[t] * H, H, x.begin() + t * H);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights L = w.layer(l);
    std::vector<double> h = rmsnorm(x, *L.attn_norm);
    note({L.q, L.k, L.v}, h);
    std::vector<double> q = matmul(h, *L.q, H), k = matmul(h, *L.k, H), v = matmul(h, *L.v, H);
    rope(q, qd);
    rope(k, kvd);
    std::vector<double> att(static_cast<size_t>(T * qd), 0.0);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t hh = 0; hh < nh; ++hh) {
        const int64_t kh = hh / (nh / nkv);
        std::vector<double> s(static_cast<size_t>(t + 1));
        double mx = -1e300, sum = 0;
        for (int64_t j = 0; j <= t; ++j) {
          double d = 0;
          for (int64_t i = 0; i < hd; ++i) d += q[t * qd + hh * hd + i] * k[j * kvd + kh * hd + i];
          s[j] = d / std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, s[j]);
        }
        for (double& e : s) sum += (e = std::exp(e - mx));
        for (int64_t j = 0; j <= t; ++j)
          for (int64_t i = 0; i < hd; ++i) att[t * qd + hh * hd + i] += s[j] / sum * v[j * kvd + kh * hd + i];
      }
    note({L.o}, att);
    const std::vector<double> o = matmul(att, *L.o, qd);
    for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    h = rmsnorm(x, *L.mlp_norm);
    note({L.gate, L.up}, h);
    const int64_t I = L.mlp_intermediate;
    std::vector<double> g = matmul(h, *L.gate, H);
    const std::vector<double> u = matmul(h, *L.up, H);
    for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
    note({L.down}, g);
    const std::vector<double> d = matmul(g, *L.down, I);
    for (size_t i = 0; i < x.size(); ++i) x[i] += d[i];
  }
}

// The sharq runtime's own view of the same inputs (through the observer, as the writer uses it).
struct ObservedAmax final : ProjectionObserver {
  std::map<std::string, float> amax;  // "layer/input" or "layer/expert/input"
  void on_input(int64_t layer, const char* proj, const float* x, int64_t M, int64_t K) override {
    float& m = amax[fmt::format("{}/{}", layer, proj)];
    for (int64_t i = 0; i < M * K; ++i) m = std::max(m, std::fabs(x[i]));
  }
  void on_expert_input(int64_t layer, int64_t e, const char* proj, const float* x, int64_t M, int64_t K) override {
    float& m = amax[fmt::format("{}/{}/{}", layer, e, proj)];
    for (int64_t i = 0; i < M * K; ++i) m = std::max(m, std::fabs(x[i]));
  }
};

QuantizeReport quantize_calibrated(const std::string& model, const std::string& out, const std::string& scheme, const std::string& format,
                                   const std::string& data, int64_t tokens, const std::string& tokenizer = "") {
  QuantizeOptions o = quantize_options(model, out, scheme, format);
  o.calib_data = data;
  o.calib_tokens = tokens;
  o.tokenizer_path = tokenizer;
  return quantize_checkpoint(o);
}

float stored_scalar(const SafetensorsFile& f, const std::string& name) {
  const auto& t = f.tensors.at(name);
  EXPECT_EQ(t.dtype, DType::f32) << name;
  float v = 0;
  std::memcpy(&v, t.data, 4);
  return v;
}

// A llama2.c tokenizer of exactly `vocab` entries (<unk>, <s>, </s>, then byte tokens <0x00>...),
// so that the tiny test models (vocab 256) can be driven by text: every ASCII character is its byte.
std::string write_byte_tokenizer(const std::string& path, int64_t vocab) {
  std::ofstream f(path, std::ios::binary);
  const int32_t max_len = 8;
  f.write(reinterpret_cast<const char*>(&max_len), 4);
  for (int64_t i = 0; i < vocab; ++i) {
    // id 3 (byte 0x00's token) is " " instead: the dummy prefix needs one
    const std::string piece = i == 0 ? "<unk>" : i == 1 ? "<s>" : i == 2 ? "</s>" : i == 3 ? " " : fmt::format("<0x{:02X}>", i - 3);
    const float score = 0;
    const int32_t len = static_cast<int32_t>(piece.size());
    f.write(reinterpret_cast<const char*>(&score), 4);
    f.write(reinterpret_cast<const char*>(&len), 4);
    f.write(piece.data(), len);
  }
  return path;
}

}  // namespace calib

// The stored input scales are the amax of each projection's input over the calibration tokens: checked
// against an independent double-precision forward pass of the model (per window: 600 tokens of
// stories260K, whose context is 512, are two windows, each a fresh sequence), exactly against the
// runtime's observed inputs, and in both conventions (compressed-tensors a divisor 2688/amax, ModelOpt
// a multiplier amax/2688). q/k/v and gate/up share their input and so their scale. The W4A4 config
// is written, the loader reads it back and, as sharq computes activation scales online, runs to the
// same logits as the weights-only checkpoint.
TEST(QuantizeCalibration, InputScalesAreTheAmaxOfEachLayerInputInBothConventions) {
  const std::string model = kShared + "/models/stories260K/stories260K.bin";
  const std::string data = kShared + "/data/tinystories/sample.txt";
  if (!fs::exists(model) || !fs::exists(data)) GTEST_SKIP() << "shared data not found: " << model;
  const int64_t kTokens = 600;
  const ModelWeights src = load_model_weights(model);
  const auto tok = load_tokenizer_for(model, "", src.config);
  std::vector<int32_t> ids = tok->encode(read_text_file(data), true);
  ASSERT_GT(static_cast<int64_t>(ids.size()), kTokens);
  ids.resize(kTokens);
  const int64_t ctx = src.config.max_position_embeddings;
  ASSERT_EQ(ctx, 512);

  std::map<std::string, double> ref;  // by weight name
  calib::ObservedAmax obs;
  const Transformer model_fp32(src, Scheme{});
  for (int64_t b = 0; b < kTokens; b += ctx) {
    const std::vector<int32_t> window(ids.begin() + b, ids.begin() + std::min(kTokens, b + ctx));
    calib::reference_input_amax(src, window, ref);
    KVCache cache = model_fp32.new_cache(static_cast<int64_t>(window.size()));
    std::vector<float> logits(static_cast<size_t>(src.config.vocab_size));
    model_fp32.forward(window.data(), static_cast<int64_t>(window.size()), cache, logits.data(), false, &obs);
  }
  auto observed = [&](int64_t l, const std::string& name) {
    const char* input = name.find("q_proj") != std::string::npos || name.find("k_proj") != std::string::npos ||
                                name.find("v_proj") != std::string::npos
                            ? "q_proj"
                        : name.find("o_proj") != std::string::npos                                              ? "o_proj"
                        : name.find("gate_proj") != std::string::npos || name.find("up_proj") != std::string::npos ? "gate_proj"
                                                                                                                    : "down_proj";
    return obs.amax.at(fmt::format("{}/{}", l, input));
  };

  TempDir ct_dir, mo_dir, plain_dir;
  const QuantizeReport rep = calib::quantize_calibrated(model, ct_dir.str(), "sharq", "compressed-tensors", data, kTokens);
  EXPECT_TRUE(rep.static_input_scales);
  EXPECT_EQ(rep.calib_tokens, kTokens);
  EXPECT_EQ(rep.calib_windows, 2);
  EXPECT_EQ(rep.calib_ctx, ctx);
  EXPECT_NE(format_quantize_report(rep).find("W4A4: static input scales"), std::string::npos);
  calib::quantize_calibrated(model, mo_dir.str(), "sharq", "modelopt", data, kTokens);
  quantize(model, plain_dir.str(), "sharq", "modelopt", /*fused=*/true);  // the same weights as the calibrated ones
  const auto ct = open_safetensors(ct_dir.str("model.safetensors"));
  const auto mo = open_safetensors(mo_dir.str("model.safetensors"));
  int checked = 0;
  for (int64_t l = 0; l < src.config.num_layers; ++l) {
    const LayerWeights L = src.layer(l);
    for (const TensorView* t : {L.q, L.k, L.v, L.o, L.gate, L.up, L.down}) {
      const std::string base = t->name.substr(0, t->name.size() - std::string("weight").size());
      SCOPED_TRACE(t->name);
      const double amax = ref.at(t->name);
      ASSERT_GT(amax, 0.0);
      // ModelOpt: a multiplier amax / 2688, a 0-d F32 scalar
      ASSERT_TRUE(mo.tensors.count(base + "input_scale"));
      EXPECT_TRUE(mo.tensors.at(base + "input_scale").shape.empty());
      const float mult = calib::stored_scalar(mo, base + "input_scale");
      EXPECT_NEAR(mult, amax / 2688.0, 1e-5 * amax / 2688.0) << "against the independent reference";
      EXPECT_EQ(mult, nvfp4_global_scale(observed(l, t->name))) << "against the runtime's inputs";
      // compressed-tensors: a divisor 2688 / amax, F32 [1]
      ASSERT_TRUE(ct.tensors.count(base + "input_global_scale"));
      EXPECT_EQ(ct.tensors.at(base + "input_global_scale").shape, (std::vector<int64_t>{1}));
      const float div = calib::stored_scalar(ct, base + "input_global_scale");
      EXPECT_NEAR(div, 2688.0 / amax, 1e-5 * 2688.0 / amax);
      EXPECT_EQ(div, ct_global_divisor(mult)) << "the two conventions hold the same g";
      EXPECT_NEAR(1.0f / div, mult, 2.4e-7f * mult) << "vLLM's multiplier 1 / divisor";
      ++checked;
    }
    // fused inputs: one scale
    auto mo_of = [&](const TensorView* t) { return calib::stored_scalar(mo, t->name.substr(0, t->name.size() - 6) + "input_scale"); };
    EXPECT_EQ(mo_of(L.q), mo_of(L.k));
    EXPECT_EQ(mo_of(L.q), mo_of(L.v));
    EXPECT_EQ(mo_of(L.gate), mo_of(L.up));
  }
  EXPECT_EQ(checked, 7 * src.config.num_layers);

  // the config describes activations as quantized (the W4A4 form), in both formats
  const json qc = read_json(ct_dir.str("config.json"))["quantization_config"];
  const json in = qc["config_groups"]["group_0"]["input_activations"];
  ASSERT_TRUE(in.is_object());
  EXPECT_EQ(in["num_bits"], 4);
  EXPECT_EQ(in["strategy"], "tensor_group");
  EXPECT_EQ(in["group_size"], 16);
  EXPECT_EQ(in["type"], "float");
  EXPECT_EQ(in["symmetric"], true);
  EXPECT_EQ(qc["format"], "nvfp4-pack-quantized");
  EXPECT_EQ(qc["sharq"]["calibration"]["tokens"], kTokens);
  const json qm = read_json(mo_dir.str("config.json"))["quantization_config"];
  EXPECT_EQ(qm["quant_algo"], "NVFP4");
  EXPECT_EQ(qm["config_groups"]["group_0"]["input_activations"]["num_bits"], 4);
  EXPECT_EQ(read_json(mo_dir.str("hf_quant_config.json"))["quantization"]["quant_algo"], "NVFP4");

  // the loader reads the W4A4 form and ignores the static scales: the same logits as weights only
  const ModelWeights a = load_model_weights(ct_dir.str()), b = load_model_weights(mo_dir.str()), p = load_model_weights(plain_dir.str());
  EXPECT_TRUE(a.quantization.static_input_scales);
  EXPECT_TRUE(b.quantization.static_input_scales);
  EXPECT_FALSE(p.quantization.static_input_scales);
  for (const char* s : {"sharq", "nvfp4"}) {
    const std::vector<float> want = logits_of(p, parse_scheme(s), 8);
    for (const ModelWeights* q : {&a, &b}) {
      const std::vector<float> got = logits_of(*q, parse_scheme(s), 8);
      EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * 4), 0) << s;
    }
  }
}

// MoE: every expert's gate/up/down gets the amax of the rows routed to it; an expert no calibration
// token reached takes the largest amax of its layer's experts (and the report counts it).
TEST(QuantizeCalibration, MoeExpertsGetTheirOwnInputAmax) {
  for (const char* arch : {"mixtral", "qwen3_moe"}) {
    SCOPED_TRACE(arch);
    TempDir out;
    const std::string tok = calib::write_byte_tokenizer(out.str() + ".tok.bin", 256);
    const std::string data = out.str() + ".txt";
    std::ofstream(data) << "the quick brown fox jumps over the lazy dog. calibration text for a tiny mixture of experts.";
    const std::string model = kTiny + "/" + arch;
    const ModelWeights src = load_model_weights(model);
    const QuantizeReport rep = calib::quantize_calibrated(model, out.str(), "nvfp4", "modelopt", data, 64, tok);
    // the runtime's inputs, run the same way (one window: the tiny context is 128)
    const auto t = load_tokenizer_for(model, tok, src.config);
    std::vector<int32_t> ids = t->encode(read_text_file(data), true);
    ids.resize(std::min<size_t>(ids.size(), 64));
    ASSERT_LE(static_cast<int64_t>(ids.size()), src.config.max_position_embeddings);
    calib::ObservedAmax obs;
    const Transformer m(src, Scheme{});
    KVCache cache = m.new_cache(static_cast<int64_t>(ids.size()));
    std::vector<float> logits(static_cast<size_t>(src.config.vocab_size));
    m.forward(ids.data(), static_cast<int64_t>(ids.size()), cache, logits.data(), false, &obs);
    const auto f = open_safetensors(out.str("model.safetensors"));
    int64_t unrouted = 0;
    for (int64_t l = 0; l < src.config.num_layers; ++l) {
      const LayerWeights L = src.layer(l);
      for (const char* input : {"experts.gate_up", "experts.down"}) {
        float layer_max = 0;
        for (size_t e = 0; e < L.experts.size(); ++e)
          if (obs.amax.count(fmt::format("{}/{}/{}", l, e, input))) layer_max = std::max(layer_max, obs.amax.at(fmt::format("{}/{}/{}", l, e, input)));
        for (size_t e = 0; e < L.experts.size(); ++e) {
          const std::string key = fmt::format("{}/{}/{}", l, e, input);
          const bool seen = obs.amax.count(key) != 0;
          if (!seen) ++unrouted;
          const float want = nvfp4_global_scale(seen ? obs.amax.at(key) : layer_max);
          const bool gu = std::string(input) == "experts.gate_up";
          for (const TensorView* w : gu ? std::vector<const TensorView*>{L.experts[e].gate, L.experts[e].up}
                                        : std::vector<const TensorView*>{L.experts[e].down})
            EXPECT_EQ(calib::stored_scalar(f, w->name.substr(0, w->name.size() - 6) + "input_scale"), want) << w->name;
        }
      }
    }
    EXPECT_EQ(rep.calib_unrouted, unrouted);
    fs::remove(tok);
    fs::remove(data);
  }
}

// A bad --calib-data is a clear error naming the flag and the file; schemes without static
// activation scales refuse calibration; nothing is written.
TEST(QuantizeCalibration, BadCalibrationDataIsAClearError) {
  const std::string model = kShared + "/models/stories260K/stories260K.bin";
  if (!fs::exists(model)) GTEST_SKIP() << "shared data not found: " << model;
  TempDir out;
  const std::string empty = out.str() + ".empty.txt", missing = out.str() + ".missing.txt", blank = out.str() + ".blank.txt";
  std::ofstream(empty).close();
  auto error = [&](const std::string& data, const char* scheme = "nvfp4") {
    try {
      calib::quantize_calibrated(model, out.str(), scheme, "compressed-tensors", data, 64);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  std::string e = error(missing);
  EXPECT_NE(e.find("--calib-data"), std::string::npos) << e;
  EXPECT_NE(e.find(missing), std::string::npos) << e;
  EXPECT_NE(e.find("does not exist"), std::string::npos) << e;
  e = error(empty);
  EXPECT_NE(e.find("--calib-data"), std::string::npos) << e;
  EXPECT_NE(e.find(empty), std::string::npos) << e;
  EXPECT_NE(e.find("empty"), std::string::npos) << e;
  e = error(kShared + "/data/tinystories/sample.txt", "w4a16");
  EXPECT_NE(e.find("--calib-data: scheme 'w4a16'"), std::string::npos) << e;
  e = error(kShared + "/data/tinystories/sample.txt", "fp8");
  EXPECT_NE(e.find("dynamic per-token"), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(out.str())) << "nothing written";
  fs::remove(empty);
}

// The loader validates static input scales it does not use: a NaN (or Inf) is a clear error naming
// the tensor (loadable with --allow-nonfinite), as are zero, negative and non-scalar ones.
TEST(QuantizeCalibration, LoaderValidatesStaticInputScales) {
  const std::string model = kShared + "/models/stories260K/stories260K.bin";
  const std::string data = kShared + "/data/tinystories/sample.txt";
  if (!fs::exists(model) || !fs::exists(data)) GTEST_SKIP() << "shared data not found: " << model;
  for (const char* format : kFormats) {
    SCOPED_TRACE(format);
    TempDir out;
    calib::quantize_calibrated(model, out.str(), "nvfp4", format, data, 128);
    const bool ct = std::string(format) == "compressed-tensors";
    const std::string name = std::string("model.layers.2.mlp.down_proj.") + (ct ? "input_global_scale" : "input_scale");
    const std::string file = out.str("model.safetensors");
    // the file offset of the tensor's 4 bytes, from the safetensors header
    std::ifstream in(file, std::ios::binary);
    uint64_t header = 0;
    in.read(reinterpret_cast<char*>(&header), 8);
    std::string text(static_cast<size_t>(header), '\0');
    in.read(text.data(), static_cast<std::streamsize>(header));
    in.close();
    const size_t offset = 8 + static_cast<size_t>(header) + json::parse(text)[name]["data_offsets"][0].get<size_t>();
    auto put = [&](float v) {
      std::fstream f(file, std::ios::binary | std::ios::in | std::ios::out);
      f.seekp(static_cast<std::streamoff>(offset));
      f.write(reinterpret_cast<const char*>(&v), 4);
    };
    auto load_error = [&](bool allow = false) {
      try {
        load_model_weights(out.str(), LoadOptions{allow});
      } catch (const CheckpointError& e) {
        return std::string(e.what());
      }
      return std::string("no error");
    };
    EXPECT_EQ(load_error(), "no error");
    put(std::nanf(""));
    std::string e = load_error();
    EXPECT_NE(e.find(name), std::string::npos) << e;
    EXPECT_NE(e.find("nan"), std::string::npos) << e;
    EXPECT_NE(e.find("--allow-nonfinite"), std::string::npos) << e;
    EXPECT_EQ(load_error(true), "no error") << "ignored with --allow-nonfinite";
    put(INFINITY);
    EXPECT_NE(load_error().find(name), std::string::npos);
    for (const float bad : {0.0f, -1.5f}) {
      put(bad);
      e = load_error(true);
      EXPECT_NE(e.find(name), std::string::npos) << e;
      EXPECT_NE(e.find("positive finite"), std::string::npos) << e;
    }
  }
}

// --synthetic: random weights of a real architecture (small stand-ins here; the named 8B configs
// are measured in docs/checkpoint_formats.md), generated one projection at a time, deterministic in
// the seed, with a config.json the loader reads back; the global scale comes from the known amax.
TEST(QuantizeSynthetic, SmallArchitecturesWriteLoadAndRun) {
  for (const char* name : {"llama3.1-8b", "qwen2.5-7b", "qwen3-8b"}) {
    SCOPED_TRACE(name);
    auto c = std::make_shared<ModelConfig>(synthetic_model_config(name));
    c->vocab_size = 300;
    c->bos_token_id = 1;  // ids inside the shrunk vocabulary (the loader checks them)
    c->eos_token_id = 2;
    c->hidden_size = 64;
    c->intermediate_size = 96;
    c->num_layers = 2;
    c->num_heads = 4;
    c->num_kv_heads = 2;
    c->head_dim = 16;
    c->max_position_embeddings = 256;
    TempDir a, b;
    for (const TempDir* d : {&a, &b}) {
      QuantizeOptions o;
      o.out_dir = d->str();
      o.synthetic = name;
      o.synthetic_config = c;
      o.seed = 7;
      o.progress = false;
      o.format = "modelopt";
      const QuantizeReport r = quantize_checkpoint(o);
      EXPECT_EQ(r.quantized, 14);
    }
    const ModelWeights w = load_model_weights(a.str());
    EXPECT_EQ(w.config.arch, c->arch);
    EXPECT_EQ(w.config.rope_scaling.type, c->rope_scaling.type);
    EXPECT_EQ(w.config.attention_bias, c->attention_bias);
    EXPECT_EQ(w.config.qk_norm, c->qk_norm);
    EXPECT_EQ(w.tensors.at("model.layers.1.mlp.down_proj.weight").quantized->global, nvfp4_global_scale(0.0346f));
    const std::vector<float> y = logits_of(w, parse_scheme("nvfp4"), 6);
    for (float v : y) ASSERT_TRUE(std::isfinite(v));
    std::ifstream fa(a.str("model.safetensors"), std::ios::binary), fb(b.str("model.safetensors"), std::ios::binary);
    const std::string sa((std::istreambuf_iterator<char>(fa)), {}), sb((std::istreambuf_iterator<char>(fb)), {});
    EXPECT_TRUE(sa == sb) << "the same seed writes the same bytes";
  }
  QuantizeOptions o;
  o.synthetic = "llama3.1-8b";
  o.model_path = kTiny + "/llama3";
  o.out_dir = "unused";
  EXPECT_THROW(quantize_checkpoint(o), std::invalid_argument);
}
