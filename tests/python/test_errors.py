"""Bad arguments raise TypeError / ValueError naming the argument, without silent casts."""
import numpy as np
import pytest

import sharq


@pytest.fixture
def x(rng):
    return rng.standard_normal((4, 64)).astype(np.float32)


def test_float64_is_a_type_error(x):
    with pytest.raises(TypeError, match="'x' must have dtype float32, got float64"):
        sharq.quantize(x.astype(np.float64), "nvfp4-16")
    with pytest.raises(TypeError, match="'w' must have dtype float32"):
        sharq.Linear("sharq", x.astype(np.float64))
    lin = sharq.Linear("sharq", x)
    with pytest.raises(TypeError, match="'x' must have dtype float32"):
        lin.forward(x.astype(np.float16))
    with pytest.raises(TypeError, match="'bias' must have dtype float32"):
        sharq.Linear("fp16", x, np.zeros(4))
    with pytest.raises(TypeError, match="'x' must be a numpy.ndarray"):
        sharq.decompose(x.tolist())


def test_non_contiguous_is_a_value_error(x):
    with pytest.raises(ValueError, match="'x' must be C-contiguous"):
        sharq.quantize(x[:, ::2], "mxfp4")
    with pytest.raises(ValueError, match="'w' must be C-contiguous"):
        sharq.Linear("fp16", np.asfortranarray(x))
    with pytest.raises(ValueError, match="'x' must be C-contiguous"):
        sharq.Linear("fp16", x).forward(np.asfortranarray(x))


def test_wrong_shape_is_a_value_error(x):
    with pytest.raises(ValueError, match=r"'x' must be a 2-D array of shape \(rows, cols\), got shape \(64,\)"):
        sharq.quantize(x[0], "hif4")
    lin = sharq.Linear("sharq", x)
    with pytest.raises(ValueError, match=r"'x' must have shape \(M, 64\)"):
        lin.forward(np.zeros((2, 32), np.float32))
    with pytest.raises(ValueError, match=r"'bias' must have shape \(4,\)"):
        sharq.Linear("fp16", x, np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="'x' must be a 2-D array"):
        sharq.decompose(x[None])


def test_unknown_names_are_value_errors(x):
    with pytest.raises(ValueError, match="unknown scheme 'nvfp5'; known schemes: fp32"):
        sharq.Linear("nvfp5", x)
    with pytest.raises(ValueError, match="option 'merged' applies to sharq"):
        sharq.scheme_name("nvfp4:merged")
    with pytest.raises(ValueError, match="unknown format 'fp4'"):
        sharq.quantize(x, "fp4")
    with pytest.raises(ValueError, match="no second-level scale"):
        sharq.quantize(x, "mxfp4", global_scale="tensor")
