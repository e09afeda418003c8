// Checks a JSON text must pass before nlohmann::json parses it, for every file and message the
// library reads (private to the library's sources: nlohmann::json is not part of the public API).
//
// nlohmann keeps the last of two equal keys in one object without a word, so a config.json,
// tokenizer file or index that names a field twice would load as a plausible but different
// model. parse_unique() refuses that (the key and its path in the message) and optionally bounds
// the number of object keys (an ordered_json object is a vector: millions of keys would make
// every lookup linear). One SAX pre-pass, then the ordinary parse: malformed JSON throws the same
// nlohmann::json::parse_error as before.
#pragma once

#include <cstddef>
#include <limits>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace sharq::json_checks {

struct Limits {
  size_t keys_per_object = std::numeric_limits<size_t>::max();
  size_t keys_total = std::numeric_limits<size_t>::max();
};

namespace detail {

template <class Json>
struct Checker : nlohmann::json_sax<Json> {
  using typename nlohmann::json_sax<Json>::number_integer_t;
  using typename nlohmann::json_sax<Json>::number_unsigned_t;
  using typename nlohmann::json_sax<Json>::number_float_t;
  using typename nlohmann::json_sax<Json>::string_t;
  using typename nlohmann::json_sax<Json>::binary_t;
  struct Level {
    bool object = false;
    std::set<std::string> keys;
    std::string name;  // this level's key or index in its parent, for the path
    size_t next_index = 0;
  };
  explicit Checker(const Limits& l) : limits(l) {}
  Limits limits;
  std::vector<Level> stack;
  std::string pending_key;  // the key whose value comes next (objects)
  size_t total = 0;
  std::string problem;

  std::string path() const {
    std::string p;
    for (size_t i = 1; i < stack.size(); ++i) p += "/" + stack[i].name;
    return p.empty() ? "the top level" : p;
  }
  std::string child_name() {
    if (stack.empty()) return {};
    Level& top = stack.back();
    return top.object ? pending_key : std::to_string(top.next_index++);
  }
  bool value() {
    if (!stack.empty() && !stack.back().object) ++stack.back().next_index;
    return true;
  }
  bool null() override { return value(); }
  bool boolean(bool) override { return value(); }
  bool number_integer(number_integer_t) override { return value(); }
  bool number_unsigned(number_unsigned_t) override { return value(); }
  bool number_float(number_float_t, const string_t&) override { return value(); }
  bool string(string_t&) override { return value(); }
  bool binary(binary_t&) override { return value(); }
  bool open(bool object) {
    Level l;
    l.object = object;
    l.name = child_name();
    stack.push_back(std::move(l));
    return true;
  }
  bool start_object(std::size_t) override { return open(true); }
  bool start_array(std::size_t) override { return open(false); }
  bool end_object() override {
    stack.pop_back();
    return true;
  }
  bool end_array() override {
    stack.pop_back();
    return true;
  }
  bool key(string_t& k) override {
    Level& top = stack.back();
    if (!top.keys.insert(k).second) {
      problem = fmt::format("the key \"{}\" appears twice in one object (at {})", k.substr(0, 80), path());
      return false;
    }
    if (top.keys.size() > limits.keys_per_object) {
      problem = fmt::format("an object with more than {} keys (at {})", limits.keys_per_object, path());
      return false;
    }
    if (++total > limits.keys_total) {
      problem = fmt::format("more than {} object keys in all", limits.keys_total);
      return false;
    }
    pending_key = k.substr(0, 80);
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override { return false; }
};

}  // namespace detail

// Json parsed from `text` (nlohmann::json or ordered_json). Throws std::invalid_argument for a key
// given twice in one object or a limit exceeded (the message names the key and where), and
// Json::parse_error for malformed JSON.
template <class Json = nlohmann::json>
Json parse_unique(std::string_view text, const Limits& limits = {}) {
  detail::Checker<Json> c(limits);
  Json::sax_parse(text, &c);
  if (!c.problem.empty()) throw std::invalid_argument(c.problem);
  return Json::parse(text);
}

}  // namespace sharq::json_checks
