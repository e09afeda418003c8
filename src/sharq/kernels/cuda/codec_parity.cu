#include "sharq/kernels/cuda/codec_parity.h"

#include <stdexcept>

#include "sharq/kernels/cuda/cuda_check.h"
#include "sharq/quant/fp8_fold.h"

namespace sharq::cuda {
namespace {

__global__ void encode_kernel(const float* x, int64_t n, uint8_t* e2m1, uint8_t* e4m3, uint8_t* e6m2, uint8_t* s1p2,
                              uint16_t* bf16, uint16_t* fp16, float* e2m1_dec, float* e4m3_dec) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float v = x[i];
  e2m1[i] = e2m1_encode(v);
  e4m3[i] = e4m3_encode(v);
  e6m2[i] = e6m2_encode(v);
  s1p2[i] = s1p2_encode(v);
  bf16[i] = bf16_encode(v);
  fp16[i] = fp16_encode(v);
  e2m1_dec[i] = e2m1_decode(static_cast<uint8_t>(i & 0xF));
  e4m3_dec[i] = e4m3_decode(static_cast<uint8_t>(i & 0xFF));
}

template <class F>
__global__ void quantize_kernel(const float* x, int64_t nblocks, typename F::block_t* out) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= nblocks) return;
  F::quantize(x + b * F::kBlock, out[b]);
}

__global__ void sharq_span_kernel(const float* xt, int64_t nspans, block_bb_nvfp4_p48* bb, block_nvfp4_16* res) {
  const int64_t s = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (s >= nspans) return;
  sharq_prepare_span<SharqNvfp4, 8>(xt + s * 32, PairScore::max, bb[s], res + 2 * s);
}

unsigned grid_for(int64_t n, unsigned block) { return static_cast<unsigned>((n + block - 1) / block); }

template <class F>
std::vector<typename F::block_t> quantize_on_device(const std::vector<float>& x, int64_t rows, int64_t cols) {
  if (cols % F::kBlock != 0 || static_cast<int64_t>(x.size()) != rows * cols)
    throw std::invalid_argument("quantize_on_device: cols must be a multiple of the block and x rows x cols");
  const int64_t nb = rows * cols / F::kBlock;
  std::vector<typename F::block_t> out(static_cast<size_t>(nb));
  if (nb == 0) return out;
  DeviceBuffer<float> dx(x.size());
  DeviceBuffer<typename F::block_t> dout(out.size());
  dx.upload(x.data());
  quantize_kernel<F><<<grid_for(nb, 128), 128>>>(dx.get(), nb, dout.get());
  SHARQ_CUDA_CHECK(cudaGetLastError());
  SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
  dout.download(out.data());
  return out;
}

}  // namespace

int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device/driver" error
    return 0;
  }
  return n;
}

int sm_count() {
  static const int n = [] {
    int dev = 0, v = 0;
    SHARQ_CUDA_CHECK(cudaGetDevice(&dev));
    SHARQ_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
    return v;
  }();
  return n;
}

ElementCodes encode_on_device(const std::vector<float>& x) {
  const int64_t n = static_cast<int64_t>(x.size());
  ElementCodes c;
  c.e2m1.resize(n); c.e4m3.resize(n); c.e6m2.resize(n); c.s1p2.resize(n);
  c.bf16.resize(n); c.fp16.resize(n); c.e2m1_dec.resize(n); c.e4m3_dec.resize(n);
  if (n == 0) return c;
  DeviceBuffer<float> dx(n), d_e2m1_dec(n), d_e4m3_dec(n);
  DeviceBuffer<uint8_t> d_e2m1(n), d_e4m3(n), d_e6m2(n), d_s1p2(n);
  DeviceBuffer<uint16_t> d_bf16(n), d_fp16(n);
  dx.upload(x.data());
  encode_kernel<<<grid_for(n, 256), 256>>>(dx.get(), n, d_e2m1.get(), d_e4m3.get(), d_e6m2.get(), d_s1p2.get(),
                                            d_bf16.get(), d_fp16.get(), d_e2m1_dec.get(), d_e4m3_dec.get());
  SHARQ_CUDA_CHECK(cudaGetLastError());
  SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
  d_e2m1.download(c.e2m1.data()); d_e4m3.download(c.e4m3.data()); d_e6m2.download(c.e6m2.data());
  d_s1p2.download(c.s1p2.data()); d_bf16.download(c.bf16.data()); d_fp16.download(c.fp16.data());
  d_e2m1_dec.download(c.e2m1_dec.data()); d_e4m3_dec.download(c.e4m3_dec.data());
  return c;
}

std::vector<block_nvfp4_16> nvfp4_16_quantize_on_device(const std::vector<float>& x, int64_t rows, int64_t cols) {
  return quantize_on_device<Nvfp4_16>(x, rows, cols);
}
std::vector<block_mxfp4> mxfp4_quantize_on_device(const std::vector<float>& x, int64_t rows, int64_t cols) {
  return quantize_on_device<Mxfp4>(x, rows, cols);
}
std::vector<block_hif4> hif4_quantize_on_device(const std::vector<float>& x, int64_t rows, int64_t cols) {
  return quantize_on_device<Hif4>(x, rows, cols);
}

namespace {
__global__ void fold_kernel(const block_mxfp4* b, int64_t tiles, uint8_t* codes, int32_t* info) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= tiles) return;
  const Mxfp4Fold f = mxfp4_fold_tile(b + i * kFoldBlocks, kFoldBlocks, codes + i * kFoldTile);
  info[4 * i] = f.t;
  info[4 * i + 1] = f.nonzero;
  info[4 * i + 2] = f.inexact;
  info[4 * i + 3] = f.nan ? 1 : 0;
}
}  // namespace

DeviceFold mxfp4_fold_on_device(const std::vector<block_mxfp4>& blocks) {
  if (blocks.size() % kFoldBlocks != 0)
    throw std::invalid_argument("mxfp4_fold_on_device: the block count is not a multiple of kFoldBlocks");
  const int64_t tiles = static_cast<int64_t>(blocks.size()) / kFoldBlocks;
  DeviceFold r;
  r.codes.resize(static_cast<size_t>(tiles * kFoldTile));
  std::vector<int32_t> info(static_cast<size_t>(4 * tiles));
  if (tiles > 0) {
    DeviceBuffer<block_mxfp4> db(blocks.size());
    DeviceBuffer<uint8_t> dc(r.codes.size());
    DeviceBuffer<int32_t> di(info.size());
    db.upload(blocks.data());
    fold_kernel<<<grid_for(tiles, 128), 128>>>(db.get(), tiles, dc.get(), di.get());
    SHARQ_CUDA_CHECK(cudaGetLastError());
    SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
    dc.download(r.codes.data());
    di.download(info.data());
  }
  for (int64_t i = 0; i < tiles; ++i) {
    r.t.push_back(info[4 * i]);
    r.nonzero.push_back(info[4 * i + 1]);
    r.inexact.push_back(info[4 * i + 2]);
    r.nan.push_back(info[4 * i + 3]);
  }
  return r;
}

void sharq_nvfp4_p48_prepare_on_device(const std::vector<float>& xt, int64_t rows, int64_t cols,
                                       std::vector<block_bb_nvfp4_p48>& backbone, std::vector<block_nvfp4_16>& residual) {
  if (cols % 32 != 0 || static_cast<int64_t>(xt.size()) != rows * cols)
    throw std::invalid_argument("sharq_nvfp4_p48_prepare_on_device: cols must be a multiple of 32");
  const int64_t ns = rows * cols / 32;
  backbone.resize(ns);
  residual.resize(2 * ns);
  if (ns == 0) return;
  DeviceBuffer<float> dx(xt.size());
  DeviceBuffer<block_bb_nvfp4_p48> dbb(ns);
  DeviceBuffer<block_nvfp4_16> dres(2 * ns);
  dx.upload(xt.data());
  sharq_span_kernel<<<grid_for(ns, 128), 128>>>(dx.get(), ns, dbb.get(), dres.get());
  SHARQ_CUDA_CHECK(cudaGetLastError());
  SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
  dbb.download(backbone.data());
  dres.download(residual.data());
}

}  // namespace sharq::cuda
