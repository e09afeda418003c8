// Message text shared by the model loaders (private to src/sharq/model; needs nlohmann::json,
// which only the library's own sources see).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace sharq::loader_text {

inline std::string shape(const std::vector<int64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += fmt::format("{}{}", i ? ", " : "", dims[i]);
  return s + "]";
}

// A JSON value as an error message shows it. Structured values are named by type only, since
// dumping them would recurse as deep as the (untrusted) input nests; invalid UTF-8 is replaced
// rather than thrown on; long strings are cut.
inline std::string describe(const nlohmann::json& v) {
  if (v.is_object() || v.is_array()) return v.type_name();
  std::string s = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

}  // namespace sharq::loader_text
