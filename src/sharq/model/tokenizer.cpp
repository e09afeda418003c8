// Finding the tokenizer of a model: by explicit path, or beside the model.
#include "sharq/model/tokenizer.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>

namespace sharq {
namespace {

namespace fs = std::filesystem;

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

enum class FileFormat { bpe_json, sentencepiece, llama2c };

// An unknown extension is judged by the first bytes: JSON opens with '{'; a SentencePiece model is
// a protobuf whose first field is a non-empty `pieces` entry (tag 0x0A, then a non-zero length);
// anything else is taken as the llama2.c format, whose loader checks every length it reads.
FileFormat file_format(const fs::path& path) {
  const std::string ext = lower(path.extension().string());
  if (ext == ".json") return FileFormat::bpe_json;
  if (ext == ".model") return FileFormat::sentencepiece;
  if (ext == ".bin") return FileFormat::llama2c;
  std::ifstream in(path, std::ios::binary);
  if (!in) throw TokenizerError(fmt::format("{}: cannot open tokenizer file", path.string()));
  unsigned char head[2] = {0, 0};
  char c;
  size_t n = 0;
  while (n < 2 && in.get(c)) {
    if (n == 0 && (c == ' ' || c == '\t' || c == '\n' || c == '\r')) continue;
    head[n++] = static_cast<unsigned char>(c);
  }
  if (n >= 1 && head[0] == '{') return FileFormat::bpe_json;
  if (n == 2 && head[0] == 0x0A && head[1] != 0) return FileFormat::sentencepiece;
  return FileFormat::llama2c;
}

std::unique_ptr<Tokenizer> load_tokenizer_file(const fs::path& path, int64_t model_vocab) {
  switch (file_format(path)) {
    case FileFormat::bpe_json: return load_bpe_tokenizer_json(path.string(), model_vocab);
    case FileFormat::sentencepiece: return load_sentencepiece_tokenizer(path.string());
    case FileFormat::llama2c: break;
  }
  return load_llama2c_tokenizer(path.string(), model_vocab);
}

// tokenizer.json, else tokenizer.model, else tokenizer.bin, else the directory's only tok*.bin
// (llama2.c ships tok512.bin etc. beside its checkpoints). `exclude` is the model file itself.
std::unique_ptr<Tokenizer> load_tokenizer_in_directory(const fs::path& dir, const fs::path& exclude, int64_t model_vocab) {
  std::error_code ec;
  const fs::path json = dir / "tokenizer.json", model = dir / "tokenizer.model", bin = dir / "tokenizer.bin";
  if (fs::is_regular_file(json, ec)) {
    if (!fs::is_regular_file(model, ec)) return load_bpe_tokenizer_json(json.string(), model_vocab);
    try {
      return load_bpe_tokenizer_json(json.string(), model_vocab);
    } catch (const UnsupportedTokenizerError&) {
      return load_sentencepiece_tokenizer(model.string());  // e.g. Llama-2's Metaspace tokenizer.json
    }
  }
  if (fs::is_regular_file(model, ec)) return load_sentencepiece_tokenizer(model.string());
  if (fs::is_regular_file(bin, ec) && !fs::equivalent(bin, exclude, ec)) return load_llama2c_tokenizer(bin.string(), model_vocab);
  std::vector<fs::path> tok_bins;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() >= 7 && name.rfind("tok", 0) == 0 && lower(it->path().extension().string()) == ".bin" &&
        it->is_regular_file(ec) && !fs::equivalent(it->path(), exclude, ec))
      tok_bins.push_back(it->path());
  }
  if (tok_bins.size() == 1) return load_llama2c_tokenizer(tok_bins[0].string(), model_vocab);
  if (tok_bins.size() > 1) {
    std::sort(tok_bins.begin(), tok_bins.end());
    std::string names;
    for (const fs::path& p : tok_bins) names += (names.empty() ? "" : ", ") + p.filename().string();
    throw TokenizerError(fmt::format("{}: several llama2.c tokenizers ({}); pass the tokenizer path explicitly",
                                     dir.string(), names));
  }
  throw TokenizerError(fmt::format("{}: no tokenizer found (looked for tokenizer.json, tokenizer.model, tokenizer.bin, "
                                   "tok*.bin); pass the tokenizer path explicitly", dir.string()));
}

// model_vocab: the model's vocab_size when known (else -1): the llama2.c tokenizer's exact count,
// and a number for the BPE loader's messages.
std::unique_ptr<Tokenizer> find_and_load(const std::string& model_path, const std::string& tokenizer_path, int64_t model_vocab) {
  std::error_code ec;
  if (!tokenizer_path.empty()) {
    const fs::path p(tokenizer_path);
    if (fs::is_directory(p, ec)) return load_tokenizer_in_directory(p, fs::path(), model_vocab);
    if (!fs::exists(p, ec)) throw TokenizerError(fmt::format("{}: tokenizer file does not exist", tokenizer_path));
    return load_tokenizer_file(p, model_vocab);
  }
  const fs::path model(model_path);
  if (fs::is_directory(model, ec)) return load_tokenizer_in_directory(model, fs::path(), model_vocab);
  if (!fs::exists(model, ec))
    throw TokenizerError(fmt::format("{}: model path does not exist, so no tokenizer can be found beside it", model_path));
  const fs::path dir = model.has_parent_path() ? model.parent_path() : fs::path(".");
  return load_tokenizer_in_directory(dir, model, model_vocab);
}

}  // namespace

std::string tokenizer_file_name(const std::string& path) {
  switch (file_format(path)) {
    case FileFormat::bpe_json: return "tokenizer.json";
    case FileFormat::sentencepiece: return "tokenizer.model";
    case FileFormat::llama2c: break;
  }
  return "tokenizer.bin";
}

std::unique_ptr<Tokenizer> load_tokenizer_for(const std::string& model_path, const std::string& tokenizer_path) {
  return find_and_load(model_path, tokenizer_path, -1);
}

void check_tokenizer_fits(const Tokenizer& tok, const ModelConfig& model, const std::string& tok_path,
                          const std::string& model_path) {
  const std::string tok_name = tok_path.empty() ? (tok.source().empty() ? std::string("the tokenizer") : tok.source()) : tok_path;
  const int64_t n_tok = tok.vocab_size(), n_model = model.vocab_size;
  if (n_tok > n_model)
    throw TokenizerError(fmt::format("{}: the tokenizer has {} tokens but the model {} has vocab_size {}: ids {}..{} have no "
                                     "embedding row (is it this model's tokenizer?)",
                                     tok_name, n_tok, model_path, n_model, n_model, n_tok - 1));
  if (tok.count_set_by_model() && n_tok < n_model)
    throw TokenizerError(fmt::format("{}: read {} tokens, but the model {} has vocab_size {} and this format holds exactly that "
                                     "many (a truncated file, or another model's tokenizer)",
                                     tok_name, n_tok, model_path, n_model));
  if (10 * n_tok < 9 * n_model)
    std::fprintf(stderr, "sharq: warning: %s: the tokenizer has %lld tokens, the model %s has vocab_size %lld (below 90%%: "
                 "is it this model's tokenizer?)\n",
                 tok_name.c_str(), static_cast<long long>(n_tok), model_path.c_str(), static_cast<long long>(n_model));
}

std::unique_ptr<Tokenizer> load_tokenizer_for(const std::string& model_path, const std::string& tokenizer_path,
                                              const ModelConfig& model) {
  std::unique_ptr<Tokenizer> tok = find_and_load(model_path, tokenizer_path, model.vocab_size);
  check_tokenizer_fits(*tok, model, "", model_path);
  return tok;
}

}  // namespace sharq
