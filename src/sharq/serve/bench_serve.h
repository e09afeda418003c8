// `sharq bench serve`: a load generator for an OpenAI-compatible server (`sharq serve`, or any
// other on this machine), run in its own process and talking HTTP over loopback only. It sends
// streaming /v1/completions requests with random token-id prompts of exact lengths and
// `ignore_eos`, so that every request generates exactly its output length, and reports what users
// measure serving engines by (vLLM's benchmark_serving definitions):
//   - request throughput (req/s), output and total token throughput (tok/s);
//   - TTFT (arrival to the first streamed token), TPOT ((E2E - TTFT) / (output tokens - 1)), ITL
//     (the gaps between streamed chunks), E2E latency: mean, p50, p90, p99.
// Arrivals: all at once (rate inf) or Poisson at --request-rate, at most --max-concurrency in flight.
// Bounded: every request and the whole run have a time limit; the counts are bounded.
#pragma once

#include <cstdint>
#include <string>

namespace sharq {

struct BenchServeOptions {
  std::string url = "http://127.0.0.1:8000";  // loopback only (127.0.0.0/8, localhost, ::1)
  std::string model;                          // "": the server's first /v1/models entry
  int64_t num_prompts = 64;
  int64_t input_len = 1024, output_len = 128;
  double range_ratio = 0.0;                   // lengths uniform in [len * (1 - r), len * (1 + r)]
  int64_t token_range = 500;                  // prompt token ids are drawn from [0, token_range)
  double request_rate = 0.0;                  // requests/s (Poisson); 0: all at once
  int64_t max_concurrency = 0;                // 0: num_prompts
  uint64_t seed = 0;
  double timeout_s = 600.0;                   // the whole run; each request gets the same bound
  std::string label;                          // a name for this run in the table and the CSV
  std::string csv;                            // append one row here
};

// Runs the benchmark, prints the report to stdout; returns 0 when every request succeeded, 1 when
// some failed (each failure's reason is counted and the first few printed). Throws
// std::invalid_argument for bad options (a non-loopback URL, zero prompts, ...).
int run_bench_serve(const BenchServeOptions& options);

}  // namespace sharq
