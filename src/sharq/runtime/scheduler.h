// The serving scheduler: continuous batching of many requests over one executor of the step API
// (runtime/step.h). No HTTP here: `sharq serve` (serve/) puts a server in front of it, and the
// tests drive it directly.
//
// Threads: any thread may submit() and cancel(); one engine thread calls step() (or run()), and
// only it touches the executor. Each request's output goes to its own RequestStream, which the
// submitting thread reads (wait_delta) under the stream's own lock.
//
// One step:
//   1. cancelled requests leave at once: their sequence and its KV blocks are freed;
//   2. running sequences that are decoding get one token each (decodes first), oldest first;
//   3. the rest of the token budget (max_num_batched_tokens) goes to prefill: chunks of the
//      running sequences whose prompt is not yet in the cache, then new requests from the waiting
//      queue (first come, first served) while fewer than max_num_seqs run.
// KV blocks: the scheduler keeps the block account (kv_blocks blocks of block_size positions);
// a sequence holds ceil(length / block_size) blocks. When a decode would need a block and none is
// free, the newest running request is preempted by recompute: its sequence is freed and it goes
// back to the front of the waiting queue with its tokens so far, to be prefilled again later.
//
// Sampling: the executor samples (StepEntry::sampling), so a request's tokens are those of
// `sharq generate` with the same prompt, seed, temperature and top_p. The scheduler mirrors the
// sequence's xorshift state (one draw per sampled token when temperature > 0), and a recomputed
// request is re-seeded with that state (sampler_state(s) == s for s != 0), so preemption does not
// change the tokens either.
//
// Streaming text is held back while it ends in an incomplete UTF-8 sequence or in text that could
// still grow into a stop string; a stop string is cut from the output and ends the request.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "sharq/model/tokenizer.h"
#include "sharq/runtime/step.h"

namespace sharq {

struct SchedulerOptions {
  int64_t max_model_len = 0;            // positions per sequence (prompt + completion); 0: the model's
                                        // max_position_embeddings (2048 when it states none)
  int64_t max_num_seqs = 256;           // running requests at most
  int64_t max_num_batched_tokens = 2048;  // new tokens per step (decodes + prefill chunks)
  int64_t max_queue = 1024;             // waiting requests at most; submit() then throws QueueFull
  int64_t block_size = 16;              // KV positions per block
  int64_t kv_blocks = 0;                // 0: the executor's shared KV pool (Executor::kv_blocks), or,
                                        // without one, max_num_seqs full-length sequences
  std::chrono::milliseconds step_delay{0};  // testing only: sleep before every step (slows the engine)
};

// One completion request, already tokenized (the caller encodes a text prompt: encode_prompt).
struct CompletionRequest {
  std::vector<int32_t> prompt;
  int64_t max_tokens = 16;
  SamplingParams sampling;
  std::vector<std::string> stop;  // stop strings (not included in the output)
  bool ignore_eos = false;        // keep going past EOS/BOS (they are then ordinary tokens)
};

// The thrown errors, so that a front end can map them (HTTP 429 and 400).
struct QueueFull : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct InvalidRequest : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// What a reader gets from a stream: the output since its last call.
struct StreamDelta {
  std::string text;                     // complete UTF-8, never a possible stop-string prefix
  std::vector<int32_t> tokens;          // tokens generated since the last call
  std::vector<float> logprobs;          // their log-probabilities (natural log, temperature 1)
  bool finished = false;
  std::string finish_reason;            // "stop", "length", "cancelled" or "error" (when finished)
  std::string error;                    // the message, for "error"
  int64_t prompt_tokens = 0, completion_tokens = 0;
};

// A request's output channel: written by the engine thread, read by the submitting thread.
class RequestStream {
 public:
  // Blocks until there is output or the request finished, or `timeout` passes (then the delta is
  // empty and not finished). Takes everything pending.
  StreamDelta wait_delta(std::chrono::milliseconds timeout);
  bool finished() const;

 private:
  friend class Scheduler;
  void push(const std::string& text, const std::vector<int32_t>& toks, const std::vector<float>& lps);
  void finish(const std::string& reason, const std::string& error, int64_t prompt_tokens, int64_t completion_tokens);

  mutable std::mutex mu_;
  std::condition_variable cv_;
  StreamDelta pending_;
  bool done_ = false;
};

// Counters and gauges for /metrics (a consistent snapshot).
struct SchedulerMetrics {
  int64_t waiting = 0, running = 0, kv_blocks_used = 0, kv_blocks_total = 0;
  int64_t requests_finished = 0, requests_cancelled = 0, requests_rejected = 0, preemptions = 0;
  int64_t prompt_tokens = 0, generation_tokens = 0, steps = 0;
  // histograms: cumulative counts per upper bound (bounds below), plus sum and count
  std::vector<int64_t> ttft_buckets, tpot_buckets;
  double ttft_sum = 0, tpot_sum = 0;
  int64_t ttft_count = 0, tpot_count = 0;
  double tokens_per_second = 0;  // generated tokens per second over the last few seconds
};
// Upper bounds (seconds) of the TTFT and TPOT histograms.
const std::vector<double>& scheduler_ttft_bounds();
const std::vector<double>& scheduler_tpot_bounds();

// The prompt ids of a text prompt as `sharq generate` builds them: the tokenizer's own special
// tokens (BOS for llama2.c and SentencePiece), BOS alone for an empty text.
std::vector<int32_t> encode_prompt(const Tokenizer& tok, const std::string& text);

class Scheduler {
 public:
  Scheduler(Executor& executor, const Tokenizer& tokenizer, SchedulerOptions options);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Any thread. Validates the request (InvalidRequest: empty prompt, a token outside the
  // vocabulary, max_tokens < 1, prompt + max_tokens beyond max_model_len, bad sampling values)
  // and queues it (QueueFull when max_queue requests wait). The stream stays valid after the
  // request finishes.
  std::shared_ptr<RequestStream> submit(CompletionRequest request);
  // Any thread: the request leaves at the next step and its stream finishes with "cancelled"
  // (nothing happens when it already finished).
  void cancel(const std::shared_ptr<RequestStream>& stream);

  // Engine thread: one step. False when there was nothing to do.
  bool step();
  // Engine thread: steps until stop(); sleeps while idle. With drain, stop() first lets every
  // submitted request finish.
  void run();
  // Any thread: ends run() (after the queued and running requests finished when `drain`).
  void stop(bool drain);

  SchedulerMetrics metrics() const;
  const SchedulerOptions& options() const { return opt_; }

 private:
  struct Request;
  void fail_all(const std::string& message);
  void finish(Request& r, const std::string& reason, const std::string& error = {});
  void preempt(Request& r);
  void on_token(Request& r, int32_t token, float logprob);
  void release(Request& r);
  int64_t blocks_for(int64_t positions) const;

  Executor& ex_;
  const Tokenizer& tok_;
  SchedulerOptions opt_;

  // shared with the submitting threads (mu_)
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Request>> inbox_;       // submitted, not yet seen by the engine
  std::vector<std::shared_ptr<RequestStream>> cancels_;
  bool stop_ = false, drain_ = false;
  SchedulerMetrics metrics_;
  std::deque<std::pair<std::chrono::steady_clock::time_point, int64_t>> rate_window_;

  // engine thread only
  std::deque<std::unique_ptr<Request>> waiting_;
  std::vector<std::unique_ptr<Request>> running_;    // in admission order (oldest first)
  int64_t free_blocks_ = 0;
};

}  // namespace sharq
