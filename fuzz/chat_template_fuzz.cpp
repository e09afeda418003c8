// libFuzzer target for the chat-template Jinja interpreter: any input must parse and render or
// throw TemplateError, within the limits (no crash, no hang, no unbounded memory).
#include <cstddef>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "sharq/chat/jinja.h"

namespace {

const sharq::jinja::Value& context() {
  static const sharq::jinja::Value ctx = sharq::jinja::Value::from_json(nlohmann::ordered_json::parse(R"({
    "messages": [
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": "Weather in Zürich? 😀"},
      {"role": "assistant", "content": "<think>\nok\n</think>\n\n", "reasoning_content": null,
       "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}]},
      {"role": "tool", "content": "{\"temp\": -3}"},
      {"role": "user", "content": "Thanks"}],
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
      "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
    "add_generation_prompt": true, "enable_thinking": false, "bos_token": "<s>", "eos_token": "</s>"})"));
  return ctx;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  sharq::jinja::Limits limits;  // small, so that each input runs in milliseconds
  limits.max_output_bytes = 1 << 20;
  limits.max_list_items = 1 << 16;
  limits.max_work = 1 << 20;
  try {
    const sharq::jinja::Template t(std::string(reinterpret_cast<const char*>(data), size), "fuzz.jinja", limits);
    (void)t.render(context(), 1721995200);
  } catch (const sharq::jinja::TemplateError&) {
  }
  return 0;
}
