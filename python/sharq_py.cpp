// The Python module `sharq`: pybind11 bindings over NumPy for the block quantizers, the SharQ
// decomposition, the reference linear layers and the CPU runtime (docs/python.md).
//
// Every numeric result comes from the C++ library; this file only checks arguments, moves data
// between NumPy arrays and the library's containers, and releases the GIL around long calls.
// Array arguments are never converted: a wrong dtype is a TypeError, a non-C-contiguous array or a
// wrong ndim/shape a ValueError, each naming the argument. C++ exceptions keep their messages
// (std::invalid_argument -> ValueError, other std::exception -> RuntimeError).
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "sharq/decompose/sharq_decompose.h"
#include "sharq/mask/nm_mask.h"
#include "sharq/model/config.h"
#include "sharq/model/tokenizer.h"
#include "sharq/model/weights.h"
#include "sharq/quant/quantized_matrix.h"
#include "sharq/quant/scheme.h"
#include "sharq/runtime/cpu/executor.h"
#include "sharq/runtime/cpu/linear.h"
#include "sharq/runtime/step.h"
#include "sharq/tools/generate.h"
#include "sharq/tools/perplexity.h"

namespace py = pybind11;

namespace {

// ---- array checks and conversions ---------------------------------------------------------------

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  if (a.ndim() == 1) s += ",";
  return s + ")";
}

// The argument as an ndarray, without any conversion; TypeError naming it otherwise.
py::array as_ndarray(const py::object& obj, const char* name) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string("argument '") + name + "' must be a numpy.ndarray, got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  return py::reinterpret_borrow<py::array>(obj);
}

// Text from the tokenizer as str: UTF-8, a broken sequence (a byte-level piece cut short) replaced by U+FFFD.
py::str utf8_text(const std::string& s) {
  PyObject* o = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace");
  if (!o) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(o);
}

std::string dtype_name(const py::array& a) { return py::str(a.dtype()); }

// Exact dtype check: one of `allowed` (NumPy's names in native byte order), no silent casts.
void check_dtype(const py::array& a, const char* name, std::initializer_list<const char*> allowed) {
  const std::string d = dtype_name(a);
  std::string list;
  for (const char* t : allowed) {
    if (d == t) return;
    list += (list.empty() ? "" : " or ") + std::string(t);
  }
  throw py::type_error(std::string("argument '") + name + "' must have dtype " + list + ", got " + d +
                       " (no implicit conversion: use .astype())");
}

void check_contiguous(const py::array& a, const char* name) {
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string("argument '") + name +
                          "' must be C-contiguous (use numpy.ascontiguousarray), got a non-contiguous array of shape " + shape_str(a));
}

void check_ndim(const py::array& a, const char* name, py::ssize_t ndim, const char* expected) {
  if (a.ndim() != ndim)
    throw py::value_error(std::string("argument '") + name + "' must be a " + std::to_string(ndim) +
                          "-D array of shape " + expected + ", got shape " + shape_str(a));
}

// A float32, C-contiguous, 2-D array (shape `expected` for messages).
py::array f32_matrix(const py::object& obj, const char* name, const char* expected) {
  py::array a = as_ndarray(obj, name);
  check_dtype(a, name, {"float32"});
  check_ndim(a, name, 2, expected);
  check_contiguous(a, name);
  return a;
}

const float* f32_data(const py::array& a) { return static_cast<const float*>(a.data()); }

// NumPy array owning a moved std::vector (no copy).
template <class T>
py::array_t<T> to_array(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
  auto* owned = new std::vector<T>(std::move(v));
  py::capsule keep(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(std::move(shape), owned->data(), keep);
}

// Token ids: a 1-D, C-contiguous int32 or int64 array -> int32 values (range-checked).
std::vector<int32_t> token_ids(const py::object& obj, const char* name) {
  py::array a = as_ndarray(obj, name);
  check_dtype(a, name, {"int32", "int64"});
  check_ndim(a, name, 1, "(T,)");
  check_contiguous(a, name);
  std::vector<int32_t> ids(static_cast<size_t>(a.shape(0)));
  if (dtype_name(a) == "int32") {
    std::memcpy(ids.data(), a.data(), ids.size() * sizeof(int32_t));
  } else {
    const auto* p = static_cast<const int64_t*>(a.data());
    for (size_t i = 0; i < ids.size(); ++i) {
      if (p[i] < INT32_MIN || p[i] > INT32_MAX)
        throw py::value_error(std::string("argument '") + name + "': token id " + std::to_string(p[i]) +
                              " at index " + std::to_string(i) + " does not fit in int32");
      ids[i] = static_cast<int32_t>(p[i]);
    }
  }
  return ids;
}

// ---- block formats ------------------------------------------------------------------------------

using sharq::GlobalScale;
using sharq::Hif4;
using sharq::Mxfp4;
using sharq::Nvfp4_16;
using sharq::Nvfp4_32;
using sharq::QuantizedMatrix;

// Format names: the block formats of SHARQ_SPEC "Block quantizers" as docs/numerics.md names them.
constexpr const char* kFormats[] = {"nvfp4-16", "nvfp4-32", "mxfp4", "hif4"};

using QVariant =
    std::variant<QuantizedMatrix<Nvfp4_16>, QuantizedMatrix<Nvfp4_32>, QuantizedMatrix<Mxfp4>, QuantizedMatrix<Hif4>>;

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

size_t format_index(const std::string& text) {
  const std::string t = lower(text);
  for (size_t i = 0; i < std::size(kFormats); ++i)
    if (t == kFormats[i]) return i;
  if (t == "nvfp4") return 0;  // NVFP4 without a block size is the 16-block format
  if (t == "mxfp4-32") return 2;
  if (t == "hif4-64") return 3;
  throw std::invalid_argument("unknown format '" + text + "'; known formats: nvfp4-16, nvfp4-32, mxfp4, hif4");
}

GlobalScale parse_global(const std::string& text) {
  const std::string t = lower(text);
  if (t == "none") return GlobalScale::none;
  if (t == "tensor") return GlobalScale::per_tensor;
  if (t == "row" || t == "token") return GlobalScale::per_row;
  throw std::invalid_argument("unknown global scale mode '" + text + "'; known: none, tensor, row (alias token)");
}

const char* global_name(GlobalScale g) {
  switch (g) {
    case GlobalScale::none: return "none";
    case GlobalScale::per_tensor: return "tensor";
    case GlobalScale::per_row: return "row";
  }
  return "?";
}

// A block-quantized matrix as the library keeps it.
struct PyQuantized {
  std::string format;
  QVariant q;

  template <class Fn>
  decltype(auto) visit(Fn&& fn) const { return std::visit(std::forward<Fn>(fn), q); }
};

template <class F>
int block_of(const QuantizedMatrix<F>&) { return F::kBlock; }

template <class F>
PyQuantized quantize_as(const char* name, const float* x, int64_t rows, int64_t cols, GlobalScale g) {
  return PyQuantized{name, QVariant{sharq::quantize_matrix<F>(x, rows, cols, g)}};
}

PyQuantized py_quantize(const py::object& xo, const std::string& format, const std::optional<std::string>& global) {
  const size_t fi = format_index(format);
  py::array x = f32_matrix(xo, "x", "(rows, cols)");
  const bool has_global = fi <= 1;
  const GlobalScale g = global ? parse_global(*global) : (has_global ? GlobalScale::per_tensor : GlobalScale::none);
  const float* p = f32_data(x);
  const int64_t rows = x.shape(0), cols = x.shape(1);
  py::gil_scoped_release nogil;
  switch (fi) {
    case 0: return quantize_as<Nvfp4_16>(kFormats[0], p, rows, cols, g);
    case 1: return quantize_as<Nvfp4_32>(kFormats[1], p, rows, cols, g);
    case 2: return quantize_as<Mxfp4>(kFormats[2], p, rows, cols, g);
    default: return quantize_as<Hif4>(kFormats[3], p, rows, cols, g);
  }
}

py::array_t<float> py_dequantize(const PyQuantized& q, bool with_global) {
  return q.visit([&](const auto& m) {
    std::vector<float> v;
    {
      py::gil_scoped_release nogil;
      v = sharq::dequantize_matrix(m, with_global);
    }
    return to_array(std::move(v), {m.rows, m.cols});
  });
}

// ---- SharQ decomposition ------------------------------------------------------------------------

sharq::Scheme sharq_scheme(const std::string& scheme, const std::optional<std::string>& mask,
                           const std::optional<std::string>& scale) {
  std::string text = scheme;
  if (mask) text += ":" + *mask;
  if (scale) text += ":" + *scale;
  const sharq::Scheme s = sharq::parse_scheme(text);
  if (!s.is_sharq())
    throw std::invalid_argument("decompose: scheme '" + s.name() + "' is not a SharQ variant (sharq, sharq-mxfp4, sharq-hif4)");
  return s;
}

py::dict py_decompose(const py::object& xo, const std::string& scheme, const std::optional<std::string>& mask,
                      const std::optional<std::string>& scale) {
  const sharq::Scheme s = sharq_scheme(scheme, mask, scale);
  py::array x = f32_matrix(xo, "x", "(M, K)");
  const int64_t M = x.shape(0), K = x.shape(1);
  const sharq::SharqFormat fmt = s.kind == sharq::SchemeKind::sharq         ? sharq::SharqFormat::nvfp4
                                 : s.kind == sharq::SchemeKind::sharq_mxfp4 ? sharq::SharqFormat::mxfp4
                                                                            : sharq::SharqFormat::hif4;
  const GlobalScale g = s.has_act_global_scale() ? s.act_scale : GlobalScale::none;
  const bool packed_mask = s.mask.kind != sharq::MaskKind::nm;
  sharq::DenseDecomposition d;
  std::vector<uint8_t> meta;
  int64_t meta_bytes = 0;
  {
    py::gil_scoped_release nogil;
    d = sharq::sharq_decompose_dense(f32_data(x), M, K, fmt, s.mask, g);
    if (packed_mask) {
      const int group = sharq::mask_group_size(s.mask);
      meta_bytes = sharq::ceil_div(sharq::ceil_div(K, group), 2);
      meta.resize(static_cast<size_t>(M * meta_bytes));
      for (int64_t r = 0; r < M; ++r) {
        const std::vector<uint8_t> row = sharq::mask_row_metadata(d.xt.data() + r * K, K, s.mask);
        std::copy(row.begin(), row.end(), meta.begin() + r * meta_bytes);
      }
    }
  }
  py::dict out;
  out["scheme"] = s.name();
  out["mask"] = sharq::to_string(s.mask);
  out["group"] = sharq::mask_group_size(s.mask);
  out["scale"] = global_name(g);
  const size_t ng = d.g.size();
  out["g"] = to_array(std::move(d.g), {static_cast<py::ssize_t>(ng)});
  out["xt"] = to_array(std::move(d.xt), {M, K});
  out["s"] = to_array(std::move(d.s), {M, K});
  out["s_hat"] = to_array(std::move(d.s_hat), {M, K});
  out["r"] = to_array(std::move(d.r), {M, K});
  out["r_hat"] = to_array(std::move(d.r_hat), {M, K});
  out["keep"] = to_array(std::move(d.keep), {M, K});
  if (packed_mask) out["metadata"] = to_array(std::move(meta), {M, meta_bytes});
  else out["metadata"] = py::none();
  return out;
}

// ---- linear layers ------------------------------------------------------------------------------

struct PyLinear {
  std::unique_ptr<sharq::Linear> lin;
};

PyLinear make_linear(const std::string& scheme_text, const py::object& wo, const py::object& bias_o) {
  const sharq::Scheme s = sharq::parse_scheme(scheme_text);
  py::array w = f32_matrix(wo, "w", "(N, K)");
  const int64_t N = w.shape(0), K = w.shape(1);
  std::optional<py::array> bias;
  if (!bias_o.is_none()) {
    bias = as_ndarray(bias_o, "bias");
    check_dtype(*bias, "bias", {"float32"});
    check_ndim(*bias, "bias", 1, "(N,)");
    check_contiguous(*bias, "bias");
    if (bias->shape(0) != N)
      throw py::value_error("argument 'bias' must have shape (" + std::to_string(N) + ",) to match w's N, got shape " +
                            shape_str(*bias));
  }
  const float* bp = bias ? f32_data(*bias) : nullptr;
  py::gil_scoped_release nogil;
  return PyLinear{sharq::Linear::create(s, f32_data(w), N, K, bp)};
}

py::array linear_input(const PyLinear& l, const py::object& xo) {
  const int64_t K = l.lin->in_features();
  const std::string expected = "(M, " + std::to_string(K) + ")";
  py::array x = f32_matrix(xo, "x", expected.c_str());
  if (x.shape(1) != K)
    throw py::value_error("argument 'x' must have shape " + expected + " (K = in_features), got shape " + shape_str(x));
  return x;
}

py::array_t<float> linear_forward(const PyLinear& l, const py::object& xo) {
  py::array x = linear_input(l, xo);
  const int64_t M = x.shape(0), N = l.lin->out_features();
  std::vector<float> y(static_cast<size_t>(M * N));
  {
    py::gil_scoped_release nogil;
    l.lin->forward(f32_data(x), M, y.data());
  }
  return to_array(std::move(y), {M, N});
}

py::dict linear_operands(const PyLinear& l, const py::object& xo) {
  py::array x = linear_input(l, xo);
  sharq::LinearOperands op;
  {
    py::gil_scoped_release nogil;
    op = l.lin->operands(f32_data(x), x.shape(0));
  }
  py::dict out;
  out["x"] = to_array(std::move(op.x), {op.M, op.K});
  out["w"] = to_array(std::move(op.w), {op.N, op.K});
  out["row_scale"] = to_array(std::move(op.row_scale), {op.M});
  out["col_scale"] = to_array(std::move(op.col_scale), {op.N});
  if (l.lin->scheme().is_sharq()) {
    out["s_hat"] = to_array(std::move(op.s_hat), {op.M, op.K});
    out["r_hat"] = to_array(std::move(op.r_hat), {op.M, op.K});
  }
  return out;
}

// ---- model and CPU runtime ----------------------------------------------------------------------

struct PyModel {
  std::string path, tokenizer_path;
  bool allow_nonfinite = false;
  sharq::Scheme scheme;
  sharq::ModelWeights weights;
  std::unique_ptr<sharq::Tokenizer> tok;
  std::unique_ptr<sharq::Executor> exec;
  std::mutex mu;  // the step API is not thread-safe: one call at a time
};

std::unique_ptr<PyModel> make_model(const std::string& path, const std::string& scheme, const std::string& tokenizer,
                                    bool allow_nonfinite) {
  auto m = std::make_unique<PyModel>();
  m->path = path;
  m->tokenizer_path = tokenizer;
  m->allow_nonfinite = allow_nonfinite;
  m->scheme = sharq::parse_scheme(scheme);
  py::gil_scoped_release nogil;
  // as `sharq generate` / `sharq ppl` do: weights, the tokenizer checked against them, the CPU executor
  m->weights = sharq::load_model_weights(path, sharq::LoadOptions{allow_nonfinite});
  m->tok = sharq::load_tokenizer_for(path, tokenizer, m->weights.config);
  m->exec = sharq::cpu_executor_factory()(m->weights, m->scheme);
  return m;
}

py::array_t<float> model_logits(PyModel& m, const py::object& ids_o) {
  std::vector<int32_t> ids = token_ids(ids_o, "token_ids");
  if (ids.empty()) throw py::value_error("argument 'token_ids' must hold at least one token, got shape (0,)");
  const int64_t T = static_cast<int64_t>(ids.size()), V = m.exec->config().vocab_size;
  sharq::StepOutput out;
  {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lock(m.mu);
    sharq::StepEntry e;
    e.seq = m.exec->create_sequence(T);
    e.tokens = std::move(ids);
    e.all_logits = true;
    struct Free {  // the sequence is freed on every path, errors included
      sharq::Executor& x; sharq::SeqId id;
      ~Free() { try { x.free_sequence(id); } catch (...) {} }
    } guard{*m.exec, e.seq};
    out = m.exec->step({e});
  }
  if (out.vocab != V || static_cast<int64_t>(out.logits.size()) != T * V)
    throw std::runtime_error("logits: unexpected output shape from the executor");
  return to_array(std::move(out.logits), {T, V});
}

py::dict model_perplexity(PyModel& m, const std::string& text, int64_t ctx, int64_t max_windows) {
  sharq::PplResult r;
  {
    py::gil_scoped_release nogil;
    // `sharq ppl MODEL --data FILE --ctx C --max-windows W --schemes S --reference S -q` on the text,
    // with this Model's weights and tokenizer (nothing is loaded again)
    sharq::PplOptions o;
    o.model_path = m.path;
    o.tokenizer_path = m.tokenizer_path;
    o.data_path = "(text)";
    o.weights = &m.weights;
    o.tokenizer = m.tok.get();
    o.text = &text;
    o.ctx = ctx;
    o.max_windows = max_windows;
    o.schemes = m.scheme.name();
    o.reference = m.scheme.name();
    o.progress = false;
    o.allow_nonfinite = m.allow_nonfinite;
    r = sharq::run_perplexity(o);
  }
  const sharq::PplRow& row = r.rows.at(0);
  py::dict out;
  out["scheme"] = row.scheme;
  out["ppl"] = row.ppl;
  out["nll"] = row.nll;
  out["ctx"] = r.ctx;
  out["windows"] = r.windows;
  out["windows_in_file"] = r.windows_in_file;
  out["tokens"] = r.tokens_in_file;
  out["predicted"] = r.predicted;
  out["nonfinite"] = row.nonfinite;
  return out;
}

py::dict model_generate_full(PyModel& m, const std::string& prompt, int64_t steps, uint64_t seed, float temperature,
                             float top_p) {
  sharq::GenerateResult r;
  {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lock(m.mu);
    sharq::GenerateOptions o;
    o.prompt = prompt;
    o.steps = steps;
    o.seed = seed;
    o.temperature = temperature;
    o.top_p = top_p;
    r = sharq::generate(*m.exec, *m.tok, o);
  }
  if (r.nonfinite_at >= 0) {
    const std::string msg = "generation stopped: the logits at position " + std::to_string(r.nonfinite_at) +
                            " are not finite (NaN/Inf)";
    if (PyErr_WarnEx(PyExc_RuntimeWarning, msg.c_str(), 1) != 0) throw py::error_already_set();
  }
  py::dict out;
  out["text"] = utf8_text(r.text);
  const auto np = static_cast<py::ssize_t>(r.prompt_ids.size()), ng = static_cast<py::ssize_t>(r.generated_ids.size());
  out["prompt_ids"] = to_array(std::move(r.prompt_ids), {np});
  out["generated_ids"] = to_array(std::move(r.generated_ids), {ng});
  out["prefill_ms"] = r.prefill_ms;
  out["decode_ms"] = r.decode_ms;
  out["nonfinite_at"] = r.nonfinite_at;
  return out;
}

py::dict config_dict(const sharq::ModelConfig& c) {
  py::dict d;
  d["arch"] = sharq::to_string(c.arch);
  d["vocab_size"] = c.vocab_size;
  d["hidden_size"] = c.hidden_size;
  d["intermediate_size"] = c.intermediate_size;
  d["num_layers"] = c.num_layers;
  d["num_heads"] = c.num_heads;
  d["num_kv_heads"] = c.num_kv_heads;
  d["head_dim"] = c.head_dim;
  d["max_position_embeddings"] = c.max_position_embeddings;
  d["rms_norm_eps"] = c.rms_norm_eps;
  d["rope_theta"] = c.rope_theta;
  d["tie_word_embeddings"] = c.tie_word_embeddings;
  d["num_experts"] = c.num_experts;
  d["bos_token_id"] = c.bos_token_id;
  d["eos_token_id"] = c.eos_token_id;
  return d;
}

}  // namespace

PYBIND11_MODULE(sharq, m) {
  m.doc() =
      "SharQ W4A4 quantization: block formats (NVFP4-16/32, MXFP4, HiF4), the SharQ decomposition, reference "
      "linear layers of every scheme and the CPU inference runtime, over NumPy. See docs/python.md.";
#ifdef SHARQ_PY_VERSION
  m.attr("__version__") = SHARQ_PY_VERSION;
#endif
  py::list formats;
  for (const char* f : kFormats) formats.append(f);
  m.attr("FORMATS") = py::tuple(formats);

  // ---- schemes
  m.def("schemes", [] { return sharq::scheme_base_names(); },
        "schemes() -> list[str]\n\nThe base scheme names (fp32, fp16, ..., sharq-hif4); options follow after ':'.");
  m.def("scheme_name", [](const std::string& text) { return sharq::parse_scheme(text).name(); }, py::arg("scheme"),
        "scheme_name(scheme: str) -> str\n\nThe canonical name of a scheme (sharq::parse_scheme(...).name()); "
        "ValueError with the library's message for an unknown scheme or option.");
  m.def("scheme_options_help", [] { return std::string(sharq::scheme_options_help()); },
        "scheme_options_help() -> str\n\nOne line per scheme option, as `sharq schemes` prints it.");

  // ---- block formats
  py::class_<PyQuantized>(m, "QuantizedMatrix",
                          "A block-quantized matrix as the library keeps it (sharq::QuantizedMatrix<F>). "
                          "Made by quantize(); read-only.")
      .def_property_readonly("format", [](const PyQuantized& q) { return q.format; }, "Format name (one of FORMATS).")
      .def_property_readonly("shape", [](const PyQuantized& q) {
        return q.visit([](const auto& x) { return py::make_tuple(x.rows, x.cols); });
      }, "(rows, cols) of the logical matrix.")
      .def_property_readonly("block", [](const PyQuantized& q) {
        return q.visit([](const auto& x) { return block_of(x); });
      }, "Logical values per block (16, 32 or 64).")
      .def_property_readonly("blocks_per_row", [](const PyQuantized& q) {
        return q.visit([](const auto& x) { return x.blocks_per_row; });
      }, "ceil(cols / block): blocks per row (a short tail is zero-padded).")
      .def_property_readonly("block_bytes", [](const PyQuantized& q) {
        return q.visit([](const auto& x) { return sizeof(x.blocks[0]); });
      }, "Bytes per packed block (9, 17, 17 or 36).")
      .def_property_readonly("nbytes", [](const PyQuantized& q) { return q.visit([](const auto& x) { return x.bytes(); }); },
                             "Bytes of the packed blocks plus the FP32 second-level scales.")
      .def_property_readonly("global_scale", [](const PyQuantized& q) {
        return q.visit([](const auto& x) { return std::string(global_name(x.gmode)); });
      }, "Second-level scale mode: 'none', 'tensor' or 'row'.")
      .def_property_readonly("g", [](const PyQuantized& q) {
        return q.visit([](const auto& x) {
          std::vector<float> g = x.g;
          const auto n = static_cast<py::ssize_t>(g.size());
          return to_array(std::move(g), {n});
        });
      }, "FP32 second-level scales: empty (none), 1 value (tensor) or one per row; the blocks quantize x / g.")
      .def_property_readonly("data", [](const PyQuantized& q) {
        return q.visit([](const auto& x) {
          const size_t bb = sizeof(x.blocks[0]);
          std::vector<uint8_t> v(x.blocks.size() * bb);
          if (!v.empty()) std::memcpy(v.data(), x.blocks.data(), v.size());
          return to_array(std::move(v), {x.rows, static_cast<py::ssize_t>(x.blocks_per_row * bb)});
        });
      }, "The packed blocks as raw bytes, uint8 [rows, blocks_per_row * block_bytes] (layout: docs/numerics.md).")
      .def_property_readonly("codes", [](const PyQuantized& q) {
        return q.visit([](const auto& x) {
          constexpr size_t nq = sizeof(x.blocks[0].qs);
          std::vector<uint8_t> v(x.blocks.size() * nq);
          for (size_t b = 0; b < x.blocks.size(); ++b) std::memcpy(v.data() + b * nq, x.blocks[b].qs, nq);
          return to_array(std::move(v), {x.rows, static_cast<py::ssize_t>(x.blocks_per_row), static_cast<py::ssize_t>(nq)});
        });
      }, "The 4-bit codes, uint8 [rows, blocks_per_row, block/2]: code k in byte k//2, low nibble when k is even.")
      .def_property_readonly("scales", [](const PyQuantized& q) {
        return q.visit([](const auto& x) {
          constexpr size_t ns = sizeof(x.blocks[0].s);
          std::vector<uint8_t> v(x.blocks.size() * ns);
          for (size_t b = 0; b < x.blocks.size(); ++b) std::memcpy(v.data() + b * ns, &x.blocks[b].s, ns);
          std::vector<py::ssize_t> shape{x.rows, static_cast<py::ssize_t>(x.blocks_per_row)};
          if (ns > 1) shape.push_back(static_cast<py::ssize_t>(ns));
          return to_array(std::move(v), shape);
        });
      }, "Block scale codes, uint8: [rows, blocks_per_row] (NVFP4: UE4M3, MXFP4: UE8M0) or "
         "[rows, blocks_per_row, 4] (HiF4: sf E6M2, e8 bits, e16[0], e16[1]).")
      .def("dequantize", &py_dequantize, py::arg("with_global") = true,
           "dequantize(with_global=True) -> float32 [rows, cols]\n\nThe library's dequantization "
           "(sharq::dequantize_matrix); with_global multiplies the second-level scale g back in.")
      .def("__repr__", [](const PyQuantized& q) {
        return q.visit([&](const auto& x) {
          return "<sharq.QuantizedMatrix " + q.format + " " + std::to_string(x.rows) + "x" + std::to_string(x.cols) +
                 " global=" + global_name(x.gmode) + ">";
        });
      });

  m.def("quantize", &py_quantize, py::arg("x"), py::arg("format"), py::arg("global_scale") = py::none(),
        "quantize(x, format, global_scale=None) -> QuantizedMatrix\n\n"
        "Block-quantizes a float32, C-contiguous 2-D array along its rows (sharq::quantize_matrix). format: "
        "'nvfp4-16', 'nvfp4-32', 'mxfp4' or 'hif4'. global_scale: 'none', 'tensor' or 'row' (NVFP4 only; "
        "default 'tensor' for NVFP4, 'none' otherwise). Releases the GIL.");
  m.def("dequantize", &py_dequantize, py::arg("q"), py::arg("with_global") = true,
        "dequantize(q, with_global=True) -> float32 [rows, cols]\n\nThe library's dequantization of a "
        "QuantizedMatrix (sharq::dequantize_matrix); with_global multiplies g back in. Releases the GIL.");

  // ---- decomposition
  m.def("decompose", &py_decompose, py::arg("x"), py::arg("scheme") = "sharq", py::arg("mask") = py::none(),
        py::arg("scale") = py::none(),
        "decompose(x, scheme='sharq', mask=None, scale=None) -> dict\n\n"
        "The SharQ decomposition of a float32 [M, K] matrix (sharq::sharq_decompose_dense). scheme: a SharQ "
        "variant ('sharq', 'sharq-mxfp4', 'sharq-hif4', options allowed, e.g. 'sharq:s24:tensor'); mask "
        "('p48', 's24', 'nmN_M') and scale ('token', 'tensor'; sharq only) are appended as options. Returns "
        "scheme, mask, group, scale, g (second-level scales), xt = x/g, s (masked), s_hat, r = xt - s_hat, r_hat "
        "(float32 [M, K], scaled domain), keep (uint8 [M, K] 0/1 mask) and metadata (uint8 [M, ceil(K/group/2)] "
        "nibbles idx0 | idx1 << 2, or None for nmN_M). Releases the GIL.");

  // ---- linear layers
  py::class_<PyLinear>(m, "Linear",
                       "A reference linear layer Y = X W^T (+ bias) under one scheme (sharq::Linear). "
                       "The weights are quantized once, here.")
      .def(py::init(&make_linear), py::arg("scheme"), py::arg("w"), py::arg("bias") = py::none(),
           "Linear(scheme: str, w: float32 [N, K], bias: float32 [N] | None = None)\n\n"
           "Builds the layer (sharq::Linear::create). ValueError with the library's message for an unknown scheme.")
      .def_property_readonly("scheme", [](const PyLinear& l) { return l.lin->scheme().name(); },
                             "Canonical scheme name.")
      .def_property_readonly("in_features", [](const PyLinear& l) { return l.lin->in_features(); }, "K.")
      .def_property_readonly("out_features", [](const PyLinear& l) { return l.lin->out_features(); }, "N.")
      .def_property_readonly("weight_bytes", [](const PyLinear& l) { return l.lin->weight_bytes(); },
                             "Bytes of the packed weight payload and its scales.")
      .def("forward", &linear_forward, py::arg("x"),
           "forward(x: float32 [M, K]) -> float32 [M, N]\n\nThe scheme's online activation quantization and the "
           "GEMM from the packed weights (sharq::Linear::forward). Releases the GIL.")
      .def("__call__", &linear_forward, py::arg("x"), "Same as forward(x).")
      .def("operands", &linear_operands, py::arg("x"),
           "operands(x: float32 [M, K]) -> dict\n\nThe dequantized operands the layer computes with "
           "(sharq::Linear::operands), scaled domain: x (X^, [M, K]), w (W^, [N, K]), row_scale [M], col_scale [N], "
           "and for SharQ s_hat and r_hat [M, K]. Y = row_scale[:, None] * col_scale[None, :] * (x @ w.T) + bias.")
      .def("__repr__", [](const PyLinear& l) {
        return "<sharq.Linear " + l.lin->scheme().name() + " N=" + std::to_string(l.lin->out_features()) +
               " K=" + std::to_string(l.lin->in_features()) + ">";
      });

  // ---- model
  py::class_<PyModel>(m, "Model",
                      "A checkpoint on the CPU runtime under one scheme (sharq::CpuExecutor), with its tokenizer.")
      .def(py::init(&make_model), py::arg("path"), py::arg("scheme") = "fp16", py::arg("tokenizer") = "",
           py::arg("allow_nonfinite") = false,
           "Model(path: str, scheme: str = 'fp16', tokenizer: str = '', allow_nonfinite: bool = False)\n\n"
           "Loads a Hugging Face model directory or a llama2.c .bin checkpoint (the tokenizer is found beside it "
           "unless given), as `sharq generate` does.")
      .def_property_readonly("scheme", [](const PyModel& mm) { return mm.scheme.name(); }, "Canonical scheme name.")
      .def_property_readonly("path", [](const PyModel& mm) { return mm.path; }, "The checkpoint path.")
      .def_property_readonly("config", [](const PyModel& mm) { return config_dict(mm.weights.config); },
                             "The model's configuration (sharq::ModelConfig) as a dict.")
      .def_property_readonly("vocab_size", [](const PyModel& mm) { return mm.weights.config.vocab_size; },
                             "Rows of the logits (the model's vocab_size).")
      .def_property_readonly("bos_id", [](const PyModel& mm) { return mm.tok->bos_id(); }, "Tokenizer BOS id (-1: none).")
      .def_property_readonly("eos_id", [](const PyModel& mm) { return mm.tok->eos_id(); }, "Tokenizer EOS id (-1: none).")
      .def("tokenize", [](const PyModel& mm, const std::string& text, bool add_special) {
        std::vector<int32_t> ids = mm.tok->encode(text, add_special);
        const auto n = static_cast<py::ssize_t>(ids.size());
        return to_array(std::move(ids), {n});
      }, py::arg("text"), py::arg("add_special") = true,
           "tokenize(text: str, add_special=True) -> int32 [T]\n\nToken ids (sharq::Tokenizer::encode); add_special "
           "adds the tokenizer's own special tokens (BOS for llama2.c / SentencePiece).")
      .def("detokenize", [](const PyModel& mm, const py::object& ids, bool skip_special) {
        return utf8_text(mm.tok->decode(token_ids(ids, "ids"), skip_special));
      }, py::arg("ids"), py::arg("skip_special") = false,
           "detokenize(ids: int32/int64 [T], skip_special=False) -> str\n\nThe text of ids "
           "(sharq::Tokenizer::decode); invalid UTF-8 (a byte-level piece cut short) becomes U+FFFD.")
      .def("logits", &model_logits, py::arg("token_ids"),
           "logits(token_ids: int32/int64 [T]) -> float32 [T, vocab]\n\nOne prefill of the ids in a fresh "
           "sequence, the logits of every position (the step API with all_logits). Releases the GIL.")
      .def("perplexity", &model_perplexity, py::arg("text"), py::arg("ctx") = 512, py::arg("max_windows") = 0,
           "perplexity(text: str, ctx=512, max_windows=0) -> dict\n\nExactly `sharq ppl MODEL --data FILE --ctx "
           "ctx --max-windows max_windows --schemes S --reference S` for this model's scheme S "
           "(sharq::run_perplexity; the text is tokenized with BOS and cut into windows of ctx tokens, the "
           "remainder dropped). Returns scheme, ppl, nll (mean per predicted token), ctx, windows, windows_in_file, "
           "tokens, predicted, nonfinite. Reloads the checkpoint (as the CLI does). Releases the GIL.")
      .def("generate", [](PyModel& mm, const std::string& prompt, int64_t steps, uint64_t seed, float temperature,
                          float top_p) {
        return py::str(model_generate_full(mm, prompt, steps, seed, temperature, top_p)["text"]);
      }, py::arg("prompt") = "", py::arg("steps") = 256, py::arg("seed") = 42, py::arg("temperature") = 0.0f,
           py::arg("top_p") = 0.9f,
           "generate(prompt='', steps=256, seed=42, temperature=0.0, top_p=0.9) -> str\n\nText generation "
           "(sharq::generate), `sharq generate -p PROMPT -n steps -t temperature --top-p top_p --seed seed`: steps "
           "counts positions including the prompt (llama2.c semantics, clamped to max_position_embeddings); "
           "temperature 0 is greedy. Returns the text as the CLI prints it: the prompt's pieces, then the generated "
           "ones. Releases the GIL.")
      .def("generate_ids", &model_generate_full, py::arg("prompt") = "", py::arg("steps") = 256, py::arg("seed") = 42,
           py::arg("temperature") = 0.0f, py::arg("top_p") = 0.9f,
           "generate_ids(prompt='', steps=256, seed=42, temperature=0.0, top_p=0.9) -> dict\n\nAs generate(), "
           "returning text, prompt_ids, generated_ids (int32), prefill_ms, decode_ms and nonfinite_at.")
      .def("__repr__", [](const PyModel& mm) { return "<sharq.Model " + mm.path + " scheme=" + mm.scheme.name() + ">"; });
}
