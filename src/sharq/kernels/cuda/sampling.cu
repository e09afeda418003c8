#include "sharq/kernels/cuda/sampling.h"

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

#include "sharq/kernels/cuda/cuda_check.h"
#include "sharq/kernels/cuda/launch.cuh"

namespace sharq::cuda {
namespace {

constexpr int kThreads = 512;

__device__ __forceinline__ uint32_t key_of(float x) {  // order-preserving: a > b <=> key(a) > key(b)
  const uint32_t u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float value_of(uint32_t k) {  // key_of's inverse
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k);
}

struct ArgMax {
  float v;
  int32_t i;
};
struct ArgMaxOp {
  __device__ ArgMax operator()(const ArgMax& a, const ArgMax& b) const {
    return (b.v > a.v || (b.v == a.v && b.i < a.i)) ? b : a;  // the first maximum
  }
};

// The row's maximum and sum of exp(L - max) over kSplits slices of the row, one block each, so
// that a batch-1 step reads its 0.5 MB logits row with many SMs instead of one (one block: 32 us per
// step at V = 128256, H200). Pass 1: each slice's first maximum. Pass 2: each block combines the
// slices' maxima in slice order (the first maximum of the row) and sums exp(L - max) over its slice
// in double. The sampling kernel then adds the slices' sums in slice order: deterministic.
constexpr int kSplitThreads = 256;
constexpr int kMaxSplits = 64;
int splits_for(int64_t V) {
  return static_cast<int>(std::min<int64_t>(kMaxSplits, std::max<int64_t>(1, (V + 4095) / 4096)));
}
struct RowStats {  // the workspace: per request, kMaxSplits slices
  ArgMax best[kMaxSplits];
  double z[kMaxSplits];
};

__device__ __forceinline__ void slice_of(int64_t V, int splits, int s, int64_t& b, int64_t& e) {
  const int64_t per = (V + splits - 1) / splits;
  b = min(V, s * per);
  e = min(V, b + per);
}

__global__ void __launch_bounds__(kSplitThreads) row_max_kernel(const float* __restrict__ logits, int64_t V, int splits,
                                                                const SampleRequest* __restrict__ reqs, RowStats* stats) {
  pdl_wait();
  pdl_trigger();
  using ReduceA = cub::BlockReduce<ArgMax, kSplitThreads>;
  __shared__ typename ReduceA::TempStorage tmp;
  const float* L = logits + static_cast<int64_t>(reqs[blockIdx.x].row) * V;
  int64_t b, e;
  slice_of(V, splits, blockIdx.y, b, e);
  ArgMax mine{-INFINITY, 0x7FFFFFFF};
  for (int64_t i = b + threadIdx.x; i < e; i += kSplitThreads)
    if (L[i] > mine.v || mine.i == 0x7FFFFFFF) mine = ArgMax{L[i], static_cast<int32_t>(i)};
  const ArgMax best = ReduceA(tmp).Reduce(mine, ArgMaxOp());
  if (threadIdx.x == 0) stats[blockIdx.x].best[blockIdx.y] = best;
}

__device__ __forceinline__ ArgMax row_best(const RowStats& st, int splits) {
  ArgMax best = st.best[0];
  for (int s = 1; s < splits; ++s) best = ArgMaxOp()(best, st.best[s]);  // slice order: the first maximum
  return best;
}

__global__ void __launch_bounds__(kSplitThreads) row_expsum_kernel(const float* __restrict__ logits, int64_t V, int splits,
                                                                   const SampleRequest* __restrict__ reqs,
                                                                   RowStats* stats) {
  pdl_wait();
  pdl_trigger();
  using ReduceD = cub::BlockReduce<double, kSplitThreads>;
  __shared__ typename ReduceD::TempStorage tmp;
  const float* L = logits + static_cast<int64_t>(reqs[blockIdx.x].row) * V;
  const float mx = row_best(stats[blockIdx.x], splits).v;
  int64_t b, e;
  slice_of(V, splits, blockIdx.y, b, e);
  double acc = 0.0;
  for (int64_t i = b + threadIdx.x; i < e; i += kSplitThreads) acc += static_cast<double>(expf(L[i] - mx));
  const double z = ReduceD(tmp).Sum(acc);
  if (threadIdx.x == 0) stats[blockIdx.x].z[blockIdx.y] = z;
}

// One block per request; for the index-order walks thread t owns the contiguous index range
// [t * chunk, (t + 1) * chunk), so that index order inside a tie group is (thread, position) order.
// The row's maximum and sum z1 come from the two passes above; a greedy row ends at once.
__global__ void __launch_bounds__(kThreads) sample_kernel(const float* __restrict__ logits, int64_t V, int splits,
                                                          const SampleRequest* __restrict__ reqs,
                                                          const RowStats* __restrict__ stats, int32_t* token,
                                                          float* logprob) {
  pdl_wait();
  pdl_trigger();
  using ReduceD = cub::BlockReduce<double, kThreads>;
  using ReduceI = cub::BlockReduce<int64_t, kThreads>;
  using ScanI = cub::BlockScan<int64_t, kThreads>;
  __shared__ union {
    typename ReduceD::TempStorage d;
    typename ReduceI::TempStorage i;
    typename ScanI::TempStorage s;
  } tmp;
  __shared__ ArgMax s_best;
  __shared__ double s_d;
  __shared__ int64_t s_i;
  __shared__ int32_t s_tok;

  const SampleRequest rq = reqs[blockIdx.x];
  const float* L = logits + static_cast<int64_t>(rq.row) * V;
  const int64_t chunk = (V + kThreads - 1) / kThreads;
  const int64_t i0 = threadIdx.x * chunk, i1 = min(V, i0 + chunk);

  // The sums and the counts are order-free (each thread sums its indices in ascending order, the
  // block in a fixed tree), so they stride over the row, coalesced; only the index-order walks
  // below use the thread's contiguous range.
  const RowStats& st = stats[blockIdx.x];
  if (threadIdx.x == 0) s_best = row_best(st, splits);
  __syncthreads();
  const float mx = s_best.v;
  const uint32_t kmax = key_of(mx);

  // block sum (double) of f(i) over every index
  auto block_sum = [&](auto f) -> double {
    double acc = 0.0;
    for (int64_t i = threadIdx.x; i < V; i += kThreads) acc += f(i);
    const double s = ReduceD(tmp.d).Sum(acc);
    if (threadIdx.x == 0) s_d = s;
    __syncthreads();
    const double r = s_d;
    __syncthreads();
    return r;
  };
  auto block_count = [&](uint32_t key) -> int64_t {
    int64_t c = 0;
    for (int64_t i = threadIdx.x; i < V; i += kThreads) c += key_of(L[i]) == key;
    const int64_t s = ReduceI(tmp.i).Sum(c);
    if (threadIdx.x == 0) s_i = s;
    __syncthreads();
    const int64_t r = s_i;
    __syncthreads();
    return r;
  };

  double z1 = 0.0;
  for (int s = 0; s < splits; ++s) z1 += st.z[s];
  int32_t tok = s_best.i;
  if (rq.temperature > 0.0f) {
    const float T = rq.temperature;
    auto q = [&](int64_t i) { return static_cast<double>(expf((L[i] - mx) / T)); };  // the host's float exp
    auto mass_from = [&](uint32_t k) {  // sum of q over keys >= k
      return block_sum([&](int64_t i) { return key_of(L[i]) >= k ? q(i) : 0.0; });
    };
    const double Z = block_sum(q);
    if (rq.top_p >= 1.0f) {  // no nucleus: the host walks the vocabulary in index order
      using ScanD = cub::BlockScan<double, kThreads>;
      __shared__ typename ScanD::TempStorage ts;
      double mine_sum = 0.0;
      for (int64_t i = i0; i < i1; ++i) mine_sum += q(i);
      double prefix = 0.0;
      if (threadIdx.x == 0) s_tok = static_cast<int32_t>(V - 1);  // r past the total (rounding): the last
      ScanD(ts).ExclusiveSum(mine_sum, prefix);
      __syncthreads();
      const double r = static_cast<double>(rq.u) * Z;
      if (i0 < i1 && r >= prefix && r < prefix + mine_sum) {
        double c = prefix;
        for (int64_t i = i0; i < i1; ++i) {
          c += q(i);
          if (r < c) {
            s_tok = static_cast<int32_t>(i);
            break;
          }
        }
      }
      __syncthreads();
      tok = s_tok;
    } else {
      // the nucleus: keys > t, and the first j ties at key t
      uint32_t t;
      int64_t j;
      double kept;
      {
        const double target = static_cast<double>(rq.top_p) * Z;
        uint32_t lo = 0, hi = kmax;  // mass_from(0) = Z >= target
        while (lo < hi) {
          const uint32_t mid = lo + (hi - lo + 1) / 2;
          if (mass_from(mid) >= target) lo = mid;
          else hi = mid - 1;
        }
        t = lo;
        const double above = t == 0xFFFFFFFFu ? 0.0 : mass_from(t + 1);
        const int64_t ties = block_count(t);
        const float lt = value_of(t);
        const double pt = static_cast<double>(expf((lt - mx) / T));
        int64_t need = pt > 0.0 ? static_cast<int64_t>(ceil((target - above) / pt)) : 1;
        j = min(ties, max(int64_t{1}, need));
        kept = above + static_cast<double>(j) * pt;
      }
      const double r = static_cast<double>(rq.u) * kept;
      // the group (key) where r falls in the descending cumulative sum, then the tie inside it
      uint32_t lo = t, hi = kmax;
      while (lo < hi) {
        const uint32_t mid = lo + (hi - lo + 1) / 2;
        const double c = mid > t ? mass_from(mid) : kept;
        if (c > r) lo = mid;
        else hi = mid - 1;
      }
      const uint32_t s = lo;
      const double before = s == 0xFFFFFFFFu ? 0.0 : mass_from(s + 1);
      const float ls = value_of(s);
      const double ps = static_cast<double>(expf((ls - mx) / T));
      const int64_t group = s == t ? j : block_count(s);
      int64_t jj = ps > 0.0 ? static_cast<int64_t>(floor((r - before) / ps)) : 0;
      jj = max(int64_t{0}, min(group - 1, jj));
      // the jj-th index (ascending) with key s
      int64_t c = 0;
      for (int64_t i = i0; i < i1; ++i) c += key_of(L[i]) == s;
      int64_t first = 0;
      ScanI(tmp.s).ExclusiveSum(c, first);
      if (jj >= first && jj < first + c) {
        int64_t k = first;
        for (int64_t i = i0; i < i1; ++i)
          if (key_of(L[i]) == s) {
            if (k == jj) {
              s_tok = static_cast<int32_t>(i);
              break;
            }
            ++k;
          }
      }
      __syncthreads();
      tok = s_tok;
    }
  }
  if (threadIdx.x == 0) {
    token[blockIdx.x] = tok;
    logprob[blockIdx.x] = static_cast<float>(static_cast<double>(L[tok] - mx) - log(z1));
  }
}

}  // namespace

size_t sample_rows_workspace_bytes(int max_rows) { return static_cast<size_t>(std::max(0, max_rows)) * sizeof(RowStats); }

void sample_rows(const float* logits, int64_t V, const SampleRequest* req, int n, int32_t* token, float* logprob,
                 void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (n < 0 || V <= 0 || V > 0x7FFFFFFF) throw std::invalid_argument(fmt::format("sample_rows: {} rows of vocabulary {}", n, V));
  if (n == 0) return;
  if (!logits || !req || !token || !logprob || !workspace) throw std::invalid_argument("sample_rows: null pointer");
  if (workspace_bytes < sample_rows_workspace_bytes(n))
    throw std::invalid_argument(fmt::format("sample_rows: workspace of {} bytes for {} rows (needs {})", workspace_bytes, n,
                                            sample_rows_workspace_bytes(n)));
  const int splits = splits_for(V);
  auto* stats = static_cast<RowStats*>(workspace);
  const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(splits));
  // the first pass follows a graph launch (the decode step) or a copy: an ordinary launch
  row_max_kernel<<<grid, kSplitThreads, 0, stream>>>(logits, V, splits, req, stats);
  launch_pdl(row_expsum_kernel, grid, dim3(kSplitThreads), 0, stream, logits, V, splits, req, stats);
  launch_pdl(sample_kernel, dim3(static_cast<unsigned>(n)), dim3(kThreads), 0, stream, logits, V, splits, req,
             static_cast<const RowStats*>(stats), token, logprob);
  SHARQ_CUDA_CHECK(cudaGetLastError());
}

}  // namespace sharq::cuda
