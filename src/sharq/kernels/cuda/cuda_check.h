// Checked CUDA calls: a failure throws std::runtime_error naming the call, file and line.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#define SHARQ_CUDA_CHECK(call)                                                                        \
  do {                                                                                                \
    const cudaError_t sharq_err_ = (call);                                                            \
    if (sharq_err_ != cudaSuccess)                                                                    \
      throw std::runtime_error(std::string("CUDA call failed: ") + #call + " at " + __FILE__ + ":" + \
                               std::to_string(__LINE__) + ": " + cudaGetErrorString(sharq_err_));   \
  } while (0)

namespace sharq::cuda {

// Number of usable CUDA devices; 0 (never an exception) when there is no driver or no GPU.
int device_count() noexcept;

// Multiprocessor count of the current device (read once per process; throws like SHARQ_CUDA_CHECK).
int sm_count();

// RAII device buffer: freed on every path, errors included.
template <class T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (n) SHARQ_CUDA_CHECK(cudaMalloc(&p_, n * sizeof(T)));
  }
  ~DeviceBuffer() { if (p_) cudaFree(p_); }
  DeviceBuffer() : n_(0) {}
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr; o.n_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      if (p_) cudaFree(p_);
      p_ = o.p_; n_ = o.n_;
      o.p_ = nullptr; o.n_ = 0;
    }
    return *this;
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }
  // Complete on return, for every stream: a cudaMemcpy from pageable memory may return before its
  // DMA lands, and non-blocking streams (the engine's, the tests') are not ordered after the legacy
  // default stream it ran on, so the upload waits for that stream.
  void upload(const T* h) {
    if (!n_) return;
    SHARQ_CUDA_CHECK(cudaMemcpy(p_, h, n_ * sizeof(T), cudaMemcpyHostToDevice));
    SHARQ_CUDA_CHECK(cudaStreamSynchronize(cudaStreamLegacy));
  }
  void download(T* h) const { if (n_) SHARQ_CUDA_CHECK(cudaMemcpy(h, p_, n_ * sizeof(T), cudaMemcpyDeviceToHost)); }
  std::vector<T> to_host() const { std::vector<T> h(n_); download(h.data()); return h; }
  size_t bytes() const { return n_ * sizeof(T); }
 private:
  T* p_ = nullptr;
  size_t n_;
};

// RAII CUDA event (timing): destroyed on every path, a throw between its records included.
class CudaEvent {
 public:
  CudaEvent() { SHARQ_CUDA_CHECK(cudaEventCreate(&e_)); }
  ~CudaEvent() { if (e_) cudaEventDestroy(e_); }
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;
  cudaEvent_t get() const { return e_; }
 private:
  cudaEvent_t e_ = nullptr;
};

}  // namespace sharq::cuda
