// Finding the tokenizer of a model: by explicit path, or beside the model.
#include "sharq/model/tokenizer.h"

#include <algorithm>
#include <cctype>
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

// An unknown extension is judged by the first bytes: JSON opens with '{'; a SentencePiece model is
// a protobuf whose first field is a non-empty `pieces` entry (tag 0x0A, then a non-zero length);
// anything else is taken as the llama2.c format, whose loader checks every length it reads.
std::unique_ptr<Tokenizer> load_tokenizer_file(const fs::path& path) {
  const std::string ext = lower(path.extension().string());
  if (ext == ".json") return load_bpe_tokenizer_json(path.string());
  if (ext == ".model") return load_sentencepiece_tokenizer(path.string());
  if (ext == ".bin") return load_llama2c_tokenizer(path.string());
  std::ifstream in(path, std::ios::binary);
  if (!in) throw TokenizerError(fmt::format("{}: cannot open tokenizer file", path.string()));
  unsigned char head[2] = {0, 0};
  char c;
  size_t n = 0;
  while (n < 2 && in.get(c)) {
    if (n == 0 && (c == ' ' || c == '\t' || c == '\n' || c == '\r')) continue;
    head[n++] = static_cast<unsigned char>(c);
  }
  if (n >= 1 && head[0] == '{') return load_bpe_tokenizer_json(path.string());
  if (n == 2 && head[0] == 0x0A && head[1] != 0) return load_sentencepiece_tokenizer(path.string());
  return load_llama2c_tokenizer(path.string());
}

// tokenizer.json, else tokenizer.model, else tokenizer.bin, else the directory's only tok*.bin
// (llama2.c ships tok512.bin etc. beside its checkpoints). `exclude` is the model file itself.
std::unique_ptr<Tokenizer> load_tokenizer_in_directory(const fs::path& dir, const fs::path& exclude) {
  std::error_code ec;
  const fs::path json = dir / "tokenizer.json", model = dir / "tokenizer.model", bin = dir / "tokenizer.bin";
  if (fs::is_regular_file(json, ec)) {
    if (!fs::is_regular_file(model, ec)) return load_bpe_tokenizer_json(json.string());
    try {
      return load_bpe_tokenizer_json(json.string());
    } catch (const UnsupportedTokenizerError&) {
      return load_sentencepiece_tokenizer(model.string());  // e.g. Llama-2's Metaspace tokenizer.json
    }
  }
  if (fs::is_regular_file(model, ec)) return load_sentencepiece_tokenizer(model.string());
  if (fs::is_regular_file(bin, ec) && !fs::equivalent(bin, exclude, ec)) return load_llama2c_tokenizer(bin.string());
  std::vector<fs::path> tok_bins;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() >= 7 && name.rfind("tok", 0) == 0 && lower(it->path().extension().string()) == ".bin" &&
        it->is_regular_file(ec) && !fs::equivalent(it->path(), exclude, ec))
      tok_bins.push_back(it->path());
  }
  if (tok_bins.size() == 1) return load_llama2c_tokenizer(tok_bins[0].string());
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

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer_for(const std::string& model_path, const std::string& tokenizer_path) {
  std::error_code ec;
  if (!tokenizer_path.empty()) {
    const fs::path p(tokenizer_path);
    if (fs::is_directory(p, ec)) return load_tokenizer_in_directory(p, fs::path());
    if (!fs::exists(p, ec)) throw TokenizerError(fmt::format("{}: tokenizer file does not exist", tokenizer_path));
    return load_tokenizer_file(p);
  }
  const fs::path model(model_path);
  if (fs::is_directory(model, ec)) return load_tokenizer_in_directory(model, fs::path());
  if (!fs::exists(model, ec))
    throw TokenizerError(fmt::format("{}: model path does not exist, so no tokenizer can be found beside it", model_path));
  const fs::path dir = model.has_parent_path() ? model.parent_path() : fs::path(".");
  return load_tokenizer_in_directory(dir, model);
}

}  // namespace sharq
