// A timeline without Nsight Systems: a CUPTI activity tracer that the CUDA driver loads into any
// process through CUDA_INJECTION64_PATH. Every kernel's and memcpy's start and end (ns), its CUDA-graph
// id and node id, stream, grid and demangled name, and every CUDA runtime call (host thread time, the
// same clock) go to the CSV named by SHARQ_TRACE_OUT when the process exits (column kind: kernel,
// memcpy, api). scripts/device/trace_steps.py reads it. The runtime records cost host time per call,
// so host gaps under the tracer are upper bounds.
//
//   g++ -O2 -shared -fPIC -I$CUDA/include scripts/device/kernel_trace.cpp -o kernel_trace.so -L$CUDA/lib64 -lcupti
//   SHARQ_TRACE_OUT=trace.csv CUDA_INJECTION64_PATH=$PWD/kernel_trace.so build/sharq bench model ...
//   (SHARQ_TRACE_NO_API=1: no runtime-call records)
//
// A device tool (scripts/device/), not part of the library: CUPTI's kernel records, unlike the
// engine's own event profile, add no work between the kernels of a graph.
#include <cupti.h>
#include <cxxabi.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

namespace {

constexpr size_t kBufferBytes = 8u << 20;

struct Row {
  const char* kind;
  uint64_t start, end, graph_node;
  uint32_t graph, stream;
  int32_t gx, gy, gz, bx;
  std::string name;
};

std::mutex g_mu;
std::vector<Row> g_rows;

std::string demangle(const char* s) {
  if (!s) return "?";
  int status = 0;
  char* d = abi::__cxa_demangle(s, nullptr, nullptr, &status);
  std::string out = status == 0 && d ? d : s;
  std::free(d);
  for (char& c : out)
    if (c == ',' || c == '"') c = ';';
  return out;
}

void CUPTIAPI requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = kBufferBytes;
  *max_records = 0;
}

void CUPTIAPI completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  CUpti_Activity* rec = nullptr;
  std::vector<Row> rows;
  while (cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
    if (rec->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || rec->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
      const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(rec);
      rows.push_back({"kernel", k->start, k->end, k->graphNodeId, k->graphId, k->streamId, k->gridX, k->gridY, k->gridZ,
                      k->blockX, demangle(k->name)});
    } else if (rec->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(rec);
      rows.push_back({"memcpy", m->start, m->end, m->graphNodeId, m->graphId, m->streamId, 0, 0, 0, 0,
                      "memcpy kind " + std::to_string(m->copyKind) + " " + std::to_string(m->bytes) + " B"});
    } else if (rec->kind == CUPTI_ACTIVITY_KIND_RUNTIME) {
      const auto* a = reinterpret_cast<const CUpti_ActivityAPI*>(rec);
      const char* nm = nullptr;
      cuptiGetCallbackName(CUPTI_CB_DOMAIN_RUNTIME_API, a->cbid, &nm);
      rows.push_back({"api", a->start, a->end, 0, 0, a->threadId, 0, 0, 0, 0, nm ? nm : "?"});
    }
  }
  std::free(buffer);
  std::lock_guard<std::mutex> lock(g_mu);
  for (Row& r : rows) g_rows.push_back(std::move(r));
}

void write_out() {
  cuptiActivityFlushAll(1);
  const char* path = std::getenv("SHARQ_TRACE_OUT");
  if (!path) path = "kernel_trace.csv";
  FILE* f = std::fopen(path, "w");
  if (!f) {
    std::fprintf(stderr, "kernel_trace: cannot write %s\n", path);
    return;
  }
  std::lock_guard<std::mutex> lock(g_mu);
  std::fprintf(f, "kind,start_ns,end_ns,graph,node,stream,grid_x,grid_y,grid_z,block_x,name\n");
  for (const Row& r : g_rows)
    std::fprintf(f, "%s,%llu,%llu,%u,%llu,%u,%d,%d,%d,%d,%s\n", r.kind, static_cast<unsigned long long>(r.start),
                 static_cast<unsigned long long>(r.end), r.graph, static_cast<unsigned long long>(r.graph_node), r.stream,
                 r.gx, r.gy, r.gz, r.bx, r.name.c_str());
  std::fclose(f);
  std::fprintf(stderr, "kernel_trace: %zu kernels -> %s\n", g_rows.size(), path);
}

bool ok(CUptiResult r, const char* what) {
  if (r == CUPTI_SUCCESS) return true;
  const char* s = nullptr;
  cuptiGetResultString(r, &s);
  std::fprintf(stderr, "kernel_trace: %s: %s\n", what, s ? s : "?");
  return false;
}

}  // namespace

extern "C" int InitializeInjection() {
  if (!ok(cuptiActivityRegisterCallbacks(requested, completed), "cuptiActivityRegisterCallbacks")) return 0;
  if (!ok(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "cuptiActivityEnable kernel")) return 0;
  if (!ok(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY), "cuptiActivityEnable memcpy")) return 0;
  if (!std::getenv("SHARQ_TRACE_NO_API") && !ok(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_RUNTIME), "cuptiActivityEnable runtime"))
    return 0;
  std::atexit(write_out);
  return 1;
}
