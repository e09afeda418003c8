// SentencePiece tokenizer.model through libsentencepiece: the library is the reference, so encode
// and decode call it; only BOS placement and the streaming step are ours. Encoding follows
// Hugging Face's Llama tokenizers: [bos] + sp.encode(text).
#include "sharq/model/tokenizer.h"

#include <fmt/format.h>

#if SHARQ_HAVE_SENTENCEPIECE
#include <sentencepiece_processor.h>

#include <cstdlib>
#include <filesystem>
#endif

namespace sharq {

#if !SHARQ_HAVE_SENTENCEPIECE

std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& path) {
  throw TokenizerError(fmt::format("{}: sharq was built without sentencepiece (libsentencepiece-dev), which "
                                   "tokenizer.model files need",
                                   path));
}

#else

namespace {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& path) : path_(path) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec))
      throw TokenizerError(fmt::format("{}: cannot open tokenizer file (no such file)", path));
    const auto status = sp_.Load(path);
    if (!status.ok()) throw TokenizerError(fmt::format("{}: not a SentencePiece model: {}", path, status.ToString()));
  }

  std::vector<int32_t> encode(const std::string& text, bool add_special) const override {
    std::vector<int> pieces;
    const auto status = sp_.Encode(text, &pieces);
    if (!status.ok()) throw TokenizerError(fmt::format("{}: encode failed: {}", path_, status.ToString()));
    std::vector<int32_t> ids;
    ids.reserve(pieces.size() + 1);
    if (add_special && sp_.bos_id() >= 0) ids.push_back(sp_.bos_id());
    ids.insert(ids.end(), pieces.begin(), pieces.end());
    return ids;
  }

  // skip_special: exactly sp.decode (control pieces vanish). Otherwise control pieces are kept as
  // their text ("<s>", "</s>") and the rest comes from the same library decode, piece by piece, so
  // byte-fallback and leading-space handling stay the library's.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special) const override {
    std::vector<int> valid;
    valid.reserve(ids.size());
    for (int32_t id : ids)
      if (in_vocab(id)) valid.push_back(id);
    if (skip_special) {
      std::string text;
      const auto status = sp_.Decode(valid, &text);
      if (!status.ok()) throw TokenizerError(fmt::format("{}: decode failed: {}", path_, status.ToString()));
      return text;
    }
    const sentencepiece::ImmutableSentencePieceText decoded = sp_.DecodeIdsAsImmutableProto(valid);
    std::string text;
    for (const auto& piece : decoded.pieces()) {
      if (sp_.IsControl(static_cast<int>(piece.id()))) text += piece.piece();
      else text += piece.surface();
    }
    return text;
  }

  // The piece with U+2581 as a space; its leading space is dropped at the start of the text
  // (after BOS), where sp.decode drops the dummy prefix; <0xXX> pieces are that raw byte.
  std::string decode_step(int32_t prev, int32_t id) const override {
    if (!in_vocab(id)) return {};
    const std::string& piece = sp_.IdToPiece(id);
    if (sp_.IsByte(id) && piece.size() == 6)  // "<0xXX>"
      return std::string(1, static_cast<char>(std::strtol(piece.substr(3, 2).c_str(), nullptr, 16)));
    if (sp_.IsControl(id)) return piece;
    if (sp_.IsUnknown(id)) {
      std::string text;
      if (!sp_.Decode(std::vector<int>{id}, &text).ok()) return {};
      return text;
    }
    static const std::string kSpaceSymbol = "\xE2\x96\x81";  // U+2581
    std::string text;
    for (size_t i = 0; i < piece.size();) {
      if (piece.compare(i, kSpaceSymbol.size(), kSpaceSymbol) == 0) {
        text.push_back(' ');
        i += kSpaceSymbol.size();
      } else {
        text.push_back(piece[i++]);
      }
    }
    const bool at_start = prev < 0 || prev == sp_.bos_id();
    if (at_start && !text.empty() && text[0] == ' ') text.erase(0, 1);
    return text;
  }

  int64_t vocab_size() const override { return sp_.GetPieceSize(); }
  std::string source() const override { return path_; }
  int32_t bos_id() const override { return sp_.bos_id(); }
  int32_t eos_id() const override { return sp_.eos_id(); }

 private:
  bool in_vocab(int32_t id) const { return id >= 0 && id < sp_.GetPieceSize(); }

  std::string path_;
  sentencepiece::SentencePieceProcessor sp_;
};

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& path) {
  return std::make_unique<SentencePieceTokenizer>(path);
}

#endif  // SHARQ_HAVE_SENTENCEPIECE

}  // namespace sharq
