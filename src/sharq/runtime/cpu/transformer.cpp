#include "sharq/runtime/cpu/transformer.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

#include <fmt/format.h>

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

std::vector<float> copy_tensor(const Checkpoint& ck, const std::string& name, const std::vector<int64_t>& shape) {
  return ck.get(name, shape).data;
}

std::unique_ptr<Linear> make_linear(const Checkpoint& ck, const std::string& name, int64_t N, int64_t K,
                                    const Scheme& scheme, bool bias) {
  const Tensor& w = ck.get(name + ".weight", {N, K});
  const Tensor* b = bias ? &ck.get(name + ".bias", {N}) : nullptr;
  return Linear::create(scheme, w.data.data(), N, K, b ? b->data.data() : nullptr);
}

// RoPE inverse frequencies as HF computes them in FP32 (1 / theta^(2j/d)), then llama3 scaling.
std::vector<float> rope_inv_freq(const ModelConfig& c) {
  const int64_t d = c.head_dim;
  std::vector<float> f(static_cast<size_t>(d / 2));
  for (int64_t j = 0; j < d / 2; ++j)
    f[j] = 1.0f / std::pow(static_cast<float>(c.rope_theta), static_cast<float>(2 * j) / static_cast<float>(d));
  if (c.rope_scaling.type == RopeScaling::Type::llama3) {
    const RopeScaling& s = c.rope_scaling;
    const double old_len = static_cast<double>(s.original_max_position_embeddings);
    const double low_wavelen = old_len / s.low_freq_factor, high_wavelen = old_len / s.high_freq_factor;
    for (auto& v : f) {
      const double wavelen = 2.0 * M_PI / v;
      if (wavelen > low_wavelen) {
        v = static_cast<float>(v / s.factor);
      } else if (wavelen >= high_wavelen) {  // medium band: interpolate
        const double smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        v = static_cast<float>((1.0 - smooth) * v / s.factor + smooth * v);
      }
    }
  }
  return f;
}

// Rotate one head vector in place at position pos.
void apply_rope(float* v, int64_t d, const std::vector<float>& inv_freq, int64_t pos, bool interleaved) {
  for (int64_t j = 0; j < d / 2; ++j) {
    const float ang = static_cast<float>(pos) * inv_freq[j];
    const float c = std::cos(ang), s = std::sin(ang);
    const int64_t a = interleaved ? 2 * j : j, b = interleaved ? 2 * j + 1 : j + d / 2;
    const float x0 = v[a], x1 = v[b];
    v[a] = x0 * c - x1 * s;
    v[b] = x1 * c + x0 * s;
  }
}

struct Mlp {  // gate/up/down of one dense MLP or one expert
  std::unique_ptr<Linear> gate, up, down;
  // y += down(silu(gate(x)) * up(x)) scaled per row by `row_weight` (nullptr: 1)
  void run(const float* x, int64_t M, int64_t H, int64_t I, float* y, const float* row_weight, int64_t layer,
           ProjectionObserver* obs, const char* in_name, const char* down_name) const {
    if (obs) obs->on_input(layer, in_name, x, M, H);
    const Linear::PreparedInput p = gate->prepare_input(x, M);
    std::vector<float> g(static_cast<size_t>(M * I)), u(static_cast<size_t>(M * I));
    gate->forward_prepared(p, g.data());
    up->forward_prepared(p, u.data());
    for (size_t i = 0; i < g.size(); ++i) g[i] = silu(g[i]) * u[i];
    if (obs) obs->on_input(layer, down_name, g.data(), M, I);
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

Transformer::Transformer(const Checkpoint& ck, const Scheme& scheme) : cfg_(ck.config), scheme_(scheme) {
  const ModelConfig& c = cfg_;
  const int64_t H = c.hidden_size, V = c.vocab_size, hd = c.head_dim;
  if (H <= 0 || V <= 0 || hd <= 0 || c.num_heads <= 0 || c.num_kv_heads <= 0 || c.num_layers < 0 ||
      c.num_heads % c.num_kv_heads != 0 || hd % 2 != 0)
    throw CheckpointError(fmt::format("{}: inconsistent model dimensions (hidden {}, heads {}, kv heads {}, head_dim {})",
                                      ck.source, H, c.num_heads, c.num_kv_heads, hd));
  const Scheme fp32{};
  embed_ = copy_tensor(ck, "model.embed_tokens.weight", {V, H});
  final_norm_ = copy_tensor(ck, "model.norm.weight", {H});
  const std::string head = ck.has("lm_head.weight") ? "lm_head" : "model.embed_tokens";
  if (head != "lm_head" && !c.tie_word_embeddings)
    throw CheckpointError(fmt::format("{}: tensor 'lm_head.weight' is missing and tie_word_embeddings is false", ck.source));
  lm_head_ = make_linear(ck, head, V, H, fp32, false);
  inv_freq_ = rope_inv_freq(c);

  const int64_t qd = c.num_heads * hd, kvd = c.num_kv_heads * hd;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    auto L = std::make_unique<Layer>();
    L->attn_norm = copy_tensor(ck, p + "input_layernorm.weight", {H});
    L->mlp_norm = copy_tensor(ck, p + "post_attention_layernorm.weight", {H});
    L->q = make_linear(ck, p + "self_attn.q_proj", qd, H, scheme, c.attention_bias);
    L->k = make_linear(ck, p + "self_attn.k_proj", kvd, H, scheme, c.attention_bias);
    L->v = make_linear(ck, p + "self_attn.v_proj", kvd, H, scheme, c.attention_bias);
    L->o = make_linear(ck, p + "self_attn.o_proj", H, qd, scheme, c.attention_output_bias);
    if (c.qk_norm) {
      L->q_norm = copy_tensor(ck, p + "self_attn.q_norm.weight", {hd});
      L->k_norm = copy_tensor(ck, p + "self_attn.k_norm.weight", {hd});
    }
    if (c.num_experts == 0) {
      const int64_t I = c.intermediate_size;
      L->mlp.gate = make_linear(ck, p + "mlp.gate_proj", I, H, scheme, false);
      L->mlp.up = make_linear(ck, p + "mlp.up_proj", I, H, scheme, false);
      L->mlp.down = make_linear(ck, p + "mlp.down_proj", H, I, scheme, false);
    } else {
      const bool mixtral = c.arch == Arch::mixtral;
      const int64_t I = mixtral ? c.intermediate_size : c.moe_intermediate_size;
      const std::string moe = p + (mixtral ? "block_sparse_moe." : "mlp.");
      L->router = make_linear(ck, moe + "gate", c.num_experts, H, fp32, false);
      for (int64_t e = 0; e < c.num_experts; ++e) {
        const std::string ep = fmt::format("{}experts.{}.", moe, e);
        Mlp m;
        m.gate = make_linear(ck, ep + (mixtral ? "w1" : "gate_proj"), I, H, scheme, false);
        m.up = make_linear(ck, ep + (mixtral ? "w3" : "up_proj"), I, H, scheme, false);
        m.down = make_linear(ck, ep + (mixtral ? "w2" : "down_proj"), H, I, scheme, false);
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
  const ModelConfig& c = cfg_;
  const int64_t H = c.hidden_size, V = c.vocab_size, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const int64_t qd = nh * hd, kvd = nkv * hd, p0 = cache.len;
  if (T <= 0) return;
  if (p0 + T > cache.capacity)
    throw std::invalid_argument(fmt::format("forward: {} tokens at position {} exceed the KV cache ({})", T, p0, cache.capacity));
  std::vector<float> x(static_cast<size_t>(T * H));
  for (int64_t t = 0; t < T; ++t) {
    if (tokens[t] < 0 || tokens[t] >= V)
      throw std::invalid_argument(fmt::format("forward: token id {} outside the vocabulary (size {})", tokens[t], V));
    std::copy_n(embed_.data() + static_cast<int64_t>(tokens[t]) * H, H, x.data() + t * H);
  }
  std::vector<float> h(static_cast<size_t>(T * H)), q(static_cast<size_t>(T * qd)), kx(static_cast<size_t>(T * kvd)),
      vx(static_cast<size_t>(T * kvd)), att(static_cast<size_t>(T * qd)), o(static_cast<size_t>(T * H));
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

  for (int64_t l = 0; l < c.num_layers; ++l) {
    const Layer& L = *layers_[l];
    // ---- attention
    for (int64_t t = 0; t < T; ++t) rmsnorm(x.data() + t * H, L.attn_norm.data(), H, c.rms_norm_eps, h.data() + t * H);
    if (obs) obs->on_input(l, "q_proj", h.data(), T, H);
    const Linear::PreparedInput pin = L.q->prepare_input(h.data(), T);
    L.q->forward_prepared(pin, q.data());
    L.k->forward_prepared(pin, kx.data());
    L.v->forward_prepared(pin, vx.data());
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t hh = 0; hh < nh; ++hh) {
        float* qh = q.data() + t * qd + hh * hd;
        if (c.qk_norm) rmsnorm(qh, L.q_norm.data(), hd, c.rms_norm_eps, qh);
        apply_rope(qh, hd, inv_freq_, p0 + t, c.rope_interleaved);
      }
      for (int64_t hh = 0; hh < nkv; ++hh) {
        float* kh = kx.data() + t * kvd + hh * hd;
        if (c.qk_norm) rmsnorm(kh, L.k_norm.data(), hd, c.rms_norm_eps, kh);
        apply_rope(kh, hd, inv_freq_, p0 + t, c.rope_interleaved);
      }
    }
    std::copy(kx.begin(), kx.end(), cache.k[l].begin() + p0 * kvd);
    std::copy(vx.begin(), vx.end(), cache.v[l].begin() + p0 * kvd);
    const float* Kc = cache.k[l].data();
    const float* Vc = cache.v[l].data();
#pragma omp parallel for collapse(2) schedule(static) if (T * nh * (p0 + T) * hd > (1 << 16))
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t hh = 0; hh < nh; ++hh) {
        // causal, and within the sliding window when the model has one (Mistral: key j is seen
        // from position i while i - j < window)
        const int64_t kvh = hh / (nh / nkv), n_keys = p0 + t + 1;
        const int64_t j0 = c.sliding_window > 0 ? std::max<int64_t>(0, n_keys - c.sliding_window) : 0;
        const float* qh = q.data() + t * qd + hh * hd;
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
        float* out = att.data() + t * qd + hh * hd;
        std::fill(out, out + hd, 0.0f);
        const float inv = static_cast<float>(1.0 / sum);
        for (int64_t j = j0; j < n_keys; ++j) {
          const float w = sc[j] * inv;
          const float* vj = Vc + j * kvd + kvh * hd;
          for (int64_t i = 0; i < hd; ++i) out[i] += w * vj[i];
        }
      }
    }
    if (obs) obs->on_input(l, "o_proj", att.data(), T, qd);
    L.o->forward(att.data(), T, o.data());
    for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];

    // ---- MLP / MoE
    for (int64_t t = 0; t < T; ++t) rmsnorm(x.data() + t * H, L.mlp_norm.data(), H, c.rms_norm_eps, h.data() + t * H);
    if (L.experts.empty()) {
      L.mlp.run(h.data(), T, H, c.intermediate_size, x.data(), nullptr, l, obs, "gate_proj", "down_proj");
    } else {
      const int64_t E = c.num_experts, topk = c.num_experts_per_tok;
      const int64_t I = c.arch == Arch::mixtral ? c.intermediate_size : c.moe_intermediate_size;
      std::vector<float> rl(static_cast<size_t>(T * E));
      L.router->forward(h.data(), T, rl.data());
      // per expert: the tokens routed to it and their weights
      std::vector<std::vector<int64_t>> rows(static_cast<size_t>(E));
      std::vector<std::vector<float>> wts(static_cast<size_t>(E));
      for (int64_t t = 0; t < T; ++t) {
        float* r = rl.data() + t * E;
        const float mx = *std::max_element(r, r + E);
        double sum = 0.0;
        for (int64_t e = 0; e < E; ++e) { r[e] = std::exp(r[e] - mx); sum += r[e]; }
        for (int64_t e = 0; e < E; ++e) r[e] = static_cast<float>(r[e] / sum);
        std::vector<int64_t> idx(static_cast<size_t>(E));
        std::iota(idx.begin(), idx.end(), 0);
        std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return r[a] > r[b]; });
        float tsum = 0.0f;
        for (int64_t k = 0; k < topk; ++k) tsum += r[idx[k]];
        const bool renorm = c.arch == Arch::mixtral || c.norm_topk_prob;
        for (int64_t k = 0; k < topk; ++k) {
          rows[idx[k]].push_back(t);
          wts[idx[k]].push_back(renorm ? r[idx[k]] / tsum : r[idx[k]]);
        }
      }
      std::vector<float> xin, yout;
      for (int64_t e = 0; e < E; ++e) {
        const int64_t Me = static_cast<int64_t>(rows[e].size());
        if (Me == 0) continue;
        xin.resize(static_cast<size_t>(Me * H));
        yout.assign(static_cast<size_t>(Me * H), 0.0f);
        for (int64_t m = 0; m < Me; ++m) std::copy_n(h.data() + rows[e][m] * H, H, xin.data() + m * H);
        L.experts[e].run(xin.data(), Me, H, I, yout.data(), wts[e].data(), l, obs, "experts.gate_up", "experts.down");
        for (int64_t m = 0; m < Me; ++m)
          for (int64_t i = 0; i < H; ++i) x[rows[e][m] * H + i] += yout[m * H + i];
      }
    }
  }
  cache.len = p0 + T;

  // ---- final norm + lm_head (FP32)
  const int64_t first = all_logits ? 0 : T - 1, n_out = T - first;
  std::vector<float> hn(static_cast<size_t>(n_out * H));
  for (int64_t t = 0; t < n_out; ++t) rmsnorm(x.data() + (first + t) * H, final_norm_.data(), H, c.rms_norm_eps, hn.data() + t * H);
  lm_head_->forward(hn.data(), n_out, logits);
  (void)V;
}

}  // namespace sharq
