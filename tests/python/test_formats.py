"""quantize / dequantize against the library and against an independent NumPy decoder of the formats
(docs/numerics.md, src/sharq/formats/minifloat.h): bit-for-bit."""
import numpy as np
import pytest

import sharq
from conftest import outlier_matrix

E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float64)
S1P2 = np.array([k / 4 for k in range(8)] + [-(k / 4) for k in range(8)], dtype=np.float64)  # code 8 is -0.0


def unpack_nibbles(codes):
    """uint8 [..., n] -> uint8 [..., 2n]: code k in byte k // 2, low nibble when k is even."""
    return np.stack([codes & 0xF, codes >> 4], axis=-1).reshape(*codes.shape[:-1], -1)


def ue4m3(code):
    code = code.astype(np.int64)
    e, m = (code >> 3) & 0xF, code & 7
    v = np.where(e == 0, m * 2.0**-9, 2.0 ** (e - 7) * (1 + m / 8))
    return np.where(code == 0x7F, np.nan, v)


def ue8m0(code):
    return np.where(code == 0xFF, np.nan, 2.0 ** (code.astype(np.float64) - 127))


def e6m2(code):
    code = code.astype(np.int64)
    return np.where(code == 0xFF, np.nan, 2.0 ** ((code >> 2) - 48) * (1 + (code & 3) / 4))


def numpy_dequantize(q):
    """Scaled-domain values of q from its codes and scales only, computed in FP64 (every product is
    exact in FP32, so the FP32 cast is the library's value)."""
    rows, cols = q.shape
    codes = unpack_nibbles(q.codes)  # [rows, nblocks, B]
    B = q.block
    if q.format.startswith("nvfp4"):
        vals = E2M1[codes] * ue4m3(q.scales)[..., None]
    elif q.format == "mxfp4":
        vals = E2M1[codes] * ue8m0(q.scales)[..., None]
    else:  # hif4: sf * 2^(E8[k // 8] + E16[k // 4])
        s = q.scales
        k = np.arange(B)
        e8 = (s[..., 1:2].astype(np.int64) >> (k // 8)) & 1
        e16 = ((s[..., 2].astype(np.int64) | (s[..., 3].astype(np.int64) << 8))[..., None] >> (k // 4)) & 1
        vals = S1P2[codes] * e6m2(s[..., 0])[..., None] * 2.0 ** (e8 + e16)
    return vals.reshape(rows, -1)[:, :cols].astype(np.float32)


@pytest.mark.parametrize("fmt,block,block_bytes", [("nvfp4-16", 16, 9), ("nvfp4-32", 32, 17), ("mxfp4", 32, 17),
                                                     ("hif4", 64, 36)])
@pytest.mark.parametrize("cols", [256, 100])  # 100: a zero-padded tail block
def test_round_trip_matches_numpy_decoder(rng, fmt, block, block_bytes, cols):
    x = outlier_matrix(rng, 24, cols)
    x[3, :] = 0.0  # a zero row: zero blocks
    q = sharq.quantize(x, fmt)
    nb = -(-cols // block)
    assert q.format == fmt and q.shape == (24, cols) and q.block == block and q.blocks_per_row == nb
    assert q.block_bytes == block_bytes and q.data.shape == (24, nb * block_bytes) and q.data.dtype == np.uint8
    assert q.nbytes == 24 * nb * block_bytes + 4 * q.g.size
    deq = q.dequantize(with_global=False)
    assert deq.dtype == np.float32 and deq.shape == x.shape
    np.testing.assert_array_equal(deq.view(np.uint32), numpy_dequantize(q).view(np.uint32))
    # with the second-level scale: one FP32 product per value
    g = q.g
    if fmt.startswith("nvfp4"):
        assert g.shape == (1,) and g[0] == np.float32(np.abs(x).max() / np.float32(2688.0))
        expect = deq * g[0]
    else:
        assert g.size == 0
        expect = deq
    np.testing.assert_array_equal(sharq.dequantize(q).view(np.uint32), expect.view(np.uint32))
    # quantization is close: at most half a step of the largest element code per block
    err = np.abs(sharq.dequantize(q) - x)
    assert err.max() <= 0.25 * np.abs(x).max()
    assert np.count_nonzero(deq[3]) == 0


def test_packed_bytes_layout(rng):
    x = outlier_matrix(rng, 5, 48)
    q = sharq.quantize(x, "nvfp4-16")
    blocks = q.data.reshape(5, 3, 9)  # {UE4M3 scale, 8 code bytes}
    np.testing.assert_array_equal(blocks[..., 0], q.scales)
    np.testing.assert_array_equal(blocks[..., 1:], q.codes)
    h = sharq.quantize(x, "hif4")
    hb = h.data.reshape(5, 1, 36)  # {sf, e8, e16[2], 32 code bytes}
    np.testing.assert_array_equal(hb[..., :4], h.scales)
    np.testing.assert_array_equal(hb[..., 4:], h.codes)


def test_nvfp4_scales_follow_the_definition(rng):
    """s = UE4M3(amax / 6) of each block of x / g (checked on values exactly representable in UE4M3)."""
    x = outlier_matrix(rng, 8, 64)
    q = sharq.quantize(x, "nvfp4-16", global_scale="none")
    assert q.g.size == 0
    amax = np.abs(x).reshape(8, 4, 16).max(axis=2)
    s = ue4m3(q.scales)
    # the rounded scale is within one UE4M3 step (relative 2^-3 for normals) of amax / 6
    assert np.all(np.abs(s - amax / 6) <= (amax / 6) * 2.0**-4 + 2.0**-10)


def test_per_row_global_scale(rng):
    x = outlier_matrix(rng, 6, 64)
    q = sharq.quantize(x, "nvfp4-16", global_scale="row")
    assert q.global_scale == "row" and q.g.shape == (6,)
    np.testing.assert_array_equal(q.g, (np.abs(x).max(axis=1) / np.float32(2688.0)).astype(np.float32))
    np.testing.assert_array_equal(sharq.dequantize(q), q.dequantize(with_global=False) * q.g[:, None])


@pytest.mark.parametrize("scheme,fmt", [("nvfp4", "nvfp4-16"), ("w4a16", "nvfp4-16"), ("sharq", "nvfp4-32"),
                                        ("sharq:w16", "nvfp4-16"), ("mxfp4", "mxfp4"), ("hif4", "hif4")])
def test_matches_linear_weight_operand(rng, scheme, fmt):
    """The weight W^ a Linear layer computes with is quantize(W, format) bit for bit."""
    w = (rng.standard_normal((40, 160)) / 12).astype(np.float32)
    x = rng.standard_normal((3, 160)).astype(np.float32)
    op = sharq.Linear(scheme, w).operands(x)
    q = sharq.quantize(w, fmt)
    np.testing.assert_array_equal(op["w"].view(np.uint32), q.dequantize(with_global=False).view(np.uint32))
    expect_col = np.full(40, q.g[0] if q.g.size else 1.0, dtype=np.float32)
    np.testing.assert_array_equal(op["col_scale"], expect_col)


def test_nonfinite_block_is_nan_only_there(rng):
    x = rng.standard_normal((2, 64)).astype(np.float32)
    x[0, 5] = np.inf
    for fmt in sharq.FORMATS:
        deq = sharq.quantize(x, fmt).dequantize(with_global=False)
        block = sharq.quantize(x, fmt).block
        assert np.all(np.isnan(deq[0, :block])), fmt
        assert np.all(np.isfinite(deq[0, block:])) and np.all(np.isfinite(deq[1])), fmt
