#include "sharq/tools/analyze.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>

#include "sharq/decompose/sharq_decompose.h"
#include "sharq/model/tokenizer.h"
#include "sharq/model/weights.h"
#include "sharq/quant/fp8_fold.h"
#include "sharq/quant/quantized_matrix.h"
#include "sharq/runtime/cpu/executor.h"
#include "sharq/runtime/cpu/linear.h"
#include "sharq/tools/scoring.h"

namespace sharq {
namespace {

struct Capture : ProjectionObserver {
  struct Input { int64_t layer; std::string proj; int64_t M, K; std::vector<float> x; };
  std::vector<Input> inputs;
  void on_input(int64_t layer, const char* proj, const float* x, int64_t M, int64_t K) override {
    const std::string p = proj;
    if (p.rfind("experts", 0) == 0) return;  // routed subsets: not comparable across layers
    inputs.push_back({layer, p, M, K, std::vector<float>(x, x + M * K)});
  }
};

// The weights a captured input feeds, the one it is named after first (q_proj's input feeds q, k
// and v; gate_proj's gate and up). The per-scheme errors use the first; the fold table all of them.
std::vector<const TensorView*> weights_reading(const LayerWeights& L, int64_t layer, const std::string& proj) {
  std::vector<const TensorView*> w = proj == "q_proj"      ? std::vector<const TensorView*>{L.q, L.k, L.v}
                                     : proj == "o_proj"    ? std::vector<const TensorView*>{L.o}
                                     : proj == "gate_proj" ? std::vector<const TensorView*>{L.gate, L.up}
                                                           : std::vector<const TensorView*>{L.down};
  if (!w[0]) throw std::logic_error(fmt::format("analyze: layer {} has no weight for input '{}'", layer, proj));
  w.erase(std::remove(w.begin() + 1, w.end(), nullptr), w.end());
  return w;
}

// ||y - ref|| / ||ref|| (FP32 outputs, or the fold table's double ones); NaN if either is non-finite.
template <class T>
double rel_err(const std::vector<T>& y, const std::vector<T>& ref) {
  double n = 0, d = 0;
  for (size_t i = 0; i < y.size(); ++i)
    if (!std::isfinite(y[i]) || !std::isfinite(ref[i])) return std::nan("");
  for (size_t i = 0; i < y.size(); ++i) {
    n += (static_cast<double>(y[i]) - ref[i]) * (static_cast<double>(y[i]) - ref[i]);
    d += static_cast<double>(ref[i]) * ref[i];
  }
  return d > 0 ? std::sqrt(n / d) : 0.0;
}

// ---- the FP8 fold of MXFP4 operands (--mxfp4-fp8) ---------------------------------------------

// A SharQ-MXFP4 backbone block as a dense MXFP4 block: the kept codes at their logical positions.
Mxfp4::block_t expand_backbone(const backbone_block_t<SharqMxfp4, 8>& bb) {
  Mxfp4::block_t b{};
  b.s = bb.s;
  int kept = 0;
  for (int g = 0; g < Mxfp4::kBlock / 8; ++g) {
    const uint8_t bits = pair48_keep_bits(get_nibble(bb.meta, g));
    for (int i = 0; i < 8; ++i)
      if ((bits >> i) & 1u) set_nibble(b.qs, g * 8 + i, get_nibble(bb.qs, kept++));
  }
  return b;
}

// One row of nblocks MXFP4 blocks: its exact values and its values folded tile by tile (E4M3 x 2^t,
// unfolded), into nblocks * 32 floats each; the tile statistics into st.
void fold_row(const Mxfp4::block_t* b, int64_t nblocks, FoldPlaneStats& st, float* exact, float* folded) {
  uint8_t codes[kFoldTile];
  for (int64_t j = 0; j < nblocks; j += kFoldBlocks) {
    const int nb = static_cast<int>(std::min<int64_t>(kFoldBlocks, nblocks - j));
    const Mxfp4Fold f = mxfp4_fold_tile(b + j, nb, codes);
    ++st.tiles;
    st.tiles_inexact += f.inexact > 0;
    st.nonzero += f.nonzero;
    st.inexact += f.inexact;
    for (int k = 0; k < nb * Mxfp4::kBlock; ++k) folded[j * Mxfp4::kBlock + k] = mxfp4_unfold(codes[k], f.t);
  }
  for (int64_t j = 0; j < nblocks; ++j) dequantize_block<Mxfp4>(b[j], exact + j * Mxfp4::kBlock);
}

// Y = X W^T in double: X M x K, W N x K (row-major, the same K).
std::vector<double> matmul_d(const std::vector<double>& x, const std::vector<double>& w, int64_t M, int64_t N, int64_t K) {
  std::vector<double> y(static_cast<size_t>(M * N));
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t m = 0; m < M; ++m) {
      double acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += x[m * K + k] * w[n * K + k];
      y[m * N + n] = acc;
    }
  return y;
}

AnalyzeFoldRow fold_analysis(const std::vector<float>& x, int64_t M, int64_t K, const std::vector<float>& w, int64_t N) {
  AnalyzeFoldRow row;
  const int64_t nb = ceil_div(K, Mxfp4::kBlock), Kp = nb * Mxfp4::kBlock;
  std::vector<float> e(static_cast<size_t>(Kp)), f(static_cast<size_t>(Kp));
  // the reference: X W^T in double, K zero-padded to Kp
  std::vector<double> xd(static_cast<size_t>(M * Kp), 0.0), wd(static_cast<size_t>(N * Kp), 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) xd[m * Kp + k] = x[m * K + k];
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) wd[n * Kp + k] = w[n * K + k];
  const std::vector<double> y32 = matmul_d(xd, wd, M, N, Kp);
  // the weight, exact and folded
  const QuantizedMatrix<Mxfp4> qw = quantize_matrix<Mxfp4>(w.data(), N, K, GlobalScale::none);
  std::vector<double> we(wd.size()), wf(wd.size());
  for (int64_t n = 0; n < N; ++n) {
    fold_row(qw.row(n), nb, row.weight, e.data(), f.data());
    for (int64_t k = 0; k < Kp; ++k) we[n * Kp + k] = e[k], wf[n * Kp + k] = f[k];
  }
  // plain MXFP4 activations
  const QuantizedMatrix<Mxfp4> qx = quantize_matrix<Mxfp4>(x.data(), M, K, GlobalScale::none);
  std::vector<double> xe(xd.size()), xf(xd.size());
  for (int64_t m = 0; m < M; ++m) {
    fold_row(qx.row(m), nb, row.mxfp4_x, e.data(), f.data());
    for (int64_t k = 0; k < Kp; ++k) xe[m * Kp + k] = e[k], xf[m * Kp + k] = f[k];
  }
  const std::vector<double> ym = matmul_d(xe, we, M, N, Kp);
  row.mxfp4_fold_err = rel_err(matmul_d(xf, wf, M, N, Kp), ym);
  row.mxfp4_err = rel_err(ym, y32);
  // SharQ-MXFP4 (pair-4:8): S^ + R^, each plane folded on its own, summed in double
  const auto a = sharq_prepare<SharqMxfp4, 8>(x.data(), M, K, MaskSpec{}.score, GlobalScale::none);
  static_assert(decltype(a)::kResPerSpan == 1, "one MXFP4 residual block per backbone span");
  std::vector<Mxfp4::block_t> sb(static_cast<size_t>(nb));
  std::vector<float> e2(e.size()), f2(f.size());
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t j = 0; j < nb; ++j) sb[j] = expand_backbone(a.backbone[m * a.spans_per_row + j]);
    fold_row(sb.data(), nb, row.sharq_s, e.data(), f.data());
    fold_row(a.residual.data() + m * a.spans_per_row, nb, row.sharq_r, e2.data(), f2.data());
    for (int64_t k = 0; k < Kp; ++k) {
      xe[m * Kp + k] = static_cast<double>(e[k]) + e2[k];
      xf[m * Kp + k] = static_cast<double>(f[k]) + f2[k];
    }
  }
  const std::vector<double> ys = matmul_d(xe, we, M, N, Kp);
  row.sharq_fold_err = rel_err(matmul_d(xf, wf, M, N, Kp), ys);
  row.sharq_err = rel_err(ys, y32);
  return row;
}

}  // namespace

AnalyzeResult run_analyze(const AnalyzeOptions& opt) {
  const std::vector<Scheme> schemes = parse_scheme_list(opt.schemes);
  if (opt.tokens < 1) throw std::invalid_argument(fmt::format("--tokens: {} is not an integer >= 1", opt.tokens));
  const ModelWeights weights = load_model_weights(opt.model_path, LoadOptions{opt.allow_nonfinite});
  const int64_t max_pos = weights.config.max_position_embeddings;
  if (max_pos > 0 && opt.tokens > max_pos)
    throw std::invalid_argument(fmt::format("--tokens {} exceeds the model's max_position_embeddings {}", opt.tokens, max_pos));
  const auto tok = load_tokenizer_for(opt.model_path, opt.tokenizer_path, weights.config);
  std::vector<int32_t> ids = tok->encode(read_text_file(opt.data_path), true);
  if (static_cast<int64_t>(ids.size()) < opt.tokens)  // as ppl refuses a file shorter than one window
    throw std::invalid_argument(fmt::format("{}: {} tokens, fewer than --tokens {}", opt.data_path, ids.size(), opt.tokens));
  ids.resize(static_cast<size_t>(opt.tokens));
  CpuExecutor model(weights, Scheme{});
  Capture cap;
  model.set_observer(&cap);
  StepEntry entry;
  entry.seq = model.create_sequence(static_cast<int64_t>(ids.size()));
  entry.tokens = ids;
  model.step({entry});

  AnalyzeResult res;
  res.model = opt.model_path;
  res.data = opt.data_path;
  res.tokens = static_cast<int64_t>(ids.size());
  for (const auto& s : schemes) res.schemes.push_back(s.name());
  for (const auto& in : cap.inputs) {
    AnalyzeRow row;
    row.layer = in.layer;
    row.proj = in.proj;
    row.K = in.K;
    std::vector<double> ch(static_cast<size_t>(in.K), 0.0);
    double ratio = 0, m1 = 0, m2 = 0, m4 = 0;
    for (int64_t m = 0; m < in.M; ++m) {
      double mx = 0, mean = 0;
      for (int64_t k = 0; k < in.K; ++k) {
        const double a = std::fabs(in.x[m * in.K + k]);
        mx = std::max(mx, a);
        mean += a;
        ch[k] += a / static_cast<double>(in.M);
        m1 += in.x[m * in.K + k];
      }
      mean /= static_cast<double>(in.K);
      ratio += mean > 0 ? mx / mean : 0.0;
    }
    const double n = static_cast<double>(in.x.size());
    m1 /= n;
    for (float v : in.x) { const double d = v - m1; m2 += d * d; m4 += d * d * d * d; }
    m2 /= n; m4 /= n;
    row.max_mean_ratio = ratio / static_cast<double>(in.M);
    row.kurtosis = m2 > 0 ? m4 / (m2 * m2) : 0.0;
    row.nonfinite_inputs = std::count_if(in.x.begin(), in.x.end(), [](float v) { return !std::isfinite(v); });
    if (row.nonfinite_inputs) row.max_mean_ratio = row.kurtosis = std::nan("");  // not statistics of a real input
    std::vector<int64_t> order(static_cast<size_t>(in.K));
    for (int64_t k = 0; k < in.K; ++k) order[k] = k;
    std::partial_sort(order.begin(), order.begin() + std::min<int64_t>(5, in.K), order.end(),
                      [&](int64_t a, int64_t b) { return ch[a] > ch[b]; });
    for (int64_t i = 0; i < std::min<int64_t>(5, in.K); ++i) row.top_channels.push_back({order[i], ch[order[i]]});

    const std::vector<const TensorView*> readers = weights_reading(weights.layer(in.layer), in.layer, in.proj);
    const std::vector<float> w = to_f32(*readers[0]);  // one tensor at a time
    const int64_t N = static_cast<int64_t>(w.size()) / in.K;
    std::vector<float> yref(static_cast<size_t>(in.M * N)), y(yref.size());
    Linear::create(Scheme{}, w.data(), N, in.K)->forward(in.x.data(), in.M, yref.data());
    for (const auto& s : schemes) {
      Linear::create(s, w.data(), N, in.K)->forward(in.x.data(), in.M, y.data());
      row.rel_err.push_back(rel_err(y, yref));
    }
    if (opt.mxfp4_fp8) {  // every weight that reads this input: q, k, v (or gate, up) stacked along N
      std::vector<float> ws = w;
      for (size_t i = 1; i < readers.size(); ++i) {
        const std::vector<float> more = to_f32(*readers[i]);
        ws.insert(ws.end(), more.begin(), more.end());
      }
      res.fold.push_back(fold_analysis(in.x, in.M, in.K, ws, static_cast<int64_t>(ws.size()) / in.K));
    }
    res.rows.push_back(std::move(row));
  }
  return res;
}

std::string format_analyze_table(const AnalyzeResult& r) {
  std::string s = fmt::format("analyze: {} on the first {} tokens of {}\n"
                              "  ratio = mean over tokens of max|x|/mean|x|; kurt = Pearson kurtosis (Gaussian 3);\n"
                              "  errors = ||XW^T - Q(X)Q(W)^T|| / ||XW^T|| of the layer alone\n\n",
                              r.model, r.tokens, r.data);
  s += fmt::format("{:>5} {:<10} {:>6} {:>8} {:>9}  ", "layer", "input", "K", "ratio", "kurt");
  for (const auto& sc : r.schemes) s += fmt::format("{:>12} ", sc.substr(0, 12));
  s += " top channels (mean |x|)\n";
  for (const auto& row : r.rows) {
    s += fmt::format("{:>5} {:<10} {:>6} {:>8.1f} {:>9.1f}  ", row.layer, row.proj, row.K, row.max_mean_ratio, row.kurtosis);
    for (double e : row.rel_err) s += fmt::format("{:>12.4e} ", e);
    s += " ";
    for (const auto& [c, v] : row.top_channels) s += fmt::format("{}:{:.3f} ", c, v);
    s += "\n";
  }
  if (r.fold.empty()) return s;
  s += "\nMXFP4 on FP8 tensor cores: each operand plane in 128-K tiles of one row, E4M3 values x one power-of-two\n"
       "scale per tile (quant/fp8_fold.h). tiles% / vals%: the tiles with an element E4M3 cannot hold (a block\n"
       "more than 2^14 below the tile's largest), and those elements among the nonzero ones. fold: ||Y_fold - Y||/||Y||\n"
       "with the inexact elements rounded to E4M3 (the flush); own: the exact MXFP4 product's ||Y - Y_fp32||/||Y_fp32||.\n"
       "W and Y cover every weight that reads the input: q, k, v for q_proj's; gate, up for gate_proj's.\n\n";
  s += fmt::format("{:>5} {:<10} | {:>15} | {:>15} | {:>15} | {:>15} | {:>21} | {:>21}\n", "layer", "input", "W tiles% vals%",
                   "mxfp4 X", "sharq S^", "sharq R^", "mxfp4 fold / own", "sharq-mxfp4 fold/own");
  auto pct = [](const FoldPlaneStats& p) {
    return fmt::format("{:>6.2f} {:>8.4f}", p.tiles ? 100.0 * p.tiles_inexact / p.tiles : 0.0,
                       p.nonzero ? 100.0 * p.inexact / p.nonzero : 0.0);
  };
  FoldPlaneStats tot[4];
  for (size_t i = 0; i < r.fold.size() && i < r.rows.size(); ++i) {
    const AnalyzeFoldRow& f = r.fold[i];
    s += fmt::format("{:>5} {:<10} | {} | {} | {} | {} | {:>10.3e} {:>10.3e} | {:>10.3e} {:>10.3e}\n", r.rows[i].layer,
                     r.rows[i].proj, pct(f.weight), pct(f.mxfp4_x), pct(f.sharq_s), pct(f.sharq_r), f.mxfp4_fold_err,
                     f.mxfp4_err, f.sharq_fold_err, f.sharq_err);
    const FoldPlaneStats* p[4] = {&f.weight, &f.mxfp4_x, &f.sharq_s, &f.sharq_r};
    for (int j = 0; j < 4; ++j) {
      tot[j].tiles += p[j]->tiles;
      tot[j].tiles_inexact += p[j]->tiles_inexact;
      tot[j].nonzero += p[j]->nonzero;
      tot[j].inexact += p[j]->inexact;
    }
  }
  s += fmt::format("{:>5} {:<10} | {} | {} | {} | {} |\n", "all", "", pct(tot[0]), pct(tot[1]), pct(tot[2]), pct(tot[3]));
  return s;
}

std::string render_analyze_svg(const AnalyzeResult& r) {
  // one panel per projection input; x = layer, y = log10(relative error), one line per scheme
  std::vector<std::string> projs;
  for (const auto& row : r.rows)
    if (std::find(projs.begin(), projs.end(), row.proj) == projs.end()) projs.push_back(row.proj);
  int64_t layers = 0;
  double lo = 1e300, hi = -1e300;
  for (const auto& row : r.rows) {
    layers = std::max(layers, row.layer + 1);
    for (double e : row.rel_err)
      if (e > 0) { lo = std::min(lo, std::log10(e)); hi = std::max(hi, std::log10(e)); }
  }
  if (lo > hi) { lo = -3; hi = 0; }
  lo = std::floor(lo); hi = std::ceil(hi);
  if (hi <= lo) hi = lo + 1;
  const int pw = 360, ph = 240, ml = 60, mt = 40, gap = 40;
  const int W = ml + static_cast<int>(projs.size()) * (pw + gap) + 180, H = mt + ph + 70;
  static const char* colors[] = {"#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};
  std::string s = fmt::format("<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}' font-family='sans-serif' font-size='12'>\n"
                              "<rect width='100%' height='100%' fill='white'/>\n"
                              "<text x='{}' y='20' font-size='14'>Per-layer relative output error (log scale): {}</text>\n",
                              W, H, ml, r.model);
  for (size_t p = 0; p < projs.size(); ++p) {
    const int x0 = ml + static_cast<int>(p) * (pw + gap), y0 = mt;
    s += fmt::format("<rect x='{}' y='{}' width='{}' height='{}' fill='none' stroke='#444'/>\n", x0, y0, pw, ph);
    s += fmt::format("<text x='{}' y='{}'>{} input</text>\n", x0 + 4, y0 - 6, projs[p]);
    for (double d = lo; d <= hi + 1e-9; d += 1) {
      const double y = y0 + ph - (d - lo) / (hi - lo) * ph;
      s += fmt::format("<line x1='{}' x2='{}' y1='{:.1f}' y2='{:.1f}' stroke='#ddd'/><text x='{}' y='{:.1f}' text-anchor='end'>1e{}</text>\n",
                       x0, x0 + pw, y, y, x0 - 4, y + 4, static_cast<int>(d));
    }
    auto X = [&](int64_t l) { return x0 + (layers > 1 ? static_cast<double>(l) / (layers - 1) : 0.5) * pw; };
    for (int64_t l = 0; l < layers; ++l)
      s += fmt::format("<text x='{:.1f}' y='{}' text-anchor='middle'>{}</text>\n", X(l), y0 + ph + 16, l);
    for (size_t k = 0; k < r.schemes.size(); ++k) {
      std::string pts;
      for (const auto& row : r.rows)
        if (row.proj == projs[p] && row.rel_err[k] > 0)
          pts += fmt::format("{:.1f},{:.1f} ", X(row.layer), y0 + ph - (std::log10(row.rel_err[k]) - lo) / (hi - lo) * ph);
      s += fmt::format("<polyline fill='none' stroke='{}' stroke-width='2' points='{}'/>\n", colors[k % 8], pts);
    }
  }
  const int lx = ml + static_cast<int>(projs.size()) * (pw + gap);
  for (size_t k = 0; k < r.schemes.size(); ++k)
    s += fmt::format("<line x1='{}' x2='{}' y1='{}' y2='{}' stroke='{}' stroke-width='3'/><text x='{}' y='{}'>{}</text>\n", lx,
                     lx + 20, mt + 10 + 18 * k, mt + 10 + 18 * k, colors[k % 8], lx + 26, mt + 14 + 18 * k, r.schemes[k]);
  s += fmt::format("<text x='{}' y='{}'>layer</text>\n</svg>\n", ml, mt + ph + 40);
  return s;
}

std::string analyze_nonfinite_summary(const AnalyzeResult& r) {
  int64_t bad = 0;
  std::string first;
  for (size_t i = 0; i < r.rows.size(); ++i) {
    const AnalyzeRow& row = r.rows[i];
    bool b = row.nonfinite_inputs > 0;
    for (double e : row.rel_err) b = b || !std::isfinite(e);
    if (i < r.fold.size())
      for (double e : {r.fold[i].mxfp4_fold_err, r.fold[i].mxfp4_err, r.fold[i].sharq_fold_err, r.fold[i].sharq_err})
        b = b || !std::isfinite(e);
    if (!b) continue;
    if (bad++ < 3) first += fmt::format("{}layer {} {}", first.empty() ? "" : ", ", row.layer, row.proj);
  }
  if (!bad) return {};
  return fmt::format("non-finite (NaN/Inf) inputs or outputs in {} of {} rows (first: {}); shown as nan", bad, r.rows.size(), first);
}

}  // namespace sharq
