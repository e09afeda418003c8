#include "sharq/kernels/cuda/gpu_linear.h"

#include <stdexcept>

#include <fmt/format.h>

namespace sharq::cuda {

const char* gpu_scheme_name(GpuScheme s) {
  switch (s) {
    case GpuScheme::sharq_exact: return "sharq-exact";
    case GpuScheme::sharq_merged: return "sharq-merged";
    case GpuScheme::nvfp4: return "nvfp4";
    case GpuScheme::w4a16: return "w4a16";
  }
  return "?";
}

namespace {
Fp4Tiles quantize_weights(GpuScheme s, const float* W, int64_t N, int64_t K) {
  if (!W) throw std::invalid_argument("GpuLinear: null weight matrix");
  if (N <= 0 || K <= 0 || N % 8 != 0)
    throw std::invalid_argument(fmt::format("GpuLinear: weight shape N = {}, K = {} (N must be a positive multiple of 8)", N, K));
  if (K > kPrepMaxK) throw std::invalid_argument(fmt::format("GpuLinear: K = {} exceeds {}", K, kPrepMaxK));
  // exactly the CPU Linear's weight quantization (kernels/cpu/linear.cpp)
  if (s == GpuScheme::sharq_exact || s == GpuScheme::sharq_merged)
    return pack_fp4_tiles(quantize_matrix<Nvfp4_32>(W, N, K, GlobalScale::per_tensor));
  return pack_fp4_tiles(quantize_matrix<Nvfp4_16>(W, N, K, GlobalScale::per_tensor));
}
}  // namespace

GpuLinear::GpuLinear(GpuScheme scheme, const float* W, int64_t N, int64_t K, const GpuLinearOptions& opt)
    : scheme_(scheme), N_(N), K_(K), opt_(opt), w_(DeviceFp4Weights::upload(quantize_weights(scheme, W, N, K))) {
  if (opt.mask != MaskKind::pair48 && opt.mask != MaskKind::scalar24)
    throw std::invalid_argument("GpuLinear: the mask must be pair-4:8 or scalar 2:4");
  if (opt.act_scale == GlobalScale::none && scheme != GpuScheme::w4a16)
    throw std::invalid_argument("GpuLinear: NVFP4 activations need a per-tensor or per-token scale");
}

GpuLinear::~GpuLinear() = default;

void GpuLinear::reserve(int64_t M) {
  if (M <= cap_) return;
  const int64_t ld = w_.Kp;
  a0_ = DeviceBuffer<__half>(static_cast<size_t>(M * ld));
  a1_ = DeviceBuffer<__half>(scheme_ == GpuScheme::sharq_exact ? static_cast<size_t>(M * ld) : 0);
  g_ = DeviceBuffer<float>(static_cast<size_t>(M));
  scratch_ = DeviceBuffer<uint32_t>(1);
  size_t ws = 0;
  for (int64_t m = 1; m <= M; ++m) ws = std::max(ws, fp4_gemm_workspace_bytes(m, w_));
  ws_ = DeviceBuffer<uint8_t>(ws);
  if (scheme_ == GpuScheme::w4a16 && K_ != ld)  // the padding columns stay 0 forever
    SHARQ_CUDA_CHECK(cudaMemset(a0_.get(), 0, a0_.bytes()));
  cap_ = M;
}

void GpuLinear::prepare(const __nv_bfloat16* x, int64_t M, cudaStream_t stream) {
  if (M < 0) throw std::invalid_argument(fmt::format("GpuLinear::prepare: M = {}", M));
  if (M > 0 && !x) throw std::invalid_argument("GpuLinear::prepare: null input");
  reserve(M);
  M_ = M;
  x_ = x;
  if (M == 0) return;
  const int64_t ld = w_.Kp;
  switch (scheme_) {
    case GpuScheme::sharq_exact:
    case GpuScheme::sharq_merged: {
      PrepSpec spec;
      spec.fmt = SharqFormat::nvfp4;
      spec.mask = opt_.mask;
      spec.act_scale = opt_.act_scale;
      PrepOut out;
      out.g = g_.get();
      out.ld = ld;
      if (scheme_ == GpuScheme::sharq_exact) {
        out.s_plane = a0_.get();
        out.r_plane = a1_.get();
      } else {
        out.x_plane = a0_.get();
      }
      sharq_prep(x, DType::bf16, M, K_, nullptr, spec, out, scratch_.get(), stream);
      break;
    }
    case GpuScheme::nvfp4:
      nvfp4_prep(x, DType::bf16, M, K_, nullptr, opt_.act_scale, false, 0.0f, nullptr, g_.get(), a0_.get(), ld,
                 scratch_.get(), stream);
      break;
    case GpuScheme::w4a16:
      if (K_ != ld)  // copy into the zero-padded plane
        SHARQ_CUDA_CHECK(cudaMemcpy2DAsync(a0_.get(), ld * 2, x, K_ * 2, K_ * 2, M, cudaMemcpyDeviceToDevice, stream));
      break;
  }
}

void GpuLinear::gemm(__nv_bfloat16* y, cudaStream_t stream, float* y_f32) {
  if (M_ == 0) return;
  Fp4GemmArgs a;
  a.M = M_;
  a.lda = w_.Kp;
  a.y = y;
  a.y_f32 = y_f32;
  a.ldy = N_;
  if (scheme_ == GpuScheme::w4a16) {
    a.adt = DType::bf16;
    a.a0 = K_ == w_.Kp ? static_cast<const void*>(x_) : static_cast<const void*>(a0_.get());
  } else {
    a.a0 = a0_.get();
    a.a1 = scheme_ == GpuScheme::sharq_exact ? a1_.get() : nullptr;
    a.row_scale = g_.get();
    a.row_scale_count = opt_.act_scale == GlobalScale::per_tensor ? 1 : M_;
  }
  fp4_gemm(a, w_, opt_.kernel, ws_.get(), ws_.bytes(), stream);
}

GpuLinear::HostOperands GpuLinear::operands() const {
  HostOperands h;
  h.M = M_;
  h.ld = w_.Kp;
  SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
  const size_t n = static_cast<size_t>(M_ * h.ld);
  h.a0.resize(n);
  if (n) SHARQ_CUDA_CHECK(cudaMemcpy(h.a0.data(), a0_.get(), n * 2, cudaMemcpyDeviceToHost));
  if (scheme_ == GpuScheme::sharq_exact) {
    h.a1.resize(n);
    if (n) SHARQ_CUDA_CHECK(cudaMemcpy(h.a1.data(), a1_.get(), n * 2, cudaMemcpyDeviceToHost));
  }
  if (scheme_ != GpuScheme::w4a16) {
    h.row_scale.resize(opt_.act_scale == GlobalScale::per_tensor ? 1 : static_cast<size_t>(M_));
    if (M_) SHARQ_CUDA_CHECK(cudaMemcpy(h.row_scale.data(), g_.get(), h.row_scale.size() * 4, cudaMemcpyDeviceToHost));
  }
  return h;
}

}  // namespace sharq::cuda
