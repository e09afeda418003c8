#include "sharq/chat/chat_template.h"

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <system_error>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "sharq/core/json_checks.h"

#include "sharq/core/utf8.h"

namespace sharq::chat {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

constexpr size_t kMaxFileBytes = 64u << 20;

std::string read_text(const fs::path& p, const std::string& what) {
  std::error_code ec;
  const auto size = fs::file_size(p, ec);
  if (ec) throw ChatTemplateError(fmt::format("{}: cannot read {}: {}", p.string(), what, ec.message()));
  if (size > kMaxFileBytes)
    throw ChatTemplateError(fmt::format("{}: {} is {} bytes, more than the {} bytes accepted", p.string(), what, size, kMaxFileBytes));
  errno = 0;
  std::ifstream in(p, std::ios::binary);
  std::string text(static_cast<size_t>(size), '\0');
  if (!in || (size > 0 && !in.read(text.data(), static_cast<std::streamsize>(size))))
    throw ChatTemplateError(fmt::format("{}: cannot read {}: {}", p.string(), what,
                                        errno ? std::generic_category().message(errno) : "read failed"));
  return text;
}

// A template's source as given, once it is known to be UTF-8 (a Jinja template is text).
const std::string& utf8_source(const std::string& text, const std::string& origin) {
  if (const size_t bad = first_invalid_utf8(text); bad != std::string_view::npos)
    throw ChatTemplateError(fmt::format("{}: not valid UTF-8 (byte {})", origin, bad));
  return text;
}

ojson parse_json(const std::string& text, const std::string& origin) {
  try {
    return jinja::parse_ordered_json(text);
  } catch (const ojson::exception& e) {  // parse_error, and out_of_range for a number beyond double
    throw ChatTemplateError(fmt::format("{}: malformed JSON: {}", origin, e.what()));
  } catch (const std::invalid_argument& e) {
    throw ChatTemplateError(fmt::format("{}: {}", origin, e.what()));
  }
}

// A special token of tokenizer_config.json: a string, or an AddedToken object {"content": ...}.
std::optional<std::string> token_text(const nlohmann::json& cfg, const char* key, const std::string& origin) {
  const auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    const auto c = it->find("content");
    if (c != it->end() && c->is_string()) return c->get<std::string>();
  }
  throw ChatTemplateError(fmt::format("{}: \"{}\" must be a string or an object with a \"content\" string", origin, key));
}

}  // namespace

ChatTemplate::ChatTemplate(const std::string& source, std::string origin,
                           std::vector<std::pair<std::string, std::string>> special_tokens,
                           const std::string& tool_use_source, jinja::Limits limits)
    : origin_(std::move(origin)), special_(std::move(special_tokens)), tmpl_(utf8_source(source, origin_), origin_, limits) {
  for (const auto& [k, v] : special_)
    if (k == "bos_token") bos_ = v;
  if (!tool_use_source.empty())
    tool_tmpl_.emplace(utf8_source(tool_use_source, origin_ + " (tool_use)"), origin_ + " (tool_use)", limits);
}

ChatTemplate ChatTemplate::load(const std::string& path, jinja::Limits limits) {
  std::error_code ec;
  const fs::path p(path);
  if (!fs::exists(p, ec)) throw ChatTemplateError(fmt::format("{}: no such file or directory", path));
  fs::path dir, config, jinja_file;
  if (fs::is_directory(p, ec)) {
    dir = p;
  } else if (p.extension() == ".jinja") {
    dir = p.parent_path();
    jinja_file = p;
  } else if (p.extension() == ".json") {
    dir = p.parent_path();
    config = p;
  } else {  // e.g. a llama2.c model file: say what is wanted, not "malformed JSON"
    throw ChatTemplateError(fmt::format("{}: not a tokenizer_config.json (.json) or a chat template (.jinja); give one of "
                                        "those, or the model's directory",
                                        path));
  }
  if (dir.empty()) dir = ".";
  if (config.empty() && fs::is_regular_file(dir / "tokenizer_config.json", ec)) config = dir / "tokenizer_config.json";
  if (jinja_file.empty() && fs::exists(dir / "chat_template.jinja", ec)) {
    if (!fs::is_regular_file(dir / "chat_template.jinja", ec))
      throw ChatTemplateError(fmt::format("{}: not a regular file", (dir / "chat_template.jinja").string()));
    jinja_file = dir / "chat_template.jinja";
  }
  if (config.empty() && jinja_file.empty())
    throw ChatTemplateError(fmt::format("{}: no tokenizer_config.json or chat_template.jinja (needed for the chat template)", path));

  // (tokenizer_config.json's key order is never observable: a plain json, whose std::map parses a
  // large added_tokens_decoder in n log n rather than the ordered parse's n^2)
  nlohmann::json cfg = nlohmann::json::object();
  std::string cfg_origin;
  if (!config.empty()) {
    cfg_origin = config.string();
    try {
      cfg = json_checks::parse_unique(read_text(config, "the tokenizer config"));
    } catch (const nlohmann::json::exception& e) {
      throw ChatTemplateError(fmt::format("{}: malformed JSON: {}", cfg_origin, e.what()));
    } catch (const std::invalid_argument& e) {
      throw ChatTemplateError(fmt::format("{}: {}", cfg_origin, e.what()));
    }
    if (!cfg.is_object()) throw ChatTemplateError(fmt::format("{}: expected a JSON object", cfg_origin));
  }
  std::vector<std::pair<std::string, std::string>> special;
  for (const char* key : {"bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"})
    if (auto t = token_text(cfg, key, cfg_origin)) special.emplace_back(key, *t);

  std::string source, tool_use, origin;
  if (!jinja_file.empty()) {
    source = read_text(jinja_file, "the chat template");
    origin = jinja_file.string();
  } else {
    const auto it = cfg.find("chat_template");
    if (it == cfg.end() || it->is_null())
      throw ChatTemplateError(fmt::format("{}: no \"chat_template\" field (and no chat_template.jinja beside it): "
                                          "this tokenizer has no chat template", cfg_origin));
    origin = cfg_origin + " chat_template";
    if (it->is_string()) {
      source = it->get<std::string>();
    } else if (it->is_array()) {
      bool have_default = false;
      for (const auto& e : *it) {
        const auto n = e.is_object() ? e.find("name") : e.end();
        const auto t = e.is_object() ? e.find("template") : e.end();
        if (!e.is_object() || n == e.end() || t == e.end() || !n->is_string() || !t->is_string())
          throw ChatTemplateError(fmt::format("{}: \"chat_template\" list entries must be {{\"name\": ..., \"template\": ...}} strings", cfg_origin));
        if (*n == "default") {
          source = t->get<std::string>();
          have_default = true;
        } else if (*n == "tool_use") {
          tool_use = t->get<std::string>();
        }
      }
      if (!have_default) {
        if (tool_use.empty())
          throw ChatTemplateError(fmt::format("{}: \"chat_template\" list has no \"default\" template", cfg_origin));
        source = tool_use;
        tool_use.clear();
      }
    } else {
      throw ChatTemplateError(fmt::format("{}: \"chat_template\" must be a string or a list of {{name, template}}", cfg_origin));
    }
  }
  try {
    return ChatTemplate(source, origin, std::move(special), tool_use, limits);
  } catch (const jinja::TemplateError& e) {
    throw ChatTemplateError(fmt::format("chat template cannot be used: {}", e.what()));
  }
}

std::string ChatTemplate::render(const ChatInput& in) const {
  jinja::Value ctx = jinja::Value::dict();
  for (const auto& [k, v] : special_) ctx.set(k, jinja::Value(v));
  ctx.set("messages", in.messages);
  ctx.set("tools", in.tools);
  ctx.set("documents", jinja::Value::none());
  ctx.set("add_generation_prompt", jinja::Value(in.add_generation_prompt));
  for (const auto& [k, v] : in.extra) ctx.set(k, v);
  const bool tools = in.tools.truthy();
  const jinja::Template& t = tools && tool_tmpl_ ? *tool_tmpl_ : tmpl_;
  return t.render(ctx, in.now_unix);
}

void ChatTemplate::validate() const {
  ChatInput in;
  auto msg = [](const char* role, const char* content) {
    jinja::Value m = jinja::Value::dict();
    m.set("role", jinja::Value(role));
    m.set("content", jinja::Value(content));
    return m;
  };
  in.messages = jinja::Value::list({msg("user", "Hello"), msg("assistant", "Hi there."), msg("user", "How are you?")});
  try {
    (void)render(in);
  } catch (const jinja::TemplateRaised&) {
    // the template refuses this conversation on purpose: it works
  } catch (const jinja::TemplateError& e) {
    throw ChatTemplateError(fmt::format("chat template cannot render a sample conversation: {}", e.what()));
  }
}

bool ChatTemplate::starts_with_bos(const std::string& text) const {
  return !bos_.empty() && text.compare(0, bos_.size(), bos_) == 0;
}

std::vector<int32_t> ChatTemplate::encode(const Tokenizer& tok, const std::string& text) const {
  if (starts_with_bos(text) && tok.bos_id() >= 0) {
    std::vector<int32_t> ids{tok.bos_id()};
    const auto rest = tok.encode(text.substr(bos_.size()), /*add_special=*/false);
    ids.insert(ids.end(), rest.begin(), rest.end());
    return ids;
  }
  return tok.encode(text, /*add_special=*/false);
}

namespace {

void check_messages(const ojson& msgs, const std::string& origin) {
  if (!msgs.is_array())
    throw ChatTemplateError(fmt::format("{}: \"messages\" must be an array of message objects, not {}", origin, msgs.type_name()));
  for (size_t i = 0; i < msgs.size(); ++i) {
    const ojson& m = msgs[i];
    if (!m.is_object())
      throw ChatTemplateError(fmt::format("{}: messages[{}] must be an object, not {}", origin, i, m.type_name()));
    const auto r = m.find("role");
    if (r == m.end() || !r->is_string())
      throw ChatTemplateError(fmt::format("{}: messages[{}] has no \"role\" string", origin, i));
    const auto c = m.find("content");
    if (c != m.end() && !(c->is_string() || c->is_null() || c->is_array()))
      throw ChatTemplateError(fmt::format("{}: messages[{}].content must be a string, null or a list of parts, not {}",
                                          origin, i, c->type_name()));
  }
}

jinja::Value tools_value(const ojson& tools, const std::string& origin) {
  if (tools.is_null()) return jinja::Value::none();
  if (!tools.is_array())
    throw ChatTemplateError(fmt::format("{}: \"tools\" must be an array of tool objects, not {}", origin, tools.type_name()));
  for (size_t i = 0; i < tools.size(); ++i)
    if (!tools[i].is_object())
      throw ChatTemplateError(fmt::format("{}: tools[{}] must be an object, not {}", origin, i, tools[i].type_name()));
  try {
    return jinja::Value::from_json(tools);
  } catch (const jinja::TemplateError& e) {
    throw ChatTemplateError(fmt::format("{}: {}", origin, e.what()));
  }
}

}  // namespace

jinja::Value parse_messages_json(const std::string& text, const std::string& origin, jinja::Value* tools) {
  const ojson j = parse_json(text, origin);
  const ojson* msgs = &j;
  if (tools) *tools = jinja::Value::none();
  if (j.is_object()) {
    const auto it = j.find("messages");
    if (it == j.end())
      throw ChatTemplateError(fmt::format("{}: expected a JSON array of messages or an object with a \"messages\" array", origin));
    msgs = &*it;
    if (tools) {
      const auto t = j.find("tools");
      if (t != j.end()) *tools = tools_value(*t, origin);
    }
  } else if (!j.is_array()) {
    throw ChatTemplateError(fmt::format("{}: expected a JSON array of messages or an object with a \"messages\" array, not {}",
                                        origin, j.type_name()));
  }
  check_messages(*msgs, origin);
  try {
    return jinja::Value::from_json(*msgs);
  } catch (const jinja::TemplateError& e) {
    throw ChatTemplateError(fmt::format("{}: {}", origin, e.what()));
  }
}

jinja::Value parse_tools_json(const std::string& text, const std::string& origin) {
  return tools_value(parse_json(text, origin), origin);
}

}  // namespace sharq::chat
