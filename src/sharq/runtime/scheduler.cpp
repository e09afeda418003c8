#include "sharq/runtime/scheduler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <thread>

#include <fmt/format.h>

#include "sharq/runtime/sampler.h"

namespace sharq {

using Clock = std::chrono::steady_clock;

const std::vector<double>& scheduler_ttft_bounds() {
  static const std::vector<double> b{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
                                     0.75,  1.0,   2.5,  5.0,  7.5,  10.0, 20.0, 40.0, 80.0};
  return b;
}
const std::vector<double>& scheduler_tpot_bounds() {
  static const std::vector<double> b{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1,
                                     0.15,  0.2,    0.3,   0.4,  0.5,   0.75, 1.0,   2.5};
  return b;
}

namespace {

void observe(std::vector<int64_t>& buckets, const std::vector<double>& bounds, double v) {
  for (size_t i = 0; i < bounds.size(); ++i)
    if (v <= bounds[i]) ++buckets[i];
}

// The length of an incomplete UTF-8 sequence at the end of text[from, end) (0 when it ends on a
// character boundary), so that a stream never splits a character.
size_t incomplete_utf8_tail(const std::string& text, size_t from, size_t end) {
  for (size_t k = 1; k <= 4 && k <= end - from; ++k) {
    const auto c = static_cast<unsigned char>(text[end - k]);
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte: look further back for the lead
    const size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    return len > k ? k : 0;
  }
  return 0;
}

}  // namespace

// ---- RequestStream

StreamDelta RequestStream::wait_delta(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return done_ || !pending_.text.empty() || !pending_.tokens.empty(); });
  StreamDelta d = std::move(pending_);
  pending_ = StreamDelta{};
  if (done_) {  // the final fields stay readable by a later call
    pending_.finished = true;
    pending_.finish_reason = d.finish_reason;
    pending_.error = d.error;
    pending_.prompt_tokens = d.prompt_tokens;
    pending_.completion_tokens = d.completion_tokens;
  }
  return d;
}

bool RequestStream::finished() const {
  std::lock_guard lock(mu_);
  return done_;
}

void RequestStream::push(const std::string& text, const std::vector<int32_t>& toks, const std::vector<float>& lps) {
  {
    std::lock_guard lock(mu_);
    pending_.text += text;
    pending_.tokens.insert(pending_.tokens.end(), toks.begin(), toks.end());
    pending_.logprobs.insert(pending_.logprobs.end(), lps.begin(), lps.end());
  }
  cv_.notify_all();
}

void RequestStream::finish(const std::string& reason, const std::string& error, int64_t prompt_tokens,
                           int64_t completion_tokens) {
  {
    std::lock_guard lock(mu_);
    if (done_) return;
    done_ = true;
    pending_.finished = true;
    pending_.finish_reason = reason;
    pending_.error = error;
    pending_.prompt_tokens = prompt_tokens;
    pending_.completion_tokens = completion_tokens;
  }
  cv_.notify_all();
}

// ---- Scheduler

struct Scheduler::Request {
  CompletionRequest req;
  std::shared_ptr<RequestStream> stream;
  std::vector<int32_t> tokens;  // prompt + generated: what the sequence must hold
  int64_t n_prompt = 0, generated = 0;
  SeqId seq = -1;
  int64_t computed = 0;   // tokens already in the sequence's KV cache
  int64_t blocks = 0;     // KV blocks it holds (the scheduler's account)
  uint64_t rng = 0;       // the sequence's sampler state, mirrored (see scheduler.h)
  uint64_t seq_seed = 0;  // the seed its current sequence was given
  int32_t prev = 0;       // the last token, for decode_step
  std::string text;       // decoded output
  size_t sent = 0;        // bytes of `text` already pushed to the stream
  std::vector<int32_t> pend_tokens;
  std::vector<float> pend_logprobs;
  Clock::time_point arrival, last_token;
  bool done = false;
};

std::vector<int32_t> encode_prompt(const Tokenizer& tok, const std::string& text) {
  std::vector<int32_t> ids;
  try {
    ids = tok.encode(text, true);
  } catch (const std::invalid_argument& e) {  // a tokenizer that refuses the text (token-id text)
    throw InvalidRequest(e.what());
  }
  if (ids.empty()) {
    if (tok.bos_id() < 0) throw InvalidRequest("the prompt is empty and the tokenizer has no BOS token");
    ids.push_back(tok.bos_id());
  }
  return ids;
}

Scheduler::Scheduler(Executor& executor, const Tokenizer& tokenizer, SchedulerOptions options)
    : ex_(executor), tok_(tokenizer), opt_(options) {
  const int64_t max_pos = ex_.config().max_position_embeddings;
  if (opt_.max_model_len <= 0) opt_.max_model_len = max_pos > 0 ? max_pos : 2048;
  if (max_pos > 0 && opt_.max_model_len > max_pos)
    throw std::invalid_argument(fmt::format("max_model_len {} exceeds the model's max_position_embeddings {}",
                                            opt_.max_model_len, max_pos));
  if (opt_.max_model_len < 2)  // a one-token prompt and one generated token: less can answer no request
    throw std::invalid_argument(fmt::format("max_model_len {} leaves no room for a prompt and one generated token (>= 2)",
                                            opt_.max_model_len));
  if (opt_.max_num_seqs < 1) throw std::invalid_argument("max_num_seqs must be >= 1");
  if (opt_.max_num_batched_tokens < 1) throw std::invalid_argument("max_num_batched_tokens must be >= 1");
  if (opt_.max_queue < 1) throw std::invalid_argument("max_queue must be >= 1");
  if (opt_.block_size < 1) throw std::invalid_argument("block_size must be >= 1");
  const int64_t per_seq = blocks_for(opt_.max_model_len);
  if (const int64_t pool = ex_.kv_blocks(); pool > 0) {  // the executor's shared cache bounds the promise
    if (ex_.kv_block_size() != opt_.block_size)
      throw std::invalid_argument(fmt::format("the scheduler's KV block size {} is not the executor's {}",
                                              opt_.block_size, ex_.kv_block_size()));
    if (opt_.kv_blocks > pool)
      throw std::invalid_argument(fmt::format("kv_blocks {} exceeds the executor's KV cache of {} blocks",
                                              opt_.kv_blocks, pool));
    if (opt_.kv_blocks == 0) opt_.kv_blocks = pool;
  }
  if (opt_.kv_blocks == 0) opt_.kv_blocks = per_seq * opt_.max_num_seqs;
  // a pool asked for beyond what max_num_seqs full-length sequences can ever hold is an announced
  // capacity that no load can use (an executor's own larger pool is fine: it is what it has)
  if (options.kv_blocks > 0 &&
      (opt_.max_num_seqs > std::numeric_limits<int64_t>::max() / per_seq || options.kv_blocks > per_seq * opt_.max_num_seqs))
    throw std::invalid_argument(fmt::format("kv_blocks {} is more than max_num_seqs {} sequences of max_model_len {} can use "
                                            "({} blocks of {} positions each)", opt_.kv_blocks, opt_.max_num_seqs,
                                            opt_.max_model_len, per_seq, opt_.block_size));
  if (opt_.kv_blocks < per_seq)
    throw std::invalid_argument(fmt::format("{} KV blocks of {} positions cannot hold one sequence of max_model_len {} "
                                            "(it needs {})", opt_.kv_blocks, opt_.block_size, opt_.max_model_len, per_seq));
  free_blocks_ = opt_.kv_blocks;
  metrics_.kv_blocks_total = opt_.kv_blocks;
  metrics_.ttft_buckets.assign(scheduler_ttft_bounds().size(), 0);
  metrics_.tpot_buckets.assign(scheduler_tpot_bounds().size(), 0);
}

Scheduler::~Scheduler() { fail_all("the server is shutting down"); }

int64_t Scheduler::blocks_for(int64_t positions) const { return (positions + opt_.block_size - 1) / opt_.block_size; }

std::shared_ptr<RequestStream> Scheduler::submit(CompletionRequest request) {
  const int64_t n = static_cast<int64_t>(request.prompt.size());
  const int64_t vocab = ex_.config().vocab_size;
  if (n == 0) throw InvalidRequest("the prompt has no tokens");
  for (int32_t t : request.prompt)
    if (t < 0 || t >= vocab)
      throw InvalidRequest(fmt::format("prompt token id {} is outside the vocabulary (size {})", t, vocab));
  if (request.max_tokens < 1)
    throw InvalidRequest(fmt::format("max_tokens must be at least 1, got {}", request.max_tokens));
  if (request.max_tokens > opt_.max_model_len - n) {  // (n + max_tokens could overflow)
    const int64_t total = request.max_tokens > std::numeric_limits<int64_t>::max() - n
                              ? std::numeric_limits<int64_t>::max()
                              : n + request.max_tokens;
    throw InvalidRequest(fmt::format("This model's maximum context length is {} tokens. However, you requested {}{} tokens "
                                     "({} in the prompt, {} in the completion). Please reduce the prompt or max_tokens.",
                                     opt_.max_model_len, total == std::numeric_limits<int64_t>::max() ? "more than " : "",
                                     total, n, request.max_tokens));
  }
  const SamplingParams& s = request.sampling;
  if (!(std::isfinite(s.temperature) && s.temperature >= 0.0f))
    throw InvalidRequest(fmt::format("temperature must be a finite number >= 0, got {}", s.temperature));
  if (!(std::isfinite(s.top_p) && s.top_p > 0.0f && s.top_p <= 1.0f))
    throw InvalidRequest(fmt::format("top_p must be in (0, 1], got {}", s.top_p));
  for (const std::string& st : request.stop)
    if (st.empty()) throw InvalidRequest("a stop string is empty");

  auto r = std::make_unique<Request>();
  r->req = std::move(request);
  r->stream = std::make_shared<RequestStream>();
  r->tokens = r->req.prompt;
  r->n_prompt = n;
  r->rng = sampler_state(r->req.sampling.seed);
  r->prev = r->tokens.back();
  r->arrival = Clock::now();
  std::shared_ptr<RequestStream> stream = r->stream;
  {
    std::lock_guard lock(mu_);
    if (stop_) throw QueueFull("the server is shutting down");
    if (metrics_.waiting >= opt_.max_queue) {
      ++metrics_.requests_rejected;
      throw QueueFull(fmt::format("the waiting queue is full ({} requests); retry later", opt_.max_queue));
    }
    ++metrics_.waiting;
    inbox_.push_back(std::move(r));
  }
  cv_.notify_all();
  return stream;
}

void Scheduler::cancel(const std::shared_ptr<RequestStream>& stream) {
  if (!stream || stream->finished()) return;
  {
    std::lock_guard lock(mu_);
    cancels_.push_back(stream);
  }
  cv_.notify_all();
}

void Scheduler::release(Request& r) {
  if (r.seq >= 0) {
    ex_.free_sequence(r.seq);
    r.seq = -1;
  }
  free_blocks_ += r.blocks;
  r.blocks = 0;
  r.computed = 0;
}

void Scheduler::finish(Request& r, const std::string& reason, const std::string& error) {
  if (r.done) return;
  if (r.sent < r.text.size() || !r.pend_tokens.empty()) {  // flush what is left (incomplete UTF-8 too)
    r.stream->push(r.text.substr(r.sent), r.pend_tokens, r.pend_logprobs);
    r.sent = r.text.size();
    r.pend_tokens.clear();
    r.pend_logprobs.clear();
  }
  r.done = true;
  try {
    release(r);
  } catch (const std::exception&) {  // an executor that already lost the sequence: the account still balances
  }
  r.stream->finish(reason, error, r.n_prompt, r.generated);
  std::lock_guard lock(mu_);
  if (reason == "cancelled") ++metrics_.requests_cancelled;
  else ++metrics_.requests_finished;
}

void Scheduler::preempt(Request& r) {
  release(r);  // recompute: the whole history is prefilled again when it is readmitted
  std::lock_guard lock(mu_);
  ++metrics_.preemptions;
}

void Scheduler::on_token(Request& r, int32_t token, float logprob) {
  if (r.req.sampling.temperature > 0.0f) sampler_next_uniform(r.rng);  // the executor drew once too
  const Clock::time_point now = Clock::now();
  {
    std::lock_guard lock(mu_);
    if (r.generated == 0) {
      const double s = std::chrono::duration<double>(now - r.arrival).count();
      observe(metrics_.ttft_buckets, scheduler_ttft_bounds(), s);
      metrics_.ttft_sum += s;
      ++metrics_.ttft_count;
    } else {
      const double s = std::chrono::duration<double>(now - r.last_token).count();
      observe(metrics_.tpot_buckets, scheduler_tpot_bounds(), s);
      metrics_.tpot_sum += s;
      ++metrics_.tpot_count;
    }
  }
  r.last_token = now;
  if (!r.req.ignore_eos && (token == tok_.eos_id() || token == tok_.bos_id())) {  // as `generate` stops
    finish(r, "stop");
    return;
  }
  r.tokens.push_back(token);
  ++r.generated;
  {
    std::lock_guard lock(mu_);
    ++metrics_.generation_tokens;
  }
  r.text += tok_.decode_step(r.prev, token);
  r.prev = token;
  r.pend_tokens.push_back(token);
  r.pend_logprobs.push_back(logprob);

  size_t stop_at = std::string::npos;
  for (const std::string& s : r.req.stop) stop_at = std::min(stop_at, r.text.find(s, r.sent));
  if (stop_at != std::string::npos) {
    r.text.resize(stop_at);
    finish(r, "stop");
    return;
  }
  if (r.generated >= r.req.max_tokens) {
    finish(r, "length");
    return;
  }
  // hold back the longest tail that could still grow into a stop string, then any split character
  size_t end = r.text.size();
  for (size_t p = r.sent; p < r.text.size() && end == r.text.size(); ++p)
    for (const std::string& s : r.req.stop)
      if (s.size() > r.text.size() - p && s.compare(0, r.text.size() - p, r.text, p) == 0) {
        end = p;
        break;
      }
  end -= incomplete_utf8_tail(r.text, r.sent, end);
  if (end > r.sent || !r.pend_tokens.empty()) {
    r.stream->push(r.text.substr(r.sent, end - r.sent), r.pend_tokens, r.pend_logprobs);
    r.sent = end;
    r.pend_tokens.clear();
    r.pend_logprobs.clear();
  }
}

bool Scheduler::step() {
  if (opt_.step_delay.count() > 0) std::this_thread::sleep_for(opt_.step_delay);
  std::vector<std::shared_ptr<RequestStream>> cancels;
  {
    std::lock_guard lock(mu_);
    while (!inbox_.empty()) {
      waiting_.push_back(std::move(inbox_.front()));
      inbox_.pop_front();
    }
    cancels.swap(cancels_);
  }
  // 1. cancellations leave at once, with their blocks
  for (const auto& c : cancels) {
    for (auto& r : running_)
      if (r->stream == c) finish(*r, "cancelled");
    for (auto& r : waiting_)
      if (r->stream == c) finish(*r, "cancelled");
  }
  auto drop_done = [&] {
    std::erase_if(running_, [](const std::unique_ptr<Request>& r) { return r->done; });
    std::erase_if(waiting_, [](const std::unique_ptr<Request>& r) { return r->done; });
  };
  drop_done();

  std::vector<StepEntry> batch;
  std::vector<Request*> of;
  int64_t budget = opt_.max_num_batched_tokens;
  auto add = [&](Request& r, int64_t n) {
    StepEntry e;
    e.seq = r.seq;
    e.tokens.assign(r.tokens.begin() + r.computed, r.tokens.begin() + r.computed + n);
    e.position = r.computed;
    e.return_logits = false;
    if (r.computed + n == static_cast<int64_t>(r.tokens.size()))  // the last chunk: sample the next token
      e.sampling = SamplingParams{r.req.sampling.temperature, r.req.sampling.top_p, r.seq_seed};
    const int64_t need = blocks_for(r.computed + n) - r.blocks;
    free_blocks_ -= need;
    r.blocks += need;
    batch.push_back(std::move(e));
    of.push_back(&r);
    budget -= n;
  };
  // 2. decodes first, oldest first; a decode that needs a block no one has preempts the newest
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    Request& r = *running_[i];
    if (static_cast<int64_t>(r.tokens.size()) - r.computed != 1) continue;
    const int64_t need = blocks_for(r.computed + 1) - r.blocks;
    bool self_preempted = false;
    while (need > free_blocks_) {
      std::unique_ptr<Request> victim = std::move(running_.back());
      running_.pop_back();
      preempt(*victim);
      self_preempted = victim.get() == &r;
      waiting_.push_front(std::move(victim));
      if (self_preempted) break;
    }
    if (self_preempted) break;  // r was the newest: nothing after it runs
    add(r, 1);
  }
  // 3. prefill chunks: running sequences first, then admissions from the waiting queue
  auto prefill_running = [&] {
    for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
      Request& r = *running_[i];
      const int64_t left = static_cast<int64_t>(r.tokens.size()) - r.computed;
      if (left <= 1 && r.computed > 0) continue;  // a decode (handled above)
      if (std::find(of.begin(), of.end(), &r) != of.end()) continue;
      const int64_t n = std::min({left, budget, (r.blocks + free_blocks_) * opt_.block_size - r.computed});
      if (n <= 0) break;
      add(r, n);
    }
  };
  prefill_running();
  // partly prefilled sequences can hold every block between them: free the newest until one moves
  // (one sequence alone always fits: kv_blocks >= the blocks of max_model_len)
  while (batch.empty() && running_.size() > 1) {
    std::unique_ptr<Request> victim = std::move(running_.back());
    running_.pop_back();
    preempt(*victim);
    waiting_.push_front(std::move(victim));
    prefill_running();
  }
  while (!waiting_.empty() && budget > 0 && static_cast<int64_t>(running_.size()) < opt_.max_num_seqs) {
    Request& r = *waiting_.front();
    const int64_t left = static_cast<int64_t>(r.tokens.size());
    const int64_t n = std::min({left, budget, free_blocks_ * opt_.block_size});
    if (n <= 0) break;
    try {
      r.seq = ex_.create_sequence(r.n_prompt + r.req.max_tokens);
    } catch (const std::exception& e) {  // the executor refuses it: this request fails, the others go on
      finish(r, "error", e.what());
      waiting_.pop_front();
      continue;
    }
    r.seq_seed = r.rng;  // continues the stream where a preempted sequence left it
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
    add(r, n);
  }

  bool worked = !batch.empty();
  if (worked) {
    try {
      const StepOutput out = ex_.step(batch);
      for (size_t i = 0; i < batch.size(); ++i) {
        Request& r = *of[i];
        r.computed += static_cast<int64_t>(batch[i].tokens.size());
        if (batch[i].sampling && out.sampled[i]) on_token(r, *out.sampled[i], out.logprob[i]);
      }
    } catch (const std::exception& e) {
      for (Request* r : of) finish(*r, "error", e.what());
    }
    int64_t prefilled = 0;
    for (const StepEntry& e : batch) prefilled += e.sampling && e.tokens.size() == 1 ? 0 : static_cast<int64_t>(e.tokens.size());
    std::lock_guard lock(mu_);
    metrics_.prompt_tokens += prefilled;
    ++metrics_.steps;
  }
  drop_done();
  std::lock_guard lock(mu_);
  metrics_.waiting = static_cast<int64_t>(waiting_.size() + inbox_.size());
  metrics_.running = static_cast<int64_t>(running_.size());
  metrics_.kv_blocks_used = opt_.kv_blocks - free_blocks_;
  const Clock::time_point now = Clock::now();
  rate_window_.emplace_back(now, metrics_.generation_tokens);
  while (rate_window_.size() > 1 && now - rate_window_.front().first > std::chrono::seconds(10)) rate_window_.pop_front();
  return worked;
}

void Scheduler::run() {
  for (;;) {
    const bool worked = step();
    std::unique_lock lock(mu_);
    const bool idle = !worked && inbox_.empty() && cancels_.empty() && waiting_.empty() && running_.empty();
    if (stop_ && (!drain_ || idle)) break;
    if (!worked)
      cv_.wait_for(lock, std::chrono::milliseconds(100), [&] { return stop_ || !inbox_.empty() || !cancels_.empty(); });
  }
  fail_all("the server is shutting down");
}

void Scheduler::stop(bool drain) {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
    drain_ = drain;
  }
  cv_.notify_all();
}

void Scheduler::fail_all(const std::string& message) {
  {
    std::lock_guard lock(mu_);
    while (!inbox_.empty()) {
      waiting_.push_back(std::move(inbox_.front()));
      inbox_.pop_front();
    }
    cancels_.clear();
  }
  for (auto& r : running_) finish(*r, "error", message);
  for (auto& r : waiting_) finish(*r, "error", message);
  running_.clear();
  waiting_.clear();
  std::lock_guard lock(mu_);
  metrics_.waiting = metrics_.running = 0;
  metrics_.kv_blocks_used = opt_.kv_blocks - free_blocks_;
}

SchedulerMetrics Scheduler::metrics() const {
  std::lock_guard lock(mu_);
  SchedulerMetrics m = metrics_;
  if (rate_window_.size() > 1) {
    const double dt = std::chrono::duration<double>(rate_window_.back().first - rate_window_.front().first).count();
    if (dt > 0) m.tokens_per_second = static_cast<double>(rate_window_.back().second - rate_window_.front().second) / dt;
  }
  return m;
}

}  // namespace sharq
