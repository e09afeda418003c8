#include "sharq/tools/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "sharq/model/quantized_checkpoint.h"
#include "sharq/model/tokenizer.h"
#include "sharq/model/weights.h"
#include "sharq/runtime/cpu/executor.h"
#include "sharq/tools/scoring.h"

namespace sharq {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

void progress_bar(int64_t done, int64_t total, double elapsed) {
  const int width = 30;
  const int filled = total ? static_cast<int>(width * done / total) : width;
  const double eta = done ? elapsed / static_cast<double>(done) * static_cast<double>(total - done) : 0.0;
  std::fprintf(stderr, "\r[%s%s] %lld/%lld windows, %.0fs elapsed, ETA %.0fs ", std::string(filled, '#').c_str(),
               std::string(width - filled, '.').c_str(), static_cast<long long>(done), static_cast<long long>(total),
               elapsed, eta);
  if (done == total) std::fputc('\n', stderr);
  std::fflush(stderr);
}

}  // namespace

PplResult run_perplexity(const PplOptions& opt) {
  if (opt.ctx < 2) throw std::invalid_argument(fmt::format("--ctx must be >= 2, got {}", opt.ctx));
  if (opt.max_windows < 0) throw std::invalid_argument("--max-windows must be >= 0");
  std::vector<Scheme> schemes = parse_scheme_list(opt.schemes);
  Scheme reference = parse_scheme(opt.reference);

  ModelWeights loaded;
  if (!opt.weights) loaded = load_model_weights(opt.model_path, LoadOptions{opt.allow_nonfinite});
  const ModelWeights& weights = opt.weights ? *opt.weights : loaded;
  // A quantized checkpoint runs only the schemes of its stored weights: when the reference (fp16
  // by default) is not one of them, the first requested scheme that is becomes the reference.
  if (weights.quantization.quantized() && !quantized_scheme_mismatch(weights.quantization, reference, opt.model_path).empty()) {
    for (const auto& s : schemes)
      if (quantized_scheme_mismatch(weights.quantization, s, opt.model_path).empty()) {
        if (opt.progress)
          std::fprintf(stderr, "sharq: note: %s holds %s weights, on which the reference %s cannot run; %s is the reference\n",
                       opt.model_path.c_str(), weights.quantization.describe().c_str(), reference.name().c_str(), s.name().c_str());
        reference = s;
        break;
      }
  }

  // every scheme to run: the reference first, the requested ones, then SharQ baselines not listed
  std::vector<Scheme> run;
  std::map<std::string, size_t> slot;
  auto add = [&](const Scheme& s) {
    if (slot.emplace(s.name(), run.size()).second) run.push_back(s);
  };
  add(reference);
  for (const auto& s : schemes) add(s);
  for (const auto& s : schemes)
    if (s.is_sharq()) add(sharq_baseline(s));
  for (const auto& s : run)  // every scheme checked before any work, with the message naming the format
    if (const std::string why = quantized_scheme_mismatch(weights.quantization, s, opt.model_path); !why.empty())
      throw std::invalid_argument(why);
  std::unique_ptr<Tokenizer> loaded_tok;
  if (!opt.tokenizer) loaded_tok = load_tokenizer_for(opt.model_path, opt.tokenizer_path, weights.config);
  const Tokenizer& tok = opt.tokenizer ? *opt.tokenizer : *loaded_tok;
  PplResult res;
  res.model = opt.model_path;
  res.data = opt.data_path;
  res.reference = reference.name();
  res.ctx = opt.ctx;
  if (opt.ctx > weights.config.max_position_embeddings && weights.config.max_position_embeddings > 0)
    throw std::invalid_argument(fmt::format("--ctx {} exceeds the model's max_position_embeddings {}", opt.ctx,
                                            weights.config.max_position_embeddings));

  const auto t_tok = Clock::now();
  const std::vector<int32_t> ids = opt.text ? tok.encode(*opt.text, true) : tok.encode(read_text_file(opt.data_path), true);
  res.tokenize_seconds = seconds_since(t_tok);
  res.tokens_in_file = static_cast<int64_t>(ids.size());
  res.windows_in_file = res.tokens_in_file / opt.ctx;
  res.windows = opt.max_windows ? std::min(opt.max_windows, res.windows_in_file) : res.windows_in_file;
  if (res.windows == 0)
    throw std::invalid_argument(fmt::format("{}: {} tokens, fewer than one window of --ctx {}", opt.data_path,
                                            res.tokens_in_file, opt.ctx));

  // one executor per scheme; each window is one sequence, prefilled in one step
  const ExecutorFactory make = opt.executor ? opt.executor : cpu_executor_factory();
  std::vector<std::unique_ptr<Executor>> models;
  for (const auto& s : run) models.push_back(make(weights, s));
  res.device = opt.device;
  const int64_t V = weights.config.vocab_size, N = opt.ctx;
  std::vector<double> nll(run.size(), 0.0), kl(run.size(), 0.0), secs(run.size(), 0.0);
  std::vector<int64_t> agree(run.size(), 0), nonfinite(run.size(), 0);
  StepOutput ref_out, cur_out;
  std::vector<double> pos_nll(static_cast<size_t>(N)), pos_kl(static_cast<size_t>(N));  // per predicted position
  std::vector<char> pos_bad(static_cast<size_t>(N)), pos_agree(static_cast<size_t>(N));
  const auto t_start = Clock::now();
  for (int64_t w = 0; w < res.windows; ++w) {
    const int32_t* win = ids.data() + w * N;
    for (size_t s = 0; s < run.size(); ++s) {
      StepEntry entry;
      entry.seq = models[s]->create_sequence(N);
      entry.tokens.assign(win, win + N);
      entry.all_logits = true;
      const auto t0 = Clock::now();
      StepOutput& o = s == 0 ? ref_out : cur_out;
      o = models[s]->step({entry});
      secs[s] += seconds_since(t0);
      models[s]->free_sequence(entry.seq);
      const float* out = o.logits_of(0);
      const float* ref_logits = ref_out.logits_of(0);
      // Every predicted position is scored independently (log-softmax, NLL of the next token, KL
      // from the reference, top-1 agreement), in parallel; the sums then run in position order, so
      // the totals are bit-identical whatever the thread count.
#pragma omp parallel
      {
        std::vector<double> lp, lp_ref;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < N - 1; ++t) {
          const float* row = out + t * V;
          pos_bad[t] = !std::all_of(row, row + V, [](float x) { return std::isfinite(x); });
          if (pos_bad[t]) continue;  // its numbers are withheld (PplRow::nonfinite); the rest still runs
          log_softmax(row, V, lp);
          pos_nll[t] = lp[win[t + 1]];
          if (s == 0) continue;
          log_softmax(ref_logits + t * V, V, lp_ref);
          double d = 0.0;
          for (int64_t i = 0; i < V; ++i) d += std::exp(lp_ref[i]) * (lp_ref[i] - lp[i]);
          pos_kl[t] = d;
          pos_agree[t] = argmax(row, V) == argmax(ref_logits + t * V, V);
        }
      }
      for (int64_t t = 0; t + 1 < N; ++t) {
        if (pos_bad[t]) {
          ++nonfinite[s];
          continue;
        }
        nll[s] -= pos_nll[t];
        if (s == 0) continue;
        kl[s] += pos_kl[t];
        agree[s] += pos_agree[t];
      }
    }
    if (opt.progress) progress_bar(w + 1, res.windows, seconds_since(t_start));
  }
  res.predicted = res.windows * (N - 1);
  const double P = static_cast<double>(res.predicted);
  std::vector<PplRow> rows(run.size());
  for (size_t s = 0; s < run.size(); ++s) {
    rows[s].scheme = run[s].name();
    rows[s].nll = nll[s] / P;
    rows[s].ppl = std::exp(rows[s].nll);
    rows[s].kl = s == 0 ? 0.0 : kl[s] / P;
    rows[s].top1 = s == 0 ? 1.0 : static_cast<double>(agree[s]) / P;
    rows[s].seconds = secs[s];
    rows[s].nonfinite = nonfinite[s];
  }
  for (size_t s = 0; s < run.size(); ++s) {
    rows[s].delta_ppl = rows[s].ppl - rows[0].ppl;
    if (!rows[s].finite() || !rows[0].finite()) {  // nothing computed from non-finite logits is reported
      rows[s].nll = rows[s].ppl = rows[s].kl = rows[s].top1 = rows[s].delta_ppl = std::nan("");
      if (run[s].is_sharq()) rows[s].baseline = sharq_baseline(run[s]).name();
      continue;
    }
    if (run[s].is_sharq() && s > 0) {  // (a SharQ reference has no gap: it is what the others are measured against)
      const PplRow& b = rows[slot.at(sharq_baseline(run[s]).name())];
      rows[s].baseline = b.scheme;
      if (!b.finite()) continue;  // no gap against a non-finite baseline
      const double denom = b.ppl - rows[0].ppl;
      if (denom > 0) rows[s].gap = (b.ppl - rows[s].ppl) / denom;
      // ppl can move either way under quantization noise (out-of-domain text, small models); the
      // divergence from the reference cannot, so its gap is the robust companion metric
      if (b.kl > 0) rows[s].kl_gap = (b.kl - rows[s].kl) / b.kl;
    }
  }
  res.rows = rows;
  return res;
}

std::string format_ppl_table(const PplResult& r) {
  std::string s = fmt::format("ppl: {} on {} (device {})\n  {} tokens, {} windows of {} (of {} in the file), {} predicted tokens; "
                              "tokenized in {:.2f}s\n  reference: {}; gap = (ppl_base - ppl) / (ppl_base - ppl_{})\n\n",
                              r.model, r.data, r.device.empty() ? "cpu" : r.device, r.tokens_in_file, r.windows, r.ctx, r.windows_in_file, r.predicted,
                              r.tokenize_seconds, r.reference, r.reference);
  auto pct = [](const std::optional<double>& g) { return g ? fmt::format("{:.1f}%", 100.0 * *g) : std::string("-"); };
  s += fmt::format("{:<20} {:>10} {:>9} {:>10} {:>7}  {:<12} {:>8} {:>8} {:>8}\n", "scheme", "ppl", "delta", "KL", "top1",
                   "baseline", "gap", "KL_gap", "sec");
  const bool ref_ok = r.rows.empty() || r.rows[0].finite();
  for (const auto& row : r.rows) {
    if (!row.finite() || !ref_ok) {
      const std::string why = !row.finite() ? fmt::format("NON-FINITE logits at {} of {} positions", row.nonfinite, r.predicted)
                                            : std::string("not comparable: the reference's logits are non-finite");
      s += fmt::format("{:<20} {:>10} {:>9} {:>10} {:>7}  {:<12} {}\n", row.scheme, "nan", "-", "-", "-",
                       row.baseline.empty() ? "-" : row.baseline, why);
      continue;
    }
    s += fmt::format("{:<20} {:>10.4f} {:>+9.4f} {:>10.6f} {:>6.2f}%  {:<12} {:>8} {:>8} {:>8.1f}\n", row.scheme, row.ppl,
                     row.delta_ppl, row.kl, 100.0 * row.top1, row.baseline.empty() ? "-" : row.baseline, pct(row.gap),
                     pct(row.kl_gap), row.seconds);
  }
  return s;
}

std::string format_ppl_json(const PplResult& r) {
  nlohmann::json j;
  j["model"] = r.model; j["data"] = r.data; j["reference"] = r.reference; j["ctx"] = r.ctx;
  j["windows"] = r.windows; j["windows_in_file"] = r.windows_in_file; j["tokens_in_file"] = r.tokens_in_file;
  j["predicted_tokens"] = r.predicted; j["tokenize_seconds"] = r.tokenize_seconds;
  j["rows"] = nlohmann::json::array();
  for (const auto& row : r.rows) {
    nlohmann::json o;
    o["scheme"] = row.scheme; o["ppl"] = row.ppl; o["nll"] = row.nll; o["delta_ppl"] = row.delta_ppl;
    o["kl"] = row.kl; o["top1_agreement"] = row.top1; o["seconds"] = row.seconds;
    o["nonfinite_positions"] = row.nonfinite;
    if (!row.finite() || !r.rows[0].finite())
      for (const char* k : {"ppl", "nll", "delta_ppl", "kl", "top1_agreement"}) o[k] = nullptr;
    if (!row.baseline.empty()) o["baseline"] = row.baseline;
    o["gap_recovered"] = row.gap ? nlohmann::json(*row.gap) : nlohmann::json(nullptr);
    o["kl_gap_recovered"] = row.kl_gap ? nlohmann::json(*row.kl_gap) : nlohmann::json(nullptr);
    j["rows"].push_back(o);
  }
  return j.dump(2) + "\n";
}

std::string ppl_nonfinite_summary(const PplResult& r) {
  std::string names;
  for (const auto& row : r.rows)
    if (!row.finite()) names += fmt::format("{}{} ({} of {} positions)", names.empty() ? "" : ", ", row.scheme, row.nonfinite, r.predicted);
  if (names.empty()) return {};
  return fmt::format("non-finite (NaN/Inf) logits from {}; their numbers{} are not reported", names,
                     !r.rows.empty() && !r.rows[0].finite() ? ", and every comparison with the reference," : "");
}

}  // namespace sharq
