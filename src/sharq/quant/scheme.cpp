#include "sharq/quant/scheme.h"

#include <algorithm>

#include <cstdio>
#include <map>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>

namespace sharq {

namespace {

struct BaseName { const char* name; SchemeKind kind; };
constexpr BaseName kBaseNames[] = {
    {"fp32", SchemeKind::fp32},   {"fp16", SchemeKind::fp16},   {"bf16", SchemeKind::bf16},
    {"fp8", SchemeKind::fp8},     {"w4a16", SchemeKind::w4a16}, {"nvfp4", SchemeKind::nvfp4},
    {"mxfp4", SchemeKind::mxfp4}, {"hif4", SchemeKind::hif4},   {"sharq", SchemeKind::sharq},
    {"sharq-mxfp4", SchemeKind::sharq_mxfp4}, {"sharq-hif4", SchemeKind::sharq_hif4},
};

const char* base_name(SchemeKind k) {
  for (const auto& b : kBaseNames)
    if (b.kind == k) return b.name;
  return "?";
}

MaskSpec default_mask(SchemeKind k) {
  MaskSpec m;
  m.kind = k == SchemeKind::sharq_hif4 ? MaskKind::scalar24 : MaskKind::pair48;
  return m;
}

std::string join_names() {
  std::string s;
  for (const auto& b : kBaseNames) {
    if (!s.empty()) s += ", ";
    s += b.name;
  }
  return s;
}

}  // namespace

const std::vector<std::string>& scheme_base_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (const auto& b : kBaseNames) v.emplace_back(b.name);
    return v;
  }();
  return names;
}

const char* scheme_options_help() {
  return "  p48 | s24 | nmN_M       mask of the SharQ backbone (default p48; sharq-hif4: s24; nmN_M: CPU only)\n"
         "  max | l1 | l2 | maxmin  pair score of the p48 mask (default max)\n"
         "  token | tensor          activation scale of nvfp4/sharq (default token: per-row, batch-invariant\n"
         "                          up to the GPU's prefill split-K, docs/numerics.md; tensor: the paper's\n"
         "                          per-tensor g_x)\n"
         "  merged                  sharq: pre-add the paths in FP16, one GEMM (GPU speed mode)\n"
         "  w16                     sharq: NVFP4-16 weights instead of the shared W32 payload\n";
}

bool Scheme::is_sharq() const {
  return kind == SchemeKind::sharq || kind == SchemeKind::sharq_mxfp4 || kind == SchemeKind::sharq_hif4;
}
bool Scheme::has_act_global_scale() const { return kind == SchemeKind::nvfp4 || kind == SchemeKind::sharq; }
bool Scheme::is_fp4_weight() const {
  return kind == SchemeKind::w4a16 || kind == SchemeKind::nvfp4 || kind == SchemeKind::sharq;
}
int Scheme::fp4_weight_block() const {
  if (kind == SchemeKind::sharq) return w16 ? 16 : 32;
  return kind == SchemeKind::w4a16 || kind == SchemeKind::nvfp4 ? 16 : 0;
}

bool operator==(const Scheme& a, const Scheme& b) { return a.name() == b.name(); }

std::string Scheme::name() const {
  std::string s = base_name(kind);
  if (is_sharq()) {
    const MaskSpec def = default_mask(kind);
    if (mask.kind != def.kind || (mask.kind == MaskKind::nm)) {
      s += ':';
      s += to_string(MaskSpec{mask.kind, PairScore::max, mask.n, mask.m});
    }
    if (mask.kind == MaskKind::pair48 && mask.score != PairScore::max) {
      static const char* names[] = {"max", "l1", "l2", "maxmin"};
      s += ':';
      s += names[static_cast<int>(mask.score)];
    }
  }
  if (has_act_global_scale() && act_scale == GlobalScale::per_tensor) s += ":tensor";
  if (merged) s += ":merged";
  if (w16) s += ":w16";
  return s;
}

Scheme parse_scheme(const std::string& text) {
  std::vector<std::string> parts;
  std::stringstream ss(text);
  for (std::string p; std::getline(ss, p, ':');) parts.push_back(p);
  if (parts.empty() || parts[0].empty()) throw std::invalid_argument(fmt::format("empty scheme name; known schemes: {}", join_names()));
  Scheme s;
  bool found = false;
  for (const auto& b : kBaseNames)
    if (parts[0] == b.name) { s.kind = b.kind; found = true; }
  if (!found) throw std::invalid_argument(fmt::format("unknown scheme '{}'; known schemes: {}", parts[0], join_names()));
  s.mask = default_mask(s.kind);
  if (text.back() == ':') throw std::invalid_argument(fmt::format("scheme '{}': empty option after the last ':'", text));
  // each option group may be set once: "sharq:p48:s24" would otherwise mean whatever came last
  std::map<std::string, std::string> group_of_set;
  auto once = [&](const char* group, const std::string& w) {
    const auto [it, fresh] = group_of_set.emplace(group, w);
    if (!fresh)
      throw std::invalid_argument(fmt::format("scheme '{}': options '{}' and '{}' both set the {}", text, it->second, w, group));
  };
  for (size_t i = 1; i < parts.size(); ++i) {
    const std::string& w = parts[i];
    if (w.empty()) throw std::invalid_argument(fmt::format("scheme '{}': empty option (two ':' in a row)", text));
    if (w == "p48" || w == "s24" || w.rfind("nm", 0) == 0) once("mask", w);
    if (w == "max" || w == "l1" || w == "l2" || w == "maxmin") once("pair score", w);
    if (w == "tensor" || w == "token") once("activation scale", w);
    if (w == "merged" || w == "w16") once(w.c_str(), w);
    const bool mask_word = w == "p48" || w == "s24" || w.rfind("nm", 0) == 0 || w == "max" || w == "l1" ||
                           w == "l2" || w == "maxmin";
    if (mask_word && !s.is_sharq())
      throw std::invalid_argument(fmt::format("scheme '{}': option '{}' applies to sharq variants only", text, w));
    if (w == "p48") s.mask.kind = MaskKind::pair48;
    else if (w == "s24") s.mask.kind = MaskKind::scalar24;
    else if (w == "max") s.mask.score = PairScore::max;
    else if (w == "l1") s.mask.score = PairScore::l1;
    else if (w == "l2") s.mask.score = PairScore::l2sq;
    else if (w == "maxmin") s.mask.score = PairScore::max_quarter_min;
    else if (w.rfind("nm", 0) == 0) {
      int n = 0, m = 0;
      char extra = 0;
      if (std::sscanf(w.c_str(), "nm%d_%d%c", &n, &m, &extra) != 2 || n < 0 || m < 1 || n > m || m > 256)
        throw std::invalid_argument(fmt::format("scheme '{}': bad N:M option '{}' (expected nmN_M, 0 <= N <= M <= 256)", text, w));
      s.mask.kind = MaskKind::nm;
      s.mask.n = n;
      s.mask.m = m;
    } else if (w == "tensor" || w == "token") {
      if (!s.has_act_global_scale())
        throw std::invalid_argument(fmt::format("scheme '{}': option '{}' applies to nvfp4 and sharq only", text, w));
      s.act_scale = w == "token" ? GlobalScale::per_row : GlobalScale::per_tensor;
    } else if (w == "merged" || w == "w16") {
      if (s.kind != SchemeKind::sharq)
        throw std::invalid_argument(fmt::format("scheme '{}': option '{}' applies to sharq (NVFP4) only", text, w));
      (w == "merged" ? s.merged : s.w16) = true;
    } else {
      throw std::invalid_argument(fmt::format(
          "scheme '{}': unknown option '{}' (known: p48, s24, nmN_M, max, l1, l2, maxmin, token, tensor, merged, w16)",
          text, w));
    }
  }
  if (s.mask.kind != MaskKind::pair48 && s.mask.score != PairScore::max)
    throw std::invalid_argument(fmt::format("scheme '{}': pair scores (l1, l2, maxmin) apply to the p48 mask only", text));
  return s;
}

std::vector<Scheme> parse_scheme_list(const std::string& csv) {
  std::vector<Scheme> out;
  std::stringstream ss(csv);
  for (std::string p; std::getline(ss, p, ',');) {
    if (p.empty()) throw std::invalid_argument(fmt::format("scheme list '{}' has an empty item", csv));
    const Scheme s = parse_scheme(p);
    // the same scheme twice (also under two spellings, "sharq" and "sharq:token") would run twice
    if (std::find(out.begin(), out.end(), s) != out.end())
      throw std::invalid_argument(fmt::format("scheme list '{}' names the scheme '{}' twice", csv, s.name()));
    out.push_back(s);
  }
  if (out.empty()) throw std::invalid_argument("empty scheme list");
  if (csv.back() == ',') throw std::invalid_argument(fmt::format("scheme list '{}' has an empty item", csv));
  return out;
}

Scheme sharq_baseline(const Scheme& s) {
  Scheme b;
  switch (s.kind) {
    case SchemeKind::sharq: b.kind = SchemeKind::nvfp4; b.act_scale = s.act_scale; break;
    case SchemeKind::sharq_mxfp4: b.kind = SchemeKind::mxfp4; break;
    case SchemeKind::sharq_hif4: b.kind = SchemeKind::hif4; break;
    default: throw std::invalid_argument(fmt::format("scheme '{}' is not a SharQ variant", s.name()));
  }
  return b;
}

const char* to_string(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }

std::string scheme_unsupported_reason(const Scheme& s, Device device) {
  if (device == Device::cpu) return {};
  switch (s.kind) {
    case SchemeKind::fp16:
    case SchemeKind::bf16:
    case SchemeKind::fp8:
    case SchemeKind::w4a16:
    case SchemeKind::nvfp4:
      return {};
    case SchemeKind::sharq:
      if (s.mask.kind == MaskKind::nm)
        return fmt::format("scheme '{}': the general N:M mask has no packed form and runs on the CPU only", s.name());
      return {};
    case SchemeKind::fp32:
      return "scheme 'fp32' runs on the CPU only (the GPU's unquantized reference is fp16 or bf16)";
    case SchemeKind::mxfp4:
    case SchemeKind::hif4:
    case SchemeKind::sharq_mxfp4:
    case SchemeKind::sharq_hif4:
      return fmt::format("scheme '{}' has no GPU kernels yet (MXFP4/HiF4 on the GPU is a later issue); "
                         "use --device cpu", s.name());
  }
  return fmt::format("scheme '{}': unknown", s.name());
}

}  // namespace sharq
