"""`sharq opcheck --save DIR` writes .npy files that agree with what the module computes."""
import subprocess

import numpy as np

import sharq


def test_opcheck_save_matches_module(cli, tmp_path):
    M, K, N = 8, 256, 32
    schemes = ["nvfp4", "sharq", "sharq:s24", "mxfp4"]
    subprocess.run([cli, "opcheck", "-M", str(M), "-K", str(K), "-N", str(N), "--seed", "99", "--schemes",
                    ",".join(schemes), "--save", str(tmp_path), "--json"], check=True, capture_output=True)
    X = np.load(tmp_path / "X.npy")
    W = np.load(tmp_path / "W.npy")
    assert X.dtype == np.float32 and X.shape == (M, K) and W.shape == (N, K)
    assert np.abs(X).max() > 5 * np.abs(X).mean()  # the documented outlier generator
    for s in schemes + ["fp16"]:  # the reference is saved too
        stem = tmp_path / s.replace(":", "_")
        lin = sharq.Linear(s, W)
        op = lin.operands(X)
        # the saved operands are the real-domain ones: scaled operands times their scales (FP32)
        np.testing.assert_array_equal(np.load(f"{stem}_Xhat.npy"), op["x"] * op["row_scale"][:, None])
        np.testing.assert_array_equal(np.load(f"{stem}_What.npy"), op["w"] * op["col_scale"][:, None])
        if s.startswith("sharq"):
            np.testing.assert_array_equal(np.load(f"{stem}_Shat.npy"), op["s_hat"] * op["row_scale"][:, None])
            np.testing.assert_array_equal(np.load(f"{stem}_Rhat.npy"), op["r_hat"] * op["row_scale"][:, None])
            d = sharq.decompose(X, s)
            np.testing.assert_array_equal(np.load(f"{stem}_Shat.npy"), d["s_hat"] * d["g"][:, None])
        Y = np.load(f"{stem}_Y.npy")
        y = lin.forward(X)
        assert np.linalg.norm(y - Y) <= 1e-6 * np.linalg.norm(Y)
    # the W4A4 weights are quantize(W) with the per-tensor scale
    q = sharq.quantize(W, "nvfp4-16")
    np.testing.assert_array_equal(np.load(tmp_path / "nvfp4_What.npy"), q.dequantize(with_global=False) * q.g[0])
