// `sharq serve`: an OpenAI-compatible HTTP server in front of the scheduler (runtime/scheduler.h).
// Its own library (sharq_serve), so that the core library takes no HTTP dependency.
//
// Threads (docs/serve.md):
//   - one engine thread owns the executor and runs Scheduler::run();
//   - cpp-httplib's accept thread, and one thread per open connection (a pool that grows on
//     demand up to ServeOptions::max_connections; connections beyond it wait for a free thread).
//     A connection thread only parses, submits to the scheduler and reads its request's stream;
//     it never touches the executor;
//   - the caller's thread waits for SIGTERM/SIGINT (run_serve).
// Endpoints: POST /v1/completions and /v1/chat/completions (SSE streaming or not), GET /v1/models,
// /health, /metrics.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "sharq/chat/chat_template.h"
#include "sharq/runtime/scheduler.h"

namespace sharq {

struct ServeOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                // 0: an ephemeral port (HttpServer::bind returns it)
  std::string api_key;            // non-empty: /v1/* needs "Authorization: Bearer <key>"
  std::string model_name;         // the `model` of /v1/models and of every response
  int64_t max_connections = 0;    // connection threads at most; 0: max_num_seqs + max_queue + 64
  int listen_backlog = 1024;      // the kernel's accept queue (cpp-httplib's own is 5)
};

class HttpServer {
 public:
  // chat_template: the model's chat template for /v1/chat/completions (null: that endpoint answers
  // 400); it must outlive the server.
  HttpServer(Scheduler& scheduler, const Tokenizer& tokenizer, ServeOptions options,
             const chat::ChatTemplate* chat_template = nullptr);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds host:port; returns the port (the ephemeral one for port 0). Throws std::runtime_error
  // naming the address when it cannot.
  int bind();
  // Serves until shutdown(); returns once every open connection has finished (in-flight requests
  // drain: the scheduler must keep running until then).
  void listen();
  // Any thread: stop accepting connections; requests arriving on open connections get 503.
  void shutdown();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The whole `sharq serve` command, for the CLI.
struct ServeCommandOptions {
  std::string model, tokenizer, scheme = "fp32", device = "cpu";
  // Instead of model: random weights of a published architecture (model/config.h
  // synthetic_model_config), built by the SyntheticExecutorFactory; without --tokenizer the text is
  // token ids (make_token_id_tokenizer). For load tests of the engine.
  std::string synthetic;
  std::string served_model_name;  // "": the model argument
  std::string chat_template;      // a .jinja file or a directory / tokenizer_config.json ("": the model's own)
  SchedulerOptions scheduler;
  ServeOptions server;
  bool allow_nonfinite = false;
};
// Loads the model, starts the engine thread and the server, prints "sharq: serving <model> on
// http://<host>:<port>" to stderr, and returns 0 after SIGTERM or SIGINT once in-flight requests
// have drained. `make_executor` builds the executor (the CLI's --device choice).
// `make_synthetic` builds the executor of options.synthetic (the GPU engine's random weights);
// empty: --synthetic is refused.
using SyntheticExecutorFactory = std::function<std::unique_ptr<Executor>(const std::string& name, const Scheme&)>;
int run_serve(const ServeCommandOptions& options, const ExecutorFactory& make_executor,
              const SyntheticExecutorFactory& make_synthetic = {});

}  // namespace sharq
