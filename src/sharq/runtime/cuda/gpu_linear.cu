#include "sharq/runtime/cuda/gpu_linear.h"

#include <stdexcept>

#include <fmt/format.h>

#include "sharq/core/hd.h"
#include "sharq/formats/minifloat.h"
#include "sharq/kernels/cuda/transformer_ops.h"
#include "sharq/kernels/cuda/weight_quant.h"

namespace sharq::cuda {

DType act_dtype(const Scheme& s) { return s.kind == SchemeKind::fp16 ? DType::f16 : DType::bf16; }

namespace {

void check_scheme(const Scheme& s, const char* who) {
  const std::string why = scheme_unsupported_reason(s, Device::cuda);
  if (!why.empty()) throw std::invalid_argument(fmt::format("{}: {}", who, why));
}

bool two_paths(const Scheme& s) { return s.kind == SchemeKind::sharq && !s.merged; }

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// cuBLASLt schemes: y[m][n] = round(y[m][n] + bias[n]), the bias after the GEMM's own rounding (the
// FP4 GEMMs add it in their FP32 epilogue instead).
template <class T>
__global__ void add_bias_kernel(T* y, int64_t M, int64_t N, const float* bias) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= M * N) return;
  const float b = bias[i % N];
  if constexpr (std::is_same_v<T, __half>) {
    y[i] = __float2half_rn(__half2float(y[i]) + b);
  } else {
    y[i] = __float2bfloat16_rn(__bfloat162float(y[i]) + b);
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------------
GpuActivations::GpuActivations(const Scheme& s, int64_t K, int64_t max_m) : scheme_(s), K_(K), max_m_(max_m) {
  check_scheme(s, "GpuActivations");
  if (K <= 0 || K > kPrepMaxK) throw std::invalid_argument(fmt::format("GpuActivations: K = {} (1 .. {})", K, kPrepMaxK));
  if (max_m < 1) throw std::invalid_argument(fmt::format("GpuActivations: max_m = {} (>= 1)", max_m));
  const auto cells = [&](int64_t ld) { return static_cast<size_t>(max_m * ld); };
  switch (s.kind) {
    case SchemeKind::fp8:
      ld_ = round_up(K, 16);
      q8_ = DeviceBuffer<uint8_t>(cells(ld_));
      if (ld_ != K) {  // the padding stays 0 forever (complete before any stream's kernel: see DeviceBuffer::upload)
        SHARQ_CUDA_CHECK(cudaMemset(q8_.get(), 0, q8_.bytes()));
        SHARQ_CUDA_CHECK(cudaStreamSynchronize(cudaStreamLegacy));
      }
      g_ = DeviceBuffer<float>(static_cast<size_t>(max_m));
      g8_rows_ = DeviceBuffer<float>(static_cast<size_t>(max_m));
      break;
    case SchemeKind::w4a16:
      ld_ = round_up(K, 128);
      if (ld_ != K) {  // a zero-padded copy of X (the padding stays 0 forever)
        a0_ = DeviceBuffer<__half>(cells(ld_));
        SHARQ_CUDA_CHECK(cudaMemset(a0_.get(), 0, a0_.bytes()));
        SHARQ_CUDA_CHECK(cudaStreamSynchronize(cudaStreamLegacy));
      }
      break;
    case SchemeKind::nvfp4:
    case SchemeKind::sharq:
      ld_ = round_up(K, 128);
      a0_ = DeviceBuffer<__half>(cells(ld_));
      if (two_paths(s)) a1_ = DeviceBuffer<__half>(cells(ld_));
      g_ = DeviceBuffer<float>(static_cast<size_t>(max_m));
      scratch_ = DeviceBuffer<uint32_t>(1);
      break;
    default:  // fp16, bf16: X itself
      ld_ = K;
      break;
  }
}

GpuActivations::~GpuActivations() = default;

size_t GpuActivations::bytes() const {
  return a0_.bytes() + a1_.bytes() + q8_.bytes() + g_.bytes() + g8_rows_.bytes() + scratch_.bytes();
}

GpuActivations::Host GpuActivations::to_host() const {
  Host h;
  h.M = M_;
  h.ld = ld_;
  SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
  const size_t n = static_cast<size_t>(M_ * ld_);
  auto copy16 = [&](const DeviceBuffer<__half>& b, std::vector<uint16_t>& v) {
    if (!b.get() || !n) return;
    v.resize(n);
    SHARQ_CUDA_CHECK(cudaMemcpy(v.data(), b.get(), n * 2, cudaMemcpyDeviceToHost));
  };
  copy16(a0_, h.a0);
  copy16(a1_, h.a1);
  if (q8_.get() && n) {
    h.codes.resize(n);
    SHARQ_CUDA_CHECK(cudaMemcpy(h.codes.data(), q8_.get(), n, cudaMemcpyDeviceToHost));
  }
  if (g_.get() && M_) {
    const bool per_tensor = scheme_.has_act_global_scale() && scheme_.act_scale == GlobalScale::per_tensor;
    h.row_scale.resize(per_tensor ? 1 : static_cast<size_t>(M_));
    SHARQ_CUDA_CHECK(cudaMemcpy(h.row_scale.data(), g_.get(), h.row_scale.size() * 4, cudaMemcpyDeviceToHost));
  }
  return h;
}

bool GpuActivations::gathers() const {
  const bool per_tensor = scheme_.has_act_global_scale() && scheme_.act_scale == GlobalScale::per_tensor;
  switch (scheme_.kind) {
    case SchemeKind::fp8: return true;
    case SchemeKind::w4a16: return a0_.get() != nullptr;
    case SchemeKind::nvfp4:
    case SchemeKind::sharq: return !per_tensor;
    default: return false;
  }
}

void GpuActivations::gather(const GpuActivations& src, const int32_t* rows, int64_t M, cudaStream_t stream) {
  if (!(src.scheme_ == scheme_) || src.K_ != K_)
    throw std::invalid_argument(fmt::format("GpuActivations::gather: the source is for scheme '{}', K = {}; these for '{}', K = {}",
                                            src.scheme_.name(), src.K_, scheme_.name(), K_));
  if (!gathers())
    throw std::invalid_argument(fmt::format("GpuActivations::gather: scheme '{}', K = {} keeps no per-row prepared input "
                                            "(gather the input rows and prepare them instead)", scheme_.name(), K_));
  if (M < 0 || M > max_m_) throw std::invalid_argument(fmt::format("GpuActivations::gather: M = {} (0 .. max_m = {})", M, max_m_));
  if (M > 0 && !rows) throw std::invalid_argument("GpuActivations::gather: null rows");
  M_ = M;
  x_ = nullptr;
  front_ = PrepInput::plain;
  front_w_ = nullptr;
  front_eps_ = 0.0f;
  if (M == 0) return;
  if (a0_.get()) gather_rows(src.a0_.get(), rows, M, ld_ * 2, a0_.get(), stream);
  if (a1_.get()) gather_rows(src.a1_.get(), rows, M, ld_ * 2, a1_.get(), stream);
  if (q8_.get()) gather_rows(src.q8_.get(), rows, M, ld_, q8_.get(), stream);
  if (g_.get()) gather_rows(src.g_.get(), rows, M, sizeof(float), g_.get(), stream);
}

// ------------------------------------------------------------------------------------------------
GpuLinear::GpuLinear(const Scheme& scheme, const float* W, int64_t N, int64_t K, const GpuLinearOptions& opt,
                     CublasLtGemm* blas, const float* bias)
    : scheme_(scheme), N_(N), K_(K), opt_(opt), blas_(blas) {
  if (!W) throw std::invalid_argument("GpuLinear: null weight matrix");
  check_shape(N, K);
  DeviceBuffer<float> d(static_cast<size_t>(N * K));  // FP32 staging, quantized on the device
  d.upload(W);
  init(d.get(), bias, nullptr);
  SHARQ_CUDA_CHECK(cudaDeviceSynchronize());  // the staging buffer is freed on return
}

GpuLinear::GpuLinear(const Scheme& scheme, const DeviceMatrix& W, const GpuLinearOptions& opt, CublasLtGemm* blas,
                     const float* bias, cudaStream_t stream)
    : scheme_(scheme), N_(W.rows), K_(W.cols), opt_(opt), blas_(blas) {
  if (!W.data) throw std::invalid_argument("GpuLinear: null weight matrix");
  check_shape(N_, K_);
  init(W.data, bias, stream, W.parts);
}

void GpuLinear::check_shape(int64_t N, int64_t K) const {
  check_scheme(scheme_, "GpuLinear");
  if (N <= 0 || K <= 0 || K > kPrepMaxK || N > (int64_t{1} << 31))
    throw std::invalid_argument(fmt::format("GpuLinear: weight shape N = {}, K = {} (both > 0, K <= {})", N, K, kPrepMaxK));
  if (opt_.max_m < 1) throw std::invalid_argument(fmt::format("GpuLinear: max_m = {} (>= 1)", opt_.max_m));
  if (opt_.gemv16_max_m < 0 || opt_.gemv16_max_m > kGemv16MaxM)
    throw std::invalid_argument(fmt::format("GpuLinear: gemv16_max_m = {} (0 .. {})", opt_.gemv16_max_m, kGemv16MaxM));
}

// The weights of every scheme from FP32 on the device, by the shared quantizers
// (kernels/cuda/weight_quant.h): bit-identical to the CPU Linear's (runtime/cpu/linear.cpp).
void GpuLinear::init(const float* Wd, const float* bias, cudaStream_t stream, const std::vector<int64_t>& parts) {
  const int64_t N = N_, K = K_;
  switch (scheme_.kind) {
    case SchemeKind::fp16:
    case SchemeKind::bf16:
      if (!blas_) throw std::invalid_argument(fmt::format("GpuLinear: scheme '{}' needs a cuBLASLt handle", scheme_.name()));
      w16_ = DeviceBuffer<uint16_t>(static_cast<size_t>(N * K));
      convert_weights_16(Wd, N * K, scheme_.kind == SchemeKind::fp16, w16_.get(), stream);
      break;
    case SchemeKind::fp8:  // per-output-channel E4M3 (quant/fp8.h)
      if (!blas_) throw std::invalid_argument("GpuLinear: scheme 'fp8' needs a cuBLASLt handle");
      // cuBLASLt's FP8 kernels need 16-byte leading dimensions: K padded to 16 (zero codes) and N to
      // 8 (zero rows, scale 1) with the output through a padded scratch (y8_) when N % 8 != 0
      ld8_ = round_up(K, 16);
      n8_ = round_up(N, 8);
      w8_ = DeviceBuffer<uint8_t>(static_cast<size_t>(n8_ * ld8_));
      w8_scale_ = DeviceBuffer<float>(static_cast<size_t>(n8_));
      quantize_fp8_weights(Wd, N, K, n8_, ld8_, w8_.get(), w8_scale_.get(), stream);
      if (n8_ != N) y8_ = DeviceBuffer<uint16_t>(static_cast<size_t>(opt_.max_m * n8_));
      break;
    default:  // FP4 weights: NVFP4-32 (SharQ's W32) or NVFP4-16, one per-tensor g (per stacked part)
      w4_ = quantize_fp4_weights(Wd, N, K, scheme_.fp4_weight_block(), stream, parts);
      break;
  }
  if (bias) {
    bias_ = DeviceBuffer<float>(static_cast<size_t>(N));
    bias_.upload(bias);
  }
  init_scratch();
}

GpuLinear::GpuLinear(const Scheme& scheme, const Fp4Tiles& w, const GpuLinearOptions& opt, const float* bias)
    : scheme_(scheme), N_(w.N), K_(w.K), opt_(opt) {
  check_scheme(scheme, "GpuLinear");
  if (!scheme.is_fp4_weight())
    throw std::invalid_argument(fmt::format("GpuLinear: scheme '{}' does not take packed FP4 weights", scheme.name()));
  if (w.block != scheme.fp4_weight_block())
    throw std::invalid_argument(fmt::format("GpuLinear: scheme '{}' needs NVFP4-{} weights, the packed tensor has "
                                            "{}-element blocks", scheme.name(), scheme.fp4_weight_block(), w.block));
  if (opt.max_m < 1) throw std::invalid_argument(fmt::format("GpuLinear: max_m = {} (>= 1)", opt.max_m));
  w4_ = DeviceFp4Weights::upload(w);
  if (bias) {
    bias_ = DeviceBuffer<float>(static_cast<size_t>(N_));
    bias_.upload(bias);
  }
  init_scratch();
}

GpuLinear::GpuLinear(const Scheme& scheme, const Fp8Stored& w, const GpuLinearOptions& opt, CublasLtGemm* blas,
                     const float* bias)
    : scheme_(scheme), N_(w.N), K_(w.K), opt_(opt), blas_(blas) {
  check_shape(N_, K_);
  if (scheme.kind != SchemeKind::fp8)
    throw std::invalid_argument(fmt::format("GpuLinear: scheme '{}' does not take stored FP8 weights", scheme.name()));
  if (!blas_) throw std::invalid_argument("GpuLinear: scheme 'fp8' needs a cuBLASLt handle");
  if (!w.codes || !w.scales) throw std::invalid_argument("GpuLinear: null stored FP8 weights");
  ld8_ = round_up(K_, 16);
  n8_ = round_up(N_, 8);
  std::vector<uint8_t> codes(static_cast<size_t>(n8_ * ld8_), 0);  // zero codes: E4M3 +0
  std::vector<float> scales(static_cast<size_t>(n8_), 1.0f);
  for (int64_t n = 0; n < N_; ++n) {
    std::memcpy(codes.data() + n * ld8_, w.codes + n * K_, static_cast<size_t>(K_));
    scales[static_cast<size_t>(n)] = w.scales[n];
  }
  w8_ = DeviceBuffer<uint8_t>(codes.size());
  w8_.upload(codes.data());
  w8_scale_ = DeviceBuffer<float>(scales.size());
  w8_scale_.upload(scales.data());
  if (n8_ != N_) y8_ = DeviceBuffer<uint16_t>(static_cast<size_t>(opt_.max_m * n8_));
  if (bias) {
    bias_ = DeviceBuffer<float>(static_cast<size_t>(N_));
    bias_.upload(bias);
  }
  init_scratch();
}

GpuLinear::~GpuLinear() = default;

void GpuLinear::init_scratch() {
  if (scheme_.is_fp4_weight()) {
    fp4_gemm_plan(opt_.max_m, w4_, opt_.kernel, opt_.splits, opt_.batch_invariant);  // a forced family must run max_m
    ws_need_ = fp4_gemm_workspace_bytes(opt_.max_m, w4_, opt_.kernel, opt_.splits, opt_.batch_invariant);
  }
  if (opt_.own_scratch) {
    own_ = std::make_unique<GpuActivations>(scheme_, K_, opt_.max_m);
    ws_ = DeviceBuffer<uint8_t>(ws_need_);
  }
}

size_t GpuLinear::weight_bytes() const {
  return w4_.bytes() + w16_.bytes() + w8_.bytes() + w8_scale_.bytes() + bias_.bytes() + y8_.bytes();
}

GpuActivations& GpuLinear::own_activations() {
  if (!own_) throw std::invalid_argument("GpuLinear: built without own_scratch: pass a GpuActivations");
  return *own_;
}

void GpuLinear::prepare(const void* x, int64_t M, GpuActivations& acts, cudaStream_t stream) const {
  prepare_input(x, M, acts, stream, Front{});
}

bool GpuLinear::fused_prep() const { return scheme_.kind == SchemeKind::nvfp4 || scheme_.kind == SchemeKind::sharq; }

bool GpuLinear::gemv(int64_t M) const {
  return (scheme_.kind == SchemeKind::fp16 || scheme_.kind == SchemeKind::bf16) && M <= opt_.gemv16_max_m &&
         M <= opt_.max_m && gemv16_supports(M, N_, K_);
}

void GpuLinear::prepare_swiglu(const void* gu, int64_t M, GpuActivations& acts, cudaStream_t stream) const {
  if (!fused_prep() && !gemv(M))
    throw std::invalid_argument(fmt::format("GpuLinear({}, N = {}, K = {})::prepare_swiglu: the scheme has no fused "
                                            "prep for M = {} (nvfp4 and sharq do; fp16 and bf16 for M <= gemv16_max_m = {})",
                                            scheme_.name(), N_, K_, M, opt_.gemv16_max_m));
  Front f;
  f.input = PrepInput::swiglu;
  prepare_input(gu, M, acts, stream, f);
}

void GpuLinear::prepare_norm(const float* x, const void* add, const float* w, float eps, int64_t M, float* x_out,
                             GpuActivations& acts, cudaStream_t stream) const {
  const auto who = [this] { return where("prepare_norm"); };  // (formatted on the error path only)
  if (!fused_prep() && !(gemv(M) && !add))
    throw std::invalid_argument(fmt::format("{}: the scheme has no fused prep for M = {}{} (nvfp4 and sharq do; fp16 "
                                            "and bf16 for M <= gemv16_max_m = {} without a residual add)",
                                            who(), M, add ? " with a residual add" : "", opt_.gemv16_max_m));
  if (!w) throw std::invalid_argument(who() + ": null norm weight");
  if (add && (!x_out || x_out == x))
    throw std::invalid_argument(who() + ": the residual sum needs its own output buffer (not x: other blocks read it)");
  Front f;
  f.input = PrepInput::residual_rmsnorm;
  f.rms_w = w;
  f.eps = eps;
  f.add = add;
  f.sum = add ? x_out : nullptr;
  prepare_input(x, M, acts, stream, f);
}

std::string GpuLinear::where(const char* method) const {
  return fmt::format("GpuLinear({}, N = {}, K = {})::{}", scheme_.name(), N_, K_, method);
}

void GpuLinear::check_activations(const GpuActivations& acts, const char* method) const {
  if (!(acts.scheme_ == scheme_) || acts.K_ != K_)
    throw std::invalid_argument(fmt::format("{}: the activations are for scheme '{}', K = {}", where(method),
                                            acts.scheme_.name(), acts.K_));
}

void GpuLinear::prepare_input(const void* x, int64_t M, GpuActivations& acts, cudaStream_t stream,
                              const Front& f) const {
  const auto who = [this] { return where("prepare"); };  // (formatted on the error path only)
  check_activations(acts, "prepare");
  if (M < 0 || M > acts.max_m_)
    throw std::invalid_argument(fmt::format("{}: M = {} (0 .. max_m = {})", who(), M, acts.max_m_));
  if (M > 0 && !x) throw std::invalid_argument(fmt::format("{}: null input", who()));
  acts.M_ = M;
  acts.x_ = x;
  acts.front_ = f.input;
  acts.front_w_ = static_cast<const float*>(f.rms_w);
  acts.front_eps_ = f.eps;
  if (M == 0) return;
  const int64_t ld = acts.ld_;
  switch (scheme_.kind) {
    case SchemeKind::fp16:
    case SchemeKind::bf16:
      break;
    case SchemeKind::fp8:
      quantize_fp8_per_row(x, M, K_, acts.q8_.get(), ld, acts.g_.get(), stream);
      break;
    case SchemeKind::w4a16:
      if (K_ != ld)  // into the zero-padded plane
        SHARQ_CUDA_CHECK(cudaMemcpy2DAsync(acts.a0_.get(), ld * 2, x, K_ * 2, K_ * 2, M, cudaMemcpyDeviceToDevice, stream));
      break;
    case SchemeKind::nvfp4:
      nvfp4_prep(x, DType::bf16, M, K_, f.rms_w, scheme_.act_scale, f.input, f.eps, nullptr, acts.g_.get(), acts.a0_.get(),
                 ld, acts.scratch_.get(), stream, f.add, f.sum);
      break;
    default: {  // sharq
      PrepSpec spec;
      spec.fmt = SharqFormat::nvfp4;
      spec.mask = scheme_.mask.kind;
      spec.score = scheme_.mask.score;
      spec.act_scale = scheme_.act_scale;
      spec.input = f.input;
      spec.eps = f.eps;
      spec.add = f.add;
      PrepOut out;
      out.sum = f.sum;
      out.g = acts.g_.get();
      out.ld = ld;
      if (two_paths(scheme_)) {
        out.s_plane = acts.a0_.get();
        out.r_plane = acts.a1_.get();
      } else {
        out.x_plane = acts.a0_.get();
      }
      sharq_prep(x, DType::bf16, M, K_, f.rms_w, spec, out, acts.scratch_.get(), stream);
      break;
    }
  }
}

void GpuLinear::gemm(const GpuActivations& acts, void* y, cudaStream_t stream, void* workspace, float* y_f32) const {
  const auto who = [this] { return where("gemm"); };  // (formatted on the error path only)
  check_activations(acts, "gemm");
  if (acts.M_ == 0) return;
  if (!y && !y_f32) throw std::invalid_argument(fmt::format("{}: null output", who()));
  if (y_f32 && !scheme_.is_fp4_weight())
    throw std::invalid_argument(fmt::format("{}: the FP32 test output exists for the FP4 schemes only", who()));
  gemm_rows_impl(acts, all_rows(acts), y, y_f32, stream, workspace);
}

void GpuLinear::gemm_rows(const GpuActivations& acts, int64_t row0, int64_t rows, void* y, cudaStream_t stream,
                          void* workspace) const {
  const auto who = [this] { return where("gemm_rows"); };  // (formatted on the error path only)
  check_activations(acts, "gemm_rows");
  if (row0 < 0 || rows < 0 || row0 + rows > acts.M_)
    throw std::invalid_argument(fmt::format("{}: rows {} .. {} of a prepared input of {}", who(), row0, row0 + rows - 1, acts.M_));
  if (rows > opt_.max_m)
    throw std::invalid_argument(fmt::format("{}: {} rows exceed the layer's max_m = {}", who(), rows, opt_.max_m));
  if (rows == 0) return;
  if (!y) throw std::invalid_argument(fmt::format("{}: null output", who()));
  if (acts.front_ != PrepInput::plain && !fused_prep())
    throw std::invalid_argument(who() + ": the activations hold a fused input (prepare_norm / prepare_swiglu)");
  if (rows != acts.M_ && scheme_.has_act_global_scale() && scheme_.act_scale == GlobalScale::per_tensor)
    throw std::invalid_argument(who() + ": per-tensor activation scales cover the whole prepared input, not some of its rows");
  gemm_rows_impl(acts, Rows{row0, rows}, y, nullptr, stream, workspace);
}

void GpuLinear::gemm_rows_impl(const GpuActivations& acts, Rows r, void* y, float* y_f32, cudaStream_t stream,
                               void* workspace) const {
  switch (scheme_.kind) {
    case SchemeKind::fp16:
    case SchemeKind::bf16:
      if (gemv_takes(acts, r)) {
        gemm_gemv(acts, r, y, false, stream);  // the bias inside
        return;
      }
      if (acts.front_ != PrepInput::plain)
        throw std::invalid_argument(where("gemm") + ": the activations hold a fused input (prepare_norm / prepare_swiglu): the GEMV's only");
      cublas_16(acts, r, y, stream);
      break;
    case SchemeKind::fp8: {
      const uint8_t* q = acts.q8_.get() + r.row0 * acts.ld_;  // (ld % 16 == 0: still 16-byte aligned)
      const float* g = acts.g_.get() + r.row0;
      if (reinterpret_cast<uintptr_t>(g) % 16 != 0) {  // cuBLASLt takes a scale vector 16-byte aligned only
        SHARQ_CUDA_CHECK(cudaMemcpyAsync(acts.g8_rows_.get(), g, static_cast<size_t>(r.n) * sizeof(float),
                                         cudaMemcpyDeviceToDevice, stream));
        g = acts.g8_rows_.get();
      }
      if (n8_ == N_) {
        blas_->matmul(BlasType::fp8_e4m3_rowwise, q, w8_.get(), y, r.n, N_, ld8_, g, w8_scale_.get(), stream);
      } else {  // through the padded scratch, then the N real columns of each row
        blas_->matmul(BlasType::fp8_e4m3_rowwise, q, w8_.get(), y8_.get(), r.n, n8_, ld8_, g, w8_scale_.get(), stream);
        SHARQ_CUDA_CHECK(cudaMemcpy2DAsync(y, N_ * 2, y8_.get(), n8_ * 2, N_ * 2, r.n, cudaMemcpyDeviceToDevice, stream));
      }
      break;
    }
    default:
      gemm_fp4(acts, r, y, y_f32, Epilogue{}, stream, workspace);
      return;
  }
  if (bias_.get()) {  // cuBLASLt schemes: after the GEMM's 16-bit rounding (one extra rounding)
    const int64_t n = r.n * N_;
    const unsigned blocks = static_cast<unsigned>((n + 255) / 256);
    if (act_dtype(scheme_) == DType::f16)
      add_bias_kernel<__half><<<blocks, 256, 0, stream>>>(static_cast<__half*>(y), r.n, N_, bias_.get());
    else
      add_bias_kernel<__nv_bfloat16><<<blocks, 256, 0, stream>>>(static_cast<__nv_bfloat16*>(y), r.n, N_, bias_.get());
    SHARQ_CUDA_CHECK(cudaGetLastError());
  }
}

bool GpuLinear::fuses(Fp4Epilogue e, int64_t M) const {
  if (!scheme_.is_fp4_weight() || M < 1 || M > opt_.max_m) return false;
  return fp4_gemm_fuses(fp4_gemm_plan(M, w4_, opt_.kernel, opt_.splits, opt_.batch_invariant), e, N_);
}

bool GpuLinear::accumulates() const {
  return (scheme_.kind == SchemeKind::fp16 || scheme_.kind == SchemeKind::bf16) && !bias_.get();
}

void GpuLinear::gemm_accumulate(const GpuActivations& acts, float* x, cudaStream_t stream) const {
  const auto who = [this] { return where("gemm_accumulate"); };  // (formatted on the error path only)
  check_activations(acts, "gemm_accumulate");
  if (!accumulates())
    throw std::invalid_argument(fmt::format("{}: only fp16 and bf16 layers without a bias add into FP32 rows", who()));
  if (acts.M_ == 0) return;
  if (!x) throw std::invalid_argument(fmt::format("{}: null residual rows", who()));
  if (gemv_takes(acts, all_rows(acts))) {
    gemm_gemv(acts, all_rows(acts), x, true, stream);
    return;
  }
  if (acts.front_ != PrepInput::plain) throw std::logic_error(who() + ": a fused input without the GEMV");
  blas_->matmul(scheme_.kind == SchemeKind::fp16 ? BlasType::f16_f32out : BlasType::bf16_f32out, acts.x_, w16_.get(), x,
                acts.M_, N_, K_, nullptr, nullptr, stream, 1.0f, /*accumulate=*/true);
}

void GpuLinear::gemm_cublas(const GpuActivations& acts, void* y, cudaStream_t stream) const {
  const auto who = [this] { return where("gemm_cublas"); };  // (formatted on the error path only)
  check_activations(acts, "gemm_cublas");
  if (scheme_.kind != SchemeKind::fp16 && scheme_.kind != SchemeKind::bf16)
    throw std::invalid_argument(who() + ": fp16 and bf16 only");
  if (acts.front_ != PrepInput::plain)
    throw std::invalid_argument(who() + ": the activations hold a fused input (prepare_norm / prepare_swiglu): the GEMV's only");
  if (acts.M_ == 0) return;
  if (!y) throw std::invalid_argument(fmt::format("{}: null output", who()));
  cublas_16(acts, all_rows(acts), y, stream);
}

void GpuLinear::cublas_16(const GpuActivations& acts, Rows r, void* y, cudaStream_t stream) const {
  const void* x = static_cast<const uint8_t*>(acts.x_) + r.row0 * K_ * 2;
  blas_->matmul(scheme_.kind == SchemeKind::fp16 ? BlasType::f16 : BlasType::bf16, x, w16_.get(), y, r.n, N_, K_, nullptr,
                nullptr, stream);
}

bool GpuLinear::gemv_takes(const GpuActivations& acts, Rows r) const {
  // a plain X that is not 16-byte aligned (a caller's view into a larger array) goes to cuBLASLt
  if (!gemv(r.n)) return false;
  if (acts.front_ != PrepInput::plain) return r.row0 == 0 && r.n == acts.M_;
  return (reinterpret_cast<uintptr_t>(acts.x_) + static_cast<uintptr_t>(r.row0 * K_ * 2)) % 16 == 0;
}

void GpuLinear::gemm_gemv(const GpuActivations& acts, Rows r, void* y, bool accumulate, cudaStream_t stream) const {
  Gemv16Args a;
  a.t = act_dtype(scheme_);
  a.w = w16_.get();
  a.N = N_;
  a.K = K_;
  a.M = r.n;
  switch (acts.front_) {
    case PrepInput::residual_rmsnorm:
      a.input = Gemv16Input::rmsnorm;
      a.xr = static_cast<const float*>(acts.x_);
      a.norm_w = acts.front_w_;
      a.eps = acts.front_eps_;
      break;
    case PrepInput::swiglu:
      a.input = Gemv16Input::swiglu;
      a.x = acts.x_;
      a.ldx = 2 * K_;
      break;
    default:
      a.input = Gemv16Input::plain;
      a.x = static_cast<const uint8_t*>(acts.x_) + r.row0 * K_ * 2;
      a.ldx = K_;
      break;
  }
  a.output = accumulate ? Gemv16Output::accumulate : Gemv16Output::store;
  a.y = y;
  a.ldy = N_;
  a.bias = accumulate ? nullptr : bias_.get();
  gemv16(a, stream);
}

void GpuLinear::gemm(const GpuActivations& acts, const Epilogue& ep, void* y, cudaStream_t stream, void* workspace) const {
  const auto who = [this] { return where("gemm"); };  // (formatted on the error path only)
  check_activations(acts, "gemm");
  if (acts.M_ == 0) return;
  if (ep.kind == Fp4Epilogue::none || !fuses(ep.kind, acts.M_))
    throw std::invalid_argument(fmt::format("{}: no fused {} epilogue for M = {} (fuses())", who(),
                                            ep.kind == Fp4Epilogue::swiglu ? "swiglu" : "add_rmsnorm", acts.M_));
  if (!y) throw std::invalid_argument(fmt::format("{}: null output", who()));
  gemm_fp4(acts, all_rows(acts), y, nullptr, ep, stream, workspace);
}

void GpuLinear::gemm_fp4(const GpuActivations& acts, Rows r, void* y, float* y_f32, const Epilogue& ep, cudaStream_t stream,
                         void* workspace) const {
  const int64_t M = r.n;
  const int64_t off = r.row0 * acts.ld_;  // elements of a plane (X itself for w4a16 without padding: ld = K = Kp)
  if (!workspace) workspace = ws_.get();
  const size_t ws_bytes = workspace == ws_.get() ? ws_.bytes() : ws_need_;
  Fp4GemmArgs a;
  a.M = M;
  a.lda = w4_.Kp;
  a.y = static_cast<__nv_bfloat16*>(y);
  a.y_f32 = y_f32;
  a.ldy = ep.kind == Fp4Epilogue::swiglu ? N_ / 2 : N_;
  a.bias = bias_.get();  // fused into the epilogue: one rounding, as the CPU
  a.epilogue = ep.kind;
  a.x = ep.x;
  a.norm_w = ep.norm_w;
  a.eps = ep.eps;
  if (scheme_.kind == SchemeKind::w4a16) {
    a.adt = DType::bf16;
    a.a0 = acts.a0_.get() ? static_cast<const void*>(acts.a0_.get() + off)
                          : static_cast<const void*>(static_cast<const __nv_bfloat16*>(acts.x_) + off);
  } else {
    const bool per_tensor = scheme_.act_scale == GlobalScale::per_tensor;
    a.a0 = acts.a0_.get() + off;
    a.a1 = two_paths(scheme_) ? acts.a1_.get() + off : nullptr;
    a.row_scale = acts.g_.get() + (per_tensor ? 0 : r.row0);
    a.row_scale_count = per_tensor ? 1 : M;
  }
  fp4_gemm(a, w4_, workspace, ws_bytes, stream, opt_.kernel, opt_.splits, opt_.batch_invariant);
}

void GpuLinear::forward(const void* x, int64_t M, void* y, cudaStream_t stream) {
  GpuActivations& a = own_activations();
  prepare(x, M, a, stream);
  gemm(a, y, stream);
}

}  // namespace sharq::cuda
