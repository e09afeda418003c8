// Tokenizers behind one interface: Hugging Face tokenizer.json (byte-level BPE, Llama-3 / Qwen2/3),
// SentencePiece tokenizer.model (through libsentencepiece), and the llama2.c tokenizer (tok*.bin).
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace sharq {

struct TokenizerError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// A well-formed tokenizer file of a kind sharq does not implement (e.g. a SentencePiece-style
// tokenizer.json with Metaspace); load_tokenizer_for then uses a tokenizer.model beside it.
struct UnsupportedTokenizerError : TokenizerError {
  using TokenizerError::TokenizerError;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Token ids of `text`. add_special: the tokenizer's own post-processing (BOS for SentencePiece
  // Llama models and llama2.c; nothing for Qwen's tokenizer.json, as Hugging Face does).
  virtual std::vector<int32_t> encode(const std::string& text, bool add_special = true) const = 0;
  // Text of `ids`; skip_special drops special/control tokens (BOS, EOS, <|im_end|>, ...).
  virtual std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const = 0;
  // The text one token adds when streamed after `prev` (generation output). Special tokens are not
  // skipped. Byte-level pieces are raw bytes (possibly part of a UTF-8 character), so the
  // concatenation of the steps is the exact text; ids outside the vocabulary give "".
  virtual std::string decode_step(int32_t prev, int32_t id) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;  // -1 when none
  virtual int32_t eos_id() const = 0;  // -1 when none
};

std::unique_ptr<Tokenizer> load_bpe_tokenizer_json(const std::string& path);     // tokenizer.json
std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& path); // tokenizer.model
// tok512.bin: entries are read to the end of the file; vocab_size >= 0 checks their count.
std::unique_ptr<Tokenizer> load_llama2c_tokenizer(const std::string& path, int64_t vocab_size = -1);

// An explicit tokenizer_path (file) is loaded by its extension (.json, .model, .bin), else by its
// content. A directory (model_path, or tokenizer_path naming one) uses the first of tokenizer.json,
// tokenizer.model, tokenizer.bin, or its only tok*.bin; a tokenizer.json that is not byte-level BPE
// gives way to a tokenizer.model beside it. A model file (a llama2.c checkpoint, a lone
// .safetensors) searches its own directory the same way. Throws TokenizerError naming what is
// missing.
std::unique_ptr<Tokenizer> load_tokenizer_for(const std::string& model_path, const std::string& tokenizer_path = "");

}  // namespace sharq
