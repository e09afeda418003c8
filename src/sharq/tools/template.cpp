#include "sharq/tools/template.h"

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <system_error>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "sharq/chat/chat_template.h"
#include "sharq/model/tokenizer.h"

namespace sharq {

namespace {

std::string read_input(const std::string& path, const char* flag) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw std::runtime_error(fmt::format("{}: {}: {}", flag, path,
                                         std::filesystem::exists(path, ec) ? "is not a regular file" : "no such file"));
  const auto size = std::filesystem::file_size(path, ec);
  if (ec || size > (64u << 20))
    throw std::runtime_error(fmt::format("{}: {}: {}", flag, path, ec ? ec.message() : "larger than 64 MiB"));
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  std::string text(static_cast<size_t>(size), '\0');
  if (!in || (size > 0 && !in.read(text.data(), static_cast<std::streamsize>(size))))
    throw std::runtime_error(fmt::format("{}: {}: cannot read: {}", flag, path,
                                         errno ? std::generic_category().message(errno) : "read failed"));
  return text;
}

}  // namespace

std::string run_template(const TemplateOptions& o) {
  const chat::ChatTemplate tmpl = chat::ChatTemplate::load(o.path);
  chat::ChatInput in;
  const std::string msgs_origin = fmt::format("--messages {}", o.messages_path);
  in.messages = chat::parse_messages_json(read_input(o.messages_path, "--messages"), msgs_origin, &in.tools);
  if (!o.tools_path.empty())
    in.tools = chat::parse_tools_json(read_input(o.tools_path, "--tools"), fmt::format("--tools {}", o.tools_path));
  in.add_generation_prompt = o.add_generation_prompt;
  if (!o.enable_thinking.empty()) {
    if (o.enable_thinking != "true" && o.enable_thinking != "false")
      throw std::runtime_error(fmt::format("--enable-thinking: {} is not true or false", o.enable_thinking));
    in.extra.emplace_back("enable_thinking", jinja::Value(o.enable_thinking == "true"));
  }
  std::string text;
  try {
    text = tmpl.render(in);
  } catch (const jinja::TemplateRaised& e) {
    throw std::runtime_error(fmt::format("the chat template refuses this conversation: {}", e.what()));
  } catch (const jinja::TemplateError& e) {
    throw std::runtime_error(fmt::format("the chat template failed to render: {}", e.what()));
  }
  if (!o.ids) return text;
  std::error_code ec;
  std::filesystem::path tok_dir = o.path;
  if (!std::filesystem::is_directory(tok_dir, ec)) tok_dir = tok_dir.parent_path();
  if (tok_dir.empty()) tok_dir = std::filesystem::path(".");
  const auto tok = load_tokenizer_for(tok_dir.string(), o.tokenizer_path);
  const std::vector<int32_t> ids = tmpl.encode(*tok, text);
  nlohmann::ordered_json j;
  j["text"] = text;
  j["ids"] = ids;
  return j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
}

}  // namespace sharq
