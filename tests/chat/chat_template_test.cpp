// The model's chat template: the Qwen3 golden renders (text and ids, byte for byte), loading from
// tokenizer_config.json / chat_template.jinja with clear errors, start-up validation, and BOS
// never doubled.
#include "sharq/chat/chat_template.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "../support/temp_dir.h"

namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;
using sharq::chat::ChatInput;
using sharq::chat::ChatTemplate;
using sharq::chat::ChatTemplateError;
using sharq::jinja::Value;

const std::string kQwenDir = SHARQ_SOURCE_DIR "/../shared/tokenizers/qwen3";
const std::string kStoriesDir = SHARQ_SOURCE_DIR "/../shared/models/stories260K";

ojson read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return ojson::parse(in);
}


std::string load_error(const std::string& path) {
  try {
    ChatTemplate::load(path);
  } catch (const ChatTemplateError& e) {
    return e.what();
  }
  return "";
}

ChatInput input_of(const ojson& c) {
  ChatInput in;
  in.messages = Value::from_json(c["messages"]);
  in.tools = Value::from_json(c["tools"]);
  const ojson& o = c["options"];
  in.add_generation_prompt = o.value("add_generation_prompt", false);
  for (const auto& [k, v] : o.items())
    if (k != "add_generation_prompt") in.extra.emplace_back(k, Value::from_json(v));
  return in;
}

TEST(ChatTemplate, Qwen3GoldenTextAndIds) {
  if (!fs::exists(kQwenDir + "/chat_golden.json")) GTEST_SKIP() << "no chat_golden.json under " << kQwenDir;
  const ChatTemplate t = ChatTemplate::load(kQwenDir);
  EXPECT_EQ(t.bos_token(), "");  // Qwen3 has none
  const ojson golden = read_json(kQwenDir + "/chat_golden.json");
  ASSERT_EQ(golden["cases"].size(), 12u);
#if SHARQ_HAVE_BPE
  const auto tok = sharq::load_tokenizer_for(kQwenDir);
#endif
  int matched = 0;
  for (const ojson& c : golden["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const std::string text = t.render(input_of(c));
    EXPECT_EQ(text, c["text"].get<std::string>());
    EXPECT_FALSE(t.starts_with_bos(text));
#if SHARQ_HAVE_BPE
    EXPECT_EQ(t.encode(*tok, text), c["ids"].get<std::vector<int32_t>>());
#endif
    matched += text == c["text"].get<std::string>();
  }
  EXPECT_EQ(matched, 12);
}

TEST(ChatTemplate, Qwen3ValidatesAndThinkingSwitch) {
  if (!fs::exists(kQwenDir + "/tokenizer_config.json")) GTEST_SKIP() << "no Qwen3 tokenizer_config.json";
  const ChatTemplate t = ChatTemplate::load(kQwenDir + "/tokenizer_config.json");
  EXPECT_NO_THROW(t.validate());
  ChatInput in;
  in.messages = Value::from_json(ojson::parse(R"([{"role": "user", "content": "x"}])"));
  const std::string on = t.render(in);
  in.extra.emplace_back("enable_thinking", Value(false));
  const std::string off = t.render(in);
  EXPECT_EQ(off, on + "<think>\n\n</think>\n\n");
  in.add_generation_prompt = false;
  EXPECT_EQ(t.render(in), "<|im_start|>user\nx<|im_end|>\n");
}

// A Llama-style template that writes bos_token itself: the prompt's ids hold one BOS, not two,
// even though the tokenizer (llama2.c's, like SentencePiece's) adds BOS on its own and does not
// know "<s>" as text.
TEST(ChatTemplate, BosWrittenByTheTemplateIsNotDoubled) {
  if (!fs::exists(kStoriesDir + "/tok512.bin")) GTEST_SKIP() << "no stories260K tok512.bin";
  sharq_test::TempDir d("sharq_chat");
  fs::copy_file(kStoriesDir + "/tok512.bin", d.path / "tok512.bin");
  ojson cfg;
  cfg["bos_token"] = {{"content", "<s>"}, {"lstrip", false}};  // the AddedToken form
  cfg["eos_token"] = "</s>";
  cfg["chat_template"] =
      "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content }} [/INST]"
      "{% else %} {{ m.content }}{{ eos_token }}{% endif %}{% endfor %}";
  d.write("tokenizer_config.json", cfg.dump());
  const ChatTemplate t = ChatTemplate::load(d.str());
  EXPECT_EQ(t.bos_token(), "<s>");
  ChatInput in;
  in.messages = Value::from_json(ojson::parse(R"([{"role": "user", "content": "Once upon a time"}])"));
  const std::string text = t.render(in);
  EXPECT_EQ(text, "<s>[INST] Once upon a time [/INST]");
  EXPECT_TRUE(t.starts_with_bos(text));
  const auto tok = sharq::load_tokenizer_for(d.str());
  ASSERT_GE(tok->bos_id(), 0);
  const std::vector<int32_t> ids = t.encode(*tok, text);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids[0], tok->bos_id());
  EXPECT_EQ(std::count(ids.begin(), ids.end(), tok->bos_id()), 1);
  std::vector<int32_t> want{tok->bos_id()};
  const auto rest = tok->encode("[INST] Once upon a time [/INST]", false);
  want.insert(want.end(), rest.begin(), rest.end());
  EXPECT_EQ(ids, want);
  // the naive way (let the tokenizer add BOS to the rendered text) would give a BOS plus "<s>" as text
  EXPECT_NE(tok->encode(text, true), ids);

  // a template that does not write BOS gets none added (as transformers and vLLM encode chats)
  cfg["chat_template"] = "{% for m in messages %}{{ m.content }}{% endfor %}";
  d.write("tokenizer_config.json", cfg.dump());
  const ChatTemplate plain = ChatTemplate::load(d.str());
  const std::string p = plain.render(in);
  EXPECT_FALSE(plain.starts_with_bos(p));
  const auto pids = plain.encode(*tok, p);
  EXPECT_EQ(std::count(pids.begin(), pids.end(), tok->bos_id()), 0);
}

TEST(ChatTemplate, ChatTemplateJinjaTakesPrecedence) {
  sharq_test::TempDir d("sharq_chat");
  d.write("tokenizer_config.json", R"({"chat_template": "from config", "eos_token": "E"})");
  EXPECT_EQ(ChatTemplate::load(d.str()).render(ChatInput{}), "from config");
  d.write("chat_template.jinja", "from jinja {{ eos_token }}\n");
  EXPECT_EQ(ChatTemplate::load(d.str()).render(ChatInput{}), "from jinja E");
  EXPECT_EQ(ChatTemplate::load((d.path / "chat_template.jinja").string()).render(ChatInput{}), "from jinja E");
  fs::remove(d.path / "tokenizer_config.json");
  EXPECT_EQ(ChatTemplate::load(d.str()).render(ChatInput{}), "from jinja ");  // no special tokens: undefined prints ""
}

TEST(ChatTemplate, NamedTemplatesPickToolUseForTools) {
  sharq_test::TempDir d("sharq_chat");
  d.write("tokenizer_config.json",
          R"({"chat_template": [{"name": "default", "template": "plain"}, {"name": "tool_use", "template": "tools: {{ tools|length }}"}]})");
  const ChatTemplate t = ChatTemplate::load(d.str());
  ChatInput in;
  EXPECT_EQ(t.render(in), "plain");
  in.tools = Value::from_json(ojson::parse(R"([{"type": "function", "function": {"name": "f"}}])"));
  EXPECT_EQ(t.render(in), "tools: 1");
}

TEST(ChatTemplate, LoadErrorsNameTheFileAndField) {
  sharq_test::TempDir d("sharq_chat");
  EXPECT_NE(load_error(d.str() + "/nope").find("no such file or directory"), std::string::npos);
  EXPECT_NE(load_error(d.str()).find("no tokenizer_config.json or chat_template.jinja"), std::string::npos);
  d.write("model.bin", "\x01\x02 not json");
  EXPECT_NE(load_error(d.str() + "/model.bin").find("model.bin: not a tokenizer_config.json (.json) or a chat template (.jinja)"),
            std::string::npos)
      << load_error(d.str() + "/model.bin");
  d.write("tokenizer_config.json", "{\"chat_template\": ");
  std::string e = load_error(d.str());
  EXPECT_NE(e.find("tokenizer_config.json: malformed JSON"), std::string::npos) << e;
  d.write("tokenizer_config.json", R"({"eos_token": "x"})");
  e = load_error(d.str());
  EXPECT_NE(e.find("tokenizer_config.json: no \"chat_template\" field"), std::string::npos) << e;
  d.write("tokenizer_config.json", R"({"chat_template": 3})");
  EXPECT_NE(load_error(d.str()).find("\"chat_template\" must be a string"), std::string::npos);
  d.write("tokenizer_config.json", R"({"chat_template": [{"name": "tool_use"}]})");
  EXPECT_NE(load_error(d.str()).find("list entries must be"), std::string::npos);
  d.write("tokenizer_config.json", R"({"chat_template": "x", "bos_token": 5})");
  EXPECT_NE(load_error(d.str()).find("\"bos_token\" must be a string"), std::string::npos);
  // a template the interpreter cannot parse fails at load, naming the construct and the line
  d.write("tokenizer_config.json", R"({"chat_template": "{% for m in messages %}\n{% include 'x' %}{% endfor %}"})");
  e = load_error(d.str());
  EXPECT_NE(e.find("line 2"), std::string::npos) << e;
  EXPECT_NE(e.find("{% include %} statement is not supported"), std::string::npos) << e;
  // a template that is not UTF-8 text, and a chat_template.jinja that is not a file (found by a probe:
  // the first rendered raw bytes, the second was skipped for the config's template)
  d.write("chat_template.jinja", "ok \xff\xfe{{ x }}");
  e = load_error(d.str());
  EXPECT_NE(e.find("chat_template.jinja: not valid UTF-8 (byte 3)"), std::string::npos) << e;
  d.write("chat_template.jinja", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 {{ 1 }}");  // UTF-8 of 2, 3 and 4 bytes
  EXPECT_EQ(load_error(d.str()), "");
  d.write("chat_template.jinja", "\xe2\x82");  // cut short
  EXPECT_NE(load_error(d.str()).find("not valid UTF-8 (byte 0)"), std::string::npos);
  d.write("chat_template.jinja", "\xc0\xaf");  // overlong '/'
  EXPECT_NE(load_error(d.str()).find("not valid UTF-8 (byte 0)"), std::string::npos);
  std::filesystem::remove(d.path / "chat_template.jinja");
  std::filesystem::create_directory(d.path / "chat_template.jinja");
  e = load_error(d.str());
  EXPECT_NE(e.find("chat_template.jinja: not a regular file"), std::string::npos) << e;
}

TEST(ChatTemplate, ValidateCatchesTemplatesThatCannotRender) {
  sharq_test::TempDir d("sharq_chat");
  // parses, but calls a function the interpreter does not provide
  d.write("tokenizer_config.json", R"({"chat_template": "{% for m in messages %}{{ m.content|trim }}{% endfor %}\n{{ helper() }}"})");
  const ChatTemplate bad = ChatTemplate::load(d.str());
  try {
    bad.validate();
    FAIL() << "validated";
  } catch (const ChatTemplateError& e) {
    EXPECT_NE(std::string(e.what()).find("line 2: 'helper' is undefined"), std::string::npos) << e.what();
  }
  // a template that refuses some inputs on purpose (Gemma: no system role) still validates
  d.write("tokenizer_config.json",
          R"({"chat_template": "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}ok"})");
  const ChatTemplate gemma = ChatTemplate::load(d.str());
  EXPECT_NO_THROW(gemma.validate());
  ChatInput in;
  in.messages = Value::from_json(ojson::parse(R"([{"role": "system", "content": "x"}])"));
  EXPECT_THROW(gemma.render(in), sharq::jinja::TemplateRaised);
}

TEST(ChatTemplate, MessagesJsonIsCheckedWithClearErrors) {
  using sharq::chat::parse_messages_json;
  Value tools;
  const Value m = parse_messages_json(R"({"messages": [{"role": "user", "content": "hi"}], "tools": []})", "req", &tools);
  EXPECT_EQ(m.items().size(), 1u);
  EXPECT_TRUE(tools.is_list());
  auto err = [](const std::string& text) {
    try {
      parse_messages_json(text, "m.json");
    } catch (const ChatTemplateError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(err("[").find("m.json: malformed JSON"), std::string::npos);
  EXPECT_NE(err("3").find("m.json: expected a JSON array of messages"), std::string::npos);
  EXPECT_NE(err(R"({"msgs": []})").find("an object with a \"messages\" array"), std::string::npos);
  EXPECT_NE(err(R"([{"role": "user"}, 3])").find("messages[1] must be an object"), std::string::npos);
  EXPECT_NE(err(R"([{"content": "x"}])").find("messages[0] has no \"role\" string"), std::string::npos);
  EXPECT_NE(err(R"([{"role": "user", "content": 5}])").find("messages[0].content must be a string"), std::string::npos);
  EXPECT_THROW(sharq::chat::parse_tools_json(R"({"a": 1})", "t.json"), ChatTemplateError);
  EXPECT_THROW(sharq::chat::parse_tools_json(R"([1])", "t.json"), ChatTemplateError);
  EXPECT_TRUE(sharq::chat::parse_tools_json("null", "t.json").is_none());
}

}  // namespace
