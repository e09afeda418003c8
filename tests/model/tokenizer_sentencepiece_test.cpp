// SentencePiece tokenizer.model (sharq-lm-30m) against the Hugging Face reference run: the
// prompt's ids ([1] + sp.encode) and the text of the greedy ids (sp.decode).
#include "sharq/model/tokenizer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using sharq::TokenizerError;

const std::string kModelDir = SHARQ_SOURCE_DIR "/../shared/models/sharq-lm-30m";

#if SHARQ_HAVE_SENTENCEPIECE

json read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return json::parse(in);
}

class SharqLm30mTokenizer : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(kModelDir + "/tokenizer.model") || !fs::exists(kModelDir + "/REFERENCE_HF_FP32.json"))
      GTEST_SKIP() << "sharq-lm-30m tokenizer.model or REFERENCE_HF_FP32.json not found under " << kModelDir;
    tok_ = sharq::load_sentencepiece_tokenizer(kModelDir + "/tokenizer.model");
    ref_ = read_json(kModelDir + "/REFERENCE_HF_FP32.json");
  }
  std::unique_ptr<sharq::Tokenizer> tok_;
  json ref_;
};

TEST_F(SharqLm30mTokenizer, PromptIdsMatchTheReferenceWithBos) {
  const auto expected = ref_.at("prompt_ids").get<std::vector<int32_t>>();
  EXPECT_EQ(tok_->encode(ref_.at("prompt"), true), expected);
  const std::vector<int32_t> without_bos(expected.begin() + 1, expected.end());
  EXPECT_EQ(tok_->encode(ref_.at("prompt"), false), without_bos);
}

TEST_F(SharqLm30mTokenizer, GreedyIdsDecodeToTheReferenceText) {
  const auto ids = ref_.at("greedy_ids").get<std::vector<int32_t>>();
  EXPECT_EQ(tok_->decode(ids, true), ref_.at("greedy_text").get<std::string>());
  EXPECT_EQ(tok_->decode(ids, false), ref_.at("greedy_text").get<std::string>());  // no control ids in it
}

TEST_F(SharqLm30mTokenizer, StreamingAfterBosGivesTheDecodedText) {
  // generate() prints each token after its predecessor, starting after BOS.
  std::vector<int32_t> ids = ref_.at("prompt_ids").get<std::vector<int32_t>>();
  for (int32_t id : ref_.at("greedy_ids").get<std::vector<int32_t>>()) ids.push_back(id);
  std::string streamed;
  for (size_t i = 1; i < ids.size(); ++i) streamed += tok_->decode_step(ids[i - 1], ids[i]);
  EXPECT_EQ(streamed, tok_->decode(ids, true));
  EXPECT_EQ(streamed.rfind(ref_.at("prompt").get<std::string>(), 0), 0u) << streamed;
}

TEST_F(SharqLm30mTokenizer, LayoutIsLlama2s) {
  // README: unk 0, bos 1, eos 2, byte pieces <0x00>.. at 3.., newline = 13; vocab from config.json.
  EXPECT_EQ(tok_->bos_id(), 1);
  EXPECT_EQ(tok_->eos_id(), 2);
  EXPECT_EQ(tok_->vocab_size(), read_json(kModelDir + "/config.json").at("vocab_size").get<int64_t>());
  EXPECT_EQ(tok_->decode_step(5, 13), "\n");
  EXPECT_EQ(tok_->decode_step(5, 3 + 'A'), "A");
  EXPECT_EQ(tok_->decode_step(5, 2), "</s>");
  EXPECT_EQ(tok_->decode({1, 13, 2}, false), "<s>\n</s>");
  EXPECT_EQ(tok_->decode({1, 13, 2}, true), "\n");
  EXPECT_EQ(tok_->encode("", true), (std::vector<int32_t>{1}));
  EXPECT_TRUE(tok_->encode("", false).empty());
}

TEST(SentencePieceTokenizer, BadFilesAreErrorsNamingTheFile) {
  const fs::path dir = fs::temp_directory_path() / "sharq_sp_bad_files";
  fs::create_directories(dir);
  const std::string missing = (dir / "missing.model").string(), garbage = (dir / "garbage.model").string();
  std::ofstream(garbage, std::ios::binary) << "this is not a protobuf";
  for (const std::string& path : {missing, garbage}) {
    try {
      sharq::load_sentencepiece_tokenizer(path);
      ADD_FAILURE() << path << ": no error";
    } catch (const TokenizerError& e) {
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
  }
  fs::remove_all(dir);
}

#else

TEST(SentencePieceTokenizer, BuildWithoutSentencePieceSaysSo) {
  try {
    sharq::load_sentencepiece_tokenizer(kModelDir + "/tokenizer.model");
    FAIL() << "no error";
  } catch (const TokenizerError& e) {
    EXPECT_NE(std::string(e.what()).find("built without sentencepiece"), std::string::npos) << e.what();
  }
  GTEST_SKIP() << "sharq was built without sentencepiece: the tokenizer.model tests are skipped";
}

#endif

}  // namespace
