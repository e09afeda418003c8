// The linear-layer API of the GPU, for every GPU scheme of quant/scheme.h (the ones
// scheme_unsupported_reason(s, Device::cuda) accepts):
//
//   fp16, bf16   weights FP16 / BF16: the 16-bit GEMV (kernels/cuda/gemv16.h) for M <= gemv16_max_m (1 by
//                default), with the norm or SwiGLU in front of the layer computed inside it
//                (prepare_norm, prepare_swiglu); cuBLASLt above
//   fp8          W8A8 E4M3, per-output-channel weight scales, per-token activation scales (the one
//                fp8 definition, quant/fp8.h): per-row quantization kernel + cuBLASLt FP8 with
//                OUTER_VEC_32F scales
//   w4a16        NVFP4-16 weights, BF16 activations: fp4_gemm on X itself
//   nvfp4        NVFP4-16 activation prep + fp4_gemm
//   sharq        fused SharQ prep (p48 | s24, token | tensor) + fp4_gemm: exact (the planes S^ and R^
//                summed in FP32 accumulators) or merged (one plane fp16(S^ + R^)); W32 or :w16 weights
//
// Two objects:
//   GpuActivations  the prepared input of one scheme and K, every buffer sized for max_m rows at
//                   construction. Layers that read the same input (q/k/v, gate/up) share one: prepare
//                   once, gemm per layer.
//   GpuLinear       the weights (FP32 from the host or already on the device, quantized once on the
//                   device by the shared quantizers: the same bytes as the CPU Linear's; or taken as an
//                   already packed Fp4Tiles) + prepare(x -> acts) + gemm(acts -> y),
//                   or forward() = both through its own scratch (own_scratch).
//
// Graph-safe: everything is allocated at construction; prepare/gemm/forward only launch kernels on
// the given stream (no allocation, no host synchronization) and can be captured in a CUDA graph.
// X (M x K) and Y (M x N) are row-major device arrays of act_dtype(scheme): FP16 for fp16, BF16 for
// every other scheme (gemm_accumulate: FP32 rows Y += X W^T). Batch invariance (docs/numerics.md):
// with per-token scales (the default) a row's output does not depend on the other rows of the call,
// for M <= kSmallMaxM and for M above.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sharq/kernels/cuda/cublaslt_gemm.h"
#include "sharq/kernels/cuda/fp4_gemm.h"
#include "sharq/kernels/cuda/gemv16.h"
#include "sharq/kernels/cuda/sharq_prep.h"
#include "sharq/quant/fp4_tiles.h"
#include "sharq/quant/scheme.h"

namespace sharq::cuda {

// FP16 for the fp16 scheme, BF16 for every other.
DType act_dtype(const Scheme& s);

struct GpuLinearOptions {
  int64_t max_m = 64;                               // rows per call, at most (sizes every buffer)
  bool own_scratch = true;                          // allocate the activations + workspace forward() uses
  Fp4GemmKernel kernel = Fp4GemmKernel::automatic;  // FP4 schemes: force a family (tests, benches)
  int splits = 0;                                   // FP4 schemes: force the split count of both GEMM families (tuning)
  bool batch_invariant = false;                     // FP4 schemes: one prefill split for every M (fp4_gemm.h)
  int64_t gemv16_max_m = 1;                         // fp16, bf16: the 16-bit GEMV for M <= this (0 .. kGemv16MaxM; 0: cuBLASLt)
};

// An FP32 row-major matrix in device memory. parts: the row counts of matrices stacked along N
// into one layer (q/k/v, gate/up: one GEMM instead of three or two); with FP4 weights each keeps its
// own per-tensor scale g, so the layer computes exactly what the separate layers would (up to the
// GEMM's summation order). Empty: one matrix.
struct DeviceMatrix {
  const float* data = nullptr;
  int64_t rows = 0, cols = 0;
  std::vector<int64_t> parts;
};

class GpuActivations {
 public:
  // Throws std::invalid_argument (unsupported scheme, K <= 0, max_m < 1).
  GpuActivations(const Scheme& s, int64_t K, int64_t max_m);
  ~GpuActivations();
  GpuActivations(const GpuActivations&) = delete;
  GpuActivations& operator=(const GpuActivations&) = delete;

  const Scheme& scheme() const { return scheme_; }
  int64_t K() const { return K_; }
  int64_t max_m() const { return max_m_; }
  int64_t M() const { return M_; }  // rows of the last prepare
  size_t bytes() const;

  // Rows of another prepared input of the same scheme and K: row r = src's row rows[r] for r < M
  // (rows: M device ints, ordered on `stream`; the rows may repeat). The MoE experts' inputs: the
  // activation prep runs once per token and its rows are then permuted, instead of once per
  // (token, expert). Only where gathers(): prepared planes or codes with per-row scales (fp8, nvfp4,
  // sharq with per-token scales; w4a16 with K % 128 != 0). Throws std::invalid_argument otherwise.
  bool gathers() const;
  void gather(const GpuActivations& src, const int32_t* rows, int64_t M, cudaStream_t stream);

  // Host copies of the last prepare's operands, for tests (synchronizes the device): the FP16/BF16
  // planes (M x ld; a1 only for sharq exact), the FP8 codes (M x ld) and the row scales.
  struct Host { int64_t M = 0, ld = 0; std::vector<uint16_t> a0, a1; std::vector<uint8_t> codes; std::vector<float> row_scale; };
  Host to_host() const;

 private:
  friend class GpuLinear;
  Scheme scheme_;
  int64_t K_, ld_ = 0, max_m_, M_ = 0;
  DeviceBuffer<__half> a0_, a1_;   // FP4 schemes: activation planes (FP16; BF16 bits for w4a16)
  DeviceBuffer<uint8_t> q8_;       // fp8: E4M3 codes, M x ld (ld = K rounded up to 16, zero-padded)
  DeviceBuffer<float> g_;          // g_x (nvfp4, sharq) or the fp8 row scales
  // fp8 GpuLinear::gemm_rows: a row range's scales, 16-byte aligned for cuBLASLt (max_m floats;
  // stream-ordered scratch: one stream uses an activations object at a time)
  mutable DeviceBuffer<float> g8_rows_;
  DeviceBuffer<uint32_t> scratch_; // per-tensor amax word
  const void* x_ = nullptr;        // fp16, bf16, w4a16 with K % 128 == 0: X itself (valid until gemm)
  // fp16, bf16 through the GEMV: what it computes its input from (prepare_norm: x_ is the FP32
  // residual rows; prepare_swiglu: x_ is the gate/up output)
  PrepInput front_ = PrepInput::plain;
  const float* front_w_ = nullptr;
  float front_eps_ = 0.0f;
};

class GpuLinear {
 public:
  // W: N x K row-major FP32 on the host (nn.Linear layout); bias: N host floats or null (added in
  // the FP32 epilogue of the FP4 GEMMs, before the one output rounding as on the CPU; after
  // cuBLASLt's 16-bit rounding for fp16 / bf16 / fp8). `blas` is
  // required by fp16, bf16 and fp8 (one handle shared by every layer) and must outlive the layer.
  // Throws std::invalid_argument naming the problem (scheme not on the GPU, shapes, null pointers).
  GpuLinear(const Scheme& scheme, const float* W, int64_t N, int64_t K, const GpuLinearOptions& opt = {},
            CublasLtGemm* blas = nullptr, const float* bias = nullptr);
  // W already on the device (FP32, N x K row-major): quantized there, launched on `stream`; W may
  // be freed once the stream has passed this point. The same bytes as the host constructor.
  GpuLinear(const Scheme& scheme, const DeviceMatrix& W, const GpuLinearOptions& opt = {}, CublasLtGemm* blas = nullptr,
            const float* bias = nullptr, cudaStream_t stream = nullptr);
  // Already packed FP4 weights (the checkpoint loaders' output): the scheme must be an FP4-weight
  // scheme whose weight block matches `w.block`.
  GpuLinear(const Scheme& scheme, const Fp4Tiles& w, const GpuLinearOptions& opt = {}, const float* bias = nullptr);
  // Already quantized FP8 weights (a quantized checkpoint's stored E4M3 codes, N x K row-major on the
  // host, and its N per-channel multipliers), used as they are: scheme fp8 only; padded as that
  // scheme's layout needs (K to 16 with zero codes, N to 8 with zero rows of scale 1).
  struct Fp8Stored {
    const uint8_t* codes = nullptr;
    const float* scales = nullptr;
    int64_t N = 0, K = 0;
  };
  GpuLinear(const Scheme& scheme, const Fp8Stored& w, const GpuLinearOptions& opt, CublasLtGemm* blas,
            const float* bias = nullptr);
  ~GpuLinear();
  GpuLinear(const GpuLinear&) = delete;
  GpuLinear& operator=(const GpuLinear&) = delete;

  const Scheme& scheme() const { return scheme_; }
  int64_t N() const { return N_; }
  int64_t K() const { return K_; }
  int64_t max_m() const { return opt_.max_m; }
  size_t weight_bytes() const;
  // The packed FP4 weights of an FP4-weight scheme (null otherwise): benches read them.
  const DeviceFp4Weights* fp4_weights() const { return w4_.codes.get() ? &w4_ : nullptr; }
  // The split-K workspace gemm() needs for any M <= max_m (0 for most layers).
  size_t workspace_bytes() const { return ws_need_; }

  // x: M x K of act_dtype(scheme) on the device, 0 <= M <= acts.max_m(). acts must be of this
  // layer's scheme and K (checked).
  void prepare(const void* x, int64_t M, GpuActivations& acts, cudaStream_t stream) const;
  // Whether prepare_swiglu() and prepare_norm() exist for this scheme and any M: the FP4-activation
  // schemes (nvfp4, sharq), whose activation prep reads the row anyway. fp16 and bf16 have them where
  // gemv(M): the GEMV computes its input itself (prepare_norm without `add` only). Both throw otherwise.
  bool fused_prep() const;
  // fp16, bf16: whether gemm() and gemm_accumulate() run the 16-bit GEMV for M rows (M <=
  // gemv16_max_m, M <= max_m and the shape fits gemv16_supports()).
  bool gemv(int64_t M) const;
  // prepare() of T(silu(gate) * up), computed inside the activation prep from the fused gate/up
  // projection's output gu (M x 2K, gate first): bit for bit what transformer_ops' swiglu()
  // followed by prepare() give, without the intermediate M x K tensor.
  void prepare_swiglu(const void* gu, int64_t M, GpuActivations& acts, cudaStream_t stream) const;
  // prepare() of RMSNorm(x + add) * w (the residual add and the norm in front of this layer, as
  // transformer_ops' add_rmsnorm() computes them, the sum of squares in the prep's documented
  // order): x the FP32 residual stream (M x K), add the previous projection's output (M x K of
  // act_dtype, or null: nothing added), w K floats. x + add is written to x_out (M x K floats,
  // another buffer than x) when add is given; x_out may be null when add is.
  void prepare_norm(const float* x, const void* add, const float* w, float eps, int64_t M, float* x_out,
                    GpuActivations& acts, cudaStream_t stream) const;
  // y: acts.M() x N of act_dtype(scheme). workspace: workspace_bytes() of device memory (16-byte
  // aligned), or null to use the layer's own (own_scratch). y_f32: FP32 output instead of y (tests;
  // FP4 schemes only).
  void gemm(const GpuActivations& acts, void* y, cudaStream_t stream, void* workspace = nullptr,
            float* y_f32 = nullptr) const;
  // The successor of this layer that gemm() can compute inside the FP4 GEMM's split-K reduction
  // (fp4_gemm.h, Fp4Epilogue: SwiGLU after the stacked gate/up projection, the residual add +
  // RMSNorm after o and down), saving its separate kernel. fuses(): whether it does for M rows (the
  // FP4-weight schemes, where the small family splits K: the caller runs the separate kernel
  // otherwise).
  struct Epilogue {
    Fp4Epilogue kind = Fp4Epilogue::none;
    float* x = nullptr;             // add_rmsnorm: the FP32 residual rows (M x N), updated in place
    const float* norm_w = nullptr;  // add_rmsnorm: N floats
    float eps = 0.0f;
  };
  bool fuses(Fp4Epilogue e, int64_t M) const;
  // x += acts W^T with x the FP32 residual rows (acts.M() x N, 4-byte aligned), the product added
  // inside the GEMM (cuBLASLt's beta = 1, FP32 C = D = x: the sum is rounded once, to FP32, and the
  // product is never rounded to act_dtype): the residual add of o and down without its own pass
  // over the rows. accumulates(): whether this layer has it (fp16, bf16 without a bias); gemm_accumulate
  // throws otherwise.
  bool accumulates() const;
  void gemm_accumulate(const GpuActivations& acts, float* x, cudaStream_t stream) const;
  // gemm() of the rows row0 .. row0 + rows - 1 of acts (0 <= row0, row0 + rows <= acts.M()): y is
  // those rows' output (rows x N). A prepared input made of several layers' rows (the MoE experts'
  // permuted inputs) runs each layer on its own rows. In the FP4 families a row's output is what
  // gemm() of the whole input gives it (the batch-invariance rule, docs/numerics.md); fp16 / bf16 /
  // fp8 follow the GEMV / cuBLASLt choice for the range's row count. Not for a fused front
  // (prepare_norm, prepare_swiglu) nor, with per-tensor activation scales, for part of the input.
  void gemm_rows(const GpuActivations& acts, int64_t row0, int64_t rows, void* y, cudaStream_t stream,
                 void* workspace = nullptr) const;
  // fp16, bf16: the cuBLASLt GEMM whatever M, with a plain prepare() (the baseline the benches time
  // against the GEMV). Throws for the other schemes.
  void gemm_cublas(const GpuActivations& acts, void* y, cudaStream_t stream) const;
  // gemm() and then the epilogue, in one reduction: y is the epilogue's output (swiglu: M x N/2,
  // add_rmsnorm: the normalized M x N), of act_dtype. Throws where !fuses(ep.kind, acts.M()).
  void gemm(const GpuActivations& acts, const Epilogue& ep, void* y, cudaStream_t stream,
            void* workspace = nullptr) const;
  // prepare + gemm through the layer's own scratch (own_scratch).
  void forward(const void* x, int64_t M, void* y, cudaStream_t stream);
  GpuActivations& own_activations();  // throws without own_scratch

 private:
  void check_shape(int64_t N, int64_t K) const;
  // throws naming `who` unless acts were made for this layer's scheme and K
  // "GpuLinear(scheme, N = .., K = ..)::method", for error messages: the checks run on every call of a
  // step's hot path, so the label is formatted only when one throws
  std::string where(const char* method) const;
  void check_activations(const GpuActivations& acts, const char* method) const;
  struct Rows {  // the rows of acts a GEMM covers
    int64_t row0 = 0, n = 0;
  };
  static Rows all_rows(const GpuActivations& acts) { return Rows{0, acts.M_}; }
  void gemm_rows_impl(const GpuActivations& acts, Rows r, void* y, float* y_f32, cudaStream_t stream, void* workspace) const;
  void gemm_fp4(const GpuActivations& acts, Rows r, void* y, float* y_f32, const Epilogue& ep, cudaStream_t stream,
                void* workspace) const;
  void cublas_16(const GpuActivations& acts, Rows r, void* y, cudaStream_t stream) const;
  // fp16, bf16 with gemv(M): Y (store) or x += (accumulate) through the GEMV, from acts' front
  void gemm_gemv(const GpuActivations& acts, Rows r, void* y, bool accumulate, cudaStream_t stream) const;
  bool gemv_takes(const GpuActivations& acts, Rows r) const;
  struct Front {  // what prepare_input() reads in front of the activation prep
    PrepInput input = PrepInput::plain;
    const void* rms_w = nullptr;
    float eps = 0.0f;
    const void* add = nullptr;
    float* sum = nullptr;
  };
  void prepare_input(const void* x, int64_t M, GpuActivations& acts, cudaStream_t stream, const Front& f) const;
  void init(const float* W_device, const float* bias, cudaStream_t stream, const std::vector<int64_t>& parts = {});
  void init_scratch();
  Scheme scheme_;
  int64_t N_, K_;
  GpuLinearOptions opt_;
  CublasLtGemm* blas_ = nullptr;
  DeviceFp4Weights w4_;          // FP4 schemes
  DeviceBuffer<uint16_t> w16_;   // fp16 / bf16: N x K
  DeviceBuffer<uint8_t> w8_;     // fp8: N x ld codes
  DeviceBuffer<float> w8_scale_; // fp8: N per-channel scales (padded to n8_ with 1)
  int64_t ld8_ = 0, n8_ = 0;     // fp8: K padded to 16, N padded to 8
  DeviceBuffer<uint16_t> y8_;    // fp8 with N % 8 != 0: max_m x n8_ output scratch
  DeviceBuffer<float> bias_;
  size_t ws_need_ = 0;
  DeviceBuffer<uint8_t> ws_;
  std::unique_ptr<GpuActivations> own_;
};

}  // namespace sharq::cuda
