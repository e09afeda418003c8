// The same-run memory baseline of the GPU benches (`bench gemm`, `bench model`): device-to-device
// cudaMemcpyAsync of a buffer of min(1 GiB, free / 4) bytes, bytes read + written over the median
// time of 10 timed copies (after 2 warm-ups).
#pragma once

#include <cstddef>

#include <cuda_runtime.h>

namespace sharq::cuda {

struct CopyBandwidth {
  double tbs = 0;     // TB/s (read + written)
  size_t bytes = 0;   // size of the copied buffer (0: not enough free memory, tbs stays 0)
};

CopyBandwidth measure_copy_bandwidth(cudaStream_t stream);

}  // namespace sharq::cuda
