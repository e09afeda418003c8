"""The SharQ decomposition: X~ = S^ + R exactly, R^ = Q(R), and the N:M structure of the mask."""
import numpy as np
import pytest

import sharq
from conftest import outlier_matrix


def keep_from_metadata(meta, cols, group):
    """Keep flags from the metadata nibbles (idx0 | idx1 << 2), NumPy only."""
    nib = np.stack([meta & 0xF, meta >> 4], axis=-1).reshape(meta.shape[0], -1)
    ngroups = -(-cols // group)
    keep = np.zeros((meta.shape[0], ngroups * group), dtype=np.uint8)
    for g in range(ngroups):
        for idx in (nib[:, g] & 3, (nib[:, g] >> 2) & 3):
            rows = np.arange(meta.shape[0])
            if group == 8:  # pair indices
                keep[rows, g * 8 + 2 * idx] = 1
                keep[rows, g * 8 + 2 * idx + 1] = 1
            else:
                keep[rows, g * 4 + idx] = 1
    return keep[:, :cols]


@pytest.mark.parametrize("scheme,group", [("sharq", 8), ("sharq:s24", 4), ("sharq:tensor", 8), ("sharq-mxfp4", 8),
                                          ("sharq-hif4", 4)])
def test_decomposition_relations(rng, scheme, group):
    x = outlier_matrix(rng, 16, 256)
    d = sharq.decompose(x, scheme)
    assert d["scheme"] == sharq.scheme_name(scheme) and d["group"] == group
    xt, s, s_hat, r, r_hat, keep = (d[k] for k in ("xt", "s", "s_hat", "r", "r_hat", "keep"))
    for a in (xt, s, s_hat, r, r_hat):
        assert a.dtype == np.float32 and a.shape == x.shape
    # X~ = X / g
    if scheme.startswith("sharq-"):
        assert d["g"].size == 0 and d["scale"] == "none"
        np.testing.assert_array_equal(xt, x)
    else:
        g = d["g"][:, None] if d["scale"] == "row" else d["g"][None, :]
        np.testing.assert_array_equal(xt, x / g)
    # S is X~ on the mask, S^ is 0 off it, R = X~ - S^ in FP32
    np.testing.assert_array_equal(s, np.where(keep == 1, xt, np.float32(0)))
    assert np.all(s_hat[keep == 0] == 0)
    np.testing.assert_array_equal(r, xt - s_hat)
    # exactly half of every group is kept
    kg = keep.reshape(16, -1, group)
    assert np.all(kg.sum(axis=2) == group // 2)
    # the mask keeps the largest magnitudes (pairs scored by their max for p48)
    a = np.abs(xt).reshape(16, -1, group)
    if group == 8:
        kg = kg.reshape(16, -1, 4, 2)
        assert np.all(kg[..., 0] == kg[..., 1])  # pairs are kept whole
        a = a.reshape(16, -1, 4, 2).max(axis=3)
        kg = kg[..., 0]
    assert np.all(np.where(kg == 1, a, np.inf).min(axis=2) >= np.where(kg == 0, a, -np.inf).max(axis=2))
    # the metadata nibbles encode the same mask
    np.testing.assert_array_equal(keep_from_metadata(d["metadata"], 256, group), keep)
    # the reconstruction is close
    rel = np.linalg.norm((s_hat + r_hat) - xt) / np.linalg.norm(xt)
    assert rel < 0.05


@pytest.mark.parametrize("scheme", ["sharq", "sharq:s24", "sharq:tensor", "sharq-mxfp4", "sharq-hif4"])
def test_dense_reference_matches_linear_packed_path(rng, scheme):
    """decompose() (the dense reference) and Linear's packed activation path agree bit for bit."""
    x = outlier_matrix(rng, 8, 192)
    w = (rng.standard_normal((16, 192)) / 14).astype(np.float32)
    d = sharq.decompose(x, scheme)
    op = sharq.Linear(scheme, w).operands(x)
    np.testing.assert_array_equal(op["s_hat"].view(np.uint32), d["s_hat"].view(np.uint32))
    np.testing.assert_array_equal(op["r_hat"].view(np.uint32), d["r_hat"].view(np.uint32))
    np.testing.assert_array_equal(op["x"], op["s_hat"] + op["r_hat"])


def test_sharq_beats_nvfp4_on_outliers(rng):
    """SharQ's activation error is below plain NVFP4-16's on outlier-heavy data (the method's point)."""
    x = outlier_matrix(rng, 64, 512, n_outlier_channels=8, scale=60.0)
    d = sharq.decompose(x, "sharq")
    x_sharq = (d["s_hat"] + d["r_hat"]) * d["g"][:, None]
    x_nvfp4 = sharq.dequantize(sharq.quantize(x, "nvfp4-16", global_scale="row"))
    err_sharq = np.linalg.norm(x_sharq - x) / np.linalg.norm(x)
    err_nvfp4 = np.linalg.norm(x_nvfp4 - x) / np.linalg.norm(x)
    assert err_sharq < 0.5 * err_nvfp4


def test_options_and_errors(rng):
    x = outlier_matrix(rng, 4, 64)
    assert sharq.decompose(x, "sharq", mask="s24", scale="tensor")["scheme"] == "sharq:s24:tensor"
    d = sharq.decompose(x, "sharq", mask="nm2_8")
    assert d["metadata"] is None and np.all(d["keep"].reshape(4, -1, 8).sum(axis=2) == 2)
    with pytest.raises(ValueError, match="not a SharQ variant"):
        sharq.decompose(x, "nvfp4")
    with pytest.raises(ValueError, match="applies to nvfp4 and sharq only"):
        sharq.decompose(x, "sharq-mxfp4", scale="tensor")
