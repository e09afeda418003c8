// `sharq template MODEL_OR_TOKENIZER_DIR --messages M.json [--tools T.json] [--no-generation-prompt]
// [--enable-thinking true|false] [--ids]`: renders the model's chat template (chat/chat_template.h)
// for a conversation, as the server will, so that users can see and debug the exact prompt.
#pragma once

#include <string>

namespace sharq {

struct TemplateOptions {
  std::string path;           // model or tokenizer directory, tokenizer_config.json, or a .jinja file
  std::string messages_path;  // JSON array of messages, or an object with "messages" (and "tools")
  std::string tools_path;     // JSON array of tools (overrides "tools" of the messages file)
  std::string tokenizer_path; // for --ids: the tokenizer (default: the one found at `path`)
  bool add_generation_prompt = true;
  std::string enable_thinking;  // "", "true" or "false": the template variable enable_thinking
  bool ids = false;             // output {"text": ..., "ids": [...]} instead of the bare text
};

// The command's standard output: the rendered prompt byte for byte, or with `ids` one JSON line
// {"text": ..., "ids": [...]}. Errors (a missing or malformed file, no chat template, a template
// that fails) throw with a message naming the file or field.
std::string run_template(const TemplateOptions& o);

}  // namespace sharq
