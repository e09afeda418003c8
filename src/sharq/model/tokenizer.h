// Tokenizers behind one interface: Hugging Face tokenizer.json (byte-level BPE, Llama-3 / Qwen2/3),
// SentencePiece tokenizer.model (through libsentencepiece), and the llama2.c tokenizer (tok*.bin).
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "sharq/model/config.h"

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
  // The file it was loaded from, for messages ("" when unknown).
  virtual std::string source() const { return {}; }
  // True for a format that has no token count of its own and so must hold exactly the model's
  // vocab_size entries: llama2.c's tok*.bin (run.c reads vocab_size entries, a number it takes from
  // the checkpoint's header), where a file cut at an entry boundary is otherwise well-formed.
  virtual bool count_set_by_model() const { return false; }
  virtual int32_t bos_id() const = 0;  // -1 when none
  virtual int32_t eos_id() const = 0;  // -1 when none
};

// tokenizer.json. Ids must stay below 2 x (vocab entries + added tokens) + 1024, so that a small
// file cannot size a large table; model_vocab_size (the model's, when known) is named in that error.
std::unique_ptr<Tokenizer> load_bpe_tokenizer_json(const std::string& path, int64_t model_vocab_size = -1);
std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& path); // tokenizer.model
// tok512.bin (a regular file of at most 256 MiB): entries are read to the end of the file;
// vocab_size >= 0 (the model's) requires exactly that many, as run.c reads that many.
std::unique_ptr<Tokenizer> load_llama2c_tokenizer(const std::string& path, int64_t vocab_size = -1);

// An explicit tokenizer_path (file) is loaded by its extension (.json, .model, .bin), else by its
// content. A directory (model_path, or tokenizer_path naming one) uses the first of tokenizer.json,
// tokenizer.model, tokenizer.bin, or its only tok*.bin; a tokenizer.json that is not byte-level BPE
// gives way to a tokenizer.model beside it. A model file (a llama2.c checkpoint, a lone
// .safetensors) searches its own directory the same way. Throws TokenizerError naming what is
// missing. The tools call the overload below, which also checks the tokenizer against the model.
std::unique_ptr<Tokenizer> load_tokenizer_for(const std::string& model_path, const std::string& tokenizer_path = "");

// The name a directory search looks for (tokenizer.json, tokenizer.model or tokenizer.bin) for the
// tokenizer file at `path`, judged as load_tokenizer_for judges an explicit file: by its extension,
// else by its first bytes. What `quantize --tokenizer` writes it as.
std::string tokenizer_file_name(const std::string& path);

// Whether `tok` can drive the model `model` (its config): throws TokenizerError naming both files
// and both sizes when the tokenizer has more tokens than the model's vocab_size (its top ids would
// index past the embedding rows), or, for a format whose count the model sets
// (count_set_by_model: llama2.c), when it has fewer (a truncated or foreign tok*.bin). A tokenizer
// below 90% of vocab_size is accepted with a warning on stderr ("sharq: warning: ...") naming both
// sizes; anything from 90% up is silent, since models pad their embedding rows (Qwen3: 151,936
// rows for 151,669 tokens). `tok_path` and `model_path` are used in messages only; an empty
// tok_path means tok.source().
void check_tokenizer_fits(const Tokenizer& tok, const ModelConfig& model, const std::string& tok_path,
                          const std::string& model_path);
// Text as decimal token ids separated by white space, for a model without a vocabulary (`serve
// --synthetic`): encode() parses ids (std::invalid_argument for anything else or an id outside
// [0, vocab_size)), each token decodes to " <id>"; no BOS or EOS.
std::unique_ptr<Tokenizer> make_token_id_tokenizer(int64_t vocab_size);
// load_tokenizer_for, then check_tokenizer_fits against `model` (the config of the weights loaded
// from model_path): what generate, ppl, eval and analyze call.
std::unique_ptr<Tokenizer> load_tokenizer_for(const std::string& model_path, const std::string& tokenizer_path,
                                              const ModelConfig& model);

}  // namespace sharq
