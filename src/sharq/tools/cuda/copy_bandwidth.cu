#include "sharq/tools/cuda/copy_bandwidth.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "sharq/kernels/cuda/cuda_check.h"

namespace sharq::cuda {

CopyBandwidth measure_copy_bandwidth(cudaStream_t stream) {
  size_t free_b = 0, total_b = 0;
  SHARQ_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  CopyBandwidth r;
  r.bytes = std::min<size_t>(size_t{1} << 30, free_b / 4) & ~size_t{255};
  if (r.bytes == 0) return r;
  DeviceBuffer<uint8_t> a(r.bytes), b(r.bytes);
  SHARQ_CUDA_CHECK(cudaMemsetAsync(a.get(), 0x5A, r.bytes, stream));
  const CudaEvent ev0, ev1;
  const cudaEvent_t e0 = ev0.get(), e1 = ev1.get();
  std::vector<float> t;
  for (int i = 0; i < 12; ++i) {
    SHARQ_CUDA_CHECK(cudaEventRecord(e0, stream));
    SHARQ_CUDA_CHECK(cudaMemcpyAsync(b.get(), a.get(), r.bytes, cudaMemcpyDeviceToDevice, stream));
    SHARQ_CUDA_CHECK(cudaEventRecord(e1, stream));
    SHARQ_CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    SHARQ_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    if (i >= 2) t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  const double med = 0.5 * (t[(t.size() - 1) / 2] + t[t.size() / 2]);
  r.tbs = 2.0 * static_cast<double>(r.bytes) / (med * 1e-3) / 1e12;
  return r;
}

}  // namespace sharq::cuda
