// The fused prep kernel against the CPU reference: packed codes, scales, metadata, g_x and the FP16
// planes must be bit-identical to sharq_prepare() on the same (BF16/FP16-rounded, optionally
// RMS-normalized) input. Label `gpu`; skips cleanly where there is no GPU.
#include "sharq/kernels/cuda/sharq_prep.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "../../support/gpu_test.h"
#include "../../support/test_inputs.h"
#include "sharq/kernels/cuda/cuda_check.h"
#include "sharq/kernels/cuda/transformer_ops.h"

namespace {

using namespace sharq;
using namespace sharq::cuda;

// Input rounded to the kernel's input type; returns the raw 16-bit codes and the exact floats.
struct Input { std::vector<uint16_t> bits; std::vector<float> f; };
Input make_input(const std::vector<float>& x, DType t) {
  Input in;
  for (float v : x) {
    const uint16_t b = t == DType::bf16 ? bf16_encode(v) : fp16_encode(v);
    in.bits.push_back(b);
    in.f.push_back(t == DType::bf16 ? bf16_decode(b) : fp16_decode(b));
  }
  return in;
}

std::vector<float> input_values(int64_t M, int64_t K, uint64_t seed, bool outliers, DType t) {
  std::vector<float> x;
  if (outliers) {
    x = sharq_test::outlier_heavy(M, K, seed);
    if (t == DType::f16)
      for (auto& v : x) v *= 0.01f;  // keep outlier-heavy FP16 inputs in range
  } else {
    sharq_test::Rng rng(seed);
    for (int64_t i = 0; i < M * K; ++i) x.push_back(static_cast<float>(rng.normal()));
  }
  return x;
}

uint16_t h16(float v) { return fp16_encode(v); }

struct Case {
  int64_t M, K;
  SharqFormat fmt;
  MaskKind mask;
  GlobalScale gs;
  DType dt;
  bool rms, outliers;
  PairScore score = PairScore::max;  // pair-4:8's pair score (max is the spec; the others are ablations)
};

template <class V, int G>
void run_case(const Case& c, uint64_t seed, const std::vector<float>* forced = nullptr) {
  const auto xin = make_input(forced ? *forced : input_values(c.M, c.K, seed, c.outliers, c.dt), c.dt);
  std::vector<float> wf;
  Input w;
  std::vector<float> ref_in = xin.f;
  if (c.rms) {
    sharq_test::Rng rng(seed + 7);
    std::vector<float> wv;
    for (int64_t k = 0; k < c.K; ++k) wv.push_back(static_cast<float>(0.5 + rng.uniform()));
    w = make_input(wv, c.dt);
    rmsnorm_reference(xin.f.data(), c.M, c.K, w.f.data(), 1e-6f, ref_in.data());
  }
  const GlobalScale ref_gs = V::kGlobal ? c.gs : GlobalScale::none;
  const auto ref = sharq_prepare<V, G>(ref_in.data(), c.M, c.K, c.score, ref_gs);

  const int64_t spans = (c.K + 31) / 32, ld = (c.K + 127) / 128 * 128;
  using bb_t = backbone_block_t<V, G>;
  using res_t = typename V::Fres::block_t;
  DeviceBuffer<uint16_t> dx(xin.bits.size()), dw(w.bits.size());
  dx.upload(xin.bits.data());
  if (c.rms) dw.upload(w.bits.data());
  DeviceBuffer<bb_t> dbb(static_cast<size_t>(c.M * spans));
  DeviceBuffer<res_t> dres(static_cast<size_t>(c.M * spans * ref.kResPerSpan));
  DeviceBuffer<float> dg(static_cast<size_t>(c.M));
  const bool planes = c.fmt == SharqFormat::nvfp4;
  DeviceBuffer<__half> ds(planes ? c.M * ld : 0), dr(planes ? c.M * ld : 0), dxp(planes ? c.M * ld : 0);
  DeviceBuffer<uint32_t> scratch(1);
  for (auto* b : {&ds, &dr, &dxp})
    if (b->size()) SHARQ_CUDA_CHECK(cudaMemset(b->get(), 0xFF, b->bytes()));  // poison
  SHARQ_CUDA_CHECK(cudaMemset(dbb.get(), 0xFF, dbb.bytes()));
  SHARQ_CUDA_CHECK(cudaMemset(dres.get(), 0xFF, dres.bytes()));
  PrepSpec spec;
  spec.fmt = c.fmt;
  spec.mask = c.mask;
  spec.score = c.score;
  spec.act_scale = c.gs;
  spec.input = c.rms ? PrepInput::rmsnorm : PrepInput::plain;
  PrepOut out;
  out.backbone = dbb.get();
  out.residual = dres.get();
  out.g = dg.get();
  if (planes) { out.s_plane = ds.get(); out.r_plane = dr.get(); out.x_plane = dxp.get(); }
  sharq_prep(dx.get(), c.dt, c.M, c.K, c.rms ? dw.get() : nullptr, spec, out, scratch.get(), nullptr);
  SHARQ_CUDA_CHECK(cudaDeviceSynchronize());

  const auto bb = dbb.to_host();
  const auto res = dres.to_host();
  ASSERT_EQ(std::memcmp(bb.data(), ref.backbone.data(), bb.size() * sizeof(bb_t)), 0) << "backbone blocks differ";
  ASSERT_EQ(std::memcmp(res.data(), ref.residual.data(), res.size() * sizeof(res_t)), 0) << "residual blocks differ";
  if (V::kGlobal) {
    const auto g = dg.to_host();
    const size_t ng = c.gs == GlobalScale::per_tensor ? 1 : static_cast<size_t>(c.M);
    for (size_t i = 0; i < ng; ++i) ASSERT_EQ(f32_bits(g[i]), f32_bits(ref.g[i])) << "g_x of row " << i;
  }
  if (!planes) return;
  const auto s = ds.to_host(), r = dr.to_host(), xp = dxp.to_host();
  std::vector<float> xh(c.K), sh(c.K), rh(c.K);
  for (int64_t m = 0; m < c.M; ++m) {
    sharq_dequantize_row<V, G>(ref, m, xh.data(), sh.data(), rh.data());
    for (int64_t k = 0; k < ld; ++k) {
      const size_t i = static_cast<size_t>(m * ld + k);
      uint16_t es = 0, er = 0, ex = 0;
      if (k < c.K) { es = h16(sh[k]); er = h16(rh[k]); ex = h16(xh[k]); }
      uint16_t gs, gr, gx;
      std::memcpy(&gs, &s[i], 2); std::memcpy(&gr, &r[i], 2); std::memcpy(&gx, &xp[i], 2);
      ASSERT_EQ(gs, es) << "S^ plane at " << m << "," << k;
      ASSERT_EQ(gr, er) << "R^ plane at " << m << "," << k;
      ASSERT_EQ(gx, ex) << "X^ plane at " << m << "," << k;
      if (k < c.K && !std::isnan(sh[k]) && !std::isnan(rh[k])) {
        ASSERT_EQ(fp16_decode(es), sh[k]) << "S^ not exact in FP16 at " << m << "," << k;
        ASSERT_EQ(fp16_decode(er), rh[k]) << "R^ not exact in FP16 at " << m << "," << k;
      }
    }
  }
}

void run(const Case& c, uint64_t seed, const std::vector<float>* forced = nullptr) {
  SCOPED_TRACE(::testing::Message() << "M=" << c.M << " K=" << c.K << " fmt=" << static_cast<int>(c.fmt)
                                    << " mask=" << static_cast<int>(c.mask) << " gs=" << static_cast<int>(c.gs)
                                    << " dt=" << static_cast<int>(c.dt) << " rms=" << c.rms << " outliers=" << c.outliers
                                    << " score=" << static_cast<int>(c.score));
  if (c.fmt == SharqFormat::nvfp4) {
    if (c.mask == MaskKind::pair48) run_case<SharqNvfp4, 8>(c, seed, forced);
    else run_case<SharqNvfp4, 4>(c, seed, forced);
  } else {
    if (c.mask == MaskKind::pair48) run_case<SharqMxfp4, 8>(c, seed, forced);
    else run_case<SharqMxfp4, 4>(c, seed, forced);
  }
}

TEST(SharqPrep, BitIdenticalToTheCpuReferenceAcrossShapesAndOptions) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 100;
  // M <= 64: the warp-per-span kernels; M > 64: the four-lanes-per-span SharQ kernels (the thread-per-span NVFP4 one)
  const std::pair<int64_t, int64_t> shapes[] = {{1, 4096}, {1, 96}, {3, 160}, {7, 4160}, {33, 512}, {5, 14336},
                                                {100, 4096}, {65, 96}, {130, 14336},
                                                // K % 8 != 0: the element loads instead of the 16-byte ones
                                                {5, 196}, {70, 196}};
  for (auto [M, K] : shapes)
    for (SharqFormat f : {SharqFormat::nvfp4, SharqFormat::mxfp4})
      for (MaskKind mk : {MaskKind::pair48, MaskKind::scalar24})
        for (bool outl : {false, true}) {
          run({M, K, f, mk, GlobalScale::per_row, DType::bf16, false, outl}, ++seed);
          if (f == SharqFormat::nvfp4) run({M, K, f, mk, GlobalScale::per_tensor, DType::bf16, false, outl}, ++seed);
        }
}

// The authors' pair-score ablations (l1, l2sq, max + min / 4) beside the spec's max: the four-lanes-
// per-span kernels run max in a span loop of its own, every other score in the general one; the warp
// kernels take the score at run time. NaN and Inf pairs included (the outlier rows).
TEST(SharqPrep, EveryPairScoreIsBitIdentical) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 700;
  for (PairScore sc : {PairScore::max, PairScore::l1, PairScore::l2sq, PairScore::max_quarter_min})
    for (auto [M, K] : {std::pair<int64_t, int64_t>{5, 4096}, {100, 4160}})
      for (SharqFormat f : {SharqFormat::nvfp4, SharqFormat::mxfp4}) {
        Case c{M, K, f, MaskKind::pair48, GlobalScale::per_row, DType::bf16, false, true};
        c.score = sc;
        run(c, ++seed);
      }
  const int64_t M = 72, K = 256;
  auto x = input_values(M, K, 901, true, DType::bf16);
  x[3 * K + 9] = std::numeric_limits<float>::quiet_NaN();
  x[70 * K + 100] = std::numeric_limits<float>::infinity();
  for (PairScore sc : {PairScore::l1, PairScore::l2sq, PairScore::max_quarter_min}) {
    Case c{M, K, SharqFormat::nvfp4, MaskKind::pair48, GlobalScale::per_row, DType::bf16, false, false};
    c.score = sc;
    run(c, 0, &x);
  }
}

TEST(SharqPrep, FusedRmsNormAndFp16InputsAreBitIdentical) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 500;
  for (auto [M, K] : {std::pair<int64_t, int64_t>{1, 4096}, {9, 200}, {4, 3584}, {80, 200}})
    for (DType dt : {DType::bf16, DType::f16})
      for (GlobalScale gs : {GlobalScale::per_row, GlobalScale::per_tensor}) {
        run({M, K, SharqFormat::nvfp4, MaskKind::pair48, gs, dt, true, true}, ++seed);
        run({M, K, SharqFormat::nvfp4, MaskKind::scalar24, gs, dt, false, true}, ++seed);
        run({M, K, SharqFormat::mxfp4, MaskKind::pair48, gs, dt, true, false}, ++seed);
      }
}

TEST(SharqPrep, NanAndInfBehaveAsOnTheCpu) {
  SKIP_WITHOUT_GPU();
  for (const int64_t M : {4, 72}) {
  const int64_t K = 256;
  auto x = input_values(M, K, 900, true, DType::bf16);
  x[0 * K + 5] = std::numeric_limits<float>::quiet_NaN();
  x[1 * K + 77] = std::numeric_limits<float>::infinity();
  x[2 * K + 200] = -std::numeric_limits<float>::infinity();
  for (GlobalScale gs : {GlobalScale::per_row, GlobalScale::per_tensor})
    for (MaskKind mk : {MaskKind::pair48, MaskKind::scalar24}) {
      run({M, K, SharqFormat::nvfp4, mk, gs, DType::bf16, false, false}, 0, &x);
      run({M, K, SharqFormat::mxfp4, mk, gs, DType::bf16, false, false}, 0, &x);
      run({M, K, SharqFormat::nvfp4, mk, gs, DType::bf16, true, false}, 0, &x);  // NaN poisons the row's norm
    }
  }
}

// Finite rows that are not safe for the unguarded reciprocal division (sharq_prep.cu, RowDivisor):
// BF16 values below 2^-100 and a subnormal one, a row whose range exceeds 2^97, a row of tiny values;
// with an all-zero row (safe) and negative zeros. Unsafe rows take row_quotient's guarded division and
// the NaN-handling span path; the others the unguarded one. Both kernels (M = 8: a warp per span; 72:
// four lanes per span), both scale granularities, both mask kinds, FP16 (where such values round to
// zero) too, and the RMSNorm input (FP32 values, always divided).
TEST(SharqPrep, TinyZeroAndWideRangeRowsAreBitIdentical) {
  SKIP_WITHOUT_GPU();
  const int64_t K = 256;
  for (const int64_t M : {8, 72}) {
    for (DType dt : {DType::bf16, DType::f16}) {
      auto x = input_values(M, K, 901, false, dt);
      for (int64_t k = 0; k < K; ++k) {
        x[0 * K + k] = 0.0f;                         // all zero
        if (k % 3 == 0) x[1 * K + k] *= 1e-33f;      // a third below 2^-100 (BF16)
        x[2 * K + k] *= 1e-5f;                       // with one huge value below: a range beyond 2^97
        x[3 * K + k] *= 1e-36f;                      // every value tiny
        if (k % 2) x[4 * K + k] = -0.0f;             // negative zeros
      }
      x[1 * K + 7] = 1e-39f;                         // a BF16 subnormal
      x[2 * K + 100] = dt == DType::bf16 ? 1e30f : 60000.0f;
      for (GlobalScale gs : {GlobalScale::per_row, GlobalScale::per_tensor})
        for (MaskKind mk : {MaskKind::pair48, MaskKind::scalar24}) {
          run({M, K, SharqFormat::nvfp4, mk, gs, dt, false, false}, 0, &x);
          run({M, K, SharqFormat::nvfp4, mk, gs, dt, true, false}, 0, &x);
        }
    }
  }
}

TEST(SharqPrep, Nvfp4BaselinePrepMatchesTheCpuQuantizer) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 1000;
  for (auto [M, K] : {std::pair<int64_t, int64_t>{1, 4096}, {6, 208}, {17, 1024}, {70, 208}})
    for (GlobalScale gs : {GlobalScale::per_row, GlobalScale::per_tensor}) {
      const auto xin = make_input(input_values(M, K, ++seed, true, DType::bf16), DType::bf16);
      const auto q = quantize_matrix<Nvfp4_16>(xin.f.data(), M, K, gs);
      const int64_t ld = (K + 127) / 128 * 128;
      DeviceBuffer<uint16_t> dx(xin.bits.size());
      dx.upload(xin.bits.data());
      DeviceBuffer<block_nvfp4_16> db(q.blocks.size());
      DeviceBuffer<float> dg(static_cast<size_t>(M));
      DeviceBuffer<__half> dp(static_cast<size_t>(M * ld));
      DeviceBuffer<uint32_t> scratch(1);
      SHARQ_CUDA_CHECK(cudaMemset(dp.get(), 0xFF, dp.bytes()));
      nvfp4_prep(dx.get(), DType::bf16, M, K, nullptr, gs, PrepInput::plain, 0.0f, db.get(), dg.get(), dp.get(), ld, scratch.get(), nullptr);
      SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
      const auto b = db.to_host();
      ASSERT_EQ(std::memcmp(b.data(), q.blocks.data(), b.size() * sizeof(block_nvfp4_16)), 0);
      const auto g = dg.to_host();
      for (size_t i = 0; i < q.g.size(); ++i) ASSERT_EQ(f32_bits(g[i]), f32_bits(q.g[i]));
      const auto deq = dequantize_matrix(q, false);
      const auto p = dp.to_host();
      for (int64_t m = 0; m < M; ++m)
        for (int64_t k = 0; k < ld; ++k) {
          uint16_t got;
          std::memcpy(&got, &p[m * ld + k], 2);
          ASSERT_EQ(got, k < K ? h16(deq[m * K + k]) : 0) << m << "," << k;
        }
    }
}

// A buffer's bytes on the host.
template <class Buf>
std::vector<uint8_t> host_bytes(const Buf& buf) {
  const auto h = buf.to_host();
  std::vector<uint8_t> b(h.size() * sizeof(h[0]));
  std::memcpy(b.data(), h.data(), b.size());
  return b;
}

// The SharQ prep's outputs for M rows of K, zeroed: the PrepOut that points at them, and all their
// bytes after a run (the fused-input tests compare two runs output by output).
struct SharqOutputs {
  int64_t ld;
  DeviceBuffer<uint8_t> bb, res;
  DeviceBuffer<float> g;
  DeviceBuffer<__half> sp, rp;
  SharqOutputs(int64_t M, int64_t K)
      : ld((K + 127) / 128 * 128), bb(static_cast<size_t>(M * ((K + 31) / 32) * 64)),
        res(static_cast<size_t>(M * ((K + 31) / 32) * 64)), g(static_cast<size_t>(M)), sp(static_cast<size_t>(M * ld)),
        rp(static_cast<size_t>(M * ld)) {
    SHARQ_CUDA_CHECK(cudaMemset(bb.get(), 0, bb.bytes()));
    SHARQ_CUDA_CHECK(cudaMemset(res.get(), 0, res.bytes()));
  }
  PrepOut out() {
    PrepOut o;
    o.backbone = bb.get();
    o.residual = res.get();
    o.g = g.get();
    o.s_plane = sp.get();
    o.r_plane = rp.get();
    o.ld = ld;
    return o;
  }
  std::vector<std::vector<uint8_t>> bytes() const {
    return {host_bytes(bb), host_bytes(res), host_bytes(g), host_bytes(sp), host_bytes(rp)};
  }
};

// The NVFP4 prep's outputs (blocks, g, plane) for M rows of K, and their bytes after a run (g
// included when with_g).
struct Nvfp4Outputs {
  DeviceBuffer<block_nvfp4_16> blocks;
  DeviceBuffer<float> g;
  DeviceBuffer<__half> xp;
  Nvfp4Outputs(int64_t M, int64_t K, int64_t ld)
      : blocks(static_cast<size_t>(M * ((K + 15) / 16))), g(static_cast<size_t>(M)), xp(static_cast<size_t>(M * ld)) {}
  std::vector<uint8_t> bytes(bool with_g) const {
    std::vector<uint8_t> b = host_bytes(blocks);
    if (with_g) {
      const std::vector<uint8_t> gb = host_bytes(g);
      b.insert(b.end(), gb.begin(), gb.end());
    }
    const std::vector<uint8_t> pb = host_bytes(xp);
    b.insert(b.end(), pb.begin(), pb.end());
    return b;
  }
};

// The down projection's prep with SwiGLU fused in front (PrepInput::swiglu, reading the fused
// gate/up output M x 2K) equals swiglu() followed by the plain prep, bit for bit: every output of
// both preps, both mask kinds, both scale granularities, both input types, decode and prefill M.
TEST(SharqPrep, FusedSwigluEqualsSwigluThenPrepBitForBit) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 2000;
  for (auto [M, K] : {std::pair<int64_t, int64_t>{1, 4096}, {3, 200}, {70, 1024}})
    for (DType dt : {DType::bf16, DType::f16}) {
      const auto gu = make_input(input_values(M, 2 * K, ++seed, false, dt), dt);
      const int64_t ld = (K + 127) / 128 * 128;
      DeviceBuffer<uint16_t> dgu(gu.bits.size()), dx(static_cast<size_t>(M * K));
      dgu.upload(gu.bits.data());
      swiglu(dgu.get(), M, K, dt, dx.get(), nullptr);
      DeviceBuffer<uint32_t> scratch(1);
      for (GlobalScale gs : {GlobalScale::per_row, GlobalScale::per_tensor}) {
        // the SharQ prep (pair-4:8 and scalar 2:4), every output
        for (MaskKind mask : {MaskKind::pair48, MaskKind::scalar24}) {
          std::vector<std::vector<uint8_t>> got[2];
          for (int fused = 0; fused < 2; ++fused) {
            SharqOutputs o(M, K);
            PrepSpec spec;
            spec.mask = mask;
            spec.act_scale = gs;
            spec.input = fused ? PrepInput::swiglu : PrepInput::plain;
            sharq_prep(fused ? static_cast<const void*>(dgu.get()) : dx.get(), dt, M, K, nullptr, spec, o.out(),
                       scratch.get(), nullptr);
            SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
            got[fused] = o.bytes();
          }
          for (size_t i = 0; i < got[0].size(); ++i)
            ASSERT_EQ(got[0][i], got[1][i]) << "sharq output " << i << ", M " << M << " K " << K << " mask "
                                            << static_cast<int>(mask) << " scale " << static_cast<int>(gs);
        }
        // the NVFP4 baseline's prep
        std::vector<uint8_t> nv[2];
        for (int fused = 0; fused < 2; ++fused) {
          Nvfp4Outputs o(M, K, ld);
          nvfp4_prep(fused ? static_cast<const void*>(dgu.get()) : dx.get(), dt, M, K, nullptr, gs,
                     fused ? PrepInput::swiglu : PrepInput::plain, 0.0f, o.blocks.get(), o.g.get(), o.xp.get(), ld,
                     scratch.get(), nullptr);
          SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
          nv[fused] = o.bytes(/*with_g=*/true);
        }
        ASSERT_EQ(nv[0], nv[1]) << "nvfp4 prep, M " << M << " K " << K;
      }
    }
}

// The residual add + RMSNorm in front of the prep (PrepInput::residual_rmsnorm): the prepared
// operands equal the plain prep of T(w * (r * inv)), r = x + float(o), computed here on the host in
// the documented order (32 lane-strided partial sums, the xor butterfly), bit for bit; and the sum
// written for the next layer is r, bit for bit (x itself when no o is given). Both preps, both
// scale granularities, o given or not.
TEST(SharqPrep, FusedResidualRmsNormEqualsTheHostNormThenPrepBitForBit) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 3000;
  for (auto [M, K] : {std::pair<int64_t, int64_t>{1, 4096}, {3, 196}, {70, 1024}})
    for (DType dt : {DType::bf16, DType::f16})
      for (bool with_add : {true, false}) {
        sharq_test::Rng rng(++seed);
        std::vector<float> x(static_cast<size_t>(M * K)), w(static_cast<size_t>(K));
        for (auto& v : x) v = static_cast<float>(rng.normal()) * 3.0f;
        for (auto& v : w) v = 0.5f + static_cast<float>(rng.uniform());
        const auto o = make_input(input_values(M, K, ++seed, false, dt), dt);
        // host: r, the norm in the documented order, y rounded to the input type
        std::vector<float> r(x.size());
        std::vector<uint16_t> y(x.size());
        for (int64_t m = 0; m < M; ++m) {
          float p[32];
          for (int l = 0; l < 32; ++l) p[l] = 0.0f;
          for (int64_t i = 0; i < K; ++i) {
            const size_t at = static_cast<size_t>(m * K + i);
            r[at] = with_add ? x[at] + o.f[at] : x[at];
          }
          for (int l = 0; l < 32; ++l)
            for (int64_t i = l; i < K; i += 32) p[l] = p[l] + r[static_cast<size_t>(m * K + i)] * r[static_cast<size_t>(m * K + i)];
          for (int off = 16; off >= 1; off >>= 1) {
            float q[32];
            for (int l = 0; l < 32; ++l) q[l] = p[l] + p[l ^ off];
            for (int l = 0; l < 32; ++l) p[l] = q[l];
          }
          const float eps = 1e-5f;
          const float inv = 1.0f / std::sqrt(p[0] / static_cast<float>(K) + eps);
          for (int64_t i = 0; i < K; ++i) {
            const size_t at = static_cast<size_t>(m * K + i);
            const float v = w[static_cast<size_t>(i)] * (r[at] * inv);
            y[at] = dt == DType::bf16 ? bf16_encode(v) : fp16_encode(v);
          }
        }
        DeviceBuffer<float> dx(x.size()), dw(w.size()), dsum(x.size());
        DeviceBuffer<uint16_t> dy(y.size()), dadd(o.bits.size());
        dx.upload(x.data());
        dw.upload(w.data());
        dy.upload(y.data());
        dadd.upload(o.bits.data());
        DeviceBuffer<uint32_t> scratch(1);
        const int64_t ld = (K + 127) / 128 * 128;
        for (GlobalScale gs : {GlobalScale::per_row, GlobalScale::per_tensor}) {
          std::vector<std::vector<uint8_t>> got[2];
          for (int fused = 0; fused < 2; ++fused) {
            SharqOutputs o(M, K);
            SHARQ_CUDA_CHECK(cudaMemset(dsum.get(), 0xFF, dsum.bytes()));
            PrepSpec spec;
            spec.act_scale = gs;
            PrepOut out = o.out();
            if (fused) {
              spec.input = PrepInput::residual_rmsnorm;
              spec.eps = 1e-5f;
              spec.add = with_add ? static_cast<const void*>(dadd.get()) : nullptr;
              out.sum = dsum.get();
              sharq_prep(dx.get(), dt, M, K, dw.get(), spec, out, scratch.get(), nullptr);
            } else {
              sharq_prep(dy.get(), dt, M, K, nullptr, spec, out, scratch.get(), nullptr);
            }
            SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
            got[fused] = o.bytes();
            if (fused) {
              const auto sum = dsum.to_host();
              for (size_t i = 0; i < sum.size(); ++i) ASSERT_EQ(f32_bits(sum[i]), f32_bits(r[i])) << "residual sum " << i;
            }
          }
          for (size_t i = 0; i < got[0].size(); ++i)
            ASSERT_EQ(got[0][i], got[1][i]) << "sharq output " << i << ", M " << M << " K " << K << " scale "
                                            << static_cast<int>(gs) << " add " << with_add;
          // the NVFP4 baseline's prep, blocks and plane
          std::vector<uint8_t> nv[2];
          for (int fused = 0; fused < 2; ++fused) {
            Nvfp4Outputs o(M, K, ld);
            if (fused)
              nvfp4_prep(dx.get(), dt, M, K, dw.get(), gs, PrepInput::residual_rmsnorm, 1e-5f, o.blocks.get(), o.g.get(),
                         o.xp.get(), ld, scratch.get(), nullptr, with_add ? static_cast<const void*>(dadd.get()) : nullptr,
                         nullptr);
            else
              nvfp4_prep(dy.get(), dt, M, K, nullptr, gs, PrepInput::plain, 0.0f, o.blocks.get(), o.g.get(), o.xp.get(), ld,
                         scratch.get(), nullptr);
            SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
            nv[fused] = o.bytes(/*with_g=*/false);
          }
          ASSERT_EQ(nv[0], nv[1]) << "nvfp4 prep, M " << M << " K " << K;
        }
      }
}

TEST(SharqPrep, RejectsUnsupportedInputsBeforeLaunch) {
  // argument checks come before any CUDA call: these run without a GPU too
  PrepSpec spec;
  PrepOut out;
  const uint16_t dummy[8] = {};
  auto expect_throw = [&](auto fn, const char* needle) {
    try {
      fn();
      FAIL() << "expected std::invalid_argument containing '" << needle << "'";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_throw([&] { sharq_prep(dummy, DType::bf16, 1, kPrepMaxK + 32, nullptr, spec, out, nullptr, nullptr); }, "exceeds");
  expect_throw([&] { sharq_prep(nullptr, DType::bf16, 2, 64, nullptr, spec, out, nullptr, nullptr); }, "x is null");
  PrepSpec hif = spec;
  hif.fmt = SharqFormat::hif4;
  expect_throw([&] { sharq_prep(dummy, DType::bf16, 1, 64, nullptr, hif, out, nullptr, nullptr); }, "HiF4");
  PrepSpec rms = spec;
  rms.input = PrepInput::rmsnorm;
  expect_throw([&] { sharq_prep(dummy, DType::bf16, 1, 64, nullptr, rms, out, nullptr, nullptr); }, "rmsnorm");
  PrepSpec mx = spec;
  mx.fmt = SharqFormat::mxfp4;
  PrepOut planes;
  planes.x_plane = reinterpret_cast<__half*>(8);
  expect_throw([&] { sharq_prep(dummy, DType::bf16, 1, 64, nullptr, mx, planes, nullptr, nullptr); }, "NVFP4-only");
  PrepSpec pt = spec;
  pt.act_scale = GlobalScale::per_tensor;
  expect_throw([&] { sharq_prep(dummy, DType::bf16, 1, 64, nullptr, pt, out, nullptr, nullptr); }, "scratch");
  PrepOut badld;
  badld.ld = 100;
  expect_throw([&] { sharq_prep(dummy, DType::bf16, 1, 64, nullptr, spec, badld, nullptr, nullptr); }, "leading dimension");
}

}  // namespace
