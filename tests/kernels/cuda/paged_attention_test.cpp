// The attention kernels (kernels/cuda/paged_attention.h) against a double-precision host reference
// computed from the same 16-bit cache contents: split-KV decode and the warp-specialized prefill over a
// paged cache with shuffled block tables, block sizes 16 and 5, GQA ratios 1 / 4 / 8, head dims 64
// and 128 (both kernels) and 8 / 36 / 256 (decode only; 36 takes the element-copy path), FP16 and
// BF16, windows (0, one smaller than the context with positions past it, one of 7 keys), batches
// mixing decode rows and prefill tiles of different sequences, prefill chunks after cached
// positions; batch invariance (bit-identical rows alone / in a batch / in batch-invariant mode),
// the host plan, argument errors, CUDA graph capture, and a timing print. Label `gpu`; the GPU tests
// skip cleanly where there is no GPU, the plan and argument checks run everywhere (no CUDA call).
//
// Every cache slot a kernel must not read (positions past a sequence's length, unused blocks) holds
// NaN (0xFFFF), and the output is poisoned with NaN before each call: an out-of-range read or a
// missing write fails the test.
//
// Tolerance: a per-element bound derived from the arithmetic, not a fitted constant. With r the
// exact (double) result, S_d = max_j |v_jd - r_d| over the attended keys, n their count, u the unit
// roundoff of T (BF16 2^-8, FP16 2^-11). q is T (qk_rope_kv_write's output), so the problems draw q
// as T values and the reference takes them exactly:
//   |out_d - r_d| <= u |r_d|  +  (1 + u) c S_d  +  n 2^-23 |r_d|  +  1e-6
// * u |r_d|: the one rounding of the output to T;
// * c S_d: error of the softmax weights w_j (sum 1): o - r = sum_j (w~_j - w_j)(v_j - r), so weights
//   off by a relative e cost at most e S_d;
//     the decode kernel's FP32 form (scores, exp2, accumulation in FP32; head dims without tensor
//     cores): c = 1e-4 (FP32 errors are ~1e-6 here: 100x margin);
//     prefill, and the decode kernel's tensor-core form (head dims 64 and 128,
//     decode_attention_on_tensor_cores): P is rounded to T (relative u per weight, 2u after normalisation by the sum of the rounded P; FP16
//     subnormal P adds 2^-25 absolute per weight, the sum being >= 1): c = 2.1 u + n 2^-24 + 1e-4;
// * n 2^-23 |r_d|: the FP32 row sum (decode: FP32 adds; prefill: the tensor core's FP32 accumulation of
//   P times ones); 1e-6: FP16 subnormal outputs.
// A mask error (one key in or out of a window of 7) moves the output by ~S_d / 7, far above c S_d.
#include "sharq/kernels/cuda/paged_attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "../../support/gpu_test.h"
#include "../../support/exceptions.h"
#include "../../support/test_inputs.h"
#include "sharq/formats/minifloat.h"
#include "sharq/kernels/cuda/cuda_check.h"
#include "sharq/kernels/cuda/transformer_ops.h"

namespace {

using namespace sharq;
using cuda::AttentionWork;
using cuda::DeviceBuffer;
using cuda::DType;
using sharq_test::Rng;
using sharq_test::what_of;

float dec(uint16_t h, DType t) { return t == DType::bf16 ? bf16_decode(h) : fp16_decode(h); }
uint16_t enc(float x, DType t) { return t == DType::bf16 ? bf16_encode(x) : fp16_encode(x); }
double unit_roundoff(DType t) { return t == DType::bf16 ? 0x1p-8 : 0x1p-11; }
const char* tname(DType t) { return t == DType::bf16 ? "bf16" : "f16"; }

struct Shape {
  int nh = 8, nkv = 2, hd = 64, bs = 16;
  DType t = DType::bf16;
  int64_t window = 0;
};
std::string describe(const Shape& s) {
  return std::string(tname(s.t)) + " nh=" + std::to_string(s.nh) + " nkv=" + std::to_string(s.nkv) +
         " hd=" + std::to_string(s.hd) + " bs=" + std::to_string(s.bs) + " window=" + std::to_string(s.window);
}

// One sequence of the step: `cached` positions already in the cache, `fresh` new rows at positions
// cached .. cached + fresh - 1 (their K/V are in the cache too, as the engine writes them first).
struct SeqSpec {
  int cached = 0, fresh = 1;
};

struct Problem {
  Shape s;
  int64_t blocks = 0, M = 0;
  std::vector<uint16_t> k, v;  // [blocks][bs][nkv][hd]; NaN where nothing was written
  std::vector<float> kf, vf;   // decoded (reference only; empty for timing problems)
  std::vector<float> q;        // M x nh x hd, each a value of T (the kernels' q is T)
  std::vector<int32_t> pos, toff, table;
  std::vector<int64_t> entry_rows;
  std::vector<int32_t> row_seq, seq_toff, seq_nblk;
};

// K ~ N(0, 1); V = mu + N(0, 1) with a per (sequence, KV head, dim) mean mu in [-1.5, 1.5] (so the
// outputs are not ~0); q ~ N(0, q_sigma^2): scores q.k / sqrt(hd) ~ N(0, q_sigma^2), a peaked softmax.
// fast: cheap uniform values and no decoded copy (timing only).
Problem make_problem(const Shape& s, const std::vector<SeqSpec>& seqs, uint64_t seed, double q_sigma = 2.0,
                     bool fast = false) {
  Rng rng(seed);
  Problem P;
  P.s = s;
  int64_t need = 0;
  for (const SeqSpec& q : seqs) need += (q.cached + q.fresh + s.bs - 1) / s.bs;
  P.blocks = need + 3;
  std::vector<int32_t> ids(static_cast<size_t>(P.blocks));
  std::iota(ids.begin(), ids.end(), 0);
  for (size_t i = ids.size(); i > 1; --i)
    std::swap(ids[i - 1], ids[static_cast<size_t>(rng.index(static_cast<int64_t>(i)))]);
  const size_t slot = static_cast<size_t>(s.nkv) * s.hd;
  P.k.assign(static_cast<size_t>(P.blocks) * s.bs * slot, 0xFFFF);
  P.v = P.k;
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  auto fast_val = [&x]() {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    return static_cast<float>(static_cast<int>(x % 2001) - 1000) / 500.0f;
  };
  size_t next = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const int len = seqs[i].cached + seqs[i].fresh, nb = (len + s.bs - 1) / s.bs;
    const int32_t off = static_cast<int32_t>(P.table.size());
    P.seq_toff.push_back(off);
    P.seq_nblk.push_back(nb);
    for (int b = 0; b < nb; ++b) P.table.push_back(ids[next++]);
    std::vector<double> mu(slot);
    for (double& m : mu) m = 3.0 * rng.uniform() - 1.5;
    for (int p = 0; p < len; ++p) {
      const size_t base = (static_cast<size_t>(P.table[static_cast<size_t>(off + p / s.bs)]) * s.bs + p % s.bs) * slot;
      for (size_t e = 0; e < slot; ++e) {
        P.k[base + e] = enc(fast ? fast_val() : static_cast<float>(rng.normal()), s.t);
        P.v[base + e] = enc(fast ? fast_val() : static_cast<float>(mu[e] + rng.normal()), s.t);
      }
    }
    for (int r = 0; r < seqs[i].fresh; ++r) {
      P.pos.push_back(seqs[i].cached + r);
      P.toff.push_back(off);
      P.row_seq.push_back(static_cast<int32_t>(i));
      for (int e = 0; e < s.nh * s.hd; ++e)
        P.q.push_back(dec(enc(fast ? fast_val() : static_cast<float>(q_sigma * rng.normal()), s.t), s.t));  // T values
    }
    P.entry_rows.push_back(seqs[i].fresh);
  }
  P.M = static_cast<int64_t>(P.pos.size());
  if (!fast) {
    P.kf.resize(P.k.size());
    P.vf.resize(P.v.size());
    for (size_t i = 0; i < P.k.size(); ++i) P.kf[i] = dec(P.k[i], s.t), P.vf[i] = dec(P.v[i], s.t);
  }
  return P;
}

// The step metadata of a run: q rows, positions, block-table offsets, the table.
struct Meta {
  std::vector<float> q;
  std::vector<int32_t> pos, toff, table;
};
Meta full_meta(const Problem& P) { return {P.q, P.pos, P.toff, P.table}; }
// Row m of P alone: its q, its position, only its own sequence's block table (at offset 0).
Meta row_meta(const Problem& P, int64_t m) {
  Meta r;
  const size_t w = static_cast<size_t>(P.s.nh) * P.s.hd;
  r.q.assign(P.q.begin() + static_cast<ptrdiff_t>(m * w), P.q.begin() + static_cast<ptrdiff_t>((m + 1) * w));
  r.pos = {P.pos[static_cast<size_t>(m)]};
  r.toff = {0};
  const int32_t sq = P.row_seq[static_cast<size_t>(m)];
  r.table.assign(P.table.begin() + P.seq_toff[static_cast<size_t>(sq)],
                 P.table.begin() + P.seq_toff[static_cast<size_t>(sq)] + P.seq_nblk[static_cast<size_t>(sq)]);
  return r;
}

struct Pools {
  DeviceBuffer<uint16_t> k, v;
  explicit Pools(const Problem& P) : k(P.k.size()), v(P.v.size()) {
    k.upload(P.k.data());
    v.upload(P.v.data());
  }
};

// The device side of one call: metadata, plan, workspace and output.
struct Step {
  Shape s;
  int64_t M = 0;
  DeviceBuffer<uint16_t> q;
  DeviceBuffer<int32_t> pos, toff, table, drows, tiles;
  DeviceBuffer<uint8_t> ws;
  DeviceBuffer<uint16_t> out;
  cuda::AttentionPlan plan;
  cuda::RowMap rows;
  cuda::PagedKv kv;

  Step(const Problem& P, const Pools& pools, const Meta& meta, const AttentionWork& w) : s(P.s) {
    M = static_cast<int64_t>(meta.pos.size());
    std::vector<uint16_t> qt(meta.q.size());
    for (size_t i = 0; i < qt.size(); ++i) qt[i] = enc(meta.q[i], s.t);
    q = DeviceBuffer<uint16_t>(qt.size());
    q.upload(qt.data());
    pos = DeviceBuffer<int32_t>(meta.pos.size());
    pos.upload(meta.pos.data());
    toff = DeviceBuffer<int32_t>(meta.toff.size());
    toff.upload(meta.toff.data());
    table = DeviceBuffer<int32_t>(meta.table.size());
    table.upload(meta.table.data());
    drows = DeviceBuffer<int32_t>(w.decode_rows.size());
    drows.upload(w.decode_rows.data());
    tiles = DeviceBuffer<int32_t>(w.prefill_tiles.size());
    tiles.upload(w.prefill_tiles.data());
    const size_t wsb = cuda::paged_attention_workspace_bytes(static_cast<int64_t>(w.decode_rows.size()), s.nh, s.hd);
    ws = DeviceBuffer<uint8_t>(std::max<size_t>(wsb, 16));
    out = DeviceBuffer<uint16_t>(static_cast<size_t>(M) * s.nh * s.hd);
    plan.decode_rows = drows.get();
    plan.n_decode = static_cast<int32_t>(w.decode_rows.size());
    plan.prefill_tiles = tiles.get();
    plan.n_tiles = static_cast<int32_t>(w.prefill_tiles.size() / 2);
    plan.workspace = ws.get();
    rows.pos = pos.get();
    rows.table_off = toff.get();
    rows.table = table.get();
    kv.k = pools.k.get();
    kv.v = pools.v.get();
    kv.blocks = P.blocks;
    kv.block_size = s.bs;
    kv.kv_heads = s.nkv;
    kv.head_dim = s.hd;
    poison();
  }
  void poison() { SHARQ_CUDA_CHECK(cudaMemset(out.get(), 0xFF, out.bytes())); }
  void launch(cudaStream_t st) {
    cuda::paged_attention(q.get(), M, s.nh, rows, kv, s.window, s.t, plan, out.get(), st);
  }
  std::vector<uint16_t> result() {
    SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
    return out.to_host();
  }
};

std::vector<uint16_t> run(const Problem& P, const Pools& pools, const Meta& meta, const AttentionWork& w) {
  Step st(P, pools, meta, w);
  st.launch(nullptr);
  return st.result();
}

// Rows whose kernel rounds P to T (the prefill tiles; the decode rows too where the decode kernel runs
// on tensor cores): check_all uses the rounded bound for them.
std::vector<char> rounded_flags(const AttentionWork& w, const Problem& P) {
  const char dec_rounds = cuda::decode_attention_on_tensor_cores(P.s.hd) ? 1 : 0;
  std::vector<char> f(static_cast<size_t>(P.M), 0);
  for (const int32_t r : w.decode_rows) f[static_cast<size_t>(r)] = dec_rounds;
  for (size_t i = 0; i + 1 < w.prefill_tiles.size(); i += 2)
    for (int32_t r = 0; r < w.prefill_tiles[i + 1]; ++r) f[static_cast<size_t>(w.prefill_tiles[i] + r)] = 1;
  return f;
}

// Every row of P against the reference with the bound of the file comment. Returns a failure naming
// the first violation; *worst gets the largest error / bound ratio.
::testing::AssertionResult check_all(const Problem& P, const std::vector<uint16_t>& out,
                                     const std::vector<char>& rounded, double* worst = nullptr) {
  const Shape& s = P.s;
  const double u = unit_roundoff(s.t);
  const int G = s.nh / s.nkv;
  double worst_ratio = 0.0;
  int64_t bad = 0;
  std::string first;
  std::vector<double> qd(static_cast<size_t>(s.hd)), sc, r(static_cast<size_t>(s.hd)),
      spread(static_cast<size_t>(s.hd));
  std::vector<size_t> base;
  for (int64_t m = 0; m < P.M; ++m) {
    const int pos = P.pos[static_cast<size_t>(m)];
    const int j0 = s.window > 0 && pos + 1 - s.window > 0 ? static_cast<int>(pos + 1 - s.window) : 0;
    const int n = pos + 1 - j0;
    const int32_t* table = P.table.data() + P.toff[static_cast<size_t>(m)];
    const bool pre = rounded[static_cast<size_t>(m)] != 0;
    for (int h = 0; h < s.nh; ++h) {
      const int kvh = h / G;
      for (int d = 0; d < s.hd; ++d) {
        qd[static_cast<size_t>(d)] = P.q[(static_cast<size_t>(m) * s.nh + h) * s.hd + d];  // T values
      }
      sc.assign(static_cast<size_t>(n), 0.0);
      base.assign(static_cast<size_t>(n), 0);
      double mx = -INFINITY;
      for (int j = j0; j <= pos; ++j) {
        const size_t b = ((static_cast<size_t>(table[j / s.bs]) * s.bs + j % s.bs) * s.nkv + kvh) * s.hd;
        base[static_cast<size_t>(j - j0)] = b;
        double dot = 0.0;
        for (int d = 0; d < s.hd; ++d) dot += qd[static_cast<size_t>(d)] * P.kf[b + d];
        sc[static_cast<size_t>(j - j0)] = dot / std::sqrt(static_cast<double>(s.hd));
        mx = std::max(mx, sc[static_cast<size_t>(j - j0)]);
      }
      double sum = 0.0;
      for (double& v : sc) sum += (v = std::exp(v - mx));
      std::fill(r.begin(), r.end(), 0.0);
      for (int i = 0; i < n; ++i)
        for (int d = 0; d < s.hd; ++d)
          r[static_cast<size_t>(d)] += sc[static_cast<size_t>(i)] * P.vf[base[static_cast<size_t>(i)] + d];
      for (double& v : r) v /= sum;
      std::fill(spread.begin(), spread.end(), 0.0);
      for (int i = 0; i < n; ++i)
        for (int d = 0; d < s.hd; ++d)
          spread[static_cast<size_t>(d)] =
              std::max(spread[static_cast<size_t>(d)],
                       std::abs(P.vf[base[static_cast<size_t>(i)] + d] - r[static_cast<size_t>(d)]));
      const double c = pre ? 2.1 * u + n * 0x1p-24 + 1e-4 : 1e-4;
      for (int d = 0; d < s.hd; ++d) {
        const double o = dec(out[(static_cast<size_t>(m) * s.nh + h) * s.hd + d], s.t);
        const double rd = r[static_cast<size_t>(d)];
        const double bound =
            u * std::abs(rd) + (1 + u) * c * spread[static_cast<size_t>(d)] + n * 0x1p-23 * std::abs(rd) + 1e-6;
        const double err = std::abs(o - rd);
        if (!(err <= bound)) {  // NaN fails too
          if (bad++ == 0)
            first = "row " + std::to_string(m) + " (pos " + std::to_string(pos) + (pre ? ", P rounded" : ", FP32") +
                    ") head " + std::to_string(h) + " dim " + std::to_string(d) + ": " + std::to_string(o) + " vs " +
                    std::to_string(rd) + ", bound " + std::to_string(bound);
        } else {
          worst_ratio = std::max(worst_ratio, err / bound);
        }
      }
    }
  }
  if (worst) *worst = worst_ratio;
  if (bad) return ::testing::AssertionFailure() << bad << " elements out of bound; first: " << first;
  return ::testing::AssertionSuccess();
}

// Row m of `a` (nh * hd codes) equals row 0 of `b` bit for bit.
::testing::AssertionResult same_row(const std::vector<uint16_t>& a, int64_t m, const std::vector<uint16_t>& b, int w) {
  for (int i = 0; i < w; ++i)
    if (a[static_cast<size_t>(m * w + i)] != b[static_cast<size_t>(i)])
      return ::testing::AssertionFailure()
             << "row " << m << " element " << i << ": " << a[static_cast<size_t>(m * w + i)] << " vs alone "
             << b[static_cast<size_t>(i)];
  return ::testing::AssertionSuccess();
}

// =================================================================================================
// Host plan and argument checks (no CUDA call).

TEST(PagedAttentionPlan, MixedEntries) {
  // rows: e0 0 | e1 1..5 | e2 6 | e3 none | e4 7..136 | e5 137..200 | e6 201..265 | e7 266
  const std::vector<int64_t> entries = {1, 5, 1, 0, 130, 64, 65, 1};
  for (int hd : {64, 128}) {
    const AttentionWork w = cuda::plan_attention(entries, hd, false);
    EXPECT_EQ(w.decode_rows, (std::vector<int32_t>{0, 6, 266})) << hd;
    EXPECT_EQ(w.prefill_tiles, (std::vector<int32_t>{1, 5, 7, 128, 135, 2, 137, 64, 201, 65})) << hd;
  }
  std::vector<int32_t> all(267);
  std::iota(all.begin(), all.end(), 0);
  for (int hd : {64, 128}) {  // batch-invariant: every row decodes
    const AttentionWork w = cuda::plan_attention(entries, hd, true);
    EXPECT_EQ(w.decode_rows, all);
    EXPECT_TRUE(w.prefill_tiles.empty());
  }
  for (int hd : {8, 32, 36, 96, 256}) {  // no prefill kernel for these dims
    EXPECT_FALSE(cuda::prefill_attention_supports(hd));
    const AttentionWork w = cuda::plan_attention(entries, hd, false);
    EXPECT_EQ(w.decode_rows, all) << hd;
    EXPECT_TRUE(w.prefill_tiles.empty()) << hd;
  }
  EXPECT_TRUE(cuda::prefill_attention_supports(64));
  EXPECT_TRUE(cuda::prefill_attention_supports(128));
  const AttentionWork e = cuda::plan_attention({}, 128, false);
  EXPECT_TRUE(e.decode_rows.empty() && e.prefill_tiles.empty());
  EXPECT_EQ(cuda::kAttentionTileRows, 128);
}

TEST(PagedAttentionPlan, WorkspaceBytes) {
  EXPECT_EQ(cuda::paged_attention_workspace_bytes(0, 32, 128), 0u);
  EXPECT_EQ(cuda::paged_attention_workspace_bytes(1, 32, 128), size_t{32} * 16 * 130 * 4);
  EXPECT_EQ(cuda::paged_attention_workspace_bytes(7, 3, 36), size_t{7} * 3 * 16 * 38 * 4);
  // decode rows run in launches of <= 128 that reuse the workspace
  EXPECT_EQ(cuda::paged_attention_workspace_bytes(100000, 32, 128),
            cuda::paged_attention_workspace_bytes(128, 32, 128));
  EXPECT_EQ(cuda::paged_attention_workspace_bytes(5, 8, 64) % 16, 0u);
}

TEST(PagedAttentionPlan, ArgumentErrors) {
  EXPECT_NE(what_of([] { cuda::plan_attention({3, -1}, 128, false); }).find("entry 1"), std::string::npos);
  EXPECT_NE(what_of([] { cuda::plan_attention({1}, 0, false); }).find("head_dim"), std::string::npos);
  EXPECT_NE(what_of([] { cuda::plan_attention({1}, 257, false); }).find("head_dim"), std::string::npos);
  EXPECT_NE(what_of([] { cuda::plan_attention({int64_t{1} << 31}, 128, false); }).find("rows"), std::string::npos);
  EXPECT_NE(what_of([] { cuda::paged_attention_workspace_bytes(-1, 32, 128); }).find("rows"), std::string::npos);
  EXPECT_NE(what_of([] { cuda::paged_attention_workspace_bytes(4, 0, 128); }).find("heads"), std::string::npos);
  EXPECT_NE(what_of([] { cuda::paged_attention_workspace_bytes(4, 32, 300); }).find("dim"), std::string::npos);

  // paged_attention: fake (never dereferenced) device pointers; every error is raised before any CUDA call.
  const void* fq = reinterpret_cast<const void*>(uintptr_t{0x10000});
  void* fout = reinterpret_cast<void*>(uintptr_t{0x20000});
  const auto* fi = reinterpret_cast<const int32_t*>(uintptr_t{0x30000});
  cuda::RowMap rows;
  rows.pos = rows.table_off = rows.table = fi;
  cuda::PagedKv kv;
  kv.k = reinterpret_cast<void*>(uintptr_t{0x40000});
  kv.v = reinterpret_cast<void*>(uintptr_t{0x50000});
  kv.blocks = 10;
  kv.block_size = 16;
  kv.kv_heads = 8;
  kv.head_dim = 128;
  cuda::AttentionPlan plan;
  plan.decode_rows = fi;
  plan.n_decode = 4;
  plan.workspace = reinterpret_cast<void*>(uintptr_t{0x60000});
  auto call = [&](const void* q, int64_t M, int nh, const cuda::RowMap& r, const cuda::PagedKv& k, int64_t window,
                  const cuda::AttentionPlan& p) {
    return what_of([&] { cuda::paged_attention(q, M, nh, r, k, window, DType::bf16, p, fout, nullptr); });
  };
  EXPECT_NE(call(fq, -1, 32, rows, kv, 0, plan).find("rows"), std::string::npos);
  EXPECT_NE(call(fq, 3, 32, rows, kv, 0, plan).find("plan of 4 decode rows"), std::string::npos);  // n_decode > M
  EXPECT_NE(call(nullptr, 4, 32, rows, kv, 0, plan).find("null pointer"), std::string::npos);
  {
    cuda::RowMap r2 = rows;
    r2.table = nullptr;
    EXPECT_NE(call(fq, 4, 32, r2, kv, 0, plan).find("null pointer"), std::string::npos);
  }
  EXPECT_NE(call(fq, 4, 30, rows, kv, 0, plan).find("query heads"), std::string::npos);  // 30 % 8
  for (int hd : {0, 257}) {
    cuda::PagedKv k2 = kv;
    k2.head_dim = hd;
    EXPECT_NE(call(fq, 4, 32, rows, k2, 0, plan).find("dim"), std::string::npos) << hd;
  }
  {
    cuda::PagedKv k2 = kv;
    k2.block_size = 0;
    EXPECT_NE(call(fq, 4, 32, rows, k2, 0, plan).find("block 0"), std::string::npos);
  }
  EXPECT_NE(call(fq, 4, 32, rows, kv, -5, plan).find("window"), std::string::npos);
  {
    cuda::AttentionPlan p2 = plan;
    p2.workspace = nullptr;
    EXPECT_NE(call(fq, 4, 32, rows, kv, 0, p2).find("workspace"), std::string::npos);
    p2.workspace = reinterpret_cast<void*>(uintptr_t{0x60008});
    EXPECT_NE(call(fq, 4, 32, rows, kv, 0, p2).find("workspace"), std::string::npos);
    p2 = plan;
    p2.decode_rows = nullptr;
    EXPECT_NE(call(fq, 4, 32, rows, kv, 0, p2).find("row list"), std::string::npos);
  }
  {
    cuda::AttentionPlan p2;
    p2.n_tiles = 1;  // null tile list
    EXPECT_NE(call(fq, 4, 32, rows, kv, 0, p2).find("tile list"), std::string::npos);
    p2.prefill_tiles = fi;
    cuda::PagedKv k2 = kv;
    k2.head_dim = 96;  // no prefill kernel
    EXPECT_NE(call(fq, 4, 32, rows, k2, 0, p2).find("head_dim 96"), std::string::npos);
    EXPECT_NE(call(static_cast<const char*>(fq) + 2, 4, 32, rows, kv, 0, p2).find("aligned"), std::string::npos);
    p2.n_tiles = -1;
    EXPECT_NE(call(fq, 4, 32, rows, kv, 0, p2).find("prefill tiles"), std::string::npos);
  }
  // nothing to do: no error, no CUDA call
  EXPECT_EQ(call(fq, 0, 32, rows, kv, 0, cuda::AttentionPlan{}), "<no exception>");
}

// =================================================================================================
// Decode kernel against the reference: every head dim path, GQA ratio, block size, window, type.

TEST(PagedAttention, DecodeMatchesReference) {
  SKIP_WITHOUT_GPU();
  // lengths: one key, < 1 tile, exactly 1 tile, 1 tile + 1, 3 tiles, 16 splits of one tile with a
  // short last one, and 12 splits of 2 tiles (chunk 128: the double-buffered loop)
  const std::vector<SeqSpec> seqs = {{0, 1}, {16, 1}, {63, 1}, {64, 1}, {128, 1}, {999, 1}, {1499, 1}};
  uint64_t seed = 1;
  double worst = 0.0;
  for (DType t : {DType::bf16, DType::f16})
    for (int hd : {8, 36, 64, 128, 256})
      for (int G : {1, 4, 8})
        for (auto [bs, window] : {std::pair{16, int64_t{0}}, std::pair{5, int64_t{40}}, std::pair{5, int64_t{0}}}) {
          if (hd == 256 && bs == 5 && window == 0) continue;  // keep the host reference quick
          Shape s;
          s.t = t, s.hd = hd, s.nkv = 2, s.nh = 2 * G, s.bs = bs, s.window = window;
          SCOPED_TRACE(describe(s));
          const Problem P = make_problem(s, seqs, seed++);
          const Pools pools(P);
          const AttentionWork w = cuda::plan_attention(P.entry_rows, hd, false);
          ASSERT_EQ(w.decode_rows.size(), seqs.size());
          const auto out = run(P, pools, full_meta(P), w);
          double wr = 0.0;
          EXPECT_TRUE(check_all(P, out, rounded_flags(w, P), &wr));
          worst = std::max(worst, wr);
        }
  std::printf("[decode] worst error / bound: %.3f\n", worst);
}

// The decode kernel's two forms at the shapes DecodeMatchesReference leaves out: tensor-core head dims
// with group sizes whose head count per CTA is not a power of two (G 3: 3 heads in a 4-row group; G 6:
// 6 of 8) or is 2, and the FP32 form at head dims 72 and 96 (16 lanes per key, as 128 had before the
// tensor cores), and at head_dim 128 with q one element off 4-byte alignment (the tensor-core form loads
// q in pairs, so that call takes the FP32 form and is checked against the FP32 bound).
TEST(PagedAttention, DecodeFormsAtOtherGroupShapesAndDims) {
  SKIP_WITHOUT_GPU();
  const std::vector<SeqSpec> seqs = {{0, 1}, {37, 1}, {700, 1}};
  uint64_t seed = 501;
  for (DType t : {DType::bf16, DType::f16})
    for (auto [hd, G] : {std::pair{64, 2}, std::pair{64, 3}, std::pair{128, 3}, std::pair{128, 6}, std::pair{96, 4},
                         std::pair{72, 2}}) {
      Shape s;
      s.t = t, s.hd = hd, s.nkv = 2, s.nh = 2 * G, s.bs = 16, s.window = 0;
      SCOPED_TRACE(describe(s));
      const Problem P = make_problem(s, seqs, seed++);
      const Pools pools(P);
      const AttentionWork w = cuda::plan_attention(P.entry_rows, hd, false);
      EXPECT_TRUE(check_all(P, run(P, pools, full_meta(P), w), rounded_flags(w, P)));
    }
  Shape s;
  s.t = DType::bf16, s.hd = 128, s.nkv = 2, s.nh = 8, s.bs = 16, s.window = 0;
  const Problem P = make_problem(s, seqs, 777);
  const Pools pools(P);
  const AttentionWork w = cuda::plan_attention(P.entry_rows, s.hd, false);
  Step st(P, pools, full_meta(P), w);
  DeviceBuffer<uint16_t> shifted(P.q.size() + 1);
  shifted.upload(std::vector<uint16_t>(P.q.size() + 1, 0).data());
  SHARQ_CUDA_CHECK(cudaMemcpy(shifted.get() + 1, st.q.get(), st.q.bytes(), cudaMemcpyDeviceToDevice));
  cuda::paged_attention(shifted.get() + 1, st.M, s.nh, st.rows, st.kv, s.window, s.t, st.plan, st.out.get(), nullptr);
  EXPECT_TRUE(check_all(P, st.result(), std::vector<char>(static_cast<size_t>(P.M), 0))) << "q 2 bytes off";
}

// Prefill tiles (and some decode rows) of several sequences in one step, against the reference.
TEST(PagedAttention, PrefillMatchesReference) {
  SKIP_WITHOUT_GPU();
  // a 2-tile prompt (128 + 22), a 130-row chunk after 37 cached positions (2 tiles; in the first, the
  // second warpgroup's rows reach the second key block of 128 and the first's do not: the first
  // computes that block fully masked), a 5-row chunk after 400 (4 key blocks with window 0: stages
  // reused by a lone warpgroup; past the window of 50), a decode row, a 2-row entry, a 70-row chunk
  // after 129 (one tile, the second warpgroup with 6 rows)
  const std::vector<SeqSpec> seqs = {{0, 150}, {37, 130}, {400, 5}, {10, 1}, {0, 2}, {129, 70}};
  uint64_t seed = 100;
  double worst = 0.0;
  for (DType t : {DType::bf16, DType::f16})
    for (int hd : {64, 128})
      for (int G : {1, 4, 8})
        for (auto [bs, window] : {std::pair{16, int64_t{0}}, std::pair{5, int64_t{50}}, std::pair{16, int64_t{7}}}) {
          Shape s;
          s.t = t, s.hd = hd, s.nkv = 2, s.nh = 2 * G, s.bs = bs, s.window = window;
          SCOPED_TRACE(describe(s));
          const Problem P = make_problem(s, seqs, seed++);
          const Pools pools(P);
          const AttentionWork w = cuda::plan_attention(P.entry_rows, hd, false);
          ASSERT_EQ(w.prefill_tiles.size(), 2u * 7);
          ASSERT_EQ(w.decode_rows.size(), 1u);
          const auto out = run(P, pools, full_meta(P), w);
          double wr = 0.0;
          EXPECT_TRUE(check_all(P, out, rounded_flags(w, P), &wr));
          worst = std::max(worst, wr);
        }
  std::printf("[prefill] worst error / bound: %.3f\n", worst);
}

// Both consumer warpgroups over 4 and 5 key blocks, so that every stage is reused (2 stages for head_dim
// 128, 3 for 64) while the two take turns: a 520-row prompt (tile 3: rows 384..511, keys 0..511) and a
// 200-row chunk after 300 cached positions (tile 0: 4 blocks; tile 1: 72 rows), without a window and
// with one of 50 (2 blocks per tile, the keys before each row's window masked inside them).
TEST(PagedAttention, PrefillReusesStagesWithBothWarpgroups) {
  SKIP_WITHOUT_GPU();
  const std::vector<SeqSpec> seqs = {{0, 520}, {300, 200}};
  uint64_t seed = 300;
  double worst = 0.0;
  for (DType t : {DType::bf16, DType::f16})
    for (int hd : {64, 128})
      for (int64_t window : {int64_t{0}, int64_t{50}}) {
        Shape s;
        s.t = t, s.hd = hd, s.nkv = 2, s.nh = 8, s.bs = 16, s.window = window;
        SCOPED_TRACE(describe(s));
        const Problem P = make_problem(s, seqs, seed++);
        const Pools pools(P);
        const AttentionWork w = cuda::plan_attention(P.entry_rows, hd, false);
        ASSERT_EQ(w.prefill_tiles.size(), 2u * 7);
        const auto out = run(P, pools, full_meta(P), w);
        double wr = 0.0;
        EXPECT_TRUE(check_all(P, out, rounded_flags(w, P), &wr));
        worst = std::max(worst, wr);
      }
  std::printf("[prefill, stage reuse] worst error / bound: %.3f\n", worst);
}

// A decode row's bits do not depend on the other rows of the step (their number, lengths, the
// prefill tiles beside them, the row's index) : each equals the row run alone (M = 1).
TEST(PagedAttention, DecodeIsBatchInvariant) {
  SKIP_WITHOUT_GPU();
  for (auto [t, window] : {std::pair{DType::bf16, int64_t{0}}, std::pair{DType::f16, int64_t{700}}}) {
    Shape s;  // Llama-3.1-8B heads
    s.t = t, s.nh = 32, s.nkv = 8, s.hd = 128, s.bs = 16, s.window = window;
    SCOPED_TRACE(describe(s));
    const std::vector<SeqSpec> seqs = {{0, 1},   {49, 1},   {100, 70}, {63, 1},   {64, 1},
                                       {699, 1}, {1023, 1}, {0, 40},   {1999, 1}, {2999, 1}};
    const Problem P = make_problem(s, seqs, 7 + static_cast<uint64_t>(t));
    const Pools pools(P);
    const AttentionWork w = cuda::plan_attention(P.entry_rows, s.hd, false);
    const auto out = run(P, pools, full_meta(P), w);
    EXPECT_TRUE(check_all(P, out, rounded_flags(w, P)));
    const int W = s.nh * s.hd;
    for (int32_t m : w.decode_rows) {
      const auto alone = run(P, pools, row_meta(P, m), cuda::plan_attention({1}, s.hd, false));
      EXPECT_TRUE(same_row(out, m, alone, W));
    }
    // the decode rows reversed and without the prefill tiles: same bits
    AttentionWork rev;
    rev.decode_rows.assign(w.decode_rows.rbegin(), w.decode_rows.rend());
    const auto out2 = run(P, pools, full_meta(P), rev);
    for (int32_t m : w.decode_rows)
      EXPECT_TRUE(same_row(out2, m, std::vector<uint16_t>(out.begin() + m * W, out.begin() + (m + 1) * W), W));
  }
}

// batch_invariant = true: every row (prefill chunks included) goes to the decode kernel and equals
// the row run alone.
TEST(PagedAttention, BatchInvariantModeMatchesRowsAlone) {
  SKIP_WITHOUT_GPU();
  Shape s;
  s.t = DType::bf16, s.nh = 8, s.nkv = 2, s.hd = 128, s.bs = 16, s.window = 0;
  const std::vector<SeqSpec> seqs = {{20, 100}, {5, 1}, {0, 70}, {1100, 3}};
  const Problem P = make_problem(s, seqs, 42);
  const Pools pools(P);
  const AttentionWork w = cuda::plan_attention(P.entry_rows, s.hd, true);
  ASSERT_EQ(static_cast<int64_t>(w.decode_rows.size()), P.M);
  ASSERT_TRUE(w.prefill_tiles.empty());
  const auto out = run(P, pools, full_meta(P), w);
  EXPECT_TRUE(check_all(P, out, rounded_flags(w, P)));
  const int W = s.nh * s.hd;
  for (int64_t m = 0; m < P.M; ++m) {
    const auto alone = run(P, pools, row_meta(P, m), cuda::plan_attention({1}, s.hd, false));
    ASSERT_TRUE(same_row(out, m, alone, W));
  }
}

// More decode rows than one launch takes (128): every row right, rows in the second and third launch
// equal to themselves alone.
TEST(PagedAttention, ManyDecodeRows) {
  SKIP_WITHOUT_GPU();
  Shape s;
  s.t = DType::f16, s.nh = 16, s.nkv = 4, s.hd = 64, s.bs = 16, s.window = 0;
  Rng rng(9);
  std::vector<SeqSpec> seqs;
  for (int i = 0; i < 300; ++i) seqs.push_back({static_cast<int>(rng.index(200)), 1});
  const Problem P = make_problem(s, seqs, 10);
  const Pools pools(P);
  const AttentionWork w = cuda::plan_attention(P.entry_rows, s.hd, false);
  ASSERT_EQ(w.decode_rows.size(), 300u);
  const auto out = run(P, pools, full_meta(P), w);
  EXPECT_TRUE(check_all(P, out, rounded_flags(w, P)));
  const int W = s.nh * s.hd;
  for (int64_t m : {0, 127, 128, 255, 256, 299}) {
    const auto alone = run(P, pools, row_meta(P, m), cuda::plan_attention({1}, s.hd, false));
    EXPECT_TRUE(same_row(out, m, alone, W));
  }
}

// The PDL contract of the decode kernel (launch.cuh): it may start while the kernel before it runs, and
// must read q and the cache only after its wait. Here, as in the engine, that kernel is
// qk_rope_kv_write (with zero inverse frequencies: the identity rotation), which writes each row's new
// K/V into slots that hold NaN until then, and q. A read before the wait would see the NaN (or a stale
// value) and fail the reference check. The new key sits at index 0, 5, 0, 7, 6, 8, 15 and 23 of its
// warp's key range (first, second and third pipeline steps); hd 36 takes the element-copy path.
// Repeated with fresh poison, on a stream that allows the early launch. (A variant that copied the
// earlier keys before the wait was measured slower inside the engine's step: docs/perf/engine.md.)
TEST(PagedAttention, DecodeReadsTheNewKeyAfterThePrecedingKernel) {
  SKIP_WITHOUT_GPU();
  cudaStream_t stream;
  SHARQ_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  uint64_t seed = 901;
  for (DType t : {DType::bf16, DType::f16})
    for (int hd : {36, 64, 128}) {
      Shape s;
      s.t = t, s.hd = hd, s.nkv = 4, s.nh = 16, s.bs = 16, s.window = 0;
      SCOPED_TRACE(describe(s));
      const std::vector<SeqSpec> seqs = {{0, 1}, {5, 1}, {8, 1}, {15, 1}, {70, 1}, {600, 1}, {1023, 1}, {1535, 1}};
      Problem P = make_problem(s, seqs, seed++);
      const AttentionWork w = cuda::plan_attention(P.entry_rows, hd, false);
      ASSERT_EQ(w.decode_rows.size(), seqs.size());
      // the q/k/v rows the writer reads: q, then the new K and V of the row's position
      const int64_t ld = static_cast<int64_t>(s.nh + 2 * s.nkv) * hd;
      const size_t slot = static_cast<size_t>(s.nkv) * hd;
      std::vector<uint16_t> qkv(static_cast<size_t>(P.M * ld));
      std::vector<uint16_t> poisoned_k = P.k, poisoned_v = P.v;
      for (int64_t m = 0; m < P.M; ++m) {
        const int pos = P.pos[static_cast<size_t>(m)];
        const size_t base =
            (static_cast<size_t>(P.table[static_cast<size_t>(P.toff[static_cast<size_t>(m)] + pos / s.bs)]) * s.bs +
             pos % s.bs) * slot;
        uint16_t* row = qkv.data() + m * ld;
        for (int e = 0; e < s.nh * hd; ++e) row[e] = enc(P.q[static_cast<size_t>(m) * s.nh * hd + static_cast<size_t>(e)], t);
        for (size_t e = 0; e < slot; ++e) {
          row[static_cast<size_t>(s.nh) * hd + e] = P.k[base + e];
          row[static_cast<size_t>(s.nh) * hd + slot + e] = P.v[base + e];
          poisoned_k[base + e] = poisoned_v[base + e] = 0xFFFF;
        }
      }
      Problem Q = P;  // the pools start poisoned at every new key
      Q.k = poisoned_k, Q.v = poisoned_v;
      const Pools pools(Q);
      Step st(P, pools, full_meta(P), w);
      DeviceBuffer<uint16_t> dqkv(qkv.size());
      dqkv.upload(qkv.data());
      DeviceBuffer<float> inv_freq(static_cast<size_t>(hd / 2));
      SHARQ_CUDA_CHECK(cudaMemset(inv_freq.get(), 0, inv_freq.bytes()));
      SHARQ_CUDA_CHECK(cudaMemset(st.q.get(), 0xFF, st.q.bytes()));  // q, too, only from the writer
      for (int rep = 0; rep < 5; ++rep) {
        st.poison();
        SHARQ_CUDA_CHECK(cudaMemcpyAsync(pools.k.get(), poisoned_k.data(), pools.k.bytes(), cudaMemcpyHostToDevice, stream));
        SHARQ_CUDA_CHECK(cudaMemcpyAsync(pools.v.get(), poisoned_v.data(), pools.v.bytes(), cudaMemcpyHostToDevice, stream));
        const uint16_t* base = dqkv.get();
        cuda::qk_rope_kv_write(base, base + s.nh * hd, base + (s.nh + s.nkv) * hd, ld, P.M, s.nh, nullptr, nullptr,
                               1e-6f, inv_freq.get(), false, st.rows, st.kv, t, st.q.get(), stream);
        st.launch(stream);
        SHARQ_CUDA_CHECK(cudaStreamSynchronize(stream));
        EXPECT_TRUE(check_all(P, st.result(), rounded_flags(w, P))) << "repeat " << rep;
      }
    }
  SHARQ_CUDA_CHECK(cudaStreamDestroy(stream));
}

// Repeated runs give the same bits; a CUDA-graph capture of the call replays to the same bits.
TEST(PagedAttention, DeterministicAndGraphCapturable) {
  SKIP_WITHOUT_GPU();
  Shape s;
  s.t = DType::bf16, s.nh = 16, s.nkv = 4, s.hd = 128, s.bs = 16, s.window = 0;
  const std::vector<SeqSpec> seqs = {{0, 200}, {500, 1}, {30, 1}, {64, 64}};
  const Problem P = make_problem(s, seqs, 77);
  const Pools pools(P);
  const AttentionWork w = cuda::plan_attention(P.entry_rows, s.hd, false);
  Step st(P, pools, full_meta(P), w);
  st.launch(nullptr);
  const auto first = st.result();
  EXPECT_TRUE(check_all(P, first, rounded_flags(w, P)));
  st.poison();
  st.launch(nullptr);
  EXPECT_EQ(st.result(), first);

  cudaStream_t stream;
  SHARQ_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  SHARQ_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  st.launch(stream);
  SHARQ_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  SHARQ_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  for (int i = 0; i < 2; ++i) {
    st.poison();
    SHARQ_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    SHARQ_CUDA_CHECK(cudaStreamSynchronize(stream));
    EXPECT_EQ(st.result(), first) << "graph replay " << i;
  }
  SHARQ_CUDA_CHECK(cudaGraphExecDestroy(exec));
  SHARQ_CUDA_CHECK(cudaGraphDestroy(graph));
  SHARQ_CUDA_CHECK(cudaStreamDestroy(stream));
}

// Llama-3.1-8B head shapes (32 q heads, 8 KV heads, hd 128, BF16, block 16): printed, never asserted.
TEST(PagedAttention, TimingPrint) {
  SKIP_WITHOUT_GPU();
  Shape s;
  s.t = DType::bf16, s.nh = 32, s.nkv = 8, s.hd = 128, s.bs = 16, s.window = 0;
  cudaEvent_t e0, e1;
  SHARQ_CUDA_CHECK(cudaEventCreate(&e0));
  SHARQ_CUDA_CHECK(cudaEventCreate(&e1));
  auto time_us = [&](Step& st, int iters) {
    for (int i = 0; i < 3; ++i) st.launch(nullptr);
    SHARQ_CUDA_CHECK(cudaEventRecord(e0, nullptr));
    for (int i = 0; i < iters; ++i) st.launch(nullptr);
    SHARQ_CUDA_CHECK(cudaEventRecord(e1, nullptr));
    SHARQ_CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0.0f;
    SHARQ_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    return 1000.0 * ms / iters;
  };
  for (int ctx : {1024, 8192})
    for (int batch : {1, 32}) {
      if (ctx == 8192 && batch == 32) continue;
      const Problem P =
          make_problem(s, std::vector<SeqSpec>(static_cast<size_t>(batch), SeqSpec{ctx - 1, 1}), 5, 1.0, true);
      const Pools pools(P);
      Step st(P, pools, full_meta(P), cuda::plan_attention(P.entry_rows, s.hd, false));
      const double us = time_us(st, 50);
      const double bytes = 2.0 * batch * ctx * s.nkv * s.hd * 2;
      std::printf("[timing] decode batch %2d ctx %4d: %8.2f us per layer call (K+V %.1f MiB, %.0f GB/s)\n", batch, ctx,
                  us, bytes / (1 << 20), bytes / us * 1e-3);
    }
  // The prefill kernel on cheap uniform values, then on normal ones in FP16 (the engine's fp16 type;
  // the online softmax skips a block's rescale when no row's maximum moves, so the values may change
  // the work: inside an fp16 1x2048 engine prefill the kernel took 124-131 us per layer against the
  // uniform line's 91.6 us, cause unmeasured, docs/perf/engine.md), then the batch-invariant form.
  struct Variant {
    bool bi, fast;
    DType t;
    const char* what;
  };
  for (const Variant v : {Variant{false, true, DType::bf16, ""}, Variant{false, false, DType::f16, " (fp16, normal values)"},
                          Variant{true, true, DType::bf16, " (batch-invariant: decode kernel)"}}) {
    Shape sv = s;
    sv.t = v.t;
    const Problem P = make_problem(sv, {SeqSpec{0, 2048}}, 6, 1.0, v.fast);
    const Pools pools(P);
    Step st(P, pools, full_meta(P), cuda::plan_attention(P.entry_rows, s.hd, v.bi));
    const double us = time_us(st, v.bi ? 3 : 20);
    const double flops = 4.0 * s.hd * s.nh * (2048.0 * 2049.0 / 2.0);  // causal QK^T + PV
    std::printf("[timing] prefill 2048 tokens%s: %8.1f us per layer call (%.0f TFLOP/s causal)\n", v.what, us,
                flops / us * 1e-6);
  }
  SHARQ_CUDA_CHECK(cudaEventDestroy(e0));
  SHARQ_CUDA_CHECK(cudaEventDestroy(e1));
}

}  // namespace
