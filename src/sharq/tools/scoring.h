// Small pieces the evaluation tools (ppl, eval, analyze) share: reading a text file and turning a
// row of logits into log-probabilities.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sharq {

// The whole file as bytes; throws std::runtime_error naming the path when it cannot be read.
std::string read_text_file(const std::string& path);

// log-softmax of one row of logits, in double.
void log_softmax(const float* logits, int64_t vocab, std::vector<double>& out);

// Index of the first maximum (greedy decoding's choice).
int64_t argmax(const float* v, int64_t n);

}  // namespace sharq
