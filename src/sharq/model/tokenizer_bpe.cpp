// Hugging Face tokenizer.json, byte-level BPE (GPT-2 lineage: Llama-3, Qwen2/2.5/3).
//
// The pipeline mirrors the `tokenizers` crate step by step, because every step changes ids:
//   added tokens matched in the raw text (leftmost-longest, with their single_word / lstrip /
//   rstrip flags) -> normalizer on the pieces between them -> added tokens with normalized=true
//   matched in the normalized pieces -> pre-tokenizer Split steps (PCRE2, UTF + UCP) -> ByteLevel
//   (optional prefix space, optional GPT-2 regex, bytes -> printable code points) -> BPE merges
//   -> post-processor (TemplateProcessing / Bert / Roberta / ByteLevel).
// Internally a pre-token stays in raw bytes: the byte -> code point map is a bijection, so the
// vocabulary is re-keyed by raw bytes once at load time and encode never builds mapped strings.
#include "sharq/core/utf8.h"
#include "sharq/model/tokenizer.h"

#include <fmt/format.h>

#if SHARQ_HAVE_BPE

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <iterator>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "sharq/core/json_checks.h"

#endif

namespace sharq {

#if !SHARQ_HAVE_BPE

std::unique_ptr<Tokenizer> load_bpe_tokenizer_json(const std::string& path, int64_t /*model_vocab_size*/) {
  throw TokenizerError(fmt::format("{}: sharq was built without PCRE2/utf8proc (libpcre2-dev, libutf8proc-dev), "
                                   "which the tokenizer.json (byte-level BPE) tokenizer needs",
                                   path));
}

#else

namespace {

using json = nlohmann::json;

[[noreturn]] void unsupported(const std::string& where, const std::string& what) {
  throw UnsupportedTokenizerError(fmt::format("{}: unsupported {} (sharq reads byte-level BPE tokenizer.json files)", where, what));
}

// ---------------------------------------------------------------------------------------------
// UTF-8

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    bool valid;
    const size_t n = utf8_sequence_length(bytes, i, &valid);
    if (valid) out.append(bytes.substr(i, n));
    else out.append("\xEF\xBF\xBD");
    i += n;
  }
  return out;
}


bool is_ascii(std::string_view s) {
  for (char c : s)
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  return true;
}

void append_utf8(std::string& out, uint32_t cp) {
  utf8proc_uint8_t buf[4];
  const utf8proc_ssize_t n = utf8proc_encode_char(static_cast<utf8proc_int32_t>(cp), buf);
  out.append(reinterpret_cast<const char*>(buf), static_cast<size_t>(n));
}

// GPT-2's bytes -> printable code points: the printable Latin-1 bytes map to themselves, the
// other 68 bytes to 256, 257, ... in byte order. This is the definition of the vocabulary's
// alphabet, not a Unicode property.
std::array<uint32_t, 256> byte_level_alphabet() {
  std::array<uint32_t, 256> cp{};
  uint32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    cp[b] = printable ? static_cast<uint32_t>(b) : next++;
  }
  return cp;
}

// Inverse of the alphabet, indexed by code point (all of them are below 324); -1 outside it.
std::vector<int16_t> byte_of_code_point(const std::array<uint32_t, 256>& alphabet) {
  std::vector<int16_t> byte_of(*std::max_element(alphabet.begin(), alphabet.end()) + 1, -1);
  for (int b = 0; b < 256; ++b) byte_of[alphabet[b]] = static_cast<int16_t>(b);
  return byte_of;
}

// Raw bytes of a byte-level token string, or nullopt when some code point is outside the alphabet
// (then the HF decoder passes the token's UTF-8 through unchanged).
std::optional<std::string> byte_level_to_raw(std::string_view token, const std::vector<int16_t>& byte_of) {
  std::string raw;
  raw.reserve(token.size());
  for (size_t i = 0; i < token.size();) {
    utf8proc_int32_t cp;
    const utf8proc_ssize_t n = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(token.data() + i),
                                                static_cast<utf8proc_ssize_t>(token.size() - i), &cp);
    if (n <= 0 || cp < 0 || static_cast<size_t>(cp) >= byte_of.size() || byte_of[cp] < 0) return std::nullopt;
    raw.push_back(static_cast<char>(byte_of[cp]));
    i += static_cast<size_t>(n);
  }
  return raw;
}

// ---------------------------------------------------------------------------------------------
// PCRE2

// std::hash<std::string> keeps each node's hash (libstdc++ caches non-"fast" hashes), which keeps
// bucket walks cheap in tables of 150k tokens; a transparent hash would lose that.
template <class V>
using StringMap = std::unordered_map<std::string, V>;

class Regex {
 public:
  Regex(const std::string& pattern, uint32_t extra_options, const std::string& where) : pattern_(pattern), where_(where) {
    int err = 0;
    PCRE2_SIZE err_offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                          PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK | extra_options, &err, &err_offset, nullptr);
    if (!code_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      throw TokenizerError(fmt::format("{}: regex {:?} does not compile with PCRE2 at offset {}: {}", where, pattern,
                                       err_offset, reinterpret_cast<const char*>(msg)));
    }
    // JIT is an accelerator only: where it is unavailable the interpreter gives the same matches.
    jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
  }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  ~Regex() { pcre2_code_free(code_); }

  // First match in subject[offset..], as [start, end). The subject is always valid UTF-8 (checked
  // once per encode), hence NO_UTF_CHECK. A JIT stack overflow (very long runs under a lookahead)
  // falls back to the interpreter, whose limits are on the heap.
  bool find(std::string_view subject, size_t offset, uint32_t options, size_t* start, size_t* end) const {
    struct MatchData {
      pcre2_match_data* md;
      ~MatchData() { pcre2_match_data_free(md); }
    } data{pcre2_match_data_create_from_pattern(code_, nullptr)};
    if (!data.md) throw std::bad_alloc();
    const auto run = [&](uint32_t extra) {
      return pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(subject.data()), subject.size(), offset,
                         options | PCRE2_NO_UTF_CHECK | extra, data.md, nullptr);
    };
    int rc = run(0);
    if (jit_ && rc < 0 && rc != PCRE2_ERROR_NOMATCH) rc = run(PCRE2_NO_JIT);
    if (rc == PCRE2_ERROR_NOMATCH) return false;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      throw TokenizerError(fmt::format("{}: regex {:?} failed on a {}-byte piece: {}", where_, pattern_, subject.size(),
                                       reinterpret_cast<const char*>(msg)));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(data.md);
    *start = ov[0];
    *end = ov[1];
    return true;
  }

  // Whether the pattern matches at exactly `offset` (used with single-character classes).
  bool matches_at(std::string_view subject, size_t offset) const {
    size_t s, e;
    return offset < subject.size() && find(subject, offset, PCRE2_ANCHORED, &s, &e);
  }

 private:
  std::string pattern_;
  std::string where_;  // the file and the section the pattern comes from, for a failed match's message
  pcre2_code* code_ = nullptr;
  bool jit_ = false;
};

// The crate compiles split patterns with Oniguruma (Ruby syntax); under Unicode some escapes mean
// something else in PCRE2: Onig's \s is exactly White_Space (PCRE2's also takes U+180E), its \w
// is L|M|N|Pc (PCRE2: L|N|_), its \h a hex digit (PCRE2: horizontal space). Those escapes are
// spelled out as properties; the rest of the syntax the tokenizers use is common to both.
std::string pcre2_pattern_from_oniguruma(std::string_view p, const std::string& where) {
  std::string out;
  out.reserve(p.size() + 32);
  int class_depth = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[++i];
      const bool in_class = class_depth > 0;
      switch (e) {
        case 's': out += "\\p{White_Space}"; break;
        case 'S': out += "\\P{White_Space}"; break;
        case 'w': out += in_class ? "\\p{L}\\p{M}\\p{N}\\p{Pc}" : "[\\p{L}\\p{M}\\p{N}\\p{Pc}]"; break;
        case 'h': out += in_class ? "0-9a-fA-F" : "[0-9a-fA-F]"; break;
        case 'W':
        case 'H':
          if (in_class) unsupported(where, fmt::format("regex escape \\{} inside a character class", e));
          out += e == 'W' ? "[^\\p{L}\\p{M}\\p{N}\\p{Pc}]" : "[^0-9a-fA-F]";
          break;
        default:
          out += c;
          out += e;
      }
      continue;
    }
    if (c == '[') ++class_depth;
    else if (c == ']' && class_depth > 0) --class_depth;
    out += c;
  }
  return out;
}

size_t utf8_char_length_at(std::string_view s, size_t i) {
  bool valid;
  return utf8_sequence_length(s, i, &valid);
}
size_t utf8_previous_char_start(std::string_view s, size_t i) {
  do --i;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80);
  return i;
}

// The regex-crate classes HF's added-token flags use: `\w` (Unicode word character) and `\s`
// (White_Space), spelled as PCRE2 Unicode properties.
struct CharClasses {
  Regex word{R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}])", 0, "added-token word class"};
  Regex space{R"(\p{White_Space})", 0, "added-token space class"};
};
const CharClasses& char_classes() {
  static const CharClasses classes;
  return classes;
}

// ---------------------------------------------------------------------------------------------
// Matches of a split pattern, as the crate's Pattern::find_matches: the pieces cover the subject,
// each flagged as a match or not.
struct Span {
  size_t begin, end;
  bool is_match;
};

void find_spans(const Regex& re, std::string_view s, std::vector<Span>& spans) {
  spans.clear();
  if (s.empty()) {
    spans.push_back({0, 0, false});
    return;
  }
  size_t prev = 0, offset = 0, start, end;
  bool have_previous_match = false;
  size_t previous_end = 0;
  while (offset <= s.size() && re.find(s, offset, 0, &start, &end)) {
    if (start == end && have_previous_match && start == previous_end) {
      // an empty match right after a match is not reported (regex-crate iteration semantics)
      if (start >= s.size()) break;
      offset = start + utf8_char_length_at(s, start);
      continue;
    }
    if (prev != start) spans.push_back({prev, start, false});
    spans.push_back({start, end, true});
    prev = end;
    have_previous_match = true;
    previous_end = end;
    if (end == start) {
      if (end >= s.size()) break;
      offset = end + utf8_char_length_at(s, end);
    } else {
      offset = end;
    }
  }
  if (prev != s.size()) spans.push_back({prev, s.size(), false});
}

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// Pieces (non-empty, in order) of `spans` under `behavior`; mirrors NormalizedString::split.
void apply_split_behavior(std::vector<Span>& spans, SplitBehavior behavior, std::vector<std::pair<size_t, size_t>>& out) {
  out.clear();
  struct Piece {
    size_t begin, end;
    bool remove;
  };
  std::vector<Piece> pieces;
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const Span& s : spans) pieces.push_back({s.begin, s.end, false});
      break;
    case SplitBehavior::kRemoved:
      for (const Span& s : spans) pieces.push_back({s.begin, s.end, s.is_match});
      break;
    case SplitBehavior::kContiguous:
      for (const Span& s : spans) {
        if (s.is_match == previous_match && !pieces.empty()) pieces.back().end = s.end;
        else pieces.push_back({s.begin, s.end, false});
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const Span& s : spans) {
        if (s.is_match && !previous_match && !pieces.empty()) pieces.back().end = s.end;
        else pieces.push_back({s.begin, s.end, false});
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !pieces.empty()) pieces.back().begin = it->begin;
        else pieces.push_back({it->begin, it->end, false});
        previous_match = it->is_match;
      }
      std::reverse(pieces.begin(), pieces.end());
      break;
  }
  for (const Piece& p : pieces)
    if (!p.remove && p.end > p.begin) out.emplace_back(p.begin, p.end);
}

// ---------------------------------------------------------------------------------------------
// Added tokens

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

// Leftmost-longest matcher over added-token contents (what aho-corasick's LeftmostLongest gives):
// the earliest start wins, then the longest pattern starting there.
class AddedTokenMatcher {
 public:
  void add(std::string_view pattern, int32_t token_index) {
    if (pattern.empty()) return;
    int32_t node = 0;
    for (char c : pattern) {
      const auto b = static_cast<unsigned char>(c);
      int32_t child = -1;
      for (const auto& [byte, n] : nodes_[node].children)
        if (byte == b) child = n;
      if (child < 0) {
        child = static_cast<int32_t>(nodes_.size());
        nodes_[node].children.emplace_back(b, child);
        nodes_.emplace_back();
      }
      node = child;
    }
    if (nodes_[node].token_index < 0) nodes_[node].token_index = token_index;
    first_byte_[static_cast<unsigned char>(pattern[0])] = true;
    empty_ = false;
  }
  bool empty() const { return empty_; }

  // Next match at or after `from`: sets [*start, *end) and the token index.
  bool find(std::string_view s, size_t from, size_t* start, size_t* end, int32_t* token_index) const {
    for (size_t i = from; i < s.size(); ++i) {
      if (!first_byte_[static_cast<unsigned char>(s[i])]) continue;
      int32_t node = 0, best = -1;
      size_t best_end = 0;
      for (size_t k = i; k < s.size(); ++k) {
        const auto b = static_cast<unsigned char>(s[k]);
        int32_t child = -1;
        for (const auto& [byte, n] : nodes_[node].children)
          if (byte == b) child = n;
        if (child < 0) break;
        node = child;
        if (nodes_[node].token_index >= 0) {
          best = nodes_[node].token_index;
          best_end = k + 1;
        }
      }
      if (best >= 0) {
        *start = i;
        *end = best_end;
        *token_index = best;
        return true;
      }
    }
    return false;
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> children;
    int32_t token_index = -1;
  };
  std::vector<Node> nodes_{1};
  std::array<bool, 256> first_byte_{};
  bool empty_ = true;
};

// A piece of the input: either an added token's id or text still to be tokenized.
struct Segment {
  std::string_view text;
  int32_t id;  // -1: text
};

// ---------------------------------------------------------------------------------------------

enum class NormalForm { kNFC, kNFD, kNFKC, kNFKD };

struct SplitStep {
  std::unique_ptr<Regex> regex;
  SplitBehavior behavior;
  bool invert;
};

struct BpeMerge {
  int32_t rank;
  int32_t new_id;
};

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

// Ids must stay below 2 x (vocab entries + added tokens) + kIdSlack (BpeTokenizer::id_limit_).
constexpr size_t kIdSlack = 1024;

class BpeTokenizer final : public Tokenizer {
 public:
  BpeTokenizer(const std::string& path, int64_t model_vocab_size);

  std::vector<int32_t> encode(const std::string& text, bool add_special) const override;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special) const override;
  std::string decode_step(int32_t prev, int32_t id) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(token_bytes_.size()); }
  std::string source() const override { return path_; }
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }

 private:
  // loading
  void load_model(const json& model);
  void load_added_tokens(const json& added);
  void load_normalizer(const json& normalizer);
  void load_pre_tokenizer(const json& pre_tokenizer);
  void load_post_processor(const json& post);
  void load_decoder(const json& decoder);
  void load_special_ids();
  void build_decode_table();
  int32_t token_id(const std::string& token) const;
  std::string model_vocab_note() const {
    return model_vocab_size_ < 0 ? std::string() : fmt::format("; the model's vocab_size is {}", model_vocab_size_);
  }

  // encoding
  std::string normalize(std::string_view s) const;
  void split_added(std::string_view s, const AddedTokenMatcher& matcher, std::vector<Segment>& out) const;
  void pre_tokenize(std::string_view s, size_t step, std::vector<int32_t>& ids) const;
  void byte_level(std::string_view s, std::vector<int32_t>& ids) const;
  void bpe(std::string_view word, std::vector<int32_t>& ids) const;
  std::vector<int32_t> merge_word(std::string_view word) const;

  std::string path_;
  int64_t model_vocab_size_ = -1;  // the model's, when known: for messages
  int64_t id_limit_ = 0;  // every id in the file is below this (set before the model is read)
  // model
  std::vector<std::string> vocab_tokens_;    // id -> token string as in the file (mapped alphabet)
  std::vector<bool> vocab_present_;           // ids may have holes
  StringMap<int32_t> vocab_;                  // token string -> id
  StringMap<int32_t> raw_vocab_;              // raw bytes -> id, for the ByteLevel alphabet's entries
  std::unordered_map<uint64_t, BpeMerge> merges_;
  std::array<std::vector<int32_t>, 256> byte_symbols_;  // initial symbol ids of one input byte
  std::array<bool, 256> byte_is_unk_{};
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  // added tokens
  std::vector<AddedToken> added_;
  AddedTokenMatcher raw_matcher_, normalized_matcher_;
  // pipeline
  std::vector<NormalForm> normal_forms_;
  std::vector<SplitStep> split_steps_;
  bool byte_level_prefix_space_ = false;
  std::unique_ptr<Regex> byte_level_regex_;
  std::vector<int32_t> prefix_ids_, suffix_ids_;
  int32_t bos_id_ = -1, eos_id_ = -1;
  // decoding
  std::vector<std::string> token_bytes_;  // id -> bytes it decodes to
  std::vector<bool> is_special_;
  std::array<uint32_t, 256> alphabet_ = byte_level_alphabet();
  // BPE results per pre-token: text repeats words heavily, so this removes most merge work.
  static constexpr size_t kCacheMaxWordBytes = 256;
  static constexpr size_t kCacheMaxEntries = 1 << 18;
  mutable std::mutex cache_mutex_;
  mutable StringMap<std::vector<int32_t>> cache_;
};

// JSON accessors that name the file and the field in their errors.
const json& field(const json& j, const char* key, const std::string& where) {
  if (!j.is_object() || !j.contains(key)) throw TokenizerError(fmt::format("{}: missing field \"{}\"", where, key));
  return j.at(key);
}
std::string string_field(const json& j, const char* key, const std::string& where) {
  const json& v = field(j, key, where);
  if (!v.is_string()) throw TokenizerError(fmt::format("{}: field \"{}\" is not a string", where, key));
  return v.get<std::string>();
}
bool bool_field(const json& j, const char* key, bool fallback, const std::string& where) {
  if (!j.is_object() || !j.contains(key) || j.at(key).is_null()) return fallback;
  if (!j.at(key).is_boolean()) throw TokenizerError(fmt::format("{}: field \"{}\" is not a boolean", where, key));
  return j.at(key).get<bool>();
}
std::string type_of(const json& j, const std::string& where) {
  if (!j.is_object()) throw TokenizerError(fmt::format("{}: expected an object", where));
  return string_field(j, "type", where);
}

BpeTokenizer::BpeTokenizer(const std::string& path, int64_t model_vocab_size)
    : path_(path), model_vocab_size_(model_vocab_size) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw TokenizerError(fmt::format("{}: cannot open tokenizer file", path));
  json root;
  try {
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    root = json_checks::parse_unique(text);
  } catch (const json::exception& e) {
    throw TokenizerError(fmt::format("{}: malformed JSON: {}", path, e.what()));
  } catch (const std::invalid_argument& e) {
    throw TokenizerError(fmt::format("{}: {}", path, e.what()));
  }
  if (!root.is_object()) throw TokenizerError(fmt::format("{}: the top level is not a JSON object", path));
  try {
    // Ids index the id -> token tables, so an id sizes an allocation: it must stay within a small
    // multiple of the entries the file holds (vocab and added_tokens), which leaves room for holes
    // in the id space but not for a 67-byte file asking for gigabytes.
    size_t entries = 0;
    if (const json& model = field(root, "model", path); model.is_object() && model.contains("vocab") && model.at("vocab").is_object())
      entries += model.at("vocab").size();
    if (root.contains("added_tokens") && root.at("added_tokens").is_array()) entries += root.at("added_tokens").size();
    id_limit_ = static_cast<int64_t>(2 * entries + kIdSlack);
    load_model(field(root, "model", path));
    load_normalizer(root.value("normalizer", json()));
    if (root.contains("added_tokens")) load_added_tokens(root.at("added_tokens"));
    load_pre_tokenizer(root.value("pre_tokenizer", json()));
    load_post_processor(root.value("post_processor", json()));
    load_decoder(root.value("decoder", json()));
    build_decode_table();
    load_special_ids();
  } catch (const json::exception& e) {  // a field of an unexpected JSON type
    throw TokenizerError(fmt::format("{}: unexpected content: {}", path, e.what()));
  }
}

void BpeTokenizer::load_model(const json& model) {
  const std::string where = path_ + ": model";
  if (model.contains("type") && type_of(model, where) != "BPE") unsupported(where, "model type " + type_of(model, where));
  if (model.contains("dropout") && !model.at("dropout").is_null() && model.at("dropout").get<double>() != 0.0)
    unsupported(where, "BPE dropout (it makes encoding random)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (model.contains(key) && model.at(key).is_string() && !model.at(key).get<std::string>().empty())
      unsupported(where, fmt::format("\"{}\" (not byte-level BPE)", key));
  fuse_unk_ = bool_field(model, "fuse_unk", false, where);
  ignore_merges_ = bool_field(model, "ignore_merges", false, where);
  const bool byte_fallback = bool_field(model, "byte_fallback", false, where);

  const json& vocab = field(model, "vocab", where);
  if (!vocab.is_object()) throw TokenizerError(fmt::format("{}: field \"vocab\" is not an object", where));
  std::vector<std::pair<const std::string*, int32_t>> entries;
  entries.reserve(vocab.size());
  int64_t max_id = -1;
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
      throw TokenizerError(fmt::format("{}: vocab entry {:?} has an invalid id", where, token));
    if (id.get<int64_t>() >= id_limit_)
      throw TokenizerError(fmt::format("{}: field \"vocab\" entry {:?} has id {}, beyond the limit {} for a file of {} vocab and "
                                       "added entries (ids must stay below twice that count plus {})",
                                       where, token, id.get<int64_t>(), id_limit_, (id_limit_ - kIdSlack) / 2, kIdSlack) +
                           model_vocab_note());
    max_id = std::max(max_id, id.get<int64_t>());
    entries.emplace_back(&token, static_cast<int32_t>(id.get<int64_t>()));
  }
  vocab_tokens_.assign(static_cast<size_t>(max_id + 1), std::string());
  vocab_present_.assign(vocab_tokens_.size(), false);
  vocab_.reserve(entries.size());
  raw_vocab_.reserve(entries.size());
  const std::vector<int16_t> byte_of = byte_of_code_point(alphabet_);
  for (const auto& [token, id] : entries) {
    if (vocab_present_[id])  // (JSON object keys are unique, so two entries here are two strings)
      throw TokenizerError(fmt::format("{}: vocab entries {:?} and {:?} share id {}", where, vocab_tokens_[id], *token, id));
    vocab_tokens_[id] = *token;
    vocab_present_[id] = true;
    vocab_.emplace(*token, id);
    if (auto raw = byte_level_to_raw(*token, byte_of)) raw_vocab_.emplace(std::move(*raw), id);
  }

  if (model.contains("unk_token") && model.at("unk_token").is_string()) {
    const std::string unk = model.at("unk_token").get<std::string>();
    const auto it = vocab_.find(unk);
    if (it == vocab_.end()) throw TokenizerError(fmt::format("{}: unk_token {:?} is not in the vocabulary", where, unk));
    unk_id_ = it->second;
  }
  // Initial symbols: each input byte is one code point of the byte-level alphabet; a code point
  // missing from the vocabulary becomes its <0xXX> byte tokens (byte_fallback) or unk, as in HF.
  for (int b = 0; b < 256; ++b) {
    std::string ch;
    append_utf8(ch, alphabet_[b]);
    if (const auto it = vocab_.find(ch); it != vocab_.end()) {
      byte_symbols_[b] = {it->second};
      continue;
    }
    if (byte_fallback) {
      std::vector<int32_t> ids;
      for (char c : ch) {
        const auto it2 = vocab_.find(fmt::format("<0x{:02X}>", static_cast<unsigned char>(c)));
        if (it2 == vocab_.end()) break;
        ids.push_back(it2->second);
      }
      if (ids.size() == ch.size()) {
        byte_symbols_[b] = ids;
        continue;
      }
    }
    if (unk_id_ >= 0) {
      byte_symbols_[b] = {unk_id_};
      byte_is_unk_[b] = true;
    }
  }

  const json& merges = field(model, "merges", where);
  if (!merges.is_array()) throw TokenizerError(fmt::format("{}: field \"merges\" is not an array", where));
  merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const json& m = merges[rank];
    std::string a, b;
    if (m.is_string()) {  // "a b"
      const std::string s = m.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        throw TokenizerError(fmt::format("{}: merge {} {:?} is not two tokens separated by one space", where, rank, s));
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {  // ["a", "b"]
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      throw TokenizerError(fmt::format("{}: merge {} is neither \"a b\" nor [\"a\", \"b\"]", where, rank));
    }
    const auto ia = vocab_.find(a), ib = vocab_.find(b), iab = vocab_.find(a + b);
    if (ia == vocab_.end() || ib == vocab_.end() || iab == vocab_.end())
      throw TokenizerError(fmt::format("{}: merge {} ({:?} + {:?}) uses or makes a token missing from the vocabulary",
                                       where, rank, a, b));
    // a repeated pair keeps its last rank, as the crate's HashMap collect does
    merges_[pair_key(ia->second, ib->second)] = BpeMerge{static_cast<int32_t>(rank), iab->second};
  }
}

void BpeTokenizer::load_added_tokens(const json& added) {
  const std::string where = path_ + ": added_tokens";
  if (!added.is_array()) throw TokenizerError(fmt::format("{}: not an array", where));
  std::unordered_map<int32_t, size_t> added_ids;  // id -> its first entry in added_
  for (size_t i = 0; i < added.size(); ++i) {
    const std::string w = fmt::format("{}[{}]", where, i);
    const json& t = added[i];
    AddedToken tok;
    const json& id = field(t, "id", w);
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
      throw TokenizerError(fmt::format("{}: invalid id", w));
    if (id.get<int64_t>() >= id_limit_)
      throw TokenizerError(fmt::format("{}: field \"id\" is {}, beyond the limit {} for a file of {} vocab and added entries "
                                       "(ids must stay below twice that count plus {})",
                                       w, id.get<int64_t>(), id_limit_, (id_limit_ - kIdSlack) / 2, kIdSlack) +
                           model_vocab_note());
    tok.id = static_cast<int32_t>(id.get<int64_t>());
    tok.content = string_field(t, "content", w);
    tok.special = bool_field(t, "special", false, w);
    tok.single_word = bool_field(t, "single_word", false, w);
    tok.lstrip = bool_field(t, "lstrip", false, w);
    tok.rstrip = bool_field(t, "rstrip", false, w);
    tok.normalized = bool_field(t, "normalized", !tok.special, w);
    if (tok.content.empty()) continue;  // the crate ignores empty added tokens
    if (first_invalid_utf8(tok.content) != std::string_view::npos)
      throw TokenizerError(fmt::format("{}: content is not valid UTF-8", w));
    // one id, one string: an added token may repeat a vocab entry (special tokens often do), not
    // rename one, and two added tokens may not share an id
    const size_t idx = static_cast<size_t>(tok.id);
    if (idx < vocab_present_.size() && vocab_present_[idx] && vocab_tokens_[idx] != tok.content)
      throw TokenizerError(fmt::format("{}: id {} is {:?} here but {:?} in the vocab", w, tok.id, tok.content, vocab_tokens_[idx]));
    if (const auto [it, fresh] = added_ids.emplace(tok.id, added_.size()); !fresh && added_[it->second].content != tok.content)
      throw TokenizerError(fmt::format("{}: id {} is {:?} here and {:?} in an earlier added token", w, tok.id, tok.content,
                                       added_[it->second].content));
    added_.push_back(std::move(tok));
  }
  // Special tokens take precedence in the crate's matcher (they are listed first); with
  // leftmost-longest matching, order only matters between identical contents.
  std::vector<size_t> order(added_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_partition(order.begin(), order.end(), [&](size_t i) { return added_[i].special; });
  for (size_t i : order) {
    const AddedToken& tok = added_[i];
    if (tok.normalized) normalized_matcher_.add(normalize(tok.content), static_cast<int32_t>(i));
    else raw_matcher_.add(tok.content, static_cast<int32_t>(i));
  }
}

void BpeTokenizer::load_normalizer(const json& normalizer) {
  if (normalizer.is_null()) return;
  const std::string where = path_ + ": normalizer";
  const std::string type = type_of(normalizer, where);
  if (type == "Sequence") {
    const json& list = field(normalizer, "normalizers", where);
    if (!list.is_array()) throw TokenizerError(fmt::format("{}: \"normalizers\" is not an array", where));
    for (const json& n : list) load_normalizer(n);
  } else if (type == "NFC") {
    normal_forms_.push_back(NormalForm::kNFC);
  } else if (type == "NFD") {
    normal_forms_.push_back(NormalForm::kNFD);
  } else if (type == "NFKC") {
    normal_forms_.push_back(NormalForm::kNFKC);
  } else if (type == "NFKD") {
    normal_forms_.push_back(NormalForm::kNFKD);
  } else {
    unsupported(where, "normalizer " + type);
  }
}

SplitBehavior parse_behavior(const std::string& s, const std::string& where) {
  if (s == "Removed") return SplitBehavior::kRemoved;
  if (s == "Isolated") return SplitBehavior::kIsolated;
  if (s == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (s == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (s == "Contiguous") return SplitBehavior::kContiguous;
  throw TokenizerError(fmt::format("{}: unknown split behavior {:?}", where, s));
}

void BpeTokenizer::load_pre_tokenizer(const json& pre) {
  const std::string where = path_ + ": pre_tokenizer";
  std::vector<const json*> steps;
  if (!pre.is_null()) {
    if (type_of(pre, where) == "Sequence") {
      const json& list = field(pre, "pretokenizers", where);
      if (!list.is_array()) throw TokenizerError(fmt::format("{}: \"pretokenizers\" is not an array", where));
      for (const json& p : list) steps.push_back(&p);
    } else {
      steps.push_back(&pre);
    }
  }
  bool have_byte_level = false;
  for (const json* p : steps) {
    const std::string type = type_of(*p, where);
    if (have_byte_level) unsupported(where, "pre-tokenizer " + type + " after ByteLevel");
    if (type == "Split") {
      const json& pattern = field(*p, "pattern", where);
      std::unique_ptr<Regex> re;
      if (pattern.is_object() && pattern.contains("Regex") && pattern.at("Regex").is_string()) {
        re = std::make_unique<Regex>(pcre2_pattern_from_oniguruma(pattern.at("Regex").get<std::string>(), where), 0, where);
      } else if (pattern.is_object() && pattern.contains("String") && pattern.at("String").is_string()) {
        re = std::make_unique<Regex>(pattern.at("String").get<std::string>(), PCRE2_LITERAL, where);
      } else {
        throw TokenizerError(fmt::format("{}: Split pattern is neither {{\"Regex\": ...}} nor {{\"String\": ...}}", where));
      }
      split_steps_.push_back(SplitStep{std::move(re), parse_behavior(string_field(*p, "behavior", where), where),
                                       bool_field(*p, "invert", false, where)});
    } else if (type == "ByteLevel") {
      have_byte_level = true;
      byte_level_prefix_space_ = bool_field(*p, "add_prefix_space", true, where);
      if (bool_field(*p, "use_regex", true, where))
        byte_level_regex_ = std::make_unique<Regex>(
            pcre2_pattern_from_oniguruma(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)", where),
            0, where + " (GPT-2 regex)");
    } else {
      unsupported(where, "pre-tokenizer " + type);
    }
  }
  if (!have_byte_level) unsupported(where, "pre-tokenizer without ByteLevel");
}

int32_t BpeTokenizer::token_id(const std::string& token) const {
  for (const AddedToken& t : added_)
    if (t.content == token) return t.id;
  const auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

void BpeTokenizer::load_post_processor(const json& post) {
  if (post.is_null()) return;
  const std::string where = path_ + ": post_processor";
  const std::string type = type_of(post, where);
  const auto wrap = [&](std::vector<int32_t> before, std::vector<int32_t> after) {
    before.insert(before.end(), prefix_ids_.begin(), prefix_ids_.end());
    prefix_ids_ = std::move(before);
    suffix_ids_.insert(suffix_ids_.end(), after.begin(), after.end());
  };
  if (type == "Sequence") {
    const json& list = field(post, "processors", where);
    if (!list.is_array()) throw TokenizerError(fmt::format("{}: \"processors\" is not an array", where));
    for (const json& p : list) load_post_processor(p);
  } else if (type == "ByteLevel") {
    // only trims offsets; adds no tokens
  } else if (type == "TemplateProcessing") {
    const json& single = field(post, "single", where);
    const json& specials = field(post, "special_tokens", where);
    if (!single.is_array()) throw TokenizerError(fmt::format("{}: \"single\" is not an array", where));
    std::vector<int32_t> before, after;
    bool seen_sequence = false;
    for (const json& item : single) {
      if (item.is_object() && item.contains("Sequence")) {
        if (string_field(item.at("Sequence"), "id", where) != "A")
          throw TokenizerError(fmt::format("{}: the single template may only use sequence A", where));
        seen_sequence = true;
      } else if (item.is_object() && item.contains("SpecialToken")) {
        const std::string name = string_field(item.at("SpecialToken"), "id", where);
        const json& entry = field(specials, name.c_str(), where + " special_tokens");
        const json& ids = field(entry, "ids", where + " special_tokens." + name);
        if (!ids.is_array()) throw TokenizerError(fmt::format("{}: special_tokens.{}.ids is not an array", where, name));
        for (const json& id : ids) {
          if (!id.is_number_integer())
            throw TokenizerError(fmt::format("{}: special_tokens.{}.ids holds a non-integer", where, name));
          (seen_sequence ? after : before).push_back(static_cast<int32_t>(id.get<int64_t>()));
        }
      } else {
        throw TokenizerError(fmt::format("{}: template item is neither Sequence nor SpecialToken", where));
      }
    }
    wrap(std::move(before), std::move(after));
  } else if (type == "BertProcessing" || type == "RobertaProcessing") {
    const auto id_of = [&](const char* key) {
      const json& v = field(post, key, where);
      if (!v.is_array() || v.size() != 2 || !v[1].is_number_integer())
        throw TokenizerError(fmt::format("{}: \"{}\" is not [token, id]", where, key));
      return static_cast<int32_t>(v[1].get<int64_t>());
    };
    wrap({id_of("cls")}, {id_of("sep")});
  } else {
    unsupported(where, "post-processor " + type);
  }
}

void BpeTokenizer::load_decoder(const json& decoder) {
  const std::string where = path_ + ": decoder";
  if (decoder.is_null()) unsupported(where, "missing decoder (byte-level BPE needs the ByteLevel decoder)");
  const std::string type = type_of(decoder, where);
  if (type == "Sequence") {
    const json& list = field(decoder, "decoders", where);
    if (!list.is_array() || list.size() != 1) unsupported(where, "decoder Sequence other than [ByteLevel]");
    load_decoder(list[0]);
  } else if (type != "ByteLevel") {
    unsupported(where, "decoder " + type);
  }
}

void BpeTokenizer::build_decode_table() {
  int64_t n = static_cast<int64_t>(vocab_tokens_.size());
  for (const AddedToken& t : added_) n = std::max<int64_t>(n, t.id + 1);
  token_bytes_.assign(static_cast<size_t>(n), std::string());  // a hole in the id space decodes to nothing
  is_special_.assign(static_cast<size_t>(n), false);
  const std::vector<int16_t> byte_of = byte_of_code_point(alphabet_);
  const auto bytes_of = [&](const std::string& token) {
    auto raw = byte_level_to_raw(token, byte_of);
    return raw ? std::move(*raw) : token;
  };
  std::unordered_set<std::string> special_contents;
  for (const AddedToken& t : added_)
    if (t.special) special_contents.insert(t.content);
  for (size_t id = 0; id < vocab_tokens_.size(); ++id) {
    if (!vocab_present_[id]) continue;
    token_bytes_[id] = bytes_of(vocab_tokens_[id]);
    is_special_[id] = special_contents.count(vocab_tokens_[id]) > 0;
  }
  for (const AddedToken& t : added_) {  // an added token's content wins over the model's entry
    token_bytes_[t.id] = bytes_of(t.content);
    is_special_[t.id] = t.special;
  }
}

// bos/eos: tokenizer_config.json beside the file names them (as transformers reads them); without
// it, the first special token the post-processor puts before the text is BOS and after it EOS.
void BpeTokenizer::load_special_ids() {
  if (!prefix_ids_.empty()) bos_id_ = prefix_ids_.front();
  if (!suffix_ids_.empty()) eos_id_ = suffix_ids_.front();
  const std::filesystem::path config = std::filesystem::path(path_).parent_path() / "tokenizer_config.json";
  std::error_code ec;
  if (!std::filesystem::is_regular_file(config, ec)) return;
  std::ifstream in(config, std::ios::binary);
  json cfg;
  try {
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    cfg = json_checks::parse_unique(text);
  } catch (const json::exception& e) {
    throw TokenizerError(fmt::format("{}: malformed JSON: {}", config.string(), e.what()));
  } catch (const std::invalid_argument& e) {
    throw TokenizerError(fmt::format("{}: {}", config.string(), e.what()));
  }
  const auto read = [&](const char* key, int32_t* id) {
    if (!cfg.is_object() || !cfg.contains(key)) return;
    const json& v = cfg.at(key);
    std::string name;
    if (v.is_null()) {
      *id = -1;
      return;
    }
    if (v.is_string()) name = v.get<std::string>();
    else if (v.is_object() && v.contains("content") && v.at("content").is_string()) name = v.at("content").get<std::string>();
    else throw TokenizerError(fmt::format("{}: \"{}\" is neither a string nor {{\"content\": ...}}", config.string(), key));
    *id = token_id(name);
    if (*id < 0)
      throw TokenizerError(fmt::format("{}: {} {:?} is not a token of {}", config.string(), key, name, path_));
  };
  read("bos_token", &bos_id_);
  read("eos_token", &eos_id_);
}

// ---------------------------------------------------------------------------------------------
// encode

std::string BpeTokenizer::normalize(std::string_view s) const {
  std::string out(s);
  for (NormalForm form : normal_forms_) {
    if (is_ascii(out)) break;  // every normal form is the identity on ASCII
    int options = UTF8PROC_STABLE;
    switch (form) {
      case NormalForm::kNFC: options |= UTF8PROC_COMPOSE; break;
      case NormalForm::kNFD: options |= UTF8PROC_DECOMPOSE; break;
      case NormalForm::kNFKC: options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
      case NormalForm::kNFKD: options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
    }
    // explicit length, not NULLTERM: the text may contain U+0000
    utf8proc_uint8_t* result = nullptr;
    const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(out.data()),
                                            static_cast<utf8proc_ssize_t>(out.size()), &result,
                                            static_cast<utf8proc_option_t>(options));
    if (n < 0) throw TokenizerError(fmt::format("{}: normalization failed: {}", path_, utf8proc_errmsg(n)));
    out.assign(reinterpret_cast<const char*>(result), static_cast<size_t>(n));
    std::free(result);
  }
  return out;
}

// AddedVocabulary::find_matches: matches are visited left to right without overlap; one that
// fails single_word is dropped (the scan does not retry inside it); lstrip/rstrip widen the
// token's piece over the adjacent White_Space.
void BpeTokenizer::split_added(std::string_view s, const AddedTokenMatcher& matcher, std::vector<Segment>& out) const {
  if (matcher.empty() || s.empty()) {
    if (!s.empty()) out.push_back({s, -1});
    return;
  }
  const CharClasses* classes = nullptr;
  size_t start_offset = 0, from = 0, start, stop;
  int32_t index;
  while (matcher.find(s, from, &start, &stop, &index)) {
    from = stop;  // the scan resumes after the match itself, not after what rstrip adds
    const AddedToken& tok = added_[index];
    if (tok.single_word || tok.lstrip || tok.rstrip) classes = &char_classes();
    if (tok.single_word) {
      const bool word_before = start > 0 && classes->word.matches_at(s, utf8_previous_char_start(s, start));
      const bool word_after = stop < s.size() && classes->word.matches_at(s, stop);
      if (word_before || word_after) continue;
    }
    if (tok.lstrip) {
      size_t new_start = start;
      while (new_start > 0) {
        const size_t p = utf8_previous_char_start(s, new_start);
        if (!classes->space.matches_at(s, p)) break;
        new_start = p;
      }
      start = std::max(new_start, start_offset);
    }
    if (tok.rstrip)
      while (stop < s.size() && classes->space.matches_at(s, stop)) stop += utf8_char_length_at(s, stop);
    if (start_offset < start) out.push_back({s.substr(start_offset, start - start_offset), -1});
    out.push_back({s.substr(start, stop - start), tok.id});
    start_offset = stop;
  }
  if (start_offset < s.size()) out.push_back({s.substr(start_offset), -1});
}

void BpeTokenizer::pre_tokenize(std::string_view s, size_t step, std::vector<int32_t>& ids) const {
  if (step == split_steps_.size()) {
    byte_level(s, ids);
    return;
  }
  const SplitStep& split = split_steps_[step];
  std::vector<Span> spans;
  find_spans(*split.regex, s, spans);
  if (split.invert)
    for (Span& sp : spans) sp.is_match = !sp.is_match;
  std::vector<std::pair<size_t, size_t>> pieces;
  apply_split_behavior(spans, split.behavior, pieces);
  for (const auto& [b, e] : pieces) pre_tokenize(s.substr(b, e - b), step + 1, ids);
}

void BpeTokenizer::byte_level(std::string_view s, std::vector<int32_t>& ids) const {
  std::string with_prefix;
  if (byte_level_prefix_space_ && (s.empty() || s[0] != ' ')) {
    with_prefix.reserve(s.size() + 1);
    with_prefix.push_back(' ');
    with_prefix.append(s);
    s = with_prefix;
  }
  if (!byte_level_regex_) {
    bpe(s, ids);
    return;
  }
  std::vector<Span> spans;
  find_spans(*byte_level_regex_, s, spans);
  for (const Span& sp : spans)
    if (sp.end > sp.begin) bpe(s.substr(sp.begin, sp.end - sp.begin), ids);
}

void BpeTokenizer::bpe(std::string_view word, std::vector<int32_t>& ids) const {
  if (word.empty()) return;
  const bool cacheable = word.size() <= kCacheMaxWordBytes;
  std::string key;
  if (cacheable) {
    key.assign(word);
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (const auto it = cache_.find(key); it != cache_.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> result;
  const auto whole = ignore_merges_ ? raw_vocab_.find(std::string(word)) : raw_vocab_.end();
  if (whole != raw_vocab_.end()) result.push_back(whole->second);
  else result = merge_word(word);
  ids.insert(ids.end(), result.begin(), result.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() >= kCacheMaxEntries) cache_.clear();
    cache_.emplace(std::move(key), std::move(result));
  }
}

// Word::merge_all of the crate: a min-heap of candidate merges ordered by (rank, position);
// entries made stale by an earlier merge are skipped when popped. Equivalent to "merge the
// lowest-ranked adjacent pair, leftmost first" until none is left, in O(n log n).
std::vector<int32_t> BpeTokenizer::merge_word(std::string_view word) const {
  struct Symbol {
    int32_t id, prev, next;
    bool alive;
  };
  std::vector<Symbol> sym;
  sym.reserve(word.size());
  bool previous_unk = false;
  for (char c : word) {
    const auto b = static_cast<unsigned char>(c);
    if (byte_is_unk_[b] && fuse_unk_ && previous_unk) continue;  // fused into the previous unk
    previous_unk = byte_is_unk_[b];
    for (int32_t id : byte_symbols_[b]) {
      const auto n = static_cast<int32_t>(sym.size());
      sym.push_back({id, n - 1, n + 1, true});
    }
  }
  if (sym.empty()) return {};
  sym.back().next = -1;

  struct Candidate {
    int32_t rank, pos, new_id;
  };
  const auto later = [](const Candidate& a, const Candidate& b) { return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos; };
  std::vector<Candidate> heap;
  const auto push = [&](int32_t pos) {
    const int32_t next = sym[pos].next;
    if (next < 0) return;
    const auto it = merges_.find(pair_key(sym[pos].id, sym[next].id));
    if (it == merges_.end()) return;
    heap.push_back({it->second.rank, pos, it->second.new_id});
    std::push_heap(heap.begin(), heap.end(), later);
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(sym.size()); ++i) push(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& left = sym[top.pos];
    if (!left.alive || left.next < 0) continue;
    const auto it = merges_.find(pair_key(left.id, sym[left.next].id));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;  // stale
    Symbol& right = sym[left.next];
    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) sym[right.next].prev = top.pos;
    if (left.prev >= 0) push(left.prev);
    push(top.pos);
  }
  std::vector<int32_t> out;
  for (const Symbol& s : sym)
    if (s.alive) out.push_back(s.id);
  return out;
}

std::vector<int32_t> BpeTokenizer::encode(const std::string& text, bool add_special) const {
  if (const size_t bad = first_invalid_utf8(text); bad != std::string_view::npos)
    throw TokenizerError(fmt::format("{}: cannot encode text that is not valid UTF-8 (byte {})", path_, bad));
  std::vector<int32_t> ids;
  std::vector<Segment> raw_segments, normalized_segments;
  split_added(text, raw_matcher_, raw_segments);
  for (const Segment& seg : raw_segments) {
    if (seg.id >= 0) {
      ids.push_back(seg.id);
      continue;
    }
    const std::string normalized = normalize(seg.text);
    normalized_segments.clear();
    split_added(normalized, normalized_matcher_, normalized_segments);
    for (const Segment& piece : normalized_segments) {
      if (piece.id >= 0) ids.push_back(piece.id);
      else pre_tokenize(piece.text, 0, ids);
    }
  }
  if (add_special && (!prefix_ids_.empty() || !suffix_ids_.empty())) {
    ids.insert(ids.begin(), prefix_ids_.begin(), prefix_ids_.end());
    ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
  }
  return ids;
}

// ---------------------------------------------------------------------------------------------
// decode: ids outside the vocabulary are dropped, as the crate's decode does.

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::string bytes;
  for (int32_t id : ids) {
    if (id < 0 || id >= static_cast<int32_t>(token_bytes_.size())) continue;
    if (skip_special && is_special_[id]) continue;
    bytes += token_bytes_[id];
  }
  return utf8_lossy(bytes);
}

// One token's bytes, unreplaced: a character split over several tokens arrives in pieces, and
// the concatenation of the steps is the exact UTF-8 text.
std::string BpeTokenizer::decode_step(int32_t /*prev*/, int32_t id) const {
  if (id < 0 || id >= static_cast<int32_t>(token_bytes_.size())) return {};
  return token_bytes_[id];
}

}  // namespace

std::unique_ptr<Tokenizer> load_bpe_tokenizer_json(const std::string& path, int64_t model_vocab_size) {
  return std::make_unique<BpeTokenizer>(path, model_vocab_size);
}

#endif  // SHARQ_HAVE_BPE

}  // namespace sharq
