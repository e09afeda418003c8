// ModelWeights loaders: the real sharq-lm-30m (sharded bf16 safetensors) and stories260K (llama2.c)
// load with the right config, names and shapes, viewed in place in their mapped files (no copy),
// and their values match an independent decode of the raw bytes; synthesized files cover F32/F16/BF16, untied llama2.c classifiers and sharding;
// corrupt files (truncated, lengths and offsets past EOF, wrong sizes, unsupported dtypes, missing
// files, shards and tensors, nonsense headers) throw CheckpointError naming the file and the
// field or tensor.
#include "sharq/model/weights.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <unistd.h>

#include "sharq/formats/minifloat.h"
#include "sharq/model/safetensors.h"

namespace {

namespace fs = std::filesystem;
using sharq::ModelWeights;
using sharq::CheckpointError;
using sharq::TensorView;
using sharq::to_f32;

const std::string kModels = std::string(SHARQ_SOURCE_DIR) + "/../shared/models";
const std::string kLm30m = kModels + "/sharq-lm-30m";
const std::string kStories = kModels + "/stories260K/stories260K.bin";

#define SKIP_WITHOUT(path) \
  if (!fs::exists(path)) GTEST_SKIP() << "shared model data not found at " << (path) << " (it lives in ../shared next to the repo)"

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void write_bytes(const fs::path& path, const std::vector<uint8_t>& b) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  ASSERT_TRUE(f.good()) << path;
}

void write_text(const fs::path& path, const std::string& s) { write_bytes(path, std::vector<uint8_t>(s.begin(), s.end())); }

// A fresh directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            ("sharq_ckpt_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" + (info ? info->name() : "x"));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }
  std::string str(const std::string& child) const { return (path_ / child).string(); }

 private:
  fs::path path_;
};

// --- independent encoders / decoders of the two formats ------------------------------------------

std::vector<uint8_t> safetensors_bytes(const std::string& header, const std::vector<uint8_t>& data) {
  std::string s;
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>(static_cast<uint64_t>(header.size()) >> (8 * i)));
  s += header;
  s.append(data.begin(), data.end());
  return std::vector<uint8_t>(s.begin(), s.end());
}

void put_u32(std::vector<uint8_t>& b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void put_u16(std::vector<uint8_t>& b, uint16_t v) {
  b.push_back(static_cast<uint8_t>(v));
  b.push_back(static_cast<uint8_t>(v >> 8));
}
uint32_t get_u32(const uint8_t* p) { return p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<uint32_t>(p[3]) << 24); }

// Byte range [begin, end) of `tensor` in a safetensors file, found by plain text search of the
// header (not through the loader's JSON parsing), relative to the start of the file.
std::pair<uint64_t, uint64_t> raw_range(const std::vector<uint8_t>& file, const std::string& tensor) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | file[i];
  const std::string header(file.begin() + 8, file.begin() + 8 + static_cast<long>(n));
  const size_t key = header.find("\"" + tensor + "\"");
  EXPECT_NE(key, std::string::npos) << tensor;
  const size_t offs = header.find("\"data_offsets\":[", key);
  EXPECT_LT(offs, header.find('}', key)) << tensor;
  const size_t p = offs + std::strlen("\"data_offsets\":[");
  const uint64_t begin = std::stoull(header.substr(p));
  const uint64_t end = std::stoull(header.substr(header.find(',', p) + 1));
  return {8 + n + begin, 8 + n + end};
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const CheckpointError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no CheckpointError thrown";
  return {};
}

#define EXPECT_HAS(msg, part) EXPECT_NE((msg).find(part), std::string::npos) << "'" << (part) << "' not in: " << (msg)

// =================================================================================================
// sharq-lm-30m: 5 bf16 shards + index

std::vector<std::pair<std::string, std::vector<int64_t>>> lm30m_expected_tensors() {
  std::vector<std::pair<std::string, std::vector<int64_t>>> t = {{"model.embed_tokens.weight", {4096, 512}},
                                                                  {"model.norm.weight", {512}},
                                                                  {"lm_head.weight", {4096, 512}}};
  for (int i = 0; i < 8; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    t.push_back({p + "input_layernorm.weight", {512}});
    t.push_back({p + "self_attn.q_proj.weight", {512, 512}});
    t.push_back({p + "self_attn.k_proj.weight", {256, 512}});
    t.push_back({p + "self_attn.v_proj.weight", {256, 512}});
    t.push_back({p + "self_attn.o_proj.weight", {512, 512}});
    t.push_back({p + "post_attention_layernorm.weight", {512}});
    t.push_back({p + "mlp.gate_proj.weight", {1536, 512}});
    t.push_back({p + "mlp.up_proj.weight", {1536, 512}});
    t.push_back({p + "mlp.down_proj.weight", {512, 1536}});
  }
  return t;
}

TEST(HfCheckpoint, SharqLm30mLoadsEveryTensorWithItsShape) {
  SKIP_WITHOUT(kLm30m);
  const ModelWeights ck = sharq::load_hf_weights(kLm30m);
  EXPECT_EQ(ck.source, kLm30m);
  EXPECT_EQ(ck.config.arch, sharq::Arch::llama);
  EXPECT_EQ(ck.config.hidden_size, 512);
  EXPECT_EQ(ck.config.num_kv_heads, 4);
  EXPECT_EQ(ck.config.head_dim, 64);
  EXPECT_FALSE(ck.config.tie_word_embeddings);
  EXPECT_FALSE(ck.config.rope_interleaved);

  const auto expected = lm30m_expected_tensors();
  EXPECT_EQ(ck.tensors.size(), expected.size());
  int64_t params = 0;
  for (const auto& [name, shape] : expected) {
    ASSERT_TRUE(ck.has(name)) << name;
    const TensorView& t = ck.get(name, shape);  // throws on a shape mismatch
    EXPECT_STREQ(sharq::to_string(t.dtype), "BF16") << name;
    EXPECT_EQ(t.bytes, static_cast<size_t>(t.numel()) * 2) << name;
    params += t.numel();
  }
  EXPECT_EQ(params, 29368832);  // the model card's parameter count
  // viewed in place: the five shards are mapped, nothing is copied
  EXPECT_EQ(ck.owned_bytes(), 0u);
  size_t shard_bytes = 0;
  for (const auto& e : fs::directory_iterator(kLm30m))
    if (e.path().extension() == ".safetensors") shard_bytes += fs::file_size(e.path());
  EXPECT_EQ(ck.mapped_bytes(), shard_bytes);
}

TEST(HfCheckpoint, SharqLm30mValuesMatchRawBf16Bytes) {
  SKIP_WITHOUT(kLm30m);
  const ModelWeights ck = sharq::load_hf_weights(kLm30m);
  // tensor -> shard, read from the index by text search
  const std::vector<uint8_t> index = read_bytes(kLm30m + "/model.safetensors.index.json");
  const std::string index_text(index.begin(), index.end());
  std::mt19937_64 rng(42);
  int checked = 0;
  for (const char* name : {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.up_proj.weight",
                           "model.layers.3.self_attn.k_proj.weight", "model.layers.7.mlp.down_proj.weight",
                           "model.layers.5.post_attention_layernorm.weight", "model.norm.weight", "lm_head.weight"}) {
    const size_t key = index_text.find(std::string("\"") + name + "\": \"");
    ASSERT_NE(key, std::string::npos) << name;
    const size_t q = key + std::strlen(name) + 5;
    const std::string shard = index_text.substr(q, index_text.find('"', q) - q);
    const std::vector<uint8_t> file = read_bytes(kLm30m + "/" + shard);
    const auto [begin, end] = raw_range(file, name);
    const std::vector<float> t = to_f32(ck.tensors.at(name));
    ASSERT_EQ(end - begin, t.size() * 2) << name;
    std::vector<size_t> idx = {0, 1, t.size() / 2, t.size() - 1};
    for (int k = 0; k < 64; ++k) idx.push_back(rng() % t.size());
    for (size_t i : idx) {
      const uint16_t raw = static_cast<uint16_t>(file[begin + 2 * i] | (file[begin + 2 * i + 1] << 8));
      ASSERT_EQ(sharq::f32_bits(t[i]), static_cast<uint32_t>(raw) << 16) << name << "[" << i << "]";
      ++checked;
    }
  }
  EXPECT_EQ(checked, 8 * 68);
  // a trained model, not zeros: RMSNorm gains are O(1), weights small and signed
  const std::vector<float> norm = to_f32(ck.tensors.at("model.norm.weight"));
  double mean = 0;
  for (float v : norm) mean += v;
  EXPECT_GT(mean / norm.size(), 0.1);
}

TEST(HfCheckpoint, DispatchLoadsADirectoryAsHuggingFace) {
  SKIP_WITHOUT(kLm30m);
  const ModelWeights ck = sharq::load_model_weights(kLm30m);
  EXPECT_EQ(ck.config.vocab_size, 4096);
  EXPECT_TRUE(ck.has("lm_head.weight"));
}

// A model directory with the real config.json and index, and symlinks to the real shards.
void link_lm30m(const fs::path& dir, bool with_index = true, int skip_shard = 0) {
  for (const auto& e : fs::directory_iterator(kLm30m)) {
    const std::string n = e.path().filename().string();
    if (!with_index && n == "model.safetensors.index.json") continue;
    if (skip_shard && n == "model-0000" + std::to_string(skip_shard) + "-of-00005.safetensors") continue;
    fs::create_symlink(e.path(), dir / n);
  }
}

TEST(HfCheckpoint, MissingShardIsNamed) {
  SKIP_WITHOUT(kLm30m);
  TempDir tmp;
  link_lm30m(tmp.path(), true, 3);
  const std::string msg = error_of([&] { sharq::load_hf_weights(tmp.path().string()); });
  EXPECT_HAS(msg, tmp.str("model-00003-of-00005.safetensors"));
  EXPECT_HAS(msg, "shard file is missing");
}

TEST(HfCheckpoint, TensorMissingFromItsShardIsNamed) {
  SKIP_WITHOUT(kLm30m);
  TempDir tmp;
  link_lm30m(tmp.path(), false);
  const std::vector<uint8_t> index = read_bytes(kLm30m + "/model.safetensors.index.json");
  std::string text(index.begin(), index.end());
  const std::string anchor = "\"weight_map\": {";
  ASSERT_NE(text.find(anchor), std::string::npos);
  text.insert(text.find(anchor) + anchor.size(), "\n    \"model.layers.0.mlp.extra.weight\": \"model-00002-of-00005.safetensors\",");
  write_text(tmp.path() / "model.safetensors.index.json", text);
  const std::string msg = error_of([&] { sharq::load_hf_weights(tmp.path().string()); });
  EXPECT_HAS(msg, tmp.str("model-00002-of-00005.safetensors"));
  EXPECT_HAS(msg, "tensor 'model.layers.0.mlp.extra.weight' is missing");
}

TEST(HfCheckpoint, MissingConfigJsonIsNamed) {
  SKIP_WITHOUT(kLm30m);
  TempDir tmp;
  link_lm30m(tmp.path());
  fs::remove(tmp.path() / "config.json");
  const std::string msg = error_of([&] { sharq::load_hf_weights(tmp.path().string()); });
  EXPECT_HAS(msg, tmp.str("config.json"));
  EXPECT_HAS(msg, "missing");
}

TEST(HfCheckpoint, TruncatedRealShardsNameFileAndField) {
  SKIP_WITHOUT(kLm30m);
  const std::string shard = kLm30m + "/model-00001-of-00005.safetensors";
  const std::vector<uint8_t> full = read_bytes(shard);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | full[i];
  ASSERT_EQ(hlen, 1872u);
  struct Cut {
    size_t n;
    const char* expect;
  };
  const std::vector<Cut> cuts = {{0, "too short for the 8-byte safetensors header length"},
                                 {5, "too short"},
                                 {8, "header length 1872 runs past the end of the file (8 bytes)"},
                                 {8 + hlen / 2, "header length 1872 runs past the end"},
                                 {8 + hlen - 1, "runs past the end"},
                                 {8 + hlen, "data_offsets"},
                                 {8 + hlen + 1000, "data_offsets"},
                                 {full.size() / 2, "data_offsets"},
                                 {full.size() - 1, "data_offsets"}};
  TempDir tmp;
  for (const Cut& c : cuts) {
    const std::string path = tmp.str("cut_" + std::to_string(c.n) + ".safetensors");
    write_bytes(path, std::vector<uint8_t>(full.begin(), full.begin() + static_cast<long>(c.n)));
    const std::string msg = error_of([&] { sharq::open_safetensors(path); });
    EXPECT_HAS(msg, path + ": ");
    EXPECT_HAS(msg, c.expect);
    if (c.n >= 8 + hlen) {  // names the first tensor (by name) whose bytes are cut off
      const size_t t = msg.find("tensor 'model.");
      ASSERT_NE(t, std::string::npos) << msg;
      EXPECT_LT(t, msg.find("': data_offsets [")) << msg;
      EXPECT_HAS(msg, "run past the end of the data section");
    }
  }
  // the header length field itself claiming more than the file holds
  std::vector<uint8_t> bad = full;
  const uint64_t too_long = full.size() - 7;
  for (int i = 0; i < 8; ++i) bad[i] = static_cast<uint8_t>(too_long >> (8 * i));
  const std::string msg = error_of([&] { sharq::parse_safetensors(bad.data(), bad.size(), "shard1"); });
  EXPECT_HAS(msg, "shard1: header length " + std::to_string(too_long) + " runs past the end of the file");
}

// =================================================================================================
// Synthesized safetensors

TEST(Safetensors, ConvertsF32F16Bf16AndKeepsShapes) {
  std::vector<uint8_t> data;
  const std::vector<float> f32 = {1.5f, -2.25f, 3.0e-30f, 65504.0f, -0.0f, 7.0f};
  for (float v : f32) put_u32(data, sharq::f32_bits(v));                   // [0, 24)
  const std::vector<uint16_t> f16 = {0x3C00, 0xC000, 0x0001, 0x7BFF};     // 1, -2, 2^-24, 65504
  for (uint16_t v : f16) put_u16(data, v);                                // [24, 32)
  const std::vector<uint16_t> bf16 = {0x3F80, 0xC040, 0x7F80, 0x0001};   // 1, -3, inf, tiny subnormal
  for (uint16_t v : bf16) put_u16(data, v);                               // [32, 40)
  const std::string header = R"({"__metadata__": {"format": "pt"},
      "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
      "b": {"dtype": "F16", "shape": [4], "data_offsets": [24, 32]},
      "c.weight": {"dtype": "BF16", "shape": [2, 1, 2], "data_offsets": [32, 40]},
      "empty": {"dtype": "F32", "shape": [0, 1000000], "data_offsets": [40, 40]},
      "scalar": {"dtype": "BF16", "shape": [], "data_offsets": [40, 42]}}   )";  // trailing spaces: allowed padding
  data.push_back(0x80);  // scalar: bf16 0x3F80 = 1
  data.push_back(0x3F);
  const std::vector<uint8_t> file = safetensors_bytes(header, data);
  const auto t = sharq::parse_safetensors(file.data(), file.size(), "mem");
  ASSERT_EQ(t.size(), 5u);
  EXPECT_EQ(t.at("a").shape, (std::vector<int64_t>{2, 3}));
  EXPECT_STREQ(sharq::to_string(t.at("a").dtype), "F32");
  EXPECT_EQ(t.at("a").data, file.data() + 8 + header.size());  // a view into the input, not a copy
  for (size_t i = 0; i < f32.size(); ++i) EXPECT_EQ(sharq::f32_bits(to_f32(t.at("a"))[i]), sharq::f32_bits(f32[i])) << i;
  EXPECT_STREQ(sharq::to_string(t.at("b").dtype), "F16");
  EXPECT_EQ(to_f32(t.at("b")), (std::vector<float>{1.0f, -2.0f, 5.9604644775390625e-08f, 65504.0f}));
  EXPECT_EQ(t.at("c.weight").shape, (std::vector<int64_t>{2, 1, 2}));
  EXPECT_STREQ(sharq::to_string(t.at("c.weight").dtype), "BF16");
  const std::vector<float> c = to_f32(t.at("c.weight"));
  EXPECT_EQ(c[0], 1.0f);
  EXPECT_EQ(c[1], -3.0f);
  EXPECT_TRUE(std::isinf(c[2]));
  EXPECT_EQ(sharq::f32_bits(c[3]), 0x00010000u);
  EXPECT_EQ(t.at("empty").numel(), 0);
  EXPECT_EQ(t.at("empty").bytes, 0u);
  EXPECT_TRUE(to_f32(t.at("empty")).empty());
  EXPECT_EQ(t.at("scalar").numel(), 1);
  EXPECT_EQ(to_f32(t.at("scalar")), std::vector<float>{1.0f});
}

std::string parse_error(const std::string& header, const std::vector<uint8_t>& data) {
  const std::vector<uint8_t> file = safetensors_bytes(header, data);
  return error_of([&] { sharq::parse_safetensors(file.data(), file.size(), "dir/w.safetensors"); });
}

TEST(Safetensors, RejectsOffsetsSizesAndDtypesNamingTheTensor) {
  const std::vector<uint8_t> d24(24, 0);
  struct Case {
    std::string header;
    std::vector<std::string> expect;
  };
  const std::vector<Case> cases = {
      {R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 28]}})",
       {"tensor 'w'", "data_offsets [0, 28] run past the end of the data section (24 bytes; truncated file?)"}},
      {R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [1000000, 1000004]}})", {"tensor 'w'", "data_offsets", "run past the end"}},
      {R"({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 24]}})",
       {"tensor 'w'", "shape [2, 2] x F32 is 16 bytes but data_offsets [0, 24] span 24"}},
      {R"({"w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 24]}})", {"tensor 'w'", "is 12 bytes but"}},
      {R"({"w": {"dtype": "F32", "shape": [7], "data_offsets": [0, 24]}})", {"tensor 'w'", "shape [7] x F32 needs more than the 24 bytes data_offsets [0, 24] span"}},
      {R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 4294967296], "data_offsets": [0, 24]}})",
       {"tensor 'w'", "needs more than the 24 bytes"}},
      {R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [24, 0]}})", {"tensor 'w'", "end before they begin"}},
      {R"({"w": {"dtype": "F32", "shape": [2, -3], "data_offsets": [0, 24]}})", {"tensor 'w'", "field 'shape'", "non-negative"}},
      {R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [-8, 16]}})", {"tensor 'w'", "data_offsets[0]"}},
      {R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0]}})", {"tensor 'w'", "field 'data_offsets'"}},
      {R"({"w": {"dtype": "F32", "shape": "2x3", "data_offsets": [0, 24]}})", {"tensor 'w'", "field 'shape' must be a list"}},
      {R"({"w": {"shape": [6], "data_offsets": [0, 24]}})", {"tensor 'w'", "field 'dtype' is missing"}},
      {R"({"w": {"dtype": "F32", "data_offsets": [0, 24]}})", {"tensor 'w'", "field 'shape' is missing"}},
      {R"({"w": {"dtype": "F32", "shape": [6]}})", {"tensor 'w'", "field 'data_offsets' is missing"}},
      {R"({"w": {"dtype": "I64", "shape": [3], "data_offsets": [0, 24]}})", {"tensor 'w' has unsupported dtype 'I64'"}},
      {R"({"w": {"dtype": "F64", "shape": [3], "data_offsets": [0, 24]}})", {"tensor 'w' has unsupported dtype 'F64'"}},
      {R"({"w": {"dtype": "F8_E5M2", "shape": [24], "data_offsets": [0, 24]}})", {"unsupported dtype 'F8_E5M2'"}},
      {R"({"w": {"dtype": "U8", "shape": [25], "data_offsets": [0, 24]}})", {"tensor 'w'", "shape [25] x U8 needs more than the 24 bytes"}},
      {R"({"w": {"dtype": "F8_E4M3", "shape": [2, 11], "data_offsets": [0, 24]}})", {"tensor 'w'", "is 22 bytes but"}},
      {R"({"w": {"dtype": 4, "shape": [6], "data_offsets": [0, 24]}})", {"tensor 'w'", "field 'dtype' must be a string"}},
      {R"({"w": [1, 2]})", {"tensor 'w'", "must be an object"}},
      {R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
           "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})", {"tensors 'a' and 'b' overlap"}},
      {R"([1, 2, 3])", {"header must be a JSON object"}},
      {R"({"w": {"dtype": "F32", )", {"header is not valid JSON"}},
  };
  for (const Case& c : cases) {
    const std::string msg = parse_error(c.header, d24);
    EXPECT_HAS(msg, "dir/w.safetensors: ");
    for (const std::string& e : c.expect) EXPECT_HAS(msg, e);
  }
  // a header length beyond the format's cap, even though the bytes are there
  std::vector<uint8_t> big(8 + sharq::kSafetensorsMaxHeaderBytes + 1, ' ');
  const uint64_t hl = sharq::kSafetensorsMaxHeaderBytes + 1;
  for (int i = 0; i < 8; ++i) big[i] = static_cast<uint8_t>(hl >> (8 * i));
  const std::string msg = error_of([&] { sharq::parse_safetensors(big.data(), big.size(), "big"); });
  EXPECT_HAS(msg, "big: header length 100000001 exceeds the format's limit");
}

// A tiny Llama config and weights: vocab 8, hidden 4, 1 layer, 2 heads.
const char* kTinyConfig = R"({"model_type": "llama", "vocab_size": 8, "hidden_size": 4, "intermediate_size": 8,
    "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 16, "tie_word_embeddings": TIE})";

std::string tiny_config(bool tie) {
  std::string s = kTinyConfig;
  s.replace(s.find("TIE"), 3, tie ? "true" : "false");
  return s;
}

// A safetensors file of F32 tensors (name, shape), each filled with `first + index`.
std::vector<uint8_t> f32_file(const std::vector<std::pair<std::string, std::vector<int64_t>>>& tensors, float first) {
  std::string entries;
  std::vector<uint8_t> data;
  float next = first;
  for (const auto& [name, shape] : tensors) {
    int64_t n = 1;
    std::string dims;
    for (int64_t d : shape) {
      n *= d;
      dims += fmt::format("{}{}", dims.empty() ? "" : ",", d);
    }
    const size_t begin = data.size();
    for (int64_t i = 0; i < n; ++i) put_u32(data, sharq::f32_bits(next++));
    entries += fmt::format(R"({}"{}":{{"dtype":"F32","shape":[{}],"data_offsets":[{},{}]}})", entries.empty() ? "" : ",", name, dims,
                           begin, data.size());
  }
  return safetensors_bytes("{" + entries + "}", data);
}

TEST(HfCheckpoint, ShardedDirectoryKeepsOnlyIndexedTensors) {
  TempDir tmp;
  write_text(tmp.path() / "config.json", tiny_config(false));
  write_bytes(tmp.path() / "s1.safetensors", f32_file({{"model.embed_tokens.weight", {8, 4}}, {"stray", {2}}}, 0.0f));
  write_bytes(tmp.path() / "s2.safetensors", f32_file({{"lm_head.weight", {8, 4}}, {"model.norm.weight", {4}}}, 100.0f));
  write_text(tmp.path() / "model.safetensors.index.json", R"({"metadata": {"total_size": 272}, "weight_map": {
      "model.embed_tokens.weight": "s1.safetensors", "lm_head.weight": "s2.safetensors", "model.norm.weight": "s2.safetensors"}})");
  const ModelWeights ck = sharq::load_hf_weights(tmp.path().string());
  EXPECT_EQ(ck.tensors.size(), 3u);
  EXPECT_FALSE(ck.has("stray"));
  EXPECT_EQ(to_f32(ck.get("model.embed_tokens.weight", {8, 4}))[31], 31.0f);
  EXPECT_EQ(to_f32(ck.get("lm_head.weight", {8, 4}))[0], 100.0f);
  EXPECT_EQ(to_f32(ck.get("model.norm.weight", {4}))[3], 135.0f);
  EXPECT_EQ(ck.config.vocab_size, 8);
}

// embed_tokens [8, 4] as F32 (values 0..31) and lm_head [8, 4] in `head_dtype` holding `head_first + i`.
std::vector<uint8_t> tied_pair_file(const std::string& head_dtype, float head_first) {
  std::vector<uint8_t> data;
  for (int i = 0; i < 32; ++i) put_u32(data, sharq::f32_bits(static_cast<float>(i)));
  for (int i = 0; i < 32; ++i) {
    const float v = head_first + static_cast<float>(i);
    if (head_dtype == "F32") put_u32(data, sharq::f32_bits(v));
    else put_u16(data, static_cast<uint16_t>(sharq::f32_bits(v) >> 16));  // BF16: exact for these small integers
  }
  return safetensors_bytes(fmt::format(R"({{"model.embed_tokens.weight":{{"dtype":"F32","shape":[8,4],"data_offsets":[0,128]}},
      "lm_head.weight":{{"dtype":"{}","shape":[8,4],"data_offsets":[128,{}]}}}})", head_dtype, data.size()), data);
}

TEST(HfCheckpoint, TiedEmbeddingsLeaveLmHeadAbsent) {
  TempDir tmp;
  write_text(tmp.path() / "config.json", tiny_config(true));
  for (const char* dtype : {"F32", "BF16"}) {  // a stored copy, in the same or another dtype, is dropped
    write_bytes(tmp.path() / "model.safetensors", tied_pair_file(dtype, 0.0f));
    const ModelWeights ck = sharq::load_hf_weights(tmp.path().string());
    EXPECT_TRUE(ck.config.tie_word_embeddings);
    EXPECT_TRUE(ck.has("model.embed_tokens.weight"));
    EXPECT_FALSE(ck.has("lm_head.weight"));  // lm_head() is embed_tokens: the executors' tying rule
    EXPECT_EQ(&ck.lm_head(), &ck.embed_tokens());
  }
  // a stored lm_head that is not a copy would be silently replaced by embed_tokens: an error
  write_bytes(tmp.path() / "model.safetensors", tied_pair_file("F32", 1.0f));
  EXPECT_HAS(error_of([&] { sharq::load_hf_weights(tmp.path().string()); }),
             tmp.path().string() + ": tensor 'lm_head.weight' differs from 'model.embed_tokens.weight' but config.json's "
                                   "tie_word_embeddings is true");

  // untied but no lm_head: cannot run
  write_text(tmp.path() / "config.json", tiny_config(false));
  write_bytes(tmp.path() / "model.safetensors", f32_file({{"model.embed_tokens.weight", {8, 4}}}, 0.0f));
  const std::string msg = error_of([&] { sharq::load_hf_weights(tmp.path().string()); });
  EXPECT_HAS(msg, tmp.path().string());
  EXPECT_HAS(msg, "tensor 'lm_head.weight' is missing and config.json's tie_word_embeddings is false");
}

TEST(HfCheckpoint, DirectoryErrorsNameFileAndField) {
  TempDir tmp;
  const std::string dir = tmp.path().string();
  // no config.json
  std::string msg = error_of([&] { sharq::load_hf_weights(dir); });
  EXPECT_HAS(msg, tmp.str("config.json") + ": missing");
  // unknown model_type
  write_text(tmp.path() / "config.json", R"({"model_type": "bert", "vocab_size": 8})");
  msg = error_of([&] { sharq::load_hf_weights(dir); });
  EXPECT_HAS(msg, tmp.str("config.json") + ": field 'model_type' is 'bert': unsupported");
  // no weights at all
  write_text(tmp.path() / "config.json", tiny_config(true));
  msg = error_of([&] { sharq::load_hf_weights(dir); });
  EXPECT_HAS(msg, dir + ": neither model.safetensors nor model.safetensors.index.json");
  // index naming a shard that is not there
  write_text(tmp.path() / "model.safetensors.index.json", R"({"weight_map": {"model.embed_tokens.weight": "s9.safetensors"}})");
  msg = error_of([&] { sharq::load_hf_weights(dir); });
  EXPECT_HAS(msg, tmp.str("s9.safetensors") + ": shard file is missing");
  EXPECT_HAS(msg, "model.embed_tokens.weight");
  // index naming a tensor its shard lacks
  write_bytes(tmp.path() / "s1.safetensors", f32_file({{"model.embed_tokens.weight", {8, 4}}}, 0.0f));
  write_text(tmp.path() / "model.safetensors.index.json",
             R"({"weight_map": {"model.embed_tokens.weight": "s1.safetensors", "model.norm.weight": "s1.safetensors"}})");
  msg = error_of([&] { sharq::load_hf_weights(dir); });
  EXPECT_HAS(msg, tmp.str("s1.safetensors") + ": tensor 'model.norm.weight' is missing from this shard");
  // index shapes
  write_text(tmp.path() / "model.safetensors.index.json", R"({"metadata": {}})");
  msg = error_of([&] { sharq::load_hf_weights(dir); });
  EXPECT_HAS(msg, tmp.str("model.safetensors.index.json") + ": field 'weight_map' is missing");
  write_text(tmp.path() / "model.safetensors.index.json", R"({"weight_map": {"model.norm.weight": "../s1.safetensors"}})");
  msg = error_of([&] { sharq::load_hf_weights(dir); });
  EXPECT_HAS(msg, "field 'weight_map' entry for tensor 'model.norm.weight'");
  write_text(tmp.path() / "model.safetensors.index.json", "{\"weight_map\": ");
  msg = error_of([&] { sharq::load_hf_weights(dir); });
  EXPECT_HAS(msg, tmp.str("model.safetensors.index.json") + ": not valid JSON");
  // a corrupt single-file checkpoint is named by its path
  fs::remove(tmp.path() / "model.safetensors.index.json");
  write_bytes(tmp.path() / "model.safetensors", safetensors_bytes(R"({"w": {"dtype": "BOOL", "shape": [1], "data_offsets": [0, 1]}})", {0}));
  msg = error_of([&] { sharq::load_hf_weights(dir); });
  EXPECT_HAS(msg, tmp.str("model.safetensors") + ": tensor 'w' has unsupported dtype 'BOOL'");
  // not a directory
  msg = error_of([&] { sharq::load_hf_weights(tmp.str("model.safetensors")); });
  EXPECT_HAS(msg, "not a directory");
}

// =================================================================================================
// llama2.c

struct L2cHeader {
  int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

std::vector<uint8_t> l2c_header_bytes(const L2cHeader& h) {
  std::vector<uint8_t> b;
  for (int32_t v : {h.dim, h.hidden_dim, h.n_layers, h.n_heads, h.n_kv_heads, h.vocab_size, h.seq_len}) put_u32(b, static_cast<uint32_t>(v));
  return b;
}

// Float offsets (from the end of the header) of each array in llama2.c's file order, written
// from run.c's layout independently of the loader.
struct L2cLayout {
  int64_t embed, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, wcls, total;
};
L2cLayout l2c_layout(const L2cHeader& h) {
  const int64_t dim = h.dim, hid = h.hidden_dim, L = h.n_layers, vocab = std::abs(static_cast<int64_t>(h.vocab_size));
  const int64_t hs = dim / h.n_heads, kv = h.n_kv_heads * hs;
  L2cLayout o{};
  int64_t p = 0;
  o.embed = p;     p += vocab * dim;
  o.rms_att = p;   p += L * dim;
  o.wq = p;        p += L * dim * dim;
  o.wk = p;        p += L * kv * dim;
  o.wv = p;        p += L * kv * dim;
  o.wo = p;        p += L * dim * dim;
  o.rms_ffn = p;   p += L * dim;
  o.w1 = p;        p += L * hid * dim;
  o.w2 = p;        p += L * dim * hid;
  o.w3 = p;        p += L * hid * dim;
  o.rms_final = p; p += dim;
  p += h.seq_len * hs;  // freq_cis_real + freq_cis_imag, seq_len * hs / 2 each
  o.wcls = p;
  if (h.vocab_size < 0) p += vocab * dim;
  o.total = p;
  return o;
}

TEST(Llama2cCheckpoint, Stories260kLoadsWithTiedClassifier) {
  SKIP_WITHOUT(kStories);
  const std::vector<uint8_t> file = read_bytes(kStories);
  L2cHeader h;
  std::memcpy(&h, file.data(), sizeof h);
  ASSERT_EQ(h.dim, 64);
  ASSERT_EQ(h.vocab_size, 512);
  const L2cLayout lay = l2c_layout(h);
  ASSERT_EQ(static_cast<size_t>(28 + 4 * lay.total), file.size());

  const ModelWeights ck = sharq::load_model_weights(kStories);  // a file dispatches to llama2.c
  EXPECT_EQ(ck.source, kStories);
  const sharq::ModelConfig& c = ck.config;
  EXPECT_EQ(c.arch, sharq::Arch::llama);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 172);
  EXPECT_EQ(c.num_layers, 5);
  EXPECT_EQ(c.num_heads, 8);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_position_embeddings, 512);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_TRUE(c.rope_interleaved);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_id, 2);
  EXPECT_EQ(c.rope_scaling.type, sharq::RopeScaling::Type::none);

  EXPECT_EQ(ck.tensors.size(), 1u + 5u * 9u + 1u);
  EXPECT_FALSE(ck.has("lm_head.weight"));
  int64_t params = 0;
  for (const auto& [name, t] : ck.tensors) {
    EXPECT_STREQ(sharq::to_string(t.dtype), "F32") << name;
    params += t.numel();
  }
  EXPECT_EQ(params, 260032);  // the model card's count: every weight once (tied classifier)

  // spot checks against the raw floats at independently computed offsets
  auto raw = [&](int64_t float_index) { return get_u32(file.data() + 28 + 4 * float_index); };
  const int64_t dim = 64, hid = 172, kv = 32;
  struct Probe {
    std::string name;
    std::vector<int64_t> shape;
    int64_t base;
  };
  std::vector<Probe> probes = {{"model.embed_tokens.weight", {512, 64}, lay.embed}, {"model.norm.weight", {64}, lay.rms_final}};
  for (int64_t l : {0, 2, 4}) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    probes.push_back({p + "input_layernorm.weight", {dim}, lay.rms_att + l * dim});
    probes.push_back({p + "self_attn.q_proj.weight", {dim, dim}, lay.wq + l * dim * dim});
    probes.push_back({p + "self_attn.k_proj.weight", {kv, dim}, lay.wk + l * kv * dim});
    probes.push_back({p + "self_attn.v_proj.weight", {kv, dim}, lay.wv + l * kv * dim});
    probes.push_back({p + "self_attn.o_proj.weight", {dim, dim}, lay.wo + l * dim * dim});
    probes.push_back({p + "post_attention_layernorm.weight", {dim}, lay.rms_ffn + l * dim});
    probes.push_back({p + "mlp.gate_proj.weight", {hid, dim}, lay.w1 + l * hid * dim});
    probes.push_back({p + "mlp.down_proj.weight", {dim, hid}, lay.w2 + l * dim * hid});
    probes.push_back({p + "mlp.up_proj.weight", {hid, dim}, lay.w3 + l * hid * dim});
  }
  std::mt19937_64 rng(3);
  for (const Probe& pr : probes) {
    const std::vector<float> t = to_f32(ck.get(pr.name, pr.shape));
    EXPECT_EQ(static_cast<int64_t>(t.size()), ck.get(pr.name, pr.shape).numel());
    const int64_t numel = static_cast<int64_t>(t.size());
    std::vector<int64_t> idx = {0, numel - 1};
    for (int k = 0; k < 16; ++k) idx.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(numel)));
    for (int64_t i : idx) ASSERT_EQ(sharq::f32_bits(t[static_cast<size_t>(i)]), raw(pr.base + i)) << pr.name << "[" << i << "]";
  }
  // a trained model: the RMSNorm gains are not the llama2.c initialization (all ones)
  const std::vector<float> g = to_f32(ck.get("model.layers.0.input_layernorm.weight", {64}));
  EXPECT_NE(std::count(g.begin(), g.end(), 1.0f), 64);
  // viewed in place: the mapped file is all the memory the weights use
  EXPECT_EQ(ck.owned_bytes(), 0u);
  EXPECT_EQ(ck.mapped_bytes(), file.size());
  EXPECT_NE(sharq::f32_in_place(ck.embed_tokens()), nullptr);
}

TEST(Llama2cCheckpoint, UntiedClassifierComesAfterTheRopeTables) {
  // every float is its own index, so each tensor's first element tells where it was read from
  const L2cHeader h{8, 12, 2, 4, 2, -10, 6};  // head size 2, kv_dim 4, untied vocab 10
  const L2cLayout lay = l2c_layout(h);
  std::vector<uint8_t> file = l2c_header_bytes(h);
  for (int64_t i = 0; i < lay.total; ++i) put_u32(file, sharq::f32_bits(static_cast<float>(i)));
  const ModelWeights ck = sharq::parse_llama2c(file.data(), file.size(), "untied.bin");
  EXPECT_FALSE(ck.config.tie_word_embeddings);
  EXPECT_EQ(ck.config.vocab_size, 10);
  EXPECT_EQ(ck.config.head_dim, 2);
  EXPECT_EQ(ck.tensors.size(), 1u + 2u * 9u + 2u);
  EXPECT_EQ(to_f32(ck.get("lm_head.weight", {10, 8}))[0], static_cast<float>(lay.wcls));
  EXPECT_EQ(to_f32(ck.get("lm_head.weight", {10, 8}))[79], static_cast<float>(lay.wcls + 79));
  EXPECT_EQ(to_f32(ck.get("model.embed_tokens.weight", {10, 8}))[5], 5.0f);
  EXPECT_EQ(to_f32(ck.get("model.layers.1.input_layernorm.weight", {8}))[0], static_cast<float>(lay.rms_att + 8));
  EXPECT_EQ(to_f32(ck.get("model.layers.1.self_attn.q_proj.weight", {8, 8}))[0], static_cast<float>(lay.wq + 64));
  EXPECT_EQ(to_f32(ck.get("model.layers.1.self_attn.k_proj.weight", {4, 8}))[0], static_cast<float>(lay.wk + 32));
  EXPECT_EQ(to_f32(ck.get("model.layers.0.self_attn.v_proj.weight", {4, 8}))[31], static_cast<float>(lay.wv + 31));
  EXPECT_EQ(to_f32(ck.get("model.layers.1.self_attn.o_proj.weight", {8, 8}))[0], static_cast<float>(lay.wo + 64));
  EXPECT_EQ(to_f32(ck.get("model.layers.1.post_attention_layernorm.weight", {8}))[0], static_cast<float>(lay.rms_ffn + 8));
  EXPECT_EQ(to_f32(ck.get("model.layers.1.mlp.gate_proj.weight", {12, 8}))[0], static_cast<float>(lay.w1 + 96));
  EXPECT_EQ(to_f32(ck.get("model.layers.1.mlp.down_proj.weight", {8, 12}))[0], static_cast<float>(lay.w2 + 96));
  EXPECT_EQ(to_f32(ck.get("model.layers.1.mlp.up_proj.weight", {12, 8}))[95], static_cast<float>(lay.w3 + 96 + 95));
  EXPECT_EQ(to_f32(ck.get("model.norm.weight", {8}))[7], static_cast<float>(lay.rms_final + 7));
}

TEST(Llama2cCheckpoint, BytesAtAnOddAddressAreCopiedOnceAndReadTheSame) {
  const L2cHeader h{8, 12, 2, 4, 2, 10, 6};
  const L2cLayout lay = l2c_layout(h);
  std::vector<uint8_t> file = l2c_header_bytes(h);
  for (int64_t i = 0; i < lay.total; ++i) put_u32(file, sharq::f32_bits(static_cast<float>(i)));
  std::vector<uint8_t> shifted(file.size() + 1);
  std::copy(file.begin(), file.end(), shifted.begin() + 1);
  const ModelWeights in_place = sharq::parse_llama2c(file.data(), file.size(), "a.bin");
  const ModelWeights copied = sharq::parse_llama2c(shifted.data() + 1, file.size(), "b.bin");
  EXPECT_EQ(in_place.owned_bytes(), 0u);
  EXPECT_EQ(copied.owned_bytes(), file.size());
  for (const auto& [name, view] : in_place.tensors) {
    const TensorView& other = copied.tensors.at(name);
    EXPECT_NE(sharq::f32_in_place(other), nullptr) << name;
    EXPECT_EQ(to_f32(view), to_f32(other)) << name;
  }
}

std::string l2c_error(const std::vector<uint8_t>& b, const std::string& name = "m.bin") {
  return error_of([&] { sharq::parse_llama2c(b.data(), b.size(), name); });
}

TEST(Llama2cCheckpoint, TruncatedOrPaddedFilesAreRejected) {
  SKIP_WITHOUT(kStories);
  const std::vector<uint8_t> full = read_bytes(kStories);
  TempDir tmp;
  struct Cut {
    size_t n;
    const char* expect;
  };
  const L2cLayout lay = l2c_layout({64, 172, 5, 8, 4, 512, 512});
  const std::vector<Cut> cuts = {{0, "too short for the 28-byte llama2.c header"},
                                 {27, "too short"},
                                 {28, "ends inside 'token_embedding_table'"},
                                 {1000, "ends inside 'token_embedding_table'"},
                                 {static_cast<size_t>(28 + 4 * lay.wk + 4), "ends inside 'wk'"},
                                 {static_cast<size_t>(28 + 4 * lay.w2 + 100), "ends inside 'w2'"},
                                 {full.size() - 1, "ends inside 'freq_cis_imag'"}};
  for (const Cut& c : cuts) {
    const std::string path = tmp.str("cut_" + std::to_string(c.n) + ".bin");
    write_bytes(path, std::vector<uint8_t>(full.begin(), full.begin() + static_cast<long>(c.n)));
    const std::string msg = error_of([&] { sharq::load_llama2c_weights(path); });
    EXPECT_HAS(msg, path + ": ");
    EXPECT_HAS(msg, c.expect);
    if (c.n >= 28) {
      EXPECT_HAS(msg, "truncated: the header (dim=64, hidden_dim=172, n_layers=5, n_heads=8, n_kv_heads=4, vocab_size=512, "
                      "seq_len=512) needs 1056540 bytes");
    }
  }
  std::vector<uint8_t> padded = full;
  padded.insert(padded.end(), 8, 0);
  EXPECT_HAS(l2c_error(padded), "m.bin: 8 bytes follow the weights");
  // a tied file read as untied (negative vocab) needs the classifier after the RoPE tables
  std::vector<uint8_t> untied = full;
  const uint32_t neg = static_cast<uint32_t>(-512);
  std::memcpy(untied.data() + 20, &neg, 4);
  EXPECT_HAS(l2c_error(untied), "ends inside 'wcls'");
}

TEST(Llama2cCheckpoint, NonsenseHeadersNameTheField) {
  const std::vector<uint8_t> weights(4096, 0);
  auto with = [&](const L2cHeader& h) {
    std::vector<uint8_t> b = l2c_header_bytes(h);
    b.insert(b.end(), weights.begin(), weights.end());
    return b;
  };
  const L2cHeader ok{64, 172, 5, 8, 4, 512, 512};
  struct Case {
    L2cHeader h;
    std::string expect;
  };
  std::vector<Case> cases;
  auto mut = [&](auto edit, const std::string& expect) {
    L2cHeader h = ok;
    edit(h);
    cases.push_back({h, expect});
  };
  mut([](L2cHeader& h) { h.dim = 0; }, "header field 'dim' is 0, must be positive");
  mut([](L2cHeader& h) { h.hidden_dim = -172; }, "header field 'hidden_dim' is -172");
  mut([](L2cHeader& h) { h.n_layers = 0; }, "header field 'n_layers' is 0");
  mut([](L2cHeader& h) { h.n_heads = -8; }, "header field 'n_heads' is -8");
  mut([](L2cHeader& h) { h.n_kv_heads = 0; }, "header field 'n_kv_heads' is 0");
  mut([](L2cHeader& h) { h.vocab_size = 0; }, "header field 'vocab_size' is 0");
  mut([](L2cHeader& h) { h.seq_len = -1; }, "header field 'seq_len' is -1");
  mut([](L2cHeader& h) { h.n_heads = 3; }, "header field 'n_heads' (3) does not divide 'dim' (64)");
  mut([](L2cHeader& h) { h.n_kv_heads = 3; }, "header field 'n_kv_heads' (3) does not divide 'n_heads' (8)");
  mut([](L2cHeader& h) { h.n_kv_heads = 16; }, "header field 'n_kv_heads' (16) does not divide 'n_heads' (8)");
  mut([](L2cHeader& h) { h.n_heads = 64; h.n_kv_heads = 64; }, "head size 1; RoPE needs an even one");
  mut([](L2cHeader& h) { h.n_layers = 2147483647; }, "truncated");
  mut([](L2cHeader& h) { h.vocab_size = -2147483647 - 1; }, "truncated");
  // products past 2^64: dim 2^30 with one head, 2^31-1 layers
  mut([](L2cHeader& h) { h.dim = 1 << 30; h.n_heads = 1; h.n_kv_heads = 1; h.n_layers = 2147483647; }, "overflow");
  // each array fits in 2^64 floats, their bytes together do not
  mut([](L2cHeader& h) { h.dim = 1 << 20; h.n_heads = 2; h.n_kv_heads = 1; h.n_layers = 1 << 23; }, "describes more than 2^64 bytes");
  for (const Case& c : cases) {
    const std::string msg = l2c_error(with(c.h), "bad.bin");
    EXPECT_HAS(msg, "bad.bin: ");
    EXPECT_HAS(msg, c.expect);
  }
  std::vector<uint8_t> v1 = with(ok);
  const uint32_t magic = 0x616b3432;
  std::memcpy(v1.data(), &magic, 4);
  EXPECT_HAS(l2c_error(v1, "v1.bin"), "v1.bin: llama2.c export version 1+ (magic 'ak42') is not supported");
}

// =================================================================================================
// ModelWeights::get, TensorView::numel, dispatch

TEST(ModelWeights, GetChecksTheShapeAndNamesBoth) {
  ModelWeights ck;
  ck.source = "some/model";
  const std::vector<float> values(12, 1.0f);
  TensorView t;
  t.name = "w";
  t.shape = {3, 4};
  t.data = reinterpret_cast<const uint8_t*>(values.data());
  t.bytes = 48;
  ck.tensors.emplace("w", t);
  EXPECT_EQ(&ck.get("w", {3, 4}), &ck.tensors.at("w"));
  std::string msg = error_of([&] { ck.get("w", {4, 3}); });
  EXPECT_HAS(msg, "some/model: tensor 'w' has shape [3, 4], expected [4, 3]");
  msg = error_of([&] { ck.get("w", {12}); });
  EXPECT_HAS(msg, "expected [12]");
  msg = error_of([&] { ck.get("model.norm.weight", {4}); });
  EXPECT_HAS(msg, "some/model: tensor 'model.norm.weight' is missing");
}

TEST(ModelWeights, NumelIsTheProductOfTheShape) {
  TensorView t;
  EXPECT_EQ(t.numel(), 1);  // a scalar
  t.shape = {2, 3, 4};
  EXPECT_EQ(t.numel(), 24);
  t.shape = {5, 0};
  EXPECT_EQ(t.numel(), 0);
}

TEST(ModelWeights, DispatchNamesAMissingPath) {
  const std::string msg = error_of([&] { sharq::load_model_weights("/nonexistent/sharq/model"); });
  EXPECT_HAS(msg, "/nonexistent/sharq/model: no such file or directory");
  EXPECT_HAS(error_of([&] { sharq::load_llama2c_weights("/nonexistent/m.bin"); }), "/nonexistent/m.bin: no such file");
}

// =================================================================================================
// Every tensor consumed: leftovers the config does not use are an error naming them

// The tensors the tiny Llama config (kTinyConfig, with `layers` layers) reads, untied.
std::vector<std::pair<std::string, std::vector<int64_t>>> tiny_llama_tensors(int layers) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> t = {
      {"model.embed_tokens.weight", {8, 4}}, {"model.norm.weight", {4}}, {"lm_head.weight", {8, 4}}};
  for (int l = 0; l < layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    for (const char* n : {"input_layernorm.weight", "post_attention_layernorm.weight"}) t.push_back({p + n, {4}});
    for (const char* n : {"q_proj", "k_proj", "v_proj", "o_proj"}) t.push_back({p + "self_attn." + n + ".weight", {4, 4}});
    t.push_back({p + "mlp.gate_proj.weight", {8, 4}});
    t.push_back({p + "mlp.up_proj.weight", {8, 4}});
    t.push_back({p + "mlp.down_proj.weight", {4, 8}});
  }
  return t;
}

std::string tiny_config_with(const std::string& model_type, int layers) {
  std::string s = tiny_config(false);
  s.replace(s.find("\"llama\""), 7, "\"" + model_type + "\"");
  s.replace(s.find("\"num_hidden_layers\": 1"), 22, fmt::format("\"num_hidden_layers\": {}", layers));
  return s;
}

TEST(TensorsConsumed, ExactSetLoadsAndAStrayTensorIsNamed) {
  TempDir tmp;
  write_text(tmp.path() / "config.json", tiny_config_with("llama", 1));
  auto tensors = tiny_llama_tensors(1);
  write_bytes(tmp.path() / "model.safetensors", f32_file(tensors, 0.0f));
  const ModelWeights ok = sharq::load_hf_weights(tmp.path().string());
  EXPECT_EQ(ok.tensors.size(), tensors.size());
  EXPECT_NO_THROW(ok.layer(0));

  tensors.push_back({"model.foo.weight", {2}});
  write_bytes(tmp.path() / "model.safetensors", f32_file(tensors, 0.0f));
  const std::string msg = error_of([&] { sharq::load_model_weights(tmp.path().string()); });
  EXPECT_HAS(msg, tmp.path().string() + ": 1 tensor in the checkpoint is not used by its config: 'model.foo.weight'");
}

TEST(TensorsConsumed, FewerLayersInTheConfigThanInTheCheckpointIsAnError) {
  TempDir tmp;
  write_text(tmp.path() / "config.json", tiny_config_with("llama", 2));
  write_bytes(tmp.path() / "model.safetensors", f32_file(tiny_llama_tensors(4), 0.0f));
  const std::string msg = error_of([&] { sharq::load_hf_weights(tmp.path().string()); });
  EXPECT_HAS(msg, "18 tensors in the checkpoint are not used by its config: 'model.layers.2.");  // 2 layers x 9
  EXPECT_HAS(msg, "and 13 more");
  EXPECT_HAS(msg, "the checkpoint holds layers up to 3 but the config's layer count (num_hidden_layers) is 2");
  EXPECT_EQ(msg.find("model.layers.1."), std::string::npos) << msg;  // used layers are not listed
}

TEST(TensorsConsumed, RealSharqLm30mWithFourOfItsEightLayersIsRefused) {
  SKIP_WITHOUT(kLm30m);
  TempDir tmp;
  link_lm30m(tmp.path());
  const std::vector<uint8_t> cfg = read_bytes(kLm30m + "/config.json");
  std::string text(cfg.begin(), cfg.end());
  const size_t at = text.find("\"num_hidden_layers\": 8");
  ASSERT_NE(at, std::string::npos) << text;
  text.replace(at, 22, "\"num_hidden_layers\": 4");
  fs::remove(tmp.path() / "config.json");
  write_text(tmp.path() / "config.json", text);
  const std::string msg = error_of([&] { sharq::load_model_weights(tmp.path().string()); });
  EXPECT_HAS(msg, "36 tensors in the checkpoint are not used by its config");
  EXPECT_HAS(msg, "'model.layers.4.");
  EXPECT_HAS(msg, "layers up to 7 but the config's layer count (num_hidden_layers) is 4");
}

TEST(TensorsConsumed, Qwen2CheckpointRelabelledLlamaLeavesItsBiasesOver) {
  TempDir tmp;
  auto tensors = tiny_llama_tensors(1);
  for (const char* n : {"q_proj", "k_proj", "v_proj"}) tensors.push_back({fmt::format("model.layers.0.self_attn.{}.bias", n), {4}});
  write_bytes(tmp.path() / "model.safetensors", f32_file(tensors, 0.0f));
  write_text(tmp.path() / "config.json", tiny_config_with("qwen2", 1));
  const ModelWeights qwen2 = sharq::load_hf_weights(tmp.path().string());  // the right label: every tensor used
  EXPECT_NE(qwen2.layer(0).q_bias, nullptr);

  fs::remove(tmp.path() / "config.json");
  write_text(tmp.path() / "config.json", tiny_config_with("llama", 1));
  const std::string msg = error_of([&] { sharq::load_hf_weights(tmp.path().string()); });
  EXPECT_HAS(msg, "3 tensors in the checkpoint are not used by its config: 'model.layers.0.self_attn.k_proj.bias', "
                  "'model.layers.0.self_attn.q_proj.bias', 'model.layers.0.self_attn.v_proj.bias'");
  EXPECT_HAS(msg, "the config's architecture (llama) has no such biases: is its model_type right?");
}

TEST(TensorsConsumed, IgnorableBuffersAndScalesAreAcceptedAndKept) {
  TempDir tmp;
  auto tensors = tiny_llama_tensors(1);
  tensors.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", {1}});
  tensors.push_back({"model.layers.0.self_attn.q_proj.input_scale", {}});
  tensors.push_back({"model.layers.0.self_attn.k_scale", {}});
  tensors.push_back({"model.layers.0.self_attn.v_scale", {}});
  write_text(tmp.path() / "config.json", tiny_config_with("llama", 1));
  write_bytes(tmp.path() / "model.safetensors", f32_file(tensors, 0.0f));
  const ModelWeights ck = sharq::load_hf_weights(tmp.path().string());
  EXPECT_TRUE(ck.has("model.layers.0.self_attn.k_scale"));
  for (const char* n : {"model.layers.0.self_attn.rotary_emb.inv_freq", "x.input_scale", "a.k_scale", "a.v_scale", "a.kv_scale"})
    EXPECT_TRUE(sharq::is_ignorable_tensor(n)) << n;
  // not on the list: names that merely resemble it, and anything that would change the weights
  for (const char* n : {"model.layers.0.self_attn.q_proj.weight_scale", "inv_freq", "model.layers.0.k_scale.weight", "k_scale"})
    EXPECT_FALSE(sharq::is_ignorable_tensor(n)) << n;
}

TEST(TensorsConsumed, LayerIndicesAreParsedStrictly) {
  ModelWeights w;
  w.config = sharq::read_hf_config(std::string(SHARQ_SOURCE_DIR) + "/tests/data/tiny/llama3/config.json");
  ASSERT_EQ(w.config.num_layers, 2);
  EXPECT_TRUE(w.uses("model.layers.1.mlp.up_proj.weight"));
  for (const char* n : {"model.layers.2.mlp.up_proj.weight", "model.layers.01.mlp.up_proj.weight", "model.layers.-1.mlp.up_proj.weight",
                        "model.layers..mlp.up_proj.weight", "model.layers.1mlp.up_proj.weight", "model.layers.1.mlp.up_proj.bias",
                        "model.layers.99999999999999999999.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.bias",
                        "model.layers.1.mlp.gate.weight", "model.layers.1.mlp.experts.0.up_proj.weight"})
    EXPECT_FALSE(w.uses(n)) << n;
  w.config.tie_word_embeddings = true;
  EXPECT_FALSE(w.uses("lm_head.weight"));
  w.config.tie_word_embeddings = false;
  EXPECT_TRUE(w.uses("lm_head.weight"));
}

// uses() mirrors layer(), embed_tokens(), final_norm() and lm_head(): on every tiny architecture,
// every view they return is a used name, and every tensor of the checkpoint is returned by one.
TEST(TensorsConsumed, UsesAgreesWithLayerOnEveryTinyArchitecture) {
  for (const char* arch : {"llama2_tied", "llama3", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe"}) {
    SCOPED_TRACE(arch);
    const ModelWeights w = sharq::load_model_weights(std::string(SHARQ_SOURCE_DIR) + "/tests/data/tiny/" + arch);
    std::set<std::string> returned = {w.embed_tokens().name, w.final_norm().name, w.lm_head().name};
    for (int64_t l = 0; l < w.config.num_layers; ++l) {
      const sharq::LayerWeights L = w.layer(l);
      for (const TensorView* t : {L.attn_norm, L.mlp_norm, L.q, L.k, L.v, L.o, L.q_bias, L.k_bias, L.v_bias, L.o_bias, L.q_norm,
                                  L.k_norm, L.gate, L.up, L.down, L.router})
        if (t) returned.insert(t->name);
      for (const sharq::ExpertWeights& e : L.experts)
        for (const TensorView* t : {e.gate, e.up, e.down}) returned.insert(t->name);
    }
    for (const std::string& n : returned) EXPECT_TRUE(w.uses(n)) << n;
    std::set<std::string> stored;
    for (const auto& [name, view] : w.tensors) stored.insert(name);
    EXPECT_EQ(stored, returned);
  }
}

// =================================================================================================
// Non-finite weights: an error naming the tensor, unless allowed

// A safetensors file of one tiny Llama whose tensor `target` holds `bits` (of `dtype`) at `index`.
std::vector<uint8_t> tiny_file_with(const std::string& dtype, const std::string& target, size_t index, uint32_t bits) {
  const size_t esize = dtype == "F32" ? 4 : 2;
  std::string entries;
  std::vector<uint8_t> data;
  for (const auto& [name, shape] : tiny_llama_tensors(1)) {
    int64_t n = 1;
    std::string dims;
    for (int64_t d : shape) {
      n *= d;
      dims += fmt::format("{}{}", dims.empty() ? "" : ",", d);
    }
    const size_t begin = data.size();
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t v = name == target && static_cast<size_t>(i) == index ? bits : (esize == 4 ? 0x3F800000u : dtype == "F16" ? 0x3C00u : 0x3F80u);
      if (esize == 4) put_u32(data, v);
      else put_u16(data, static_cast<uint16_t>(v));
    }
    entries += fmt::format(R"({}"{}":{{"dtype":"{}","shape":[{}],"data_offsets":[{},{}]}})", entries.empty() ? "" : ",", name, dtype, dims,
                           begin, data.size());
  }
  return safetensors_bytes("{" + entries + "}", data);
}

TEST(NonFiniteWeights, NaNAndInfInEachDtypeAreNamedUnlessAllowed) {
  struct Case {
    std::string dtype;
    uint32_t bits;
  };
  const std::vector<Case> cases = {{"F32", 0x7FC00000u}, {"F32", 0x7F800000u}, {"F32", 0xFF800001u},  // NaN, +Inf, -NaN
                                   {"F16", 0x7E00u},     {"F16", 0xFC00u},                         // NaN, -Inf
                                   {"BF16", 0x7FC0u},    {"BF16", 0x7F80u},    {"BF16", 0xFF81u}};
  TempDir tmp;
  write_text(tmp.path() / "config.json", tiny_config_with("llama", 1));
  for (const Case& c : cases) {
    SCOPED_TRACE(fmt::format("{} 0x{:X}", c.dtype, c.bits));
    write_bytes(tmp.path() / "model.safetensors", tiny_file_with(c.dtype, "model.layers.0.mlp.up_proj.weight", 13, c.bits));
    const std::string msg = error_of([&] { sharq::load_model_weights(tmp.path().string()); });
    EXPECT_HAS(msg, tmp.path().string() + ": tensor 'model.layers.0.mlp.up_proj.weight' holds 1 non-finite value (NaN or Inf; "
                    "the first at index 13); pass --allow-nonfinite to load it anyway");
    sharq::LoadOptions allow;
    allow.allow_nonfinite = true;
    const ModelWeights w = sharq::load_model_weights(tmp.path().string(), allow);
    const std::vector<float> up = to_f32(*w.layer(0).up);
    EXPECT_FALSE(std::isfinite(up[13]));
    EXPECT_TRUE(std::isfinite(up[12]));
  }
  // the largest finite values and subnormals are finite
  for (const Case& c : std::vector<Case>{{"F32", 0x7F7FFFFFu}, {"F32", 0x00000001u}, {"F16", 0x7BFFu}, {"F16", 0xFBFFu}, {"BF16", 0x7F7Fu}}) {
    write_bytes(tmp.path() / "model.safetensors", tiny_file_with(c.dtype, "model.norm.weight", 0, c.bits));
    EXPECT_NO_THROW(sharq::load_hf_weights(tmp.path().string())) << c.dtype << " " << c.bits;
  }
}

TEST(NonFiniteWeights, CountAndFirstIndexOfSeveral) {
  ModelWeights w;
  w.source = "mem";
  std::vector<float> v(300000, 0.5f);  // several scan chunks
  v[70000] = std::numeric_limits<float>::infinity();
  v[200001] = std::nanf("");
  v[299999] = -std::numeric_limits<float>::infinity();
  TensorView t;
  t.name = "model.embed_tokens.weight";
  t.shape = {300000};
  t.data = reinterpret_cast<const uint8_t*>(v.data());
  t.bytes = v.size() * 4;
  w.tensors.emplace(t.name, t);
  EXPECT_HAS(error_of([&] { w.check_finite(); }), "mem: tensor 'model.embed_tokens.weight' holds 3 non-finite values (NaN or Inf; the first at index 70000)");
  // an ignorable tensor is never read, so it is not scanned
  ModelWeights only_scale;
  only_scale.source = "mem";
  TensorView s = t;
  s.name = "model.layers.0.self_attn.k_scale";
  only_scale.tensors.emplace(s.name, s);
  EXPECT_NO_THROW(only_scale.check_finite());
}

TEST(NonFiniteWeights, Llama2cCheckpointIsScannedToo) {
  const L2cHeader h{8, 12, 2, 4, 2, 10, 6};
  const L2cLayout lay = l2c_layout(h);
  std::vector<uint8_t> file = l2c_header_bytes(h);
  for (int64_t i = 0; i < lay.total; ++i) put_u32(file, sharq::f32_bits(0.25f));
  const int64_t at = lay.wq + 64 + 5;  // layer 1's q_proj, element 5
  std::memcpy(file.data() + 28 + 4 * at, "\x00\x00\xc0\x7f", 4);  // NaN
  TempDir tmp;
  const std::string path = tmp.str("nan.bin");
  write_bytes(path, file);
  EXPECT_HAS(error_of([&] { sharq::load_model_weights(path); }),
             path + ": tensor 'model.layers.1.self_attn.q_proj.weight' holds 1 non-finite value (NaN or Inf; the first at index 5)");
  sharq::LoadOptions allow;
  allow.allow_nonfinite = true;
  const ModelWeights allowed = sharq::load_llama2c_weights(path, allow);
  EXPECT_TRUE(std::isnan(to_f32(*allowed.layer(1).q)[5]));
  EXPECT_FALSE(std::isnan(to_f32(*allowed.layer(1).q)[4]));
  // the RoPE tables of old exports are skipped, never read: a NaN there is not an error
  std::vector<uint8_t> rope_nan = l2c_header_bytes(h);
  for (int64_t i = 0; i < lay.total; ++i) put_u32(rope_nan, sharq::f32_bits(0.25f));
  std::memcpy(rope_nan.data() + 28 + 4 * (lay.rms_final + 8), "\x00\x00\xc0\x7f", 4);
  write_bytes(tmp.str("rope_nan.bin"), rope_nan);
  EXPECT_NO_THROW(sharq::load_llama2c_weights(tmp.str("rope_nan.bin")));
}

}  // namespace
