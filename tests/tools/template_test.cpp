// `sharq template`: every Qwen3 golden case through the command line (text and ids), and bad
// input that fails with a message naming the file or field.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include <sys/wait.h>

#include <nlohmann/json.hpp>

#include "../support/run_command.h"
#include "../support/temp_dir.h"

namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

const std::string kQwenDir = SHARQ_SOURCE_DIR "/../shared/tokenizers/qwen3";

struct Result {
  int status;
  std::string out, err;
};

// Runs the CLI; stdout and stderr apart (the prompt must be exactly stdout).
Result run(const std::string& args, const fs::path& dir) {
  const fs::path err = dir / "stderr.txt";
  const sharq_test::CommandResult c =
      sharq_test::run_command(std::string(SHARQ_CLI_PATH) + " " + args + " 2>'" + err.string() + "'");
  Result r{c.status, c.out, {}};
  std::ifstream in(err, std::ios::binary);
  r.err.assign(std::istreambuf_iterator<char>(in), {});
  return r;
}

// A scratch directory whose write() returns the file's path quoted for the shell.
struct TempDir : sharq_test::TempDir {
  TempDir() : sharq_test::TempDir("sharq_tmplcli") {}
  std::string write(const std::string& name, const std::string& content) const {
    return "'" + sharq_test::TempDir::write(name, content) + "'";
  }
};

TEST(TemplateCli, EveryQwen3GoldenCase) {
  if (!fs::exists(kQwenDir + "/chat_golden.json")) GTEST_SKIP() << "no chat_golden.json under " << kQwenDir;
  std::ifstream in(kQwenDir + "/chat_golden.json", std::ios::binary);
  const ojson golden = ojson::parse(in);
  TempDir d;
  int matched = 0;
  for (const ojson& c : golden["cases"]) {
    const std::string name = c["name"].get<std::string>();
    SCOPED_TRACE(name);
    std::string args = "template '" + kQwenDir + "' --messages " + d.write("m.json", c["messages"].dump());
    if (!c["tools"].is_null()) args += " --tools " + d.write("t.json", c["tools"].dump());
    const ojson& o = c["options"];
    if (!o.value("add_generation_prompt", false)) args += " --no-generation-prompt";
    if (o.contains("enable_thinking")) args += std::string(" --enable-thinking ") + (o["enable_thinking"].get<bool>() ? "true" : "false");
    const Result plain = run(args, d.path);
    ASSERT_EQ(plain.status, 0) << plain.err;
    EXPECT_EQ(plain.out, c["text"].get<std::string>());  // the bare prompt, byte for byte
#if SHARQ_HAVE_BPE
    const Result ids = run(args + " --ids", d.path);
    ASSERT_EQ(ids.status, 0) << ids.err;
    const ojson j = ojson::parse(ids.out);
    EXPECT_EQ(j["text"], c["text"]);
    EXPECT_EQ(j["ids"], c["ids"]);
    matched += j["text"] == c["text"] && j["ids"] == c["ids"];
#else
    matched += plain.out == c["text"].get<std::string>();
#endif
  }
  EXPECT_EQ(matched, 12);
}

TEST(TemplateCli, MessagesFileMayBeARequestObject) {
  if (!fs::exists(kQwenDir + "/tokenizer_config.json")) GTEST_SKIP() << "no Qwen3 tokenizer_config.json";
  TempDir d;
  const std::string req = R"({"model": "x", "messages": [{"role": "user", "content": "Hi"}],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]})";
  const Result r = run("template '" + kQwenDir + "' --messages " + d.write("req.json", req), d.path);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": {}}}\n</tools>"),
            std::string::npos) << r.out;
  EXPECT_EQ(r.out.substr(r.out.size() - 22), "<|im_start|>assistant\n");
}

TEST(TemplateCli, BadInputFailsNamingTheFileOrField) {
  TempDir d;
  const std::string good = d.write("good.json", R"([{"role": "user", "content": "Hi"}])");
  struct Case {
    std::string args, want;
  };
  const std::string q = "'" + kQwenDir + "'";
  std::vector<Case> cases = {
      {"template " + q + " --messages " + d.write("bad.json", "[{\"role\": "), "bad.json: malformed JSON"},
      {"template " + q + " --messages '" + (d.path / "missing.json").string() + "'", "missing.json: no such file or directory"},
      {"template " + q + " --messages " + d.write("obj.json", R"({"role": "user"})"),
       "an object with a \"messages\" array"},
      {"template " + q + " --messages " + d.write("norole.json", R"([{"content": "x"}])"), "messages[0] has no \"role\" string"},
      {"template " + q + " --messages " + good + " --tools " + d.write("tools.json", "{}"), "\"tools\" must be an array"},
      {"template " + q + " --messages " + good + " --enable-thinking maybe", "--enable-thinking"},
      {"template '" + (d.path / "nodir").string() + "' --messages " + good, "nodir: no such file or directory"},
      {"template '" + d.path.string() + "' --messages " + good, "no tokenizer_config.json or chat_template.jinja"},
      {"template --messages " + good, "model"},
  };
  fs::create_directories(d.path / "cfg");
  std::ofstream(d.path / "cfg" / "tokenizer_config.json") << R"({"eos_token": "</s>"})";
  cases.push_back({"template '" + (d.path / "cfg").string() + "' --messages " + good, "no \"chat_template\" field"});
  fs::create_directories(d.path / "broken");
  std::ofstream(d.path / "broken" / "chat_template.jinja") << "{% for m in messages %}\n{{ m.content | nosuch }}{% endfor %}";
  cases.push_back({"template '" + (d.path / "broken").string() + "' --messages " + good, "line 2: unknown filter 'nosuch'"});
  fs::create_directories(d.path / "raises");
  std::ofstream(d.path / "raises" / "chat_template.jinja") << "{{ raise_exception('Only user and assistant roles') }}";
  cases.push_back({"template '" + (d.path / "raises").string() + "' --messages " + good,
                   "refuses this conversation: " + (d.path / "raises" / "chat_template.jinja").string() +
                       ": line 1: raise_exception: Only user and assistant roles"});
  for (const Case& c : cases) {
    SCOPED_TRACE(c.args);
    const Result r = run(c.args, d.path);
    EXPECT_NE(r.status, 0);
    EXPECT_TRUE(r.out.empty()) << r.out;
    EXPECT_NE(r.err.find(c.want), std::string::npos) << r.err;
  }
}

}  // namespace
