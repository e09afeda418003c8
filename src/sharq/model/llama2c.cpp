// llama2.c "legacy" (version 0) checkpoints: 7 x int32 header, then fp32 weights in the order
// run.c maps them. Every matrix is stored as nn.Linear keeps it (out x in, row-major), so the HF
// names view the same bytes in place; only the RoPE pairing differs (config.rope_interleaved).
#include <cstdint>
#include <memory>
#include <vector>

#include <fmt/format.h>

#include "sharq/model/weights.h"

namespace sharq {
namespace {

constexpr size_t kHeaderBytes = 7 * 4;
// export.py --version 1/2 files start with this uint32 ("ak42") and carry a different header.
constexpr uint32_t kVersionedExportMagic = 0x616b3432;

uint32_t le32(const uint8_t* p) { return p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<uint32_t>(p[3]) << 24); }

struct Header {
  int64_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
  bool shared_classifier;
};

std::string header_text(const Header& h) {
  return fmt::format("dim={}, hidden_dim={}, n_layers={}, n_heads={}, n_kv_heads={}, vocab_size={}{}, seq_len={}", h.dim, h.hidden_dim,
                     h.n_layers, h.n_heads, h.n_kv_heads, h.shared_classifier ? "" : "-", h.vocab_size, h.seq_len);
}

Header parse_header(const uint8_t* b, size_t n, const std::string& name) {
  if (n < kHeaderBytes) throw CheckpointError(fmt::format("{}: file is {} bytes, too short for the 28-byte llama2.c header", name, n));
  if (le32(b) == kVersionedExportMagic)
    throw CheckpointError(fmt::format("{}: llama2.c export version 1+ (magic 'ak42') is not supported; export with --version 0", name));
  int64_t v[7];
  for (int i = 0; i < 7; ++i) v[i] = static_cast<int32_t>(le32(b + 4 * i));
  Header h{v[0], v[1], v[2], v[3], v[4], v[5] < 0 ? -v[5] : v[5], v[6], v[5] > 0};
  const char* fields[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
  for (int i = 0; i < 7; ++i) {
    if (v[i] <= 0 && !(i == 5 && v[i] < 0))
      throw CheckpointError(fmt::format("{}: header field '{}' is {}, must be positive", name, fields[i], v[i]));
  }
  if (h.dim % h.n_heads != 0)
    throw CheckpointError(fmt::format("{}: header field 'n_heads' ({}) does not divide 'dim' ({})", name, h.n_heads, h.dim));
  if (h.n_kv_heads > h.n_heads || h.n_heads % h.n_kv_heads != 0)
    throw CheckpointError(fmt::format("{}: header field 'n_kv_heads' ({}) does not divide 'n_heads' ({})", name, h.n_kv_heads, h.n_heads));
  if ((h.dim / h.n_heads) % 2 != 0)
    throw CheckpointError(fmt::format("{}: header fields 'dim'/'n_heads' give head size {}; RoPE needs an even one", name, h.dim / h.n_heads));
  return h;
}

// One stored array, in file order.
struct Segment {
  const char* what;
  uint64_t count;  // floats
};

uint64_t product(std::initializer_list<int64_t> factors, const std::string& name, const char* what) {
  uint64_t p = 1;
  for (int64_t f : factors) {
    if (__builtin_mul_overflow(p, static_cast<uint64_t>(f), &p))
      throw CheckpointError(fmt::format("{}: header sizes overflow computing the size of '{}'", name, what));
  }
  return p;
}

}  // namespace

ModelWeights parse_llama2c(const uint8_t* b, size_t n, const std::string& name) {
  const Header h = parse_header(b, n, name);
  const int64_t head_size = h.dim / h.n_heads;
  const int64_t kv_dim = h.n_kv_heads * head_size;
  const int64_t L = h.n_layers;

  std::vector<Segment> segments = {
      {"token_embedding_table", product({h.vocab_size, h.dim}, name, "token_embedding_table")},
      {"rms_att_weight", product({L, h.dim}, name, "rms_att_weight")},
      {"wq", product({L, h.dim, h.dim}, name, "wq")},
      {"wk", product({L, kv_dim, h.dim}, name, "wk")},
      {"wv", product({L, kv_dim, h.dim}, name, "wv")},
      {"wo", product({L, h.dim, h.dim}, name, "wo")},
      {"rms_ffn_weight", product({L, h.dim}, name, "rms_ffn_weight")},
      {"w1", product({L, h.hidden_dim, h.dim}, name, "w1")},
      {"w2", product({L, h.dim, h.hidden_dim}, name, "w2")},
      {"w3", product({L, h.hidden_dim, h.dim}, name, "w3")},
      {"rms_final_weight", static_cast<uint64_t>(h.dim)},
      // RoPE tables of old exports: run.c skips them, and so do we (the transformer recomputes them)
      {"freq_cis_real", product({h.seq_len, head_size / 2}, name, "freq_cis_real")},
      {"freq_cis_imag", product({h.seq_len, head_size / 2}, name, "freq_cis_imag")},
  };
  if (!h.shared_classifier) segments.push_back({"wcls", product({h.vocab_size, h.dim}, name, "wcls")});

  // The whole layout is checked against the file size before any view is made.
  std::vector<uint64_t> offsets;  // byte offset of each segment
  uint64_t end = kHeaderBytes;
  for (const Segment& s : segments) {
    offsets.push_back(end);
    uint64_t bytes;
    if (__builtin_mul_overflow(s.count, uint64_t{4}, &bytes) || __builtin_add_overflow(end, bytes, &end))
      throw CheckpointError(fmt::format("{}: header ({}) describes more than 2^64 bytes", name, header_text(h)));
  }
  if (end > n) {
    size_t cut = 0;
    while (cut + 1 < segments.size() && offsets[cut + 1] <= n) ++cut;
    throw CheckpointError(fmt::format("{}: truncated: the header ({}) needs {} bytes, the file has {} (it ends inside '{}')", name,
                                      header_text(h), end, n, segments[cut].what));
  }
  if (end < n)
    throw CheckpointError(fmt::format("{}: {} bytes follow the weights the header ({}) describes; not a llama2.c version 0 checkpoint", name,
                                      n - end, header_text(h)));

  ModelWeights w;
  w.source = name;
  // The header is 28 bytes, so the floats are 4-aligned whenever the file is (a mapping always
  // is). Bytes handed over at an odd address are copied once, so that an F32 view can always be
  // read in place as floats (f32_in_place).
  if (reinterpret_cast<uintptr_t>(b) % alignof(float) != 0) {
    auto copy = std::make_shared<const std::vector<uint8_t>>(b, b + n);
    b = copy->data();
    w.keep(std::move(copy));
  }
  auto add = [&](const std::string& hf_name, size_t segment, int64_t layer, std::vector<int64_t> shape) {
    TensorView t;
    t.name = hf_name;
    t.dtype = DType::f32;
    t.shape = std::move(shape);
    const uint64_t count = static_cast<uint64_t>(t.numel());
    t.data = b + offsets[segment] + 4 * static_cast<uint64_t>(layer) * count;
    t.bytes = static_cast<size_t>(4 * count);
    w.tensors.emplace(hf_name, std::move(t));
  };
  enum : size_t { kEmbed, kRmsAtt, kWq, kWk, kWv, kWo, kRmsFfn, kW1, kW2, kW3, kRmsFinal, kFreqReal, kFreqImag, kWcls };
  add("model.embed_tokens.weight", kEmbed, 0, {h.vocab_size, h.dim});
  for (int64_t i = 0; i < L; ++i) {
    const std::string p = fmt::format("model.layers.{}.", i);
    add(p + "input_layernorm.weight", kRmsAtt, i, {h.dim});
    add(p + "self_attn.q_proj.weight", kWq, i, {h.dim, h.dim});
    add(p + "self_attn.k_proj.weight", kWk, i, {kv_dim, h.dim});
    add(p + "self_attn.v_proj.weight", kWv, i, {kv_dim, h.dim});
    add(p + "self_attn.o_proj.weight", kWo, i, {h.dim, h.dim});
    add(p + "post_attention_layernorm.weight", kRmsFfn, i, {h.dim});
    add(p + "mlp.gate_proj.weight", kW1, i, {h.hidden_dim, h.dim});
    add(p + "mlp.down_proj.weight", kW2, i, {h.dim, h.hidden_dim});
    add(p + "mlp.up_proj.weight", kW3, i, {h.hidden_dim, h.dim});
  }
  add("model.norm.weight", kRmsFinal, 0, {h.dim});
  if (!h.shared_classifier) add("lm_head.weight", kWcls, 0, {h.vocab_size, h.dim});

  ModelConfig& c = w.config;
  c.arch = Arch::llama;
  c.vocab_size = h.vocab_size;
  c.hidden_size = h.dim;
  c.intermediate_size = h.hidden_dim;
  c.num_layers = L;
  c.num_heads = h.n_heads;
  c.num_kv_heads = h.n_kv_heads;
  c.head_dim = head_size;
  c.max_position_embeddings = h.seq_len;
  c.rms_norm_eps = 1e-5;   // llama2.c's rmsnorm constant
  c.rope_theta = 10000.0;  // and its RoPE base
  c.rope_interleaved = true;
  c.tie_word_embeddings = h.shared_classifier;
  c.bos_token_id = 1;      // the Llama-2 SentencePiece layout every llama2.c tokenizer uses
  c.eos_token_id = 2;
  return w;
}

}  // namespace sharq
