"""Shared test fixtures."""
import os
import pathlib

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin  # noqa: E402
import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"

# Small and fast training: tiny LSTMs, batch 8, 16 test scenes, no XLA (compile time dominates
# tiny runs), every interval 3 steps.
SMALL_RUN = [
    "build_model.lstm_units = 32",
    "train_eval.batch_size = 8",
    "train_eval.num_test = 16",
    "train_eval.eval_every = 3",
    "train_eval.log_every = 1",
    "train_eval.checkpoint_every = 3",
    "train_eval.image_every = 3",
    "train_eval.jit_compile = False",
    "train_eval.progress = False",
]


@pytest.fixture(autouse=True)
def clean_gin():
    """Every test starts and ends with no gin bindings."""
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir():
    return SHARED_DIR
