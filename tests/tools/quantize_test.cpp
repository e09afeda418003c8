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
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "sharq/model/quantized_checkpoint.h"
#include "sharq/model/safetensors.h"
#include "sharq/quant/fp8.h"
#include "sharq/runtime/cpu/transformer.h"
#include "sharq/tools/perplexity.h"

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

QuantizeReport quantize(const std::string& model, const std::string& out, const std::string& scheme, const std::string& format,
                        bool fused = false) {
  QuantizeOptions o;
  o.model_path = model;
  o.out_dir = out;
  o.scheme = scheme;
  o.format = format;
  o.fused_global_scales = fused;
  o.progress = false;
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
