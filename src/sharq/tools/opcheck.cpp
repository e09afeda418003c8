#include "sharq/tools/opcheck.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <random>
#include <stdexcept>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "sharq/io/npy.h"

namespace sharq {
namespace {

// Platform-independent variates from mt19937_64's fully specified output.
struct Rng {
  std::mt19937_64 gen;
  explicit Rng(uint64_t seed) : gen(seed) {}
  double uniform() { return static_cast<double>(gen() >> 11) * 0x1.0p-53; }  // [0, 1)
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  double normal() {  // Box-Muller, one value per call
    const double u1 = 1.0 - uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
  }
  double student_t4() {
    const double z = normal();
    double chi2 = 0;
    for (int i = 0; i < 4; ++i) { const double g = normal(); chi2 += g * g; }
    return z / std::sqrt(chi2 / 4.0);
  }
  int64_t below(int64_t n) { return static_cast<int64_t>(uniform() * static_cast<double>(n)); }
};

double rel_error(const std::vector<float>& y, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    const double d = static_cast<double>(y[i]) - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

std::vector<float> load_matrix(const std::string& path, const char* what, int64_t& rows, int64_t& cols) {
  NpyArray a = read_npy(path);
  if (a.shape.size() != 2)
    throw std::invalid_argument(fmt::format("{}: {} must be a 2-D array, but its npy 'shape' ({}) has {} dimensions", path, what,
                                            fmt::join(a.shape, ", "), a.shape.size()));
  rows = a.shape[0];
  cols = a.shape[1];
  if (rows == 0 || cols == 0)  // a valid .npy, but nothing to measure
    throw std::invalid_argument(fmt::format("{}: {} is {}x{}, an empty array: opcheck needs every dimension >= 1", path, what,
                                            rows, cols));
  // a NaN or Inf makes every error NaN: a table of nan / null, not a measurement
  for (size_t i = 0; i < a.data.size(); ++i)
    if (!std::isfinite(a.data[i]))
      throw std::invalid_argument(fmt::format("{}: {} holds the non-finite value {} at [{}, {}]", path, what, a.data[i],
                                              static_cast<int64_t>(i) / cols, static_cast<int64_t>(i) % cols));
  return std::move(a.data);
}

std::string file_stem(const std::string& scheme) {
  std::string s = scheme;
  for (char& c : s)
    if (c == ':') c = '_';
  return s;
}

std::vector<float> scaled_rows(const std::vector<float>& v, int64_t rows, int64_t cols, const std::vector<float>& s) {
  std::vector<float> out(v.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = v[r * cols + c] * s[r];
  return out;
}

}  // namespace

std::vector<float> make_outlier_activations(int64_t M, int64_t K, uint64_t seed, const OutlierActivationParams& p) {
  check_shape("make_outlier_activations", M, K);
  Rng rng(seed);
  std::vector<float> scale(static_cast<size_t>(K), 1.0f);
  if (K > 0) {
    const int64_t n_out = std::max<int64_t>(1, std::llround(static_cast<double>(K) * p.channel_fraction));
    std::vector<int64_t> perm(static_cast<size_t>(K));
    for (int64_t i = 0; i < K; ++i) perm[i] = i;
    for (int64_t i = 0; i < std::min(n_out, K); ++i) {  // partial Fisher-Yates
      std::swap(perm[i], perm[i + rng.below(K - i)]);
      scale[perm[i]] = static_cast<float>(rng.uniform(p.channel_scale_lo, p.channel_scale_hi));
    }
  }
  std::vector<float> x(static_cast<size_t>(M * K));
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t k = 0; k < K; ++k) x[m * K + k] = static_cast<float>(rng.student_t4()) * scale[k];
    if (K > 0 && rng.uniform() < p.spike_prob) {
      const int spikes = 1 + static_cast<int>(rng.below(3));
      for (int s = 0; s < spikes; ++s) {
        const int64_t k = rng.below(K);
        const double sign = rng.uniform() < 0.5 ? -1.0 : 1.0;
        x[m * K + k] = static_cast<float>(sign * rng.uniform(p.spike_lo, p.spike_hi));
      }
    }
  }
  return x;
}

std::vector<float> make_gaussian_weights(int64_t N, int64_t K, uint64_t seed) {
  check_shape("make_gaussian_weights", N, K);
  Rng rng(seed);
  const double sd = K > 0 ? 1.0 / std::sqrt(static_cast<double>(K)) : 1.0;
  std::vector<float> w(static_cast<size_t>(N * K));
  for (auto& v : w) v = static_cast<float>(rng.normal() * sd);
  return w;
}

double opcheck_bytes(int64_t M, int64_t K, int64_t N) {
  const double m = static_cast<double>(M), k = static_cast<double>(K), n = static_cast<double>(N);
  // X, W, X^, W^, the operand planes (x, w, s^, r^) and the quantized weight: about 4 MK + 4 NK
  // floats; Y_fp32, Y and the one-operand output: 3 MN floats
  return 4.0 * (4.0 * m * k + 4.0 * n * k + 3.0 * m * n);
}

OpcheckResult run_opcheck(const OpcheckConfig& cfg) {
  OpcheckResult res;
  std::vector<Scheme> schemes = parse_scheme_list(cfg.schemes);
  const Scheme reference = parse_scheme(cfg.reference);

  // ---- inputs
  int64_t M = cfg.M, K = cfg.K, N = cfg.N;
  std::vector<float> X, W;
  if (!cfg.x_path.empty()) {
    X = load_matrix(cfg.x_path, "X", M, K);
    res.x_source = cfg.x_path;
  }
  if (!cfg.w_path.empty()) {
    int64_t wk = 0;
    W = load_matrix(cfg.w_path, "W", N, wk);
    if (!cfg.x_path.empty() && wk != K)
      throw std::invalid_argument(fmt::format("shape mismatch: X is {}x{} but W ({}) is {}x{}; W must be N x K (nn.Linear layout)",
                                              M, K, cfg.w_path, N, wk));
    K = wk;
    res.w_source = cfg.w_path;
  }
  // refuse empty shapes (nothing to measure: every error would print as 0) and sizes beyond the
  // memory bound, naming where each dimension came from
  auto dims = [&] {
    return fmt::format("M={} (-M{}), K={} (-K{}), N={} (-N{})", M, cfg.x_path.empty() ? "" : ", from --x " + cfg.x_path, K,
                       cfg.x_path.empty() && cfg.w_path.empty() ? "" : ", from the .npy inputs", N,
                       cfg.w_path.empty() ? "" : ", from --w " + cfg.w_path);
  };
  if (M < 1 || K < 1 || N < 1)
    throw std::invalid_argument(fmt::format("opcheck: empty shape {}: every dimension must be >= 1", dims()));
  const double need = opcheck_bytes(M, K, N);
  if (need > static_cast<double>(cfg.max_bytes))
    throw std::invalid_argument(fmt::format("opcheck: {} needs about {:.1f} GiB (X, W, Y and one scheme's quantized "
                                            "copies), more than the {:.1f} GiB limit",
                                            dims(), need / 1073741824.0, static_cast<double>(cfg.max_bytes) / 1073741824.0));
  check_shape("opcheck X", M, K);
  check_shape("opcheck W", N, K);
  if (X.empty() && M * K > 0) {
    X = make_outlier_activations(M, K, cfg.seed);
    res.x_source = fmt::format("synthetic outlier activations (seed {})", cfg.seed);
  }
  if (W.empty() && N * K > 0) {
    W = make_gaussian_weights(N, K, cfg.seed + 1);
    res.w_source = fmt::format("gaussian N(0,1/K) (seed {})", cfg.seed + 1);
  }
  if (res.x_source.empty()) res.x_source = "empty";
  if (res.w_source.empty()) res.w_source = "empty";
  res.M = M; res.K = K; res.N = N; res.seed = cfg.seed;
  res.reference = reference.name();

  const bool save = !cfg.save_dir.empty();
  if (save) {
    std::filesystem::create_directories(cfg.save_dir);
    write_npy(cfg.save_dir + "/X.npy", X.data(), {M, K});
    write_npy(cfg.save_dir + "/W.npy", W.data(), {N, K});
  }

  // ---- run: fp32 truth, the reference, every scheme, and any SharQ baseline not listed
  std::map<std::string, double> err;
  std::map<std::string, OpcheckRow> computed;
  const auto fp32 = Linear::create(Scheme{}, W.data(), N, K);
  std::vector<float> Y32(static_cast<size_t>(M * N));
  fp32->forward(X.data(), M, Y32.data());
  for (size_t i = 0; i < Y32.size(); ++i)  // finite inputs whose products overflow FP32
    if (!std::isfinite(Y32[i]))
      throw std::invalid_argument(fmt::format("opcheck: the FP32 reference output Y = X W^T overflows at [{}, {}] ({}): "
                                              "X ({}) and W ({}) are too large to measure against",
                                              static_cast<int64_t>(i) / N, static_cast<int64_t>(i) % N, Y32[i],
                                              res.x_source, res.w_source));

  auto run = [&](const Scheme& s) -> const OpcheckRow& {
    const std::string name = s.name();
    if (auto it = computed.find(name); it != computed.end()) return it->second;
    const auto lin = Linear::create(s, W.data(), N, K);
    std::vector<float> Y(static_cast<size_t>(M * N));
    const auto t0 = std::chrono::steady_clock::now();
    lin->forward(X.data(), M, Y.data());
    const auto t1 = std::chrono::steady_clock::now();
    OpcheckRow row;
    row.scheme = name;
    row.rel_err = rel_error(Y, Y32);
    row.bits_per_weight = N * K > 0 ? 8.0 * static_cast<double>(lin->weight_bytes()) / static_cast<double>(N * K) : 0.0;
    row.ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
    // error split: each quantized operand against the exact other one (real domain, FP32)
    const LinearOperands op = lin->operands(X.data(), M);
    const std::vector<float> xhat = scaled_rows(op.x, M, K, op.row_scale);
    const std::vector<float> what = scaled_rows(op.w, N, K, op.col_scale);
    std::vector<float> Yp(static_cast<size_t>(M * N));
    fp32->forward(xhat.data(), M, Yp.data());
    row.act_err = rel_error(Yp, Y32);
    Linear::create(Scheme{}, what.data(), N, K)->forward(X.data(), M, Yp.data());
    row.weight_err = rel_error(Yp, Y32);
    if (save) {
      const std::string stem = cfg.save_dir + "/" + file_stem(name);
      write_npy(stem + "_Y.npy", Y.data(), {M, N});
      write_npy(stem + "_Xhat.npy", xhat.data(), {M, K});
      if (s.is_sharq()) {
        write_npy(stem + "_Shat.npy", scaled_rows(op.s_hat, M, K, op.row_scale).data(), {M, K});
        write_npy(stem + "_Rhat.npy", scaled_rows(op.r_hat, M, K, op.row_scale).data(), {M, K});
      }
      write_npy(stem + "_What.npy", what.data(), {N, K});
    }
    return computed.emplace(name, row).first->second;
  };

  const OpcheckRow& ref_row = run(reference);
  res.reference_err = ref_row.rel_err;
  res.reference_act_err = ref_row.act_err;
  for (const Scheme& s : schemes) {
    OpcheckRow row = run(s);
    if (s.is_sharq()) {
      const Scheme b = sharq_baseline(s);
      const OpcheckRow& br = run(b);
      row.baseline = br.scheme;
      const double denom = br.rel_err - res.reference_err;
      if (denom > 0) row.gap = (br.rel_err - row.rel_err) / denom;
      const double act_denom = br.act_err - res.reference_act_err;
      if (act_denom > 0) row.act_gap = (br.act_err - row.act_err) / act_denom;
    }
    res.rows.push_back(row);
  }
  return res;
}

std::string format_opcheck_table(const OpcheckResult& r) {
  auto pct = [](const std::optional<double>& g) { return g ? fmt::format("{:.1f}%", 100.0 * *g) : std::string("-"); };
  std::string s = fmt::format("opcheck: Y = X W^T, M={} K={} N={}\n  X: {}\n  W: {}\n", r.M, r.K, r.N, r.x_source, r.w_source);
  s += "  rel_err = ||Y - Y_fp32|| / ||Y_fp32||; act_err / w_err: the same with only X / only W quantized\n";
  s += fmt::format("  gap = (err_base - err) / (err_base - err_{}), on rel_err and on act_err\n\n", r.reference);
  s += fmt::format("{:<20} {:>10} {:>10} {:>10} {:>7} {:>9}  {:<12} {:>8} {:>8}\n", "scheme", "rel_err", "act_err", "w_err",
                   "bits/w", "cpu_ms", "baseline", "gap", "act_gap");
  for (const auto& row : r.rows) {
    s += fmt::format("{:<20} {:>10.3e} {:>10.3e} {:>10.3e} {:>7.3f} {:>9.2f}  {:<12} {:>8} {:>8}\n", row.scheme, row.rel_err,
                     row.act_err, row.weight_err, row.bits_per_weight, row.ms, row.baseline.empty() ? "-" : row.baseline,
                     pct(row.gap), pct(row.act_gap));
  }
  return s;
}

std::string format_opcheck_csv(const OpcheckResult& r) {
  auto num = [](const std::optional<double>& g) { return g ? fmt::format("{:.6f}", *g) : std::string(); };
  std::string s = "scheme,M,K,N,rel_err,act_err,weight_err,bits_per_weight,cpu_ms,baseline,gap_recovered,act_gap_recovered\n";
  for (const auto& row : r.rows)
    s += fmt::format("{},{},{},{},{:.9e},{:.9e},{:.9e},{:.4f},{:.3f},{},{},{}\n", row.scheme, r.M, r.K, r.N, row.rel_err,
                     row.act_err, row.weight_err, row.bits_per_weight, row.ms, row.baseline, num(row.gap), num(row.act_gap));
  return s;
}

std::string format_opcheck_json(const OpcheckResult& r) {
  nlohmann::json j;
  j["M"] = r.M; j["K"] = r.K; j["N"] = r.N; j["seed"] = r.seed;
  j["x_source"] = r.x_source; j["w_source"] = r.w_source;
  j["reference"] = r.reference; j["reference_rel_err"] = r.reference_err;
  j["reference_act_err"] = r.reference_act_err;
  j["rows"] = nlohmann::json::array();
  for (const auto& row : r.rows) {
    nlohmann::json o;
    o["scheme"] = row.scheme;
    o["rel_err"] = row.rel_err;
    o["act_err"] = row.act_err;
    o["weight_err"] = row.weight_err;
    o["bits_per_weight"] = row.bits_per_weight;
    o["cpu_ms"] = row.ms;
    if (!row.baseline.empty()) o["baseline"] = row.baseline;
    o["gap_recovered"] = row.gap ? nlohmann::json(*row.gap) : nlohmann::json(nullptr);
    o["act_gap_recovered"] = row.act_gap ? nlohmann::json(*row.act_gap) : nlohmann::json(nullptr);
    j["rows"].push_back(o);
  }
  return j.dump(2) + "\n";
}

}  // namespace sharq
