// N:M masks along K (SHARQ_SPEC "Masks"): pair-4:8, scalar 2:4, and a general top-N of M.
//
// Ties go to the lower index, which makes every mask deterministic. NaN ranks above every number
// (it is "the largest outlier"), +-Inf next; equal keys still resolve to the lower index.
// Metadata: one nibble per group, idx0 | idx1 << 2 with idx0 < idx1 (pair indices for pair-4:8,
// element indices for scalar 2:4); group g sits in byte g/2, low nibble when g is even.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sharq/core/hd.h"

namespace sharq {

enum class MaskKind : uint8_t {
  pair48,    // 2 of 4 pairs per aligned group of 8 (sm_100/sm_120 sparse FP4; paper default)
  scalar24,  // 2 of 4 elements per aligned group of 4 (sm_80/sm_90 sparse tensor cores)
  nm,        // general top-N of M by |x|, for studies (dense path only, no packed form)
};

// Pair score for pair-4:8. `max` is the spec; the others are the authors' ablations.
enum class PairScore : uint8_t { max, l1, l2sq, max_quarter_min };

struct MaskSpec {
  MaskKind kind = MaskKind::pair48;
  PairScore score = PairScore::max;
  int n = 2, m = 4;  // only for MaskKind::nm
};

// Strict ranking of two scores: NaN above every number, otherwise by value. Equal scores (or two
// NaNs) do not rank above each other, so a scan that only moves on "ranks above" keeps the lower index.
SHARQ_HD bool ranks_above(float a, float b) {
  const bool na = is_nan(a), nb = is_nan(b);
  return na ? !nb : (!nb && a > b);
}

// PairScore::max (the spec's score) on its own, for code that hoists the kind out of its loops.
SHARQ_HD float pair_score_max(float a, float b) {
  const float x = abs_f32(a), y = abs_f32(b);
  if (is_nan(x) || is_nan(y)) return f32_from_bits(0x7FC00000u);
  return x > y ? x : y;
}

SHARQ_HD float pair_score(float a, float b, PairScore kind) {
  if (kind == PairScore::max) return pair_score_max(a, b);
  const float x = abs_f32(a), y = abs_f32(b);
  if (is_nan(x) || is_nan(y)) return f32_from_bits(0x7FC00000u);
  const float hi = x > y ? x : y, lo = x > y ? y : x;
  switch (kind) {
    case PairScore::l1: return x + y;
    case PairScore::l2sq: return x * x + y * y;
    case PairScore::max_quarter_min: return hi + 0.25f * lo;
    default: return hi;
  }
}

// Top-2 of 4 scores, ties to the lower index; returns idx0 | idx1 << 2 with idx0 < idx1.
SHARQ_HD uint8_t top2_of4(const float* s) {
  int i0 = 0;
  for (int i = 1; i < 4; ++i)
    if (ranks_above(s[i], s[i0])) i0 = i;
  int i1 = i0 == 0 ? 1 : 0;
  for (int i = i1 + 1; i < 4; ++i)
    if (i != i0 && ranks_above(s[i], s[i1])) i1 = i;
  const int lo = i0 < i1 ? i0 : i1, hi = i0 < i1 ? i1 : i0;
  return static_cast<uint8_t>(lo | (hi << 2));
}

// pair-4:8 over 8 values: the 2 best of the 4 pairs (k, k+1), k even.
SHARQ_HD uint8_t pair48_select(const float* v, PairScore score) {
  float s[4];
  for (int p = 0; p < 4; ++p) s[p] = pair_score(v[2 * p], v[2 * p + 1], score);
  return top2_of4(s);
}

// scalar 2:4 over 4 values: the 2 largest |v|.
SHARQ_HD uint8_t scalar24_select(const float* v) {
  float s[4];
  for (int i = 0; i < 4; ++i) s[i] = abs_f32(v[i]);
  return top2_of4(s);
}

// Keep bits of a group from its metadata nibble: 8 bits (pair-4:8) or 4 bits (scalar 2:4).
SHARQ_HD uint8_t pair48_keep_bits(uint8_t meta) {
  const int p0 = meta & 3, p1 = (meta >> 2) & 3;
  return static_cast<uint8_t>((3u << (2 * p0)) | (3u << (2 * p1)));
}
SHARQ_HD uint8_t scalar24_keep_bits(uint8_t meta) {
  return static_cast<uint8_t>((1u << (meta & 3)) | (1u << ((meta >> 2) & 3)));
}

// pair-4:8 as scalar 2:4 (for sm_90's `wgmma.sp`, which takes 2 of every 4 along K): inside each
// aligned group of 8 K-positions, position 2p + e (pair p, member e) moves to 4e + p, the pairs'
// first members, then their second members. With pairs p0 < p1 kept, each half of 4 then keeps
// exactly positions p0 and p1, so a pair-4:8 metadata nibble (p0 | p1 << 2) is, unchanged, the
// scalar 2:4 nibble of both halves. Applied to both operands of a dot product (the activations'
// planes and the weights' K order) it changes no sum; the groups stay inside their 16/32 scale
// blocks. A bijection (not an involution): pair48_to_24_inverse undoes it.
SHARQ_HD int pair48_to_24_position(int k) { return (k & ~7) | ((k & 1) << 2) | ((k >> 1) & 3); }
SHARQ_HD int pair48_to_24_inverse(int k) { return (k & ~7) | ((k & 3) << 1) | ((k >> 2) & 1); }

// ---- host helpers ------------------------------------------------------------------------------

// Keep flags (0/1) for a row of K values under `spec`; K is zero-padded to a multiple of the group.
std::vector<uint8_t> mask_row(const float* v, int64_t K, const MaskSpec& spec);

// Metadata nibbles of a row (pair48/scalar24 only): ceil(K/group) nibbles, packed two per byte.
std::vector<uint8_t> mask_row_metadata(const float* v, int64_t K, const MaskSpec& spec);

// Decode metadata nibbles back to keep flags for K positions (inverse of mask_row_metadata).
std::vector<uint8_t> keep_from_metadata(const uint8_t* meta, int64_t K, MaskKind kind);

int mask_group_size(const MaskSpec& spec);

// "p48", "s24", "nm2_8" ... and "max", "l1", "l2", "maxmin".
std::string to_string(const MaskSpec& spec);

}  // namespace sharq
