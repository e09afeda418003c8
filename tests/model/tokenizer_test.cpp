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

}  // namespace
