// Host reference of the prep kernel's fused RMSNorm (declared in sharq_prep.h). Plain C++ in the
// CPU library, compiled without FMA contraction, so that it rounds exactly as the kernel does.
#include <cmath>
#include <cstdint>

namespace sharq::cuda {

void rmsnorm_reference(const float* x, int64_t M, int64_t K, const float* w, float eps, float* y) {
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * K;
    float p[32];
    for (int l = 0; l < 32; ++l) {  // lane l's partial sum, in the lane's order
      p[l] = 0.0f;
      for (int64_t i = l; i < K; i += 32) p[l] = p[l] + xr[i] * xr[i];
    }
    for (int off = 16; off >= 1; off >>= 1) {  // the xor butterfly of __shfl_xor_sync
      float q[32];
      for (int l = 0; l < 32; ++l) q[l] = p[l] + p[l ^ off];
      for (int l = 0; l < 32; ++l) p[l] = q[l];
    }
    const float inv = 1.0f / std::sqrt(p[0] / static_cast<float>(K) + eps);
    for (int64_t i = 0; i < K; ++i) y[m * K + i] = (xr[i] * inv) * w[i];
  }
}

}  // namespace sharq::cuda
