"""Shared fixtures of the `sharq` Python module tests.

Run: PYTHONPATH=<build>/python python3 -m pytest -q tests/python
SHARQ_CLI (optional) names the `sharq` CLI binary for the tests that compare with it.
"""
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO.parent / "shared" / "models" / "stories260K"
MODEL_BIN = MODEL_DIR / "stories260K.bin"

# A short TinyStories-like text: 127 tokens with the stories260K tokenizer (BOS included).
STORY = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her "
    "friends. One day, she saw a big red ball under a tree. She ran to get it, but a small dog took the ball "
    "first. Lily was sad, but then the dog came back and gave her the ball. They played together all day and "
    "became best friends.\n"
)


def outlier_matrix(rng, rows, cols, n_outlier_channels=4, scale=40.0):
    """Gaussian activations with a few large outlier channels (as LLM projection inputs have)."""
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    ch = rng.choice(cols, size=min(n_outlier_channels, cols), replace=False)
    x[:, ch] *= np.float32(scale)
    return x


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


@pytest.fixture(scope="session")
def cli():
    """Path of the `sharq` CLI from $SHARQ_CLI; skips the test when unset or missing."""
    path = os.environ.get("SHARQ_CLI")
    if not path:
        pytest.skip("SHARQ_CLI is not set")
    if not (Path(path).is_file() and os.access(path, os.X_OK)):
        pytest.skip(f"SHARQ_CLI={path} is not an executable file")
    return path


@pytest.fixture(scope="session")
def model_path():
    if not MODEL_BIN.is_file():
        pytest.skip(f"model not found: {MODEL_BIN}")
    return str(MODEL_BIN)
