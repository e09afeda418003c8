#include "sharq/mask/nm_mask.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>

#include <fmt/format.h>

#include "sharq/formats/blocks.h"

namespace sharq {

int mask_group_size(const MaskSpec& spec) {
  switch (spec.kind) {
    case MaskKind::pair48: return 8;
    case MaskKind::scalar24: return 4;
    case MaskKind::nm: return spec.m;
  }
  return 0;
}

static void check_nm(const MaskSpec& spec) {
  if (spec.kind == MaskKind::nm && (spec.m < 1 || spec.m > 256 || spec.n < 0 || spec.n > spec.m))
    throw std::invalid_argument(fmt::format("N:M mask: need 0 <= N <= M <= 256, got {}:{}", spec.n, spec.m));
}

std::vector<uint8_t> mask_row(const float* v, int64_t K, const MaskSpec& spec) {
  check_nm(spec);
  std::vector<uint8_t> keep(static_cast<size_t>(K), 0);
  const int G = mask_group_size(spec);
  std::vector<float> buf(static_cast<size_t>(G));
  std::vector<int> idx(static_cast<size_t>(G));
  std::vector<float> score(static_cast<size_t>(G));
  for (int64_t g0 = 0; g0 < K; g0 += G) {
    for (int i = 0; i < G; ++i) buf[i] = g0 + i < K ? v[g0 + i] : 0.0f;  // zero padding
    uint32_t bits = 0;
    if (spec.kind == MaskKind::pair48) {
      bits = pair48_keep_bits(pair48_select(buf.data(), spec.score));
    } else if (spec.kind == MaskKind::scalar24) {
      bits = scalar24_keep_bits(scalar24_select(buf.data()));
    } else {
      for (int i = 0; i < G; ++i) score[i] = abs_f32(buf[i]);
      std::iota(idx.begin(), idx.end(), 0);
      // stable: equal scores keep ascending index order, so ties go to the lower index
      std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return ranks_above(score[a], score[b]); });
      for (int i = 0; i < spec.n; ++i)
        if (g0 + idx[i] < K) keep[g0 + idx[i]] = 1;
      continue;
    }
    for (int i = 0; i < G && g0 + i < K; ++i) keep[g0 + i] = (bits >> i) & 1u;
  }
  return keep;
}

std::vector<uint8_t> mask_row_metadata(const float* v, int64_t K, const MaskSpec& spec) {
  if (spec.kind == MaskKind::nm) throw std::invalid_argument("N:M mask: no packed metadata (use pair48 or scalar24)");
  const int G = mask_group_size(spec);
  const int64_t groups = (K + G - 1) / G;
  std::vector<uint8_t> meta(static_cast<size_t>((groups + 1) / 2), 0);
  float buf[8];
  for (int64_t g = 0; g < groups; ++g) {
    for (int i = 0; i < G; ++i) buf[i] = g * G + i < K ? v[g * G + i] : 0.0f;
    const uint8_t m = spec.kind == MaskKind::pair48 ? pair48_select(buf, spec.score) : scalar24_select(buf);
    set_nibble(meta.data(), static_cast<int>(g), m);
  }
  return meta;
}

std::vector<uint8_t> keep_from_metadata(const uint8_t* meta, int64_t K, MaskKind kind) {
  if (kind == MaskKind::nm) throw std::invalid_argument("N:M mask: no packed metadata");
  const int G = kind == MaskKind::pair48 ? 8 : 4;
  std::vector<uint8_t> keep(static_cast<size_t>(K), 0);
  for (int64_t g = 0; g * G < K; ++g) {
    const uint8_t m = get_nibble(meta, static_cast<int>(g));
    const uint32_t bits = kind == MaskKind::pair48 ? pair48_keep_bits(m) : scalar24_keep_bits(m);
    for (int i = 0; i < G && g * G + i < K; ++i) keep[g * G + i] = (bits >> i) & 1u;
  }
  return keep;
}

std::string to_string(const MaskSpec& spec) {
  std::string s;
  switch (spec.kind) {
    case MaskKind::pair48: s = "p48"; break;
    case MaskKind::scalar24: s = "s24"; break;
    case MaskKind::nm: s = fmt::format("nm{}_{}", spec.n, spec.m); break;
  }
  if (spec.kind == MaskKind::pair48 && spec.score != PairScore::max) {
    static const char* names[] = {"max", "l1", "l2", "maxmin"};
    s += fmt::format(":{}", names[static_cast<int>(spec.score)]);
  }
  return s;
}

}  // namespace sharq
