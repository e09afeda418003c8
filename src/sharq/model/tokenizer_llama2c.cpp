// The llama2.c tokenizer (tokenizer.bin / tok512.bin): int32 max_token_length, then per token
// float32 score, int32 length, the bytes. Encode and decode reproduce llama2.c's run.c exactly,
// since its published outputs are the reference for the llama2.c checkpoints:
//   - pieces are C strings there: a piece ends at its first NUL byte. The text does not: it is
//     encoded whole, a NUL byte as its byte token <0x00> (run.c, whose text is a C string, would
//     stop there; a prompt from its command line never holds one, a data file may);
//   - encode: optional BOS, a " " dummy prefix for non-empty text, one token per UTF-8 code point
//     (at most 4 bytes) or its bytes as <0xXX> = byte + 3, then repeatedly the adjacent pair whose
//     concatenation is a token of the highest score is merged (ties: leftmost). BOS takes part in
//     the merging as in run.c;
//   - decode: a piece after BOS (id 1) loses one leading space; a piece that sscanf reads as
//     "<0x%02hhX>" is that byte (byte 0 is the empty C string).
// run.c rescans all pairs after every merge (quadratic in the text length); here a max-heap of
// candidate pairs ordered by (score, -position) with lazy invalidation makes the same choices.
#include "sharq/model/tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <unordered_map>

#include <fmt/format.h>

namespace sharq {
namespace {

constexpr int32_t kBosId = 1;  // run.c hard-codes BOS = 1 and EOS = 2
constexpr int32_t kEosId = 2;
constexpr int kByteTokenOffset = 3;  // <0x00> is id 3: ids 0..2 are <unk>, <s>, </s>
// Llama-2's 32,000 pieces take about 0.5 MB; a file this large is not a tokenizer.
constexpr uintmax_t kMaxFileBytes = uintmax_t{256} << 20;

class Llama2cTokenizer final : public Tokenizer {
 public:
  Llama2cTokenizer(const std::string& path, int64_t expected_vocab_size);

  std::vector<int32_t> encode(const std::string& text, bool add_special) const override;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special) const override;
  std::string decode_step(int32_t prev, int32_t id) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(pieces_.size()); }
  std::string source() const override { return path_; }
  bool count_set_by_model() const override { return true; }  // run.c reads vocab_size entries
  int32_t bos_id() const override { return kBosId; }
  int32_t eos_id() const override { return kEosId; }

 private:
  int32_t lookup(const std::string& s) const {
    const auto it = id_of_.find(s);
    return it == id_of_.end() ? -1 : it->second;
  }

  std::string path_;
  std::vector<std::string> pieces_;  // cut at the first NUL, as run.c's C strings
  std::vector<float> scores_;
  std::unordered_map<std::string, int32_t> id_of_;  // duplicates: the lowest id
};

Llama2cTokenizer::Llama2cTokenizer(const std::string& path, int64_t expected_vocab_size) : path_(path) {
  // A regular file of bounded size: a device or FIFO (/dev/zero) would be read without end.
  std::error_code ec;
  const std::filesystem::file_status st = std::filesystem::status(path, ec);
  if (std::filesystem::exists(st) && !std::filesystem::is_regular_file(st))
    throw TokenizerError(fmt::format("{}: not a regular file (a llama2.c tokenizer is a tok*.bin file)", path));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw TokenizerError(fmt::format("{}: cannot open tokenizer file", path));
  const uintmax_t file_size = std::filesystem::file_size(path, ec);
  if (!ec && file_size > kMaxFileBytes)
    throw TokenizerError(fmt::format("{}: {} bytes, more than the {} a llama2.c tokenizer may have", path, file_size, kMaxFileBytes));
  std::string bytes;
  bytes.resize(ec ? 0 : static_cast<size_t>(file_size));
  in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (in.bad() || static_cast<size_t>(in.gcount()) != bytes.size())
    throw TokenizerError(fmt::format("{}: read {} of {} bytes (file changed or unreadable)", path, in.gcount(), bytes.size()));
  const size_t size = bytes.size();
  if (size < 4) throw TokenizerError(fmt::format("{}: {} bytes, too short for the llama2.c tokenizer header", path, size));
  int32_t max_token_length;
  std::memcpy(&max_token_length, bytes.data(), 4);
  if (max_token_length < 0)
    throw TokenizerError(fmt::format("{}: negative max_token_length {} (not a llama2.c tokenizer?)", path, max_token_length));
  size_t offset = 4;
  while (offset < size) {
    const size_t index = pieces_.size();
    if (size - offset < 8)
      throw TokenizerError(fmt::format("{}: entry {} is truncated: its score and length need 8 bytes at offset {}, "
                                       "the file has {} left", path, index, offset, size - offset));
    float score;
    int32_t len;
    std::memcpy(&score, bytes.data() + offset, 4);
    std::memcpy(&len, bytes.data() + offset + 4, 4);
    offset += 8;
    if (len < 0) throw TokenizerError(fmt::format("{}: entry {} has a negative length {}", path, index, len));
    if (static_cast<size_t>(len) > size - offset)
      throw TokenizerError(fmt::format("{}: entry {} is truncated: its {} bytes at offset {} run past the end of the "
                                       "file ({} bytes)", path, index, len, offset, size));
    const char* text = bytes.data() + offset;
    pieces_.emplace_back(text, ::strnlen(text, static_cast<size_t>(len)));
    // run.c merges by score and builds candidates of up to max_token_length bytes: a NaN score,
    // an empty piece or one longer than the header says would tokenize differently without a word
    if (!std::isfinite(score)) throw TokenizerError(fmt::format("{}: entry {} has the score {}", path, index, score));
    if (pieces_.back().empty()) throw TokenizerError(fmt::format("{}: entry {} is an empty piece", path, index));
    if (pieces_.back().size() > static_cast<size_t>(max_token_length))
      throw TokenizerError(fmt::format("{}: entry {} is {} bytes long, more than the header's max_token_length {}", path,
                                       index, pieces_.back().size(), max_token_length));
    scores_.push_back(score);
    offset += static_cast<size_t>(len);
  }
  if (expected_vocab_size >= 0 && static_cast<int64_t>(pieces_.size()) != expected_vocab_size)
    throw TokenizerError(fmt::format("{}: holds {} tokens but the model's vocab_size is {}; a llama2.c tokenizer holds exactly "
                                     "that many (a file cut short, or another model's tokenizer)",
                                     path, pieces_.size(), expected_vocab_size));
  if (pieces_.size() <= static_cast<size_t>(kEosId))
    throw TokenizerError(fmt::format("{}: holds {} tokens; a llama2.c vocabulary starts with <unk>, <s>, </s>", path,
                                     pieces_.size()));
  id_of_.reserve(pieces_.size());
  for (size_t i = 0; i < pieces_.size(); ++i) {
    const auto [it, fresh] = id_of_.emplace(pieces_[i], static_cast<int32_t>(i));
    if (!fresh)  // one text, two ids: which one a lookup finds would be arbitrary
      throw TokenizerError(fmt::format("{}: entries {} and {} are the same piece", path, it->second, i));
  }
}

std::vector<int32_t> Llama2cTokenizer::encode(const std::string& input, bool add_special) const {
  // The whole string, NUL bytes included (run.c's text is a C string and would end at the first
  // one; a data file for ppl is not). A NUL is never part of a piece (pieces end at their first
  // NUL), so it is encoded as its byte token <0x00>.
  const std::string& text = input;
  std::vector<int32_t> tokens;
  tokens.reserve(text.size() + 2);
  if (add_special) tokens.push_back(kBosId);
  if (!text.empty()) {
    const int32_t dummy_prefix = lookup(" ");
    if (dummy_prefix < 0) throw TokenizerError(fmt::format("{}: has no \" \" token for the dummy prefix", path_));
    tokens.push_back(dummy_prefix);
  }
  const auto is_continuation = [](char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; };
  std::string code_point;
  for (size_t i = 0; i < text.size(); ++i) {
    if (!is_continuation(text[i])) code_point.clear();
    code_point.push_back(text[i]);
    const bool next_continues = i + 1 < text.size() && is_continuation(text[i + 1]);
    if (next_continues && code_point.size() < 4) continue;
    const int32_t id = lookup(code_point);
    if (id >= 0) {
      tokens.push_back(id);
    } else {
      for (char c : code_point) {
        const int32_t byte_id = static_cast<unsigned char>(c) + kByteTokenOffset;
        if (byte_id >= static_cast<int32_t>(pieces_.size()))
          throw TokenizerError(fmt::format("{}: has no byte token for 0x{:02X}", path_, static_cast<unsigned char>(c)));
        tokens.push_back(byte_id);
      }
    }
    code_point.clear();
  }

  // Merging. A candidate is valid while both nodes live, are adjacent and hold the same ids as
  // when it was pushed; the heap top among valid ones is run.c's choice: the highest score, and
  // among equal scores the leftmost pair (node order never changes, so index order is position
  // order). run.c starts its best score at -1e10 and compares with '>': a pair scoring no more
  // than that (or NaN) is never merged, so it is never pushed.
  const auto n = static_cast<int32_t>(tokens.size());
  std::vector<int32_t> next(static_cast<size_t>(n)), prev(static_cast<size_t>(n));
  std::vector<bool> alive(static_cast<size_t>(n), true);
  for (int32_t i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Candidate {
    float score;
    int32_t left, right, left_id, right_id, merged_id;
  };
  const auto worse = [](const Candidate& a, const Candidate& b) {
    return a.score != b.score ? a.score < b.score : a.left > b.left;
  };
  std::vector<Candidate> heap;
  std::unordered_map<uint64_t, int32_t> merged_of_pair;  // text repeats pairs; skip the string work
  const float kNoMerge = static_cast<float>(-1e10);
  const auto push = [&](int32_t left) {
    if (left < 0) return;
    const int32_t right = next[left];
    if (right < 0) return;
    const int32_t a = tokens[left], b = tokens[right];
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
    auto it = merged_of_pair.find(key);
    if (it == merged_of_pair.end()) it = merged_of_pair.emplace(key, lookup(pieces_[a] + pieces_[b])).first;
    const int32_t merged = it->second;
    if (merged < 0 || !(scores_[merged] > kNoMerge)) return;
    heap.push_back({scores_[merged], left, right, a, b, merged});
    std::push_heap(heap.begin(), heap.end(), worse);
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), worse);
    const Candidate c = heap.back();
    heap.pop_back();
    if (!alive[c.left] || !alive[c.right] || next[c.left] != c.right || tokens[c.left] != c.left_id ||
        tokens[c.right] != c.right_id)
      continue;
    tokens[c.left] = c.merged_id;
    alive[c.right] = false;
    next[c.left] = next[c.right];
    if (next[c.right] >= 0) prev[next[c.right]] = c.left;
    push(prev[c.left]);
    push(c.left);
  }
  std::vector<int32_t> out;
  out.reserve(tokens.size());
  for (int32_t i = 0; i < n; ++i)
    if (alive[i]) out.push_back(tokens[i]);
  return out;
}

std::string Llama2cTokenizer::decode_step(int32_t prev, int32_t id) const {
  if (id < 0 || id >= static_cast<int32_t>(pieces_.size())) return {};
  const char* piece = pieces_[id].c_str();
  if (prev == kBosId && piece[0] == ' ') ++piece;
  if (std::strncmp(piece, "<0x", 3) == 0) {
    unsigned char byte_val;
    if (std::sscanf(piece, "<0x%02hhX>", &byte_val) == 1)
      return byte_val == 0 ? std::string() : std::string(1, static_cast<char>(byte_val));
  }
  return piece;
}

// The text run.c prints for `ids` when they are a sequence it walks through: each token decoded
// after its predecessor; skip_special leaves out BOS and EOS (run.c never prints them).
std::string Llama2cTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::string text;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (skip_special && (ids[i] == kBosId || ids[i] == kEosId)) continue;
    text += decode_step(i > 0 ? ids[i - 1] : -1, ids[i]);
  }
  return text;
}

}  // namespace

std::unique_ptr<Tokenizer> load_llama2c_tokenizer(const std::string& path, int64_t vocab_size) {
  return std::make_unique<Llama2cTokenizer>(path, vocab_size);
}

}  // namespace sharq
