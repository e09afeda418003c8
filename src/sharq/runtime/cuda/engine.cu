#include "sharq/runtime/cuda/engine.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include <fmt/format.h>

#include "sharq/formats/minifloat.h"
#include "sharq/kernels/cuda/cublaslt_gemm.h"
#include "sharq/kernels/cuda/cuda_check.h"
#include "sharq/kernels/cuda/paged_attention.h"
#include "sharq/kernels/cuda/transformer_ops.h"
#include "sharq/model/rope.h"
#include "sharq/runtime/cuda/gpu_linear.h"

namespace sharq::cuda {
namespace {

DeviceBuffer<float> upload_f32(const TensorView& t) {
  const std::vector<float> v = to_f32(t);
  DeviceBuffer<float> d(v.size());
  d.upload(v.data());
  return d;
}

// A 16-bit copy (BF16, or FP16 when `fp16`) of a view, converted through FP32 one tensor at a time.
DeviceBuffer<uint16_t> upload_16(const TensorView& t, bool fp16) {
  const std::vector<float> v = to_f32(t);
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = fp16 ? fp16_encode(v[i]) : bf16_encode(v[i]);
  DeviceBuffer<uint16_t> d(h.size());
  d.upload(h.data());
  return d;
}

std::unique_ptr<GpuLinear> make_linear(const TensorView& w, const TensorView* b, const Scheme& s,
                                       const GpuLinearOptions& opt, CublasLtGemm* blas) {
  const std::vector<float> bias = b ? to_f32(*b) : std::vector<float>{};
  const float* wp = f32_in_place(w);
  std::vector<float> tmp;
  if (!wp) {
    tmp = to_f32(w);
    wp = tmp.data();
  }
  return std::make_unique<GpuLinear>(s, wp, w.shape[0], w.shape[1], opt, blas, b ? bias.data() : nullptr);
}

struct PinnedInts {  // page-locked host staging of the step metadata (one async copy per step)
  int32_t* p = nullptr;
  size_t n = 0;
  explicit PinnedInts(size_t count) : n(count) { SHARQ_CUDA_CHECK(cudaMallocHost(&p, count * sizeof(int32_t))); }
  ~PinnedInts() { if (p) cudaFreeHost(p); }
  PinnedInts(const PinnedInts&) = delete;
  PinnedInts& operator=(const PinnedInts&) = delete;
};

}  // namespace

struct GpuExecutor::Impl {
  struct Layer {
    std::unique_ptr<GpuLinear> q, k, v, o, gate, up, down;
    DeviceBuffer<float> attn_norm, mlp_norm, q_norm, k_norm;
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
  int64_t H = 0, qd = 0, kvd = 0, I = 0, V = 0, maxM = 0;
  cudaStream_t stream = nullptr;
  std::unique_ptr<CublasLtGemm> blas;
  DeviceBuffer<uint16_t> embed, lm_head;
  DeviceBuffer<float> final_norm, inv_freq;
  std::vector<Layer> layers;
  std::unique_ptr<GpuActivations> acts_h, acts_q, acts_i;
  DeviceBuffer<uint8_t> workspace;
  // activations (max_batch_tokens rows)
  DeviceBuffer<float> x, q32, logits;
  DeviceBuffer<uint16_t> h, qb, kb, vb, att, ob, gb, ub, ab, hn;
  // KV cache
  DeviceBuffer<uint16_t> kv_pool;
  int64_t n_blocks = 0;
  std::vector<int32_t> refcount, free_list;
  std::map<SeqId, Sequence> seqs;
  SeqId next_id = 0;
  // step metadata: tok[maxM] pos[maxM] table_off[maxM] out_rows[maxM] table[n_blocks]
  DeviceBuffer<int32_t> meta;
  std::unique_ptr<PinnedInts> meta_host;

  ~Impl() {
    if (stream) {
      cudaStreamSynchronize(stream);
      cudaStreamDestroy(stream);
    }
  }

  PagedKv layer_kv(int64_t l) const {
    PagedKv kv;
    const int64_t per = n_blocks * opt.block_size * kvd;  // elements of one pool
    kv.k = kv_pool.get() + (2 * l) * per;
    kv.v = kv_pool.get() + (2 * l + 1) * per;
    kv.blocks = n_blocks;
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
};

GpuExecutor::GpuExecutor(const ModelWeights& w, const Scheme& scheme, const EngineOptions& opt)
    : impl_(std::make_unique<Impl>()) {
  Impl& E = *impl_;
  if (device_count() == 0)
    throw std::runtime_error("GpuExecutor: no CUDA device found (no NVIDIA driver or GPU visible); use --device cpu");
  const std::string why = scheme_unsupported_reason(scheme, Device::cuda);
  if (!why.empty()) throw std::invalid_argument("GpuExecutor: " + why);
  w.check_dimensions();
  const ModelConfig& c = w.config;
  if (c.num_experts > 0)
    throw std::invalid_argument(fmt::format("GpuExecutor: {} is a mixture-of-experts model; MoE runs on the CPU only for now "
                                            "(use --device cpu)", to_string(c.arch)));
  if (opt.max_batch_tokens < 1 || opt.max_batch_tokens > (int64_t{1} << 20))
    throw std::invalid_argument(fmt::format("GpuExecutor: max_batch_tokens = {} (1 .. 2^20)", opt.max_batch_tokens));
  if (opt.block_size < 1 || opt.block_size > 1024)
    throw std::invalid_argument(fmt::format("GpuExecutor: block_size = {} (1 .. 1024)", opt.block_size));
  if (opt.kv_blocks < 0 || !(opt.gpu_memory > 0.0 && opt.gpu_memory <= 1.0))
    throw std::invalid_argument(fmt::format("GpuExecutor: kv_blocks = {}, gpu_memory = {} (> 0 and <= 1)", opt.kv_blocks,
                                            opt.gpu_memory));
  E.cfg = c;
  E.scheme = scheme;
  E.opt = opt;
  E.t = act_dtype(scheme);
  E.H = c.hidden_size;
  E.qd = c.num_heads * c.head_dim;
  E.kvd = c.num_kv_heads * c.head_dim;
  E.I = c.intermediate_size;
  E.V = c.vocab_size;
  E.maxM = opt.max_batch_tokens;
  SHARQ_CUDA_CHECK(cudaStreamCreateWithFlags(&E.stream, cudaStreamNonBlocking));
  E.blas = std::make_unique<CublasLtGemm>();

  const bool fp16 = E.t == DType::f16;
  E.embed = upload_16(w.embed_tokens(), false);  // BF16 rows, widened into the FP32 residual stream
  E.lm_head = upload_16(w.lm_head(), fp16);
  E.final_norm = upload_f32(w.final_norm());
  {
    const std::vector<float> f = rope_inv_freq(c);
    E.inv_freq = DeviceBuffer<float>(f.size());
    E.inv_freq.upload(f.data());
  }
  GpuLinearOptions lo;
  lo.max_m = E.maxM;
  lo.own_scratch = false;
  size_t ws = 0;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights lw = w.layer(l);
    Impl::Layer L;
    L.attn_norm = upload_f32(*lw.attn_norm);
    L.mlp_norm = upload_f32(*lw.mlp_norm);
    if (lw.q_norm) L.q_norm = upload_f32(*lw.q_norm);
    if (lw.k_norm) L.k_norm = upload_f32(*lw.k_norm);
    L.q = make_linear(*lw.q, lw.q_bias, scheme, lo, E.blas.get());
    L.k = make_linear(*lw.k, lw.k_bias, scheme, lo, E.blas.get());
    L.v = make_linear(*lw.v, lw.v_bias, scheme, lo, E.blas.get());
    L.o = make_linear(*lw.o, lw.o_bias, scheme, lo, E.blas.get());
    L.gate = make_linear(*lw.gate, nullptr, scheme, lo, E.blas.get());
    L.up = make_linear(*lw.up, nullptr, scheme, lo, E.blas.get());
    L.down = make_linear(*lw.down, nullptr, scheme, lo, E.blas.get());
    for (const GpuLinear* g : {L.q.get(), L.k.get(), L.v.get(), L.o.get(), L.gate.get(), L.up.get(), L.down.get()})
      ws = std::max(ws, g->workspace_bytes());
    E.layers.push_back(std::move(L));
  }
  E.workspace = DeviceBuffer<uint8_t>(ws);
  E.acts_h = std::make_unique<GpuActivations>(scheme, E.H, E.maxM);
  if (E.qd != E.H) E.acts_q = std::make_unique<GpuActivations>(scheme, E.qd, E.maxM);
  E.acts_i = std::make_unique<GpuActivations>(scheme, E.I, E.maxM);

  const size_t M = static_cast<size_t>(E.maxM);
  E.x = DeviceBuffer<float>(M * E.H);
  E.q32 = DeviceBuffer<float>(M * E.qd);
  E.logits = DeviceBuffer<float>(M * E.V);
  E.h = DeviceBuffer<uint16_t>(M * E.H);
  E.qb = DeviceBuffer<uint16_t>(M * E.qd);
  E.kb = DeviceBuffer<uint16_t>(M * E.kvd);
  E.vb = DeviceBuffer<uint16_t>(M * E.kvd);
  E.att = DeviceBuffer<uint16_t>(M * E.qd);
  E.ob = DeviceBuffer<uint16_t>(M * E.H);
  E.gb = DeviceBuffer<uint16_t>(M * E.I);
  E.ub = DeviceBuffer<uint16_t>(M * E.I);
  E.ab = DeviceBuffer<uint16_t>(M * E.I);
  E.hn = DeviceBuffer<uint16_t>(M * E.H);

  // the KV cache: what is asked, or a fraction of what is free now
  const size_t block_bytes = static_cast<size_t>(2 * c.num_layers * opt.block_size * E.kvd) * sizeof(uint16_t);
  int64_t blocks = opt.kv_blocks;
  if (blocks == 0) {
    size_t free_b = 0, total_b = 0;
    SHARQ_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    blocks = static_cast<int64_t>(static_cast<double>(free_b) * opt.gpu_memory / static_cast<double>(block_bytes));
    blocks = std::min<int64_t>(blocks, 0x7FFFFFFF);
    if (blocks < 1)
      throw std::runtime_error(fmt::format("GpuExecutor: no device memory left for the KV cache ({} bytes free, one block "
                                           "needs {})", free_b, block_bytes));
  }
  E.n_blocks = blocks;
  try {
    E.kv_pool = DeviceBuffer<uint16_t>(static_cast<size_t>(blocks) * block_bytes / sizeof(uint16_t));
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("GpuExecutor: the KV cache of {} blocks ({:.1f} MiB) does not fit: {}", blocks,
                                         static_cast<double>(blocks) * block_bytes / 1048576.0, e.what()));
  }
  E.refcount.assign(static_cast<size_t>(blocks), 0);
  E.free_list.reserve(static_cast<size_t>(blocks));
  for (int64_t b = blocks - 1; b >= 0; --b) E.free_list.push_back(static_cast<int32_t>(b));
  E.meta = DeviceBuffer<int32_t>(4 * M + static_cast<size_t>(blocks));
  E.meta_host = std::make_unique<PinnedInts>(E.meta.size());
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
int64_t GpuExecutor::free_kv_blocks() const { return static_cast<int64_t>(impl_->free_list.size()); }

size_t GpuExecutor::weight_bytes() const {
  const Impl& E = *impl_;
  size_t b = E.embed.bytes() + E.lm_head.bytes() + E.final_norm.bytes();
  for (const auto& L : E.layers) {
    for (const GpuLinear* g : {L.q.get(), L.k.get(), L.v.get(), L.o.get(), L.gate.get(), L.up.get(), L.down.get()})
      b += g->weight_bytes();
    b += L.attn_norm.bytes() + L.mlp_norm.bytes() + L.q_norm.bytes() + L.k_norm.bytes();
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

StepOutput GpuExecutor::step(const std::vector<StepEntry>& batch) {
  Impl& E = *impl_;
  const ModelConfig& c = E.cfg;
  check_step_batch(batch, E.V, [&](SeqId id) {
    const Impl::Sequence& s = E.find(id, "step");
    return SequenceExtent{s.len, s.cap};
  });
  int64_t M = 0, need = 0;
  const int64_t bs = E.opt.block_size;
  for (const StepEntry& e : batch) {
    const Impl::Sequence& s = E.find(e.seq, "step");
    const int64_t n = static_cast<int64_t>(e.tokens.size());
    M += n;
    need += (s.len + n + bs - 1) / bs - static_cast<int64_t>(s.blocks.size());
  }
  if (M > E.maxM)
    throw std::invalid_argument(fmt::format("step: {} new tokens in one step exceed the engine's max_batch_tokens {}", M, E.maxM));
  if (need > static_cast<int64_t>(E.free_list.size()))
    throw std::invalid_argument(fmt::format("step: the KV cache is exhausted: the step needs {} more blocks of {} positions, "
                                            "{} of {} are free", need, bs, E.free_list.size(), E.n_blocks));
  StepOutput out = shape_step_output(batch, E.V);
  if (M == 0) return out;

  // blocks for the new positions, then the step's metadata
  int32_t* tok = E.meta_host->p;
  int32_t* pos = tok + E.maxM;
  int32_t* toff = pos + E.maxM;
  int32_t* orow = toff + E.maxM;
  int32_t* table = orow + E.maxM;
  int64_t r = 0, R = 0, tsize = 0;
  for (const StepEntry& e : batch) {
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
    for (int64_t i = 0; i < n; ++i, ++r) {
      tok[r] = e.tokens[static_cast<size_t>(i)];
      pos[r] = static_cast<int32_t>(s.len + i);
      toff[r] = static_cast<int32_t>(off);
      if (e.all_logits || i == n - 1) orow[R++] = static_cast<int32_t>(r);
    }
  }
  cudaStream_t st = E.stream;
  SHARQ_CUDA_CHECK(cudaMemcpyAsync(E.meta.get(), E.meta_host->p, static_cast<size_t>(4 * E.maxM + tsize) * sizeof(int32_t),
                                   cudaMemcpyHostToDevice, st));
  const int32_t* d_tok = E.meta.get();
  RowMap rows;
  rows.pos = d_tok + E.maxM;
  rows.table_off = d_tok + 2 * E.maxM;
  const int32_t* d_orow = d_tok + 3 * E.maxM;
  rows.table = d_tok + 4 * E.maxM;

  const float eps = static_cast<float>(c.rms_norm_eps);
  const int nh = static_cast<int>(c.num_heads);
  GpuActivations& acts_q = E.acts_q ? *E.acts_q : *E.acts_h;
  void* ws = E.workspace.get();
  embed_rows(E.embed.get(), d_tok, M, E.H, E.x.get(), st);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const Impl::Layer& L = E.layers[static_cast<size_t>(l)];
    const PagedKv kv = E.layer_kv(l);
    rmsnorm_rows(E.x.get(), nullptr, M, E.H, L.attn_norm.get(), eps, E.t, E.h.get(), st);
    L.q->prepare(E.h.get(), M, *E.acts_h, st);
    L.q->gemm(*E.acts_h, E.qb.get(), st, ws);
    L.k->gemm(*E.acts_h, E.kb.get(), st, ws);
    L.v->gemm(*E.acts_h, E.vb.get(), st, ws);
    qk_rope_kv_write(E.qb.get(), E.kb.get(), E.vb.get(), M, nh, L.q_norm.get(), L.k_norm.get(), eps, E.inv_freq.get(),
                     c.rope_interleaved, rows, kv, E.t, E.q32.get(), st);
    paged_attention(E.q32.get(), M, nh, rows, kv, c.sliding_window, E.t, E.att.get(), st);
    L.o->prepare(E.att.get(), M, acts_q, st);
    L.o->gemm(acts_q, E.ob.get(), st, ws);
    residual_add(E.x.get(), E.ob.get(), M * E.H, E.t, st);
    rmsnorm_rows(E.x.get(), nullptr, M, E.H, L.mlp_norm.get(), eps, E.t, E.h.get(), st);
    L.gate->prepare(E.h.get(), M, *E.acts_h, st);
    L.gate->gemm(*E.acts_h, E.gb.get(), st, ws);
    L.up->gemm(*E.acts_h, E.ub.get(), st, ws);
    swiglu(E.gb.get(), E.ub.get(), M * E.I, E.t, E.ab.get(), st);
    L.down->prepare(E.ab.get(), M, *E.acts_i, st);
    L.down->gemm(*E.acts_i, E.ob.get(), st, ws);
    residual_add(E.x.get(), E.ob.get(), M * E.H, E.t, st);
  }
  rmsnorm_rows(E.x.get(), d_orow, R, E.H, E.final_norm.get(), eps, E.t, E.hn.get(), st);
  E.blas->matmul(E.t == DType::f16 ? BlasType::f16_f32out : BlasType::bf16_f32out, E.hn.get(), E.lm_head.get(),
                 E.logits.get(), R, E.V, E.H, nullptr, nullptr, st);
  SHARQ_CUDA_CHECK(cudaMemcpyAsync(out.logits.data(), E.logits.get(), static_cast<size_t>(R * E.V) * sizeof(float),
                                   cudaMemcpyDeviceToHost, st));
  SHARQ_CUDA_CHECK(cudaStreamSynchronize(st));

  for (const StepEntry& e : batch) E.find(e.seq, "step").len += static_cast<int64_t>(e.tokens.size());
  sample_step(batch, out, [&](size_t i) -> SamplerStream& { return E.find(batch[i].seq, "step").sampler; });
  return out;
}

}  // namespace sharq::cuda
