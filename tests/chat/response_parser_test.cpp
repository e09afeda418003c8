// What the model writes back, parsed as vLLM's qwen3 reasoning parser and hermes tool parser do.
#include "sharq/chat/response_parser.h"

#include <gtest/gtest.h>

#include <random>

#include <nlohmann/json.hpp>

namespace {

using sharq::chat::parse_qwen3_response;
using sharq::chat::ParsedResponse;
using sharq::chat::Qwen3StreamParser;
using sharq::chat::StreamPiece;

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
  // a stream's chunk numbers its calls on from those already sent, with their index
  const auto streamed = nlohmann::ordered_json::parse(sharq::chat::tool_calls_json(r.tool_calls, 2, "call_x_", true));
  ASSERT_EQ(streamed.size(), 1u);
  EXPECT_EQ(streamed[0]["index"], 2);
  EXPECT_EQ(streamed[0]["id"], "call_x_2");
  EXPECT_EQ(streamed[0]["function"], j["tool_calls"][0]["function"]);
  EXPECT_FALSE(j["tool_calls"][0].contains("index"));
  const auto plain = nlohmann::ordered_json::parse(sharq::chat::response_message_json(parse_qwen3_response("hi")));
  EXPECT_TRUE(plain["reasoning_content"].is_null());
  EXPECT_FALSE(plain.contains("tool_calls"));
}

// Streams: the pieces, however the text is cut, add up to the whole-text parse (for the texts where
// both can agree: a leading <think>, and calls that parse).
TEST(ResponseParser, StreamedPiecesAddUpToTheWholeTextParse) {
  const std::vector<std::string> texts = {
      "Hello there.",
      "<think>\nx+1=3, so x=2.\n</think>\n\nx = 2.",
      "<think>only thoughts</think>",
      "<think>\nNeed the weather.\n</think>\n\nLet me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
      "{\"city\": \"Z\u00fcrich\", \"days\": 2}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>",
      "x<tool_call>{\"name\": \"g\", \"arguments\": {\"q\": \"y\"}}",  // the last call unclosed
      "a < b, <thinking> is not a tag, </think without its end, <tool and <tool_cal",
      "\xe2\x9c\x93 caf\xc3\xa9 <think> in the middle stays content",
      "",
      "\n <think>a</think>b",  // white space before <think> is dropped, as the whole-text parse drops it
      // calls that do not all parse: none counts, the text from the first <tool_call> is content
      "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call><tool_call>{\"name\": \"g\", \"argu",
      "x<tool_call>{oops}</tool_call><tool_call>{\"name\": \"g\", \"arguments\": {}}</tool_call>",
      "a<tool_call>{\"name\": \"f\"}</tool_call>",
      "a<tool_call>[1, 2]</tool_call> and after",
  };
  std::mt19937 rng(7);
  for (const std::string& text : texts) {
    for (bool tools : {true, false}) {
      const ParsedResponse whole = parse_qwen3_response(text, true, tools);
      for (int trial = 0; trial < 200; ++trial) {
        SCOPED_TRACE(text + (tools ? " (tools)" : "") + " trial " + std::to_string(trial));
        Qwen3StreamParser sp(tools);
        StreamPiece all;
        auto add = [&](const StreamPiece& p) {
          all.content += p.content;
          all.reasoning += p.reasoning;
          all.tool_calls.insert(all.tool_calls.end(), p.tool_calls.begin(), p.tool_calls.end());
        };
        size_t at = 0;
        while (at < text.size()) {
          const size_t n = std::uniform_int_distribution<size_t>(0, trial % 2 ? 3 : 12)(rng);
          add(sp.feed(text.substr(at, n)));
          at += n;
        }
        add(sp.finish());
        EXPECT_EQ(all.content, whole.content.value_or(""));
        EXPECT_EQ(all.reasoning, whole.reasoning_content.value_or(""));
        ASSERT_EQ(all.tool_calls.size(), whole.tool_calls.size());
        for (size_t i = 0; i < all.tool_calls.size(); ++i) {
          EXPECT_EQ(all.tool_calls[i].name, whole.tool_calls[i].name);
          EXPECT_EQ(all.tool_calls[i].arguments, whole.tool_calls[i].arguments);
        }
        EXPECT_EQ(sp.tool_calls_sent(), whole.tool_calls.size());
      }
    }
  }
}

// What is held back, and when it is let go.
TEST(ResponseParser, StreamsHoldPartialTagsOnly) {
  Qwen3StreamParser sp(true);
  EXPECT_TRUE(sp.feed("<thi").empty());              // may become <think>
  EXPECT_EQ(sp.feed("nk>ab").reasoning, "ab");
  EXPECT_TRUE(sp.feed("</th").empty());              // may become </think>
  StreamPiece p = sp.feed("ink>\n\nAnswer <");         // "<" may start <tool_call>
  EXPECT_EQ(p.reasoning, "");
  EXPECT_EQ(p.content, "\n\nAnswer ");
  EXPECT_EQ(sp.feed("b").content, "<b");             // it did not
  EXPECT_TRUE(sp.feed("<tool_call>{\"name\": \"f\", ").empty());  // from the first call on, all is held
  EXPECT_TRUE(sp.feed("\"arguments\": {}}</tool_call> trailing").empty());
  p = sp.finish();                                   // and parsed at the end, by the whole-text rule
  ASSERT_EQ(p.tool_calls.size(), 1u);
  EXPECT_EQ(p.tool_calls[0].name, "f");
  EXPECT_EQ(p.content, "");                          // content after the calls is dropped
  EXPECT_EQ(sp.tool_calls_sent(), 1u);
  // a stream cut inside the reasoning: what came is reasoning (the whole-text parse, which can wait
  // for a </think> that never comes, calls it content)
  Qwen3StreamParser cut(false);
  EXPECT_EQ(cut.feed("<think>unfinish").reasoning, "unfinish");
  EXPECT_EQ(cut.feed("ed</thi").reasoning, "ed");
  EXPECT_EQ(cut.finish().reasoning, "</thi");
  // a call that does not parse goes out as its raw text, at the end
  Qwen3StreamParser bad(true);
  EXPECT_EQ(bad.feed("x<tool_call>{oops}</tool_call>y").content, "x");
  p = bad.finish();
  EXPECT_EQ(p.content, "<tool_call>{oops}</tool_call>y");
  EXPECT_TRUE(p.tool_calls.empty());
  EXPECT_EQ(bad.tool_calls_sent(), 0u);
  // a prompt that opened the reasoning block: the answer starts inside it
  for (const std::string text : {"thinking here</think>the answer", "no end tag"}) {
    Qwen3StreamParser open(false, /*in_reasoning=*/true);
    StreamPiece a = open.feed(text), b = open.finish();
    const ParsedResponse whole = parse_qwen3_response(text);
    if (whole.reasoning_content) {  // with the end tag both agree
      EXPECT_EQ(a.reasoning + b.reasoning, *whole.reasoning_content);
      EXPECT_EQ(a.content + b.content, whole.content.value_or(""));
    } else {  // without it the stream has sent reasoning (it cannot wait)
      EXPECT_EQ(a.reasoning + b.reasoning, text);
    }
  }
  // white space alone is held until it is clear that no <think> follows
  Qwen3StreamParser ws(false);
  EXPECT_TRUE(ws.feed("\n ").empty());
  EXPECT_EQ(ws.feed("hi").content, "\n hi");
}

}  // namespace

