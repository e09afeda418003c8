#include "sharq/runtime/cuda/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#include <fmt/format.h>

#include "sharq/formats/minifloat.h"
#include "sharq/kernels/cuda/cublaslt_gemm.h"
#include "sharq/kernels/cuda/cuda_check.h"
#include "sharq/kernels/cuda/moe.h"
#include "sharq/kernels/cuda/paged_attention.h"
#include "sharq/kernels/cuda/sampling.h"
#include "sharq/kernels/cuda/transformer_ops.h"
#include "sharq/kernels/cuda/weight_quant.h"
#include "sharq/model/moe_routing.h"
#include "sharq/model/quantized_checkpoint.h"
#include "sharq/model/rope.h"
#include "sharq/quant/fp4_tiles.h"
#include "sharq/runtime/cuda/gpu_linear.h"
#include "sharq/runtime/sampler.h"

namespace sharq::cuda {
namespace {

// ---- where the weights come from ---------------------------------------------------------------
enum class Mat { embed, lm_head, q, k, v, o, gate, up, down, router, expert_gate, expert_up, expert_down };
enum class Vec { none, final_norm, attn_norm, mlp_norm, q_norm, k_norm, q_bias, k_bias, v_bias, o_bias };

class Source {
 public:
  virtual ~Source() = default;
  // A checkpoint's tensor of a projection (quantized checkpoints: its stored weights), or null.
  // expert: the MoE expert of the expert_* matrices.
  virtual const TensorView* view(Mat, int64_t, int64_t /*expert*/) { return nullptr; }
  // The FP32 values of a matrix (rows x cols) into `dst` on the device, ordered on `stream`.
  virtual void matrix(Mat m, int64_t layer, int64_t expert, int64_t rows, int64_t cols, float* dst, cudaStream_t stream) = 0;
  // A small vector on the host; empty when the model has none (biases, q/k norms).
  virtual std::vector<float> vec(Vec v, int64_t layer, int64_t n) = 0;
};

class CheckpointSource final : public Source {
 public:
  explicit CheckpointSource(const ModelWeights& w) : w_(w) {}
  const TensorView* view(Mat m, int64_t l, int64_t e) override {
    const LayerWeights lw = m == Mat::embed || m == Mat::lm_head ? LayerWeights{} : w_.layer(l);
    const bool is_expert = m == Mat::expert_gate || m == Mat::expert_up || m == Mat::expert_down;
    if (is_expert && (e < 0 || e >= static_cast<int64_t>(lw.experts.size()))) return nullptr;
    switch (m) {
      case Mat::embed: return &w_.embed_tokens();
      case Mat::lm_head: return &w_.lm_head();
      case Mat::q: return lw.q;
      case Mat::k: return lw.k;
      case Mat::v: return lw.v;
      case Mat::o: return lw.o;
      case Mat::gate: return lw.gate;
      case Mat::up: return lw.up;
      case Mat::down: return lw.down;
      case Mat::router: return lw.router;
      case Mat::expert_gate: return lw.experts[static_cast<size_t>(e)].gate;
      case Mat::expert_up: return lw.experts[static_cast<size_t>(e)].up;
      case Mat::expert_down: return lw.experts[static_cast<size_t>(e)].down;
    }
    return nullptr;
  }
  void matrix(Mat m, int64_t l, int64_t e, int64_t rows, int64_t cols, float* dst, cudaStream_t stream) override {
    const TensorView* t = view(m, l, e);
    if (!t || t->numel() != rows * cols)
      throw std::invalid_argument(fmt::format("GpuExecutor: {}: a weight of layer {}{} is missing or not {} x {}", w_.source, l,
                                              e >= 0 ? fmt::format(" (expert {})", e) : std::string(), rows, cols));
    const float* in = f32_in_place(*t);
    std::vector<float> tmp;
    if (!in) {
      tmp = to_f32(*t);
      in = tmp.data();
    }
    // on the engine's stream, after the previous user of `dst`, and landed before `tmp` goes
    SHARQ_CUDA_CHECK(cudaMemcpyAsync(dst, in, static_cast<size_t>(rows * cols) * sizeof(float), cudaMemcpyHostToDevice,
                                     stream));
    SHARQ_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  std::vector<float> vec(Vec v, int64_t l, int64_t n) override {
    const TensorView* t = nullptr;
    if (v == Vec::none) return {};
    if (v == Vec::final_norm) {
      t = &w_.final_norm();
    } else {
      const LayerWeights lw = w_.layer(l);
      switch (v) {
        case Vec::attn_norm: t = lw.attn_norm; break;
        case Vec::mlp_norm: t = lw.mlp_norm; break;
        case Vec::q_norm: t = lw.q_norm; break;
        case Vec::k_norm: t = lw.k_norm; break;
        case Vec::q_bias: t = lw.q_bias; break;
        case Vec::k_bias: t = lw.k_bias; break;
        case Vec::v_bias: t = lw.v_bias; break;
        case Vec::o_bias: t = lw.o_bias; break;
        default: break;
      }
    }
    if (!t) return {};
    if (t->numel() != n)
      throw std::invalid_argument(fmt::format("GpuExecutor: {}: a vector of layer {} has {} values, not {}", w_.source, l,
                                              t->numel(), n));
    return to_f32(*t);
  }

 private:
  const ModelWeights& w_;
};

class SyntheticSource final : public Source {
 public:
  SyntheticSource(const ModelConfig& c, uint64_t seed) : c_(c), seed_(seed) {}
  void matrix(Mat m, int64_t l, int64_t e, int64_t rows, int64_t cols, float* dst, cudaStream_t stream) override {
    // uniform on [-a, a) with a = 0.02 * sqrt(3): standard deviation 0.02, as initialized models
    fill_synthetic(dst, rows * cols,
                   seed_ * 1000003u + static_cast<uint64_t>(m) * 1009u + static_cast<uint64_t>(l + 1) +
                       static_cast<uint64_t>(e + 1) * 7919u * 65537u,
                   0.0346410162f, 0.0f, stream);
  }
  std::vector<float> vec(Vec v, int64_t, int64_t n) override {
    switch (v) {
      case Vec::none:
        return {};
      case Vec::q_norm:
      case Vec::k_norm:
        if (!c_.qk_norm) return {};
        break;
      case Vec::q_bias:
      case Vec::k_bias:
      case Vec::v_bias:
        if (!c_.attention_bias) return {};
        return std::vector<float>(static_cast<size_t>(n), 0.01f);
      case Vec::o_bias:
        if (!c_.attention_output_bias) return {};
        return std::vector<float>(static_cast<size_t>(n), 0.01f);
      default:
        break;
    }
    return std::vector<float>(static_cast<size_t>(n), 1.0f);
  }

 private:
  ModelConfig c_;
  uint64_t seed_;
};

// The stored NVFP4 blocks of stacked projections (a quantized checkpoint) as one matrix, each
// part's global scale kept per row: the bytes as stored, nothing re-rounded.
template <class F>
QuantizedMatrix<F> stored_matrix(const QuantizedWeight& q) {
  if constexpr (std::is_same_v<F, Nvfp4_32>) return nvfp4_32_matrix(q);
  else return nvfp4_16_matrix(q);
}

template <class F>
Fp4Tiles stack_stored(const std::vector<const QuantizedWeight*>& parts) {
  QuantizedMatrix<F> all;
  for (const QuantizedWeight* q : parts) {
    const QuantizedMatrix<F> m = stored_matrix<F>(*q);
    if (all.rows == 0) {
      all.cols = m.cols;
      all.blocks_per_row = m.blocks_per_row;
      all.gmode = GlobalScale::per_row;
    }
    all.blocks.insert(all.blocks.end(), m.blocks.begin(), m.blocks.end());
    for (int64_t r = 0; r < m.rows; ++r) all.g.push_back(m.global(r));
    all.rows += m.rows;
  }
  return pack_fp4_tiles(all);
}

DeviceBuffer<float> upload_vec(const std::vector<float>& v) {
  DeviceBuffer<float> d(v.size());
  d.upload(v.data());
  return d;
}

struct Pinned {  // page-locked host staging (one async copy each way per step)
  void* p = nullptr;
  explicit Pinned(size_t bytes) { SHARQ_CUDA_CHECK(cudaMallocHost(&p, bytes)); }
  ~Pinned() { if (p) cudaFreeHost(p); }
  Pinned(const Pinned&) = delete;
  Pinned& operator=(const Pinned&) = delete;
};

struct Graph {
  cudaGraphExec_t exec = nullptr;
  ~Graph() { if (exec) cudaGraphExecDestroy(exec); }
};

// Decode steps are padded to one of these row counts (then multiples of 64).
int64_t decode_bucket(int64_t M) {
  for (int64_t b : {1, 2, 4, 8, 16, 24, 32, 48, 64})
    if (M <= b) return b;
  return (M + 63) / 64 * 64;
}

// kNorm, kRope, kSwiglu and kOther (embedding, last residual add, final norm, copies) are reported
// one by one ("other.*") and together as "norms_rope_other".
// MoE models: kMoeRoute = the router + top-k and the permutation plan, with the copy of the
// experts' row counts to the host; kMoePermute = the gather of the experts' input rows and the
// weighted combine; kMoeGemm = the expert GEMMs (reported in "gemm" too; the first two in
// "norms_rope_other").
enum Cat { kOther, kPrep, kGemm, kAttention, kLmHead, kSampling, kNorm, kRope, kSwiglu, kMoeRoute, kMoePermute, kMoeGemm, kCats };
const char* const kCatNames[kCats] = {"other.rest",   "prep",         "gemm",          "attention",
                                      "lm_head",      "sampling",     "other.norm",    "other.rope_kv",
                                      "other.swiglu", "moe.route",    "moe.permute",   "moe.gemm"};

}  // namespace

struct GpuExecutor::Impl {
  struct Expert {
    std::unique_ptr<GpuLinear> gate_up, down;
  };
  struct Layer {
    std::unique_ptr<GpuLinear> qkv, o, gate_up, down;  // q/k/v and gate/up stacked: one GEMM each (dense MLP)
    DeviceBuffer<float> attn_norm, mlp_norm, q_norm, k_norm;
    DeviceBuffer<float> router;                        // MoE: experts x hidden, FP32
    std::vector<Expert> experts;                       // MoE
  };
  struct Sequence {
    int64_t len = 0, cap = 0;
    std::vector<int32_t> blocks;
    SamplerStream sampler;
  };

  ModelConfig cfg;
  Scheme scheme;
  EngineOptions opt;
  DType t = DType::bf16;
  int64_t H = 0, qd = 0, kvd = 0, I = 0, V = 0, maxM = 0, maxR = 0, qkvd = 0;
  // MoE (nexp > 0): experts, choices per token, each expert's intermediate size, renormalized weights
  int64_t nexp = 0, topk = 0, Ie = 0;
  bool renorm = true;
  double load_s = 0.0;
  cudaStream_t stream = nullptr;
  std::unique_ptr<CublasLtGemm> blas;
  DeviceBuffer<uint16_t> embed, lm_head;
  DeviceBuffer<float> final_norm, inv_freq;
  std::vector<Layer> layers;
  std::unique_ptr<GpuActivations> acts_h, acts_q, acts_i;
  DeviceBuffer<uint8_t> workspace, attn_ws;
  // activations (max_batch_tokens rows; logits max_logit_rows)
  DeviceBuffer<float> x, x2, logits;  // x2: the residual's second buffer (fused norm preps)
  DeviceBuffer<float> xc;             // prune_last_layer: the logits rows' residual (max_logit_rows x H)
  DeviceBuffer<uint16_t> attc;        // and their attention output (max_logit_rows x q dim)
  bool fuse_norm = false;    // the FP4 schemes (EngineOptions): residual add + RMSNorm inside the q/k/v, gate/up preps
  bool fuse_swiglu = false;  // and SwiGLU inside the down projection's prep
  DeviceBuffer<uint16_t> h, qkvb, qr, att, ob, gub, ab, hn;  // qr: q after RoPE
  // MoE, per step (M tokens, M top_k expert rows in moe_plan's order): the choices and weights, the
  // plan (offsets[E + 1], src[M k], dst[M k]), the permuted input rows (he: when the prepared input
  // is not gathered), gate/up output, SwiGLU output, down output; the prepared inputs of both
  std::unique_ptr<GpuActivations> acts_e, acts_ei;
  DeviceBuffer<int32_t> moe_ids, moe_off, moe_src, moe_dst;
  DeviceBuffer<float> moe_w, moe_logits;
  DeviceBuffer<uint16_t> he, gue, ae, ye;
  std::unique_ptr<Pinned> moe_off_host;
  // KV cache: n_blocks usable blocks + block n_blocks for the padding rows of decode steps
  DeviceBuffer<uint16_t> kv_pool;
  int64_t n_blocks = 0;
  std::vector<int32_t> refcount, free_list;
  std::map<SeqId, Sequence> seqs;
  SeqId next_id = 0;
  // step metadata (int32): tok[P] pos[P] toff[P] drows[P] tiles[2P] orow[R] table[n_blocks + 1]
  size_t o_tok = 0, o_pos = 0, o_toff = 0, o_drows = 0, o_tiles = 0, o_orow = 0, o_table = 0, meta_words = 0;
  DeviceBuffer<int32_t> meta;
  std::unique_ptr<Pinned> meta_host;
  DeviceBuffer<SampleRequest> req;
  std::unique_ptr<Pinned> req_host;
  DeviceBuffer<int32_t> samp_out;  // tokens[R], then logprobs[R] (float bits)
  DeviceBuffer<uint8_t> samp_ws;   // sample_rows' workspace for R rows
  std::unique_ptr<Pinned> samp_host;
  std::map<int64_t, std::unique_ptr<Graph>> graphs;
  int64_t pruned = 0;  // steps whose last layer ran for their logits rows only
  // profiling
  bool profiling = false;
  std::vector<cudaEvent_t> events;
  std::vector<int> event_cat;
  StepProfile profile;

  ~Impl() {
    if (stream) cudaStreamSynchronize(stream);
    graphs.clear();
    for (cudaEvent_t e : events) cudaEventDestroy(e);
    if (stream) cudaStreamDestroy(stream);
  }

  int32_t* host_meta() const { return static_cast<int32_t*>(meta_host->p); }
  // The metadata of a step of P rows (padded) and R logits rows, packed from offset 0: a step copies
  // only what it uses (a batch-1 decode step some 300 bytes, not a layout sized by max_batch_tokens:
  // 49 KB at 2048). A decode bucket's layout is the same at every step, so its graph's pointers into
  // `meta` stay valid.
  void set_meta_layout(int64_t P, int64_t R) {
    o_tok = 0;
    o_pos = static_cast<size_t>(P);
    o_toff = static_cast<size_t>(2 * P);
    o_drows = static_cast<size_t>(3 * P);
    o_tiles = static_cast<size_t>(4 * P);  // 2 words per tile, at most P tiles
    o_orow = static_cast<size_t>(6 * P);
    o_table = static_cast<size_t>(6 * P + R);
  }

  PagedKv layer_kv(int64_t l) const {
    PagedKv kv;
    const int64_t per = (n_blocks + 1) * opt.block_size * kvd;  // elements of one pool
    kv.k = kv_pool.get() + (2 * l) * per;
    kv.v = kv_pool.get() + (2 * l + 1) * per;
    kv.blocks = n_blocks + 1;
    kv.block_size = opt.block_size;
    kv.kv_heads = static_cast<int>(cfg.num_kv_heads);
    kv.head_dim = static_cast<int>(cfg.head_dim);
    return kv;
  }

  Sequence& find(SeqId id, const char* what) {
    const auto it = seqs.find(id);
    if (it == seqs.end()) throw_unknown_sequence(what, id, next_id);
    return it->second;
  }

  void release(Sequence& s) {
    for (int32_t b : s.blocks)
      if (--refcount[static_cast<size_t>(b)] == 0) free_list.push_back(b);
    s.blocks.clear();
  }

  void build(const ModelConfig& c, const Scheme& sch, const EngineOptions& o, Source& src);
  bool capturing = false;  // a profiled decode step: events become record nodes of its graph
  void mark(int cat) {
    if (!profiling) return;
    if (event_cat.size() == events.size()) {
      cudaEvent_t e;
      SHARQ_CUDA_CHECK(cudaEventCreate(&e));
      events.push_back(e);
    }
    if (capturing) SHARQ_CUDA_CHECK(cudaEventRecordWithFlags(events[event_cat.size()], stream, cudaEventRecordExternal));
    else SHARQ_CUDA_CHECK(cudaEventRecord(events[event_cat.size()], stream));
    event_cat.push_back(cat);
  }
  void forward(int64_t M_step, int64_t R, const AttentionPlan& plan);
  // the MoE block of layer l on M rows: x += the experts' weighted outputs
  void moe(const Layer& L, int64_t M, float* x, void* ws);
  // CUDA graphs: not with per-tensor activation scales (their amax covers the padding rows), nor for
  // MoE models (the experts' row counts come back to the host inside the step)
  bool graph_ok() const {
    return nexp == 0 && !(scheme.has_act_global_scale() && scheme.act_scale == GlobalScale::per_tensor);
  }
};

void GpuExecutor::Impl::build(const ModelConfig& c, const Scheme& sch, const EngineOptions& o, Source& src) {
  Impl& E = *this;
  const auto t0 = std::chrono::steady_clock::now();
  if (device_count() == 0)
    throw std::runtime_error("GpuExecutor: no CUDA device found (no NVIDIA driver or GPU visible); use --device cpu");
  const std::string why = scheme_unsupported_reason(sch, Device::cuda);
  if (!why.empty()) throw std::invalid_argument("GpuExecutor: " + why);
  if (c.num_experts > 0) {
    const MoeRouting r = moe_routing(c);
    if (r.num_experts > kMoeMaxExperts || r.top_k < 1 || r.top_k > std::min(r.num_experts, kMoeMaxTopK))
      throw std::invalid_argument(fmt::format("GpuExecutor: {} has {} experts and {} per token; the GPU engine routes 1 .. {} "
                                              "experts and 1 .. min(experts, {}) per token", to_string(c.arch),
                                              r.num_experts, r.top_k, kMoeMaxExperts, kMoeMaxTopK));
    if (c.hidden_size % 4 != 0 || c.hidden_size > kMoeMaxHidden || r.expert_intermediate < 1)
      throw std::invalid_argument(fmt::format("GpuExecutor: an MoE model of hidden size {} (a multiple of 4, at most {}) and "
                                              "expert intermediate size {}", c.hidden_size, kMoeMaxHidden,
                                              r.expert_intermediate));
  }
  if (o.max_batch_tokens < 1 || o.max_batch_tokens > (int64_t{1} << 20))
    throw std::invalid_argument(fmt::format("GpuExecutor: max_batch_tokens = {} (1 .. 2^20)", o.max_batch_tokens));
  if (o.max_logit_rows < 0 || o.max_logit_rows > o.max_batch_tokens)
    throw std::invalid_argument(fmt::format("GpuExecutor: max_logit_rows = {} (0 .. max_batch_tokens = {})", o.max_logit_rows,
                                            o.max_batch_tokens));
  if (o.block_size < 1 || o.block_size > 1024)
    throw std::invalid_argument(fmt::format("GpuExecutor: block_size = {} (1 .. 1024)", o.block_size));
  if (o.kv_blocks < 0 || o.kv_blocks > 0x7FFFFFF0 || !(o.gpu_memory > 0.0 && o.gpu_memory <= 1.0))
    throw std::invalid_argument(fmt::format("GpuExecutor: kv_blocks = {}, gpu_memory = {} (> 0 and <= 1)", o.kv_blocks,
                                            o.gpu_memory));
  E.cfg = c;
  E.scheme = sch;
  E.opt = o;
  E.t = act_dtype(sch);
  E.H = c.hidden_size;
  E.qd = c.num_heads * c.head_dim;
  E.kvd = c.num_kv_heads * c.head_dim;
  E.I = c.intermediate_size;
  E.V = c.vocab_size;
  E.qkvd = E.qd + 2 * E.kvd;
  if (c.num_experts > 0) {
    const MoeRouting r = moe_routing(c);
    E.nexp = r.num_experts;
    E.topk = r.top_k;
    E.Ie = r.expert_intermediate;
    E.renorm = r.renormalize;
  }
  E.maxM = o.max_batch_tokens;
  E.maxR = o.max_logit_rows > 0 ? o.max_logit_rows : o.max_batch_tokens;
  SHARQ_CUDA_CHECK(cudaStreamCreateWithFlags(&E.stream, cudaStreamNonBlocking));
  E.blas = std::make_unique<CublasLtGemm>();
  cudaStream_t st = E.stream;

  try {
    const int64_t stage_n = std::max({E.V * E.H, E.qkvd * E.H, 2 * E.I * E.H, 2 * E.Ie * E.H, E.nexp * E.H});
    DeviceBuffer<float> stage(static_cast<size_t>(stage_n));
    const bool fp16 = E.t == DType::f16;
    src.matrix(Mat::embed, -1, -1, E.V, E.H, stage.get(), st);
    E.embed = DeviceBuffer<uint16_t>(static_cast<size_t>(E.V * E.H));  // BF16 rows, widened into the FP32 stream
    convert_weights_16(stage.get(), E.V * E.H, false, E.embed.get(), st);
    src.matrix(Mat::lm_head, -1, -1, E.V, E.H, stage.get(), st);
    E.lm_head = DeviceBuffer<uint16_t>(static_cast<size_t>(E.V * E.H));
    convert_weights_16(stage.get(), E.V * E.H, fp16, E.lm_head.get(), st);
    E.final_norm = upload_vec(src.vec(Vec::final_norm, -1, E.H));
    E.inv_freq = upload_vec(rope_inv_freq(c));
    GpuLinearOptions lo;
    lo.max_m = E.maxM;
    lo.own_scratch = false;
    lo.batch_invariant = E.opt.batch_invariant;
    lo.gemv16_max_m = E.opt.gemv16_max_m;
    size_t ws = 0;
    // one layer from matrices stacked along N (each N_i x K, with its bias or none)
    struct Part { Mat m; int64_t n; Vec bias; int64_t e = -1; };
    const auto linear = [&](int64_t l, int64_t K, std::initializer_list<Part> parts) {
      // the parts' biases, stacked (zeros for a part without one), or none at all
      std::vector<float> bias;
      bool any_bias = false;
      for (const Part& p : parts) {
        std::vector<float> b = src.vec(p.bias, l, p.n);
        any_bias = any_bias || !b.empty();
        if (b.empty()) b.assign(static_cast<size_t>(p.n), 0.0f);
        bias.insert(bias.end(), b.begin(), b.end());
      }
      const TensorView* first = src.view(parts.begin()->m, l, parts.begin()->e);
      if (first && first->quantized) {  // a quantized checkpoint: its stored blocks, not re-quantized
        std::vector<const QuantizedWeight*> stored;
        const bool fp8 = first->quantized->weights == StoredWeights::fp8;
        for (const Part& p : parts) {
          const TensorView* t = src.view(p.m, l, p.e);
          if (!t || !t->quantized || (t->quantized->weights == StoredWeights::fp8) != fp8)
            throw std::invalid_argument(fmt::format("GpuExecutor: layer {}: the GPU engine loads quantized checkpoints whose "
                                                    "every projection is stored quantized in one format", l));
          if (t->quantized->rows != p.n || t->quantized->cols != K)
            throw std::invalid_argument(fmt::format("GpuExecutor: {}: {} x {} stored, {} x {} expected", t->quantized->name,
                                                    t->quantized->rows, t->quantized->cols, p.n, K));
          stored.push_back(t->quantized.get());
        }
        if (fp8) {  // E4M3 codes and per-channel multipliers, the parts' rows stacked as stored
          std::vector<uint8_t> codes;
          std::vector<float> scales;
          int64_t n = 0;
          for (const QuantizedWeight* q : stored) {
            if (q->codes.bytes != static_cast<size_t>(q->rows * q->cols) || q->channel_scales.size() != static_cast<size_t>(q->rows))
              throw std::invalid_argument(fmt::format("GpuExecutor: {}: stored FP8 codes / scales do not match {} x {}", q->name,
                                                      q->rows, q->cols));
            codes.insert(codes.end(), q->codes.data, q->codes.data + q->codes.bytes);
            scales.insert(scales.end(), q->channel_scales.begin(), q->channel_scales.end());
            n += q->rows;
          }
          auto g = std::make_unique<GpuLinear>(sch, GpuLinear::Fp8Stored{codes.data(), scales.data(), n, K}, lo,
                                               E.blas.get(), any_bias ? bias.data() : nullptr);
          ws = std::max(ws, g->workspace_bytes());
          return g;
        }
        const Fp4Tiles tiles = sch.fp4_weight_block() == 32 ? stack_stored<Nvfp4_32>(stored) : stack_stored<Nvfp4_16>(stored);
        auto g = std::make_unique<GpuLinear>(sch, tiles, lo, any_bias ? bias.data() : nullptr);
        ws = std::max(ws, g->workspace_bytes());
        return g;
      }
      DeviceMatrix dm{stage.get(), 0, K, {}};
      for (const Part& p : parts) {
        src.matrix(p.m, l, p.e, p.n, K, stage.get() + dm.rows * K, st);
        dm.rows += p.n;
        dm.parts.push_back(p.n);
      }
      auto g = std::make_unique<GpuLinear>(sch, dm, lo, E.blas.get(), any_bias ? bias.data() : nullptr, st);
      ws = std::max(ws, g->workspace_bytes());
      return g;
    };
    for (int64_t l = 0; l < c.num_layers; ++l) {
      Impl::Layer L;
      L.attn_norm = upload_vec(src.vec(Vec::attn_norm, l, E.H));
      L.mlp_norm = upload_vec(src.vec(Vec::mlp_norm, l, E.H));
      L.q_norm = upload_vec(src.vec(Vec::q_norm, l, c.head_dim));
      L.k_norm = upload_vec(src.vec(Vec::k_norm, l, c.head_dim));
      if (L.attn_norm.size() != static_cast<size_t>(E.H) || L.mlp_norm.size() != static_cast<size_t>(E.H))
        throw std::invalid_argument(fmt::format("GpuExecutor: layer {} has no attention or MLP norm", l));
      L.qkv = linear(l, E.H, {{Mat::q, E.qd, Vec::q_bias}, {Mat::k, E.kvd, Vec::k_bias}, {Mat::v, E.kvd, Vec::v_bias}});
      L.o = linear(l, E.qd, {{Mat::o, E.H, Vec::o_bias}});
      if (E.nexp == 0) {
        L.gate_up = linear(l, E.H, {{Mat::gate, E.I, Vec::none}, {Mat::up, E.I, Vec::none}});
        L.down = linear(l, E.I, {{Mat::down, E.H, Vec::none}});
      } else {  // MoE: the FP32 router (every scheme leaves it unquantized), then each expert's gate/up and down
        L.router = DeviceBuffer<float>(static_cast<size_t>(E.nexp * E.H));
        src.matrix(Mat::router, l, -1, E.nexp, E.H, L.router.get(), st);
        for (int64_t e = 0; e < E.nexp; ++e) {
          Impl::Expert x;
          x.gate_up = linear(l, E.H, {{Mat::expert_gate, E.Ie, Vec::none, e}, {Mat::expert_up, E.Ie, Vec::none, e}});
          x.down = linear(l, E.Ie, {{Mat::expert_down, E.H, Vec::none, e}});
          L.experts.push_back(std::move(x));
        }
      }
      E.layers.push_back(std::move(L));
    }
    SHARQ_CUDA_CHECK(cudaStreamSynchronize(st));  // `stage` is freed on return
    E.workspace = DeviceBuffer<uint8_t>(ws);
  } catch (const std::runtime_error& e) {
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    throw std::runtime_error(fmt::format("GpuExecutor: building the '{}' weights failed ({:.1f} GiB of {:.1f} GiB free): {}",
                                         sch.name(), free_b / 1073741824.0, total_b / 1073741824.0, e.what()));
  }
  E.load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  E.acts_h = std::make_unique<GpuActivations>(sch, E.H, E.maxM);
  if (E.qd != E.H) E.acts_q = std::make_unique<GpuActivations>(sch, E.qd, E.maxM);
  if (E.nexp == 0) E.acts_i = std::make_unique<GpuActivations>(sch, E.I, E.maxM);  // (MoE: acts_ei below)
  const size_t M = static_cast<size_t>(E.maxM), R = static_cast<size_t>(E.maxR);
  // (the fused preps take the dense MLP's successor kernels: not in MoE models)
  E.fuse_norm = E.nexp == 0 && o.fuse_norm && E.layers.front().down->fused_prep();
  E.fuse_swiglu = E.nexp == 0 && o.fuse_swiglu && E.layers.front().down->fused_prep();
  E.x = DeviceBuffer<float>(M * E.H);
  if (E.fuse_norm) E.x2 = DeviceBuffer<float>(M * E.H);
  E.qr = DeviceBuffer<uint16_t>(M * E.qd);
  E.logits = DeviceBuffer<float>(R * E.V);
  E.h = DeviceBuffer<uint16_t>(M * E.H);
  E.qkvb = DeviceBuffer<uint16_t>(M * E.qkvd);
  E.att = DeviceBuffer<uint16_t>(M * E.qd);
  E.ob = DeviceBuffer<uint16_t>(M * E.H);
  if (E.nexp == 0) E.gub = DeviceBuffer<uint16_t>(M * 2 * E.I);
  if (E.nexp == 0 && !E.fuse_swiglu) E.ab = DeviceBuffer<uint16_t>(M * E.I);  // the SwiGLU output (fused: never materialized)
  E.hn = DeviceBuffer<uint16_t>(R * E.H);
  if (E.nexp > 0) {
    const size_t MK = M * static_cast<size_t>(E.topk);
    E.acts_e = std::make_unique<GpuActivations>(sch, E.H, static_cast<int64_t>(MK));
    E.acts_ei = std::make_unique<GpuActivations>(sch, E.Ie, static_cast<int64_t>(MK));
    E.moe_ids = DeviceBuffer<int32_t>(MK);
    E.moe_w = DeviceBuffer<float>(MK);
    E.moe_logits = DeviceBuffer<float>(M * static_cast<size_t>(E.nexp));
    E.moe_src = DeviceBuffer<int32_t>(MK);
    E.moe_dst = DeviceBuffer<int32_t>(MK);
    E.moe_off = DeviceBuffer<int32_t>(static_cast<size_t>(E.nexp + 1));
    E.moe_off_host = std::make_unique<Pinned>(static_cast<size_t>(E.nexp + 1) * sizeof(int32_t));
    if (!E.acts_e->gathers()) E.he = DeviceBuffer<uint16_t>(MK * E.H);
    E.gue = DeviceBuffer<uint16_t>(MK * 2 * E.Ie);
    E.ae = DeviceBuffer<uint16_t>(MK * E.Ie);
    E.ye = DeviceBuffer<uint16_t>(MK * E.H);
  }
  // (batch-invariant: every layer at the step's rows; per-tensor activation scales would take the
  // last layer's amax over the logits rows alone)
  if (o.prune_last_layer && !o.batch_invariant && !(sch.has_act_global_scale() && sch.act_scale == GlobalScale::per_tensor)) {
    E.xc = DeviceBuffer<float>(R * E.H);
    E.attc = DeviceBuffer<uint16_t>(R * E.qd);
  }
  E.attn_ws = DeviceBuffer<uint8_t>(paged_attention_workspace_bytes(E.maxM, static_cast<int>(c.num_heads),
                                                                    static_cast<int>(c.head_dim)));

  // the KV cache: what is asked, or a fraction of what is free now
  const size_t block_bytes = static_cast<size_t>(2 * c.num_layers * o.block_size * E.kvd) * sizeof(uint16_t);
  int64_t blocks = o.kv_blocks;
  if (blocks == 0) {
    size_t free_b = 0, total_b = 0;
    SHARQ_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    blocks = static_cast<int64_t>(static_cast<double>(free_b) * o.gpu_memory / static_cast<double>(block_bytes)) - 1;
    blocks = std::min<int64_t>(blocks, 0x7FFFFFF0);
    if (blocks < 1)
      throw std::runtime_error(fmt::format("GpuExecutor: no device memory left for the KV cache ({} bytes free, one block "
                                           "needs {})", free_b, block_bytes));
  }
  E.n_blocks = blocks;
  try {
    E.kv_pool = DeviceBuffer<uint16_t>(static_cast<size_t>(blocks + 1) * block_bytes / sizeof(uint16_t));
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("GpuExecutor: the KV cache of {} blocks ({:.1f} MiB) does not fit: {}", blocks,
                                         static_cast<double>(blocks) * block_bytes / 1048576.0, e.what()));
  }
  E.refcount.assign(static_cast<size_t>(blocks), 0);
  E.free_list.reserve(static_cast<size_t>(blocks));
  for (int64_t b = blocks - 1; b >= 0; --b) E.free_list.push_back(static_cast<int32_t>(b));
  E.set_meta_layout(static_cast<int64_t>(M), static_cast<int64_t>(R));
  E.meta_words = E.o_table + static_cast<size_t>(blocks) + 1;  // the largest step's layout
  E.meta = DeviceBuffer<int32_t>(E.meta_words);
  E.meta_host = std::make_unique<Pinned>(E.meta_words * sizeof(int32_t));
  E.req = DeviceBuffer<SampleRequest>(R);
  E.req_host = std::make_unique<Pinned>(R * sizeof(SampleRequest));
  E.samp_out = DeviceBuffer<int32_t>(2 * R);
  E.samp_ws = DeviceBuffer<uint8_t>(sample_rows_workspace_bytes(static_cast<int>(R)));
  E.samp_host = std::make_unique<Pinned>(2 * R * sizeof(int32_t));
}

GpuExecutor::GpuExecutor(const ModelWeights& w, const Scheme& scheme, const EngineOptions& opt)
    : impl_(std::make_unique<Impl>()) {
  w.check_dimensions();
  if (const std::string why = quantized_scheme_mismatch(w.quantization, scheme, w.source); !why.empty())
    throw std::invalid_argument("GpuExecutor: " + why);
  CheckpointSource src(w);
  impl_->build(w.config, scheme, opt, src);
}

GpuExecutor::GpuExecutor(const SyntheticModel& m, const Scheme& scheme, const EngineOptions& opt)
    : impl_(std::make_unique<Impl>()) {
  SyntheticSource src(m.config, m.seed);
  impl_->build(m.config, scheme, opt, src);
}

GpuExecutor::~GpuExecutor() = default;

ExecutorFactory gpu_executor_factory(const EngineOptions& opt) {
  return [opt](const ModelWeights& w, const Scheme& s) -> std::unique_ptr<Executor> {
    return std::make_unique<GpuExecutor>(w, s, opt);
  };
}

const ModelConfig& GpuExecutor::config() const { return impl_->cfg; }
const Scheme& GpuExecutor::scheme() const { return impl_->scheme; }
int64_t GpuExecutor::kv_blocks() const { return impl_->n_blocks; }
int64_t GpuExecutor::kv_block_size() const { return impl_->opt.block_size; }
int64_t GpuExecutor::free_kv_blocks() const { return static_cast<int64_t>(impl_->free_list.size()); }
int64_t GpuExecutor::graphs_captured() const { return static_cast<int64_t>(impl_->graphs.size()); }
int64_t GpuExecutor::steps_pruned() const { return impl_->pruned; }
double GpuExecutor::load_seconds() const { return impl_->load_s; }
void GpuExecutor::set_profiling(bool on) { impl_->profiling = on; }
const StepProfile& GpuExecutor::last_profile() const { return impl_->profile; }

size_t GpuExecutor::expert_weight_bytes() const {
  const Impl& E = *impl_;
  if (E.nexp == 0) return 0;
  const Impl::Expert& x = E.layers.front().experts.front();
  return x.gate_up->weight_bytes() + x.down->weight_bytes();
}

size_t GpuExecutor::weight_bytes() const {
  const Impl& E = *impl_;
  size_t b = E.embed.bytes() + E.lm_head.bytes() + E.final_norm.bytes();
  for (const auto& L : E.layers) {
    for (const GpuLinear* g : {L.qkv.get(), L.o.get(), L.gate_up.get(), L.down.get()})
      if (g) b += g->weight_bytes();
    for (const Impl::Expert& x : L.experts) b += x.gate_up->weight_bytes() + x.down->weight_bytes();
    b += L.attn_norm.bytes() + L.mlp_norm.bytes() + L.q_norm.bytes() + L.k_norm.bytes() + L.router.bytes();
  }
  return b;
}

SeqId GpuExecutor::create_sequence(int64_t max_len) {
  Impl& E = *impl_;
  check_sequence_max_len(max_len, E.cfg);
  const SeqId id = E.next_id++;
  Impl::Sequence s;
  s.cap = max_len;
  E.seqs.emplace(id, std::move(s));
  return id;
}

void GpuExecutor::free_sequence(SeqId seq) {
  Impl& E = *impl_;
  E.release(E.find(seq, "free_sequence"));
  E.seqs.erase(seq);
}

int64_t GpuExecutor::sequence_length(SeqId seq) const { return impl_->find(seq, "sequence_length").len; }
int64_t GpuExecutor::sequence_capacity(SeqId seq) const { return impl_->find(seq, "sequence_capacity").cap; }

// The whole model for M rows whose metadata is on the device; logits of the R rows listed in orow.
// Launches only (no host synchronization): captured as the decode graphs.
void GpuExecutor::Impl::forward(int64_t M_step, int64_t R, const AttentionPlan& plan) {
  Impl& E = *this;
  // Rows the layers compute: every row of the step, until the last layer's attention; then only the R
  // rows that need logits when the step has fewer (prune_last_layer: a prefill's o projection, MLP
  // and final norm of its logits rows only; decode graphs give every row a logits row)
  int64_t M = M_step;
  const bool prune = E.xc.get() && R < M_step;
  if (prune) ++E.pruned;
  const ModelConfig& c = E.cfg;
  cudaStream_t st = E.stream;
  const int32_t* d = E.meta.get();
  RowMap rows;
  rows.pos = d + E.o_pos;
  rows.table_off = d + E.o_toff;
  rows.table = d + E.o_table;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const int nh = static_cast<int>(c.num_heads);
  GpuActivations& acts_q = E.acts_q ? *E.acts_q : *E.acts_h;
  void* ws = E.workspace.get();
  // The residual stream: the FP4 schemes fuse each residual add + RMSNorm into the next
  // projection's activation prep, which writes the sum to the other buffer (its blocks read x):
  // xr is the current residual, xw the other one. The other schemes add in place: inside the GEMM
  // (fp16, bf16: gemm_accumulate), inside the split-K reduction with the norm (Fp4Epilogue), or in the
  // norm kernel.
  float* xr = E.x.get();
  float* xw = E.x2.get();
  // The other FP4 schemes' split-K reduction may add o's and down's output to the residual stream
  // and norm it for the next projection itself (GpuLinear::fuses): then E.h is ready (h_ready).
  bool h_ready = false;
  auto norm_into = [&](const GpuLinear& lin, const void* add, const float* w, GpuActivations& acts) {
    if (h_ready) {
      h_ready = false;
      mark(kPrep);
      lin.prepare(E.h.get(), M, acts, st);
      return;
    }
    if (E.fuse_norm) {
      mark(kPrep);
      lin.prepare_norm(xr, add, w, eps, M, add ? xw : nullptr, acts, st);
      if (add) std::swap(xr, xw);
      return;
    }
    if (!add && lin.gemv(M)) {  // fp16, bf16: the norm inside the GEMV
      mark(kPrep);
      lin.prepare_norm(xr, nullptr, w, eps, M, nullptr, acts, st);
      return;
    }
    mark(kNorm);
    if (add) add_rmsnorm(xr, add, M, E.H, w, eps, E.t, E.h.get(), st);
    else rmsnorm_rows(xr, nullptr, nullptr, M, E.H, w, eps, E.t, E.h.get(), st);
    mark(kPrep);
    lin.prepare(E.h.get(), M, acts, st);
  };
  // the GEMM of a projection whose output joins the residual stream, normed by next_w (null: none).
  // pending: that output when it is still to be added (E.ob), null when the GEMM added it itself.
  const void* pending = nullptr;
  auto gemm_to_residual = [&](const GpuLinear& lin, const GpuActivations& acts, const float* next_w) {
    mark(kGemm);
    pending = nullptr;
    if (E.opt.fuse_reduce_norm && !E.fuse_norm && next_w && lin.fuses(Fp4Epilogue::add_rmsnorm, M)) {
      lin.gemm(acts, GpuLinear::Epilogue{Fp4Epilogue::add_rmsnorm, xr, next_w, eps}, E.h.get(), st, ws);
      h_ready = true;
    } else if (E.opt.gemm_residual && !E.fuse_norm && lin.accumulates()) {
      lin.gemm_accumulate(acts, xr, st);  // x += product inside cuBLASLt: the norm reads x alone
    } else {
      lin.gemm(acts, E.ob.get(), st, ws);
      pending = E.ob.get();
    }
  };
  mark(kOther);
  embed_rows(E.embed.get(), d + E.o_tok, M, E.H, xr, st);
  const uint16_t* qkv = E.qkvb.get();
  const void* att = E.att.get();  // the attention's output rows the o projection reads
  const int32_t* out_rows = d + E.o_orow;  // the logits rows among the computed rows
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const Impl::Layer& L = E.layers[static_cast<size_t>(l)];
    const PagedKv kv = E.layer_kv(l);
    norm_into(*L.qkv, pending, L.attn_norm.get(), *E.acts_h);
    mark(kGemm);
    L.qkv->gemm(*E.acts_h, E.qkvb.get(), st, ws);
    mark(kRope);
    qk_rope_kv_write(qkv, qkv + E.qd, qkv + E.qd + E.kvd, E.qkvd, M, nh, L.q_norm.get(), L.k_norm.get(), eps,
                     E.inv_freq.get(), c.rope_interleaved, rows, kv, E.t, E.qr.get(), st);
    const bool prune_here = prune && l + 1 == c.num_layers;
    if (prune_here && R == 0) return;  // a chunk without logits: its K and V are all it leaves
    mark(kAttention);
    paged_attention(E.qr.get(), M, nh, rows, kv, c.sliding_window, E.t, plan, E.att.get(), st);
    if (prune_here) {
      mark(kOther);  // the logits rows' residual and attention output, packed
      gather_rows(xr, out_rows, R, E.H * static_cast<int64_t>(sizeof(float)), E.xc.get(), st);
      gather_rows(E.att.get(), out_rows, R, E.qd * 2, E.attc.get(), st);
      xr = E.xc.get();
      att = E.attc.get();
      M = R;
      out_rows = nullptr;  // row r is logits row r
    }
    mark(kPrep);
    L.o->prepare(att, M, acts_q, st);
    gemm_to_residual(*L.o, acts_q, L.mlp_norm.get());
    if (!L.experts.empty()) {  // MoE: the residual add + norm into E.h (unless o's reduction did it), then the experts
      if (!h_ready) {
        mark(kNorm);
        if (pending) add_rmsnorm(xr, pending, M, E.H, L.mlp_norm.get(), eps, E.t, E.h.get(), st);
        else rmsnorm_rows(xr, nullptr, nullptr, M, E.H, L.mlp_norm.get(), eps, E.t, E.h.get(), st);
      }
      E.moe(L, M, xr, ws);
      pending = nullptr;
      h_ready = false;
      continue;
    }
    norm_into(*L.gate_up, pending, L.mlp_norm.get(), *E.acts_h);
    mark(kGemm);
    if (E.fuse_swiglu || L.down->gemv(M)) {  // SwiGLU inside down's activation prep (FP4) or its GEMV (fp16, bf16)
      L.gate_up->gemm(*E.acts_h, E.gub.get(), st, ws);
      mark(kPrep);
      L.down->prepare_swiglu(E.gub.get(), M, *E.acts_i, st);
    } else if (E.opt.fuse_reduce_swiglu && L.gate_up->fuses(Fp4Epilogue::swiglu, M)) {  // SwiGLU inside gate/up's reduction
      L.gate_up->gemm(*E.acts_h, GpuLinear::Epilogue{Fp4Epilogue::swiglu}, E.ab.get(), st, ws);
      mark(kPrep);
      L.down->prepare(E.ab.get(), M, *E.acts_i, st);
    } else {
      L.gate_up->gemm(*E.acts_h, E.gub.get(), st, ws);
      mark(kSwiglu);
      swiglu(E.gub.get(), M, E.I, E.t, E.ab.get(), st);
      mark(kPrep);
      L.down->prepare(E.ab.get(), M, *E.acts_i, st);
    }
    gemm_to_residual(*L.down, *E.acts_i, l + 1 < c.num_layers ? E.layers[static_cast<size_t>(l + 1)].attn_norm.get() : nullptr);
  }
  if (R == 0) return;
  mark(kOther);  // the last residual add (unless down's GEMM did it) and the final norm, of the R logits rows only
  rmsnorm_rows(xr, pending, out_rows, R, E.H, E.final_norm.get(), eps, E.t, E.hn.get(), st);
  mark(kLmHead);
  E.blas->matmul(E.t == DType::f16 ? BlasType::f16_f32out : BlasType::bf16_f32out, E.hn.get(), E.lm_head.get(),
                 E.logits.get(), R, E.V, E.H, nullptr, nullptr, st);
  mark(kSampling);  // (inside the graph of a profiled decode step: ends the lm_head segment there)
}

// The MoE block on M rows: x (FP32, M x H: the residual after the attention's add) and E.h (its
// RMSNorm, act dtype) are ready. The router reads x (and the norm weights) for an FP32 router input
// as the CPU's; the experts read E.h, prepared once per token and then permuted (gather) where the
// prepared input is per row, else permuted first and prepared per expert (per-tensor scales: each
// expert's amax over its own rows, as the CPU runs them) or as a whole (X itself: fp16, bf16, w4a16).
// Each expert's GEMMs run on its rows; SwiGLU and down's prep run once over all the rows; the
// combine adds the weighted outputs in expert order. The experts' row counts are copied to the host
// (one synchronization per MoE layer: no CUDA graph for MoE models yet).
void GpuExecutor::Impl::moe(const Layer& L, int64_t M, float* x, void* ws) {
  Impl& E = *this;
  cudaStream_t st = E.stream;
  const int64_t K = E.topk, MK = M * K;
  mark(kMoeRoute);
  MoeRouteArgs ra;
  ra.x = x;
  ra.norm_w = L.mlp_norm.get();
  ra.eps = E.cfg.rms_norm_eps;
  ra.router = L.router.get();
  ra.M = M;
  ra.H = E.H;
  ra.E = E.nexp;
  ra.top_k = K;
  ra.renormalize = E.renorm;
  ra.logits = E.moe_logits.get();
  ra.experts = E.moe_ids.get();
  ra.weights = E.moe_w.get();
  moe_route(ra, st);
  moe_plan(E.moe_ids.get(), M, K, E.nexp, E.moe_off.get(), E.moe_src.get(), E.moe_dst.get(), st);
  SHARQ_CUDA_CHECK(cudaMemcpyAsync(E.moe_off_host->p, E.moe_off.get(), static_cast<size_t>(E.nexp + 1) * sizeof(int32_t),
                                   cudaMemcpyDeviceToHost, st));
  SHARQ_CUDA_CHECK(cudaStreamSynchronize(st));
  const int32_t* off = static_cast<const int32_t*>(E.moe_off_host->p);
  if (off[E.nexp] != MK) throw std::logic_error(fmt::format("GpuExecutor: the MoE plan holds {} rows, not {}", off[E.nexp], MK));
  const bool per_tensor = E.scheme.has_act_global_scale() && E.scheme.act_scale == GlobalScale::per_tensor;
  GpuActivations& ae = *E.acts_e;
  GpuActivations& ai = *E.acts_ei;
  const GpuLinear& gu0 = *L.experts.front().gate_up;
  const GpuLinear& dn0 = *L.experts.front().down;
  const size_t es = 2;  // bytes of an activation element
  if (ae.gathers()) {  // prepared once per token, then permuted
    mark(kPrep);
    gu0.prepare(E.h.get(), M, *E.acts_h, st);
    mark(kMoePermute);
    ae.gather(*E.acts_h, E.moe_src.get(), MK, st);
  } else {
    mark(kMoePermute);
    gather_rows(E.h.get(), E.moe_src.get(), MK, E.H * static_cast<int64_t>(es), E.he.get(), st);
    if (!per_tensor) {
      mark(kPrep);
      gu0.prepare(E.he.get(), MK, ae, st);
    }
  }
  auto rows_of = [&](uint16_t* base, int64_t row, int64_t width) { return base + row * width; };
  for (int64_t e = 0; e < E.nexp; ++e) {
    const int64_t r0 = off[e], n = off[e + 1] - off[e];
    if (n == 0) continue;  // an expert without tokens costs nothing
    const GpuLinear& gu = *L.experts[static_cast<size_t>(e)].gate_up;
    if (per_tensor) {
      mark(kPrep);
      gu.prepare(rows_of(E.he.get(), r0, E.H), n, ae, st);
      mark(kMoeGemm);
      gu.gemm(ae, rows_of(E.gue.get(), r0, 2 * E.Ie), st, ws);
    } else {
      mark(kMoeGemm);
      gu.gemm_rows(ae, r0, n, rows_of(E.gue.get(), r0, 2 * E.Ie), st, ws);
    }
  }
  mark(kSwiglu);
  swiglu(E.gue.get(), MK, E.Ie, E.t, E.ae.get(), st);
  if (!per_tensor) {
    mark(kPrep);
    dn0.prepare(E.ae.get(), MK, ai, st);
  }
  for (int64_t e = 0; e < E.nexp; ++e) {
    const int64_t r0 = off[e], n = off[e + 1] - off[e];
    if (n == 0) continue;
    const GpuLinear& dn = *L.experts[static_cast<size_t>(e)].down;
    if (per_tensor) {
      mark(kPrep);
      dn.prepare(rows_of(E.ae.get(), r0, E.Ie), n, ai, st);
      mark(kMoeGemm);
      dn.gemm(ai, rows_of(E.ye.get(), r0, E.H), st, ws);
    } else {
      mark(kMoeGemm);
      dn.gemm_rows(ai, r0, n, rows_of(E.ye.get(), r0, E.H), st, ws);
    }
  }
  mark(kMoePermute);
  moe_combine(x, E.ye.get(), E.t, E.moe_ids.get(), E.moe_w.get(), E.moe_dst.get(), M, K, E.H, st);
}

StepOutput GpuExecutor::step(const std::vector<StepEntry>& batch) {
  Impl& E = *impl_;
  check_step_batch(batch, E.V, [&](SeqId id) {
    const Impl::Sequence& s = E.find(id, "step");
    return SequenceExtent{s.len, s.cap};
  });
  int64_t M = 0, need = 0, R = 0, ns = 0;
  bool decode = true;
  const int64_t bs = E.opt.block_size;
  for (const StepEntry& e : batch) {
    const Impl::Sequence& s = E.find(e.seq, "step");
    const int64_t n = static_cast<int64_t>(e.tokens.size());
    M += n;
    decode = decode && n == 1;
    need += (s.len + n + bs - 1) / bs - static_cast<int64_t>(s.blocks.size());
    R += e.return_logits ? (e.all_logits ? n : 1) : (e.sampling ? 1 : 0);
    ns += e.sampling ? 1 : 0;
  }
  // a decode step runs padded to its bucket (graph or not, so that both give the same bits)
  const bool padded = decode && E.graph_ok() && decode_bucket(M) <= E.maxM && decode_bucket(M) <= E.maxR;
  const int64_t P = padded ? decode_bucket(M) : M;
  if (M > E.maxM)
    throw std::invalid_argument(fmt::format("step: {} new tokens in one step exceed the engine's max_batch_tokens {}", M, E.maxM));
  if (R > E.maxR)
    throw std::invalid_argument(fmt::format("step: {} logits rows in one step exceed the engine's max_logit_rows {}", R, E.maxR));
  if (need > static_cast<int64_t>(E.free_list.size()))
    throw std::invalid_argument(fmt::format("step: the KV cache is exhausted: the step needs {} more blocks of {} positions, "
                                            "{} of {} are free", need, bs, E.free_list.size(), E.n_blocks));
  StepOutput out = shape_step_output(batch, E.V);
  if (M == 0) return out;

  // blocks for the new positions, then the step's metadata
  E.set_meta_layout(P, padded ? P : R);
  int32_t* hm = E.host_meta();
  int32_t* tok = hm + E.o_tok;
  int32_t* pos = hm + E.o_pos;
  int32_t* toff = hm + E.o_toff;
  int32_t* orow = hm + E.o_orow;
  int32_t* table = hm + E.o_table;
  SampleRequest* rq = static_cast<SampleRequest*>(E.req_host->p);
  std::vector<int64_t> entry_rows;
  std::vector<int32_t> last_row(batch.size());
  int64_t r = 0, tsize = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const StepEntry& e = batch[i];
    Impl::Sequence& s = E.find(e.seq, "step");
    const int64_t n = static_cast<int64_t>(e.tokens.size());
    while (static_cast<int64_t>(s.blocks.size()) * bs < s.len + n) {
      const int32_t b = E.free_list.back();
      E.free_list.pop_back();
      E.refcount[static_cast<size_t>(b)] = 1;
      s.blocks.push_back(b);
    }
    const int64_t off = tsize;
    std::copy(s.blocks.begin(), s.blocks.end(), table + tsize);
    tsize += static_cast<int64_t>(s.blocks.size());
    for (int64_t k = 0; k < n; ++k, ++r) {
      tok[r] = e.tokens[static_cast<size_t>(k)];
      pos[r] = static_cast<int32_t>(s.len + k);
      toff[r] = static_cast<int32_t>(off);
    }
    last_row[i] = static_cast<int32_t>(r - 1);
    entry_rows.push_back(n);
  }
  // the padding rows: position 0 of the reserved block, token 0
  table[tsize] = static_cast<int32_t>(E.n_blocks);
  for (; r < P; ++r) {
    tok[r] = 0;
    pos[r] = 0;
    toff[r] = static_cast<int32_t>(tsize);
    entry_rows.push_back(1);
  }
  ++tsize;
  // logits rows: the returned ones first (entry order: the StepOutput layout), then the rows only
  // sampled, then (padded decode) every other row
  int64_t nr = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const StepEntry& e = batch[i];
    if (!e.return_logits) continue;
    const int64_t n = static_cast<int64_t>(e.tokens.size());
    for (int64_t k = e.all_logits ? 0 : n - 1; k < n; ++k) orow[nr++] = last_row[i] - static_cast<int32_t>(n - 1 - k);
  }
  const int64_t returned = nr;
  int64_t q = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const StepEntry& e = batch[i];
    if (!e.sampling) continue;
    int32_t lr = -1;
    if (e.return_logits) {  // its last row is already listed
      for (int64_t k = 0; k < returned; ++k)
        if (orow[k] == last_row[i]) lr = static_cast<int32_t>(k);
    } else {
      lr = static_cast<int32_t>(nr);
      orow[nr++] = last_row[i];
    }
    const SamplingParams& p = *e.sampling;
    SamplerStream& s = E.find(e.seq, "step").sampler;
    if (!s.seeded) {
      s.state = sampler_state(p.seed);
      s.seeded = true;
    }
    rq[q++] = SampleRequest{lr, p.temperature, p.top_p, p.temperature > 0.0f ? sampler_next_uniform(s.state) : 0.0f};
  }
  int64_t Rrun = nr;
  if (padded) {  // every row gets a logits row: fixed shapes for the graph
    std::vector<char> listed(static_cast<size_t>(P), 0);
    for (int64_t k = 0; k < nr; ++k) listed[static_cast<size_t>(orow[k])] = 1;
    for (int64_t k = 0; k < P; ++k)
      if (!listed[static_cast<size_t>(k)]) orow[nr++] = static_cast<int32_t>(k);
    Rrun = P;
  }
  const AttentionWork work = plan_attention(entry_rows, static_cast<int>(E.cfg.head_dim), E.opt.batch_invariant);
  std::copy(work.decode_rows.begin(), work.decode_rows.end(), hm + E.o_drows);
  std::copy(work.prefill_tiles.begin(), work.prefill_tiles.end(), hm + E.o_tiles);
  AttentionPlan plan;
  plan.decode_rows = E.meta.get() + E.o_drows;
  plan.n_decode = static_cast<int32_t>(work.decode_rows.size());
  plan.prefill_tiles = E.meta.get() + E.o_tiles;
  plan.n_tiles = static_cast<int32_t>(work.prefill_tiles.size() / 2);
  plan.workspace = E.attn_ws.get();

  cudaStream_t st = E.stream;
  SHARQ_CUDA_CHECK(cudaMemcpyAsync(E.meta.get(), hm, (E.o_table + static_cast<size_t>(tsize)) * sizeof(int32_t),
                                   cudaMemcpyHostToDevice, st));
  if (q) SHARQ_CUDA_CHECK(cudaMemcpyAsync(E.req.get(), rq, static_cast<size_t>(q) * sizeof(SampleRequest), cudaMemcpyHostToDevice, st));
  E.event_cat.clear();
  Graph one;  // a profiled decode step's one-off graph, alive until the step's final synchronization
  if (padded && E.opt.cuda_graphs && E.profiling) {  // a one-off graph with timing events in it
    cudaGraph_t g = nullptr;
    E.capturing = true;
    SHARQ_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    try {
      E.forward(P, Rrun, plan);
    } catch (...) {
      E.capturing = false;
      cudaStreamEndCapture(st, &g);
      if (g) cudaGraphDestroy(g);
      throw;
    }
    E.capturing = false;
    SHARQ_CUDA_CHECK(cudaStreamEndCapture(st, &g));
    const cudaError_t err = cudaGraphInstantiate(&one.exec, g, 0);
    cudaGraphDestroy(g);
    SHARQ_CUDA_CHECK(err);
    SHARQ_CUDA_CHECK(cudaGraphLaunch(one.exec, st));
  } else if (padded && E.opt.cuda_graphs) {
    auto it = E.graphs.find(P);
    if (it == E.graphs.end()) {
      cudaGraph_t g = nullptr;
      SHARQ_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
      try {
        E.forward(P, Rrun, plan);
      } catch (...) {
        cudaStreamEndCapture(st, &g);
        if (g) cudaGraphDestroy(g);
        throw;
      }
      SHARQ_CUDA_CHECK(cudaStreamEndCapture(st, &g));
      auto graph = std::make_unique<Graph>();
      const cudaError_t err = cudaGraphInstantiate(&graph->exec, g, 0);
      cudaGraphDestroy(g);
      SHARQ_CUDA_CHECK(err);
      it = E.graphs.emplace(P, std::move(graph)).first;
    }
    SHARQ_CUDA_CHECK(cudaGraphLaunch(it->second->exec, st));
  } else {
    E.forward(P, Rrun, plan);
  }
  if (E.event_cat.empty() || E.event_cat.back() != kSampling) E.mark(kSampling);
  if (q) {
    // tokens then log-probabilities, adjacent: one copy back
    sample_rows(E.logits.get(), E.V, E.req.get(), static_cast<int>(q), E.samp_out.get(),
                reinterpret_cast<float*>(E.samp_out.get() + q), E.samp_ws.get(), E.samp_ws.bytes(), st);
    SHARQ_CUDA_CHECK(cudaMemcpyAsync(E.samp_host->p, E.samp_out.get(), static_cast<size_t>(2 * q) * sizeof(int32_t),
                                     cudaMemcpyDeviceToHost, st));
  }
  E.mark(kOther);
  if (returned)
    SHARQ_CUDA_CHECK(cudaMemcpyAsync(out.logits.data(), E.logits.get(), static_cast<size_t>(returned * E.V) * sizeof(float),
                                     cudaMemcpyDeviceToHost, st));
  SHARQ_CUDA_CHECK(cudaStreamSynchronize(st));

  if (E.profiling && E.event_cat.size() > 1) {
    E.profile = StepProfile{};
    for (const char* n : kCatNames) {
      E.profile.us[n] = 0.0;
      E.profile.segments[n] = 0;
    }
    for (size_t k = 0; k + 1 < E.event_cat.size(); ++k) {
      float ms = 0.0f;
      SHARQ_CUDA_CHECK(cudaEventElapsedTime(&ms, E.events[k], E.events[k + 1]));
      E.profile.us[kCatNames[E.event_cat[k]]] += 1000.0 * ms;
      ++E.profile.segments[kCatNames[E.event_cat[k]]];
    }
    double other = 0.0;
    for (int c : {kOther, kNorm, kRope, kSwiglu, kMoeRoute, kMoePermute}) other += E.profile.us[kCatNames[c]];
    E.profile.us["norms_rope_other"] = other;
    E.profile.us["gemm"] += E.profile.us[kCatNames[kMoeGemm]];
    float ms = 0.0f;
    SHARQ_CUDA_CHECK(cudaEventElapsedTime(&ms, E.events.front(), E.events[E.event_cat.size() - 1]));
    E.profile.total_us = 1000.0 * ms;
  }
  const int32_t* sh = static_cast<const int32_t*>(E.samp_host->p);
  const int64_t nq = q;
  q = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    if (!batch[i].sampling) continue;
    out.sampled[i] = sh[q];
    float lp;
    std::memcpy(&lp, sh + nq + q, sizeof lp);
    out.logprob[i] = lp;
    ++q;
  }
  for (const StepEntry& e : batch) E.find(e.seq, "step").len += static_cast<int64_t>(e.tokens.size());
  return out;
}

double GpuExecutor::time_linears(int64_t M, int64_t lm_rows, int reps, bool cublas) {
  Impl& E = *impl_;
  if (E.nexp > 0)
    throw std::invalid_argument("time_linears: MoE models are not timed by layer yet (their expert GEMMs depend on the routing)");
  if (M < 1 || M > E.maxM || lm_rows < 0 || lm_rows > E.maxR || reps < 1)
    throw std::invalid_argument(fmt::format("time_linears: M = {} (1 .. {}), lm_rows = {} (0 .. {}), reps = {}", M, E.maxM,
                                            lm_rows, E.maxR, reps));
  cudaStream_t st = E.stream;
  const float eps = static_cast<float>(E.cfg.rms_norm_eps);
  {  // seeded activations in the three inputs
    const int64_t n = M * std::max({E.H, E.qd, E.I});
    DeviceBuffer<float> f(static_cast<size_t>(n));
    fill_synthetic(f.get(), n, 77, 1.0f, 0.0f, st);
    convert_weights_16(f.get(), M * E.H, E.t == DType::f16, E.h.get(), st);
    convert_weights_16(f.get(), M * E.qd, E.t == DType::f16, E.att.get(), st);
    // the fused preps (and the GEMV's norm) read the residual stream and the previous output
    SHARQ_CUDA_CHECK(cudaMemcpyAsync(E.x.get(), f.get(), M * E.H * sizeof(float), cudaMemcpyDeviceToDevice, st));
    convert_weights_16(f.get(), M * E.H, E.t == DType::f16, E.ob.get(), st);
    if (!E.fuse_swiglu) convert_weights_16(f.get(), M * E.I, E.t == DType::f16, E.ab.get(), st);
    if (lm_rows) convert_weights_16(f.get(), lm_rows * E.H, E.t == DType::f16, E.hn.get(), st);
    SHARQ_CUDA_CHECK(cudaStreamSynchronize(st));
  }
  GpuActivations& acts_q = E.acts_q ? *E.acts_q : *E.acts_h;
  void* ws = E.workspace.get();
  const CudaEvent ea, eb;  // (owned: a throwing GEMM or prep does not leak them)
  const cudaEvent_t a = ea.get(), b = eb.get();
  // the GEMV's rows: its norm and SwiGLU inside, as forward() runs them; cublas: cuBLASLt's plain GEMMs
  const auto gemv = [&](const GpuLinear& lin, int64_t m) { return !cublas && lin.gemv(m); };
  const auto gemm = [&](const GpuLinear& lin, const GpuActivations& acts, void* y) {
    if (cublas && lin.gemv(acts.M())) lin.gemm_cublas(acts, y, st);
    else lin.gemm(acts, y, st, ws);
  };
  std::vector<float> ms(static_cast<size_t>(reps) + 1);
  for (int rep = 0; rep <= reps; ++rep) {  // rep 0 warms up
    SHARQ_CUDA_CHECK(cudaEventRecord(a, st));
    for (const Impl::Layer& L : E.layers) {
      // the last layer's o, gate/up and down at the lm_rows rows alone where forward() prunes them
      const int64_t Mo = E.xc.get() && lm_rows < M && &L == &E.layers.back() ? lm_rows : M;
      // the preps as forward() runs them (fused: the residual add + norm and SwiGLU inside them); the
      // GEMMs plain, with 16-bit outputs, as cuBLAS's baseline: an epilogue the engine adds (the FP4
      // reductions' Fp4Epilogue, fp16 / bf16's gemm_accumulate) counts as time outside the linears
      if (E.fuse_norm) L.qkv->prepare_norm(E.x.get(), E.ob.get(), L.attn_norm.get(), eps, M, E.x2.get(), *E.acts_h, st);
      else if (gemv(*L.qkv, M)) L.qkv->prepare_norm(E.x.get(), nullptr, L.attn_norm.get(), eps, M, nullptr, *E.acts_h, st);
      else L.qkv->prepare(E.h.get(), M, *E.acts_h, st);
      gemm(*L.qkv, *E.acts_h, E.qkvb.get());
      if (Mo == 0) continue;
      L.o->prepare(E.att.get(), Mo, acts_q, st);
      gemm(*L.o, acts_q, E.ob.get());
      if (E.fuse_norm) L.gate_up->prepare_norm(E.x.get(), E.ob.get(), L.mlp_norm.get(), eps, Mo, E.x2.get(), *E.acts_h, st);
      else if (gemv(*L.gate_up, Mo)) L.gate_up->prepare_norm(E.x.get(), nullptr, L.mlp_norm.get(), eps, Mo, nullptr, *E.acts_h, st);
      else L.gate_up->prepare(E.h.get(), Mo, *E.acts_h, st);
      gemm(*L.gate_up, *E.acts_h, E.gub.get());
      if (E.fuse_swiglu || gemv(*L.down, Mo)) L.down->prepare_swiglu(E.gub.get(), Mo, *E.acts_i, st);
      else L.down->prepare(E.ab.get(), Mo, *E.acts_i, st);
      gemm(*L.down, *E.acts_i, E.ob.get());
    }
    E.blas->matmul(E.t == DType::f16 ? BlasType::f16_f32out : BlasType::bf16_f32out, E.hn.get(), E.lm_head.get(),
                   E.logits.get(), lm_rows, E.V, E.H, nullptr, nullptr, st);
    SHARQ_CUDA_CHECK(cudaEventRecord(b, st));
    SHARQ_CUDA_CHECK(cudaEventSynchronize(b));
    SHARQ_CUDA_CHECK(cudaEventElapsedTime(&ms[static_cast<size_t>(rep)], a, b));
  }
  std::sort(ms.begin() + 1, ms.end());
  return 1000.0 * ms[1 + static_cast<size_t>(reps) / 2];
}

}  // namespace sharq::cuda
