// What the model writes back, parsed as vLLM's qwen3 reasoning parser and hermes tool parser do.
#include "sharq/chat/response_parser.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace {

using sharq::chat::parse_qwen3_response;
using sharq::chat::ParsedResponse;

TEST(ResponseParser, PlainTextIsContent) {
  const ParsedResponse r = parse_qwen3_response("Hello there.");
  EXPECT_EQ(r.content, "Hello there.");
  EXPECT_FALSE(r.reasoning_content);
  EXPECT_TRUE(r.tool_calls.empty());
  EXPECT_FALSE(parse_qwen3_response("").content);  // empty content is none
}

TEST(ResponseParser, ThinkBlockBecomesReasoning) {
  ParsedResponse r = parse_qwen3_response("<think>\nx+1=3, so x=2.\n</think>\n\nx = 2.");
  EXPECT_EQ(r.reasoning_content, "\nx+1=3, so x=2.\n");
  EXPECT_EQ(r.content, "\n\nx = 2.");
  // thinking models whose prompt already ends in <think> write only the end tag
  r = parse_qwen3_response("reasoning here</think>answer");
  EXPECT_EQ(r.reasoning_content, "reasoning here");
  EXPECT_EQ(r.content, "answer");
  // nothing after </think>: no content
  r = parse_qwen3_response("<think>only thoughts</think>");
  EXPECT_EQ(r.reasoning_content, "only thoughts");
  EXPECT_FALSE(r.content);
  // no </think> (cut off, or thinking off): all content, untouched
  r = parse_qwen3_response("<think>unfinished");
  EXPECT_FALSE(r.reasoning_content);
  EXPECT_EQ(r.content, "<think>unfinished");
  // reasoning parsing off
  r = parse_qwen3_response("<think>a</think>b", /*reasoning=*/false);
  EXPECT_EQ(r.content, "<think>a</think>b");
}

TEST(ResponseParser, ToolCallsAreParsed) {
  const std::string text =
      "<think>\nNeed the weather.\n</think>\n\nLet me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
      "{\"city\": \"Zürich\", \"unit\": \"celsius\", \"days\": 2}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", "
      "\"arguments\": {}}\n</tool_call>";
  const ParsedResponse r = parse_qwen3_response(text);
  EXPECT_EQ(r.reasoning_content, "\nNeed the weather.\n");
  EXPECT_EQ(r.content, "\n\nLet me check.\n");
  ASSERT_EQ(r.tool_calls.size(), 2u);
  EXPECT_EQ(r.tool_calls[0].name, "get_weather");
  // json.dumps(arguments, ensure_ascii=False): key order kept, non-ASCII kept, ", " and ": "
  EXPECT_EQ(r.tool_calls[0].arguments, "{\"city\": \"Zürich\", \"unit\": \"celsius\", \"days\": 2}");
  EXPECT_EQ(r.tool_calls[1].name, "get_time");
  EXPECT_EQ(r.tool_calls[1].arguments, "{}");
}

TEST(ResponseParser, ToolCallOnlyAndUnclosedLastCall) {
  ParsedResponse r = parse_qwen3_response("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": [1, 2.5, null]}}\n</tool_call>");
  EXPECT_FALSE(r.content);
  ASSERT_EQ(r.tool_calls.size(), 1u);
  EXPECT_EQ(r.tool_calls[0].arguments, "{\"a\": [1, 2.5, null]}");
  // generation stopped before </tool_call>: the rest of the text is the call
  r = parse_qwen3_response("x<tool_call>{\"name\": \"g\", \"arguments\": {\"q\": \"y\"}}");
  EXPECT_EQ(r.content, "x");
  ASSERT_EQ(r.tool_calls.size(), 1u);
  EXPECT_EQ(r.tool_calls[0].name, "g");
}

TEST(ResponseParser, MalformedCallsLeaveTheTextAsContent) {
  for (const std::string text : {
           "a<tool_call>{not json}</tool_call>",
           "a<tool_call>{\"name\": \"f\"}</tool_call>",              // no arguments
           "a<tool_call>{\"arguments\": {}}</tool_call>",            // no name
           "a<tool_call>[1, 2]</tool_call>",                         // not an object
           "a<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call><tool_call>oops</tool_call>",  // one bad
       }) {
    SCOPED_TRACE(text);
    const ParsedResponse r = parse_qwen3_response(text);
    EXPECT_TRUE(r.tool_calls.empty());
    EXPECT_EQ(r.content, text);
  }
  // tool parsing off
  const ParsedResponse r = parse_qwen3_response("<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>", true, false);
  EXPECT_TRUE(r.tool_calls.empty());
}

TEST(ResponseParser, OpenAIMessageJson) {
  const ParsedResponse r =
      parse_qwen3_response("<think>t</think>ok<tool_call>{\"name\": \"f\", \"arguments\": {\"b\": 1, \"a\": 2}}</tool_call>");
  const auto j = nlohmann::ordered_json::parse(sharq::chat::response_message_json(r, "call_"));
  EXPECT_EQ(j["role"], "assistant");
  EXPECT_EQ(j["content"], "ok");
  EXPECT_EQ(j["reasoning_content"], "t");
  ASSERT_EQ(j["tool_calls"].size(), 1u);
  EXPECT_EQ(j["tool_calls"][0]["id"], "call_0");
  EXPECT_EQ(j["tool_calls"][0]["type"], "function");
  EXPECT_EQ(j["tool_calls"][0]["function"]["name"], "f");
  EXPECT_EQ(j["tool_calls"][0]["function"]["arguments"], "{\"b\": 1, \"a\": 2}");
  const auto plain = nlohmann::ordered_json::parse(sharq::chat::response_message_json(parse_qwen3_response("hi")));
  EXPECT_TRUE(plain["reasoning_content"].is_null());
  EXPECT_FALSE(plain.contains("tool_calls"));
}

}  // namespace
