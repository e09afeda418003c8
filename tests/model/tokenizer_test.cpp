// load_tokenizer_for: which tokenizer a model path or an explicit path selects, and the errors
// that name what is missing.
#include "sharq/model/tokenizer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace {

namespace fs = std::filesystem;
using sharq::TokenizerError;

const std::string kShared = SHARQ_SOURCE_DIR "/../shared";

void require(const std::string& path) {
  if (!fs::exists(path)) GTEST_SKIP() << path << " not found";
}

std::string error_of(const std::string& model, const std::string& tokenizer = "") {
  try {
    sharq::load_tokenizer_for(model, tokenizer);
  } catch (const TokenizerError& e) {
    return e.what();
  }
  return "";
}

TEST(LoadTokenizerFor, Llama2cCheckpointFindsTheTokBinBesideIt) {
  require(kShared + "/models/stories260K/tok512.bin");
  const auto tok = sharq::load_tokenizer_for(kShared + "/models/stories260K/stories260K.bin");
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->decode_step(1, 1), "\n<s>\n");  // the llama2.c piece of BOS: this is the llama2.c reader
  const auto explicit_tok = sharq::load_tokenizer_for("unused", kShared + "/models/stories260K/tok512.bin");
  EXPECT_EQ(explicit_tok->vocab_size(), 512);
}

#if SHARQ_HAVE_SENTENCEPIECE
TEST(LoadTokenizerFor, HuggingFaceDirectoryWithOnlyTokenizerModelUsesSentencePiece) {
  require(kShared + "/models/sharq-lm-30m/tokenizer.model");
  const auto tok = sharq::load_tokenizer_for(kShared + "/models/sharq-lm-30m");
  EXPECT_EQ(tok->vocab_size(), 4096);
  EXPECT_EQ(tok->decode_step(1, 2), "</s>");  // SentencePiece's control piece
}
#endif

#if SHARQ_HAVE_BPE
TEST(LoadTokenizerFor, DirectoryWithTokenizerJsonUsesIt) {
  require(kShared + "/tokenizers/qwen3/tokenizer.json");
  const auto tok = sharq::load_tokenizer_for(kShared + "/tokenizers/qwen3");
  EXPECT_EQ(tok->encode("Hello world", true), (std::vector<int32_t>{9707, 1879}));  // golden case plain_english
  const auto explicit_tok = sharq::load_tokenizer_for("", kShared + "/tokenizers/qwen3/tokenizer.json");
  EXPECT_EQ(explicit_tok->encode("Hello world", true), (std::vector<int32_t>{9707, 1879}));
}
#endif

TEST(LoadTokenizerFor, UnknownExtensionIsJudgedByContent) {
  require(kShared + "/models/stories260K/tok512.bin");
  const fs::path dir = fs::temp_directory_path() / "sharq_tok_sniff";
  fs::create_directories(dir);
  fs::copy_file(kShared + "/models/stories260K/tok512.bin", dir / "vocab.dat", fs::copy_options::overwrite_existing);
  EXPECT_EQ(sharq::load_tokenizer_for("", (dir / "vocab.dat").string())->vocab_size(), 512);
  fs::remove_all(dir);
}

TEST(LoadTokenizerFor, MissingThingsAreNamed) {
  const fs::path dir = fs::temp_directory_path() / "sharq_tok_empty_dir";
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::string e = error_of(dir.string());
  EXPECT_NE(e.find(dir.string()), std::string::npos) << e;
  EXPECT_NE(e.find("tokenizer.json, tokenizer.model"), std::string::npos) << e;

  std::ofstream(dir / "model.bin") << "checkpoint";
  e = error_of((dir / "model.bin").string());  // a checkpoint with nothing beside it
  EXPECT_NE(e.find("no tokenizer found"), std::string::npos) << e;

  std::ofstream(dir / "tok512.bin") << "x";
  std::ofstream(dir / "tok4096.bin") << "x";
  e = error_of((dir / "model.bin").string());
  EXPECT_NE(e.find("tok4096.bin, tok512.bin"), std::string::npos) << e;

  e = error_of("", (dir / "absent.json").string());
  EXPECT_NE(e.find("absent.json"), std::string::npos) << e;
  e = error_of((dir / "absent_model").string());
  EXPECT_NE(e.find("absent_model"), std::string::npos) << e;
  fs::remove_all(dir);
}

// check_tokenizer_fits: more tokens than the model's rows is an error naming both files and sizes;
// fewer than 90% of them a warning on stderr; a padded embedding (Qwen3: 151,936 rows for 151,669
// tokens) is silent.
std::string fits_error(const sharq::Tokenizer& tok, int64_t model_vocab, const std::string& model_path) {
  sharq::ModelConfig model;
  model.vocab_size = model_vocab;
  try {
    sharq::check_tokenizer_fits(tok, model, "", model_path);
  } catch (const TokenizerError& e) {
    return e.what();
  }
  return "";
}

std::string fits_warning(const sharq::Tokenizer& tok, int64_t model_vocab) {
  sharq::ModelConfig model;
  model.vocab_size = model_vocab;
  ::testing::internal::CaptureStderr();
  sharq::check_tokenizer_fits(tok, model, "tok/path", "model/path");
  return ::testing::internal::GetCapturedStderr();
}

TEST(CheckTokenizerFits, ALargerVocabularyIsAnErrorNamingBothFilesAndSizes) {
  const std::string path = kShared + "/models/stories260K/tok512.bin";
  require(path);
  const auto tok = sharq::load_tokenizer_for("", path);
  const std::string e = fits_error(*tok, 256, "small/model.bin");
  EXPECT_NE(e.find(path + ": the tokenizer has 512 tokens"), std::string::npos) << e;
  EXPECT_NE(e.find("small/model.bin has vocab_size 256"), std::string::npos) << e;
  EXPECT_EQ(fits_error(*tok, 512, "m"), "");
  // through the loader that the tools call: the llama2.c count must equal the model's exactly
  sharq::ModelConfig model;
  model.vocab_size = 256;
  try {
    sharq::load_tokenizer_for("small/model.bin", path, model);
    ADD_FAILURE() << "accepted";
  } catch (const TokenizerError& err) {
    EXPECT_NE(std::string(err.what()).find(path + ": holds 512 tokens but the model's vocab_size is 256"), std::string::npos)
        << err.what();
  }
}

#if SHARQ_HAVE_SENTENCEPIECE
TEST(CheckTokenizerFits, ASmallerVocabularyWarnsBelowNinetyPercent) {
  const std::string path = kShared + "/models/sharq-lm-30m/tokenizer.model";
  require(path);
  const auto tok = sharq::load_tokenizer_for("", path);
  ASSERT_EQ(tok->vocab_size(), 4096);
  EXPECT_NE(fits_error(*tok, 512, "stories260K.bin").find("4096 tokens"), std::string::npos);
  const std::string w = fits_warning(*tok, 8192);
  EXPECT_NE(w.find("sharq: warning: tok/path: the tokenizer has 4096 tokens, the model model/path has vocab_size 8192"),
            std::string::npos) << w;
  EXPECT_EQ(fits_warning(*tok, 4096), "");
  EXPECT_EQ(fits_warning(*tok, 4551), "");  // 90.002%: padding of that size is silent
  EXPECT_NE(fits_warning(*tok, 4552), "");  // 89.98%
  // tok.source() names the file when no path is passed
  sharq::ModelConfig model;
  model.vocab_size = 100000;
  ::testing::internal::CaptureStderr();
  sharq::check_tokenizer_fits(*tok, model, "", "m");
  EXPECT_NE(::testing::internal::GetCapturedStderr().find(path), std::string::npos);
}
#endif

#if SHARQ_HAVE_BPE
TEST(CheckTokenizerFits, QwenPaddedEmbeddingsAreSilent) {
  const std::string path = kShared + "/tokenizers/qwen3/tokenizer.json";
  require(path);
  const auto tok = sharq::load_tokenizer_for("", path);
  EXPECT_EQ(tok->vocab_size(), 151669);
  EXPECT_EQ(fits_warning(*tok, 151936), "");
  EXPECT_NE(fits_error(*tok, 4096, "sharq-lm-30m").find("151669 tokens"), std::string::npos);
}
#endif

}  // namespace
