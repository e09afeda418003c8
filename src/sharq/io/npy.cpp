#include "sharq/io/npy.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <system_error>

#include <fmt/format.h>

#include "sharq/formats/minifloat.h"

namespace sharq {
namespace {

// The header is a Python dict literal, e.g. {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }.
// This is a strict parser of exactly the subset numpy writes: string keys; string, bool and
// tuple-of-int values; optional trailing commas; spaces, tabs and newlines between tokens. A key
// given twice takes its last value (as Python's dict display does); keys other than descr,
// fortran_order and shape are parsed and ignored. Every error names the file and, where there is
// one, the field.
struct HeaderValue {
  enum Kind { kString, kBool, kTuple } kind = kString;
  std::string str;              // kString
  bool boolean = false;         // kBool
  std::vector<int64_t> tuple;   // kTuple
  std::string text;             // the literal as written, for messages
};

class HeaderParser {
 public:
  HeaderParser(const std::string& h, const std::string& name) : h_(h), name_(name) {}

  std::map<std::string, HeaderValue> parse() {
    std::map<std::string, HeaderValue> out;
    skip_ws();
    expect('{', "the header must start with '{'");
    skip_ws();
    while (peek() != '}') {
      if (peek() != '\'' && peek() != '"') fail("", "expected a quoted key or '}'");
      const std::string key = string_literal("");
      skip_ws();
      expect(':', fmt::format("expected ':' after the key '{}'", key));
      skip_ws();
      key_ = key;
      out[key] = value(key);  // the last of duplicate keys wins
      skip_ws();
      if (peek() == ',') {
        ++i_;
        skip_ws();
      } else if (peek() != '}') {
        fail(key, "expected ',' or '}' after the value");
      }
      key_.clear();
    }
    ++i_;
    skip_ws();
    if (i_ != h_.size()) fail("", fmt::format("unexpected text after the closing '}}' at offset {}", i_));
    return out;
  }

 private:
  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    if (key.empty()) throw NpyError(fmt::format("{}: malformed npy header: {}", name_, what));
    throw NpyError(fmt::format("{}: npy header field '{}': {}", name_, key, what));
  }
  char peek() const {
    if (i_ >= h_.size()) fail(key_, "the header ends before the closing '}'");
    return h_[i_];
  }
  void skip_ws() {
    while (i_ < h_.size() && (h_[i_] == ' ' || h_[i_] == '\t' || h_[i_] == '\n' || h_[i_] == '\r')) ++i_;
  }
  void expect(char c, const std::string& what) {
    if (peek() != c) fail("", what);
    ++i_;
  }
  static bool is_ident(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

  // '...' or "..." with the escapes \\ \' \" (what repr() of a dtype string can contain)
  std::string string_literal(const std::string& key) {
    const char q = h_[i_++];
    std::string s;
    for (;;) {
      if (i_ >= h_.size()) fail(key, "unterminated string");
      const char c = h_[i_++];
      if (c == q) return s;
      if (c == '\n') fail(key, "unterminated string");
      if (c == '\\') {
        if (i_ >= h_.size()) fail(key, "unterminated string");
        const char e = h_[i_++];
        if (e != '\\' && e != '\'' && e != '"') fail(key, fmt::format("unsupported escape '\\{}' in a string", e));
        s.push_back(e);
      } else {
        s.push_back(c);
      }
    }
  }

  int64_t integer(const std::string& key) {
    if (peek() == '-') fail(key, "negative dimension");
    if (peek() < '0' || peek() > '9') fail(key, "expected a non-negative integer in the tuple");
    int64_t v = 0;
    while (i_ < h_.size() && h_[i_] >= '0' && h_[i_] <= '9') {
      if (v > (std::numeric_limits<int64_t>::max() - 9) / 10) fail(key, "dimension overflows 64 bits");
      v = v * 10 + (h_[i_++] - '0');
    }
    if (i_ < h_.size() && h_[i_] == 'L') ++i_;  // Python 2 long, as old numpy wrote it
    if (i_ < h_.size() && is_ident(h_[i_])) fail(key, "expected a non-negative integer in the tuple");
    return v;
  }

  HeaderValue value(const std::string& key) {
    HeaderValue v;
    const size_t begin = i_;
    const char c = peek();
    if (c == '\'' || c == '"') {
      v.kind = HeaderValue::kString;
      v.str = string_literal(key);
    } else if (c == '(') {
      v.kind = HeaderValue::kTuple;
      ++i_;
      skip_ws();
      bool comma_seen = false;
      while (peek() != ')') {
        v.tuple.push_back(integer(key));
        if (v.tuple.size() > 32) fail(key, "more than 32 dimensions");
        skip_ws();
        if (peek() == ',') {
          ++i_;
          comma_seen = true;
          skip_ws();
        } else if (peek() != ')') {
          fail(key, "expected ',' or ')' in the tuple");
        }
      }
      ++i_;
      if (v.tuple.size() == 1 && !comma_seen) fail(key, "(n) is an integer, not a tuple (a 1-tuple is written (n,))");
    } else if (is_ident(c)) {
      size_t e = i_;
      while (e < h_.size() && is_ident(h_[e])) ++e;
      const std::string word = h_.substr(i_, e - i_);
      if (word != "True" && word != "False") fail(key, fmt::format("unsupported value '{}' (expected a string, True/False or a tuple)", word));
      v.kind = HeaderValue::kBool;
      v.boolean = word == "True";
      i_ = e;
    } else if (c == '[' || c == '{') {
      fail(key, "lists and dicts are not supported (structured dtypes cannot be read)");
    } else {
      fail(key, fmt::format("unexpected character '{}' (expected a string, True/False or a tuple)", c));
    }
    v.text = h_.substr(begin, i_ - begin);
    return v;
  }

  const std::string& h_;
  const std::string& name_;
  size_t i_ = 0;
  std::string key_;  // the field being read, for messages
};

const HeaderValue& field(const std::map<std::string, HeaderValue>& d, const std::string& key, HeaderValue::Kind kind,
                         const char* expected, const std::string& name) {
  const auto it = d.find(key);
  if (it == d.end()) throw NpyError(fmt::format("{}: npy header has no '{}' field", name, key));
  if (it->second.kind != kind)
    throw NpyError(fmt::format("{}: npy header field '{}': {} is not {}", name, key, it->second.text, expected));
  return it->second;
}

uint16_t le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t le32(const uint8_t* p) { return p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<uint32_t>(p[3]) << 24); }

}  // namespace

int64_t NpyArray::size() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

NpyArray parse_npy(const uint8_t* b, size_t n, const std::string& name) {
  static const uint8_t kMagic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  if (n < 10 || std::memcmp(b, kMagic, 6) != 0) throw NpyError(fmt::format("{}: not a .npy file (bad magic)", name));
  const int major = b[6];
  size_t hlen, off;
  if (major == 1) {
    hlen = le16(b + 8);
    off = 10;
  } else if (major == 2 || major == 3) {
    if (n < 12) throw NpyError(fmt::format("{}: truncated npy preamble", name));
    hlen = le32(b + 8);
    off = 12;
  } else {
    throw NpyError(fmt::format("{}: unsupported npy format version {}.{}", name, major, b[7]));
  }
  if (hlen > n - off) throw NpyError(fmt::format("{}: npy header length {} runs past the end of the file ({} bytes)", name, hlen, n));
  const std::string header(reinterpret_cast<const char*>(b + off), hlen);
  const size_t data_off = off + hlen;

  const std::map<std::string, HeaderValue> dict = HeaderParser(header, name).parse();
  // other keys (numpy writes none) are parsed like the rest and ignored
  const std::string descr = field(dict, "descr", HeaderValue::kString, "a string", name).str;
  if (field(dict, "fortran_order", HeaderValue::kBool, "True or False", name).boolean)
    throw NpyError(fmt::format("{}: fortran_order arrays are not supported (save with np.ascontiguousarray)", name));
  NpyArray a;
  a.shape = field(dict, "shape", HeaderValue::kTuple, "a tuple of integers", name).tuple;

  size_t item;
  if (descr == "<f4" || descr == "=f4") { item = 4; a.source_dtype = "float32"; }
  else if (descr == "<f2" || descr == "=f2") { item = 2; a.source_dtype = "float16"; }
  else if (descr == "<f8" || descr == "=f8") { item = 8; a.source_dtype = "float64"; }
  else if (descr == "bfloat16" || descr == "<V2" || descr == "|V2") { item = 2; a.source_dtype = "bfloat16"; }
  else throw NpyError(fmt::format("{}: npy header field 'descr': unsupported dtype '{}' (expected float32, float16, float64 or bfloat16, little-endian)", name, descr));

  // element count with overflow checks, bounded by the bytes actually present; any zero dimension
  // makes an empty array, whatever the others are (numpy's rule)
  const size_t avail = n - data_off;
  size_t count = 1;
  if (std::find(a.shape.begin(), a.shape.end(), int64_t{0}) != a.shape.end()) {
    count = 0;
  } else {
    for (int64_t d : a.shape) {
      if (count > avail / static_cast<size_t>(d))
        throw NpyError(fmt::format("{}: npy shape needs more data than the file holds ({} bytes after the header)", name, avail));
      count *= static_cast<size_t>(d);
    }
  }
  if (count > avail / item || count * item != avail)
    throw NpyError(fmt::format("{}: npy data is {} bytes, shape x dtype needs {}", name, avail, count * item));

  a.data.resize(count);
  const uint8_t* p = b + data_off;
  for (size_t i = 0; i < count; ++i) {
    switch (item) {
      case 4: a.data[i] = f32_from_bits(le32(p + 4 * i)); break;
      case 2: {
        const uint16_t h = le16(p + 2 * i);
        a.data[i] = a.source_dtype == "float16" ? fp16_decode(h) : bf16_decode(h);
        break;
      }
      case 8: {
        double d;
        std::memcpy(&d, p + 8 * i, 8);
        a.data[i] = static_cast<float>(d);
        break;
      }
    }
  }
  return a;
}

NpyArray read_npy(const std::string& path) {
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  if (std::filesystem::is_directory(st)) throw NpyError(fmt::format("{}: is a directory, not a .npy file", path));
  if (std::filesystem::exists(st) && !std::filesystem::is_regular_file(st))  // a FIFO or /dev/zero: would block or never end
    throw NpyError(fmt::format("{}: is not a regular file", path));
  errno = 0;
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    const int err = errno;
    throw NpyError(fmt::format("{}: cannot open: {}", path, err ? std::generic_category().message(err) : "unknown error"));
  }
  std::vector<uint8_t> bytes;
  try {
    bytes.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  } catch (const std::ios_base::failure& e) {
    throw NpyError(fmt::format("{}: read failed ({})", path, e.what()));
  }
  if (f.bad()) throw NpyError(fmt::format("{}: read failed", path));
  return parse_npy(bytes.data(), bytes.size(), path);
}

void write_npy(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  std::string dims;
  int64_t count = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    dims += fmt::format("{}{}", i ? ", " : "", shape[i]);
    count *= shape[i];
  }
  if (shape.size() == 1) dims += ",";  // Python's 1-tuple
  std::string header = fmt::format("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}", dims);
  // pad with spaces so that magic + len + header (ending in '\n') is a multiple of 64
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  errno = 0;
  std::ofstream f(path, std::ios::binary);
  if (!f) {
    const int err = errno;
    throw NpyError(fmt::format("{}: cannot create: {}", path, err ? std::generic_category().message(err) : "unknown error"));
  }
  const uint8_t pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, static_cast<uint8_t>(header.size() & 0xFF),
                           static_cast<uint8_t>(header.size() >> 8)};
  f.write(reinterpret_cast<const char*>(pre), 10);
  f.write(header.data(), static_cast<std::streamsize>(header.size()));
  for (int64_t i = 0; i < count; ++i) {
    const uint32_t u = f32_bits(data[i]);
    const char le[4] = {static_cast<char>(u), static_cast<char>(u >> 8), static_cast<char>(u >> 16), static_cast<char>(u >> 24)};
    f.write(le, 4);
  }
  if (!f) throw NpyError(fmt::format("{}: write failed", path));
}

}  // namespace sharq
