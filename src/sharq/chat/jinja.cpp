// The Jinja interpreter of jinja.h: lexer -> parser (AST) -> tree-walking renderer.
#include "sharq/chat/jinja.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <ctime>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <unordered_map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "sharq/core/json_checks.h"

#ifdef SHARQ_HAVE_BPE
#include <utf8proc.h>
#endif

namespace sharq::jinja {

// ===========================================================================================
// Values
namespace {

// An error raised inside a builtin (filter, method, global) that the caller gives a line to.
struct CallError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

constexpr int kMaxValueDepth = 512;  // nesting of values (JSON input, repr, tojson, ==)

const char* type_name(const Value& v) {
  switch (v.type()) {
    case Value::Type::kUndefined: return "undefined";
    case Value::Type::kNone: return "NoneType";
    case Value::Type::kBool: return "bool";
    case Value::Type::kInt: return "int";
    case Value::Type::kFloat: return "float";
    case Value::Type::kString: return "str";
    case Value::Type::kList: return "list";
    case Value::Type::kDict: return v.is_namespace() ? "Namespace" : "dict";
    case Value::Type::kCallable: return "function";
  }
  return "?";
}

// ---- UTF-8: code points; an invalid byte b becomes the pseudo code point 0x110000 + b so that
// decoding and encoding back is the identity on any byte string.
std::vector<uint32_t> decode_utf8(const std::string& s) {
  std::vector<uint32_t> out;
  out.reserve(s.size());
  size_t i = 0;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  while (i < s.size()) {
    const unsigned c = p[i];
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1f) : len == 3 ? (c & 0x0f) : (c & 0x07);
    bool ok = len > 0 && i + len <= s.size();
    for (int k = 1; ok && k < len; ++k) {
      if ((p[i + k] & 0xc0) != 0x80) ok = false;
      else cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    if (ok && ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
               (cp >= 0xd800 && cp <= 0xdfff)))
      ok = false;
    if (!ok) {
      out.push_back(0x110000u + c);
      ++i;
    } else {
      out.push_back(cp);
      i += static_cast<size_t>(len);
    }
  }
  return out;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp >= 0x110000u) out += static_cast<char>(cp - 0x110000u);
  else if (cp < 0x80) out += static_cast<char>(cp);
  else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

std::string encode_utf8(const std::vector<uint32_t>& cps, size_t b = 0, size_t e = std::string::npos) {
  std::string out;
  e = std::min(e, cps.size());
  for (size_t i = b; i < e; ++i) append_utf8(out, cps[i]);
  return out;
}

// Python's str.isspace() code points.
bool py_space(uint32_t c) {
  return (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

uint32_t case_map(uint32_t c, bool upper) {
  if (c < 0x80) {
    if (upper && c >= 'a' && c <= 'z') return c - 32;
    if (!upper && c >= 'A' && c <= 'Z') return c + 32;
    return c;
  }
#ifdef SHARQ_HAVE_BPE
  if (c < 0x110000u) return static_cast<uint32_t>(upper ? utf8proc_toupper(static_cast<utf8proc_int32_t>(c))
                                                        : utf8proc_tolower(static_cast<utf8proc_int32_t>(c)));
#endif
  return c;
}

bool is_alpha_cp(uint32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  return case_map(c, true) != c || case_map(c, false) != c;
}

std::string py_strip(const std::string& s, const Value* chars, bool left, bool right) {
  const auto cps = decode_utf8(s);
  std::vector<uint32_t> set;
  const bool ws = !chars || chars->is_none() || chars->is_undefined();
  if (!ws) set = decode_utf8(chars->str());
  auto strip_it = [&](uint32_t c) { return ws ? py_space(c) : std::find(set.begin(), set.end(), c) != set.end(); };
  size_t b = 0, e = cps.size();
  if (left) while (b < e && strip_it(cps[b])) ++b;
  if (right) while (e > b && strip_it(cps[e - 1])) --e;
  return encode_utf8(cps, b, e);
}

// Python float repr: shortest round-trip digits, fixed for 1e-4 <= |x| < 1e16, else scientific.
std::string py_float(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  if (x == 0) return std::signbit(x) ? "-0.0" : "0.0";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, x, std::chars_format::scientific);
  std::string sci(buf, r.ptr);
  std::string sign;
  if (sci[0] == '-') {
    sign = "-";
    sci.erase(0, 1);
  }
  const size_t epos = sci.find('e');
  std::string digits = sci.substr(0, epos);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  const int exp = std::stoi(sci.substr(epos + 1));
  std::string out;
  if (exp >= -5 && exp < 16) {
    if (exp >= 0) {
      if (static_cast<int>(digits.size()) <= exp + 1) out = digits + std::string(exp + 1 - digits.size(), '0') + ".0";
      else out = digits.substr(0, exp + 1) + "." + digits.substr(exp + 1);
    } else {
      out = "0." + std::string(-exp - 1, '0') + digits;
    }
    if (exp < -4) out.clear();  // Python switches to scientific below 1e-4
  }
  if (out.empty()) {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    out += fmt::format("e{}{:02d}", exp < 0 ? '-' : '+', std::abs(exp));
  }
  return sign + out;
}

std::string py_repr_str(const std::string& s) {
  const bool dq = s.find('\'') != std::string::npos && s.find('"') == std::string::npos;
  const char q = dq ? '"' : '\'';
  std::string out(1, q);
  for (unsigned char c : s) {
    if (c == '\\') out += "\\\\";
    else if (c == static_cast<unsigned char>(q)) out += std::string("\\") + q;
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7f) out += fmt::format("\\x{:02x}", c);
    else out += static_cast<char>(c);
  }
  return out + q;
}

void repr_into(std::string& out, const Value& v, bool top, int depth) {
  if (depth > kMaxValueDepth) throw CallError("value nested too deeply to print");
  switch (v.type()) {
    case Value::Type::kUndefined: break;
    case Value::Type::kNone: out += "None"; break;
    case Value::Type::kBool: out += v.as_bool() ? "True" : "False"; break;
    case Value::Type::kInt: out += std::to_string(v.as_int()); break;
    case Value::Type::kFloat: out += py_float(v.as_float()); break;
    case Value::Type::kString: out += top ? v.str() : py_repr_str(v.str()); break;
    case Value::Type::kList: {
      out += v.is_tuple() ? '(' : '[';
      bool first = true;
      for (const Value& e : v.items()) {
        if (!first) out += ", ";
        first = false;
        repr_into(out, e, false, depth + 1);
      }
      if (v.is_tuple() && v.items().size() == 1) out += ',';
      out += v.is_tuple() ? ')' : ']';
      break;
    }
    case Value::Type::kDict: {
      out += v.is_namespace() ? "<Namespace {" : "{";
      bool first = true;
      for (const auto& [k, e] : v.dict_ref().entries) {
        if (!first) out += ", ";
        first = false;
        out += py_repr_str(k) + ": ";
        repr_into(out, e, false, depth + 1);
      }
      out += v.is_namespace() ? "}>" : "}";
      break;
    }
    case Value::Type::kCallable: out += "<function " + v.fn().name + ">"; break;
  }
}

void json_str(std::string& out, const std::string& s, bool ensure_ascii) {
  out += '"';
  const auto cps = decode_utf8(s);
  for (uint32_t c : cps) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) out += fmt::format("\\u{:04x}", c);
        else if (ensure_ascii && c >= 0x80 && c < 0x110000u) {
          if (c >= 0x10000) {
            const uint32_t v = c - 0x10000;
            out += fmt::format("\\u{:04x}\\u{:04x}", 0xd800 + (v >> 10), 0xdc00 + (v & 0x3ff));
          } else {
            out += fmt::format("\\u{:04x}", c);
          }
        } else {
          append_utf8(out, c);
        }
    }
  }
  out += '"';
}

struct JsonStyle {
  bool ensure_ascii = false, indent = false, sort_keys = false;
  std::string ind, item_sep, key_sep;
};

void json_into(std::string& out, const Value& v, const JsonStyle& st, int depth) {
  if (depth > kMaxValueDepth) throw CallError("tojson: value nested too deeply");
  auto newline = [&](int d) {
    if (!st.indent) return;
    out += '\n';
    for (int i = 0; i < d; ++i) out += st.ind;
  };
  switch (v.type()) {
    case Value::Type::kUndefined: throw CallError("tojson: cannot serialize an undefined value");
    case Value::Type::kNone: out += "null"; break;
    case Value::Type::kBool: out += v.as_bool() ? "true" : "false"; break;
    case Value::Type::kInt: out += std::to_string(v.as_int()); break;
    case Value::Type::kFloat: {
      const double f = v.as_float();
      if (std::isnan(f)) out += "NaN";
      else if (std::isinf(f)) out += f > 0 ? "Infinity" : "-Infinity";
      else out += py_float(f);
      break;
    }
    case Value::Type::kString: json_str(out, v.str(), st.ensure_ascii); break;
    case Value::Type::kList: {
      if (v.items().empty()) {
        out += "[]";
        break;
      }
      out += '[';
      bool first = true;
      for (const Value& e : v.items()) {
        if (!first) out += st.item_sep;
        first = false;
        newline(depth + 1);
        json_into(out, e, st, depth + 1);
      }
      newline(depth);
      out += ']';
      break;
    }
    case Value::Type::kDict: {
      if (v.is_namespace()) throw CallError("tojson: a namespace is not JSON serializable");
      auto entries = v.dict_ref().entries;
      if (entries.empty()) {
        out += "{}";
        break;
      }
      if (st.sort_keys)
        std::stable_sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
      out += '{';
      bool first = true;
      for (const auto& [k, e] : entries) {
        if (!first) out += st.item_sep;
        first = false;
        newline(depth + 1);
        json_str(out, k, st.ensure_ascii);
        out += st.key_sep;
        json_into(out, e, st, depth + 1);
      }
      newline(depth);
      out += '}';
      break;
    }
    case Value::Type::kCallable: throw CallError("tojson: a function is not JSON serializable");
  }
}

bool py_eq(const Value& a, const Value& b, int depth = 0);

}  // namespace

const Value* Dict::find(const std::string& key) const {
  for (const auto& e : entries)
    if (e.first == key) return &e.second;
  return nullptr;
}
Value* Dict::find(const std::string& key) {
  for (auto& e : entries)
    if (e.first == key) return &e.second;
  return nullptr;
}

Value Value::none() {
  Value v;
  v.type_ = Type::kNone;
  return v;
}
Value Value::undefined(std::string name) {
  Value v;
  v.s_ = std::move(name);
  return v;
}
Value::Value(bool b) : type_(Type::kBool), b_(b), i_(b ? 1 : 0), f_(b ? 1 : 0) {}
Value::Value(int64_t v) : type_(Type::kInt), i_(v), f_(static_cast<double>(v)) {}
Value::Value(double v) : type_(Type::kFloat), f_(v) {}
Value::Value(std::string s) : type_(Type::kString), s_(std::move(s)) {}
Value Value::list(ValueList items) {
  Value v;
  v.type_ = Type::kList;
  v.list_ = std::make_shared<ValueList>(std::move(items));
  return v;
}
Value Value::tuple(ValueList items) {
  Value v = list(std::move(items));
  v.tuple_ = true;
  return v;
}
Value Value::dict() {
  Value v;
  v.type_ = Type::kDict;
  v.dict_ = std::make_shared<Dict>();
  return v;
}
Value Value::namespace_() {
  Value v = dict();
  v.dict_->is_namespace = true;
  return v;
}
Value Value::callable(std::string name, std::function<Value(ValueList&, KwArgs&)> fn) {
  Value v;
  v.type_ = Type::kCallable;
  v.fn_ = std::make_shared<Callable>(Callable{std::move(name), std::move(fn)});
  return v;
}

namespace {
Value from_json_at(const nlohmann::ordered_json& j, int depth) {
  if (depth > kMaxValueDepth) throw TemplateError("JSON input nested more than 512 levels deep", 0);
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null: return Value::none();
    case nlohmann::ordered_json::value_t::boolean: return Value(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return Value(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      const uint64_t u = j.get<uint64_t>();
      if (u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return Value(static_cast<int64_t>(u));
      return Value(static_cast<double>(u));
    }
    case nlohmann::ordered_json::value_t::number_float: return Value(j.get<double>());
    case nlohmann::ordered_json::value_t::string: return Value(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      ValueList items;
      items.reserve(j.size());
      for (const auto& e : j) items.push_back(from_json_at(e, depth + 1));
      return Value::list(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      Value d = Value::dict();
      for (const auto& [k, e] : j.items()) d.set(k, from_json_at(e, depth + 1));
      return d;
    }
    default: return Value::none();
  }
}
}  // namespace

Value Value::from_json(const nlohmann::ordered_json& j) { return from_json_at(j, 0); }

nlohmann::ordered_json parse_ordered_json(const std::string& text) {
  return json_checks::parse_unique<nlohmann::ordered_json>(text, json_checks::Limits{kMaxOrderedKeys, kMaxOrderedTotalKeys});
}

bool Value::is_namespace() const { return type_ == Type::kDict && dict_->is_namespace; }

bool Value::truthy() const {
  switch (type_) {
    case Type::kUndefined:
    case Type::kNone: return false;
    case Type::kBool: return b_;
    case Type::kInt: return i_ != 0;
    case Type::kFloat: return f_ != 0;
    case Type::kString: return !s_.empty();
    case Type::kList: return !list_->empty();
    case Type::kDict: return dict_->is_namespace || !dict_->entries.empty();
    case Type::kCallable: return true;
  }
  return false;
}

Value Value::get(const std::string& key) const {
  if (type_ == Type::kDict)
    if (const Value* v = dict_->find(key)) return *v;
  return undefined(key);
}

void Value::set(const std::string& key, Value v) {
  if (Value* slot = dict_->find(key)) *slot = std::move(v);
  else dict_->entries.emplace_back(key, std::move(v));
}

bool Value::contains_key(const std::string& key) const { return type_ == Type::kDict && dict_->find(key); }

std::string to_str(const Value& v) {
  std::string out;
  try {
    repr_into(out, v, true, 0);
  } catch (const CallError& e) {
    throw TemplateError(e.what(), 0);
  }
  return out;
}

namespace {
std::string json_with(const Value& v, bool ensure_ascii, bool has_indent, const std::string& ind,
                      const std::string& item_sep, const std::string& key_sep, bool sort_keys) {
  JsonStyle st;
  st.ensure_ascii = ensure_ascii;
  st.indent = has_indent;
  st.ind = ind;
  st.sort_keys = sort_keys;
  st.item_sep = !item_sep.empty() ? item_sep : has_indent ? "," : ", ";
  st.key_sep = !key_sep.empty() ? key_sep : ": ";
  std::string out;
  json_into(out, v, st, 0);
  return out;
}
}  // namespace

std::string to_json(const Value& v, bool ensure_ascii, int indent, const std::string& item_sep,
                    const std::string& key_sep, bool sort_keys) {
  try {
    return json_with(v, ensure_ascii, indent >= 0, std::string(static_cast<size_t>(std::max(indent, 0)), ' '),
                     item_sep, key_sep, sort_keys);
  } catch (const CallError& e) {
    throw TemplateError(e.what(), 0);
  }
}

std::string to_json(const Value& v, bool ensure_ascii, const std::string& indent, const std::string& item_sep,
                    const std::string& key_sep, bool sort_keys) {
  try {
    return json_with(v, ensure_ascii, true, indent, item_sep, key_sep, sort_keys);
  } catch (const CallError& e) {
    throw TemplateError(e.what(), 0);
  }
}

namespace {

bool py_eq(const Value& a, const Value& b, int depth) {
  if (depth > kMaxValueDepth) throw CallError("values nested too deeply to compare");
  using T = Value::Type;
  if (a.is_undefined() || b.is_undefined()) return a.is_undefined() && b.is_undefined();
  if (a.is_number() && b.is_number()) {
    if (a.type() != T::kFloat && b.type() != T::kFloat) return a.as_int() == b.as_int();
    return a.as_float() == b.as_float();
  }
  if (a.type() != b.type() || a.is_tuple() != b.is_tuple()) return false;
  switch (a.type()) {
    case T::kNone: return true;
    case T::kString: return a.str() == b.str();
    case T::kList: {
      if (a.items().size() != b.items().size()) return false;
      for (size_t i = 0; i < a.items().size(); ++i)
        if (!py_eq(a.items()[i], b.items()[i], depth + 1)) return false;
      return true;
    }
    case T::kDict: {
      if (a.is_namespace() || b.is_namespace()) return &a.dict_ref() == &b.dict_ref();
      const auto& ea = a.dict_ref().entries;
      if (ea.size() != b.dict_ref().entries.size()) return false;
      for (const auto& [k, v] : ea) {
        const Value* o = b.dict_ref().find(k);
        if (!o || !py_eq(v, *o, depth + 1)) return false;
      }
      return true;
    }
    case T::kCallable: return &a.fn() == &b.fn();
    default: return false;
  }
}

}  // namespace

// ===========================================================================================
// Lexer
namespace {

enum class Tok { kText, kVarBegin, kVarEnd, kBlockBegin, kBlockEnd, kName, kString, kInt, kFloat, kOp, kEof };

struct Token {
  Tok kind;
  std::string text;  // text, name, operator, string value
  int64_t i = 0;
  double f = 0;
  int line = 1;
};

const char* tok_desc(Tok k) {
  switch (k) {
    case Tok::kText: return "text";
    case Tok::kVarBegin: return "'{{'";
    case Tok::kVarEnd: return "'}}'";
    case Tok::kBlockBegin: return "'{%'";
    case Tok::kBlockEnd: return "'%}'";
    case Tok::kName: return "name";
    case Tok::kString: return "string";
    case Tok::kInt: return "integer";
    case Tok::kFloat: return "number";
    case Tok::kOp: return "operator";
    case Tok::kEof: return "end of template";
  }
  return "?";
}

class Lexer {
 public:
  Lexer(std::string src, const std::string& origin) : origin_(origin) {
    // Jinja normalizes newlines to \n and drops one trailing newline (keep_trailing_newline=False).
    src_.reserve(src.size());
    for (size_t i = 0; i < src.size(); ++i) {
      if (src[i] == '\r') {
        src_ += '\n';
        if (i + 1 < src.size() && src[i + 1] == '\n') ++i;
      } else {
        src_ += src[i];
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
  }

  std::vector<Token> run() {
    const size_t n = src_.size();
    bool line_starting = true;
    while (pos_ < n) {
      size_t p = pos_;
      while (true) {
        p = src_.find('{', p);
        if (p == std::string::npos || p + 1 >= n) {
          p = std::string::npos;
          break;
        }
        const char c = src_[p + 1];
        if (c == '{' || c == '%' || c == '#') break;
        ++p;
      }
      std::string text = src_.substr(pos_, p == std::string::npos ? std::string::npos : p - pos_);
      const int text_line = line_;
      if (p == std::string::npos) {
        emit_text(text, text_line);
        count_lines(pos_, n);
        pos_ = n;
        break;
      }
      const char kind = src_[p + 1];
      const char mod = p + 2 < n ? src_[p + 2] : '\0';
      if (mod == '-') {
        size_t e = text.size();
        while (e > 0 && std::isspace(static_cast<unsigned char>(text[e - 1]))) --e;
        text.resize(e);
      } else if (mod != '+' && kind != '{') {
        // lstrip_blocks: whitespace between the start of the line and a block/comment tag goes
        const size_t nl = text.rfind('\n');
        const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
        if ((l_pos > 0 || line_starting) && l_pos < text.size() &&
            std::all_of(text.begin() + static_cast<std::ptrdiff_t>(l_pos), text.end(),
                        [](char c) { return c == ' ' || c == '\t' || c == '\f' || c == '\v' || c == '\r'; }))
          text.resize(l_pos);
      }
      emit_text(text, text_line);
      count_lines(pos_, p);
      pos_ = p + 2;
      if (mod == '-' || (mod == '+' && kind == '%')) ++pos_;
      const int tag_line = line_;
      if (kind == '#') {
        const size_t e = src_.find("#}", pos_);
        if (e == std::string::npos) fail(tag_line, "unclosed comment '{#' (no '#}')");
        count_lines(pos_, e);
        const char before = e > pos_ ? src_[e - 1] : '\0';
        pos_ = e + 2;
        line_starting = after_tag_end(before == '-', before == '+', true);
        continue;
      }
      const bool block = kind == '%';
      out_.push_back(Token{block ? Tok::kBlockBegin : Tok::kVarBegin, "", 0, 0, tag_line});
      bool strip = false, keep = false;
      lex_tag(block, tag_line, strip, keep);
      out_.push_back(Token{block ? Tok::kBlockEnd : Tok::kVarEnd, "", 0, 0, line_});
      line_starting = after_tag_end(strip, keep, block);
      // {% raw %}: everything up to {% endraw %} is text
      const size_t m = out_.size();
      if (block && m >= 3 && out_[m - 3].kind == Tok::kBlockBegin && out_[m - 2].kind == Tok::kName &&
          out_[m - 2].text == "raw") {
        out_.resize(m - 3);
        lex_raw(tag_line, line_starting);
      }
    }
    out_.push_back(Token{Tok::kEof, "", 0, 0, line_});
    return std::move(out_);
  }

 private:
  [[noreturn]] void fail(int line, const std::string& what) const {
    throw TemplateError(fmt::format("{}: line {}: {}", origin_, line, what), line);
  }

  void count_lines(size_t b, size_t e) {
    for (size_t i = b; i < e && i < src_.size(); ++i)
      if (src_[i] == '\n') ++line_;
  }

  void emit_text(const std::string& text, int line) {
    if (!text.empty()) out_.push_back(Token{Tok::kText, text, 0, 0, line});
  }

  // After a tag's end marker: '-' strips the following whitespace, trim_blocks (block and
  // comment tags, unless '+') drops one newline. Returns whether the consumed part ended a line.
  bool after_tag_end(bool strip, bool keep, bool trim_blocks) {
    bool ended_line = false;
    if (strip) {
      while (pos_ < src_.size() && std::isspace(static_cast<unsigned char>(src_[pos_]))) {
        ended_line = src_[pos_] == '\n';
        if (src_[pos_] == '\n') ++line_;
        ++pos_;
      }
    } else if (trim_blocks && !keep && pos_ < src_.size() && src_[pos_] == '\n') {
      ++line_;
      ++pos_;
      ended_line = true;
    }
    return ended_line;
  }

  void lex_raw(int tag_line, bool& line_starting) {
    size_t p = pos_;
    while (true) {
      p = src_.find("{%", p);
      if (p == std::string::npos) fail(tag_line, "unclosed {% raw %} (no {% endraw %})");
      size_t q = p + 2;
      const char mod = q < src_.size() ? src_[q] : '\0';
      if (mod == '-' || mod == '+') ++q;
      while (q < src_.size() && std::isspace(static_cast<unsigned char>(src_[q]))) ++q;
      if (src_.compare(q, 6, "endraw") != 0) {
        p += 2;
        continue;
      }
      q += 6;
      while (q < src_.size() && std::isspace(static_cast<unsigned char>(src_[q]))) ++q;
      bool strip = false, keep = false;
      if (q < src_.size() && (src_[q] == '-' || src_[q] == '+')) {
        strip = src_[q] == '-';
        keep = src_[q] == '+';
        ++q;
      }
      if (src_.compare(q, 2, "%}") != 0) {
        p += 2;
        continue;
      }
      std::string text = src_.substr(pos_, p - pos_);
      if (mod == '-') {
        size_t e = text.size();
        while (e > 0 && std::isspace(static_cast<unsigned char>(text[e - 1]))) --e;
        text.resize(e);
      }
      emit_text(text, line_);
      count_lines(pos_, q + 2);
      pos_ = q + 2;
      line_starting = after_tag_end(strip, keep, true);
      return;
    }
  }

  void lex_tag(bool block, int tag_line, bool& strip, bool& keep) {
    const size_t n = src_.size();
    int depth = 0;
    while (true) {
      while (pos_ < n && std::isspace(static_cast<unsigned char>(src_[pos_]))) {
        if (src_[pos_] == '\n') ++line_;
        ++pos_;
      }
      if (pos_ >= n) fail(tag_line, block ? "unclosed tag '{%' (no '%}')" : "unclosed tag '{{' (no '}}')");
      if (depth == 0) {
        const char* end = block ? "%}" : "}}";
        if (src_.compare(pos_, 2, end) == 0) {
          pos_ += 2;
          return;
        }
        if ((src_[pos_] == '-' || (block && src_[pos_] == '+')) && src_.compare(pos_ + 1, 2, end) == 0) {
          strip = src_[pos_] == '-';
          keep = src_[pos_] == '+';
          pos_ += 3;
          return;
        }
      }
      const char c = src_[pos_];
      Token t{Tok::kOp, "", 0, 0, line_};
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t e = pos_;
        while (e < n && (std::isalnum(static_cast<unsigned char>(src_[e])) || src_[e] == '_')) ++e;
        t.kind = Tok::kName;
        t.text = src_.substr(pos_, e - pos_);
        pos_ = e;
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        lex_number(t);
      } else if (c == '\'' || c == '"') {
        lex_string(t, c);
      } else {
        static const char* two[] = {"**", "//", "==", "!=", "<=", ">="};
        std::string op;
        for (const char* o : two)
          if (src_.compare(pos_, 2, o) == 0) op = o;
        if (op.empty()) {
          if (std::strchr("+-*/%~()[]{},.:|=<>", c) == nullptr || c == '\0')
            fail(line_, fmt::format("unexpected character '{}' in a tag", c));
          op = std::string(1, c);
        }
        if (op == "(" || op == "[" || op == "{") ++depth;
        if ((op == ")" || op == "]" || op == "}") && depth > 0) --depth;
        t.text = op;
        pos_ += op.size();
      }
      out_.push_back(std::move(t));
    }
  }

  void lex_number(Token& t) {
    const size_t n = src_.size();
    size_t e = pos_;
    std::string digits;
    auto run = [&] {
      while (e < n && (std::isdigit(static_cast<unsigned char>(src_[e])) ||
                       (src_[e] == '_' && e + 1 < n && std::isdigit(static_cast<unsigned char>(src_[e + 1]))))) {
        if (src_[e] != '_') digits += src_[e];
        ++e;
      }
    };
    run();
    bool is_float = false;
    if (e + 1 < n && src_[e] == '.' && std::isdigit(static_cast<unsigned char>(src_[e + 1]))) {
      is_float = true;
      digits += '.';
      ++e;
      run();
    }
    if (e < n && (src_[e] == 'e' || src_[e] == 'E')) {
      size_t k = e + 1;
      if (k < n && (src_[k] == '+' || src_[k] == '-')) ++k;
      if (k < n && std::isdigit(static_cast<unsigned char>(src_[k]))) {
        is_float = true;
        digits += 'e';
        if (src_[e + 1] == '-') digits += '-';
        e = k;
        run();
      }
    }
    pos_ = e;
    if (is_float) {
      t.kind = Tok::kFloat;
      t.f = std::strtod(digits.c_str(), nullptr);
    } else {
      t.kind = Tok::kInt;
      const auto r = std::from_chars(digits.data(), digits.data() + digits.size(), t.i);
      if (r.ec != std::errc()) fail(line_, fmt::format("integer literal {} is too large", digits));
    }
  }

  // Python's unicode-escape on the literal's body, as Jinja's lexer does.
  void lex_string(Token& t, char q) {
    const size_t n = src_.size();
    size_t e = pos_ + 1;
    std::string v;
    while (true) {
      if (e >= n) fail(t.line, "unterminated string literal");
      const char c = src_[e];
      if (c == q) break;
      if (c == '\n') ++line_;
      if (c != '\\') {
        v += c;
        ++e;
        continue;
      }
      if (e + 1 >= n) fail(t.line, "unterminated string literal");
      const char x = src_[e + 1];
      e += 2;
      auto hex = [&](int len) {
        if (e + len > n) fail(t.line, "truncated \\x/\\u escape in a string literal");
        uint32_t cp = 0;
        for (int k = 0; k < len; ++k) {
          const char h = src_[e + k];
          if (!std::isxdigit(static_cast<unsigned char>(h))) fail(t.line, "bad \\x/\\u escape in a string literal");
          cp = cp * 16 + static_cast<uint32_t>(std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : (h | 0x20) - 'a' + 10);
        }
        e += static_cast<size_t>(len);
        if (cp > 0x10ffff) fail(t.line, "escape out of the Unicode range in a string literal");
        append_utf8(v, cp);
      };
      switch (x) {
        case 'n': v += '\n'; break;
        case 't': v += '\t'; break;
        case 'r': v += '\r'; break;
        case '\\': v += '\\'; break;
        case '\'': v += '\''; break;
        case '"': v += '"'; break;
        case 'a': v += '\a'; break;
        case 'b': v += '\b'; break;
        case 'f': v += '\f'; break;
        case 'v': v += '\v'; break;
        case '\n': ++line_; break;  // line continuation
        case 'x': hex(2); break;
        case 'u': hex(4); break;
        case 'U': hex(8); break;
        default:
          if (x >= '0' && x <= '7') {
            uint32_t cp = static_cast<uint32_t>(x - '0');
            for (int k = 0; k < 2 && e < n && src_[e] >= '0' && src_[e] <= '7'; ++k, ++e) cp = cp * 8 + (src_[e] - '0');
            append_utf8(v, cp);
          } else {
            v += '\\';
            v += x;
          }
      }
    }
    t.kind = Tok::kString;
    t.text = std::move(v);
    pos_ = e + 1;
  }

  std::string src_;
  const std::string& origin_;
  size_t pos_ = 0;
  int line_ = 1;
  std::vector<Token> out_;
};

}  // namespace

// ===========================================================================================
// AST
struct Expr;
using ExprP = std::unique_ptr<Expr>;

struct Expr {
  enum class K { kLit, kName, kList, kDict, kAttr, kItem, kSlice, kCall, kFilter, kTest, kNeg, kPos, kNot, kBin,
                 kCmp, kAnd, kOr, kCond };
  K k;
  int line;
  int depth = 1;
  Value lit;
  std::string name;               // name, attribute, operator, filter or test
  std::vector<ExprP> a;           // operands; null entries for omitted slice parts / else
  std::vector<std::pair<std::string, ExprP>> kw;
  std::vector<std::string> ops;   // comparison chain
  bool negate = false;            // `is not`
};

struct Node {
  enum class K { kText, kOutput, kIf, kFor, kSet, kSetBlock, kMacro, kBreak, kContinue, kGeneration };
  K k;
  int line;
  std::string text;                     // text; macro name
  ExprP expr;                           // output / set value / for iterable
  ExprP cond;                           // for ... if cond
  std::vector<std::string> targets;     // for / set names; set ns.attr: {ns, attr}
  bool attr_target = false;
  std::vector<std::pair<ExprP, std::vector<std::unique_ptr<Node>>>> branches;  // if / elif
  std::vector<std::unique_ptr<Node>> body, else_body;
  std::vector<std::pair<std::string, ExprP>> params;  // macro parameters (default may be null)
  std::vector<ExprP> filters;           // block set: filters applied to the body (subject = null)
};
using NodeP = std::unique_ptr<Node>;

// ===========================================================================================
// Parser
namespace {

const std::set<std::string>& known_filters() {
  static const std::set<std::string> s = {
      "abs", "capitalize", "count", "d", "default", "dictsort", "e", "escape", "first", "float", "format", "indent", "int",
      "items", "join", "last", "length", "list", "lower", "map", "max", "min", "reject", "rejectattr", "replace",
      "reverse", "round", "safe", "select", "selectattr", "sort", "string", "sum", "title", "tojson", "trim",
      "unique", "upper", "wordcount"};
  return s;
}
const std::set<std::string>& known_tests() {
  static const std::set<std::string> s = {
      "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "escaped", "even", "false", "filter", "float",
      "ge", "gt", "greaterthan", "in", "integer", "iterable", "le", "lower", "lt", "lessthan", "mapping", "ne",
      "none", "number", "odd", "sameas", "sequence", "string", "test", "true", "undefined", "upper", "==", "!=",
      "<", "<=", ">", ">="};
  return s;
}

class Parser {
 public:
  Parser(std::vector<Token> toks, const std::string& origin, const Limits& limits)
      : t_(std::move(toks)), origin_(origin), limits_(limits) {}

  std::vector<NodeP> parse_template() {
    std::vector<NodeP> body = parse_body({});
    if (peek().kind != Tok::kEof) fail(peek().line, "unexpected input");
    return body;
  }

 private:
  [[noreturn]] void fail(int line, const std::string& what) const {
    throw TemplateError(fmt::format("{}: line {}: {}", origin_, line, what), line);
  }

  const Token& peek(size_t k = 0) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  const Token& next() {
    const Token& t = peek();
    if (i_ < t_.size() - 1) ++i_;
    return t;
  }
  bool is_op(const char* op, size_t k = 0) const { return peek(k).kind == Tok::kOp && peek(k).text == op; }
  bool is_name(const char* n, size_t k = 0) const { return peek(k).kind == Tok::kName && peek(k).text == n; }
  void expect_op(const char* op) {
    if (!is_op(op)) fail(peek().line, fmt::format("expected '{}', found {}", op, describe(peek())));
    next();
  }
  std::string describe(const Token& t) const {
    if (t.kind == Tok::kName || t.kind == Tok::kOp) return "'" + t.text + "'";
    return tok_desc(t.kind);
  }
  std::string expect_name(const char* what) {
    if (peek().kind != Tok::kName) fail(peek().line, fmt::format("expected {}, found {}", what, describe(peek())));
    return next().text;
  }
  void expect_block_end(const std::string& stmt) {
    if (peek().kind != Tok::kBlockEnd)
      fail(peek().line, fmt::format("unexpected {} in {{% {} %}}: expected '%}}'", describe(peek()), stmt));
    next();
  }

  struct DepthGuard {
    Parser& p;
    DepthGuard(Parser& parser, int line) : p(parser) {
      if (++p.depth_ > p.limits_.max_nesting)
        p.fail(line, fmt::format("the template nests blocks or expressions more than {} deep", p.limits_.max_nesting));
    }
    ~DepthGuard() { --p.depth_; }
  };

  ExprP mk(Expr::K k, int line) {
    auto e = std::make_unique<Expr>();
    e->k = k;
    e->line = line;
    return e;
  }
  // Sets the node's depth from its children; bounds the depth of left-leaning chains (a+b+c...).
  ExprP fin(ExprP e) {
    int d = 0;
    for (const auto& c : e->a)
      if (c) d = std::max(d, c->depth);
    for (const auto& [n, c] : e->kw)
      if (c) d = std::max(d, c->depth);
    e->depth = d + 1;
    if (e->depth > 2 * limits_.max_nesting)
      fail(e->line, fmt::format("expression nested more than {} deep", 2 * limits_.max_nesting));
    return e;
  }

  // ---- statements
  // Parses until a {% <one of ends> %} (not consumed) or the end of the template.
  std::vector<NodeP> parse_body(const std::vector<std::string>& ends) {
    std::vector<NodeP> body;
    while (true) {
      const Token& t = peek();
      if (t.kind == Tok::kEof) return body;
      if (t.kind == Tok::kText) {
        auto n = std::make_unique<Node>();
        n->k = Node::K::kText;
        n->line = t.line;
        n->text = t.text;
        next();
        body.push_back(std::move(n));
      } else if (t.kind == Tok::kVarBegin) {
        next();
        auto n = std::make_unique<Node>();
        n->k = Node::K::kOutput;
        n->line = t.line;
        n->expr = parse_expr();
        if (peek().kind != Tok::kVarEnd) fail(peek().line, fmt::format("unexpected {} in {{{{ ... }}}}: expected '}}}}'", describe(peek())));
        next();
        body.push_back(std::move(n));
      } else if (t.kind == Tok::kBlockBegin) {
        const Token& kw = peek(1);
        if (kw.kind != Tok::kName) fail(kw.line, fmt::format("expected a statement name after '{{%', found {}", describe(kw)));
        if (std::find(ends.begin(), ends.end(), kw.text) != ends.end()) return body;
        next();
        body.push_back(parse_statement());
      } else {
        fail(t.line, fmt::format("unexpected {}", describe(t)));
      }
    }
  }

  std::vector<NodeP> parse_until(const std::vector<std::string>& ends, const std::string& opener, int line) {
    DepthGuard g(*this, line);
    open_.emplace_back(opener, line);
    auto body = parse_body(ends);
    open_.pop_back();
    if (peek().kind == Tok::kEof) {
      std::string want;
      for (const auto& e : ends) want += (want.empty() ? "" : " or ") + ("{% " + e + " %}");
      fail(line, fmt::format("{{% {} %}} is never closed (expected {})", opener, want));
    }
    return body;
  }

  // After parse_until: consumes "{% name" (the caller checks the rest).
  std::string take_end_keyword() {
    next();  // {%
    return next().text;
  }

  NodeP parse_statement() {
    const Token& kw = next();
    const std::string name = kw.text;
    const int line = kw.line;
    auto n = std::make_unique<Node>();
    n->line = line;
    if (name == "if") {
      n->k = Node::K::kIf;
      ExprP cond = parse_expr();
      expect_block_end("if");
      while (true) {
        auto body = parse_until({"elif", "else", "endif"}, "if", line);
        n->branches.emplace_back(std::move(cond), std::move(body));
        const std::string end = take_end_keyword();
        if (end == "elif") {
          cond = parse_expr();
          expect_block_end("elif");
          continue;
        }
        if (end == "else") {
          expect_block_end("else");
          n->else_body = parse_until({"endif"}, "if", line);
          take_end_keyword();
        }
        expect_block_end("endif");
        break;
      }
    } else if (name == "for") {
      n->k = Node::K::kFor;
      n->targets.push_back(expect_name("a loop variable"));
      while (is_op(",")) {
        next();
        n->targets.push_back(expect_name("a loop variable"));
      }
      if (!is_name("in")) fail(peek().line, fmt::format("expected 'in' in {{% for %}}, found {}", describe(peek())));
      next();
      n->expr = parse_expr(/*no_cond=*/true);
      if (is_name("if")) {
        next();
        n->cond = parse_expr(true);
      }
      if (is_name("recursive")) fail(peek().line, "recursive for loops are not supported");
      expect_block_end("for");
      ++loop_depth_;
      n->body = parse_until({"else", "endfor"}, "for", line);
      --loop_depth_;
      if (take_end_keyword() == "else") {
        expect_block_end("else");
        n->else_body = parse_until({"endfor"}, "for", line);
        take_end_keyword();
      }
      expect_block_end("endfor");
    } else if (name == "set") {
      n->targets.push_back(expect_name("a variable name"));
      if (is_op(".")) {
        next();
        n->targets.push_back(expect_name("an attribute name"));
        n->attr_target = true;
      } else {
        while (is_op(",")) {
          next();
          n->targets.push_back(expect_name("a variable name"));
        }
      }
      if (is_op("=")) {
        next();
        n->k = Node::K::kSet;
        n->expr = parse_tuple_or_expr();
        expect_block_end("set");
      } else {
        if (n->targets.size() != 1 || n->attr_target) fail(line, "a block {% set %} takes one variable name");
        n->k = Node::K::kSetBlock;
        while (is_op("|")) {
          next();
          n->filters.push_back(parse_filter_call(nullptr));
        }
        expect_block_end("set");
        n->body = parse_until({"endset"}, "set", line);
        take_end_keyword();
        expect_block_end("endset");
      }
    } else if (name == "macro") {
      n->k = Node::K::kMacro;
      n->text = expect_name("a macro name");
      expect_op("(");
      while (!is_op(")")) {
        std::string p = expect_name("a parameter name");
        ExprP def;
        if (is_op("=")) {
          next();
          def = parse_expr();
        }
        n->params.emplace_back(std::move(p), std::move(def));
        if (!is_op(",")) break;
        next();
      }
      expect_op(")");
      expect_block_end("macro");
      const int outer_loops = loop_depth_;
      loop_depth_ = 0;  // a macro's body is not inside the loop around its definition
      n->body = parse_until({"endmacro"}, "macro", line);
      loop_depth_ = outer_loops;
      take_end_keyword();
      if (peek().kind == Tok::kName) next();  // {% endmacro name %}
      expect_block_end("endmacro");
    } else if (name == "break" || name == "continue") {
      if (loop_depth_ == 0) fail(line, fmt::format("{{% {} %}} outside a for loop", name));
      n->k = name == "break" ? Node::K::kBreak : Node::K::kContinue;
      expect_block_end(name);
    } else if (name == "generation") {
      n->k = Node::K::kGeneration;
      expect_block_end("generation");
      n->body = parse_until({"endgeneration"}, "generation", line);
      take_end_keyword();
      expect_block_end("endgeneration");
    } else {
      static const std::set<std::string> closers = {"elif", "else", "endif", "endfor", "endmacro", "endset",
                                                    "endgeneration", "endraw", "endblock", "endfilter", "endcall"};
      if (closers.count(name)) {
        if (open_.empty()) fail(line, fmt::format("unexpected {{% {} %}}: no block is open", name));
        fail(line, fmt::format("unexpected {{% {} %}}: the open block is {{% {} %}} from line {}", name, open_.back().first,
                               open_.back().second));
      }
      static const std::set<std::string> known = {"block", "call", "do", "extends", "filter", "from", "import",
                                                  "include", "with", "trans", "autoescape"};
      if (known.count(name)) fail(line, fmt::format("the {{% {} %}} statement is not supported by sharq's Jinja interpreter", name));
      fail(line, fmt::format("unknown statement {{% {} %}}", name));
    }
    return n;
  }

  // for loops: track whether break/continue are legal
 public:
  int loop_depth_ = 0;

 private:
  // `a, b = 1, 2` and `set x = 1, 2`: a bare tuple is a list.
  ExprP parse_tuple_or_expr() {
    const int line = peek().line;
    ExprP first = parse_expr();
    if (!is_op(",")) return first;
    auto e = mk(Expr::K::kList, line);
    e->name = "tuple";
    e->a.push_back(std::move(first));
    while (is_op(",")) {
      next();
      if (peek().kind == Tok::kBlockEnd) break;
      e->a.push_back(parse_expr());
    }
    return fin(std::move(e));
  }

  // ---- expressions
  ExprP parse_expr(bool no_cond = false) {
    DepthGuard g(*this, peek().line);
    ExprP e = parse_or();
    if (no_cond) return e;
    while (is_name("if")) {
      const int line = next().line;
      auto c = mk(Expr::K::kCond, line);
      ExprP cond = parse_or();
      ExprP other;
      if (is_name("else")) {
        next();
        other = parse_expr();
      }
      c->a.push_back(std::move(e));
      c->a.push_back(std::move(cond));
      c->a.push_back(std::move(other));
      e = fin(std::move(c));
    }
    return e;
  }

  ExprP binary(Expr::K k, const std::string& op, ExprP l, ExprP r, int line) {
    auto e = mk(k, line);
    e->name = op;
    e->a.push_back(std::move(l));
    e->a.push_back(std::move(r));
    return fin(std::move(e));
  }

  ExprP parse_or() {
    ExprP l = parse_and();
    while (is_name("or")) {
      const int line = next().line;
      l = binary(Expr::K::kOr, "or", std::move(l), parse_and(), line);
    }
    return l;
  }
  ExprP parse_and() {
    ExprP l = parse_not();
    while (is_name("and")) {
      const int line = next().line;
      l = binary(Expr::K::kAnd, "and", std::move(l), parse_not(), line);
    }
    return l;
  }
  ExprP parse_not() {
    if (is_name("not")) {
      const int line = next().line;
      DepthGuard g(*this, line);
      auto e = mk(Expr::K::kNot, line);
      e->a.push_back(parse_not());
      return fin(std::move(e));
    }
    return parse_compare();
  }
  ExprP parse_compare() {
    const int line = peek().line;
    ExprP l = parse_math1();
    ExprP cmp;
    while (true) {
      std::string op;
      if (peek().kind == Tok::kOp && (peek().text == "==" || peek().text == "!=" || peek().text == "<" ||
                                      peek().text == "<=" || peek().text == ">" || peek().text == ">=")) {
        op = next().text;
      } else if (is_name("in")) {
        next();
        op = "in";
      } else if (is_name("not") && is_name("in", 1)) {
        next();
        next();
        op = "not in";
      } else {
        break;
      }
      if (!cmp) {
        cmp = mk(Expr::K::kCmp, line);
        cmp->a.push_back(std::move(l));
      }
      cmp->ops.push_back(op);
      cmp->a.push_back(parse_math1());
    }
    return cmp ? fin(std::move(cmp)) : std::move(l);
  }
  ExprP parse_math1() {
    ExprP l = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token& t = next();
      l = binary(Expr::K::kBin, t.text, std::move(l), parse_concat(), t.line);
    }
    return l;
  }
  ExprP parse_concat() {
    ExprP l = parse_math2();
    while (is_op("~")) {
      const int line = next().line;
      l = binary(Expr::K::kBin, "~", std::move(l), parse_math2(), line);
    }
    return l;
  }
  ExprP parse_math2() {
    ExprP l = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& t = next();
      l = binary(Expr::K::kBin, t.text, std::move(l), parse_pow(), t.line);
    }
    return l;
  }
  ExprP parse_pow() {
    ExprP l = parse_unary();
    while (is_op("**")) {
      const int line = next().line;
      l = binary(Expr::K::kBin, "**", std::move(l), parse_unary(), line);
    }
    return l;
  }
  // As Jinja: filters and tests apply to the negation (-3|abs is (-3)|abs).
  ExprP parse_unary(bool with_filter = true) {
    ExprP e;
    if (is_op("-") || is_op("+")) {
      const Token& t = next();
      DepthGuard g(*this, t.line);
      e = mk(t.text == "-" ? Expr::K::kNeg : Expr::K::kPos, t.line);
      e->a.push_back(parse_unary(false));
      e = fin(std::move(e));
    } else {
      e = parse_postfix(parse_primary());
    }
    return with_filter ? parse_filter_expr(std::move(e)) : std::move(e);
  }

  ExprP parse_primary() {
    const Token& t = peek();
    DepthGuard g(*this, t.line);
    switch (t.kind) {
      case Tok::kName: {
        next();
        auto e = mk(Expr::K::kLit, t.line);
        if (t.text == "true" || t.text == "True") e->lit = Value(true);
        else if (t.text == "false" || t.text == "False") e->lit = Value(false);
        else if (t.text == "none" || t.text == "None") e->lit = Value::none();
        else {
          e->k = Expr::K::kName;
          e->name = t.text;
        }
        return e;
      }
      case Tok::kString: {
        std::string s = next().text;
        while (peek().kind == Tok::kString) s += next().text;  // adjacent literals concatenate
        auto e = mk(Expr::K::kLit, t.line);
        e->lit = Value(std::move(s));
        return e;
      }
      case Tok::kInt: {
        auto e = mk(Expr::K::kLit, t.line);
        e->lit = Value(next().i);
        return e;
      }
      case Tok::kFloat: {
        auto e = mk(Expr::K::kLit, t.line);
        e->lit = Value(next().f);
        return e;
      }
      case Tok::kOp:
        if (t.text == "(") {
          next();
          if (is_op(")")) {  // empty tuple
            next();
            auto l = mk(Expr::K::kList, t.line);
            l->name = "tuple";
            return fin(std::move(l));
          }
          ExprP e = parse_expr();
          if (is_op(",")) {
            auto l = mk(Expr::K::kList, t.line);
            l->name = "tuple";
            l->a.push_back(std::move(e));
            while (is_op(",")) {
              next();
              if (is_op(")")) break;
              l->a.push_back(parse_expr());
            }
            e = fin(std::move(l));
          }
          expect_op(")");
          return e;
        }
        if (t.text == "[") {
          next();
          auto l = mk(Expr::K::kList, t.line);
          while (!is_op("]")) {
            l->a.push_back(parse_expr());
            if (!is_op(",")) break;
            next();
          }
          expect_op("]");
          return fin(std::move(l));
        }
        if (t.text == "{") {
          next();
          auto d = mk(Expr::K::kDict, t.line);
          while (!is_op("}")) {
            d->a.push_back(parse_expr());
            expect_op(":");
            d->a.push_back(parse_expr());
            if (!is_op(",")) break;
            next();
          }
          expect_op("}");
          return fin(std::move(d));
        }
        break;
      default: break;
    }
    fail(t.line, fmt::format("unexpected {} in an expression", describe(t)));
  }

  void parse_call_args(Expr& e) {
    expect_op("(");
    while (!is_op(")")) {
      if (peek().kind == Tok::kName && is_op("=", 1)) {
        std::string k = next().text;
        next();
        e.kw.emplace_back(std::move(k), parse_expr());
      } else {
        if (is_op("*") || is_op("**")) fail(peek().line, "*args / **kwargs in calls are not supported");
        if (!e.kw.empty()) fail(peek().line, "a positional argument follows a keyword argument");
        e.a.push_back(parse_expr());
      }
      if (!is_op(",")) break;
      next();
    }
    expect_op(")");
  }

  ExprP parse_postfix(ExprP e) {
    while (true) {
      if (is_op(".")) {
        const int line = next().line;
        auto a = mk(Expr::K::kAttr, line);
        if (peek().kind == Tok::kInt) {  // x.0 is x[0]
          a->k = Expr::K::kItem;
          auto idx = mk(Expr::K::kLit, line);
          idx->lit = Value(next().i);
          a->a.push_back(std::move(e));
          a->a.push_back(std::move(idx));
        } else {
          a->name = expect_name("an attribute name");
          a->a.push_back(std::move(e));
        }
        e = fin(std::move(a));
      } else if (is_op("[")) {
        const int line = next().line;
        ExprP parts[3];
        int n = 0;
        bool slice = false;
        while (true) {
          if (!is_op(":") && !is_op("]")) parts[n] = parse_expr();
          if (is_op(":")) {
            slice = true;
            next();
            if (++n > 2) fail(line, "a slice has at most three parts");
            continue;
          }
          break;
        }
        expect_op("]");
        if (!slice && !parts[0]) fail(line, "empty subscript []");
        auto s = mk(slice ? Expr::K::kSlice : Expr::K::kItem, line);
        s->a.push_back(std::move(e));
        if (slice) for (auto& p : parts) s->a.push_back(std::move(p));
        else s->a.push_back(std::move(parts[0]));
        e = fin(std::move(s));
      } else if (is_op("(")) {
        auto c = mk(Expr::K::kCall, peek().line);
        c->a.push_back(std::move(e));
        parse_call_args(*c);
        e = fin(std::move(c));
      } else {
        return e;
      }
    }
  }

  ExprP parse_filter_call(ExprP subject) {
    const int line = peek().line;
    std::string name = expect_name("a filter name");
    while (is_op(".")) {  // dotted filter names do not exist here; report the whole name
      next();
      name += "." + expect_name("a filter name");
    }
    if (!known_filters().count(name)) fail(line, fmt::format("unknown filter '{}'", name));
    auto f = mk(Expr::K::kFilter, line);
    f->name = name;
    f->a.push_back(std::move(subject));
    if (is_op("(")) parse_call_args(*f);
    return fin(std::move(f));
  }

  ExprP parse_filter_expr(ExprP e) {
    while (true) {
      if (is_op("|")) {
        next();
        e = parse_filter_call(std::move(e));
        e = parse_postfix(std::move(e));
      } else if (is_name("is")) {
        const int line = next().line;
        auto t = mk(Expr::K::kTest, line);
        if (is_name("not")) {
          next();
          t->negate = true;
        }
        if (peek().kind == Tok::kName) t->name = next().text;
        else if (peek().kind == Tok::kOp && known_tests().count(peek().text)) t->name = next().text;
        else fail(peek().line, fmt::format("expected a test name after 'is', found {}", describe(peek())));
        if (t->name == "none" || t->name == "true" || t->name == "false") {
          // `is none` etc.: the keywords name tests here
        }
        if (!known_tests().count(t->name)) fail(line, fmt::format("unknown test '{}'", t->name));
        t->a.push_back(std::move(e));
        if (is_op("(")) {
          parse_call_args(*t);
        } else {
          const Token& nt = peek();
          const bool arg = nt.kind == Tok::kString || nt.kind == Tok::kInt || nt.kind == Tok::kFloat ||
                           (nt.kind == Tok::kName && nt.text != "else" && nt.text != "or" && nt.text != "and" &&
                            nt.text != "if" && nt.text != "is" && nt.text != "in" && nt.text != "not") ||
                           is_op("[") || is_op("{");
          if (arg) t->a.push_back(parse_postfix(parse_primary()));
        }
        e = fin(std::move(t));
      } else {
        return e;
      }
    }
  }

  std::vector<Token> t_;
  size_t i_ = 0;
  const std::string& origin_;
  const Limits& limits_;
  int depth_ = 0;
  std::vector<std::pair<std::string, int>> open_;  // the blocks being parsed, for messages
};

}  // namespace

// ===========================================================================================
// Renderer
namespace {

enum class Flow { kNormal, kBreak, kContinue };

// Work units (Limits::max_work): a statement or call is 1, a loop iteration kIterationCost, and
// building a string or list costs its size (bytes / 16, items).
constexpr int64_t kIterationCost = 8;

class Renderer {
 public:
  Renderer(const std::string& origin, const Limits& limits, int64_t now_unix)
      : origin_(origin), limits_(limits), now_unix_(now_unix) {}

  std::string run(const std::vector<NodeP>& body, const Value& context) {
    scopes_.emplace_back();
    install_globals(scopes_.back());
    if (context.is_dict())
      for (const auto& [k, v] : context.dict_ref().entries) scopes_.back()[k] = v;
    scopes_.emplace_back();  // the template's own top level
    std::string out;
    out_ = &out;
    exec_body(body);
    return out;
  }

 private:
  using Scope = std::unordered_map<std::string, Value>;

  [[noreturn]] void fail(int line, const std::string& what) const {
    throw TemplateError(fmt::format("{}: line {}: {}", origin_, line, what), line);
  }

  void charge(int64_t units, int line) {
    if (line == 0) line = cur_line_;
    work_ += units;
    if (work_ > limits_.max_work)
      fail(line, fmt::format("rendering exceeded its work limit ({} steps): does the template loop without end?",
                             limits_.max_work));
  }
  void check_size(size_t bytes, int line) {
    if (line == 0) line = cur_line_;
    if (static_cast<int64_t>(bytes) > limits_.max_output_bytes)
      fail(line, fmt::format("a string of {} bytes exceeds the limit of {} bytes", bytes, limits_.max_output_bytes));
  }
  void check_items(size_t n, int line) {
    if (line == 0) line = cur_line_;
    if (static_cast<int64_t>(n) > limits_.max_list_items)
      fail(line, fmt::format("a list of {} items exceeds the limit of {} items", n, limits_.max_list_items));
  }

  void write(const std::string& s, int line) {
    total_out_ += static_cast<int64_t>(s.size());
    charge(static_cast<int64_t>(s.size()) / 16, line);
    if (total_out_ > limits_.max_output_bytes)
      fail(line, fmt::format("the rendered text exceeds the limit of {} bytes", limits_.max_output_bytes));
    *out_ += s;
  }

  // ---- scopes
  Value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end()) return f->second;
    }
    return Value::undefined(name);
  }
  void assign(const std::string& name, Value v) { scopes_.back()[name] = std::move(v); }

  // ---- globals
  void install_globals(Scope& g) {
    g["range"] = Value::callable("range", [this](ValueList& a, KwArgs& kw) {
      if (!kw.empty() || a.empty() || a.size() > 3) throw CallError("range() takes 1 to 3 integer arguments");
      for (const auto& v : a)
        if (v.type() != Value::Type::kInt && v.type() != Value::Type::kBool)
          throw CallError(fmt::format("range() takes integers, not '{}'", type_name(v)));
      int64_t start = 0, stop, step = 1;
      if (a.size() == 1) stop = a[0].as_int();
      else {
        start = a[0].as_int();
        stop = a[1].as_int();
        if (a.size() == 3) step = a[2].as_int();
      }
      if (step == 0) throw CallError("range() step must not be zero");
      const double count = std::max(0.0, std::ceil((static_cast<double>(stop) - static_cast<double>(start)) / static_cast<double>(step)));
      if (count > static_cast<double>(limits_.max_list_items))
        throw CallError(fmt::format("range() of {:.0f} items exceeds the limit of {} items", count, limits_.max_list_items));
      charge(static_cast<int64_t>(count), 0);
      ValueList out;
      out.reserve(static_cast<size_t>(count));
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) out.emplace_back(i);
      return Value::list(std::move(out));
    });
    g["namespace"] = Value::callable("namespace", [](ValueList& a, KwArgs& kw) {
      Value ns = Value::namespace_();
      for (const auto& v : a) {
        if (!v.is_dict()) throw CallError("namespace() takes a dict or keyword arguments");
        for (const auto& [k, e] : v.dict_ref().entries) ns.set(k, e);
      }
      for (const auto& [k, e] : kw) ns.set(k, e);
      return ns;
    });
    g["dict"] = Value::callable("dict", [](ValueList& a, KwArgs& kw) {
      Value d = Value::dict();
      for (const auto& v : a) {
        if (!v.is_dict()) throw CallError("dict() takes a dict or keyword arguments");
        for (const auto& [k, e] : v.dict_ref().entries) d.set(k, e);
      }
      for (const auto& [k, e] : kw) d.set(k, e);
      return d;
    });
    g["raise_exception"] = Value::callable("raise_exception", [](ValueList& a, KwArgs&) -> Value {
      throw TemplateRaised(a.empty() ? std::string("(no message)") : to_str(a[0]), 0);
    });
    g["strftime_now"] = Value::callable("strftime_now", [this](ValueList& a, KwArgs&) {
      if (a.size() != 1 || !a[0].is_string()) throw CallError("strftime_now() takes one format string");
      const std::time_t t = now_unix_ >= 0 ? static_cast<std::time_t>(now_unix_) : std::time(nullptr);
      std::tm tm{};
      localtime_r(&t, &tm);
      char buf[512];
      const size_t n = a[0].str().empty() ? 0 : std::strftime(buf, sizeof buf, a[0].str().c_str(), &tm);
      if (n == 0 && !a[0].str().empty()) throw CallError("strftime_now(): the formatted date is empty or too long");
      return Value(std::string(buf, n));
    });
  }

  // ---- statements
  Flow exec_body(const std::vector<NodeP>& body) {
    for (const auto& n : body) {
      const Flow f = exec(*n);
      if (f != Flow::kNormal) return f;
    }
    return Flow::kNormal;
  }

  Flow exec(const Node& n) {
    charge(1, n.line);
    switch (n.k) {
      case Node::K::kText: write(n.text, n.line); return Flow::kNormal;
      case Node::K::kOutput: {
        const Value v = eval(*n.expr);
        std::string s;
        try {
          s = to_str(v);
        } catch (const TemplateError& e) {
          fail(n.line, e.what());
        }
        write(s, n.line);
        return Flow::kNormal;
      }
      case Node::K::kIf:
        for (const auto& [cond, body] : n.branches)
          if (eval(*cond).truthy()) return exec_body(body);
        return exec_body(n.else_body);
      case Node::K::kFor: return exec_for(n);
      case Node::K::kSet: {
        Value v = eval(*n.expr);
        set_targets(n, std::move(v));
        return Flow::kNormal;
      }
      case Node::K::kSetBlock: {
        std::string buf;
        std::string* saved = out_;
        out_ = &buf;
        Flow f;
        try {
          f = exec_body(n.body);
        } catch (...) {
          out_ = saved;
          throw;
        }
        out_ = saved;
        (void)f;
        Value v(std::move(buf));
        for (const auto& fe : n.filters) v = apply_filter(*fe, v);
        assign(n.targets[0], std::move(v));
        return Flow::kNormal;
      }
      case Node::K::kMacro: assign(n.text, make_macro(n)); return Flow::kNormal;
      case Node::K::kBreak: return Flow::kBreak;
      case Node::K::kContinue: return Flow::kContinue;
      case Node::K::kGeneration: return exec_body(n.body);
    }
    return Flow::kNormal;
  }

  void set_targets(const Node& n, Value v) {
    if (n.attr_target) {
      Value ns = lookup(n.targets[0]);
      if (!ns.is_namespace())
        fail(n.line, fmt::format("cannot set an attribute of '{}' ({}): only a namespace() can be assigned to",
                                 n.targets[0], ns.is_undefined() ? "undefined" : type_name(ns)));
      // A namespace is the only value that outlives a loop iteration, so the only way to build
      // ever deeper values (whose destruction recurses): bound the depth of what it holds.
      int64_t visited = 0;
      const int d = nesting(v, ns.dict_ref(), 0, visited);
      charge(visited, n.line);
      if (d < 0) fail(n.line, "a namespace cannot contain itself");
      if (d > kMaxValueDepth) fail(n.line, fmt::format("a value nested more than {} deep", kMaxValueDepth));
      ns.set(n.targets[1], std::move(v));
      return;
    }
    if (n.targets.size() == 1) {
      assign(n.targets[0], std::move(v));
      return;
    }
    unpack(n.targets, v, n.line);
  }

  void unpack(const std::vector<std::string>& targets, const Value& v, int line) {
    ValueList items = iterate(v, line);
    if (items.size() != targets.size())
      fail(line, fmt::format("cannot unpack {} values into {} variables", items.size(), targets.size()));
    for (size_t i = 0; i < targets.size(); ++i) assign(targets[i], items[i]);
  }

  // The nesting depth of v (0 for a scalar), -1 when it contains `target`; the walk stops past
  // kMaxValueDepth. `visited` counts the values seen (work).
  int nesting(const Value& v, const Dict& target, int depth, int64_t& visited) {
    ++visited;
    if (depth > kMaxValueDepth) return depth;
    int deepest = 0;
    if (v.is_dict()) {
      if (&v.dict_ref() == &target) return -1;
      for (const auto& [k, e] : v.dict_ref().entries) {
        const int d = nesting(e, target, depth + 1, visited);
        if (d < 0) return -1;
        deepest = std::max(deepest, d);
        if (deepest > kMaxValueDepth) break;
      }
      return deepest + 1;
    }
    if (v.is_list()) {
      for (const auto& e : v.items()) {
        const int d = nesting(e, target, depth + 1, visited);
        if (d < 0) return -1;
        deepest = std::max(deepest, d);
        if (deepest > kMaxValueDepth) break;
      }
      return deepest + 1;
    }
    return 0;
  }

  // The items a for loop (or unpacking) walks: list items, dict keys, string characters.
  ValueList iterate(const Value& v, int line) {
    switch (v.type()) {
      case Value::Type::kUndefined: return {};
      case Value::Type::kList: return v.items();
      case Value::Type::kDict: {
        if (v.is_namespace()) break;
        ValueList keys;
        for (const auto& [k, e] : v.dict_ref().entries) keys.emplace_back(k);
        return keys;
      }
      case Value::Type::kString: {
        ValueList out;
        for (uint32_t c : decode_utf8(v.str())) {
          std::string s;
          append_utf8(s, c);
          out.emplace_back(std::move(s));
        }
        return out;
      }
      default: break;
    }
    fail(line, fmt::format("'{}' object is not iterable", type_name(v)));
  }

  Flow exec_for(const Node& n) {
    const Value seq = eval(*n.expr);
    ValueList items = iterate(seq, n.line);
    if (n.cond) {
      ValueList kept;
      scopes_.emplace_back();
      for (auto& it : items) {
        bind_loop_targets(n, it);
        if (eval(*n.cond).truthy()) kept.push_back(it);
      }
      scopes_.pop_back();
      items = std::move(kept);
    }
    if (items.empty()) return exec_body(n.else_body);
    charge(static_cast<int64_t>(items.size()), n.line);
    const int64_t len = static_cast<int64_t>(items.size());
    // One loop object for the whole loop, advanced in place (as Jinja's LoopContext is).
    Value loop = Value::dict();
    for (const char* k : {"index0", "index", "revindex", "revindex0", "first", "last", "length", "depth", "depth0",
                          "previtem", "nextitem", "cycle"})
      loop.set(k, Value());
    auto& slots = loop.dict_ref().entries;
    slots[6].second = Value(len);
    slots[7].second = Value(static_cast<int64_t>(1));  // recursion depth: loops are not recursive here
    slots[8].second = Value(static_cast<int64_t>(0));
    Dict* loop_dict = &loop.dict_ref();
    slots[11].second = Value::callable("loop.cycle", [loop_dict](ValueList& a, KwArgs&) {
      if (a.empty()) throw CallError("loop.cycle() needs at least one argument");
      return a[static_cast<size_t>(loop_dict->entries[0].second.as_int()) % a.size()];
    });
    for (int64_t i = 0; i < len; ++i) {
      charge(kIterationCost, n.line);
      scopes_.emplace_back();
      struct Pop {
        std::vector<Scope>& s;
        ~Pop() { s.pop_back(); }
      } pop{scopes_};
      slots[0].second = Value(i);
      slots[1].second = Value(i + 1);
      slots[2].second = Value(len - i);
      slots[3].second = Value(len - i - 1);
      slots[4].second = Value(i == 0);
      slots[5].second = Value(i == len - 1);
      slots[9].second = i > 0 ? items[static_cast<size_t>(i - 1)] : Value::undefined("previtem");
      slots[10].second = i + 1 < len ? items[static_cast<size_t>(i + 1)] : Value::undefined("nextitem");
      scopes_.back().emplace("loop", loop);
      bind_loop_targets(n, items[static_cast<size_t>(i)]);
      const Flow f = exec_body(n.body);
      if (f == Flow::kBreak) break;
    }
    return Flow::kNormal;
  }

  void bind_loop_targets(const Node& n, const Value& item) {
    if (n.targets.size() == 1) assign(n.targets[0], item);
    else unpack(n.targets, item, n.line);
  }

  Value make_macro(const Node& n) {
    const Node* node = &n;
    return Value::callable(n.text, [this, node](ValueList& a, KwArgs& kw) { return call_macro(*node, a, kw); });
  }

  Value call_macro(const Node& n, ValueList& args, KwArgs& kw) {
    if (++call_depth_ > limits_.max_call_depth) {
      --call_depth_;
      throw CallError(fmt::format("macro calls nest more than {} deep (unbounded recursion?)", limits_.max_call_depth));
    }
    struct Dec {
      int& d;
      ~Dec() { --d; }
    } dec{call_depth_};
    if (args.size() > n.params.size())
      throw CallError(fmt::format("macro '{}' takes {} arguments, {} given", n.text, n.params.size(), args.size()));
    Scope local;
    for (size_t i = 0; i < n.params.size(); ++i) {
      // plain references, not a structured binding: clang < 16 rejects lambdas capturing one
      const std::string& pname = n.params[i].first;
      const ExprP& def = n.params[i].second;
      const auto kwit = std::find_if(kw.begin(), kw.end(), [&](const auto& p) { return p.first == pname; });
      if (i < args.size()) local[pname] = args[i];
      else if (kwit != kw.end()) local[pname] = kwit->second;
      else if (def) local[pname] = eval(*def);
      else local[pname] = Value::undefined(pname);
    }
    for (const auto& kv : kw) {
      const std::string& k = kv.first;
      if (std::none_of(n.params.begin(), n.params.end(), [&](const auto& p) { return p.first == k; }))
        throw CallError(fmt::format("macro '{}' has no parameter '{}'", n.text, k));
    }
    std::vector<Scope> saved = std::move(scopes_);
    scopes_.clear();
    scopes_.push_back(saved[0]);
    scopes_.push_back(saved[1]);
    scopes_.push_back(std::move(local));
    std::string buf;
    std::string* saved_out = out_;
    out_ = &buf;
    try {
      exec_body(n.body);
    } catch (...) {
      out_ = saved_out;
      scopes_ = std::move(saved);
      throw;
    }
    out_ = saved_out;
    // the template's top level may have been changed by the macro's body only through namespaces
    scopes_ = std::move(saved);
    return Value(std::move(buf));
  }

  // ---- expressions
  Value eval(const Expr& e) {
    switch (e.k) {
      case Expr::K::kLit: return e.lit;
      case Expr::K::kName: return lookup(e.name);
      case Expr::K::kList: {
        ValueList items;
        for (const auto& c : e.a) items.push_back(eval(*c));
        return e.name == "tuple" ? Value::tuple(std::move(items)) : Value::list(std::move(items));
      }
      case Expr::K::kDict: {
        Value d = Value::dict();
        for (size_t i = 0; i + 1 < e.a.size(); i += 2) {
          const Value k = eval(*e.a[i]);
          if (!k.is_string()) fail(e.line, fmt::format("dict keys must be strings here, not '{}'", type_name(k)));
          d.set(k.str(), eval(*e.a[i + 1]));
        }
        return d;
      }
      case Expr::K::kAttr: return get_attr(eval(*e.a[0]), e.name, e.line, e.a[0].get());
      case Expr::K::kItem: return get_item(eval(*e.a[0]), eval(*e.a[1]), e.line, e.a[0].get());
      case Expr::K::kSlice: return slice(e);
      case Expr::K::kCall: {
        const Value f = eval(*e.a[0]);
        if (f.is_undefined()) {
          const Expr& c = *e.a[0];
          if (c.k == Expr::K::kAttr && c.a[0]->k != Expr::K::kName && c.a[0]->k != Expr::K::kAttr)
            fail(e.line, fmt::format("the {} value has no attribute '{}' to call", type_name(eval(*c.a[0])), c.name));
          if (c.k == Expr::K::kAttr)
            fail(e.line, fmt::format("'{}' has no attribute '{}' to call ('{}' is undefined)", describe(*c.a[0]), c.name,
                                     describe(c)));
          fail(e.line, fmt::format("'{}' is undefined (called as a function)", describe(c)));
        }
        if (f.type() != Value::Type::kCallable) fail(e.line, fmt::format("'{}' object is not callable", type_name(f)));
        ValueList args;
        KwArgs kw;
        for (size_t i = 1; i < e.a.size(); ++i) args.push_back(eval(*e.a[i]));
        for (const auto& [k, v] : e.kw) kw.emplace_back(k, eval(*v));
        charge(1, e.line);
        const int saved_line = cur_line_;
        cur_line_ = e.line;
        struct Restore {
          int& l;
          int v;
          ~Restore() { l = v; }
        } restore{cur_line_, saved_line};
        try {
          return f.fn().fn(args, kw);
        } catch (const TemplateRaised& r) {
          if (r.line() != 0) throw;
          throw TemplateRaised(fmt::format("{}: line {}: raise_exception: {}", origin_, e.line, r.what()), e.line);
        } catch (const CallError& c) {
          fail(e.line, fmt::format("{}(): {}", f.fn().name, c.what()));
        }
      }
      case Expr::K::kFilter: return apply_filter(e, eval(*e.a[0]));
      case Expr::K::kTest: {
        const bool r = apply_test(e);
        return Value(e.negate ? !r : r);
      }
      case Expr::K::kNeg:
      case Expr::K::kPos: {
        const Value v = eval(*e.a[0]);
        if (v.is_undefined()) fail(e.line, fmt::format("'{}' is undefined", describe(*e.a[0])));
        if (v.type() == Value::Type::kFloat) return Value(e.k == Expr::K::kNeg ? -v.as_float() : v.as_float());
        if (v.type() == Value::Type::kInt || v.type() == Value::Type::kBool) {
          if (e.k == Expr::K::kPos) return Value(v.as_int());
          if (v.as_int() == std::numeric_limits<int64_t>::min()) fail(e.line, "integer overflow");
          return Value(-v.as_int());
        }
        fail(e.line, fmt::format("bad operand type for unary {}: '{}'", e.k == Expr::K::kNeg ? "-" : "+", type_name(v)));
      }
      case Expr::K::kNot: return Value(!eval(*e.a[0]).truthy());
      case Expr::K::kAnd: {
        Value l = eval(*e.a[0]);
        return l.truthy() ? eval(*e.a[1]) : l;
      }
      case Expr::K::kOr: {
        Value l = eval(*e.a[0]);
        return l.truthy() ? l : eval(*e.a[1]);
      }
      case Expr::K::kCond: {
        if (eval(*e.a[1]).truthy()) return eval(*e.a[0]);
        return e.a[2] ? eval(*e.a[2]) : Value::undefined();
      }
      case Expr::K::kBin: return binop(e);
      case Expr::K::kCmp: {
        Value l = eval(*e.a[0]);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value r = eval(*e.a[i + 1]);
          if (!compare(e.ops[i], l, r, e.line)) return Value(false);
          l = std::move(r);
        }
        return Value(true);
      }
    }
    return Value();
  }

  // A short description of an expression for messages: a name or a dotted path.
  static std::string describe(const Expr& e) {
    if (e.k == Expr::K::kName) return e.name;
    if (e.k == Expr::K::kAttr && e.a[0]) return describe(*e.a[0]) + "." + e.name;
    if (e.k == Expr::K::kItem && e.a[0]) return describe(*e.a[0]) + "[...]";
    if (e.k == Expr::K::kCall && e.a[0]) return describe(*e.a[0]) + "(...)";
    return "expression";
  }

  [[noreturn]] void fail_undefined(const Value& v, const Expr* src, int line, const std::string& doing) {
    const std::string what = src ? describe(*src) : v.undefined_name();
    fail(line, fmt::format("'{}' is undefined ({})", what.empty() ? "value" : what, doing));
  }

  Value bound(const Value& self, const std::string& name) {
    return Value::callable(std::string(type_name(self)) + "." + name,
                           [this, self, name](ValueList& a, KwArgs& kw) { return call_method(self, name, a, kw); });
  }

  Value get_attr(const Value& obj, const std::string& name, int line, const Expr* src) {
    static const std::set<std::string> dict_methods = {"items", "keys", "values", "get"};
    static const std::set<std::string> str_methods = {
        "startswith", "endswith", "strip", "lstrip", "rstrip", "split", "rsplit", "replace", "upper", "lower",
        "title", "capitalize", "find", "rfind", "count", "isdigit", "isalpha", "isalnum", "isspace", "isupper",
        "islower", "join", "splitlines", "format"};
    switch (obj.type()) {
      case Value::Type::kUndefined: fail_undefined(obj, src, line, "reading its attribute '" + name + "'");
      case Value::Type::kDict:
        if (!obj.is_namespace() && dict_methods.count(name)) return bound(obj, name);
        return obj.get(name);
      case Value::Type::kString:
        if (str_methods.count(name)) return bound(obj, name);
        return Value::undefined(name);
      default: return Value::undefined(name);
    }
  }

  static int64_t norm_index(int64_t i, size_t n) { return i < 0 ? i + static_cast<int64_t>(n) : i; }

  Value get_item(const Value& obj, const Value& key, int line, const Expr* src) {
    switch (obj.type()) {
      case Value::Type::kUndefined: fail_undefined(obj, src, line, "indexing it");
      case Value::Type::kList: {
        if (key.type() != Value::Type::kInt && key.type() != Value::Type::kBool) return Value::undefined();
        const int64_t i = norm_index(key.as_int(), obj.items().size());
        if (i < 0 || i >= static_cast<int64_t>(obj.items().size())) return Value::undefined();
        return obj.items()[static_cast<size_t>(i)];
      }
      case Value::Type::kString: {
        if (key.type() != Value::Type::kInt && key.type() != Value::Type::kBool) return Value::undefined();
        const auto cps = decode_utf8(obj.str());
        const int64_t i = norm_index(key.as_int(), cps.size());
        if (i < 0 || i >= static_cast<int64_t>(cps.size())) return Value::undefined();
        std::string s;
        append_utf8(s, cps[static_cast<size_t>(i)]);
        return Value(std::move(s));
      }
      case Value::Type::kDict:
        if (key.is_string()) return obj.get(key.str());
        return Value::undefined();
      default: return Value::undefined();
    }
  }

  // Python's slice.indices(n) and the selected positions.
  std::vector<size_t> slice_positions(size_t n, const Value* start, const Value* stop, const Value* step, int line) {
    auto as_int = [&](const Value* v, const char* what) -> std::optional<int64_t> {
      if (!v || v->is_none() || v->is_undefined()) return std::nullopt;
      if (v->type() != Value::Type::kInt && v->type() != Value::Type::kBool)
        fail(line, fmt::format("slice {} must be an integer or none, not '{}'", what, type_name(*v)));
      return v->as_int();
    };
    const int64_t len = static_cast<int64_t>(n);
    const int64_t st = as_int(step, "step").value_or(1);
    if (st == 0) fail(line, "slice step cannot be zero");
    auto clampi = [&](std::optional<int64_t> v, int64_t def) {
      if (!v) return def;
      int64_t x = *v;
      if (x < 0) {
        x += len;
        if (x < 0) x = st < 0 ? -1 : 0;
      } else if (x >= len) {
        x = st < 0 ? len - 1 : len;
      }
      return x;
    };
    const int64_t b = clampi(as_int(start, "start"), st < 0 ? len - 1 : 0);
    const int64_t e = clampi(as_int(stop, "stop"), st < 0 ? -1 : len);
    std::vector<size_t> out;
    if (st > 0)
      for (int64_t i = b; i < e; i += st) out.push_back(static_cast<size_t>(i));
    else
      for (int64_t i = b; i > e; i += st) out.push_back(static_cast<size_t>(i));
    return out;
  }

  Value slice(const Expr& e) {
    const Value obj = eval(*e.a[0]);
    Value parts[3];
    for (int k = 0; k < 3; ++k)
      if (e.a[1 + k]) parts[k] = eval(*e.a[1 + k]);
    const Value* p[3];
    for (int k = 0; k < 3; ++k) p[k] = e.a[1 + k] ? &parts[k] : nullptr;
    if (obj.is_list()) {
      const auto pos = slice_positions(obj.items().size(), p[0], p[1], p[2], e.line);
      charge(static_cast<int64_t>(pos.size()), e.line);
      ValueList out;
      out.reserve(pos.size());
      for (size_t i : pos) out.push_back(obj.items()[i]);
      return Value::list(std::move(out));
    }
    if (obj.is_string()) {
      const auto cps = decode_utf8(obj.str());
      const auto pos = slice_positions(cps.size(), p[0], p[1], p[2], e.line);
      charge(static_cast<int64_t>(pos.size()), e.line);
      std::string out;
      for (size_t i : pos) append_utf8(out, cps[i]);
      return Value(std::move(out));
    }
    if (obj.is_undefined()) fail_undefined(obj, e.a[0].get(), e.line, "slicing it");
    fail(e.line, fmt::format("'{}' object cannot be sliced", type_name(obj)));
  }

  // ---- operators
  Value binop(const Expr& e) {
    const Value l = eval(*e.a[0]);
    const Value r = eval(*e.a[1]);
    const std::string& op = e.name;
    if (op == "~") {
      std::string s = to_str_at(l, e.line) + to_str_at(r, e.line);
      check_size(s.size(), e.line);
      charge(static_cast<int64_t>(s.size()) / 16, e.line);
      return Value(std::move(s));
    }
    if (l.is_undefined()) fail_undefined(l, e.a[0].get(), e.line, "operand of " + op);
    if (r.is_undefined()) fail_undefined(r, e.a[1].get(), e.line, "operand of " + op);
    using T = Value::Type;
    const bool lnum = l.is_number(), rnum = r.is_number();
    const bool ints = lnum && rnum && l.type() != T::kFloat && r.type() != T::kFloat;
    auto type_error = [&]() {
      fail(e.line, fmt::format("unsupported operand types for {}: '{}' and '{}'", op, type_name(l), type_name(r)));
    };
    auto overflow = [&]() { fail(e.line, fmt::format("integer overflow in {}", op)); };
    if (op == "+") {
      if (ints) {
        int64_t v;
        if (__builtin_add_overflow(l.as_int(), r.as_int(), &v)) overflow();
        return Value(v);
      }
      if (lnum && rnum) return Value(l.as_float() + r.as_float());
      if (l.is_string() && r.is_string()) {
        check_size(l.str().size() + r.str().size(), e.line);
        charge(static_cast<int64_t>(l.str().size() + r.str().size()) / 16, e.line);
        return Value(l.str() + r.str());
      }
      if (l.is_list() && r.is_list()) {
        check_items(l.items().size() + r.items().size(), e.line);
        charge(static_cast<int64_t>(l.items().size() + r.items().size()), e.line);
        ValueList out = l.items();
        out.insert(out.end(), r.items().begin(), r.items().end());
        return Value::list(std::move(out));
      }
      type_error();
    }
    if (op == "-") {
      if (ints) {
        int64_t v;
        if (__builtin_sub_overflow(l.as_int(), r.as_int(), &v)) overflow();
        return Value(v);
      }
      if (lnum && rnum) return Value(l.as_float() - r.as_float());
      type_error();
    }
    if (op == "*") {
      if (ints) {
        int64_t v;
        if (__builtin_mul_overflow(l.as_int(), r.as_int(), &v)) overflow();
        return Value(v);
      }
      if (lnum && rnum) return Value(l.as_float() * r.as_float());
      const Value* seq = (l.is_string() || l.is_list()) ? &l : (r.is_string() || r.is_list()) ? &r : nullptr;
      const Value* cnt = seq == &l ? &r : &l;
      if (seq && (cnt->type() == T::kInt || cnt->type() == T::kBool)) {
        const int64_t n = std::max<int64_t>(0, cnt->as_int());
        if (seq->is_string()) {
          const double bytes = static_cast<double>(seq->str().size()) * static_cast<double>(n);
          if (bytes > static_cast<double>(limits_.max_output_bytes)) check_size(static_cast<size_t>(std::min(bytes, 1e18)), e.line);
          charge(static_cast<int64_t>(bytes) / 16, e.line);
          std::string out;
          for (int64_t i = 0; i < n; ++i) out += seq->str();
          return Value(std::move(out));
        }
        const double items = static_cast<double>(seq->items().size()) * static_cast<double>(n);
        if (items > static_cast<double>(limits_.max_list_items)) check_items(static_cast<size_t>(std::min(items, 1e18)), e.line);
        charge(static_cast<int64_t>(items), e.line);
        ValueList out;
        for (int64_t i = 0; i < n; ++i) out.insert(out.end(), seq->items().begin(), seq->items().end());
        return Value::list(std::move(out));
      }
      type_error();
    }
    if (op == "/") {
      if (!(lnum && rnum)) type_error();
      if (r.as_float() == 0) fail(e.line, "division by zero");
      return Value(l.as_float() / r.as_float());
    }
    if (op == "//" || op == "%") {
      if (op == "%" && l.is_string()) {
        try {
          return Value(printf_format(l.str(), r));
        } catch (const CallError& c) {
          fail(e.line, c.what());
        }
      }
      if (!(lnum && rnum)) type_error();
      if (ints) {
        const int64_t a = l.as_int(), b = r.as_int();
        if (b == 0) fail(e.line, "integer division or modulo by zero");
        if (a == std::numeric_limits<int64_t>::min() && b == -1) overflow();
        int64_t q = a / b, m = a % b;
        if (m != 0 && ((m < 0) != (b < 0))) {
          --q;
          m += b;
        }
        return Value(op == "//" ? q : m);
      }
      const double a = l.as_float(), b = r.as_float();
      if (b == 0) fail(e.line, "float division or modulo by zero");
      if (op == "//") return Value(std::floor(a / b));
      double m = std::fmod(a, b);
      if (m != 0 && ((m < 0) != (b < 0))) m += b;
      return Value(m);
    }
    if (op == "**") {
      if (!(lnum && rnum)) type_error();
      if (ints && r.as_int() >= 0) {
        int64_t v = 1, base = l.as_int();
        for (int64_t k = r.as_int(); k > 0; --k) {
          if (__builtin_mul_overflow(v, base, &v)) overflow();
          if (v == 0 || v == 1) break;
        }
        return Value(v);
      }
      return Value(std::pow(l.as_float(), r.as_float()));
    }
    fail(e.line, "unknown operator " + op);
  }

  // Python's '...' % args for %s %r %d %i %f %% and %(key)s (no widths or flags).
  std::string printf_format(const std::string& f, const Value& args) {
    ValueList pos = args.is_tuple() ? args.items() : ValueList{args};
    size_t next_arg = 0;
    std::string out;
    for (size_t i = 0; i < f.size(); ++i) {
      if (f[i] != '%') {
        out += f[i];
        continue;
      }
      if (++i >= f.size()) throw CallError("incomplete format");
      if (f[i] == '%') {
        out += '%';
        continue;
      }
      const Value* v = nullptr;
      Value keyed;
      if (f[i] == '(') {
        const size_t e = f.find(')', i);
        if (e == std::string::npos || !args.is_dict()) throw CallError("format requires a mapping");
        keyed = args.get(f.substr(i + 1, e - i - 1));
        if (keyed.is_undefined()) throw CallError(fmt::format("no key '{}' for the format", f.substr(i + 1, e - i - 1)));
        v = &keyed;
        i = e + 1;
        if (i >= f.size()) throw CallError("incomplete format");
      } else {
        if (next_arg >= pos.size()) throw CallError("not enough arguments for format string");
        v = &pos[next_arg++];
      }
      switch (f[i]) {
        case 's': out += to_str(*v); break;
        case 'r': {
          std::string r;
          repr_into(r, *v, false, 0);
          out += r;
          break;
        }
        case 'd':
        case 'i':
          if (!v->is_number()) throw CallError(fmt::format("%{} format: a number is required, not {}", f[i], type_name(*v)));
          out += v->type() == Value::Type::kFloat ? std::to_string(static_cast<int64_t>(v->as_float())) : std::to_string(v->as_int());
          break;
        case 'f':
          if (!v->is_number()) throw CallError(fmt::format("%f format: a number is required, not {}", type_name(*v)));
          out += fmt::format("{:.6f}", v->as_float());
          break;
        default: throw CallError(fmt::format("unsupported format character '{}'", f[i]));
      }
      check_size(out.size(), 0);
    }
    if (!args.is_dict() && next_arg < pos.size()) throw CallError("not all arguments converted during string formatting");
    return out;
  }

  std::string to_str_at(const Value& v, int line) {
    try {
      return to_str(v);
    } catch (const TemplateError& e) {
      fail(line, e.what());
    }
  }

  bool contains(const Value& container, const Value& item, int line) {
    switch (container.type()) {
      case Value::Type::kString:
        if (!item.is_string())
          fail(line, fmt::format("'in <string>' requires a string on the left, not '{}'", type_name(item)));
        return container.str().find(item.str()) != std::string::npos;
      case Value::Type::kList:
        for (const auto& v : container.items())
          if (py_eq(v, item)) return true;
        return false;
      case Value::Type::kDict: return item.is_string() && container.contains_key(item.str());
      case Value::Type::kUndefined: return false;
      default: fail(line, fmt::format("argument of type '{}' is not iterable", type_name(container)));
    }
  }

  int order(const Value& l, const Value& r, const std::string& op, int line, int depth = 0) {
    if (depth > kMaxValueDepth) fail(line, "values nested too deeply to compare");
    if (l.is_number() && r.is_number()) {
      if (l.type() != Value::Type::kFloat && r.type() != Value::Type::kFloat)
        return l.as_int() < r.as_int() ? -1 : l.as_int() > r.as_int() ? 1 : 0;
      return l.as_float() < r.as_float() ? -1 : l.as_float() > r.as_float() ? 1 : 0;
    }
    if (l.is_string() && r.is_string()) return l.str() < r.str() ? -1 : l.str() > r.str() ? 1 : 0;
    if (l.is_list() && r.is_list()) {
      const auto& a = l.items();
      const auto& b = r.items();
      for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
        if (py_eq(a[i], b[i])) continue;
        return order(a[i], b[i], op, line, depth + 1);
      }
      return a.size() < b.size() ? -1 : a.size() > b.size() ? 1 : 0;
    }
    if (l.is_undefined() || r.is_undefined()) fail(line, fmt::format("undefined value in a '{}' comparison", op));
    fail(line, fmt::format("'{}' not supported between '{}' and '{}'", op, type_name(l), type_name(r)));
  }

  bool compare(const std::string& op, const Value& l, const Value& r, int line) {
    try {
      if (op == "==") return py_eq(l, r);
      if (op == "!=") return !py_eq(l, r);
    } catch (const CallError& c) {
      fail(line, c.what());
    }
    if (op == "in") return contains(r, l, line);
    if (op == "not in") return !contains(r, l, line);
    const int c = order(l, r, op, line);
    if (op == "<") return c < 0;
    if (op == "<=") return c <= 0;
    if (op == ">") return c > 0;
    return c >= 0;
  }

  // ---- methods of str and dict
  static const Value* arg(const ValueList& a, const KwArgs& kw, size_t i, const char* name) {
    if (i < a.size()) return &a[i];
    for (const auto& [k, v] : kw)
      if (k == name) return &v;
    return nullptr;
  }
  static std::string str_arg(const ValueList& a, const KwArgs& kw, size_t i, const char* name, const char* fn) {
    const Value* v = arg(a, kw, i, name);
    if (!v || !v->is_string()) throw CallError(fmt::format("{}: argument '{}' must be a string", fn, name));
    return v->str();
  }

  ValueList split_ws(const std::string& s, int64_t maxsplit) {
    const auto cps = decode_utf8(s);
    ValueList out;
    size_t i = 0;
    while (true) {
      while (i < cps.size() && py_space(cps[i])) ++i;
      if (i >= cps.size()) break;
      if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
        size_t e = cps.size();
        while (e > i && py_space(cps[e - 1])) --e;
        out.emplace_back(encode_utf8(cps, i, e));
        break;
      }
      size_t j = i;
      while (j < cps.size() && !py_space(cps[j])) ++j;
      out.emplace_back(encode_utf8(cps, i, j));
      i = j;
    }
    return out;
  }

  std::string change_case(const std::string& s, int mode) {  // 0 upper, 1 lower, 2 title, 3 capitalize
    const auto cps = decode_utf8(s);
    std::string out;
    bool prev_cased = false;
    for (size_t i = 0; i < cps.size(); ++i) {
      uint32_t c = cps[i];
      if (mode == 0) c = case_map(c, true);
      else if (mode == 1) c = case_map(c, false);
      else if (mode == 2) c = case_map(c, !prev_cased);
      else c = case_map(c, i == 0);
      prev_cased = is_alpha_cp(cps[i]);
      append_utf8(out, c);
    }
    return out;
  }

  Value call_method(const Value& self, const std::string& name, ValueList& a, KwArgs& kw) {
    if (self.is_dict()) {
      if (name == "items") {
        ValueList out;
        for (const auto& [k, v] : self.dict_ref().entries) out.push_back(Value::tuple({Value(k), v}));
        return Value::list(std::move(out));
      }
      if (name == "keys") {
        ValueList out;
        for (const auto& [k, v] : self.dict_ref().entries) out.emplace_back(k);
        return Value::list(std::move(out));
      }
      if (name == "values") {
        ValueList out;
        for (const auto& [k, v] : self.dict_ref().entries) out.push_back(v);
        return Value::list(std::move(out));
      }
      if (name == "get") {
        const Value* k = arg(a, kw, 0, "key");
        const Value* d = arg(a, kw, 1, "default");
        if (k && k->is_string())
          if (const Value* v = self.dict_ref().find(k->str())) return *v;
        return d ? *d : Value::none();
      }
    }
    const std::string& s = self.str();
    const std::string fn = "str." + name;
    if (name == "startswith" || name == "endswith") {
      const Value* p = arg(a, kw, 0, "prefix");
      if (!p) throw CallError(fn + " needs an argument");
      if (a.size() > 1) throw CallError(fn + ": start/end arguments are not supported");
      ValueList cands = p->is_list() ? p->items() : ValueList{*p};
      for (const auto& c : cands) {
        if (!c.is_string()) throw CallError(fmt::format("{}: the argument must be a string, not '{}'", fn, type_name(c)));
        const std::string& x = c.str();
        if (x.size() > s.size()) continue;
        if (name == "startswith" ? s.compare(0, x.size(), x) == 0 : s.compare(s.size() - x.size(), x.size(), x) == 0)
          return Value(true);
      }
      return Value(false);
    }
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      const Value* chars = arg(a, kw, 0, "chars");
      if (chars && !chars->is_string() && !chars->is_none()) throw CallError(fn + ": chars must be a string or none");
      return Value(py_strip(s, chars, name != "rstrip", name != "lstrip"));
    }
    if (name == "split" || name == "rsplit") {
      const Value* sep = arg(a, kw, 0, "sep");
      const Value* ms = arg(a, kw, 1, "maxsplit");
      const int64_t maxsplit = ms && ms->type() == Value::Type::kInt ? ms->as_int() : -1;
      if (!sep || sep->is_none()) {
        if (name == "rsplit" && maxsplit >= 0) throw CallError("str.rsplit() with maxsplit and no separator is not supported");
        return Value::list(split_ws(s, maxsplit));
      }
      if (!sep->is_string()) throw CallError(fn + ": the separator must be a string");
      const std::string& x = sep->str();
      if (x.empty()) throw CallError(fn + ": empty separator");
      ValueList out;
      if (name == "split") {
        size_t b = 0;
        while (true) {
          const size_t f = (maxsplit >= 0 && static_cast<int64_t>(out.size()) >= maxsplit) ? std::string::npos : s.find(x, b);
          if (f == std::string::npos) {
            out.emplace_back(s.substr(b));
            break;
          }
          out.emplace_back(s.substr(b, f - b));
          b = f + x.size();
        }
      } else {
        size_t e = s.size();
        std::vector<std::string> parts;
        while (true) {
          size_t f = std::string::npos;
          if (!(maxsplit >= 0 && static_cast<int64_t>(parts.size()) >= maxsplit) && e >= x.size())
            f = s.rfind(x, e - x.size());
          if (f == std::string::npos) {
            parts.push_back(s.substr(0, e));
            break;
          }
          parts.push_back(s.substr(f + x.size(), e - f - x.size()));
          e = f;
        }
        for (auto it = parts.rbegin(); it != parts.rend(); ++it) out.emplace_back(*it);
      }
      charge(static_cast<int64_t>(out.size()), 0);
      return Value::list(std::move(out));
    }
    if (name == "replace") {
      const std::string from = str_arg(a, kw, 0, "old", "str.replace");
      const std::string to = str_arg(a, kw, 1, "new", "str.replace");
      const Value* c = arg(a, kw, 2, "count");
      int64_t count = c && c->type() == Value::Type::kInt ? c->as_int() : -1;
      return Value(replace(s, from, to, count));
    }
    if (name == "upper") return Value(change_case(s, 0));
    if (name == "lower") return Value(change_case(s, 1));
    if (name == "title") return Value(change_case(s, 2));
    if (name == "capitalize") return Value(change_case(change_case(s, 1), 3));
    if (name == "find" || name == "rfind") {
      const std::string x = str_arg(a, kw, 0, "sub", fn.c_str());
      const size_t f = name == "find" ? s.find(x) : s.rfind(x);
      if (f == std::string::npos) return Value(static_cast<int64_t>(-1));
      return Value(static_cast<int64_t>(decode_utf8(s.substr(0, f)).size()));
    }
    if (name == "count") {
      const std::string x = str_arg(a, kw, 0, "sub", fn.c_str());
      if (x.empty()) return Value(static_cast<int64_t>(decode_utf8(s).size() + 1));
      int64_t n = 0;
      for (size_t f = s.find(x); f != std::string::npos; f = s.find(x, f + x.size())) ++n;
      return Value(n);
    }
    if (name == "isdigit" || name == "isalpha" || name == "isalnum" || name == "isspace" || name == "isupper" ||
        name == "islower") {
      const auto cps = decode_utf8(s);
      if (cps.empty()) return Value(false);
      bool cased = false;
      for (uint32_t c : cps) {
        const bool digit = c >= '0' && c <= '9';
        const bool alpha = is_alpha_cp(c);
        if (name == "isdigit" && !digit) return Value(false);
        if (name == "isalpha" && !alpha) return Value(false);
        if (name == "isalnum" && !(alpha || digit)) return Value(false);
        if (name == "isspace" && !py_space(c)) return Value(false);
        if (name == "isupper" && case_map(c, true) != c) return Value(false);
        if (name == "islower" && case_map(c, false) != c) return Value(false);
        cased = cased || alpha;
      }
      if ((name == "isupper" || name == "islower") && !cased) return Value(false);
      return Value(true);
    }
    if (name == "join") {
      const Value* seq = arg(a, kw, 0, "iterable");
      if (!seq) throw CallError("str.join needs an argument");
      std::string out;
      bool first = true;
      for (const auto& v : iterate(*seq, 0)) {
        if (!v.is_string()) throw CallError(fmt::format("str.join: expected str items, found '{}'", type_name(v)));
        if (!first) out += s;
        first = false;
        out += v.str();
        check_size(out.size(), 0);
      }
      return Value(std::move(out));
    }
    if (name == "splitlines") {
      ValueList out;
      size_t b = 0;
      for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\n' || s[i] == '\r') {
          out.emplace_back(s.substr(b, i - b));
          if (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
          b = i + 1;
        }
      }
      if (b < s.size()) out.emplace_back(s.substr(b));
      return Value::list(std::move(out));
    }
    if (name == "format") {
      // "{}" / "{0}" / "{name}" replacement fields with str() of the arguments (no format specs)
      std::string out;
      size_t auto_idx = 0;
      for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '{' && i + 1 < s.size() && s[i + 1] == '{') {
          out += '{';
          ++i;
        } else if (s[i] == '}' && i + 1 < s.size() && s[i + 1] == '}') {
          out += '}';
          ++i;
        } else if (s[i] == '{') {
          const size_t e = s.find('}', i);
          if (e == std::string::npos) throw CallError("str.format: unmatched '{'");
          const std::string field = s.substr(i + 1, e - i - 1);
          const Value* v = nullptr;
          if (field.empty()) v = auto_idx < a.size() ? &a[auto_idx++] : nullptr;
          else if (std::all_of(field.begin(), field.end(), [](char c) { return c >= '0' && c <= '9'; })) {
            const size_t k = std::stoul(field);
            v = k < a.size() ? &a[k] : nullptr;
          } else {
            for (const auto& [k, x] : kw)
              if (k == field) v = &x;
          }
          if (!v) throw CallError(fmt::format("str.format: no argument for '{{{}}}'", field));
          out += to_str(*v);
          i = e;
        } else {
          out += s[i];
        }
        check_size(out.size(), 0);
      }
      return Value(std::move(out));
    }
    throw CallError(fmt::format("{} is not supported", fn));
  }

  std::string replace(const std::string& s, const std::string& from, const std::string& to, int64_t count) {
    std::string out;
    if (from.empty()) {
      const auto cps = decode_utf8(s);
      int64_t n = 0;
      for (size_t i = 0; i <= cps.size(); ++i) {
        if (count < 0 || n < count) {
          out += to;
          ++n;
        }
        if (i < cps.size()) append_utf8(out, cps[i]);
        check_size(out.size(), 0);
      }
      return out;
    }
    size_t b = 0;
    int64_t n = 0;
    while (true) {
      const size_t f = (count >= 0 && n >= count) ? std::string::npos : s.find(from, b);
      if (f == std::string::npos) {
        out.append(s, b, std::string::npos);
        break;
      }
      out.append(s, b, f - b);
      out += to;
      check_size(out.size(), 0);
      b = f + from.size();
      ++n;
    }
    check_size(out.size(), 0);
    return out;
  }

  // ---- filters
  struct FArgs {
    ValueList a;
    KwArgs kw;
    const Value* get(size_t i, const char* name) const { return arg(a, kw, i, name); }
  };

  Value apply_filter(const Expr& f, const Value& v) {
    FArgs fa;
    for (size_t i = 1; i < f.a.size(); ++i) fa.a.push_back(eval(*f.a[i]));
    for (const auto& [k, x] : f.kw) fa.kw.emplace_back(k, eval(*x));
    charge(1, f.line);
    try {
      return filter(f.name, v, fa, f.line, f.a[0].get());
    } catch (const CallError& c) {
      fail(f.line, fmt::format("filter '{}': {}", f.name, c.what()));
    } catch (const TemplateRaised&) {
      throw;
    } catch (const TemplateError& t) {
      if (t.line() != 0) throw;
      fail(f.line, fmt::format("filter '{}': {}", f.name, t.what()));
    }
  }

  ValueList seq_of(const Value& v, const std::string& filter_name) {
    if (v.is_undefined()) return {};
    if (!(v.is_list() || v.is_dict() || v.is_string()))
      throw CallError(fmt::format("'{}' object is not iterable ({})", type_name(v), filter_name));
    return iterate(v, 0);
  }

  Value attr_path(const Value& item, const std::string& path) {
    Value cur = item;
    size_t b = 0;
    while (true) {
      const size_t e = path.find('.', b);
      const std::string part = path.substr(b, e == std::string::npos ? std::string::npos : e - b);
      if (cur.is_dict()) cur = cur.get(part);
      else if (cur.is_list() && !part.empty() && std::all_of(part.begin(), part.end(), ::isdigit)) {
        const size_t i = std::stoul(part);
        cur = i < cur.items().size() ? cur.items()[i] : Value::undefined(part);
      } else {
        return Value::undefined(part);
      }
      if (e == std::string::npos) return cur;
      b = e + 1;
    }
  }

  bool run_test(const std::string& name, const Value& v, const ValueList& args, int line) {
    if (!known_tests().count(name)) throw CallError(fmt::format("unknown test '{}'", name));
    return test(name, v, args, line);
  }

  Value filter(const std::string& name, const Value& v, const FArgs& fa, int line, const Expr* src) {
    using T = Value::Type;
    auto as_s = [&](const Value& x) { return to_str(x); };
    if (name == "tojson") {
      const Value* ind = fa.get(0, "indent");
      const Value* ea = fa.get(1, "ensure_ascii");
      const Value* seps = fa.get(2, "separators");
      const Value* sk = fa.get(3, "sort_keys");
      std::string is, ks;
      if (seps && !seps->is_none()) {
        if (!seps->is_list() || seps->items().size() != 2 || !seps->items()[0].is_string() || !seps->items()[1].is_string())
          throw CallError("separators must be a pair of strings");
        is = seps->items()[0].str();
        ks = seps->items()[1].str();
        if (is.empty()) is = ",";
      }
      const bool ascii = ea && ea->truthy();
      const bool sort = sk && sk->truthy();
      if (v.is_undefined()) fail_undefined(v, src, line, "tojson");
      if (!ind || ind->is_none()) return Value(to_json(v, ascii, -1, is, ks, sort));
      if (ind->is_string()) return Value(to_json(v, ascii, ind->str(), is, ks, sort));
      if (ind->type() == T::kInt) {
        if (ind->as_int() > 64) throw CallError("indent is larger than 64");
        return Value(to_json(v, ascii, static_cast<int>(std::max<int64_t>(0, ind->as_int())), is, ks, sort));
      }
      throw CallError("indent must be an integer or a string");
    }
    if (name == "length" || name == "count") {
      switch (v.type()) {
        case T::kUndefined: return Value(static_cast<int64_t>(0));
        case T::kString: return Value(static_cast<int64_t>(decode_utf8(v.str()).size()));
        case T::kList: return Value(static_cast<int64_t>(v.items().size()));
        case T::kDict: return Value(static_cast<int64_t>(v.dict_ref().entries.size()));
        default: throw CallError(fmt::format("object of type '{}' has no len()", type_name(v)));
      }
    }
    if (name == "trim") {
      const Value* chars = fa.get(0, "chars");
      return Value(py_strip(as_s(v), chars, true, true));
    }
    if (name == "upper") return Value(change_case(as_s(v), 0));
    if (name == "lower") return Value(change_case(as_s(v), 1));
    if (name == "title") return Value(change_case(as_s(v), 2));
    if (name == "capitalize") return Value(change_case(change_case(as_s(v), 1), 3));
    if (name == "string") return Value(as_s(v));
    if (name == "safe") return v;
    if (name == "e" || name == "escape") {
      std::string out;
      for (char c : as_s(v)) {
        switch (c) {
          case '&': out += "&amp;"; break;
          case '<': out += "&lt;"; break;
          case '>': out += "&gt;"; break;
          case '"': out += "&#34;"; break;
          case '\'': out += "&#39;"; break;
          default: out += c;
        }
      }
      return Value(std::move(out));
    }
    if (name == "default" || name == "d") {
      const Value* def = fa.get(0, "default_value");
      const Value* boolean = fa.get(1, "boolean");
      const bool use = v.is_undefined() || (boolean && boolean->truthy() && !v.truthy());
      return use ? (def ? *def : Value(std::string())) : v;
    }
    if (name == "first" || name == "last") {
      ValueList s = seq_of(v, name);
      if (s.empty()) return Value::undefined();
      return name == "first" ? s.front() : s.back();
    }
    if (name == "join") {
      const Value* sep = fa.get(0, "d");
      const Value* attr = fa.get(1, "attribute");
      std::string out;
      bool first = true;
      for (const auto& x : seq_of(v, name)) {
        if (!first) out += sep ? as_s(*sep) : "";
        first = false;
        out += as_s(attr ? attr_path(x, as_s(*attr)) : x);
        check_size(out.size(), line);
      }
      return Value(std::move(out));
    }
    if (name == "list") return Value::list(seq_of(v, name));
    if (name == "reverse") {
      if (v.is_string()) {
        auto cps = decode_utf8(v.str());
        std::reverse(cps.begin(), cps.end());
        return Value(encode_utf8(cps));
      }
      ValueList s = seq_of(v, name);
      std::reverse(s.begin(), s.end());
      return Value::list(std::move(s));
    }
    if (name == "items") {
      if (v.is_undefined()) return Value::list();
      if (!v.is_dict()) throw CallError(fmt::format("expected a dict, found '{}'", type_name(v)));
      ValueList out;
      for (const auto& [k, x] : v.dict_ref().entries) out.push_back(Value::tuple({Value(k), x}));
      return Value::list(std::move(out));
    }
    if (name == "dictsort") {
      if (!v.is_dict()) throw CallError(fmt::format("expected a dict, found '{}'", type_name(v)));
      auto entries = v.dict_ref().entries;
      std::stable_sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
      ValueList out;
      for (const auto& [k, x] : entries) out.push_back(Value::tuple({Value(k), x}));
      return Value::list(std::move(out));
    }
    if (name == "selectattr" || name == "rejectattr" || name == "select" || name == "reject") {
      const bool by_attr = name == "selectattr" || name == "rejectattr";
      const bool keep_if = name == "selectattr" || name == "select";
      size_t ai = 0;
      std::string attr;
      if (by_attr) {
        if (fa.a.empty() || !fa.a[0].is_string()) throw CallError("needs an attribute name");
        attr = fa.a[0].str();
        ai = 1;
      }
      std::string test_name;
      ValueList test_args;
      if (fa.a.size() > ai) {
        if (!fa.a[ai].is_string()) throw CallError("the test name must be a string");
        test_name = fa.a[ai].str();
        test_args.assign(fa.a.begin() + static_cast<std::ptrdiff_t>(ai + 1), fa.a.end());
      }
      ValueList out;
      for (const auto& x : seq_of(v, name)) {
        const Value subject = by_attr ? attr_path(x, attr) : x;
        const bool r = test_name.empty() ? subject.truthy() : run_test(test_name, subject, test_args, line);
        if (r == keep_if) out.push_back(x);
      }
      return Value::list(std::move(out));
    }
    if (name == "map") {
      const Value* attr = nullptr;
      for (const auto& [k, x] : fa.kw)
        if (k == "attribute") attr = &x;
      const Value* def = nullptr;
      for (const auto& [k, x] : fa.kw)
        if (k == "default") def = &x;
      ValueList out;
      if (attr) {
        for (const auto& x : seq_of(v, name)) {
          Value r = attr_path(x, as_s(*attr));
          out.push_back(r.is_undefined() && def ? *def : r);
        }
        return Value::list(std::move(out));
      }
      if (fa.a.empty() || !fa.a[0].is_string()) throw CallError("map needs a filter name or attribute=");
      const std::string fname = fa.a[0].str();
      if (!known_filters().count(fname) || fname == "map") throw CallError(fmt::format("unknown filter '{}'", fname));
      FArgs sub;
      sub.a.assign(fa.a.begin() + 1, fa.a.end());
      for (const auto& x : seq_of(v, name)) out.push_back(filter(fname, x, sub, line, nullptr));
      return Value::list(std::move(out));
    }
    if (name == "unique") {
      ValueList out;
      for (const auto& x : seq_of(v, name))
        if (std::none_of(out.begin(), out.end(), [&](const Value& y) { return py_eq(x, y); })) out.push_back(x);
      return Value::list(std::move(out));
    }
    if (name == "sort" || name == "min" || name == "max") {
      const Value* rev = name == "sort" ? fa.get(0, "reverse") : nullptr;
      const Value* attr = nullptr;
      for (const auto& [k, x] : fa.kw)
        if (k == "attribute") attr = &x;
      ValueList s = seq_of(v, name);
      auto key = [&](const Value& x) { return attr ? attr_path(x, as_s(*attr)) : x; };
      std::stable_sort(s.begin(), s.end(), [&](const Value& a, const Value& b) { return order(key(a), key(b), "<", line) < 0; });
      if (name == "min") return s.empty() ? Value::undefined() : s.front();
      if (name == "max") return s.empty() ? Value::undefined() : s.back();
      if (rev && rev->truthy()) std::reverse(s.begin(), s.end());
      return Value::list(std::move(s));
    }
    if (name == "sum") {
      Value acc = fa.get(1, "start") ? *fa.get(1, "start") : Value(static_cast<int64_t>(0));
      const Value* attr = fa.get(0, "attribute");
      for (const auto& x : seq_of(v, name)) {
        const Value y = attr ? attr_path(x, as_s(*attr)) : x;
        if (!acc.is_number() || !y.is_number()) throw CallError("can only sum numbers");
        if (acc.type() != T::kFloat && y.type() != T::kFloat) acc = Value(acc.as_int() + y.as_int());
        else acc = Value(acc.as_float() + y.as_float());
      }
      return acc;
    }
    if (name == "abs") {
      if (v.type() == T::kFloat) return Value(std::fabs(v.as_float()));
      if (v.type() == T::kInt || v.type() == T::kBool) {
        if (v.as_int() == std::numeric_limits<int64_t>::min()) throw CallError("integer overflow");
        return Value(std::abs(v.as_int()));
      }
      throw CallError(fmt::format("bad operand type for abs(): '{}'", type_name(v)));
    }
    if (name == "int") {
      const Value* def = fa.get(0, "default");
      const Value d = def ? *def : Value(static_cast<int64_t>(0));
      if (v.type() == T::kInt || v.type() == T::kBool) return Value(v.as_int());
      if (v.type() == T::kFloat) {
        if (!std::isfinite(v.as_float()) || std::fabs(v.as_float()) >= 9.2e18) return d;
        return Value(static_cast<int64_t>(v.as_float()));
      }
      if (v.is_string()) {
        std::string s = py_strip(v.str(), nullptr, true, true);
        int64_t r;
        const auto res = std::from_chars(s.data() + (s.size() && s[0] == '+' ? 1 : 0), s.data() + s.size(), r);
        if (res.ec == std::errc() && res.ptr == s.data() + s.size() && !s.empty()) return Value(r);
        char* end = nullptr;
        const double f = std::strtod(s.c_str(), &end);
        if (!s.empty() && end == s.c_str() + s.size() && std::isfinite(f) && std::fabs(f) < 9.2e18)
          return Value(static_cast<int64_t>(f));
      }
      return d;
    }
    if (name == "float") {
      const Value* def = fa.get(0, "default");
      const Value d = def ? *def : Value(0.0);
      if (v.is_number()) return Value(v.as_float());
      if (v.is_string()) {
        const std::string s = py_strip(v.str(), nullptr, true, true);
        char* end = nullptr;
        const double f = std::strtod(s.c_str(), &end);
        if (!s.empty() && end == s.c_str() + s.size()) return Value(f);
      }
      return d;
    }
    if (name == "round") {
      const Value* prec = fa.get(0, "precision");
      const Value* method = fa.get(1, "method");
      const int64_t p = prec && prec->type() == T::kInt ? prec->as_int() : 0;
      if (p < 0 || p > 15) throw CallError("precision must be in 0..15");
      const std::string m = method ? as_s(*method) : "common";
      if (!v.is_number()) throw CallError(fmt::format("cannot round '{}'", type_name(v)));
      const double x = v.as_float(), scale = std::pow(10.0, static_cast<double>(p));
      if (m == "ceil") return Value(std::ceil(x * scale) / scale);
      if (m == "floor") return Value(std::floor(x * scale) / scale);
      if (m != "common") throw CallError("method must be common, ceil or floor");
      if (!std::isfinite(x)) return Value(x);
      return Value(std::strtod(fmt::format("{:.{}f}", x, p).c_str(), nullptr));
    }
    if (name == "replace") {
      const Value* from = fa.get(0, "old");
      const Value* to = fa.get(1, "new");
      const Value* c = fa.get(2, "count");
      if (!from || !to) throw CallError("needs old and new");
      return Value(replace(as_s(v), as_s(*from), as_s(*to), c && c->type() == T::kInt ? c->as_int() : -1));
    }
    if (name == "indent") {
      const Value* w = fa.get(0, "width");
      const Value* first = fa.get(1, "first");
      const Value* blank = fa.get(2, "blank");
      std::string pad = "    ";
      if (w && w->is_string()) pad = w->str();
      else if (w && w->type() == T::kInt) pad = std::string(static_cast<size_t>(std::clamp<int64_t>(w->as_int(), 0, 1024)), ' ');
      const std::string s = as_s(v);
      std::string out;
      size_t b = 0;
      bool first_line = true;
      while (true) {
        const size_t e = s.find('\n', b);
        const std::string ln = s.substr(b, e == std::string::npos ? std::string::npos : e - b);
        const bool add = first_line ? (first && first->truthy()) : (!ln.empty() || (blank && blank->truthy()));
        if (add && !ln.empty()) out += pad;
        else if (add && blank && blank->truthy()) out += pad;
        out += ln;
        check_size(out.size(), line);
        if (e == std::string::npos) break;
        out += '\n';
        b = e + 1;
        first_line = false;
      }
      return Value(std::move(out));
    }
    if (name == "format") {
      if (!v.is_string()) throw CallError("the format string must be a string");
      if (!fa.kw.empty()) {
        Value d = Value::dict();
        for (const auto& [k, x] : fa.kw) d.set(k, x);
        return Value(printf_format(v.str(), d));
      }
      return Value(printf_format(v.str(), Value::tuple(fa.a)));
    }
    if (name == "wordcount") return Value(static_cast<int64_t>(split_ws(as_s(v), -1).size()));
    throw CallError("not implemented");
  }

  // ---- tests
  bool apply_test(const Expr& t) {
    if (t.name == "defined" || t.name == "undefined") {
      // `x.y is defined` must not fail when x is defined but has no y
      const Value v = eval(*t.a[0]);
      return (t.name == "defined") == !v.is_undefined();
    }
    const Value v = eval(*t.a[0]);
    ValueList args;
    for (size_t i = 1; i < t.a.size(); ++i) args.push_back(eval(*t.a[i]));
    for (const auto& [k, x] : t.kw) args.push_back(eval(*x));
    try {
      return test(t.name, v, args, t.line);
    } catch (const CallError& c) {
      fail(t.line, fmt::format("test '{}': {}", t.name, c.what()));
    }
  }

  bool test(const std::string& name, const Value& v, const ValueList& args, int line) {
    using T = Value::Type;
    auto need = [&](size_t n) {
      if (args.size() < n) throw CallError(fmt::format("needs {} argument(s)", n));
    };
    if (name == "defined") return !v.is_undefined();
    if (name == "undefined") return v.is_undefined();
    if (name == "none") return v.is_none();
    if (name == "boolean") return v.type() == T::kBool;
    if (name == "true") return v.type() == T::kBool && v.as_bool();
    if (name == "false") return v.type() == T::kBool && !v.as_bool();
    if (name == "integer") return v.type() == T::kInt;
    if (name == "float") return v.type() == T::kFloat;
    if (name == "number") return v.is_number();
    if (name == "string") return v.is_string();
    if (name == "mapping") return v.is_dict();
    if (name == "iterable") return v.is_list() || v.is_dict() || v.is_string() || v.is_undefined();
    if (name == "sequence") return v.is_list() || v.is_dict() || v.is_string();
    if (name == "callable") return v.type() == T::kCallable;
    if (name == "escaped") return false;
    if (name == "filter") return args.size() == 0 && v.is_string() && known_filters().count(v.str());
    if (name == "test") return v.is_string() && known_tests().count(v.str());
    if (name == "lower") return v.is_string() && change_case(v.str(), 1) == v.str();
    if (name == "upper") return v.is_string() && change_case(v.str(), 0) == v.str();
    if (name == "even" || name == "odd") {
      if (v.type() != T::kInt && v.type() != T::kBool) throw CallError(fmt::format("expected an integer, found '{}'", type_name(v)));
      return (v.as_int() % 2 == 0) == (name == "even");
    }
    if (name == "divisibleby") {
      need(1);
      if (!(v.type() == T::kInt && args[0].type() == T::kInt)) throw CallError("expects integers");
      if (args[0].as_int() == 0) throw CallError("division by zero");
      return v.as_int() % args[0].as_int() == 0;
    }
    if (name == "sameas") {
      need(1);
      const Value& o = args[0];
      if (v.type() != o.type()) return false;
      if (v.is_list()) return &v.items() == &o.items();
      if (v.is_dict()) return &v.dict_ref() == &o.dict_ref();
      return py_eq(v, o);
    }
    if (name == "in") {
      need(1);
      return contains(args[0], v, line);
    }
    static const std::map<std::string, std::string> cmp = {
        {"eq", "=="}, {"equalto", "=="}, {"==", "=="}, {"ne", "!="}, {"!=", "!="}, {"lt", "<"}, {"lessthan", "<"},
        {"<", "<"}, {"le", "<="}, {"<=", "<="}, {"gt", ">"}, {"greaterthan", ">"}, {">", ">"}, {"ge", ">="}, {">=", ">="}};
    if (auto it = cmp.find(name); it != cmp.end()) {
      need(1);
      return compare(it->second, v, args[0], line);
    }
    throw CallError("not implemented");
  }

  const std::string& origin_;
  const Limits& limits_;
  int64_t now_unix_;
  std::vector<Scope> scopes_;
  std::string* out_ = nullptr;
  int64_t total_out_ = 0, work_ = 0;
  int call_depth_ = 0;
  int cur_line_ = 0;  // the line of the call being evaluated, for errors raised inside builtins
};

}  // namespace

// ===========================================================================================
Template::Template(const std::string& source, std::string origin, Limits limits)
    : origin_(std::move(origin)), limits_(limits) {
  Lexer lex(source, origin_);
  Parser parser(lex.run(), origin_, limits_);
  auto root = std::make_shared<Node>();
  root->k = Node::K::kGeneration;
  root->line = 1;
  root->body = parser.parse_template();
  root_ = std::move(root);
}

Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

std::string Template::render(const Value& context, int64_t now_unix) const {
  Renderer r(origin_, limits_, now_unix);
  return r.run(root_->body, context);
}

}  // namespace sharq::jinja
