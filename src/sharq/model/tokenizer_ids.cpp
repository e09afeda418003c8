// The token-id tokenizer: text is decimal token ids separated by white space. It serves models
// that come without a vocabulary (`sharq serve --synthetic`), where a load generator sends token
// ids and counts tokens, and any text a client sends must still mean exactly one thing.
#include <algorithm>
#include <charconv>
#include <stdexcept>

#include <fmt/format.h>

#include "sharq/model/tokenizer.h"

namespace sharq {
namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// At most 32 bytes of a word for a message, cut at a UTF-8 character boundary (messages travel as JSON).
std::string cut_word(const std::string& w) {
  if (w.size() <= 32) return w;
  size_t n = 32;
  while (n > 0 && (static_cast<unsigned char>(w[n]) & 0xC0) == 0x80) --n;  // w[n] continues a character
  return w.substr(0, n) + "...";
}

class TokenIdTokenizer final : public Tokenizer {
 public:
  explicit TokenIdTokenizer(int64_t vocab) : vocab_(vocab) {}

  std::vector<int32_t> encode(const std::string& text, bool /*add_special*/) const override {
    std::vector<int32_t> ids;
    size_t i = 0;
    while (i < text.size()) {
      if (is_space(text[i])) {
        ++i;
        continue;
      }
      size_t j = i;
      while (j < text.size() && !is_space(text[j])) ++j;
      int64_t v = -1;
      const auto [end, ec] = std::from_chars(text.data() + i, text.data() + j, v);
      if (text[i] == '-' || ec != std::errc() || end != text.data() + j || v < 0 || v >= vocab_)
        throw std::invalid_argument(fmt::format(
            "this model has no vocabulary: a text prompt must be token ids in [0, {}) separated by spaces, got '{}'",
            vocab_, cut_word(text.substr(i, j - i))));
      ids.push_back(static_cast<int32_t>(v));
      i = j;
    }
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids, bool /*skip_special*/) const override {
    std::string s;
    for (int32_t id : ids) s += piece(id);
    return s;
  }
  std::string decode_step(int32_t /*prev*/, int32_t id) const override { return piece(id); }
  int64_t vocab_size() const override { return vocab_; }
  std::string source() const override { return "token ids"; }
  int32_t bos_id() const override { return -1; }
  int32_t eos_id() const override { return -1; }

 private:
  std::string piece(int32_t id) const { return id >= 0 && id < vocab_ ? fmt::format(" {}", id) : std::string(); }
  int64_t vocab_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_token_id_tokenizer(int64_t vocab_size) {
  if (vocab_size < 1 || vocab_size > (int64_t{1} << 31) - 1)
    throw std::invalid_argument(fmt::format("token-id tokenizer: vocab_size {} is out of range", vocab_size));
  return std::make_unique<TokenIdTokenizer>(vocab_size);
}

}  // namespace sharq
