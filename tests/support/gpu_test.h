// Shared by the `gpu`-labelled tests: a clean skip where there is no CUDA device (the tests also
// build and run, skipped, in CI, which has no GPU).
#pragma once

#include <gtest/gtest.h>

#include "sharq/kernels/cuda/cuda_check.h"

#define SKIP_WITHOUT_GPU() \
  if (::sharq::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device: GPU test skipped"
