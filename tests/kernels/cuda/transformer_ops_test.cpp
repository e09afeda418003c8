// qk_rope_kv_write (kernels/cuda/transformer_ops.h) against a double-precision host reference: the
// optional q/k RMSNorm, RoPE rotate-half and interleaved at each row's position, q out in T, k and
// v written into a paged cache through shuffled block tables. FP16 / BF16, head dims 8 / 34 / 36 /
// 32 / 64 / 128 / 132 / 256 / 384 / 512 (pairs per lane 1 .. 8; 34: hd / 2 odd, no words; 36: words
// only interleaved; 132: the last busy lane half full), GQA 1 / 2 / 3 / 4, positions 0 .. 1030 across
// block boundaries, 5 rows (a warp per head) and 300 (a block per row), inputs so small that eps weighs
// in the norm, and the q or k norm alone. Every other cache slot holds NaN (0xFFFF) and must keep it. A
// row stride that rules out the word loads and stores gives the same bits as one that allows them, and
// as 16-byte rows (the 16-byte kernel for hd 32 / 64 / 128 / 256 / 512, asserted taken: several heads
// per warp, a warp's last heads idle for 8 + 2 heads of 128, query and KV heads in one warp for 3 + 1
// of 256, a second pass of the warps over the row for 64 + 8 heads of 128 and 16 + 4 of 512, GQA 8).
// And rmsnorm_rows with the residual add against add_rmsnorm (last test). Label `gpu`: skips without a GPU.
//
// Tolerances, from the arithmetic (FP32 norm, angle and rotation; the reference takes the kernel's
// FP32 angle pos * inv_freq, then cos / sin in double):
//   q, k:  |out - ref| <= u |ref| + 1e-5 (|u0| + |u1|)  (one rounding to T, u = 2^-8 BF16, 2^-11 FP16;
//          FP32 arithmetic before it, ~1e-7, with a 100x margin)
// u0, u1 the normed inputs of the pair. A wrong pair, angle, norm or position is off by O(|u|).
#include "sharq/kernels/cuda/transformer_ops.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

#include "../../support/gpu_test.h"
#include "../../support/test_inputs.h"
#include "sharq/formats/minifloat.h"
#include "sharq/kernels/cuda/cuda_check.h"

namespace {

using namespace sharq;
using cuda::DeviceBuffer;
using cuda::DType;
using sharq_test::Rng;

float dec(uint16_t h, DType t) { return t == DType::bf16 ? bf16_decode(h) : fp16_decode(h); }
uint16_t enc(float x, DType t) { return t == DType::bf16 ? bf16_encode(x) : fp16_encode(x); }

struct Case {
  DType t;
  int nh, nkv, hd;
  bool qk_norm, interleaved;
  double sigma = 2.0;  // inputs ~ N(0, sigma^2)
  int only = 0;        // with qk_norm: 0 both norms, 1 the q norm alone, 2 the k norm alone
  bool q_normed() const { return qk_norm && only != 2; }
  bool k_normed() const { return qk_norm && only != 1; }
  std::string name() const {
    return std::string(t == DType::bf16 ? "bf16" : "f16") + " nh=" + std::to_string(nh) + " nkv=" + std::to_string(nkv) +
           " hd=" + std::to_string(hd) + (q_normed() ? " q norm" : "") + (k_normed() ? " k norm" : "") +
           (interleaved ? " interleaved" : " rotate-half") + " sigma=" + std::to_string(sigma);
  }
};

struct Result {
  std::vector<uint16_t> q, k, v;
  bool wide = false;  // qk_rope_kv_write took its 16-byte kernel
};

constexpr int kBlock = 16;

// The first index where two arrays differ bitwise, or -1.
template <class V>
int64_t first_difference(const std::vector<V>& a, const std::vector<V>& b) {
  if (a.size() != b.size()) return 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(V)) != 0) return static_cast<int64_t>(i);
  return -1;
}

// One call with rows at positions kPos (a sequence each, its own shuffled block table), row stride ld.
Result run(const Case& c, const std::vector<int32_t>& kPos, int64_t ld, const std::vector<uint16_t>& qkv_rows,
           const std::vector<float>& qn,
           const std::vector<float>& kn, const std::vector<float>& inv_freq, const std::vector<int32_t>& table,
           const std::vector<int32_t>& toff, int64_t blocks) {
  const int64_t M = static_cast<int64_t>(kPos.size()), w = static_cast<int64_t>(c.nh + 2 * c.nkv) * c.hd;
  std::vector<uint16_t> qkv(static_cast<size_t>(M * ld), enc(7.0f, c.t));  // the padding is never read
  for (int64_t m = 0; m < M; ++m)
    std::copy_n(qkv_rows.begin() + m * w, w, qkv.begin() + m * ld);
  DeviceBuffer<uint16_t> dqkv(qkv.size()), k(static_cast<size_t>(blocks) * kBlock * c.nkv * c.hd), v(k.size());
  dqkv.upload(qkv.data());
  SHARQ_CUDA_CHECK(cudaMemset(k.get(), 0xFF, k.bytes()));
  SHARQ_CUDA_CHECK(cudaMemset(v.get(), 0xFF, v.bytes()));
  DeviceBuffer<float> dqn(qn.size()), dkn(kn.size()), dinv(inv_freq.size());
  DeviceBuffer<uint16_t> q(static_cast<size_t>(M) * c.nh * c.hd);
  dqn.upload(qn.data()), dkn.upload(kn.data()), dinv.upload(inv_freq.data());
  SHARQ_CUDA_CHECK(cudaMemset(q.get(), 0xFF, q.bytes()));
  DeviceBuffer<int32_t> pos(kPos.size()), doff(toff.size()), dtab(table.size());
  pos.upload(kPos.data()), doff.upload(toff.data()), dtab.upload(table.data());
  cuda::RowMap rows;
  rows.pos = pos.get(), rows.table_off = doff.get(), rows.table = dtab.get();
  cuda::PagedKv kv;
  kv.k = k.get(), kv.v = v.get(), kv.blocks = blocks, kv.block_size = kBlock, kv.kv_heads = c.nkv, kv.head_dim = c.hd;
  const uint16_t* base = dqkv.get();
  const bool wide = cuda::qk_rope_wide(base, base + c.nh * c.hd, base + (c.nh + c.nkv) * c.hd, ld,
                                       c.q_normed() ? dqn.get() : nullptr, c.k_normed() ? dkn.get() : nullptr, kv, q.get());
  cuda::qk_rope_kv_write(base, base + c.nh * c.hd, base + (c.nh + c.nkv) * c.hd, ld, M, c.nh, c.q_normed() ? dqn.get() : nullptr,
                         c.k_normed() ? dkn.get() : nullptr, 1e-6f, dinv.get(), c.interleaved, rows, kv, c.t, q.get(), nullptr);
  SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
  return {q.to_host(), k.to_host(), v.to_host(), wide};
}

TEST(QkRopeKvWrite, MatchesADoubleReference) {
  SKIP_WITHOUT_GPU();
  std::vector<Case> cases;
  for (DType t : {DType::bf16, DType::f16})
    for (auto [nh, nkv, hd] : {std::tuple{8, 2, 128}, std::tuple{4, 4, 64}, std::tuple{6, 2, 36}, std::tuple{3, 1, 256},
                                std::tuple{4, 1, 8}, std::tuple{2, 1, 34}, std::tuple{2, 2, 132}, std::tuple{2, 1, 384},
                                std::tuple{4, 2, 32}, std::tuple{1, 1, 512}, std::tuple{64, 8, 128}, std::tuple{16, 4, 512}})
      for (int variant = 0; variant < 4; ++variant) cases.push_back({t, nh, nkv, hd, (variant & 1) != 0, (variant & 2) != 0});
  // and 300 rows (the kernel's whole-row blocks from M = 256 on; fewer rows take one head per warp)
  const size_t n_small = cases.size();
  cases.push_back({DType::bf16, 8, 2, 128, true, false});
  cases.push_back({DType::f16, 6, 2, 64, false, true});
  const size_t n_rows300 = cases.size();
  // sum of squares / hd ~ eps: a dropped or misplaced eps moves the norm by ~30%
  cases.push_back({DType::bf16, 8, 2, 128, true, false, 1e-3});
  // one of the two norms alone (the kernel's NORM form with one weight null)
  cases.push_back({DType::bf16, 8, 2, 128, true, false, 2.0, 1});
  cases.push_back({DType::f16, 4, 4, 64, true, true, 2.0, 2});
  uint64_t seed = 11;
  for (size_t ci = 0; ci < cases.size(); ++ci) {
    const Case& c = cases[ci];
    SCOPED_TRACE(c.name());
    Rng rng(seed++);
    std::vector<int32_t> kPos = {0, 15, 16, 200, 1030};
    if (ci >= n_small && ci < n_rows300) {
      kPos.clear();
      for (int i = 0; i < 300; ++i) kPos.push_back(static_cast<int32_t>(rng.index(1100)));
    }
    const int64_t M = static_cast<int64_t>(kPos.size()), w = static_cast<int64_t>(c.nh + 2 * c.nkv) * c.hd;
    std::vector<uint16_t> rows_in(static_cast<size_t>(M * w));
    for (uint16_t& x : rows_in) x = enc(static_cast<float>(c.sigma * rng.normal()), c.t);
    std::vector<float> qn(static_cast<size_t>(c.hd)), kn(static_cast<size_t>(c.hd)), invf(static_cast<size_t>(c.hd / 2));
    for (float& x : qn) x = static_cast<float>(1.0 + 0.3 * rng.normal());
    for (float& x : kn) x = static_cast<float>(1.0 + 0.3 * rng.normal());
    for (int i = 0; i < c.hd / 2; ++i) invf[static_cast<size_t>(i)] = static_cast<float>(std::pow(10000.0, -2.0 * i / c.hd));
    // each row its own sequence of pos / 16 + 1 blocks, the block ids shuffled over the pool
    std::vector<int32_t> toff, table;
    int64_t blocks = 2;
    for (int32_t p : kPos) blocks += p / kBlock + 1;
    std::vector<int32_t> ids(static_cast<size_t>(blocks));
    std::iota(ids.begin(), ids.end(), 0);
    for (size_t i = ids.size(); i > 1; --i) std::swap(ids[i - 1], ids[static_cast<size_t>(rng.index(static_cast<int64_t>(i)))]);
    size_t next = 0;
    for (int32_t p : kPos) {
      toff.push_back(static_cast<int32_t>(table.size()));
      for (int b = 0; b <= p / kBlock; ++b) table.push_back(ids[next++]);
    }
    // 16-byte rows (the 16-byte kernel where hd is 16 times a power of two), word loads allowed, ruled out
    const int64_t ld_wide = w + 8, ld_words = w + 6, ld_odd = w + 3;
    const Result r = run(c, kPos, ld_words, rows_in, qn, kn, invf, table, toff, blocks);
    const Result r_odd = run(c, kPos, ld_odd, rows_in, qn, kn, invf, table, toff, blocks);
    const Result r_wide = run(c, kPos, ld_wide, rows_in, qn, kn, invf, table, toff, blocks);
    // the 16-byte kernel for hd = 16 x 2^j (32 .. 512) on 16-byte rows only
    const bool wide_hd = c.hd >= 32 && c.hd <= 512 && c.hd % 16 == 0 && ((c.hd / 16) & (c.hd / 16 - 1)) == 0;
    ASSERT_EQ(r_wide.wide, wide_hd);
    ASSERT_FALSE(r.wide);
    ASSERT_FALSE(r_odd.wide);
    // the same arithmetic whatever the loads and stores, and the same norm summation tree in both kernels
    ASSERT_EQ(first_difference(r.q, r_odd.q), -1) << "q";
    ASSERT_EQ(first_difference(r.k, r_odd.k), -1) << "k";
    ASSERT_EQ(first_difference(r.v, r_odd.v), -1) << "v";
    ASSERT_EQ(first_difference(r.q, r_wide.q), -1) << "q, 16-byte rows";
    ASSERT_EQ(first_difference(r.k, r_wide.k), -1) << "k, 16-byte rows";
    ASSERT_EQ(first_difference(r.v, r_wide.v), -1) << "v, 16-byte rows";

    const double u = c.t == DType::bf16 ? 0x1p-8 : 0x1p-11;
    std::vector<char> written(r.k.size(), 0);
    for (int64_t m = 0; m < M; ++m) {
      const int pos = kPos[static_cast<size_t>(m)];
      const int32_t blk = table[static_cast<size_t>(toff[static_cast<size_t>(m)] + pos / kBlock)];
      for (int y = 0; y < c.nh + c.nkv; ++y) {
        const bool is_q = y < c.nh;
        const int hh = is_q ? y : y - c.nh;
        const uint16_t* src = rows_in.data() + m * w + (is_q ? hh : c.nh + hh) * c.hd;
        const std::vector<float>& nw = is_q ? qn : kn;
        const bool normed = is_q ? c.q_normed() : c.k_normed();
        double ss = 0.0;
        for (int e = 0; e < c.hd; ++e) ss += static_cast<double>(dec(src[e], c.t)) * dec(src[e], c.t);
        const double inv = normed ? 1.0 / std::sqrt(ss / c.hd + 1e-6) : 1.0;
        const size_t kbase = ((static_cast<size_t>(blk) * kBlock + pos % kBlock) * c.nkv + hh) * c.hd;
        for (int p = 0; p < c.hd / 2; ++p) {
          const int a = c.interleaved ? 2 * p : p, b = c.interleaved ? 2 * p + 1 : p + c.hd / 2;
          const double u0 = dec(src[a], c.t) * inv * (normed ? nw[static_cast<size_t>(a)] : 1.0);
          const double u1 = dec(src[b], c.t) * inv * (normed ? nw[static_cast<size_t>(b)] : 1.0);
          const double ang = static_cast<float>(pos) * invf[static_cast<size_t>(p)];  // the kernel's FP32 angle
          const double r0 = u0 * std::cos(ang) - u1 * std::sin(ang), r1 = u1 * std::cos(ang) + u0 * std::sin(ang);
          const double slack = 1e-5 * (std::fabs(u0) + std::fabs(u1));
          const std::string where = "row " + std::to_string(m) + " head " + std::to_string(y) + " pair " + std::to_string(p);
          const uint16_t* out = is_q ? r.q.data() + (m * c.nh + hh) * c.hd : r.k.data() + kbase;
          ASSERT_LE(std::fabs(dec(out[a], c.t) - r0), u * std::fabs(r0) + slack) << where << (is_q ? " (q)" : " (k)");
          ASSERT_LE(std::fabs(dec(out[b], c.t) - r1), u * std::fabs(r1) + slack) << where << (is_q ? " (q)" : " (k)");
        }
        if (!is_q)
          for (int e = 0; e < c.hd; ++e) {
            ASSERT_EQ(r.v[kbase + static_cast<size_t>(e)], src[c.nkv * c.hd + e]) << "v, row " << m << " head " << hh;
            written[kbase + static_cast<size_t>(e)] = 1;
          }
      }
    }
    for (size_t i = 0; i < r.k.size(); ++i)
      if (!written[i]) {
        ASSERT_EQ(r.k[i], 0xFFFF) << "stray k write at element " << i;
        ASSERT_EQ(r.v[i], 0xFFFF) << "stray v write at element " << i;
      }
  }
}

// Bad arguments are refused before any launch, naming the function.
TEST(QkRopeKvWrite, RejectsBadArguments) {
  cuda::RowMap rows;
  cuda::PagedKv kv;
  float q = 0.0f;
  const int32_t z = 0;
  rows.pos = &z, rows.table_off = &z, rows.table = &z;
  kv.k = &q, kv.v = &q, kv.kv_heads = 2, kv.head_dim = 7;  // odd head_dim
  try {
    cuda::qk_rope_kv_write(&q, &q, &q, 64, 1, 4, nullptr, nullptr, 1e-6f, &q, false, rows, kv, DType::bf16, &q, nullptr);
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("qk_rope_kv_write"), std::string::npos) << e.what();
  }
  kv.head_dim = 8;
  try {  // row stride below nh * hd
    cuda::qk_rope_kv_write(&q, &q, &q, 16, 1, 4, nullptr, nullptr, 1e-6f, &q, false, rows, kv, DType::bf16, &q, nullptr);
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("row stride"), std::string::npos) << e.what();
  }
}

// rmsnorm_rows with `add` (the engine's last residual add and final norm, for the rows that need
// logits): row r of y is bit for bit add_rmsnorm's row rows[r], rows may repeat, and x is not
// written; without `add`, rmsnorm_rows of add_rmsnorm's sums gives the same bits again. H = 4096
// and 1000 take the 16-byte kernel with 2 groups per thread, 16384 with 8, H = 37 the scalar kernel;
// FP16 and BF16.
TEST(RmsnormRows, AddMatchesAddRmsnormOnTheSelectedRows) {
  SKIP_WITHOUT_GPU();
  for (DType t : {DType::f16, DType::bf16})
    for (int64_t H : {int64_t{4096}, int64_t{1000}, int64_t{16384}, int64_t{37}}) {
      SCOPED_TRACE(std::string(t == DType::bf16 ? "bf16" : "f16") + " H=" + std::to_string(H));
      Rng rng(static_cast<uint64_t>(H) * 7 + (t == DType::bf16 ? 1 : 0));
      const int64_t M = 7;
      const std::vector<int32_t> rows = {3, 0, 3, 6, 5};
      const int64_t R = static_cast<int64_t>(rows.size());
      std::vector<float> x(static_cast<size_t>(M * H)), w(static_cast<size_t>(H));
      std::vector<uint16_t> o(static_cast<size_t>(M * H));
      for (float& v : x) v = static_cast<float>(3.0 * rng.normal());
      for (uint16_t& v : o) v = enc(static_cast<float>(rng.normal()), t);
      for (float& v : w) v = static_cast<float>(1.0 + 0.2 * rng.normal());
      DeviceBuffer<float> dx(x.size()), dsum(x.size()), dw(w.size());
      DeviceBuffer<uint16_t> dob(o.size()), yref(o.size()), y(static_cast<size_t>(R * H)), y2(y.size());
      DeviceBuffer<int32_t> drows(rows.size());
      dx.upload(x.data()), dsum.upload(x.data()), dw.upload(w.data()), dob.upload(o.data()), drows.upload(rows.data());
      SHARQ_CUDA_CHECK(cudaMemset(y.get(), 0xFF, y.bytes()));
      SHARQ_CUDA_CHECK(cudaMemset(y2.get(), 0xFF, y2.bytes()));
      cuda::add_rmsnorm(dsum.get(), dob.get(), M, H, dw.get(), 1e-5f, t, yref.get(), nullptr);
      cuda::rmsnorm_rows(dx.get(), dob.get(), drows.get(), R, H, dw.get(), 1e-5f, t, y.get(), nullptr);
      cuda::rmsnorm_rows(dsum.get(), nullptr, drows.get(), R, H, dw.get(), 1e-5f, t, y2.get(), nullptr);
      SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
      const std::vector<uint16_t> hr = yref.to_host(), hy = y.to_host(), hy2 = y2.to_host();
      const std::vector<float> hx = dx.to_host(), hs = dsum.to_host();
      ASSERT_EQ(first_difference(hx, x), -1) << "x written";
      for (int64_t r = 0; r < R; ++r)
        for (int64_t h = 0; h < H; ++h) {
          const size_t i = static_cast<size_t>(r * H + h), j = static_cast<size_t>(rows[static_cast<size_t>(r)] * H + h);
          ASSERT_EQ(hy[i], hr[j]) << "row " << r << " (source " << rows[static_cast<size_t>(r)] << "), element " << h;
          ASSERT_EQ(hy2[i], hr[j]) << "without add, row " << r << ", element " << h;
        }
      // and the sums add_rmsnorm kept are x + float(o) (a check that the reference itself added)
      for (size_t i = 0; i < hs.size(); i += 97) ASSERT_EQ(hs[i], x[i] + dec(o[i], t)) << i;
    }
}

// gather_rows: rows out of order and repeated, 16-byte rows (FP32 residual rows of 4096, the word
// path) and rows of 74 bytes (37 16-bit values, the byte path), against the host copy.
TEST(GatherRows, CopiesTheListedRows) {
  SKIP_WITHOUT_GPU();
  Rng rng(123);
  for (const int64_t row_bytes : {int64_t{4096 * 4}, int64_t{74}}) {
    SCOPED_TRACE(row_bytes);
    const int64_t M = 300;
    std::vector<uint8_t> src(static_cast<size_t>(M * row_bytes));
    for (uint8_t& b : src) b = static_cast<uint8_t>(rng.index(256));
    const std::vector<int32_t> rows = {299, 0, 17, 17, 150, 1, 298};
    const int64_t R = static_cast<int64_t>(rows.size());
    DeviceBuffer<uint8_t> dsrc(src.size()), ddst(static_cast<size_t>(R * row_bytes));
    DeviceBuffer<int32_t> drows(rows.size());
    dsrc.upload(src.data());
    drows.upload(rows.data());
    SHARQ_CUDA_CHECK(cudaMemset(ddst.get(), 0xA5, ddst.bytes()));
    cuda::gather_rows(dsrc.get(), drows.get(), R, row_bytes, ddst.get(), nullptr);
    SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<uint8_t> got = ddst.to_host();
    for (int64_t r = 0; r < R; ++r)
      ASSERT_EQ(0, std::memcmp(got.data() + r * row_bytes, src.data() + rows[static_cast<size_t>(r)] * row_bytes,
                               static_cast<size_t>(row_bytes)))
          << "row " << r;
  }
  EXPECT_THROW(cuda::gather_rows(nullptr, nullptr, 3, 16, nullptr, nullptr), std::invalid_argument);
  cuda::gather_rows(nullptr, nullptr, 0, 16, nullptr, nullptr);  // R == 0: nothing to do
}

}  // namespace
