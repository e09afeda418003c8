// UTF-8 well-formedness (Unicode Table 3-7), the one implementation the tokenizers and the chat
// templates share.
#pragma once

#include <cstddef>
#include <string_view>

namespace sharq {

// Length of the UTF-8 sequence starting at s[i] when it is well formed (Unicode Table 3-7), else
// the length of its maximal well-formed prefix ("maximal subpart", at least 1) with *valid=false.
// Rust's String::from_utf8_lossy, which the HF decoder calls, replaces each maximal subpart by
// one U+FFFD, so decode must split invalid bytes exactly this way.
inline size_t utf8_sequence_length(std::string_view s, size_t i, bool* valid) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char b0 = byte(i);
  *valid = true;
  if (b0 < 0x80) return 1;
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    *valid = false;
    return 1;
  }
  size_t k = 1;
  for (; k < need; ++k) {
    if (i + k >= s.size()) break;
    const unsigned char b = byte(i + k);
    const unsigned char min = k == 1 ? lo : 0x80, max = k == 1 ? hi : 0xBF;
    if (b < min || b > max) break;
  }
  if (k < need) *valid = false;
  return k;
}

// Byte offset of the first ill-formed sequence, or npos.
inline size_t first_invalid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    bool valid;
    const size_t n = utf8_sequence_length(s, i, &valid);
    if (!valid) return i;
    i += n;
  }
  return std::string_view::npos;
}

}  // namespace sharq
