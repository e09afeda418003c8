#include "sharq/serve/server.h"

#include <csignal>
#include <cstdio>
#include <ctime>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <thread>
#include <tuple>
#include <vector>

#include <pthread.h>
#include <sys/socket.h>

#include <fmt/format.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "sharq/chat/chat_template.h"
#include "sharq/chat/response_parser.h"
#include "sharq/core/json_checks.h"
#include "sharq/model/weights.h"
#include "sharq/quant/scheme.h"

namespace sharq {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

// cpp-httplib runs each connection as one task of a TaskQueue. Its ThreadPool starts a fixed
// number of threads up front; this one starts a thread when a connection finds none idle, up to
// `max` (then connections wait in order), so 500 concurrent streams need no 500 idle threads.
class GrowingThreadPool final : public httplib::TaskQueue {
 public:
  explicit GrowingThreadPool(size_t max) : max_(max) {}
  ~GrowingThreadPool() override { shutdown(); }

  void enqueue(std::function<void()> fn) override {
    {
      std::lock_guard lock(mu_);
      jobs_.push_back(std::move(fn));
      if (jobs_.size() > idle_ && threads_.size() < max_) threads_.emplace_back([this] { work(); });
    }
    cv_.notify_one();
  }

  void shutdown() override {  // finishes the queued connections, then joins every thread
    {
      std::lock_guard lock(mu_);
      if (stopping_) return;
      stopping_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : threads_) t.join();  // no thread is added once stopping_ is set
  }

 private:
  void work() {
    for (;;) {
      std::function<void()> fn;
      {
        std::unique_lock lock(mu_);
        ++idle_;
        cv_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
        --idle_;
        if (jobs_.empty()) return;  // stopping, nothing left
        fn = std::move(jobs_.front());
        jobs_.pop_front();
      }
      fn();
    }
  }

  const size_t max_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
  size_t idle_ = 0;
  bool stopping_ = false;
};

// An error the client caused or should know about: the OpenAI error object, with its status.
constexpr size_t kMaxBodyMiB = 64;  // request bodies: the limit, and the messages that state it

struct HttpError {
  int status;
  std::string message, type, param;
};

HttpError bad_request(std::string message, std::string param = {}) {
  return HttpError{400, std::move(message), "invalid_request_error", std::move(param)};
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void send_error(httplib::Response& res, const HttpError& e) {
  json err = {{"message", e.message}, {"type", e.type}, {"param", e.param.empty() ? json(nullptr) : json(e.param)},
              {"code", e.status}};
  res.status = e.status;
  res.set_content(dump(json{{"error", err}}), "application/json");  // a message quoting bad bytes stays a 4xx
}

const char* type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    case json::value_t::number_float: return "a number";
    default: return "an integer";
  }
}

// The typed readers of request fields: a missing or null field keeps the default; a wrong type
// or value is a 400 naming the field.
int64_t read_int(const json& body, const char* key, int64_t dflt, int64_t lo, const char* what) {
  const auto it = body.find(key);
  if (it == body.end() || it->is_null()) return dflt;
  if (!it->is_number_integer())
    throw bad_request(fmt::format("'{}' must be an integer, got {}", key, type_name(*it)), key);
  const int64_t v = it->is_number_unsigned() && it->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)
                        ? INT64_MAX : it->get<int64_t>();
  if (v < lo) throw bad_request(fmt::format("'{}' must be {}, got {}", key, what, v), key);
  return v;
}

double read_number(const json& body, const char* key, double dflt) {
  const auto it = body.find(key);
  if (it == body.end() || it->is_null()) return dflt;
  if (!it->is_number()) throw bad_request(fmt::format("'{}' must be a number, got {}", key, type_name(*it)), key);
  return it->get<double>();
}

bool read_bool(const json& body, const char* key, bool dflt) {
  const auto it = body.find(key);
  if (it == body.end() || it->is_null()) return dflt;
  if (!it->is_boolean()) throw bad_request(fmt::format("'{}' must be a boolean, got {}", key, type_name(*it)), key);
  return it->get<bool>();
}

std::vector<int32_t> token_ids(const json& arr, int64_t vocab) {
  std::vector<int32_t> ids;
  for (const json& t : arr) {
    if (!t.is_number_integer()) throw bad_request("'prompt' as token ids must hold integers only", "prompt");
    const int64_t v = t.get<int64_t>();
    if (v < 0 || v >= vocab)
      throw bad_request(fmt::format("prompt token id {} is outside the vocabulary (size {})", v, vocab), "prompt");
    ids.push_back(static_cast<int32_t>(v));
  }
  if (ids.empty()) throw bad_request("'prompt' is an empty list of token ids", "prompt");
  return ids;
}

struct ParsedCompletion {
  CompletionRequest request;
  bool stream = false, include_usage = false;
  bool prompt_opens_think = false;  // chat: the rendered prompt ends in <think> (streams start in the reasoning)
  std::optional<int64_t> logprobs;
};

void parse_options(const json& body, ParsedCompletion& p, bool chat);

json parse_body(const std::string& body_text) {
  json body;
  try {  // (the ordered parse's key bounds, and a key given twice is refused: json_checks.h)
    body = json_checks::parse_unique(body_text, json_checks::Limits{jinja::kMaxOrderedKeys, jinja::kMaxOrderedTotalKeys});
  } catch (const json::exception& e) {  // parse_error, and out_of_range for a number beyond double (1e400)
    throw bad_request(fmt::format("the request body is not valid JSON: {}", e.what()));
  } catch (const std::invalid_argument& e) {
    throw bad_request(fmt::format("the request body: {}", e.what()));
  }
  if (!body.is_object()) throw bad_request(fmt::format("the request body must be a JSON object, got {}", type_name(body)));
  return body;
}

void check_model(const json& body, const std::string& model_name) {
  if (const auto m = body.find("model"); m != body.end() && !m->is_null()) {
    if (!m->is_string()) throw bad_request(fmt::format("'model' must be a string, got {}", type_name(*m)), "model");
    if (m->get<std::string>() != model_name)
      throw HttpError{404, fmt::format("The model `{}` does not exist (this server serves `{}`).", m->get<std::string>(),
                                       model_name), "NotFoundError", "model"};
  }
}

ParsedCompletion parse_completion(const std::string& body_text, const Tokenizer& tok, int64_t vocab,
                                  const std::string& model_name) {
  const json body = parse_body(body_text);
  ParsedCompletion p;
  check_model(body, model_name);
  const auto pr = body.find("prompt");
  if (pr == body.end() || pr->is_null()) throw bad_request("'prompt' is required", "prompt");
  if (pr->is_string()) {
    p.request.prompt = encode_prompt(tok, pr->get<std::string>());
  } else if (pr->is_array() && !pr->empty() && (*pr)[0].is_number_integer()) {
    p.request.prompt = token_ids(*pr, vocab);
  } else if (pr->is_array() && pr->size() == 1 && (*pr)[0].is_string()) {
    p.request.prompt = encode_prompt(tok, (*pr)[0].get<std::string>());
  } else if (pr->is_array() && pr->size() == 1 && (*pr)[0].is_array()) {
    p.request.prompt = token_ids((*pr)[0], vocab);
  } else if (pr->is_array() && pr->size() > 1) {
    throw bad_request("only one prompt per request is supported (send several requests)", "prompt");
  } else {
    throw bad_request(fmt::format("'prompt' must be a string or a list of token ids, got {}", type_name(*pr)), "prompt");
  }
  p.request.max_tokens = read_int(body, "max_tokens", 16, 1, "at least 1");
  parse_options(body, p, /*chat=*/false);
  return p;
}

// The sampling, stop, streaming and logprob fields shared by both endpoints; options that would
// change the result and that this server does not implement are refused, not ignored.
void parse_options(const json& body, ParsedCompletion& p, bool chat) {
  const double temperature = read_number(body, "temperature", 1.0);
  if (!(temperature >= 0.0 && temperature <= 1e6))
    throw bad_request(fmt::format("'temperature' must be in [0, 1e6], got {}", temperature), "temperature");
  const double top_p = read_number(body, "top_p", 1.0);
  if (!(top_p > 0.0 && top_p <= 1.0)) throw bad_request(fmt::format("'top_p' must be in (0, 1], got {}", top_p), "top_p");
  p.request.sampling.temperature = static_cast<float>(temperature);
  p.request.sampling.top_p = static_cast<float>(top_p);
  if (const auto s = body.find("seed"); s != body.end() && !s->is_null()) {
    if (!s->is_number_integer()) throw bad_request(fmt::format("'seed' must be an integer, got {}", type_name(*s)), "seed");
    p.request.sampling.seed = s->is_number_unsigned() ? s->get<uint64_t>() : static_cast<uint64_t>(s->get<int64_t>());
  } else {
    p.request.sampling.seed = std::random_device{}();  // OpenAI: no seed, a fresh draw each time
  }
  if (const auto s = body.find("stop"); s != body.end() && !s->is_null()) {
    if (s->is_string()) p.request.stop = {s->get<std::string>()};
    else if (s->is_array()) {
      for (const json& x : *s) {
        if (!x.is_string()) throw bad_request("'stop' must be a string or a list of strings", "stop");
        p.request.stop.push_back(x.get<std::string>());
      }
    } else {
      throw bad_request(fmt::format("'stop' must be a string or a list of strings, got {}", type_name(*s)), "stop");
    }
    for (const std::string& x : p.request.stop)
      if (x.empty()) throw bad_request("'stop' holds an empty string", "stop");
  }
  p.request.ignore_eos = read_bool(body, "ignore_eos", false);
  p.stream = read_bool(body, "stream", false);
  if (const auto so = body.find("stream_options"); so != body.end() && !so->is_null()) {
    if (!so->is_object()) throw bad_request("'stream_options' must be an object", "stream_options");
    p.include_usage = read_bool(*so, "include_usage", false);
  }
  if (chat) {  // chat: "logprobs" a boolean, "top_logprobs" 0 (the alternatives are not computed)
    if (read_bool(body, "logprobs", false)) p.logprobs = 0;
    if (read_int(body, "top_logprobs", 0, 0, ">= 0") != 0)
      throw bad_request("only top_logprobs = 0 is supported (the chosen token's logprob)", "top_logprobs");
  } else if (const auto lp = body.find("logprobs"); lp != body.end() && !lp->is_null()) {
    if (lp->is_boolean()) {
      if (lp->get<bool>()) p.logprobs = 0;
    } else {
      p.logprobs = read_int(body, "logprobs", 0, 0, ">= 0");
      if (*p.logprobs > 0)  // N > 0 asks for the N most likely alternatives per position, which are not computed
        throw bad_request(fmt::format("'logprobs' {} is not supported: only 0 (the chosen tokens' log-probabilities; "
                                      "the alternatives are not computed)", *p.logprobs),
                          "logprobs");
    }
  }
  // fields that change nothing here, type-checked as OpenAI does
  if (const auto u = body.find("user"); u != body.end() && !u->is_null() && !u->is_string())
    throw bad_request(fmt::format("'user' must be a string, got {}", type_name(*u)), "user");
  if (chat) read_bool(body, "parallel_tool_calls", true);
  // options that would change the result and that this server does not implement: refused, not ignored
  if (read_int(body, "n", 1, 1, "at least 1") != 1) throw bad_request("only n = 1 is supported", "n");
  if (read_int(body, "best_of", 1, 1, "at least 1") != 1) throw bad_request("only best_of = 1 is supported", "best_of");
  if (read_bool(body, "echo", false)) throw bad_request("echo is not supported", "echo");
  for (const char* k : {"presence_penalty", "frequency_penalty"})
    if (read_number(body, k, 0.0) != 0.0) throw bad_request(fmt::format("'{}' is not supported (only 0)", k), k);
  if (const auto s = body.find("suffix"); s != body.end() && !s->is_null()) throw bad_request("'suffix' is not supported", "suffix");
  if (const auto s = body.find("logit_bias"); s != body.end() && !s->is_null() && !s->empty())
    throw bad_request("'logit_bias' is not supported", "logit_bias");
  // vLLM's sampling extras: accepted only at the values that change nothing
  if (const int64_t k = read_int(body, "top_k", -1, std::numeric_limits<int64_t>::min(), ""); k != -1 && k != 0)
    throw bad_request(fmt::format("'top_k' {} is not supported (only -1 or 0: no top-k cut)", k), "top_k");
  if (read_number(body, "min_p", 0.0) != 0.0) throw bad_request("'min_p' is not supported (only 0)", "min_p");
  if (read_number(body, "repetition_penalty", 1.0) != 1.0)
    throw bad_request("'repetition_penalty' is not supported (only 1)", "repetition_penalty");
  if (read_int(body, "min_tokens", 0, 0, ">= 0") != 0) throw bad_request("'min_tokens' is not supported (only 0)", "min_tokens");
  if (const auto s = body.find("stop_token_ids"); s != body.end() && !s->is_null() && !(s->is_array() && s->empty()))
    throw bad_request("'stop_token_ids' is not supported (use 'stop' strings)", "stop_token_ids");
  if (read_bool(body, "use_beam_search", false)) throw bad_request("beam search is not supported", "use_beam_search");
  for (const char* k : {"guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs"})
    if (const auto s = body.find(k); s != body.end() && !s->is_null())
      throw bad_request(fmt::format("'{}' (constrained decoding) is not supported", k), k);
  if (const auto rf = body.find("response_format"); rf != body.end() && !rf->is_null()) {
    const auto t = rf->is_object() ? rf->find("type") : rf->end();
    if (!rf->is_object() || t == rf->end() || !t->is_string() || t->get<std::string>() != "text")
      throw bad_request("only response_format {\"type\": \"text\"} is supported (no JSON mode)", "response_format");
  }
  if (chat)
    if (const auto tc = body.find("tool_choice"); tc != body.end() && !tc->is_null() && !(tc->is_string() && tc->get<std::string>() == "auto"))
      throw bad_request("only tool_choice \"auto\" is supported (the model decides whether to call a tool)", "tool_choice");
}

// Each token's text as the completion's text holds it: decode_step after the token before it (prev, the
// prompt's last token for the first), which drops the leading space of a piece that follows BOS as
// the stream's text does, so that text[text_offset[i]:] starts with tokens[i]. prev is advanced.
json logprobs_json(const Tokenizer& tok, int32_t& prev, const std::vector<int32_t>& toks, const std::vector<float>& lps,
                   size_t text_offset) {
  json tokens = json::array(), values = json::array(), offsets = json::array();
  for (size_t i = 0; i < toks.size(); ++i) {
    const std::string piece = tok.decode_step(prev, toks[i]);
    prev = toks[i];
    tokens.push_back(piece);
    values.push_back(lps[i]);
    offsets.push_back(text_offset);
    text_offset += piece.size();
  }
  return json{{"tokens", tokens}, {"token_logprobs", values}, {"top_logprobs", nullptr}, {"text_offset", offsets}};
}

// An OpenAI chat request: the messages rendered by the model's chat template (content null -> "",
// a list of text parts -> their concatenation, as vLLM normalizes them), tools, and
// chat_template_kwargs (e.g. enable_thinking) as template variables; then the shared options.
struct ParsedChat {
  ParsedCompletion c;
  bool tools = false;
};

ParsedChat parse_chat(const std::string& body_text, const chat::ChatTemplate& tmpl, const Tokenizer& tok,
                      const std::string& model_name, int64_t max_model_len) {
  const json body = parse_body(body_text);  // (the options; the messages, tools and template
  check_model(body, model_name);            //  variables keep their key order: ordered_json below)
  ParsedChat p;
  using ojson = nlohmann::ordered_json;
  ojson ob;  // (parse_body above already refused malformed JSON)
  try {
    ob = jinja::parse_ordered_json(body_text);
  } catch (const std::invalid_argument& e) {
    throw bad_request(fmt::format("the request body holds {}", e.what()));
  }
  auto odump = [](const ojson& j) { return j.dump(-1, ' ', false, ojson::error_handler_t::replace); };
  auto it = ob.find("messages");
  if (it == ob.end() || !it->is_array() || it->empty())
    throw bad_request("'messages' must be a non-empty list of message objects", "messages");
  for (ojson& m : *it) {
    if (!m.is_object()) throw bad_request("every message must be an object", "messages");
    const auto role = m.find("role");
    if (role == m.end() || !role->is_string())
      throw bad_request("every message needs a string 'role'", "messages");
    if (const std::string r = role->get<std::string>();
        r != "system" && r != "user" && r != "assistant" && r != "tool" && r != "developer" && r != "function")
      throw bad_request(fmt::format("message role '{}' is not one of system, user, assistant, tool, developer, function", r),
                        "messages");
    auto c = m.find("content");
    if (c == m.end() || c->is_null()) {
      m["content"] = "";
    } else if (c->is_array()) {
      std::string text;
      for (const ojson& part : *c) {
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
          throw bad_request("message content parts must be {\"type\": \"text\", \"text\": ...} (no images or audio)",
                            "messages");
        text += part["text"].get<std::string>();
      }
      *c = text;
    } else if (!c->is_string()) {
      throw bad_request("message content must be a string, a list of text parts or null", "messages");
    }
  }
  chat::ChatInput in;
  try {
    in.messages = chat::parse_messages_json(odump(*it), "the request's messages");
  } catch (const chat::ChatTemplateError& e) {
    throw bad_request(e.what(), "messages");
  }
  if (auto t = ob.find("tools"); t != ob.end() && !t->is_null()) {
    if (!t->is_array()) throw bad_request("'tools' must be a list of {\"type\": \"function\", \"function\": {...}}", "tools");
    for (const ojson& tool : *t) {
      const auto ty = tool.is_object() ? tool.find("type") : tool.end();
      const auto fn = tool.is_object() ? tool.find("function") : tool.end();
      if (ty == tool.end() || *ty != "function" || fn == tool.end() || !fn->is_object() || !fn->contains("name") ||
          !(*fn)["name"].is_string())
        throw bad_request("every tool must be {\"type\": \"function\", \"function\": {\"name\": string, ...}}", "tools");
    }
    try {
      in.tools = chat::parse_tools_json(odump(*t), "the request's tools");
    } catch (const chat::ChatTemplateError& e) {
      throw bad_request(e.what(), "tools");
    }
    p.tools = !t->empty();
  }
  if (auto k = ob.find("chat_template_kwargs"); k != ob.end() && !k->is_null()) {
    if (!k->is_object()) throw bad_request("'chat_template_kwargs' must be an object", "chat_template_kwargs");
    for (auto kv = k->begin(); kv != k->end(); ++kv) in.extra.emplace_back(kv.key(), jinja::Value::from_json(kv.value()));
  }
  in.add_generation_prompt = read_bool(body, "add_generation_prompt", true);
  std::string text;
  try {
    text = tmpl.render(in);
  } catch (const std::exception& e) {  // the template's raise_exception, or a render error: the request's fault
    throw bad_request(fmt::format("the chat template refused the messages: {}", e.what()), "messages");
  }
  try {
    p.c.request.prompt = tmpl.encode(tok, text);
  } catch (const std::invalid_argument& e) {  // a tokenizer that refuses the text (token ids only)
    throw bad_request(fmt::format("the rendered chat prompt cannot be tokenized: {}", e.what()), "messages");
  }
  // a template that ends the prompt inside an opened <think> (reasoning models): the answer starts there
  {
    size_t end = text.find_last_not_of(" \t\r\n");
    p.c.prompt_opens_think = end != std::string::npos && end + 1 >= 7 && text.compare(end + 1 - 7, 7, "<think>") == 0;
  }
  if (p.c.request.prompt.empty()) throw bad_request("the chat template rendered an empty prompt", "messages");
  // max_completion_tokens (or the older max_tokens); default: what the context leaves
  const int64_t room = std::max<int64_t>(1, max_model_len - static_cast<int64_t>(p.c.request.prompt.size()));
  p.c.request.max_tokens = body.contains("max_completion_tokens") && !body["max_completion_tokens"].is_null()
                               ? read_int(body, "max_completion_tokens", room, 1, "at least 1")
                               : read_int(body, "max_tokens", room, 1, "at least 1");
  parse_options(body, p.c, /*chat=*/true);
  return p;
}

// The chat logprobs object: {"content": [{"token", "logprob", "bytes", "top_logprobs": []}]}.
json chat_logprobs_json(const Tokenizer& tok, const std::vector<int32_t>& toks, const std::vector<float>& lps) {
  json content = json::array();
  for (size_t i = 0; i < toks.size(); ++i) {
    const std::string piece = tok.decode({toks[i]});
    json bytes = json::array();
    for (unsigned char ch : piece) bytes.push_back(static_cast<int>(ch));
    content.push_back(json{{"token", piece}, {"logprob", lps[i]}, {"bytes", bytes}, {"top_logprobs", json::array()}});
  }
  return json{{"content", content}};
}

int64_t unix_now() { return static_cast<int64_t>(std::time(nullptr)); }

}  // namespace

struct HttpServer::Impl {
  Scheduler& sched;
  const Tokenizer& tok;
  ServeOptions opt;
  httplib::Server http;
  std::atomic<bool> draining{false};
  std::atomic<int64_t> next_id{0};
  int listen_fd = -1;
  const int64_t created = unix_now();
  const chat::ChatTemplate* chat = nullptr;  // the model's chat template (none: /v1/chat/completions is a 400)

  Impl(Scheduler& s, const Tokenizer& t, ServeOptions o, const chat::ChatTemplate* c)
      : sched(s), tok(t), opt(std::move(o)), chat(c) {}

  bool authorized(const httplib::Request& req, httplib::Response& res) const {
    if (opt.api_key.empty()) return true;
    if (req.get_header_value("Authorization") == "Bearer " + opt.api_key) return true;
    send_error(res, HttpError{401, "a valid API key is required: send 'Authorization: Bearer <key>'", "authentication_error", ""});
    return false;
  }

  void completions(const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req, res)) return;
    serve(res, [&] { return std::make_pair(parse_completion(req.body, tok, tok.vocab_size(), opt.model_name), false); },
          false);
  }

  void chat_completions(const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req, res)) return;
    if (!chat)
      return send_error(res, bad_request("this model has no chat template (chat_template.jinja or tokenizer_config.json's "
                                         "chat_template; or start the server with --chat-template FILE): use "
                                         "/v1/completions", "messages"));
    serve(res, [&] {
      ParsedChat c = parse_chat(req.body, *chat, tok, opt.model_name, sched.options().max_model_len);
      return std::make_pair(std::move(c.c), c.tools);
    }, true);
  }

  // Parses (parse() returns the request and whether tools were given; it throws HttpError or
  // InvalidRequest), submits, and answers: one JSON body, or an
  // SSE stream of chunks. chat: the chat.completion objects; the final text is parsed as vLLM's
  // qwen3 reasoning and hermes tool parsers do (streams: incrementally, chat::Qwen3StreamParser).
  template <class Parse>
  void serve(httplib::Response& res, Parse&& parse, bool chat_api) {
    if (draining) return send_error(res, HttpError{503, "the server is shutting down", "service_unavailable", ""});
    ParsedCompletion p;
    bool tools = false;
    std::shared_ptr<RequestStream> stream;
    try {
      std::tie(p, tools) = parse();
      stream = sched.submit(p.request);
    } catch (const HttpError& e) {
      return send_error(res, e);
    } catch (const InvalidRequest& e) {
      return send_error(res, bad_request(e.what()));
    } catch (const QueueFull& e) {
      return send_error(res, HttpError{draining ? 503 : 429, e.what(), "rate_limit_error", ""});
    }
    const std::string id = fmt::format("{}-{}", chat_api ? "chatcmpl" : "cmpl", next_id++);
    const int64_t created_at = unix_now();
    const char* object = chat_api ? "chat.completion" : "text_completion";
    auto usage = [](const StreamDelta& d) {
      return json{{"prompt_tokens", d.prompt_tokens}, {"completion_tokens", d.completion_tokens},
                  {"total_tokens", d.prompt_tokens + d.completion_tokens}};
    };
    if (!p.stream) {
      std::string text;
      std::vector<int32_t> toks;
      std::vector<float> lps;
      StreamDelta d;
      while (!d.finished) {
        d = stream->wait_delta(1000ms);
        text += d.text;
        toks.insert(toks.end(), d.tokens.begin(), d.tokens.end());
        lps.insert(lps.end(), d.logprobs.begin(), d.logprobs.end());
      }
      if (d.finish_reason == "error") return send_error(res, HttpError{500, d.error, "internal_error", ""});
      json choice;
      if (chat_api) {
        const chat::ParsedResponse r = chat::parse_qwen3_response(text, true, tools);
        const std::string call_prefix = fmt::format("call_{}_", id);
        choice = {{"index", 0}, {"message", json::parse(chat::response_message_json(r, call_prefix))},
                  {"finish_reason", r.tool_calls.empty() ? d.finish_reason : std::string("tool_calls")},
                  {"logprobs", p.logprobs ? chat_logprobs_json(tok, toks, lps) : json(nullptr)}};
      } else {
        int32_t prev = p.request.prompt.back();
        choice = {{"index", 0}, {"text", text}, {"finish_reason", d.finish_reason},
                  {"logprobs", p.logprobs ? logprobs_json(tok, prev, toks, lps, 0) : json(nullptr)}};
      }
      json body = {{"id", id}, {"object", object}, {"created", created_at}, {"model", opt.model_name},
                   {"choices", json::array({choice})}, {"usage", usage(d)}};
      res.set_content(dump(body), "application/json");
      return;
    }
    res.set_header("Cache-Control", "no-cache");
    auto offset = std::make_shared<size_t>(0);
    auto prev = std::make_shared<int32_t>(p.request.prompt.back());  // logprobs_json's token before the next
    auto first = std::make_shared<bool>(true);
    // chat streams: the reasoning and tool-call parse, incrementally (chat::Qwen3StreamParser)
    auto parser = std::make_shared<chat::Qwen3StreamParser>(tools, p.prompt_opens_think);
    Scheduler* sched_ptr = &sched;
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, p, stream, id, created_at, offset, prev, first, chat_api, usage, parser](size_t, httplib::DataSink& sink) {
          auto event = [&](const json& j) {
            const std::string s = "data: " + dump(j) + "\n\n";
            return sink.write(s.data(), s.size());
          };
          const char* chunk_object = chat_api ? "chat.completion.chunk" : "text_completion";
          auto chunk = [&](const std::string& text, const json& logprobs, const json& finish,
                           const chat::StreamPiece* piece = nullptr) {
            json c;
            if (chat_api) {
              json delta = json::object();
              if (*first) delta["role"] = "assistant";
              const std::string& content = piece ? piece->content : text;
              if (!content.empty() || *first) delta["content"] = content;
              if (piece && !piece->reasoning.empty()) delta["reasoning_content"] = piece->reasoning;
              if (piece && !piece->tool_calls.empty())  // the ids of the non-streamed message
                delta["tool_calls"] = json::parse(chat::tool_calls_json(
                    piece->tool_calls, parser->tool_calls_sent() - piece->tool_calls.size(), fmt::format("call_{}_", id), true));
              *first = false;
              c = {{"index", 0}, {"delta", delta}, {"logprobs", logprobs}, {"finish_reason", finish}};
            } else {
              c = {{"index", 0}, {"text", text}, {"logprobs", logprobs}, {"finish_reason", finish}};
            }
            return json{{"id", id}, {"object", chunk_object}, {"created", created_at}, {"model", opt.model_name},
                        {"choices", json::array({c})}};
          };
          const StreamDelta d = stream->wait_delta(500ms);
          if (!d.text.empty() || !d.tokens.empty()) {
            json lp = nullptr;
            if (p.logprobs) lp = chat_api ? chat_logprobs_json(tok, d.tokens, d.logprobs) : logprobs_json(tok, *prev, d.tokens, d.logprobs, *offset);
            *offset += d.text.size();
            if (chat_api) {
              const chat::StreamPiece piece = parser->feed(d.text);
              // text held back (a tag in the making) sends nothing yet, unless logprobs or the role must go
              if ((!piece.empty() || !lp.is_null() || *first) && !event(chunk("", lp, nullptr, &piece))) return false;
            } else if (!event(chunk(d.text, lp, nullptr))) {
              return false;  // the client left: the releaser cancels
            }
          } else if (!d.finished) {
            static const char kKeepAlive[] = ": keep-alive\n\n";  // finds a client that left while we wait
            return sink.write(kKeepAlive, sizeof(kKeepAlive) - 1);
          }
          if (!d.finished) return true;
          if (d.finish_reason == "error") {
            event(json{{"error", {{"message", d.error}, {"type", "internal_error"}, {"param", nullptr}, {"code", 500}}}});
          } else {
            std::string finish = d.finish_reason;
            if (chat_api) {
              const chat::StreamPiece rest = parser->finish();
              if (!rest.empty() && !event(chunk("", nullptr, nullptr, &rest))) return false;
              if (parser->tool_calls_sent() > 0) finish = "tool_calls";
            }
            if (!event(chunk("", nullptr, finish))) return false;
            if (p.include_usage) {
              json u = {{"id", id}, {"object", chunk_object}, {"created", created_at}, {"model", opt.model_name},
                        {"choices", json::array()}, {"usage", usage(d)}};
              if (!event(u)) return false;
            }
          }
          static const char kDone[] = "data: [DONE]\n\n";
          if (!sink.write(kDone, sizeof(kDone) - 1)) return false;
          sink.done();
          return true;
        },
        [sched_ptr, stream](bool) { sched_ptr->cancel(stream); });  // no-op once finished
  }

  void metrics(httplib::Response& res) const {
    const SchedulerMetrics m = sched.metrics();
    std::string out;
    auto gauge = [&](const char* name, const char* help, double v, const char* type = "gauge") {
      out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{} {}\n", name, help, name, type, name, v);
    };
    auto histogram = [&](const char* name, const char* help, const std::vector<double>& bounds,
                         const std::vector<int64_t>& buckets, double sum, int64_t count) {
      out += fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
      for (size_t i = 0; i < bounds.size(); ++i) out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds[i], buckets[i]);
      out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, count, name, sum, name, count);
    };
    gauge("sharq_num_requests_waiting", "Requests waiting to be scheduled.", static_cast<double>(m.waiting));
    gauge("sharq_num_requests_running", "Requests holding a sequence in the executor.", static_cast<double>(m.running));
    gauge("sharq_kv_blocks_used", "KV-cache blocks in use.", static_cast<double>(m.kv_blocks_used));
    gauge("sharq_kv_blocks_total", "KV-cache blocks in all.", static_cast<double>(m.kv_blocks_total));
    gauge("sharq_generation_tokens_per_second", "Generated tokens per second over the last 10 s.", m.tokens_per_second);
    gauge("sharq_requests_finished_total", "Requests that ended (stop, length or error).",
          static_cast<double>(m.requests_finished), "counter");
    gauge("sharq_requests_cancelled_total", "Requests cancelled (a client that left).",
          static_cast<double>(m.requests_cancelled), "counter");
    gauge("sharq_requests_rejected_total", "Requests refused because the queue was full.",
          static_cast<double>(m.requests_rejected), "counter");
    gauge("sharq_preemptions_total", "Sequences preempted (recomputed) for want of KV blocks.",
          static_cast<double>(m.preemptions), "counter");
    gauge("sharq_prompt_tokens_total", "Tokens prefilled (recomputation included).", static_cast<double>(m.prompt_tokens),
          "counter");
    gauge("sharq_generation_tokens_total", "Tokens generated.", static_cast<double>(m.generation_tokens), "counter");
    histogram("sharq_time_to_first_token_seconds", "Time from arrival to the first generated token.",
              scheduler_ttft_bounds(), m.ttft_buckets, m.ttft_sum, m.ttft_count);
    histogram("sharq_time_per_output_token_seconds", "Time between two generated tokens of a request.",
              scheduler_tpot_bounds(), m.tpot_buckets, m.tpot_sum, m.tpot_count);
    res.set_content(out, "text/plain; version=0.0.4");
  }
};

HttpServer::HttpServer(Scheduler& scheduler, const Tokenizer& tokenizer, ServeOptions options,
                       const chat::ChatTemplate* chat_template)
    : impl_(std::make_unique<Impl>(scheduler, tokenizer, std::move(options), chat_template)) {
  Impl& s = *impl_;
  const SchedulerOptions& so = scheduler.options();
  const size_t max_threads = static_cast<size_t>(
      s.opt.max_connections > 0 ? s.opt.max_connections : so.max_num_seqs + so.max_queue + 64);
  s.http.new_task_queue = [max_threads] { return new GrowingThreadPool(max_threads); };
  s.http.set_socket_options([&s](socket_t fd) {  // SO_REUSEADDR only: a port in use is an error, not shared
    int yes = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    s.listen_fd = fd;
  });
  s.http.set_keep_alive_max_count(1000);
  // An idle connection holds a thread; shutdown waits for it. cpp-httplib waits this long for a new
  // connection's FIRST request too: at 2 s, a client that connected and was slow to send under load
  // (500 Python client threads on 2 cores in serve_e2e.500_concurrent_streams, next to another test)
  // found its connection closed (a broken pipe). 5 s, as uvicorn's default (vLLM's server).
  s.http.set_keep_alive_timeout(5);
  s.http.set_payload_max_length(kMaxBodyMiB << 20);
  // Each route once: registered here and kept in method_of, from which the error handler tells a known
  // path asked with the other method (405, with Allow) from an unknown one (404).
  auto method_of = std::make_shared<std::map<std::string, std::string>>();
  auto route = [&](const std::string& method, const std::string& path, httplib::Server::Handler handler) {
    (*method_of)[path] = method;
    if (method == "POST") s.http.Post(path, std::move(handler));
    else s.http.Get(path, std::move(handler));
  };
  route("POST", "/v1/completions", [&s](const httplib::Request& req, httplib::Response& res) { s.completions(req, res); });
  route("POST", "/v1/chat/completions",
        [&s](const httplib::Request& req, httplib::Response& res) { s.chat_completions(req, res); });
  route("GET", "/v1/models", [&s](const httplib::Request& req, httplib::Response& res) {
    if (!s.authorized(req, res)) return;
    json m = {{"id", s.opt.model_name}, {"object", "model"}, {"created", s.created}, {"owned_by", "sharq"},
              {"max_model_len", s.sched.options().max_model_len}};
    res.set_content(dump(json{{"object", "list"}, {"data", json::array({m})}}), "application/json");
  });
  route("GET", "/health", [&s](const httplib::Request&, httplib::Response& res) {
    if (s.draining) return send_error(res, HttpError{503, "the server is shutting down", "service_unavailable", ""});
    res.set_content("{}", "application/json");
  });
  route("GET", "/metrics", [&s](const httplib::Request&, httplib::Response& res) { s.metrics(res); });
  // A chunked body has no length to check against the payload limit before it is read (httplib reads
  // it all): refused before routing reads any of it.
  s.http.set_pre_routing_handler([](const httplib::Request& req, httplib::Response& res) {
    const std::string te = req.get_header_value("Transfer-Encoding");
    if (te.empty()) return httplib::Server::HandlerResponse::Unhandled;
    send_error(res, HttpError{411,
                              fmt::format("chunked request bodies are not accepted: send a Content-Length (at most {} MiB)",
                                          kMaxBodyMiB),
                              "invalid_request_error", ""});
    res.set_header("Connection", "close");
    return httplib::Server::HandlerResponse::Handled;
  });
  s.http.set_error_handler([method_of](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status != 404) {  // the HTTP layer's own refusals: the same JSON error object as every other answer
      const std::string what = res.status == 413   ? fmt::format("the request body is larger than {} MiB", kMaxBodyMiB)
                               : res.status == 414 ? "the request URI is too long"
                               : res.status == 400 ? "malformed HTTP request"
                                                   : "the request could not be served";
      return send_error(res, HttpError{res.status, what, "invalid_request_error", ""});
    }
    // a known path with the other method: 405 with the method it takes (RFC 9110: an Allow header)
    if (const auto m = method_of->find(req.path); m != method_of->end() && m->second != req.method) {
      res.set_header("Allow", m->second);
      return send_error(res, HttpError{405, fmt::format("{} takes {}, not {}", req.path, m->second, req.method),
                                       "invalid_request_error", ""});
    }
    send_error(res, HttpError{404, fmt::format("no route {} {}", req.method, req.path), "not_found_error", ""});
  });
  s.http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    send_error(res, HttpError{500, what, "internal_error", ""});
  });
}

HttpServer::~HttpServer() = default;

int HttpServer::bind() {
  Impl& s = *impl_;
  const int port = s.opt.port == 0 ? s.http.bind_to_any_port(s.opt.host)
                                   : (s.http.bind_to_port(s.opt.host, s.opt.port) ? s.opt.port : -1);
  if (port < 0) throw std::runtime_error(fmt::format("serve: cannot listen on {}:{} (in use, or not an address of this "
                                                     "machine)", s.opt.host, s.opt.port));
  // cpp-httplib listens with a backlog of 5, compiled into the library; Linux lets a second
  // listen() on the same socket raise it, so that a burst of connections is not dropped
  if (s.listen_fd >= 0) ::listen(s.listen_fd, s.opt.listen_backlog);
  return port;
}

void HttpServer::listen() { impl_->http.listen_after_bind(); }

void HttpServer::shutdown() {
  impl_->draining = true;
  impl_->http.stop();
}

// ---- the command

// The chat template: --chat-template, else the model's or the tokenizer's directory when it has one
// (chat_template.jinja, or tokenizer_config.json with "chat_template"); none otherwise. A template
// that does not parse or render is an error here, at start-up, naming the file.
std::optional<chat::ChatTemplate> load_chat_template(const ServeCommandOptions& o) {
  namespace fs = std::filesystem;
  std::string path = o.chat_template;
  if (path.empty()) {
    for (const std::string& cand : {o.tokenizer, o.model}) {
      if (cand.empty()) continue;
      const fs::path dir = fs::is_directory(cand) ? fs::path(cand) : fs::path(cand).parent_path();
      if (fs::exists(dir / "chat_template.jinja")) {
        path = dir.string();
        break;
      }
      if (fs::exists(dir / "tokenizer_config.json")) {
        std::ifstream f(dir / "tokenizer_config.json");
        const nlohmann::json cfg = nlohmann::json::parse(f, nullptr, /*allow_exceptions=*/false);
        if (cfg.is_object() && cfg.contains("chat_template") && !cfg["chat_template"].is_null()) {
          path = dir.string();
          break;
        }
      }
    }
    if (path.empty()) return std::nullopt;
  }
  std::optional<chat::ChatTemplate> t = chat::ChatTemplate::load(path);
  t->validate();
  return t;
}

int run_serve(const ServeCommandOptions& o, const ExecutorFactory& make_executor,
              const SyntheticExecutorFactory& make_synthetic) {
  const Scheme scheme = parse_scheme(o.scheme);
  const std::optional<chat::ChatTemplate> chat_template = load_chat_template(o);  // before the (slow) model load
  std::optional<ModelWeights> weights;  // outlives the executor (the CPU runtime reads it in place)
  std::unique_ptr<Executor> ex;
  std::unique_ptr<Tokenizer> tok;
  if (!o.synthetic.empty()) {
    if (!make_synthetic)
      throw std::invalid_argument("--synthetic: random weights are generated by the GPU engine; add --device cuda");
    ex = make_synthetic(o.synthetic, scheme);
    tok = o.tokenizer.empty() ? make_token_id_tokenizer(ex->config().vocab_size)
                              : load_tokenizer_for(o.tokenizer, o.tokenizer, ex->config());
  } else {
    weights.emplace(load_model_weights(o.model, LoadOptions{o.allow_nonfinite}));
    tok = load_tokenizer_for(o.model, o.tokenizer, weights->config);
    ex = make_executor(*weights, scheme);
  }
  Scheduler sched(*ex, *tok, o.scheduler);
  ServeOptions so = o.server;
  so.model_name = !o.served_model_name.empty() ? o.served_model_name
                  : o.synthetic.empty()        ? o.model
                                               : "synthetic-" + o.synthetic;
  HttpServer server(sched, *tok, so, chat_template ? &*chat_template : nullptr);

  // SIGTERM/SIGINT are taken by sigwait on this thread only (blocked in every thread started
  // below); a client that leaves must not kill the server with SIGPIPE
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  const int port = server.bind();
  std::thread engine([&] { sched.run(); });
  std::atomic<bool> http_done{false};
  std::thread http([&] {
    server.listen();
    http_done = true;
  });
  std::fprintf(stderr, "sharq: serving %s on http://%s:%d (max_model_len %lld, max_num_seqs %lld, %lld KV blocks; chat "
               "template: %s)\n", so.model_name.c_str(), so.host.c_str(), port,
               static_cast<long long>(sched.options().max_model_len), static_cast<long long>(sched.options().max_num_seqs),
               static_cast<long long>(sched.options().kv_blocks),
               chat_template ? chat_template->origin().c_str() : "none: /v1/chat/completions answers 400");
  std::fflush(stderr);
  int sig = 0;
  const timespec tick{0, 200 * 1000 * 1000};
  while (!http_done) {
    sig = sigtimedwait(&stop_signals, nullptr, &tick);
    if (sig > 0) break;
  }
  if (sig > 0) std::fprintf(stderr, "sharq: %s: draining in-flight requests\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  server.shutdown();
  http.join();   // every connection finished: their requests drained through the running engine
  sched.stop(/*drain=*/true);
  engine.join();
  std::fprintf(stderr, "sharq: server stopped\n");
  return 0;
}

}  // namespace sharq
