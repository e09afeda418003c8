// The one scheme vocabulary: names, defaults, options, canonical round trips, device support.
#include "sharq/quant/scheme.h"

#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "../support/exceptions.h"

namespace sharq {
namespace {

using sharq_test::what_of;

TEST(Scheme, DefaultsAreTheSameForEveryDevice) {
  // per-token g_x is the default (batch-invariant); pair-4:8 with the max score; exact; W32
  const Scheme s = parse_scheme("sharq");
  EXPECT_EQ(s.act_scale, GlobalScale::per_row);
  EXPECT_EQ(s.mask.kind, MaskKind::pair48);
  EXPECT_EQ(s.mask.score, PairScore::max);
  EXPECT_FALSE(s.merged);
  EXPECT_FALSE(s.w16);
  EXPECT_EQ(s.fp4_weight_block(), 32);
  EXPECT_EQ(parse_scheme("nvfp4").act_scale, GlobalScale::per_row);
  EXPECT_EQ(parse_scheme("nvfp4").fp4_weight_block(), 16);
  EXPECT_EQ(parse_scheme("sharq:w16").fp4_weight_block(), 16);
  EXPECT_EQ(parse_scheme("w4a16").fp4_weight_block(), 16);
  EXPECT_EQ(parse_scheme("fp8").fp4_weight_block(), 0);
  EXPECT_EQ(parse_scheme("sharq-hif4").mask.kind, MaskKind::scalar24);
  EXPECT_EQ(Scheme{}.act_scale, GlobalScale::per_row);  // a default-constructed Scheme agrees with the parser
}

TEST(Scheme, NamesRoundTripAndDropDefaults) {
  EXPECT_EQ(scheme_base_names().size(), 11u);
  for (const char* text : {"fp32", "fp16", "bf16", "fp8", "w4a16", "nvfp4", "nvfp4:tensor", "mxfp4", "hif4", "sharq",
                           "sharq:s24", "sharq:tensor", "sharq:l1", "sharq:l2", "sharq:maxmin", "sharq:nm2_8",
                           "sharq:merged", "sharq:w16", "sharq:s24:tensor:merged:w16", "sharq-mxfp4", "sharq-mxfp4:s24",
                           "sharq-hif4", "sharq-hif4:p48", "sharq-hif4:nm2_4"}) {
    const Scheme s = parse_scheme(text);
    EXPECT_EQ(s.name(), text) << "canonical form";
    const Scheme t = parse_scheme(s.name());
    EXPECT_TRUE(t == s) << text;
    EXPECT_EQ(t.kind, s.kind);
    EXPECT_EQ(t.mask.kind, s.mask.kind);
    EXPECT_EQ(t.mask.score, s.mask.score);
    EXPECT_EQ(t.act_scale, s.act_scale);
    EXPECT_EQ(t.merged, s.merged);
    EXPECT_EQ(t.w16, s.w16);
  }
  EXPECT_EQ(parse_scheme("sharq:p48:max:token").name(), "sharq");
  EXPECT_EQ(parse_scheme("sharq:w16:tensor:s24").name(), "sharq:s24:tensor:w16");
  EXPECT_EQ(parse_scheme("nvfp4:token").name(), "nvfp4");
  EXPECT_FALSE(parse_scheme("sharq") == parse_scheme("sharq:merged"));
  EXPECT_FALSE(parse_scheme("sharq") == parse_scheme("sharq:tensor"));
}

TEST(Scheme, BaselineOfEachSharqVariant) {
  EXPECT_EQ(sharq_baseline(parse_scheme("sharq")).name(), "nvfp4");
  EXPECT_EQ(sharq_baseline(parse_scheme("sharq:tensor")).name(), "nvfp4:tensor");
  EXPECT_EQ(sharq_baseline(parse_scheme("sharq-mxfp4")).name(), "mxfp4");
  EXPECT_EQ(sharq_baseline(parse_scheme("sharq-hif4")).name(), "hif4");
  EXPECT_THROW(sharq_baseline(parse_scheme("nvfp4")), std::invalid_argument);
}

TEST(Scheme, BadTextNamesTheWord) {
  const std::string unknown = what_of([] { parse_scheme("nosuch"); });
  EXPECT_NE(unknown.find("nosuch"), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("sharq-hif4"), std::string::npos) << "lists the known schemes: " << unknown;
  for (const char* bad : {"fp32:s24", "nvfp4:p48", "fp8:token", "mxfp4:tensor", "sharq-mxfp4:token", "sharq:nm5_4",
                          "sharq:nm2_0", "sharq:nm2_8x", "sharq:bogus", "", ":s24", "sharq::token", "sharq:s24:l1",
                          "sharq-hif4:maxmin", "sharq:nm2_8:l2", "nvfp4:merged", "sharq-mxfp4:merged", "fp8:w16",
                          "sharq-hif4:w16"}) {
    const std::string w = what_of([&] { parse_scheme(bad); });
    EXPECT_TRUE(!w.empty() && w != "<no exception>" && w != "<wrong exception type>") << "'" << bad << "': " << w;
  }
  EXPECT_NE(what_of([] { parse_scheme("fp32:s24"); }).find("s24"), std::string::npos);
  EXPECT_NE(what_of([] { parse_scheme("sharq:nm5_4"); }).find("nm5_4"), std::string::npos);
  EXPECT_NE(what_of([] { parse_scheme("nvfp4:merged"); }).find("merged"), std::string::npos);
  EXPECT_THROW(parse_scheme_list(","), std::invalid_argument);
  EXPECT_THROW(parse_scheme_list("fp32,nosuch"), std::invalid_argument);
  for (const char* bad : {"fp16,,sharq:merged", "fp16,", ",fp16"})  // an empty item is a typo, never skipped
    EXPECT_NE(what_of([&] { parse_scheme_list(bad); }).find("has an empty item"), std::string::npos) << bad;
  EXPECT_EQ(parse_scheme_list("fp16,sharq:merged").size(), 2u);
  // a scheme given twice, also under two spellings of one value
  EXPECT_NE(what_of([&] { parse_scheme_list("fp16,nvfp4,fp16"); }).find("names the scheme 'fp16' twice"), std::string::npos);
  EXPECT_NE(what_of([&] { parse_scheme_list("sharq,sharq:token:p48"); }).find("names the scheme 'sharq' twice"), std::string::npos);
  EXPECT_EQ(parse_scheme_list("sharq,sharq:tensor").size(), 2u);
  // an option group set twice, or an empty option: the scheme would mean whatever came last
  for (const auto& [bad, words] : std::vector<std::pair<std::string, std::string>>{
           {"sharq:p48:s24", "'p48' and 's24' both set the mask"},
           {"sharq:token:tensor", "'token' and 'tensor' both set the activation scale"},
           {"sharq:max:l1", "'max' and 'l1' both set the pair score"},
           {"sharq:s24:s24", "both set the mask"},
           {"sharq:merged:merged", "both set the merged"},
           {"sharq:", "empty option after the last ':'"},
           {"sharq::token", "empty option (two ':' in a row)"}})
    EXPECT_NE(what_of([&] { parse_scheme(bad); }).find(words), std::string::npos) << bad << ": " << what_of([&] { parse_scheme(bad); });
  EXPECT_EQ(parse_scheme("sharq:s24:token:merged").name(), "sharq:s24:merged");
}

TEST(Scheme, DeviceSupportIsStatedOnce) {
  for (const std::string& b : scheme_base_names())
    EXPECT_EQ(scheme_unsupported_reason(parse_scheme(b), Device::cpu), "") << b << " runs on the CPU";
  for (const char* ok : {"fp16", "bf16", "fp8", "w4a16", "nvfp4", "nvfp4:tensor", "sharq", "sharq:s24", "sharq:merged",
                         "sharq:w16", "sharq:tensor", "sharq:l1"})
    EXPECT_EQ(scheme_unsupported_reason(parse_scheme(ok), Device::cuda), "") << ok;
  for (const char* no : {"fp32", "mxfp4", "hif4", "sharq-mxfp4", "sharq-hif4", "sharq:nm2_8"}) {
    const std::string why = scheme_unsupported_reason(parse_scheme(no), Device::cuda);
    EXPECT_NE(why, "") << no;
    EXPECT_NE(why.find(parse_scheme(no).name()), std::string::npos) << "names the scheme: " << why;
  }
}

}  // namespace
}  // namespace sharq
