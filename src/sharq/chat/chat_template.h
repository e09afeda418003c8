// A model's chat template (docs/chat.md): loaded from tokenizer_config.json's `chat_template`, or
// from chat_template.jinja beside it, and rendered the way transformers' apply_chat_template does
// (same variables, same Jinja environment), by sharq's own Jinja interpreter (chat/jinja.h).
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "sharq/chat/jinja.h"
#include "sharq/model/tokenizer.h"

namespace sharq::chat {

// Bad template files: a missing file or field, malformed JSON, a template that does not parse.
struct ChatTemplateError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct ChatInput {
  jinja::Value messages = jinja::Value::list();  // a list of {role, content, ...} dicts
  jinja::Value tools = jinja::Value::none();     // none or a list of tool schemas
  bool add_generation_prompt = true;
  // Further template variables (transformers' **kwargs of apply_chat_template), e.g.
  // {"enable_thinking", false}. They override the special tokens of the same name.
  std::vector<std::pair<std::string, jinja::Value>> extra;
  int64_t now_unix = -1;  // >= 0: the clock strftime_now reads (tests)
};

class ChatTemplate {
 public:
  // `source`: the template text; `origin` names it in messages; `special_tokens`: the variables
  // bos_token, eos_token, ... (only those that are set). `tool_use_source`: the "tool_use"
  // template of a named-template list, used when tools are given ("" when none).
  ChatTemplate(const std::string& source, std::string origin,
               std::vector<std::pair<std::string, std::string>> special_tokens = {},
               const std::string& tool_use_source = "", jinja::Limits limits = {});

  // A model or tokenizer directory, its tokenizer_config.json, or a .jinja file. The template is
  // chat_template.jinja when present (as transformers prefers it), else tokenizer_config.json's
  // "chat_template" (a string, or a list of {name, template}: "default", and "tool_use" for
  // requests with tools); special tokens come from tokenizer_config.json. The template is parsed
  // here: an unsupported construct is a ChatTemplateError naming it and its line.
  static ChatTemplate load(const std::string& path, jinja::Limits limits = {});

  // The prompt text. Throws jinja::TemplateRaised when the template's raise_exception refuses the
  // input, jinja::TemplateError when rendering fails.
  std::string render(const ChatInput& in) const;

  // Renders a small user/assistant/user conversation, so that a template that parses but cannot
  // be rendered fails at start-up (a raise_exception of the template is not a failure).
  void validate() const;

  // The template's bos_token ("" when the tokenizer config sets none).
  const std::string& bos_token() const { return bos_; }
  const std::string& origin() const { return origin_; }
  // Whether a rendered prompt already starts with the BOS token (the template wrote it).
  bool starts_with_bos(const std::string& text) const;
  // Token ids of a rendered prompt, as transformers and vLLM encode chat prompts: no special
  // tokens are added, so BOS appears exactly as often as the template writes it, never doubled.
  // A leading BOS written by the template maps to tok.bos_id() even for tokenizers that do not
  // match special-token text (SentencePiece, llama2.c).
  std::vector<int32_t> encode(const Tokenizer& tok, const std::string& text) const;

 private:
  std::string origin_;
  std::vector<std::pair<std::string, std::string>> special_;
  std::string bos_;
  jinja::Template tmpl_;
  std::optional<jinja::Template> tool_tmpl_;
};

// The messages of an OpenAI chat request or a messages file: a JSON array of message objects, or
// an object holding "messages" (and optionally "tools"). Throws ChatTemplateError naming `origin`
// and the offending field. `tools` receives "tools" of an object input (none otherwise).
jinja::Value parse_messages_json(const std::string& text, const std::string& origin, jinja::Value* tools = nullptr);
// A JSON array of tools (or null).
jinja::Value parse_tools_json(const std::string& text, const std::string& origin);

}  // namespace sharq::chat
