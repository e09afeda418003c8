#include "sharq/chat/response_parser.h"

#include <algorithm>
#include <optional>

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

// One call's body as a ToolCall, or none when it is not {"name": string, "arguments": ...}.
std::optional<ToolCall> parse_call(const std::string& body) {
  try {
    const auto j = jinja::parse_ordered_json(body);
    const auto n = j.is_object() ? j.find("name") : j.end();
    const auto a = j.is_object() ? j.find("arguments") : j.end();
    if (!j.is_object() || n == j.end() || a == j.end() || !n->is_string()) return std::nullopt;
    return ToolCall{n->get<std::string>(), jinja::to_json(jinja::Value::from_json(*a))};
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// Every call of s (call_bodies), or none when one of them does not parse (the hermes rule).
std::optional<std::vector<ToolCall>> parse_calls(const std::string& s) {
  std::vector<ToolCall> calls;
  for (const std::string& body : call_bodies(s)) {
    std::optional<ToolCall> c = parse_call(body);
    if (!c) return std::nullopt;
    calls.push_back(std::move(*c));
  }
  return calls;
}

// The length of the longest suffix of s that is a proper prefix of tag (text to hold back).
size_t partial_tag(const std::string& s, const std::string& tag) {
  for (size_t n = std::min(s.size(), tag.size() - 1); n > 0; --n)
    if (s.compare(s.size() - n, n, tag, 0, n) == 0) return n;
  return 0;
}

}  // namespace

StreamPiece Qwen3StreamParser::feed(const std::string& text) {
  pending_ += text;
  return run(false);
}

StreamPiece Qwen3StreamParser::finish() { return run(true); }

StreamPiece Qwen3StreamParser::run(bool at_end) {
  StreamPiece out;
  const std::string think = kThinkStart, think_end = kThinkEnd, call = kCallStart;
  while (true) {
    switch (mode_) {
      case Mode::start: {
        size_t ws = 0;
        while (ws < pending_.size() && (pending_[ws] == ' ' || pending_[ws] == '\n' || pending_[ws] == '\t' ||
                                        pending_[ws] == '\r'))
          ++ws;
        const std::string head = pending_.substr(ws);
        if (!at_end && head.size() < think.size() && think.compare(0, head.size(), head) == 0)
          return out;  // white space, or what may still become <think>
        if (head.compare(0, think.size(), think) == 0) {
          pending_.erase(0, ws + think.size());
          mode_ = Mode::reasoning;
        } else {
          mode_ = Mode::content;
        }
        break;
      }
      case Mode::reasoning: {
        const size_t e = pending_.find(think_end);
        if (e == std::string::npos) {
          const size_t keep = at_end ? 0 : partial_tag(pending_, think_end);
          out.reasoning += pending_.substr(0, pending_.size() - keep);
          pending_.erase(0, pending_.size() - keep);
          return out;
        }
        out.reasoning += pending_.substr(0, e);
        pending_.erase(0, e + think_end.size());
        mode_ = Mode::content;
        break;
      }
      case Mode::content: {
        const size_t b = tools_ ? pending_.find(call) : std::string::npos;
        if (b == std::string::npos) {
          const size_t keep = tools_ && !at_end ? partial_tag(pending_, call) : 0;
          out.content += pending_.substr(0, pending_.size() - keep);
          pending_.erase(0, pending_.size() - keep);
          return out;
        }
        out.content += pending_.substr(0, b);
        pending_.erase(0, b);  // the held text starts at the first <tool_call>
        mode_ = Mode::calls;
        break;
      }
      case Mode::calls: {
        if (!at_end) return out;
        // the whole-text rule over everything from the first <tool_call>
        if (std::optional<std::vector<ToolCall>> calls = parse_calls(pending_)) {
          calls_ += calls->size();
          out.tool_calls = std::move(*calls);
        } else {
          out.content += pending_;
        }
        pending_.clear();
        return out;
      }
    }
  }
}

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
    if (std::optional<std::vector<ToolCall>> calls = parse_calls(content)) {
      r.tool_calls = std::move(*calls);
      content = content.substr(0, content.find(kCallStart));
    }
  }
  if (!content.empty()) r.content = std::move(content);
  return r;
}

namespace {
// tool_calls_json's array itself (the whole message embeds it without a dump and a parse)
nlohmann::ordered_json tool_calls_array(const std::vector<ToolCall>& calls, size_t first, const std::string& id_prefix,
                                        bool indexed) {
  nlohmann::ordered_json a = nlohmann::ordered_json::array();
  for (size_t i = 0; i < calls.size(); ++i) {
    nlohmann::ordered_json c;
    if (indexed) c["index"] = first + i;
    c["id"] = id_prefix + std::to_string(first + i);
    c["type"] = "function";
    c["function"] = {{"name", calls[i].name}, {"arguments", calls[i].arguments}};
    a.push_back(std::move(c));
  }
  return a;
}
}  // namespace

std::string response_message_json(const ParsedResponse& r, const std::string& id_prefix) {
  nlohmann::ordered_json m;
  m["role"] = "assistant";
  m["content"] = r.content ? nlohmann::ordered_json(*r.content) : nlohmann::ordered_json(nullptr);
  m["reasoning_content"] = r.reasoning_content ? nlohmann::ordered_json(*r.reasoning_content) : nlohmann::ordered_json(nullptr);
  if (!r.tool_calls.empty()) m["tool_calls"] = tool_calls_array(r.tool_calls, 0, id_prefix, false);
  return m.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

std::string tool_calls_json(const std::vector<ToolCall>& calls, size_t first, const std::string& id_prefix, bool indexed) {
  return tool_calls_array(calls, first, id_prefix, indexed).dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

}  // namespace sharq::chat
