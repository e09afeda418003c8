#include "sharq/runtime/cpu/transformer.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <stdexcept>

#include <fmt/format.h>

#include "sharq/model/quantized_checkpoint.h"
#include "sharq/model/rope.h"

namespace sharq {
namespace {

// HF LlamaRMSNorm in FP32: x * rsqrt(mean(x^2) + eps) * w (the mean accumulated in double).
void rmsnorm(const float* x, const float* w, int64_t n, double eps, float* out) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float r = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
  for (int64_t i = 0; i < n; ++i) out[i] = w[i] * (x[i] * r);
}

float silu(float g) { return g / (1.0f + std::exp(-g)); }

// One weight quantized into its Linear. The FP32 values it is built from are the view itself
// (an aligned F32 tensor) or a temporary conversion of this one tensor, dropped on return. Stored
// NVFP4 weights, and 16-bit weights under the fp32 scheme (lm_head), are read in place when `src`
// keeps their memory alive (src.holds): the same values, no copy.
std::unique_ptr<Linear> make_linear(const ModelWeights& src, const std::shared_ptr<const void>& storage, const TensorView& w,
                                    const TensorView* b, const Scheme& scheme) {
  const int64_t N = w.shape[0], K = w.shape[1];
  const std::vector<float> bias = b ? to_f32(*b) : std::vector<float>{};
  const float* bp = b ? bias.data() : nullptr;
  if (w.quantized) {  // a quantized checkpoint: its stored blocks as they are (the scheme was checked to match)
    const QuantizedWeight& q = *w.quantized;
    if (q.weights == StoredWeights::fp8) {
      std::vector<uint8_t> codes(q.codes.data, q.codes.data + q.codes.bytes);
      return Linear::create_fp8(scheme, N, K, std::move(codes), q.channel_scales, bp);
    }
    if (src.holds(q.codes.data, q.codes.bytes) && src.holds(q.scales.data, q.scales.bytes))
      return Linear::create_stored_nvfp4(scheme, N, K, q.codes.data, q.scales.data, q.global, storage, bp);
    if (scheme.fp4_weight_block() == 32) return Linear::create(scheme, nvfp4_32_matrix(q), bp);
    return Linear::create(scheme, nvfp4_16_matrix(q), bp);
  }
  if (scheme.kind == SchemeKind::fp32 && (w.dtype == DType::bf16 || w.dtype == DType::f16) && src.holds(w.data, w.bytes))
    return Linear::create_fp32_on_16bit(N, K, w.data, w.dtype == DType::bf16, storage, bp);
  if (const float* in_place = f32_in_place(w)) return Linear::create(scheme, in_place, N, K, bp);
  const std::vector<float> tmp = to_f32(w);
  return Linear::create(scheme, tmp.data(), N, K, bp);
}

struct Mlp {  // gate/up/down of one dense MLP or one expert
  std::unique_ptr<Linear> gate, up, down;
  // y += down(silu(gate(x)) * up(x)) scaled per row by `row_weight` (nullptr: 1)
  // expert: the MoE expert's index (observed through on_expert_input), or -1 for a dense MLP
  void run(const float* x, int64_t M, int64_t H, int64_t I, float* y, const float* row_weight, int64_t layer,
           ProjectionObserver* obs, const char* in_name, const char* down_name, int64_t expert = -1) const {
    auto observe = [&](const char* name, const float* in, int64_t K) {
      if (expert < 0) obs->on_input(layer, name, in, M, K);
      else obs->on_expert_input(layer, expert, name, in, M, K);
    };
    if (obs) observe(in_name, x, H);
    const Linear::PreparedInput p = gate->prepare_input(x, M);
    std::vector<float> g(static_cast<size_t>(M * I)), u(static_cast<size_t>(M * I));
    gate->forward_prepared(p, g.data());
    up->forward_prepared(p, u.data());
    for (size_t i = 0; i < g.size(); ++i) g[i] = silu(g[i]) * u[i];
    if (obs) observe(down_name, g.data(), I);
    std::vector<float> o(static_cast<size_t>(M * H));
    down->forward(g.data(), M, o.data());
    for (int64_t m = 0; m < M; ++m) {
      const float w = row_weight ? row_weight[m] : 1.0f;
      for (int64_t h = 0; h < H; ++h) y[m * H + h] += w * o[m * H + h];
    }
  }
};

}  // namespace

struct Transformer::Layer {
  std::vector<float> attn_norm, mlp_norm, q_norm, k_norm;
  std::unique_ptr<Linear> q, k, v, o;
  Mlp mlp;                        // dense
  std::unique_ptr<Linear> router; // MoE: FP32
  std::vector<Mlp> experts;
};

Transformer::~Transformer() = default;

Transformer::Transformer(const ModelWeights& w, const Scheme& scheme) : cfg_(w.config), scheme_(scheme) {
  w.check_dimensions();
  if (const std::string why = quantized_scheme_mismatch(w.quantization, scheme, w.source); !why.empty()) throw std::invalid_argument(why);
  const Scheme fp32{};
  storage_ = w.storage();
  const TensorView& embed = w.embed_tokens();
  if ((embed.dtype == DType::bf16 || embed.dtype == DType::f16) && w.holds(embed.data, embed.bytes)) embed_view_ = embed;  // rows widened on lookup
  else embed_ = to_f32(embed);
  final_norm_ = to_f32(w.final_norm());
  auto make_linear = [&](const TensorView& t, const TensorView* b, const Scheme& s) { return sharq::make_linear(w, storage_, t, b, s); };
  lm_head_ = make_linear(w.lm_head(), nullptr, fp32);
  inv_freq_ = rope_inv_freq(cfg_);
  routing_ = moe_routing(cfg_);

  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    const LayerWeights lw = w.layer(l);
    auto L = std::make_unique<Layer>();
    L->attn_norm = to_f32(*lw.attn_norm);
    L->mlp_norm = to_f32(*lw.mlp_norm);
    L->q = make_linear(*lw.q, lw.q_bias, scheme);
    L->k = make_linear(*lw.k, lw.k_bias, scheme);
    L->v = make_linear(*lw.v, lw.v_bias, scheme);
    L->o = make_linear(*lw.o, lw.o_bias, scheme);
    if (lw.q_norm) L->q_norm = to_f32(*lw.q_norm);
    if (lw.k_norm) L->k_norm = to_f32(*lw.k_norm);
    if (lw.experts.empty()) {
      L->mlp.gate = make_linear(*lw.gate, nullptr, scheme);
      L->mlp.up = make_linear(*lw.up, nullptr, scheme);
      L->mlp.down = make_linear(*lw.down, nullptr, scheme);
    } else {
      L->router = make_linear(*lw.router, nullptr, fp32);
      for (const ExpertWeights& e : lw.experts) {
        Mlp m;
        m.gate = make_linear(*e.gate, nullptr, scheme);
        m.up = make_linear(*e.up, nullptr, scheme);
        m.down = make_linear(*e.down, nullptr, scheme);
        L->experts.push_back(std::move(m));
      }
    }
    layers_.push_back(std::move(L));
  }
}

KVCache Transformer::new_cache(int64_t capacity) const {
  KVCache kv;
  kv.capacity = capacity;
  kv.kv_dim = cfg_.num_kv_heads * cfg_.head_dim;
  kv.k.assign(static_cast<size_t>(cfg_.num_layers), std::vector<float>(static_cast<size_t>(capacity * kv.kv_dim)));
  kv.v = kv.k;
  return kv;
}

void Transformer::forward(const int32_t* tokens, int64_t T, KVCache& cache, float* logits, bool all_logits,
                          ProjectionObserver* obs) const {
  if (T <= 0) return;
  forward_batch({ForwardSegment{tokens, T, &cache, all_logits}}, logits, obs);
}

void Transformer::forward_batch(const std::vector<ForwardSegment>& segs, float* logits, ProjectionObserver* obs) const {
  const ModelConfig& c = cfg_;
  const int64_t H = c.hidden_size, V = c.vocab_size, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const int64_t qd = nh * hd, kvd = nkv * hd;
  const int64_t S = static_cast<int64_t>(segs.size());
  if (S == 0) return;

  // ---- checks first: a rejected batch leaves every cache as it was
  std::vector<int64_t> row0(static_cast<size_t>(S + 1), 0);  // first row of each segment in the batch
  std::set<const KVCache*> seen;
  for (int64_t s = 0; s < S; ++s) {
    const ForwardSegment& g = segs[s];
    if (g.n <= 0 || g.cache == nullptr)
      throw std::invalid_argument(fmt::format("forward: batch segment {} has no tokens or no cache", s));
    if (!seen.insert(g.cache).second)
      throw std::invalid_argument(fmt::format("forward: batch segment {} uses the same KV cache as an earlier one", s));
    if (g.cache->len + g.n > g.cache->capacity)
      throw std::invalid_argument(fmt::format("forward: {} tokens at position {} exceed the KV cache ({})", g.n, g.cache->len,
                                              g.cache->capacity));
    for (int64_t t = 0; t < g.n; ++t)
      if (g.tokens[t] < 0 || g.tokens[t] >= V)
        throw std::invalid_argument(fmt::format("forward: token id {} outside the vocabulary (size {})", g.tokens[t], V));
    row0[s + 1] = row0[s] + g.n;
  }
  const int64_t M = row0[S];

  std::vector<float> x(static_cast<size_t>(M * H));
  for (int64_t s = 0; s < S; ++s)
    for (int64_t t = 0; t < segs[s].n; ++t)
      if (embed_.empty()) {  // one row of the 16-bit embeddings, widened exactly
        TensorView row = embed_view_;
        row.shape = {H};
        row.bytes = static_cast<size_t>(H) * 2;
        row.data = embed_view_.data + static_cast<size_t>(segs[s].tokens[t]) * row.bytes;
        to_f32(row, x.data() + (row0[s] + t) * H);
      } else {
        std::copy_n(embed_.data() + static_cast<int64_t>(segs[s].tokens[t]) * H, H, x.data() + (row0[s] + t) * H);
      }
  std::vector<float> h(static_cast<size_t>(M * H)), q(static_cast<size_t>(M * qd)), kx(static_cast<size_t>(M * kvd)),
      vx(static_cast<size_t>(M * kvd)), att(static_cast<size_t>(M * qd)), o(static_cast<size_t>(M * H));
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

  for (int64_t l = 0; l < c.num_layers; ++l) {
    const Layer& L = *layers_[l];
    // ---- attention: projections over the whole batch
    for (int64_t m = 0; m < M; ++m) rmsnorm(x.data() + m * H, L.attn_norm.data(), H, c.rms_norm_eps, h.data() + m * H);
    if (obs) obs->on_input(l, "q_proj", h.data(), M, H);
    const Linear::PreparedInput pin = L.q->prepare_input(h.data(), M);
    L.q->forward_prepared(pin, q.data());
    L.k->forward_prepared(pin, kx.data());
    L.v->forward_prepared(pin, vx.data());
    // ... then each segment against its own cache, at its own positions
    for (int64_t s = 0; s < S; ++s) {
      const int64_t T = segs[s].n, r0 = row0[s];
      KVCache& cache = *segs[s].cache;
      const int64_t p0 = cache.len;
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t hh = 0; hh < nh; ++hh) {
          float* qh = q.data() + (r0 + t) * qd + hh * hd;
          if (c.qk_norm) rmsnorm(qh, L.q_norm.data(), hd, c.rms_norm_eps, qh);
          apply_rope(qh, hd, inv_freq_.data(), p0 + t, c.rope_interleaved);
        }
        for (int64_t hh = 0; hh < nkv; ++hh) {
          float* kh = kx.data() + (r0 + t) * kvd + hh * hd;
          if (c.qk_norm) rmsnorm(kh, L.k_norm.data(), hd, c.rms_norm_eps, kh);
          apply_rope(kh, hd, inv_freq_.data(), p0 + t, c.rope_interleaved);
        }
      }
      std::copy(kx.begin() + r0 * kvd, kx.begin() + (r0 + T) * kvd, cache.k[l].begin() + p0 * kvd);
      std::copy(vx.begin() + r0 * kvd, vx.begin() + (r0 + T) * kvd, cache.v[l].begin() + p0 * kvd);
      const float* Kc = cache.k[l].data();
      const float* Vc = cache.v[l].data();
#pragma omp parallel for collapse(2) schedule(static) if (T * nh * (p0 + T) * hd > (1 << 16))
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t hh = 0; hh < nh; ++hh) {
          // causal, and within the sliding window when the model has one (Mistral: key j is seen
          // from position i while i - j < window)
          const int64_t kvh = hh / (nh / nkv), n_keys = p0 + t + 1;
          const int64_t j0 = c.sliding_window > 0 ? std::max<int64_t>(0, n_keys - c.sliding_window) : 0;
          const float* qh = q.data() + (r0 + t) * qd + hh * hd;
          std::vector<float> sc(static_cast<size_t>(n_keys), 0.0f);
          float mx = -INFINITY;
          for (int64_t j = j0; j < n_keys; ++j) {
            const float* kj = Kc + j * kvd + kvh * hd;
            float dot = 0.0f;
            for (int64_t i = 0; i < hd; ++i) dot += qh[i] * kj[i];
            sc[j] = dot * scale;
            mx = std::max(mx, sc[j]);
          }
          double sum = 0.0;
          for (int64_t j = j0; j < n_keys; ++j) { sc[j] = std::exp(sc[j] - mx); sum += sc[j]; }
          float* out = att.data() + (r0 + t) * qd + hh * hd;
          std::fill(out, out + hd, 0.0f);
          const float inv = static_cast<float>(1.0 / sum);
          for (int64_t j = j0; j < n_keys; ++j) {
            const float w = sc[j] * inv;
            const float* vj = Vc + j * kvd + kvh * hd;
            for (int64_t i = 0; i < hd; ++i) out[i] += w * vj[i];
          }
        }
      }
    }
    if (obs) obs->on_input(l, "o_proj", att.data(), M, qd);
    L.o->forward(att.data(), M, o.data());
    for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];

    // ---- MLP / MoE, over the whole batch
    for (int64_t m = 0; m < M; ++m) rmsnorm(x.data() + m * H, L.mlp_norm.data(), H, c.rms_norm_eps, h.data() + m * H);
    if (L.experts.empty()) {
      L.mlp.run(h.data(), M, H, c.intermediate_size, x.data(), nullptr, l, obs, "gate_proj", "down_proj");
    } else {
      const int64_t E = routing_.num_experts, I = routing_.expert_intermediate;
      std::vector<float> rl(static_cast<size_t>(M * E));
      L.router->forward(h.data(), M, rl.data());
      // per expert: the batch rows routed to it and their weights
      std::vector<std::vector<int64_t>> rows(static_cast<size_t>(E));
      std::vector<std::vector<float>> wts(static_cast<size_t>(E));
      std::vector<ExpertChoice> chosen;
      for (int64_t m = 0; m < M; ++m) {
        route_token(routing_, rl.data() + m * E, chosen);
        for (const ExpertChoice& ch : chosen) {
          rows[ch.expert].push_back(m);
          wts[ch.expert].push_back(ch.weight);
        }
      }
      std::vector<float> xin, yout;
      for (int64_t e = 0; e < E; ++e) {
        const int64_t Me = static_cast<int64_t>(rows[e].size());
        if (Me == 0) continue;
        xin.resize(static_cast<size_t>(Me * H));
        yout.assign(static_cast<size_t>(Me * H), 0.0f);
        for (int64_t m = 0; m < Me; ++m) std::copy_n(h.data() + rows[e][m] * H, H, xin.data() + m * H);
        L.experts[e].run(xin.data(), Me, H, I, yout.data(), wts[e].data(), l, obs, "experts.gate_up", "experts.down", e);
        for (int64_t m = 0; m < Me; ++m)
          for (int64_t i = 0; i < H; ++i) x[rows[e][m] * H + i] += yout[m * H + i];
      }
    }
  }
  for (int64_t s = 0; s < S; ++s) segs[s].cache->len += segs[s].n;

  // ---- final norm + lm_head (FP32), on the rows asked for
  std::vector<int64_t> out_rows;
  for (int64_t s = 0; s < S; ++s)
    for (int64_t t = segs[s].all_logits ? 0 : segs[s].n - 1; t < segs[s].n; ++t) out_rows.push_back(row0[s] + t);
  const int64_t n_out = static_cast<int64_t>(out_rows.size());
  std::vector<float> hn(static_cast<size_t>(n_out * H));
  for (int64_t r = 0; r < n_out; ++r) rmsnorm(x.data() + out_rows[r] * H, final_norm_.data(), H, c.rms_norm_eps, hn.data() + r * H);
  lm_head_->forward(hn.data(), n_out, logits);
}

}  // namespace sharq
