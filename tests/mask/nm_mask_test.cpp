// N:M mask tests (src/sharq/mask/nm_mask.h/.cpp): pair-4:8, scalar 2:4, general N:M, the pair-score
// ablations, metadata nibbles, ties, NaN/Inf ranking.
//
// The reference is brute force: a group's kept set is the unique N-subset S such that every member
// of S beats every non-member, where i beats j when its score ranks higher (NaN above every
// number, then by value, +Inf included) or the scores are equal and i < j (SHARQ_SPEC "Ties go to
// the lower index"). Every N-subset is enumerated.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "sharq/mask/nm_mask.h"

namespace {

using sharq::MaskKind;
using sharq::MaskSpec;
using sharq::PairScore;
using sharq::mask_row;
using sharq::mask_row_metadata;
using sharq::pair48_keep_bits;
using sharq::scalar24_keep_bits;
using sharq::pair48_to_24_position;
using sharq::pair48_to_24_inverse;

const float kInf = std::numeric_limits<float>::infinity();
const float kNaN = std::numeric_limits<float>::quiet_NaN();

// ---- reference ----------------------------------------------------------------------------------
bool score_better(float a, float b) {
  if (std::isnan(a)) return !std::isnan(b);
  if (std::isnan(b)) return false;
  return a > b;
}
bool score_equal(float a, float b) { return (std::isnan(a) && std::isnan(b)) || a == b; }
bool beats(const std::vector<float>& s, int i, int j) {
  return score_better(s[i], s[j]) || (score_equal(s[i], s[j]) && i < j);
}

// Brute force: enumerate all subsets of size n of {0..m-1}; return the unique one whose members
// beat every non-member, as a bit mask. Fails the test if not exactly one qualifies.
uint64_t brute_force_top(const std::vector<float>& s, int n) {
  const int m = static_cast<int>(s.size());
  uint64_t found = 0;
  int count = 0;
  for (uint64_t sub = 0; sub < (uint64_t{1} << m); ++sub) {
    if (std::popcount(sub) != n) continue;
    bool ok = true;
    for (int i = 0; i < m && ok; ++i)
      for (int j = 0; j < m && ok; ++j)
        if (((sub >> i) & 1) && !((sub >> j) & 1) && !beats(s, i, j)) ok = false;
    if (ok) {
      found = sub;
      ++count;
    }
  }
  EXPECT_EQ(count, 1) << "reference: the top-" << n << " set must be unique";
  return found;
}
// For large M: i is kept iff fewer than n elements beat it (same definition, O(M^2)).
std::vector<bool> rank_count_top(const std::vector<float>& s, int n) {
  const int m = static_cast<int>(s.size());
  std::vector<bool> keep(m);
  for (int i = 0; i < m; ++i) {
    int above = 0;
    for (int j = 0; j < m; ++j) above += j != i && beats(s, j, i);
    keep[i] = above < n;
  }
  return keep;
}

// Pair scores, from their definitions (FP32, like the masks).
float ref_pair_score(float a, float b, PairScore k) {
  const float x = std::fabs(a), y = std::fabs(b);
  if (std::isnan(x) || std::isnan(y)) return kNaN;
  const float hi = std::max(x, y), lo = std::min(x, y);
  switch (k) {
    case PairScore::max: return hi;
    case PairScore::l1: return x + y;
    case PairScore::l2sq: return x * x + y * y;
    case PairScore::max_quarter_min: return hi + 0.25f * lo;
  }
  return kNaN;
}

// Reference keep flags for a row: groups zero-padded to a multiple of the group size.
std::vector<uint8_t> ref_mask_row(const std::vector<float>& v, const MaskSpec& spec) {
  const int64_t K = static_cast<int64_t>(v.size());
  const int G = spec.kind == MaskKind::pair48 ? 8 : (spec.kind == MaskKind::scalar24 ? 4 : spec.m);
  std::vector<uint8_t> keep(v.size(), 0);
  for (int64_t g0 = 0; g0 < K; g0 += G) {
    std::vector<float> grp(G, 0.0f);
    for (int i = 0; i < G; ++i)
      if (g0 + i < K) grp[i] = v[g0 + i];
    std::vector<bool> kept(G, false);
    if (spec.kind == MaskKind::pair48) {
      std::vector<float> s(4);
      for (int p = 0; p < 4; ++p) s[p] = ref_pair_score(grp[2 * p], grp[2 * p + 1], spec.score);
      const uint64_t top = brute_force_top(s, 2);
      for (int i = 0; i < 8; ++i) kept[i] = (top >> (i / 2)) & 1;
    } else {
      std::vector<float> s(G);
      for (int i = 0; i < G; ++i) s[i] = std::fabs(grp[i]);
      const int n = spec.kind == MaskKind::scalar24 ? 2 : spec.n;
      if (G <= 12) {
        const uint64_t top = brute_force_top(s, n);
        for (int i = 0; i < G; ++i) kept[i] = (top >> i) & 1;
      } else {
        kept = rank_count_top(s, n);
      }
    }
    for (int i = 0; i < G && g0 + i < K; ++i) keep[g0 + i] = kept[i];
  }
  return keep;
}

// ---- random rows --------------------------------------------------------------------------------
enum class Data { gaussian, heavy, small_ints, special };
// small_ints: integers in [-3, 3] (many ties and zeros); special: Gaussian with ~3% NaN / +-Inf.
std::vector<float> random_row(std::mt19937_64& rng, int64_t K, Data d) {
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  std::student_t_distribution<float> student(1.5f);
  std::uniform_int_distribution<int> ints(-3, 3);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(K));
  for (auto& x : v) {
    switch (d) {
      case Data::gaussian: x = gauss(rng); break;
      case Data::heavy: x = student(rng); break;
      case Data::small_ints: x = static_cast<float>(ints(rng)); break;
      case Data::special: {
        const float r = u(rng);
        x = r < 0.01f ? kNaN : (r < 0.02f ? kInf : (r < 0.03f ? -kInf : (r < 0.035f ? -kNaN : gauss(rng))));
        break;
      }
    }
  }
  return v;
}
const Data kAllData[] = {Data::gaussian, Data::heavy, Data::small_ints, Data::special};
const int64_t kRowLengths[] = {0, 1, 3, 4, 5, 7, 8, 9, 13, 16, 31, 64, 100, 1000};

std::string spec_str(const MaskSpec& s) { return sharq::to_string(s); }

void expect_mask_matches_reference(const MaskSpec& spec, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (Data d : kAllData) {
    for (int64_t K : kRowLengths) {
      const std::vector<float> v = random_row(rng, K, d);
      const std::vector<uint8_t> got = sharq::mask_row(v.data(), K, spec);
      const std::vector<uint8_t> want = ref_mask_row(v, spec);
      ASSERT_EQ(got.size(), static_cast<size_t>(K));
      for (int64_t i = 0; i < K; ++i)
        ASSERT_EQ(got[i], want[i]) << spec_str(spec) << " data " << static_cast<int>(d) << " K " << K << " position " << i
                                   << " value " << v[i];
    }
  }
}

// =====================================================================================================
// Structure: exactly N of each M
TEST(NmMask, Pair48KeepsTwoWholePairsOfEachGroupOf8) {
  std::mt19937_64 rng(1);
  for (Data d : kAllData) {
    for (int64_t K : kRowLengths) {
      const std::vector<float> v = random_row(rng, K, d);
      const auto keep = sharq::mask_row(v.data(), K, MaskSpec{MaskKind::pair48});
      for (int64_t g0 = 0; g0 < K; g0 += 8) {
        int kept = 0;
        for (int64_t i = g0; i < std::min<int64_t>(K, g0 + 8); ++i) {
          ASSERT_TRUE(keep[i] == 0 || keep[i] == 1);
          kept += keep[i];
          if (i % 2 == 1) {
            ASSERT_EQ(keep[i], keep[i - 1]) << "pair split at " << i;
          }
        }
        if (g0 + 8 <= K) {
          ASSERT_EQ(kept, 4) << "group at " << g0 << " K " << K;
        } else {
          ASSERT_LE(kept, 4);
        }
      }
    }
  }
}

TEST(NmMask, Scalar24KeepsTwoOfEachGroupOf4) {
  std::mt19937_64 rng(2);
  for (Data d : kAllData) {
    for (int64_t K : kRowLengths) {
      const std::vector<float> v = random_row(rng, K, d);
      const auto keep = sharq::mask_row(v.data(), K, MaskSpec{MaskKind::scalar24});
      for (int64_t g0 = 0; g0 < K; g0 += 4) {
        int kept = 0;
        for (int64_t i = g0; i < std::min<int64_t>(K, g0 + 4); ++i) kept += keep[i];
        // A partial group is zero-padded; real values win every tie with the padding (|x| >= 0,
        // lower index), so it keeps min(2, real values).
        ASSERT_EQ(kept, std::min<int64_t>(2, K - g0)) << "K " << K << " group " << g0;
      }
    }
  }
}

TEST(NmMask, GeneralNmKeepsExactlyNOfEachGroup) {
  std::mt19937_64 rng(3);
  const std::pair<int, int> nms[] = {{0, 4}, {1, 1}, {1, 4}, {2, 4}, {2, 3}, {3, 8}, {4, 8}, {8, 8}, {5, 7}, {4, 16}, {16, 16}, {7, 32}};
  for (auto [n, m] : nms) {
    const MaskSpec spec{MaskKind::nm, PairScore::max, n, m};
    EXPECT_EQ(sharq::mask_group_size(spec), m);
    for (Data d : kAllData) {
      for (int64_t K : kRowLengths) {
        const std::vector<float> v = random_row(rng, K, d);
        const auto keep = sharq::mask_row(v.data(), K, spec);
        for (int64_t g0 = 0; g0 < K; g0 += m) {
          int kept = 0;
          for (int64_t i = g0; i < std::min<int64_t>(K, g0 + m); ++i) kept += keep[i];
          // full groups keep n; a zero-padded partial group keeps min(n, real values)
          ASSERT_EQ(kept, std::min<int64_t>(n, K - g0)) << n << ":" << m << " K " << K << " group " << g0;
        }
      }
    }
  }
}

// =====================================================================================================
// Selection: brute force over every choice
TEST(NmMask, Pair48MatchesBruteForceForEveryPairScore) {
  for (PairScore s : {PairScore::max, PairScore::l1, PairScore::l2sq, PairScore::max_quarter_min})
    expect_mask_matches_reference(MaskSpec{MaskKind::pair48, s}, 10 + static_cast<int>(s));
}

TEST(NmMask, Scalar24MatchesBruteForce) { expect_mask_matches_reference(MaskSpec{MaskKind::scalar24}, 20); }

TEST(NmMask, GeneralNmMatchesBruteForce) {
  const std::pair<int, int> nms[] = {{0, 4}, {1, 1}, {1, 2}, {1, 4}, {2, 4}, {2, 3}, {3, 8}, {4, 8}, {8, 8}, {5, 7}, {3, 10}, {4, 16}, {9, 24}};
  uint64_t seed = 30;
  for (auto [n, m] : nms) expect_mask_matches_reference(MaskSpec{MaskKind::nm, PairScore::max, n, m}, seed++);
}

TEST(NmMask, GeneralTwoOfFourEqualsScalar24) {
  std::mt19937_64 rng(40);
  for (Data d : kAllData) {
    for (int64_t K : kRowLengths) {
      const std::vector<float> v = random_row(rng, K, d);
      EXPECT_EQ(sharq::mask_row(v.data(), K, MaskSpec{MaskKind::nm, PairScore::max, 2, 4}),
                sharq::mask_row(v.data(), K, MaskSpec{MaskKind::scalar24}));
    }
  }
}

// =====================================================================================================
// Pair scores
TEST(PairScore, Definitions) {
  EXPECT_EQ(sharq::pair_score(3.0f, -4.0f, PairScore::max), 4.0f);
  EXPECT_EQ(sharq::pair_score(3.0f, -4.0f, PairScore::l1), 7.0f);
  EXPECT_EQ(sharq::pair_score(3.0f, -4.0f, PairScore::l2sq), 25.0f);
  EXPECT_EQ(sharq::pair_score(3.0f, -4.0f, PairScore::max_quarter_min), 4.75f);
  EXPECT_EQ(sharq::pair_score(-4.0f, 3.0f, PairScore::max_quarter_min), 4.75f);
  EXPECT_EQ(sharq::pair_score(-0.0f, 0.0f, PairScore::max), 0.0f);
  EXPECT_EQ(sharq::pair_score(kInf, 1.0f, PairScore::l2sq), kInf);
  EXPECT_EQ(sharq::pair_score(-kInf, 1.0f, PairScore::max), kInf);
  for (PairScore k : {PairScore::max, PairScore::l1, PairScore::l2sq, PairScore::max_quarter_min}) {
    EXPECT_TRUE(std::isnan(sharq::pair_score(kNaN, 1.0f, k)));
    EXPECT_TRUE(std::isnan(sharq::pair_score(1.0f, -kNaN, k)));
    EXPECT_TRUE(std::isnan(sharq::pair_score(kInf, kNaN, k)));
  }
  std::mt19937_64 rng(50);
  std::normal_distribution<float> g(0.0f, 3.0f);
  for (int i = 0; i < 10000; ++i) {
    const float a = g(rng), b = g(rng);
    for (PairScore k : {PairScore::max, PairScore::l1, PairScore::l2sq, PairScore::max_quarter_min})
      ASSERT_EQ(sharq::pair_score(a, b, k), ref_pair_score(a, b, k)) << a << " " << b << " kind " << static_cast<int>(k);
  }
}

TEST(PairScore, AblationsSelectDifferentPairs) {
  // Pairs: P0 = (6, 0), P1 = (4, 4), P2 = (5, -2), P3 = (0, 5.5).
  //            max   l1   l2sq   max + min/4
  //   P0       6     6    36     6
  //   P1       4     8    32     5
  //   P2       5     7    29     5.5
  //   P3       5.5   5.5  30.25  5.5
  // top-2:   {0,3} {1,2} {0,1}  {0, 2} (P2 and P3 tie at 5.5: the lower index wins)
  const float v[8] = {6, 0, 4, 4, 5, -2, 0, 5.5f};
  struct Case { PairScore s; uint8_t meta; };
  const Case cases[] = {{PairScore::max, 0 | 3 << 2}, {PairScore::l1, 1 | 2 << 2},
                        {PairScore::l2sq, 0 | 1 << 2}, {PairScore::max_quarter_min, 0 | 2 << 2}};
  for (const Case& c : cases) {
    EXPECT_EQ(sharq::pair48_select(v, c.s), c.meta) << static_cast<int>(c.s);
    const auto keep = sharq::mask_row(v, 8, MaskSpec{MaskKind::pair48, c.s});
    for (int i = 0; i < 8; ++i) {
      const int p = i / 2;
      EXPECT_EQ(keep[i], p == (c.meta & 3) || p == (c.meta >> 2)) << static_cast<int>(c.s) << " " << i;
    }
  }
}

// =====================================================================================================
// Ties, NaN, Inf
TEST(NmMask, TiesGoToTheLowerIndex) {
  const float ones[4] = {1, 1, 1, 1}, zeros[4] = {0, -0.0f, 0, 0};
  EXPECT_EQ(sharq::scalar24_select(ones), 0 | 1 << 2);
  EXPECT_EQ(sharq::scalar24_select(zeros), 0 | 1 << 2);
  const float a[4] = {0, 2, 2, 2};
  EXPECT_EQ(sharq::scalar24_select(a), 1 | 2 << 2);
  const float b[4] = {-3, 3, 0, 3};  // |-3| = |3|
  EXPECT_EQ(sharq::scalar24_select(b), 0 | 1 << 2);
  const float c[4] = {1, 5, 2, 5};
  EXPECT_EQ(sharq::scalar24_select(c), 1 | 3 << 2);
  const float d[4] = {2, 1, 2, 5};
  EXPECT_EQ(sharq::scalar24_select(d), 0 | 3 << 2);
  const float e[4] = {1, 2, 2, 2};
  EXPECT_EQ(sharq::scalar24_select(e), 1 | 2 << 2);

  const float p8[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  EXPECT_EQ(sharq::pair48_select(p8, PairScore::max), 0 | 1 << 2);
  const float q8[8] = {1, 0, 0, -1, 1, 1, 0, 1};  // all pair maxima 1
  EXPECT_EQ(sharq::pair48_select(q8, PairScore::max), 0 | 1 << 2);
  EXPECT_EQ(sharq::pair48_select(q8, PairScore::l1), 0 | 2 << 2);  // l1: P2 = 2 best, then P0 of the 1-1-1 tie

  for (int n = 0; n <= 8; ++n) {  // general N:M on an all-equal group keeps the first N
    const float eq[8] = {7, 7, -7, 7, 7, -7, 7, 7};
    const auto keep = sharq::mask_row(eq, 8, MaskSpec{MaskKind::nm, PairScore::max, n, 8});
    for (int i = 0; i < 8; ++i) EXPECT_EQ(keep[i], i < n) << n << " " << i;
  }
  // Zero padding never wins a tie against a real zero: K = 5, values all 0 -> keep 0,1 | 4 (and
  // the padded 5 dropped) for scalar 2:4.
  const float z5[5] = {0, 0, 0, 0, 0};
  const auto k5 = sharq::mask_row(z5, 5, MaskSpec{MaskKind::scalar24});
  EXPECT_EQ(k5, (std::vector<uint8_t>{1, 1, 0, 0, 1}));
}

TEST(NmMask, NanRanksAboveEverythingInfNext) {
  EXPECT_EQ(sharq::scalar24_select(std::vector<float>{1, kNaN, kInf, 5}.data()), 1 | 2 << 2);
  EXPECT_EQ(sharq::scalar24_select(std::vector<float>{kInf, 1e30f, kNaN, -kInf}.data()), 0 | 2 << 2);
  EXPECT_EQ(sharq::scalar24_select(std::vector<float>{1e38f, -kInf, 3e38f, 0}.data()), 1 | 2 << 2);
  EXPECT_EQ(sharq::scalar24_select(std::vector<float>{kNaN, kNaN, kNaN, kNaN}.data()), 0 | 1 << 2);
  EXPECT_EQ(sharq::scalar24_select(std::vector<float>{0, 0, 0, -kNaN}.data()), 0 | 3 << 2);
  EXPECT_EQ(sharq::scalar24_select(std::vector<float>{-kInf, 0, kNaN, kInf}.data()), 0 | 2 << 2);
  // pair-4:8: a NaN anywhere in a pair makes the pair rank first; an Inf pair next.
  const float p[8] = {100, 100, 0, kNaN, 1, -kInf, 50, 50};
  for (PairScore s : {PairScore::max, PairScore::l1, PairScore::l2sq, PairScore::max_quarter_min})
    EXPECT_EQ(sharq::pair48_select(p, s), 1 | 2 << 2) << static_cast<int>(s);
  // general N:M
  const float g[6] = {3, kInf, -2, kNaN, 9, -kInf};
  const auto keep = sharq::mask_row(g, 6, MaskSpec{MaskKind::nm, PairScore::max, 4, 6});
  EXPECT_EQ(keep, (std::vector<uint8_t>{0, 1, 0, 1, 1, 1}));
  const auto keep3 = sharq::mask_row(g, 6, MaskSpec{MaskKind::nm, PairScore::max, 3, 6});
  EXPECT_EQ(keep3, (std::vector<uint8_t>{0, 1, 0, 1, 0, 1}));  // NaN, then +Inf (idx 1) and -Inf (idx 5)
}

TEST(NmMask, RanksAbove) {
  EXPECT_TRUE(sharq::ranks_above(kNaN, kInf));
  EXPECT_TRUE(sharq::ranks_above(kNaN, 0.0f));
  EXPECT_FALSE(sharq::ranks_above(kNaN, kNaN));
  EXPECT_FALSE(sharq::ranks_above(kInf, kNaN));
  EXPECT_TRUE(sharq::ranks_above(kInf, 3e38f));
  EXPECT_FALSE(sharq::ranks_above(kInf, kInf));
  EXPECT_TRUE(sharq::ranks_above(2.0f, 1.0f));
  EXPECT_FALSE(sharq::ranks_above(1.0f, 1.0f));
  EXPECT_FALSE(sharq::ranks_above(1.0f, 2.0f));
}

TEST(NmMask, Top2Of4EveryPermutationOfDistinctScores) {
  float base[4] = {1, 2, 3, 4};
  int perm[4] = {0, 1, 2, 3};
  do {
    float s[4];
    for (int i = 0; i < 4; ++i) s[i] = base[perm[i]];
    int i3 = 0, i4 = 0;
    for (int i = 0; i < 4; ++i) {
      if (s[i] == 3) i3 = i;
      if (s[i] == 4) i4 = i;
    }
    const int lo = std::min(i3, i4), hi = std::max(i3, i4);
    EXPECT_EQ(sharq::top2_of4(s), lo | hi << 2);
  } while (std::next_permutation(perm, perm + 4));
}

// =====================================================================================================
// Metadata
TEST(NmMetadata, NibbleFormatHandChecked) {
  // pair-4:8, K = 20: groups [0,0, 5,0, 0,0, 0,-9] -> pairs 1,3 -> 1 | 3<<2 = 0xD;
  // [1 x 8] -> pairs 0,1 -> 0x4; partial [0,0, 0,7 | pad] -> pairs 1 then 0 -> 0 | 1<<2 = 0x4.
  const float v[20] = {0, 0, 5, 0, 0, 0, 0, -9, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 7};
  const auto meta = sharq::mask_row_metadata(v, 20, MaskSpec{MaskKind::pair48});
  ASSERT_EQ(meta.size(), 2u);
  EXPECT_EQ(meta[0], 0x4D);
  EXPECT_EQ(meta[1], 0x04);
  // scalar 2:4, K = 8: [1,-5,3,0] -> 1,2 -> 1 | 2<<2 = 0x9; [0,0,8,-8] -> 2,3 -> 0xE.
  const float w[8] = {1, -5, 3, 0, 0, 0, 8, -8};
  const auto m2 = sharq::mask_row_metadata(w, 8, MaskSpec{MaskKind::scalar24});
  ASSERT_EQ(m2.size(), 1u);
  EXPECT_EQ(m2[0], 0xE9);
  EXPECT_EQ(sharq::mask_row_metadata(w, 0, MaskSpec{MaskKind::scalar24}).size(), 0u);
}

TEST(NmMetadata, KeepBitsOfEveryValidNibble) {
  for (int i0 = 0; i0 < 4; ++i0) {
    for (int i1 = i0 + 1; i1 < 4; ++i1) {
      const uint8_t m = static_cast<uint8_t>(i0 | i1 << 2);
      EXPECT_EQ(sharq::pair48_keep_bits(m), (3u << (2 * i0)) | (3u << (2 * i1)));
      EXPECT_EQ(sharq::scalar24_keep_bits(m), (1u << i0) | (1u << i1));
    }
  }
}

void metadata_round_trip(MaskKind kind, PairScore score, uint64_t seed) {
  const MaskSpec spec{kind, score};
  const int G = kind == MaskKind::pair48 ? 8 : 4;
  std::mt19937_64 rng(seed);
  for (Data d : kAllData) {
    for (int64_t K : kRowLengths) {
      const std::vector<float> v = random_row(rng, K, d);
      const auto meta = sharq::mask_row_metadata(v.data(), K, spec);
      const auto keep = sharq::mask_row(v.data(), K, spec);
      const int64_t groups = (K + G - 1) / G;
      ASSERT_EQ(meta.size(), static_cast<size_t>((groups + 1) / 2));
      // decode by hand: group g in byte g/2, low nibble when g even; idx0 | idx1 << 2, idx0 < idx1
      for (int64_t g = 0; g < groups; ++g) {
        const uint8_t nib = static_cast<uint8_t>(g % 2 == 0 ? meta[g / 2] & 0xF : meta[g / 2] >> 4);
        const int i0 = nib & 3, i1 = nib >> 2;
        ASSERT_LT(i0, i1) << "group " << g;
        for (int j = 0; j < G && g * G + j < K; ++j) {
          const int unit = kind == MaskKind::pair48 ? j / 2 : j;
          ASSERT_EQ(keep[g * G + j], unit == i0 || unit == i1) << "K " << K << " group " << g << " j " << j;
        }
      }
      if (groups % 2 == 1) {
        ASSERT_EQ(meta.back() >> 4, 0) << "unused high nibble must be 0";
      }
      ASSERT_EQ(sharq::keep_from_metadata(meta.data(), K, kind), keep) << "K " << K;
    }
  }
}
TEST(NmMetadata, RoundTripPair48) {
  for (PairScore s : {PairScore::max, PairScore::l1, PairScore::l2sq, PairScore::max_quarter_min})
    metadata_round_trip(MaskKind::pair48, s, 60 + static_cast<int>(s));
}
TEST(NmMetadata, RoundTripScalar24) { metadata_round_trip(MaskKind::scalar24, PairScore::max, 70); }

// =====================================================================================================
// Errors, names
TEST(NmMask, InvalidSpecsThrow) {
  const float v[8] = {};
  EXPECT_THROW(sharq::mask_row(v, 8, MaskSpec{MaskKind::nm, PairScore::max, 5, 4}), std::invalid_argument);
  EXPECT_THROW(sharq::mask_row(v, 8, MaskSpec{MaskKind::nm, PairScore::max, -1, 4}), std::invalid_argument);
  EXPECT_THROW(sharq::mask_row(v, 8, MaskSpec{MaskKind::nm, PairScore::max, 0, 0}), std::invalid_argument);
  EXPECT_THROW(sharq::mask_row(v, 8, MaskSpec{MaskKind::nm, PairScore::max, 1, 257}), std::invalid_argument);
  EXPECT_NO_THROW(sharq::mask_row(v, 8, MaskSpec{MaskKind::nm, PairScore::max, 256, 256}));
  EXPECT_THROW(sharq::mask_row_metadata(v, 8, MaskSpec{MaskKind::nm, PairScore::max, 2, 4}), std::invalid_argument);
  const uint8_t meta[1] = {0x4};
  EXPECT_THROW(sharq::keep_from_metadata(meta, 4, MaskKind::nm), std::invalid_argument);
}

TEST(NmMask, NamesAndGroupSizes) {
  EXPECT_EQ(sharq::to_string(MaskSpec{MaskKind::pair48}), "p48");
  EXPECT_EQ(sharq::to_string(MaskSpec{MaskKind::pair48, PairScore::l1}), "p48:l1");
  EXPECT_EQ(sharq::to_string(MaskSpec{MaskKind::pair48, PairScore::l2sq}), "p48:l2");
  EXPECT_EQ(sharq::to_string(MaskSpec{MaskKind::pair48, PairScore::max_quarter_min}), "p48:maxmin");
  EXPECT_EQ(sharq::to_string(MaskSpec{MaskKind::scalar24}), "s24");
  EXPECT_EQ(sharq::to_string(MaskSpec{MaskKind::nm, PairScore::max, 2, 8}), "nm2_8");
  EXPECT_EQ(sharq::mask_group_size(MaskSpec{MaskKind::pair48}), 8);
  EXPECT_EQ(sharq::mask_group_size(MaskSpec{MaskKind::scalar24}), 4);
  // Default spec is the paper's: pair-4:8 by max.
  const MaskSpec def;
  EXPECT_EQ(def.kind, MaskKind::pair48);
  EXPECT_EQ(def.score, PairScore::max);
}

// pair-4:8 -> scalar 2:4 (issue 14's route to wgmma.sp): every pair choice becomes 2 of 4 in each
// half, with the pair nibble as the 2:4 nibble of both halves; a bijection inside each group of 8.
TEST(Pair48As24, EveryPairChoiceIsTwoOfFourInEachHalfWithTheSameNibble) {
  for (int k = 0; k < 64; ++k) {
    const int p = pair48_to_24_position(k);
    EXPECT_EQ(p >> 3, k >> 3) << k;  // stays in its group (so in its 16/32 scale block)
    EXPECT_EQ(pair48_to_24_inverse(p), k) << k;
    EXPECT_EQ(pair48_to_24_position(pair48_to_24_inverse(k)), k) << k;
  }
  EXPECT_EQ(pair48_to_24_position(1), 4);  // pair 0's second member starts the second half
  EXPECT_EQ(pair48_to_24_position(6), 3);  // pair 3's first member ends the first half
  int choices = 0;
  for (int p0 = 0; p0 < 4; ++p0)
    for (int p1 = p0 + 1; p1 < 4; ++p1) {
      const uint8_t meta = static_cast<uint8_t>(p0 | (p1 << 2));
      const uint8_t keep8 = pair48_keep_bits(meta);
      uint8_t permuted = 0;
      for (int k = 0; k < 8; ++k)
        if ((keep8 >> k) & 1) permuted = static_cast<uint8_t>(permuted | (1u << pair48_to_24_position(k)));
      EXPECT_EQ(permuted & 0xF, scalar24_keep_bits(meta)) << int(meta);
      EXPECT_EQ(permuted >> 4, scalar24_keep_bits(meta)) << int(meta);
      ++choices;
    }
  EXPECT_EQ(choices, 6);
}

// On real masks: a row's pair-4:8 keep flags, permuted, are scalar 2:4 in every half of 4 and
// match the row's metadata; and the permuted dot product is the same sum (integer-valued floats:
// every partial sum exact, so any order gives the same bits).
TEST(Pair48As24, RowMasksPermuteToScalar24AndDotProductsAreUnchanged) {
  std::mt19937 rng(2026);
  std::uniform_int_distribution<int> iv(-64, 64);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const MaskSpec spec{MaskKind::pair48, PairScore::max};
  for (int rep = 0; rep < 200; ++rep) {
    const int64_t K = 8 * (1 + rep % 40);
    std::vector<float> v(static_cast<size_t>(K)), w(v.size()), vp(v.size()), wp(v.size());
    for (auto& x : v) x = nd(rng) * (rep % 3 == 0 ? 100.0f : 1.0f);
    const std::vector<uint8_t> keep = mask_row(v.data(), K, spec);
    const std::vector<uint8_t> meta = mask_row_metadata(v.data(), K, spec);
    std::vector<uint8_t> keep_p(keep.size());
    for (int64_t k = 0; k < K; ++k) keep_p[static_cast<size_t>(pair48_to_24_position(static_cast<int>(k)))] = keep[static_cast<size_t>(k)];
    for (int64_t g = 0; g < K / 8; ++g) {
      const uint8_t nib = static_cast<uint8_t>((meta[static_cast<size_t>(g / 2)] >> (4 * (g % 2))) & 0xF);
      for (int h = 0; h < 2; ++h) {
        uint8_t bits = 0;
        for (int q = 0; q < 4; ++q) bits = static_cast<uint8_t>(bits | (keep_p[static_cast<size_t>(8 * g + 4 * h + q)] << q));
        ASSERT_EQ(bits, scalar24_keep_bits(nib)) << "rep " << rep << " group " << g << " half " << h;
      }
    }
    float dot = 0.0f, dot_p = 0.0f;
    for (int64_t k = 0; k < K; ++k) {
      v[static_cast<size_t>(k)] = static_cast<float>(iv(rng));
      w[static_cast<size_t>(k)] = static_cast<float>(iv(rng));
      const size_t pk = static_cast<size_t>(pair48_to_24_position(static_cast<int>(k)));
      vp[pk] = v[static_cast<size_t>(k)];
      wp[pk] = w[static_cast<size_t>(k)];
    }
    for (int64_t k = 0; k < K; ++k) {
      dot += v[static_cast<size_t>(k)] * w[static_cast<size_t>(k)];
      dot_p += vp[static_cast<size_t>(k)] * wp[static_cast<size_t>(k)];
    }
    EXPECT_EQ(dot, dot_p) << rep;
  }
}

}  // namespace
