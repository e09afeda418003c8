// llama2.c tokenizer (stories260K's tok512.bin) against run.c's rules, worked by hand from the
// pieces and scores in the file (read here independently of the library), plus round trips and
// every malformed-file path.
#include "sharq/model/tokenizer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <sstream>
#include <string>

#include <unistd.h>

namespace {

namespace fs = std::filesystem;
using sharq::TokenizerError;

const std::string kDir = SHARQ_SOURCE_DIR "/../shared/models/stories260K";
const std::string kTok = kDir + "/tok512.bin";

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// The file's entries: piece -> id, scores, and each entry's offset.
struct TokFile {
  std::string bytes;
  std::map<std::string, int32_t> id;
  std::vector<std::string> piece;
  std::vector<float> score;
  std::vector<size_t> entry_offset;
  explicit TokFile(const std::string& path) : bytes(read_bytes(path)) {
    size_t off = 4;
    while (off + 8 <= bytes.size()) {
      int32_t len;
      float sc;
      std::memcpy(&sc, bytes.data() + off, 4);
      std::memcpy(&len, bytes.data() + off + 4, 4);
      entry_offset.push_back(off);
      piece.push_back(bytes.substr(off + 8, static_cast<size_t>(len)));
      score.push_back(sc);
      id.emplace(piece.back(), static_cast<int32_t>(entry_offset.size() - 1));
      off += 8 + static_cast<size_t>(len);
    }
  }
  int32_t lookup(const std::string& s) const {
    const auto it = id.find(s);
    return it == id.end() ? -1 : it->second;
  }
};

// run.c's encode as written there (rescan every pair after each merge): the reference the
// library's heap-based merging must reproduce. Texts here hold no NUL and no unknown bytes.
std::vector<int32_t> run_c_encode(const TokFile& f, const std::string& text, bool bos) {
  std::vector<int32_t> tokens;
  if (bos) tokens.push_back(1);
  if (!text.empty()) tokens.push_back(f.lookup(" "));
  std::string buf;
  for (size_t i = 0; i < text.size(); ++i) {
    if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) buf.clear();
    buf.push_back(text[i]);
    if (i + 1 < text.size() && (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80 && buf.size() < 4) continue;
    const int32_t id = f.lookup(buf);
    if (id != -1) tokens.push_back(id);
    else
      for (char c : buf) tokens.push_back(static_cast<unsigned char>(c) + 3);
    buf.clear();
  }
  while (true) {
    float best_score = -1e10;
    int32_t best_id = -1;
    size_t best_idx = 0;
    for (size_t i = 0; i + 1 < tokens.size(); ++i) {
      const int32_t id = f.lookup(f.piece[tokens[i]] + f.piece[tokens[i + 1]]);
      if (id != -1 && f.score[id] > best_score) {
        best_score = f.score[id];
        best_id = id;
        best_idx = i;
      }
    }
    if (best_id == -1) break;
    tokens[best_idx] = best_id;
    tokens.erase(tokens.begin() + static_cast<std::ptrdiff_t>(best_idx) + 1);
  }
  return tokens;
}

class Tok512 : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(kTok)) GTEST_SKIP() << "stories260K tok512.bin not found under " << kDir;
    tok_ = sharq::load_llama2c_tokenizer(kTok, 512);
    file_ = std::make_unique<TokFile>(kTok);
  }
  int32_t id(const std::string& piece) const { return file_->id.at(piece); }
  std::unique_ptr<sharq::Tokenizer> tok_;
  std::unique_ptr<TokFile> file_;
};

TEST_F(Tok512, EncodesTheByHand) {
  // [" ", t, h, e]: " t" (score -0) beats "he" (-1), then "he" (-1) beats " th" (-49), then " the".
  EXPECT_EQ(tok_->encode("the", false), (std::vector<int32_t>{id(" the")}));
  EXPECT_EQ(tok_->encode("the", true), (std::vector<int32_t>{1, id(" the")}));
  EXPECT_EQ(tok_->encode("", true), (std::vector<int32_t>{1}));  // no dummy prefix for empty text
  EXPECT_TRUE(tok_->encode("", false).empty());
}

TEST_F(Tok512, LooksUpCodePointsAndFallsBackToBytes) {
  // 'é' is a piece, " é" is not: no merge. '日' (E6 97 A5) is no piece: three byte tokens.
  ASSERT_EQ(file_->id.count(" \xC3\xA9"), 0u);
  EXPECT_EQ(tok_->encode("\xC3\xA9", false), (std::vector<int32_t>{id(" "), id("\xC3\xA9")}));
  ASSERT_EQ(file_->id.count("\xE6\x97\xA5"), 0u);
  EXPECT_EQ(tok_->encode("\xE6\x97\xA5", false), (std::vector<int32_t>{id(" "), 0xE6 + 3, 0x97 + 3, 0xA5 + 3}));
  // A stray continuation byte is looked up alone, then falls back to its byte.
  EXPECT_EQ(tok_->encode("\x97", false), (std::vector<int32_t>{id(" "), 0x97 + 3}));
}

TEST_F(Tok512, DecodesAsRunC) {
  EXPECT_EQ(tok_->decode_step(1, id(" the")), "the");    // after BOS the leading space goes
  EXPECT_EQ(tok_->decode_step(7, id(" the")), " the");
  EXPECT_EQ(tok_->decode_step(7, 3 + 'A'), "A");          // <0x41>
  EXPECT_EQ(tok_->decode_step(7, 3 + '\n'), "\n");
  EXPECT_EQ(tok_->decode_step(7, 3), "");                 // <0x00> is the empty C string
  EXPECT_EQ(tok_->decode_step(7, 1), "\n<s>\n");          // BOS's piece as stored
  EXPECT_EQ(tok_->decode_step(7, 512), "");
  EXPECT_EQ(tok_->bos_id(), 1);
  EXPECT_EQ(tok_->eos_id(), 2);
  EXPECT_EQ(tok_->vocab_size(), 512);
}

TEST_F(Tok512, TextRoundTripsThroughEncodeAndDecode) {
  const std::string sample = SHARQ_SOURCE_DIR "/../shared/data/tinystories/sample.txt";
  for (const std::string& path : {kDir + "/REFERENCE_GREEDY.txt", sample}) {
    SCOPED_TRACE(path);
    if (!fs::exists(path)) GTEST_SKIP() << path << " not found";
    const std::string text = read_bytes(path);
    const std::vector<int32_t> ids = tok_->encode(text, true);
    EXPECT_EQ(ids.front(), 1);
    EXPECT_EQ(tok_->decode(ids, true), text);
    std::string streamed;
    for (size_t i = 1; i < ids.size(); ++i) streamed += tok_->decode_step(ids[i - 1], ids[i]);
    EXPECT_EQ(streamed, text);
    EXPECT_LT(ids.size(), text.size() / 2);  // merging happened
  }
}

TEST_F(Tok512, MergesExactlyAsRunCsRescanLoop) {
  std::vector<std::string> texts;
  const std::string sample_path = SHARQ_SOURCE_DIR "/../shared/data/tinystories/sample.txt";
  if (fs::exists(sample_path)) {
    std::istringstream lines(read_bytes(sample_path));
    for (std::string line; std::getline(lines, line);) texts.push_back(line);
  }
  // Random strings over pieces' characters, spaces, newlines and multi-byte code points, so that
  // score ties, byte fallback and merges across BOS and the dummy prefix all occur.
  const std::vector<std::string> alphabet = {"a", "e", "t", "h", " ", " ", "\n", "o", "n", "s", "d", "!", "\xC3\xA9",
                                             "\xE6\x97\xA5", "\xE2\x80\x9C", "<", "s", ">", "0", "x"};
  std::mt19937 rng(20261127);
  for (int n = 0; n < 300; ++n) {
    std::string t;
    const int len = static_cast<int>(rng() % 40);
    for (int k = 0; k < len; ++k) t += alphabet[rng() % alphabet.size()];
    texts.push_back(t);
  }
  for (const std::string& t : texts) {
    SCOPED_TRACE(t);
    EXPECT_EQ(tok_->encode(t, true), run_c_encode(*file_, t, true));
    EXPECT_EQ(tok_->encode(t, false), run_c_encode(*file_, t, false));
  }
}

// Unlike run.c (whose text is a C string), the whole text is encoded: a NUL byte is its byte token
// <0x00> (id 3), and what follows it is encoded too (a data file for ppl may hold one).
TEST_F(Tok512, NulBytesAreEncodedAsTheirByteTokenAndTheTextGoesOn) {
  const std::vector<int32_t> ids = tok_->encode(std::string("the\0cat", 7), false);
  const auto nul = std::find(ids.begin(), ids.end(), 3);
  ASSERT_NE(nul, ids.end());
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 3), 1);
  EXPECT_EQ(std::vector<int32_t>(ids.begin(), nul), tok_->encode("the", false));  // merging never crosses <0x00>
  EXPECT_EQ(tok_->decode(std::vector<int32_t>(nul + 1, ids.end())), "cat");
  // a long text with a NUL early: every byte after it is still encoded
  std::string text;
  for (int i = 0; i < 200; ++i) text += "the cat sat on the mat. ";
  std::string with_nul = text;
  with_nul[10] = '\0';
  const std::vector<int32_t> all = tok_->encode(with_nul, true);
  EXPECT_GT(all.size(), tok_->encode(text.substr(0, 10), true).size() + 1000);
  // a text of NULs only: one byte token each, after the dummy prefix
  const std::vector<int32_t> nuls = tok_->encode(std::string(5, '\0'), false);
  EXPECT_EQ(nuls, (std::vector<int32_t>{file_->lookup(" "), 3, 3, 3, 3, 3}));
}

TEST(Llama2cTokenizer, CorruptFilesAreErrorsNamingFileAndEntry) {
  if (!fs::exists(kTok)) GTEST_SKIP() << "stories260K tok512.bin not found under " << kDir;
  const TokFile good(kTok);
  const fs::path dir = fs::temp_directory_path() / "sharq_llama2c_bad_files";
  fs::create_directories(dir);
  const auto write = [&](const std::string& name, const std::string& bytes) {
    std::ofstream(dir / name, std::ios::binary) << bytes;
    return (dir / name).string();
  };
  std::string negative = good.bytes;
  const int32_t minus_one = -1;
  std::memcpy(&negative[good.entry_offset[300] + 4], &minus_one, 4);
  std::string huge = good.bytes;
  const int32_t too_long = 1 << 30;
  std::memcpy(&huge[good.entry_offset[17] + 4], &too_long, 4);
  // the file rebuilt from its entries with one of them changed (lengths stay consistent)
  const auto rebuilt = [&](int32_t max_len, size_t at, const float* score, const std::string* piece) {
    std::string b(4, '\0');
    std::memcpy(b.data(), &max_len, 4);
    for (size_t i = 0; i < good.piece.size(); ++i) {
      const float sc = i == at && score ? *score : good.score[i];
      const std::string& p = i == at && piece ? *piece : good.piece[i];
      const int32_t len = static_cast<int32_t>(p.size());
      b.append(reinterpret_cast<const char*>(&sc), 4);
      b.append(reinterpret_cast<const char*>(&len), 4);
      b += p;
    }
    return b;
  };
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const std::string empty_piece, nul_piece(1, '\0'), dup_piece = good.piece[300], long_piece = "abcdefgh";
  const std::pair<std::string, std::string> cases[] = {
      {(dir / "missing.bin").string(), "cannot open"},
      {write("empty.bin", ""), "too short"},
      {write("cut_in_bytes.bin", good.bytes.substr(0, good.entry_offset[200] + 9)), "entry 200 is truncated"},
      {write("cut_in_header.bin", good.bytes.substr(0, good.entry_offset[511] + 5)), "entry 511 is truncated"},
      {write("negative.bin", negative), "entry 300 has a negative length"},
      {write("huge.bin", huge), "entry 17 is truncated"},
      {write("nan_score.bin", rebuilt(7, 260, &nan, nullptr)), "entry 260 has the score nan"},
      {write("inf_score.bin", rebuilt(7, 261, &inf, nullptr)), "entry 261 has the score inf"},
      {write("empty_piece.bin", rebuilt(7, 270, nullptr, &empty_piece)), "entry 270 is an empty piece"},
      {write("nul_piece.bin", rebuilt(7, 271, nullptr, &nul_piece)), "entry 271 is an empty piece"},
      {write("dup_piece.bin", rebuilt(7, 400, nullptr, &dup_piece)), "entries 300 and 400 are the same piece"},
      {write("long_piece.bin", rebuilt(7, 280, nullptr, &long_piece)), "entry 280 is 8 bytes long, more than the header's max_token_length 7"},
      {write("short_header.bin", rebuilt(0, 999, nullptr, nullptr)), "entry 0 is 5 bytes long, more than the header's max_token_length 0"},
  };
  for (const auto& [path, what] : cases) {
    SCOPED_TRACE(path);
    try {
      sharq::load_llama2c_tokenizer(path);
      ADD_FAILURE() << "no error";
    } catch (const TokenizerError& e) {
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  }
  try {
    sharq::load_llama2c_tokenizer(kTok, 32000);
    ADD_FAILURE() << "vocab size mismatch accepted";
  } catch (const TokenizerError& e) {
    EXPECT_NE(std::string(e.what()).find("512 tokens"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("32000"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

// A file cut at an entry boundary is well-formed on its own; only the model's vocab_size (run.c
// reads that many entries) shows it is short. Both ways of giving that count refuse it, naming the
// file and both counts.
TEST(Llama2cTokenizer, FileCutAtAnEntryBoundaryIsRefusedAgainstTheModel) {
  if (!fs::exists(kTok)) GTEST_SKIP() << "stories260K tok512.bin not found under " << kDir;
  const TokFile good(kTok);
  ASSERT_EQ(good.entry_offset.size(), 512u);
  const fs::path dir = fs::temp_directory_path() / ("sharq_tok_cut_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  sharq::ModelConfig model;
  model.vocab_size = 512;
  for (size_t kept : {0u, 3u, 300u, 500u, 511u}) {
    SCOPED_TRACE(kept);
    const std::string path = (dir / ("tok_cut_" + std::to_string(kept) + ".bin")).string();
    {
      std::ofstream out(path, std::ios::binary);
      const size_t end = kept < 512 ? good.entry_offset[kept] : good.bytes.size();
      out.write(good.bytes.data(), static_cast<std::streamsize>(end));
    }
    // the count from the model, as load_tokenizer_for(model, tokenizer, config) passes it
    try {
      sharq::load_tokenizer_for("unused", path, model);
      ADD_FAILURE() << "a tokenizer cut after " << kept << " entries was accepted";
    } catch (const TokenizerError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(path), std::string::npos) << msg;
      if (kept >= 3) {  // below 3 the loader's own "starts with <unk>, <s>, </s>" check may come first
        EXPECT_NE(msg.find("holds " + std::to_string(kept) + " tokens"), std::string::npos) << msg;
        EXPECT_NE(msg.find("512"), std::string::npos) << msg;
      }
    }
    // a tokenizer loaded without the count, checked afterwards
    if (kept >= 3) {
      const auto tok = sharq::load_llama2c_tokenizer(path);
      EXPECT_EQ(tok->vocab_size(), static_cast<int64_t>(kept));
      try {
        sharq::check_tokenizer_fits(*tok, model, "", "stories260K.bin");
        ADD_FAILURE() << "check_tokenizer_fits accepted " << kept << " of 512 entries";
      } catch (const TokenizerError& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find(path + ": read " + std::to_string(kept) + " tokens"), std::string::npos) << msg;
        EXPECT_NE(msg.find("stories260K.bin has vocab_size 512"), std::string::npos) << msg;
      }
    }
  }
  // the whole file passes both ways
  EXPECT_EQ(sharq::load_tokenizer_for("unused", kTok, model)->vocab_size(), 512);
  EXPECT_NO_THROW(sharq::check_tokenizer_fits(*sharq::load_llama2c_tokenizer(kTok), model, "", "m"));
  fs::remove_all(dir);
}

// A device or FIFO is refused rather than read without end.
TEST(Llama2cTokenizer, NonRegularFilesAreRefused) {
  for (const char* dev : {"/dev/zero", "/dev/null"}) {
    if (!fs::exists(dev)) continue;
    try {
      sharq::load_llama2c_tokenizer(dev);
      ADD_FAILURE() << dev << " accepted";
    } catch (const TokenizerError& e) {
      EXPECT_NE(std::string(e.what()).find(std::string(dev) + ": not a regular file"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
