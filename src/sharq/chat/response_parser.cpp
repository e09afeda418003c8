#include "sharq/chat/response_parser.h"

#include <nlohmann/json.hpp>

#include "sharq/chat/jinja.h"

namespace sharq::chat {

namespace {

constexpr const char* kThinkStart = "<think>";
constexpr const char* kThinkEnd = "</think>";
constexpr const char* kCallStart = "<tool_call>";
constexpr const char* kCallEnd = "</tool_call>";

// The bodies of <tool_call>(.*?)</tool_call>|<tool_call>(.*) matched left to right.
std::vector<std::string> call_bodies(const std::string& s) {
  std::vector<std::string> out;
  const std::string start = kCallStart, end = kCallEnd;
  size_t pos = 0;
  while (true) {
    const size_t b = s.find(start, pos);
    if (b == std::string::npos) break;
    const size_t body = b + start.size();
    const size_t e = s.find(end, body);
    if (e == std::string::npos) {
      out.push_back(s.substr(body));
      break;
    }
    out.push_back(s.substr(body, e - body));
    pos = e + end.size();
  }
  return out;
}

}  // namespace

ParsedResponse parse_qwen3_response(const std::string& text, bool reasoning, bool tools) {
  ParsedResponse r;
  std::string content = text;
  if (reasoning) {
    std::string rest = text;
    if (const size_t s = rest.find(kThinkStart); s != std::string::npos) rest = rest.substr(s + std::string(kThinkStart).size());
    if (const size_t e = rest.find(kThinkEnd); e != std::string::npos) {
      r.reasoning_content = rest.substr(0, e);
      content = rest.substr(e + std::string(kThinkEnd).size());
    }
  }
  if (tools && content.find(kCallStart) != std::string::npos) {
    std::vector<ToolCall> calls;
    bool ok = true;
    for (const std::string& body : call_bodies(content)) {
      try {
        const auto j = nlohmann::ordered_json::parse(body);
        const auto n = j.is_object() ? j.find("name") : j.end();
        const auto a = j.is_object() ? j.find("arguments") : j.end();
        if (!j.is_object() || n == j.end() || a == j.end() || !n->is_string()) {
          ok = false;
          break;
        }
        calls.push_back(ToolCall{n->get<std::string>(), jinja::to_json(jinja::Value::from_json(*a))});
      } catch (const std::exception&) {
        ok = false;
        break;
      }
    }
    if (ok) {
      r.tool_calls = std::move(calls);
      content = content.substr(0, content.find(kCallStart));
    }
  }
  if (!content.empty()) r.content = std::move(content);
  return r;
}

std::string response_message_json(const ParsedResponse& r, const std::string& id_prefix) {
  nlohmann::ordered_json m;
  m["role"] = "assistant";
  m["content"] = r.content ? nlohmann::ordered_json(*r.content) : nlohmann::ordered_json(nullptr);
  m["reasoning_content"] = r.reasoning_content ? nlohmann::ordered_json(*r.reasoning_content) : nlohmann::ordered_json(nullptr);
  if (!r.tool_calls.empty()) {
    auto& calls = m["tool_calls"] = nlohmann::ordered_json::array();
    for (size_t i = 0; i < r.tool_calls.size(); ++i)
      calls.push_back({{"id", id_prefix + std::to_string(i)},
                       {"type", "function"},
                       {"function", {{"name", r.tool_calls[i].name}, {"arguments", r.tool_calls[i].arguments}}}});
  }
  return m.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

}  // namespace sharq::chat
