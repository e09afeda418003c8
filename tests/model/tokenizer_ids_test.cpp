// The token-id tokenizer of `serve --synthetic`: ids round-trip through text, and anything that is
// not an id of the vocabulary is refused with a message naming the range and the offending word.
#include <gtest/gtest.h>

#include <random>
#include <stdexcept>

#include "sharq/model/tokenizer.h"

namespace {

using namespace sharq;

TEST(TokenIdTokenizer, IdsRoundTripThroughTheirText) {
  const auto tok = make_token_id_tokenizer(128256);
  std::mt19937 rng(11);
  std::uniform_int_distribution<int32_t> id(0, 128255);
  std::vector<int32_t> ids(257);
  for (int32_t& v : ids) v = id(rng);
  const std::string text = tok->decode(ids);
  EXPECT_EQ(tok->encode(text), ids);
  std::string stepped;
  int32_t prev = -1;
  for (int32_t v : ids) {
    stepped += tok->decode_step(prev, v);
    prev = v;
  }
  EXPECT_EQ(stepped, text);
  EXPECT_EQ(tok->encode("  7\t12\n0 \r\n"), (std::vector<int32_t>{7, 12, 0}));
  EXPECT_TRUE(tok->encode(" \n").empty());
  EXPECT_EQ(tok->vocab_size(), 128256);
  EXPECT_EQ(tok->bos_id(), -1);
  EXPECT_EQ(tok->eos_id(), -1);
  EXPECT_EQ(tok->decode_step(0, 128256), "");  // outside the vocabulary: no text
}

TEST(TokenIdTokenizer, RefusesWhatIsNotAnIdOfTheVocabulary) {
  const auto tok = make_token_id_tokenizer(1000);
  for (const char* bad : {"hello", "12 x3", "1000", "-1", "-0", "3.5", "99999999999999999999", "0x10", "12,13"}) {
    try {
      (void)tok->encode(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("[0, 1000)"), std::string::npos) << e.what();
    }
  }
  // a long word is cut for the message at a character boundary (the message must stay UTF-8)
  try {
    (void)tok->encode("x" + std::string(20, 'e') + "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9");  // 33 bytes
    ADD_FAILURE() << "accepted a word";
  } catch (const std::invalid_argument& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.find("\xc3'"), std::string::npos) << "a lead byte without its continuation";
    EXPECT_NE(m.find("...'"), std::string::npos) << m;
  }
  EXPECT_THROW(make_token_id_tokenizer(0), std::invalid_argument);
  EXPECT_THROW(make_token_id_tokenizer(int64_t{1} << 31), std::invalid_argument);
}

}  // namespace
