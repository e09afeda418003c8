"""Linear.forward releases the GIL: Python keeps running while a large forward is in flight."""
import threading
import time

import numpy as np

import sharq


def spin(seconds):
    """Iterations of the counting loop below in `seconds` (its speed on this machine)."""
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        n += 1
    return n


def test_forward_releases_the_gil(rng):
    M, K, N = 512, 2048, 2048
    w = (rng.standard_normal((N, K)) / np.sqrt(K)).astype(np.float32)
    x = rng.standard_normal((M, K)).astype(np.float32)
    lin = sharq.Linear("sharq", w)
    rate = spin(0.05) / 0.05  # iterations per second with the GIL to itself
    done = threading.Event()
    out = {}

    def work():
        t0 = time.perf_counter()
        out["y"] = lin.forward(x)
        out["seconds"] = time.perf_counter() - t0
        done.set()

    t = threading.Thread(target=work)
    counter = 0
    t.start()
    while not done.is_set():
        counter += 1
        time.perf_counter()  # the same loop body as spin()
    t.join()
    assert out["y"].shape == (M, N)
    assert out["seconds"] > 0.05, "the forward is too short to tell"
    # Holding the GIL for the whole forward would leave this loop one switch interval (5 ms) at
    # most (about 5% of `expected` here); released, it runs through the forward, sharing the cores
    # with the OpenMP threads (about 30% of `expected` on 2 cores).
    expected = rate * out["seconds"]
    assert counter > 0.12 * expected, (counter, expected, out["seconds"])
