// What a Qwen3-style model writes back, parsed as vLLM's `qwen3` reasoning parser and `hermes`
// tool parser do (docs/chat.md): <think>...</think> becomes reasoning_content, and each
// <tool_call>{"name": ..., "arguments": ...}</tool_call> becomes a tool call.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace sharq::chat {

struct ToolCall {
  std::string name;
  std::string arguments;  // JSON text, as Python's json.dumps(arguments, ensure_ascii=False)
};

struct ParsedResponse {
  std::optional<std::string> content;            // none when empty
  std::optional<std::string> reasoning_content;  // none without a </think>
  std::vector<ToolCall> tool_calls;
};

// Reasoning (when `reasoning`): with a "</think>" in the text, what precedes it (after a leading
// "<think>", if any) is the reasoning and what follows is the content; without one, the whole
// text is content (generation stopped inside the reasoning, or thinking was off).
// Tool calls (when `tools`), in the content: every <tool_call>JSON</tool_call> (the last one may
// be unclosed) must be a JSON object with "name" and "arguments"; the content is then the text
// before the first <tool_call>. If any call does not parse, there are no tool calls and the
// content stays as it was (vLLM's hermes parser does the same).
ParsedResponse parse_qwen3_response(const std::string& text, bool reasoning = true, bool tools = true);

// The same parse, incrementally, for streamed responses: feed() takes each new piece of text and
// returns what may be sent now; finish() flushes the rest. A piece that could still become a tag
// ("<thi", "</thi") is held until the next text decides it.
//  - Reasoning: after a leading <think> (white space before it is dropped, as the whole-text parse
//    drops what precedes <think>), or from the first byte when the prompt itself opened the block
//    (`in_reasoning`: a template that ends the prompt in <think>), until </think>; then content.
//    A stream cannot wait for a </think> that may never come, so text without either start is
//    content, and a stream cut inside the reasoning has sent it as reasoning (the whole-text parse
//    then calls all of it content).
//  - Tool calls (`tools`): content streams until the first <tool_call>; from there everything is
//    held to the end and parsed by the whole-text rule (every call must parse, or none counts and
//    the held text is content), so streamed calls equal the non-streamed ones. Calls are sent
//    whole, in the last piece.
// Where the stream can know, the pieces add up to parse_qwen3_response (tested over random cuts).
struct StreamPiece {
  std::string content, reasoning;
  std::vector<ToolCall> tool_calls;
  bool empty() const { return content.empty() && reasoning.empty() && tool_calls.empty(); }
};
class Qwen3StreamParser {
 public:
  explicit Qwen3StreamParser(bool tools, bool in_reasoning = false)
      : tools_(tools), mode_(in_reasoning ? Mode::reasoning : Mode::start) {}
  StreamPiece feed(const std::string& text);
  StreamPiece finish();
  size_t tool_calls_sent() const { return calls_; }

 private:
  enum class Mode { start, reasoning, content, calls };
  StreamPiece run(bool at_end);
  bool tools_;
  Mode mode_;
  std::string pending_;
  size_t calls_ = 0;
};

// The OpenAI chat-completion message of a parsed response: {"role": "assistant", "content": ...,
// "reasoning_content": ..., "tool_calls": [{"id": id_prefix + index, "type": "function",
// "function": {"name", "arguments"}}]} (tool_calls only when there are some).
std::string response_message_json(const ParsedResponse& r, const std::string& id_prefix = "call_");

// The OpenAI tool_calls array of `calls`, numbered from `first`: [{"id": id_prefix + number, "type":
// "function", "function": {"name", "arguments"}}], each also with its "index" when `indexed` (the
// chunks of a stream carry it; a whole message does not).
std::string tool_calls_json(const std::vector<ToolCall>& calls, size_t first, const std::string& id_prefix, bool indexed);

}  // namespace sharq::chat
