// Reading compressed-tensors and ModelOpt checkpoints: the value conventions on hand-built layers
// (a known code, scale byte and global scale must dequantize to known numbers: CT's global scale is
// a divisor, ModelOpt's a multiplier; swap them and the numbers are off by g^2), third-party
// quirks (CT's zero-block scale 0x20, [1] vs [] scalars, BF16 global scales, W4A4 activation scales
// that are ignored), and malformed checkpoints, each a CheckpointError naming the file and the
// tensor or field.
#include "sharq/model/quantized_checkpoint.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "sharq/formats/minifloat.h"
#include "sharq/model/safetensors.h"
#include "sharq/tools/quantize.h"

namespace {

namespace fs = std::filesystem;
using namespace sharq;
using nlohmann::json;

const std::string kTiny = std::string(SHARQ_SOURCE_DIR) + "/tests/data/tiny/llama3";
const std::string kQ = "model.layers.0.self_attn.q_proj.";  // [64, 64]

#define EXPECT_HAS(msg, part) EXPECT_NE((msg).find(part), std::string::npos) << "'" << (part) << "' not in: " << (msg)

// A quantized copy of tiny llama3 in `format`, whose tensors a test may then replace.
class Ckpt {
 public:
  Ckpt(const std::string& format, const std::string& scheme = "nvfp4") {
    static int counter = 0;
    dir_ = fs::temp_directory_path() / ("sharq_qckpt_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(dir_);
    QuantizeOptions o;
    o.model_path = kTiny;
    o.out_dir = dir_.string();
    o.scheme = scheme;
    o.format = format;
    o.progress = false;
    quantize_checkpoint(o);
    std::ifstream f(dir_ / "config.json");
    config = json::parse(f);
    // the tests replace tensors as a third-party file would hold them: drop sharq's record of the
    // exact global scales (quantize_test checks it), or every doctored divisor would contradict it
    if (config["quantization_config"]["sharq"].contains("global_scales")) {
      config["quantization_config"]["sharq"].erase("global_scales");
      write_config();
    }
  }
  ~Ckpt() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string dir() const { return dir_.string(); }
  std::string file() const { return (dir_ / "model.safetensors").string(); }

  // Rewrites model.safetensors: `replace` entries override (or add) tensors, `drop` removes some.
  void rewrite(const std::map<std::string, std::pair<SafetensorsTensorOut, std::vector<uint8_t>>>& replace,
               const std::vector<std::string>& drop = {}) {
    const std::vector<uint8_t> old = read_file_bytes(file());
    const auto tensors = parse_safetensors(old.data(), old.size(), file());
    std::vector<SafetensorsTensorOut> out;
    for (const auto& [name, t] : tensors)
      if (!replace.count(name) && std::find(drop.begin(), drop.end(), name) == drop.end()) out.push_back({name, t.dtype, t.shape, t.data, {}});
    for (const auto& [name, r] : replace) {
      SafetensorsTensorOut t = r.first;
      t.name = name;
      t.data = r.second.data();
      out.push_back(t);
    }
    write_safetensors(file(), out);
  }
  void write_config() {
    std::ofstream f(dir_ / "config.json");
    f << config.dump(2);
  }
  std::string load_error() {
    try {
      load_model_weights(dir());
    } catch (const CheckpointError& e) {
      return e.what();
    }
    ADD_FAILURE() << "no CheckpointError";
    return {};
  }
  json config;

 private:
  fs::path dir_;
};

std::vector<uint8_t> f32_bytes(std::vector<float> v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

// q_proj of layer 0 as a hand-built NVFP4 layer: every byte of row n is codes (lo = 0x2: +1.0,
// hi = 0xF: -6.0), every block scale byte 0x40 (E4M3 2.0) except row 1, block 0: 0x20 (CT's
// zero-block scale 0.125) over zero codes.
std::map<std::string, std::pair<SafetensorsTensorOut, std::vector<uint8_t>>> known_layer(bool ct, float global,
                                                                                        std::vector<int64_t> gshape) {
  std::vector<uint8_t> codes(64 * 32, 0xF2), scales(64 * 4, 0x40);
  std::fill(codes.begin() + 32, codes.begin() + 32 + 8, 0x00);  // row 1, 16-block 0: zero codes
  scales[4] = 0x20;
  std::map<std::string, std::pair<SafetensorsTensorOut, std::vector<uint8_t>>> m;
  m[kQ + (ct ? "weight_packed" : "weight")] = {{"", DType::u8, {64, 32}, nullptr, {}}, codes};
  m[kQ + "weight_scale"] = {{"", DType::f8_e4m3, {64, 4}, nullptr, {}}, scales};
  m[kQ + (ct ? "weight_global_scale" : "weight_scale_2")] = {{"", DType::f32, gshape, nullptr, {}}, f32_bytes({global})};
  return m;
}

TEST(QuantizedConventions, CompressedTensorsGlobalScaleIsADivisor) {
  Ckpt c("compressed-tensors");
  c.rewrite(known_layer(true, 4.0f, {1}));
  const ModelWeights w = load_model_weights(c.dir());
  const QuantizedWeight& q = *w.tensors.at(kQ + "weight").quantized;
  EXPECT_EQ(q.global, 0.25f) << "CT stores 1/g";
  const auto m = nvfp4_16_matrix(q);
  const std::vector<float> W = dequantize_matrix(m, true);
  // W = e2m1 * e4m3(0x40) / 4 = {+1, -6} * 2 / 4
  EXPECT_EQ(W[0], 0.5f);
  EXPECT_EQ(W[1], -3.0f);
  EXPECT_EQ(W[64 * 1 + 0], 0.0f);  // the zero block with scale 0x20
  EXPECT_EQ(m.row(1)[0].s.e, 0x20) << "scale bytes are kept as stored";
  EXPECT_EQ(W[64 * 1 + 17], -3.0f);
}

TEST(QuantizedConventions, ModelOptWeightScale2IsAMultiplierAndMayBeA0dOrBf16Scalar) {
  Ckpt c("modelopt");
  c.rewrite(known_layer(false, 4.0f, {}));
  const ModelWeights w = load_model_weights(c.dir());
  const QuantizedWeight& q = *w.tensors.at(kQ + "weight").quantized;
  EXPECT_EQ(q.global, 4.0f);
  const std::vector<float> W = dequantize_matrix(nvfp4_16_matrix(q), true);
  EXPECT_EQ(W[0], 8.0f);  // +1 * 2 * 4
  EXPECT_EQ(W[1], -48.0f);
  // BF16 [1] weight_scale_2 (seen in some ModelOpt files) widens exactly
  auto m = known_layer(false, 0, {1});
  m[kQ + "weight_scale_2"] = {{"", DType::bf16, {1}, nullptr, {}}, {0x80, 0x40}};  // BF16 4.0
  c.rewrite(m);
  EXPECT_EQ(load_model_weights(c.dir()).tensors.at(kQ + "weight").quantized->global, 4.0f);
}

TEST(QuantizedConventions, W4A4ActivationScalesAreReadAsW4A4AndIgnored) {
  Ckpt c("compressed-tensors");
  c.config["quantization_config"]["config_groups"]["group_0"]["input_activations"] =
      c.config["quantization_config"]["config_groups"]["group_0"]["weights"];
  c.config["quantization_config"].erase("sharq");
  c.write_config();
  c.rewrite({{kQ + "input_global_scale", {{"", DType::f32, {1}, nullptr, {}}, f32_bytes({123.0f})}}});
  const ModelWeights w = load_model_weights(c.dir());
  EXPECT_TRUE(w.quantization.static_input_scales);
  EXPECT_TRUE(w.quantization.scheme.empty()) << "a third-party file has no sharq marker";
  EXPECT_FALSE(w.has(kQ + "input_global_scale"));
}

std::map<std::string, std::pair<SafetensorsTensorOut, std::vector<uint8_t>>> one(const std::string& name, DType d,
                                                                                 std::vector<int64_t> shape, std::vector<uint8_t> b) {
  return {{name, {{"", d, std::move(shape), nullptr, {}}, std::move(b)}}};
}

TEST(QuantizedMalformed, ScalesCodesAndGlobalScalesNameTheFileAndTensor) {
  {
    Ckpt c("compressed-tensors");
    c.rewrite(one(kQ + "weight_scale", DType::f32, {64, 4}, std::vector<uint8_t>(64 * 4 * 4, 0)));
    const std::string e = c.load_error();
    EXPECT_HAS(e, c.dir());
    EXPECT_HAS(e, "tensor '" + kQ + "weight_scale' has dtype F32, expected F8_E4M3");
  }
  {
    Ckpt c("compressed-tensors");
    c.rewrite(one(kQ + "weight_scale", DType::f8_e4m3, {64, 2}, std::vector<uint8_t>(128, 0x38)));
    EXPECT_HAS(c.load_error(), "tensor '" + kQ + "weight_scale' has shape [64, 2], expected [64, 4]");
  }
  {
    Ckpt c("modelopt");
    c.rewrite(one(kQ + "weight", DType::u8, {64, 16}, std::vector<uint8_t>(64 * 16, 0)));
    EXPECT_HAS(c.load_error(), "tensor '" + kQ + "weight' has shape [64, 16], expected [64, 32] for the [64, 64] weight");
  }
  {
    Ckpt c("modelopt");
    c.rewrite(one(kQ + "weight", DType::i8, {64, 32}, std::vector<uint8_t>(64 * 32, 0)));
    EXPECT_HAS(c.load_error(), "tensor '" + kQ + "weight' has dtype I8, expected U8");
  }
  {
    Ckpt c("compressed-tensors");
    c.rewrite({}, {kQ + "weight_global_scale"});
    EXPECT_HAS(c.load_error(), "tensor '" + kQ + "weight_global_scale' is missing");
  }
  {
    Ckpt c("modelopt");
    c.rewrite({}, {kQ + "weight_scale"});
    EXPECT_HAS(c.load_error(), "tensor '" + kQ + "weight_scale' is missing");
  }
  for (float bad : {0.0f, -2.0f, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    Ckpt c("compressed-tensors");
    c.rewrite(one(kQ + "weight_global_scale", DType::f32, {1}, f32_bytes({bad})));
    EXPECT_HAS(c.load_error(), "tensor '" + kQ + "weight_global_scale' holds the divisor");
  }
  {
    Ckpt c("modelopt");
    c.rewrite(one(kQ + "weight_scale_2", DType::f32, {2}, f32_bytes({1, 1})));
    EXPECT_HAS(c.load_error(), "tensor '" + kQ + "weight_scale_2' has shape [2], expected a scalar");
  }
  {
    Ckpt c("compressed-tensors");
    std::vector<uint8_t> s(64 * 4, 0x38);
    s[77] = 0x7F;
    c.rewrite(one(kQ + "weight_scale", DType::f8_e4m3, {64, 4}, s));
    EXPECT_HAS(c.load_error(), "tensor '" + kQ + "weight_scale' holds a NaN block scale (0x7F) at row 19, block 1");
    LoadOptions allow;
    allow.allow_nonfinite = true;
    EXPECT_NO_THROW(load_model_weights(c.dir(), allow));
  }
  {  // sharq's W32 marker over scales whose pairs differ
    Ckpt c("compressed-tensors", "sharq");
    std::vector<uint8_t> s(64 * 4, 0x38);
    s[5] = 0x40;
    c.rewrite(one(kQ + "weight_scale", DType::f8_e4m3, {64, 4}, s));
    EXPECT_HAS(c.load_error(), "tensor '" + kQ + "weight_scale': row 1 has different scales in 16-blocks 0 and 1");
  }
}

TEST(QuantizedMalformed, ConfigThatDisagreesWithTheTensorsOrTheFormat) {
  {
    Ckpt c("compressed-tensors");
    c.config["quantization_config"]["config_groups"]["group_0"]["weights"]["group_size"] = 32;
    c.write_config();
    EXPECT_HAS(c.load_error(), "weights: field 'group_size' is 32; NVFP4 has 16-element scale blocks");
  }
  {
    Ckpt c("modelopt");
    c.config["quantization_config"]["group_size"] = 32;
    c.write_config();
    EXPECT_HAS(c.load_error(), "field 'group_size' is 32");
  }
  {
    Ckpt c("compressed-tensors");
    c.config["quantization_config"]["quant_method"] = "gptq";
    c.write_config();
    EXPECT_HAS(c.load_error(), "quantization_config: field 'quant_method' is 'gptq'");
  }
  {
    Ckpt c("modelopt");
    c.config["quantization_config"]["quant_algo"] = "INT4_AWQ";
    c.write_config();
    EXPECT_HAS(c.load_error(), "field 'quant_algo' is 'INT4_AWQ'");
  }
  {  // ModelOpt tensors under a compressed-tensors config: the U8 'weight' is not weight_packed
    Ckpt mo("modelopt"), ct("compressed-tensors");
    mo.config = ct.config;
    mo.write_config();
    EXPECT_HAS(mo.load_error(), "tensor 'model.layers.0.mlp.down_proj.weight' is U8 [64, 48], not quantized");
  }
  {  // no quantization_config at all: U8 codes are no weight values
    Ckpt c("modelopt");
    c.config.erase("quantization_config");
    c.write_config();
    fs::remove(fs::path(c.dir()) / "hf_quant_config.json");
    EXPECT_HAS(c.load_error(), "tensor 'model.layers.0.mlp.down_proj.weight' has dtype U8, which holds no weight values");
  }
  {  // a truncated file
    Ckpt c("compressed-tensors");
    const auto size = fs::file_size(c.file());
    fs::resize_file(c.file(), size - 100);
    const std::string e = c.load_error();
    EXPECT_HAS(e, c.file());
    EXPECT_HAS(e, "run past the end of the data section");
  }
  {  // an ignore list naming a projection that is stored quantized (other engines would skip it)
    Ckpt c("compressed-tensors");
    c.config["quantization_config"]["ignore"] = {"lm_head", "model.layers.0.self_attn.q_proj"};
    c.write_config();
    EXPECT_HAS(c.load_error(), "quantization_config: field 'ignore' lists 'model.layers.0.self_attn.q_proj', but");
  }
  {  // a group that targets nothing
    Ckpt c("compressed-tensors");
    c.config["quantization_config"]["config_groups"]["group_0"]["targets"] = nlohmann::json::array();
    c.write_config();
    EXPECT_HAS(c.load_error(), "group_0: field 'targets' must be a non-empty list");
  }
  {  // the top-level format contradicting the group's
    Ckpt c("compressed-tensors");
    c.config["quantization_config"]["format"] = "float-quantized";
    c.write_config();
    EXPECT_HAS(c.load_error(), "quantization_config: field 'format' is 'float-quantized' but");
  }
  {  // sharq's marker naming a scheme the stored tensors are not (W32 sharq over NVFP4-16 data)
    Ckpt c("compressed-tensors");
    c.config["quantization_config"]["sharq"] = {{"scheme", "sharq"}};
    c.write_config();
    EXPECT_HAS(c.load_error(), "sharq: field 'scheme' is 'sharq', but the stored weights are NVFP4 with 16-element scale blocks");
  }
  {  // a key given twice in config.json
    Ckpt c("compressed-tensors");
    std::string text = c.config.dump();
    const size_t at = text.find("\"quantization_config\"");
    ASSERT_NE(at, std::string::npos);
    text.insert(at, "\"vocab_size\": 7, ");
    std::ofstream(fs::path(c.dir()) / "config.json") << text;
    EXPECT_HAS(c.load_error(), "the key \"vocab_size\" appears twice in one object");
  }
  {  // the ModelOpt <= 0.29 layout: hf_quant_config.json alone is enough
    Ckpt c("modelopt");
    c.config.erase("quantization_config");
    c.write_config();
    const ModelWeights w = load_model_weights(c.dir());
    EXPECT_EQ(w.quantization.format, CheckpointFormat::modelopt);
    EXPECT_EQ(w.quantization.weights, StoredWeights::nvfp4_16);
  }
}

}  // namespace
