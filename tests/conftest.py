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

# The original's per-model values that configs/air.gin and configs/pprior.gin bind and
# build_model requires (tests/test_models.py checks the configs against them): z_pres
# temperature lambda, stop threshold tau, decoder logit noise sigma.
MODEL_VALUES = {
    "air": dict(z_pres_temperature=1.0, stop_threshold=0.99, decoder_noise=0.3),
    "pprior": dict(z_pres_temperature=0.1, stop_threshold=0.9, decoder_noise=0.0),
}


def make_model(kind, canvas_px, counts, **kwargs):
    """build_model with the kind's MODEL_VALUES (overridable), outside any config, and the exact
    sampler (Q30 'hard') unless ``quirks`` says otherwise: the original's 'four_gathers' (the
    Quirks default) leaves rounding residues outside every box, which would blur the exact
    zeros, FLOP counts and jit/non-jit agreement these tests check (tests/test_four_gathers.py
    tests that value)."""
    from asr_tf.models import build_model
    from asr_tf.quirks import Quirks

    kwargs.setdefault("quirks", Quirks(sampler_edge="hard"))
    return build_model(kind, canvas_px, counts, **{**MODEL_VALUES.get(kind, {}), **kwargs})


def scalars(logdir, tag):
    """(step, value) of ``tag``, in step order (a duplicate step stays). The accumulator reads the
    event files in name order, and two files of one second differ only by a per-process counter
    (``...tfevents.<sec>.<host>.<pid>.11.v2`` sorts before ``....9.v2``)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    import tensorflow as tf

    acc = EventAccumulator(logdir, size_guidance={"tensors": 0})
    acc.Reload()
    return sorted(((e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)),
                  key=lambda step_value: step_value[0])


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
    """A folder beside the checkout that may hold reference files of the original code (its
    dSprites bitmaps, ``reference/dsprites_original_sprites.npz``); the tests that compare
    against them skip where it is absent."""
    return SHARED_DIR
