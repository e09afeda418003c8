#include "sharq/serve/bench_serve.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

namespace sharq {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

struct Endpoint {
  std::string host;
  int port = 0;
};

// http://HOST:PORT with a loopback HOST: the load generator never talks to another machine.
Endpoint parse_loopback_url(const std::string& url) {
  const std::string pre = "http://";
  if (url.rfind(pre, 0) != 0) throw std::invalid_argument(fmt::format("--url: '{}' must start with http://", url));
  std::string rest = url.substr(pre.size());
  if (const size_t slash = rest.find('/'); slash != std::string::npos) rest = rest.substr(0, slash);
  Endpoint e;
  size_t colon;
  if (!rest.empty() && rest[0] == '[') {  // [::1]:port
    const size_t close = rest.find(']');
    if (close == std::string::npos) throw std::invalid_argument(fmt::format("--url: '{}': unclosed [", url));
    e.host = rest.substr(1, close - 1);
    colon = rest.find(':', close);
  } else {
    colon = rest.rfind(':');
    e.host = rest.substr(0, colon);
  }
  if (colon == std::string::npos) throw std::invalid_argument(fmt::format("--url: '{}' has no port", url));
  const std::string port = rest.substr(colon + 1);
  try {
    size_t used = 0;
    e.port = std::stoi(port, &used);
    if (used != port.size() || e.port < 1 || e.port > 65535) throw std::invalid_argument("port");
  } catch (const std::exception&) {
    throw std::invalid_argument(fmt::format("--url: '{}': the port '{}' is not in 1..65535", url, port));
  }
  const bool loopback = e.host == "localhost" || e.host == "::1" || e.host.rfind("127.", 0) == 0;
  if (!loopback)
    throw std::invalid_argument(fmt::format("--url: '{}': the load generator talks to this machine only (127.0.0.0/8, "
                                            "localhost or ::1)", url));
  return e;
}

struct Outcome {
  bool ok = false;
  std::string error;
  double ttft = 0, e2e = 0;  // seconds
  int64_t prompt_tokens = 0, output_tokens = 0;
  std::vector<double> itl;  // seconds between streamed chunks
};

Outcome run_one(const Endpoint& ep, const std::string& body, double timeout_s) {
  Outcome o;
  httplib::Client cli(ep.host, ep.port);
  const auto secs = static_cast<time_t>(timeout_s);
  cli.set_connection_timeout(std::min<time_t>(secs, 30), 0);
  cli.set_read_timeout(secs, 0);
  cli.set_write_timeout(std::min<time_t>(secs, 30), 0);
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body;
  req.set_header("Content-Type", "application/json");
  std::string buf, raw;
  bool first = true, done = false;
  const auto t0 = Clock::now();
  auto last = t0;
  req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
    const auto now = Clock::now();
    buf.append(data, len);
    if (raw.size() < 4096) raw.append(data, std::min(len, 4096 - raw.size()));
    size_t end;
    while ((end = buf.find("\n\n")) != std::string::npos) {
      const std::string ev = buf.substr(0, end);
      buf.erase(0, end + 2);
      if (ev.rfind("data: ", 0) != 0) continue;  // comments (keep-alives)
      const std::string payload = ev.substr(6);
      if (payload == "[DONE]") {
        done = true;
        continue;
      }
      const json j = json::parse(payload, nullptr, false);
      if (j.is_discarded()) continue;
      if (j.contains("error")) {
        o.error = j["error"].value("message", "error event");
        continue;
      }
      if (j.contains("usage") && j["usage"].is_object()) {
        o.prompt_tokens = j["usage"].value("prompt_tokens", int64_t{0});
        o.output_tokens = j["usage"].value("completion_tokens", int64_t{0});
      }
      const json& ch = j.value("choices", json::array());
      if (ch.empty() || !ch[0].contains("text") || ch[0]["text"].get<std::string>().empty()) continue;
      const double since = std::chrono::duration<double>(now - t0).count();
      if (first) {
        o.ttft = since;
        first = false;
      } else {
        o.itl.push_back(std::chrono::duration<double>(now - last).count());
      }
      last = now;
    }
    return true;
  };
  httplib::Response res;
  httplib::Error err = httplib::Error::Success;
  const bool sent = cli.send(req, res, err);
  o.e2e = std::chrono::duration<double>(Clock::now() - t0).count();
  if (!sent) {
    o.error = fmt::format("HTTP: {}", httplib::to_string(err));
  } else if (res.status != 200) {
    const json j = json::parse(raw, nullptr, false);
    o.error = fmt::format("status {}: {}", res.status,
                          !j.is_discarded() && j.contains("error") ? j["error"].value("message", raw) : raw.substr(0, 200));
  } else if (!done && o.error.empty()) {
    o.error = "the stream ended without [DONE]";
  } else if (o.error.empty() && first) {
    o.error = "no token was streamed";
  }
  o.ok = o.error.empty();
  return o;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const double pos = p / 100.0 * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(pos);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (pos - static_cast<double>(lo)) * (v[hi] - v[lo]);
}
double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0.0 : s / static_cast<double>(v.size());
}

}  // namespace

int run_bench_serve(const BenchServeOptions& o) {
  const Endpoint ep = parse_loopback_url(o.url);
  if (o.num_prompts < 1 || o.num_prompts > 1000000) throw std::invalid_argument("--num-prompts must be in 1 .. 1000000");
  if (o.input_len < 1 || o.output_len < 1) throw std::invalid_argument("--input-len and --output-len must be >= 1");
  if (!(o.range_ratio >= 0.0 && o.range_ratio < 1.0)) throw std::invalid_argument("--range-ratio must be in [0, 1)");
  if (o.token_range < 1) throw std::invalid_argument("--token-range must be >= 1");
  if (!(o.request_rate >= 0.0)) throw std::invalid_argument("--request-rate must be >= 0 (0: all at once)");
  if (!(o.timeout_s > 0.0)) throw std::invalid_argument("--timeout must be > 0");
  const int64_t conc = o.max_concurrency > 0 ? std::min(o.max_concurrency, o.num_prompts) : o.num_prompts;

  std::string model = o.model;
  if (model.empty()) {  // the server's model
    httplib::Client cli(ep.host, ep.port);
    cli.set_connection_timeout(10, 0);
    cli.set_read_timeout(30, 0);
    const auto r = cli.Get("/v1/models");
    if (!r || r->status != 200)
      throw std::runtime_error(fmt::format("bench serve: GET {}/v1/models failed ({}): is the server running?", o.url,
                                           r ? fmt::format("status {}", r->status) : httplib::to_string(r.error())));
    const json j = json::parse(r->body, nullptr, false);
    if (j.is_discarded() || !j.contains("data") || j["data"].empty() || !j["data"][0].contains("id"))
      throw std::runtime_error(fmt::format("bench serve: {}/v1/models answered no model", o.url));
    model = j["data"][0]["id"].get<std::string>();
  }

  // the requests: exact lengths (ignore_eos), random token-id prompts, Poisson or simultaneous arrivals
  std::mt19937_64 rng(o.seed);
  auto length = [&](int64_t len) {
    const int64_t lo = std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(len) * (1.0 - o.range_ratio)));
    const int64_t hi = std::max<int64_t>(lo, static_cast<int64_t>(static_cast<double>(len) * (1.0 + o.range_ratio)));
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  std::vector<std::string> bodies;
  std::vector<double> arrival;
  double t = 0;
  std::exponential_distribution<double> gap(o.request_rate > 0 ? o.request_rate : 1.0);
  for (int64_t i = 0; i < o.num_prompts; ++i) {
    const int64_t in = length(o.input_len), out = length(o.output_len);
    std::vector<int64_t> ids(static_cast<size_t>(in));
    for (auto& id : ids) id = std::uniform_int_distribution<int64_t>(0, o.token_range - 1)(rng);
    bodies.push_back(json{{"model", model}, {"prompt", ids}, {"max_tokens", out}, {"ignore_eos", true},
                          {"temperature", 0.0}, {"stream", true}, {"stream_options", {{"include_usage", true}}}}
                         .dump());
    arrival.push_back(t);
    if (o.request_rate > 0) t += gap(rng);
  }

  std::vector<Outcome> out(static_cast<size_t>(o.num_prompts));
  std::mutex mu;
  std::condition_variable cv;
  int64_t in_flight = 0;
  std::vector<std::thread> threads;
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.timeout_s));
  int64_t launched = 0;
  for (int64_t i = 0; i < o.num_prompts; ++i) {
    std::this_thread::sleep_until(
        std::min(deadline, start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(arrival[i]))));
    std::unique_lock<std::mutex> lk(mu);
    if (!cv.wait_until(lk, deadline, [&] { return in_flight < conc; })) break;
    ++in_flight;
    lk.unlock();
    const double left = std::chrono::duration<double>(deadline - Clock::now()).count();
    threads.emplace_back([&, i, left] {
      out[static_cast<size_t>(i)] = run_one(ep, bodies[static_cast<size_t>(i)], std::max(1.0, left));
      std::lock_guard<std::mutex> g(mu);
      --in_flight;
      cv.notify_all();
    });
    ++launched;
  }
  for (std::thread& th : threads) th.join();
  const double dur = std::chrono::duration<double>(Clock::now() - start).count();

  std::vector<double> ttft, tpot, itl, e2e;
  int64_t ok = 0, in_tok = 0, out_tok = 0;
  std::vector<std::string> errors;
  for (int64_t i = 0; i < o.num_prompts; ++i) {
    const Outcome& r = out[static_cast<size_t>(i)];
    if (i >= launched) {
      errors.push_back("not sent: the run's time limit was reached");
      continue;
    }
    if (!r.ok) {
      errors.push_back(r.error);
      continue;
    }
    ++ok;
    in_tok += r.prompt_tokens;
    out_tok += r.output_tokens;
    ttft.push_back(r.ttft);
    e2e.push_back(r.e2e);
    if (r.output_tokens > 1) tpot.push_back((r.e2e - r.ttft) / static_cast<double>(r.output_tokens - 1));
    itl.insert(itl.end(), r.itl.begin(), r.itl.end());
  }
  std::printf("sharq bench serve: %s, model %s%s\n", o.url.c_str(), model.c_str(),
              o.label.empty() ? "" : fmt::format(" [{}]", o.label).c_str());
  std::printf("%lld prompts, input %lld / output %lld tokens (range ratio %.2f), rate %s, max concurrency %lld\n",
              static_cast<long long>(o.num_prompts), static_cast<long long>(o.input_len),
              static_cast<long long>(o.output_len), o.range_ratio,
              o.request_rate > 0 ? fmt::format("{:.2f} req/s", o.request_rate).c_str() : "inf (all at once)",
              static_cast<long long>(conc));
  std::printf("completed %lld / %lld in %.2f s; %.3f req/s; output %.1f tok/s; total %.1f tok/s\n",
              static_cast<long long>(ok), static_cast<long long>(o.num_prompts), dur, static_cast<double>(ok) / dur,
              static_cast<double>(out_tok) / dur, static_cast<double>(in_tok + out_tok) / dur);
  std::printf("%-6s %10s %10s %10s %10s   (ms)\n", "", "mean", "p50", "p90", "p99");
  auto row = [](const char* name, const std::vector<double>& v) {
    std::printf("%-6s %10.2f %10.2f %10.2f %10.2f\n", name, 1e3 * mean(v), 1e3 * percentile(v, 50), 1e3 * percentile(v, 90),
                1e3 * percentile(v, 99));
  };
  row("TTFT", ttft);
  row("TPOT", tpot);
  row("ITL", itl);
  row("E2E", e2e);
  if (!errors.empty()) {
    std::printf("%zu requests failed; the first: %s\n", errors.size(), errors.front().c_str());
  }
  if (!o.csv.empty()) {
    const bool fresh = !std::filesystem::exists(o.csv);
    std::ofstream f(o.csv, std::ios::app);
    if (!f) throw std::runtime_error(fmt::format("--csv: {}: cannot write", o.csv));
    if (fresh)
      f << "label,model,num_prompts,input_len,output_len,request_rate,max_concurrency,completed,input_tokens,"
           "output_tokens,duration_s,req_per_s,"
           "output_tok_per_s,total_tok_per_s,ttft_mean_ms,ttft_p50_ms,ttft_p99_ms,tpot_mean_ms,tpot_p50_ms,tpot_p99_ms,"
           "itl_p50_ms,itl_p99_ms,e2e_p50_ms,e2e_p99_ms\n";
    f << fmt::format("{},{},{},{},{},{},{},{},{},{},{:.4f},{:.4f},{:.2f},{:.2f},{:.3f},{:.3f},{:.3f},{:.3f},{:.3f},{:.3f},{:.3f},{:.3f},"
                     "{:.3f},{:.3f}\n",
                     o.label, model, o.num_prompts, o.input_len, o.output_len, o.request_rate, conc, ok, in_tok, out_tok, dur,
                     static_cast<double>(ok) / dur, static_cast<double>(out_tok) / dur,
                     static_cast<double>(in_tok + out_tok) / dur, 1e3 * mean(ttft), 1e3 * percentile(ttft, 50),
                     1e3 * percentile(ttft, 99), 1e3 * mean(tpot), 1e3 * percentile(tpot, 50), 1e3 * percentile(tpot, 99),
                     1e3 * percentile(itl, 50), 1e3 * percentile(itl, 99), 1e3 * percentile(e2e, 50),
                     1e3 * percentile(e2e, 99));
  }
  return errors.empty() ? 0 : 1;
}

}  // namespace sharq
