// Small pieces the evaluation tools (ppl, eval, analyze) share: reading a text file and turning a
// row of logits into log-probabilities.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sharq {

// Larger data files are refused (WikiText-2's test set is 1.3 MB).
inline constexpr uintmax_t kMaxTextFileBytes = uintmax_t{1} << 30;  // 1 GiB

// The whole file as bytes, NUL bytes included. Throws std::runtime_error naming the path when it
// does not exist, is not a regular file (a device such as /dev/zero, a FIFO, a directory), is
// empty, is larger than max_bytes, or cannot be read.
std::string read_text_file(const std::string& path, uintmax_t max_bytes = kMaxTextFileBytes);

// log-softmax of one row of logits, in double.
void log_softmax(const float* logits, int64_t vocab, std::vector<double>& out);

// Index of the first maximum (greedy decoding's choice).
int64_t argmax(const float* v, int64_t n);

}  // namespace sharq
