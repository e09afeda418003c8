// A small Jinja2 interpreter for chat templates (docs/chat.md).
//
// It covers what Hugging Face chat templates use, with the environment transformers renders them
// in (trim_blocks, lstrip_blocks, the loopcontrols extension, its `tojson` and `generation`):
// text, {{ }}, {% %} and {# #} with whitespace control ({%- -%} {{- -}} {%+ +%}); for (with
// `if` filter, `else`, tuple targets, the loop variables), if/elif/else, set (plain, attribute of a
// namespace, tuple, block set), macro, break/continue, raw, generation; Python-like values,
// operators, slicing, string/dict methods, filters and tests. Anything else is a TemplateError at
// parse time, naming the construct and its line; a template is parsed once, when it is loaded.
//
// Rendering is bounded: nesting depth, macro recursion, output size, string/list sizes and the
// total work are limited (Limits), and exceeding one is a TemplateError, never a crash or a hang.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace sharq::jinja {

// A template that cannot be parsed or rendered. line() is 1-based (0 when unknown).
struct TemplateError : std::runtime_error {
  TemplateError(const std::string& what, int line) : std::runtime_error(what), line_(line) {}
  int line() const { return line_; }
 private:
  int line_;
};
// raise_exception("...") called by the template: the input is one the template refuses.
struct TemplateRaised : TemplateError {
  using TemplateError::TemplateError;
};

// nlohmann::ordered_json finds an object's key by a linear search, so parsing an object of n keys
// takes O(n^2) time (100k keys took 20-37 s, in a server request too). Every ordered parse of outside
// input (request bodies, --messages / --tools files, a model's tool-call JSON) goes through
// parse_ordered_json: a linear SAX pass first (core/json_checks.h) refuses an object of more than
// kMaxOrderedKeys keys, or a document of more than kMaxOrderedTotalKeys keys in all (so the parse
// costs at most about 4096 x 65536 / 2 key comparisons), and a key given twice in one object, with
// std::invalid_argument saying which and where; malformed JSON throws nlohmann's parse_error, as
// ordered_json::parse does.
inline constexpr size_t kMaxOrderedKeys = 4096;
inline constexpr size_t kMaxOrderedTotalKeys = 65536;
nlohmann::ordered_json parse_ordered_json(const std::string& text);

class Value;
using ValueList = std::vector<Value>;
using KwArgs = std::vector<std::pair<std::string, Value>>;
struct Dict;
struct Callable;

// none / bool / int / float / string / list / dict (insertion-ordered, string keys), plus the
// Jinja-only undefined, namespace (a mutable dict) and callables. Lists, dicts and namespaces are
// shared by reference, as in Python.
class Value {
 public:
  enum class Type { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kCallable };

  Value() = default;  // undefined
  static Value none();
  static Value undefined(std::string name = {});
  Value(bool b);
  Value(int v) : Value(static_cast<int64_t>(v)) {}
  Value(int64_t v);
  Value(double v);
  Value(std::string s);
  Value(const char* s) : Value(std::string(s)) {}
  static Value list(ValueList items = {});
  static Value tuple(ValueList items);  // a list that prints as (a, b) and is not == a list
  static Value dict();
  static Value namespace_();
  static Value callable(std::string name, std::function<Value(ValueList&, KwArgs&)> fn);
  // From JSON, keeping the key order of an ordered_json object.
  static Value from_json(const nlohmann::ordered_json& j);

  Type type() const { return type_; }
  bool is_undefined() const { return type_ == Type::kUndefined; }
  bool is_none() const { return type_ == Type::kNone; }
  bool is_string() const { return type_ == Type::kString; }
  bool is_list() const { return type_ == Type::kList; }
  bool is_tuple() const { return type_ == Type::kList && tuple_; }
  bool is_dict() const { return type_ == Type::kDict; }
  bool is_namespace() const;
  bool is_number() const { return type_ == Type::kInt || type_ == Type::kFloat || type_ == Type::kBool; }

  bool as_bool() const { return b_; }
  int64_t as_int() const { return i_; }
  double as_float() const { return f_; }
  const std::string& str() const { return s_; }
  const std::string& undefined_name() const { return s_; }
  ValueList& items() const { return *list_; }
  Dict& dict_ref() const { return *dict_; }
  Callable& fn() const { return *fn_; }

  bool truthy() const;
  // Dict lookup: the value or undefined(key).
  Value get(const std::string& key) const;
  void set(const std::string& key, Value v);  // dict / namespace
  bool contains_key(const std::string& key) const;

 private:
  Type type_ = Type::kUndefined;
  bool b_ = false;
  bool tuple_ = false;
  int64_t i_ = 0;
  double f_ = 0;
  std::string s_;  // string value, or the name of an undefined
  std::shared_ptr<ValueList> list_;
  std::shared_ptr<Dict> dict_;
  std::shared_ptr<Callable> fn_;
};

struct Dict {
  std::vector<std::pair<std::string, Value>> entries;
  bool is_namespace = false;
  const Value* find(const std::string& key) const;
  Value* find(const std::string& key);
};

struct Callable {
  std::string name;
  std::function<Value(ValueList&, KwArgs&)> fn;
};

// Python's str() of a value ("None", "True", "1.5", "['a', 1]"); undefined is "".
std::string to_str(const Value& v);
// Python's json.dumps(v, ensure_ascii, indent, separators, sort_keys): what transformers' `tojson`
// filter calls (ensure_ascii=False by default there). indent < 0: none. Empty separators: Python's
// default for the indent given.
std::string to_json(const Value& v, bool ensure_ascii = false, int indent = -1, const std::string& item_sep = "",
                    const std::string& key_sep = "", bool sort_keys = false);
std::string to_json(const Value& v, bool ensure_ascii, const std::string& indent, const std::string& item_sep,
                    const std::string& key_sep, bool sort_keys);

struct Limits {
  int64_t max_output_bytes = 16ll << 20;   // the rendered text, and any one string value
  int64_t max_list_items = 1 << 20;        // any one list (range(), list * n, ...)
  int max_nesting = 128;                   // nested blocks and expressions when parsing
  int max_call_depth = 64;                 // macro calls within macro calls
  int64_t max_work = 16ll << 20;           // statements, loop iterations and bytes built, in all (~0.5 s)
};

struct Node;

// A parsed template. Parsing is where unsupported constructs are reported.
class Template {
 public:
  // `origin` names the template in messages ("tokenizer_config.json chat_template").
  explicit Template(const std::string& source, std::string origin = "template", Limits limits = {});
  ~Template();
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;

  // Renders with these top-level variables (a dict). Globals range, namespace, dict,
  // raise_exception and strftime_now are provided unless `context` defines them.
  // now_unix >= 0 fixes the clock strftime_now reads (tests); otherwise the local time.
  std::string render(const Value& context, int64_t now_unix = -1) const;

  const std::string& origin() const { return origin_; }

 private:
  std::string origin_;
  Limits limits_;
  std::shared_ptr<Node> root_;
};

}  // namespace sharq::jinja
