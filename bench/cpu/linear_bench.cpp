// CPU linear-layer benchmark: every scheme's forward() at M=64, K=N=4096 (default), with the
// ratio to the fp32 linear measured in the same run. Google Benchmark does the timing; a small
// reporter collects the results and prints the ratios and the CPU at the end.
//
//   sharq_bench_cpu [--shape=M,K,N] [google-benchmark flags]
#include <benchmark/benchmark.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <omp.h>

#include "sharq/decompose/sharq_decompose.h"
#include "sharq/runtime/cpu/linear.h"
#include "sharq/tools/opcheck.h"

namespace {

int64_t gM = 64, gK = 4096, gN = 4096;
const char* kSchemes[] = {"fp32", "bf16", "fp8", "w4a16", "nvfp4", "sharq", "sharq:s24", "sharq:token",
                          "mxfp4", "sharq-mxfp4", "hif4", "sharq-hif4"};

struct Inputs {
  std::vector<float> X, W;
  Inputs() : X(sharq::make_outlier_activations(gM, gK, 1)), W(sharq::make_gaussian_weights(gN, gK, 2)) {}
};
const Inputs& inputs() {
  static const Inputs in;
  return in;
}

void BM_linear_forward(benchmark::State& state, const std::string& scheme) {
  const Inputs& in = inputs();
  const auto lin = sharq::Linear::create(sharq::parse_scheme(scheme), in.W.data(), gN, gK);
  std::vector<float> Y(static_cast<size_t>(gM * gN));
  for (auto _ : state) {
    lin->forward(in.X.data(), gM, Y.data());
    benchmark::DoNotOptimize(Y.data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * gM * gN * gK, benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
  state.counters["bits/w"] = 8.0 * static_cast<double>(lin->weight_bytes()) / static_cast<double>(gN * gK);
}

void BM_sharq_prepare_only(benchmark::State& state) {  // the online activation decomposition alone
  const Inputs& in = inputs();
  for (auto _ : state) {
    auto a = sharq::sharq_prepare<sharq::SharqNvfp4, 8>(in.X.data(), gM, gK, sharq::PairScore::max,
                                                         sharq::GlobalScale::per_tensor);
    benchmark::DoNotOptimize(a.backbone.data());
  }
}

class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    // single runs, or the median when --benchmark_repetitions asks for aggregates
    for (const auto& r : runs) {
      std::string name = r.benchmark_name();
      name = name.substr(0, name.find("/real_time"));
      if (r.run_type == Run::RT_Iteration && !medians_.count(name)) times_[name] = r.GetAdjustedRealTime();
      if (r.run_type == Run::RT_Aggregate && r.aggregate_name == "median") {
        times_[name] = r.GetAdjustedRealTime();
        medians_.insert(name);
      }
    }
    ConsoleReporter::ReportRuns(runs);
  }
  void Finalize() override {
    ConsoleReporter::Finalize();
    const std::string base = "linear/fp32";
    auto it = times_.find(base);
    if (it == times_.end()) return;
    std::printf("\nratios to %s measured in this run (M=%lld K=%lld N=%lld, %d OpenMP threads, %s):\n", base.c_str(),
                static_cast<long long>(gM), static_cast<long long>(gK), static_cast<long long>(gN), omp_get_max_threads(),
                cpu_name().c_str());
    for (const auto& [name, t] : times_) std::printf("  %-28s %10.3f ms  %6.2fx fp32\n", name.c_str(), t, t / it->second);
  }
  static std::string cpu_name() {
    std::ifstream f("/proc/cpuinfo");
    for (std::string line; std::getline(f, line);)
      if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
    return "unknown CPU";
  }
 private:
  std::map<std::string, double> times_;
  std::set<std::string> medians_;
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    long long m, k, n;
    if (std::sscanf(argv[i], "--shape=%lld,%lld,%lld", &m, &k, &n) == 3) { gM = m; gK = k; gN = n; }
    else args.push_back(argv[i]);
  }
  int ac = static_cast<int>(args.size());
  for (const char* s : kSchemes)
    benchmark::RegisterBenchmark((std::string("linear/") + s).c_str(), BM_linear_forward, std::string(s))
        ->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("prepare/sharq", BM_sharq_prepare_only)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::Initialize(&ac, args.data());
  RatioReporter rep;
  benchmark::RunSpecifiedBenchmarks(&rep);
  benchmark::Shutdown();
  return 0;
}
