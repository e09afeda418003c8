// Hugging Face config.json parsing: every supported model_type with its defaults and quirks (Qwen2
// biases, Qwen3 head_dim and qk-norm, MoE fields, llama3 RoPE scaling in both the transformers 4
// and 5 spellings), and every rejection naming the file and the field.
#include "sharq/model/config.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <unistd.h>

#include "sharq/model/checkpoint_error.h"

namespace {

using sharq::Arch;
using sharq::CheckpointError;
using sharq::ModelConfig;
using sharq::parse_hf_config;
using sharq::RopeScaling;

constexpr const char* kPath = "/models/x/config.json";

// A config of `model_type` with the sizes every type requires, plus `extra` JSON members.
std::string config_json(const std::string& model_type, const std::string& extra = "", int64_t vocab = 1000) {
  std::string s = R"({"model_type": ")" + model_type + R"(", "vocab_size": )" + std::to_string(vocab) +
                  R"(, "hidden_size": 256, "intermediate_size": 704,
    "num_hidden_layers": 4, "num_attention_heads": 8, "max_position_embeddings": 2048)";
  if (!extra.empty()) s += ", " + extra;
  return s + "}";
}

ModelConfig parse(const std::string& text) { return parse_hf_config(text, kPath); }

// The message of the CheckpointError that parsing `text` throws; a failure if none is thrown.
std::string error_of(const std::string& text) {
  try {
    parse(text);
  } catch (const CheckpointError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no CheckpointError for: " << text;
  return {};
}

// The error names the file and the field, and says what is wrong.
void expect_error(const std::string& text, const std::string& field, const std::string& what) {
  const std::string msg = error_of(text);
  EXPECT_NE(msg.find(kPath), std::string::npos) << msg;
  EXPECT_NE(msg.find("'" + field + "'"), std::string::npos) << "field " << field << " not named in: " << msg;
  EXPECT_NE(msg.find(what), std::string::npos) << "'" << what << "' not in: " << msg;
}

TEST(HfConfig, ArchNames) {
  EXPECT_STREQ(sharq::to_string(Arch::llama), "llama");
  EXPECT_STREQ(sharq::to_string(Arch::mistral), "mistral");
  EXPECT_STREQ(sharq::to_string(Arch::qwen2), "qwen2");
  EXPECT_STREQ(sharq::to_string(Arch::qwen3), "qwen3");
  EXPECT_STREQ(sharq::to_string(Arch::mixtral), "mixtral");
  EXPECT_STREQ(sharq::to_string(Arch::qwen3_moe), "qwen3_moe");
}

TEST(HfConfig, LlamaDefaults) {
  const ModelConfig c = parse(config_json("llama"));
  EXPECT_EQ(c.arch, Arch::llama);
  EXPECT_EQ(c.vocab_size, 1000);
  EXPECT_EQ(c.hidden_size, 256);
  EXPECT_EQ(c.intermediate_size, 704);
  EXPECT_EQ(c.num_layers, 4);
  EXPECT_EQ(c.num_heads, 8);
  EXPECT_EQ(c.num_kv_heads, 8);   // absent: one KV head per query head
  EXPECT_EQ(c.head_dim, 32);      // absent: hidden / heads
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);  // LlamaConfig's default
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::none);
  EXPECT_FALSE(c.rope_interleaved);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_FALSE(c.attention_output_bias);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_EQ(c.num_experts, 0);
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_EQ(c.bos_token_id, -1);
  EXPECT_EQ(c.eos_token_id, -1);
}

TEST(HfConfig, LlamaExplicitFieldsAndBias) {
  const ModelConfig c = parse(config_json("llama", R"("num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
      "tie_word_embeddings": true, "attention_bias": true, "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
      "hidden_act": "silu", "torch_dtype": "bfloat16", "rope_scaling": null)", 128256));
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_TRUE(c.attention_output_bias);  // LlamaAttention's flag covers o_proj too
  EXPECT_EQ(c.bos_token_id, 128000);
  EXPECT_EQ(c.eos_token_id, 128001);     // a list: the first id
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::none);
}

TEST(HfConfig, Llama3RopeScalingLegacySpelling) {
  // Llama-3.1-8B's config.json (transformers 4 spelling)
  const ModelConfig c = parse(config_json("llama", R"("rope_theta": 500000.0, "rope_scaling": {"factor": 8.0,
      "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"})"));
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::llama3);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
}

TEST(HfConfig, Llama3RopeParametersTransformers5Spelling) {
  // Llama-3.2 style numbers, theta only inside rope_parameters
  const ModelConfig c = parse(config_json("llama", R"("rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0,
      "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})"));
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::llama3);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 32.0);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  // default type with a theta only
  const ModelConfig d = parse(config_json("llama", R"("rope_parameters": {"rope_type": "default", "rope_theta": 1234.5})"));
  EXPECT_EQ(d.rope_scaling.type, RopeScaling::Type::none);
  EXPECT_DOUBLE_EQ(d.rope_theta, 1234.5);
  // the older "type" key
  const ModelConfig e = parse(config_json("llama", R"("rope_scaling": {"type": "llama3", "factor": 8, "low_freq_factor": 1,
      "high_freq_factor": 4, "original_max_position_embeddings": 8192})"));
  EXPECT_EQ(e.rope_scaling.type, RopeScaling::Type::llama3);
  EXPECT_DOUBLE_EQ(e.rope_scaling.factor, 8.0);
}

TEST(HfConfig, SharqLm30mConfigFile) {
  const std::string path = std::string(SHARQ_SOURCE_DIR) + "/../shared/models/sharq-lm-30m/config.json";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "shared model data not found at " << path;
  const ModelConfig c = sharq::read_hf_config(path);
  EXPECT_EQ(c.arch, Arch::llama);
  EXPECT_EQ(c.vocab_size, 4096);
  EXPECT_EQ(c.hidden_size, 512);
  EXPECT_EQ(c.intermediate_size, 1536);
  EXPECT_EQ(c.num_layers, 8);
  EXPECT_EQ(c.num_heads, 8);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.max_position_embeddings, 1024);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);  // both rope_theta and rope_parameters.rope_theta, equal
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::none);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_id, 2);
}

TEST(HfConfig, MistralSlidingWindowIsRecorded) {
  EXPECT_EQ(parse(config_json("mistral", R"("sliding_window": 4096, "num_key_value_heads": 2)")).sliding_window, 4096);
  EXPECT_EQ(parse(config_json("mistral", R"("sliding_window": null)")).sliding_window, 0);  // v0.2+: no window
  EXPECT_EQ(parse(config_json("mistral")).sliding_window, 4096);                             // MistralConfig default
  const ModelConfig c = parse(config_json("mistral", R"("attention_bias": true)"));
  EXPECT_EQ(c.arch, Arch::mistral);
  EXPECT_FALSE(c.attention_bias);  // MistralAttention has no biases whatever the file says
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
}

TEST(HfConfig, Qwen2AlwaysHasQkvBiasAndIgnoresUnusedWindow) {
  // Qwen2.5-0.5B-like: the window fields are present but off
  const ModelConfig c = parse(config_json("qwen2", R"("num_key_value_heads": 2, "tie_word_embeddings": true, "rope_theta": 1000000.0,
      "use_sliding_window": false, "sliding_window": 32768, "max_window_layers": 21, "bos_token_id": 151643, "eos_token_id": 151645)",
                                    151936));
  EXPECT_EQ(c.arch, Arch::qwen2);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_FALSE(c.attention_output_bias);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.eos_token_id, 151645);
  // use_sliding_window with every layer below max_window_layers: no layer slides
  EXPECT_EQ(parse(config_json("qwen2", R"("use_sliding_window": true, "max_window_layers": 4)")).sliding_window, 0);
}

TEST(HfConfig, Qwen3ExplicitHeadDimAndQkNorm) {
  // Qwen3-0.6B: 16 heads x 128 = 2048 != hidden 1024
  const ModelConfig c = parse(R"({"model_type": "qwen3", "vocab_size": 151936, "hidden_size": 1024, "intermediate_size": 3072,
      "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
      "max_position_embeddings": 40960, "rms_norm_eps": 1e-06, "rope_theta": 1000000, "tie_word_embeddings": true,
      "attention_bias": false, "use_sliding_window": false, "sliding_window": null, "max_window_layers": 28})");
  EXPECT_EQ(c.arch, Arch::qwen3);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.num_heads * c.head_dim, 2048);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);  // an integer in the file
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  // transformers 5 layer_types, all full attention
  EXPECT_EQ(parse(config_json("qwen3", R"("head_dim": 64, "layer_types": ["full_attention", "full_attention", "full_attention",
                                                                          "full_attention"])")).head_dim, 64);
}

TEST(HfConfig, MixtralExperts) {
  const ModelConfig c = parse(config_json("mixtral", R"("num_local_experts": 8, "num_experts_per_tok": 2, "sliding_window": null)"));
  EXPECT_EQ(c.arch, Arch::mixtral);
  EXPECT_EQ(c.num_experts, 8);
  EXPECT_EQ(c.num_experts_per_tok, 2);
  EXPECT_EQ(c.moe_intermediate_size, 704);  // experts use intermediate_size
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);      // MixtralConfig's default
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_FALSE(c.attention_bias);
}

TEST(HfConfig, Qwen3MoeExperts) {
  // Qwen3-30B-A3B's numbers
  const ModelConfig c = parse(R"({"model_type": "qwen3_moe", "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144,
      "moe_intermediate_size": 768, "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
      "max_position_embeddings": 40960, "num_experts": 128, "num_experts_per_tok": 8, "norm_topk_prob": true,
      "decoder_sparse_step": 1, "mlp_only_layers": [], "rope_theta": 1000000.0, "use_sliding_window": false})");
  EXPECT_EQ(c.arch, Arch::qwen3_moe);
  EXPECT_EQ(c.num_experts, 128);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_EQ(c.moe_intermediate_size, 768);
  EXPECT_EQ(c.intermediate_size, 6144);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_EQ(c.head_dim, 128);
  // Qwen3MoeConfig's default is not to renormalize; intermediate_size is optional here
  const ModelConfig d = parse(R"({"model_type": "qwen3_moe", "vocab_size": 100, "hidden_size": 64, "moe_intermediate_size": 32,
      "num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 16, "max_position_embeddings": 128, "num_experts": 4,
      "num_experts_per_tok": 2})");
  EXPECT_FALSE(d.norm_topk_prob);
  EXPECT_EQ(d.intermediate_size, 0);
}

TEST(HfConfig, MissingOrMistypedRequiredFields) {
  for (const char* field : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                            "max_position_embeddings"}) {
    std::string text = config_json("llama");
    const size_t p = text.find(std::string("\"") + field + "\"");
    ASSERT_NE(p, std::string::npos);
    const std::string without = text.substr(0, p) + "\"unused_" + text.substr(p + 1);  // rename the key
    expect_error(without, field, "is missing");
  }
  expect_error(config_json("llama", R"("num_key_value_heads": "2")"), "num_key_value_heads", "must be an integer");
  expect_error(R"({"model_type": "llama", "vocab_size": 1000, "hidden_size": 256.0, "intermediate_size": 704,
      "num_hidden_layers": 4, "num_attention_heads": 8, "max_position_embeddings": 2048})", "hidden_size", "must be an integer");
  expect_error(R"({"model_type": "llama", "vocab_size": -5, "hidden_size": 256, "intermediate_size": 704,
      "num_hidden_layers": 4, "num_attention_heads": 8, "max_position_embeddings": 2048})", "vocab_size", "out of range");
  expect_error(R"({"model_type": "llama", "vocab_size": 18446744073709551615, "hidden_size": 256, "intermediate_size": 704,
      "num_hidden_layers": 4, "num_attention_heads": 8, "max_position_embeddings": 2048})", "vocab_size", "out of range");
  expect_error(config_json("llama", R"("rms_norm_eps": -1e-5)"), "rms_norm_eps", "positive");
  expect_error(config_json("llama", R"("tie_word_embeddings": "false")"), "tie_word_embeddings", "true or false");
  expect_error(config_json("llama", R"("eos_token_id": [[2]])"), "eos_token_id[0]", "integer");
  // values the FP32 model would turn into Inf
  expect_error(config_json("llama", R"("rms_norm_eps": 1e39)"), "rms_norm_eps", "beyond the largest 32-bit float");
  expect_error(config_json("llama", R"("rope_theta": 1e300)"), "rope_theta", "beyond the largest 32-bit float");
  // token ids outside the vocabulary (vocab_size 1000)
  expect_error(config_json("llama", R"("bos_token_id": 1000)"), "bos_token_id", "out of range [0, 999]");
  expect_error(config_json("llama", R"("eos_token_id": [2, 99999])"), "eos_token_id[1]", "out of range [0, 999]");
  EXPECT_EQ(parse(config_json("llama", R"("bos_token_id": 999, "eos_token_id": [2, 7])")).eos_token_id, 2);
}

// transformers builds the class `architectures` names: a known class of another family contradicts
// model_type; an unknown class name (a fine-tune's own) is left alone.
TEST(HfConfig, ArchitecturesMustAgreeWithModelType) {
  expect_error(config_json("llama", R"("architectures": ["Qwen2ForCausalLM"])"), "architectures[0]",
               "is 'Qwen2ForCausalLM', a qwen2 class, but model_type is 'llama'");
  expect_error(config_json("llama", R"("architectures": "LlamaForCausalLM")"), "architectures", "must be a list");
  EXPECT_EQ(parse(config_json("llama", R"("architectures": ["LlamaForCausalLM"])")).arch, Arch::llama);
  EXPECT_EQ(parse(config_json("qwen2", R"("architectures": ["MyQwenVariant"])")).arch, Arch::qwen2);
}

// nlohmann keeps the last of two equal keys: a config naming a field twice must not load as a
// plausible, different model.
TEST(HfConfig, RejectsAKeyGivenTwice) {
  const std::string msg = error_of(config_json("llama", R"("rms_norm_eps": 1e-5, "rms_norm_eps": 0.5)"));
  EXPECT_NE(msg.find(kPath), std::string::npos) << msg;
  EXPECT_NE(msg.find("the key \"rms_norm_eps\" appears twice in one object (at the top level)"), std::string::npos) << msg;
  const std::string nested = error_of(config_json("llama", R"("rope_scaling": {"rope_type": "llama3", "factor": 8.0, "factor": 2.0})"));
  EXPECT_NE(nested.find("the key \"factor\" appears twice in one object (at /rope_scaling)"), std::string::npos) << nested;
}

TEST(HfConfig, RejectsUnknownModelTypeAndStructure) {
  expect_error(config_json("gpt2"), "model_type", "unsupported");
  expect_error(config_json("gemma"), "model_type", "unsupported");
  expect_error(R"({"vocab_size": 1})", "model_type", "is missing");
  expect_error(R"({"model_type": 7})", "model_type", "must be a string");
  const std::string not_json = error_of("{\"model_type\": \"llama\",");
  EXPECT_NE(not_json.find(kPath), std::string::npos);
  EXPECT_NE(not_json.find("not valid JSON"), std::string::npos) << not_json;
  const std::string array = error_of("[1, 2]");
  EXPECT_NE(array.find(kPath), std::string::npos);
  EXPECT_NE(array.find("JSON object"), std::string::npos) << array;
}

TEST(HfConfig, RejectsInconsistentShapes) {
  expect_error(config_json("llama", R"("num_key_value_heads": 3)"), "num_key_value_heads", "must divide");
  expect_error(R"({"model_type": "llama", "vocab_size": 1000, "hidden_size": 250, "intermediate_size": 704,
      "num_hidden_layers": 4, "num_attention_heads": 8, "max_position_embeddings": 2048})", "num_attention_heads", "must divide hidden_size");
  expect_error(config_json("llama", R"("head_dim": 33)"), "head_dim", "even");
  expect_error(config_json("qwen3"), "head_dim", "is missing");
  expect_error(config_json("mixtral", R"("num_local_experts": 2, "num_experts_per_tok": 3)"), "num_experts_per_tok", "exceeds");
}

TEST(HfConfig, RejectsUnsupportedRope) {
  for (const char* type : {"yarn", "linear", "dynamic", "longrope", "mrope"}) {
    expect_error(config_json("qwen2", std::string(R"("rope_scaling": {"type": ")") + type + R"(", "factor": 4.0})"),
                 "rope_scaling.type", std::string("'") + type + "': unsupported RoPE type");
    expect_error(config_json("llama", std::string(R"("rope_scaling": {"rope_type": ")") + type + R"(", "factor": 4.0})"),
                 "rope_scaling.rope_type", "unsupported RoPE type");
    expect_error(config_json("llama", std::string(R"("rope_parameters": {"rope_type": ")") + type + R"(", "rope_theta": 1e4})"),
                 "rope_parameters.rope_type", "unsupported RoPE type");
  }
  expect_error(config_json("llama", R"("rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
      "original_max_position_embeddings": 8192})"), "rope_scaling.high_freq_factor", "is missing");
  expect_error(config_json("llama", R"("rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})"), "rope_scaling.high_freq_factor", "must exceed");
  expect_error(config_json("llama", R"("rope_theta": 10000.0, "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0})"),
               "rope_parameters.rope_theta", "disagrees");
  // a scaled rope_scaling beside a default rope_parameters applies, with rope_parameters' theta, as
  // transformers 5 reads it (rope_parameters = rope_scaling or rope_parameters)
  const ModelConfig both = parse(config_json("llama", R"("rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
      "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192})"));
  EXPECT_EQ(both.rope_scaling.type, sharq::RopeScaling::Type::llama3);
  EXPECT_DOUBLE_EQ(both.rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(both.rope_theta, 500000.0);
  expect_error(config_json("llama", R"("rope_parameters": {"full_attention": {"rope_type": "default"}})"), "rope_parameters",
               "neither");
  expect_error(config_json("llama", R"("partial_rotary_factor": 0.5)"), "partial_rotary_factor", "not supported");
  // bases and factors that would give Inf frequencies (NaN logits) or rising ones
  for (const char* theta : {"1e-300", "1e-45", "0.5", "1"}) {
    expect_error(config_json("llama", std::string(R"("rope_theta": )") + theta), "rope_theta", "base above 1");
    expect_error(config_json("llama", std::string(R"("rope_parameters": {"rope_type": "default", "rope_theta": )") + theta + "}"),
                 "rope_parameters.rope_theta", "base above 1");
  }
  for (const char* factor : {"1e-300", "0.5"})
    expect_error(config_json("llama", std::string(R"("rope_scaling": {"rope_type": "llama3", "factor": )") + factor +
                                          R"(, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})"),
                 "rope_scaling.factor", "factor >= 1");
}

TEST(HfConfig, RejectsFeaturesNotRun) {
  expect_error(config_json("qwen2", R"("use_sliding_window": true, "max_window_layers": 2)"), "use_sliding_window",
               "sliding-window attention is not supported");
  expect_error(config_json("qwen3", R"("head_dim": 32, "use_sliding_window": true, "max_window_layers": 0)"), "use_sliding_window",
               "max_window_layers 0 < num_hidden_layers 4");
  expect_error(config_json("qwen3", R"("head_dim": 32, "layer_types": ["full_attention", "sliding_attention", "full_attention",
                                                                         "full_attention"])"), "layer_types[1]", "only full_attention");
  expect_error(config_json("qwen3", R"("head_dim": 32, "layer_types": ["full_attention"])"), "layer_types",
               "has 1 entries for num_hidden_layers 4");
  expect_error(config_json("qwen3", R"("head_dim": 32, "layer_types": [])"), "layer_types", "has 0 entries");
  expect_error(R"({"model_type": "qwen3_moe", "vocab_size": 100, "hidden_size": 64, "moe_intermediate_size": 32, "num_hidden_layers": 2,
      "num_attention_heads": 4, "head_dim": 16, "max_position_embeddings": 128, "num_experts": 4, "num_experts_per_tok": 2,
      "mlp_only_layers": [0]})", "mlp_only_layers", "not supported");
  expect_error(R"({"model_type": "qwen3_moe", "vocab_size": 100, "hidden_size": 64, "moe_intermediate_size": 32, "num_hidden_layers": 2,
      "num_attention_heads": 4, "head_dim": 16, "max_position_embeddings": 128, "num_experts": 4, "num_experts_per_tok": 2,
      "decoder_sparse_step": 2})", "decoder_sparse_step", "only 1");
  expect_error(R"({"model_type": "qwen3_moe", "vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 2,
      "num_attention_heads": 4, "head_dim": 16, "max_position_embeddings": 128, "num_experts": 4, "num_experts_per_tok": 2})",
               "moe_intermediate_size", "is missing");
  expect_error(config_json("mixtral", R"("num_experts_per_tok": 2)"), "num_local_experts", "is missing");
  expect_error(config_json("llama", R"("mlp_bias": true)"), "mlp_bias", "not supported");
  expect_error(config_json("llama", R"("hidden_act": "gelu")"), "hidden_act", "only silu");
}

TEST(HfConfig, ReadsFileAndNamesIt) {
  const auto dir = std::filesystem::temp_directory_path() / ("sharq_config_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "config.json").string();
  {
    std::ofstream f(path);
    f << config_json("gpt2");
  }
  try {
    sharq::read_hf_config(path);
    ADD_FAILURE() << "no error for model_type gpt2";
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find(path + ": field 'model_type'"), std::string::npos) << e.what();
  }
  const std::string missing = (dir / "nope" / "config.json").string();
  try {
    sharq::read_hf_config(missing);
    ADD_FAILURE() << "no error for a missing file";
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
