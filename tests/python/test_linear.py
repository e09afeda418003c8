"""Linear layers: forward against an FP64 reference built from the layer's own operands."""
import numpy as np
import pytest

import sharq
from conftest import outlier_matrix

SCHEMES = ["fp16", "nvfp4", "sharq", "sharq:s24", "w4a16", "fp8", "fp32", "bf16", "mxfp4", "hif4", "sharq-mxfp4",
           "sharq-hif4", "sharq:tensor", "sharq:merged"]


def reference(op, bias=None):
    y = (op["row_scale"].astype(np.float64)[:, None] * op["col_scale"].astype(np.float64)[None, :]
         * (op["x"].astype(np.float64) @ op["w"].astype(np.float64).T))
    return y if bias is None else y + bias.astype(np.float64)


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_forward_matches_fp64_reference(rng, scheme):
    M, K, N = 33, 320, 48
    x = outlier_matrix(rng, M, K)
    w = (rng.standard_normal((N, K)) / np.sqrt(K)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    lin = sharq.Linear(scheme, w, bias)
    assert lin.scheme == sharq.scheme_name(scheme) and lin.in_features == K and lin.out_features == N
    y = lin.forward(x)
    assert y.dtype == np.float32 and y.shape == (M, N)
    op = lin.operands(x)
    assert rel(y, reference(op, bias)) <= 1e-5
    np.testing.assert_array_equal(lin(x), y)
    # and the quantized result is close to the exact one
    assert rel(y, x.astype(np.float64) @ w.astype(np.float64).T + bias) < 0.2


def test_weight_bytes_and_names(rng):
    N, K = 32, 256
    w = rng.standard_normal((N, K)).astype(np.float32)
    assert sharq.Linear("fp32", w).weight_bytes == 4 * N * K
    assert sharq.Linear("fp16", w).weight_bytes == 2 * N * K
    assert sharq.Linear("nvfp4", w).weight_bytes == N * (K // 16) * 9 + 4
    assert sharq.Linear("sharq", w).weight_bytes == N * (K // 32) * 17 + 4
    assert sharq.Linear("sharq:tensor:p48", w).scheme == "sharq:tensor"
    assert sharq.Linear("sharq-hif4:s24", w).scheme == "sharq-hif4"


def test_empty_batch(rng):
    lin = sharq.Linear("sharq", rng.standard_normal((8, 64)).astype(np.float32))
    assert lin.forward(np.zeros((0, 64), np.float32)).shape == (0, 8)


def test_per_token_scales_are_batch_invariant(rng):
    """Default per-token scales: a row's output does not depend on the other rows."""
    x = outlier_matrix(rng, 16, 128)
    lin = sharq.Linear("sharq", (rng.standard_normal((24, 128)) / 11).astype(np.float32))
    np.testing.assert_array_equal(lin.forward(x)[5:6], lin.forward(np.ascontiguousarray(x[5:6])))
