// `sharq bench gemm`: see bench_gemm.h for the methods, the cold-L2 rotation and the byte accounting.
#include "sharq/tools/cuda/bench_gemm.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <fmt/format.h>

#include "sharq/kernels/cuda/cublaslt_gemm.h"
#include "sharq/kernels/cuda/cuda_check.h"
#include "sharq/runtime/cuda/gpu_linear.h"
#include "sharq/tools/cuda/copy_bandwidth.h"

namespace sharq {
namespace {

using cuda::DeviceBuffer;
using cuda::GpuLinear;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr int kMinReps = 50;
constexpr double kL2Multiple = 3.0;  // the sets of one method together exceed 3x the L2 size

// ---------------------------------------------------------------------------------------------
// Shapes (K -> N; weights N x K)

struct LayerShape {
  const char* model;
  const char* layer;
  int64_t K, N;
};
constexpr LayerShape kShapes[] = {
    {"llama3.1-8b", "qkv", 4096, 6144},    {"llama3.1-8b", "o", 4096, 4096},
    {"llama3.1-8b", "gate_up", 4096, 28672}, {"llama3.1-8b", "down", 14336, 4096},
    {"qwen2.5-7b", "qkv", 3584, 4608},     {"qwen2.5-7b", "o", 3584, 3584},
    {"qwen2.5-7b", "gate_up", 3584, 37888},  {"qwen2.5-7b", "down", 18944, 3584},
};
const char* const kModels[] = {"llama3.1-8b", "qwen2.5-7b"};
const char* const kLayerNames[] = {"qkv", "o", "gate_up", "down"};

// The items of --model / --layer: an empty item or one given twice is an error naming the flag.
std::vector<std::string> split_list(const std::string& s, const char* flag) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t end = s.find(',', pos);
    if (end == std::string::npos) end = s.size();
    std::string item = s.substr(pos, end - pos);
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    if (item.empty()) throw std::invalid_argument(fmt::format("bench gemm: {}: an empty item in '{}'", flag, s));
    if (std::find(out.begin(), out.end(), item) != out.end())
      throw std::invalid_argument(fmt::format("bench gemm: {}: '{}' is given twice", flag, item));
    out.push_back(item);
    pos = end + 1;
  }
  return out;
}

bool selected(const std::vector<std::string>& list, const char* name) {
  return std::find(list.begin(), list.end(), "all") != list.end() ||
         std::find(list.begin(), list.end(), name) != list.end();
}

template <size_t Count>
void check_names(const std::vector<std::string>& list, const char* const (&known)[Count], const char* what) {
  for (const auto& n : list) {
    if (n == "all") continue;
    if (std::find_if(std::begin(known), std::end(known), [&](const char* k) { return n == k; }) == std::end(known)) {
      std::string names;
      for (const char* k : known) names += std::string(names.empty() ? "" : ", ") + k;
      throw std::invalid_argument(fmt::format("bench gemm: unknown {} '{}' (known: {}, all)", what, n, names));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Device helpers: random fill, output check, the spin kernel

__host__ __device__ inline uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// About N(0, 1): the Irwin-Hall sum of 4 uniforms (16 bits each of one hash of (seed, i)),
// standardized. Counter-based, so every element is independent of the launch shape.
__device__ inline float normal_at(uint64_t seed, uint64_t i) {
  const uint64_t h = mix64(seed ^ mix64(i));
  float s = 0.0f;
  for (int j = 0; j < 4; ++j) s += (static_cast<float>((h >> (16 * j)) & 0xFFFFu) + 0.5f) * (1.0f / 65536.0f);
  return (s - 2.0f) * 1.7320508f;  // Var(sum of 4 U(0,1)) = 1/3
}

template <class T>
__device__ inline T from_float(float v);
template <>
__device__ inline float from_float<float>(float v) { return v; }
template <>
__device__ inline __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ inline float to_float(__half v) { return __half2float(v); }
__device__ inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T>
__global__ void fill_normal_kernel(T* out, int64_t n, uint64_t seed, float scale) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride)
    out[i] = from_float<T>(scale * normal_at(seed, static_cast<uint64_t>(i)));
}

unsigned grid_for(int64_t n) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((n + 255) / 256, 132 * 64)));
}

template <class T>
void fill_normal(T* out, int64_t n, uint64_t seed, float scale, cudaStream_t s) {
  if (n <= 0) return;
  fill_normal_kernel<T><<<grid_for(n), 256, 0, s>>>(out, n, seed, scale);
  SHARQ_CUDA_CHECK(cudaGetLastError());
}

// counts[0] += non-finite values, counts[1] += finite non-zero values
template <class T>
__global__ void check_kernel(const T* y, int64_t n, unsigned long long* counts) {
  unsigned long long bad = 0, nonzero = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const float v = to_float(y[i]);
    if (!isfinite(v)) ++bad;
    else if (v != 0.0f) ++nonzero;
  }
  if (bad) atomicAdd(&counts[0], bad);
  if (nonzero) atomicAdd(&counts[1], nonzero);
}

// Holds the stream for `ns` nanoseconds (globaltimer), so that the host can queue every repetition
// before the first one starts: no host launch gap then falls inside an event pair.
__global__ void spin_kernel(unsigned long long ns) {
  unsigned long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    __nanosleep(1000);
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < ns);
}

// The read floor: one pass over two device ranges (the FP4 codes and scales) with 16-byte
// non-coherent loads, eight in flight per thread, four 512-thread blocks per SM. What any kernel
// that reads those bytes once pays under the same timer (launch, ramp-up and drain included).
__global__ void __launch_bounds__(512) read_floor_kernel(const uint4* a, int64_t na, const uint4* b, int64_t nb,
                                                          uint32_t* sink) {
  const int64_t n = na + nb, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  uint32_t acc = 0;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += 8 * stride) {
    uint4 v[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      const int64_t j = i + u * stride;
      const uint4* p = j < na ? a + j : b + (j - na);
      if (j < n) asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                              : "=r"(v[u].x), "=r"(v[u].y), "=r"(v[u].z), "=r"(v[u].w) : "l"(p));
      else v[u] = make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < 8; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  if (acc == 0x9E3779B9u) *sink = acc;  // keeps the loads; practically never written
}

// ---------------------------------------------------------------------------------------------
// Timer: one CUDA event pair per repetition on one stream, median over the repetitions.

class Timer {
 public:
  struct Result {
    double median_us = kNaN, min_us = kNaN, max_us = kNaN;
    bool launch_gaps = false;  // the GPU caught up with the host despite the spin: gaps possible
  };

  explicit Timer(cudaStream_t s) : s_(s) { SHARQ_CUDA_CHECK(cudaEventCreate(&spin_done_)); }
  ~Timer() {
    for (cudaEvent_t e : ev_) cudaEventDestroy(e);
    cudaEventDestroy(spin_done_);
  }
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;

  // fn(set) enqueues one call on the stream. Warm-up: max(warmup, sets) calls, so that every set
  // (and every lazily grown scratch buffer) is touched before timing; rep i uses set i % sets.
  Result run(const std::function<void(int)>& fn, int sets, int warmup, int reps) {
    using clock = std::chrono::steady_clock;
    sets = std::max(sets, 1);
    while (static_cast<int>(ev_.size()) < 2 * reps) {
      cudaEvent_t e;
      SHARQ_CUDA_CHECK(cudaEventCreate(&e));
      ev_.push_back(e);
    }
    const int nw = std::max({warmup, sets, 1});
    std::vector<double> host_us(static_cast<size_t>(nw));
    for (int i = 0; i < nw; ++i) {
      const auto t0 = clock::now();
      fn(i % sets);
      host_us[static_cast<size_t>(i)] = std::chrono::duration<double, std::micro>(clock::now() - t0).count();
    }
    SHARQ_CUDA_CHECK(cudaStreamSynchronize(s_));
    std::sort(host_us.begin(), host_us.end());
    const double enqueue_us = host_us[host_us.size() / 2] + 2.0;  // + the two event records

    double spin_us = std::min(2.0 * enqueue_us * reps + 200.0, 1e6);
    Result r;
    for (int attempt = 0;; ++attempt) {
      spin_kernel<<<1, 1, 0, s_>>>(static_cast<unsigned long long>(spin_us * 1e3));
      SHARQ_CUDA_CHECK(cudaGetLastError());
      SHARQ_CUDA_CHECK(cudaEventRecord(spin_done_, s_));
      for (int i = 0; i < reps; ++i) {
        SHARQ_CUDA_CHECK(cudaEventRecord(ev_[2 * static_cast<size_t>(i)], s_));
        fn(i % sets);
        SHARQ_CUDA_CHECK(cudaEventRecord(ev_[2 * static_cast<size_t>(i) + 1], s_));
      }
      const cudaError_t q = cudaEventQuery(spin_done_);
      if (q != cudaSuccess && q != cudaErrorNotReady) SHARQ_CUDA_CHECK(q);
      (void)cudaGetLastError();  // not-ready is no error
      SHARQ_CUDA_CHECK(cudaStreamSynchronize(s_));
      r.launch_gaps = q == cudaSuccess;
      if (!r.launch_gaps || attempt == 2 || spin_us >= 1e6) break;
      spin_us = std::min(spin_us * 4.0, 1e6);
    }
    std::vector<double> us(static_cast<size_t>(reps));
    for (int i = 0; i < reps; ++i) {
      float ms = 0.0f;
      SHARQ_CUDA_CHECK(cudaEventElapsedTime(&ms, ev_[2 * static_cast<size_t>(i)], ev_[2 * static_cast<size_t>(i) + 1]));
      us[static_cast<size_t>(i)] = 1e3 * ms;
    }
    std::sort(us.begin(), us.end());
    const size_t n = us.size();
    r.median_us = n % 2 ? us[n / 2] : 0.5 * (us[n / 2 - 1] + us[n / 2]);
    r.min_us = us.front();
    r.max_us = us.back();
    return r;
  }

 private:
  cudaStream_t s_;
  std::vector<cudaEvent_t> ev_;
  cudaEvent_t spin_done_;
};

// ---------------------------------------------------------------------------------------------
// Device description

struct DeviceInfo {
  int ordinal = 0;
  std::string name;
  int cc_major = 0, cc_minor = 0, sms = 0;
  int64_t l2_bytes = 0, total_bytes = 0;
  int sm_clock_mhz = 0, mem_clock_mhz = 0, bus_bits = 0;
  double peak_tbs = kNaN;    // 2 (DDR) x memory clock x bus width
  double copy_tbs = kNaN;    // measured device-to-device cudaMemcpyAsync, bytes read + written
  double copy_mib = 0;
};

DeviceInfo describe_device(int ordinal) {
  cudaDeviceProp p{};
  SHARQ_CUDA_CHECK(cudaGetDeviceProperties(&p, ordinal));
  DeviceInfo d;
  d.ordinal = ordinal;
  d.name = p.name;
  d.cc_major = p.major;
  d.cc_minor = p.minor;
  d.sms = p.multiProcessorCount;
  d.l2_bytes = p.l2CacheSize;
  d.total_bytes = static_cast<int64_t>(p.totalGlobalMem);
  int v = 0;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrClockRate, ordinal) == cudaSuccess) d.sm_clock_mhz = v / 1000;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMemoryClockRate, ordinal) == cudaSuccess) d.mem_clock_mhz = v / 1000;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrGlobalMemoryBusWidth, ordinal) == cudaSuccess) d.bus_bits = v;
  (void)cudaGetLastError();
  if (d.mem_clock_mhz > 0 && d.bus_bits > 0) d.peak_tbs = 2.0 * d.mem_clock_mhz * 1e6 * (d.bus_bits / 8.0) / 1e12;
  return d;
}

size_t free_device_bytes() {
  size_t free_b = 0, total_b = 0;
  SHARQ_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  return free_b;
}

// Device-to-device copy bandwidth: cudaMemcpyAsync of 1 GiB (less when memory is short),
// bytes = read + written = 2 x size, median of 20.
void measure_copy(DeviceInfo& d, cudaStream_t s) {
  const cuda::CopyBandwidth c = cuda::measure_copy_bandwidth(s);
  if (c.bytes == 0) return;
  d.copy_tbs = c.tbs;
  d.copy_mib = static_cast<double>(c.bytes) / (1 << 20);
}

// ---------------------------------------------------------------------------------------------
// Methods, families of buffer sets, results

// fp8 is the fp8 scheme (per-channel W, per-token X scales: cuBLASLt OUTER_VEC_32F); fp8_tensor is the
// faster per-tensor FP8 GEMM, an extra reference column (not a sharq scheme).
enum MethodId {
  kFp16, kBf16, kFp8, kFp8Tensor, kW4a16, kNvfp4, kExact, kExactGemm, kMerged, kMergedGemm, kPrep, kPrepMerged, kRead,
  kMethods
};
const char* const kMethodNames[kMethods] = {"fp16",   "bf16",       "fp8",    "fp8_tensor",  "w4a16", "nvfp4",
                                            "exact",  "exact_gemm", "merged", "merged_gemm", "prep",  "prep_merged",
                                            "read"};
const char* const kMethodShort[kMethods] = {"fp16",    "bf16",   "fp8",     "fp8:tens", "w4a16", "nvfp4",
                                            "exact", "ex:gemm", "merged", "mg:gemm",  "prep",  "prep:mg",
                                            "read"};

// Buffer-set families: the methods of one family share weight sets and rotate the same way.
enum Family { kFamF16, kFamBf16, kFamFp8, kFamFp4, kFamilies };

// The four FP4 GpuLinear schemes, in this order everywhere below (mask and activation scale from the
// options).
const char* const kSchemeTexts[] = {"sharq", "sharq:merged", "nvfp4", "w4a16"};
constexpr int kNumSchemes = 4;
enum SchemeIdx { kSchExact, kSchMerged, kSchNvfp4, kSchW4a16 };

enum class YType : uint8_t { none, f16, bf16 };

struct Method {
  MethodId id;
  Family family;
  std::function<void(int)> fn;
  std::function<void()> setup;  // run once before the warm-up (may be empty)
  double bytes = 0, flops = 0;
  YType y = YType::none;
  std::string unavailable;  // non-empty: not timed, this is why
};

struct MethodResult {
  double us = kNaN, tbs = kNaN, tflops = kNaN;
  bool launch_gaps = false;
  std::string problem;  // failed / non-finite / all-zero output
};

struct Row {
  const LayerShape* shape = nullptr;
  int64_t M = 0;
  int sets[kFamilies] = {};
  MethodResult r[kMethods];
};

double speedup(const Row& row, MethodId base, MethodId sharq) {
  const double b = row.r[base].us, s = row.r[sharq].us;
  return (std::isfinite(b) && std::isfinite(s) && s > 0) ? b / s : kNaN;
}

// ---------------------------------------------------------------------------------------------
// Weights of one layer: per family, S independent random sets.

struct LayerWeights {
  int64_t N = 0, K = 0, Kp = 0;
  std::vector<DeviceBuffer<__half>> w_f16;
  std::vector<DeviceBuffer<__nv_bfloat16>> w_bf16;
  std::vector<DeviceBuffer<uint8_t>> w_fp8, w_fp8r;
  std::vector<DeviceBuffer<float>> w_fp8_scale, w_fp8r_scale;  // per tensor (1) / per channel (N)
  std::vector<std::unique_ptr<GpuLinear>> lin[kNumSchemes];
  std::string lin_error[kNumSchemes];
  double wbytes[kFamilies] = {};     // weight bytes of one set (fp4: the largest of the four schemes)
  double scheme_bytes[kNumSchemes] = {};
  int sets[kFamilies] = {};          // allocated sets per family
};

struct Ctx {
  const BenchGemmOptions* opt = nullptr;
  DeviceInfo dev;
  cudaStream_t stream = nullptr;
  cuda::CublasLtGemm* blas = nullptr;
  cuda::GpuLinearOptions lin_opt;
  Scheme schemes[kNumSchemes];
  bool per_token = true;
  int max_sets = 16;
  std::vector<int64_t> ms;
};

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

int sets_for(double set_bytes, double l2_bytes, int cap) {
  if (!(set_bytes > 0)) return cap;
  const double s = std::ceil(kL2Multiple * l2_bytes / set_bytes);
  return static_cast<int>(std::clamp(s, 1.0, static_cast<double>(cap)));
}

// Bytes of one set's activations + output (+ prep planes for fp4) at M: the L2 footprint beyond
// the weights that one call touches.
double act_bytes(Family f, int64_t M, int64_t K, int64_t Kp, int64_t N) {
  const double m = static_cast<double>(M), k = static_cast<double>(K), n = static_cast<double>(N);
  switch (f) {
    case kFamF16:
    case kFamBf16: return 2 * m * k + 2 * m * n;
    case kFamFp8: return m * k + 2 * m * n;
    case kFamFp4: return 2 * m * k + 4 * m * static_cast<double>(Kp) + 2 * m * n;
    default: return 0;
  }
}

uint64_t layer_seed(uint64_t seed, const LayerShape& s, int set, uint64_t salt) {
  uint64_t h = mix64(seed ^ 0x5348415251ull);
  for (const char* p = s.model; *p; ++p) h = mix64(h ^ static_cast<unsigned char>(*p));
  for (const char* p = s.layer; *p; ++p) h = mix64(h ^ static_cast<unsigned char>(*p));
  return mix64(h ^ (static_cast<uint64_t>(set) * 0x100000001B3ull) ^ salt);
}

void progress(const Ctx& c, const std::string& msg) {
  if (c.opt->quiet) return;
  fmt::print(stderr, "{}\n", msg);
  std::fflush(stderr);
}

void warn(const std::string& msg) {
  fmt::print(stderr, "sharq: warning: {}\n", msg);
  std::fflush(stderr);
}

void build_gpu_linear_set(const Ctx& c, const LayerShape& sh, LayerWeights& lw, int s, DeviceBuffer<float>& wdev,
                          std::vector<float>& whost) {
  const int64_t nk = sh.N * sh.K;
  fill_normal(wdev.get(), nk, layer_seed(c.opt->seed, sh, s, 4), 0.02f, c.stream);
  SHARQ_CUDA_CHECK(cudaStreamSynchronize(c.stream));
  wdev.download(whost.data());
  for (int k = 0; k < kNumSchemes; ++k) {
    if (!lw.lin_error[k].empty()) continue;
    try {
      lw.lin[k].push_back(std::make_unique<GpuLinear>(c.schemes[k], whost.data(), sh.N, sh.K, c.lin_opt));
    } catch (const std::exception& e) {
      lw.lin_error[k] = fmt::format("GpuLinear({}) construction failed: {}", c.schemes[k].name(), e.what());
      lw.lin[k].clear();
      (void)cudaGetLastError();
      warn(fmt::format("{} {}: {}", sh.model, sh.layer, lw.lin_error[k]));
    }
  }
}

LayerWeights build_weights(const Ctx& c, const LayerShape& sh) {
  const auto t0 = std::chrono::steady_clock::now();
  LayerWeights lw;
  lw.N = sh.N;
  lw.K = sh.K;
  lw.Kp = round_up(sh.K, 128);
  const int64_t nk = sh.N * sh.K;
  const double l2 = static_cast<double>(c.dev.l2_bytes);
  const int64_t m_min = *std::min_element(c.ms.begin(), c.ms.end());

  // GpuLinear set 0 first: its weight_bytes() sizes the fp4 family.
  DeviceBuffer<float> wdev(static_cast<size_t>(nk));
  std::vector<float> whost(static_cast<size_t>(nk));
  build_gpu_linear_set(c, sh, lw, 0, wdev, whost);
  for (int k = 0; k < kNumSchemes; ++k) {
    if (!lw.lin[k].empty()) lw.scheme_bytes[k] = static_cast<double>(lw.lin[k][0]->weight_bytes());
  }
  lw.wbytes[kFamF16] = 2.0 * static_cast<double>(nk);
  lw.wbytes[kFamBf16] = 2.0 * static_cast<double>(nk);
  lw.wbytes[kFamFp8] = static_cast<double>(nk) + 4.0 * static_cast<double>(sh.N);
  lw.wbytes[kFamFp4] = *std::max_element(std::begin(lw.scheme_bytes), std::end(lw.scheme_bytes));
  double fp4_all = 0;  // device bytes of one fp4 set: all four schemes
  for (double b : lw.scheme_bytes) fp4_all += b;
  if (!(lw.wbytes[kFamFp4] > 0)) lw.wbytes[kFamFp4] = 0.5625 * static_cast<double>(nk);  // no scheme built

  // Sets per family: enough for 3 x L2 at the smallest M, capped; then by half the free memory.
  double per_set_device[kFamilies];
  for (int f = 0; f < kFamilies; ++f) {
    lw.sets[f] = sets_for(lw.wbytes[f] + act_bytes(static_cast<Family>(f), m_min, sh.K, lw.Kp, sh.N), l2, c.max_sets);
    per_set_device[f] = f == kFamFp4 ? std::max(fp4_all, lw.wbytes[f]) : lw.wbytes[f];
  }
  const double budget = 0.5 * static_cast<double>(free_device_bytes()) + fp4_all;  // set 0 of fp4 is already there
  double total = 0;
  for (int f = 0; f < kFamilies; ++f) total += lw.sets[f] * per_set_device[f];
  if (total > budget) {
    for (int f = 0; f < kFamilies; ++f)
      lw.sets[f] = std::max(1, static_cast<int>(std::floor(lw.sets[f] * budget / total)));
  }
  progress(c, fmt::format("{} {} (K={} N={}): building weights, sets fp16 {}, bf16 {}, fp8 {}, fp4 {} ...", sh.model,
                          sh.layer, sh.K, sh.N, lw.sets[kFamF16], lw.sets[kFamBf16], lw.sets[kFamFp8],
                          lw.sets[kFamFp4]));

  // The rest of the GpuLinear sets (host quantization inside the constructor).
  for (int s = 1; s < lw.sets[kFamFp4]; ++s) build_gpu_linear_set(c, sh, lw, s, wdev, whost);
  whost.clear();
  whost.shrink_to_fit();

  // cuBLAS weights, generated on the device; FP8 through a BF16 temporary.
  for (int s = 0; s < lw.sets[kFamF16]; ++s) {
    lw.w_f16.emplace_back(static_cast<size_t>(nk));
    fill_normal(lw.w_f16.back().get(), nk, layer_seed(c.opt->seed, sh, s, 1), 0.02f, c.stream);
  }
  for (int s = 0; s < lw.sets[kFamBf16]; ++s) {
    lw.w_bf16.emplace_back(static_cast<size_t>(nk));
    fill_normal(lw.w_bf16.back().get(), nk, layer_seed(c.opt->seed, sh, s, 2), 0.02f, c.stream);
  }
  {
    DeviceBuffer<__nv_bfloat16> tmp(static_cast<size_t>(nk));
    for (int s = 0; s < lw.sets[kFamFp8]; ++s) {
      fill_normal(tmp.get(), nk, layer_seed(c.opt->seed, sh, s, 3), 0.02f, c.stream);
      lw.w_fp8.emplace_back(static_cast<size_t>(nk));
      lw.w_fp8_scale.emplace_back(1);
      cuda::quantize_fp8_per_tensor(tmp.get(), nk, lw.w_fp8.back().get(), lw.w_fp8_scale.back().get(), c.stream);
      lw.w_fp8r.emplace_back(static_cast<size_t>(nk));  // the fp8 scheme: one scale per output channel
      lw.w_fp8r_scale.emplace_back(static_cast<size_t>(sh.N));
      cuda::quantize_fp8_per_row(tmp.get(), sh.N, sh.K, lw.w_fp8r.back().get(), sh.K, lw.w_fp8r_scale.back().get(),
                                 c.stream);
    }
    SHARQ_CUDA_CHECK(cudaStreamSynchronize(c.stream));
  }
  progress(c, fmt::format("  weights ready in {:.1f} s (one set: fp16 {:.1f} MiB, fp8 {:.1f} MiB, sharq {:.1f} MiB, "
                          "nvfp4 {:.1f} MiB)",
                          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                          lw.wbytes[kFamF16] / (1 << 20), lw.wbytes[kFamFp8] / (1 << 20),
                          lw.scheme_bytes[kSchExact] / (1 << 20), lw.scheme_bytes[kSchNvfp4] / (1 << 20)));
  return lw;
}

// Activations and output of one set at one M.
struct ActSet {
  DeviceBuffer<__nv_bfloat16> xb;
  DeviceBuffer<__half> xh;
  DeviceBuffer<uint8_t> x8, x8r;
  DeviceBuffer<float> x8_scale, x8r_scale;  // per tensor (1) / per token (M)
  DeviceBuffer<uint16_t> y;  // M x N, BF16 or FP16 (fp16 method)
};

std::string check_output(const Ctx& c, const void* y, YType t, int64_t n) {
  if (t == YType::none || n == 0) return {};
  DeviceBuffer<unsigned long long> counts(2);
  SHARQ_CUDA_CHECK(cudaMemsetAsync(counts.get(), 0, 2 * sizeof(unsigned long long), c.stream));
  if (t == YType::f16)
    check_kernel<<<grid_for(n), 256, 0, c.stream>>>(static_cast<const __half*>(y), n, counts.get());
  else
    check_kernel<<<grid_for(n), 256, 0, c.stream>>>(static_cast<const __nv_bfloat16*>(y), n, counts.get());
  SHARQ_CUDA_CHECK(cudaGetLastError());
  SHARQ_CUDA_CHECK(cudaStreamSynchronize(c.stream));
  unsigned long long h[2] = {0, 0};
  counts.download(h);
  if (h[0]) return fmt::format("{} of {} outputs not finite", h[0], n);
  if (h[1] == 0) return "output is all zero";
  return {};
}

Row bench_row(const Ctx& c, Timer& timer, const LayerShape& sh, LayerWeights& lw, int64_t M) {
  Row row;
  row.shape = &sh;
  row.M = M;
  const int64_t K = sh.K, N = sh.N, Kp = lw.Kp;
  const double l2 = static_cast<double>(c.dev.l2_bytes);

  // Sets at this M: 3 x L2 of (weights + activations + output), within what was allocated and
  // within 40% of the free memory.
  int S[kFamilies];
  int A = 1;
  double act_set_bytes = 4.0 * static_cast<double>(M * K) + 2.0 * static_cast<double>(M * N) +
                         8.0 * static_cast<double>(M * Kp);  // X (3 types), Y, prep planes (all schemes)
  const int a_cap = std::max(1, static_cast<int>(0.4 * static_cast<double>(free_device_bytes()) / act_set_bytes));
  for (int f = 0; f < kFamilies; ++f) {
    S[f] = std::min({lw.sets[f], a_cap,
                     sets_for(lw.wbytes[f] + act_bytes(static_cast<Family>(f), M, K, Kp, N), l2, c.max_sets)});
    row.sets[f] = S[f];
    A = std::max(A, S[f]);
  }

  std::vector<ActSet> act(static_cast<size_t>(A));
  for (int a = 0; a < A; ++a) {
    ActSet& x = act[static_cast<size_t>(a)];
    x.xb = DeviceBuffer<__nv_bfloat16>(static_cast<size_t>(M * K));
    x.xh = DeviceBuffer<__half>(static_cast<size_t>(M * K));
    x.x8 = DeviceBuffer<uint8_t>(static_cast<size_t>(M * K));
    x.x8_scale = DeviceBuffer<float>(1);
    x.x8r = DeviceBuffer<uint8_t>(static_cast<size_t>(M * K));
    x.x8r_scale = DeviceBuffer<float>(static_cast<size_t>(M));
    x.y = DeviceBuffer<uint16_t>(static_cast<size_t>(M * N));
    const uint64_t xseed = layer_seed(c.opt->seed, sh, a, 0x100 + static_cast<uint64_t>(M));
    fill_normal(x.xb.get(), M * K, xseed, 1.0f, c.stream);
    fill_normal(x.xh.get(), M * K, xseed, 1.0f, c.stream);
    cuda::quantize_fp8_per_tensor(x.xb.get(), M * K, x.x8.get(), x.x8_scale.get(), c.stream);
    cuda::quantize_fp8_per_row(x.xb.get(), M, K, x.x8r.get(), K, x.x8r_scale.get(), c.stream);
    SHARQ_CUDA_CHECK(cudaMemsetAsync(x.y.get(), 0, x.y.bytes(), c.stream));
  }
  SHARQ_CUDA_CHECK(cudaStreamSynchronize(c.stream));

  const double m = static_cast<double>(M), n = static_cast<double>(N), k = static_cast<double>(K),
               kp = static_cast<double>(Kp);
  const double flops = 2.0 * m * n * k;
  const double x_bf16 = 2 * m * k, y_bytes = 2 * m * n, g_bytes = 4.0 * (c.per_token ? m : 1.0);
  cudaStream_t st = c.stream;
  cuda::CublasLtGemm& blas = *c.blas;
  auto A_ = [&](int s) -> ActSet& { return act[static_cast<size_t>(s)]; };
  DeviceBuffer<uint32_t> sink(1);  // the read floor's (never written) output

  std::vector<Method> methods;
  auto add = [&](MethodId id, Family f, double bytes, double fl, YType y, std::function<void(int)> fn) -> Method& {
    Method mt;
    mt.id = id;
    mt.family = f;
    mt.bytes = bytes;
    mt.flops = fl;
    mt.y = y;
    mt.fn = std::move(fn);
    methods.push_back(std::move(mt));
    return methods.back();
  };
  add(kFp16, kFamF16, 2 * n * k + x_bf16 + y_bytes, flops, YType::f16, [&](int s) {
    blas.matmul(cuda::BlasType::f16, A_(s).xh.get(), lw.w_f16[static_cast<size_t>(s)].get(), A_(s).y.get(), M, N, K,
                nullptr, nullptr, st);
  });
  add(kBf16, kFamBf16, 2 * n * k + x_bf16 + y_bytes, flops, YType::bf16, [&](int s) {
    blas.matmul(cuda::BlasType::bf16, A_(s).xb.get(), lw.w_bf16[static_cast<size_t>(s)].get(), A_(s).y.get(), M, N, K,
                nullptr, nullptr, st);
  });
  add(kFp8, kFamFp8, n * k + m * k + 4 * (m + n) + y_bytes, flops, YType::bf16, [&](int s) {
    blas.matmul(cuda::BlasType::fp8_e4m3_rowwise, A_(s).x8r.get(), lw.w_fp8r[static_cast<size_t>(s)].get(), A_(s).y.get(),
                M, N, K, A_(s).x8r_scale.get(), lw.w_fp8r_scale[static_cast<size_t>(s)].get(), st);
  });
  add(kFp8Tensor, kFamFp8, n * k + m * k + 8 + y_bytes, flops, YType::bf16, [&](int s) {
    blas.matmul(cuda::BlasType::fp8_e4m3, A_(s).x8.get(), lw.w_fp8[static_cast<size_t>(s)].get(), A_(s).y.get(), M, N,
                K, A_(s).x8_scale.get(), lw.w_fp8_scale[static_cast<size_t>(s)].get(), st);
  });

  auto lin = [&](int sch, int s) -> GpuLinear& { return *lw.lin[sch][static_cast<size_t>(s)]; };
  auto y16 = [&](int s) { return reinterpret_cast<__nv_bfloat16*>(A_(s).y.get()); };
  auto fwd = [&](MethodId id, int sch) {
    Method& mt = add(id, kFamFp4, lw.scheme_bytes[sch] + x_bf16 + y_bytes, flops, YType::bf16,
                     [&, sch](int s) { lin(sch, s).forward(A_(s).xb.get(), M, y16(s), st); });
    mt.unavailable = lw.lin_error[sch];
  };
  auto gemm_only = [&](MethodId id, int sch, double planes) {
    Method& mt = add(id, kFamFp4, lw.scheme_bytes[sch] + planes * 2 * m * kp + g_bytes + y_bytes, flops, YType::bf16,
                     [&, sch](int s) { lin(sch, s).gemm(lin(sch, s).own_activations(), y16(s), st); });
    mt.unavailable = lw.lin_error[sch];
    const int sets = S[kFamFp4];
    mt.setup = [&, sch, sets]() {  // every set's GpuLinear holds the operands of its own X at this M
      for (int s = 0; s < sets; ++s) lin(sch, s).prepare(A_(s).xb.get(), M, lin(sch, s).own_activations(), st);
      SHARQ_CUDA_CHECK(cudaStreamSynchronize(st));
    };
  };
  auto prep = [&](MethodId id, int sch, double planes) {
    Method& mt = add(id, kFamFp4, x_bf16 + planes * 2 * m * kp + g_bytes, kNaN, YType::none,
                     [&, sch](int s) { lin(sch, s).prepare(A_(s).xb.get(), M, lin(sch, s).own_activations(), st); });
    mt.unavailable = lw.lin_error[sch];
  };
  fwd(kW4a16, kSchW4a16);
  fwd(kNvfp4, kSchNvfp4);
  fwd(kExact, kSchExact);
  gemm_only(kExactGemm, kSchExact, 2);
  fwd(kMerged, kSchMerged);
  gemm_only(kMergedGemm, kSchMerged, 1);
  prep(kPrep, kSchExact, 2);
  prep(kPrepMerged, kSchMerged, 1);
  {  // the read floor of the SharQ (W32) weight payload: codes + scales, the same sets and timer
    Method& mt = add(kRead, kFamFp4, lw.scheme_bytes[kSchExact], kNaN, YType::none, [&](int s) {
      const cuda::DeviceFp4Weights* w = lin(kSchExact, s).fp4_weights();
      read_floor_kernel<<<4 * c.dev.sms, 512, 0, st>>>(
          reinterpret_cast<const uint4*>(w->codes.get()), static_cast<int64_t>(w->codes.bytes() / 16),
          reinterpret_cast<const uint4*>(w->scales.get()), static_cast<int64_t>(w->scales.bytes() / 16), sink.get());
      SHARQ_CUDA_CHECK(cudaGetLastError());
    });
    mt.unavailable = lw.lin_error[kSchExact];
  }

  for (Method& mt : methods) {
    MethodResult& res = row.r[mt.id];
    if (!mt.unavailable.empty()) {
      res.problem = "unavailable";
      continue;
    }
    const int sets = S[mt.family];
    try {
      if (mt.setup) mt.setup();
      const Timer::Result t = timer.run(mt.fn, sets, c.opt->warmup, c.opt->reps);
      res.us = t.median_us;
      res.launch_gaps = t.launch_gaps;
      res.tbs = mt.bytes / (t.median_us * 1e-6) / 1e12;
      res.tflops = std::isfinite(mt.flops) ? mt.flops / (t.median_us * 1e-6) / 1e12 : kNaN;
      // every set's Y holds this method's output now (the warm-up touched every set)
      res.problem = check_output(c, A_(0).y.get(), mt.y, M * N);
      if (!res.problem.empty())
        warn(fmt::format("{} {} M={} {}: {}", sh.model, sh.layer, M, kMethodNames[mt.id], res.problem));
      if (t.launch_gaps)
        warn(fmt::format("{} {} M={} {}: the host could not stay ahead of the GPU; the time may include launch gaps",
                         sh.model, sh.layer, M, kMethodNames[mt.id]));
    } catch (const std::exception& e) {
      res = MethodResult{};
      res.problem = std::string("failed: ") + e.what();
      warn(fmt::format("{} {} M={} {}: {} (reported as n/a)", sh.model, sh.layer, M, kMethodNames[mt.id], e.what()));
      const cudaError_t err = cudaStreamSynchronize(st);
      if (err != cudaSuccess)
        throw std::runtime_error(fmt::format("CUDA context unusable after {} {} M={} {}: {}", sh.model, sh.layer, M,
                                             kMethodNames[mt.id], cudaGetErrorString(err)));
      (void)cudaGetLastError();
    }
  }
  return row;
}

// ---------------------------------------------------------------------------------------------
// Output

std::string num(double v, int prec) { return std::isfinite(v) ? fmt::format("{:.{}f}", v, prec) : std::string(); }

std::string fmt_us(double v) {
  if (!std::isfinite(v)) return "-";
  return fmt::format("{:.{}f}", v, v < 100 ? 2 : v < 1000 ? 1 : 0);
}
std::string fmt_or_dash(double v, int prec) { return std::isfinite(v) ? fmt::format("{:.{}f}", v, prec) : "-"; }

std::string device_header(const Ctx& c) {
  const DeviceInfo& d = c.dev;
  const BenchGemmOptions& o = *c.opt;
  std::string s;
  s += fmt::format("GPU {}: {} (sm_{}{}, {} SMs, L2 {:.1f} MiB, {:.1f} GiB), SM clock max {} MHz, memory {} MHz x {}-bit",
                   d.ordinal, d.name, d.cc_major, d.cc_minor, d.sms, d.l2_bytes / 1048576.0,
                   d.total_bytes / 1073741824.0, d.sm_clock_mhz, d.mem_clock_mhz, d.bus_bits);
  if (std::isfinite(d.peak_tbs)) s += fmt::format(" (peak {:.2f} TB/s)", d.peak_tbs);
  s += "\n";
  s += fmt::format("D2D copy: {} TB/s (cudaMemcpyAsync of {:.0f} MiB, bytes read + written, median of 20)\n",
                   fmt_or_dash(d.copy_tbs, 2), d.copy_mib);
  s += fmt::format(
      "timing: median of {} reps per method, one CUDA event pair per rep, >= {} warm-up calls; each method rotates "
      "over sets of (W, X, Y) totalling >= {:.0f}x L2 (at most {} sets)\n",
      o.reps, o.warmup, kL2Multiple, c.max_sets);
  s += fmt::format("GpuLinear: kernel {}, splits {}, activation scale per {}, mask {}; schemes {}, {}, {}, {}\n", o.kernel,
                   o.splits > 0 ? std::to_string(o.splits) : std::string("auto"), o.act_scale, o.mask, c.schemes[0].name(), c.schemes[1].name(), c.schemes[2].name(), c.schemes[3].name());
  s += "FP4 prefill split-K: clusters per wave";
  for (int sp = 2; sp <= 8; ++sp) s += fmt::format(" c={}: {}", sp, cuda::fp4_gemm_prefill_clusters_per_wave(sp));
  s += fmt::format(" ({} SMs)\n", cuda::fp4_gemm_prefill_clusters_per_wave(1));
  s += "fp8 = the fp8 scheme (E4M3, per-channel W and per-token X scales, cuBLASLt OUTER_VEC_32F); fp8:tens = per-tensor"
       " FP8, an extra, faster reference (not a sharq scheme). Both GEMM only (X pre-quantized).\n";
  s += "TB/s bytes: W + X + Y once each (fp16/bf16 2NK+2MK+2MN; fp8 NK+MK+4(M+N)+2MN; fp8:tens NK+MK+8+2MN; GpuLinear forward weight_bytes+2MK+2MN,"
       " prep planes not counted;\n  *_gemm weight_bytes + planes 2*M*Kp each (exact 2, merged 1) + g_x + 2MN; prep"
       " 2MK + planes written + g_x). TFLOP/s = 2MNK / t.\n";
  s += "speedups = t_baseline / t_sharq with t_sharq = prep + GEMM (forward); exact/fp16 etc.\n\n";
  return s;
}

// Table: first column M, then the given cells per row.
std::string layer_tables(const Ctx& c, const LayerShape& sh, const LayerWeights& lw, const std::vector<Row>& rows) {
  std::string s;
  s += fmt::format("== {} {}: K={} -> N={} | one weight set: fp16 {:.1f} MiB, fp8 {:.1f} MiB, sharq {:.2f} MiB, nvfp4 "
                   "{:.2f} MiB, w4a16 {:.2f} MiB\n",
                   sh.model, sh.layer, sh.K, sh.N, lw.wbytes[kFamF16] / 1048576.0, lw.wbytes[kFamFp8] / 1048576.0,
                   lw.scheme_bytes[kSchExact] / 1048576.0, lw.scheme_bytes[kSchNvfp4] / 1048576.0,
                   lw.scheme_bytes[kSchW4a16] / 1048576.0);
  constexpr int w = 9;
  // µs + speedups
  s += fmt::format("{:>6} |", "µs M");
  for (int i = 0; i < kMethods; ++i) s += fmt::format(" {:>{}}", kMethodShort[i], w);
  s += fmt::format(" | {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} | {:>13}\n", "ex/fp16", "ex/fp8", "ex/fp8t", "mg/fp16", "mg/fp8",
                   "rd/exg", "sets f16/f8/f4");
  for (const Row& r : rows) {
    s += fmt::format("{:>6} |", r.M);
    for (int i = 0; i < kMethods; ++i) s += fmt::format(" {:>{}}", fmt_us(r.r[i].us), w);
    s += fmt::format(" | {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} | {:>13}\n", fmt_or_dash(speedup(r, kFp16, kExact), 2),
                     fmt_or_dash(speedup(r, kFp8, kExact), 2), fmt_or_dash(speedup(r, kFp8Tensor, kExact), 2),
                     fmt_or_dash(speedup(r, kFp16, kMerged), 2),
                     fmt_or_dash(speedup(r, kFp8, kMerged), 2), fmt_or_dash(speedup(r, kRead, kExactGemm), 2),
                     fmt::format("{}/{}/{}", r.sets[kFamF16], r.sets[kFamFp8], r.sets[kFamFp4]));
  }
  // TB/s
  s += fmt::format("{:>6} |", "TB/s M");
  for (int i = 0; i < kMethods; ++i) s += fmt::format(" {:>{}}", kMethodShort[i], w);
  s += fmt::format(" | {:>10}\n", "prep/copy");
  for (const Row& r : rows) {
    s += fmt::format("{:>6} |", r.M);
    for (int i = 0; i < kMethods; ++i) s += fmt::format(" {:>{}}", fmt_or_dash(r.r[i].tbs, 2), w);
    const double pc = r.r[kPrep].tbs / c.dev.copy_tbs;
    s += fmt::format(" | {:>10}\n", std::isfinite(pc) ? fmt::format("{:.0f}%", 100 * pc) : "-");
  }
  // TFLOP/s
  s += fmt::format("{:>6} |", "TF/s M");
  for (int i = 0; i < kPrep; ++i) s += fmt::format(" {:>{}}", kMethodShort[i], w);
  s += "\n";
  for (const Row& r : rows) {
    s += fmt::format("{:>6} |", r.M);
    for (int i = 0; i < kPrep; ++i) s += fmt::format(" {:>{}}", fmt_or_dash(r.r[i].tflops, 1), w);
    s += "\n";
  }
  s += "\n";
  return s;
}

std::string csv_escape(const std::string& v) {
  if (v.find_first_of(",\"\n") == std::string::npos) return v;
  std::string o = "\"";
  for (char ch : v) {
    if (ch == '"') o += '"';
    o += ch;
  }
  return o + "\"";
}

std::string csv_header() {
  std::string s =
      "gpu,cc,sms,l2_mib,sm_clock_mhz,mem_clock_mhz,mem_bus_bits,peak_tbs,copy_tbs,model,layer,M,K,N,reps,kernel,"
      "act_scale,mask,sets_fp16,sets_bf16,sets_fp8,sets_fp4";
  for (const char* n : kMethodNames) s += fmt::format(",us_{}", n);
  for (const char* n : kMethodNames) s += fmt::format(",tbs_{}", n);
  for (int i = 0; i < kPrep; ++i) s += fmt::format(",tflops_{}", kMethodNames[i]);
  s += ",spd_exact_fp16,spd_exact_fp8,spd_exact_fp8_tensor,spd_merged_fp16,spd_merged_fp8"
       ",spd_exact_gemm_fp16,spd_exact_gemm_fp8,spd_merged_gemm_fp16,spd_merged_gemm_fp8,prep_pct_copy,problems\n";
  return s;
}

std::string csv_row(const Ctx& c, const Row& r) {
  const DeviceInfo& d = c.dev;
  const BenchGemmOptions& o = *c.opt;
  std::string s = fmt::format("{},{}.{},{},{:.1f},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                              csv_escape(d.name), d.cc_major, d.cc_minor, d.sms, d.l2_bytes / 1048576.0,
                              d.sm_clock_mhz, d.mem_clock_mhz, d.bus_bits, num(d.peak_tbs, 3), num(d.copy_tbs, 3),
                              r.shape->model, r.shape->layer, r.M, r.shape->K, r.shape->N, o.reps, o.kernel,
                              o.act_scale, o.mask, r.sets[kFamF16], r.sets[kFamBf16], r.sets[kFamFp8],
                              r.sets[kFamFp4]);
  for (int i = 0; i < kMethods; ++i) s += "," + num(r.r[i].us, 3);
  for (int i = 0; i < kMethods; ++i) s += "," + num(r.r[i].tbs, 4);
  for (int i = 0; i < kPrep; ++i) s += "," + num(r.r[i].tflops, 3);
  for (const auto& p : {std::make_pair(kFp16, kExact), std::make_pair(kFp8, kExact), std::make_pair(kFp8Tensor, kExact),
                        std::make_pair(kFp16, kMerged),
                        std::make_pair(kFp8, kMerged), std::make_pair(kFp16, kExactGemm),
                        std::make_pair(kFp8, kExactGemm), std::make_pair(kFp16, kMergedGemm),
                        std::make_pair(kFp8, kMergedGemm)})
    s += "," + num(speedup(r, p.first, p.second), 4);
  s += "," + num(100.0 * r.r[kPrep].tbs / d.copy_tbs, 1);
  std::string problems;
  for (int i = 0; i < kMethods; ++i) {
    std::string p = r.r[i].problem;
    if (r.r[i].launch_gaps) p += p.empty() ? "launch gaps" : "; launch gaps";
    if (!p.empty()) problems += fmt::format("{}{}: {}", problems.empty() ? "" : " | ", kMethodNames[i], p);
  }
  s += "," + csv_escape(problems) + "\n";
  return s;
}

}  // namespace

int run_bench_gemm(const BenchGemmOptions& opt_in) {
  BenchGemmOptions opt = opt_in;

  // ---- options (checked before touching the GPU)
  if (opt.model.empty()) opt.model = opt.quick ? "llama3.1-8b" : "all";
  if (opt.m.empty())
    opt.m = opt.quick ? std::vector<int64_t>{1, 16, 256, 4096} : std::vector<int64_t>{1, 8, 16, 64, 256, 1024, 4096};
  const std::vector<std::string> models = split_list(opt.model, "--model"), layers = split_list(opt.layers, "--layer");
  check_names(models, kModels, "model");
  check_names(layers, kLayerNames, "layer");
  for (int64_t M : opt.m)
    if (M < 1) throw std::invalid_argument(fmt::format("bench gemm: M must be >= 1 (got {})", M));
  if (opt.reps < kMinReps) {
    warn(fmt::format("--reps {} raised to the minimum of {}", opt.reps, kMinReps));
    opt.reps = kMinReps;
  }
  if (opt.warmup < 0) throw std::invalid_argument("bench gemm: --warmup must be >= 0");
  if (opt.max_sets < 1) throw std::invalid_argument("bench gemm: --max-sets must be >= 1");

  Ctx c;
  c.opt = &opt;
  c.ms = opt.m;
  c.max_sets = opt.max_sets;
  if (opt.kernel == "auto") c.lin_opt.kernel = cuda::Fp4GemmKernel::automatic;
  else if (opt.kernel == "prefill") c.lin_opt.kernel = cuda::Fp4GemmKernel::prefill;
  else if (opt.kernel == "small") c.lin_opt.kernel = cuda::Fp4GemmKernel::small;
  else throw std::invalid_argument("bench gemm: --kernel must be auto, small or prefill (got '" + opt.kernel + "')");
  if (opt.splits < 0) throw std::invalid_argument(fmt::format("bench gemm: --splits must be >= 0 (got {})", opt.splits));
  c.lin_opt.splits = opt.splits;
  if (opt.act_scale != "token" && opt.act_scale != "tensor")
    throw std::invalid_argument("bench gemm: --act-scale must be token or tensor (got '" + opt.act_scale + "')");
  c.per_token = opt.act_scale == "token";
  if (opt.mask != "p48" && opt.mask != "s24")
    throw std::invalid_argument("bench gemm: --mask must be p48 or s24 (got '" + opt.mask + "')");
  for (int k = 0; k < kNumSchemes; ++k) {
    c.schemes[k] = parse_scheme(kSchemeTexts[k]);
    if (c.schemes[k].is_sharq()) c.schemes[k].mask.kind = opt.mask == "s24" ? MaskKind::scalar24 : MaskKind::pair48;
    if (c.schemes[k].has_act_global_scale())
      c.schemes[k].act_scale = c.per_token ? GlobalScale::per_row : GlobalScale::per_tensor;
  }
  for (int64_t M : opt.m) c.lin_opt.max_m = std::max(c.lin_opt.max_m, M);
  if (c.lin_opt.kernel == cuda::Fp4GemmKernel::small && c.lin_opt.max_m > cuda::kSmallMaxM)
    throw std::invalid_argument(fmt::format("bench gemm: --kernel small takes M <= {}", cuda::kSmallMaxM));

  std::vector<const LayerShape*> shapes;
  for (const LayerShape& s : kShapes)
    if (selected(models, s.model) && selected(layers, s.layer)) shapes.push_back(&s);

  // ---- device
  const int ndev = cuda::device_count();
  if (ndev == 0)
    throw std::runtime_error(
        "bench gemm: no CUDA device found (no NVIDIA driver or GPU visible); this benchmark needs a Hopper GPU (sm_90a)");
  if (opt.device < 0 || opt.device >= ndev)
    throw std::invalid_argument(fmt::format("bench gemm: --device {} out of range ({} device(s))", opt.device, ndev));
  SHARQ_CUDA_CHECK(cudaSetDevice(opt.device));
  c.dev = describe_device(opt.device);
  if (c.dev.cc_major != 9 || c.dev.cc_minor != 0)
    warn(fmt::format("{} is sm_{}{}: the FP4 kernels are built for sm_90a only and will be reported as n/a",
                     c.dev.name, c.dev.cc_major, c.dev.cc_minor));

  cudaStream_t stream = nullptr;
  SHARQ_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  struct StreamGuard {
    cudaStream_t s;
    ~StreamGuard() {
      cudaStreamSynchronize(s);
      cudaStreamDestroy(s);
    }
  } stream_guard{stream};
  c.stream = stream;
  cuda::CublasLtGemm blas;
  c.blas = &blas;
  Timer timer(stream);

  measure_copy(c.dev, stream);
  if (opt.csv) fmt::print("{}", csv_header());
  else fmt::print("{}", device_header(c));
  std::fflush(stdout);

  for (const LayerShape* sh : shapes) {
    LayerWeights lw = build_weights(c, *sh);
    std::vector<Row> rows;
    for (int64_t M : opt.m) {
      progress(c, fmt::format("  {} {} M={}", sh->model, sh->layer, M));
      rows.push_back(bench_row(c, timer, *sh, lw, M));
      if (opt.csv) {
        fmt::print("{}", csv_row(c, rows.back()));
        std::fflush(stdout);
      }
    }
    if (!opt.csv) {
      fmt::print("{}", layer_tables(c, *sh, lw, rows));
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace sharq
