// `sharq opcheck`: the operator-level study that shows why SharQ exists.
//
// For one linear layer Y = X W^T it runs every requested scheme and reports the relative output
// error ||Y - Y_fp32||_F / ||Y_fp32||_F and, for each SharQ variant, the share of its W4A4
// baseline's error gap that it recovers:
//     gap = (err_baseline - err_sharq) / (err_baseline - err_reference)
// with the reference scheme fp16 by default (SHARQ_SPEC: "FP16 is the accuracy reference").
// It also splits the error into its activation and weight parts (each with the other operand
// exact), because SharQ changes both: a much better X^, and W32 instead of W16 weights.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "sharq/runtime/cpu/linear.h"

namespace sharq {

// Synthetic LLM-like activations (deterministic for a seed, on every platform: only
// std::mt19937_64's specified output stream is used, with our own transforms):
//  - bulk: Student-t with 4 degrees of freedom (heavy-tailed), unit scale;
//  - channel outliers: round(K * channel_fraction) channels (at least 1), chosen uniformly, each
//    scaled by a factor drawn uniformly from [channel_scale_lo, channel_scale_hi] (20-100x);
//  - token spikes: each token, with probability spike_prob, gets 1-3 "massive activation"
//    channels set to +-U(spike_lo, spike_hi).
struct OutlierActivationParams {
  double channel_fraction = 0.005;
  double channel_scale_lo = 20.0, channel_scale_hi = 100.0;
  double spike_prob = 0.02;
  double spike_lo = 200.0, spike_hi = 800.0;
};
std::vector<float> make_outlier_activations(int64_t M, int64_t K, uint64_t seed, const OutlierActivationParams& p = {});
// Gaussian weights N(0, 1/K) (the scale of a trained layer's fan-in).
std::vector<float> make_gaussian_weights(int64_t N, int64_t K, uint64_t seed);

struct OpcheckConfig {
  int64_t M = 128, K = 4096, N = 1024;
  uint64_t seed = 1234;
  std::string schemes = "fp32,fp16,bf16,fp8,w4a16,nvfp4,sharq,sharq:w16,sharq:s24,sharq:tensor,mxfp4,sharq-mxfp4,hif4,sharq-hif4";
  std::string reference = "fp16";
  std::string x_path, w_path;  // .npy inputs (override the generator); 2-D, float32/float16/bfloat16
  std::string save_dir;        // write Y and dequantized operands of each scheme as float32 .npy
  // Upper bound on opcheck_bytes(M, K, N); beyond it run_opcheck refuses, naming the dimensions.
  int64_t max_bytes = int64_t{8} << 30;
};

// Estimated peak bytes of run_opcheck for an M x K input and an N x K weight (in double: no
// overflow for any int64 dimensions). Empty shapes (any dimension 0) are refused by run_opcheck.
double opcheck_bytes(int64_t M, int64_t K, int64_t N);

struct OpcheckRow {
  std::string scheme;
  double rel_err = 0;
  double act_err = 0;            // ||X^ W^T - X W^T|| / ||X W^T||: activation quantization alone
  double weight_err = 0;         // ||X W^^T - X W^T|| / ||X W^T||: weight quantization alone
  double bits_per_weight = 0;
  double ms = 0;                 // forward() wall time on this CPU
  std::string baseline;          // SharQ variants: their W4A4 baseline
  std::optional<double> gap;     // SharQ variants: gap recovered vs baseline (rel_err)
  std::optional<double> act_gap; // the same on act_err (what the decomposition itself targets)
};

struct OpcheckResult {
  int64_t M = 0, K = 0, N = 0;
  uint64_t seed = 0;
  std::string x_source, w_source, reference;
  double reference_err = 0, reference_act_err = 0;
  std::vector<OpcheckRow> rows;
};

OpcheckResult run_opcheck(const OpcheckConfig& cfg);
std::string format_opcheck_table(const OpcheckResult& r);
std::string format_opcheck_csv(const OpcheckResult& r);
std::string format_opcheck_json(const OpcheckResult& r);

}  // namespace sharq
